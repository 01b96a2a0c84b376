"""Writing the Kaggle text layout, and the marker that labels a file of synthetic faces.

Kept out of :mod:`fkd_core.data` on purpose: the synthetic generator's CLI writes this layout,
and ``fkd_core.data`` reads synthetic faces from :mod:`fkd_core.synth`, so putting the writer in
either would tie the two in a circle. Both import it from here.

    >>> write_kaggle_csv("faces.csv.gz", images, keypoints)   # .csv, .csv.gz or .zip
"""
from __future__ import annotations

import gzip
import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import Tensor

from fkd_core.schema import KAGGLE15, Schema


def atomic_write(target: Path, payload: bytes) -> None:
    """Write via a temporary file and rename, so that concurrent trials never read half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def synthetic_marker(path: str | Path) -> Path:
    """The sidecar that `python -m fkd_core.synth` writes next to a CSV of synthetic faces, so
    that a file of generated faces is still labelled synthetic when read back."""
    path = Path(path)
    return path.with_name(path.name + ".synthetic.json")


def _image_text(pixels: np.ndarray) -> list[bytes]:
    """Each row of pixels uint8 [N, P] as b"p1 p2 ... pP", formatted without a per-value loop."""
    v = pixels.astype(np.int16)
    chars = np.stack([v // 100 + 48, v // 10 % 10 + 48, v % 10 + 48, np.full_like(v, 32)], axis=-1)
    keep = np.stack([v >= 100, v >= 10, np.ones_like(v, bool), np.ones_like(v, bool)], axis=-1)
    flat = chars.astype(np.uint8)[keep]
    ends = np.cumsum(keep.reshape(len(v), -1).sum(axis=1))
    starts = np.append(0, ends[:-1])
    return [flat[s:e - 1].tobytes() for s, e in zip(starts, ends)]


def kaggle_csv_bytes(images: Tensor, keypoints: Tensor | None, schema: Schema = KAGGLE15,
                     image_ids: Sequence[str] | None = None) -> bytes:
    """The Kaggle text layout: keypoint columns (6 decimals, empty = missing) then Image; or
    ImageId,Image when keypoints is None. images: uint8 [N, 1, S, S]; keypoints: [N, K, 2]."""
    pixels = images.reshape(len(images), -1).numpy()
    if keypoints is None:
        ids = image_ids or [str(i + 1) for i in range(len(pixels))]
        header, prefixes = "ImageId,Image", [f"{i}," for i in ids]
    else:
        values = keypoints.reshape(len(keypoints), -1).numpy().astype(np.float64)
        text = np.char.mod("%.6f", values)
        text[~np.isfinite(values)] = ""
        header = ",".join(schema.columns) + ",Image"
        prefixes = [",".join(row) + "," for row in text.tolist()]
    lines = [p.encode() + img for p, img in zip(prefixes, _image_text(pixels))]
    return (header + "\n").encode() + b"\n".join(lines) + b"\n"


def write_kaggle_csv(path: str | Path, images: Tensor, keypoints: Tensor | None,
                     schema: Schema = KAGGLE15, image_ids: Sequence[str] | None = None) -> Path:
    """Write .csv, .csv.gz or .zip (one member, like Kaggle's training.zip) in the Kaggle layout."""
    path = Path(path)
    payload = kaggle_csv_bytes(images, keypoints, schema, image_ids)
    if path.suffix.lower() == ".gz":
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    elif path.suffix.lower() == ".zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(path.stem + ".csv", payload)
        payload = buf.getvalue()
    atomic_write(path, payload)
    return path

