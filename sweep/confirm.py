"""The confirm phase: retrain the search's best configs on paired replicates, score the test split.

    python -m sweep.confirm results/<name> --seeds 5                  # confirm an existing search
    python -m sweep.confirm results/<name> --seeds 3 --until-decided --max-seeds 12
    python -m sweep.confirm results/<name> --seeds 3 --until-decided --max-seeds 12 --open-ended
    python -m sweep.run ... --confirm 3                              # search, then confirm

For every cell, the search's best base-arm config (lowest validation RMSE among the trials ASHA
let run to the full budget) is the recipe; each shape arm is that same recipe plus the shape term
and α of the shape arm's best search trial. A pair therefore differs only in the arm (shape,
alpha), so d = test RMSE(shape) − test RMSE(base) is the effect of adding the shape term at its
tuned α, not of a different lr or augmentation the search happened to pick for one arm. The
space's ``confirm: {fixed_alphas: [0.01]}`` adds an arm per shape term at each such α, labelled
``cgd@0.01`` (arm_label): the study's own α beside the tuned one.
Replicate r trains both arms with seed = split_seed = CONFIRM_SEED0 + r: a fresh train/validation
split per replicate, the same one for both arms; the test rows never change (test_seed is fixed).
The fresh split costs no measurable variance of d (bench/confirm_variance.py on fkd-yt15: split
component 0, training seed sd 0.003 px, residual sd 0.036 px; bench/results/confirm-variance.md)
and keeps the best_val option and the replicate's split variation.

Every confirm trial runs on a fixed budget (fixed_budget): the recipe's schedule to max_epochs,
no ASHA, no early stopping (patience = max_epochs), and no learning-rate rule driven by the arm's
own validation loss: a ``plateau`` recipe is trained with ``cosine`` over the same max_epochs
instead (its ``schedule`` column says so). Early stopping on validation noise was measured to
dominate d on fkd-yt15 (corr(d, difference of the best epochs) = −0.96). What is scored is fixed
before the run by the space's ``confirm: {scored: final | best_val}`` (TrialConfig.scored):
by default the final weights (the EMA average when the recipe has one); best_val, the
best-validation epoch's, is the noisier option. The scored weights' test RMSE and per-test-group
sums are recorded (scored_test_rmse_px, test_group_*), and the shape term's share of the last
epoch's training loss (shape_share).
Confirm trials go into the same trials.parquet / epochs.parquet with phase="confirm".
The plan (rounds, maximum, margin, design, α; sweep.verdicts) is frozen in sweep.json at the
first round and every look is recorded there; a later run that asks for another plan is refused
(only an --open-ended plan may raise its --max-seeds).
A confirm interrupted (Ctrl-C, kill -9) goes on where it stopped when run again, or with
`sweep.run --name X --resume` (sweep.confirm_recovery); it holds the folder's lock (sweep.lock).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fkd_core.config import TrialConfig, config_fields
from sweep import verdicts as V

if TYPE_CHECKING:
    import pandas as pd
# pandas, torch (fkd_core.metrics) and Ray are imported where used: sweep.run imports this
# module for its command-line options, and --help should not wait for them.

# Confirm seeds start far from the search's (0, 1, ...): the best config was picked partly for
# its luck on those seeds and that split, so reusing them would carry the selection into the test.
CONFIRM_SEED0 = 1000


class ConfirmError(ValueError):
    """Bad confirm options or a results folder that cannot be confirmed; one line for users."""


class Interrupted(RuntimeError):
    """A confirm round ended with replicates not recorded (Ctrl-C, lost cluster): no verdict is
    computed on the incomplete set; running the confirm again continues it (sweep.confirm_recovery)."""


@dataclass(frozen=True)
class Plan:
    """How many replicates, and the decision rule; frozen at the first confirm round.

    Three designs (sweep.verdicts): one look (fixed N); --until-decided --max-seeds M: rounds
    of `replicates` up to M, planned in advance, a group-sequential boundary; --open-ended on
    top: the anytime-valid confidence sequence, the one design a later run may extend past M.
    """

    replicates: int
    """Replicates of the first round (and of each later round with until_decided)."""
    margin: float = V.DEFAULT_MARGIN
    until_decided: bool = False
    max_seeds: int | None = None
    """Until-decided: stop adding rounds at this many replicates."""
    open_ended: bool = False
    """Until-decided: the anytime-valid sequence instead of the planned group-sequential looks."""
    alpha: float = V.DEFAULT_ALPHA
    """Family-wise error over every verdict word of the study."""
    cs_horizon: int | None = None
    """open_ended: replicates the sequence's mixture is tuned for (None: 4 rounds). It depends
    on the rounds alone, so raising --max-seeds later leaves the sequence unchanged."""

    def __post_init__(self) -> None:
        if self.replicates < 1:
            raise ConfirmError(f"--confirm/--seeds must be >= 1 replicate, got {self.replicates}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ConfirmError(f"--margin must be >= 0 px, got {self.margin:g}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfirmError(f"the confirm plan's alpha must be in (0, 1), got {self.alpha:g}")
        if self.max_seeds is not None and self.max_seeds < self.replicates:
            raise ConfirmError(f"--max-seeds {self.max_seeds} is below the first round of "
                               f"{self.replicates} replicates")
        if self.max_seeds is not None and not self.until_decided:
            raise ConfirmError("--max-seeds needs --until-decided")
        if self.until_decided and self.max_seeds is None:
            raise ConfirmError("--until-decided needs --max-seeds M (where adding rounds stops)")
        if self.open_ended and not self.until_decided:
            raise ConfirmError("--open-ended needs --until-decided --max-seeds M")
        if self.open_ended and self.cs_horizon is None:
            object.__setattr__(self, "cs_horizon", 4 * self.replicates)

    @property
    def ceiling(self) -> int:
        return self.max_seeds if self.until_decided and self.max_seeds else self.replicates

    @property
    def design(self) -> str:
        if not self.until_decided:
            return "fixed"
        return "sequence" if self.open_ended else "group-sequential"

    def rule(self) -> V.Rule:
        horizon = self.cs_horizon if self.open_ended else None
        return V.Rule(margin=self.margin, alpha=self.alpha, sequential=self.until_decided,
                      first_round=self.replicates, max_replicates=self.ceiling,
                      design=self.design, cs_horizon=horizon)

    def to_dict(self) -> dict[str, Any]:
        return {"replicates": self.replicates, "until_decided": self.until_decided,
                "max_seeds": self.max_seeds, "open_ended": self.open_ended,
                **self.rule().to_dict()}

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> "Plan":
        """A plan from sweep.json or a space's `confirm` settings. A plan recorded before the
        designs existed (no "design") that ran --until-decided used the confidence sequence
        tuned for its maximum: it reads back as that sequence."""
        old_sequence = "design" not in raw and bool(raw.get("sequential"))
        open_ended = bool(raw.get("open_ended", False)) or old_sequence \
            or raw.get("design") == "sequence"
        horizon = raw.get("cs_horizon") or (raw.get("max_replicates") if old_sequence else None)
        return Plan(int(raw["replicates"]), float(raw.get("margin", V.DEFAULT_MARGIN)),
                    bool(raw.get("until_decided", False)),
                    None if raw.get("max_seeds") is None else int(raw["max_seeds"]),
                    open_ended, float(raw.get("alpha", V.DEFAULT_ALPHA)),
                    None if horizon is None else int(horizon))


# --- which configs, which replicates --------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    """One confirm recipe: a cell's arm and the TrialConfig fields it trains with."""

    cell: str
    arm: str
    fields: dict[str, Any]
    source_trial: str
    """Search trial the arm's own part (base recipe, or shape + alpha) comes from."""


