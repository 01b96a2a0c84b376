"""Masked metrics against hand-computed values; the accumulator against the direct functions."""
from __future__ import annotations

import math

import pytest
import torch

from fkd_core import metrics
from fkd_core.schema import KAGGLE15


def test_rmse_px_masked_hand_computed():
    pred = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[1.0, 1.0], [9.0, 9.0]]])
    target = torch.tensor([[[0.0, 0.0], [math.nan, math.nan]], [[1.0, 1.0], [9.0, 7.0]]])
    # present coordinates: 3, 4 | 0, 0 | 0, 2 -> squared sum 29 over 6
    assert metrics.rmse_px(pred, target).item() == pytest.approx(math.sqrt(29 / 6))


def test_per_keypoint_rmse_nan_for_never_present():
    pred = torch.zeros(2, 3, 2)
    target = torch.tensor([[[3.0, 4.0], [math.nan] * 2, [1.0, 1.0]],
                           [[0.0, 0.0], [math.nan] * 2, [1.0, 1.0]]])
    got = metrics.per_keypoint_rmse_px(pred, target)
    assert got[0].item() == pytest.approx(math.sqrt(25 / 4))
    assert math.isnan(got[1].item())
    assert got[2].item() == pytest.approx(1.0)


def test_nme_hand_computed_and_nan_without_pair():
    target = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]])    # eyes 10 px apart
    pred = target + torch.tensor([[[3.0, 4.0], [0.0, 0.0], [0.0, 1.0]]])
    # mean point error (5 + 0 + 1) / 3 = 2, divided by 10
    assert metrics.nme(pred, target, norm_pair=(0, 1)).item() == pytest.approx(0.2)
    assert math.isnan(metrics.nme(pred, target, norm_pair=None).item())
    holed = target.clone()
    holed[0, 1] = math.nan                                             # normalising point missing
    assert math.isnan(metrics.nme(pred, holed, norm_pair=(0, 1)).item())


def test_shape_err_is_cgd_of_predictions():
    tri = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]])
    assert metrics.shape_err_px(tri * 2, tri).item() == pytest.approx((3 + 4 + 5) / 3)


def test_accumulator_matches_direct_functions_over_batches():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(10, 15, 2, generator=gen) * 96
    target[3, 5:] = math.nan
    target[7, 0] = math.nan
    pred = target.nan_to_num(40.0) + torch.randn(10, 15, 2, generator=gen) * 2
    mask = torch.isfinite(target).all(-1)
    acc = metrics.MetricAccumulator(KAGGLE15.norm_pair, "cpu", num_keypoints=15)
    for lo, hi in ((0, 4), (4, 10)):
        acc.update(pred[lo:hi], target[lo:hi], mask[lo:hi], loss=torch.tensor(float(hi)))
    got = acc.compute()
    assert got["rmse_px"] == pytest.approx(metrics.rmse_px(pred, target).item(), rel=1e-6)
    assert got["nme"] == pytest.approx(metrics.nme(pred, target, mask, KAGGLE15.norm_pair).item(), rel=1e-6)
    assert got["shape_err_px"] == pytest.approx(metrics.shape_err_px(pred, target).item(), rel=1e-6)
    assert got["loss"] == pytest.approx((4 * 4 + 10 * 6) / 10)          # weighted by faces
    assert got["per_keypoint_rmse_px"] == pytest.approx(
        metrics.per_keypoint_rmse_px(pred, target).tolist(), rel=1e-6)


def test_empty_accumulator_gives_nan():
    got = metrics.MetricAccumulator(None, "cpu").compute()
    assert math.isnan(got["rmse_px"]) and math.isnan(got["nme"]) and got["per_keypoint_rmse_px"] == []
