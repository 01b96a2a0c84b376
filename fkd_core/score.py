"""Score a Kaggle submission against its solution: the competition's metric, RMSE in pixels.

    python -m fkd_core.score --submission submission.csv --solution data/synthetic/solution.csv

submission.csv: RowId,Location (what ``python -m fkd_core.predict --lookup`` writes);
solution.csv: RowId,Location, the true locations (``python -m fkd_core.synth --test N`` writes
one next to its test.csv). Every RowId of the solution must be in the submission, once, and
no other; both files are UTF-8 CSV, quoted fields allowed.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_core.encoding import text_problem

COLUMNS = ("RowId", "Location")
# Below this, squares and their mean stay finite in float64 (1e150^2 = 1e300 < 1.8e308): the
# plain formula, exact as before; above it the values are scaled first.
_PLAIN_LIMIT = 1e150


def read_locations(path: str | Path) -> pd.Series:
    """Location by RowId from a Kaggle CSV (UTF-8; fields may be quoted); each RowId once.

    Raises a one-line ValueError naming the file, the row (the file's line: the header is row
    1) and the column.
    """
    table = _read_table(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: row 1 (header): expected columns {list(COLUMNS)}, missing {missing}")
    if table.empty:
        raise ValueError(f"{path}: expected at least one row after the header, got none")
    ids = table["RowId"].astype(str)
    again = ids.duplicated()
    if again.any():
        r = int(np.flatnonzero(again)[0])
        first = int(np.flatnonzero(ids == ids.iloc[r])[0])
        raise ValueError(f"{path}: row {r + 2}, column RowId: expected each RowId once, got {ids.iloc[r]!r} "
                         f"again (first at row {first + 2})")
    values = pd.to_numeric(table["Location"], errors="coerce")
    bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
    if len(bad):
        raise ValueError(f"{path}: row {bad[0] + 2}, column Location: expected a number, got "
                         f"{table['Location'].iloc[bad[0]]!r}")
    return pd.Series(values.to_numpy(dtype=float), index=ids)


def _read_table(path: str | Path) -> pd.DataFrame:
    """The CSV as strings; a file that is not UTF-8 text, empty or ragged is one line naming it."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if problem := text_problem(path, head):
        raise ValueError(problem)
    if not head.strip():
        raise ValueError(f"{path}: header: expected columns {','.join(COLUMNS)}, got an empty file")
    try:
        return pd.read_csv(path, dtype={"RowId": str, "Location": str}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:   # pandas names no file
        raise ValueError(f"{path}: {(str(err).strip().splitlines() or [type(err).__name__])[0]}") from None


def rmse(submission: pd.Series, solution: pd.Series, submission_name: str = "submission",
         solution_name: str = "solution") -> float:
    """sqrt(mean over the solution's rows of (submitted - true)^2), pixels.

    Every RowId of the solution must be submitted, and no other. Values too large to square
    (a submitted 1e308) are scaled first, so the result is finite whenever it can be; an error
    beyond the largest float is refused, naming its row.
    """
    absent = solution.index.difference(submission.index)
    if len(absent):
        raise ValueError(f"{submission_name}: column RowId: {len(absent)} RowIds of the solution are "
                         f"missing, e.g. {absent[0]}")
    unknown = ~submission.index.isin(solution.index)
    if unknown.any():
        r = int(np.flatnonzero(unknown)[0])
        raise ValueError(f"{submission_name}: row {r + 2}, column RowId: expected a RowId of the solution "
                         f"({solution_name}), got {submission.index[r]!r}")
    got, true = submission.loc[solution.index].to_numpy(), solution.to_numpy()
    scale = max(float(np.abs(got).max()), float(np.abs(true).max()))
    if scale < _PLAIN_LIMIT:
        return math.sqrt(float(np.mean((got - true) ** 2)))
    scaled = got / scale - true / scale
    value = scale * math.sqrt(float(np.mean(scaled ** 2)))
    if not math.isfinite(value):
        k = int(np.argmax(np.abs(scaled)))
        r = submission.index.get_loc(solution.index[k])
        raise ValueError(f"{submission_name}: row {r + 2}, column Location: expected a location in pixels, got "
                         f"{got[k]:g} for {true[k]:g} (an error beyond the largest float, {sys.float_info.max:.2g})")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fkd_core.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--submission", required=True, help="RowId,Location")
    p.add_argument("--solution", required=True, help="RowId,Location with the true values")
    args = p.parse_args(argv)
    try:
        value = rmse(read_locations(args.submission), solution := read_locations(args.solution),
                     args.submission, args.solution)
    except (ValueError, OSError) as exc:
        print(f"score: error: {exc}", file=sys.stderr)
        return 2
    shown = f"{value:.4f}" if value < 1e6 else f"{value:.4g}"   # not 300 digits for a huge error
    print(f"RMSE {shown} px over {len(solution)} locations ({args.submission} vs {args.solution})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
