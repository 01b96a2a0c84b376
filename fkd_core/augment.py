"""Batched augmentation on the batch's own device: no per-image Python loop and no DataLoader
workers.

    >>> params = params_for(TrialConfig(augment="full"))
    >>> x, y = augment_batch(x, y, params, KAGGLE15.flip_permutation(), generator)
    # x: float [B, 1, S, S] in [0, 1]; y: [B, K, 2] px, NaN = missing (kept NaN)

Transforms: horizontal flip (an exact mirror; the schema's left/right keypoints swap labels);
rotation by a uniform angle in +-rotation_deg about the image centre with a small zoom and shift
-- one affine map per image, applied to the pixels with ``grid_sample`` (bilinear, zeros outside)
and to the keypoints with the same matrix; keypoints that leave the frame become NaN (missing);
brightness scaling; additive Gaussian noise (given as a variance on [0, 1] images). Brightness
and noise are clipped to [0, 1].

How it runs: every random parameter of an epoch is drawn at once (``plan``), the rows of each
batch are grouped by the transform they get (the pairing of image and draw is unchanged; only the
order inside a batch differs), and the keypoints of the whole epoch are moved in one pass. Per
batch only pixel work remains (``apply_``), in place on contiguous blocks of the batch: the
rotated/zoomed rows are resampled once with their flip folded into the warp, the other flipped
rows are mirrored exactly, noise and brightness touch only their rows. No rows are selected by a
mask, so the same code runs on a GPU with one host read per epoch. ``augment_batch`` wraps both
for a single batch and keeps its order. Measured in the training loop on the CPU: ``full`` costs
about 5-6% of a small_cnn step at batch 64 (``python -m bench.trainer``).

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
- ``robust``: label-preserving transforms for new cameras and faces. Each image is left alone or
  warped (rotation + zoom + shift, one warp; 50/50), flipped with probability ``flip_p``, and,
  independently, gets the *photometric* transforms: contrast and gamma (every image, amounts drawn
  around identity), Gaussian blur (probability BLUR_P, sigma up to ``blur_sigma``) and an
  occlusion patch (probability OCCLUSION_P, a rectangle of a random grey up to
  ``occlusion_size`` of the side). Photometric transforms leave keypoints where they are; an
  occluded keypoint keeps its label (the model must infer it, as on a real hand or microphone).

Coordinates use the pixel-index convention (pixel centre (row i, col j) = (x=j, y=i)); the
rotation centre is c = (S - 1) / 2, the centre of the image.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fkd_core.config import TrialConfig, augment_knobs


@dataclass(frozen=True)
class _Switches:
    """Which transforms a policy turns on (see the module docstring and _POLICY_SWITCHES)."""

    rotate: bool = False
    noise: bool = False
    brightness: bool = False
    flip: bool = False
    scale_shift: bool = False
    exact_rotation: bool = True
    """False = the study's defect: keypoint y computed from the already-rotated x."""
    photometric: bool = False
    """Contrast/gamma, blur and occlusion on top of the one-of transform ("robust")."""

    @property
    def geometric(self) -> bool:
        return self.rotate or self.flip or self.scale_shift

    @property
    def active(self) -> bool:
        return self.geometric or self.noise or self.brightness or self.photometric


# The knobs (rotation_deg, noise_var, ..., occlusion_size) are TrialConfig's augmentation fields,
# taken with their names, types and defaults, so that one list of them exists (fkd_core.config).
AugmentParams = dataclasses.make_dataclass(
    "AugmentParams", [(f.name, f.type, dataclasses.field(default=f.default)) for f in augment_knobs()],
    bases=(_Switches,), frozen=True)
AugmentParams.__module__ = __name__   # make_dataclass of Python 3.11 has no module= yet
AugmentParams.__doc__ = ("Switches and knobs of one augmentation policy: the switches of _Switches, "
                         "the knobs of TrialConfig's augmentation fields (fkd_core.config.augment_knobs).")


