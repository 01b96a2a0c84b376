"""Trainer overhead: training steps of fkd_core.train against a bare PyTorch loop, and the cost
of augmentation.

    python -m bench.trainer            # small_cnn and resnet18
    python -m bench.trainer --quick    # fewer steps
    python -m bench.trainer --compile  # and torch.compile against eager (small_cnn)

The bare loop is what anyone would write first: the same model (build_model, in the same
channels_last memory format that train uses), batch size, optimiser (Adam 1e-3) and data tensors
on the same device, `F.mse_loss` on complete faces, no augmentation, no metrics.

How it is timed: a global optimiser hook stamps the end of every training step, on both sides,
so a step interval covers everything between two updates (slicing, augmentation, forward,
loss, backward, step) and nothing else (validation, checkpoints, setup). The first steps of each
run (allocator warm-up) and its last (maybe a short batch) are dropped; the median interval,
pooled over alternating runs, counts.

Augmentation's share of a step is measured paired, inside the same steps: during the augmented
runs fkd_core.augment.apply_ (per step) and plan (per epoch, spread over its steps) are wrapped
by a timer, and each step's augmentation time is divided by that step's time (median over steps). Comparing the img/s of separate runs with
and without augmentation gives the same quantity unpaired, but on a shared machine its run-to-run
noise (+-10%) is as large as the target; both are printed.

On the CPU the clock is the CPU time of the training thread, with torch limited to that one
thread: on a machine shared with other work, wall times swing tenfold with the neighbours' load
(and two OpenMP threads spin-wait for each other when one is descheduled), while the CPU time of
a single thread is the work itself. The CPU numbers are therefore images per core-second. On a
GPU the clock is wall time (the device is not shared).

Targets: ours >= bare / 1.10 without augmentation; augmentation <= 10% of a training step.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from fkd_core import augment, metrics
from fkd_core.config import TrialConfig
from fkd_core.data import KeypointData, load_dataset, split_indices
from fkd_core.models import build_model
from fkd_core.synth import one_thread
from fkd_core.device import resolve_device
from fkd_core.trainer import mean_face, train

OVERHEAD_TARGET = 1.10
AUGMENT_SHARE_TARGET = 0.10
WARMUP_STEPS = 2
# Training images per run (batch 64): (full, quick).
SIZES = {"small_cnn": (1920, 640), "resnet18": (768, 384)}
AUGMENT_POLICY = "full"   # the superset of the study's augmentations: the worst case


@contextlib.contextmanager
def step_intervals(clock: Callable[[], float]) -> Iterator[list[float]]:
    """Seconds of clock between consecutive optimiser steps inside the block (one epoch)."""
    stamps: list[float] = []
    hook = register_optimizer_step_post_hook(lambda *args: stamps.append(clock()))
    intervals: list[float] = []
    try:
        yield intervals
    finally:
        hook.remove()
        # The last step of an epoch may be a short batch: left out with the warm-up steps.
        intervals.extend(np.diff(stamps)[WARMUP_STEPS:-1].tolist())


@contextlib.contextmanager
def augment_times(clock: Callable[[], float]) -> Iterator[dict[str, list[float]]]:
    """Seconds of clock spent in each call of fkd_core.augment.plan (once per epoch) and
    fkd_core.augment.apply_ (once per step) inside the block."""
    times: dict[str, list[float]] = {"plan": [], "apply_": []}
    originals = {name: getattr(augment, name) for name in times}

    def timed(name):
        def call(*args, **kwargs):
            start = clock()
            try:
                return originals[name](*args, **kwargs)
            finally:
                times[name].append(clock() - start)
        return call

    for name in times:
        setattr(augment, name, timed(name))
    try:
        yield times
    finally:
        for name, original in originals.items():
            setattr(augment, name, original)


def paired_shares(intervals: list[float], aug: dict[str, list[float]]) -> list[float]:
    """Per step: augmentation time / step time, the epoch's plan spread evenly over its steps.

    Interval i (after the WARMUP_STEPS dropped by step_intervals) ends with the update of batch
    WARMUP_STEPS + 1 + i, whose apply_ call it holds; the plan ran before the first step, so it
    is in no interval and is added to both sides."""
    first = WARMUP_STEPS + 1
    plan = sum(aug["plan"]) / max(len(aug["apply_"]), 1)
    return [(a + plan) / (t + plan) for a, t in zip(aug["apply_"][first:first + len(intervals)], intervals)]


def _complete(data: KeypointData) -> KeypointData:
    """Faces with every keypoint, so that the bare loop's plain F.mse_loss is defined."""
    return data.subset(data.complete_mask().nonzero().flatten().numpy())


