"""A sweep's trials grouped: phases, cells, arms, α levels, full budget; no file is read here.

    from sweep.tables import full_budget, prepare
    t = prepare(trials, searched=["lr"])        # + phase, outcome, arm, alpha_level, cell columns
    full_budget(t).groupby(["cell", "arm"])     # what sweep.report and sweep.figures compare

How trials are grouped (see ``cell_columns``):
- *phase*: "search" (ASHA + TPE on validation: an optimiser, never evidence) or "confirm" (the
  best configs retrained on paired replicates, scored on test: the verdicts). Files written
  before the phase column existed are all search.
- *arm*: the objective. "base" = no shape term (shape == "none" or α == 0); otherwise the shape
  term's name ("cgd", "seed_cgd"), compared with the base arm of the same cell.
- *cell*: every TrialConfig column that varies among the search trials except the arm (shape,
  alpha), the replicate keys (seed, split_seed, synth_seed), runtime knobs (device, precision,
  ...), and sampled continuous hyperparameters (floats with more than 5 distinct values, e.g. a
  log-uniform lr): so augmentation for ``quick``, the defect switches for ``reproduce`` and
  synth_pose for ``rigidity``. Confirm trials carry the label of the search cell they confirm.
- *replicate*: (seed, split_seed, synth_seed). Trials sharing a replicate key within an arm are
  averaged first, so a CI is over independent seeds.
- *full budget*: search trials ASHA did not stop (completed, or ended by their own early
  stopping). Search tables and figures show only these, so that no trial stopped at epoch 2 is
  set beside one trained for 20.
- *metrics*: each trial's values at its best epoch on validation (``best_*`` columns, the epoch
  the best checkpoint holds); test metrics are taken at that same epoch. Failed (error) and
  diverged trials are counted and listed, never averaged.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from fkd_core import metrics as M
from fkd_core.config import config_fields, uses_shape

OK_STATUSES = ("completed", "asha_stopped", "early_stopped")
ARM_COLUMNS = ("shape", "alpha")
REPLICATE_KEYS = ("seed", "split_seed", "synth_seed")
# Knobs that change speed, not results: they never split cells nor enter importance.
RUNTIME_COLUMNS = ("device", "precision", "channels_last", "compile", "compile_mode", "checkpoint_every",
                   "checkpoint_best")
# Set by the phase, never by the space: they do not split cells.
PHASE_COLUMNS = ("score_test", "phase", "replicate", "cell")
# A float column with more distinct values than this was sampled, not gridded: not a cell.
MAX_CELL_LEVELS = 5
# Cells drawn in the learning-curve figure; more would make unreadable panels.
MAX_CURVE_CELLS = 8
# Validation faces drawn per prediction figure.
N_PREDICTION_FACES = 8
METRIC_LABELS = {M.VAL_RMSE: "val RMSE (px)", M.VAL_NME: "val NME",
                 M.VAL_SHAPE: "val shape err (px)"}


def best(metric: str) -> str:
    """trials.parquet column of a metric at the trial's best epoch."""
    return f"best_{metric}"


def classify(trials: pd.DataFrame) -> pd.Series:
    """'ok', 'failed' or 'diverged' per trial, from the status and the metric values."""
    rmse = trials[best(M.VAL_RMSE)].astype(float)
    diverged = (trials["status"] == "diverged") | np.isinf(rmse)
    failed = ~diverged & ((trials["status"] == "error") | rmse.isna()
                          | ~trials["status"].isin(OK_STATUSES))
    return pd.Series(np.select([diverged, failed], ["diverged", "failed"], "ok"),
                     index=trials.index, name="outcome")


# --- arms, α levels, cells ------------------------------------------------------------------

def arm_of(trials: pd.DataFrame) -> pd.Series:
    """'base' when the objective has no shape term, else the shape term's name."""
    on = pd.Series([uses_shape(s, a) for s, a in zip(trials["shape"], trials["alpha"])],
                   index=trials.index, dtype=bool)
    return trials["shape"].where(on, "base").astype(str)


def arm_label(loss: str, arm: str) -> str:
    """'MSE', 'MSE+CGD', 'WING+SEED_CGD' for tables and legends."""
    return loss.upper() if arm == "base" else f"{loss.upper()}+{arm.upper()}"


