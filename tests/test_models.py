"""Every backbone x head runs forward and backward; the head starts at the mean face; the width and
depth knobs; weights loading; checkpoints of the old head layout still load."""
from __future__ import annotations

import os
import urllib.error

import pytest
import torch
import torchvision

from fkd_core import models
from fkd_core.heads import HEADS
from fkd_core.models import BACKBONES, KNOBBED, build_model, upgrade_state_dict

# The study's two backbones take 8-20 s on 2 busy CPU cores (under 1 s on idle ones).
SLOW = {"resnet50", "densenet121"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in BACKBONES])
def test_backbone_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(name, num_keypoints=15)
    pred = model(torch.rand(2, 1, 96, 96))
    assert pred.shape == (2, 15, 2)
    assert torch.isfinite(pred).all()
    pred.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", KNOBBED)
@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("width, depth", [(1.0, 1), (0.5, 2), (1.5, 1)])
def test_cpu_backbones_with_knobs_and_every_head_train(name, head, width, depth):
    torch.manual_seed(0)
    # channels_last, as train() runs them (a width-0.5 stride-2 1x1 conv crashed torch there).
    model = build_model(name, num_keypoints=15, head=head, width=width, depth=depth)
    model = model.to(memory_format=torch.channels_last)
    pred = model(torch.rand(2, 1, 96, 96).contiguous(memory_format=torch.channels_last))
    assert pred.shape == (2, 15, 2) and torch.isfinite(pred).all()
    (pred - 30.0).square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_width_scales_channels_and_depth_adds_blocks():
    count = lambda **kw: sum(p.numel() for p in build_model("res_cnn", 15, **kw).trunk.parameters())
    # Conv weights grow with width^2: doubling the width gives ~4x the trunk parameters.
    assert 3.8 < count(width=2.0) / count(width=1.0) < 4.1
    assert count(depth=2) > 1.8 * count(depth=1)
    narrow = build_model("small_cnn", 15, width=0.5)
    assert [m.out_channels for m in narrow.trunk.modules() if isinstance(m, torch.nn.Conv2d)] == [4, 8, 16, 32, 64]


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "small_cnn", "width": 0.0}, "width multiplier of small_cnn must be > 0"),
    ({"name": "res_cnn", "width": -1.0}, "width multiplier of res_cnn must be > 0"),
    ({"name": "resnet18", "width": 2.0}, "resnet18 has no width/depth knob"),
    ({"name": "small_cnn", "head": "heatmap", "heatmap_size": 25}, "heatmap_size=25 must divide"),
    ({"name": "resnet18", "head": "unet"}, "head 'unet' needs trunk feature maps of side 6..24"),
    ({"name": "s2d_cnn", "image_size": 98}, "image_size=98: s2d_cnn needs a multiple of 4"),
])
def test_bad_knobs_say_what_is_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(num_keypoints=15, **kwargs)


@pytest.mark.parametrize("name, depth, taps", [
    ("small_cnn", 1, [(0, 8, 48), (1, 16, 24), (2, 32, 12), (3, 64, 6)]),
    ("small_cnn", 2, [(1, 8, 48), (3, 16, 24), (5, 32, 12), (7, 64, 6)]),
    ("res_cnn", 2, [(0, 16, 48), (2, 32, 24), (4, 64, 12)]),
    ("s2d_cnn", 1, [(0, 32, 24), (1, 64, 12), (2, 128, 6)]),
    ("s2d_cnn", 2, [(1, 32, 24), (3, 64, 12), (5, 128, 6)]),
])
def test_trunk_taps_name_the_last_layer_of_each_stage_and_its_map(name, depth, taps):
    """The unet head reads the maps at these layer indices; a tap one layer early would skip a
    stage's extra convs (depth 2) and still run."""
    from fkd_core.models import BACKBONES
    trunk = BACKBONES[name](False, 96, 1.0, depth)
    assert list(trunk.taps) == taps
    x, sides = torch.zeros(1, 1, 96, 96), {}
    for i, layer in enumerate(trunk.features):
        x = layer(x)
        sides[i] = (x.shape[1], x.shape[-1])
    assert [(i, *sides[i]) for i, _, _ in taps] == taps


