"""sweep.stats on inputs whose answers are known by hand or from published t tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sweep.stats import (MeanCI, betainc, epsilon_squared, importance_ranking, mean_ci,
                         paired_difference, pareto_front, t_cdf, t_quantile)

# Two-sided 95% (and a few other) quantiles as printed in any t table.
T_TABLE = [(0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 4, 2.776445),
           (0.975, 9, 2.262157), (0.975, 30, 2.042272), (0.95, 5, 2.015048),
           (0.995, 3, 5.840909), (0.9995, 1, 636.619249)]


@pytest.mark.parametrize("p, df, expected", T_TABLE)
def test_t_quantile_matches_table(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-6)
    assert t_quantile(1.0 - p, df) == pytest.approx(-expected, abs=1e-6)


def test_t_cdf_and_betainc_known_values() -> None:
    assert t_cdf(0.0, 7) == 0.5
    # df=1 is the Cauchy distribution: F(t) = 1/2 + atan(t)/pi.
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)
    assert t_cdf(-3.0, 1) == pytest.approx(0.5 + math.atan(-3.0) / math.pi, abs=1e-12)
    # I_x(1, 1) = x and I_x(2, 1) = x^2.
    assert betainc(1.0, 1.0, 0.3) == pytest.approx(0.3, abs=1e-12)
    assert betainc(2.0, 1.0, 0.3) == pytest.approx(0.09, abs=1e-12)


def test_t_quantile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


def test_mean_ci_hand_computed() -> None:
    # mean 2, s = 1, n = 3: half width = t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051.
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.n == 3
    assert ci.half_width == pytest.approx(2.484138, abs=1e-6)
    assert ci.low == pytest.approx(2.0 - 2.484138, abs=1e-6)
    assert not ci.excludes_zero()


def test_mean_ci_drops_non_finite_and_small_samples() -> None:
    ci = mean_ci([4.0, math.nan, math.inf, 6.0])
    assert ci.n == 2 and ci.mean == 5.0
    # s = sqrt(2), t(0.975, 1) = 12.706205: half = 12.706205 * sqrt(2) / sqrt(2).
    assert ci.half_width == pytest.approx(12.706205, abs=1e-6)
    one = mean_ci([3.0])
    assert one.mean == 3.0 and math.isnan(one.low) and one.fmt() == "3.000"
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)


def test_paired_difference_matches_on_key() -> None:
    key = ["seed", "split_seed"]
    a = pd.Series([10.0, 20.0, 30.0, 40.0],
                  index=pd.MultiIndex.from_tuples([(0, 0), (1, 0), (2, 0), (3, 0)], names=key))
    # Seed 3 is missing from b, seed 4 from a, and seed 5 is NaN: only seeds 0..2 pair.
    b = pd.Series([30.0, 22.0, 11.0, 99.0, math.nan],
                  index=pd.MultiIndex.from_tuples([(2, 0), (1, 0), (0, 0), (4, 0), (5, 0)],
                                                  names=key))
    d = paired_difference(a, b)
    # Differences b - a: seed 0 -> 1, seed 1 -> 2, seed 2 -> 0: mean 1, s = 1, n = 3.
    assert d.n == 3 and d.mean == pytest.approx(1.0)
    assert d.half_width == pytest.approx(2.484138, abs=1e-6)


def test_paired_difference_narrower_than_unpaired() -> None:
    # A large shared seed effect plus a constant improvement of 0.5: pairing removes the former.
    seed_effect = np.array([0.0, 5.0, -3.0, 8.0])
    a = pd.Series(10.0 + seed_effect)
    b = pd.Series(9.5 + seed_effect + np.array([0.01, -0.01, 0.02, -0.02]))
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(-0.5) and d.excludes_zero()
    assert d.half_width < mean_ci(a).half_width / 10


def test_paired_difference_rejects_duplicate_keys() -> None:
    with pytest.raises(ValueError, match="once per arm"):
        paired_difference(pd.Series([1.0, 2.0], index=[0, 0]), pd.Series([1.0], index=[0]))


def test_pareto_front_hand_made() -> None:
    #        0    1    2    3    4    5    6      7
    x = [1.0, 2.0, 3.0, 2.0, 4.0, 1.0, np.nan, 0.5]
    y = [5.0, 3.0, 1.0, 4.0, 4.0, 5.0, 0.0, 9.0]
    # 3 is dominated by 1, 4 by 1 and 2; 0 and 5 are duplicates (both stay);
    # 6 is not finite; 7 has the smallest x so nothing dominates it.
    expected = [True, True, True, False, False, True, False, True]
    assert pareto_front(x, y).tolist() == expected


def test_epsilon_squared_hand_computed() -> None:
    # Groups {1, 2} and {3, 4}: SS_total = 5, SS_within = 1, k = 2, MS_within = 1/2:
    # eps^2 = (5 - 1 - 0.5) / 5 = 0.7.
    y = pd.Series([1.0, 2.0, 3.0, 4.0])
    assert epsilon_squared(y, pd.Series(["a", "a", "b", "b"])) == pytest.approx(0.7)
    # Groups that do not separate the means explain nothing (clipped at 0).
    assert epsilon_squared(y, pd.Series(["a", "b", "b", "a"])) == 0.0


def test_importance_ranking_orders_parameters() -> None:
    rng = np.random.default_rng(0)
    n = 40
    table = pd.DataFrame({"backbone": rng.choice(["a", "b"], n),
                          "lr": 10 ** rng.uniform(-4, -2, n),
                          "const": np.ones(n)})
    table["rmse"] = np.where(table["backbone"] == "a", 2.0, 4.0) + 0.1 * rng.standard_normal(n)
    table.loc[0, "rmse"] = math.inf  # a diverged trial must not poison the ranking
    ranking = importance_ranking(table, ["lr", "const", "backbone"], "rmse")
    assert list(ranking.index)[0] == "backbone"
    assert ranking["backbone"] > 0.9 and ranking["const"] == 0.0 and ranking["lr"] < 0.2


def test_meanci_fmt() -> None:
    assert MeanCI(1.0, 0.5, 1.5, 3).fmt(2) == "1.00 [0.50, 1.50]"