def best_search_trial(rows: pd.DataFrame) -> pd.Series:
    """Lowest validation RMSE among the trials ASHA let run to the full budget (else among all).

    Trials ASHA cut short are not compared with full-budget ones: their numbers are early ones.
    """
    from fkd_core.metrics import OBJECTIVE

    full = rows[rows["status"] != "asha_stopped"]
    pool = full if len(full) else rows
    return pool.loc[pool[f"best_{OBJECTIVE}"].astype(float).idxmin()]


def arm_label(shape: str, fixed_alpha: float | None = None) -> str:
    """The arm column of a confirm trial: "base", a shape term at its tuned α ("cgd"), or at a
    fixed α of the space's confirm block ("cgd@0.01")."""
    if shape == "none":
        return "base"
    return shape if fixed_alpha is None else f"{shape}@{fixed_alpha:g}"


def choose_arms(search: pd.DataFrame, fixed_alphas: Sequence[float] = ()) -> list[Arm]:
    """Base recipe + one shape arm per shape term (+ one per fixed α), per cell (module docstring).

    search: prepared search-phase trials (sweep.analyze.prepare): columns cell, arm, outcome.
    Cells without a finished base-arm trial or without a shape arm cannot be paired: skipped.
    """
    ok = search[search["outcome"] == "ok"]
    arms = []
    for cell, c in ok.groupby("cell", sort=False):
        base_rows = c[c["arm"] == "base"]
        shapes = sorted(set(c["arm"]) - {"base"})
        if base_rows.empty or not shapes:
            continue
        base = best_search_trial(base_rows)
        recipe = _fields(base)
        arms.append(Arm(cell, "base", {**recipe, "shape": "none", "alpha": 0.0}, base["trial_id"]))
        for shape in shapes:
            top = best_search_trial(c[c["arm"] == shape])
            arms.append(Arm(cell, arm_label(shape), {**recipe, "shape": top["shape"],
                                                     "alpha": float(top["alpha"])}, top["trial_id"]))
            arms += [Arm(cell, arm_label(shape, a), {**recipe, "shape": top["shape"], "alpha": float(a)},
                         top["trial_id"]) for a in fixed_alphas]
    return arms


