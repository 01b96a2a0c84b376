"""Batched augmentation: exact geometry, flip relabelling, the study's rotation defect, policies."""
from __future__ import annotations

import math

import pytest
import torch

from fkd_core import augment
from fkd_core.augment import add_noise_, augment_batch, params_for, policy, scale_brightness_, warp
from fkd_core.config import TrialConfig
from fkd_core.schema import KAGGLE15

S = 96
C = (S - 1) / 2  # rotation centre in pixel-index coordinates
PERM = KAGGLE15.flip_permutation()


def _identity(b: int) -> dict[str, torch.Tensor]:
    return {"angle": torch.zeros(b), "scale": torch.ones(b), "shift": torch.zeros(b, 2),
            "flip": torch.zeros(b, dtype=torch.bool)}


def _blobs(keypoints: torch.Tensor, sigma: float = 1.2) -> torch.Tensor:
    """float [B, 1, S, S]: a Gaussian spot at every keypoint [B, K, 2]."""
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32),
                            indexing="ij")
    d2 = (xs - keypoints[..., 0, None, None]) ** 2 + (ys - keypoints[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma ** 2)).amax(dim=1, keepdim=True)


def _centroid(image: torch.Tensor, x: float, y: float, radius: int = 3) -> tuple[float, float]:
    cx, cy = round(x), round(y)
    win = image[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1]
    ys, xs = torch.meshgrid(torch.arange(cy - radius, cy + radius + 1.0),
                            torch.arange(cx - radius, cx + radius + 1.0), indexing="ij")
    return float((win * xs).sum() / win.sum()), float((win * ys).sum() / win.sum())


def test_rotation_by_90_degrees_moves_a_known_keypoint_exactly():
    image = torch.zeros(1, 1, S, S)
    image[0, 0, 47, 58] = 1.0                        # the pixel at x=58, y=47
    keypoints = torch.tensor([[[58.0, 47.0]]])       # offset (10.5, -0.5) from the centre
    args = _identity(1) | {"angle": torch.tensor([math.pi / 2])}
    out, moved = warp(image, keypoints, **args, flip_perm=[0])
    # y points down, so +90 deg turns +x into +y: (c + 0.5, c + 10.5) = (48, 58).
    assert torch.allclose(moved, torch.tensor([[[48.0, 58.0]]]), atol=1e-4)
    assert out[0, 0, 58, 48].item() == pytest.approx(1.0, abs=1e-4)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("flip", [False, True])
