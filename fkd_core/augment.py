"""Batched augmentation on the batch's own device: one affine warp for the whole batch, no
per-image Python loop and no DataLoader workers.

    >>> params = params_for(TrialConfig(augment="full"))
    >>> x, y = augment_batch(x, y, params, KAGGLE15.flip_permutation(), generator)
    # x: float [B, 1, S, S] in [0, 1]; y: [B, K, 2] px, NaN = missing (kept NaN)

Transforms: horizontal flip (an exact mirror; the schema's left/right keypoints swap labels), then
rotation by a uniform angle in +-rotation_deg about the image centre with a small zoom and shift
-- one affine map per image, applied to the pixels with ``grid_sample`` (bilinear, zeros outside)
and to the keypoints with the same matrix; keypoints that leave the frame become NaN (missing).
Then brightness scaling and additive Gaussian noise (given as a variance on [0, 1] images), in
one step clipped to [0, 1].

Cost: on the CPU rows that a transform skips are not computed, so that the ``full`` policy costs
under 10% of a small_cnn training step at batch 64 (bench/trainer.py measures it); on a GPU all
rows are, because selecting rows would stall the device.

Policies (``POLICIES``):
- ``none``: nothing.
- ``study``: the study's transforms -- rotation +-20 deg, noise of variance 0.1, brightness x0.5 or
  x1.5 -- with keypoints rotated *correctly*. Like the study's augmented copies, each image is
  either left alone or gets exactly one of the three (uniformly).
- ``study_exact``: ``study`` with the study's rotation defect, to reproduce its numbers: the image
  is rotated correctly, but the keypoints are moved with
      x' = c + (x - c) cos t - (y - c) sin t
      y' = c + (x' - c) sin t + (y - c) cos t        <- uses the already-rotated x'
  so y is wrong by (x' - x) sin t: up to several pixels at 20 deg (see ``rotate_offsets``).
- ``full``: ``study`` (correct rotation) + zoom/shift + horizontal flip: each image is left alone
  or gets one of {rotation with zoom and shift (one warp), noise, brightness}, uniformly, and
  independently of that a flip with probability ``flip_p``.

Policies with ``one_of=False`` (none of the named ones) instead apply each transform with
probability ``apply_p``.

Coordinates use the pixel-index convention (pixel centre (row i, col j) = (x=j, y=i)); the
rotation centre is c = (S - 1) / 2, the centre of the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fkd_core.config import TrialConfig


@dataclass(frozen=True)
class AugmentParams:
    """Knobs and switches of one augmentation policy (see the module docstring)."""

    rotation_deg: float = 20.0
    """Rotation range +-deg (the study: 20)."""
    noise_var: float = 0.1
    """Variance of the additive Gaussian noise on [0, 1] images (the study: 0.1, sigma ~0.32)."""
    brightness_low: float = 0.5
    """Lowest brightness factor (the study: x0.5)."""
    brightness_high: float = 1.5
    """Highest brightness factor (the study: x1.5)."""
    flip_p: float = 0.5
    """Probability of a horizontal flip."""
    scale_range: float = 0.1
    """Zoom factor drawn in [1 - scale_range, 1 + scale_range]."""
    shift_px: float = 4.0
    """Shift drawn in [-shift_px, shift_px] px on each axis."""
    rotate: bool = False
    noise: bool = False
    brightness: bool = False
    flip: bool = False
    scale_shift: bool = False
    exact_rotation: bool = True
    """False = the study's defect: keypoint y computed from the already-rotated x."""
    one_of: bool = False
    """Study style: each image is the original or gets exactly one of the warp (rotation, with
    zoom/shift when on) / noise / brightness (then x low or x high), as the study's augmented
    copies did; the flip is drawn independently."""
    apply_p: float = 0.5
    """Otherwise: the probability with which each enabled transform is applied to an image."""

    @property
    def geometric(self) -> bool:
        return self.rotate or self.flip or self.scale_shift

    @property
    def active(self) -> bool:
        return self.geometric or self.noise or self.brightness


