"""The prepared GPU measurement: one script, about 8 minutes on one H100/H200, all numbers to JSON.

    python -m bench.gpu --out bench/results             # on a GPU machine (see bench/gpu.sh)
    python -m bench.gpu --dry-run --out /tmp/gpu-dry    # same code path on the CPU, tiny, < 1 min

What it prints and writes (``<out>/gpu.json``, ``<out>/gpu.md``):
1. the device, and a large bf16 matmul as the ceiling check (TFLOP/s);
2. training images/s of ``fkd_core.train`` vs a bare PyTorch loop (same model, batch, optimiser,
   bf16 autocast, channels_last, data already on the GPU) for resnet50, densenet121, resnet18 and
   small_cnn at batch 64 and 256, then with ``augment="full"`` at batch 256 (augmentation's share);
3. packing: 1, 2, 4 and 8 concurrent trials on the one GPU (what ``--gpus-per-trial 1, 0.5, 0.25,
   0.125`` gives under Ray), each capped at its share of the memory as a sweep trial is
   (``fkd_core.train.limit_gpu_memory``): aggregate images/s, each trial against the bare loop,
   GPU utilisation, peak memory of the card and of each trial;
4. a time-boxed ``study``-space sweep on the real faces end to end, when ray is importable;
5. with the time left: ``TrialConfig(compile=True)`` (modes default and reduce-overhead = CUDA
   graphs) against eager for small_cnn and resnet50 at the largest batch.

``gpu.json`` is rewritten after every section, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
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
from fkd_core.train import limit_gpu_memory, train

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
    compile_backbones: tuple[str, ...]
    compile_modes: tuple[str, ...]


FULL = Sizes("cuda", 8192, (64, 256), 3, 60, 8192, PACKING, ("resnet50", "densenet121"), BACKBONES,
             ("small_cnn", "resnet50"), ("default", "reduce-overhead"))
DRY = Sizes("cpu", 64, (8,), 2, 3, 256, (1, 2), ("small_cnn",), ("small_cnn",), ("small_cnn",), ("default",))
# Seconds a compile measurement is given at least (compilation included); fewer left -> skipped.
COMPILE_SECONDS = 75


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
                         augment: str = "none", **changes) -> float:
    """fkd_core.train's own training images/s, best epoch after the first (warm-up, compile)."""
    rows: list[dict] = []
    cfg = TrialConfig(backbone=backbone, batch_size=batch, max_epochs=epochs, device=device,
                      patience=epochs + 1, augment=augment, seed=0, **changes)
    train(cfg, data, rows.append)
    warm = rows[1:] or rows
    return max(r[IMAGES_PER_S] for r in warm)


def _packed_worker(backbone: str, batch: int, epochs: int, faces: int, device: str, share: float,
                   start_evt, queue) -> None:
    data = load_dataset("synthetic", synth_n=faces, synth_seed=0)
    if device == "cpu":   # dry run: the packed processes share the cores instead of fighting for them
        torch.set_num_threads(max(1, int((os.cpu_count() or 1) * share)))
    cap = limit_gpu_memory(share, torch.device(device))   # what sweep.trainable does for a packed trial
    start_evt.wait()
    try:
        rate = trainer_images_per_s(backbone, batch, epochs, data, device)
        peak = torch.cuda.max_memory_reserved() / 2**20 if device == "cuda" else None
        queue.put({"images_per_s": rate, "peak_mib": peak, "memory_fraction": cap})
    except torch.cuda.OutOfMemoryError as e:   # did not fit its share: a result, not a crash
        queue.put({"images_per_s": 0.0, "peak_mib": None, "memory_fraction": cap,
                   "error": f"out of memory within its {share:g} share: {str(e).splitlines()[0]}"})


