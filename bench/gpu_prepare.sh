#!/usr/bin/env bash
# Prepare what bench/gpu.sh needs on a lent GPU machine (Python 3.12 with torch, torchvision,
# pandas and pyarrow, but no ray/optuna, no network, at most 64 MiB carried):
#   .gpu/wheels/   ray (stripped of jars/rllib/serve/llm, ~44 MB) + optuna, pyyaml and their deps
#   .gpu/data/     the real faces of ../shared/data/fkd-yt15/training.csv.gz, every row that fits:
#                  a strided subset (keeps the file's mix of complete and 4-keypoint rows) sized
#                  so that tree + wheels + data stay under the 64 MiB carry limit
# Then, from the device tool:  run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu/wheels
mkdir -p "$dest" .gpu/data
py=${PYTHON:-.venv/bin/python}
"$py" -m pip download --quiet --only-binary :all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --implementation cp -d "$dest" "ray[tune]==2.60.0" "optuna>=4,<6" pyyaml \
    pydantic tensorboardX jsonschema
# Drop what the device machine already has (torch & co.) and what we never import there.
find "$dest" -name 'torch-*' -o -name 'nvidia_*' -o -name 'triton-*' -o -name 'numpy-*' \
    -o -name 'pandas-*' -o -name 'pyarrow-*' -o -name 'cuda_*' | xargs -r rm -f
"$py" bench/strip_ray_wheel.py "$dest"/ray-*.whl
budget=$(( 60 * 1024 * 1024 - $(du -sb "$dest" | cut -f1) - $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) ))
"$py" - "$budget" <<'PY'
import gzip, sys
src, dst, budget = "../shared/data/fkd-yt15/training.csv.gz", ".gpu/data/training.csv.gz", int(sys.argv[1])
with gzip.open(src, "rt") as f:
    header, *rows = f.read().splitlines()
full = len(gzip.compress("\n".join([header, *rows]).encode(), 6))
stride = max(1, -(-full // budget))
keep = rows[::stride]
with gzip.open(dst, "wt", compresslevel=9) as f:
    f.write("\n".join([header, *keep]) + "\n")
print(f"carrying {len(keep)} of {len(rows)} rows (every {stride}th) in {dst}")
PY
du -sh .gpu
