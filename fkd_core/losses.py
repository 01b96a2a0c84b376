"""Keypoint losses in pixels, chosen by name, and the trial objective ``base + alpha * shape``.

Every loss takes ``pred: [N, K, 2]``, ``target: [N, K, 2]`` (NaN = missing) and
``mask: [N, K]`` (True = present; None means "where target is finite") and returns a scalar
tensor. Missing keypoints contribute nothing to the value and receive exactly zero gradient:
masked entries are replaced with ``torch.where`` *before* any arithmetic, because NaN * 0 is NaN.

    >>> from fkd_core.losses import cgd, build_objective
    >>> objective = build_objective(TrialConfig(shape="cgd", alpha=0.01))
    >>> loss = objective(pred, target, mask)          # mse + 0.01 * cgd, in pixels

Definitions follow DESIGN.md: ``cgd`` is per face (mean over the face's present pairs i < j of
|D^g_ij - D^p_ij|, then the mean over faces that have a pair); ``seed_cgd`` is the study's
batch-wide sum, kept only to reproduce it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from fkd_core.config import TrialConfig

Loss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

# Exact Euclidean distances: the matmul shortcut of cdist loses ~1e-3 px at 96-px coordinates.
_CDIST_MODE = "donot_use_mm_for_euclid_dist"


def present_mask(target: Tensor, mask: Tensor | None = None) -> Tensor:
    """mask: [N, K] bool; derived from target [N, K, 2] (finite x and y) when not given."""
    if mask is None:
        return torch.isfinite(target).all(dim=-1)
    return mask.bool()


def _masked(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """pred and target with missing keypoints set to 0 (no NaN reaches arithmetic), and mask [N, K]."""
    m = present_mask(target, mask)
    m2 = m.unsqueeze(-1)
    return torch.where(m2, pred, 0.0), torch.where(m2, target, 0.0), m


def _coordinate_mean(per_coord: Tensor, mask: Tensor) -> Tensor:
    """Mean of per_coord [N, K, 2] over present coordinates; 0 when nothing is present."""
    count = 2 * mask.sum()
    return per_coord.sum() / count.clamp(min=1)


def mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over present coordinates of (p - g)^2, in px^2."""
    p, g, m = _masked(pred, target, mask)
    return _coordinate_mean((p - g).square(), m)


def wing(pred: Tensor, target: Tensor, mask: Tensor | None = None,
         w: float = 10.0, epsilon: float = 2.0) -> Tensor:
    """Wing loss (Feng et al. 2018) per coordinate, mean over present coordinates.

    |x| < w: w ln(1 + |x|/eps); else |x| - C with C = w - w ln(1 + w/eps), which makes the two
    pieces meet at |x| = w. Defaults w=10, eps=2 px are the paper's (its coordinates were pixels).
    """
    p, g, m = _masked(pred, target, mask)
    x = (p - g).abs()
    c = w - w * math.log1p(w / epsilon)
    per = torch.where(x < w, w * torch.log1p(x / epsilon), x - c)
    return _coordinate_mean(per, m)


def soft_wing(pred: Tensor, target: Tensor, mask: Tensor | None = None,
              omega1: float = 2.0, omega2: float = 20.0, epsilon: float = 0.5) -> Tensor:
    """Soft wing loss (Lin et al. 2021) per coordinate, mean over present coordinates.

    |x| < omega1: |x|; else omega2 ln(1 + |x|/eps) + B with B = omega1 - omega2 ln(1 + omega1/eps),
    continuous at omega1 and with a smaller gradient than L1 on large errors.
    """
    p, g, m = _masked(pred, target, mask)
    x = (p - g).abs()
    b = omega1 - omega2 * math.log1p(omega1 / epsilon)
    per = torch.where(x < omega1, x, omega2 * torch.log1p(x / epsilon) + b)
    return _coordinate_mean(per, m)


