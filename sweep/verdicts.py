"""The decision: one verdict per cell from the confirm phase's paired test differences.

    >>> from sweep.verdicts import Rule, decide, cell_stats
    >>> rule = Rule(margin=0.05)
    >>> decide([cell_stats([-0.3, -0.2, -0.25], rule)], rule)[0]["verdict"]
    'better'

d = test RMSE(shape arm) − test RMSE(base arm) per replicate (same seed, same split). A cell is
**better** when d's interval lies below 0, **worse** above 0, **equivalent** inside ±margin,
else **undecided** (DESIGN.md, "How the answer is decided"). Two families of p-values carry the
decision, each Holm-adjusted over the cells: p_zero (H0: mean d = 0; rejected -> better or worse
by the sign of the mean) and p_equiv (H0: |mean d| >= margin; rejected -> equivalent). At most
one of the two nulls of a cell is true, so a wrong word needs a true null rejected.

Two interval methods, fixed before the run (``Rule.sequential``):
- fixed number of replicates: Student-t. p_zero <= a exactly when the (1 − a) t-interval
  excludes 0; p_equiv <= a exactly when it lies inside ±margin (sweep.stats.tost_pvalue).
- ``--until-decided``: Lai's anytime-valid t confidence sequence (sweep.stats.cs_evalue). Its
  coverage holds at every look at once, so adding replicates after looking keeps the error rate.
  p_zero = 1 / (largest e-value of d = 0 over the looks so far); p_equiv from the current look.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sweep.stats import (cs_evalue, cs_half_width, cs_mixture, holm, mean_ci, prob_improvement,
                         t_pvalue, tost_pvalue)

VERDICTS = ("better", "worse", "equivalent", "undecided")
DEFAULT_MARGIN = 0.05   # px: DESIGN.md's default; below what a reader of a keypoint map would see
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Rule:
    """How verdicts are decided; fixed before the confirm phase runs (stored in sweep.json)."""

    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA
    sequential: bool = False
    """True: --until-decided (confidence sequence, valid under repeated looks)."""
    first_round: int = 3
    """Replicates of the first look; each later round adds as many."""
    max_replicates: int = 3
    """Where a sequential confirm stops adding rounds; also tunes the sequence's mixture."""

    def looks(self, n: int) -> list[int]:
        """Replicate counts at which the data were looked at, up to n replicates."""
        sizes = list(range(self.first_round, n + 1, self.first_round))
        return sizes + [n] if not sizes or sizes[-1] != n else sizes

    def method(self) -> str:
        if self.sequential:
            return ("anytime-valid t confidence sequence (Lai 1976, scale-invariant normal "
                    f"mixture tuned for {self.max_replicates} replicates), valid at every look")
        return "Student-t interval over paired replicates (fixed number of replicates)"

    def to_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "alpha": self.alpha, "sequential": self.sequential,
                "first_round": self.first_round, "max_replicates": self.max_replicates,
                "method": self.method(), "multiplicity": "Holm over cells"}


