"""The text of a data file: read once, decompressed by suffix (.gz, .zip), cut into pieces of
whole lines, with decompression in a thread so that it overlaps with parsing."""
from __future__ import annotations

import io
import queue
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from fkd_core.data.errors import Truncated, fail

# Decompressed text is parsed in pieces of about this size: big enough that per-piece Python
# overhead is negligible, small enough that the numpy temporaries stay in the CPU cache.
PIECE_BYTES = 1 << 19


def prefetch(items: Iterable[bytes], depth: int = 8) -> Iterator[bytes]:
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


def gunzip(path: Path, raw: bytes) -> Iterator[bytes]:
    """Decompressed pieces of a .gz held in memory (several members allowed)."""
    step = PIECE_BYTES // 4  # compressed input per piece: text is ~4x larger
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
        raise Truncated(f"a valid gzip stream|corrupt data ({exc})") from None
    if not d.eof:
        raise Truncated("a complete gzip stream|a truncated file that ends inside this row")


def unzip(path: Path, raw: bytes) -> Iterator[bytes]:
    """Decompressed pieces of the one .csv inside a zip (Kaggle's training.zip)."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".csv") and not n.startswith("__MACOSX")]
            if len(names) != 1:
                raise fail(path, "archive", "", "exactly one .csv member", f"{names or zf.namelist()}")
            with zf.open(names[0]) as member:
                while piece := member.read(PIECE_BYTES):
                    yield piece
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise fail(path, "archive", "", "a complete zip archive", f"{type(exc).__name__}: {exc}") from None


def text_pieces(path: Path, raw: bytes) -> Iterator[bytes]:
    """The file's text, decompressed by suffix, in pieces of about PIECE_BYTES."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gunzip(path, raw)
    if suffix == ".zip":
        return unzip(path, raw)
    return (raw[i:i + PIECE_BYTES] for i in range(0, len(raw), PIECE_BYTES))


def lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
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


def header_line(path: Path, raw: bytes) -> bytes:
    """The first line of the file's text (decompressing only the start)."""
    pieces = text_pieces(path, raw)
    head = b""
    try:
        for piece in pieces:
            head += piece
            if b"\n" in head or len(head) > 1 << 20:
                break
    except Truncated as exc:
        expected, got = str(exc).split("|")
        raise fail(path, 0 if b"\n" not in head else 1, "", expected, got) from None
    finally:
        if hasattr(pieces, "close"):
            pieces.close()
    if not head.strip():
        raise fail(path, 0, "", "a CSV header line", "an empty file")
    return head.split(b"\n", 1)[0] + b"\n"


def chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest
