"""Three-way splits: invariants over random groups, a test split nothing but the data moves, and
train() scoring it every epoch when asked."""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fkd_core import loop, metrics, train as train_module, trainer
from fkd_core.config import TrialConfig
from fkd_core.data import (DataError, draw_splits, forward_fill, held_out_rows, load_dataset, load_for_config,
                           three_way_split)
from fkd_core.data.splits import forward_fill_outside
from fkd_core.trainer import split_rows, train

FAST = dict(synth_n=224, batch_size=24, device="cpu", patience=50)


@pytest.fixture(scope="module")
def faces():
    return load_dataset("synthetic", synth_n=FAST["synth_n"], synth_seed=0)


# --- invariants over many random draws -------------------------------------------------------------


def _random_case(rng: np.random.Generator) -> dict:
    n_groups = int(rng.integers(3, 60))
    sizes = rng.integers(1, 16, n_groups)                  # 1..15 rows per group
    codes = rng.permutation(np.repeat(np.arange(n_groups), sizes))   # groups interleaved in the file
    test_fraction, val_fraction = rng.uniform(0.05, 0.45, 2)
    return dict(codes=codes, n_groups=n_groups, test_fraction=float(test_fraction),
                val_fraction=float(val_fraction), test_seed=int(rng.integers(1000)),
                split_seed=int(rng.integers(1000)), content_hash=f"{rng.integers(1 << 60):x}")


def test_no_group_on_two_sides_and_every_row_in_one_split_over_random_groups():
    rng = np.random.default_rng(20261129)
    drawn = refused = 0
    for _ in range(400):
        case = _random_case(rng)
        codes, g = case.pop("codes"), case.pop("n_groups")
        try:
            s = draw_splits(codes, len(codes), **case)
        except DataError as err:          # too few groups for three splits: refused, said why
            n_test = max(1, round(case["test_fraction"] * g))
            n_val = max(1, round(case["val_fraction"] * g))
            assert g - n_test - n_val < 1 and "leaving" in str(err)
            refused += 1
            continue
        drawn += 1
        parts = [s.train, s.val, s.test]
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(codes)))    # each row once
        sides = [set(codes[p].tolist()) for p in parts]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert len(sides[2]) == max(1, round(case["test_fraction"] * g))
        assert len(sides[1]) == max(1, round(case["val_fraction"] * g)) and len(sides[0]) >= 1
        assert s.kind == "group-disjoint" and all(np.all(np.diff(p) > 0) for p in parts)
    assert drawn > 300 and refused > 0


def test_tail_keeps_the_group_disjoint_test_and_takes_the_last_other_rows():
    rng = np.random.default_rng(7)
    for _ in range(100):
        case = _random_case(rng)
        codes, _ = case.pop("codes"), case.pop("n_groups")
        try:
            tail = draw_splits(codes, len(codes), mode="tail", **case)
            shuffled = draw_splits(codes, len(codes), **case)
        except DataError:
            continue
        assert np.array_equal(tail.test, shuffled.test)          # the mode never moves the test rows
        rest = np.setdiff1d(np.arange(len(codes)), tail.test)
        n_val = max(1, round(case["val_fraction"] * len(codes)))
        assert np.array_equal(tail.val, rest[-n_val:]) and np.array_equal(tail.train, rest[:-n_val])
        assert not set(codes[tail.test].tolist()) & set(codes[rest].tolist())
        assert tail.kind == "row-level"                          # its validation tail cuts through groups


def test_without_groups_each_row_is_its_own_unit():
    s = draw_splits(None, 100, content_hash="abc", test_fraction=0.15, test_seed=0, val_fraction=0.2,
                    split_seed=3)
    assert (len(s.train), len(s.val), len(s.test), s.kind) == (65, 20, 15, "row-level")


# --- the test split: only the data, its groups, test_fraction and test_seed choose it ----------------


