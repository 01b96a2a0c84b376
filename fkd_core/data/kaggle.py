"""The Kaggle layout's reader: keypoint columns, then Image (S*S space-separated ints), parsed
block by block with vectorised numpy (no per-row Python), or a test.csv's ImageId,Image."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_core.data import streams
from fkd_core.data.errors import Truncated, fail
from fkd_core.data.layout import Layout, classify
from fkd_core.data.values import check_near_image, numbers
from fkd_core.schema import KAGGLE15

KAGGLE_IMAGE_SIZE = 96

_ZERO = np.uint8(48)
_SPACE = np.uint8(32)
_PAD = 3  # a pixel token has at most 3 digits


def _line_bounds(b: np.ndarray, layout: Layout, row0: int) -> tuple[np.ndarray, np.ndarray]:
    """Per line of the block b (uint8 [M]): offset where Image starts, offset of the line end."""
    nl = np.flatnonzero(b == 10)
    commas = np.flatnonzero(b == 44)
    per_line = np.diff(np.searchsorted(commas, nl), prepend=0)
    want = len(layout.columns) - 1
    bad = np.flatnonzero(per_line != want)
    if bad.size:
        r = int(bad[0])
        raise fail(layout.path, row0 + r, "", f"{want + 1} comma-separated fields "
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


def _parse_block(b: np.ndarray, layout: Layout, row0: int, expected: int | None) -> tuple[np.ndarray, bytes]:
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


def _parse_pixels(c: np.ndarray, nl: np.ndarray, expected: int | None, layout: Layout,
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


def _square_count(count: int, layout: Layout, row: int) -> int:
    side = math.isqrt(max(count, 0))
    if side * side != count or side < 2:
        raise fail(layout.path, row, "Image", f"the S*S pixel values of a square image "
                   f"({KAGGLE_IMAGE_SIZE ** 2} for {KAGGLE_IMAGE_SIZE}x{KAGGLE_IMAGE_SIZE})", f"{count}")
    return count


def _raise_count_error(per_line: np.ndarray, expected: int, layout: Layout, row0: int) -> None:
    r = int(np.flatnonzero(per_line != expected)[0])
    side = math.isqrt(expected)
    raise fail(layout.path, row0 + r, "Image", f"{expected} pixel values ({side}x{side})", f"{per_line[r]}")


def _raise_value_error(c: np.ndarray, seps: np.ndarray, length: np.ndarray, units: np.ndarray,
                       tens: np.ndarray, hundreds: np.ndarray, value: np.ndarray, layout: Layout,
                       row0: int) -> None:
    """Name the first bad pixel value; all arrays [r, P] (one row per line)."""
    bad = ((length < 1) | (length > 3) | (units > 9) | (tens > 9) | (hundreds > 9) | (value > 255))
    r, j = (int(i[0]) for i in np.nonzero(bad))
    end = int(seps[r, j])
    token = bytes(c[end - int(length[r, j]):end]).decode("utf-8", "replace") if length[r, j] > 0 else ""
    raise fail(layout.path, row0 + r, "Image", "integers 0..255 separated by single spaces",
               f"{token!r} as value {j + 1}")


def _read_prefixes(layout: Layout, prefixes: bytes, n: int) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Keypoints float32 [N, K, 2] (NaN when missing) and ImageIds (test.csv) from the prefixes."""
    frame = pd.read_csv(io.BytesIO(prefixes), header=None, names=list(layout.prefix), dtype=str,
                        keep_default_na=False, na_filter=False)
    if layout.schema is None:
        ids = tuple(frame["ImageId"].str.strip())
        return np.full((n, KAGGLE15.num_keypoints, 2), np.nan, np.float32), ids
    return numbers(layout.path, frame).reshape(n, -1, 2), None


def _unquoted(block: bytes) -> bytes:
    """The block without CSV quotes. A writer that quotes every field (csv.QUOTE_ALL) wraps each
    value in quotes; no value of this layout holds a comma, a quote or a line break, so the
    fields are the same without them (a quoted comma still fails the field count, in one line)."""
    return block.replace(b'"', b"") if b'"' in block else block


def read_kaggle(path: Path, raw: bytes) -> tuple[Layout, np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Parse a Kaggle-layout file held in memory.

    Returns: layout, pixels uint8 [N, P], keypoints float32 [N, K, 2], ImageIds or None.
    """
    blocks = streams.lines(streams.prefetch(streams.text_pieces(path, raw)))
    pixels, prefixes, row0, expected = [], [], 1, None
    try:
        first = next(blocks, b"")
        if not first.strip():
            raise fail(path, 0, "", "a CSV header line", "an empty file")
        cut = first.find(b"\n") + 1
        layout = classify(path, first[:cut])
        if layout.kind != "kaggle":
            raise fail(path, 0, "Image", "the Kaggle layout here", "an image-folder header")
        for block in streams.chain(first[cut:], blocks):
            pix, prefix = _parse_block(np.frombuffer(_unquoted(block), np.uint8), layout, row0, expected)
            pixels.append(pix)
            prefixes.append(prefix)
            expected = pix.shape[1]
            row0 += len(pix)
    except Truncated as exc:  # rows before row0 were whole; the stream ended inside row0
        expected_text, got = str(exc).split("|")
        raise fail(path, row0, "", expected_text, got) from None
    if not pixels:
        raise fail(path, 1, "", "at least one data row after the header", "none")
    pix = np.concatenate(pixels)
    keypoints, ids = _read_prefixes(layout, b"".join(prefixes), len(pix))
    side = math.isqrt(pix.shape[1])
    check_near_image(path, keypoints, side, side, layout.prefix)
    return layout, pix, keypoints, ids