def test_s2d_cnn_stem_moves_each_4x4_pixel_block_into_16_channels_and_no_conv_is_narrow():
    """The stem learns nothing and loses nothing: pixel (r, c) lands in channel 4 (r % 4) + c % 4
    of cell (r // 4, c // 4); every learned conv has >= 32 channels at width 1 (the point of the
    design: lanes and tiles of the CPU's bf16 units are 16 and 32 wide)."""
    trunk = models.BACKBONES["s2d_cnn"](False, 96, 1.0, 2)
    image = torch.arange(96 * 96, dtype=torch.float32).view(1, 1, 96, 96)
    cells = models.space_to_depth(image, 4, channels_last=True)
    assert cells.shape == (1, 16, 24, 24) and cells.is_contiguous(memory_format=torch.channels_last)
    for r, c in [(0, 0), (5, 7), (95, 94), (50, 3)]:
        assert cells[0, 4 * (r % 4) + c % 4, r // 4, c // 4] == image[0, 0, r, c]
    # torch's own pixel_unshuffle, in either layout, for several channels too
    many = torch.rand(2, 3, 8, 12)
    for layout in (many, many.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(models.space_to_depth(layout, 4, True), torch.nn.functional.pixel_unshuffle(many, 4))
    assert torch.equal(models.space_to_depth(many, 2, False), torch.nn.functional.pixel_unshuffle(many, 2))
    convs = [m for m in trunk.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [32, 32, 64, 64, 128, 128, 128, 128]
    assert [m.stride[0] for m in convs] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert (trunk.channels, trunk.side) == (128, 3)


def test_checkpoints_of_the_old_linear_head_still_load():
    model = build_model("small_cnn", 15)
    old = {("head.weight" if k == "head.linear.weight" else "head.bias" if k == "head.linear.bias"
            else "scale" if k == "head.scale" else k): v for k, v in model.state_dict().items()}
    fresh = build_model("small_cnn", 15)
    fresh.load_state_dict(upgrade_state_dict(old))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_first_prediction_is_the_mean_face():
    mean_face = torch.rand(68, 2) * 96
    model = build_model("small_cnn", num_keypoints=68, mean_face=mean_face).eval()
    pred = model(torch.rand(3, 1, 96, 96))
    assert torch.equal(pred, mean_face.expand(3, 68, 2))


def test_small_cnn_parameter_count_is_pinned():
    # Pins the architecture that the CPU throughput figure (>= 300 img/s) was measured on.
    model = build_model("small_cnn", num_keypoints=15)
    assert sum(p.numel() for p in model.parameters()) == 133_078


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="small_cnn"):
        build_model("vgg16", 15)


def test_pretrained_loads_weights_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)     # get_dir() re-reads TORCH_HOME
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    with torch.no_grad():
        reference.features[0][0].weight.fill_(0.25)      # a value no random init produces
    path = models.weights_path("mobilenet_v3_small")
    assert path.startswith(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    model = build_model("mobilenet_v3_small", 15, pretrained=True)
    assert torch.equal(model.trunk[0][0].weight, reference.features[0][0].weight)


def test_pretrained_offline_and_absent_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(models.WeightsUnavailable) as info:
        build_model("resnet18", 15, pretrained=True)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path) in message
    assert "pretrained=False" in message


def test_res_cnn_shortcut_is_a_stride_2_1x1_convolution():
    block = models._BasicBlock(8, 16, stride=2).eval()
    x = torch.rand(2, 8, 9, 9)
    conv = block.shortcut[0]
    want = block.shortcut[1](torch.nn.functional.conv2d(x, conv.weight, stride=2))
    assert block.shortcut(x[:, :, ::2, ::2]).shape == (2, 16, 5, 5)
    assert torch.allclose(block.shortcut(x[:, :, ::2, ::2]), want)