def cell_stats(d: Sequence[float] | np.ndarray, rule: Rule) -> dict[str, float]:
    """Mean, 95% interval, p_zero, p_equiv and P(improvement) of one cell's differences.

    d: one value per replicate, in replicate order (the order the looks saw them).
    """
    x = np.asarray(d, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    out = {"n": n, "d_mean": float(x.mean()) if n else math.nan,
           "p_improve": prob_improvement(x)}
    if rule.sequential:
        out.update(_sequential(x, rule))
    else:
        ci = mean_ci(x, 1.0 - rule.alpha)
        out.update(ci_low=ci.low, ci_high=ci.high, p_zero=t_pvalue(x),
                   p_equiv=tost_pvalue(x, rule.margin))
    return out


def _sequential(x: np.ndarray, rule: Rule) -> dict[str, float]:
    n = x.size
    if n < 2:
        return {"ci_low": math.nan, "ci_high": math.nan, "p_zero": math.nan, "p_equiv": math.nan}
    c = cs_mixture(rule.max_replicates, rule.alpha)
    e_zero = max(cs_evalue(k, float(x[:k].mean()), _ss(x[:k]), 0.0, c)
                 for k in rule.looks(n) if k >= 2)
    mean, ss = float(x.mean()), _ss(x)
    if abs(mean) < rule.margin:
        # E_n grows with |mu − mean|, so the nearer margin is the hardest |mu| >= margin to exclude.
        e_equiv = min(cs_evalue(n, mean, ss, -rule.margin, c), cs_evalue(n, mean, ss, rule.margin, c))
    else:
        e_equiv = 1.0
    half = cs_half_width(n, ss, 1.0 - rule.alpha, c)
    return {"ci_low": mean - half, "ci_high": mean + half, "p_zero": min(1.0, 1.0 / e_zero),
            "p_equiv": min(1.0, 1.0 / e_equiv)}


def _ss(x: np.ndarray) -> float:
    return float(((x - x.mean()) ** 2).sum())


def decide(cells: Sequence[dict[str, float]], rule: Rule) -> list[dict[str, Any]]:
    """Holm over the cells in both families, then one word per cell (module docstring)."""
    zero = holm([c["p_zero"] for c in cells])
    equiv = holm([c["p_equiv"] for c in cells])
    out = []
    for c, pz, pe in zip(cells, zero, equiv):
        if pz <= rule.alpha:
            word = "better" if c["d_mean"] < 0 else "worse"
        elif pe <= rule.alpha:
            word = "equivalent"
        else:
            word = "undecided"
        out.append({**c, "p_zero_holm": pz, "p_equiv_holm": pe, "verdict": word})
    return out


def all_decided(cells: Sequence[dict[str, Any]]) -> bool:
    return bool(cells) and all(c["verdict"] != "undecided" for c in cells)


# --- from the confirm trials to the verdict table ------------------------------------------

TEST_RMSE_COLUMN = "best_test_rmse_px"   # test RMSE at the epoch chosen on validation
NO_TEST_METRICS = ("the confirm trials carry no test metrics (this fkd_core.train does not score "
                   "a test split for score_test=True), so no verdict can be given")


def paired_differences(confirm: Any) -> dict[tuple[str, str], Any]:
    """(cell, shape term) -> pandas Series of d = shape − base test RMSE, indexed by replicate.

    confirm: prepared confirm-phase trials (columns cell, arm, replicate, outcome, best_test_*).
    Only replicates where both arms finished with a finite test RMSE form a pair.
    """
    import pandas as pd

    ok = confirm[(confirm["outcome"] == "ok") & np.isfinite(confirm[TEST_RMSE_COLUMN].astype(float))]
    out = {}
    for cell, c in confirm.groupby("cell", sort=False):
        rows = ok[ok["cell"] == cell]
        base = rows[rows["arm"] == "base"].groupby("replicate")[TEST_RMSE_COLUMN].mean()
        for shape in sorted(set(c["arm"]) - {"base"}):
            shaped = rows[rows["arm"] == shape].groupby("replicate")[TEST_RMSE_COLUMN].mean()
            both = pd.concat({"b": base, "s": shaped}, axis=1, join="inner").sort_index()
            out[(cell, shape)] = both["s"] - both["b"]
    return out


def verdict_table(confirm: Any, rule: Rule) -> Any:
    """One row per (cell, shape term): n, mean d, interval, p-values (raw and Holm), verdict."""
    import pandas as pd

    diffs = paired_differences(confirm)
    keys = list(diffs)
    rows = decide([cell_stats(diffs[k].to_numpy(float), rule) for k in keys], rule)
    table = pd.DataFrame([{"cell": k[0], "shape": k[1], **r} for k, r in zip(keys, rows)])
    if table.empty:
        return table
    ok = confirm[confirm["outcome"] == "ok"]
    for side in ("base", "shape"):
        table[f"{side}_test_rmse"] = [
            ok[(ok["cell"] == cell) & (ok["arm"] == (arm if side == "shape" else "base"))]
            [TEST_RMSE_COLUMN].mean() for cell, arm in keys]
    table["alpha"] = [float(confirm[(confirm["cell"] == cell) & (confirm["arm"] == arm)]["alpha"]
                            .iloc[0]) for cell, arm in keys]
    return table


def has_test_metrics(confirm: Any) -> bool:
    return bool(len(confirm)) and bool(np.isfinite(confirm[TEST_RMSE_COLUMN].astype(float)).any())
