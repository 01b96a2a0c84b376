"""Fixed test-time shifts of the test faces: a stand-in for faces from another source.

The hidden in-the-wild photographs are not here, so robustness is measured on the test people
under fixed, label-preserving changes of the kind another camera or another face detector makes:
a looser or tighter crop, a tilt, an off-centre crop, low contrast, a darker exposure, defocus and
sensor noise. Each is applied to every test face (the same amounts for every model), the
keypoints move exactly with the pixels (fkd_core.augment.warp), and the score is the RMSE on the
shifted faces; keypoints a warp pushes out of the frame are dropped from that score.

    >>> images, keypoints = shifted("tilt_10deg", test.images, test.keypoints, flip_perm)

These are fixed amounts, not a sample of the wild; they rank models by how much they lean on
this data set's framing and exposure, not by their in-the-wild error.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from fkd_core import augment

# name -> (angle degrees, scale, shift x, shift y) for geometric shifts
GEOMETRIC: dict[str, tuple[float, float, float, float]] = {
    "crop_loose": (0.0, 0.85, 0.0, 0.0),      # the face fills 85% of the frame it filled
    "crop_tight": (0.0, 1.12, 0.0, 0.0),
    "tilt_10deg": (10.0, 1.0, 0.0, 0.0),
    "off_centre": (0.0, 1.0, 5.0, -5.0),
}
def _contrast(x: Tensor, factor: float) -> Tensor:
    """Each image's pixels pulled towards (factor < 1) its own mean."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


PHOTOMETRIC: dict[str, Callable[[Tensor], Tensor]] = {
    "low_contrast": lambda x: _contrast(x, 0.6),
    "dark_gamma_1.6": lambda x: x.clamp(min=0.0).pow(1.6),
    "defocus_sigma_1.2": lambda x: augment.gaussian_blur(x, torch.full((x.shape[0],), 1.2), augment.blur_radius(1.2)),
    "noise_sigma_0.04": lambda x: x + 0.04 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)),
}
SHIFTS = (*GEOMETRIC, *PHOTOMETRIC)


def shifted(name: str, images: Tensor, keypoints: Tensor, flip_perm: Sequence[int]) -> tuple[Tensor, Tensor]:
    """images uint8 [N, 1, S, S], keypoints [N, K, 2] px -> the shifted images (uint8, as a
    camera would store them) and their keypoints (NaN where a warp moved one out of the frame)."""
    x, n = images.float() / 255.0, images.shape[0]
    if name in GEOMETRIC:
        deg, scale, sx, sy = GEOMETRIC[name]
        x, keypoints = augment.warp(x, keypoints, torch.full((n,), math.radians(deg)),
                                    torch.full((n,), scale), torch.tensor([[sx, sy]]).expand(n, 2),
                                    torch.zeros(n, dtype=torch.bool), flip_perm)
    elif name in PHOTOMETRIC:
        x = PHOTOMETRIC[name](x)
    else:
        raise ValueError(f"Unknown shift {name!r}; valid: {list(SHIFTS)}")
    return x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8), keypoints