def alpha_levels(trials: pd.DataFrame) -> pd.Series:
    """α level per trial: α itself on a grid, its decade when α was sampled continuously.

    A grid repeats each α over seeds; a sampler (log-uniform α) almost never does, so there
    "the α whose mean over seeds is best" is taken over decades [10^k, 10^(k+1)) instead.
    Base-arm trials get level 0.
    """
    alpha = trials["alpha"].astype(float).where(trials["arm"] != "base", 0.0)
    shaped = alpha[alpha > 0]
    if shaped.nunique() > len(shaped) / 2:
        alpha = alpha.where(alpha <= 0, 10.0 ** np.floor(np.log10(alpha.where(alpha > 0, 1.0))))
    return alpha


def cell_columns(trials: pd.DataFrame, searched: Sequence[str] = ()) -> list[str]:
    """The TrialConfig columns that define cells (module docstring), backbone first.

    searched: the space's search parameters (sweep.json), which never define cells; without
    them a sampled float is recognised by having more than MAX_CELL_LEVELS values.
    """
    skip = set(ARM_COLUMNS) | set(REPLICATE_KEYS) | set(RUNTIME_COLUMNS) | set(PHASE_COLUMNS) \
        | set(searched)
    cols = []
    for name, kind in config_fields().items():
        if name in skip or name not in trials or trials[name].nunique(dropna=False) < 2:
            continue
        if kind is float and trials[name].nunique() > MAX_CELL_LEVELS:
            continue
        cols.append(name)
    order = {"backbone": 0, "augment": 1}
    return sorted(cols, key=lambda c: order.get(c, 2))


def cell_label(values: Sequence[Any], cols: Sequence[str]) -> str:
    """'small_cnn / none' for a cell; 'all trials' when nothing varies."""
    if not cols:
        return "all trials"
    return " / ".join(f"{v}" if c in ("backbone", "augment") else f"{c}={v}"
                      for c, v in zip(cols, values))


def prepare(trials: pd.DataFrame, searched: Sequence[str] = ()) -> pd.DataFrame:
    """Add phase, outcome, arm, alpha_level and cell columns to a copy of the trials table.

    Cells come from the columns that vary among the search trials; a confirm trial keeps the
    search cell label it was recorded with.
    """
    t = trials.copy()
    t["phase"] = t["phase"].fillna("search").replace("", "search") if "phase" in t else "search"
    if "replicate" not in t:
        t["replicate"] = pd.NA
    t["outcome"] = classify(t)
    t["arm"] = arm_of(t)
    if "arm" in trials:   # a confirm trial's recorded label ("cgd@0.01": a fixed-α arm)
        stored = trials["arm"].fillna("").astype(str)
        t["arm"] = t["arm"].where(stored == "", stored)
    t["alpha_level"] = alpha_levels(t)
    search = t["phase"] == "search"
    cols = cell_columns(t[search], searched)
    labels = [cell_label(v, cols) for v in t[cols].itertuples(index=False)] if cols \
        else ["all trials"] * len(t)
    stored = t["cell"] if "cell" in t else pd.Series("", index=t.index)
    t["cell"] = np.where(search, labels, stored.fillna("").astype(str))
    t["objective_label"] = [arm_label(lo, a) for lo, a in zip(t["loss"], t["arm"])]
    return t


def full_budget(t: pd.DataFrame) -> pd.DataFrame:
    """Search trials at one budget: finished (ok) and not stopped by ASHA (module docstring)."""
    return t[(t["phase"] == "search") & (t["outcome"] == "ok") & (t["status"] != "asha_stopped")]


# --- per replicate -----------------------------------------------------------------------

def replicate_means(rows: pd.DataFrame, column: str) -> pd.Series:
    """One value per replicate key (mean over trials sharing it): the unit of a CI."""
    return rows.groupby(list(REPLICATE_KEYS))[column].mean()


def first_label(rows: pd.DataFrame) -> str:
    return str(rows["objective_label"].iloc[0]) if len(rows) else "—"


def searched_params(settings: dict[str, Any]) -> list[str]:
    """The search parameters of the sweep's space, from its sweep.json ([] when unknown)."""
    return list(((settings.get("space") or {}).get("search") or {}))


def plain(x: Any) -> Any:
    """numpy scalar -> Python scalar (Optuna, TrialConfig and JSON want plain types)."""
    return x.item() if hasattr(x, "item") else x
