#!/usr/bin/env bash
# Regenerate the three reference studies with the search + confirm protocol (issue 11), each from
# a clean commit (trials.parquet's git_commit without "-dirty") with its command in sweep.json.
#
#   bash results/regenerate.sh            # from the repository root, after `make install`
#
# Before running: remove the old studies in a commit of their own (this script refuses to start
# otherwise, because sweep.run never overwrites a results folder and a deletion left uncommitted
# would mark every trial "-dirty"):
#   git rm -r -q results/fkd-yt15-quick results/fkd-yt15-reproduce results/synthetic-rigidity
#   git commit -m "results: remove the pre-protocol studies"
#
# CPU time, estimated from the trial times on this 2-core machine (results/fkd-yt15-quick:
# small_cnn, no augmentation, 6.2 s per epoch on fkd-yt15's training rows, best epoch 12.8 of 16;
# results/fkd-yt15-reproduce: 3.7 s/epoch with `study` augmentation, 8.1 s with `study_exact`;
# the synthetic faces: ~2.5 s per epoch per 1,000 faces under load), two trials at a time:
#   fkd-yt15            search 8 trials (~65 epochs with ASHA per arm)          ~  7 core-min
#                       confirm 2 arms x 5..10 replicates x ~17 epochs (stops
#                       4 after its best)                                        ~ 18-35 core-min
#   fkd-yt15-reproduce  4 configs x (1 search + 3 confirm) x 10 epochs            ~ 16 core-min
#   synthetic-rigidity  6 configs x (1 search + 3 confirm) x 8 epochs, 1,000 faces ~ 8 core-min
#   + Ray start and analysis, ~1 minute per study
# Total: ~50-70 core-minutes, i.e. ~25-35 minutes on 2 cores (the upper end when fkd-yt15 stays
# undecided and runs all 10 replicates).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=../shared/data/fkd-yt15/training.csv.gz
CLUSTER=clusters/local.yaml

for name in fkd-yt15 fkd-yt15-reproduce synthetic-rigidity fkd-yt15-quick; do
    if [ -e "results/$name" ]; then
        echo "regenerate.sh: results/$name exists; remove the old studies in a commit first (see the header)" >&2
        exit 2
    fi
done
if ! git diff --quiet || ! git diff --cached --quiet; then
    echo "regenerate.sh: the working tree has uncommitted changes; commit them so that git_commit is clean" >&2
    exit 2
fi

run() { echo "+ $*"; /usr/bin/time -f "  %e s wall, %U s user" "$@"; }

# 1. Real faces, group-disjoint: search, then confirm until decided or 10 replicates.
run "$PY" -m sweep.run --cluster "$CLUSTER" --space sweep/spaces/fkd-yt15.yaml --data "$DATA" \
    --name fkd-yt15
# 2. The reproduction: the study's defects vs the corrected protocol, MSE vs MSE + CGD.
run "$PY" -m sweep.run --cluster "$CLUSTER" --space reproduce --data "$DATA" --seeds 1 \
    --max-epochs 10 --confirm 3 --name fkd-yt15-reproduce
# 3. Synthetic rigidity: pose variation 0 / 1 / 2, MSE vs MSE + 0.1*CGD.
run "$PY" -m sweep.run --cluster "$CLUSTER" --space sweep/spaces/rigidity-cpu.yaml \
    --name synthetic-rigidity

for name in fkd-yt15 fkd-yt15-reproduce synthetic-rigidity; do
    run "$PY" -m sweep.analyze "results/$name"
    # Each report must say how its splits were made; the real-faces ones must be group-disjoint.
    "$PY" - "$name" <<'CHECK'
import json, sys
name = sys.argv[1]
saved = json.load(open(f"results/{name}/sweep.json"))
split = sorted(set((saved.get("confirm") or {}).get("split", {}).values()))
print(f"  {name}: splits {split}, {saved['confirm'].get('replicates')} replicates, "
      f"{saved['confirm'].get('looks')} looks")
if name.startswith("fkd-yt15") and split != ["group-disjoint"]:
    print(f"regenerate.sh: {name} was not split group-disjoint ({split})", file=sys.stderr)
    sys.exit(1)
CHECK
done
