"""The image-folder layout's reader: a CSV whose first column names an image file in a folder
and whose other columns are x0,y0,x1,y1,... for any K; images of any size, colour and bit depth
become grey uint8 and are resized to the network input, keypoints scaled with them."""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_core.data.errors import fail, what_is
from fkd_core.data.layout import Layout
from fkd_core.data.values import check_near_image, numbers


def _image_root(path: Path, first_name: str, image_dir: str | Path | None) -> Path:
    """The folder the names refer to: image_dir if given, else the CSV's folder or a subfolder
    named like the CSV's first word ("training_frames_keypoints.csv" -> "training/")."""
    if image_dir is not None:
        return Path(image_dir)
    base = path.parent
    for candidate in (base, base / path.name.split("_")[0].split(".")[0], base / "images"):
        if (candidate / first_name).is_file():
            return candidate
    return base


def _image_file(path: Path, root: Path, row: int, column: str, name: str) -> Path:
    """root / name, refusing names that leave the folder (absolute, '..', drive letters)."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or ":" in name or name.startswith(("/", "\\")):
        raise fail(path, row, column, f"a file name inside {root}", repr(name))
    file = root / rel
    if not file.resolve().is_relative_to(root.resolve()):  # a symlink that points outside
        raise fail(path, row, column, f"a file name inside {root}", repr(name))
    if not file.is_file():
        raise fail(path, row, column, f"an image file in {root}", f"{name!r} ({what_is(file)})")
    return file


def _grey(im: "Image.Image") -> "Image.Image":
    """8-bit grey of any PIL image. PIL's convert("L") clips 16-bit values at 255 (a 16-bit PNG
    came out 98.6% white), so 16-bit and 32-bit integer modes are scaled from 0..65535 instead."""
    from PIL import Image

    if im.mode == "I" or im.mode.startswith("I;16"):
        wide = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    return im.convert("L")


def _load_image(path: Path, row: int, column: str, file: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey uint8 [size, size] and the original (width, height)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            grey = _grey(im)
            original = grey.size
            grey = grey.resize((size, size), Image.BILINEAR)
    except Image.DecompressionBombError as exc:   # PIL refuses to decode it: not an OSError
        raise fail(path, row, column, f"an image of at most {Image.MAX_IMAGE_PIXELS * 2} pixels",
                   f"{file.name!r} ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise fail(path, row, column, "a readable image file", f"{file.name!r} ({exc})") from None
    return np.asarray(grey, np.uint8), original


def folder_files(path: Path, text: bytes, layout: Layout, image_dir: str | Path | None
                 ) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Checked image paths, keypoints float32 [N, K, 2] in original pixels, and the names."""
    frame = pd.read_csv(io.BytesIO(text), dtype=str, keep_default_na=False, na_filter=False)
    if frame.empty:
        raise fail(path, 1, layout.columns[0] or "1 (image name)", "at least one data row after the header", "none")
    names = tuple(frame.iloc[:, 0].str.strip())
    column = layout.columns[0] or "1 (image name)"
    root = _image_root(path, names[0], image_dir)
    files = [_image_file(path, root, r + 1, column, n) for r, n in enumerate(names)]
    keypoints = numbers(path, frame.iloc[:, 1:]).reshape(len(frame), -1, 2)
    return files, keypoints, names


def read_folder(path: Path, layout: Layout, files: list[Path], keypoints: np.ndarray,
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 1, size, size] and keypoints scaled to them (float32 [N, K, 2])."""
    column = layout.columns[0] or "1 (image name)"
    # Decoding releases the GIL, so a few threads overlap file reads and JPEG decoding.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        loaded = list(pool.map(lambda rf: _load_image(path, rf[0] + 1, column, rf[1], size), enumerate(files)))
    images = np.stack([im for im, _ in loaded])[:, None]
    wh = np.array([orig for _, orig in loaded], np.float32)[:, None, :]   # [N, 1, 2]
    check_near_image(path, keypoints, wh[:, 0, 0], wh[:, 0, 1], layout.columns[1:])
    # Resizing maps pixel areas: the centre x of a source pixel goes to (x + 0.5) * size / W - 0.5.
    return images, ((keypoints + 0.5) * (size / wh) - 0.5).astype(np.float32)


def folder_digest(text: bytes, files: list[Path]) -> str:
    """sha256 of the CSV and of every image file (name and bytes): the folder's content."""
    h = hashlib.sha256(text)
    for file in files:
        h.update(file.name.encode() + b"\0")
        h.update(file.read_bytes())
    return h.hexdigest()
