"""Keypoint data sets: readers, validation, a content-hash cache, splits and missing policies.

Sources (DESIGN.md, "Data"):
- Kaggle layout: ``training.csv`` / ``.csv.gz`` / Kaggle's ``training.zip`` (30 keypoint columns,
  then ``Image``: 9216 space-separated ints), and ``test.csv`` (``ImageId,Image``);
- image-folder layout: a CSV whose first column names an image file and whose other columns are
  x0,y0,x1,y1,... for any K; images of any size and colour become grey and are resized to
  ``image_size``, keypoints scaled with them;
- ``"synthetic"`` (all keypoints present) or ``"synthetic-missing"`` (Kaggle-like missingness):
  faces drawn in memory by :mod:`fkd_core.synth`, labelled ``synthetic=True``.

    python -m fkd_core.data describe ../shared/data/fkd-yt15/training.csv.gz [--json] [--cache DIR]
    >>> data = load_dataset("../shared/data/fkd-yt15/sample-64.csv")
    >>> data.images.shape, data.keypoints.shape          # uint8 [64, 1, 96, 96], float32 [64, 15, 2]

Coordinates are pixels of the S x S image with the pixel-index convention: the centre of pixel
(row i, column j) is (x=j, y=i). Parsed files are cached under the user cache dir (env
``FKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/fkd-sweep`` or ``~/.cache/fkd-sweep``) keyed by the
sha256 of the file bytes, so a second load costs a file read. Bad input raises :class:`DataError`,
one line naming the file, the row, the column and what was expected.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import queue
import sys
import tempfile
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fkd_core import synth
from fkd_core.config import TrialConfig
from fkd_core.schema import KAGGLE15, Schema, schema_for

SYNTHETIC_SOURCES = ("synthetic", "synthetic-missing")
KAGGLE_IMAGE_SIZE = 96
MISSING_POLICIES = ("mask", "ffill", "drop")
SPLIT_MODES = ("shuffle", "tail")
# Bump when the parsed arrays of a file could change, so that old cache entries are ignored.
_CACHE_VERSION = 1
# Decompressed text is parsed in pieces of about this size: big enough that per-piece Python
# overhead is negligible, small enough that the numpy temporaries stay in the CPU cache.
_PIECE_BYTES = 1 << 19
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class DataError(ValueError):
    """One line for users: '<file>: row R, column C: expected X, got Y'.

    Rows are counted from 1 for the first data line (the header is "header"), so row R is line
    R + 1 of the file.
    """


def _fail(path: str | Path, row: int | str, column: str, expected: str, got: str) -> DataError:
    """DataError '<file>: row R, column C: expected X, got Y' (row 0 = the header; a str row
    names another place, e.g. "archive"; an empty column is left out)."""
    where = ["header" if row == 0 else row if isinstance(row, str) else f"row {row}"]
    where += [f"column {column}"] if column else []
    return DataError(f"{path}: {', '.join(where)}: expected {expected}, got {got}")


class _Truncated(DataError):
    """A compressed stream that ends early; the reader adds the row where it ends."""


@dataclass(frozen=True)
class KeypointData:
    """One in-memory data set.

    Attributes:
        images: uint8 [N, 1, S, S] grey images (S = 96 for the Kaggle layout).
        keypoints: float32 [N, K, 2] pixels of the S x S image, NaN = missing.
        schema: what the K keypoints are.
        source: the path as given, or "synthetic(n=..,seed=..,pose=..)".
        content_hash: sha256 of the source file bytes (or of the synthetic parameters).
        synthetic: True for generated faces; every output that shows the data says so.
        image_ids: test.csv ImageId / image-folder file names, one per row, or None.
    """

    images: Tensor
    keypoints: Tensor
    schema: Schema
    source: str
    content_hash: str
    synthetic: bool
    image_ids: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx: Sequence[int] | np.ndarray | Tensor) -> "KeypointData":
        """The rows idx (indices or a bool mask [N]), in that order."""
        index = torch.as_tensor(np.asarray(idx) if not isinstance(idx, Tensor) else idx)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.long()
        ids = None if self.image_ids is None else tuple(self.image_ids[i] for i in index.tolist())
        return replace(self, images=self.images[index], keypoints=self.keypoints[index], image_ids=ids)

    def complete_mask(self) -> Tensor:
        """bool [N]: True where every keypoint of the row is present."""
        return torch.isfinite(self.keypoints).all(dim=2).all(dim=1)


# --- synthetic ---------------------------------------------------------------------------------


def _synthetic(source: str, n: int, seed: int, pose: float, image_size: int) -> KeypointData:
    missing = source == "synthetic-missing"
    frac = synth.KAGGLE_COMPLETE_FRACTION if missing else 1.0
    images, keypoints = synth.generate(n, seed, pose, complete_fraction=frac, size=image_size)
    label = f"{source}(n={n},seed={seed},pose={pose:g}" + (f",size={image_size})" if image_size != 96 else ")")
    digest = hashlib.sha256(f"fkd_core.synth v1 {label}".encode()).hexdigest()
    return KeypointData(images, keypoints, KAGGLE15, label, digest, synthetic=True)


# --- the Kaggle layout: fast vectorised reader ---------------------------------------------------


def _prefetch(items: Iterable[bytes], depth: int = 8) -> Iterator[bytes]:
    """Run a producer (reading + decompressing, which release the GIL) in a thread, so that
    decompression overlaps with parsing; exceptions reach the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def _gunzip(path: Path, raw: bytes) -> Iterator[bytes]:
    """Decompressed pieces of a .gz held in memory (several members allowed)."""
    step = _PIECE_BYTES // 4  # compressed input per piece: text is ~4x larger
    d = zlib.decompressobj(wbits=31)
    pos = 0
    try:
        while pos < len(raw):
            yield d.decompress(raw[pos:pos + step])
            pos += step
            while d.eof and d.unused_data:  # a concatenated gzip member follows
                rest = d.unused_data
                d = zlib.decompressobj(wbits=31)
                yield d.decompress(rest)
    except zlib.error as exc:
        raise _Truncated(f"a valid gzip stream|corrupt data ({exc})") from None
    if not d.eof:
        raise _Truncated("a complete gzip stream|a truncated file that ends inside this row")


