#!/usr/bin/env bash
# Prepare what bench/gpu.sh needs on a lent GPU machine (Python 3.12 with torch, torchvision,
# pandas and pyarrow, but no ray/optuna, no network, at most 64 MiB carried):
#   .gpu/wheels/   ray (stripped of jars/rllib/serve/llm, ~44 MB) + optuna, pyyaml and their deps
#   .gpu/data/     the real faces of ../shared/data/fkd-yt15/training.csv.gz, every row that fits:
#                  a strided subset (keeps the file's mix of complete and 4-keypoint rows) sized
#                  so that everything that travels stays under the 64 MiB carry limit
# and prints the size of everything that travels: tracked files, untracked files git does not
# ignore (they travel too), and .gpu.
#   bash bench/gpu_prepare.sh              # download, subset, report
#   bash bench/gpu_prepare.sh --report     # only the size report
# Then, from the device tool:  run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=450)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3   # a machine without this checkout's .venv
LIMIT_MIB=64
faces=${FACES:-../shared/data/fkd-yt15/training.csv.gz}

tree_bytes() {   # tracked + untracked-but-not-ignored files, as the device tool copies them
  { git ls-files -z --cached; git ls-files -z --others --exclude-standard; } |
    sort -zu | xargs -0 -r du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}'
}

report() {
  local tracked untracked gpu total
  tracked=$(git ls-files -z --cached | xargs -0 -r du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
  untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
  gpu=$( [ -d .gpu ] && du -sb .gpu | cut -f1 || echo 0)
  total=$((tracked + untracked + gpu))
  awk -v t="$tracked" -v u="$untracked" -v g="$gpu" -v all="$total" -v lim="$LIMIT_MIB" -v py="$py" 'BEGIN {
    m = 1048576
    printf "python: %s\n", py
    printf "travels: tracked %.1f MiB + untracked (not ignored) %.1f MiB + .gpu %.1f MiB = %.1f MiB of %d MiB\n", t/m, u/m, g/m, all/m, lim
    if (all > lim * m) { print "TOO LARGE: the device tool will refuse it"; exit 1 }
  }'
}

if [ "${1:-}" = "--report" ]; then report; exit; fi

dest=.gpu/wheels
mkdir -p "$dest" .gpu/data
"$py" -m pip download --quiet --only-binary :all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --implementation cp -d "$dest" "ray[tune]==2.60.0" "optuna>=4,<6" pyyaml \
    pydantic tensorboardX jsonschema
# Drop what the device machine already has (torch & co.) and what we never import there.
find "$dest" -name 'torch-*' -o -name 'nvidia_*' -o -name 'triton-*' -o -name 'numpy-*' \
    -o -name 'pandas-*' -o -name 'pyarrow-*' -o -name 'cuda_*' | xargs -r rm -f
"$py" bench/strip_ray_wheel.py "$dest"/ray-*.whl
rm -f .gpu/data/training.csv.gz
# 4 MiB under the limit: what is committed or written here before the device call still fits.
budget=$(( (LIMIT_MIB - 4) * 1024 * 1024 - $(du -sb "$dest" | cut -f1) - $(tree_bytes) ))
"$py" - "$budget" "$faces" <<'PY'
import gzip, sys
budget, src, dst = int(sys.argv[1]), sys.argv[2], ".gpu/data/training.csv.gz"
if budget <= 0:
    sys.exit(f"no room left for the faces under the carry limit ({budget} bytes)")
with gzip.open(src, "rt") as f:
    header, *rows = f.read().splitlines()
full = len(gzip.compress("\n".join([header, *rows]).encode(), 6))
stride = max(1, -(-full // budget))
keep = rows[::stride]
with gzip.open(dst, "wt", compresslevel=9) as f:
    f.write("\n".join([header, *keep]) + "\n")
print(f"carrying {len(keep)} of {len(rows)} rows (every {stride}th) in {dst}")
PY
report
