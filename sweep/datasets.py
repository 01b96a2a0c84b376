"""The data sets of a space: each loaded once and checked before Ray starts.

    from sweep.datasets import load_or_fail
    from sweep.spaces import get_space
    data_sets = load_or_fail(get_space("quick"))   # {data_key: KeypointData}; UsageError if unusable
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweep.settings import UsageError, first_line
from sweep.spaces import Space, data_key

if TYPE_CHECKING:
    from sweep.results import DataInfo


def load_data(space: Space) -> dict[str, Any]:
    """Each distinct data set of the space, loaded once, keyed by data_key."""
    from fkd_core.data import load_for_config   # torch: not for sweep.run --help

    return {data_key(cfg): load_for_config(cfg) for cfg in space.data_configs()}


def data_info(data_sets: dict[str, Any]) -> dict[str, DataInfo]:
    """What trials.parquet records of each data set: source, content hash, synthetic or not."""
    from sweep.results import DataInfo   # ray.tune and torch: not for sweep.run --help

    return {k: DataInfo(d.source, d.content_hash, bool(d.synthetic)) for k, d in data_sets.items()}


def load_or_fail(space: Space) -> dict[str, Any]:
    """load_data, with every problem that would fail each trial raised once as a UsageError."""
    from fkd_core.data import DataError

    try:
        data_sets = load_data(space)
    except (DataError, FileNotFoundError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    for d in data_sets.values():   # every trial would fail on it: say so once, before Tune starts
        if not d.keypoints.isfinite().all(dim=-1).any():
            raise UsageError(f"{d.source}: no keypoint is present in any of its {len(d)} rows")
    check_splits(space, data_sets)
    return data_sets


def check_splits(space: Space, data_sets: dict[str, Any]) -> None:
    """Every split the space's trials would draw, drawn once here: a data set whose split cannot
    be formed (one person only, too few rows, no keypoint on one side) is one line before Ray
    starts, not an error in every trial. The split does not depend on the trial seed."""
    from fkd_core.config import TrialConfig
    from fkd_core.data import DataError
    from fkd_core.train import split_rows

    for picks in space.combos():
        cfg = TrialConfig(**space.fields(picks, seed=0))
        try:
            split_rows(data_sets[data_key(cfg)], cfg)
        except (DataError, ValueError) as err:
            raise UsageError(first_line(err)) from None

