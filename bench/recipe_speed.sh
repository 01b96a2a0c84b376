#!/usr/bin/env bash
# Measure bench/results/recipe-speed-table.md (+ recipe-speed.json): the minutes of `--recipe
# fast-cpu` to <= 1.6 px test RMSE on fkd-yt15's group-disjoint split against the recipes before it,
# in one run, and its accuracy in bf16 against fp32 over three training seeds.
#
#   bash bench/recipe_speed.sh [OUT]        # from the repository root, after `make install`
#
# Every run uses torch's default threads (both cores), as `python -m fkd_core.train` does, one after
# another (~45 minutes on 2 idle cores). Nothing else may run meanwhile (the table reports minutes),
# and no tracked file may change (each run records the commit it started from).
#  1. best-cpu as issue 20 found it (fp32, no gradient clipping): 20 of its 240 epochs, for its time
#     per epoch; its accuracy is the committed one (bench/results/accuracy-table.md).
#  2. fast-cpu, seeds 0-2: in bf16 (what precision=auto picks on this CPU), in fp32, and in bf16 with
#     the model it had before the s2d_cnn backbone (small_cnn d2 + heatmap).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-${TMPDIR:-/tmp}/fkd-recipe-speed}
SEEDS=${SEEDS:-"0 1 2"}

SCRIPT=recipe_speed.sh
# shellcheck source=bench/clean_run.sh
source bench/clean_run.sh
start_clean_run "$OUT"
THREADS=$("$PY" -c 'import torch; print(torch.get_num_threads())')

run() {   # name, recipe, overrides...
    local name=$1 recipe=$2
    shift 2
    "$PY" -m bench.accuracy run --name "$name" --recipe "$recipe" --threads "$THREADS" --out "$OUT" "$@" \
        > "$OUT/$name.log" 2>&1
    tail -n 1 "$OUT/$name.log" | cut -c1-160
}

run best-cpu-issue20-20ep best-cpu --set grad_clip=0 --set precision=fp32 --set max_epochs=20
for seed in $SEEDS; do
    run "fast-cpu-bf16-seed$seed" fast-cpu --set precision=bf16 --set seed="$seed"
done
for seed in $SEEDS; do
    run "fast-cpu-small_cnn-bf16-seed$seed" fast-cpu --set backbone=small_cnn --set head=heatmap \
        --set precision=bf16 --set seed="$seed"
done
for seed in $SEEDS; do
    run "fast-cpu-fp32-seed$seed" fast-cpu --set precision=fp32 --set seed="$seed"
done
refuse_dirty_runs "$OUT"
"$PY" -m bench.recipe_speed "$OUT" --full-epochs best-cpu-issue20-20ep=240
echo "wrote bench/results/recipe-speed-table.md and bench/results/recipe-speed.json from $OUT"
