#!/usr/bin/env bash
# The one GPU script. On a lent GPU machine, from the repo root, with .gpu carried (prepare it
# here first with `bash bench/gpu_prepare.sh`); one device call:
#   run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=450)
# -> gpu.json, gpu.md, nvidia-smi.txt, pip.log in $OUT (else bench/results). The whole script
# ends within LIMIT seconds (default 420 = 7 minutes), installs included: bench.gpu gets the
# budget that remains, `timeout` is only the last resort.
#   LIMIT=240 bash bench/gpu.sh          # a shorter rerun on a warm machine
#   DRY_RUN=1 PYTHON=.venv/bin/python bash bench/gpu.sh   # the same script on a CPU (tested)
set -uo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-420}
MARGIN=20   # seconds between bench.gpu's own end and the kill: final writes, stopping Ray
py=${PYTHON:-python3}
out=${OUT:-bench/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
# Ray/optuna go into a temp folder, never into the image's environment; PYTHONPATH carries it
# (and this checkout, instead of an install) into every process, Ray's workers included.
site=$(mktemp -d "${TMPDIR:-/tmp}/fkd-gpu-site.XXXXXX")
if [ -d .gpu/wheels ] && ! "$py" -c "import ray, optuna" 2>/dev/null; then
  # Only the wheels whose distribution the image lacks: the image's torch, numpy, pandas ... stay.
  mapfile -t wheels < <("$py" - .gpu/wheels/*.whl <<'PY'
import sys
from importlib import metadata
for wheel in sys.argv[1:]:
    name = wheel.rsplit("/", 1)[-1].split("-")[0]
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        print(wheel)
PY
)
  if [ ${#wheels[@]} -gt 0 ]; then
    timeout 120 "$py" -m pip install --quiet --no-deps --no-index --target "$site" "${wheels[@]}" \
        >"$out/pip.log" 2>&1 || echo "ray install failed (see pip.log): the sweep section will be skipped"
  fi
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/nvidia-smi.txt"
dry=()
[ -n "${DRY_RUN:-}" ] && dry=(--dry-run)
left=$((LIMIT - SECONDS))
echo "[gpu.sh] installs took ${SECONDS} s; bench.gpu gets $((left - MARGIN)) s of the ${LIMIT} s limit"
timeout -k 10 "$left" "$py" -m bench.gpu "${dry[@]}" --out "$out" --budget-seconds $((left - MARGIN))
rc=$?
echo "[gpu.sh] exit $rc after ${SECONDS} s"
exit $rc