def test_identity_warp_is_exact_and_a_flip_inside_a_warp_is_an_exact_mirror(flip):
    """Warped rows get their flip inside the warp: with no rotation it must not blur (bilinear
    weights off by float rounding only, at most ~1.3e-5 of a pixel difference)."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, S, S)
    out = augment.warp_images(x, **(_identity(3) | {"flip": torch.full((3,), flip)}))
    assert (out - (x.flip(-1) if flip else x)).abs().max() < 5e-5


def test_flip_swaps_left_and_right_eye_centres():
    keypoints = torch.full((1, 15, 2), 50.0)
    keypoints[0, 0] = torch.tensor([60.0, 40.0])    # left eye centre (subject's left, image right)
    keypoints[0, 1] = torch.tensor([30.0, 41.0])    # right eye centre
    image = _blobs(keypoints)
    args = _identity(1) | {"flip": torch.tensor([True])}
    out, moved = warp(image, keypoints, **args, flip_perm=PERM)
    assert moved[0, 0].tolist() == pytest.approx([S - 1 - 30.0, 41.0])   # the mirrored right eye
    assert moved[0, 1].tolist() == pytest.approx([S - 1 - 60.0, 40.0])
    assert torch.allclose(out, image.flip(-1), atol=1e-5)


@pytest.mark.parametrize("scale, shift", [(1.0, (0.0, 0.0)), (1.1, (3.0, -2.0))])
def test_rotated_landmark_pixels_stay_under_the_rotated_keypoints(scale, shift):
    keypoints = torch.tensor([[[30.0, 35.0], [66.0, 34.0], [48.0, 60.0], [35.0, 75.0], [62.0, 76.0]]])
    args = {"angle": torch.tensor([math.radians(20)]), "scale": torch.tensor([scale]),
            "shift": torch.tensor([shift]), "flip": torch.tensor([False])}
    out, moved = warp(_blobs(keypoints), keypoints, **args, flip_perm=list(range(5)))
    for x, y in moved[0].tolist():
        cx, cy = _centroid(out[0, 0], x, y)
        assert abs(cx - x) < 0.2 and abs(cy - y) < 0.2


def test_study_exact_reproduces_the_y_from_rotated_x_defect():
    keypoints = torch.tensor([[[20.0, 30.0], [80.0, 70.0]]])
    theta = math.radians(20)
    args = _identity(1) | {"angle": torch.tensor([theta])}
    out_ok, good = warp(_blobs(keypoints), keypoints, **args, flip_perm=[0, 1])
    out_bad, bad = warp(_blobs(keypoints), keypoints, **args, flip_perm=[0, 1], exact_rotation=False)
    assert torch.equal(out_ok, out_bad)              # the image is rotated correctly either way
    for (x, y), (bx, by) in zip(keypoints[0].tolist(), bad[0].tolist()):
        x_rot = C + (x - C) * math.cos(theta) - (y - C) * math.sin(theta)
        y_bug = C + (x_rot - C) * math.sin(theta) + (y - C) * math.cos(theta)
        assert (bx, by) == pytest.approx((x_rot, y_bug), abs=1e-4)
    assert torch.allclose(good[..., 0], bad[..., 0])
    assert (good[..., 1] - bad[..., 1]).abs().max() > 2.0   # pixels off, away from the drawn spots


def test_keypoints_leaving_the_frame_become_nan_and_nan_stays_nan():
    keypoints = torch.tensor([[[2.0, 50.0], [float("nan"), float("nan")], [50.0, 50.0]]])
    args = _identity(1) | {"shift": torch.tensor([[-5.0, 0.0]])}
    _, moved = warp(torch.zeros(1, 1, S, S), keypoints, **args, flip_perm=[0, 1, 2])
    assert torch.isnan(moved[0, 0]).all() and torch.isnan(moved[0, 1]).all()
    assert moved[0, 2].tolist() == pytest.approx([45.0, 50.0])


def test_noise_variance_and_brightness_clipping():
    gen = torch.Generator().manual_seed(0)
    flat = torch.full((2, 1, S, S), 0.5)
    out = add_noise_(flat.clone(), torch.tensor([0.05, 0.0]), gen)
    assert out[0].std().item() == pytest.approx(0.05, rel=0.05)
    assert out[0].mean().item() == pytest.approx(0.5, abs=0.005)
    assert torch.equal(out[1], flat[1])
    bright = scale_brightness_(torch.tensor([0.2, 0.9, 0.5]).view(3, 1, 1, 1).expand(3, 1, S, S).contiguous(),
                               torch.tensor([1.5, 1.5, 1.0]))
    assert bright[0].max().item() == pytest.approx(0.3) and bright[1].max().item() == 1.0
    assert torch.equal(bright[2], flat[0])


def test_params_for_maps_the_config():
    p = params_for(TrialConfig(augment="study_exact", rotation_deg=10.0, noise_var=0.05))
    assert p.rotate and p.noise and p.brightness and not p.flip and not p.exact_rotation
    assert p.rotation_deg == 10.0 and p.noise_var == 0.05
    assert params_for(TrialConfig(augment="study")).exact_rotation
    full = params_for(TrialConfig(augment="full", flip_p=0.3))
    assert full.flip and full.scale_shift and full.flip_p == 0.3 and full.exact_rotation
    assert not params_for(TrialConfig()).active
    assert set(augment.POLICIES) == {"none", "study", "study_exact", "full", "robust"}
    robust = params_for(TrialConfig(augment="robust", blur_sigma=2.0, occlusion_size=0.2))
    assert robust.photometric and robust.rotate and robust.scale_shift and robust.flip
    assert not robust.noise and not robust.brightness
    assert robust.blur_sigma == 2.0 and robust.occlusion_size == 0.2
    with pytest.raises(ValueError, match="valid"):
        policy("everything")


@pytest.mark.parametrize("name", ["none", "study", "study_exact", "full", "robust"])
def test_augment_batch_keeps_shapes_range_and_is_seeded(name):
    from fkd_core.synth import generate

    images, keypoints = generate(32, seed=1)
    x = images.float() / 255
    keypoints[3, 5] = float("nan")
    run = lambda: augment_batch(x, keypoints, policy(name), PERM, torch.Generator().manual_seed(7))
    (xa, ka), (xb, kb) = run(), run()
    assert xa.shape == x.shape and ka.shape == keypoints.shape and xa.dtype == x.dtype
    assert torch.equal(xa, xb) and torch.equal(ka.nan_to_num(-1), kb.nan_to_num(-1))
    assert 0.0 <= xa.min() and xa.max() <= 1.0
    assert torch.isnan(ka[3]).all(dim=1).sum() >= 1   # a flip may relabel it, never fill it
    if name == "none":
        assert xa is x and ka is keypoints


def test_study_policy_gives_each_image_at_most_one_transform():
    """Like the study's copies: a quarter originals, a quarter rotated, noisy, brightened each."""
    b = 400
    x = torch.full((b, 1, S, S), 0.5)
    keypoints = torch.full((b, 15, 2), 40.0)
    xa, ka = augment_batch(x, keypoints, policy("study"), PERM, torch.Generator().manual_seed(3))
    rotated = (ka.nan_to_num(0) != keypoints).any(dim=2).any(dim=1)
    centre = xa[:, 0, 30:66, 30:66]                 # rotation leaves the image centre at 0.5
    brightened = ((centre - 0.25).abs().amax(dim=(1, 2)) < 1e-6) | ((centre - 0.75).abs().amax(dim=(1, 2)) < 1e-6)
    noisy = centre.std(dim=(1, 2)) > 0.1
    assert not (rotated & noisy).any() and not (rotated & brightened).any() and not (noisy & brightened).any()
    for group in (rotated, noisy, brightened):
        assert 0.15 < group.float().mean() < 0.35