def _unzip(path: Path, raw: bytes) -> Iterator[bytes]:
    """Decompressed pieces of the one .csv inside a zip (Kaggle's training.zip)."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".csv") and not n.startswith("__MACOSX")]
            if len(names) != 1:
                raise _fail(path, "archive", "", "exactly one .csv member", f"{names or zf.namelist()}")
            with zf.open(names[0]) as member:
                while piece := member.read(_PIECE_BYTES):
                    yield piece
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise _fail(path, "archive", "", "a complete zip archive", f"{type(exc).__name__}: {exc}") from None


def _text_pieces(path: Path, raw: bytes) -> Iterator[bytes]:
    """The file's text, decompressed by suffix, in pieces of about _PIECE_BYTES."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return _gunzip(path, raw)
    if suffix == ".zip":
        return _unzip(path, raw)
    return (raw[i:i + _PIECE_BYTES] for i in range(0, len(raw), _PIECE_BYTES))


def _lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Re-cut pieces at line ends: each yielded block holds whole lines, each ending in '\\n'."""
    tail = b""
    for piece in pieces:
        block = tail + piece
        cut = block.rfind(b"\n") + 1
        tail = block[cut:]
        if cut:
            yield block[:cut].replace(b"\r\n", b"\n") if b"\r" in block else block[:cut]
    if tail.strip():
        yield tail.replace(b"\r\n", b"\n") + b"\n"


# --- header: which layout ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """What a header says: "kaggle" (prefix columns, then Image) or "folder" (name, x0, y0, ...)."""

    kind: str
    columns: tuple[str, ...]
    schema: Schema | None     # None for a Kaggle test.csv (ImageId, Image): no keypoints
    path: Path

    @property
    def prefix(self) -> tuple[str, ...]:
        """Kaggle: the columns before Image."""
        return self.columns[:-1]


def _header_columns(line: bytes) -> tuple[str, ...]:
    text = line.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    return tuple(c.strip().strip('"') for c in text.split(","))


def _pair_names(columns: Sequence[str]) -> list[str] | None:
    """Keypoint names if columns are name_x, name_y pairs, else None."""
    if len(columns) % 2 or not columns:
        return None
    xs, ys = columns[0::2], columns[1::2]
    if all(x.endswith("_x") and y == x[:-2] + "_y" for x, y in zip(xs, ys)):
        return [x[:-2] for x in xs]
    return None


def _coordinate_header(columns: Sequence[str]) -> bool:
    """Image-folder coordinate columns: 0,1,2,... or x0,y0,x1,y1,... or name_x,name_y pairs."""
    if not columns or len(columns) % 2:
        return False
    numbered = [str(i) for i in range(len(columns))]
    xy = [f"{a}{i}" for i in range(len(columns) // 2) for a in "xy"]
    return list(columns) in (numbered, xy) or _pair_names(columns) is not None


def _kaggle_schema(path: Path, prefix: Sequence[str]) -> Schema | None:
    if tuple(prefix) == ("ImageId",):
        return None
    if tuple(prefix) == KAGGLE15.columns:
        return KAGGLE15
    names = _pair_names(prefix)
    if names is None:
        raise _fail(path, 0, ",".join(prefix[:3]) + ("..." if len(prefix) > 3 else ""),
                    "Kaggle keypoint columns (left_eye_center_x, left_eye_center_y, ...) or ImageId "
                    "before Image", f"{len(prefix)} other columns")
    return KAGGLE15 if len(names) == 15 and tuple(names) == KAGGLE15.keypoints else Schema(
        name=f"generic{len(names)}", keypoints=tuple(names))


def _layout(path: Path, line: bytes) -> _Layout:
    """Classify a header line; raise DataError when it matches neither layout."""
    columns = _header_columns(line)
    if "Image" in columns:
        if columns[-1] != "Image" or len(columns) < 2:
            raise _fail(path, 0, "Image", "Image as the last of at least two columns (Kaggle layout)",
                        f"columns {', '.join(columns[:4])}{', ...' if len(columns) > 4 else ''}")
        return _Layout("kaggle", columns, _kaggle_schema(path, columns[:-1]), path)
    if columns[0].endswith("_x") or columns == ("ImageId",):
        raise _fail(path, 0, "Image", "an Image column (the Kaggle layout ends with it)",
                    f"{len(columns)} columns without it ({', '.join(columns[:2])}, ...)")
    if len(columns) >= 3 and _coordinate_header(columns[1:]):
        k = (len(columns) - 1) // 2
        names = _pair_names(columns[1:])
        schema = schema_for(k) if names is None else Schema(name=f"generic{k}", keypoints=tuple(names))
        return _Layout("folder", columns, schema, path)
    raise _fail(path, 0, columns[0] or "1", "a Kaggle header (keypoint columns, then Image; or ImageId,Image) "
                "or an image-folder header (image name, then x0,y0,x1,y1,...)",
                f"{len(columns)} columns starting {', '.join(columns[:3])!r}")


# --- Kaggle layout: one block of whole lines at a time -------------------------------------------

_ZERO = np.uint8(48)
_SPACE = np.uint8(32)
_PAD = 3  # a pixel token has at most 3 digits


def _line_bounds(b: np.ndarray, layout: _Layout, row0: int) -> tuple[np.ndarray, np.ndarray]:
    """Per line of the block b (uint8 [M]): offset where Image starts, offset of the line end."""
    nl = np.flatnonzero(b == 10)
    commas = np.flatnonzero(b == 44)
    per_line = np.diff(np.searchsorted(commas, nl), prepend=0)
    want = len(layout.columns) - 1
    bad = np.flatnonzero(per_line != want)
    if bad.size:
        r = int(bad[0])
        raise _fail(layout.path, row0 + r, "", f"{want + 1} comma-separated fields "
                    f"({layout.columns[0]}, ..., Image)", f"{per_line[r] + 1}")
    return commas[np.cumsum(per_line) - 1] + 1, nl


def _prefix_bytes(b: np.ndarray, nl: np.ndarray, img_start: np.ndarray) -> bytes:
    """The text before Image of every line, as '\n'-ended lines (a small ragged gather)."""
    line_start = np.append(0, nl[:-1] + 1)
    lengths = img_start - line_start          # includes the comma, which becomes the '\n'
    first = np.cumsum(lengths) - lengths
    idx = np.arange(int(lengths.sum())) + np.repeat(line_start - first, lengths)
    out = b[idx]
    out[np.cumsum(lengths) - 1] = 10
    return out.tobytes()


def _parse_block(b: np.ndarray, layout: _Layout, row0: int, expected: int | None) -> tuple[np.ndarray, bytes]:
    """Pixels uint8 [r, P] and prefixes of a block of r whole lines (uint8 [M])."""
    img_start, nl = _line_bounds(b, layout, row0)
    # A copy behind 3 pad bytes, so that reading the 3 bytes before any token stays in bounds.
    c = np.empty(len(b) + _PAD, np.uint8)
    c[:_PAD] = _ZERO
    body = c[_PAD:]
    body[:] = b
    # Turn the comma before Image and the line end into spaces: every line is then one
    # "prefix token" followed by its P pixel tokens, all separated by single spaces.
    body[img_start - 1] = 32
    body[nl] = 32
    return _parse_pixels(c, nl, expected, layout, row0), _prefix_bytes(b, nl, img_start)


def _parse_pixels(c: np.ndarray, nl: np.ndarray, expected: int | None, layout: _Layout,
                  row0: int) -> np.ndarray:
    """uint8 [r, P] from r lines of "prefix p1 p2 ... pP " (c: uint8 [_PAD + M], the text after
    _PAD pad bytes; nl: [r] line ends in the text).

    Vectorised: the separators are found once and each token (1-3 digits) is read by three
    gathers at the bytes before its separator; checks are reductions, the detailed search for
    the offending value runs only when one fails.
    """
    seps = np.flatnonzero(c[_PAD:] == _SPACE)
    per_line = np.diff(np.searchsorted(seps, nl, side="right"), prepend=0) - 1
    expected = expected or _square_count(int(per_line[0]), layout, row0)
    if (per_line != expected).any():
        _raise_count_error(per_line, expected, layout, row0)
    length = np.empty_like(seps)
    length[0] = seps[0]
    np.subtract(seps[1:], seps[:-1] + 1, out=length[1:])
    # c[_PAD - k:][seps] is the k-th byte before each separator: no index arithmetic needed.
    units, tens, hundreds = (np.subtract(c[_PAD - k:][seps], _ZERO, out=np.empty(len(seps), np.uint8))
                             for k in (1, 2, 3))
    tens[length < 2] = 0
    hundreds[length < 3] = 0
    value = units.astype(np.uint16)
    value += tens * np.uint16(10)
    value += hundreds * np.uint16(100)
    shape = (len(nl), expected + 1)
    pix = lambda a: a.reshape(shape)[:, 1:]  # drop each line's prefix token
    if (pix(length).min() < 1 or pix(length).max() > 3 or pix(units).max() > 9 or pix(tens).max() > 9
            or pix(hundreds).max() > 9 or pix(value).max() > 255):
        _raise_value_error(c[_PAD:], pix(seps), pix(length), pix(units), pix(tens), pix(hundreds),
                           pix(value), layout, row0)
    return pix(value).astype(np.uint8)


def _square_count(count: int, layout: _Layout, row: int) -> int:
    side = math.isqrt(max(count, 0))
    if side * side != count or side < 2:
        raise _fail(layout.path, row, "Image", f"the S*S pixel values of a square image "
                    f"({KAGGLE_IMAGE_SIZE ** 2} for {KAGGLE_IMAGE_SIZE}x{KAGGLE_IMAGE_SIZE})", f"{count}")
    return count


def _raise_count_error(per_line: np.ndarray, expected: int, layout: _Layout, row0: int) -> None:
    r = int(np.flatnonzero(per_line != expected)[0])
    side = math.isqrt(expected)
    raise _fail(layout.path, row0 + r, "Image", f"{expected} pixel values ({side}x{side})", f"{per_line[r]}")


def _raise_value_error(c: np.ndarray, seps: np.ndarray, length: np.ndarray, units: np.ndarray,
                       tens: np.ndarray, hundreds: np.ndarray, value: np.ndarray, layout: _Layout,
                       row0: int) -> None:
    """Name the first bad pixel value; all arrays [r, P] (one row per line)."""
    bad = ((length < 1) | (length > 3) | (units > 9) | (tens > 9) | (hundreds > 9) | (value > 255))
    r, j = (int(i[0]) for i in np.nonzero(bad))
    end = int(seps[r, j])
    token = bytes(c[end - int(length[r, j]):end]).decode("utf-8", "replace") if length[r, j] > 0 else ""
    raise _fail(layout.path, row0 + r, "Image", "integers 0..255 separated by single spaces",
                f"{token!r} as value {j + 1}")


def _numbers(path: Path, frame: pd.DataFrame, row0: int = 1) -> np.ndarray:
    """float32 [N, C] from a frame of strings; empty (or NaN/NA) = missing, else a number."""
    out = np.empty(frame.shape, np.float32)
    for j, name in enumerate(frame.columns):
        text = frame[name].str.strip()
        num = pd.to_numeric(text, errors="coerce")
        bad = np.flatnonzero(num.isna().to_numpy() & ~text.str.lower().isin(["", "nan", "na"]).to_numpy())
        if bad.size:
            r = int(bad[0])
            raise _fail(path, row0 + r, str(name), "a number or an empty field (missing)", repr(text.iloc[r]))
        out[:, j] = num.to_numpy(np.float32)
    return out


def _read_prefixes(layout: _Layout, prefixes: bytes, n: int) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Keypoints float32 [N, K, 2] (NaN when missing) and ImageIds (test.csv) from the prefixes."""
    frame = pd.read_csv(io.BytesIO(prefixes), header=None, names=list(layout.prefix), dtype=str,
                        keep_default_na=False, na_filter=False)
    if layout.schema is None:
        ids = tuple(frame["ImageId"].str.strip())
        return np.full((n, KAGGLE15.num_keypoints, 2), np.nan, np.float32), ids
    return _numbers(layout.path, frame).reshape(n, -1, 2), None


