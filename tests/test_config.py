"""TrialConfig's checks, the alpha default shared by the API and the CLI, the generated CLI, and
the Python API (fkd_core.api).

    PYTHONPATH=. .venv/bin/python -m pytest -q tests/test_config.py
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import get_args

import numpy as np
import pytest
import torch

from fkd_core import TrialConfig, cli, predict, train
from fkd_core import train as train_module
from fkd_core.config import Augment, config_fields


@pytest.mark.parametrize("changes, message", [
    ({"dropout": 1.5}, "TrialConfig.dropout must be in [0, 1), got 1.5"),
    ({"dropout": -0.1}, "TrialConfig.dropout must be in [0, 1), got -0.1"),
    ({"lr_factor": 1.5}, "TrialConfig.lr_factor must be in (0, 1) (it lowers the rate), got 1.5"),
    ({"lr_factor": 0.0}, "TrialConfig.lr_factor must be in (0, 1) (it lowers the rate), got 0"),
    ({"weight_decay": -1}, "TrialConfig.weight_decay must be >= 0, got -1"),
    ({"noise_var": -0.1}, "TrialConfig.noise_var must be >= 0 (a variance), got -0.1"),
    ({"scale_range": 2}, "TrialConfig.scale_range must be in [0, 1) (zoom 1 +- r), got 2"),
    ({"patience": -3}, "TrialConfig.patience must be >= 1 (epochs without a better val RMSE), got -3"),
    ({"patience": 0}, "TrialConfig.patience must be >= 1"),
    ({"lr_patience": -1}, "TrialConfig.lr_patience must be >= 0, got -1"),
    ({"rotation_deg": 200}, "TrialConfig.rotation_deg must be in [0, 180], got 200"),
    ({"shift_px": -1}, "TrialConfig.shift_px must be in [0, 48] (half the input), got -1"),
    ({"seed": -1}, "TrialConfig.seed must be >= 0 (numpy seeds are unsigned), got -1"),
    ({"split_seed": -2}, "TrialConfig.split_seed must be >= 0"),
    ({"data": " "}, 'TrialConfig.data must be a training CSV path or "synthetic"'),
    ({"backbone": ""}, "TrialConfig.backbone=''; valid: ['resnet50', 'densenet121', 'resnet18'"),
    ({"alpha": -0.01, "shape": "cgd"}, "TrialConfig.alpha must be >= 0"),
    ({"lr": "1e-3"}, "TrialConfig.lr must be a finite number, got '1e-3'"),
    ({"noise_var": float("inf")}, "TrialConfig.noise_var must be a finite number, got inf"),
    ({"weight_decay": float("nan")}, "TrialConfig.weight_decay must be a finite number, got nan"),
    ({"max_epochs": 2.0}, "TrialConfig.max_epochs must be an integer, got 2.0"),
    ({"batch_size": True}, "TrialConfig.batch_size must be an integer, got True"),
    ({"compile": 1}, "TrialConfig.compile must be true or false, got 1"),
    ({"augment": "study_fixed"}, "TrialConfig.augment='study_fixed'; valid: ['none', 'study', 'study_exact'"),
])
def test_bad_values_are_one_line_errors_naming_the_field(changes, message):
    with pytest.raises(ValueError) as err:
        TrialConfig(**changes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_boundaries_themselves_are_accepted():
    cfg = TrialConfig(dropout=0.0, lr_factor=0.999, weight_decay=0, noise_var=0.0, scale_range=0.0,
                      patience=1, lr_patience=0, rotation_deg=180, shift_px=48, seed=0)
    assert (cfg.weight_decay, cfg.patience, cfg.shift_px) == (0, 1, 48)


def test_numpy_scalars_read_back_from_parquet_pass():
    cfg = TrialConfig(seed=np.int64(3), lr=np.float32(0.5), compile=np.bool_(False), alpha=np.float64(0.02),
                      shape="cgd")
    assert cfg.seed == 3 and cfg.uses_shape


def test_alpha_none_means_the_studys_weight_with_a_shape_term_and_0_without():
    assert TrialConfig(shape="cgd").alpha == 0.01 and TrialConfig(shape="cgd").uses_shape
    assert TrialConfig(shape="seed_cgd").loss_label == "mse+0.01*seed_cgd"
    assert TrialConfig().alpha == 0.0 and not TrialConfig().uses_shape
    off = TrialConfig(shape="cgd", alpha=0.0)   # explicit: the shape term switched off
    assert not off.uses_shape and off.loss_label == "mse"
    # The resolved weight is what is stored, so a round trip is the same config.
    assert TrialConfig(**TrialConfig(shape="cgd").to_dict()) == TrialConfig(shape="cgd", alpha=0.01)
    assert config_fields()["alpha"] is float


def test_the_cli_and_the_api_give_the_same_defaults():
    parse = lambda argv: train_module.config_from_args(train_module._parser().parse_args(argv))  # noqa: E731
    assert parse([]) == TrialConfig()
    assert parse(["--loss", "cgd"]) == TrialConfig(shape="cgd") == parse(["--loss", "mse+cgd"])
    assert parse(["--loss", "wing+cgd", "--alpha", "0.05"]) == TrialConfig(loss="wing", shape="cgd", alpha=0.05)


def test_every_field_has_a_flag_with_its_docstring_and_default():
    parser = train_module._parser()
    flags = {opt for action in parser._actions for opt in action.option_strings}
    spelled = {"max_epochs": "--epochs", "loss": "--loss", "shape": "--loss", "alpha": "--alpha",
               "compile": "--compile", "compile_mode": "--compile"}
    for f in dataclasses.fields(TrialConfig):
        assert spelled.get(f.name, f"--{f.name.replace('_', '-')}") in flags, f.name
    assert set(cli.field_docs()) == {f.name for f in dataclasses.fields(TrialConfig)}
    text = parser.format_help()
    assert "Fraction of rows held out for validation. (default: 0.15)" in " ".join(text.split())
    assert "{" + ",".join(get_args(Augment)) + "}" in text


def test_generated_flags_set_fields_and_check_them_in_trialconfig():
    parse = lambda argv: train_module.config_from_args(train_module._parser().parse_args(argv))  # noqa: E731
    cfg = parse(["--split-seed", "3", "--val-fraction", "0.2", "--dropout", "0.3", "--rotation-deg", "5",
                 "--precision", "fp32", "--checkpoint-every", "0", "--no-channels-last", "--score-test"])
    assert (cfg.split_seed, cfg.val_fraction, cfg.dropout, cfg.rotation_deg, cfg.precision,
            cfg.checkpoint_every, cfg.channels_last, cfg.score_test) == (3, 0.2, 0.3, 5.0, "fp32", 0, False, True)
    with pytest.raises(ValueError, match=r"TrialConfig.precision='fp16'; valid: \['auto', 'fp32', 'bf16'\]"):
        parse(["--precision", "fp16"])


@pytest.mark.parametrize("flags, message", [
    (["--dropout", "1.5"], "error: TrialConfig.dropout must be in [0, 1), got 1.5"),
    (["--noise-var", "nan"], "error: --noise-var: expected a finite number, got nan"),
    (["--patience", "-3"], "error: TrialConfig.patience must be >= 1"),
    (["--split", "head"], "error: TrialConfig.split='head'; valid: ['shuffle', 'tail']"),
])
def test_cli_bad_values_exit_2_with_one_line(flags, message, tmp_path, capsys):
    assert train_module.main(["--synth-n", "60", "--epochs", "1", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_flag_help_escapes_percent_signs():
    p = argparse.ArgumentParser()
    p.add_argument("--x", help=cli.flag_help("val_fraction", "15%"))
    assert "(default: '15%')" in p.format_help()


def test_train_and_predict_are_the_modules_made_callable(tmp_path):
    assert train is train_module and callable(train) and callable(predict)
    assert train.split_rows and predict.load_model   # still the modules: every attribute kept
    rows = []
    cfg = TrialConfig(max_epochs=2, synth_n=60, batch_size=32, device="cpu")
    summary = train(cfg, report=rows.append, checkpoint_dir=str(tmp_path))
    assert summary.epochs == 2 and [r["epoch"] for r in rows] == [1, 2]
    model = predict.load_model(tmp_path / "best.pt")
    images = (np.arange(2 * 96 * 96) % 256).astype(np.uint8).reshape(2, 1, 96, 96)
    pred = predict(model, torch.from_numpy(images))
    assert tuple(pred.shape) == (2, 15, 2)