_POLICY_SWITCHES: dict[str, dict[str, bool]] = {
    "none": {},
    "study": {"rotate": True, "noise": True, "brightness": True},
    "study_exact": {"rotate": True, "noise": True, "brightness": True, "exact_rotation": False},
    "full": {"rotate": True, "noise": True, "brightness": True, "flip": True, "scale_shift": True},
    "robust": {"rotate": True, "flip": True, "scale_shift": True, "photometric": True},
}
# Chances of the robust policy's occasional transforms: a blurred or occluded face should be
# common enough to learn from, yet most faces stay sharp and whole, as at test time.
BLUR_P = 0.3
OCCLUSION_P = 0.3
POLICIES = tuple(_POLICY_SWITCHES)


def policy(name: str, **knobs: float) -> AugmentParams:
    """AugmentParams of a named policy, with optional knob overrides (rotation_deg=..., ...)."""
    if name not in _POLICY_SWITCHES:
        raise ValueError(f"Unknown augmentation policy {name!r}; valid: {list(POLICIES)}")
    return AugmentParams(**_POLICY_SWITCHES[name], **knobs)


def params_for(cfg: TrialConfig) -> AugmentParams:
    """The trial's policy (cfg.augment) with its knobs."""
    return policy(cfg.augment, **{f.name: getattr(cfg, f.name) for f in augment_knobs()})


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


# --- random draws -----------------------------------------------------------------------------


# Which transform an image gets (the one-of choice): codes of Draws.kind.
ORIGINAL, AFFINE, NOISE, BRIGHTNESS = range(4)
_BLOCKS = 8   # (kind, flipped apart from a warp) pairs: the order of the blocks of a batch


@dataclass(frozen=True)
class Draws:
    """Per-image random parameters [N]: which transform applies and its amounts."""

    kind: Tensor       # long: ORIGINAL / AFFINE / NOISE / BRIGHTNESS
    angle: Tensor      # radians
    scale: Tensor
    shift: Tensor      # [N, 2] px
    flip: Tensor       # bool
    brightness: Tensor # factor, 1 = unchanged
    sigma: Tensor      # noise standard deviation, 0 = none
    contrast: Tensor   # factor about the image mean, 1 = unchanged
    gamma: Tensor      # exponent, 1 = unchanged
    blur: Tensor       # Gaussian sigma px, 0 = none
    box: Tensor        # [N, 4] occlusion x0, y0, x1, y1 px (x0 = x1: none)
    fill: Tensor       # grey level of the occlusion

    def take(self, index: Tensor | slice) -> "Draws":
        return Draws(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    @property
    def block(self) -> Tensor:
        """[N] block of each row: 2 * kind + flipped (by a mirror of its own, not inside a warp)."""
        return 2 * self.kind + (self.flip & (self.kind != AFFINE)).long()


def draw(params: AugmentParams, n: int, gen: torch.Generator) -> Draws:
    """n images' random parameters from one draw of uniforms, on the generator's device.

    Each image is the original or gets one of the enabled transforms, uniformly: "affine" is
    rotation with zoom/shift, one warp drawn once (like albumentations' ShiftScaleRotate); the
    flip is drawn independently of that choice."""
    u = torch.rand(n, 7, generator=gen, device=gen.device)
    enabled = [k for k, on in ((AFFINE, params.rotate or params.scale_shift), (NOISE, params.noise),
                               (BRIGHTNESS, params.brightness)) if on]
    codes = torch.tensor([ORIGINAL, *enabled], device=gen.device)
    kind = codes[(u[:, 0] * len(codes)).long().clamp_(max=len(codes) - 1)]
    span = lambda col, low, high: low + (high - low) * u[:, col]
    theta = math.radians(params.rotation_deg)
    affine = kind == AFFINE
    angle = torch.where(affine & params.rotate, span(1, -theta, theta), 0.0)
    zoom = affine & params.scale_shift
    scale = torch.where(zoom, span(2, 1 - params.scale_range, 1 + params.scale_range), 1.0)
    shift = torch.where(zoom[:, None], params.shift_px * (2 * u[:, 3:5] - 1), 0.0)
    flip = params.flip & (u[:, 5] < params.flip_p)
    # The study's two brightness copies: x low or x high.
    factor = torch.where(u[:, 6] < 0.5, params.brightness_low, params.brightness_high)
    return Draws(kind, angle, scale, shift, flip, torch.where(kind == BRIGHTNESS, factor, 1.0),
                 torch.where(kind == NOISE, math.sqrt(params.noise_var), 0.0),
                 *_photometric_draws(params, n, gen))


def _photometric_draws(params: AugmentParams, n: int, gen: torch.Generator) -> tuple[Tensor, ...]:
    """(contrast, gamma, blur, box, fill) of n images; identity unless params.photometric.

    Drawn only when on, so the other policies' random streams are what they were."""
    device = gen.device
    if not params.photometric:
        one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
        return one, one, zero, torch.zeros(n, 4, device=device), zero
    u = torch.rand(n, 10, generator=gen, device=device)
    contrast = 1.0 + params.contrast_range * (2 * u[:, 0] - 1)
    gamma = torch.exp(math.log1p(params.gamma_range) * (2 * u[:, 1] - 1))
    blur = torch.where(u[:, 2] < BLUR_P, params.blur_sigma * u[:, 3], 0.0)
    occluded = u[:, 4] < OCCLUSION_P
    side = params.occlusion_size * u[:, 5:7] * occluded[:, None]          # [N, 2] fraction of S
    corner = u[:, 7:9] * (1.0 - side)                                      # inside the image
    box = torch.cat([corner, corner + side], dim=1)                        # fractions; px in apply
    return contrast, gamma, blur, box, u[:, 9]


@dataclass(frozen=True)
class Plan:
    """The augmentation of one epoch, in the order its rows are to be trained.

    order: [N] long, a permutation of the caller's rows: batches stay the same sets of rows,
        each batch regrouped into blocks by transform.
    draws: each row's parameters, in that order.
    keypoints: [N, K, 2] the rows' keypoints already moved, in that order.
    ends: per batch, the ends of its _BLOCKS blocks (offsets inside the batch).
    """

    order: Tensor
    draws: Draws
    keypoints: Tensor
    ends: list[list[int]]
    batch_size: int
    photometric: bool = False
    blur_radius: int = 0
    """Half-width of the blur kernels, from the policy's largest sigma (no per-batch host read)."""


def plan(params: AugmentParams, keypoints: Tensor, flip_perm: Sequence[int], size: int,
         batch_size: int, generator: torch.Generator) -> Plan:
    """Draw the augmentation of N rows trained in batches of batch_size, in the given order.

    Args:
        keypoints: [N, K, 2] px of the rows in their training order (NaN = missing).
        size: image side S. generator: on the keypoints' device.

    One host read (the block sizes), whatever N.
    """
    n = keypoints.shape[0]
    d = draw(params, n, generator)
    key = d.block
    batch = torch.arange(n, device=key.device) // batch_size
    order = torch.argsort(batch * _BLOCKS + key, stable=True)
    d = d.take(order)
    moved = keypoints.index_select(0, order)
    if params.geometric:
        kd = keypoints.dtype
        moved = move_keypoints(moved, d.angle.to(kd), d.scale.to(kd), d.shift.to(kd), d.flip, flip_perm,
                               size, params.exact_rotation)
    n_batches = -(-n // batch_size)
    counts = torch.bincount(batch * _BLOCKS + key, minlength=n_batches * _BLOCKS)
    ends = counts.view(n_batches, _BLOCKS).cumsum(1).tolist()
    return Plan(order, d, moved, ends, batch_size, params.photometric, blur_radius(params.blur_sigma))


def apply_(images: Tensor, p: Plan, b: int, generator: torch.Generator) -> Tensor:
    """Augment the pixels of batch b of plan p in place and return them: images float
    [B, C, S, S] in [0, 1] are the rows p.order[b * batch_size:][:B], in that order; their
    keypoints are p.keypoints[b * batch_size:][:B]."""
    ends = p.ends[b]
    d = p.draws.take(slice(b * p.batch_size, b * p.batch_size + images.shape[0]))
    dt = images.dtype
    block = lambda k: slice(ends[k - 1] if k else 0, ends[k])
    for kind in (AFFINE, NOISE, BRIGHTNESS, ORIGINAL):
        plain, flipped = block(2 * kind), block(2 * kind + 1)
        rows = slice(plain.start, flipped.stop)
        if rows.start == rows.stop:
            continue
        x = images[rows]
        if kind == AFFINE:  # flipped or not, each row's flip is part of its warp
            x.copy_(warp_images(x, d.angle[rows].to(dt), d.scale[rows].to(dt), d.shift[rows].to(dt),
                                d.flip[rows]))
            continue
        if flipped.start != flipped.stop:
            images[flipped] = images[flipped].flip(-1)
        if kind == NOISE:
            add_noise_(x, d.sigma[rows].to(dt), generator)
        elif kind == BRIGHTNESS:
            scale_brightness_(x, d.brightness[rows].to(dt))
    if p.photometric:
        photometric_(images, d, p.blur_radius)
    return images


def augment_batch(images: Tensor, keypoints: Tensor, params: AugmentParams, flip_perm: Sequence[int],
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Augment one batch where it lies (CPU or GPU); random draws come from generator.

    Args:
        images: float [B, 1, S, S] in [0, 1]. keypoints: [B, K, 2] px, NaN = missing.
        params: the policy (params_for(cfg)). flip_perm: schema.flip_permutation().

    Returns:
        (images, keypoints) of the same shapes, dtype, device and row order; NaN stays NaN,
        keypoints that leave the frame become NaN. The inputs are not modified.
    """
    if not params.active:
        return images, keypoints
    p = plan(params, keypoints, flip_perm, images.shape[-1], images.shape[0], generator)
    out = apply_(images.index_select(0, p.order), p, 0, generator)
    back = torch.argsort(p.order)
    return out.index_select(0, back), p.keypoints.index_select(0, back)


def add_noise_(images: Tensor, sigma: Tensor, generator: torch.Generator) -> Tensor:
    """In place: clip(images + sigma * N(0, 1), 0, 1) for images [B, C, S, S] and the noise
    standard deviation sigma [B] of each; generator on the images' device."""
    noise = torch.randn(images.shape, generator=generator, device=images.device)
    return images.addcmul_(noise, sigma[:, None, None, None]).clamp_(0.0, 1.0)


def scale_brightness_(images: Tensor, factor: Tensor) -> Tensor:
    """In place: clip(images * factor, 0, 1) for images [B, C, S, S] and a factor [B] each."""
    return images.mul_(factor[:, None, None, None]).clamp_(0.0, 1.0)


# --- photometric transforms (policy "robust"): pixels change, keypoints stay -----------------


def blur_radius(max_sigma: float) -> int:
    """Kernel half-width that holds a Gaussian of max_sigma to 3 sigma (0: no blur)."""
    return math.ceil(3.0 * max_sigma) if max_sigma > 0 else 0


def photometric_(images: Tensor, d: Draws, radius: int) -> Tensor:
    """In place on images [B, C, S, S] in [0, 1]: gamma, contrast, blur (kernels of half-width
    radius), then occlusion, with the per-row amounts of d. Identity rows go through the same
    vector operations: no selection by mask, no host read."""
    dt = images.dtype
    images.clamp_(min=0.0).pow_(d.gamma.to(dt)[:, None, None, None])
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images.sub_(mean).mul_(d.contrast.to(dt)[:, None, None, None]).add_(mean).clamp_(0.0, 1.0)
    if radius > 0:
        images.copy_(gaussian_blur(images, d.blur.to(dt), radius))
    occlude_(images, d.box.to(dt) * images.shape[-1], d.fill.to(dt))
    return images


def gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """[B, 2 * radius + 1] normalised 1-D Gaussian kernels; sigma 0 gives the identity kernel."""
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    logits = -t.square() / (2 * sigma.clamp(min=1e-3).square()[:, None])
    return torch.softmax(logits, dim=1)


def gaussian_blur(images: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """images [B, C, S, S] blurred with a Gaussian of sigma [B] px each (reflect padding), kernels
    of half-width radius; one grouped separable convolution for the whole batch. A symmetric
    kernel moves no centroid."""
    b, c, h, w = images.shape
    k = gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)       # [B*C, 2r+1]
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    return x.view(b, c, h, w)


def occlude_(images: Tensor, box: Tensor, fill: Tensor) -> Tensor:
    """In place: pixels whose centre lies in box [B, 4] (x0, y0, x1, y1 px) become fill [B]."""
    s = images.shape[-1]
    pos = torch.arange(s, dtype=images.dtype, device=images.device) + 0.5
    inside_x = (pos >= box[:, 0, None]) & (pos < box[:, 2, None])        # [B, S]
    inside_y = (pos >= box[:, 1, None]) & (pos < box[:, 3, None])
    mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]        # [B, 1, S, S]
    return images.copy_(torch.where(mask, fill[:, None, None, None], images))
