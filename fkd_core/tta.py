"""Test-time flip averaging: the mean of a prediction and the mirrored prediction of the mirrored
image, with the schema's left/right labels swapped back.

    >>> pred = flip_average(model, images, KAGGLE15.flip_permutation())   # [N, K, 2] px
    >>> net = FlipAveraged(model, flip_perm)   # plain in train mode, averaged in eval mode

Mirroring x -> S - 1 - x is the exact mirror of the pixel grid (pixel-index convention, as in
fkd_core.augment), so on a left/right-symmetric image the averaged keypoints are symmetric:
left eye and right eye mirror each other and the nose tip sits on the axis.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def mirror_keypoints(keypoints: Tensor, flip_perm: Sequence[int], image_size: int) -> Tensor:
    """keypoints [N, K, 2] px of a mirrored image -> those of the original (x mirrored, and the
    left/right labels swapped by flip_perm, an involution)."""
    mirrored = keypoints[:, list(flip_perm)]
    return torch.stack([(image_size - 1) - mirrored[..., 0], mirrored[..., 1]], dim=-1)


def flip_average(model: nn.Module, images: Tensor, flip_perm: Sequence[int]) -> Tensor:
    """images [N, C, S, S] -> the mean of model(images) and the un-mirrored model(mirror)."""
    plain = model(images).float()
    mirrored = model(images.flip(-1)).float()
    return 0.5 * (plain + mirror_keypoints(mirrored, flip_perm, images.shape[-1]))


class FlipAveraged(nn.Module):
    """Wraps a keypoint model: training steps see the plain model, evaluation the flip average.

    Holds no weights of its own, so the wrapped model's state_dict is what a checkpoint saves."""

    def __init__(self, model: nn.Module, flip_perm: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.flip_perm = list(flip_perm)

    def forward(self, images: Tensor) -> Tensor:
        if self.training:
            return self.model(images)
        return flip_average(self.model, images, self.flip_perm)
