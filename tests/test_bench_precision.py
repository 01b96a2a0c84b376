"""bench.precision at tiny sizes: FLOPs hand-counted, ratios and fractions consistent with the
rates they come from, the profile's categories, and the files it writes."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bench import precision as B

TINY = B.Sizes(batch=4, image=32, steps=1, rounds=1, matmul_n=64, profile_steps=1)


class _Linear(nn.Module):
    """images [N, 1, S, S] -> [N, 15, 2] through one Linear layer with no bias."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.linear = nn.Linear(side * side, 30, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).view(-1, 15, 2)


def test_a_training_step_counts_forward_and_weight_gradient_flops():
    step = B.Step.build(B.Model("small_cnn", "regression"), "fp32", TINY)
    step.model = _Linear(TINY.image)
    # forward 2*B*S^2*30; backward: the weight's gradient only (the images need none)
    assert B.step_flops(step) == 2 * (2 * TINY.batch * TINY.image**2 * 30)


def test_matmul_rate_is_positive_for_both_precisions():
    for dtype in (torch.float32, torch.bfloat16):
        assert B.matmul_gflops(64, dtype, repeats=2) > 0.0


@pytest.mark.parametrize("op, expected", [
    ("aten::_to_copy", "conversions"), ("aten::copy_", "conversions"),
    ("aten::native_batch_norm_backward", "batch_norm"), ("aten::upsample_bilinear2d", "upsampling"),
    ("aten::mkldnn_convolution", "convolution"), ("aten::_foreach_lerp_", "optimizer"),
    ("aten::relu_", None),
])
def test_profile_categories(op, expected):
    assert B.category(op) == expected


def test_one_model_measured_in_both_precisions():
    m = B.Model("small_cnn", "heatmap", 1, 0.5)
    r = B.measure_model(m, TINY)
    assert r["model"] == "small_cnn d1 w0.5 + heatmap"
    assert r["bf16_over_fp32"] == pytest.approx(r["img_per_s"]["bf16"] / r["img_per_s"]["fp32"])
    for name in B.PRECISIONS:
        assert r["gflops"][name] == pytest.approx(r["flop_per_image"] * r["img_per_s"][name] / 1e9)
    assert r["flop_per_image"] > 0


def test_the_soft_argmax_label_is_restored_after_profiling():
    from fkd_core import heads

    original = heads.soft_argmax
    table, shares = B.profile_step(B.Model("small_cnn", "heatmap", 1, 0.5), "bf16", TINY)
    assert heads.soft_argmax is original
    assert "aten::" in table and shares[B.SOFT_ARGMAX] > 0.0
    assert all(0.0 <= s <= 1.0 for s in shares.values()) and sum(shares.values()) <= 1.0 + 1e-6


def test_the_recipe_model_is_fast_cpus_and_the_model_before_it_is_measured_too():
    assert B.recipe_model() == B.Model("s2d_cnn", "unet", 2, 1.0)
    assert B.recipe_model().label == "s2d_cnn d2 + unet"
    assert {B.recipe_model(), B.Model("small_cnn", "heatmap", 2, 1.0)} <= set(B.MODELS)


@pytest.mark.slow
def test_quick_run_writes_its_files_and_rows(tmp_path):
    rows = B.run(quick=True, out=str(tmp_path))
    result = json.loads((tmp_path / "precision.json").read_text())
    assert result["quick"] and len(result["models"]) == len(B.MODELS)
    assert {p.name for p in tmp_path.iterdir()} == {"precision.json", "precision.md",
                                                    "precision-profile-fp32.txt", "precision-profile-bf16.txt"}
    # matmul row, two rows per model, one profile row per precision
    assert len(rows) == 1 + 2 * len(B.MODELS) + len(B.PRECISIONS)
    recipe = [r for r in rows if "(the recipe's model)" in r["name"]]
    assert len(recipe) == 1 and recipe[0]["target"] == ">= 0.40"
    assert recipe[0]["ratio"] == pytest.approx(recipe[0]["ours"] / recipe[0]["reference"])
    assert "| small_cnn d2 + heatmap |" in (tmp_path / "precision.md").read_text()
    assert "| s2d_cnn d2 + unet |" in (tmp_path / "precision.md").read_text()


def test_a_quick_run_without_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(B, "MODELS", (B.Model("small_cnn", "regression", 1, 0.5),))
    monkeypatch.setattr(B, "QUICK", TINY)
    monkeypatch.setattr(B, "recipe_model", lambda: B.Model("small_cnn", "heatmap", 1, 0.5))
    B.run(quick=True)
    assert list(tmp_path.iterdir()) == []
