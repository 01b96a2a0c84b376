"""Is a file's text UTF-8? The one check the data readers and ``fkd_core.score`` share, kept free
of torch so that score stays a light import.

    >>> text_problem(Path("faces.csv"), "a,b\n".encode("utf-16"))
    'faces.csv: UTF-16 text (expected UTF-8)'

A UTF-16 file read as bytes is ASCII interleaved with NULs: its header would otherwise reach the
user as a column name full of raw NUL bytes.
"""
from __future__ import annotations

from pathlib import Path

_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
         (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))   # UTF-32 LE starts like UTF-16 LE: first


def text_problem(path: str | Path, head: bytes) -> str | None:
    """None when ``head`` (the file's first line or more) is UTF-8 text, else one line naming
    the file and what it is instead: "<file>: UTF-16 text (expected UTF-8)"."""
    kind = _not_utf8(head)
    return None if kind is None else f"{path}: {kind} (expected UTF-8)"


def _not_utf8(head: bytes) -> str | None:
    bom = next((name for mark, name in _BOMS if head.startswith(mark)), None)
    if bom is not None:
        return f"{bom} text"
    if b"\0" in head:   # UTF-16 without a BOM: every other byte of ASCII text is NUL
        even, odd = head[0::2], head[1::2]
        return "UTF-16 text" if min(even.count(0), odd.count(0)) == 0 and max(
            even.count(0), odd.count(0)) >= len(head) // 2 else f"binary data, a NUL byte at offset {head.index(0)}"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.reason != "unexpected end of data":   # not merely a character cut off at the end
            return f"not UTF-8 text: byte 0x{head[err.start]:02x} at offset {err.start}"
    return None
