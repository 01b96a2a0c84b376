"""The confirm plan: how many replicates, the decision rule, and its record in sweep.json.

    from sweep.plan import Plan, record_plan
    plan = Plan(3, until_decided=True, max_seeds=12)   # rounds of 3 up to 12, group-sequential
    plan.rule()                                        # the sweep.verdicts.Rule it decides by

The plan is frozen in sweep.json at the first confirm round (record_plan) and every look at the
verdicts is recorded there as it happens (record_look); a later run that asks for another plan
is refused in one line (only an --open-ended plan may raise its --max-seeds). sweep.confirm runs
the rounds; sweep.run and sweep.confirm take the plan's options (add_plan_options, plan_of).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from sweep import verdicts as V
from sweep.settings import SWEEP_FILE, read_json, update_sweep_json

if TYPE_CHECKING:
    import pandas as pd

# Confirm seeds start far from the search's (0, 1, ...): the best config was picked partly for
# its luck on those seeds and that split, so reusing them would carry the selection into the test.
CONFIRM_SEED0 = 1000


class ConfirmError(ValueError):
    """Bad confirm options or a results folder that cannot be confirmed; one line for users."""


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
            raise ConfirmError(f"--confirm/--replicates must be >= 1 replicate, got {self.replicates}")
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


def saved_plan(uri: str) -> Plan | None:
    """The confirm plan a sweep recorded when its confirm phase started (None: not started)."""
    raw = ((read_json(f"{uri}/{SWEEP_FILE}") or {}).get("confirm") or {}).get("plan")
    return Plan.from_dict(raw) if raw else None


def record_plan(uri: str, plan: Plan, arms: Sequence[Any]) -> int:
    """The confirm plan (margin fixed before the run), the recipes and this command; returns the
    replicates already looked at (0 if none)."""
    looked = [0]

    def change(saved: dict[str, Any]) -> None:
        old = saved.get("confirm") or {}
        check_continuation(uri, old, plan)
        saved["confirm"] = {**old, "plan": plan.to_dict(),
                            "recipes": [{"cell": a.cell, "arm": a.arm, "from_trial": a.source_trial,
                                         "alpha": a.fields["alpha"]} for a in arms],
                            "commands": [*old.get("commands", []), sys.argv[:]],
                            "seed_of_replicate_r": f"seed = split_seed = {CONFIRM_SEED0} + r"}
        looked[0] = int(old.get("replicates", 0)) if old.get("looks") else 0
    update_sweep_json(uri, change)
    return looked[0]


def check_continuation(uri: str, old: dict[str, Any], plan: Plan) -> None:
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
        {k: json_safe(r[k]) for k in LOOK_FIELDS if k in r} for r in table.to_dict("records")]

    def change(saved: dict[str, Any]) -> None:
        c = saved.setdefault("confirm", {})
        c.update(replicates=replicates, looks=c.get("looks", 0) + 1)
        c["look_log"] = [*c.get("look_log", []), {"n": replicates, "cells": cells}]
    update_sweep_json(uri, change)
    return replicates


LOOK_FIELDS = ("cell", "shape", "n", "d_mean", "d_sd", "ci_low", "ci_high", "level", "critical",
               "verdict", "needed", "more")


def json_safe(x: Any) -> Any:
    """Plain JSON values: numpy scalars as Python ones, NaN and inf as null."""
    x = x.item() if hasattr(x, "item") else x
    return None if isinstance(x, float) and not math.isfinite(x) else x


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
