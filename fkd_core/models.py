"""Keypoint regressors: a backbone chosen by name from BACKBONES plus a linear head.

    >>> from fkd_core.models import build_model
    >>> model = build_model("resnet50", num_keypoints=15, mean_face=mean_xy)   # [15, 2] px
    >>> model(images)            # images [N, 1, 96, 96] float in [0, 1] -> [N, 15, 2] px

The study's networks: a 1x1 convolution turning the grey image into 3 channels (+ ReLU, as its
code had), the torchvision trunk without its classifier, global average pooling, dropout and a
linear layer with 2K outputs. The head predicts offsets from the training set's mean face in units
of half the image, and starts at zero, so the first predictions are the mean face rather than
the image corner (which would cost the first epochs just to move the points into the picture).

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


class WeightsUnavailable(RuntimeError):
    """ImageNet weights are neither in the torch cache nor downloadable."""


@dataclass(frozen=True)
class Trunk:
    """A feature extractor: [N, in_channels, S, S] -> [N, channels, h, w]."""

    features: nn.Module
    channels: int
    in_channels: int       # 3 for the ImageNet trunks (the 1x1 stem makes them from 1)
    pool: bool = True      # global average pooling (the study) or flatten (small_cnn keeps layout)
    spatial: int = 1       # h * w after the trunk when pool is False


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _small_cnn(pretrained: bool, image_size: int) -> Trunk:
    """Plain 5-stage CNN for CPU sweeps (~3 M multiply-adds per 96x96 image, ~0.2 M parameters).

    Widths start at 8: the 48x48 first stage dominates CPU time (activations, batch norm).
    Widths 16-32-64-96-128 reached 0.79 px val RMSE instead of 0.92 px (2000 synthetic faces, 15
    epochs) at well under half the speed; a CPU sweep wants many trials more than that margin. The last 3x3 map is
    flattened rather than pooled: without an ImageNet-deep trunk, *where* a feature sits is the
    information a keypoint regressor needs.
    """
    if pretrained:
        raise WeightsUnavailable("small_cnn has no ImageNet weights; set pretrained=False")
    widths = (8, 16, 32, 64, 128)
    layers, c_in = [], 1
    for c_out in widths:               # stride 2 each: 96 -> 48 -> 24 -> 12 -> 6 -> 3
        layers.append(_conv_bn(c_in, c_out, 2))
        c_in = c_out
    side = image_size
    for _ in widths:
        side = (side + 1) // 2
    return Trunk(nn.Sequential(*layers), widths[-1], in_channels=1, pool=False, spatial=side * side)


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
    def build(pretrained: bool, image_size: int) -> Trunk:
        if pretrained:
            _ensure_weights(name)
        net = torchvision.models.get_model(name, weights=_weights_enum(name) if pretrained else None)
        return Trunk(strip(net), channels, in_channels=3)

    return build


def _resnet_trunk(net: nn.Module) -> nn.Module:
    return nn.Sequential(*list(net.children())[:-2])          # drop avgpool and fc


def _densenet_trunk(net: nn.Module) -> nn.Module:
    return nn.Sequential(net.features, nn.ReLU(inplace=True))  # torchvision applies ReLU in forward


def _mobilenet_trunk(net: nn.Module) -> nn.Module:
    return net.features


BACKBONES: dict[str, Callable[[bool, int], Trunk]] = {
    "resnet50": _torchvision("resnet50", _resnet_trunk, 2048),
    "densenet121": _torchvision("densenet121", _densenet_trunk, 1024),
    "resnet18": _torchvision("resnet18", _resnet_trunk, 512),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small", _mobilenet_trunk, 576),
    "small_cnn": _small_cnn,
}


class KeypointNet(nn.Module):
    """images [N, 1, S, S] float in [0, 1] -> keypoints [N, K, 2] in pixels."""

    def __init__(self, trunk: Trunk, num_keypoints: int, mean_face: Tensor, image_size: int,
                 dropout: float) -> None:
        super().__init__()
        # The study's 1x1 conv + ReLU lifts grey to the 3 channels an ImageNet trunk expects.
        self.stem = (nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(inplace=True))
                     if trunk.in_channels == 3 else nn.Identity())
        self.trunk = trunk.features
        self.pool = nn.AdaptiveAvgPool2d(1) if trunk.pool else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(trunk.channels * (1 if trunk.pool else trunk.spatial), 2 * num_keypoints)
        nn.init.zeros_(self.head.weight)   # first prediction = mean face exactly
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean_face", mean_face.detach().float().clone().reshape(num_keypoints, 2))
        self.register_buffer("scale", torch.tensor(image_size / 2.0))

    def forward(self, images: Tensor) -> Tensor:
        x = self.pool(self.trunk(self.stem(images)))
        offsets = self.head(self.dropout(torch.flatten(x, 1)))
        return self.mean_face + offsets.float().view(-1, *self.mean_face.shape) * self.scale


def build_model(name: str, num_keypoints: int, *, pretrained: bool = False, dropout: float = 0.1,
                mean_face: Tensor | None = None, image_size: int = 96) -> KeypointNet:
    """A keypoint regressor by backbone name; unknown names list the valid ones.

    Args:
        mean_face: [K, 2] px, the initial prediction (the training set's mean face); the image
            centre when None.
        pretrained: load torchvision's ImageNet weights into the trunk (raises WeightsUnavailable).
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    if mean_face is None:
        mean_face = torch.full((num_keypoints, 2), image_size / 2.0)
    trunk = BACKBONES[name](pretrained, image_size)
    return KeypointNet(trunk, num_keypoints, mean_face, image_size, dropout)
