"""Minutes to <= 1.6 px test RMSE on fkd-yt15, before and after, and bf16 against fp32 over seeds.

    bash bench/recipe_speed.sh [OUT]           # the runs (from a clean commit, alone), then:
    python -m bench.recipe_speed OUT           # -> bench/results/recipe-speed.md and .json

Reads the result.json of every ``bench.accuracy run`` under OUT (bench/recipe_speed.sh names them):
- ``*-20ep`` runs time an older recipe's epochs only: its full run's minutes are its seconds per
  epoch (median of epochs 2..20, the first pays for warm-up) x its epochs; its accuracy is the
  committed one (a cosine schedule's length does not change the time per epoch of a fixed model).
- ``ARM-seed{N}`` runs are a recipe at full length: minutes of training and test RMSE
  (flip-averaged, the recipe's tta_flip) per seed. COMPARISONS pairs two arms by seed (same seed:
  same data order and augmentation draws; same initial weights where the model is the same) and
  gives the mean difference, its t interval and the seed sd of the reference arm.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pandas as pd

from sweep.stats import paired_difference

RESULTS = Path("bench/results")
TARGET_PX = 1.6
TARGET_MIN = 5.0
ARMS = ("fast-cpu-bf16", "fast-cpu-fp32", "fast-cpu-small_cnn-bf16")
# (arm, reference): bf16 against fp32 for the same model; the new trunk against the old, both bf16
COMPARISONS = (("fast-cpu-bf16", "fast-cpu-fp32"), ("fast-cpu-bf16", "fast-cpu-small_cnn-bf16"))


def load(folder: Path) -> dict[str, dict]:
    runs = {}
    for path in sorted(folder.glob("*/result.json")):
        result = json.loads(path.read_text())
        runs[result["name"]] = result
    if not runs:
        raise SystemExit(f"bench.recipe_speed: {folder}: no */result.json (run bench/recipe_speed.sh first)")
    return runs


def seconds_per_epoch(result: dict) -> float:
    return statistics.median(r["epoch_seconds"] for r in result["epochs_rows"][1:])


def seed_rows(runs: dict[str, dict], arm: str) -> list[dict]:
    rows = [r for name, r in runs.items() if name.rpartition("-seed")[0] == arm]
    return sorted(rows, key=lambda r: r["config"]["seed"])


def paired(arm: list[dict], reference: list[dict]) -> dict | None:
    """arm - reference test RMSE (flip avg), paired by seed (sweep.stats.paired_difference): mean,
    sd, 95% t interval, and the reference's own seed sd."""
    by_seed = lambda rows: pd.Series({s["seed"]: s["test_flip_rmse_px"] for s in rows}, dtype=float)
    ref, ours = by_seed(reference), by_seed(arm)
    ci = paired_difference(ref, ours)
    if ci.n < 2:
        return None
    sd = float((ours - ref).dropna().std(ddof=1))
    ref_sd = float(ref.std(ddof=1))
    return {"n": ci.n, "mean_px": ci.mean, "sd_px": sd, "ci95_px": [ci.low, ci.high],
            "reference_seed_sd_px": ref_sd, "within_reference_seed_sd": abs(ci.mean) <= ref_sd}


def summarize(runs: dict[str, dict], full_epochs: dict[str, int]) -> dict:
    """The numbers of the report: per-epoch timings of the older recipes, seeds of fast-cpu."""
    timed = {}
    for name, r in runs.items():
        if name.endswith("-20ep"):
            spe = seconds_per_epoch(r)
            epochs = full_epochs[name]
            timed[name] = {"seconds_per_epoch": spe, "epochs": epochs, "minutes": spe * epochs / 60,
                           "precision": r["config"]["precision"], "commit": r["git_commit"]}
    seeds = {arm: [{"seed": r["config"]["seed"], "backbone": r["config"]["backbone"], "head": r["config"]["head"],
                    "precision": r["config"]["precision"], "test_flip_rmse_px": r["test_flip"]["rmse_px"],
                    "test_rmse_px": r["test"]["rmse_px"], "val_rmse_px": r["best_val_rmse_px"],
                    "train_wall_min": r["train_wall_min"], "seconds_per_epoch": seconds_per_epoch(r),
                    "commit": r["git_commit"]} for r in seed_rows(runs, arm)] for arm in ARMS}
    comparisons = {f"{a} - {b}": paired(seeds[a], seeds[b]) for a, b in COMPARISONS}
    return {"timed": timed, "seeds": seeds, "comparisons": {k: v for k, v in comparisons.items() if v}}


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.mean(values):.{digits}f} (sd {statistics.stdev(values):.{digits}f})"