_POLICY_SWITCHES: dict[str, dict[str, bool]] = {
    "none": {},
    "study": {"rotate": True, "noise": True, "brightness": True, "one_of": True},
    "study_exact": {"rotate": True, "noise": True, "brightness": True, "one_of": True, "exact_rotation": False},
    "full": {"rotate": True, "noise": True, "brightness": True, "flip": True, "scale_shift": True, "one_of": True},
}
POLICIES = tuple(_POLICY_SWITCHES)


def policy(name: str, **knobs: float) -> AugmentParams:
    """AugmentParams of a named policy, with optional knob overrides (rotation_deg=..., ...)."""
    if name not in _POLICY_SWITCHES:
        raise ValueError(f"Unknown augmentation policy {name!r}; valid: {list(POLICIES)}")
    return AugmentParams(**_POLICY_SWITCHES[name], **knobs)


def params_for(cfg: TrialConfig) -> AugmentParams:
    """The trial's policy (cfg.augment) with its knobs."""
    return policy(cfg.augment, rotation_deg=cfg.rotation_deg, noise_var=cfg.noise_var,
                  brightness_low=cfg.brightness_low, brightness_high=cfg.brightness_high,
                  flip_p=cfg.flip_p, scale_range=cfg.scale_range, shift_px=cfg.shift_px)


# --- deterministic building blocks ------------------------------------------------------------


def rotate_offsets(d: Tensor, angle: Tensor, exact: bool = True) -> Tensor:
    """Rotate offsets from the centre d [B, K, 2] by angle [B] (radians, y down).

    exact=False reproduces the study: y' is computed from the already-rotated x'.
    """
    cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    dx, dy = d[..., 0], d[..., 1]
    x = cos * dx - sin * dy
    y = sin * (x if not exact else dx) + cos * dy
    return torch.stack([x, y], dim=-1)


def _grid(inv: Tensor, offset: Tensor, size: int) -> Tensor:
    """[B, S, S, 2] sampling grid of the affine map (inv [B, 2, 2], offset [B, 2]) in normalised
    coordinates (align_corners=True): a column term plus a row term, built channels-first and
    returned as a permuted view, which is several times cheaper on CPU than F.affine_grid's
    batched matmul or stacking two planes into the interleaved layout."""
    base = torch.linspace(-1.0, 1.0, size, dtype=inv.dtype, device=inv.device)
    cols = inv[:, :, 0, None, None] * base.view(1, 1, 1, size)                         # [B, 2, 1, S]
    rows = inv[:, :, 1, None, None] * base.view(1, 1, size, 1) + offset[:, :, None, None]  # [B, 2, S, 1]
    return (cols + rows).permute(0, 2, 3, 1)


