"""sweep.verdicts and the decision statistics of sweep.stats: hand-made differences, Holm on known
p-values, and the error rates of both procedures by simulation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sweep import stats as S
from sweep import verdicts as V


def one(d, rule=V.Rule()) -> dict:
    return V.decide([V.cell_stats(d, rule)], rule)[0]


# --- verdicts on hand-made differences -------------------------------------------------------

@pytest.mark.parametrize("d,word", [
    ([-0.30, -0.20, -0.25, -0.28], "better"),      # CI well below 0
    ([0.30, 0.20, 0.25, 0.28], "worse"),
    ([0.01, -0.01, 0.00, 0.005, -0.005], "equivalent"),  # CI inside ±0.05
    ([0.5, -0.6, 0.2, -0.1], "undecided"),          # straddles 0, wider than the margin
    ([0.04], "undecided"),                           # one replicate: no interval
])
def test_verdict_words(d, word):
    assert one(d)["verdict"] == word


def test_fixed_interval_is_student_t_by_hand():
    d = [-0.3, -0.1, -0.2]      # mean -0.2, s = 0.1, t(0.975, 2) = 4.302653
    r = one(d)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert r["d_mean"] == pytest.approx(-0.2)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((-0.2 - half, -0.2 + half), abs=1e-6)
    # |t| = 0.2 / (0.1/sqrt 3) = 3.4641 with 2 df: two-sided p = 0.07418 -> not better at 5%
    assert r["p_zero"] == pytest.approx(0.074180, abs=1e-5) and r["verdict"] == "undecided"
    assert r["p_improve"] == pytest.approx(1 - 0.074180 / 2, abs=1e-5)


def test_equivalence_means_the_95_interval_inside_the_margin():
    d = np.array([0.02, -0.01, 0.015, 0.0, 0.005])
    ci = S.mean_ci(d)
    for margin in (max(abs(ci.low), abs(ci.high)) + 1e-4, max(abs(ci.low), abs(ci.high)) - 1e-4):
        inside = ci.low > -margin and ci.high < margin
        assert (one(d, V.Rule(margin=margin))["verdict"] == "equivalent") == inside


def test_holm_on_known_pvalues():
    # sorted 0.01, 0.03, 0.04 (m = 3): 0.03, max(0.03, 0.06), max(0.06, 0.04) -> 0.03, 0.06, 0.06
    adj = S.holm([0.04, 0.01, 0.03, math.nan])
    assert adj[:3] == pytest.approx([0.06, 0.03, 0.06]) and math.isnan(adj[3])
    assert S.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])   # monotone: never below an earlier step
    assert S.holm([0.01, 0.04]) == pytest.approx([0.02, 0.04])


def test_holm_turns_a_lone_win_into_undecided_among_many_cells():
    rule = V.Rule()
    win = V.cell_stats([-0.12, -0.05, -0.09, -0.02, -0.07], rule)   # p ~ 0.02 alone
    assert 0.01 < win["p_zero"] < 0.025
    nulls = [V.cell_stats([0.3, -0.3, 0.2, -0.25, 0.05], rule) for _ in range(3)]
    assert V.decide([win], rule)[0]["verdict"] == "better"
    assert V.decide([win, *nulls], rule)[0]["verdict"] == "undecided"   # 4 x p > 0.05


def test_verdict_table_pairs_by_replicate():
    rows = []
    for cell, effect in (("none", -0.3), ("study", 0.0)):
        for r in range(4):
            base = 2.0 + 0.1 * r
            rows += [{"cell": cell, "arm": "base", "replicate": r, "outcome": "ok", "alpha": 0.0,
                      V.TEST_RMSE_COLUMN: base},
                     {"cell": cell, "arm": "cgd", "replicate": r, "outcome": "ok", "alpha": 0.1,
                      V.TEST_RMSE_COLUMN: base + effect + 0.01 * (-1) ** r}]
    rows.append({"cell": "none", "arm": "cgd", "replicate": 9, "outcome": "ok", "alpha": 0.1,
                 V.TEST_RMSE_COLUMN: 0.0})   # no base partner: not a pair
    table = V.verdict_table(pd.DataFrame(rows), V.Rule()).set_index("cell")
    assert table.loc["none", "n"] == 4 and table.loc["none", "d_mean"] == pytest.approx(-0.3)
    assert table.loc["none", "verdict"] == "better"
    assert table.loc["study", "verdict"] == "equivalent"


# --- the sequential procedure: anytime-valid --------------------------------------------------

def test_confidence_sequence_closed_form_matches_its_evalue():
    c, n, ss, mean = 0.8, 6, 2.5, 0.3
    half = S.cs_half_width(n, ss, 0.95, c)
    assert S.cs_evalue(n, mean, ss, mean + half, c) == pytest.approx(20.0, rel=1e-6)
    assert S.cs_evalue(n, mean, ss, mean, c) < 1.0   # the mean itself is never excluded


def _sequential_run(d: np.ndarray, rule: V.Rule) -> str:
    """Rounds of rule.first_round replicates until decided or rule.max_replicates."""
    n = rule.first_round
    while True:
        word = V.decide([V.cell_stats(d[:n], rule)], rule)[0]["verdict"]
        if word != "undecided" or n >= rule.max_replicates:
            return word
        n = min(n + rule.first_round, rule.max_replicates)


@pytest.mark.slow
@pytest.mark.parametrize("true_d,wrong", [(0.0, ("better", "worse")),
                                           (0.05, ("equivalent", "better"))])
def test_sequential_error_rate_by_simulation(true_d, wrong):
    """2,000 runs of --until-decided (rounds of 3 up to 15): a false verdict <= 5% + 3 SE.

    true_d = 0: better/worse are false. true_d = margin: equivalent (and better) are false.
    Stopping at the first decided look is what repeated-look bias would exploit.
    """
    runs, rule = 2000, V.Rule(margin=0.05, sequential=True, first_round=3, max_replicates=15)
    rng = np.random.default_rng(7)
    words = [_sequential_run(true_d + 0.2 * rng.standard_normal(15), rule) for _ in range(runs)]
    rate = np.mean([w in wrong for w in words])
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)


@pytest.mark.slow
def test_naive_repeated_t_tests_would_fail_the_same_simulation():
    """The check above has teeth: stopping at the first significant Student-t look over the same
    looks rejects a true null far more often than 5%."""
    rng = np.random.default_rng(7)
    looks, false = range(3, 16, 3), 0
    for _ in range(2000):
        d = rng.standard_normal(15)
        false += any(S.t_pvalue(d[:n]) <= 0.05 for n in looks)
    assert false / 2000 > 0.08


def test_sequential_still_decides_a_clear_effect():
    rule = V.Rule(sequential=True, first_round=3, max_replicates=9)
    d = np.array([-0.5, -0.45, -0.55, -0.52, -0.48, -0.5])
    assert one(d, rule)["verdict"] == "better"
    assert rule.looks(7) == [3, 6, 7]
