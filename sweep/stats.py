"""Statistics for the sweep analysis: pure functions, no I/O, no plotting.

    >>> from sweep.stats import mean_ci, t_critical
    >>> round(t_critical(3, 0.05), 6)                  # t(0.975, 2)
    4.302653
    >>> round(mean_ci([1.0, 2.0, 3.0]).half_width, 6)   # t(0.975, 2) * s / sqrt(n)
    2.484138

The distributions come from scipy.stats. What is written here is what no library has: the
interval multipliers of the three confirm designs (fixed N, a t-calibrated group-sequential
boundary, Lai's anytime-valid confidence sequence), the power of a decision by interval, the
bootstrap over test groups crossed with replicates, the Pareto front and the ε² ranking.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from scipy import integrate
from scipy import stats as sps

if TYPE_CHECKING:   # pandas is imported where used: sweep.run's --help loads this module's users
    import pandas as pd


@dataclass(frozen=True)
class MeanCI:
    """Mean of n finite values and its two-sided confidence interval.

    low/high are NaN when n < 2 (no spread to estimate); mean is NaN when n == 0.
    """

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (NaN intervals never do)."""
        return bool(self.low > 0.0 or self.high < 0.0)

    def fmt(self, digits: int = 3) -> str:
        """'1.234 [1.100, 1.368]' for tables; 'n/a' pieces where undefined."""
        def num(x: float) -> str:
            return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"
        if self.n < 2:
            return num(self.mean)
        return f"{num(self.mean)} [{num(self.low)}, {num(self.high)}]"


# --- means, paired differences ------------------------------------------------------------

def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The finite values as a float array (a diverged replicate's inf is not a difference)."""
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def mean_ci(values: Sequence[float] | np.ndarray | pd.Series, level: float = 0.95) -> MeanCI:
    """Mean and Student-t CI of the finite values (NaN/inf are dropped, so n counts the rest).

    CI = mean ± t_{(1+level)/2, n-1} · s / sqrt(n), with s the sample standard deviation (ddof=1).
    """
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, level)
    mean = float(x.mean())
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, 1, level)
    half = t_critical(n, 1.0 - level) * float(x.std(ddof=1)) / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, level)


def paired_difference(a: pd.Series, b: pd.Series, level: float = 0.95) -> MeanCI:
    """Mean and CI of b − a over the index labels both have (the pairing key).

    a, b: one value per replicate, indexed by the key that makes a pair (e.g. a MultiIndex
    (seed, split_seed)); labels present on one side only, or non-finite on either, are dropped.
    Pairing removes the variance the two arms share (same split, same initialisation seed),
    which is why this interval is narrower than the difference of two independent CIs.
    """
    import pandas as pd

    if not a.index.is_unique or not b.index.is_unique:
        raise ValueError("paired_difference: each pairing key must appear once per arm")
    joined = pd.concat({"a": a, "b": b}, axis=1, join="inner")
    return mean_ci((joined["b"] - joined["a"]).to_numpy(dtype=float), level)


# --- Pareto front -------------------------------------------------------------------------

