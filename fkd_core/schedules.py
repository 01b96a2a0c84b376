"""Learning-rate schedules by name, stepped once per epoch by fkd_core.train.

    >>> scheduler = build_scheduler(cfg, optimizer)   # cfg.schedule: plateau | cosine | onecycle
    >>> scheduler.step(val_loss)                      # after every epoch (cosine ignores the loss)

- ``plateau``: the study's ReduceLROnPlateau (x lr_factor after lr_patience epochs without a
  lower validation loss).
- ``cosine``: linear warm-up from lr / (warmup + 1) to lr over ``warmup_epochs``, then a half
  cosine down towards 0 at ``max_epochs``.
- ``onecycle``: Smith's one-cycle shape (torch's OneCycleLR, per epoch): warm-up from lr / 25
  over ``warmup_epochs`` (30% of the epochs when 0), then a cosine down to lr / 1e4.

A fixed-length schedule spends its last epochs at a small learning rate, where a noisy-gradient
model settles; the plateau rule reacts to the validation loss instead, which is noisy on a few
hundred validation faces.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from fkd_core.config import TrialConfig

ONECYCLE_START = 1.0 / 25.0    # torch's OneCycleLR div_factor
ONECYCLE_END = 1e-4            # of the peak, at the last epoch
ONECYCLE_WARMUP = 0.3          # torch's pct_start


def cosine_factor(epoch: int, total: int, warmup: int) -> float:
    """lr multiplier during epoch (0-based) of total, after `warmup` warm-up epochs."""
    warmup = min(warmup, total - 1)
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (total - warmup)))


def onecycle_factor(epoch: int, total: int, warmup: int) -> float:
    """lr multiplier of the one-cycle shape (see the module docstring)."""
    warmup = min(warmup or max(1, round(ONECYCLE_WARMUP * total)), total - 1)
    if epoch < warmup:
        return ONECYCLE_START + (1.0 - ONECYCLE_START) * epoch / warmup
    t = (epoch - warmup) / max(total - 1 - warmup, 1)
    return ONECYCLE_END + (1.0 - ONECYCLE_END) * 0.5 * (1.0 + math.cos(math.pi * t))


FACTORS: dict[str, Callable[[int, int, int], float]] = {"cosine": cosine_factor, "onecycle": onecycle_factor}


class EpochSchedule:
    """A LambdaLR with the plateau scheduler's interface: step(metric) ignores the metric."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> None:
        self.inner = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def step(self, metric: float | None = None) -> None:
        self.inner.step()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def build_scheduler(cfg: TrialConfig, optimizer: torch.optim.Optimizer):
    """The scheduler of cfg.schedule for optimizer; step it once per epoch with the val loss."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
    shape = FACTORS[cfg.schedule]
    total, warmup = cfg.max_epochs, cfg.warmup_epochs
    return EpochSchedule(optimizer, lambda epoch: shape(epoch, total, warmup))