def _inverse_map(angle: Tensor, scale: Tensor, shift: Tensor, mirror: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Output -> input map for grid_sample, F R^T (p' - c - t) / scale, in normalised coordinates.

    With align_corners=True normalised coordinates are pixel offsets from c times 2 / (S - 1), so
    the linear part is unchanged and only the shift is rescaled. Returns inv [B, 2, 2], offset [B, 2].
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    inv = torch.stack([torch.stack([mirror * cos, mirror * sin], -1),
                       torch.stack([-sin, cos], -1)], 1) / scale[:, None, None]
    offset = -(inv @ (shift * (2.0 / (size - 1)))[..., None])[..., 0]
    return inv, offset


def move_keypoints(keypoints: Tensor, angle: Tensor, scale: Tensor, shift: Tensor, flip: Tensor,
                   flip_perm: Sequence[int], size: int, exact_rotation: bool = True) -> Tensor:
    """keypoints [B, K, 2] under p' = c + scale * R(angle) F (p - c) + shift (see warp); NaN for
    keypoints outside the frame (beyond the outer pixel edges)."""
    c = (size - 1) / 2.0
    mirror = torch.where(flip, -1.0, 1.0).to(keypoints.dtype)
    d = (keypoints - c) * torch.stack([mirror, torch.ones_like(mirror)], -1)[:, None, :]
    moved = c + scale[:, None, None] * rotate_offsets(d, angle, exact_rotation) + shift[:, None, :]
    moved = torch.where(flip[:, None, None], moved[:, list(flip_perm)], moved)
    outside = ((moved < -0.5) | (moved > size - 0.5)).any(dim=-1, keepdim=True)
    return moved.masked_fill(outside, math.nan)


def warp_images(images: Tensor, angle: Tensor, scale: Tensor, shift: Tensor, flip: Tensor) -> Tensor:
    """images [B, C, S, S] under the same map as move_keypoints (bilinear, zeros outside)."""
    size = images.shape[-1]
    mirror = torch.where(flip, -1.0, 1.0).to(images.dtype)
    inv, offset = _inverse_map(angle, scale, shift, mirror, size)
    return F.grid_sample(images, _grid(inv, offset, size), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def warp(images: Tensor, keypoints: Tensor, angle: Tensor, scale: Tensor, shift: Tensor, flip: Tensor,
         flip_perm: Sequence[int], exact_rotation: bool = True) -> tuple[Tensor, Tensor]:
    """Apply p' = c + scale * R(angle) F (p - c) + shift to images and keypoints.

    Args:
        images: float [B, C, S, S]; keypoints: [B, K, 2] px (NaN = missing).
        angle: [B] radians; scale: [B]; shift: [B, 2] px; flip: bool [B] (F mirrors x, and the
            mirrored face's keypoints are relabelled with flip_perm).
        exact_rotation: False moves the keypoints with the study's defect (the image is always
            rotated correctly).

    Returns:
        images [B, C, S, S] (zeros where the warp leaves the frame) and keypoints [B, K, 2] with
        NaN for keypoints outside the frame.
    """
    moved = move_keypoints(keypoints, angle, scale, shift, flip, flip_perm, images.shape[-1], exact_rotation)
    return warp_images(images, angle, scale, shift, flip), moved


def mirror(images: Tensor, flip: Tensor) -> Tensor:
    """images [B, C, S, S] mirrored left-right where flip [B] is True: one gather with a reversed
    column index per row (torch.where over a broadcast mask is ~10x slower on CPU)."""
    size = images.shape[-1]
    cols = torch.arange(size, device=images.device)
    cols = torch.where(flip[:, None], size - 1 - cols, cols)                        # [B, S]
    return images.gather(3, cols[:, None, None, :].expand_as(images))


def _on_rows(images: Tensor, rows: Tensor, fn) -> Tensor:
    """fn(images[i], i) for the rows i where rows [B] is True; fn must leave the other rows
    unchanged when given them (their parameters are the identity). On the CPU only the selected
    rows are computed (copying rows out and back costs far less than warping or noising one);
    on an accelerator always all rows, because selecting rows would stall it on nonzero()."""
    if images.device.type != "cpu":
        return fn(images, slice(None))
    idx = rows.nonzero().flatten()
    if len(idx) == len(rows):
        return fn(images, slice(None))
    if len(idx) == 0:
        return images
    return images.index_copy(0, idx, fn(images.index_select(0, idx), idx))


# --- random draws -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draws:
    """Per-image random parameters [B]: which transforms apply and their amounts."""

    angle: Tensor
    scale: Tensor
    shift: Tensor      # [B, 2]
    flip: Tensor       # bool
    brightness: Tensor
    sigma: Tensor


def _which(params: AugmentParams, u: Tensor) -> dict[str, Tensor]:
    """bool [B] per transform from uniforms u [B, 3]: does it apply to the image? "affine" is
    rotation with zoom/shift, one warp drawn once (like albumentations' ShiftScaleRotate)."""
    enabled = [n for n, on in (("affine", params.rotate or params.scale_shift), ("noise", params.noise),
                               ("brightness", params.brightness)) if on]
    if params.one_of:  # 0 = the original, k = the k-th enabled transform, uniformly
        choice = (u[:, 0] * (len(enabled) + 1)).long()
        return {n: choice == k + 1 for k, n in enumerate(enabled)}
    return {n: u[:, k] < params.apply_p for k, n in enumerate(enabled)}


def _draw(params: AugmentParams, b: int, gen: torch.Generator) -> _Draws:
    """All per-image random parameters from one draw of uniforms (few small ops per batch)."""
    u = torch.rand(b, 9, generator=gen, device=gen.device)
    which = _which(params, u[:, :3])
    off = torch.zeros(b, dtype=torch.bool, device=gen.device)
    affine, noise, bright = (which.get(n, off) for n in ("affine", "noise", "brightness"))
    span = lambda col, low, high: low + (high - low) * u[:, col]
    theta = math.radians(params.rotation_deg)
    angle = torch.where(affine & params.rotate, span(3, -theta, theta), 0.0)
    zoom = affine & params.scale_shift
    scale = torch.where(zoom, span(4, 1 - params.scale_range, 1 + params.scale_range), 1.0)
    shift = torch.where(zoom[:, None], params.shift_px * (2 * u[:, 5:7] - 1), 0.0)
    flip = params.flip & (u[:, 7] < params.flip_p)
    if params.one_of:  # the study's two copies: x low or x high
        factor = torch.where(u[:, 8] < 0.5, params.brightness_low, params.brightness_high)
    else:
        factor = span(8, params.brightness_low, params.brightness_high)
    return _Draws(angle, scale, shift, flip, torch.where(bright, factor, 1.0),
                  torch.where(noise, math.sqrt(params.noise_var), 0.0))


def augment_batch(images: Tensor, keypoints: Tensor, params: AugmentParams, flip_perm: Sequence[int],
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Augment one batch where it lies (CPU or GPU); random draws come from generator.

    Args:
        images: float [B, 1, S, S] in [0, 1]. keypoints: [B, K, 2] px, NaN = missing.
        params: the policy (params_for(cfg)). flip_perm: schema.flip_permutation().

    Returns:
        (images, keypoints) of the same shapes, dtype and device; NaN stays NaN, keypoints that
        leave the frame become NaN.
    """
    if not params.active:
        return images, keypoints
    d = _draw(params, images.shape[0], generator)
    d = _Draws(*(t.to(images.device) for t in (d.angle, d.scale, d.shift, d.flip, d.brightness, d.sigma)))
    if params.geometric:
        dt = images.dtype
        keypoints = move_keypoints(keypoints, d.angle.to(keypoints.dtype), d.scale.to(keypoints.dtype),
                                   d.shift.to(keypoints.dtype), d.flip, flip_perm, images.shape[-1],
                                   params.exact_rotation)
        if params.flip:  # an exact mirror first, so that only the affine rows are resampled
            images = mirror(images, d.flip)  # cheap per row: not worth selecting rows
        affine = (d.angle != 0) | (d.scale != 1) | (d.shift != 0).any(dim=1)
        images = _on_rows(images, affine, lambda x, i: warp_images(
            x, d.angle[i].to(dt), d.scale[i].to(dt), d.shift[i].to(dt), torch.zeros_like(d.flip[i])))
    if params.brightness or params.noise:
        images = photometric(images, d.brightness.to(images.dtype), d.sigma.to(images.dtype), generator)
    return images, keypoints


def photometric(images: Tensor, factor: Tensor, sigma: Tensor, generator: torch.Generator) -> Tensor:
    """clip(images * factor + sigma * N(0, 1), 0, 1): brightness factor [B] (1 = unchanged) and
    noise standard deviation sigma [B] (0 = none) on images [B, C, S, S], in one new tensor.

    On the CPU noise is drawn only for the rows with sigma > 0 (drawing it is the costly part);
    on an accelerator for all rows, since selecting them would stall the device.
    """
    out = images * factor[:, None, None, None]
    if out.device.type == "cpu":
        idx = (sigma > 0).nonzero().flatten()
        if len(idx):
            noise = torch.randn((len(idx), *out.shape[1:]), generator=generator, device=generator.device)
            out.index_add_(0, idx, noise.mul_(sigma[idx, None, None, None]))
    else:
        noise = torch.randn(out.shape, generator=generator, device=generator.device).to(out.device)
        out.add_(noise.mul_(sigma[:, None, None, None]))
    return out.clamp_(0.0, 1.0)
