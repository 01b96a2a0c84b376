"""Send a sweep to the trackers people already run, through Ray Tune's own integrations.

    python -m sweep.run --smoke-test --mlflow sqlite:///runs/mlflow.db
    python -m sweep.run --mlflow http://127.0.0.1:5000

MLflow: one experiment named after the sweep, one run per trial named by its trial id (the
``trial_id`` of trials.parquet), the trial's config as params (``cfg/backbone``, ``cfg/alpha``,
...) and every reported epoch as metrics at step = epoch. Ray's ``MLflowLoggerCallback`` logs from
the driver, so a file or sqlite URI is a path on the machine that runs sweep.run.

TensorBoard needs nothing here: Tune writes event files per trial under
<results>/<name>/ray/<name>/<trial_id>/ (``tensorboard --logdir results/<name>/ray``).
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Any

from sweep import commands

# Logged at INFO when a tracking database is created or migrated: not the sweep's business.
_CHATTY_LOGGERS = ("alembic", "mlflow")


class TrackingError(ValueError):
    """A tracker that cannot be used; reported as one line, exit status 2."""


def check(mlflow_uri: str | None) -> None:
    """Fail before Ray starts: mlflow installed, and a URI MLflow 3 accepts for runs."""
    if mlflow_uri is None:
        return
    if importlib.util.find_spec("mlflow") is None:
        raise TrackingError(f"--mlflow {mlflow_uri}: the mlflow package is not installed; install "
                            f"it with: {commands.python()} -m pip install mlflow")
    if "://" not in mlflow_uri:
        # A bare path would be MLflow's file store, which MLflow 3 no longer accepts for runs.
        raise TrackingError(f"--mlflow {mlflow_uri}: expected a tracking URI such as "
                            "sqlite:///runs/mlflow.db or http://127.0.0.1:5000")


def mlflow_callback(uri: str, experiment: str) -> Any:
    """Ray's MLflowLoggerCallback for the tracking URI, one MLflow experiment per sweep."""
    check(uri)
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment,
                                tags={"fkd_sweep": experiment})


def callbacks(mlflow_uri: str | None, experiment: str) -> list[Any]:
    """The tracking callbacks the command line asked for (none by default)."""
    return [mlflow_callback(mlflow_uri, experiment)] if mlflow_uri else []
