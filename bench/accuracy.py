"""Accuracy of backbone x head on fkd-yt15's group-disjoint test split (people never seen).

    python -m bench.accuracy run --name res_cnn-heatmap --recipe best-cpu --out /tmp/acc
    python -m bench.accuracy run --name small_cnn-regression --recipe best-cpu \\
        --set backbone=small_cnn --set head=regression --out /tmp/acc
    python -m bench.accuracy report /tmp/acc           # -> bench/results/accuracy.md (+ .json)

Each ``run`` trains one model with fkd_core.train on the rows of the people outside the test
split (validation drawn from them; the best epoch is chosen on validation), then scores its
best.pt on the test people, with and without flip averaging. It records test RMSE, NME and shape
error, wall and process CPU time of training, the load average (the machine is shared), training
images/s and inference images/s.

The split is fkd_core's own (fkd_core.data.three_way_split, the one every trial uses): test =
15% of the people of ``training.groups.csv``, fixed by the data's hash and test_seed 0, and
removed from training and validation by fkd_core.train itself; validation = 15% of the remaining
people (split_seed), so every choice below is made on people who are neither trained on nor
tested. The test rows are read only for this table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench import shift
from fkd_core import metrics, recipes
from fkd_core.config import TrialConfig
from fkd_core.data import KeypointData, held_out_rows, load_for_config, split_kind, three_way_split
from fkd_core.predict import load_model, predict
from fkd_core.rundir import BEST
from fkd_core.trainer import train
from sweep.results import git_commit

DATA = "../shared/data/fkd-yt15/training.csv.gz"
RESULTS = Path(__file__).with_name("results")
TARGET_RMSE, TARGET_MINUTES = 1.6, 15.0


def _people(data: KeypointData, rows: np.ndarray) -> int:
    return len({data.groups[i] for i in rows}) if data.groups is not None else len(rows)


def score(model: torch.nn.Module, test: KeypointData, flip: bool) -> dict[str, Any]:
    """Test RMSE, NME, shape error and inference speed; flip-averaged runs also score every
    fixed shift of bench.shift (the stand-in for faces from another source) and their mean."""
    perm = test.schema.flip_permutation()
    t0 = time.perf_counter()
    pred = predict(model, test.images, batch_size=256, flip_perm=perm if flip else None)
    seconds = time.perf_counter() - t0
    mask = torch.isfinite(test.keypoints).all(dim=-1)
    out: dict[str, Any] = {
        "rmse_px": float(metrics.rmse_px(pred, test.keypoints, mask)),
        "nme": float(metrics.nme(pred, test.keypoints, mask, test.schema.norm_pair)),
        "shape_err_px": float(metrics.shape_err_px(pred, test.keypoints, mask)),
        "infer_images_per_s": len(test) / seconds}
    if flip:
        out["shift_rmse_px"] = {}
        for name in shift.SHIFTS:
            images, keypoints = shift.shifted(name, test.images, test.keypoints, perm)
            moved = predict(model, images, batch_size=256, flip_perm=perm)
            out["shift_rmse_px"][name] = float(metrics.rmse_px(moved, keypoints, torch.isfinite(keypoints).all(dim=-1)))
        out["shift_mean_rmse_px"] = float(np.mean(list(out["shift_rmse_px"].values())))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    fields = recipes.load_recipe(args.recipe) if args.recipe else {}
    for item in args.set:
        key, _, value = item.partition("=")
        fields[key] = recipes._typed(Path("--set"), key, yaml_value(value), type(getattr(TrialConfig(), key)))
    cfg = TrialConfig(**{**fields, "data": args.data, "device": "cpu"})
    data = load_for_config(cfg)
    splits = three_way_split(data, cfg)     # train() removes splits.test itself, in every run
    test = data.subset(splits.test)
    out = Path(args.out) / args.name
    rows: list[dict[str, Any]] = []
    commit = git_commit()   # at the start: a file edited during the run must not hide
    load_before = os.getloadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = train(cfg, data, lambda row: (rows.append(row), print(
        f"[{args.name}] epoch {row[metrics.EPOCH]} val {row[metrics.VAL_RMSE]:.3f} px "
        f"{row[metrics.EPOCH_SECONDS]:.1f} s", file=sys.stderr, flush=True)), checkpoint_dir=str(out))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    model = load_model(out / BEST)
    result = {
        "name": args.name, "recipe": args.recipe, "overrides": args.set, "config": cfg.to_dict(),
        "threads": args.threads, "train_rows": len(splits.train), "val_rows": len(splits.val),
        "test_rows": len(test), "split_kind": split_kind(data, cfg),
        "test_people": _people(data, splits.test), "val_people": _people(data, splits.val),
        "best_epoch": summary.best_epoch, "epochs": summary.epochs,
        "best_val_rmse_px": summary.best_val_rmse_px,
        "train_wall_min": wall / 60, "train_cpu_min": cpu / 60,
        "load_before": load_before, "load_after": os.getloadavg(),
        "train_images_per_s": float(np.median([r[metrics.IMAGES_PER_S] for r in rows])),
        "parameters": sum(p.numel() for p in model.parameters()),
        "test": score(model, test, flip=False), "test_flip": score(model, test, flip=True),
        "epochs_rows": rows, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git_commit": commit,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: result[k] for k in ("name", "best_val_rmse_px", "test", "test_flip",
                                               "train_wall_min", "train_cpu_min")}, default=float))
    return result


def score_unfinished(args: argparse.Namespace) -> dict[str, Any]:
    """Score a run that is still training (or was stopped) from its best.pt so far, marked as such:
    the table must say when a deadline, not the recipe, ended a run."""
    torch.set_num_threads(args.threads)
    out = Path(args.out) / args.name
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    cfg = TrialConfig(**state["config"])
    data = load_for_config(cfg)
    test = data.subset(held_out_rows(data, cfg))
    model = load_model(out / BEST)
    progress = state["progress"]
    result = {
        "name": f"{args.name} (unfinished: epoch {progress['epoch']} of {cfg.max_epochs})",
        "recipe": None, "overrides": [], "config": cfg.to_dict(), "threads": 1,
        "train_rows": None, "test_rows": len(test), "best_epoch": progress["best_epoch"],
        "epochs": progress["epoch"], "best_val_rmse_px": progress["best"]["val_rmse_px"],
        "train_wall_min": progress["wall_seconds"] / 60, "train_cpu_min": args.cpu_seconds / 60,
        "load_before": [math.nan] * 3, "load_after": list(os.getloadavg()),
        "train_images_per_s": math.nan, "parameters": sum(p.numel() for p in model.parameters()),
        "test": score(model, test, flip=False), "test_flip": score(model, test, flip=True),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def yaml_value(text: str) -> Any:
    import yaml
    return yaml.safe_load(text)


def _per_cpu_second(r: dict[str, Any]) -> float:
    """Training images per CPU-second of the whole run (validation and augmentation included):
    steadier than wall-clock images/s on a shared machine."""
    if not r.get("train_rows"):
        return math.nan
    images = r["epochs"] * r["train_rows"]
    return images / (60.0 * r["train_cpu_min"])


def report(args: argparse.Namespace) -> str:
    """The markdown tables of every DIR/*/result.json (best flip-averaged test RMSE first), and
    the same rows as JSON."""
    results = sorted((json.loads(p.read_text()) for p in Path(args.dir).glob("*/result.json")),
                     key=lambda r: r["test_flip"]["rmse_px"])
    lines = ["| model | params | val RMSE px | test RMSE px | test RMSE px, flip avg | test NME | "
             "test shape err px | shifted test RMSE px (mean of 8) | epochs (best) | "
             "train min wall / CPU | threads | train img per CPU-s | infer img/s, flip avg | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t, f = r["test"], r["test_flip"]
        lines.append(
            f"| {r['name']} | {r['parameters']:,} | {r['best_val_rmse_px']:.3f} | {t['rmse_px']:.3f} | "
            f"{f['rmse_px']:.3f} | {f['nme']:.4f} | {f['shape_err_px']:.3f} | "
            f"{f.get('shift_mean_rmse_px', math.nan):.3f} | {r['epochs']} ({r['best_epoch']}) | "
            f"{r['train_wall_min']:.1f} / {r['train_cpu_min']:.1f} | {r['threads']} | "
            f"{_per_cpu_second(r):.0f} | {f['infer_images_per_s']:.0f} | {r.get('git_commit', '?')[:12]} |")
    names = shift.SHIFTS
    lines += ["", "Test RMSE px (flip avg) under each fixed shift (bench/shift.py):", "",
              "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in results:
        by = r["test_flip"].get("shift_rmse_px", {})
        lines.append(f"| {r['name']} | " + " | ".join(f"{by.get(n, math.nan):.3f}" for n in names) + " |")
    table = "\n".join(lines)
    Path(args.json or RESULTS / "accuracy.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "epochs_rows"} for r in results], indent=1, default=float))
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.accuracy")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one model and score it on the test people")
    r.add_argument("--name", required=True)
    r.add_argument("--recipe", default=None, help="a recipe name or file (fkd_core/recipes)")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field")
    r.add_argument("--data", default=DATA)
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, default=1)
    u = sub.add_parser("score", help="score a run that has not finished from its best.pt so far")
    u.add_argument("--name", required=True)
    u.add_argument("--out", required=True)
    u.add_argument("--data", default=DATA)
    u.add_argument("--threads", type=int, default=1)
    u.add_argument("--cpu-seconds", type=float, default=math.nan, help="CPU time of the run so far (ps)")
    t = sub.add_parser("report", help="print the markdown table of every DIR/*/result.json")
    t.add_argument("dir")
    t.add_argument("--json", default=None, help="where to write the table as JSON")
    args = p.parse_args(argv)
    if args.command == "run":
        run(args)
    elif args.command == "score":
        print(json.dumps(score_unfinished(args), default=float))
    else:
        print(report(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