def test_test_rows_are_identical_across_everything_a_run_varies(faces):
    base = TrialConfig(synth_n=FAST["synth_n"])
    test = held_out_rows(faces, base)
    assert len(test) == round(0.15 * len(faces)) == 34
    variants = [dict(split_seed=1), dict(split_seed=7), dict(seed=5), dict(score_test=True),
                dict(shape="cgd", alpha=0.01), dict(loss="wing"), dict(shape="seed_cgd", alpha=1.0),
                dict(split="tail"), dict(val_fraction=0.3), dict(missing="drop"), dict(augment="full"),
                dict(max_epochs=3), dict(backbone="resnet18")]
    for changes in variants:
        assert np.array_equal(held_out_rows(faces, base.replace(**changes)), test), changes
    # ... while the validation rows do move with the split seed, never into the test rows.
    vals = [set(three_way_split(faces, base.replace(split_seed=k)).val.tolist()) for k in range(3)]
    assert vals[0] != vals[1] and not (vals[0] | vals[1] | vals[2]) & set(test.tolist())
    # The test seed and the data's content choose another test split.
    assert not np.array_equal(held_out_rows(faces, base.replace(test_seed=1)), test)
    other = load_dataset("synthetic", synth_n=FAST["synth_n"], synth_seed=1)
    assert not np.array_equal(held_out_rows(other, base), test)


def test_split_rows_excludes_the_test_rows(faces):
    for cfg in (TrialConfig(), TrialConfig(split="tail"), TrialConfig(missing="drop", split_seed=2)):
        train_idx, _, val_idx = split_rows(faces, cfg)
        test = set(held_out_rows(faces, cfg).tolist())
        assert not test & set(train_idx.tolist()) and not test & set(val_idx.tolist())


# --- train(): test metrics per epoch when score_test -----------------------------------------------------


def test_score_test_adds_test_metrics_to_every_epoch_row(faces):
    rows: list[dict] = []
    summary = train(TrialConfig(**FAST, max_epochs=3, score_test=True), faces, rows.append)
    assert all(tuple(r) == metrics.EPOCH_ROW_KEYS[:6] + metrics.TEST_METRICS + metrics.EPOCH_ROW_KEYS[6:]
               + metrics.TEST_GROUP_KEYS for r in rows)
    assert all(math.isfinite(r[k]) and r[k] > 0 for r in rows for k in metrics.TEST_METRICS)
    assert rows[-1][metrics.TEST_RMSE] != rows[-1][metrics.VAL_RMSE]      # other faces, other error
    best = rows[summary.best_epoch - 1]              # the best epoch is chosen on validation
    assert best[metrics.VAL_RMSE] == min(r[metrics.VAL_RMSE] for r in rows)
    assert (summary.best_test_rmse_px, summary.best_test_nme, summary.best_test_shape_err_px) == \
        (best[metrics.TEST_RMSE], best[metrics.TEST_NME], best[metrics.TEST_SHAPE])


def test_per_group_test_sums_add_up_to_the_test_rmse(faces):
    rows: list[dict] = []
    cfg = TrialConfig(**FAST, max_epochs=2, score_test=True)
    train(cfg, faces, rows.append)
    test = held_out_rows(faces, cfg)
    ids = sorted(set(np.asarray(faces.groups)[test]))
    present = int(2 * torch.isfinite(faces.keypoints[test]).all(dim=-1).sum())
    for r in rows:
        assert r[metrics.TEST_GROUP_IDS] == ids                         # sorted, one per test person
        assert sum(r[metrics.TEST_GROUP_COUNT]) == present
        total = math.sqrt(sum(r[metrics.TEST_GROUP_SSE]) / sum(r[metrics.TEST_GROUP_COUNT]))
        assert total == pytest.approx(r[metrics.TEST_RMSE], rel=1e-5)


def test_scored_final_is_the_last_epoch_and_best_val_the_best_epoch(faces):
    rows: list[dict] = []
    final = train(TrialConfig(**FAST, max_epochs=3, score_test=True), faces, rows.append)
    assert final.scored == "final" and final.scored_test_rmse_px == rows[-1][metrics.TEST_RMSE]
    rows = []
    best = train(TrialConfig(**FAST, max_epochs=3, score_test=True, scored="best_val"), faces, rows.append)
    assert best.scored_test_rmse_px == rows[best.best_epoch - 1][metrics.TEST_RMSE] == best.best_test_rmse_px
    with pytest.raises(ValueError, match="scored"):
        TrialConfig(scored="best_test")


