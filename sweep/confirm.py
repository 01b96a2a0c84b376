"""The confirm phase: retrain the search's best configs on paired replicates, score the test split.

    python -m sweep.confirm results/<name> --replicates 5                  # confirm an existing search
    python -m sweep.confirm results/<name> --replicates 3 --until-decided --max-seeds 12
    python -m sweep.confirm results/<name> --replicates 3 --until-decided --max-seeds 12 --open-ended
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
The plan (sweep.plan: rounds, maximum, margin, design, α; sweep.verdicts) is frozen in
sweep.json at the first round and every look is recorded there; a later run that asks for
another plan is refused (only an --open-ended plan may raise its --max-seeds).
A confirm interrupted (Ctrl-C, kill -9) goes on where it stopped when run again, or with
`sweep.run --name X --resume` (sweep.confirm_recovery); it holds the folder's lock (sweep.lock).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fkd_core.config import TrialConfig, config_fields
from sweep import commands
from sweep import verdicts as V
from sweep.cluster import connect, load_cluster
from sweep.datasets import data_info, load_or_fail
from sweep.lock import SweepBusy, SweepLock, lock_dir
from sweep.plan import (CONFIRM_SEED0, ConfirmError, Plan, add_plan_options, record_look,
                        record_plan)
from sweep.settings import Parser, Settings, UsageError, saved_settings, update_sweep_json
from sweep.spaces import data_key
from sweep.store import TRIALS_FILE, read_results
from sweep.tuning import quiet_environment, trainable, tuner

if TYPE_CHECKING:
    import pandas as pd
# pandas, torch (fkd_core.data, .metrics) and Ray (sweep.recovery, sweep.confirm_recovery,
# sweep.report) are imported where used: sweep.run imports this module, and its --help should
# not wait for them.

class Interrupted(RuntimeError):
    """A confirm round ended with replicates not recorded (Ctrl-C, lost cluster): no verdict is
    computed on the incomplete set; running the confirm again continues it (sweep.confirm_recovery)."""


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

    search: prepared search-phase trials (sweep.tables.prepare): columns cell, arm, outcome.
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

    # The writer counts every recorded trial, search included: `recorded` are already there.
    # A continued trial (RESUME_OF, sweep.confirm_recovery) is filed under its original id.
    writer = ResumedWriter(s.results_uri, s.name, data_info(data_sets), log=log,
                           total=recorded + len(configs))
    space = {"i": tune.grid_search(list(range(len(configs)))),
             **{k: tune.sample_from(_Pick(configs, k)) for k in configs[0]}}
    # A later `sweep.confirm` adds rounds to the same storage: never reuse a name.
    name = f"{s.name}-confirm-{time.strftime('%Y%m%d-%H%M%S')}-{round_no}"
    tuner(s, trainable(s, data_sets, train_fn), name=name, callbacks=[writer],
          param_space=space).fit()


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

    searched = list(s.space.search)
    trials = read_trials(s.results_uri, searched)
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
        trials = read_trials(s.results_uri, searched)
        todo = CR.continued(missing_configs(arms, _confirmed(trials), target, scored), resumes)
        if log:
            log(f"\nConfirm round up to {target} replicates: {len(todo)} trials ({len(arms)} "
                f"cell x arm recipes, fixed budget, {scored} weights scored on test)")
        if todo:
            run_round(s, data_sets, todo, round_no=target, recorded=len(trials),
                      train_fn=train_fn, log=log)
            trials = read_trials(s.results_uri, searched)
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


def read_trials(uri: str, searched: Sequence[str]) -> pd.DataFrame:
    """<uri>/trials.parquet (sweep.store: its parts included), prepared (sweep.tables.prepare)."""
    from sweep.tables import prepare   # pandas and torch: not at import (sweep.run --help)

    table = read_results(uri, TRIALS_FILE)
    if table is None:
        raise ConfirmError(f"{uri}/{TRIALS_FILE}: no such file, nor parts of it; run the "
                           "search first (python -m sweep.run)")
    return prepare(table.to_pandas(), searched)


def _confirmed(trials: pd.DataFrame) -> pd.DataFrame:
    """Confirm trials, one per (cell, arm, replicate): the first recorded, should a folder hold
    two (written before interrupted confirms were continued rather than rerun)."""
    done = trials[trials["phase"] == "confirm"]
    return done.drop_duplicates(["cell", "arm", "replicate"], keep="first")


# --- sweep.json: the plan, the looks, the commands ------------------------------------------

def split_kinds(data_sets: dict[str, Any], arms: Sequence[Arm] = ()) -> dict[str, str]:
    """'group-disjoint' or 'row-level' per cell (fkd_core.data.split_kind of the cell's config:
    split="tail" makes validation row-level even where the test split is group-disjoint); per
    data set when no arm is given."""
    from fkd_core.data import split_kind

    if not arms:
        return {k: split_kind(d, TrialConfig(score_test=True)) for k, d in data_sets.items()}
    kinds = {}
    for arm in arms:
        cfg = TrialConfig(**{k: v for k, v in arm.fields.items() if k in config_fields()})
        data = data_sets.get(data_key(cfg))
        if data is not None:
            kinds[str(arm.cell)] = split_kind(data, cfg)
    return kinds


def record_end(uri: str, data_sets: dict[str, Any], arms: Sequence[Arm] = ()) -> int:
    """The split kinds and the end time; returns the looks taken over all runs of the confirm."""
    looks = [0]

    def change(saved: dict[str, Any]) -> None:
        c = saved.setdefault("confirm", {})
        c.update(split=split_kinds(data_sets, arms), finished=time.strftime("%Y-%m-%d %H:%M:%S %z"))
        looks[0] = int(c.get("looks", 0))
    update_sweep_json(uri, change)
    return looks[0]


# --- command line ----------------------------------------------------------------------------

def build_parser() -> Parser:
    p = Parser(prog="python -m sweep.confirm", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results folder of a finished search (results/<name>)")
    p.add_argument("--replicates", type=int, metavar="N",
                   help="paired replicates of the first round (required)")
    # The old name of --replicates, which sweep.json files and commands written before still
    # use; hidden, since in sweep.run --seeds means the search's training seeds.
    p.add_argument("--seeds", type=int, dest="old_seeds", help=argparse.SUPPRESS)
    p.add_argument("--cluster", default="clusters/local.yaml")
    add_plan_options(p)
    return p


def replicates_of(args: argparse.Namespace) -> int:
    """--replicates N, or its old spelling --seeds N (not both)."""
    if args.replicates is not None and args.old_seeds is not None:
        raise UsageError("--seeds is the old name of --replicates: give one of them")
    n = args.replicates if args.replicates is not None else args.old_seeds
    if n is None:
        raise UsageError("the following arguments are required: --replicates")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    quiet_environment()
    lock = None
    try:
        args = build_parser().parse_args(argv)
        plan = Plan(replicates_of(args), V.DEFAULT_MARGIN if args.margin is None else args.margin,
                    args.until_decided, args.max_seeds, args.open_ended)
        cluster = load_cluster(args.cluster)
        s = saved_settings(args.results.rstrip("/"), resume=False)
        # The folder's owner, as sweep.run is (sweep.lock): two confirms, or a confirm and its
        # sweep, would each write trials.parquet without the other's trials.
        lock = SweepLock(lock_dir(s.results_uri, s.name))
        lock.acquire()
        data_sets = load_or_fail(s.space)   # the data's checks before Ray starts
    except (UsageError, ConfirmError, ValueError, SweepBusy) as err:
        if lock is not None:
            lock.release()
        print(f"sweep.confirm: error: {err}", file=sys.stderr)
        return 2
    return _confirm_on_cluster(s, cluster, data_sets, plan, argv, lock)


def _confirm_on_cluster(s: Settings, cluster: Any, data_sets: dict[str, Any], plan: Plan,
                        argv: Sequence[str] | None, lock: SweepLock) -> int:
    """Start or join Ray, run the confirm, print the verdicts; the lock is released at the end."""
    import ray

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


if __name__ == "__main__":
    sys.exit(main())
