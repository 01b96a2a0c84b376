"""Every list of names has one home: each registry is pinned to the TrialConfig Literal it serves.

    PYTHONPATH=. .venv/bin/python -m pytest -q tests/test_names.py
"""
from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from fkd_core import augment, config, heads, losses, models, precision, schedules, trainer
from fkd_core.config import TrialConfig, augment_knobs, uses_shape
from fkd_core.data import MISSING_POLICIES, SPLIT_MODES


@pytest.mark.parametrize("registry, literal, extra", [
    (models.BACKBONES, config.Backbone, ()),
    (heads.HEADS, config.Head, ()),
    (losses.BASE_LOSSES, config.BaseLoss, ()),
    (losses.SHAPE_LOSSES, config.ShapeTerm, ("none",)),            # "none": no shape term at all
    (augment.POLICIES, config.Augment, ()),
    (schedules.FACTORS, config.Schedule, ("plateau",)),            # plateau is torch's own scheduler
    (precision.DTYPES, config.Precision, ("auto",)),               # auto resolves to fp32 or bf16
    (trainer.OPTIMIZERS, config.Optimizer, ()),
    (MISSING_POLICIES, config.Missing, ()),
    (SPLIT_MODES, config.Split, ()),
], ids=["backbones", "heads", "base_losses", "shape_losses", "augment", "schedules", "precision",
        "optimizers", "missing", "split"])
def test_registry_names_are_its_literals_values(registry, literal, extra):
    assert sorted([*registry, *extra]) == sorted(get_args(literal))


def test_backbone_names_are_the_literal_in_its_order():
    """The torch-free list a sweep space imports (fkd_core.config.BACKBONE_NAMES)."""
    assert config.BACKBONE_NAMES == ("resnet50", "densenet121", "resnet18", "mobilenet_v3_small",
                                     "small_cnn", "res_cnn", "s2d_cnn")
    assert tuple(models.BACKBONES) == config.BACKBONE_NAMES


def test_every_literal_field_is_validated_by_trial_config():
    literal_fields = {"split", "missing", "scored", "backbone", "head", "loss", "shape", "augment",
                      "optimizer", "schedule", "precision", "compile_mode"}
    assert set(config._LITERALS) == literal_fields
    with pytest.raises(ValueError) as err:
        TrialConfig(backbone="resnet51")
    assert str(err.value) == ("TrialConfig.backbone='resnet51'; valid: ['resnet50', 'densenet121', "
                              "'resnet18', 'mobilenet_v3_small', 'small_cnn', 'res_cnn', "
                              "'s2d_cnn']")


def test_knobbed_and_skip_backbones_are_one_list_of_real_backbones():
    assert models.KNOBBED is config.SKIP_BACKBONES
    assert set(config.SKIP_BACKBONES) < set(config.BACKBONE_NAMES)


@pytest.mark.parametrize("name", config.BACKBONE_NAMES)
def test_only_the_skip_backbones_expose_earlier_maps(name):
    trunk = models.BACKBONES[name](False, config.INPUT_SIZE)
    assert bool(trunk.taps) == (name in config.SKIP_BACKBONES)


def test_augment_params_knobs_are_trial_configs_fields_with_their_defaults():
    knobs = {f.name: f.default for f in augment_knobs()}
    assert list(knobs) == ["rotation_deg", "noise_var", "brightness_low", "brightness_high", "flip_p",
                           "scale_range", "shift_px", "blur_sigma", "contrast_range", "gamma_range",
                           "occlusion_size"]
    params = {f.name: f.default for f in dataclasses.fields(augment.AugmentParams)}
    assert {k: params[k] for k in knobs} == knobs == {k: getattr(TrialConfig(), k) for k in knobs}
    # The rest are the policy switches, which TrialConfig does not have (augment names the policy).
    switches = set(params) - set(knobs)
    assert switches == {"rotate", "noise", "brightness", "flip", "scale_shift", "exact_rotation", "photometric"}
    assert not switches & {f.name for f in dataclasses.fields(TrialConfig)}


def test_params_for_carries_every_knob_of_the_config():
    changed = {f.name: f.default * 0.5 for f in augment_knobs()}
    params = augment.params_for(TrialConfig(augment="robust", **changed))
    assert {k: getattr(params, k) for k in changed} == changed


@pytest.mark.parametrize("shape, alpha, expected", [
    ("none", 0.0, False), ("none", 0.01, False), ("cgd", 0.0, False), ("cgd", 0.01, True),
    ("seed_cgd", 1e-9, True), ("cgd", "0.5", True),
])
def test_uses_shape_is_a_shape_term_with_a_positive_weight(shape, alpha, expected):
    assert uses_shape(shape, alpha) is expected
    if isinstance(alpha, float):
        assert TrialConfig(shape=shape, alpha=alpha).uses_shape is expected
