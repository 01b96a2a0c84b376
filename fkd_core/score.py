"""Score a Kaggle submission against its solution: the competition's metric, RMSE in pixels.

    python -m fkd_core.score --submission submission.csv --solution data/synthetic/solution.csv

submission.csv: RowId,Location (what ``python -m fkd_core.predict --lookup`` writes);
solution.csv: RowId,Location, the true locations (``python -m fkd_core.synth --test N`` writes
one next to its test.csv). Every RowId of the solution must be in the submission.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("RowId", "Location")


def read_locations(path: str | Path) -> pd.Series:
    """Location by RowId from a Kaggle CSV; one-line ValueError naming file, row and column."""
    table = pd.read_csv(path, dtype={"RowId": str, "Location": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: row 1 (header): expected columns {list(COLUMNS)}, missing {missing}")
    values = pd.to_numeric(table["Location"], errors="coerce")
    bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
    if len(bad):
        raise ValueError(f"{path}: row {bad[0] + 2}, column Location: expected a number, got "
                         f"{table['Location'].iloc[bad[0]]!r}")
    return pd.Series(values.to_numpy(dtype=float), index=table["RowId"].astype(str))


def rmse(submission: pd.Series, solution: pd.Series, submission_name: str = "submission") -> float:
    """sqrt(mean over the solution's rows of (submitted - true)^2), pixels."""
    absent = solution.index.difference(submission.index)
    if len(absent):
        raise ValueError(f"{submission_name}: column RowId: {len(absent)} RowIds of the solution are "
                         f"missing, e.g. {absent[0]}")
    diff = submission.loc[solution.index].to_numpy() - solution.to_numpy()
    return math.sqrt(float(np.mean(diff ** 2)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fkd_core.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--submission", required=True, help="RowId,Location")
    p.add_argument("--solution", required=True, help="RowId,Location with the true values")
    args = p.parse_args(argv)
    try:
        value = rmse(read_locations(args.submission), solution := read_locations(args.solution),
                     args.submission)
    except (ValueError, OSError) as exc:
        print(f"score: error: {exc}", file=sys.stderr)
        return 2
    print(f"RMSE {value:.4f} px over {len(solution)} locations ({args.submission} vs {args.solution})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
