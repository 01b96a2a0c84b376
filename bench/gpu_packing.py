"""The GPU script's packing section: N trials training at once on one device, as Ray packs
fractional-GPU trials (``--gpus-per-trial 1/N``), measured over one shared window.

    from bench.gpu_packing import packed_run
    packed_run("resnet50", trials=4, batch=256, epochs=3, data=faces, device="cuda", seconds=40)

Each worker process gets the data through shared memory, initialises CUDA under its memory cap
and trains one warm-up epoch, then reports ready and waits. The parent starts every worker at once (a barrier: it
waits until each worker is ready or dead), and each worker times its own training window. The
aggregate is every trial's training images over the shared window (first start to last end),
and the overlap says how much of that window all trials ran together.

Every worker sends exactly one row: its numbers, or an error row (an exception, a worker that
died without a row, a worker still running at the run's deadline, which is then killed). A
worker never holds up the parent past the deadline, and the rows of the other workers count.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import subprocess
import threading
import time
import traceback
from typing import Any

import torch

from fkd_core.config import TrialConfig
from fkd_core.metrics import IMAGES_PER_S
from fkd_core.device import limit_gpu_memory
from fkd_core.trainer import split_rows, train

# Share of the card left free besides the parent's baseline: the CUDA context estimate
# (fkd_core.device.CUDA_CONTEXT_BYTES) is a guess, and a card filled to 100% fails at random.
HEADROOM = 0.05
# A worker's timed window ends this long before the run's deadline, so that its row arrives.
WORKER_MARGIN_S = 2.0
# --inject-failure: the last worker of each packed run raises, or exits without a row.
INJECT = ("raise", "exit")


class _Enough(Exception):
    """Raised from a worker's report to end its timed training before the deadline."""


def _worker(index: int, backbone: str, batch: int, epochs: int, data: Any, device: str,
            share: float, deadline: float, inject: str | None, start_evt: Any, out: Any) -> None:
    try:
        if device == "cpu":   # dry run: the packed processes share the cores instead of fighting for them
            torch.set_num_threads(max(1, int((os.cpu_count() or 1) * share)))
        # What sweep.trainable does for a packed trial, with the share left after the parent.
        cap = limit_gpu_memory(share, torch.device(device))
        if inject == "raise":
            raise RuntimeError("injected failure (--inject-failure raise)")
        if inject == "exit":
            os._exit(3)   # dies without a row, as a killed or crashed worker does
        cfg = TrialConfig(backbone=backbone, batch_size=batch, device=device, patience=epochs + 1, seed=index)
        train(cfg.replace(max_epochs=1), data, lambda row: None)     # warm-up: CUDA, cuDNN, allocator
        _sync(device)
        out.put(("ready", index, None))
        start_evt.wait()
        row = _timed(cfg.replace(max_epochs=epochs), data, device, deadline)
        row.update(worker=index, memory_fraction=cap,
                   peak_mib=torch.cuda.max_memory_reserved() / 2**20 if device == "cuda" else None)
        out.put(("row", index, row))
    except BaseException as e:   # every worker sends a row, whatever went wrong
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        message = (f"out of memory within its {share:.3f} share: " if oom else f"{type(e).__name__}: ") + \
            (str(e).splitlines() or [""])[0]
        out.put(("row", index, {"worker": index, "error": message,
                                "traceback": "" if oom else traceback.format_exc()[-1500:]}))


def _timed(cfg: TrialConfig, data: Any, device: str, deadline: float) -> dict[str, Any]:
    """Train until cfg.max_epochs or until the next epoch would cross ``deadline``."""
    rows: list[dict] = []
    ends: list[float] = []
    start = time.monotonic()   # CLOCK_MONOTONIC is system-wide: comparable across the workers

    def report(row: dict) -> None:
        rows.append(row)
        ends.append(time.monotonic())
        last_epoch = ends[-1] - (ends[-2] if len(ends) > 1 else start)
        if ends[-1] + last_epoch > deadline:
            raise _Enough

    try:
        train(cfg, data, report)
    except _Enough:
        pass
    n_train = len(split_rows(data, cfg)[0])
    return {"start": start, "end": ends[-1], "epochs": len(rows), "images": n_train * len(rows),
            "images_per_s": max(r[IMAGES_PER_S] for r in rows)}


def packed_run(backbone: str, trials: int, batch: int, epochs: int, data: Any, device: str,
               seconds: float, bare: float | None = None, inject: str | None = None) -> dict[str, Any]:
    """``trials`` worker processes training at once on ``device``, all done or killed within
    ``seconds``; ``data``: a KeypointData on the CPU, handed to the workers through shared memory
    (generating it in each worker took seconds per worker); ``bare``: the bare loop's images/s
    alone on the device (each trial's ratio); ``inject``: the last worker of a run of 2 or more
    fails that way (see INJECT)."""
    deadline = time.monotonic() + seconds
    baseline_mib, total_mib = card_memory_mib(device)
    share = worker_share(trials, baseline_mib / total_mib) if device == "cuda" else 1 / trials
    ctx = mp.get_context("spawn")
    start_evt, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, daemon=True, args=(
        i, backbone, batch, epochs, data, device, share, deadline - WORKER_MARGIN_S,
        inject if trials > 1 and i == trials - 1 else None, start_evt, out)) for i in range(trials)]
    for p in procs:
        p.start()
    sampler = _UtilisationSampler(device)
    rows, started = _collect(procs, out, start_evt, sampler, deadline, seconds)
    util = sampler.stop()
    return {"backbone": backbone, "trials": trials, "batch": batch, "gpu_share": round(share, 4),
            "card_baseline_mib": baseline_mib, **util,
            "card_peak_above_baseline_mib": None if util["gpu_mem_peak_mib"] is None
            else util["gpu_mem_peak_mib"] - baseline_mib,
            **window_summary([rows[i] for i in range(trials)], bare), "started": started}