def cgd_faces(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-face CGD.

    Returns:
        values: [N] mean over the face's present pairs i < j of |D^g_ij - D^p_ij| (0 without pairs).
        has_pairs: [N] bool, True where the face has at least one present pair.
    """
    p, g, m = _masked(pred, target, mask)
    k = m.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=m.device).triu(diagonal=1)
    pairs = m.unsqueeze(2) & m.unsqueeze(1) & upper                      # [N, K, K]
    d_pred = torch.cdist(p, p, compute_mode=_CDIST_MODE)
    d_true = torch.cdist(g, g, compute_mode=_CDIST_MODE)
    gap = torch.where(pairs, (d_true - d_pred).abs(), 0.0)
    n_pairs = pairs.sum(dim=(1, 2))
    return gap.sum(dim=(1, 2)) / n_pairs.clamp(min=1), n_pairs > 0


def cgd(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Complete graph distance (DESIGN.md), in px: mean over faces with >= 1 present pair."""
    values, has_pairs = cgd_faces(pred, target, mask)
    return values.sum() / has_pairs.sum().clamp(min=1)


def seed_cgd(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """The study's batch-wide CGD: sum of |D_target - D_pred| over all B*K x B*K entries.

    The batch is flattened into one cloud of B*K points, so most "edges" join points of different
    faces, and the result is a sum (it grows with B^2). The study forward-filled missing values,
    so it never met NaN; here a missing point is dropped from the cloud (its row and column of
    both matrices are left out), which equals the study's value when nothing is missing.
    """
    p, g, m = _masked(pred, target, mask)
    flat_p, flat_g, flat_m = p.reshape(-1, 2), g.reshape(-1, 2), m.reshape(-1)
    keep = flat_m.unsqueeze(1) & flat_m.unsqueeze(0)                      # [B*K, B*K]
    d_pred = torch.cdist(flat_p, flat_p, compute_mode=_CDIST_MODE)
    d_true = torch.cdist(flat_g, flat_g, compute_mode=_CDIST_MODE)
    return torch.where(keep, (d_true - d_pred).abs(), 0.0).sum()


BASE_LOSSES: dict[str, Loss] = {"mse": mse, "wing": wing, "soft_wing": soft_wing}
SHAPE_LOSSES: dict[str, Loss] = {"cgd": cgd, "seed_cgd": seed_cgd}
LOSSES: dict[str, Loss] = {**BASE_LOSSES, **SHAPE_LOSSES}


def get_loss(name: str) -> Loss:
    """A loss function by name; unknown names list the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; valid: {sorted(LOSSES)}")
    return LOSSES[name]


def parse_loss_spec(spec: str) -> tuple[str, str]:
    """Command-line loss name -> (base, shape): "mse" -> (mse, none), "cgd" -> (mse, cgd),
    "wing+cgd" -> (wing, cgd)."""
    parts = spec.split("+")
    base = next((p for p in parts if p in BASE_LOSSES), "mse")
    shape = next((p for p in parts if p in SHAPE_LOSSES), "none")
    known = {base, shape} | {"none"}
    if len(parts) > 2 or any(p not in known for p in parts) or (len(parts) == 2 and shape == "none"):
        raise ValueError(f"Unknown loss {spec!r}; valid: a base {sorted(BASE_LOSSES)}, a shape term "
                         f"{sorted(SHAPE_LOSSES)}, or base+shape such as 'wing+cgd'")
    return base, shape


class Objective:
    """The trial's loss, cfg.loss + cfg.alpha * cfg.shape, callable like any Loss; ``parts`` gives
    the two terms apart, so that training can record the shape term's share of the loss."""

    def __init__(self, base: Loss, shape: Loss | None, alpha: float) -> None:
        self.base, self.shape, self.alpha = base, shape, alpha

    def parts(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(base loss, alpha * shape term); the second is None without a shape term."""
        base = self.base(pred, target, mask)
        return base, None if self.shape is None else self.alpha * self.shape(pred, target, mask)

    def __call__(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        base, shaped = self.parts(pred, target, mask)
        return base if shaped is None else base + shaped


def build_objective(cfg: TrialConfig) -> Objective:
    """The trial's loss: cfg.loss + cfg.alpha * cfg.shape (no shape term when alpha == 0)."""
    return Objective(BASE_LOSSES[cfg.loss], SHAPE_LOSSES[cfg.shape] if cfg.uses_shape else None, cfg.alpha)
