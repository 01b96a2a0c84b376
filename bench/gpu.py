"""The prepared GPU measurement: one script, about 8 minutes on one H100/H200, all numbers to JSON.

    python -m bench.gpu --out bench/results             # on a GPU machine (see bench/gpu.sh)
    python -m bench.gpu --dry-run --out /tmp/gpu-dry    # same code path on the CPU, tiny, < 1 min

What it prints and writes (``<out>/gpu.json``, ``<out>/gpu.md``):
1. the device, and a large bf16 matmul as the ceiling check (TFLOP/s);
2. training images/s of ``fkd_core.train`` vs a bare PyTorch loop (same model, batch, optimiser,
   bf16 autocast, channels_last, data already on the GPU) for resnet50, densenet121, resnet18 and
   small_cnn at batch 64 and 256, then with ``augment="full"`` at batch 256 (augmentation's share);
3. packing: 1, 2, 4 and 8 concurrent trials on the one GPU (what ``--gpus-per-trial 1, 0.5, 0.25,
   0.125`` gives under Ray), aggregate images/s, GPU utilisation and memory;
4. a time-boxed ``study``-space sweep on the real faces end to end, when ray is importable.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fkd_core.config import TrialConfig
from fkd_core.data import load_dataset
from fkd_core.metrics import IMAGES_PER_S
from fkd_core.models import build_model
from fkd_core.train import train

BACKBONES = ("resnet50", "densenet121", "resnet18", "small_cnn")
PACKING = (1, 2, 4, 8)
# Targets of issue 6 on one H100 (aggregate over packed trials).
PACKED_TARGETS = {"resnet50": 10_000, "densenet121": 6_000}


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; the dry run shrinks everything."""

    device: str
    faces: int
    batches: tuple[int, ...]
    epochs: int
    bare_steps: int
    matmul_n: int
    packing: tuple[int, ...]
    packing_backbones: tuple[str, ...]
    backbones: tuple[str, ...]


FULL = Sizes("cuda", 8192, (64, 256), 3, 60, 8192, PACKING, ("resnet50", "densenet121"), BACKBONES)
DRY = Sizes("cpu", 64, (8,), 2, 3, 256, (1, 2), ("small_cnn",), ("small_cnn",))


def matmul_tflops(n: int, device: str) -> float:
    """bf16 n x n matmul throughput: the ceiling the trials are compared against."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 20 if device == "cuda" else 2
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def bare_loop_images_per_s(backbone: str, batch: int, steps: int, images: torch.Tensor,
                           keypoints: torch.Tensor, device: str) -> float:
    """The plain reference: index-slice batches of on-device data, forward, MSE, Adam step."""
    model = build_model(backbone, keypoints.shape[1]).to(device)
    cuda = device == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = images.to(device)
    y_all = torch.nan_to_num(keypoints.to(device), nan=48.0)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, x_all.shape[0], (batch,), device=device, generator=gen)
        x = x_all[idx].float().div_(255.0)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.mse_loss(model(x).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(max(3, steps // 10)):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def trainer_images_per_s(backbone: str, batch: int, epochs: int, data, device: str,
                         augment: str = "none") -> float:
    """fkd_core.train's own training images/s, best epoch after the first (warm-up, compile)."""
    rows: list[dict] = []
    cfg = TrialConfig(backbone=backbone, batch_size=batch, max_epochs=epochs, device=device,
                      patience=epochs + 1, augment=augment, seed=0)
    train(cfg, data, rows.append)
    warm = rows[1:] or rows
    return max(r[IMAGES_PER_S] for r in warm)


def _packed_worker(backbone: str, batch: int, epochs: int, faces: int, device: str,
                   start_evt, queue) -> None:
    data = load_dataset("synthetic", synth_n=faces, synth_seed=0)
    start_evt.wait()
    queue.put(trainer_images_per_s(backbone, batch, epochs, data, device))


def packed_images_per_s(backbone: str, trials: int, sizes: Sizes, batch: int) -> dict:
    """`trials` processes training at once on one device, as Ray packs fractional-GPU trials."""
    ctx = mp.get_context("spawn")
    start_evt, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_packed_worker,
                         args=(backbone, batch, sizes.epochs, sizes.faces, sizes.device, start_evt, queue))
             for _ in range(trials)]
    for p in procs:
        p.start()
    sampler = _UtilisationSampler(sizes.device)
    time.sleep(1.0 if sizes.device == "cpu" else 5.0)   # let every worker load its data first
    sampler.start()
    start_evt.set()
    rates = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    util = sampler.stop()
    return {"backbone": backbone, "trials": trials, "gpu_fraction": round(1 / trials, 3), "batch": batch,
            "aggregate_images_per_s": sum(rates), "per_trial_images_per_s": rates, **util}


class _UtilisationSampler:
    """Polls nvidia-smi in a thread: mean GPU utilisation and peak memory while trials run."""

    def __init__(self, device: str) -> None:
        self.enabled = device == "cuda"
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def _poll(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.5):
            try:
                util, mem = subprocess.check_output(cmd, text=True).splitlines()[0].split(",")
                self.samples.append((float(util), float(mem)))
            except (OSError, subprocess.SubprocessError, ValueError):
                return

    def stop(self) -> dict:
        self._stop.set()
        if not self.samples:
            return {"gpu_util_pct": None, "gpu_mem_peak_mib": None}
        busy = [u for u, _ in self.samples]
        return {"gpu_util_pct": sum(busy) / len(busy), "gpu_mem_peak_mib": max(m for _, m in self.samples)}