def _fields(trial: pd.Series) -> dict[str, Any]:
    fields = {k: (trial[k].item() if hasattr(trial[k], "item") else trial[k])
              for k in config_fields() if k in trial}
    # trials.parquet holds the device a trial ran on ("cuda:0"); the confirm trial picks its own.
    fields["device"] = TrialConfig().device
    return fields


# What replaces a learning-rate rule driven by the arm's own validation loss (module docstring).
FIXED_SCHEDULE = "cosine"


def fixed_budget(fields: dict[str, Any], scored: str = "final") -> dict[str, Any]:
    """A confirm trial's fields on a fixed budget: no early stopping (patience = max_epochs can
    never be spent), ``plateau`` replaced by FIXED_SCHEDULE over the same epochs, `scored` set."""
    schedule = FIXED_SCHEDULE if fields.get("schedule", "plateau") == "plateau" else fields["schedule"]
    return {**fields, "patience": int(fields.get("max_epochs", TrialConfig().max_epochs)),
            "schedule": schedule, "scored": scored}


def tune_config(arm: Arm, replicate: int, scored: str = "final") -> dict[str, Any]:
    """The Tune config of one confirm trial: TrialConfig fields under "cfg", plus its labels."""
    seed = CONFIRM_SEED0 + replicate
    cfg = TrialConfig(**{**fixed_budget(arm.fields, scored), "seed": seed, "split_seed": seed,
                         "score_test": True})
    return {"cfg": cfg.to_dict(), "phase": "confirm", "replicate": replicate, "cell": arm.cell,
            "arm": arm.arm}


def missing_configs(arms: Sequence[Arm], done: pd.DataFrame, upto: int,
                    scored: str = "final") -> list[dict[str, Any]]:
    """Tune configs of replicates 0..upto-1 not yet in the confirm trials `done` (so an
    interrupted or extended confirm only runs what is missing)."""
    have = set(zip(done["cell"], done["arm"], done["replicate"])) if len(done) else set()
    return [tune_config(a, r, scored) for r in range(upto) for a in arms
            if (a.cell, a.arm, r) not in have]


# --- running it ----------------------------------------------------------------------------

