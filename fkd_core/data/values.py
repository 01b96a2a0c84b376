"""Keypoint values as read from a file: numbers or missing, finite, and near the image.

A coordinate may lie outside the image (a chin below the frame), but only by KEYPOINT_MARGIN of
the image's side: (5000, -5000) is a typo or a unit error, and training on it gave 520 px RMSE.
The real data needs far less: youtube-faces-68's points reach 9.9% of a side outside the image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from fkd_core.data.errors import fail

KEYPOINT_MARGIN = 0.5
"""Keypoints must lie within [-0.5 W, 1.5 W] x [-0.5 H, 1.5 H] of a W x H image."""


def numbers(path: Path, frame: pd.DataFrame, row0: int = 1) -> np.ndarray:
    """float32 [N, C] from a frame of strings; empty (or NaN/NA) = missing, else a finite number."""
    out = np.empty(frame.shape, np.float32)
    for j, name in enumerate(frame.columns):
        text = frame[name].str.strip()
        num = pd.to_numeric(text, errors="coerce")
        bad = np.flatnonzero(num.isna().to_numpy() & ~text.str.lower().isin(["", "nan", "na"]).to_numpy())
        if bad.size:
            r = int(bad[0])
            raise fail(path, row0 + r, str(name), "a number or an empty field (missing)", repr(text.iloc[r]))
        with np.errstate(over="ignore"):   # overflow to inf is caught just below, with its row
            out[:, j] = num.to_numpy(np.float32)
        # "inf" parses as a number, and 1e39 overflows float32: neither is a position.
        infinite = np.flatnonzero(np.isinf(out[:, j]))
        if infinite.size:
            r = int(infinite[0])
            raise fail(path, row0 + r, str(name), "a finite number or an empty field (missing)",
                       repr(text.iloc[r]))
    return out


def check_near_image(path: Path, keypoints: np.ndarray, width: np.ndarray | float,
                     height: np.ndarray | float, columns: Sequence[str], row0: int = 1) -> None:
    """Raise DataError at the first coordinate farther than KEYPOINT_MARGIN outside its image.

    keypoints: float32 [N, K, 2] in the file's pixels (NaN = missing); width, height: the image
    sizes, scalars or [N]; columns: the 2K column names, x0, y0, x1, ... in file order.
    """
    size = np.stack(np.broadcast_arrays(np.asarray(width, np.float64), np.asarray(height, np.float64)), -1)
    size = np.broadcast_to(size.reshape(-1, 1, 2) if size.ndim > 1 else size, keypoints.shape)
    low, high = -KEYPOINT_MARGIN * size, (1.0 + KEYPOINT_MARGIN) * size
    with np.errstate(invalid="ignore"):   # NaN (missing) compares False: never flagged
        outside = (keypoints < low) | (keypoints > high)
    if not outside.any():
        return
    r, k, c = (int(i[0]) for i in np.nonzero(outside))
    w, h = size[r, k]
    raise fail(path, row0 + r, columns[2 * k + c],
               f"a coordinate within {KEYPOINT_MARGIN:g} of the image's side around it "
               f"({low[r, k, c]:g}..{high[r, k, c]:g} for a {w:g}x{h:g} image)", f"{keypoints[r, k, c]:g}")