def study_sweep(out: Path, seconds: int) -> dict:
    """The `study` space on the real faces, end to end through Ray, time-boxed."""
    data = Path("data/fkd-yt15/training.csv.gz")
    try:
        import ray  # noqa: F401  (only to know whether the sweep can run here)
    except ImportError:
        return {"skipped": "ray is not installed on this machine (see bench/gpu.sh)"}
    if not data.exists():
        return {"skipped": f"{data} not found: copy ../shared/data/fkd-yt15 into ./data and carry it"}
    cmd = [sys.executable, "-m", "sweep.run", "--cluster", "clusters/local.yaml", "--space", "study",
           "--data", str(data), "--name", "fkd-yt15-study-gpu", "--results-dir", str(out),
           "--gpus-per-trial", "0.25", "--max-epochs", "15"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
    return {"command": " ".join(cmd), "returncode": proc.returncode,
            "wall_s": time.perf_counter() - start, "tail": proc.stdout[-3000:] + proc.stderr[-2000:]}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(sizes: Sizes, out: Path, sweep_seconds: int) -> dict:
    device = sizes.device
    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
                    "torch": torch.__version__, "sizes": sizes.__dict__}
    result["matmul_bf16_tflops"] = matmul_tflops(sizes.matmul_n, device)
    _log(f"matmul bf16: {result['matmul_bf16_tflops']:.1f} TFLOP/s on {result['device']}")
    data = load_dataset("synthetic", synth_n=sizes.faces, synth_seed=0)
    throughput = []
    for backbone in sizes.backbones:
        for batch in sizes.batches:
            bare = bare_loop_images_per_s(backbone, batch, sizes.bare_steps, data.images,
                                          data.keypoints, device)
            ours = trainer_images_per_s(backbone, batch, sizes.epochs, data, device)
            throughput.append({"backbone": backbone, "batch": batch, "bare_images_per_s": bare,
                               "train_images_per_s": ours, "ratio": ours / bare})
            _log(f"{backbone:>12} b{batch:<4} bare {bare:9.0f} img/s  train {ours:9.0f} img/s  "
                 f"x{ours / bare:.2f}")
    result["throughput"] = throughput
    # Augmentation's cost on the device: the same trainer with augment="full" at the largest batch.
    augmented = []
    for row in (r for r in throughput if r["batch"] == max(sizes.batches)):
        aug = trainer_images_per_s(row["backbone"], row["batch"], sizes.epochs, data, device, "full")
        augmented.append({"backbone": row["backbone"], "batch": row["batch"],
                          "train_images_per_s": row["train_images_per_s"], "augment_full_images_per_s": aug,
                          "augment_share": 1.0 - aug / row["train_images_per_s"]})
        _log(f"{row['backbone']:>12} b{row['batch']:<4} augment=full {aug:9.0f} img/s "
             f"({100 * augmented[-1]['augment_share']:.0f}% of a step)")
    result["augmentation"] = augmented
    packing = []
    for backbone in sizes.packing_backbones:
        for trials in sizes.packing:
            row = packed_images_per_s(backbone, trials, sizes, batch=max(sizes.batches))
            packing.append(row)
            _log(f"packing {backbone} x{trials}: {row['aggregate_images_per_s']:.0f} img/s "
                 f"util {row['gpu_util_pct']} mem {row['gpu_mem_peak_mib']} MiB")
    result["packing"] = packing
    result["sweep"] = study_sweep(out, sweep_seconds) if device == "cuda" else {"skipped": "dry run"}
    return result


def markdown(result: dict) -> str:
    lines = [f"Device: {result['device']}, torch {result['torch']}; bf16 matmul "
             f"{result['matmul_bf16_tflops']:.1f} TFLOP/s", "",
             "| backbone | batch | bare loop img/s | fkd_core.train img/s | ratio | target |",
             "|---|---|---|---|---|---|"]
    for r in result["throughput"]:
        lines.append(f"| {r['backbone']} | {r['batch']} | {r['bare_images_per_s']:,.0f} | "
                     f"{r['train_images_per_s']:,.0f} | {r['ratio']:.2f} | >= 0.9 |")
    lines += ["", "| backbone | batch | train img/s | with augment=full | augmentation share of a step | target |",
              "|---|---|---|---|---|---|"]
    for r in result["augmentation"]:
        lines.append(f"| {r['backbone']} | {r['batch']} | {r['train_images_per_s']:,.0f} | "
                     f"{r['augment_full_images_per_s']:,.0f} | {100 * r['augment_share']:.0f}% | <= 10% |")
    lines += ["", "| backbone | trials/GPU | aggregate img/s | GPU util % | peak MiB | target img/s |",
              "|---|---|---|---|---|---|"]
    for r in result["packing"]:
        lines.append(f"| {r['backbone']} | {r['trials']} | {r['aggregate_images_per_s']:,.0f} | "
                     f"{r['gpu_util_pct']} | {r['gpu_mem_peak_mib']} | "
                     f"{PACKED_TARGETS.get(r['backbone'], '')} |")
    return "\n".join(lines)


def _log(message: str) -> None:
    print(f"[gpu] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results", help="folder for gpu.json and gpu.md")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (< 1 minute)")
    parser.add_argument("--sweep-seconds", type=int, default=180, help="time box of the study sweep")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device; use --dry-run to exercise the code path on the CPU",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = measure(DRY if args.dry_run else FULL, out, args.sweep_seconds)
    (out / "gpu.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
