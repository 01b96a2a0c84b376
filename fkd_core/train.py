"""One trial: train a keypoint regressor on tensors that live on the device, report every epoch.

    python -m fkd_core.train --data synthetic --backbone small_cnn --loss cgd --alpha 0.01 \\
        --augment study --epochs 20 --out runs/cgd        # progress on stderr, files in runs/cgd
    python -m fkd_core.train --data ../shared/data/fkd-yt15/training.csv.gz --epochs 5 --json
    python -m fkd_core.train ... --out runs/cgd --resume    # after Ctrl-C (exit 130), SIGTERM (143), kill -9

    >>> from fkd_core import TrialConfig, train
    >>> rows = []
    >>> summary = train(TrialConfig(max_epochs=2, synth_n=200), report=rows.append)  # loads cfg.data
    >>> from fkd_core.data import load_for_config       # or the sweep's form: data loaded once
    >>> cfg = TrialConfig(max_epochs=2)
    >>> summary = train.train(cfg, load_for_config(cfg), rows.append)

The whole data set is moved to the device once as uint8; a batch is an index slice of it,
converted and augmented there, so there are no DataLoader workers and no per-step host->device
copy. Losses and metrics are summed on the device and read back once per epoch: no per-step
host sync, so the GPU never waits on Python.

Validation is always scored against the original labels with missing keypoints masked, whatever
``cfg.missing`` does to the training targets: every missing policy is judged on the same targets.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import pickle
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, get_args

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from fkd_core import augment, metrics
from fkd_core import api, averaging, cli, precision, recipes, schedules, tta
from fkd_core.config import BaseLoss, CompileMode, ShapeTerm, TrialConfig
from fkd_core.data import KeypointData, apply_missing, held_out_rows, load_for_config, three_way_split
from fkd_core.losses import Objective, build_objective, parse_loss_spec
from fkd_core.models import BACKBONES, WeightsUnavailable, build_model
from fkd_core.rundir import (BEST, CHECKPOINT, EXIT_CODES, Interrupted, Interrupts, RunDir, atomic_write,
                             check_start, strict_json, summary_from_rows)

_CHECKPOINT_FORMAT = 1
Report = Callable[[dict[str, Any]], None]


@dataclass
class TrainSummary:
    """How a trial ended; ``epochs`` counts every epoch run, across resumes."""

    best_val_rmse_px: float
    best_val_nme: float
    best_val_shape_err_px: float
    best_epoch: int
    final_val_rmse_px: float
    final_val_nme: float
    final_val_shape_err_px: float
    epochs: int
    stopped: str            # "max_epochs" | "early_stop" | "diverged"
    wall_seconds: float
    device: str
    best_test_rmse_px: float | None = None
    """Test metrics at the best-validation epoch; None unless cfg.score_test."""
    best_test_nme: float | None = None
    best_test_shape_err_px: float | None = None
    precision_used: str = "fp32"
    """"fp32" or "bf16": what the epochs ran in (fkd_core.precision resolves "auto")."""
    scored: str = "final"
    """cfg.scored: which epoch's weights scored_test_rmse_px is read from."""
    scored_test_rmse_px: float | None = None
    """Test RMSE of the scored weights (the last epoch's, or the best-validation epoch's)."""
    shape_share: float = 0.0
    """alpha * shape term / base loss over the last epoch's training batches (0: no shape term)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- setup -------------------------------------------------------------------------------------

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


def split_rows(data: KeypointData, cfg: TrialConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(train rows [Nt], their keypoints [Nt, K, 2], validation rows [Nv]) without copying images.

    The test rows (fkd_core.data.three_way_split) are in neither, in every run.

    The missing policy touches the training keypoints only. "ffill" fills over the non-test rows
    in file order, as the study did over its file, so a training face can inherit a validation
    face's points (the study's defect) but never a test face's; validation keeps its true labels.
    Images stay in the one shared tensor (Ray's object store in a sweep): a trial holds indices,
    not a copy of the data set.
    """
    splits = three_way_split(data, cfg)
    train_idx, val_idx = (torch.as_tensor(i, dtype=torch.long) for i in (splits.train, splits.val))
    # "drop" is applied below, to the training rows only; ffill skips the test rows.
    source = apply_missing(data, "ffill", splits.test).keypoints if cfg.missing == "ffill" else data.keypoints
    train_kps = source[train_idx]
    if cfg.missing == "drop":
        complete = torch.isfinite(train_kps).all(dim=2).all(dim=1)
        train_idx, train_kps = train_idx[complete], train_kps[complete]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"{data.source}: {len(train_idx)} training and {len(val_idx)} validation "
                         f"rows after split={cfg.split!r}, missing={cfg.missing!r}; need at least one each")
    # A split without a single present keypoint gives a 0/0 loss or metric: the run would
    # "diverge" in epoch 1 for a reason that is the data's, not the optimiser's.
    # One host read for both splits (these are CPU tensors; the count is per trial, not per step).
    labels = {"training": train_kps, "validation": data.keypoints[val_idx]}
    present = torch.stack([torch.isfinite(k).all(dim=-1).any() for k in labels.values()])
    if not present.all():
        name, kps = next((n, k) for (n, k), ok in zip(labels.items(), present.tolist()) if not ok)
        raise ValueError(f"{data.source}: no keypoint is present in the {len(kps)} {name} rows "
                         f"(missing={cfg.missing!r}); nothing to learn or score")
    return train_idx, train_kps, val_idx


