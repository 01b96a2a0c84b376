"""TrialConfig: the one frozen dataclass that flows from the sweep into fkd_core.

Defaults reproduce the study's training recipe (batch 64, Adam 1e-3, ReduceLROnPlateau x0.7 on
the validation loss, early stopping with patience 20, up to 200 epochs) with the study's *defects
switched off*: shuffled split, masked missing keypoints, exact rotation, per-face CGD. The backbone
default is the CPU-sized ``small_cnn`` so that every default runs on a laptop without weights.

    >>> TrialConfig(**{"backbone": "resnet18", "shape": "cgd", "alpha": 0.01})
    >>> TrialConfig(shape="cgd").alpha       # 0.01: alpha None means the study's weight
    >>> TrialConfig(dropout=1.5)             # ValueError: TrialConfig.dropout must be in [0, 1), got 1.5

Every field's range and the combinations (unet needs a skip trunk, splits leave rows to train)
are checked in __post_init__, each failure a one-line ValueError naming the field.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np

Split = Literal["shuffle", "tail"]
Missing = Literal["mask", "ffill", "drop"]
BaseLoss = Literal["mse", "wing", "soft_wing"]
ShapeTerm = Literal["none", "cgd", "seed_cgd"]
Augment = Literal["none", "study", "study_exact", "full", "robust"]
Optimizer = Literal["adam", "adamw", "sgd"]
Precision = Literal["auto", "fp32", "bf16"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"]
Head = Literal["regression", "heatmap", "unet"]
# The one list of backbone names (fkd_core.models.BACKBONES builds them; tests/test_names.py
# pins the two together). Here, without torch, so that a sweep space can name them cheaply.
Backbone = Literal["resnet50", "densenet121", "resnet18", "mobilenet_v3_small", "small_cnn", "res_cnn",
                   "s2d_cnn"]
BACKBONE_NAMES: tuple[str, ...] = get_args(Backbone)
# The project's own CPU trunks: the only ones with width and depth knobs (fkd_core.models.KNOBBED)
# and the only ones that expose earlier maps to the "unet" head.
SKIP_BACKBONES = ("small_cnn", "res_cnn", "s2d_cnn")
Schedule = Literal["plateau", "cosine", "onecycle"]
Scored = Literal["final", "best_val"]

# The network input side of every layout (fkd_core.data resizes image folders to it); a heatmap
# size must divide it.
INPUT_SIZE = 96
# Metadata key of the TrialConfig fields that are augmentation knobs (fkd_core.augment.AugmentParams
# takes its knob fields, names and defaults, from them).
AUGMENT_KNOB = "augment_knob"
_KNOB = {AUGMENT_KNOB: True}


def uses_shape(shape: str, alpha: float) -> bool:
    """The one rule for "is this a shape arm": a shape term with a positive weight."""
    return shape != "none" and float(alpha) > 0.0


@dataclass(frozen=True)
class TrialConfig:
    # --- data -----------------------------------------------------------------------------
    data: str = "synthetic"
    """Kaggle training CSV (.csv, .csv.gz, .zip), image-folder CSV, or "synthetic"."""
    synth_n: int = 2000
    """Synthetic faces to generate when data == "synthetic" (enough for a CPU sweep)."""
    synth_pose: float = 1.0
    """Synthetic pose variation: 0 = rigid faces, 1 = Kaggle-like, 2 = strongly posed."""
    synth_seed: int = 0
    """Seed of the synthetic generator (the data set, not the trial)."""
    val_fraction: float = 0.15
    """Fraction of rows held out for validation."""
    split: Split = "shuffle"
    """"shuffle": seeded shuffle (correct). "tail": the file's last rows (the study's defect)."""
    split_seed: int = 0
    """Seed of the split; equal across losses so that comparisons are paired."""
    missing: Missing = "mask"
    """"mask": exclude missing keypoints. "ffill": the study's forward fill. "drop": complete rows only."""
    groups: str = "auto"
    """Who is who, so that no person is on two sides of a split: "auto" (a Kaggle file's
    <file>.groups.csv sidecar, an image folder's file names), "none" (row-level splits), or a
    groups CSV path (columns row,group)."""
    group_regex: str = ""
    """Image folders: regex whose first group names the person in a file name (default: the name
    without a trailing _<digits> and extension)."""
    test_fraction: float = 0.15
    """Fraction of the groups held out as the test split, used for final numbers only."""
    test_seed: int = 0
    """Seed of the test split; fixed per data set, never varied by a sweep."""
    score_test: bool = False
    """Score the test split each epoch (confirm phase only; search never reads it)."""
    scored: Scored = "final"
    """Which weights a confirm trial's test score (scored_test_rmse_px) is read from, fixed before
    the run: "final", the last epoch's (the EMA average when ema_decay > 0); or "best_val", the
    best-validation epoch's, the noisier option (which epoch wins is partly validation noise:
    corr(d, difference of the arms' best epochs) was -0.96 on fkd-yt15)."""

    # --- model ----------------------------------------------------------------------------
    backbone: Backbone = "small_cnn"
    """A name of Backbone (resnet50, densenet121, resnet18, mobilenet_v3_small, small_cnn, res_cnn,
    s2d_cnn)."""
    pretrained: bool = False
    """Load ImageNet weights through torchvision (must be in the torch cache when offline)."""
    dropout: float = 0.1
    """Dropout before the linear head, as in the study."""
    width: float = 1.0
    """Width multiplier of small_cnn / res_cnn / s2d_cnn (channels x width); other backbones take 1 only."""
    depth: int = 1
    """Blocks per stage of res_cnn (convs per stage of small_cnn and s2d_cnn); other backbones take 1 only."""
    head: Head = "regression"
    """"regression" (the study's linear head), "heatmap" (soft-argmax) or "unet" (soft-argmax with
    skip connections from the trunk; small_cnn, res_cnn and s2d_cnn), all in fkd_core.heads."""
    heatmap_size: int = 24
    """Side of the heatmaps of the heatmap head; divides the input (96): 12, 24, 48."""

    # --- loss: base + alpha * shape --------------------------------------------------------
    loss: BaseLoss = "mse"
    """Base loss in pixels."""
    shape: ShapeTerm = "none"
    """Shape term: "cgd" (per face, DESIGN.md), "seed_cgd" (the study's batch-wide sum), or none."""
    alpha: float | None = None
    """Weight of the shape term. None (the default) means the study's 0.01 when a shape term is
    named and 0 otherwise, so that TrialConfig(shape="cgd") and --loss mse+cgd train the same
    objective; an explicit 0 switches the shape term off."""

    # --- augmentation ---------------------------------------------------------------------
    augment: Augment = "none"
    """"none", "study" (rotation, noise, brightness), "study_exact" (study + its rotation bug), "full"."""
    rotation_deg: float = field(default=20.0, metadata=_KNOB)
    """Rotation range +-deg (the study: 20)."""
    noise_var: float = field(default=0.1, metadata=_KNOB)
    """Variance of additive Gaussian noise on [0, 1] images (the study: 0.1)."""
    brightness_low: float = field(default=0.5, metadata=_KNOB)
    """Lower brightness factor (the study: x0.5)."""
    brightness_high: float = field(default=1.5, metadata=_KNOB)
    """Upper brightness factor (the study: x1.5)."""
    flip_p: float = field(default=0.5, metadata=_KNOB)
    """Probability of a horizontal flip ("full" only)."""
    scale_range: float = field(default=0.1, metadata=_KNOB)
    """Random zoom of +-scale_range ("full" only)."""
    shift_px: float = field(default=4.0, metadata=_KNOB)
    """Random shift of +-shift_px pixels ("full" only)."""
    blur_sigma: float = field(default=1.5, metadata=_KNOB)
    """Largest Gaussian blur sigma in pixels ("robust" only)."""
    contrast_range: float = field(default=0.4, metadata=_KNOB)
    """Contrast factor in [1 - r, 1 + r] about the image mean ("robust" only)."""
    gamma_range: float = field(default=0.5, metadata=_KNOB)
    """Gamma log-uniform in [1 / (1 + r), 1 + r] ("robust" only)."""
    occlusion_size: float = field(default=0.35, metadata=_KNOB)
    """Largest occlusion patch side as a fraction of the image ("robust" only)."""

    # --- optimisation ---------------------------------------------------------------------
    optimizer: Optimizer = "adam"
    """Optimizer of the weights (the study: Adam)."""
    lr: float = 1e-3
    """Peak learning rate (the study: 1e-3)."""
    weight_decay: float = 0.0
    """L2 weight decay (decoupled for adamw); 0: none, as in the study."""
    batch_size: int = 64
    """Faces per training step (the study: 64)."""
    max_epochs: int = 200
    """Epochs at most (the study: 200); cosine and onecycle schedules run over exactly these."""
    patience: int = 20
    """Early stopping: epochs without a better validation RMSE."""
    lr_factor: float = 0.7
    """ReduceLROnPlateau factor on the validation loss (the study: 0.7)."""
    lr_patience: int = 5
    """ReduceLROnPlateau patience in epochs."""
    schedule: Schedule = "plateau"
    """"plateau" (the study's ReduceLROnPlateau), "cosine" or "onecycle" over max_epochs."""
    warmup_epochs: int = 0
    """Linear learning-rate warm-up of cosine / onecycle, capped below max_epochs (onecycle: 0
    means 30% of the epochs)."""
    ema_decay: float = 0.0
    """Exponential moving average of the weights (and batch-norm statistics), updated every step
    with this decay (e.g. 0.998); validation, test, best.pt and predict use the average. 0: off."""
    grad_clip: float = 0.0
    """Largest global gradient norm of a step (torch.nn.utils.clip_grad_norm_); a larger one is
    scaled down to it, so that one outlying batch cannot throw the weights off. 0: off."""

    # --- runtime --------------------------------------------------------------------------
    seed: int = 0
    """Seed of initialisation, batch order and augmentation."""
    device: str = "auto"
    """"auto" (cuda if available), "cpu", "cuda", "cuda:1", ...; checked against this machine's
    devices when training starts (fkd_core.train.resolve_device)."""
    precision: Precision = "auto"
    """"auto": bf16 autocast on CUDA; on a CPU, bf16 where fkd_core.precision's committed
    measurement says it trains this backbone and head faster on the CPU's class (AMX or
    AVX512-BF16), else fp32. "fp32" / "bf16": as given. What ran is recorded as precision_used
    (TrainSummary, checkpoint, trials.parquet)."""
    channels_last: bool = True
    """channels_last memory format (oneDNN and cuDNN prefer NHWC: measured 1.08-1.5x faster on CPU)."""
    compile: bool = False
    """torch.compile the model (measured 1.08x slower on CPU for small_cnn; meant for GPU)."""
    compile_mode: CompileMode = "default"
    """torch.compile mode when compile is on: "reduce-overhead" adds CUDA graphs (GPU only)."""
    checkpoint_every: int = 1
    """Epochs between writes of checkpoint.pt (the resume point); the trial's last epoch is always
    written, 0 writes only that one. A resnet50 checkpoint costs ~1 s to write and copy: on a GPU
    that can outweigh a short epoch, and a resume then repeats at most N-1 epochs."""
    checkpoint_best: bool = True
    """Write best.pt at each new best val RMSE (prediction figures, the sweep's kept models)."""
    tta_flip: bool = False
    """Validate on the mean of the prediction and the mirrored prediction of the mirrored image."""

    def __post_init__(self) -> None:
        if self.alpha is None:   # frozen: the resolved weight is stored once, so to_dict() shows it
            object.__setattr__(self, "alpha", 0.01 if self.shape != "none" else 0.0)
        for name, kind in _FIELD_KINDS.items():
            value = getattr(self, name)
            ok = isinstance(value, _KINDS[kind]) and (kind is bool or not isinstance(value, (bool, np.bool_)))
            _check(ok and (kind is not float or math.isfinite(value)), name, f"{_KIND_WORDS[kind]}, got {value!r}")
        for name, allowed in _LITERALS.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"TrialConfig.{name}={value!r}; valid: {list(allowed)}")
        _check(0.0 < self.val_fraction < 1.0, "val_fraction", "in (0, 1)")
        _check(0.0 < self.test_fraction < 1.0, "test_fraction", "in (0, 1)")
        _check(self.test_fraction + self.val_fraction < 1.0, "test_fraction + val_fraction",
               "< 1, so that some rows are left for training")
        _check(bool(self.groups.strip()), "groups", '"auto", "none" or a groups CSV path')
        _check(_compiles(self.group_regex), "group_regex", "a regular expression that compiles")
        _check(self.alpha >= 0.0, "alpha", ">= 0")
        _check(self.batch_size >= 1, "batch_size", ">= 1")
        _check(self.max_epochs >= 1, "max_epochs", ">= 1")
        _check(self.checkpoint_every >= 0, "checkpoint_every", ">= 0")
        _check(self.lr > 0.0, "lr", "> 0")
        _check(self.synth_n >= 10, "synth_n", ">= 10")
        _check(self.synth_pose >= 0.0, "synth_pose", ">= 0")
        _check(0.0 < self.brightness_low <= self.brightness_high, "brightness_low", "in (0, brightness_high]")
        _check(0.0 <= self.flip_p <= 1.0, "flip_p", "in [0, 1]")
        _check(self.width > 0.0, "width", f"> 0 (a width multiplier), got {self.width:g}")
        _check(self.depth >= 1, "depth", f">= 1, got {self.depth}")
        _check(self.heatmap_size >= 1 and INPUT_SIZE % self.heatmap_size == 0, "heatmap_size",
               f"a divisor of the input size {INPUT_SIZE} (12, 24, 48), got {self.heatmap_size}")
        _check(self.head != "unet" or self.backbone in SKIP_BACKBONES, "head",
               f'"regression" or "heatmap" for {self.backbone} ("unet" needs the skip maps of '
               f'{" or ".join(SKIP_BACKBONES)}), got "unet"')
        _check(self.blur_sigma >= 0.0, "blur_sigma", ">= 0")
        _check(0.0 <= self.contrast_range < 1.0, "contrast_range", "in [0, 1)")
        _check(self.gamma_range >= 0.0, "gamma_range", ">= 0")
        _check(0.0 <= self.occlusion_size <= 1.0, "occlusion_size", "in [0, 1]")
        _check(self.warmup_epochs >= 0, "warmup_epochs", ">= 0")
        _check(0.0 <= self.ema_decay < 1.0, "ema_decay", f"in [0, 1) (0 = off), got {self.ema_decay:g}")
        _check(self.grad_clip >= 0.0, "grad_clip", f">= 0 (0 = off), got {self.grad_clip:g}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """The ranges the checks above leave out: each would otherwise fail later, or not at all."""
        _check(bool(self.data.strip()), "data", 'a training CSV path or "synthetic"')
        for name in ("synth_seed", "split_seed", "test_seed", "seed"):
            _check(getattr(self, name) >= 0, name, f">= 0 (numpy seeds are unsigned), got {getattr(self, name)}")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"in [0, 1), got {self.dropout:g}")
        _check(0.0 <= self.rotation_deg <= 180.0, "rotation_deg", f"in [0, 180], got {self.rotation_deg:g}")
        _check(self.noise_var >= 0.0, "noise_var", f">= 0 (a variance), got {self.noise_var:g}")
        _check(0.0 <= self.scale_range < 1.0, "scale_range", f"in [0, 1) (zoom 1 +- r), got {self.scale_range:g}")
        _check(0.0 <= self.shift_px <= INPUT_SIZE / 2, "shift_px",
               f"in [0, {INPUT_SIZE // 2}] (half the input), got {self.shift_px:g}")
        _check(self.weight_decay >= 0.0, "weight_decay", f">= 0, got {self.weight_decay:g}")
        _check(self.patience >= 1, "patience", f">= 1 (epochs without a better val RMSE), got {self.patience}")
        _check(0.0 < self.lr_factor < 1.0, "lr_factor", f"in (0, 1) (it lowers the rate), got {self.lr_factor:g}")
        _check(self.lr_patience >= 0, "lr_patience", f">= 0, got {self.lr_patience}")

    @property
    def uses_shape(self) -> bool:
        """True when the objective has a shape term with a positive weight (uses_shape)."""
        return uses_shape(self.shape, self.alpha)

    @property
    def loss_label(self) -> str:
        """Human label of the objective, e.g. "mse", "mse+0.01*cgd"."""
        return f"{self.loss}+{self.alpha:g}*{self.shape}" if self.uses_shape else self.loss

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


def _literal_fields() -> dict[str, tuple[str, ...]]:
    """Field name -> allowed values, for every field annotated with a Literal (the one home)."""
    hints = typing.get_type_hints(TrialConfig)
    return {f.name: get_args(hints[f.name]) for f in dataclasses.fields(TrialConfig)
            if get_origin(hints[f.name]) is Literal}


_LITERALS: dict[str, tuple[str, ...]] = _literal_fields()


def augment_knobs() -> tuple[dataclasses.Field, ...]:
    """The TrialConfig fields that are augmentation knobs, in field order."""
    return tuple(f for f in dataclasses.fields(TrialConfig) if f.metadata.get(AUGMENT_KNOB))


def _value_kind(hint: Any) -> type:
    """The value type a field's annotation asks for: a Literal holds strings, alpha's
    "float | None" a float (None is resolved before the check)."""
    if get_origin(hint) is Literal:
        return str
    if get_origin(hint) in (Union, types.UnionType):
        return next(a for a in get_args(hint) if a is not type(None))
    return hint


# numbers' ABCs, so that values read back from Parquet (numpy scalars) pass too; an int is a
# valid float, a bool is not a number here.
_KINDS: dict[type, tuple[type, ...]] = {bool: (bool, np.bool_), int: (numbers.Integral,),
                                        float: (numbers.Real,), str: (str,)}
_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
_FIELD_KINDS: dict[str, type] = {name: _value_kind(hint) for name, hint in get_type_hints(TrialConfig).items()}


def _check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ValueError(f"TrialConfig.{name} must be {expected}")


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def config_fields() -> dict[str, type]:
    """Field name -> Python type of its values (for typed Parquet columns)."""
    defaults = TrialConfig()   # an instance, so that alpha's None default reads as its float
    return {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(TrialConfig)}