def markdown(summary: dict) -> str:
    lines = ["| run | precision | epochs | s per epoch | training min | commit |", "|---|---|---|---|---|---|"]
    for name, t in summary["timed"].items():
        lines.append(f"| {name} | {t['precision']} | 20 of {t['epochs']} | {t['seconds_per_epoch']:.2f} | "
                     f"{t['minutes']:.2f} (extrapolated to {t['epochs']}) | {t['commit'][:12]} |")
    lines += ["", "| arm | model | precision | seed | val RMSE px | test RMSE px | test RMSE px, flip avg | "
              "s per epoch | training min | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, rows in summary["seeds"].items():
        for s in rows:
            lines.append(f"| {arm} | {s['backbone']} + {s['head']} | {s['precision']} | {s['seed']} | "
                         f"{s['val_rmse_px']:.3f} | {s['test_rmse_px']:.3f} | {s['test_flip_rmse_px']:.3f} | "
                         f"{s['seconds_per_epoch']:.2f} | {s['train_wall_min']:.2f} | {s['commit'][:12]} |")
    lines.append("")
    for arm, rows in summary["seeds"].items():
        if rows:
            lines.append(f"- {arm}: test RMSE (flip avg) {_mean_sd([s['test_flip_rmse_px'] for s in rows])} px, "
                         f"training {_mean_sd([s['train_wall_min'] for s in rows], 2)} min, seeds "
                         f"{[s['seed'] for s in rows]}; <= {TARGET_PX} px on "
                         f"{sum(s['test_flip_rmse_px'] <= TARGET_PX for s in rows)} of {len(rows)}, <= {TARGET_MIN:g} "
                         f"min on {sum(s['train_wall_min'] <= TARGET_MIN for s in rows)} of {len(rows)}.")
    for name, d in summary["comparisons"].items():
        lo, hi = d["ci95_px"]
        lines.append(f"- {name}, paired by seed (n = {d['n']}): {d['mean_px']:+.3f} px, 95% t interval "
                     f"[{lo:+.3f}, {hi:+.3f}] ({'includes' if lo <= 0 <= hi else 'excludes'} 0); the "
                     f"difference is {'within' if d['within_reference_seed_sd'] else 'larger than'} the "
                     f"reference's seed sd, {d['reference_seed_sd_px']:.3f} px.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipe_speed", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="the OUT folder of bench/recipe_speed.sh")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where recipe-speed.{md,json} go")
    parser.add_argument("--full-epochs", action="append", default=[], metavar="NAME=EPOCHS",
                        help="the full length of a -20ep run's recipe (bench/recipe_speed.sh passes them)")
    args = parser.parse_args(argv)
    full = {}
    for item in args.full_epochs:
        name, _, epochs = item.partition("=")
        if not epochs.isdigit():
            print(f"bench.recipe_speed: --full-epochs {item!r}: expected NAME=EPOCHS", file=sys.stderr)
            return 2
        full[name] = int(epochs)
    runs = load(args.folder)
    missing = [n for n in runs if n.endswith("-20ep") and n not in full]
    if missing:
        print(f"bench.recipe_speed: no --full-epochs for {', '.join(missing)}", file=sys.stderr)
        return 2
    summary = summarize(runs, full)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe-speed.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (args.out / "recipe-speed-table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
