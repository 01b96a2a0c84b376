"""The Ray Tune trainable: one trial = one call of fkd_core.train.train.

It turns the Tune config into ``TrialConfig(**config["cfg"])``, takes the trial's data set from
the dict that ``tune.with_parameters`` shared through the object store (numpy arrays, mapped
from shared memory without a copy), and turns train's ``report(row)`` into ``tune.report`` with
the epoch's checkpoint directory. On a retry, Tune hands back the last checkpoint and training
continues from it.

    tune.with_parameters(train_trial, datasets={data_key(cfg): share(data)})
"""
from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fkd_core import precision
from fkd_core.config import TrialConfig
from sweep.spaces import data_key

# Extra keys every reported row carries besides fkd_core.metrics.EPOCH_ROW_KEYS.
DEVICE = "device"
DEVICE_NAME = "device_name"
PRECISION_USED = "precision_used"   # "fp32" / "bf16", as fkd_core.precision resolves it on the trial's node

TrainFn = Callable[..., Any]


def share(data: Any) -> Any:
    """A copy of a KeypointData whose tensors are numpy arrays.

    Ray maps numpy arrays straight from the node's shared-memory object store, so every trial
    on a node reads one copy; torch tensors would be unpickled into each trial's own memory.
    """
    arrays = {f.name: getattr(data, f.name).numpy() for f in dataclasses.fields(data)
              if isinstance(getattr(data, f.name), torch.Tensor)}
    return _replace(data, arrays)


def unshare(data: Any) -> Any:
    """The KeypointData again, its tensors viewing the shared (read-only) arrays."""
    with warnings.catch_warnings():
        # The arrays are read-only views of shared memory; training never writes into them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {f.name: torch.from_numpy(getattr(data, f.name)) for f in dataclasses.fields(data)
                   if isinstance(getattr(data, f.name), np.ndarray)}
    return _replace(data, tensors)


def _replace(data: Any, values: dict[str, Any]) -> Any:
    # object.__setattr__ on a shallow copy: replace() would rerun validation meant for tensors.
    out = _shallow_copy(data)
    for name, value in values.items():
        object.__setattr__(out, name, value)
    return out


def _shallow_copy(data: Any) -> Any:
    out = object.__new__(type(data))
    for f in dataclasses.fields(data):
        object.__setattr__(out, f.name, getattr(data, f.name))
    return out


def device_of(cfg: TrialConfig) -> tuple[str, str]:
    """(device, its name) a trial trains on, as train resolves cfg.device."""
    from fkd_core.train import resolve_device

    device = resolve_device(cfg.device)
    if device.type != "cuda":
        return device.type, platform.processor() or platform.machine()
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index}", torch.cuda.get_device_name(index)


def train_trial(config: dict[str, Any], *, datasets: dict[str, Any],
                train_fn: TrainFn | None = None) -> None:
    """Tune function trainable. ``train_fn`` defaults to fkd_core.train.train (tests swap it)."""
    from ray import tune

    if train_fn is None:
        from fkd_core.train import train as train_fn
    cfg = TrialConfig(**config["cfg"])
    resources = _assigned_resources()
    _match_threads_to_cpus(resources.get("CPU", 1.0))
    data = unshare(datasets[data_key(cfg)])
    device, device_name = device_of(cfg)
    used = precision.for_config(cfg, torch.device(device))
    gpu_share = resources.get("GPU", 0.0)
    cap = _limit_gpu_memory(gpu_share, device)
    # Local scratch for train's checkpoint.pt / best.pt; tune.report copies it to the trial's
    # storage each epoch, so a retry on any node starts from the last reported epoch.
    workdir = Path(tempfile.mkdtemp(prefix="fkd-trial-"))
    try:
        resume_from = _restore(tune.get_checkpoint() or _resume_checkpoint(config), workdir)

        written = _written(workdir)

        def report(row: dict[str, Any]) -> None:
            # The checkpoint folder carries every row it has seen (rows.jsonl, for sweep.recovery).
            # Only an epoch that wrote a checkpoint file (TrialConfig.checkpoint_every/_best) is
            # handed to Tune: each hand-over copies the whole folder into the trial's storage.
            nonlocal written
            _append_row(workdir, row)
            now = _written(workdir)
            checkpoint = tune.Checkpoint.from_directory(str(workdir)) if now != written else None
            written = now
            tune.report({**row, DEVICE: device, DEVICE_NAME: device_name, PRECISION_USED: used},
                        checkpoint=checkpoint)

        try:
            train_fn(cfg, data, report, checkpoint_dir=str(workdir), resume_from=resume_from)
        except torch.cuda.OutOfMemoryError as e:
            if cap is None:
                raise
            raise RuntimeError(
                f"out of GPU memory within the trial's {gpu_share:g} GPU share ({cap:.3f} of "
                f"{device_name}'s memory, CUDA context excluded): use a larger --gpus-per-trial or "
                f"a smaller batch_size (was {cfg.batch_size})") from e
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _assigned_resources() -> dict[str, float]:
    """What Ray gave this trial, e.g. {"CPU": 1.0, "GPU": 0.25}."""
    import ray

    return ray.get_runtime_context().get_assigned_resources()


def _match_threads_to_cpus(cpus: float) -> None:
    """One torch thread per CPU Ray gave the trial: on shared cores, more threads than the
    trial's share made training up to 10x slower (OpenMP barriers waiting for busy cores)."""
    torch.set_num_threads(max(1, int(cpus)))


def _limit_gpu_memory(share: float, device: str) -> float | None:
    """Packed trials (a GPU share < 1) each get their share of the card's memory, so that the
    trials Ray packs onto one GPU fit together; returns the fraction set (None: no cap)."""
    from fkd_core.train import limit_gpu_memory

    if share <= 0.0 or not device.startswith("cuda"):
        return None
    return limit_gpu_memory(share, torch.device(device))


def _written(workdir: Path) -> set[tuple[str, int, int]]:
    """(name, inode, mtime) of each file: train replaces a checkpoint by renaming a new file
    over it, so a write always changes the inode even within the clock's resolution."""
    return {(p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in workdir.iterdir()
            if p.is_file() and p.name != ROWS_FILE}


# Every reported row, one JSON line each, inside the trial's checkpoint: Tune's result.json is
# written by the driver and can lag behind (or lose the tail of) a checkpoint the trial already
# persisted when the driver is killed; sweep.recovery reads the rows from here.
ROWS_FILE = "rows.jsonl"


def _append_row(workdir: Path, row: dict[str, Any]) -> None:
    with open(workdir / ROWS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def _resume_checkpoint(config: dict[str, Any]) -> Any:
    """The checkpoint a rebuilt --resume hands a trial it reruns (sweep.recovery), if any."""
    from ray import tune

    path = config.get("resume_checkpoint")
    return tune.Checkpoint(path) if path else None


def _restore(checkpoint: Any, workdir: Path) -> str | None:
    """Copy the last reported checkpoint (if any) into workdir; return it for resume_from."""
    if checkpoint is None:
        return None
    checkpoint.to_directory(str(workdir))
    return str(workdir)