def test_shape_share_is_alpha_shape_over_base_and_zero_for_the_base_arm(faces):
    rows: list[dict] = []
    train(TrialConfig(**FAST, max_epochs=1), faces, rows.append)
    assert rows[0][metrics.SHAPE_SHARE] == 0.0
    one_batch = dict(FAST, batch_size=400, synth_n=224)        # one batch: the mean is that batch's ratio
    cfg = TrialConfig(**one_batch, max_epochs=1, shape="cgd", alpha=0.5, dropout=0.0, lr=1e-12)
    rows = []
    train(cfg, faces, rows.append)
    # With lr ~0 the weights do not move: recompute the ratio on the same batch by hand.
    from fkd_core.losses import cgd, mse
    from fkd_core.device import resolve_device
    from fkd_core.trainer import Trial
    train_idx, train_kps, _ = split_rows(faces, cfg)
    trial = Trial.create(cfg, train_kps, faces.images.shape[-1], resolve_device("cpu"))
    trial.model.train()
    order = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(cfg.seed))
    x = faces.images[train_idx[order]].float().div(255.0).contiguous(memory_format=torch.channels_last)
    y = train_kps[order]
    with torch.no_grad():
        pred = trial.model(x)
    expected = 0.5 * cgd(pred, y).item() / mse(pred, y).item()
    assert rows[0][metrics.SHAPE_SHARE] == pytest.approx(expected, rel=1e-4)   # dropout 0: same pred


def test_without_score_test_no_test_metrics_and_none_in_the_summary(faces):
    rows: list[dict] = []
    summary = train(TrialConfig(**FAST, max_epochs=1), faces, rows.append)
    assert tuple(rows[0]) == metrics.EPOCH_ROW_KEYS
    assert summary.best_test_rmse_px is None and summary.best_test_nme is None
    assert summary.to_dict()["best_test_shape_err_px"] is None


def test_test_split_is_scored_by_evaluate_on_the_shared_images(faces, monkeypatch):
    """The test rows go through the same evaluate() as validation, gathered from the one shared
    image tensor: three index sets, no copy of the data set."""
    made, scored = [], []
    original_of, original_evaluate = loop.Batches.of, trainer.evaluate
    monkeypatch.setattr(loop.Batches, "of",
                        classmethod(lambda cls, *a: made.append(original_of(*a)) or made[-1]))
    monkeypatch.setattr(trainer, "evaluate",
                        lambda model, obj, data, *a: scored.append(data) or original_evaluate(model, obj, data, *a))
    cfg = TrialConfig(**FAST, max_epochs=2, score_test=True)
    train(cfg, faces, lambda row: None)
    train_rows, val_rows, test_rows = made
    assert train_rows.images.data_ptr() == val_rows.images.data_ptr() == test_rows.images.data_ptr() \
        == faces.images.data_ptr()
    assert test_rows.rows.tolist() == held_out_rows(faces, cfg).tolist()
    assert torch.equal(test_rows.keypoints, faces.keypoints[test_rows.rows])
    assert len(train_rows) + len(val_rows) + len(test_rows) == len(faces)
    assert scored == [val_rows, test_rows] * 2                  # both, every epoch


def test_a_diverged_epoch_reports_test_metrics_as_inf(faces):
    rows: list[dict] = []
    summary = train(TrialConfig(**FAST, max_epochs=3, shape="seed_cgd", alpha=1e38, score_test=True),
                    faces, rows.append)
    assert len(rows) == 1 and rows[0][metrics.DIVERGED]
    assert all(rows[0][k] == math.inf for k in metrics.TEST_METRICS)
    assert summary.stopped == "diverged" and summary.best_test_rmse_px is None


