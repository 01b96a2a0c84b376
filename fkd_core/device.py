"""Device policy: which device a trial runs on, its share of a GPU's memory, its autocast dtype.

    >>> from fkd_core.device import resolve_device, limit_gpu_memory
    >>> device = resolve_device("auto")            # cuda when available, else cpu
    >>> limit_gpu_memory(0.25, device)             # four packed trials per GPU: cap this one

Nothing here reads data or builds a model, so a tool can check a --device flag before it spends
minutes loading data.
"""
from __future__ import annotations

import contextlib

import torch

from fkd_core import precision
from fkd_core.config import TrialConfig


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch.device understands it.

    A device this machine does not have is a one-line ValueError here, not a driver error at
    the first tensor moved (minutes later, after the data is loaded).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            have = ("no CUDA GPU" if count == 0 else "1 CUDA GPU (cuda:0)" if count == 1
                    else f"{count} CUDA GPUs (cuda:0..cuda:{count - 1})")
            raise ValueError(f"--device {name}: this machine has {have}")
    return device


# What one process's CUDA context, cuBLAS and cuDNN workspaces take outside the caching allocator
# (typically 0.4-0.6 GiB on recent GPUs): set_per_process_memory_fraction does not count it.
CUDA_CONTEXT_BYTES = 768 * 2**20


def gpu_memory_fraction(share: float, total_bytes: int, context_bytes: int = CUDA_CONTEXT_BYTES) -> float:
    """The caching allocator's cap for a trial that owns ``share`` of a GPU of ``total_bytes``.

    Packed trials (``--gpus-per-trial 0.25``: four per GPU) share one card and Ray does not
    isolate their memory. Capping each at its share minus its CUDA context makes the packed
    trials fit together: a trial that needs more fails with an out-of-memory error of its own
    instead of starving its neighbours.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"GPU share must be in (0, 1], got {share:g}")
    fraction = share - context_bytes / total_bytes
    if fraction <= 0.0:
        raise ValueError(f"a {share:g} share of a {total_bytes / 2**30:.1f} GiB GPU leaves nothing after "
                         f"the CUDA context ({context_bytes / 2**30:.2f} GiB); use a larger GPU share")
    return fraction


def limit_gpu_memory(share: float, device: torch.device) -> float | None:
    """Cap this process's CUDA allocations to its ``share`` of ``device`` (see gpu_memory_fraction).

    Returns the fraction set, or None when there is nothing to cap (a CPU device, a whole GPU).
    """
    if device.type != "cuda" or share >= 1.0:
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    fraction = gpu_memory_fraction(share, torch.cuda.get_device_properties(index).total_memory)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


def autocast_dtype(cfg: TrialConfig, device: torch.device) -> torch.dtype | None:
    """The trial's autocast dtype, None = plain fp32; fkd_core.precision decides "auto"."""
    return precision.DTYPES[precision.for_config(cfg, device)]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast to ``dtype`` on ``device``; a no-op context for plain fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