class _Pick:
    """tune.sample_from callable: one key of the i-th prepared config (picklable)."""

    def __init__(self, configs: list[dict[str, Any]], key: str):
        self.configs, self.key = configs, key

    def __call__(self, config: dict[str, Any]) -> Any:
        return self.configs[config["i"]][self.key]


def run_round(s: Any, data_sets: dict[str, Any], configs: list[dict[str, Any]], *,
              round_no: int, recorded: int = 0, train_fn: Any = None,
              log: Callable[[str], None] | None = print) -> None:
    """Train the given confirm configs on the connected Ray cluster, at full budget (FIFO)."""
    from ray import tune

    from sweep.recovery import ResumedWriter
    from sweep.run import MAX_FAILURES, data_info
    from sweep.trainable import share, train_trial

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, datasets={k: share(d) for k, d in data_sets.items()},
                             train_fn=train_fn),
        {"cpu": s.resources["cpu"], "gpu": s.resources["gpu"]})
    # The writer counts every recorded trial, search included: `recorded` are already there.
    # A continued trial (RESUME_OF, sweep.confirm_recovery) is filed under its original id.
    writer = ResumedWriter(s.results_uri, s.name, data_info(data_sets), log=log,
                             total=recorded + len(configs))
    space = {"i": tune.grid_search(list(range(len(configs)))),
             **{k: tune.sample_from(_Pick(configs, k)) for k in configs[0]}}
    tune.Tuner(trainable, param_space=space,
               tune_config=tune.TuneConfig(max_concurrent_trials=s.max_concurrent, reuse_actors=True,
                                           trial_name_creator=_name, trial_dirname_creator=_name),
               run_config=tune.RunConfig(
                   # A later `sweep.confirm` adds rounds to the same storage: never reuse a name.
                   name=f"{s.name}-confirm-{time.strftime('%Y%m%d-%H%M%S')}-{round_no}",
                   storage_path=s.storage_path, verbose=0,
                   failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                   checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                   callbacks=[writer])).fit()


def _name(trial: Any) -> str:
    return trial.trial_id


@dataclass
class Result:
    table: "pd.DataFrame"
    """sweep.verdicts.verdict_table (empty when no test metrics)."""
    replicates: int
    looks: int
    note: str = ""


def confirm(s: Any, data_sets: dict[str, Any], plan: Plan, *, train_fn: Any = None,
            log: Callable[[str], None] | None = print) -> Result:
    """Run the confirm phase of the sweep in s.results_uri: rounds until decided or done.

    Interrupted rounds are continued (sweep.confirm_recovery), and a look at a number of
    replicates sweep.json already records as looked at is not counted again, so a confirm run
    again after a kill or Ctrl-C ends as the uninterrupted one would have.
    Raises Interrupted when a round ends with replicates missing.
    """
    import pandas as pd

    from sweep import confirm_recovery as CR
    from sweep.analyze import prepare, read_parquet
    from sweep.run import data_info

    searched = list(s.space.search)
    trials = prepare(read_parquet(s.results_uri, "trials.parquet"), searched)
    settings = dict(getattr(s.space, "confirm", None) or {})
    scored = str(settings.get("scored") or "final")
    arms = choose_arms(trials[trials["phase"] == "search"], settings.get("fixed_alphas") or ())
    if not arms:
        raise ConfirmError(f"{s.results_uri}: no cell has a finished trial in both the base arm "
                           "and a shape arm, so there is nothing to confirm")
    looked = record_plan(s.results_uri, plan, arms)
    rule, target = plan.rule(), plan.replicates
    while True:
        resumes = CR.recover(s, data_info(data_sets), log)
        trials = prepare(read_parquet(s.results_uri, "trials.parquet"), searched)
        todo = CR.continued(missing_configs(arms, _confirmed(trials), target, scored), resumes)
        if log:
            log(f"\nConfirm round up to {target} replicates: {len(todo)} trials ({len(arms)} "
                f"cell x arm recipes, fixed budget, {scored} weights scored on test)")
        if todo:
            run_round(s, data_sets, todo, round_no=target, recorded=len(trials),
                      train_fn=train_fn, log=log)
            trials = prepare(read_parquet(s.results_uri, "trials.parquet"), searched)
        confirmed = _confirmed(trials)
        lost = {CR.key_of(c) for c in todo} - set(zip(confirmed["cell"], confirmed["arm"],
                                                       confirmed["replicate"].astype(int)))
        if lost:
            raise Interrupted(f"{len(lost)} of {len(todo)} confirm trials of this round did not "
                              "finish")
        # The look sees the first `target` replicates only: those an uninterrupted run saw here.
        seen = confirmed[confirmed["replicate"].astype(int) < target]
        table = V.verdict_table(seen, rule) if V.has_test_metrics(seen) else None
        if target > looked:
            looked = record_look(s.results_uri, target, table)
        if table is None:
            return Result(pd.DataFrame(), target, record_end(s.results_uri, data_sets, arms),
                          V.NO_TEST_METRICS)
        if not plan.until_decided or V.all_decided(table.to_dict("records")) \
                or target >= plan.ceiling:
            return Result(table, target, record_end(s.results_uri, data_sets, arms))
        target = min(target + plan.replicates, plan.ceiling)


