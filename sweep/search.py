"""The search, as a Python API: Optuna proposes, ASHA stops, every trial lands in Parquet.

    from sweep.datasets import load_data
    from sweep.search import run_sweep
    from sweep.settings import local_settings
    from sweep.spaces import get_space
    s = local_settings(get_space("quick"), "results", "my-study", max_concurrent=2)
    ray.init(); outcome = run_sweep(s, load_data(s.space))   # outcome.trials: trials.parquet

sweep.run is its command line; sweep.confirm follows it with the confirm phase.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pyarrow.fs as pafs

from sweep.datasets import data_info
from sweep.settings import OPTUNA_FILE, SWEEP_FILE, Settings, save_settings
from sweep.spaces import Sampler
from sweep.store import EPOCHS_FILE, TRIALS_FILE, compact, read_results
from sweep.tuning import diverged, trainable, tuner

if TYPE_CHECKING:
    from sweep.guard import WriteGuard
    from sweep.results import DataInfo
    from sweep.trainable import TrainFn


@dataclass
class Outcome:
    settings: Settings
    trials: Any                   # pandas DataFrame of trials.parquet
    fit_seconds: float
    paths: dict[str, str]
    epochs: Any = None            # pandas DataFrame of epochs.parquet


def run_sweep(s: Settings, data_sets: dict[str, Any], *, train_fn: TrainFn | None = None,
              callbacks: Sequence[Any] = (), log: Callable[[str], None] | None = print) -> Outcome:
    """Run (or resume) the sweep on the Ray cluster this process is connected to."""
    info = data_info(data_sets)
    fn = trainable(s, data_sets, train_fn)
    if s.resume:
        # Rebuilt from Optuna, Parquet, JSON and checkpoint.pt, in a folder or a bucket alike;
        # never Tune.restore, which unpickles tuner.pkl from storage (sweep.recovery).
        from sweep.recovery import resume_sweep

        grid, fit_seconds = resume_sweep(
            s, fn, info,
            lambda st: _new_tuner(st, fn, info, callbacks, log, total=s.space.trials), log)
    else:
        save_settings(s, info)
        new, guard = _new_tuner(s, fn, info, callbacks, log)
        start = time.perf_counter()
        grid = new.fit()
        fit_seconds = time.perf_counter() - start
        guard.raise_if_failed()
    trials = _finalize(s, info, grid)
    epochs = read_results(s.results_uri, EPOCHS_FILE)
    return Outcome(s, trials, fit_seconds, _paths(s), epochs.to_pandas() if epochs is not None else None)


def _new_tuner(s: Settings, fn: Any, info: dict[str, DataInfo],
               callbacks: Sequence[Any], log: Callable[[str], None] | None,
               total: int | None = None) -> tuple[Any, WriteGuard]:
    """A sweep's Tuner and the guard of its results writer (call guard.raise_if_failed() after
    fit). total: the trials of the whole sweep, when this Tuner runs the rest of a resumed one."""
    from sweep.guard import WriteGuard
    from sweep.progress import Progress
    from sweep.results import ResultsWriter
    from sweep.scheduler import scheduler_for

    space = s.space
    total = space.trials if total is None else total
    guard = WriteGuard(ResultsWriter(s.results_uri, s.name, info, log=log, total=total))
    for callback in callbacks:   # counts go on from the trials the resumed sweep already has
        if isinstance(callback, Progress):
            callback.total, callback.before = total, total - space.trials
    return tuner(s, fn, name=s.name, callbacks=[guard, *callbacks], num_samples=space.trials,
                 search_alg=_searcher(s), scheduler=scheduler_for(space), stop=diverged), guard


def _searcher(s: Settings) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from fkd_core.metrics import OBJECTIVE

    s.optuna_path.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent trials: the constant liar keeps TPE from proposing what is already running.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=s.tpe_seed, constant_liar=True) \
            if s.sampler == "tpe" else optuna.samplers.RandomSampler(seed=s.tpe_seed)
    return OptunaSearch(
        Sampler(s.space), metric=OBJECTIVE, mode="min", sampler=sampler, study_name=s.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{s.optuna_path.resolve()}"),
        # Every trial of a grid enqueued with its axes (Space.points: the combinations in turn), so
        # TPE samples only the search parameters and every arm of a cell gets the same number of
        # trials; a resumed study still holds the ones not yet run (enqueued at its start).
        points_to_evaluate=None if s.resume else s.space.points() or None)


def _finalize(s: Settings, info: dict[str, DataInfo], grid: Any) -> Any:
    """Add every row Tune kept (also from before a Tune restore), then compact the parts."""
    from fkd_core.metrics import EPOCH
    from sweep.results import ResultsWriter, copy_file

    writer = ResultsWriter(s.results_uri, s.name, info, log=None)
    writer.setup()
    for result in grid:
        frame = result.metrics_dataframe
        if frame is not None and EPOCH in frame and result.metrics:
            writer.amend(result.metrics["trial_id"], frame.to_dict("records"))
    writer.write_unfinished()
    compact(s.results_uri)
    if "://" in s.results_uri and s.optuna_path.exists():
        copy_file(pafs.LocalFileSystem(), str(s.optuna_path), f"{s.results_uri}/{OPTUNA_FILE}")
    table = read_results(s.results_uri, TRIALS_FILE)
    return table.to_pandas() if table is not None else None


def _paths(s: Settings) -> dict[str, str]:
    u = s.results_uri
    return {"trials": f"{u}/{TRIALS_FILE}", "epochs": f"{u}/{EPOCHS_FILE}",
            "optuna": f"{u}/{OPTUNA_FILE}", "settings": f"{u}/{SWEEP_FILE}",
            "checkpoints": f"{u}/checkpoints/", "ray": s.experiment_path}


