"""DataError: every complaint about bad input is one line naming the file, row, column and what
was expected, so that CLIs can print it and exit 2 without a traceback."""
from __future__ import annotations

import stat
from pathlib import Path


class DataError(ValueError):
    """One line for users: '<file>: row R, column C: expected X, got Y'.

    Rows are counted from 1 for the first data line (the header is "header"), so row R is line
    R + 1 of the file.
    """


def fail(path: str | Path, row: int | str, column: str, expected: str, got: str) -> DataError:
    """DataError '<file>: row R, column C: expected X, got Y' (row 0 = the header; a str row
    names another place, e.g. "archive"; an empty column is left out)."""
    where = ["header" if row == 0 else row if isinstance(row, str) else f"row {row}"]
    where += [f"column {column}"] if column else []
    return DataError(f"{path}: {', '.join(where)}: expected {expected}, got {got}")


class Truncated(DataError):
    """A compressed stream that ends early; the reader adds the row where it ends."""


def what_is(path: Path) -> str:
    """What stands at a path that is not a regular file, for a message: "no such file", "a
    folder", or "not a regular file (a FIFO)" (a FIFO must not be opened: reading it blocks)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "no such file"
    if stat.S_ISDIR(mode):
        return "a folder"
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device"}
    kind = next((name for test, name in kinds.items() if test(mode)), "a special file")
    return "a regular file" if stat.S_ISREG(mode) else f"not a regular file ({kind})"
