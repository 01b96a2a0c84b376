"""Keypoint heads: a trunk's feature map [N, C, h, w] -> keypoints [N, K, 2] in pixels.

    >>> head = build_head("heatmap", channels=128, side=6, num_keypoints=15, image_size=96,
    ...                   heatmap_size=24)
    >>> head(features, mean_face)          # [N, 128, 6, 6], [15, 2] px -> [N, 15, 2] px

- ``regression`` (the study's): global pooling or flattening, dropout, one linear layer with 2K
  outputs that predicts offsets from the mean face in units of half the image. It starts at zero,
  so the first prediction is the mean face exactly.
- ``heatmap``: integral regression (Sun et al. 2018). The features are upsampled (bilinear x2 +
  3x3 conv, until the heatmap side) and a 1x1 conv gives one logit map per keypoint; the
  *soft-argmax* (softmax over the map, then the expected pixel position) turns each map into
  coordinates. It is differentiable, so the loss stays a loss on coordinates in pixels and
  MSE + alpha*CGD applies unchanged. Its last conv starts at zero: uniform maps, every keypoint at
  the image centre. No dropout: dropping channels of a heatmap moves its peak, not its confidence.
- ``unet``: the heatmap head with skip connections: each x2 step up adds the trunk's own feature
  map of that side (1x1 conv), U-Net style, so fine position need not pass the bottleneck.

Coordinates use the pixel-index convention of fkd_core.augment (pixel (row i, col j) has its
centre at x=j, y=i): heatmap cell j covers pixels [j*s - 0.5, (j+1)*s - 0.5) for s = S / H, so
its centre is x = (j + 0.5) * s - 0.5.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fkd_core.config import SKIP_BACKBONES

# Channels of the heatmap head's upsampling convolutions: 32 keeps the 24x24 stage at ~5 M
# multiply-adds per image, about the cost of the whole small_cnn trunk.
HEATMAP_CHANNELS = 32


def soft_argmax(logits: Tensor, image_size: int) -> Tensor:
    """logits [N, K, H, W] -> expected positions [N, K, 2] (x, y) in pixels of an S x S image.

    The softmax is taken over the H*W cells of each map (in fp32: bf16 would quantise the
    probabilities); the position is the probability-weighted mean of the cell centres.
    """
    n, k, h, w = logits.shape
    prob = torch.softmax(logits.float().flatten(2), dim=-1).view(n, k, h, w)
    xs = (torch.arange(w, device=logits.device, dtype=torch.float32) + 0.5) * (image_size / w) - 0.5
    ys = (torch.arange(h, device=logits.device, dtype=torch.float32) + 0.5) * (image_size / h) - 0.5
    x = (prob.sum(dim=2) * xs).sum(dim=-1)      # marginal over rows, then E[x]
    y = (prob.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


def _in_fp32(layer: nn.Module, x: Tensor) -> Tensor:
    """layer(x) in fp32 even under bf16 autocast. The last layer's outputs become pixels: bf16's
    8-bit mantissa would quantise the regression offsets (x S/2: steps of ~0.4 px at S = 96) and
    the heatmap logits the softmax sees; a layer this small costs nothing in fp32."""
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


class RegressionHead(nn.Module):
    """features [N, C, h, w] -> mean_face + linear(features) * S/2 (the study's head)."""

    def __init__(self, channels: int, side: int, num_keypoints: int, image_size: int,
                 dropout: float, pool: bool) -> None:
        super().__init__()
        # Pooling suits an ImageNet-deep trunk; a shallow trunk keeps the layout (flatten), since
        # *where* a feature sits is what a keypoint regressor needs.
        self.pool = nn.AdaptiveAvgPool2d(1) if pool else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(channels * (1 if pool else side * side), 2 * num_keypoints)
        nn.init.zeros_(self.linear.weight)   # first prediction = mean face exactly
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("scale", torch.tensor(image_size / 2.0))

    def forward(self, features: Tensor, mean_face: Tensor) -> Tensor:
        offsets = _in_fp32(self.linear, self.dropout(torch.flatten(self.pool(features), 1)))
        return mean_face + offsets.view(-1, *mean_face.shape) * self.scale


def _up_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def _zero_logits(channels: int, num_keypoints: int) -> nn.Conv2d:
    """The 1x1 conv to one logit map per keypoint, at zero: uniform maps, every keypoint starts at
    the image centre."""
    logits = nn.Conv2d(channels, num_keypoints, 1)
    nn.init.zeros_(logits.weight)
    nn.init.zeros_(logits.bias)
    return logits


def _to_side(x: Tensor, side: int) -> Tensor:
    """x resized to side x side when the x2 steps did not land on it (an odd remainder)."""
    if x.shape[-1] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


class HeatmapHead(nn.Module):
    """features [N, C, h, w] -> soft-argmax of K heatmaps of side heatmap_size -> [N, K, 2] px."""

    def __init__(self, channels: int, side: int, num_keypoints: int, image_size: int,
                 heatmap_size: int) -> None:
        super().__init__()
        check_heatmap_size(heatmap_size, image_size)
        stages, c, s = [], channels, side
        while s * 2 <= heatmap_size:   # x2 steps up to the heatmap; an odd remainder is resized
            stages.append(_up_conv(c, HEATMAP_CHANNELS))
            c, s = HEATMAP_CHANNELS, s * 2
        self.up = nn.Sequential(*stages)
        self.logits = _zero_logits(c, num_keypoints)
        self.heatmap_size, self.image_size = heatmap_size, image_size

    def heatmaps(self, features: Tensor) -> Tensor:
        """The logit maps [N, K, H, H] before the soft-argmax."""
        return _in_fp32(self.logits, _to_side(self.up(features), self.heatmap_size))

    def forward(self, features: Tensor, mean_face: Tensor) -> Tensor:
        return soft_argmax(self.heatmaps(features), self.image_size)


class SkipHeatmapHead(nn.Module):
    """The heatmap head with skip connections (U-Net / FPN style): at each x2 step up, the trunk's
    feature map of the same side is added through a 1x1 convolution before the 3x3 one.

    The plain heatmap head rebuilds 24x24 maps from the trunk's last map alone (3x3 for small_cnn),
    so fine position has to survive the bottleneck; here the 24x24 and 12x12 stages of the trunk
    hand it over directly, for the cost of the 1x1 convolutions. Same soft-argmax, same output.
    """

    uses_skips = True

    def __init__(self, channels: int, side: int, num_keypoints: int, image_size: int,
                 heatmap_size: int, skips: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        check_heatmap_size(heatmap_size, image_size)
        by_side = {s: c for c, s in skips}
        convs, laterals, c, s = [], [], channels, side
        self.skip_sides: list[int] = []
        while s * 2 <= heatmap_size:
            s *= 2
            if s in by_side:
                laterals.append(nn.Conv2d(by_side[s], c, 1, bias=False))
                self.skip_sides.append(s)
            else:
                laterals.append(nn.Identity())
                self.skip_sides.append(0)
            convs.append(nn.Sequential(nn.Conv2d(c, HEATMAP_CHANNELS, 3, 1, 1, bias=False),
                                       nn.BatchNorm2d(HEATMAP_CHANNELS), nn.ReLU(inplace=True)))
            c = HEATMAP_CHANNELS
        if not any(self.skip_sides):
            raise ValueError(f"head 'unet' needs trunk feature maps of side {side * 2}..{heatmap_size}; "
                             f"this trunk offers sides {sorted(by_side) or 'none'} "
                             f"(backbones with skips: {', '.join(SKIP_BACKBONES)})")
        self.convs, self.laterals = nn.ModuleList(convs), nn.ModuleList(laterals)
        self.logits = _zero_logits(c, num_keypoints)
        self.heatmap_size, self.image_size = heatmap_size, image_size

    def heatmaps(self, features: Tensor, skips: dict[int, Tensor]) -> Tensor:
        x = features
        for conv, lateral, s in zip(self.convs, self.laterals, self.skip_sides):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if s:
                x = x + lateral(skips[s])
            x = conv(x)
        return _in_fp32(self.logits, _to_side(x, self.heatmap_size))

    def forward(self, features: Tensor, mean_face: Tensor, skips: dict[int, Tensor]) -> Tensor:
        return soft_argmax(self.heatmaps(features, skips), self.image_size)


def check_heatmap_size(heatmap_size: int, image_size: int) -> None:
    """A heatmap cell must cover a whole number of pixels (else cells straddle pixel edges)."""
    if heatmap_size < 1 or image_size % heatmap_size:
        raise ValueError(f"heatmap_size={heatmap_size} must divide the input size {image_size} "
                         f"(e.g. {', '.join(str(d) for d in (12, 24, 48) if image_size % d == 0)})")


def _regression(channels, side, num_keypoints, image_size, heatmap_size, dropout, pool, skips):
    return RegressionHead(channels, side, num_keypoints, image_size, dropout, pool)


def _heatmap(channels, side, num_keypoints, image_size, heatmap_size, dropout, pool, skips):
    return HeatmapHead(channels, side, num_keypoints, image_size, heatmap_size)


def _unet(channels, side, num_keypoints, image_size, heatmap_size, dropout, pool, skips):
    return SkipHeatmapHead(channels, side, num_keypoints, image_size, heatmap_size, skips)


HEADS: dict[str, Callable[..., nn.Module]] = {"regression": _regression, "heatmap": _heatmap,
                                              "unet": _unet}


def build_head(name: str, *, channels: int, side: int, num_keypoints: int, image_size: int,
               heatmap_size: int = 24, dropout: float = 0.1, pool: bool = False,
               skips: tuple[tuple[int, int], ...] = ()) -> nn.Module:
    """A head by name; unknown names list the valid ones. dropout, pool: regression only;
    skips: (channels, side) of the trunk's earlier feature maps, for "unet" only."""
    if name not in HEADS:
        raise ValueError(f"Unknown head {name!r}; valid: {sorted(HEADS)}")
    return HEADS[name](channels, side, num_keypoints, image_size, heatmap_size, dropout, pool, skips)
