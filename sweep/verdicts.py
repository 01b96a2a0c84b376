"""The decision: one verdict per cell and arm from the confirm phase's paired test differences.

    >>> from sweep.verdicts import Rule, decide, cell_stats
    >>> rule = Rule(margin=0.05)
    >>> decide([cell_stats([-0.3, -0.2, -0.25], rule)], rule)[0]["verdict"]
    'better'

d = test RMSE(shape arm) − test RMSE(base arm) per replicate (same seed, same split). Each of the
K comparisons of a study (cell x shape arm) gets one interval for the mean of d, at level
1 − α/K (Bonferroni), and its word is read off that interval and nothing else:
**better** (the interval lies below 0), **worse** (above 0), **equivalent** (inside ±margin),
else **undecided** (DESIGN.md, "How the answer is decided"). A wrong word needs the interval to
miss the true mean on one side ("better" while d >= 0 needs high < 0 <= d; "equivalent" while
d >= margin needs high < margin <= d), so P(any wrong word in the study) <= P(any interval
misses) <= K · α/K = α, over both families (differs, equivalent) together. The printed interval
is the decision: "inside ±margin" and *equivalent* never disagree; an interval that excludes 0
inside ±margin reads "better, within the margin" (the verdict column keeps the four words).

Three designs, fixed before the run (``Rule.design``, frozen in sweep.json by sweep.confirm):
- ``fixed``: Student-t interval at the one look.
- ``group-sequential`` (--until-decided --max-seeds M: rounds of N up to M, planned in advance):
  repeated confidence intervals with a Lan–DeMets O'Brien–Fleming-type boundary calibrated for
  the t statistic (sweep.stats.gs_critical); the interval is the running intersection over the
  looks, valid whenever the run stops. Chosen on docs/confirm-design.md.
- ``sequence`` (--open-ended): Lai's anytime-valid t confidence sequence (sweep.stats.cs_critical),
  running intersection, valid at any number of looks; a later run may raise --max-seeds.
Assumption of all three: d is normal across replicates (independent replicates). The level is
over replicates on these test people; sweep.verdicts.population_interval also resamples them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sweep.stats import (crossed_bootstrap, cs_critical, cs_mixture, gs_critical, powered,
                         prob_improvement, replicates_for_power, t_critical)

VERDICTS = ("better", "worse", "equivalent", "undecided")
DESIGNS = ("fixed", "group-sequential", "sequence")
DEFAULT_MARGIN = 0.05   # px: DESIGN.md's default; below what a reader of a keypoint map would see
DEFAULT_ALPHA = 0.05
POWER = 0.8             # the plan's target: P(a decision) at d = 0 and at d = ±margin
ASSUMPTION = ("assumes d is normal across independent replicates (the t statistic's law; "
              "d's scale need not be known)")


@dataclass(frozen=True)
class Rule:
    """How verdicts are decided; fixed before the confirm phase runs (stored in sweep.json)."""

    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA
    sequential: bool = False
    """True: rounds of replicates were planned (--until-decided); False: one look."""
    first_round: int = 3
    """Replicates of the first look; each later round adds as many."""
    max_replicates: int = 3
    """Where a sequential confirm stops adding rounds: the last planned look."""
    design: str = ""
    """One of DESIGNS; empty: "group-sequential" when sequential, else "fixed"."""
    spending: str = "obf"
    """group-sequential: the α-spending function (sweep.stats.SPENDING)."""
    cs_horizon: int | None = None
    """sequence: replicates its mixture is tuned for (None: max_replicates)."""

    def __post_init__(self) -> None:
        if not self.design:
            object.__setattr__(self, "design", "group-sequential" if self.sequential else "fixed")
        if self.design not in DESIGNS:
            raise ValueError(f"unknown design {self.design!r}; valid: {', '.join(DESIGNS)}")

    def looks(self, n: int) -> list[int]:
        """Replicate counts at which the data were looked at, up to n replicates."""
        if self.design == "fixed":
            return [n]
        sizes = list(range(self.first_round, n + 1, self.first_round))
        return sizes + [n] if not sizes or sizes[-1] != n else sizes

    def critical(self, n: int, comparisons: int) -> float:
        """The multiplier c of the interval mean ± c·s/sqrt(n) at a look of n replicates.

        A group-sequential look outside the planned schedule gets inf: it has no α to spend.
        """
        a = self.alpha / max(comparisons, 1)
        if self.design == "fixed":
            return t_critical(n, a)
        if self.design == "sequence":
            return cs_critical(n, a, cs_mixture(self.cs_horizon or self.max_replicates, a))
        schedule = tuple(self.looks(self.max_replicates))
        return gs_critical(schedule, a, self.spending)[schedule.index(n)] if n in schedule \
            else math.inf

    def method(self) -> str:
        if self.design == "sequence":
            return ("anytime-valid t confidence sequence (Lai 1976, scale-invariant normal mixture "
                    f"tuned for {self.cs_horizon or self.max_replicates} replicates), running "
                    "intersection over the looks, valid at any number of looks")
        if self.design == "group-sequential":
            kind = {"obf": "O'Brien–Fleming", "pocock": "Pocock"}[self.spending]
            return (f"group-sequential repeated t intervals, Lan–DeMets {kind}-type α-spending "
                    f"calibrated for the t statistic, looks every {self.first_round} up to "
                    f"{self.max_replicates} replicates, running intersection over the looks")
        return "Student-t interval over paired replicates (fixed number of replicates)"

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> "Rule":
        """The rule of a plan recorded in sweep.json. A plan from before the designs existed
        (no "design") that was sequential ran the confidence sequence tuned for its maximum."""
        old = "design" not in raw
        sequence = raw.get("design") == "sequence" or (old and bool(raw.get("sequential")))
        top = int(raw.get("max_replicates", raw.get("first_round", 3)))
        return Rule(margin=float(raw.get("margin", DEFAULT_MARGIN)),
                    alpha=float(raw.get("alpha", DEFAULT_ALPHA)),
                    sequential=bool(raw.get("sequential", False)),
                    first_round=int(raw.get("first_round", 3)), max_replicates=top,
                    design="sequence" if sequence else str(raw.get("design") or ""),
                    spending=str(raw.get("spending") or "obf"),
                    cs_horizon=raw.get("cs_horizon") or (top if sequence and old else None))

    def to_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "alpha": self.alpha, "sequential": self.sequential,
                "first_round": self.first_round, "max_replicates": self.max_replicates,
                "design": self.design, "spending": self.spending, "cs_horizon": self.cs_horizon,
                "method": self.method(), "multiplicity": MULTIPLICITY}


MULTIPLICITY = ("Bonferroni over the study's K comparisons (cell x shape arm): each interval at "
                "level 1 − α/K, one interval deciding both 'differs' and 'equivalent'")


# --- intervals and words --------------------------------------------------------------------

def intervals(d: np.ndarray, rule: Rule, comparisons: int) -> tuple[np.ndarray, np.ndarray]:
    """The decision intervals of many replicate sequences at once: (low, high), each [paths].

    d: [paths, n], replicates in the order the looks saw them. The interval is the running
    intersection over rule.looks(n) of mean_k ± c_k·s_k/sqrt(n_k) (one look for "fixed").
    """
    d = np.atleast_2d(np.asarray(d, dtype=float))
    low = np.full(d.shape[0], -math.inf)
    high = np.full(d.shape[0], math.inf)
    for k in rule.looks(d.shape[1]):
        c = rule.critical(k, comparisons)
        if k < 2 or not math.isfinite(c):
            continue
        x = d[:, :k]
        half = c * x.std(axis=1, ddof=1) / math.sqrt(k)
        low, high = np.maximum(low, x.mean(axis=1) - half), np.minimum(high, x.mean(axis=1) + half)
    return low, high


def words(low: np.ndarray, high: np.ndarray, margin: float) -> np.ndarray:
    """The verdict word of each interval (module docstring); NaN or infinite ends: undecided."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    return np.select([high < 0, low > 0, (low > -margin) & (high < margin)],
                     ["better", "worse", "equivalent"], "undecided")


