"""ASHA with its own rungs per cell x arm: a trial is only ever ranked against its peers.

One AsyncHyperBandScheduler over every trial stops a slow-starting cell (or arm) at its first rung
because other cells are ahead there, whatever that cell's own best could reach. Here each cell x
arm (cell_arm_key) gets its own AsyncHyperBandScheduler, created when its first trial arrives, and
every Tune hook is passed to the scheduler of the trial's cell x arm. Trials start in submission
order (FIFOScheduler.choose_trial_to_run), as with one ASHA.

    scheduler = CellArmASHA(CellArmKey(space), max_t=20, grace_period=2, reduction_factor=2)
    tune.TuneConfig(scheduler=scheduler, metric=M.OBJECTIVE, mode="min", ...)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from fkd_core.config import uses_shape
from fkd_core.metrics import EPOCH
from sweep.spaces import Space

ARM_FIELDS = ("shape", "alpha")


def arm_of_fields(fields: Mapping[str, Any]) -> str:
    """'base' without a shape term (shape none or alpha 0), else the shape term's name."""
    shape = fields.get("shape", "none")
    return str(shape) if uses_shape(shape, fields.get("alpha", 0.0)) else "base"


class CellArmKey:
    """Picklable key function: (cell, arm) of a trial from its TrialConfig fields.

    The cell is the values of the fields the space's axes set, except the arm's own fields
    (shape, alpha) and the fields the search samples (lr, ...: a cell is not split by them).
    """

    def __init__(self, space: Space):
        fields = {f for axis in space.axes.values() for bundle in axis.values() for f in bundle}
        self.cell_fields = tuple(sorted(fields - set(ARM_FIELDS) - set(space.search)))

    def __call__(self, cfg: Mapping[str, Any]) -> str:
        cell = ", ".join(f"{f}={cfg.get(f)}" for f in self.cell_fields) or "all"
        return f"{cell} | {arm_of_fields(cfg)}"


class CellArmASHA(FIFOScheduler):
    """One AsyncHyperBandScheduler per cell x arm (module docstring)."""

    def __init__(self, key: CellArmKey, *, time_attr: str, max_t: int, grace_period: int,
                 reduction_factor: float, metric: str | None = None, mode: str | None = None):
        super().__init__()
        self.key = key
        # A budget below the grace period (--max-epochs 2 or --smoke-test on a space whose grace is
        # 3) leaves ASHA nothing to stop early; Ray would assert, so the grace shrinks to the budget.
        self.asha_args = {"time_attr": time_attr, "max_t": max_t,
                          "grace_period": min(grace_period, max_t), "reduction_factor": reduction_factor}
        self._metric, self._mode = metric, mode
        self.by_key: dict[str, AsyncHyperBandScheduler] = {}
        self.trial_key: dict[str, str] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric and metric != self._metric) or \
                (self._mode and mode and mode != self._mode):
            return False
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    def scheduler_of(self, trial: Any) -> AsyncHyperBandScheduler:
        key = self.trial_key.get(trial.trial_id)
        if key is None:
            key = self.trial_key[trial.trial_id] = self.key(trial.config.get("cfg", {}))
        if key not in self.by_key:
            self.by_key[key] = AsyncHyperBandScheduler(metric=self._metric, mode=self._mode,
                                                       **self.asha_args)
        return self.by_key[key]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.scheduler_of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.scheduler_of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self.scheduler_of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.scheduler_of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.scheduler_of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "ASHA per cell x arm:\n" + "\n".join(
            f"  {k}: {s.debug_string()}" for k, s in self.by_key.items())

    # Rung state as JSON, never a pickle: a state file is data from storage, and json.loads
    # cannot run code. The AsyncHyperBandScheduler of each cell x arm is rebuilt from its args.
    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.state()))

    def restore(self, checkpoint_path: str) -> None:
        try:
            state = json.loads(Path(checkpoint_path).read_text())
            self.load_state(state)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise ValueError(f"{checkpoint_path}: not an ASHA state written by CellArmASHA.save "
                             f"(JSON of trial_key and cells; {type(err).__name__})") from None

    def state(self) -> dict[str, Any]:
        """Per cell x arm: each bracket's rungs (milestone, {trial id: reward}), each trial's
        bracket, the number stopped. Rewards are Tune's signed metric; NaN stays NaN."""
        cells = {}
        for key, asha in self.by_key.items():
            brackets = asha._brackets
            cells[key] = {"stopped": asha._num_stopped,
                          "bracket_of": {t: brackets.index(b) for t, b in asha._trial_info.items()},
                          "rungs": [[[m, dict(rec)] for m, rec in b._rungs] for b in brackets]}
        return {"trial_key": dict(self.trial_key), "cells": cells}

    def load_state(self, state: dict[str, Any]) -> None:
        trial_key, cells = dict(state["trial_key"]), state["cells"]
        by_key = {}
        for key, cell in cells.items():
            asha = AsyncHyperBandScheduler(metric=self._metric, mode=self._mode, **self.asha_args)
            if len(cell["rungs"]) != len(asha._brackets):
                raise ValueError("bracket count")
            for bracket, rungs in zip(asha._brackets, cell["rungs"]):
                bracket._rungs = [(m, {str(t): float(v) for t, v in rec.items()})
                                  for m, rec in rungs]
            asha._trial_info = {str(t): asha._brackets[int(i)] for t, i in cell["bracket_of"].items()}
            asha._num_stopped = int(cell["stopped"])
            by_key[str(key)] = asha
        self.trial_key, self.by_key = {str(t): str(k) for t, k in trial_key.items()}, by_key


def scheduler_for(space: Space) -> FIFOScheduler:
    """The search's scheduler: ASHA per cell x arm, or FIFO when the space has no ASHA."""
    if not space.asha:
        return FIFOScheduler()
    return CellArmASHA(CellArmKey(space), time_attr=EPOCH, max_t=space.max_epochs,
                       grace_period=space.asha.grace_period,
                       reduction_factor=space.asha.reduction_factor)