def test_plan_regroups_each_batch_and_each_row_gets_its_own_draw():
    """train() path: batches keep their rows; inside a batch rows are grouped by transform; the
    pixels of every row are exactly what its own draw says."""
    from fkd_core.synth import generate

    n, batch = 50, 16
    images, keypoints = generate(n, seed=2)
    x_all, gen = images.float() / 255, torch.Generator().manual_seed(5)
    p = augment.plan(policy("full"), keypoints, PERM, S, batch, gen)
    assert sorted(p.order.tolist()) == list(range(n))
    for b in range(4):
        rows = p.order[b * batch:(b + 1) * batch]
        assert set(rows.tolist()) == set(range(b * batch, min(n, (b + 1) * batch)))
        d = p.draws.take(slice(b * batch, b * batch + len(rows)))
        assert (d.block[1:] >= d.block[:-1]).all()
        assert p.ends[b][-1] == len(rows)
        out = augment.apply_(x_all[rows].clone(), p, b, gen)
        for i, row in enumerate(rows.tolist()):
            src, kind, flip = x_all[row:row + 1], int(d.kind[i]), bool(d.flip[i])
            if kind == augment.AFFINE:
                want = augment.warp_images(src, d.angle[i:i + 1], d.scale[i:i + 1], d.shift[i:i + 1], d.flip[i:i + 1])
                assert torch.allclose(out[i:i + 1], want, atol=1e-6)
                continue
            mirrored = src.flip(-1) if flip else src
            if kind == augment.ORIGINAL:
                assert torch.equal(out[i:i + 1], mirrored)
            elif kind == augment.BRIGHTNESS:
                assert torch.allclose(out[i:i + 1], (mirrored * d.brightness[i]).clamp(0, 1))
            else:
                assert (out[i:i + 1] - mirrored).abs().mean() > 0.1   # sigma ~0.32 before clipping
        kp_want = augment.move_keypoints(keypoints[rows], d.angle, d.scale, d.shift, d.flip, PERM, S)
        assert torch.equal(p.keypoints[b * batch:b * batch + len(rows)].nan_to_num(-1), kp_want.nan_to_num(-1))
    counts = torch.bincount(p.draws.kind, minlength=4)
    assert (counts > 0).all()        # 50 draws: every transform and the original occur


# --- the robust policy's photometric transforms: pixels change, the keypoints stay put ---------


def _dot_centroid(image: torch.Tensor, x: float, y: float, radius: int = 7) -> tuple[float, float]:
    """Centroid of a spot above its window's floor (contrast lifts the background evenly)."""
    cx, cy = round(x), round(y)
    win = image[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1]
    win = win - win.min()
    ys, xs = torch.meshgrid(torch.arange(cy - radius, cy + radius + 1.0),
                            torch.arange(cx - radius, cx + radius + 1.0), indexing="ij")
    return float((win * xs).sum() / win.sum()), float((win * ys).sum() / win.sum())


DOTS = torch.tensor([[[30.3, 35.6]], [[60.7, 50.2]], [[47.0, 70.4]], [[25.5, 62.5]]])   # [4, 1, 2]


def _draws(**changes: torch.Tensor) -> augment.Draws:
    """Identity draws of 4 rows with the given fields changed."""
    n = DOTS.shape[0]
    fields = {"kind": torch.zeros(n, dtype=torch.long), "angle": torch.zeros(n), "scale": torch.ones(n),
              "shift": torch.zeros(n, 2), "flip": torch.zeros(n, dtype=torch.bool),
              "brightness": torch.ones(n), "sigma": torch.zeros(n), "contrast": torch.ones(n),
              "gamma": torch.ones(n), "blur": torch.zeros(n), "box": torch.zeros(n, 4), "fill": torch.zeros(n)}
    return augment.Draws(**{**fields, **changes})