def _confirmed(trials: pd.DataFrame) -> pd.DataFrame:
    """Confirm trials, one per (cell, arm, replicate): the first recorded, should a folder hold
    two (written before interrupted confirms were continued rather than rerun)."""
    done = trials[trials["phase"] == "confirm"]
    return done.drop_duplicates(["cell", "arm", "replicate"], keep="first")


def saved_plan(uri: str) -> Plan | None:
    """The confirm plan a sweep recorded when its confirm phase started (None: not started)."""
    from sweep.run import SWEEP_FILE, _read_json

    raw = ((_read_json(f"{uri}/{SWEEP_FILE}") or {}).get("confirm") or {}).get("plan")
    return Plan.from_dict(raw) if raw else None


# --- sweep.json: the plan, the looks, the commands ------------------------------------------

def split_kinds(data_sets: dict[str, Any], arms: Sequence[Arm] = ()) -> dict[str, str]:
    """'group-disjoint' or 'row-level' per cell (fkd_core.data.split_kind of the cell's config:
    split="tail" makes validation row-level even where the test split is group-disjoint); per
    data set when no arm is given."""
    from fkd_core.data import split_kind
    from sweep.spaces import data_key

    if not arms:
        return {k: split_kind(d, TrialConfig(score_test=True)) for k, d in data_sets.items()}
    kinds = {}
    for arm in arms:
        cfg = TrialConfig(**{k: v for k, v in arm.fields.items() if k in config_fields()})
        data = data_sets.get(data_key(cfg))
        if data is not None:
            kinds[str(arm.cell)] = split_kind(data, cfg)
    return kinds


def _update_sweep_json(uri: str, change: Callable[[dict[str, Any]], None]) -> None:
    from sweep.run import SWEEP_FILE, _read_json, _write_json

    saved = _read_json(f"{uri}/{SWEEP_FILE}") or {}
    change(saved)
    _write_json(f"{uri}/{SWEEP_FILE}", saved)


def record_plan(uri: str, plan: Plan, arms: Sequence[Arm]) -> int:
    """The confirm plan (margin fixed before the run), the recipes and this command; returns the
    replicates already looked at (0 if none)."""
    looked = [0]

    def change(saved: dict[str, Any]) -> None:
        old = saved.get("confirm") or {}
        _check_continuation(uri, old, plan)
        saved["confirm"] = {**old, "plan": plan.to_dict(),
                            "recipes": [{"cell": a.cell, "arm": a.arm, "from_trial": a.source_trial,
                                         "alpha": a.fields["alpha"]} for a in arms],
                            "commands": [*old.get("commands", []), sys.argv[:]],
                            "seed_of_replicate_r": f"seed = split_seed = {CONFIRM_SEED0} + r"}
        looked[0] = int(old.get("replicates", 0)) if old.get("looks") else 0
    _update_sweep_json(uri, change)
    return looked[0]


