"""The epoch loop: one training pass, evaluation, and what survives an epoch boundary.

    >>> from fkd_core.loop import Batches, StepSettings, train_one_epoch, evaluate
    >>> data = Batches.of(images, rows, keypoints, device)        # a split, once on the device
    >>> sums = train_one_epoch(model, optimizer, objective, data, steps, batch_gen, aug_gen)
    >>> loss, shape_share = sums.tolist()                          # the epoch's one host read

The inner loop never sees the config (StepSettings carries what it needs), and nothing syncs the
host per step: losses and metrics are summed on the device and read back once per epoch.
fkd_core.trainer drives these functions; they know nothing of checkpoints or run folders.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from fkd_core import augment, metrics
from fkd_core.data import KeypointData
from fkd_core.device import autocast
from fkd_core.losses import Objective


@dataclass(frozen=True)
class Batches:
    """One split on the device: the shared images uint8 [N, 1, S, S], the split's rows [M] into
    them and its keypoints float32 [M, K, 2] px. Batches gather from the shared tensor, so the
    data set is held once per process (and, on CPU, once per node via the object store)."""

    images: Tensor
    rows: Tensor
    keypoints: Tensor

    @classmethod
    def of(cls, images: Tensor, rows: Tensor, keypoints: Tensor, device: torch.device) -> "Batches":
        return cls(images.to(device, torch.uint8), rows.to(device), keypoints.to(device, torch.float32))

    def __len__(self) -> int:
        return self.rows.shape[0]

    def slice(self, idx: Tensor, channels_last: bool) -> tuple[Tensor, Tensor]:
        """(images float [B, 1, S, S] in [0, 1], keypoints [B, K, 2]) at the split positions idx [B]."""
        x = self.images.index_select(0, self.rows.index_select(0, idx)).float().div_(255.0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.keypoints.index_select(0, idx)


@dataclass(frozen=True)
class StepSettings:
    """What the inner loop needs, so that it never reads the whole config."""

    batch_size: int
    amp_dtype: torch.dtype | None
    channels_last: bool
    augment: augment.AugmentParams | None
    flip_perm: list[int]
    grad_clip: float = 0.0   # TrialConfig.grad_clip: the largest global gradient norm, 0 = off
    on_step: Callable[[int, int], None] | None = None
    """Called after each training step with (steps done, steps in the epoch): plain ints, no
    tensor is read (on CUDA it counts steps queued, which run at most a little ahead)."""


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
                    data: Batches, steps: StepSettings, batch_gen: torch.Generator,
                    aug_gen: torch.Generator, ema: AveragedModel | None = None) -> Tensor:
    """One pass over data in a random order; returns [2] on the device: the mean batch loss and
    the mean over batches of alpha * shape / base (0 without a shape term; metrics.SHAPE_SHARE).
    ema: a weight average of model, updated after every step (on the device, no host read)."""
    model.train()
    device = data.images.device
    order = torch.randperm(len(data), generator=batch_gen, device=device)
    plan = None
    if steps.augment is not None:  # the whole epoch's draws and moved keypoints at once
        plan = augment.plan(steps.augment, data.keypoints.index_select(0, order), steps.flip_perm,
                            data.images.shape[-1], steps.batch_size, aug_gen)
        order = order.index_select(0, plan.order)
    sums = torch.zeros(2, device=device)   # loss, shape share: read once, after the epoch
    no_share = torch.zeros((), device=device)
    n_batches = 0
    total = -(-len(data) // steps.batch_size)
    for start in range(0, len(data), steps.batch_size):
        x, y = data.slice(order[start:start + steps.batch_size], steps.channels_last)
        if plan is not None:
            y = plan.keypoints[start:start + steps.batch_size]
            x = augment.apply_(x, plan, n_batches, aug_gen)
        with autocast(device, steps.amp_dtype):
            pred = model(x)
        base, shaped = objective.parts(pred.float(), y, torch.isfinite(y).all(dim=-1))
        loss = base if shaped is None else base + shaped
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if steps.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), steps.grad_clip, foreach=True)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        share = no_share if shaped is None else shaped.detach() / base.detach().clamp(min=1e-12)
        sums += torch.stack([loss.detach(), share])
        n_batches += 1
        if steps.on_step is not None:
            steps.on_step(n_batches, total)
    return sums / max(n_batches, 1)


@dataclass(frozen=True)
class Groups:
    """The groups (people) of a split's rows: ids sorted, and each row's index into them [M]."""

    ids: tuple[str, ...]
    codes: Tensor

    @classmethod
    def of(cls, data: KeypointData, rows: np.ndarray, device: torch.device) -> "Groups":
        """Row-level data (no groups) makes each row a group of its own, named by its index."""
        names = np.asarray(data.groups, dtype=object)[rows].astype(str) if data.groups is not None \
            else np.char.mod("row %d", rows)
        ids, codes = np.unique(names, return_inverse=True)
        return cls(tuple(str(i) for i in ids), torch.as_tensor(codes.reshape(-1), device=device))


@torch.no_grad()
def evaluate(model: nn.Module, objective: Objective, data: Batches, steps: StepSettings,
             norm_pair: tuple[int, int] | None, groups: Groups | None = None) -> dict[str, Any]:
    """Validation loss and metrics over data in batches of the training size (seed_cgd's value
    depends on the batch size, so val_loss stays comparable with train_loss). With groups, also
    "group_sse" and "group_count": per group, the sum of squared coordinate errors and the number
    of present coordinates (lists in groups.ids order)."""
    model.eval()
    device = data.images.device
    acc = metrics.MetricAccumulator(norm_pair, device)
    sums_dtype = torch.float32 if device.type == "mps" else torch.float64   # MPS has no float64
    per_group = None if groups is None else torch.zeros(2, len(groups.ids), dtype=sums_dtype, device=device)
    for start in range(0, len(data), steps.batch_size):
        idx = torch.arange(start, min(start + steps.batch_size, len(data)), device=device)
        x, y = data.slice(idx, steps.channels_last)
        with autocast(device, steps.amp_dtype):
            pred = model(x).float()
        mask = torch.isfinite(y).all(dim=-1)
        acc.update(pred, y, mask, objective(pred, y, mask))
        if per_group is not None:
            err = torch.where(mask.unsqueeze(-1), pred - y.nan_to_num(), 0.0).square().sum(dim=(1, 2))
            counts = 2.0 * mask.sum(dim=1)
            per_group.index_add_(1, groups.codes[idx], torch.stack([err, counts]).to(sums_dtype))
    out = acc.compute()
    if per_group is not None:
        sse, count = per_group.tolist()
        out |= {"group_sse": sse, "group_count": [int(c) for c in count]}
    return out


@dataclass
class Progress:
    """What survives an epoch boundary (and a checkpoint): best, last, patience counter, time."""

    epoch: int = 0
    best: dict[str, float] = dataclasses.field(default_factory=lambda: {
        metrics.VAL_RMSE: math.inf, metrics.VAL_NME: math.inf, metrics.VAL_SHAPE: math.inf})
    best_epoch: int = 0
    last: dict[str, float] = dataclasses.field(default_factory=lambda: {
        metrics.VAL_RMSE: math.inf, metrics.VAL_NME: math.inf, metrics.VAL_SHAPE: math.inf})
    since_best: int = 0
    wall_seconds: float = 0.0
    best_test: dict[str, float] | None = None   # test metrics of the best epoch (score_test)
    last_test: dict[str, float] | None = None   # ... of the last epoch
    shape_share: float = 0.0                    # metrics.SHAPE_SHARE of the last epoch

    def update(self, row: dict[str, Any]) -> bool:
        """Record an epoch's row; True when it is the best so far."""
        self.epoch = row[metrics.EPOCH]
        self.last = {k: row[k] for k in metrics.VAL_METRICS}
        self.last_test = {k: row[k] for k in metrics.TEST_METRICS} if metrics.TEST_RMSE in row else None
        self.shape_share = row[metrics.SHAPE_SHARE]
        if row[metrics.VAL_RMSE] < self.best[metrics.VAL_RMSE]:
            self.best, self.best_epoch, self.since_best = dict(self.last), self.epoch, 0
            self.best_test = {k: row[k] for k in metrics.TEST_METRICS} if metrics.TEST_RMSE in row else None
            return True
        self.since_best += 1
        return False

    def patience_spent(self, patience: int) -> bool:
        """Keras semantics: stop after `patience` epochs without a better val RMSE (0: the first)."""
        return self.since_best > 0 and self.since_best >= patience


