#!/usr/bin/env bash
# The one GPU script (issue 6). On the lent GPU machine, from the repo root, with .gpu carried
# (prepare it here first with bench/gpu_prepare.sh):
#   bash bench/gpu.sh            -> numbers in $OUT (or bench/results) as gpu.json and gpu.md
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
out=${OUT:-bench/results}
mkdir -p "$out"
if [ -d .gpu/wheels ] && ! python -c "import ray, optuna" 2>/dev/null; then
  python -m pip install --quiet --no-index --find-links .gpu/wheels "ray[tune]" optuna pyyaml \
      >"$out/pip.log" 2>&1 || echo "ray install failed: the sweep section will be skipped"
fi
python -m pip install --quiet --no-deps --no-build-isolation -e . >>"$out/pip.log" 2>&1 || true
if [ -d .gpu/data ]; then mkdir -p data/fkd-yt15 && cp .gpu/data/* data/fkd-yt15/; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
timeout 500 python -m bench.gpu --out "$out" --sweep-seconds 180
