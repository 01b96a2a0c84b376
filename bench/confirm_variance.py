"""Variance components of a confirm trial's d: training seed x split seed, crossed.

    nice -n 10 python -m bench.confirm_variance                       # 3 x 3, 20 epochs (~20-40 min)
    python -m bench.confirm_variance --seeds 4 --splits 4 --epochs 30 # larger
    python -m bench.confirm_variance --tiny                           # 2 x 2 x 2 epochs, a smoke check
    python -m bench.confirm_variance --part 0/2 & python -m bench.confirm_variance --part 1/2  # two cores

Every (training seed i, split seed j) pair trains both arms (MSE, MSE + alpha*CGD) under the
confirm phase's fixed budget: the schedule runs to its end (cosine, no early stopping), and the
scored weights are the final ones (also recorded: the best-validation epoch's, the noisier
option). d_ij = test RMSE(shape arm) - test RMSE(base arm). A two-way random-effects ANOVA
without replication, d_ij = mu + a_i + b_j + e_ij, estimates

- var(a): what the training seed (initialisation, batch order) adds to d;
- var(b): what the validation split (which rows train) adds to d;
- var(e): the rest (seed x split interaction and noise; not separable without replication).

A confirm replicate that draws a fresh split has var(d) = var(a) + var(b) + var(e); one that
keeps the split fixed (or trains on every non-test row) removes var(b) but conditions on it.

Each finished run is appended to <out>/confirm-variance-runs.jsonl as it ends, so a killed run
loses at most the run in progress and a second invocation runs only what is missing. The summary
goes to <out>/confirm-variance.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fkd_core import metrics as M
from fkd_core.config import TrialConfig
from fkd_core.data import load_for_config
from fkd_core.trainer import train

DATA = "../shared/data/fkd-yt15/training.csv.gz"
# The committed fkd-yt15 study's confirm recipe (results/fkd-yt15/trials.parquet, phase confirm).
RECIPE = {"backbone": "small_cnn", "augment": "none", "lr": 0.0013270, "dropout": 0.1}
SHAPE_ALPHA = 0.13982
SEED0, SPLIT0 = 1000, 2000   # away from the search's seeds, as sweep.confirm does


def configs(data: str, seeds: int, splits: int, epochs: int) -> list[TrialConfig]:
    """Both arms of every (seed, split) pair under the fixed budget (module docstring)."""
    out = []
    for i in range(seeds):
        for j in range(splits):
            for shape, alpha in (("none", 0.0), ("cgd", SHAPE_ALPHA)):
                out.append(TrialConfig(data=data, **RECIPE, shape=shape, alpha=alpha, max_epochs=epochs,
                                       patience=epochs, schedule="cosine", seed=SEED0 + i,
                                       split_seed=SPLIT0 + j, score_test=True, device="cpu",
                                       checkpoint_best=False))
    return out


def key(cfg: TrialConfig) -> str:
    return f"seed={cfg.seed} split={cfg.split_seed} shape={cfg.shape} epochs={cfg.max_epochs}"


def one_run(cfg: TrialConfig, data: Any) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    train(cfg, data, rows.append)
    best = min(rows, key=lambda r: r[M.VAL_RMSE])
    return {"key": key(cfg), "seed": cfg.seed, "split_seed": cfg.split_seed, "shape": cfg.shape,
            "final_test_rmse_px": rows[-1][M.TEST_RMSE], "best_val_test_rmse_px": best[M.TEST_RMSE],
            "best_epoch": best[M.EPOCH], "seconds": time.perf_counter() - start}


def _mean_square(ss: float, dof: int) -> float:
    return ss / dof if dof > 0 else math.nan   # a factor at one level has no mean square


def _component(value: float) -> float:
    """A method-of-moments variance, negative estimates truncated at 0 (NaN stays NaN)."""
    return max(0.0, value) if math.isfinite(value) else math.nan


def components(d: np.ndarray) -> dict[str, float]:
    """Two-way random-effects ANOVA without replication on d [seeds, splits] (method of moments,
    negative estimates truncated at 0; NaN where a factor has one level)."""
    r, c = d.shape
    grand = d.mean()
    ms_seed = _mean_square(c * ((d.mean(axis=1) - grand) ** 2).sum(), r - 1)
    ms_split = _mean_square(r * ((d.mean(axis=0) - grand) ** 2).sum(), c - 1)
    resid = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + grand
    ms_e = _mean_square((resid ** 2).sum(), (r - 1) * (c - 1))
    var_seed, var_split = _component((ms_seed - ms_e) / c), _component((ms_split - ms_e) / r)
    return {"mean_d": float(grand), "var_seed": float(var_seed), "var_split": float(var_split),
            "var_resid": float(ms_e), "sd_d_fresh_split": math.sqrt(var_seed + var_split + ms_e),
            "sd_d_fixed_split": math.sqrt(var_seed + ms_e), "sd_d_observed": float(d.std(ddof=1)),
            "n": int(d.size)}


def summarise(runs: list[dict[str, Any]], seeds: list[int], splits: list[int]) -> dict[str, Any]:
    by = {(r["seed"], r["split_seed"], r["shape"]): r for r in runs}
    out: dict[str, Any] = {}
    for scored in ("final_test_rmse_px", "best_val_test_rmse_px"):
        d = np.array([[by[(i, j, "cgd")][scored] - by[(i, j, "none")][scored] for j in splits]
                      for i in seeds])
        out[scored] = {**components(d), "d": d.round(4).tolist()}
    out["mean_rmse_px"] = {s: float(np.mean([r["final_test_rmse_px"] for r in runs if r["shape"] == s]))
                           for s in ("none", "cgd")}
    return out


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"# Variance components of d (fkd-yt15, small_cnn, {args.epochs} epochs cosine, no early stop)",
             "", f"`python -m bench.confirm_variance {' '.join(sys.argv[1:])}`; {args.seeds} training seeds x {args.splits} split seeds x 2 arms.",
             "", "| scored | mean d | sd(seed) | sd(split) | sd(resid) | sd(d) fresh split | sd(d) fixed split | "
             "sd(d) observed | n |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for scored, label in (("final_test_rmse_px", "final weights"), ("best_val_test_rmse_px", "best val epoch")):
        c = summary[scored]
        lines.append(f"| {label} | {c['mean_d']:+.4f} | {math.sqrt(c['var_seed']):.4f} | "
                     f"{math.sqrt(c['var_split']):.4f} | {math.sqrt(c['var_resid']):.4f} | "
                     f"{c['sd_d_fresh_split']:.4f} | {c['sd_d_fixed_split']:.4f} | "
                     f"{c['sd_d_observed']:.4f} | {c['n']} |")
    rm = summary["mean_rmse_px"]
    lines += ["", f"Mean final test RMSE: base {rm['none']:.3f} px, cgd {rm['cgd']:.3f} px."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.confirm_variance", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--splits", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--tiny", action="store_true", help="2 x 2 pairs of 2 epochs (a smoke check)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--part", default="0/1", metavar="K/N",
                   help="run only every N-th run from the K-th (parallel processes share the log); "
                        "the summary is written once every run is in the log")
    args = p.parse_args(argv)
    if args.tiny:
        args.seeds, args.splits, args.epochs = 2, 2, 2
    torch.set_num_threads(1)   # a shared machine: one core per run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / ("confirm-variance-tiny-runs.jsonl" if args.tiny else "confirm-variance-runs.jsonl")
    done = {r["key"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    todo = configs(args.data, args.seeds, args.splits, args.epochs)
    data = load_for_config(todo[0])
    part, parts = (int(x) for x in args.part.split("/"))
    for n, cfg in enumerate(todo, 1):
        if key(cfg) in done or (n - 1) % parts != part:
            continue
        run = one_run(cfg, data)
        done[run["key"]] = run
        with open(log, "a") as f:   # one line per finished run: a kill loses only the one running
            f.write(json.dumps(run) + "\n")
        print(f"[{n}/{len(todo)}] {run['key']}: final {run['final_test_rmse_px']:.3f} px, "
              f"{run['seconds']:.0f} s", file=sys.stderr, flush=True)
    done |= {r["key"]: r for r in map(json.loads, log.read_text().splitlines())}   # other parts' runs
    if any(key(c) not in done for c in todo):
        print(f"{sum(key(c) in done for c in todo)} of {len(todo)} runs in {log}; the summary waits "
              "for the rest (run again once the other parts end)", file=sys.stderr)
        return 0
    runs = [done[key(c)] for c in todo]
    summary = summarise(runs, [SEED0 + i for i in range(args.seeds)], [SPLIT0 + j for j in range(args.splits)])
    stem = out / ("confirm-variance-tiny" if args.tiny else "confirm-variance")
    stem.with_suffix(".json").write_text(json.dumps({"args": vars(args), **summary}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(summary, args))
    print(markdown(summary, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
