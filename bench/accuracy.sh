#!/usr/bin/env bash
# Measure bench/results/accuracy-table.md: backbone x head on fkd-yt15's group-disjoint test split,
# then the best-cpu recipe alone, from a clean commit (every result.json records git_commit).
#
#   bash bench/accuracy.sh [OUT]        # from the repository root, after `make install`
#
# backbone x head: small_cnn and res_cnn (width 1, depth 1) x regression / heatmap / unet, each
# with the best-cpu recipe's other settings for 40 epochs, one torch thread each, two at a time
# (~25 CPU-minutes, ~13 minutes on 2 idle cores). Then `--recipe best-cpu` as a user runs it:
# alone, with both cores (torch's default threads), ~14 minutes. Nothing else should run
# meanwhile (the table reports minutes of training), and no tracked file may change (each run
# records the commit it started from; a "-dirty" one stops the script before the report).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-${TMPDIR:-/tmp}/fkd-accuracy}
EPOCHS=40

SCRIPT=accuracy.sh
# shellcheck source=bench/clean_run.sh
source bench/clean_run.sh
start_clean_run "$OUT"

run() {   # name, threads, overrides...
    local name=$1 threads=$2
    shift 2
    "$PY" -m bench.accuracy run --name "$name" --recipe best-cpu --threads "$threads" --out "$OUT" "$@" \
        > "$OUT/$name.log" 2>&1
    tail -n 1 "$OUT/$name.log" | cut -c1-160
}

row() {   # backbone, head: width 1, depth 1, the recipe's other settings, EPOCHS epochs
    run "$1-$2" 1 --set backbone="$1" --set width=1.0 --set depth=1 --set head="$2" --set max_epochs=$EPOCHS
}

# Two lanes of one thread each, so that the two cores stay busy.
(row small_cnn regression; row small_cnn unet; row res_cnn heatmap) & lane1=$!
(row small_cnn heatmap; row res_cnn regression; row res_cnn unet) & lane2=$!
wait $lane1
wait $lane2   # each `wait PID` returns that lane's status: set -e stops on a failed run
# The recipe as `python -m fkd_core.train --recipe best-cpu` runs it: torch's default threads.
run best-cpu "$("$PY" -c 'import torch; print(torch.get_num_threads())')"
refuse_dirty_runs "$OUT"
"$PY" -m bench.accuracy report "$OUT" --json bench/results/accuracy.json > bench/results/accuracy-table.md
echo "wrote bench/results/accuracy-table.md and bench/results/accuracy.json from $OUT"