def training_split(data: KeypointData, cfg: TrialConfig) -> tuple[KeypointData, KeypointData]:
    """(train, val) rows as data sets of their own (copies; for analysis and tools)."""
    train_idx, train_kps, val_idx = split_rows(data, cfg)
    train = data.subset(train_idx)
    return dataclasses.replace(train, keypoints=train_kps), data.subset(val_idx)


def mean_face(keypoints: Tensor, image_size: int) -> Tensor:
    """[K, 2] mean of each present keypoint over faces; the image centre for a never-present one."""
    present = torch.isfinite(keypoints)
    total = torch.where(present, keypoints, 0.0).sum(dim=0)
    count = present.sum(dim=0)
    return torch.where(count > 0, total / count.clamp(min=1), image_size / 2.0)


def _optimizer(cfg: TrialConfig, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# --- one epoch ---------------------------------------------------------------------------------

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
    on_step: Callable[[int, int], None] | None = None
    """Called after each training step with (steps done, steps in the epoch): plain ints, no
    tensor is read (on CUDA it counts steps queued, which run at most a little ahead)."""


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
        with _autocast(device, steps.amp_dtype):
            pred = model(x)
        base, shaped = objective.parts(pred.float(), y, torch.isfinite(y).all(dim=-1))
        loss = base if shaped is None else base + shaped
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
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
        with _autocast(device, steps.amp_dtype):
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


# --- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(directory: str | Path, state: dict[str, Any], best: bool, resume: bool = True) -> None:
    """checkpoint.pt when ``resume`` (a resume point), best.pt when ``best`` (the epoch improved
    the best val RMSE); the same bytes, serialised once. best.pt goes first, so that checkpoint.pt
    is the epoch's last file: a kill right after it is a kill before the epoch's report."""
    if not (best or resume):
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    if best:
        atomic_write(directory / BEST, buffer.getvalue())
    if resume:
        atomic_write(directory / CHECKPOINT, buffer.getvalue())


def checkpoint_due(every: int, epoch: int, last: bool) -> bool:
    """Whether ``epoch`` writes checkpoint.pt under TrialConfig.checkpoint_every (the trial's
    last epoch always does, so a finished trial's checkpoint holds its final state)."""
    return last or (every > 0 and epoch % every == 0)


# What predict needs of a checkpoint, and what a resume needs on top (see _Trial.state).
MODEL_KEYS = ("format", "epoch", "model", "config", "num_keypoints", "mean_face", "image_size", "schema")
RESUME_KEYS = MODEL_KEYS + ("optimizer", "scheduler", "rng", "progress")
_ZIP_MAGIC = b"PK\x03\x04"   # torch.save writes a zip archive


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    keys: tuple[str, ...] = MODEL_KEYS) -> dict[str, Any]:
    """A checkpoint file, or checkpoint.pt inside a directory; tensors and plain types only.

    A file that is not one (text, truncated, empty, another program's .pt, a pickle of code)
    is a ValueError of one line naming it; ``keys``: the entries the caller needs.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:   # arbitrary bytes fail torch's unpickler in many ways (IndexError, ...)
        raise ValueError(f"{path}: not a readable checkpoint ({_unreadable(path, err)})") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path}: not a checkpoint of fkd_core.train: missing key(s) {', '.join(missing)}")
    if state["format"] != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: key format: expected {_CHECKPOINT_FORMAT}, got {state['format']!r}")
    return state


def _unreadable(path: Path, err: Exception) -> str:
    """Why torch.load refused a file, in words (torch's own messages run to several lines, and
    for a file of pickled code they advise weights_only=False, which would run it)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "an empty file"
    if not head.startswith(_ZIP_MAGIC):
        return f"not a torch.save archive: it starts with {head[:8]!r}"
    if isinstance(err, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain types; refused without running them"
    return "a truncated or damaged torch.save archive"


# --- the trial ---------------------------------------------------------------------------------

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

    def summary(self, stopped: str, device: torch.device, amp_dtype: torch.dtype | None,
                scored: str = "final") -> TrainSummary:
        scored_test = self.last_test if scored == "final" else self.best_test
        return TrainSummary(
            best_val_rmse_px=self.best[metrics.VAL_RMSE], best_val_nme=self.best[metrics.VAL_NME],
            best_val_shape_err_px=self.best[metrics.VAL_SHAPE], best_epoch=self.best_epoch,
            final_val_rmse_px=self.last[metrics.VAL_RMSE], final_val_nme=self.last[metrics.VAL_NME],
            final_val_shape_err_px=self.last[metrics.VAL_SHAPE], epochs=self.epoch, stopped=stopped,
            wall_seconds=self.wall_seconds, device=str(device), precision_used=precision.name_of(amp_dtype),
            **{f"best_{k}": v for k, v in (self.best_test or {}).items()},
            scored=scored, scored_test_rmse_px=None if scored_test is None else scored_test[metrics.TEST_RMSE],
            shape_share=self.shape_share)


def _epoch_row(epoch: int, train_loss: float, val: dict[str, Any], lr: float, seconds: float,
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


def _check_resumable(state: dict[str, Any], cfg: TrialConfig, data: KeypointData) -> None:
    saved = state["config"]
    if state.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {state.get('format')!r}; this version reads {_CHECKPOINT_FORMAT}")
    if saved["backbone"] != cfg.backbone or state["num_keypoints"] != data.schema.num_keypoints:
        raise ValueError(f"checkpoint is {saved['backbone']} with {state['num_keypoints']} keypoints; "
                         f"the trial is {cfg.backbone} with {data.schema.num_keypoints}")


@dataclass
class _Trial:
    """The trainable state of one trial: what a checkpoint saves and a resume restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    batch_gen: torch.Generator      # batch order, on the data's device
    aug_gen: torch.Generator        # augmentation draws, on the data's device
    device: torch.device
    ema: AveragedModel | None = None   # the weight average (cfg.ema_decay > 0)

    @property
    def scored(self) -> nn.Module:
        """The weights that are validated, tested and saved as "model": the average when on."""
        return self.model if self.ema is None else self.ema.module

    @classmethod
    def create(cls, cfg: TrialConfig, train_kps: Tensor, size: int, device: torch.device) -> "_Trial":
        """train_kps: [N, K, 2] px of the training rows (their mean face starts the head)."""
        torch.manual_seed(cfg.seed)   # weights and dropout; batch order and augmentation below
        model = build_model(cfg.backbone, train_kps.shape[1], pretrained=cfg.pretrained,
                            dropout=cfg.dropout, mean_face=mean_face(train_kps, size),
                            image_size=size, width=cfg.width, depth=cfg.depth, head=cfg.head,
                            heatmap_size=cfg.heatmap_size).to(device)
        # channels_last pays on CPU too (oneDNN prefers NHWC): small_cnn x1.45, mobilenet_v3_small
        # x1.5, resnet18 x1.08 training images per CPU-second, measured on this 2-core machine.
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = _optimizer(cfg, model.parameters())
        scheduler = schedules.build_scheduler(cfg, optimizer)
        ema = averaging.build_ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        return cls(model, optimizer, scheduler, torch.Generator(device=device).manual_seed(cfg.seed),
                   torch.Generator(device=device).manual_seed(cfg.seed + 1), device, ema)

    def rng_state(self) -> dict[str, Tensor]:
        state = {"cpu": torch.get_rng_state(), "batches": self.batch_gen.get_state(),
                 "augment": self.aug_gen.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def state(self, progress: Progress, cfg: TrialConfig, data: KeypointData) -> dict[str, Any]:
        """Checkpoint content: tensors and plain types only, so weights_only=True can load it."""
        return {
            "format": _CHECKPOINT_FORMAT, "epoch": progress.epoch,
            "model": self.scored.state_dict(), "optimizer": self.optimizer.state_dict(),
            **({} if self.ema is None else {"train_model": self.model.state_dict(),
                                            "ema_updates": int(self.ema.n_averaged)}),
            "scheduler": self.scheduler.state_dict(), "rng": self.rng_state(),
            "progress": dataclasses.asdict(progress),
            "mean_face": self.model.mean_face.detach().cpu(), "image_size": data.images.shape[-1],
            "num_keypoints": data.schema.num_keypoints, "schema": data.schema.name,
            "config": cfg.to_dict(), "precision_used": precision.for_config(cfg, self.device),
            "data": {"source": data.source, "content_hash": data.content_hash, "synthetic": data.synthetic},
        }

    def restore(self, state: dict[str, Any]) -> Progress:
        """Load a checkpoint's weights, optimiser, scheduler and RNG states; return its progress."""
        if self.ema is None:
            self.model.load_state_dict(state["model"])
        else:   # "model" holds the average (what predict loads); "train_model" the trained weights
            self.model.load_state_dict(state["train_model"])
            self.ema.module.load_state_dict(state["model"])
            self.ema.n_averaged.fill_(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])   # moves the moments to the model's device
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["cpu"])
        self.batch_gen.set_state(rng["batches"])
        self.aug_gen.set_state(rng["augment"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        return Progress(**state["progress"])


def _run_epoch(trial: _Trial, net: nn.Module, eval_net: nn.Module, epoch: int, objective: Objective,
               steps: StepSettings, train_data: Batches, val_data: Batches,
               norm_pair: tuple[int, int] | None, test_data: Batches | None = None,
               test_groups: Groups | None = None) -> dict[str, Any]:
    """Train one epoch, validate (and test, when test_data is given: the same evaluate(), so
    whatever scores validation scores test) and return the reported row (the only host reads)."""
    t0 = time.perf_counter()
    lr = trial.optimizer.param_groups[0]["lr"]
    try:
        train_loss, shape_share = train_one_epoch(net, trial.optimizer, objective, train_data, steps,
                                                  trial.batch_gen, trial.aug_gen, trial.ema).tolist()
    except RuntimeError as err:
        # Adam with lr ~1e38 overflows float32 inside its own update ("value cannot be converted
        # to type float without overflow"): the same outcome as a NaN loss, so record a divergence.
        if "overflow" not in str(err):
            raise
        train_loss, shape_share = math.inf, math.inf
    train_seconds = time.perf_counter() - t0
    lost = {"loss": math.inf, "rmse_px": math.inf, "nme": math.inf, "shape_err_px": math.inf}
    if math.isfinite(train_loss):
        val = evaluate(eval_net, objective, val_data, steps, norm_pair)
        test = None if test_data is None else evaluate(eval_net, objective, test_data, steps, norm_pair,
                                                       test_groups)
    else:  # NaN weights: validating them costs time and says nothing
        val, test = lost, None if test_data is None else lost
    return _epoch_row(epoch, train_loss, val, lr, time.perf_counter() - t0,
                      len(train_data) / max(train_seconds, 1e-9), test, shape_share, test_groups)


def train(cfg: TrialConfig, data: KeypointData, report: Report, *,
          checkpoint_dir: str | None = None, resume_from: str | None = None,
          on_step: Callable[[int, int], None] | None = None) -> TrainSummary:
    """Run one trial and call ``report(row)`` once per epoch (keys: metrics.EPOCH_ROW_KEYS, plus
    metrics.TEST_METRICS after the validation ones when cfg.score_test).

    Args:
        cfg: every knob of the trial.
        data: the whole labelled set; split and missing policy are applied here.
        report: called after the epoch's checkpoint (if any) is written.
        checkpoint_dir: write checkpoint.pt (every cfg.checkpoint_every epochs and the last) and
            best.pt (on improvement, when cfg.checkpoint_best) there.
        resume_from: a directory holding checkpoint.pt; training continues at its next epoch.
        on_step: called after each training step with (step, steps in the epoch), for progress
            bars; it gets plain ints, so it adds no host sync.

    Returns:
        TrainSummary; stopped is "max_epochs", "early_stop" or "diverged".
    """
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    train_idx, train_kps, val_idx = split_rows(data, cfg)
    trial = _Trial.create(cfg, train_kps, data.images.shape[-1], device)
    progress = Progress()
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location="cpu")   # RNG states must stay on the CPU
        _check_resumable(state, cfg, data)
        progress = trial.restore(state)
    steps = StepSettings(
        batch_size=cfg.batch_size, amp_dtype=autocast_dtype(cfg, device),
        channels_last=cfg.channels_last,
        augment=None if cfg.augment == "none" else augment.params_for(cfg),
        flip_perm=data.schema.flip_permutation(), on_step=on_step)
    net = torch.compile(trial.model, mode=cfg.compile_mode) if cfg.compile else trial.model
    eval_net = net if trial.ema is None else trial.ema.module   # the average is not compiled
    if cfg.tta_flip:   # evaluation only: training steps still see the plain model
        eval_net = tta.FlipAveraged(eval_net, data.schema.flip_permutation())
    objective = build_objective(cfg)
    images = data.images.to(device, torch.uint8)   # once: both splits index into it
    train_data = Batches.of(images, train_idx, train_kps, device)
    val_data = Batches.of(images, val_idx, data.keypoints[val_idx], device)
    test_rows = held_out_rows(data, cfg) if cfg.score_test else None
    test_data = None if test_rows is None else Batches.of(
        images, torch.as_tensor(test_rows, dtype=torch.long), data.keypoints[test_rows], device)
    test_groups = None if test_rows is None else Groups.of(data, test_rows, device)
    wall_before = progress.wall_seconds   # time of the epochs before a resume
    stopped = "early_stop" if progress.patience_spent(cfg.patience) else "max_epochs"
    for epoch in range(progress.epoch + 1, cfg.max_epochs + 1):
        if stopped == "early_stop":   # also when a resumed trial had already run out of patience
            break
        row = _run_epoch(trial, net, eval_net, epoch, objective, steps, train_data, val_data,
                         data.schema.norm_pair, test_data, test_groups)
        if row[metrics.DIVERGED]:
            # Stop at once and keep the last good checkpoint: resuming NaN weights is useless.
            progress.epoch, progress.last = epoch, {k: math.inf for k in metrics.VAL_METRICS}
            progress.wall_seconds = wall_before + time.perf_counter() - start
            report(row)
            return progress.summary("diverged", device, steps.amp_dtype, cfg.scored)
        improved = progress.update(row)
        trial.scheduler.step(row[metrics.VAL_LOSS])
        progress.wall_seconds = wall_before + time.perf_counter() - start
        if checkpoint_dir is not None:
            last = epoch == cfg.max_epochs or progress.patience_spent(cfg.patience)
            save_checkpoint(checkpoint_dir, trial.state(progress, cfg, data), improved and cfg.checkpoint_best,
                            resume=checkpoint_due(cfg.checkpoint_every, epoch, last))
        report(row)
        if progress.patience_spent(cfg.patience):
            stopped = "early_stop"
    progress.wall_seconds = wall_before + time.perf_counter() - start
    return progress.summary(stopped, device, steps.amp_dtype, cfg.scored)


# --- command line ------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line + exit 2, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


# Fields whose flags keep the spellings they had before the CLI was generated: --epochs, and
# --loss, which names the base loss and the shape term in one spec ("wing+cgd").
_SPELLED = {"max_epochs", "loss", "shape", "alpha", "compile", "compile_mode"}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m fkd_core.train", description="Train one keypoint model. Every "
                "TrialConfig field has a flag; a flag not given keeps the recipe's value, else "
                "TrialConfig's default (shown).")
    losses = [f"{b}+{s}" if s != "none" else b for b in get_args(BaseLoss) for s in get_args(ShapeTerm)]
    p.add_argument("--loss", default=None, metavar="BASE[+SHAPE]",
                   help=f"base loss and optional shape term: {' | '.join(losses)}; a shape term alone "
                        "(cgd) means mse+cgd. Sets the fields loss and shape (default: 'mse')")
    p.add_argument("--alpha", type=float, default=None, help=cli.flag_help("alpha", None))
    p.add_argument("--epochs", "--max-epochs", dest="epochs", type=int, default=None,
                   help=cli.flag_help("max_epochs", TrialConfig.max_epochs))
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   choices=list(get_args(CompileMode)),
                   help="torch.compile the model; MODE reduce-overhead adds CUDA graphs (GPU). "
                        "Sets the fields compile and compile_mode. Off by default: on a CPU it was "
                        "measured slower")
    p.add_argument("--recipe", help=f"a named recipe ({', '.join(recipes.recipe_names())}) or a "
                                    "YAML file of TrialConfig fields; flags given override it")
    p.add_argument("--out", default=None, help="folder for best.pt, checkpoint.pt, metrics.csv, "
                                               "summary.json (default runs/<time>-<backbone>-<loss>)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    start.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (without it, or --resume, a folder that "
                            "holds a run is refused)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    cli.add_config_flags(p, skip=_SPELLED)
    return p


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    """The TrialConfig of the flags given; TrialConfig's defaults for the rest (alpha: 0.01 when
    --loss names a shape term, as TrialConfig(shape="cgd") gives)."""
    fields = cli.config_values(args)
    if args.loss is not None:
        fields["loss"], fields["shape"] = parse_loss_spec(args.loss)
    if args.alpha is not None:
        fields["alpha"] = args.alpha
    if args.epochs is not None:
        fields["max_epochs"] = args.epochs
    if args.compile is not None:
        fields.update(compile=True, compile_mode=args.compile)
    return TrialConfig(**fields)


def _progress_line(row: dict[str, Any], max_epochs: int, tag: str) -> str:
    flag = "  DIVERGED" if row[metrics.DIVERGED] else ""
    return (f"[{tag}] epoch {row[metrics.EPOCH]:>3}/{max_epochs}  train_loss {row[metrics.TRAIN_LOSS]:.4g}"
            f"  val_rmse {row[metrics.VAL_RMSE]:.3f} px  nme {row[metrics.VAL_NME]:.4f}"
            f"  shape {row[metrics.VAL_SHAPE]:.3f} px"
            + (f"  test_rmse {row[metrics.TEST_RMSE]:.3f} px" if metrics.TEST_RMSE in row else "")
            + f"  lr {row[metrics.LR]:.2g}"
            f"  {row[metrics.EPOCH_SECONDS]:.1f} s  {row[metrics.IMAGES_PER_S]:.0f} img/s{flag}")


class StepBar:
    """The CLI's progress bar inside an epoch, redrawn in place on a terminal, at most every
    ``every`` seconds; the epoch's line (report) replaces it. Silent when stream is no TTY."""

    def __init__(self, stream: Any, tag: str, max_epochs: int, every: float = 0.5) -> None:
        self.stream, self.tag, self.max_epochs, self.every = stream, tag, max_epochs, every
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.epoch, self.started, self.last = 1, time.perf_counter(), -math.inf

    def __call__(self, step: int, total: int) -> None:
        now = time.perf_counter()
        if step == 1:
            self.started = now
        if not self.enabled or (now - self.last < self.every and step < total):
            return
        self.last = now
        # The clock starts when step 1 ends, so step - 1 steps are timed (none at step 1).
        self.stream.write("\r" + self.render(step, total, now - self.started, timed_steps=step - 1))
        self.stream.flush()

    def render(self, step: int, total: int, seconds: float, width: int = 30,
               timed_steps: int | None = None) -> str:
        """timed_steps: steps done in ``seconds`` (default: step); none timed yet = no estimate."""
        filled = width * step // max(total, 1)
        timed = step if timed_steps is None else timed_steps
        if step >= total:
            left = "~0 s left"
        elif timed > 0 and seconds > 0:
            left = f"~{(total - step) * seconds / timed:.0f} s left"
        else:
            left = "estimating time left"
        return (f"[{self.tag}] epoch {self.epoch:>3}/{self.max_epochs} [{'#' * filled}{'.' * (width - filled)}] "
                f"{step}/{total} steps  {seconds:.0f} s, {left}")

    def epoch_done(self, next_epoch: int) -> None:
        """Clear the bar before the epoch's line is printed."""
        self.epoch = next_epoch
        if self.enabled:
            self.stream.write("\r\033[K")


def check_finite(args: argparse.Namespace) -> None:
    """Every float flag is a finite number (float() accepts "inf" and "nan"); the ranges are
    TrialConfig's to check."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')}: expected a finite number, got {value}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_finite(args)
        cfg = recipes.resolve(args, recipes.given_flags(_parser(), argv), config_from_args)
        if cfg.backbone not in BACKBONES:   # before minutes of data loading, not after
            raise ValueError(f"Unknown backbone {cfg.backbone!r}; valid: {sorted(BACKBONES)}")
        device = resolve_device(cfg.device)
        out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.backbone}-{cfg.loss_label}")
        check_start(out, args.resume, args.overwrite)
        resumed = load_checkpoint(out, keys=RESUME_KEYS)["epoch"] if args.resume else 0
        data = load_for_config(cfg)
        tag = "synthetic" if data.synthetic else Path(data.source).name
        print(f"[{tag}] {data.source}: {len(data)} faces, {data.schema.name}; {cfg.backbone}, "
              f"loss {cfg.loss_label}, augment {cfg.augment}, device {device}; "
              f"writing to {out}", file=sys.stderr)
        with RunDir.open(out, resume=args.resume, overwrite=args.overwrite, resume_epoch=resumed) as run:
            summary = _train_into(run, cfg, data, tag, resumed)
    except Interrupted as stop:
        print(f"interrupted by {stop}; the epochs done are in {out}; continue with --out "
              f"{shlex.quote(str(out))} --resume", file=sys.stderr)
        return EXIT_CODES[stop.signum]
    except KeyboardInterrupt:   # Ctrl-C before training started: nothing was written
        print("interrupted by SIGINT before training started", file=sys.stderr)
        return EXIT_CODES[signal.SIGINT]
    except (ValueError, OSError, WeightsUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_outcome(summary, cfg, out, tag)
    if args.json:
        print(strict_json(summary.to_dict()))
    return 0


def _train_into(run: RunDir, cfg: TrialConfig, data: KeypointData, tag: str, resumed: int) -> TrainSummary:
    """train() into an owned run folder: each epoch's row appended to metrics.csv as it ends,
    summary.json written however the run ends (completed, interrupted, or an error)."""
    bar = StepBar(sys.stderr, tag, cfg.max_epochs)
    bar.epoch = resumed + 1
    with Interrupts() as stop:
        def on_step(step: int, total: int) -> None:
            bar(step, total)
            stop.check()

        def report(row: dict[str, Any]) -> None:
            run.metrics.append(row)
            bar.epoch_done(row[metrics.EPOCH] + 1)
            print(_progress_line(row, cfg.max_epochs, tag), file=sys.stderr, flush=True)
            stop.check()   # the row is on disk: a safe point to stop

        try:
            summary = train(cfg, data, report, checkpoint_dir=str(run.folder),
                            resume_from=str(run.folder) if resumed else None, on_step=on_step)
        except Interrupted as exc:
            _summary_of_unfinished(run, "interrupted", signal=str(exc))
            raise
        except Exception as exc:
            _summary_of_unfinished(run, "error", error=(str(exc).splitlines() or [type(exc).__name__])[0])
            raise
        run.write_summary(summary.to_dict())
    return summary


def _summary_of_unfinished(run: RunDir, stopped: str, **why: str) -> None:
    """summary.json of a run that did not return: what its rows say. Only after an epoch of
    its own: a start that failed leaves the folder as it was (and a new one is removed), so the
    next start is not refused. Best effort: the error may be the full disk this write hits too."""
    if run.metrics.appended == 0:
        return
    with contextlib.suppress(OSError):
        run.write_summary({**summary_from_rows(run.metrics.rows), "stopped": stopped, **why})


def _print_outcome(summary: TrainSummary, cfg: TrialConfig, out: Path, tag: str) -> None:
    if summary.best_epoch == 0:   # diverged in its first epoch: no model worth keeping
        print(f"[{tag}] diverged in epoch {summary.epochs} (loss not finite; lr {cfg.lr:g}): no model "
              f"saved; epochs in {out / 'metrics.csv'}", file=sys.stderr)
    else:
        print(f"[{tag}] {summary.stopped} after {summary.epochs} epochs: best val RMSE "
              f"{summary.best_val_rmse_px:.3f} px at epoch {summary.best_epoch}; best model {out / BEST}",
              file=sys.stderr)


def train_config(cfg: TrialConfig, data: KeypointData | None = None, report: Report | None = None,
                 **options: Any) -> TrainSummary:
    """``fkd_core.train(cfg)``, the Python API: train() with the data loaded from cfg.data when
    not given, and the epoch rows dropped when no report is given (pass ``rows.append`` to keep
    them). ``options``: train()'s keyword arguments (checkpoint_dir, resume_from, on_step)."""
    data = load_for_config(cfg) if data is None else data
    return train(cfg, data, (lambda row: None) if report is None else report, **options)


api.make_callable(__name__, train_config)   # `from fkd_core import train; train(cfg)` (fkd_core.api)

if __name__ == "__main__":
    sys.exit(main())
