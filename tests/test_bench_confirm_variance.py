"""bench.confirm_variance: the variance components of a hand-built crossed design."""
from __future__ import annotations

import numpy as np
import pytest

from bench.confirm_variance import components, configs, summarise


def test_an_additive_design_puts_all_variance_in_its_two_factors():
    seed, split = np.array([0.0, 0.1, -0.1]), np.array([0.02, -0.02, 0.0])
    c = components(seed[:, None] + split[None, :])     # no interaction, no noise
    assert c["var_resid"] == pytest.approx(0.0, abs=1e-15)
    assert c["var_seed"] == pytest.approx(np.var(seed, ddof=1))     # 0.01
    assert c["var_split"] == pytest.approx(np.var(split, ddof=1))   # 0.0004
    assert c["sd_d_fresh_split"] == pytest.approx(np.sqrt(0.01 + 0.0004))
    assert c["sd_d_fixed_split"] == pytest.approx(0.1) and c["n"] == 9


def test_pure_noise_truncates_the_factor_components_at_zero():
    d = np.array([[1.0, -1.0], [-1.0, 1.0]])           # all interaction: row and column means equal
    c = components(d)
    assert c["var_seed"] == c["var_split"] == 0.0 and c["var_resid"] == pytest.approx(4.0)


def test_both_arms_of_every_pair_share_seed_and_split_and_run_a_fixed_budget():
    cfgs = configs("data.csv", seeds=2, splits=3, epochs=7)
    assert len(cfgs) == 2 * 3 * 2
    for base, shaped in zip(cfgs[::2], cfgs[1::2]):
        assert (base.seed, base.split_seed) == (shaped.seed, shaped.split_seed)
        assert base.shape == "none" and shaped.shape == "cgd"
        assert base.patience == base.max_epochs == 7 and base.schedule == "cosine" and base.score_test
    runs = [{"seed": c.seed, "split_seed": c.split_seed, "shape": c.shape,
             "final_test_rmse_px": 2.0 + (0.1 if c.shape == "cgd" else 0.0),
             "best_val_test_rmse_px": 2.0} for c in cfgs]
    out = summarise(runs, [1000, 1001], [2000, 2001, 2002])
    assert out["final_test_rmse_px"]["mean_d"] == pytest.approx(0.1)
    assert out["best_val_test_rmse_px"]["mean_d"] == 0.0