def verdict_text(word: str, low: float, high: float, margin: float) -> str:
    """The word as printed: a difference that is real but inside the margin says so."""
    if word in ("better", "worse") and low > -margin and high < margin:
        return f"{word}, within the margin"
    return word


def cell_stats(d: Sequence[float] | np.ndarray, rule: Rule, comparisons: int = 1
               ) -> dict[str, float]:
    """n, mean and sd of d, the decision interval and its level, and P(improvement).

    d: one value per replicate, in replicate order (the order the looks saw them); non-finite
    values are dropped. comparisons: K, the study's number of (cell, shape arm) rows.
    """
    x = np.asarray(d, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    low, high = intervals(x[None, :], rule, comparisons) if n else ([math.nan], [math.nan])
    fin = lambda v: float(v) if math.isfinite(v) else math.nan   # noqa: E731  (for CSV readers)
    return {"n": n, "d_mean": float(x.mean()) if n else math.nan,
            "d_sd": float(x.std(ddof=1)) if n >= 2 else math.nan,
            "ci_low": fin(low[0]), "ci_high": fin(high[0]),
            "level": 1.0 - rule.alpha / max(comparisons, 1), "comparisons": comparisons,
            "critical": rule.critical(n, comparisons) if n else math.inf,
            "p_improve": prob_improvement(x)}


def decide(cells: Sequence[dict[str, float]], rule: Rule) -> list[dict[str, Any]]:
    """One word per cell, read off its interval alone (module docstring)."""
    out = []
    for c in cells:
        word = str(words([c["ci_low"]], [c["ci_high"]], rule.margin)[0])
        out.append({**c, "verdict": word,
                    "verdict_text": verdict_text(word, c["ci_low"], c["ci_high"], rule.margin)})
    return out


def all_decided(cells: Sequence[dict[str, Any]]) -> bool:
    return bool(cells) and all(c["verdict"] != "undecided" for c in cells)


def should_stop(table: Any, rule: Rule, n: int) -> bool:
    """Whether a confirm at n replicates adds no more rounds: all decided, or the plan's end."""
    return not rule.sequential or all_decided(table.to_dict("records")) or n >= rule.max_replicates


# --- from the confirm trials to the verdict table ------------------------------------------

SCORED_COLUMN = "scored_test_rmse_px"   # test RMSE of the weights fixed before the run as scored
SHAPE_SHARE_COLUMN = "shape_share"   # alpha * shape term / base loss, the last epoch's batches
TEST_RMSE_COLUMN = "best_test_rmse_px"  # older studies: test RMSE at the epoch chosen on validation
GROUP_COLUMNS = ("test_group_ids", "test_group_sse", "test_group_count")
NO_TEST_METRICS = ("the confirm trials carry no test metrics (this fkd_core.train does not score "
                   "a test split for score_test=True), so no verdict can be given")
NO_GROUPS = ("not available: these confirm trials carry no per-test-group errors "
             "(test_group_sse, recorded since the fixed-budget confirm)")


def score_column(confirm: Any) -> str:
    """The scored weights' test RMSE where the trials have it, else the best-validation epoch's."""
    if SCORED_COLUMN in confirm and np.isfinite(confirm[SCORED_COLUMN].astype(float)).any():
        return SCORED_COLUMN
    return TEST_RMSE_COLUMN


def _pairs(confirm: Any) -> dict[tuple[str, str], Any]:
    """(cell, shape arm) -> DataFrame indexed by replicate with the base row "b" and the shape
    row "s" (row labels of `confirm`), for replicates where both finished with a finite score."""
    import pandas as pd

    col = score_column(confirm)
    ok = confirm[(confirm["outcome"] == "ok") & np.isfinite(confirm[col].astype(float))]
    ok = ok.drop_duplicates(["cell", "arm", "replicate"], keep="first")
    out = {}
    for cell, c in confirm.groupby("cell", sort=False):
        rows = ok[ok["cell"] == cell]
        label = lambda arm: pd.Series(rows.index[rows["arm"] == arm],  # noqa: E731
                                      index=rows.loc[rows["arm"] == arm, "replicate"])
        for shape in sorted(set(c["arm"]) - {"base"}):
            out[(cell, shape)] = pd.concat({"b": label("base"), "s": label(shape)}, axis=1,
                                           join="inner").sort_index()
    return out


def paired_differences(confirm: Any) -> dict[tuple[str, str], Any]:
    """(cell, shape arm) -> pandas Series of d = shape − base test RMSE, indexed by replicate.

    confirm: prepared confirm-phase trials (columns cell, arm, replicate, outcome, the test
    RMSE columns). Every non-base arm of a cell (e.g. "cgd" and "cgd@0.01") pairs with the base.
    """
    import pandas as pd

    score = confirm[score_column(confirm)].astype(float)
    return {k: pd.Series(score.loc[p["s"]].to_numpy() - score.loc[p["b"]].to_numpy(),
                         index=p.index, dtype=float) for k, p in _pairs(confirm).items()}


def verdict_table(confirm: Any, rule: Rule) -> Any:
    """One row per (cell, shape arm): n, mean and sd of d, the decision interval, the verdict,
    the plan (replicates for 80% power, their cost) and the interval beyond the test people."""
    import pandas as pd

    pairs = _pairs(confirm)
    diffs = paired_differences(confirm)
    keys = list(diffs)
    rows = decide([cell_stats(diffs[k].to_numpy(float), rule, len(keys)) for k in keys], rule)
    table = pd.DataFrame([{"cell": k[0], "shape": k[1], **r} for k, r in zip(keys, rows)])
    if table.empty:
        return table
    col = score_column(confirm)
    ok = confirm[confirm["outcome"] == "ok"]
    of = lambda cell, arm: ok[(ok["cell"] == cell) & (ok["arm"] == arm)]   # noqa: E731
    table["base_test_rmse"] = [of(c, "base")[col].astype(float).mean() for c, _ in keys]
    table["shape_test_rmse"] = [of(c, a)[col].astype(float).mean() for c, a in keys]
    table["alpha"] = [float(confirm[(confirm["cell"] == c) & (confirm["arm"] == a)]["alpha"].iloc[0])
                      for c, a in keys]
    # Item 7 of issue 19: how much the shape term weighs in training (alpha * shape / base loss
    # at the end), so that an "equivalent" from an alpha too small to act can be seen as such.
    table["shape_share"] = [of(c, a)[SHAPE_SHARE_COLUMN].astype(float).mean()
                            if SHAPE_SHARE_COLUMN in ok else math.nan for c, a in keys]
    table["scored"] = col
    # what the scored column holds ("final" weights or "best_val"), fixed before the run
    table["scored_as"] = ", ".join(sorted(set(ok["scored"].dropna().astype(str)))) \
        if "scored" in ok else "best_val"
    table["trial_minutes"] = [_minutes(of(c, "base")) + _minutes(of(c, a)) for c, a in keys]
    table["hardware"] = [hardware(pd.concat([of(c, "base"), of(c, a)])) for c, a in keys]
    table = pd.concat([table, pd.DataFrame([plan_row(r, rule, len(keys))
                                            for r in table.to_dict("records")])], axis=1)
    bounds = [population_interval(confirm, pairs[k], rows[i]["level"]) for i, k in enumerate(keys)]
    table["pop_low"], table["pop_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return table


def _minutes(rows: Any) -> float:
    """Mean wall time of one trial of an arm, in minutes (NaN when not recorded)."""
    if "wall_seconds" not in rows or rows.empty:
        return math.nan
    return float(rows["wall_seconds"].astype(float).mean()) / 60.0


def hardware(rows: Any) -> str:
    """Where the trials ran, from their device name (else device) and node columns."""
    dev = "device_name" if "device_name" in rows and rows["device_name"].notna().any() else "device"
    if dev not in rows or rows.empty:
        return "not recorded"
    node = rows["node"].astype(str) if "node" in rows else None
    names = rows[dev].astype(str) + ("" if node is None else " on " + node)
    return ", ".join(sorted(set(names)))


# --- the plan: what a decision will take ------------------------------------------------------

def plan_row(row: dict[str, Any], rule: Rule, comparisons: int) -> dict[str, Any]:
    """Replicates for 80% power at the margin under the design in force, and their cost.

    needed: the smallest number of replicates at which a look decides with P >= 80% both when
    d = 0 (equivalent) and when |d| = margin (better/worse), for normal d with the estimated
    sd (sweep.stats.decision_power: the look's own interval, so earlier looks only add to it);
    for a cell still undecided, also when the true d is its estimate (decision_power_at: an
    estimate between 0 and the margin is the hard case, which the two ends do not cover).
    A group-sequential plan can reach only its planned looks; past its maximum, or once it has
    run to its maximum undecided, `needed` is that of a fresh fixed-N confirm (`plan_design`
    says which). more: the replicates still to run (0 once decided; all `needed` for a fresh
    confirm, since a fixed-N look cannot be extended); more_minutes: more × the cell's measured
    minutes of one base and one shape trial.
    """
    sd, n = row["d_sd"], row["n"]
    undecided = row["verdict"] == "undecided"
    d = float(row.get("d_mean", math.nan))
    at = d if undecided and math.isfinite(d) else None
    design = rule.design
    needed = _needed(sd, rule, comparisons, at)
    ended = design == "group-sequential" and undecided and n >= rule.max_replicates
    if design == "group-sequential" and (needed is None or needed > rule.max_replicates or ended):
        design = "fixed"
        needed = _needed(sd, Rule(margin=rule.margin, alpha=rule.alpha), comparisons, at)
    # A fixed-N look cannot be extended validly (sweep.confirm refuses it): its replicates are
    # those of a new confirm. The two sequential designs go on from the n already run.
    fresh = design == "fixed"
    more = 0 if not undecided else (
        None if needed is None else needed if fresh else max(needed - n, 0))
    minutes = math.nan if more is None else more * row["trial_minutes"]
    return {"needed": needed, "more": more, "more_minutes": minutes, "plan_design": design}


def _needed(sd: float, rule: Rule, comparisons: int, d: float | None = None) -> int | None:
    if not math.isfinite(sd):
        return None
    if rule.design == "group-sequential":
        # only the planned looks exist; the first one reaching the power is the answer
        return next((k for k in rule.looks(rule.max_replicates)
                     if powered(k, rule.critical(k, comparisons), sd, rule.margin, POWER, d)), None)
    return replicates_for_power(sd, rule.margin, lambda k: rule.critical(k, comparisons), POWER,
                                d=d)


# --- beyond the test people -------------------------------------------------------------------

def has_groups(confirm: Any) -> bool:
    return all(c in confirm for c in GROUP_COLUMNS) and confirm["test_group_sse"].notna().any()


def population_interval(confirm: Any, pair: Any, level: float) -> tuple[float, float]:
    """The interval of mean d that also resamples the test people (sweep.stats.crossed_bootstrap)
    at the decision's level; (NaN, NaN) when the trials carry no per-group columns."""
    if not has_groups(confirm) or len(pair) < 2:
        return math.nan, math.nan
    rows = [*pair["s"], *pair["b"]]
    ids = [tuple(v) if isinstance(v, (list, tuple, np.ndarray)) else None
           for v in confirm.loc[rows, "test_group_ids"]]
    if None in ids or len(set(ids)) != 1:   # a trial without them, or another group order
        return math.nan, math.nan
    stack = lambda rows, col: np.stack([np.asarray(v, dtype=float)   # noqa: E731
                                        for v in confirm.loc[rows, col]])
    return crossed_bootstrap(stack(pair["s"], "test_group_sse"), stack(pair["s"], "test_group_count"),
                             stack(pair["b"], "test_group_sse"), stack(pair["b"], "test_group_count"),
                             level)


def has_test_metrics(confirm: Any) -> bool:
    return bool(len(confirm)) and bool(
        np.isfinite(confirm[score_column(confirm)].astype(float)).any())