def epoch_row(epoch: int, train_loss: float, val: dict[str, Any], lr: float, seconds: float,
               images_per_s: float, test: dict[str, Any] | None = None, shape_share: float = 0.0,
               test_groups: Groups | None = None) -> dict[str, Any]:
    """The reported row; a non-finite loss or metric becomes inf with diverged=True. Test
    metrics (when scored) follow the validation ones, the per-group test sums come last."""
    values = {metrics.TRAIN_LOSS: train_loss, metrics.VAL_LOSS: val["loss"],
              metrics.VAL_RMSE: val["rmse_px"], metrics.VAL_NME: val["nme"],
              metrics.VAL_SHAPE: val["shape_err_px"]}
    if test is not None:
        values |= {metrics.TEST_RMSE: test["rmse_px"], metrics.TEST_NME: test["nme"],
                   metrics.TEST_SHAPE: test["shape_err_px"]}
    diverged = not all(math.isfinite(values[k]) for k in (metrics.TRAIN_LOSS, metrics.VAL_LOSS,
                                                          metrics.VAL_RMSE))
    if diverged:  # inf, not NaN: ASHA and Optuna cannot handle NaN (DESIGN.md)
        values = {k: math.inf for k in values}
    row = {metrics.EPOCH: epoch, **values, metrics.LR: lr, metrics.EPOCH_SECONDS: seconds,
           metrics.IMAGES_PER_S: images_per_s, metrics.SHAPE_SHARE: math.inf if diverged else shape_share,
           metrics.DIVERGED: diverged}
    if test_groups is not None and "group_sse" in test:   # a diverged epoch scored no test group
        row |= {metrics.TEST_GROUP_IDS: list(test_groups.ids), metrics.TEST_GROUP_SSE: test["group_sse"],
                metrics.TEST_GROUP_COUNT: test["group_count"]}
    return row
