"""The one place that builds a Tune trainable, Tuner and RunConfig: for the search
(sweep.search), each confirm round (sweep.confirm) and the reruns of a resumed search
(sweep.recovery), so that all three retry, checkpoint, name and report trials alike.

    from sweep.tuning import quiet_environment, trainable, tuner
    quiet_environment(); ray.init()
    tuner(s, trainable(s, data_sets), name=s.name, search_alg=searcher, num_samples=8).fit()
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence


# A trial that raises is retried this many times from its last checkpoint, then recorded as error.
MAX_FAILURES = 2


def quiet_environment() -> None:
    """Ray/Tune settings for compact output; call before ray.init (main and benchmarks do)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Our one line per trial instead of Tune's tables and tracebacks (errors reach the results
    # table and the progress line).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # num_to_keep=1 snapshots the experiment at each checkpoint on purpose; don't warn about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray warns at every start that it turned token authentication on (its default); the
    # setting stays as Ray chose it, only the line goes, so that a user sees our lines only.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # On Ctrl-C, SIGTERM or a failed write Tune advises `Tuner.restore(...)`, which unpickles
    # from storage; sweep.run prints its own --resume line instead.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # Tune's TensorBoard logger warns once per confirm trial that a list-valued metric (the test
    # groups' ids, which trials.parquet keeps) cannot be logged; the scalars are still logged.
    logging.getLogger("ray.tune.logger.tensorboardx").setLevel(logging.ERROR)
    import optuna   # here, not at the top: sweep.run's --help should not wait for it

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def trial_name(trial: Any) -> str:
    """Trial names and folders are the trial ids: what trials.parquet and recovery key on."""
    return trial.trial_id


def diverged(trial_id: str, result: dict[str, Any]) -> bool:
    """Stopper: a diverged epoch ends the trial at once (train stops too; this makes sure)."""
    from fkd_core.metrics import DIVERGED

    return bool(result.get(DIVERGED))


def trainable(s: Any, data_sets: dict[str, Any], train_fn: Any = None) -> Any:
    """sweep.trainable.train_trial with the data sets in Ray's object store (shared, not copied
    per trial) and each trial's resources from the Settings `s`."""
    from ray import tune

    from sweep.trainable import share, train_trial

    return tune.with_resources(
        tune.with_parameters(train_trial, datasets={k: share(d) for k, d in data_sets.items()},
                             train_fn=train_fn),
        {"cpu": s.resources["cpu"], "gpu": s.resources["gpu"]})


def tuner(s: Any, fn: Any, *, name: str, callbacks: Sequence[Any], num_samples: int = 1,
          search_alg: Any = None, scheduler: Any = None, param_space: dict[str, Any] | None = None,
          stop: Any = None) -> Any:
    """A Tuner of the trainable `fn` under <s.storage_path>/<name>.

    search_alg given: trials ranked on the objective (minimised); else param_space's grid.
    """
    from ray import tune

    from fkd_core.metrics import OBJECTIVE

    ranked = {"metric": OBJECTIVE, "mode": "min"} if search_alg is not None else {}
    return tune.Tuner(
        fn, param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples, **ranked,
            max_concurrent_trials=s.max_concurrent,
            # A trial's worker process (Python, torch, CUDA context) serves the next trial too:
            # a new one costs seconds per trial, more than a whole CPU epoch of small_cnn.
            reuse_actors=True, trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=name, storage_path=s.storage_path, verbose=0, stop=stop,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            # One checkpoint per trial: the latest, which holds best.pt too.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=list(callbacks)))
