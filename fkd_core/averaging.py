"""Weight averaging: an exponential moving average of a model's weights and batch-norm statistics.

    >>> ema = build_ema(model, decay=0.998)       # torch.optim.swa_utils.AveragedModel
    >>> ema.update_parameters(model)              # after every optimiser step
    >>> ema.module(images)                        # the averaged network

The decay warms up as min(decay, (1 + t) / (10 + t)) after t updates (as timm's ModelEma and
TensorFlow's ExponentialMovingAverage num_updates do): with a fixed 0.998 the average of the first
few hundred steps would still be mostly the random initial weights, and a network with averaged
far-apart weights predicts nonsense (fkd-yt15: 14 px validation RMSE at epoch 15 of 150). The
warm-up reads the update count on the device, so a step adds no host read.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def warmed_decay(decay: float, updates: Tensor) -> Tensor:
    """The decay of the next update after ``updates`` earlier ones (a device scalar)."""
    t = updates.to(torch.float32)
    return torch.clamp((1.0 + t) / (10.0 + t), max=decay)


def _ema_update(decay: float):
    def update(averaged: Sequence[Tensor], current: Sequence[Tensor], updates: Tensor) -> None:
        if not averaged:
            return
        if torch.is_floating_point(averaged[0]):
            weight = 1.0 - warmed_decay(decay, updates).to(averaged[0].device, averaged[0].dtype)
            torch._foreach_lerp_(list(averaged), list(current), weight)
        else:   # batch norm's num_batches_tracked: the latest count
            for a, c in zip(averaged, current):
                a.copy_(c)
    return update


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An AveragedModel of ``model`` (weights and buffers) with the warmed-up decay."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema decay={decay:g}: expected a value in (0, 1)")
    return AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)
