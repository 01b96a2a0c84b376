"""bench.recipe_speed: timings of the 20-epoch runs, seeds per arm, paired differences by hand."""
from __future__ import annotations

import json

import pytest

from bench import recipe_speed as R


def _result(folder, name, *, seed=0, backbone="s2d_cnn", precision="bf16", test_flip=1.6,
            seconds=(3.0, 2.0, 2.0, 4.0), minutes=4.0):
    run = folder / name
    run.mkdir(parents=True)
    run.joinpath("result.json").write_text(json.dumps({
        "name": name, "config": {"seed": seed, "backbone": backbone, "head": "unet", "precision": precision},
        "test": {"rmse_px": test_flip + 0.05}, "test_flip": {"rmse_px": test_flip}, "best_val_rmse_px": 1.5,
        "train_wall_min": minutes, "git_commit": "abc123",
        "epochs_rows": [{"epoch": i + 1, "epoch_seconds": s} for i, s in enumerate(seconds)]}))


def test_a_20_epoch_run_extrapolates_its_median_epoch_after_the_first(tmp_path):
    # epochs 2..4 take 2, 2, 4 s: median 2 s (the first epoch's 3 s is warm-up and left out)
    _result(tmp_path, "old-20ep", precision="fp32")
    summary = R.summarize(R.load(tmp_path), {"old-20ep": 240})
    assert summary["timed"]["old-20ep"]["seconds_per_epoch"] == 2.0
    assert summary["timed"]["old-20ep"]["minutes"] == 8.0          # 2 s x 240 / 60


def test_bf16_against_fp32_is_paired_by_seed(tmp_path):
    # differences by seed: +0.02, -0.01, +0.02 -> mean +0.01, sd 0.01732
    for seed, (bf16, fp32) in enumerate([(1.62, 1.60), (1.59, 1.60), (1.63, 1.61)]):
        _result(tmp_path, f"fast-cpu-bf16-seed{seed}", seed=seed, test_flip=bf16)
        _result(tmp_path, f"fast-cpu-fp32-seed{seed}", seed=seed, precision="fp32", test_flip=fp32)
    summary = R.summarize(R.load(tmp_path), {})
    d = summary["comparisons"]["fast-cpu-bf16 - fast-cpu-fp32"]
    assert d["n"] == 3
    assert d["mean_px"] == pytest.approx(0.01)
    assert d["sd_px"] == pytest.approx(0.017320508)
    half = 4.302653 * 0.017320508 / 3 ** 0.5      # t(0.975, 2 df)
    assert d["ci95_px"] == pytest.approx([0.01 - half, 0.01 + half], abs=1e-6)
    assert d["reference_seed_sd_px"] == pytest.approx(0.005773503)   # sd of 1.60, 1.60, 1.61
    assert d["within_reference_seed_sd"] is False                    # 0.01 > 0.00577
    assert "fast-cpu-bf16 - fast-cpu-small_cnn-bf16" not in summary["comparisons"]   # no such runs
    text = R.markdown(summary)
    assert "fast-cpu-bf16: test RMSE (flip avg) 1.613 (sd 0.021) px" in text
    assert "<= 1.6 px on 1 of 3, <= 5 min on 3 of 3" in text
    assert ("+0.010 px, 95% t interval [-0.033, +0.053] (includes 0); the difference is larger than "
            "the reference's seed sd, 0.006 px.") in text


def test_the_cli_writes_both_files_and_refuses_a_missing_length(tmp_path, capsys):
    _result(tmp_path / "runs", "old-20ep")
    assert R.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    assert "no --full-epochs for old-20ep" in capsys.readouterr().err
    assert R.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--full-epochs", "old-20ep=x"]) == 2
    assert R.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--full-epochs", "old-20ep=240"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["recipe-speed-table.md", "recipe-speed.json"]
    with pytest.raises(SystemExit, match="no \\*/result.json"):
        R.load(tmp_path / "out")
