"""Keypoint models: a backbone chosen by name from BACKBONES plus a head from fkd_core.heads.

BACKBONES builds the names of fkd_core.config.Backbone (the one list; tests/test_names.py pins them).

    >>> from fkd_core.models import build_model
    >>> model = build_model("resnet50", num_keypoints=15, mean_face=mean_xy)   # [15, 2] px
    >>> model = build_model("res_cnn", 15, width=1.5, depth=2, head="heatmap", heatmap_size=24)
    >>> model(images)            # images [N, 1, 96, 96] float in [0, 1] -> [N, 15, 2] px

The study's networks: a 1x1 convolution turning the grey image into 3 channels (+ ReLU, as its
code had), the torchvision trunk without its classifier, global average pooling, dropout and a
linear layer with 2K outputs (the ``regression`` head). The head predicts offsets from the
training set's mean face in units of half the image, and starts at zero, so the first predictions
are the mean face rather than the image corner (which would cost the first epochs just to move the
points into the picture). The ``heatmap`` head (soft-argmax, integral regression) is in heads.py.

CPU backbones with a width multiplier and a depth knob (both searchable):
- ``small_cnn``: five stride-2 3x3 conv stages, widths 8-16-32-64-128 x width, plus depth - 1
  stride-1 convs per stage. The fast default.
- ``res_cnn``: a small ResNet: a stride-2 stem and three stages of ``depth`` basic residual
  blocks, widths 16-32-64-128 x width, 96 -> 6x6 (~25 M multiply-adds at width 1, depth 1).
- ``s2d_cnn``: a trunk shaped for the CPU's bf16 units: a space-to-depth stem (96 -> 16 channels
  at 24x24, nothing learned) and four stages of ``depth`` 3x3 convs, widths 32-64-128-128 x
  width, 24 -> 12 -> 6 -> 3. No layer narrower than 32 channels at width 1.
The torchvision backbones have neither knob (width 1 and depth 1 only).

ImageNet weights come through torchvision's weights API and the torch hub cache
(``$TORCH_HOME/hub/checkpoints``); offline and absent, ``WeightsUnavailable`` says where to put
the file.
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from fkd_core.config import SKIP_BACKBONES
from fkd_core.heads import build_head


class WeightsUnavailable(RuntimeError):
    """ImageNet weights are neither in the torch cache nor downloadable."""


@dataclass(frozen=True)
class Trunk:
    """A feature extractor: [N, in_channels, S, S] -> [N, channels, h, w]."""

    features: nn.Module
    channels: int
    in_channels: int       # 3 for the ImageNet trunks (the 1x1 stem makes them from 1)
    pool: bool = True      # global average pooling (the study) or flatten (small_cnn keeps layout)
    side: int = 1          # h = w after the trunk
    taps: tuple[tuple[int, int, int], ...] = ()   # (layer index, channels, side) of earlier maps


S2D_BLOCK = 4   # s2d_cnn's stem: 4x4 pixel blocks -> 16 channels


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _check_knobs(name: str, width: float, depth: int) -> None:
    if width <= 0.0:
        raise ValueError(f"width={width:g}: the width multiplier of {name} must be > 0")
    if depth < 1:
        raise ValueError(f"depth={depth}: {name} needs at least one block per stage")


def _halvings(image_size: int, stages: int) -> int:
    side = image_size
    for _ in range(stages):           # stride-2 3x3 convs with padding 1: ceil(side / 2)
        side = (side + 1) // 2
    return side


def _small_cnn(pretrained: bool, image_size: int, width: float = 1.0, depth: int = 1) -> Trunk:
    """Plain 5-stage CNN for CPU sweeps (~3 M multiply-adds per 96x96 image, ~0.2 M parameters
    at width 1, depth 1).

    Widths start at 8: the 48x48 first stage dominates CPU time (activations, batch norm).
    Widths 16-32-64-96-128 reached 0.79 px val RMSE instead of 0.92 px (2000 synthetic faces, 15
    epochs) at well under half the speed; a CPU sweep wants many trials more than that margin. The last 3x3 map is
    flattened rather than pooled: without an ImageNet-deep trunk, *where* a feature sits is the
    information a keypoint regressor needs. ``width`` scales every stage; ``depth`` - 1 extra
    stride-1 convs follow each stride-2 one.
    """
    if pretrained:
        raise WeightsUnavailable("small_cnn has no ImageNet weights; set pretrained=False")
    _check_knobs("small_cnn", width, depth)
    widths = [_scaled(c, width) for c in (8, 16, 32, 64, 128)]
    layers, c_in, taps = [], 1, []
    for stage, c_out in enumerate(widths):   # stride 2 each: 96 -> 48 -> 24 -> 12 -> 6 -> 3
        layers.append(_conv_bn(c_in, c_out, 2))
        layers.extend(_conv_bn(c_out, c_out, 1) for _ in range(depth - 1))
        taps.append((len(layers) - 1, c_out, _halvings(image_size, stage + 1)))
        c_in = c_out
    return Trunk(nn.Sequential(*layers), widths[-1], in_channels=1, pool=False,
                 side=_halvings(image_size, len(widths)), taps=tuple(taps[:-1]))


class _BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs and a shortcut (1x1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, stride),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        nn.init.zeros_(self.body[-1].weight)   # each block starts as its shortcut (Goyal et al.)
        # A 1x1 stride-s conv is a 1x1 conv of every s-th pixel; written that way because the
        # stride-2 1x1 conv's backward segfaults in torch 2.14's CPU kernels for channels_last
        # inputs of fewer than 16 channels (width < 1).
        self.stride = stride
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, 1, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x[:, :, ::self.stride, ::self.stride]))


def _res_cnn(pretrained: bool, image_size: int, width: float = 1.0, depth: int = 1) -> Trunk:
    """A small ResNet for CPUs: stem 3x3/2 (96 -> 48), then three stages of ``depth`` basic blocks,
    the first of each with stride 2 (48 -> 24 -> 12 -> 6); widths 16-32-64-128 x ``width``.

    The 6x6 map is flattened by the regression head (like small_cnn) or upsampled by the heatmap
    head. Stopping at 6x6 rather than 3x3 keeps twice the spatial detail for both.
    """
    if pretrained:
        raise WeightsUnavailable("res_cnn has no ImageNet weights; set pretrained=False")
    _check_knobs("res_cnn", width, depth)
    widths = [_scaled(c, width) for c in (16, 32, 64, 128)]
    layers: list[nn.Module] = [_conv_bn(1, widths[0], 2)]
    taps = [(0, widths[0], _halvings(image_size, 1))]
    for stage, (c_in, c_out) in enumerate(zip(widths, widths[1:]), start=2):
        layers.append(_BasicBlock(c_in, c_out, 2))
        layers.extend(_BasicBlock(c_out, c_out, 1) for _ in range(depth - 1))
        taps.append((len(layers) - 1, c_out, _halvings(image_size, stage)))
    return Trunk(nn.Sequential(*layers), widths[-1], in_channels=1, pool=False,
                 side=_halvings(image_size, len(widths)), taps=tuple(taps[:-1]))


def space_to_depth(x: Tensor, block: int, channels_last: bool) -> Tensor:
    """[N, C, H, W] -> [N, C * block^2, H / block, W / block], channel (c, i, j) = pixel offset (i, j)
    of channel c in its block: torch's pixel_unshuffle, but written straight into the channels_last
    layout when asked (torch returns an NCHW-contiguous map whatever its input, which costs a
    channels_last conv a reorder, and its backward another)."""
    if not channels_last:
        return F.pixel_unshuffle(x, block)
    n, c, h, w = x.shape
    cells = x.reshape(n, c, h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(n, h // block, w // block, c * block * block).permute(0, 3, 1, 2)


class SpaceToDepthStem(nn.Module):
    """space_to_depth, then conv-bn-relu: [N, 1, S, S] -> [N, c_out, S / block, S / block]. Each
    block x block pixel square becomes block^2 channels of one cell, nothing learned or lost; the
    cells are laid out as the conv's weights are (channels_last after model.to(channels_last))."""

    def __init__(self, block: int, c_out: int) -> None:
        super().__init__()
        self.block = block
        self.conv = _conv_bn(block * block, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        nhwc = self.conv[0].weight.is_contiguous(memory_format=torch.channels_last)
        return self.conv(space_to_depth(x, self.block, nhwc))


def _s2d_cnn(pretrained: bool, image_size: int, width: float = 1.0, depth: int = 1) -> Trunk:
    """A plain CNN whose every convolution is wide enough to fill the CPU's bf16 arithmetic.

    small_cnn spends about 30% of its bf16 training step in its 8-channel 48x48 layers (batch norm
    and convolutions that cannot fill 16-lane bf16 vectors, or AMX's 16 x 32 tiles), for about 12%
    of its FLOPs. Here a space-to-depth stem (each 4x4 pixel block becomes 16
    channels of a 24x24 map: a patchify stem like ConvNeXt's, the patch taken by a 3x3 conv over
    those channels) replaces those layers, and the first learned conv already has 32 channels.
    Four stages of ``depth`` conv-bn-relu follow, widths 32-64-128-128 x ``width``, the first conv
    of stages 2-4 with stride 2: 24 -> 12 -> 6 -> 3, flattened or upsampled like small_cnn's map.
    At depth 2 and width 1 it does twice the FLOPs of small_cnn depth 2 at 0.94x its seconds per
    epoch on fkd-yt15, at 0.55 of the bf16 matmul rate against 0.31 (bench/results/
    recipe-speed.md, precision.md).
    """
    if pretrained:
        raise WeightsUnavailable("s2d_cnn has no ImageNet weights; set pretrained=False")
    _check_knobs("s2d_cnn", width, depth)
    if image_size % S2D_BLOCK:
        raise ValueError(f"image_size={image_size}: s2d_cnn needs a multiple of {S2D_BLOCK}")
    widths = [_scaled(c, width) for c in (32, 64, 128, 128)]
    side = image_size // S2D_BLOCK
    layers: list[nn.Module] = [SpaceToDepthStem(S2D_BLOCK, widths[0])]
    layers.extend(_conv_bn(widths[0], widths[0], 1) for _ in range(depth - 1))
    taps = [(len(layers) - 1, widths[0], side)]
    for c_in, c_out in zip(widths, widths[1:]):
        side = (side + 1) // 2
        layers.append(_conv_bn(c_in, c_out, 2))
        layers.extend(_conv_bn(c_out, c_out, 1) for _ in range(depth - 1))
        taps.append((len(layers) - 1, c_out, side))
    return Trunk(nn.Sequential(*layers), widths[-1], in_channels=1, pool=False, side=side,
                 taps=tuple(taps[:-1]))


def _weights_enum(name: str):
    """torchvision's ImageNet weights of a model (IMAGENET1K_V1: the ones the study loaded)."""
    return torchvision.models.get_model_weights(name).IMAGENET1K_V1


def weights_path(name: str) -> str:
    """Where torch hub keeps (or would keep) the ImageNet weights file of a torchvision model."""
    url = _weights_enum(name).url
    file_name = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


def _ensure_weights(name: str) -> None:
    """Download the weights file when missing; offline, say exactly how to put it in place."""
    path = weights_path(name)
    if os.path.exists(path):
        return
    url = _weights_enum(name).url
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        match = torch.hub.HASH_REGEX.search(os.path.basename(path))   # torchvision's integrity check
        torch.hub.download_url_to_file(url, path, match.group(1) if match else None, progress=False)
    except Exception as exc:  # URLError, timeouts, proxies: all mean "not available here"
        raise WeightsUnavailable(
            f"ImageNet weights for {name} are not in the torch cache and could not be downloaded "
            f"({type(exc).__name__}: {exc}); copy {url} to {path} (or set TORCH_HOME), "
            f"or train from scratch with pretrained=False") from exc


def _torchvision(name: str, strip: Callable[[nn.Module], nn.Module], channels: int) -> Callable[..., Trunk]:
    def build(pretrained: bool, image_size: int, width: float = 1.0, depth: int = 1) -> Trunk:
        if (width, depth) != (1.0, 1):
            raise ValueError(f"{name} has no width/depth knob (got width={width:g}, depth={depth}); "
                             f"they apply to {sorted(KNOBBED)}")
        if pretrained:
            _ensure_weights(name)
        net = torchvision.models.get_model(name, weights=_weights_enum(name) if pretrained else None)
        return Trunk(strip(net), channels, in_channels=3, side=-(-image_size // 32))  # all stride 32

    return build


def _resnet_trunk(net: nn.Module) -> nn.Module:
    return nn.Sequential(*list(net.children())[:-2])          # drop avgpool and fc


def _densenet_trunk(net: nn.Module) -> nn.Module:
    return nn.Sequential(net.features, nn.ReLU(inplace=True))  # torchvision applies ReLU in forward


def _mobilenet_trunk(net: nn.Module) -> nn.Module:
    return net.features


BACKBONES: dict[str, Callable[..., Trunk]] = {
    "resnet50": _torchvision("resnet50", _resnet_trunk, 2048),
    "densenet121": _torchvision("densenet121", _densenet_trunk, 1024),
    "resnet18": _torchvision("resnet18", _resnet_trunk, 512),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small", _mobilenet_trunk, 576),
    "small_cnn": _small_cnn,
    "res_cnn": _res_cnn,
    "s2d_cnn": _s2d_cnn,
}
# The backbones with a width multiplier and a depth knob: the project's own CPU trunks, the same
# ones that feed the "unet" head its skip maps, so one list (fkd_core.config) names both.
KNOBBED = SKIP_BACKBONES


class KeypointNet(nn.Module):
    """images [N, 1, S, S] float in [0, 1] -> keypoints [N, K, 2] in pixels."""

    def __init__(self, trunk: Trunk, head: nn.Module, mean_face: Tensor) -> None:
        super().__init__()
        # The study's 1x1 conv + ReLU lifts grey to the 3 channels an ImageNet trunk expects.
        self.stem = (nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(inplace=True))
                     if trunk.in_channels == 3 else nn.Identity())
        self.trunk = trunk.features
        self.head = head
        self.register_buffer("mean_face", mean_face.detach().float().clone())
        # layer index -> side, of the trunk maps a skip head (heads.SkipHeatmapHead) reads
        self.taps = {i: side for i, _, side in trunk.taps} if getattr(head, "uses_skips", False) else {}

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem(images)
        if not self.taps:
            return self.head(self.trunk(x), self.mean_face)
        skips = {}
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            if i in self.taps:
                skips[self.taps[i]] = x
        return self.head(x, self.mean_face, skips)


def build_model(name: str, num_keypoints: int, *, pretrained: bool = False, dropout: float = 0.1,
                mean_face: Tensor | None = None, image_size: int = 96, width: float = 1.0,
                depth: int = 1, head: str = "regression", heatmap_size: int = 24) -> KeypointNet:
    """A keypoint model by backbone and head name; unknown names list the valid ones.

    Args:
        mean_face: [K, 2] px, the regression head's initial prediction (the training set's mean
            face); the image centre when None.
        pretrained: load torchvision's ImageNet weights into the trunk (raises WeightsUnavailable).
        width, depth: the knobs of small_cnn, res_cnn and s2d_cnn (ValueError for other backbones).
        head: "regression", "heatmap" or "unet" (fkd_core.heads); heatmap_size must divide
            image_size; "unet" needs a trunk with taps (small_cnn, res_cnn, s2d_cnn).
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    if mean_face is None:
        mean_face = torch.full((num_keypoints, 2), image_size / 2.0)
    trunk = BACKBONES[name](pretrained, image_size, width, depth)
    head_module = build_head(head, channels=trunk.channels, side=trunk.side, num_keypoints=num_keypoints,
                             image_size=image_size, heatmap_size=heatmap_size, dropout=dropout,
                             pool=trunk.pool, skips=tuple((c, s) for _, c, s in trunk.taps))
    return KeypointNet(trunk, head_module, mean_face.reshape(num_keypoints, 2))


def upgrade_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoints written before heads.py (head = a bare Linear, scale on the model) -> now."""
    renames = {"head.weight": "head.linear.weight", "head.bias": "head.linear.bias", "scale": "head.scale"}
    return {renames.get(k, k): v for k, v in state.items()}