def packed_images_per_s(backbone: str, trials: int, sizes: Sizes, batch: int,
                        bare: float | None = None) -> dict:
    """`trials` processes training at once on one device, as Ray packs fractional-GPU trials;
    ``bare``: the bare loop's images/s at this batch, alone on the device (for each trial's ratio)."""
    ctx = mp.get_context("spawn")
    start_evt, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_packed_worker,
                         args=(backbone, batch, sizes.epochs, sizes.faces, sizes.device, 1 / trials,
                               start_evt, queue))
             for _ in range(trials)]
    for p in procs:
        p.start()
    sampler = _UtilisationSampler(sizes.device)
    time.sleep(1.0 if sizes.device == "cpu" else 5.0)   # let every worker load its data first
    sampler.start()
    start_evt.set()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    util = sampler.stop()
    rates = [r["images_per_s"] for r in results]
    peaks = [r["peak_mib"] for r in results if r["peak_mib"] is not None]
    return {"backbone": backbone, "trials": trials, "gpu_fraction": round(1 / trials, 3), "batch": batch,
            "aggregate_images_per_s": sum(rates), "per_trial_images_per_s": rates,
            "per_trial_vs_bare": [r / bare for r in rates] if bare else None,
            "trial_memory_fraction": results[0]["memory_fraction"],
            "trial_peak_mib": max(peaks) if peaks else None,
            "errors": [r["error"] for r in results if "error" in r], **util}


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


GPU_SWEEP_ARGS = ("--space", "study", "--gpus-per-trial", "0.25", "--max-epochs", "15")


