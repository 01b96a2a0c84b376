"""Synthetic grey faces in the Kaggle 15-keypoint layout: the embedded default data set.

Every face is drawn analytically (face outline, eyes with pupils, brows, nose, mouth) from a few
per-face parameters, in a face-centred "canonical" frame; the same parameters give the keypoints,
so each keypoint sits exactly on its drawn feature (eye centre = pupil centre, eye corners = ends
of the eye ellipse, brow ends = ends of the brow stroke, nose tip = nostril blob, mouth corners and
lip centres = extremes of the mouth shape). Rendering is batched over faces (torch), no per-face
Python loop: several thousand faces per second on one CPU core.

Coordinates follow the pixel-index convention: the centre of pixel (row i, column j) is (x=j, y=i).

    python -m fkd_core.synth --n 2000 --seed 0 --pose 1 --out data/synthetic/training.csv.gz \\
        --test 500    # Kaggle layout; + test.csv, IdLookupTable.csv, solution.csv next to it
    >>> from fkd_core.synth import generate
    >>> images, keypoints = generate(100, seed=0, pose=0.0)   # a rigid set

Knobs: ``pose`` scales in-plane rotation, yaw (horizontal foreshortening; the nose tip moves
with it), scale and translation; ``pose=0`` is *rigid* (all faces share one pose, geometry varies
only by the small identity variation). ``identity`` scales the per-face geometry and intensity
variation, ``noise`` the illumination gradient and pixel noise, ``complete_fraction`` < 1 gives
Kaggle-like missingness: a complete head of rows, then rows with only the 4 keypoints Kaggle
almost always has.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import IO, Callable, Iterator

import torch
from torch import Tensor

from fkd_core.kaggle_csv import kaggle_csv_bytes, synthetic_marker

IMAGE_SIZE = 96
# Kaggle's file: about 30% of rows are complete; the rest keep eye centres, nose tip and bottom lip.
KAGGLE_COMPLETE_FRACTION = 0.3
ALWAYS_PRESENT = (0, 1, 10, 14)
# Faces are rendered in chunks whose full-image maps (a few MB) stay in the CPU cache.
_CHUNK = 128

# Standard deviations at pose=1 (Kaggle-like); pose scales them linearly. Clipped at 3 sigma.
_POSE_STD = {"rot_deg": 6.0, "yaw_deg": 12.0, "log_scale": 0.05, "shift_px": 2.0}
_NOSE_DEPTH = 10.0  # px the nose tip moves sideways at 90 deg yaw: the tip sticks out of the face


def _normal(gen: torch.Generator, n: int, mean: float, std: float) -> Tensor:
    """[n] draws from N(mean, std^2), clipped to 3 sigma so that no face leaves the frame."""
    return mean + std * torch.randn(n, generator=gen).clamp(-3.0, 3.0)


def _identity_params(gen: torch.Generator, n: int, identity: float) -> dict[str, Tensor]:
    """Per-face geometry in the canonical frame (px, origin at the image centre, y down)."""
    s = identity
    eye_x = _normal(gen, n, 18.0, 1.2 * s)
    eye_y = _normal(gen, n, -10.0, 1.0 * s)
    brow_y = eye_y - _normal(gen, n, 8.5, 1.0 * s)
    return {
        "eye_x": eye_x, "eye_y": eye_y,
        "eye_a": _normal(gen, n, 7.0, 0.6 * s), "eye_b": _normal(gen, n, 3.2, 0.4 * s),
        "pupil_r": _normal(gen, n, 2.2, 0.3 * s),
        "brow_in_x": eye_x - _normal(gen, n, 9.5, 0.8 * s), "brow_in_y": brow_y,
        "brow_out_x": eye_x + _normal(gen, n, 14.0, 1.0 * s),
        "brow_out_y": brow_y + _normal(gen, n, 0.5, 1.0 * s),
        "nose_y": _normal(gen, n, 15.0, 1.2 * s),
        "mouth_y": _normal(gen, n, 28.5, 1.2 * s), "mouth_a": _normal(gen, n, 15.0, 1.2 * s),
        "lip_top": _normal(gen, n, 3.5, 0.5 * s), "lip_bottom": _normal(gen, n, 3.0, 0.5 * s),
        "face_a": _normal(gen, n, 40.0, 2.0 * s), "face_b": _normal(gen, n, 48.0, 2.0 * s),
    }


def _pose_params(gen: torch.Generator, n: int, pose: float) -> dict[str, Tensor]:
    """Per-face pose: rotation and yaw in radians, scale factor, translation [n, 2] px."""
    std = {k: v * pose for k, v in _POSE_STD.items()}
    return {
        "rot": torch.deg2rad(_normal(gen, n, 0.0, std["rot_deg"])),
        "yaw": torch.deg2rad(_normal(gen, n, 0.0, std["yaw_deg"])),
        "scale": torch.exp(_normal(gen, n, 0.0, std["log_scale"])),
        "shift": torch.stack([_normal(gen, n, 0.0, std["shift_px"]) for _ in range(2)], dim=1),
    }


def _tone_params(gen: torch.Generator, n: int, identity: float, noise: float) -> dict[str, Tensor]:
    """Per-face intensities on [0, 1] and illumination: gain, gradient [n, 2], noise sigma."""
    skin = _normal(gen, n, 0.55, 0.08 * identity).clamp(0.3, 0.8)
    return {
        "background": torch.rand(n, generator=gen) * 0.8 + 0.05,
        "skin": skin, "eye_white": (skin + 0.25).clamp(max=0.95),
        "dark": _normal(gen, n, 0.12, 0.04 * identity).clamp(0.0, 0.3),
        "mouth": skin * 0.55,
        "gain": _normal(gen, n, 1.0, 0.12 * noise).clamp(0.5, 1.5),
        "gradient": torch.stack([_normal(gen, n, 0.0, 0.004 * noise) for _ in range(2)], dim=1),
        "sigma": torch.rand(n, generator=gen) * 0.03 * noise,
    }


def canonical_keypoints(p: dict[str, Tensor], yaw: Tensor) -> Tensor:
    """[n, 15, 2] Kaggle-order keypoints in the canonical frame, from the identity parameters."""
    ex, ey, ea = p["eye_x"], p["eye_y"], p["eye_a"]
    zero = torch.zeros_like(ex)
    nose_x = _NOSE_DEPTH * torch.sin(yaw)
    points = [
        (ex, ey), (-ex, ey),                      # left / right eye centre (subject's left = +x)
        (ex - ea, ey), (ex + ea, ey),             # left eye inner / outer corner
        (-ex + ea, ey), (-ex - ea, ey),           # right eye inner / outer corner
        (p["brow_in_x"], p["brow_in_y"]), (p["brow_out_x"], p["brow_out_y"]),
        (-p["brow_in_x"], p["brow_in_y"]), (-p["brow_out_x"], p["brow_out_y"]),
        (nose_x, p["nose_y"]),
        (p["mouth_a"], p["mouth_y"]), (-p["mouth_a"], p["mouth_y"]),
        (zero, p["mouth_y"] - p["lip_top"]), (zero, p["mouth_y"] + p["lip_bottom"]),
    ]
    return torch.stack([torch.stack(xy, dim=-1) for xy in points], dim=1)


def _pose_matrix(pose: dict[str, Tensor]) -> Tensor:
    """[n, 2, 2] A = R(rot) @ diag(scale * cos(yaw), scale): canonical -> image offsets."""
    c, s = torch.cos(pose["rot"]), torch.sin(pose["rot"])
    sx, sy = pose["scale"] * torch.cos(pose["yaw"]), pose["scale"]
    return torch.stack([torch.stack([c * sx, -s * sy], -1), torch.stack([s * sx, c * sy], -1)], 1)


class _Window:
    """A square window of w x w pixels per face, placed around a feature: features are small, so
    evaluating them only here (not on the whole image) is what makes rendering fast.

    Canonical coordinates are affine in the pixel grid, so every affine quantity is built as
    row term [n, w, 1] + column term [n, 1, w]: one full-size add instead of several.
    """

    def __init__(self, centre: Tensor, w: int, size: int, ainv: Tensor, offset: Tensor) -> None:
        start = (centre.round().long() - w // 2)
        span = torch.arange(w)
        cols = (start[:, :1] + span).clamp(0, size - 1)   # clamped duplicates compute equal values
        rows = (start[:, 1:] + span).clamp(0, size - 1)
        self.index = (rows[:, :, None] * size + cols[:, None, :]).flatten(1)   # [n, w*w]
        self.shape = (len(centre), w, w)
        self.gx = (cols.float() - offset[:, :1]).unsqueeze(1)   # [n, 1, w]
        self.gy = (rows.float() - offset[:, 1:]).unsqueeze(2)   # [n, w, 1]
        self.ainv = ainv

    def affine(self, cx: Tensor, cy: Tensor, axis: int, scale: Tensor | float = 1.0) -> Tensor:
        """(u_axis - c_axis) / scale over the window, u = canonical coordinates; [n, w, w]."""
        a0 = self.ainv[:, axis, 0].view(-1, 1, 1)
        a1 = self.ainv[:, axis, 1].view(-1, 1, 1)
        c = (cx if axis == 0 else cy).view(-1, 1, 1)
        scale = scale.view(-1, 1, 1) if isinstance(scale, Tensor) else scale
        return (a0 * self.gx - c) / scale + a1 * self.gy / scale


def _ellipse_cov(win: _Window, cx: Tensor, cy: Tensor, a: Tensor, b: Tensor, px: Tensor,
                 b_below: Tensor | None = None) -> Tensor:
    """Anti-aliased coverage [n, w, w] of an axis-aligned ellipse (half axes a, b) in the
    canonical frame; b_below, if given, is the half height below the centre (the lower lip)."""
    x = win.affine(cx, cy, 0, a)
    y = win.affine(cx, cy, 1, b)
    if b_below is not None:
        y = torch.where(y < 0, y, y * (b / b_below).view(-1, 1, 1))
        b = torch.minimum(b, b_below)
    # Signed distance to the rim ~ (q^2 - 1) / 2 * min(a, b) near it (q = normalised radius):
    # exact enough for a one-pixel anti-aliasing ramp, and no sqrt over the window.
    half_k = (torch.minimum(a, b) * px / 2).view(-1, 1, 1)
    q2 = x.square_().add_(y.square_())
    return q2.mul_(-half_k).add_(0.5 + half_k).clamp_(0.0, 1.0)


def _stroke_cov(win: _Window, x0: Tensor, y0: Tensor, x1: Tensor, y1: Tensor, half_width: float,
                px: Tensor) -> Tensor:
    """Anti-aliased coverage [n, w, w] of a stroke from (x0, y0) to (x1, y1) (canonical frame)."""
    dx, dy = (x1 - x0).view(-1, 1, 1), (y1 - y0).view(-1, 1, 1)
    u, v = win.affine(x0, y0, 0), win.affine(x0, y0, 1)
    t = ((u * dx + v * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0)
    dist = ((u - t * dx).square() + (v - t * dy).square()).sqrt()
    return (0.5 - (dist - half_width) * px.view(-1, 1, 1)).clamp(0.0, 1.0)


def _paint(img: Tensor, win: _Window, layers: list[tuple[Tensor, Tensor]]) -> None:
    """Paint (coverage [n, w, w], value [n]) layers in order into img [n, S*S], in place."""
    patch = img.gather(1, win.index).view(win.shape)
    for coverage, value in layers:
        patch = patch + coverage * (value.view(-1, 1, 1) - patch)
    img.scatter_(1, win.index, patch.flatten(1))


# Window sides (px at 96 px and scale 1) that hold each feature at any rotation.
_WINDOWS = {"eye": 24, "brow": 34, "nose": 36, "mouth": 42}


def _render(p: dict[str, Tensor], tone: dict[str, Tensor], nose_x: Tensor, a: Tensor,
            offset: Tensor, px: Tensor, size: int) -> Tensor:
    """[n, size, size] float faces: background and face outline over the whole image, the
    small features in windows, then illumination. a: [n, 2, 2] canonical -> image."""
    n, ainv = len(px), torch.linalg.inv(a)
    to_image = lambda x, y: torch.einsum("nij,nj->ni", a, torch.stack([x, y], -1)) + offset
    sides = {k: int(math.ceil(w * float(px.max()))) | 1 for k, w in _WINDOWS.items()}
    zero = torch.zeros(n)
    full = _Window(torch.full((n, 2), (size - 1) / 2.0), size, size, ainv, offset)
    # The face covers most of the image: painted in place, without the windows' gather/scatter.
    bg = tone["background"].view(-1, 1, 1)
    img = _ellipse_cov(full, zero, zero + 4.0, p["face_a"], p["face_b"], px)
    img = img.mul_(tone["skin"].view(-1, 1, 1) - bg).add_(bg).view(n, size * size)
    for side in (1.0, -1.0):
        ex, in_x, out_x = side * p["eye_x"], side * p["brow_in_x"], side * p["brow_out_x"]
        win = _Window(to_image(ex, p["eye_y"]), sides["eye"], size, ainv, offset)
        _paint(img, win, [(_ellipse_cov(win, ex, p["eye_y"], p["eye_a"], p["eye_b"], px), tone["eye_white"]),
                          (_ellipse_cov(win, ex, p["eye_y"], p["pupil_r"], p["pupil_r"], px), tone["dark"])])
        win = _Window(to_image((in_x + out_x) / 2, (p["brow_in_y"] + p["brow_out_y"]) / 2),
                      sides["brow"], size, ainv, offset)
        _paint(img, win, [(_stroke_cov(win, in_x, p["brow_in_y"], out_x, p["brow_out_y"], 1.3, px), tone["dark"])])
    top = p["eye_y"] + 3.0
    win = _Window(to_image(nose_x / 2, (top + p["nose_y"]) / 2), sides["nose"], size, ainv, offset)
    _paint(img, win, [(0.4 * _stroke_cov(win, zero, top, nose_x, p["nose_y"] - 2.5, 1.0, px), tone["dark"]),
                      (_ellipse_cov(win, nose_x, p["nose_y"], zero + 3.0, zero + 2.0, px), tone["dark"])])
    win = _Window(to_image(zero, p["mouth_y"]), sides["mouth"], size, ainv, offset)
    _paint(img, win, [(_ellipse_cov(win, zero, p["mouth_y"], p["mouth_a"], p["lip_top"], px,
                                    b_below=p["lip_bottom"]), tone["mouth"])])
    # Illumination: a gain times a linear light gradient across the image (affine, so cheap).
    grad = tone["gradient"] * tone["gain"][:, None]
    cols = tone["gain"].view(-1, 1, 1) + grad[:, 0].view(-1, 1, 1) * (full.gx + offset[:, :1, None] - size / 2)
    rows = grad[:, 1].view(-1, 1, 1) * (full.gy + offset[:, 1:, None] - size / 2)
    return img.view(n, size, size).mul_(cols + rows)


def _generate_chunk(gen: torch.Generator, n: int, pose: float, identity: float, noise: float,
                    size: int) -> tuple[Tensor, Tensor]:
    """One chunk: images uint8 [n, 1, size, size], keypoints float32 [n, 15, 2] (all present)."""
    idp = _identity_params(gen, n, identity)
    pp = _pose_params(gen, n, pose)
    tone = _tone_params(gen, n, identity, noise)
    zoom = size / IMAGE_SIZE  # the template is laid out for 96 px and scaled to other sizes
    a = _pose_matrix(pp) * zoom
    centre = torch.full((n, 2), (size - 1) / 2.0) + pp["shift"] * zoom
    canon = canonical_keypoints(idp, pp["yaw"])
    keypoints = torch.einsum("nij,nkj->nki", a, canon) + centre[:, None, :]
    img = _render(idp, tone, _NOSE_DEPTH * torch.sin(pp["yaw"]), a, centre, pp["scale"] * zoom, size)
    img.add_(torch.randn(img.shape, generator=gen) * tone["sigma"].view(-1, 1, 1))
    images = img.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).unsqueeze(1)
    return images, keypoints.float()


def apply_kaggle_missing(keypoints: Tensor, complete_fraction: float) -> Tensor:
    """Kaggle-like missingness: rows after the first ``complete_fraction`` keep 4 keypoints.

    keypoints: [N, K, 2]; returns a copy with NaN for the dropped keypoints of the tail rows.
    """
    out = keypoints.clone()
    head = int(round(len(out) * complete_fraction))
    drop = torch.ones(out.shape[1], dtype=torch.bool)
    drop[list(ALWAYS_PRESENT)] = False
    out[head:, drop] = math.nan
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded for a moment. Rendering is many small batched ops: measured on
    2 shared cores, 2 intra-op threads were up to 15x slower than 1 once other processes kept
    the cores busy (OpenMP barriers), while 1 thread renders 1500-3500 faces/s either way.
    torch's thread count is process-wide, so it is restored at once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def generate(n: int, seed: int = 0, pose: float = 1.0, *, identity: float = 1.0,
             noise: float = 1.0, complete_fraction: float = 1.0,
             size: int = IMAGE_SIZE, on_chunk: Callable[[int], None] | None = None
             ) -> tuple[Tensor, Tensor]:
    """Deterministic synthetic faces.

    Args:
        n: number of faces.
        seed: the data set's seed; the same (n, seed, knobs) always gives the same faces.
        pose: 0 = rigid (one pose for all), 1 = Kaggle-like, 2 = strongly posed.
        identity: scale of per-face geometry and tone variation (0 = one identical face).
        noise: scale of illumination variation and pixel noise.
        complete_fraction: share of leading rows with all 15 keypoints; the rest keep 4
            (1.0 = no missing values; KAGGLE_COMPLETE_FRACTION mimics Kaggle's file).
        size: image side in pixels (the layout is scaled from 96 px).
        on_chunk: called with the number of faces after each chunk is drawn (progress).

    Returns:
        images: uint8 [n, 1, size, size]; keypoints: float32 [n, 15, 2] px, NaN = missing.
    """
    if n < 1 or pose < 0 or identity < 0 or noise < 0 or not 0.0 <= complete_fraction <= 1.0:
        raise ValueError(f"generate: need n >= 1, pose/identity/noise >= 0, complete_fraction "
                         f"in [0, 1]; got n={n}, pose={pose}, identity={identity}, noise={noise}, "
                         f"complete_fraction={complete_fraction}")
    gen = torch.Generator().manual_seed(seed)
    with one_thread():
        parts = []
        for start in range(0, n, _CHUNK):
            parts.append(_generate_chunk(gen, min(_CHUNK, n - start), pose, identity, noise, size))
            if on_chunk is not None:
                on_chunk(len(parts[-1][0]))
    images = torch.cat([p[0] for p in parts])
    keypoints = torch.cat([p[1] for p in parts])
    if complete_fraction < 1.0:
        keypoints = apply_kaggle_missing(keypoints, complete_fraction)
    return images, keypoints


# --- files: a Kaggle training file and a matching test set ---------------------------------

# Test faces come from their own seed stream, so they are never rows of a training file (no
# user-typed seed reaches 2**32) and a training file is the same with or without --test.
TEST_SEED_OFFSET = 1 << 32
TEST_FILES = ("test.csv", "IdLookupTable.csv", "solution.csv")
_ROWS_PER_BLOCK = 256   # formatted and compressed per block: bounded memory, visible progress


class Meter:
    """Progress of a long write on stderr: one line redrawn on a terminal, else a line per 25%."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.total, self.stream = max(total, 1), stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done, self.started, self.next_plain = 0, time.perf_counter(), 0.25

    def add(self, units: int, what: str) -> None:
        self.done += units
        share = min(self.done / self.total, 1.0)
        line = f"synth: {share:4.0%} {what} ({time.perf_counter() - self.started:.0f} s)"
        if self.live:
            self.stream.write("\r" + line + "\033[K" + ("\n" if share >= 1.0 else ""))
        elif share >= self.next_plain:
            self.stream.write(line + "\n")
            while self.next_plain <= share:
                self.next_plain += 0.25
        self.stream.flush()


def _file_mode() -> int:
    """rw for whom the umask allows, as open() would give (mkstemp's files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that appears at path complete (renamed into place) or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as raw:
            yield raw
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _text_sink(raw: IO[bytes], path: Path) -> Iterator[IO[bytes]]:
    """Plain, gzip or zip (one member, like Kaggle's training.zip) by the file's suffix."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as out:
            yield out
    elif suffix == ".zip":
        with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(path.stem + ".csv", "w") as out:
            yield out
    else:
        yield raw


def write_csv(path: str | Path, images: Tensor, keypoints: Tensor | None, meter: Meter,
              image_ids: list[str] | None = None) -> Path:
    """The Kaggle layout (fkd_core.kaggle_csv.kaggle_csv_bytes), written block by block.

    keypoints None writes test.csv's layout (ImageId, Image).
    """

    path = Path(path)
    with _atomic(path) as raw, _text_sink(raw, path) as out:
        for start in range(0, len(images), _ROWS_PER_BLOCK):
            stop = min(start + _ROWS_PER_BLOCK, len(images))
            block = kaggle_csv_bytes(images[start:stop], None if keypoints is None else keypoints[start:stop],
                                     image_ids=None if image_ids is None else image_ids[start:stop])
            out.write(block if start == 0 else block.split(b"\n", 1)[1])   # one header
            meter.add(3 * (stop - start), f"writing {path.name}")
    return path


def _write_rows(path: Path, header: str, rows: list[str]) -> None:
    with _atomic(path) as raw:
        raw.write(("\n".join([header, *rows]) + "\n").encode())


def write_test_set(folder: str | Path, images: Tensor, keypoints: Tensor, meter: Meter) -> list[Path]:
    """Kaggle's test files for faces with known keypoints: test.csv (ImageId, Image),
    IdLookupTable.csv (RowId, ImageId, FeatureName, Location empty: one row per present
    keypoint coordinate) and solution.csv (RowId, Location: the true value), for
    ``python -m fkd_core.predict`` and ``python -m fkd_core.score``.
    """
    from fkd_core.schema import KAGGLE15

    folder = Path(folder)
    ids = [str(i + 1) for i in range(len(images))]
    values = keypoints.reshape(len(keypoints), -1).tolist()
    lookup, solution = [], []
    for image_id, row in zip(ids, values):
        for feature, value in zip(KAGGLE15.columns, row):
            if math.isfinite(value):
                lookup.append(f"{len(lookup) + 1},{image_id},{feature},")
                solution.append(f"{len(solution) + 1},{value:.6f}")
    paths = [folder / name for name in TEST_FILES]
    write_csv(paths[0], images, None, meter, image_ids=ids)
    _write_rows(paths[1], "RowId,ImageId,FeatureName,Location", lookup)
    _write_rows(paths[2], "RowId,Location", solution)
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fkd_core.synth",
                                     description="Write synthetic faces in the Kaggle training.csv layout "
                                                 "and, with --test N, a matching Kaggle test set.")
    parser.add_argument("--n", type=int, default=2000, help="number of faces")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data set")
    parser.add_argument("--pose", type=float, default=1.0, help="0 = rigid, 1 = Kaggle-like, 2 = strong")
    parser.add_argument("--identity", type=float, default=1.0, help="per-face geometry variation")
    parser.add_argument("--noise", type=float, default=1.0, help="illumination and pixel noise")
    parser.add_argument("--kaggle-missing", action="store_true",
                        help=f"keep all keypoints only in the first {KAGGLE_COMPLETE_FRACTION * 100:.0f}%% of rows")
    parser.add_argument("--test", type=int, default=0, metavar="N",
                        help="also write N other faces as Kaggle's test set next to --out: "
                             "test.csv, IdLookupTable.csv and solution.csv (the true locations)")
    parser.add_argument("--out", required=True, help="FILE.csv, FILE.csv.gz or FILE.zip")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.n < 1 or args.test < 0:
        print(f"synth: error: need --n >= 1 and --test >= 0, got --n {args.n} --test {args.test}",
              file=sys.stderr)
        return 2
    frac = KAGGLE_COMPLETE_FRACTION if args.kaggle_missing else 1.0
    knobs = {k: getattr(args, k) for k in ("n", "seed", "pose", "identity", "noise", "kaggle_missing")}
    # Units of work: drawing a face counts 1, writing it 3 (measured: ~3 s vs ~10 s per 5000
    # faces to .csv.gz, most of it gzip).
    meter = Meter(4 * (args.n + args.test))
    faces = generate(args.n, args.seed, args.pose, identity=args.identity, noise=args.noise,
                     complete_fraction=frac, on_chunk=lambda k: meter.add(k, "drawing faces"))
    out = write_csv(args.out, *faces, meter)
    written = [out]
    synthetic_marker(out).write_text(json.dumps({"generator": "fkd_core.synth", **knobs}) + "\n")
    if args.test:
        test = generate(args.test, args.seed + TEST_SEED_OFFSET, args.pose, identity=args.identity,
                        noise=args.noise, complete_fraction=frac,
                        on_chunk=lambda k: meter.add(k, "drawing test faces"))
        written += write_test_set(out.parent, *test, meter)
        synthetic_marker(written[1]).write_text(json.dumps(
            {"generator": "fkd_core.synth", **knobs, "n": args.test, "role": "test"}) + "\n")
    print(f"wrote {args.n} SYNTHETIC faces (seed={args.seed}, pose={args.pose}) to {out}"
          + (f", {args.test} test faces to {', '.join(str(p) for p in written[1:])}" if args.test else "")
          + " (+ .synthetic.json sidecars, which label them synthetic when read back)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