@pytest.mark.parametrize("change", [
    {"blur": torch.tensor([0.5, 1.0, 1.5, 2.0])},
    {"contrast": torch.tensor([0.6, 1.4, 0.8, 1.2])},
    {"gamma": torch.tensor([0.67, 1.5, 0.8, 1.25])},
    {"box": torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.0, 0.7, 0.3, 1.0], [0.7, 0.0, 1.0, 0.3],
                          [0.6, 0.6, 0.9, 0.9]]), "fill": torch.tensor([0.3, 0.9, 0.5, 0.0])},
    {"blur": torch.full((4,), 1.5), "contrast": torch.full((4,), 0.7), "gamma": torch.full((4,), 1.3)},
])
def test_each_photometric_transform_keeps_a_rendered_dot_on_its_keypoint(change):
    image = _blobs(DOTS) * 0.8 + 0.1
    out = augment.photometric_(image.clone(), _draws(**change), augment.blur_radius(2.0))
    for i, (x, y) in enumerate(DOTS[:, 0].tolist()):
        cx, cy = _dot_centroid(out[i, 0], x, y)
        assert abs(cx - x) < 0.1 and abs(cy - y) < 0.1
    assert not torch.equal(out, image) and 0.0 <= out.min() and out.max() <= 1.0


def test_identity_photometric_draws_leave_the_pixels_alone():
    image = torch.rand(4, 1, S, S)
    out = augment.photometric_(image.clone(), _draws(), augment.blur_radius(1.5))
    assert (out - image).abs().max() < 1e-6


def test_blur_has_the_asked_sigma_and_occlusion_covers_exactly_its_box():
    spot = torch.zeros(1, 1, S, S)
    spot[0, 0, 48, 40] = 1.0
    out = augment.gaussian_blur(spot, torch.tensor([2.0]), radius=8)[0, 0]
    xs = torch.arange(S, dtype=torch.float32)
    var_x = float((out.sum(0) * (xs - 40) ** 2).sum() / out.sum())
    assert var_x == pytest.approx(4.0, rel=0.01) and out.sum().item() == pytest.approx(1.0, abs=1e-5)
    img = torch.zeros(1, 1, S, S)
    augment.occlude_(img, torch.tensor([[10.0, 20.0, 30.0, 25.0]]), torch.tensor([0.5]))
    assert img.sum().item() == pytest.approx(0.5 * 20 * 5)           # pixels 10..29 x 20..24
    assert img[0, 0, 20, 10] == 0.5 and img[0, 0, 25, 10] == 0 and img[0, 0, 20, 30] == 0


def test_robust_policy_moves_dots_and_keypoints_together():
    """The whole robust pipeline (warp with zoom/shift/rotation, flip, contrast, gamma, blur; no
    occlusion, which could hide a dot): every dot sits under its moved keypoint."""
    b = 24
    kp = torch.tensor([[30.3, 35.6], [64.7, 36.2], [47.4, 58.9]]).expand(b, 3, 2).clone()
    params = policy("robust", scale_range=0.2, shift_px=6.0, occlusion_size=0.0)
    out, moved = augment_batch(_blobs(kp) * 0.8 + 0.1, kp, params, [1, 0, 2], torch.Generator().manual_seed(4))
    assert (moved != kp).any(dim=2).any(dim=1).sum() >= b // 4        # many rows were moved
    for i in range(b):
        for x, y in moved[i].tolist():
            if not (8 < x < S - 9 and 8 < y < S - 9):
                continue
            cx, cy = _dot_centroid(out[i, 0], x, y, radius=5)
            assert abs(cx - x) < 0.1 and abs(cy - y) < 0.1, (i, x, y, cx, cy)


def test_robust_draws_do_not_change_the_other_policies_random_streams():
    full_a = augment.draw(policy("full"), 64, torch.Generator().manual_seed(1))
    robust = augment.draw(policy("robust"), 64, torch.Generator().manual_seed(1))
    assert torch.equal(full_a.flip, robust.flip)                    # same first uniforms
    assert (full_a.contrast == 1).all() and (full_a.blur == 0).all() and (full_a.box == 0).all()
    assert 0.15 < (robust.blur > 0).float().mean() < 0.45             # BLUR_P = 0.3
    assert 0.15 < (robust.box[:, 2] > robust.box[:, 0]).float().mean() < 0.45
