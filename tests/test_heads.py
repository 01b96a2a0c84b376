"""Heads: soft-argmax recovers a known peak, both heads start where they should, bad sizes fail."""
from __future__ import annotations

import pytest
import torch

from fkd_core.heads import HEADS, build_head, check_heatmap_size, soft_argmax

S = 96


def _gaussian_logits(centres: torch.Tensor, side: int, sigma_px: float) -> torch.Tensor:
    """[N, K, side, side] log of a Gaussian at centres [N, K, 2] px, sampled at the cell centres."""
    cell = (torch.arange(side, dtype=torch.float32) + 0.5) * (S / side) - 0.5
    dx = cell.view(1, 1, 1, side) - centres[..., 0, None, None]
    dy = cell.view(1, 1, side, 1) - centres[..., 1, None, None]
    return -(dx.square() + dy.square()) / (2 * sigma_px ** 2)


@pytest.mark.parametrize("side", [12, 24, 48])
def test_soft_argmax_recovers_a_known_peak_to_a_twentieth_of_a_pixel(side):
    # Off-grid peaks, over 4 sigma from the border so that the frame does not cut the Gaussian.
    centres = torch.tensor([[[37.3, 52.8], [44.0, 58.6], [60.45, 36.05]]])
    sigma = S / side                # one cell: a sampled Gaussian's mean is then its centre
    pred = soft_argmax(_gaussian_logits(centres, side, sigma), S)
    assert (pred - centres).abs().max() < 0.05


def test_soft_argmax_of_a_uniform_map_is_the_image_centre_and_of_two_cells_their_midpoint():
    assert torch.allclose(soft_argmax(torch.zeros(1, 1, 24, 24), S), torch.tensor([[[47.5, 47.5]]]))
    logits = torch.full((1, 1, 4, 4), -1e4)
    logits[0, 0, 1, 0] = logits[0, 0, 1, 2] = 0.0   # cells (row 1, cols 0 and 2), 4x4 map of 8 px
    # Cell j's centre: (j + 0.5) * 2 - 0.5 on an 8-pixel image: x = 0.5 and 4.5, y = 2.5.
    assert torch.allclose(soft_argmax(logits, 8), torch.tensor([[[2.5, 2.5]]]))


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("side", [3, 6])
def test_every_head_maps_features_to_pixels_and_backpropagates(name, side):
    torch.manual_seed(0)
    skip_sides = [s for s in (6, 12, 24) if s > side]
    head = build_head(name, channels=16, side=side, num_keypoints=15, image_size=S, heatmap_size=24,
                      skips=tuple((8, s) for s in skip_sides))
    mean_face = torch.rand(15, 2) * S
    feats = torch.randn(4, 16, side, side, requires_grad=True)
    skips = {s: torch.randn(4, 8, s, s, requires_grad=True) for s in skip_sides}
    pred = head(feats, mean_face, skips) if name == "unet" else head(feats, mean_face)
    assert pred.shape == (4, 15, 2)
    # Zero-initialised last layers: regression starts at the mean face, heatmap at the centre.
    start = mean_face.expand(4, 15, 2) if name == "regression" else torch.full((4, 15, 2), (S - 1) / 2)
    assert torch.allclose(pred, start, atol=1e-4)
    (pred - 10.0).square().mean().backward()
    assert feats.grad is None or torch.isfinite(feats.grad).all()
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_heatmap_size_must_divide_the_input():
    check_heatmap_size(24, 96)
    with pytest.raises(ValueError, match="heatmap_size=25 must divide the input size 96"):
        check_heatmap_size(25, 96)
    with pytest.raises(ValueError, match="Unknown head 'dense'; valid"):
        build_head("dense", channels=8, side=3, num_keypoints=15, image_size=S)


def test_the_unet_head_reads_each_skip_map_and_needs_at_least_one():
    """Each skip map (side 6, 12, 24) changes the prediction once the logits are not zero; a trunk
    without maps of those sides is refused in one line."""
    torch.manual_seed(0)
    head = build_head("unet", channels=16, side=3, num_keypoints=15, image_size=S, heatmap_size=24,
                      skips=((8, 6), (8, 12), (8, 24), (8, 48)))   # 48 is past the heatmap: unused
    torch.nn.init.normal_(head.logits.weight)
    head.eval()
    feats = torch.randn(2, 16, 3, 3)
    skips = {s: torch.randn(2, 8, s, s) for s in (6, 12, 24)}
    base = head(feats, None, skips)
    for s in (6, 12, 24):
        moved = head(feats, None, {**skips, s: torch.zeros(2, 8, s, s)})
        assert (moved - base).abs().max() > 1e-3, f"the side-{s} map does not reach the output"
    with pytest.raises(ValueError, match="head 'unet' needs trunk feature maps of side 6..24; "
                                         r"this trunk offers sides \[48\]"):
        build_head("unet", channels=16, side=3, num_keypoints=15, image_size=S, skips=((8, 48),))