def test_cli_score_test_writes_test_columns(tmp_path, capsys):
    out = tmp_path / "run"
    code = train_module.main(["--synth-n", "60", "--epochs", "1", "--batch-size", "20", "--device", "cpu",
                              "--score-test", "--out", str(out)])
    assert code == 0
    with open(out / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert set(metrics.TEST_METRICS) <= set(header)
    assert "  test_rmse " in capsys.readouterr().err


# --- ffill never reads the test rows ---------------------------------------------------------------

YT15 = Path(__file__).resolve().parents[1] / "../shared/data/fkd-yt15/training.csv.gz"


def _source_rows(values: torch.Tensor) -> torch.Tensor:
    """[N, C] row each forward-filled value came from (-1: nothing above it)."""
    flat = values.reshape(len(values), -1)
    rows = torch.arange(len(values)).unsqueeze(1).expand_as(flat)
    return torch.where(torch.isfinite(flat), rows, -1).cummax(dim=0).values


def test_ffill_skips_held_out_rows_by_hand():
    nan = float("nan")
    values = torch.tensor([[1.0, 2.0], [nan, nan], [7.0, 8.0], [nan, 3.0], [nan, nan]])
    # Row 2 is held out: row 3 fills from row 0 (not 7), row 4 from row 3; row 2 is unchanged.
    filled = forward_fill_outside(values, np.array([2]))
    assert torch.equal(filled, torch.tensor([[1.0, 2.0], [1.0, 2.0], [7.0, 8.0], [1.0, 3.0], [1.0, 3.0]]))
    held = forward_fill_outside(torch.tensor([[nan], [5.0], [nan]]), np.array([1]))
    assert torch.isnan(held[[0, 2]]).all() and held[1].item() == 5.0   # nothing else to fill from
    assert torch.equal(forward_fill_outside(values, None), forward_fill(values))


def test_split_rows_ffill_takes_nothing_from_a_test_face(faces):
    cfg = TrialConfig(**FAST, missing="ffill")
    kps = faces.keypoints.clone()
    kps[1::2, :4] = float("nan")                              # every other face loses 4 points
    data = dataclasses.replace(faces, keypoints=kps)
    test = three_way_split(data, cfg).test
    train_idx, train_kps, _ = split_rows(data, cfg)
    expected = forward_fill_outside(kps, test)[train_idx]
    assert torch.equal(train_kps.nan_to_num(-1), expected.nan_to_num(-1))
    src = _source_rows(kps)[train_idx]
    leaked = torch.as_tensor(np.isin(src.numpy(), test)) & ~torch.isfinite(kps[train_idx].reshape(len(train_idx), -1))
    assert leaked.any()   # the whole-file fill would have leaked here: the case is not vacuous


@pytest.mark.skipif(not YT15.is_file(), reason="../shared/data not present")
def test_ffill_on_fkd_yt15_no_longer_spreads_test_row_1107():
    cfg = TrialConfig(data=str(YT15), missing="ffill", split="tail")   # the reproduce defects cell
    data = load_for_config(cfg)
    s = three_way_split(data, cfg)
    assert 1107 in s.test
    missing = ~torch.isfinite(data.keypoints[s.train].reshape(len(s.train), -1))
    src = _source_rows(data.keypoints)[s.train]
    assert int((missing & (src >= 0)).sum()) == 33032          # what the whole-file fill filled
    assert int((missing & (src == 1107)).sum()) == 32978       # ... from the test face 1107
    _, train_kps, _ = split_rows(data, cfg)
    rows = np.setdiff1d(np.arange(len(data)), s.test)          # the rows the fixed fill reads
    src_rest = torch.as_tensor(rows)[_source_rows(data.keypoints[rows]).clamp(min=0)]
    src_rest[_source_rows(data.keypoints[rows]) < 0] = -1
    src = src_rest[np.searchsorted(rows, s.train)]
    assert not np.isin(src[missing].numpy(), s.test).any() and (src[missing] >= 0).all()
    assert torch.equal(train_kps, forward_fill_outside(data.keypoints, s.test)[s.train])
    assert torch.isfinite(train_kps).all()                     # still filled, from training faces