def pareto_front(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point dominates, minimising both x and y.

    q dominates p when q <= p in both coordinates and q < p in at least one; exact duplicates
    do not dominate each other, so both stay on the front. Non-finite points are never on it.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    le = (x[None, :] <= x[:, None]) & (y[None, :] <= y[:, None])  # [i, j]: j at most i
    lt = (x[None, :] < x[:, None]) | (y[None, :] < y[:, None])
    dominated = (le & lt & finite[None, :]).any(axis=1)
    return finite & ~dominated


# --- importance ---------------------------------------------------------------------------

def _levels(column: pd.Series, max_levels: int) -> pd.Series:
    """Group labels of a column: its values, or quantile bins when it is numeric and finer."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column) \
            and column.nunique() > max_levels:
        return pd.qcut(column.rank(method="first"), max_levels, labels=False)
    return column.astype(str)


def epsilon_squared(target: pd.Series, groups: pd.Series) -> float:
    """Share of the target's variance explained by the groups, corrected for their number.

    ε² = (SS_between − (k − 1)·MS_within) / SS_total, clipped at 0. Plain η² = SS_between /
    SS_total grows with the number of groups k even when they explain nothing (expected
    (k − 1)/(n − 1) under the null); subtracting the within-group mean square removes that bias.
    """
    import pandas as pd

    y = target.to_numpy(dtype=float)
    n = y.size
    ss_total = float(((y - y.mean()) ** 2).sum())
    means = target.groupby(groups.to_numpy()).transform("mean").to_numpy(dtype=float)
    ss_within = float(((y - means) ** 2).sum())
    k = int(pd.Series(groups.to_numpy()).nunique())
    if n <= k or ss_total == 0.0 or k < 2:
        return 0.0
    ms_within = ss_within / (n - k)
    return max(0.0, (ss_total - ss_within - (k - 1) * ms_within) / ss_total)


def importance_ranking(table: pd.DataFrame, params: Sequence[str], target: str,
                       max_levels: int = 4) -> pd.Series:
    """ε² of the target for each parameter, highest first (a variance-based ranking).

    Categorical parameters group by value; numeric ones with more than max_levels distinct
    values group into max_levels equal-count bins. Rows with a non-finite target are ignored.
    """
    import pandas as pd

    rows = table[np.isfinite(table[target].to_numpy(dtype=float))]
    scores = {p: epsilon_squared(rows[target], _levels(rows[p], max_levels)) for p in params}
    return pd.Series(scores, name="epsilon_squared", dtype=float).sort_values(ascending=False)


# --- decisions: interval multipliers of the three confirm designs ---------------------------
# Every design's interval at a look of n replicates is mean ± c · s / sqrt(n); only c differs.

def t_critical(n: int, alpha: float) -> float:
    """Two-sided (1 − alpha) Student-t multiplier with n − 1 df (inf when n < 2)."""
    return float(sps.t.ppf(1.0 - alpha / 2.0, n - 1)) if n >= 2 else math.inf


def obf_spending(fraction: float | np.ndarray, alpha: float) -> np.ndarray:
    """Lan–DeMets O'Brien–Fleming-type spending: α spent by information fraction t,
    2 − 2Φ(z_{1−α/2} / sqrt(t)). Almost nothing early, nearly all of α at the planned maximum."""
    t = np.asarray(fraction, dtype=float)
    return 2.0 - 2.0 * sps.norm.cdf(sps.norm.ppf(1.0 - alpha / 2.0) / np.sqrt(t))


def pocock_spending(fraction: float | np.ndarray, alpha: float) -> np.ndarray:
    """Lan–DeMets Pocock-type spending α·ln(1 + (e − 1)·t): more α early, wider at the end."""
    return alpha * np.log1p((math.e - 1.0) * np.asarray(fraction, dtype=float))


SPENDING: dict[str, Callable[[float | np.ndarray, float], np.ndarray]] = {
    "obf": obf_spending, "pocock": pocock_spending}

CALIBRATION_PATHS = 400_000   # Monte-Carlo paths per boundary: ~1% relative error on the α spent
CALIBRATION_SEED = 20261201   # fixed, so the boundary of a schedule is the same in every run


@functools.lru_cache(maxsize=64)
def gs_critical(looks: tuple[int, ...], alpha: float, spending: str = "obf") -> tuple[float, ...]:
    """Two-sided group-sequential multipliers c_k for looks at n_1 < ... < n_K replicates.

    Calibrated for the t statistic, not the normal one: the pivot T_k = (mean_k − μ) /
    (s_k / sqrt(n_k)) of normal data has a joint law over the looks that does not depend on μ or
    σ, so one simulation (μ = 0, σ = 1, fixed seed) gives c_k with P(|T_j| >= c_j first at
    j = k) = α(t_k) − α(t_{k−1}), t_k = n_k / n_K. Normal-theory boundaries would be
    anti-conservative at n = 3 (t with 2 df has heavy tails). A look with n < 2 spends nothing.
    The intervals mean_k ± c_k s_k / sqrt(n_k) then cover μ at every look at once with
    probability 1 − α (repeated confidence intervals), whenever the run stops.
    """
    pivots = _pivots(looks)
    spent = SPENDING[spending](np.asarray(looks, dtype=float) / looks[-1], alpha)
    alive = np.ones(len(pivots), dtype=bool)
    out = []
    for k, n in enumerate(looks):
        need = int(round(spent[k] * len(pivots))) - int((~alive).sum())
        if n < 2 or need <= 0:
            out.append(math.inf)
            continue
        values = np.sort(pivots[alive, k])[::-1]
        c = float(values[min(need, len(values) - 1)])
        alive &= ~(pivots[:, k] > c)
        out.append(c)
    return tuple(out)


def _pivots(looks: tuple[int, ...], chunk: int = 50_000) -> np.ndarray:
    """|T_k| at each look of CALIBRATION_PATHS standard normal sequences: [paths, looks]."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    idx = np.asarray(looks) - 1
    parts = []
    for _ in range(CALIBRATION_PATHS // chunk):
        x = rng.standard_normal((chunk, looks[-1]))
        parts.append(np.abs(running_t(x)[:, idx]).astype(np.float32))   # [paths, looks]: halve it
    return np.concatenate(parts)


def running_t(x: np.ndarray) -> np.ndarray:
    """t statistic of the first n values of each row, for every n: [paths, N] (NaN at n = 1)."""
    n = np.arange(1, x.shape[1] + 1)
    mean = np.cumsum(x, axis=1) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (np.cumsum(x * x, axis=1) - n * mean ** 2) / (n - 1)
        return mean / np.sqrt(np.maximum(var, 0.0) / n)


def cs_evalue(n: int, mean: float, ss: float, mu: float, c: float) -> float:
    """Lai's (1976) scale-invariant mixture e-value of H0: mean == mu after n normal values.

    E_n = sqrt(c / (n + c)) · (A / (A − n·u / (n + c)))^(n/2), A = ss + u, u = n·(mean − mu)²,
    ss = Σ(x − mean)²: the likelihood ratio of the t-statistic's invariant sequence, mixed over
    the standardised effect δ ~ N(0, 1/c). It is a nonnegative martingale under H0 whatever σ, so
    by Ville's inequality P(E_n >= 1/a at any n) <= a: valid however many looks are taken.
    """
    if n < 2:
        return 1.0
    u = n * (mean - mu) ** 2
    a = ss + u
    if a <= 0.0:
        return 1.0
    denom = ss + u * c / (n + c)
    if denom <= 0.0:
        return math.inf
    return math.sqrt(c / (n + c)) * (a / denom) ** (n / 2.0)


def cs_critical(n: int, alpha: float, c: float) -> float:
    """Multiplier of the confidence sequence {mu : E_n(mu) < 1/alpha}: mean ± this · s / sqrt(n).

    Solving E_n(mu) = 1/alpha for u = n·(mean − mu)² with ss = (n − 1)·s²: with
    K = (sqrt((n + c)/c) / alpha)^(2/n), the multiplier is sqrt((K − 1)(n − 1) / (1 − K·c/(n + c)));
    infinite (no information yet) when K·c/(n + c) >= 1.
    """
    if n < 2:
        return math.inf
    k = (math.sqrt((n + c) / c) / alpha) ** (2.0 / n)
    room = 1.0 - k * c / (n + c)
    return math.sqrt((k - 1.0) * (n - 1) / room) if room > 0.0 else math.inf


@functools.lru_cache(maxsize=256)
def cs_mixture(horizon: int, alpha: float = 0.05) -> float:
    """The mixture parameter c that makes the sequence narrowest at `horizon` replicates.

    Chosen from the plan alone (before any data), so it costs no validity.
    """
    grid = np.geomspace(0.01, 100.0, 400)
    return float(grid[int(np.argmin([cs_critical(horizon, alpha, float(c)) for c in grid]))])


def prob_improvement(values: Sequence[float] | np.ndarray) -> float:
    """P(mean difference < 0): the Student-t posterior of the mean under a flat prior
    (the reference posterior for normal data). NaN when n < 2."""
    x = _finite(values)
    if x.size < 2:
        return math.nan
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    if se == 0.0:
        return float(x.mean() < 0)
    return float(sps.t.cdf(-float(x.mean()) / se, x.size - 1))


# --- power: how many replicates a decision takes ----------------------------------------------

def decision_power(n: int, crit: float, sd: float, margin: float) -> float:
    """P(a look at n replicates decides) for normal d of the given sd, the interval being
    mean ± crit · s / sqrt(n): the smaller of P(inside ±margin | d = 0) (|d| < margin settled:
    equivalent, or "better/worse, within the margin") and P(excludes 0 | d = margin)
    (better/worse), the two cases a plan must be able to tell apart.
    """
    if n < 2 or not math.isfinite(crit):
        return 0.0
    if sd <= 0.0:
        return 1.0
    nu, root = n - 1, math.sqrt(n)
    p_differs = float(sps.nct.sf(crit, nu, margin * root / sd))
    # Inside ±margin when d = 0: |mean| < margin − crit·s/sqrt(n), with q = nu·s²/sd² ~ χ²(nu).
    q_max = nu * (margin * root / (crit * sd)) ** 2

    def inside(q: float) -> float:
        room = (margin - crit * sd * math.sqrt(q / nu) / root) * root / sd
        return float(sps.chi2.pdf(q, nu) * (2.0 * sps.norm.cdf(room) - 1.0))

    p_equiv = integrate.quad(inside, 0.0, q_max, limit=200)[0] if q_max > 0 else 0.0
    return min(p_differs, p_equiv)


def decision_power_at(n: int, crit: float, sd: float, margin: float, d: float) -> float:
    """P(a look at n replicates decides anything) when the true mean of d is `d`: the interval
    mean ± crit · s / sqrt(n) either excludes 0 or lies inside ±margin. It stays undecided
    exactly when margin − h <= |mean| <= h (h the half-width), so the hardest true d lies between
    0 and the margin (at margin/2 a decision needs h < margin/2), where decision_power's two
    cases are the easy ends.
    """
    if n < 2 or not math.isfinite(crit):
        return 0.0
    if sd <= 0.0:
        return 1.0
    nu, root = n - 1, math.sqrt(n)
    se = sd / root

    def undecided(q: float) -> float:   # q = nu·s²/sd² ~ χ²(nu)
        h = crit * se * math.sqrt(q / nu)
        low = max(0.0, margin - h)
        if low >= h:
            return 0.0
        band = (sps.norm.cdf((h - d) / se) - sps.norm.cdf((low - d) / se)
                + sps.norm.cdf((-low - d) / se) - sps.norm.cdf((-h - d) / se))
        return float(sps.chi2.pdf(q, nu) * band)

    # undecided needs h > margin/2, i.e. q above this bound
    q_low = nu * (margin * root / (2.0 * crit * sd)) ** 2
    q_high = max(float(sps.chi2.isf(1e-12, nu)), q_low)
    p_undecided = integrate.quad(undecided, q_low, q_high, limit=200)[0] if q_high > q_low else 0.0
    return 1.0 - p_undecided


def powered(n: int, crit: float, sd: float, margin: float, power: float,
            d: float | None = None) -> bool:
    """Whether a look at n replicates (multiplier crit) decides with at least `power` at both
    ends (decision_power) and, given `d`, at that true d too (decision_power_at)."""
    return decision_power(n, crit, sd, margin) >= power and (
        d is None or decision_power_at(n, crit, sd, margin, d) >= power)


def replicates_for_power(sd: float, margin: float, crit: Callable[[int], float],
                         power: float = 0.8, limit: int = 100_000,
                         d: float | None = None) -> int | None:
    """Smallest n whose look decides with at least `power` (decision_power; with `d`, also
    decision_power_at that true d), crit(n) being the design's multiplier at n; None when not
    even `limit` replicates do. Power grows with n, so a doubling search then bisection finds it
    in a few dozen evaluations."""
    if not (math.isfinite(sd) and margin > 0):
        return None

    ok = lambda n: powered(n, crit(n), sd, margin, power, d)  # noqa: E731
    hi = 2
    while not ok(hi):
        if hi >= limit:
            return None
        hi = min(2 * hi, limit)
    lo = max(1, hi // 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi   # ok(hi) holds and ok(lo) does not: lo failed the doubling, or lo = 1


# --- beyond the test people: groups crossed with replicates -----------------------------------

def crossed_bootstrap(shape_sse: np.ndarray, shape_count: np.ndarray, base_sse: np.ndarray,
                      base_count: np.ndarray, level: float, draws: int = 4000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean d when both the test people and the replicates are resampled.

    *_sse, *_count: [replicates, groups], the per-test-group sums of squared coordinate errors
    and present-coordinate counts of each replicate's scored weights (same group order). One
    draw reweights the groups (multinomial: the same people for every replicate and both arms,
    which keeps the pairing) and independently resamples the replicates; d per replicate is
    RMSE(shape) − RMSE(base) over the reweighted groups, and the draw's value their mean.
    """
    rng = np.random.default_rng(seed)
    reps, groups = shape_sse.shape
    w = rng.multinomial(groups, np.full(groups, 1.0 / groups), size=draws).astype(float)

    def rmse(sse: np.ndarray, count: np.ndarray) -> np.ndarray:   # [draws, replicates]
        return np.sqrt((w @ sse.T) / np.maximum(w @ count.T, 1.0))

    d = rmse(shape_sse, shape_count) - rmse(base_sse, base_count)
    pick = rng.integers(0, reps, size=(draws, reps))
    means = np.take_along_axis(d, pick, axis=1).mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)