def _collect(procs: list, out: Any, start_evt: Any, sampler: "_UtilisationSampler", deadline: float,
             seconds: float) -> tuple[dict[int, dict], bool]:
    """One row per worker by the deadline; the start signal once every worker is ready or gone."""
    ready: set[int] = set()
    rows: dict[int, dict] = {}
    started = False
    while len(rows) < len(procs) and time.monotonic() < deadline:
        _drain(out, ready, rows, timeout=0.2)
        for i, p in enumerate(procs):
            if p.exitcode is not None and i not in rows:
                _drain(out, ready, rows, timeout=0.2)   # a row sent just before exiting
                rows.setdefault(i, {"worker": i, "error": f"exited with code {p.exitcode} without a row"})
        if not started and all(i in ready or i in rows for i in range(len(procs))):
            sampler.start()
            start_evt.set()   # the barrier: every live worker is initialised and warmed up
            started = True
    for i, p in enumerate(procs):
        if i not in rows:
            rows[i] = {"worker": i, "error": f"no row within the run's {seconds:.0f} s deadline; killed"}
        if p.is_alive():
            p.kill()
        p.join(timeout=10)
    return rows, started


def _drain(out: Any, ready: set[int], rows: dict[int, dict], timeout: float) -> None:
    try:
        while True:
            kind, index, row = out.get(timeout=timeout)
            if kind == "ready":
                ready.add(index)
            else:
                rows[index] = row
            timeout = 0.01
    except queue_module.Empty:
        return


def window_summary(rows: list[dict], bare: float | None) -> dict[str, Any]:
    """Aggregate images/s over the shared window (first start to last end) of the workers that
    ran, the share of it all of them ran together, and each worker's window relative to the first
    start; worker rows with an "error" count in errors only."""
    ok = [r for r in rows if "error" not in r]
    result: dict[str, Any] = {"errors": [f"worker {r['worker']}: {r['error']}" for r in rows if "error" in r]}
    if not ok:
        return {**result, "aggregate_images_per_s": 0.0, "window_s": None, "overlap": None,
                "workers": rows, "per_trial_images_per_s": [], "per_trial_vs_bare": None,
                "trial_memory_fraction": None, "trial_peak_mib": None}
    first, last = min(r["start"] for r in ok), max(r["end"] for r in ok)
    window = last - first
    together = max(0.0, min(r["end"] for r in ok) - max(r["start"] for r in ok))
    workers = [{k: v for k, v in r.items() if k not in ("start", "end")} |
               ({"start_s": r["start"] - first, "end_s": r["end"] - first} if "error" not in r else {})
               for r in rows]
    rates = [r["images_per_s"] for r in ok]
    peaks = [r["peak_mib"] for r in ok if r["peak_mib"] is not None]
    return {**result, "aggregate_images_per_s": sum(r["images"] for r in ok) / window, "window_s": window,
            "overlap": together / window, "workers": workers, "per_trial_images_per_s": rates,
            "per_trial_vs_bare": [x / bare for x in rates] if bare else None,
            "trial_memory_fraction": ok[0]["memory_fraction"], "trial_peak_mib": max(peaks) if peaks else None}


def worker_share(trials: int, baseline_fraction: float) -> float:
    """Each packed trial's share of the card: what the parent's baseline and HEADROOM leave, split
    evenly (the parent's cached blocks are released first, its CUDA context stays)."""
    return (1.0 - baseline_fraction - HEADROOM) / trials


def card_memory_mib(device: str) -> tuple[float, float]:
    """(used, total) MiB of the whole card before the workers start; (0, 0) on the CPU."""
    if device != "cuda":
        return 0.0, 0.0
    torch.cuda.empty_cache()   # the parent's cached blocks would count against the trials
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20, total / 2**20


class _UtilisationSampler:
    """Polls nvidia-smi in a thread: mean GPU utilisation and peak card memory while trials run."""

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
                util, mem = subprocess.check_output(cmd, text=True, timeout=5).splitlines()[0].split(",")
                self.samples.append((float(util), float(mem)))
            except (OSError, subprocess.SubprocessError, ValueError):
                return

    def stop(self) -> dict[str, float | None]:
        self._stop.set()
        if not self.samples:
            return {"gpu_util_pct": None, "gpu_mem_peak_mib": None}
        busy = [u for u, _ in self.samples]
        return {"gpu_util_pct": sum(busy) / len(busy), "gpu_mem_peak_mib": max(m for _, m in self.samples)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