def study_sweep(out: Path, seconds: int, data: Path = Path("data/fkd-yt15/training.csv.gz"),
                args: tuple[str, ...] = GPU_SWEEP_ARGS) -> dict:
    """The `study` space on the real faces, end to end through Ray, time-boxed: at the end of the
    box the sweep gets Ctrl-C (SIGINT), which stops it with every finished trial written (the
    same state ``--resume`` continues from); the row counts of its Parquet files are returned."""
    try:
        import ray  # noqa: F401  (only to know whether the sweep can run here)
    except ImportError:
        return {"skipped": "ray is not installed on this machine (see bench/gpu.sh)"}
    if not data.exists():
        return {"skipped": f"{data} not found: copy ../shared/data/fkd-yt15 into ./data and carry it"}
    if seconds < 60:
        return {"skipped": f"out of time ({seconds} s left for the sweep)"}
    name = "fkd-yt15-study-gpu"
    cmd = [sys.executable, "-m", "sweep.run", "--cluster", "clusters/local.yaml", "--data", str(data),
           "--name", name, "--results-dir", str(out), *args]
    start = time.perf_counter()
    with open(out / "sweep.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        interrupted = False
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            interrupted = True
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    result = {"command": " ".join(cmd), "returncode": proc.returncode, "interrupted_after_s": seconds
              if interrupted else None, "wall_s": time.perf_counter() - start,
              "tail": (out / "sweep.log").read_text()[-3000:]}
    for table in ("trials", "epochs"):
        path = out / name / f"{table}.parquet"
        if path.exists():
            import pandas as pd

            frame = pd.read_parquet(path)
            result[f"{table}_rows"] = len(frame)
            if table == "trials":
                result["statuses"] = frame["status"].value_counts().to_dict()
    return result


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(sizes: Sizes, out: Path, sweep_seconds: int, budget_s: float) -> dict:
    """Every section in turn; gpu.json/gpu.md are rewritten after each one."""
    t0 = time.perf_counter()
    device = sizes.device
    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
                    "torch": torch.__version__, "sizes": sizes.__dict__, "seconds": {}}

    def done(section: str) -> None:
        result["seconds"][section] = round(time.perf_counter() - t0 - sum(result["seconds"].values()), 1)
        save(result, out)
        _log(f"{section} done at {time.perf_counter() - t0:.0f} s")

    result["matmul_bf16_tflops"] = matmul_tflops(sizes.matmul_n, device)
    _log(f"matmul bf16: {result['matmul_bf16_tflops']:.1f} TFLOP/s on {result['device']}")
    data = load_dataset("synthetic", synth_n=sizes.faces, synth_seed=0)
    throughput = result["throughput"] = []
    for backbone in sizes.backbones:
        for batch in sizes.batches:
            bare = bare_loop_images_per_s(backbone, batch, sizes.bare_steps, data.images,
                                          data.keypoints, device)
            ours = trainer_images_per_s(backbone, batch, sizes.epochs, data, device)
            throughput.append({"backbone": backbone, "batch": batch, "bare_images_per_s": bare,
                               "train_images_per_s": ours, "ratio": ours / bare})
            _log(f"{backbone:>12} b{batch:<4} bare {bare:9.0f} img/s  train {ours:9.0f} img/s  "
                 f"x{ours / bare:.2f}")
    done("throughput")
    # Augmentation's cost on the device: the same trainer with augment="full" at the largest batch.
    augmented = result["augmentation"] = []
    for row in (r for r in throughput if r["batch"] == max(sizes.batches)):
        aug = trainer_images_per_s(row["backbone"], row["batch"], sizes.epochs, data, device, "full")
        augmented.append({"backbone": row["backbone"], "batch": row["batch"],
                          "train_images_per_s": row["train_images_per_s"], "augment_full_images_per_s": aug,
                          "augment_share": 1.0 - aug / row["train_images_per_s"]})
        _log(f"{row['backbone']:>12} b{row['batch']:<4} augment=full {aug:9.0f} img/s "
             f"({100 * augmented[-1]['augment_share']:.0f}% of a step)")
    done("augmentation")
    packing = result["packing"] = []
    batch = max(sizes.batches)
    bare_at = {r["backbone"]: r["bare_images_per_s"] for r in throughput if r["batch"] == batch}
    for backbone in sizes.packing_backbones:
        for trials in sizes.packing:
            row = packed_images_per_s(backbone, trials, sizes, batch, bare_at.get(backbone))
            packing.append(row)
            _log(f"packing {backbone} x{trials}: {row['aggregate_images_per_s']:.0f} img/s "
                 f"util {row['gpu_util_pct']} mem {row['gpu_mem_peak_mib']} MiB "
                 f"(per trial <= {row['trial_peak_mib']} MiB) {' '.join(row['errors'])}")
    done("packing")
    if device == "cuda":
        left = budget_s - (time.perf_counter() - t0) - COMPILE_SECONDS - 45   # 45: Ctrl-C grace
        result["sweep"] = study_sweep(out, int(min(sweep_seconds, left)))
    else:
        result["sweep"] = {"skipped": "dry run"}
    done("sweep")
    compiled = result["compile"] = []
    eager_at = {r["backbone"]: r["train_images_per_s"] for r in throughput if r["batch"] == batch}
    for backbone in sizes.compile_backbones:
        for mode in sizes.compile_modes:
            if budget_s - (time.perf_counter() - t0) < COMPILE_SECONDS:
                compiled.append({"backbone": backbone, "mode": mode, "skipped": "out of time"})
                continue
            started = time.perf_counter()
            try:
                rate = trainer_images_per_s(backbone, batch, sizes.epochs, data, device,
                                            compile=True, compile_mode=mode)
                row = {"backbone": backbone, "batch": batch, "mode": mode, "eager_images_per_s":
                       eager_at.get(backbone), "compiled_images_per_s": rate}
                row["speedup"] = rate / row["eager_images_per_s"] if row["eager_images_per_s"] else None
            except Exception as e:   # a mode that does not work here is a finding, not a crash
                row = {"backbone": backbone, "batch": batch, "mode": mode,
                       "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            row["seconds_incl_compile"] = time.perf_counter() - started
            compiled.append(row)
            _log(f"compile {backbone} b{batch} {mode}: {row.get('compiled_images_per_s', row.get('error'))}")
            save(result, out)
    done("compile")
    return result


def save(result: dict, out: Path) -> None:
    (out / "gpu.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu.md").write_text(markdown(result) + "\n")


def markdown(result: dict) -> str:
    """The tables of whatever sections ``result`` holds so far."""
    lines = [f"Device: {result['device']}, torch {result['torch']}; bf16 matmul "
             f"{result.get('matmul_bf16_tflops', 0.0):.1f} TFLOP/s"]
    if "throughput" in result:
        lines += ["", "| backbone | batch | bare loop img/s | fkd_core.train img/s | ratio | target |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['backbone']} | {r['batch']} | {r['bare_images_per_s']:,.0f} | "
                  f"{r['train_images_per_s']:,.0f} | {r['ratio']:.2f} | >= 0.9 |" for r in result["throughput"]]
    if "augmentation" in result:
        lines += ["", "| backbone | batch | train img/s | with augment=full | augmentation share of a step | target |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['backbone']} | {r['batch']} | {r['train_images_per_s']:,.0f} | "
                  f"{r['augment_full_images_per_s']:,.0f} | {100 * r['augment_share']:.0f}% | <= 10% |"
                  for r in result["augmentation"]]
    if "packing" in result:
        lines += ["", "| backbone | trials/GPU | aggregate img/s | target img/s | each trial vs bare loop "
                  "| GPU util % | card peak MiB | trial peak MiB | memory cap | errors |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["packing"]:
            ratios = "/".join(f"{x:.2f}" for x in r["per_trial_vs_bare"]) if r["per_trial_vs_bare"] else ""
            cap = f"{r['trial_memory_fraction']:.3f}" if r["trial_memory_fraction"] else "none"
            lines.append(f"| {r['backbone']} | {r['trials']} | {r['aggregate_images_per_s']:,.0f} | "
                         f"{PACKED_TARGETS.get(r['backbone'], '')} | {ratios} | {_num(r['gpu_util_pct'])} | "
                         f"{_num(r['gpu_mem_peak_mib'])} | {_num(r['trial_peak_mib'])} | {cap} | "
                         f"{len(r['errors'])} |")
    if "sweep" in result:
        sweep = result["sweep"]
        if "skipped" in sweep:
            lines += ["", f"Study sweep: skipped, {sweep['skipped']}"]
        else:
            lines += ["", f"Study sweep: `{sweep['command']}`: exit {sweep['returncode']} after "
                          f"{sweep['wall_s']:.0f} s (Ctrl-C at {sweep['interrupted_after_s']} s), "
                          f"{sweep.get('trials_rows', 0)} trials {sweep.get('statuses', {})}, "
                          f"{sweep.get('epochs_rows', 0)} epoch rows"]
    if result.get("compile"):
        lines += ["", "| backbone | batch | torch.compile mode | eager img/s | compiled img/s | speedup "
                  "| s incl. compile |", "|---|---|---|---|---|---|---|"]
        for r in result["compile"]:
            if "skipped" in r or "error" in r:
                lines.append(f"| {r['backbone']} | {r.get('batch', '')} | {r['mode']} | "
                             f"{r.get('skipped') or r['error']} | | | |")
            else:
                lines.append(f"| {r['backbone']} | {r['batch']} | {r['mode']} | {_num(r['eager_images_per_s'])} | "
                             f"{r['compiled_images_per_s']:,.0f} | {_num(r['speedup'], '.2f')} | "
                             f"{r['seconds_incl_compile']:.0f} |")
    return "\n".join(lines)


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec)


def _log(message: str) -> None:
    print(f"[gpu] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results", help="folder for gpu.json and gpu.md")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (< 1 minute)")
    parser.add_argument("--sweep-seconds", type=int, default=180, help="time box of the study sweep")
    parser.add_argument("--budget-seconds", type=float, default=460,
                        help="whole run: the sweep and the compile section shrink or are skipped to fit")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device; use --dry-run to exercise the code path on the CPU",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = measure(DRY if args.dry_run else FULL, out, args.sweep_seconds, args.budget_seconds)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
