"""Read a sweep's Parquet results and group its trials: phases, cells, arms, α levels.

    python -m sweep.analyze results/<name>                 # writes report.md + fig*.png there
    python -m sweep.analyze s3://bucket/runs/<name> --out analysis/<name>

Reads only ``trials.parquet`` and ``epochs.parquet`` (local, s3:// or gs:// through pyarrow's
filesystems) and, for the prediction figures, the best checkpoints when they are reachable.
The decision lives in sweep.verdicts, the figures in sweep.figures, the text in sweep.report.
How trials are grouped into phases, cells and arms: sweep.tables.
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from sweep.report import build_report
from sweep.settings import SWEEP_FILE, UsageError, first_line, read_json
from sweep.store import DamagedResults, read_results

# What analyze needs of a sweep.json: an object with a 'space' object (its search parameters).
SAVED_SHAPE = "a JSON object with a 'space' object, as sweep.run writes it"


def read_parquet(root: str, name: str) -> pd.DataFrame:
    """root/name (trials.parquet, epochs.parquet) as a DataFrame, its parts included
    (sweep.store.read_results); root is a folder or an s3:// / gs:// URI."""
    table = read_results(root, name)
    if table is None:
        # filename set: the CLI names the file (sweep.analyze.main)
        raise FileNotFoundError(errno.ENOENT, "no such file, nor parts of it", f"{root.rstrip('/')}/{name}")
    return table.to_pandas()


def analyze(root: str, out: str | None = None) -> Path:
    """Read root's Parquet results, write report.md and figures into out; return report path."""
    return analyze_with_verdicts(root, out)[0]


def analyze_with_verdicts(root: str, out: str | None = None) -> tuple[Path, str]:
    """analyze(), plus the verdict lines the CLI prints (one per cell, or why there are none)."""
    trials = read_parquet(root, "trials.parquet")
    epochs = read_parquet(root, "epochs.parquet")
    settings = read_settings(root)
    out_dir = Path(out) if out else default_out(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.md"
    text, tables, verdicts = build_report(trials, epochs, root, out_dir, settings)
    report.write_text(text)
    for name, table in tables.items():   # the tables' numbers, machine-readable
        table.to_csv(out_dir / f"{name}.csv", index=False)
    return report, verdicts


def read_settings(root: str) -> dict[str, Any]:
    """sweep.json of the results folder ({} when absent: files copied without it)."""
    uri = f"{root.rstrip('/')}/{SWEEP_FILE}"
    try:
        settings = read_json(uri, expected=SAVED_SHAPE)
    except UsageError as exc:   # analyze's own error class: its CLI reports these, not usage
        raise ResultsError(str(exc)) from None
    if settings is None:
        return {}
    if not isinstance(settings.get("space", {}), dict):
        raise ResultsError(f"{uri}: expected {SAVED_SHAPE}")
    return settings


class ResultsError(ValueError):
    """A results folder analyze cannot read; the message is one line naming the file."""


def default_out(root: str) -> Path:
    """Next to the results when they are local; ./analysis/<name> for a bucket."""
    if "://" in root:
        return Path("analysis") / Path(root.rstrip("/")).name
    return Path(root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sweep.analyze",
        description="Write report.md and figures from a sweep's trials.parquet / epochs.parquet.")
    parser.add_argument("results", help="results folder: local path, s3://... or gs://...")
    parser.add_argument("--out", help="where report.md and the figures go "
                        "(default: the results folder; ./analysis/<name> for a bucket)")
    args = parser.parse_args(argv)
    try:
        report, verdicts = analyze_with_verdicts(args.results, args.out)
    except FileNotFoundError as exc:   # an empty folder, a typo, a sweep that wrote nothing yet
        where = exc.filename or first_line(exc)
        print(f"sweep.analyze: error: {where}: no such file; {args.results} is not a sweep's "
              "results folder (python -m sweep.run writes trials.parquet and epochs.parquet "
              "there)", file=sys.stderr)
        return 2
    except ValueError as exc:
        if not isinstance(exc, (DamagedResults, ResultsError)):
            raise
        print(f"sweep.analyze: error: {exc}", file=sys.stderr)
        return 2
    print(verdicts)
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