def _read_kaggle(path: Path, raw: bytes) -> tuple[_Layout, np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Parse a Kaggle-layout file held in memory.

    Returns: layout, pixels uint8 [N, P], keypoints float32 [N, K, 2], ImageIds or None.
    """
    blocks = _lines(_prefetch(_text_pieces(path, raw)))
    pixels, prefixes, row0, expected = [], [], 1, None
    try:
        first = next(blocks, b"")
        if not first.strip():
            raise _fail(path, 0, "", "a CSV header line", "an empty file")
        cut = first.find(b"\n") + 1
        layout = _layout(path, first[:cut])
        if layout.kind != "kaggle":
            raise _fail(path, 0, "Image", "the Kaggle layout here", "an image-folder header")
        for block in _chain(first[cut:], blocks):
            pix, prefix = _parse_block(np.frombuffer(block, np.uint8), layout, row0, expected)
            pixels.append(pix)
            prefixes.append(prefix)
            expected = pix.shape[1]
            row0 += len(pix)
    except _Truncated as exc:  # rows before row0 were whole; the stream ended inside row0
        expected_text, got = str(exc).split("|")
        raise _fail(path, row0, "", expected_text, got) from None
    if not pixels:
        raise _fail(path, 1, "", "at least one data row after the header", "none")
    pix = np.concatenate(pixels)
    keypoints, ids = _read_prefixes(layout, b"".join(prefixes), len(pix))
    return layout, pix, keypoints, ids


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


# --- image-folder layout -------------------------------------------------------------------------


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
        raise _fail(path, row, column, f"a file name inside {root}", repr(name))
    file = root / rel
    if not file.resolve().is_relative_to(root.resolve()):  # a symlink that points outside
        raise _fail(path, row, column, f"a file name inside {root}", repr(name))
    if not file.is_file():
        raise _fail(path, row, column, f"an image file in {root}", f"{name!r} (no such file)")
    return file


def _load_image(path: Path, row: int, column: str, file: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey uint8 [size, size] and the original (width, height)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            grey = im.convert("L")
            original = grey.size
            grey = grey.resize((size, size), Image.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _fail(path, row, column, "a readable image file", f"{file.name!r} ({exc})") from None
    return np.asarray(grey, np.uint8), original


def _folder_files(path: Path, text: bytes, layout: _Layout, image_dir: str | Path | None
                  ) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Checked image paths, keypoints float32 [N, K, 2] in original pixels, and the names."""
    frame = pd.read_csv(io.BytesIO(text), dtype=str, keep_default_na=False, na_filter=False)
    if frame.empty:
        raise _fail(path, 1, layout.columns[0] or "1 (image name)", "at least one data row after the header", "none")
    names = tuple(frame.iloc[:, 0].str.strip())
    column = layout.columns[0] or "1 (image name)"
    root = _image_root(path, names[0], image_dir)
    files = [_image_file(path, root, r + 1, column, n) for r, n in enumerate(names)]
    keypoints = _numbers(path, frame.iloc[:, 1:]).reshape(len(frame), -1, 2)
    return files, keypoints, names


def _read_folder(path: Path, layout: _Layout, files: list[Path], keypoints: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 1, size, size] and keypoints scaled to them (float32 [N, K, 2])."""
    column = layout.columns[0] or "1 (image name)"
    # Decoding releases the GIL, so a few threads overlap file reads and JPEG decoding.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        loaded = list(pool.map(lambda rf: _load_image(path, rf[0] + 1, column, rf[1], size), enumerate(files)))
    images = np.stack([im for im, _ in loaded])[:, None]
    wh = np.array([orig for _, orig in loaded], np.float32)[:, None, :]   # [N, 1, 2]
    # Resizing maps pixel areas: the centre x of a source pixel goes to (x + 0.5) * size / W - 0.5.
    return images, ((keypoints + 0.5) * (size / wh) - 0.5).astype(np.float32)


def _folder_digest(text: bytes, files: list[Path]) -> str:
    """sha256 of the CSV and of every image file (name and bytes): the folder's content."""
    h = hashlib.sha256(text)
    for file in files:
        h.update(file.name.encode() + b"\0")
        h.update(file.read_bytes())
    return h.hexdigest()


# --- the cache -------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$FKD_CACHE_DIR, else $XDG_CACHE_HOME/fkd-sweep, else ~/.cache/fkd-sweep."""
    if os.environ.get("FKD_CACHE_DIR"):
        return Path(os.environ["FKD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fkd-sweep"


@dataclass(frozen=True)
class _Cache:
    """Parsed arrays in <dir>/<sha256>-s<size>-v<version>.npz. A small stat index (size, mtime)
    per path lets a repeated load skip even hashing the file, as git's index does."""

    root: Path

    def entry(self, digest: str, size: int) -> Path:
        return self.root / f"{digest}-s{size}-v{_CACHE_VERSION}.npz"

    def _index(self, path: Path) -> Path:
        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
        return self.root / "index" / f"{key}.json"

    @staticmethod
    def _stat(path: Path) -> list[int]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]

    def known_digest(self, path: Path) -> str | None:
        try:
            saved = json.loads(self._index(path).read_text())
        except (OSError, ValueError):
            return None
        return saved.get("sha256") if saved.get("stat") == self._stat(path) else None

    def remember(self, path: Path, digest: str) -> None:
        _try_write(self._index(path), json.dumps({"stat": self._stat(path), "sha256": digest}).encode())

    def load(self, digest: str, size: int, source: str) -> KeypointData | None:
        try:
            with np.load(self.entry(digest, size), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                images, keypoints = torch.from_numpy(z["images"]), torch.from_numpy(z["keypoints"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None  # absent or damaged: parse again
        ids = tuple(meta["image_ids"]) if meta["image_ids"] is not None else None
        return KeypointData(images, keypoints, _schema_from(meta["schema"]), source, digest, False, ids)

    def save(self, data: KeypointData) -> None:
        meta = {"schema": _schema_to(data.schema), "image_ids": data.image_ids}
        buf = io.BytesIO()
        np.savez(buf, images=data.images.numpy(), keypoints=data.keypoints.numpy(), meta=np.array(json.dumps(meta)))
        _try_write(self.entry(data.content_hash, data.images.shape[-1]), buf.getvalue())


def _atomic_write(target: Path, payload: bytes) -> None:
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


def _try_write(target: Path, payload: bytes) -> None:
    """A cache write: a read-only or full cache dir costs speed next time, never the load."""
    try:
        _atomic_write(target, payload)
    except OSError as exc:
        print(f"fkd_core.data: not cached ({exc})", file=sys.stderr)


def _schema_to(schema: Schema) -> dict:
    return {"name": schema.name, "keypoints": list(schema.keypoints),
            "flip_pairs": [list(p) for p in schema.flip_pairs], "norm_pair": schema.norm_pair}


def _schema_from(d: dict) -> Schema:
    norm = tuple(d["norm_pair"]) if d["norm_pair"] is not None else None
    schema = Schema(d["name"], tuple(d["keypoints"]), tuple(tuple(p) for p in d["flip_pairs"]), norm)
    return KAGGLE15 if schema == KAGGLE15 else schema  # the registry's object, as a parse gives


# --- loading ---------------------------------------------------------------------------------------


def _resize(images: np.ndarray, keypoints: np.ndarray, size: int) -> tuple[Tensor, Tensor]:
    """Kaggle images (uint8 [N, 1, S0, S0]) to size x size, keypoints scaled to match."""
    img, kp = torch.from_numpy(images), torch.from_numpy(keypoints)
    s0 = img.shape[-1]
    if s0 == size:
        return img, kp
    out = torch.nn.functional.interpolate(img.float(), size=(size, size), mode="bilinear",
                                          align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8), (kp + 0.5) * (size / s0) - 0.5


def _header_line(path: Path, raw: bytes) -> bytes:
    """The first line of the file's text (decompressing only the start)."""
    pieces = _text_pieces(path, raw)
    head = b""
    try:
        for piece in pieces:
            head += piece
            if b"\n" in head or len(head) > 1 << 20:
                break
    except _Truncated as exc:
        expected, got = str(exc).split("|")
        raise _fail(path, 0 if b"\n" not in head else 1, "", expected, got) from None
    finally:
        if hasattr(pieces, "close"):
            pieces.close()
    if not head.strip():
        raise _fail(path, 0, "", "a CSV header line", "an empty file")
    return head.split(b"\n", 1)[0] + b"\n"


def _kaggle_data(path: Path, source: str, raw: bytes, digest: str, size: int) -> KeypointData:
    layout, pixels, keypoints, ids = _read_kaggle(path, raw)
    side = math.isqrt(pixels.shape[1])
    images, kp = _resize(pixels.reshape(-1, 1, side, side), keypoints, size)
    return KeypointData(images, kp, layout.schema or KAGGLE15, source, digest, False, ids)


def _folder_data(path: Path, source: str, layout: _Layout, files: list[Path],
                 keypoints: np.ndarray, names: tuple[str, ...], digest: str, size: int) -> KeypointData:
    images, kp = _read_folder(path, layout, files, keypoints, size)
    return KeypointData(torch.from_numpy(images), torch.from_numpy(kp), layout.schema, source, digest,
                        False, names)


def _existing(source: str) -> Path:
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: expected a data file (.csv, .csv.gz, .zip) or one of "
                        f"{list(SYNTHETIC_SOURCES)}, got {'a folder' if path.is_dir() else 'no such file'}")
    return path


def load_dataset(source: str, *, image_size: int = 96, cache_dir: str | None = None,
                 synth_n: int = 2000, synth_seed: int = 0, synth_pose: float = 1.0,
                 image_dir: str | None = None, cache: bool = True) -> KeypointData:
    """Load a data set (see the module docstring for the sources).

    Args:
        source: a Kaggle-layout or image-folder CSV path, "synthetic" or "synthetic-missing".
        image_size: side S of the returned images; keypoints are scaled to it.
        cache_dir: where parsed files are cached (default: default_cache_dir()).
        synth_n, synth_seed, synth_pose: the synthetic generator's knobs.
        image_dir: the image-folder layout's folder (default: next to the CSV, see _image_root).
        cache: False reads the file again without touching the cache.

    Returns:
        KeypointData with images uint8 [N, 1, S, S] and keypoints float32 [N, K, 2].

    Raises:
        DataError: one line naming the file, row, column and what was expected.
    """
    if source in SYNTHETIC_SOURCES:
        return _synthetic(source, synth_n, synth_seed, synth_pose, image_size)
    path = _existing(source)
    store = _Cache(Path(cache_dir) if cache_dir else default_cache_dir()) if cache else None
    known = store.known_digest(path) if store else None
    if known and (hit := store.load(known, image_size, source)):
        return _mark_synthetic(path, hit)
    raw = path.read_bytes()
    layout = _layout(path, _header_line(path, raw))
    if layout.kind == "kaggle":
        digest = hashlib.sha256(raw).hexdigest()
        build = lambda: _kaggle_data(path, source, raw, digest, image_size)
    else:
        text = b"".join(_text_pieces(path, raw))
        files, keypoints, names = _folder_files(path, text, layout, image_dir)
        digest = _folder_digest(text, files)
        build = lambda: _folder_data(path, source, layout, files, keypoints, names, digest, image_size)
    data = store.load(digest, image_size, source) if store else None
    if data is None:
        data = build()
        if store:
            store.save(data)
    if store and layout.kind == "kaggle":  # a folder's images can change behind its CSV's back
        store.remember(path, digest)
    return _mark_synthetic(path, data)


def synthetic_marker(path: str | Path) -> Path:
    """The sidecar that `python -m fkd_core.synth` writes next to a CSV of synthetic faces, so
    that a file of generated faces is still labelled synthetic when read back."""
    path = Path(path)
    return path.with_name(path.name + ".synthetic.json")


def _mark_synthetic(path: Path, data: KeypointData) -> KeypointData:
    return replace(data, synthetic=True) if synthetic_marker(path).is_file() else data



def load_test_images(path: str, *, cache_dir: str | None = None, image_size: int = 96) -> KeypointData:
    """Kaggle test.csv (ImageId, Image): images with image_ids, keypoints all NaN [N, 15, 2].

    A training file is accepted too (its keypoints are kept), so that a model can be run on it.
    """
    return load_dataset(path, image_size=image_size, cache_dir=cache_dir)


def load_for_config(cfg: TrialConfig, *, cache_dir: str | None = None) -> KeypointData:
    """The data set of a trial: cfg.data with the synthetic knobs. The missing-keypoint policy
    and the split are applied by the trainer (they depend on the split)."""
    return load_dataset(cfg.data, cache_dir=cache_dir, synth_n=cfg.synth_n,
                        synth_seed=cfg.synth_seed, synth_pose=cfg.synth_pose)


# --- missing keypoints and splits ------------------------------------------------------------------


def forward_fill(values: Tensor) -> Tensor:
    """Replace each NaN of values [N, ...] by the last finite value above it in the same column
    (pandas' ffill over rows); NaNs before the first finite value stay NaN."""
    flat = values.reshape(len(values), -1)
    rows = torch.arange(len(values)).unsqueeze(1).expand_as(flat)
    source_row = torch.where(torch.isfinite(flat), rows, 0).cummax(dim=0).values
    return flat.gather(0, source_row).reshape(values.shape)


def apply_missing(data: KeypointData, policy: str) -> KeypointData:
    """The missing-keypoint policy.

    "mask": unchanged; losses and metrics skip the NaN keypoints (correct).
    "ffill": the study's forward fill over the file's rows, per coordinate column: every missing
        value becomes the previous row's, so one face's eyebrows land on thousands of others.
    "drop": only the rows where all K keypoints are present.
    """
    if policy == "mask":
        return data
    if policy == "ffill":
        return replace(data, keypoints=forward_fill(data.keypoints))
    if policy == "drop":
        return data.subset(data.complete_mask())
    raise ValueError(f"Unknown missing policy {policy!r}; valid: {list(MISSING_POLICIES)}")


def split_indices(n: int, val_fraction: float, seed: int, mode: str = "shuffle"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices, each sorted; at least one row in each.

    "shuffle": a seeded random draw of round(n * val_fraction) validation rows (correct).
    "tail": the file's last rows, the study's defect (its tail also held augmented copies).
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"Unknown split mode {mode!r}; valid: {list(SPLIT_MODES)}")
    if n < 2 or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"split_indices needs n >= 2 and 0 < val_fraction < 1, got n={n}, {val_fraction}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    if mode == "tail":
        return np.arange(n - n_val), np.arange(n - n_val, n)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# --- writing the Kaggle layout ---------------------------------------------------------------------


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
    _atomic_write(path, payload)
    return path


# --- describe (CLI) --------------------------------------------------------------------------------


def describe(data: KeypointData) -> dict:
    """Summary of a data set: rows, keypoints, complete rows, presence per keypoint, pixels."""
    present = torch.isfinite(data.keypoints).all(dim=2).sum(dim=0).tolist()
    return {
        "source": data.source,
        "synthetic": data.synthetic,
        "content_hash": data.content_hash,
        "schema": data.schema.name,
        "rows": len(data),
        "keypoints": data.schema.num_keypoints,
        "complete_rows": int(data.complete_mask().sum()),
        "present_per_keypoint": dict(zip(data.schema.keypoints, present)),
        "image_size": list(data.images.shape[-2:]),
        "pixel_range": [int(data.images.min()), int(data.images.max())] if len(data) else [],
    }


def cache_status(source: str, cache_dir: str | None = None, image_size: int = 96) -> str:
    """"hit", "miss" or "n/a" (synthetic data is generated in memory, never cached)."""
    if source in SYNTHETIC_SOURCES:
        return "n/a (synthetic, generated in memory)"
    store = _Cache(Path(cache_dir) if cache_dir else default_cache_dir())
    path = Path(source)
    if path.is_file():
        digest = store.known_digest(path) or hashlib.sha256(path.read_bytes()).hexdigest()
        if store.entry(digest, image_size).is_file():
            return f"hit ({store.entry(digest, image_size)})"
    return f"miss (parsed now, cached under {store.root})"


def _print_text(info: dict) -> None:
    label = "SYNTHETIC faces" if info["synthetic"] else "file"
    print(f"{label}: {info['source']}  (sha256 {info['content_hash'][:16]}...)")
    print(f"rows: {info['rows']}   keypoints: {info['keypoints']} ({info['schema']})   "
          f"complete rows: {info['complete_rows']}")
    print(f"image size: {info['image_size'][0]}x{info['image_size'][1]}   pixel range: {info['pixel_range']}")
    print(f"cache: {info['cache']}")
    print("present per keypoint:")
    width = max(len(k) for k in info["present_per_keypoint"])
    for name, count in info["present_per_keypoint"].items():
        print(f"  {name:<{width}}  {count}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fkd_core.data", description="Inspect keypoint data sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="rows, keypoints, presence, pixel range, cache status")
    d.add_argument("path", help="Kaggle CSV (.csv/.csv.gz/.zip), image-folder CSV, or 'synthetic'")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.add_argument("--cache", default=None, help="cache folder (default: $FKD_CACHE_DIR or ~/.cache/fkd-sweep)")
    d.add_argument("--images", default=None, help="image folder of an image-folder CSV")
    d.add_argument("--image-size", type=int, default=96, help="side of the network input")
    args = parser.parse_args(argv)
    try:
        status = cache_status(args.path, args.cache, args.image_size)
        data = load_dataset(args.path, image_size=args.image_size, cache_dir=args.cache, image_dir=args.images)
    except DataError as exc:  # users get the one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = describe(data) | {"cache": status}
    if args.json:
        print(json.dumps(info))
    else:
        _print_text(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
