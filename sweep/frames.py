"""A sweep's results as pandas DataFrames, for notebooks and scripts (no Ray, no torch).

    >>> from sweep import read_frames
    >>> trials, epochs = read_frames("results/fkd-yt15")         # or an s3:// / gs:// URI
    >>> trials.groupby("shape")["best_val_rmse_px"].min()

Each frame is sweep.store.read_results's table of trials.parquet / epochs.parquet (the compacted
file and the parts of a sweep still running, each trial from its newest source) as pandas.
"""
from __future__ import annotations

import errno
from typing import NamedTuple

import pandas as pd

from sweep.store import EPOCHS_FILE, TRIALS_FILE, read_results


class SweepFrames(NamedTuple):
    trials: pd.DataFrame
    """One row per trial: every TrialConfig field, final and best metrics, status, wall time."""
    epochs: pd.DataFrame
    """One row per trial and epoch (empty, with no columns, when the sweep has no epoch rows)."""


def read_frames(results: str) -> SweepFrames:
    """(trials, epochs) of a results folder or URI; FileNotFoundError naming trials.parquet
    when the folder holds neither that file nor parts of it."""
    trials = read_results(results, TRIALS_FILE)
    if trials is None:
        raise FileNotFoundError(errno.ENOENT, "no such file, nor parts of it",
                                f"{results.rstrip('/')}/{TRIALS_FILE}")
    epochs = read_results(results, EPOCHS_FILE)
    return SweepFrames(trials.to_pandas(), pd.DataFrame() if epochs is None else epochs.to_pandas())
