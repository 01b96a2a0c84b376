"""bench.accuracy scores on fkd_core's own test split (people nobody trained or chose on), and
bench.shift moves keypoints exactly with the pixels."""
from __future__ import annotations

import json

import pytest
import torch

from bench import accuracy, shift
from fkd_core.config import TrialConfig
from fkd_core.data import load_for_config, three_way_split
from fkd_core.schema import KAGGLE15

S = 96


def _dot_image(x: float, y: float) -> torch.Tensor:
    """uint8 [1, 1, S, S]: a bright Gaussian dot of sigma 2 px centred at (x, y)."""
    grid = torch.arange(S, dtype=torch.float32)
    img = torch.exp(-((grid[None, :] - x) ** 2 + (grid[:, None] - y) ** 2) / 8.0)
    return (img * 255).round().to(torch.uint8)[None, None]


def _centroid(img: torch.Tensor) -> torch.Tensor:
    w = img[0, 0].float()
    w = torch.where(w > 20, w, 0.0)
    grid = torch.arange(S, dtype=torch.float32)
    return torch.stack([(w.sum(0) * grid).sum() / w.sum(), (w.sum(1) * grid).sum() / w.sum()])


@pytest.mark.parametrize("name", list(shift.GEOMETRIC))
def test_every_geometric_shift_moves_a_dot_and_its_keypoint_together(name):
    kps = torch.full((1, KAGGLE15.num_keypoints, 2), 40.0)
    kps[0, 0] = torch.tensor([30.0, 55.0])
    images, moved = shift.shifted(name, _dot_image(30.0, 55.0), kps, KAGGLE15.flip_permutation())
    assert images.dtype == torch.uint8 and images.shape == (1, 1, S, S)
    assert torch.dist(_centroid(images), moved[0, 0]) < 0.1


def test_the_loose_crop_scales_about_the_centre_by_the_stated_factor():
    kps = torch.tensor([[[10.0, 80.0]] * KAGGLE15.num_keypoints])
    _, moved = shift.shifted("crop_loose", _dot_image(10.0, 80.0), kps, KAGGLE15.flip_permutation())
    c = (S - 1) / 2
    assert torch.allclose(moved[0, 0], torch.tensor([c + 0.85 * (10 - c), c + 0.85 * (80 - c)]), atol=1e-4)


@pytest.mark.parametrize("name", list(shift.PHOTOMETRIC))
def test_photometric_shifts_change_pixels_and_keep_keypoints(name):
    img = (torch.rand(2, 1, S, S, generator=torch.Generator().manual_seed(1)) * 200 + 20).to(torch.uint8)
    kps = torch.rand(2, KAGGLE15.num_keypoints, 2) * S
    images, moved = shift.shifted(name, img, kps, KAGGLE15.flip_permutation())
    assert torch.equal(moved, kps)
    assert (images.float() - img.float()).abs().mean() > 1.0


def test_an_unknown_shift_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown shift 'fog'; valid: \['crop_loose'"):
        shift.shifted("fog", torch.zeros(1, 1, S, S, dtype=torch.uint8), torch.zeros(1, 15, 2), list(range(15)))


def test_a_run_scores_fkd_cores_test_rows_and_reports_them(tmp_path, capsys):
    """The scored rows are exactly three_way_split's test rows: none trained on, none validated."""
    args = ["run", "--name", "tiny", "--data", "synthetic", "--out", str(tmp_path), "--set", "synth_n=80",
            "--set", "max_epochs=2", "--set", "backbone=small_cnn", "--set", "head=unet"]
    assert accuracy.main(args) == 0
    result = json.loads((tmp_path / "tiny" / "result.json").read_text())
    cfg = TrialConfig(**{**result["config"]})
    splits = three_way_split(load_for_config(cfg), cfg)
    assert (result["train_rows"], result["val_rows"], result["test_rows"]) == (
        len(splits.train), len(splits.val), len(splits.test))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 80
    assert result["split_kind"] == "group-disjoint" and result["test_people"] == len(splits.test)
    assert set(result["test_flip"]["shift_rmse_px"]) == set(shift.SHIFTS)
    assert result["epochs"] == 2 and len(result["epochs_rows"]) == 2
    capsys.readouterr()
    assert accuracy.main(["report", str(tmp_path), "--json", str(tmp_path / "t.json")]) == 0
    table = capsys.readouterr().out
    assert "| tiny | " in table and table.count("| tiny | ") == 2   # the main table and the shifts
    assert json.loads((tmp_path / "t.json").read_text())[0]["name"] == "tiny"