def bare_epoch(cfg: TrialConfig, data: KeypointData, device: torch.device) -> None:
    """One epoch of a plain loop over the same training split, model and optimiser."""
    torch.manual_seed(cfg.seed)
    train_idx, _ = split_indices(len(data), cfg.val_fraction, cfg.split_seed, cfg.split)
    rows = data.subset(train_idx)
    images, keypoints = rows.images.to(device), rows.keypoints.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg.backbone, data.schema.num_keypoints, dropout=cfg.dropout,
                        mean_face=mean_face(rows.keypoints, images.shape[-1]))
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    order = torch.randperm(len(images), device=device)
    for i in range(0, len(images), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        x = (images[idx].float() / 255.0).contiguous(memory_format=memory_format)
        loss = F.mse_loss(model(x), keypoints[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()


def _images_per_s(intervals: list[float], batch_size: int) -> float:
    return batch_size / float(np.median(intervals))


def measure(backbone: str, data: KeypointData, repeats: int) -> list[dict]:
    """Rows for one backbone: overhead without augmentation, then augmentation's share."""
    # fp32 like the bare loop: "auto" is bf16 on CPUs with bf16 units (fkd_core.precision).
    cfg = TrialConfig(backbone=backbone, device="auto", augment="none", max_epochs=1, precision="fp32")
    device = resolve_device(cfg.device)
    on_cpu = device.type == "cpu"
    clock = time.thread_time if on_cpu else time.perf_counter
    sides: dict[str, list[float]] = {"bare": [], "ours": [], "ours_aug": []}
    shares: list[float] = []
    with one_thread() if on_cpu else contextlib.nullcontext():
        for _ in range(repeats):   # alternate, so that drifts hit every side alike
            with step_intervals(clock) as steps:
                bare_epoch(cfg, data, device)
            sides["bare"] += steps
            with step_intervals(clock) as steps:
                train(cfg, data, lambda row: None)
            sides["ours"] += steps
            with augment_times(clock) as aug, step_intervals(clock) as steps:
                train(cfg.replace(augment=AUGMENT_POLICY), data, lambda row: None)
            sides["ours_aug"] += steps
            shares += paired_shares(steps, aug)
    bare, ours, ours_aug = (_images_per_s(sides[k], cfg.batch_size) for k in sides)
    unpaired = 1.0 - ours_aug / ours       # (t_aug - t_plain) / t_aug per step, separate runs
    share = float(np.median(shares))
    unit = "img per core-second, 1 thread" if on_cpu else "img/s wall"
    return [
        {"name": f"{backbone}: train img/s, bare loop vs fkd_core.train", "reference": bare,
         "ours": ours, "ratio": bare / ours, "target": f"<= {OVERHEAD_TARGET:.2f}x",
         "passed": bare / ours <= OVERHEAD_TARGET, "note": unit},
        {"name": f"{backbone}: augment={AUGMENT_POLICY!r}, share of a training step", "reference": ours,
         "ours": ours_aug, "ratio": share,
         "target": f"<= {AUGMENT_SHARE_TARGET:.2f} of a step",
         "passed": share <= AUGMENT_SHARE_TARGET,
         "note": f"reference/ours = img/s without/with it; paired share {100 * share:.1f}% of a step, "
                 f"unpaired {100 * unpaired:.0f}%; {unit}"},
    ]


def measure_compile(backbone: str, data: KeypointData, repeats: int = 2) -> dict:
    """A row: fkd_core.train's steps with TrialConfig(compile=True) against eager (after the
    compiled model's first epoch, which pays for the compilation); the compile time is noted."""
    cfg = TrialConfig(backbone=backbone, device="auto", augment="none", max_epochs=2)
    on_cpu = resolve_device(cfg.device).type == "cpu"
    clock = time.thread_time if on_cpu else time.perf_counter
    sides: dict[bool, list[float]] = {False: [], True: []}
    first_epoch: list[float] = []
    with one_thread() if on_cpu else contextlib.nullcontext():
        for _ in range(repeats):
            for compiled in (False, True):
                rows: list[dict] = []
                with step_intervals(clock) as steps:
                    train(cfg.replace(compile=compiled), data, rows.append)
                sides[compiled] += steps[len(steps) // 2:]          # the second epoch
                if compiled:
                    first_epoch.append(rows[0][metrics.EPOCH_SECONDS])
    eager, compiled = (_images_per_s(sides[k], cfg.batch_size) for k in (False, True))
    return {"name": f"{backbone}: train img/s, eager vs compile=True", "reference": eager, "ours": compiled,
            "ratio": eager / compiled, "target": "report (compile is off by default)", "passed": None,
            "note": f"first compiled epoch {max(first_epoch):.0f} s wall; "
                    f"{'img per core-second, 1 thread' if on_cpu else 'img/s wall'}"}


def run(quick: bool = False) -> list[dict]:
    """Rows {name, reference, ours, ratio, target, passed} for small_cnn and resnet18."""
    rows = []
    for backbone, sizes in SIZES.items():
        n_train = sizes[1] if quick else sizes[0]
        # Synthetic faces: the benchmark must run on a fresh machine; their size is the Kaggle one.
        data = _complete(load_dataset("synthetic", synth_n=int(n_train / 0.85) + 1, synth_seed=0))
        rows += measure(backbone, data, repeats=2 if quick else 3)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trainer", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time TrialConfig(compile=True) against eager for small_cnn (~1-2 min)")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick)
    if args.compile:
        data = _complete(load_dataset("synthetic", synth_n=900, synth_seed=0))
        rows.append(measure_compile("small_cnn", data))
    print("| measure | reference | ours | ratio | target | pass |\n|---|---|---|---|---|---|")
    for r in rows:
        note = f" ({r['note']})" if r.get("note") else ""
        verdict = "-" if r["passed"] is None else "pass" if r["passed"] else "FAIL"
        print(f"| {r['name']}{note} | {r['reference']:.0f} | {r['ours']:.0f} | {r['ratio']:.3f} | "
              f"{r['target']} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
