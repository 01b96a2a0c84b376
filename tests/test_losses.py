"""Losses against hand-computed values and brute-force references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fkd_core import losses
from fkd_core.config import TrialConfig
from fkd_core.losses import cgd, mse, seed_cgd, soft_wing, wing

# A 3-4-5 right triangle: pair distances 3, 4, 5.
TRIANGLE = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]])


def test_mse_hand_computed_and_masked():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[0.0, 0.0], [math.nan, math.nan]]])
    # only keypoint 0 is present: (1^2 + 2^2) / 2 coordinates
    assert mse(pred, target).item() == pytest.approx(2.5)
    assert mse(pred, target, torch.tensor([[False, False]])).item() == 0.0


def test_cgd_triangle_vs_scaled_copy():
    # Each distance grows by 50%: |3-4.5|, |4-6|, |5-7.5| -> mean (1.5 + 2 + 2.5) / 3 = 2.
    assert cgd(TRIANGLE * 1.5, TRIANGLE).item() == pytest.approx(2.0)
    assert cgd(TRIANGLE, TRIANGLE).item() == 0.0


def test_cgd_missing_point_removes_its_pairs():
    target = TRIANGLE.clone()
    target[0, 2] = math.nan                     # only pair (0, 1) is left: |3 - 4.5| = 1.5
    assert cgd(TRIANGLE * 1.5, target).item() == pytest.approx(1.5)
    mask = torch.tensor([[True, True, False]])  # the same through an explicit mask
    assert cgd(TRIANGLE * 1.5, TRIANGLE, mask).item() == pytest.approx(1.5)


def test_cgd_batch_is_mean_over_faces_with_pairs():
    pred = torch.cat([TRIANGLE * 1.5, TRIANGLE * 2.0, TRIANGLE])
    target = torch.cat([TRIANGLE, TRIANGLE, TRIANGLE])
    mask = torch.tensor([[True] * 3, [True] * 3, [True, False, False]])  # face 3 has no pair
    # face 1: 2.0; face 2: (3 + 4 + 5) / 3 = 4.0; face 3 is left out, not counted as 0
    assert cgd(pred, target, mask).item() == pytest.approx(3.0)


def _rotation(deg: float) -> torch.Tensor:
    t = math.radians(deg)
    return torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def test_cgd_invariant_to_translation_and_rotation_of_pred():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(4, 15, 2, generator=gen) * 96
    pred = target + torch.randn(4, 15, 2, generator=gen) * 3
    moved = pred @ _rotation(37.0).T + torch.tensor([11.0, -5.0])
    assert cgd(moved, target).item() == pytest.approx(cgd(pred, target).item(), rel=1e-5)
    assert cgd(moved, target).item() > 0.1  # not trivially zero


def _seed_cgd_numpy(pred: np.ndarray, target: np.ndarray) -> float:
    p, g = pred.reshape(-1, 2).astype(np.float64), target.reshape(-1, 2).astype(np.float64)
    dp = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    dg = np.sqrt(((g[:, None] - g[None]) ** 2).sum(-1))
    return float(np.abs(dg - dp).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seed_cgd_equals_brute_force_numpy(seed):
    rng = np.random.default_rng(seed)
    b = int(rng.integers(2, 9))
    target = rng.uniform(0, 96, (b, 15, 2)).astype(np.float32)
    pred = (target + rng.normal(0, 4, target.shape)).astype(np.float32)
    got = seed_cgd(torch.from_numpy(pred), torch.from_numpy(target)).item()
    assert got == pytest.approx(_seed_cgd_numpy(pred, target), rel=1e-5)


def test_seed_cgd_drops_missing_points_from_the_cloud():
    rng = np.random.default_rng(3)
    target = rng.uniform(0, 96, (3, 5, 2)).astype(np.float32)
    pred = (target + rng.normal(0, 4, target.shape)).astype(np.float32)
    holed = target.copy()
    holed[1, 2] = np.nan
    keep = np.ones((3, 5), bool)
    keep[1, 2] = False
    expected = _seed_cgd_numpy(pred[keep], target[keep])
    assert seed_cgd(torch.from_numpy(pred), torch.from_numpy(holed)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_masked_keypoints_get_exactly_zero_gradient(name):
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 6, 2, generator=gen) * 96
    target[0, 1] = math.nan                       # missing in the data
    target[2, 4, 0] = math.nan                    # half-missing counts as missing
    pred = (target.nan_to_num(50.0) + torch.randn(3, 6, 2, generator=gen)).requires_grad_()
    loss = losses.get_loss(name)(pred, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.equal(pred.grad[0, 1], torch.zeros(2))
    assert torch.equal(pred.grad[2, 4], torch.zeros(2))
    assert pred.grad[1].abs().sum() > 0           # present points do learn


@pytest.mark.parametrize("fn, threshold", [(wing, 10.0), (soft_wing, 2.0)])
def test_wing_losses_continuous_at_threshold(fn, threshold):
    target = torch.zeros(1, 1, 2)
    values = [fn(torch.tensor([[[threshold + d, 0.0]]], dtype=torch.float64), target.double()).item()
              for d in (-1e-7, 0.0, 1e-7)]
    assert max(values) - min(values) < 1e-6


def test_wing_hand_computed():
    # |x| = 4 < w: 10 ln(1 + 4/2) = 10 ln 3; |x| = 0 contributes 0; mean over 2 coordinates
    got = wing(torch.tensor([[[4.0, 0.0]]]), torch.zeros(1, 1, 2)).item()
    assert got == pytest.approx(10 * math.log(3) / 2, rel=1e-6)
    # soft wing is L1 below omega1 = 2
    assert soft_wing(torch.tensor([[[1.5, -0.5]]]), torch.zeros(1, 1, 2)).item() == pytest.approx(1.0)


def test_objective_is_base_plus_alpha_shape():
    pred, target = TRIANGLE * 1.5, TRIANGLE
    objective = losses.build_objective(TrialConfig(loss="wing", shape="cgd", alpha=0.5))
    assert objective(pred, target).item() == pytest.approx(wing(pred, target).item() + 0.5 * 2.0)
    base, shaped = objective.parts(pred, target)
    assert base.item() == pytest.approx(wing(pred, target).item()) and shaped.item() == pytest.approx(1.0)
    plain = losses.build_objective(TrialConfig(shape="cgd", alpha=0.0))
    assert plain.base is mse and plain.parts(pred, target)[1] is None
    assert plain(pred, target).item() == mse(pred, target).item()


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="seed_cgd"):
        losses.get_loss("huber")
    assert losses.parse_loss_spec("wing+cgd") == ("wing", "cgd")
    assert losses.parse_loss_spec("cgd") == ("mse", "cgd")
    with pytest.raises(ValueError, match="base"):
        losses.parse_loss_spec("mse+huber")
