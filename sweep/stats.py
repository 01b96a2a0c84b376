"""Statistics for the sweep analysis: pure functions, no I/O, no plotting.

    >>> from sweep.stats import mean_ci, t_quantile
    >>> round(t_quantile(0.975, 2), 6)
    4.302653
    >>> round(mean_ci([1.0, 2.0, 3.0]).half_width, 6)   # t(0.975, 2) * s / sqrt(n)
    2.484138

Confidence intervals are Student-t intervals over independent replicates (seeds). The t quantile
is computed here (bisection on the CDF written with the regularised incomplete beta function)
because scipy is not a dependency of the project; it matches tabulated values to 1e-6.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

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


# --- Student t quantile -------------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast only below the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of t_cdf: the t with P(T <= t) = p, by bisection (exact to ~1e-12)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    hi = 1.0
    while t_cdf(hi, df) < p:  # df=1, p=0.9995 needs ~637: doubling gets there in 10 steps
        hi *= 2.0
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


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
    half = t_quantile((1.0 + level) / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
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


# --- decisions: p-values, Holm, an anytime-valid confidence sequence ------------------------


def t_pvalue(values: Sequence[float] | np.ndarray, mu: float = 0.0) -> float:
    """Two-sided p-value of Student's one-sample t-test of mean == mu (NaN when n < 2)."""
    x = _finite(values)
    if x.size < 2:
        return math.nan
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return 0.0 if float(x.mean()) != mu else 1.0
    t = (float(x.mean()) - mu) / (sd / math.sqrt(x.size))
    return min(1.0, 2.0 * t_cdf(-abs(t), x.size - 1))


def tost_pvalue(values: Sequence[float] | np.ndarray, margin: float) -> float:
    """p-value that the mean lies inside (−margin, margin), scaled to match a two-sided CI.

    2 · max of the two one-sided t-tests (mean <= −margin, mean >= margin), capped at 1: it is
    <= a exactly when the two-sided (1 − a) Student-t CI lies inside ±margin, so at a = 0.05 the
    rule reads "the 95% CI is inside ±margin", as DESIGN.md defines equivalence.
    """
    x = _finite(values)
    if x.size < 2:
        return math.nan
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return 0.0 if abs(float(x.mean())) < margin else 1.0
    se, mean = sd / math.sqrt(x.size), float(x.mean())
    p_low = 1.0 - t_cdf((mean + margin) / se, x.size - 1)   # H0: mean <= -margin
    p_high = t_cdf((mean - margin) / se, x.size - 1)        # H0: mean >= margin
    return min(1.0, 2.0 * max(p_low, p_high))


def prob_improvement(values: Sequence[float] | np.ndarray) -> float:
    """P(mean difference < 0): the Student-t posterior of the mean under a flat prior
    (the reference posterior for normal data), i.e. t_cdf(−mean / se, n − 1). NaN when n < 2."""
    x = _finite(values)
    if x.size < 2:
        return math.nan
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    if se == 0.0:
        return float(x.mean() < 0)
    return t_cdf(-float(x.mean()) / se, x.size - 1)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family).

    Sorted ascending, p_adj(k) = max over j <= k of min(1, (m − j + 1) · p(j)); rejecting where
    p_adj <= alpha keeps the family-wise error rate <= alpha under any dependence.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


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


def cs_half_width(n: int, ss: float, level: float, c: float) -> float:
    """Half-width of the confidence sequence {mu : E_n(mu) < 1/(1 − level)} around the mean.

    Solving E_n(mu) = 1/a for u = n·(mean − mu)²: with K = (sqrt((n + c)/c) / a)^(2/n),
    u < (K − 1)·ss / (1 − K·c/(n + c)); infinite (no information yet) when K·c/(n + c) >= 1.
    """
    if n < 2:
        return math.inf
    alpha = 1.0 - level
    k = (math.sqrt((n + c) / c) / alpha) ** (2.0 / n)
    room = 1.0 - k * c / (n + c)
    if room <= 0.0:
        return math.inf
    return math.sqrt((k - 1.0) * ss / (n * room))


def cs_mixture(max_n: int, alpha: float = 0.05) -> float:
    """The mixture parameter c that makes the sequence narrowest at max_n replicates.

    Chosen from the planned maximum alone (before any data), so it costs no validity.
    """
    grid = np.geomspace(0.01, 100.0, 400)
    widths = [cs_half_width(max_n, float(max_n - 1), 1.0 - alpha, float(c)) for c in grid]
    return float(grid[int(np.argmin(widths))])