def _check_continuation(uri: str, old: dict[str, Any], plan: Plan) -> None:
    """The plan recorded at the first confirm round is frozen: a later run (a continuation after
    a kill, or a request for more) must ask for the same one. The one change allowed is a higher
    --max-seeds under --open-ended: the confidence sequence is valid at any number of looks, and
    its mixture depends on the rounds alone. Anything else is refused in one line, before any
    trial runs: a plan chosen after seeing test results would no longer hold its error rate."""
    before = old.get("plan")
    if not before:
        return
    frozen = Plan.from_dict(before)
    if frozen.margin != plan.margin:
        raise ConfirmError(f"{uri}: its confirm phase was run with margin {frozen.margin:g} px; "
                           "a margin is fixed before the run, so it cannot change now")
    if frozen.design == "fixed" and old.get("looks") and plan.ceiling > frozen.ceiling:
        raise ConfirmError(f"{uri}: its fixed plan already gave verdicts on {frozen.ceiling} "
                           "replicates; adding replicates after looking would void them (plan "
                           "rounds with --until-decided --max-seeds before the first round, or "
                           "confirm in a new sweep)")
    extends = frozen.open_ended and plan.open_ended and plan.ceiling >= frozen.ceiling
    same = dataclasses.replace(plan, max_seeds=frozen.max_seeds) if extends else plan
    if dataclasses.astuple(same) != dataclasses.astuple(frozen):
        raise ConfirmError(f"{uri}: its confirm plan is frozen ({describe(frozen)}); this run asks "
                           f"for {describe(plan)}: rerun with the plan's options, or confirm in "
                           "a new sweep")


def describe(plan: Plan) -> str:
    """A plan in a few words, for messages and reports."""
    rounds = (f"rounds of {plan.replicates} up to {plan.ceiling}" if plan.until_decided
              else f"{plan.replicates} replicates")
    return f"{plan.design}, {rounds}, margin ±{plan.margin:g} px, α = {plan.alpha:g}"


def record_look(uri: str, replicates: int, table: "pd.DataFrame | None" = None) -> int:
    """Record one look at the verdicts on `replicates` replicates, as it happens (a kill after it
    must not let the continued confirm count it again): its n and, given the verdict table, each
    comparison's statistics and the boundary used (the interval's multiplier). Returns
    `replicates`."""
    cells = [] if table is None or table.empty else [
        {k: _json_safe(r[k]) for k in LOOK_FIELDS if k in r} for r in table.to_dict("records")]

    def change(saved: dict[str, Any]) -> None:
        c = saved.setdefault("confirm", {})
        c.update(replicates=replicates, looks=c.get("looks", 0) + 1)
        c["look_log"] = [*c.get("look_log", []), {"n": replicates, "cells": cells}]
    _update_sweep_json(uri, change)
    return replicates


LOOK_FIELDS = ("cell", "shape", "n", "d_mean", "d_sd", "ci_low", "ci_high", "level", "critical",
               "verdict", "needed", "more")


def _json_safe(x: Any) -> Any:
    """Plain JSON values: numpy scalars as Python ones, NaN and inf as null."""
    x = x.item() if hasattr(x, "item") else x
    return None if isinstance(x, float) and not math.isfinite(x) else x


def record_end(uri: str, data_sets: dict[str, Any], arms: Sequence[Arm] = ()) -> int:
    """The split kinds and the end time; returns the looks taken over all runs of the confirm."""
    looks = [0]

    def change(saved: dict[str, Any]) -> None:
        c = saved.setdefault("confirm", {})
        c.update(split=split_kinds(data_sets, arms), finished=time.strftime("%Y-%m-%d %H:%M:%S %z"))
        looks[0] = int(c.get("looks", 0))
    _update_sweep_json(uri, change)
    return looks[0]


# --- command line ----------------------------------------------------------------------------

