"""One trial: train a keypoint regressor on tensors that live on the device, report every epoch.

    >>> from fkd_core.trainer import train
    >>> summary = train(TrialConfig(max_epochs=2), load_for_config(cfg), report=rows.append)
    >>> summary.best_val_rmse_px, summary.stopped

The command line over this is ``python -m fkd_core.train`` (fkd_core/train.py).

The whole data set is moved to the device once as uint8; a batch is an index slice of it,
converted and augmented there, so there are no DataLoader workers and no per-step host->device
copy. Losses and metrics are summed on the device and read back once per epoch (fkd_core.loop):
no per-step host sync, so the GPU never waits on Python.

Validation is always scored against the original labels with missing keypoints masked, whatever
``cfg.missing`` does to the training targets: every missing policy is judged on the same targets.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from fkd_core import augment, averaging, metrics, precision, schedules, tta
from fkd_core.checkpoint import CHECKPOINT_FORMAT, check_resumable, checkpoint_due, load_checkpoint, save_checkpoint
from fkd_core.config import TrialConfig
from fkd_core.data import KeypointData, apply_missing, held_out_rows, three_way_split
from fkd_core.device import autocast_dtype, resolve_device
from fkd_core.loop import Batches, Groups, Progress, StepSettings, epoch_row, evaluate, train_one_epoch
from fkd_core.losses import Objective, build_objective
from fkd_core.models import build_model

Report = Callable[[dict[str, Any]], None]
"""What train() calls once per epoch with the epoch's row (list.append in tests, tune.report in a sweep)."""


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


def summarise(progress: Progress, stopped: str, device: torch.device, amp_dtype: torch.dtype | None,
            scored: str = "final") -> TrainSummary:
    """How the trial ended, from its progress; ``scored`` picks the test score's epoch."""
    scored_test = progress.last_test if scored == "final" else progress.best_test
    return TrainSummary(
        best_val_rmse_px=progress.best[metrics.VAL_RMSE], best_val_nme=progress.best[metrics.VAL_NME],
        best_val_shape_err_px=progress.best[metrics.VAL_SHAPE], best_epoch=progress.best_epoch,
        final_val_rmse_px=progress.last[metrics.VAL_RMSE], final_val_nme=progress.last[metrics.VAL_NME],
        final_val_shape_err_px=progress.last[metrics.VAL_SHAPE], epochs=progress.epoch, stopped=stopped,
        wall_seconds=progress.wall_seconds, device=str(device), precision_used=precision.name_of(amp_dtype),
        **{f"best_{k}": v for k, v in (progress.best_test or {}).items()},
        scored=scored, scored_test_rmse_px=None if scored_test is None else scored_test[metrics.TEST_RMSE],
        shape_share=progress.shape_share)


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


# The optimisers of config.Optimizer by name (tests/test_names.py pins the two together).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": functools.partial(torch.optim.SGD, momentum=0.9),   # the usual momentum; the study itself used Adam
}


def _optimizer(cfg: TrialConfig, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# --- the trial ---------------------------------------------------------------------------------

@dataclass
class Trial:
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
    def create(cls, cfg: TrialConfig, train_kps: Tensor, size: int, device: torch.device) -> "Trial":
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
            "format": CHECKPOINT_FORMAT, "epoch": progress.epoch,
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


def _run_epoch(trial: Trial, net: nn.Module, eval_net: nn.Module, epoch: int, objective: Objective,
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
    return epoch_row(epoch, train_loss, val, lr, time.perf_counter() - t0,
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
    trial = Trial.create(cfg, train_kps, data.images.shape[-1], device)
    progress = Progress()
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location="cpu")   # RNG states must stay on the CPU
        check_resumable(state, cfg, data)
        progress = trial.restore(state)
    steps = StepSettings(
        batch_size=cfg.batch_size, amp_dtype=autocast_dtype(cfg, device),
        channels_last=cfg.channels_last,
        augment=None if cfg.augment == "none" else augment.params_for(cfg),
        flip_perm=data.schema.flip_permutation(), grad_clip=cfg.grad_clip, on_step=on_step)
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
            return summarise(progress, "diverged", device, steps.amp_dtype, cfg.scored)
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
    return summarise(progress, stopped, device, steps.amp_dtype, cfg.scored)
