#!/usr/bin/env bash
# Regenerate the four reference studies under the fixed-budget confirm (issue 19), all from one
# clean commit (every trial's git_commit without "-dirty"; each command is in its sweep.json),
# one after another, alone on the machine:
#
#   bash results/regenerate.sh            # from the repository root, after `make install`
#
# Before running: remove the old studies in a commit of their own (this script refuses to start
# otherwise: sweep.run never overwrites a results folder, and a deletion left uncommitted would
# mark every trial "-dirty"):
#   git rm -r -q results/fkd-yt15 results/fkd-yt15-reproduce results/synthetic-rigidity
#   git commit -m "results: remove the old studies"
#
# Expected wall time on the 2-core machine (two 1-thread trials at a time; per-epoch times from
# bench.accuracy runs on it, 1 thread, bf16 autocast as precision=auto picks here):
#   synthetic-rigidity   6 configs, 8 epochs, confirm rounds of 3 up to 9          ~  5 min
#   fkd-yt15-reproduce   4 configs, 15 epochs, confirm rounds of 3 up to 9          ~ 10 min
#   youtube-faces-68     4 search trials + 2 arms x 4..8 replicates x 1.2 min      ~ 10-16 min
#   fkd-yt15             8 search trials + 2 cells x 3 arms x 3..6 replicates
#                        (regression 40 epochs ~1.4 min, heatmap 50 epochs ~2.5 min) ~ 25-45 min
# Each study's wall time goes to results/<name>/wall.txt. Measured from 8842779 (2026-12-02, alone):
# rigidity 81 s, reproduce 393 s, youtube-faces-68 883 s, fkd-yt15 2730 s (both rounds ran).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FKD=../shared/data/fkd-yt15/training.csv.gz
YT68=../shared/data/youtube-faces-68/training_frames_keypoints.csv
CLUSTER=clusters/local.yaml
STUDIES=(synthetic-rigidity fkd-yt15-reproduce youtube-faces-68 fkd-yt15)

for name in "${STUDIES[@]}"; do
    if [ -e "results/$name" ]; then
        echo "regenerate.sh: results/$name exists; remove the old studies in a commit first (see the header)" >&2
        exit 2
    fi
done
if ! git diff --quiet || ! git diff --cached --quiet; then
    echo "regenerate.sh: the working tree has uncommitted changes; commit them so that git_commit is clean" >&2
    exit 2
fi

study() {  # study NAME ARGS...: run the sweep, record its wall time, analyze it
    local name=$1; shift
    local start=$SECONDS
    echo "+ $PY -m sweep.run --cluster $CLUSTER --name $name $*"
    "$PY" -m sweep.run --cluster "$CLUSTER" --name "$name" "$@"
    echo "$((SECONDS - start)) s wall for sweep.run, commit $(git rev-parse --short HEAD), $(date -u +%FT%TZ)" \
        > "results/$name/wall.txt"
    "$PY" -m sweep.analyze "results/$name"
    cat "results/$name/wall.txt"
}

# 1. Synthetic rigidity: pose variation 0 / 1 / 2, MSE vs MSE + 0.1*CGD.
study synthetic-rigidity --space sweep/spaces/rigidity-cpu.yaml
# 2. The reproduction: the study's defects vs the corrected protocol, MSE vs MSE + CGD.
study fkd-yt15-reproduce --space reproduce --data "$FKD" --seeds 1 --max-epochs 15 \
    --confirm 3 --until-decided --max-seeds 9
# 3. 68 points, person-disjoint.
study youtube-faces-68 --space sweep/spaces/yt68.yaml --data "$YT68"
# 4. Real faces, group-disjoint, two heads, tuned alpha and alpha 0.01.
study fkd-yt15 --space sweep/spaces/fkd-yt15.yaml --data "$FKD"

for name in "${STUDIES[@]}"; do
    # Each report must say how its splits were made; the real-faces ones must be group-disjoint.
    "$PY" - "$name" <<'CHECK'
import json, sys
name = sys.argv[1]
saved = json.load(open(f"results/{name}/sweep.json"))
kinds = (saved.get("confirm") or {}).get("split", {})
print(f"  {name}: splits {sorted(set(kinds.values()))}")
# The reproduction's study_defects cell validates on the file's tail (the study's defect), which
# cuts through people by design; every other real-faces cell must be group-disjoint.
bad = {c: k for c, k in kinds.items() if k != "group-disjoint"
       and not (name == "fkd-yt15-reproduce" and "split=tail" in c)}
if name != "synthetic-rigidity" and bad:
    print(f"regenerate.sh: {name} was not split group-disjoint: {bad}", file=sys.stderr)
    sys.exit(1)
CHECK
done

# The README's Results lines: each cell's verdict, interval, replicates and plan.
"$PY" - "${STUDIES[@]}" <<'ROWS'
import sys
import pandas as pd
for name in sys.argv[1:]:
    table = pd.read_csv(f"results/{name}/verdicts.csv")
    print(f"{name}:")
    for r in table.itertuples():
        print(f"  {r.cell} / {r.shape} (alpha {r.alpha:g}): {r.verdict_text}, d {r.d_mean:+.3f} "
              f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] px, n={r.n}, sd(d) {r.d_sd:.3f}, "
              f"base / shape {r.base_test_rmse:.3f} / {r.shape_test_rmse:.3f} px; "
              f"plan: {r.needed} ({r.plan_design}), {r.more} more")
ROWS