def plan_of(args: argparse.Namespace, space: Any) -> Plan | None:
    """sweep.run's confirm plan: the space's `confirm` settings, overridden by the options given.

    None when neither asks for a confirm phase (and --smoke-test without --confirm: a smoke test
    checks the plumbing in seconds). Resumed sweeps (space None) take the options only.
    """
    given = {k: v for k, v in (("replicates", args.confirm), ("margin", args.margin),
                               ("max_seeds", args.max_seeds)) if v is not None}
    for flag in ("until_decided", "open_ended"):
        if getattr(args, flag, False):
            given[flag] = True
    default = dict(getattr(space, "confirm", None) or {})
    if args.confirm is None and (getattr(args, "smoke_test", False) or not default):
        if given:
            raise ConfirmError(f"{', '.join('--' + k.replace('_', '-') for k in given)} need "
                               "--confirm N (replicates of the confirm phase)")
        return None
    if args.confirm is not None and "until_decided" not in given and "max_seeds" not in given:
        for key in ("until_decided", "max_seeds", "open_ended"):   # --confirm N: exactly N
            default.pop(key, None)
    return Plan.from_dict({**default, **given})


def add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--margin", type=float,
                   help=f"equivalence margin in px, fixed before the run (default {V.DEFAULT_MARGIN})")
    p.add_argument("--until-decided", action="store_true",
                   help="add rounds of replicates until every cell is decided, up to --max-seeds "
                        "(looks planned in advance: a group-sequential O'Brien-Fleming-type "
                        "boundary keeps the error rate under the repeated looks)")
    p.add_argument("--max-seeds", type=int, help="with --until-decided: stop at this many replicates")
    p.add_argument("--open-ended", action="store_true",
                   help="with --until-decided: use the anytime-valid confidence sequence instead, "
                        "which a later run may continue past --max-seeds (wider at the planned "
                        "maximum than the group-sequential boundary)")


def main(argv: Sequence[str] | None = None) -> int:
    from sweep.lock import SweepBusy, SweepLock, lock_dir
    from sweep.run import UsageError, _load_or_fail, _Parser, quiet_environment

    quiet_environment()
    p = _Parser(prog="python -m sweep.confirm", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results folder of a finished search (results/<name>)")
    p.add_argument("--seeds", type=int, required=True, help="paired replicates (first round)")
    p.add_argument("--cluster", default="clusters/local.yaml")
    add_plan_options(p)
    lock = None
    try:
        args = p.parse_args(argv)
        plan = Plan(args.seeds, V.DEFAULT_MARGIN if args.margin is None else args.margin,
                    args.until_decided, args.max_seeds, args.open_ended)
        s, cluster = _settings(args.results, args.cluster)
        # The folder's owner, as sweep.run is (sweep.lock): two confirms, or a confirm and its
        # sweep, would each write trials.parquet without the other's trials.
        lock = SweepLock(lock_dir(s.results_uri, s.name))
        lock.acquire()
        data_sets = _load_or_fail(s.space)   # the data's checks before Ray starts
    except (UsageError, ConfirmError, ValueError, SweepBusy) as err:
        if lock is not None:
            lock.release()
        print(f"sweep.confirm: error: {err}", file=sys.stderr)
        return 2
    import ray

    from sweep import commands
    from sweep.cluster import connect
    from sweep.report import verdict_console

    try:
        connect(cluster)
        result = confirm(s, data_sets, plan)
    except (UsageError, ConfirmError) as err:
        print(f"sweep.confirm: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        again = list(sys.argv[1:] if argv is None else argv)
        print(f"\n{err}: continue with {commands.module('sweep.confirm', *again)}")
        return 1
    finally:
        ray.shutdown()
        lock.release()
    print(verdict_console(result, plan.rule(), s.results_uri))
    return 0


def _settings(results: str, cluster_file: str) -> tuple[Any, Any]:
    """The search's Settings from its sweep.json (a broken one: UsageError naming the file)."""
    from sweep.cluster import load_cluster
    from sweep.run import saved_settings

    cluster = load_cluster(cluster_file)
    return saved_settings(results.rstrip("/"), resume=False), cluster


if __name__ == "__main__":
    sys.exit(main())
