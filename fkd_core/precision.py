"""Which precision a trial trains in: bf16 autocast where the hardware has bf16 arithmetic and it
was measured faster for the model, fp32 elsewhere.

    python -m fkd_core.precision          # this CPU's class and what "auto" picks per model

    >>> from fkd_core.precision import for_config, DTYPES
    >>> DTYPES[for_config(cfg, torch.device("cpu"))]    # torch.bfloat16 or None (plain fp32)

``precision="auto"`` means:
- CUDA: bf16 (tensor cores; the GPU script measures it).
- CPU: bf16 when the CPU's class (cpu_class: AMX tiles, else AVX512-BF16 dot products, else
  none) has a row for the model's backbone and head in MEASURED with a bf16/fp32 training-step
  ratio of at least GAIN; a model not measured on that class gets bf16 only when every model
  measured there gained. No row, no bf16: fp32 is the safe default, never a guess.
- anything else (mps, xpu): fp32.
"fp32" and "bf16" are obeyed as given. Autocast covers the forward pass only; the heads return
fp32 coordinates (heads.soft_argmax takes its softmax in fp32) and the loss and metrics are
computed in fp32 on them, so bf16 never reaches a value in pixels.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from fkd_core.config import TrialConfig

CPUINFO = Path("/proc/cpuinfo")
CPU_CLASSES = ("amx", "avx512_bf16", "none")
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
# A ratio within 5% of 1 is inside the run-to-run spread of the measurement: at a tie fp32 wins,
# since it keeps the full mantissa.
GAIN = 1.05

# bf16/fp32 images per second of a training step (batch 64, channels_last, AdamW step included,
# one thread), by CPU class and (backbone, head); the lowest ratio of the configurations tried.
# "amx": issue 20 (Xeon with amx_bf16/amx_tile, torch 2.14.1, quiet machine): small_cnn d1 +
# regression 1.09, small_cnn d2 (w1, w2) + heatmap 1.48 / 1.51, res_cnn d2 + heatmap 1.46,
# resnet18 + regression 1.72. "avx512_bf16": bench/results/precision.json (`python -m
# bench.precision`, AMD EPYC with avx512_bf16 and no AMX, torch 2.14.1, a quiet machine: load
# average 0.9 at the start; small_cnn + regression is the lowest of depth 1 (1.11) and 2 (1.18)).
# tests/test_precision.py holds this table to that file: rerun the bench, then copy its ratios.
MEASURED: dict[str, dict[tuple[str, str], float]] = {
    "amx": {("small_cnn", "regression"): 1.09, ("small_cnn", "heatmap"): 1.48,
            ("res_cnn", "heatmap"): 1.46, ("resnet18", "regression"): 1.72},
    "avx512_bf16": {("small_cnn", "regression"): 1.11, ("small_cnn", "heatmap"): 1.24,
                    ("res_cnn", "regression"): 1.24, ("res_cnn", "heatmap"): 1.48,
                    ("s2d_cnn", "heatmap"): 1.48, ("s2d_cnn", "unet"): 1.49,
                    ("resnet18", "regression"): 1.73, ("resnet18", "heatmap"): 1.63},
}


def cpu_flags(path: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (the first "flags" line of /proc/cpuinfo); none where the file is
    absent or unreadable (macOS, Windows, a sandbox)."""
    try:
        with open(path) as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def cpu_class(flags: frozenset[str] | None = None, capability: str | None = None) -> str:
    """"amx", "avx512_bf16" or "none": the CPU's bf16 arithmetic as oneDNN can use it.

    Both the kernel's flags and torch's own dispatch level must agree: a hypervisor can hide
    AMX state from the guest while still listing its flags, and torch reports AVX512 only when
    it runs its AVX512 kernels.
    """
    flags = cpu_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if capability != "AVX512":
        return "none"
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "none"


def bf16_faster(klass: str, backbone: str, head: str) -> bool:
    """Whether the committed measurement says bf16 trains this model faster on this CPU class."""
    table = MEASURED.get(klass, {})
    if (backbone, head) in table:
        return table[backbone, head] >= GAIN
    return bool(table) and min(table.values()) >= GAIN


def precision_used(precision: str, device: torch.device, backbone: str, head: str,
                   klass: str | None = None) -> str:
    """"fp32" or "bf16": what a trial of ``precision`` ("auto", "fp32", "bf16") runs in.
    klass: the CPU class (default: this machine's, cpu_class())."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    if device.type != "cpu":
        return "fp32"
    return "bf16" if bf16_faster(cpu_class() if klass is None else klass, backbone, head) else "fp32"


def for_config(cfg: TrialConfig, device: torch.device) -> str:
    """precision_used of a trial's config on ``device`` (resolved, not "auto")."""
    return precision_used(cfg.precision, device, cfg.backbone, cfg.head)


def name_of(dtype: torch.dtype | None) -> str:
    """DTYPES inverted: torch.bfloat16 -> "bf16", None -> "fp32"."""
    return next(name for name, d in DTYPES.items() if d == dtype)


def main() -> int:
    klass = cpu_class()
    print(f"CPU class {klass} (torch capability {torch.backends.cpu.get_cpu_capability()}); "
          f"precision='auto' on the CPU picks:")
    models = sorted({key for table in MEASURED.values() for key in table})
    for backbone, head in models:
        print(f"  {backbone} + {head}: {precision_used('auto', torch.device('cpu'), backbone, head, klass)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
