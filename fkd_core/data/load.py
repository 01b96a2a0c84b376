"""Loading a data set: a file through the cache and its reader, or synthetic faces in memory,
with its groups attached (see :mod:`fkd_core.data.groups`)."""
from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fkd_core import synth
from fkd_core.config import TrialConfig
from fkd_core.data import folder, kaggle, streams
from fkd_core.data.cache import Cache, default_cache_dir
from fkd_core.data.dataset import KeypointData
from fkd_core.data.errors import DataError, fail, what_is
from fkd_core.data.groups import with_groups
from fkd_core.data.layout import Layout, classify
from fkd_core.kaggle_csv import synthetic_marker
from fkd_core.schema import KAGGLE15

SYNTHETIC_SOURCES = ("synthetic", "synthetic-missing")


def _synthetic(source: str, n: int, seed: int, pose: float, image_size: int) -> KeypointData:
    missing = source == "synthetic-missing"
    frac = synth.KAGGLE_COMPLETE_FRACTION if missing else 1.0
    images, keypoints = synth.generate(n, seed, pose, complete_fraction=frac, size=image_size)
    label = f"{source}(n={n},seed={seed},pose={pose:g}" + (f",size={image_size})" if image_size != 96 else ")")
    digest = hashlib.sha256(f"fkd_core.synth v1 {label}".encode()).hexdigest()
    return KeypointData(images, keypoints, KAGGLE15, label, digest, synthetic=True)


def _resize(images: np.ndarray, keypoints: np.ndarray, size: int) -> tuple[Tensor, Tensor]:
    """Kaggle images (uint8 [N, 1, S0, S0]) to size x size, keypoints scaled to match."""
    img, kp = torch.from_numpy(images), torch.from_numpy(keypoints)
    s0 = img.shape[-1]
    if s0 == size:
        return img, kp
    out = torch.nn.functional.interpolate(img.float(), size=(size, size), mode="bilinear",
                                          align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8), (kp + 0.5) * (size / s0) - 0.5


def _kaggle_data(path: Path, source: str, raw: bytes, digest: str, size: int) -> KeypointData:
    layout, pixels, keypoints, ids = kaggle.read_kaggle(path, raw)
    side = math.isqrt(pixels.shape[1])
    images, kp = _resize(pixels.reshape(-1, 1, side, side), keypoints, size)
    return KeypointData(images, kp, layout.schema or KAGGLE15, source, digest, False, ids)


def _folder_data(path: Path, source: str, layout: Layout, files: list[Path],
                 keypoints: np.ndarray, names: tuple[str, ...], digest: str, size: int) -> KeypointData:
    images, kp = folder.read_folder(path, layout, files, keypoints, size)
    return KeypointData(torch.from_numpy(images), torch.from_numpy(kp), layout.schema, source, digest,
                        False, names)


def existing(source: str) -> Path:
    """The path of a data file, or DataError saying what stands there instead (a FIFO, too: it is
    never opened, since reading one blocks until something writes to it)."""
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: expected a data file (.csv, .csv.gz, .zip) or one of "
                        f"{list(SYNTHETIC_SOURCES)}, got {what_is(path)}")
    return path


def read_file(path: Path) -> bytes:
    """The file's bytes; an unreadable file is a DataError (one line), not a traceback."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(path, "file", "", "a readable file", f"{type(exc).__name__}: {exc.strerror or exc}") from None


def load_dataset(source: str, *, image_size: int = 96, cache_dir: str | None = None,
                 synth_n: int = 2000, synth_seed: int = 0, synth_pose: float = 1.0,
                 image_dir: str | None = None, cache: bool = True, groups: str = "auto",
                 group_regex: str = "") -> KeypointData:
    """Load a data set (see the package docstring for the sources).

    Args:
        source: a Kaggle-layout or image-folder CSV path, "synthetic" or "synthetic-missing".
        image_size: side S of the returned images; keypoints are scaled to it.
        cache_dir: where parsed files are cached (default: default_cache_dir()).
        synth_n, synth_seed, synth_pose: the synthetic generator's knobs.
        image_dir: the image-folder layout's folder (default: next to the CSV, see folder._image_root).
        cache: False reads the file again without touching the cache.
        groups: "auto" (sidecar, file names, or one per synthetic face), "none", or a groups CSV.
        group_regex: image folders: the regex whose first group names the person.

    Returns:
        KeypointData with images uint8 [N, 1, S, S], keypoints float32 [N, K, 2] and groups.

    Raises:
        DataError: one line naming the file, row, column and what was expected.
    """
    if source in SYNTHETIC_SOURCES:
        data = _synthetic(source, synth_n, synth_seed, synth_pose, image_size)
        return with_groups(data, None, "synthetic", groups, group_regex)
    path = existing(source)
    data, layout = _load_file(path, source, image_size, cache_dir, image_dir, cache)
    data = _mark_synthetic(path, data)
    column = (layout.columns[0] or "1 (image name)") if layout else ""
    return with_groups(data, path, layout.kind if layout else "kaggle", groups, group_regex, column)


def _load_file(path: Path, source: str, image_size: int, cache_dir: str | None, image_dir: str | None,
               cache: bool) -> tuple[KeypointData, Layout | None]:
    """The parsed file (from the cache when it is there) and its layout (None: a cached Kaggle
    file whose header was not read again; only Kaggle files are found by their stat)."""
    store = Cache(Path(cache_dir) if cache_dir else default_cache_dir()) if cache else None
    known = store.known_digest(path) if store else None
    if known and (hit := store.load(known, image_size, source)):
        return hit, None
    raw = read_file(path)
    layout = classify(path, streams.header_line(path, raw))
    if layout.kind == "kaggle":
        digest = hashlib.sha256(raw).hexdigest()
        build = lambda: _kaggle_data(path, source, raw, digest, image_size)
    else:
        text = b"".join(streams.text_pieces(path, raw))
        files, keypoints, names = folder.folder_files(path, text, layout, image_dir)
        digest = folder.folder_digest(text, files)
        build = lambda: _folder_data(path, source, layout, files, keypoints, names, digest, image_size)
    data = store.load(digest, image_size, source) if store else None
    if data is None:
        data = build()
        if store:
            store.save(data)
    if store and layout.kind == "kaggle":  # a folder's images can change behind its CSV's back
        store.remember(path, digest)
    return data, layout


def _mark_synthetic(path: Path, data: KeypointData) -> KeypointData:
    return replace(data, synthetic=True) if synthetic_marker(path).is_file() else data


def load_test_images(path: str, *, cache_dir: str | None = None, image_size: int = 96) -> KeypointData:
    """Kaggle test.csv (ImageId, Image): images with image_ids, keypoints all NaN [N, 15, 2].

    A training file is accepted too (its keypoints are kept), so that a model can be run on it.
    """
    return load_dataset(path, image_size=image_size, cache_dir=cache_dir, groups="none")


def load_for_config(cfg: TrialConfig, *, cache_dir: str | None = None) -> KeypointData:
    """The data set of a trial: cfg.data with the synthetic knobs and cfg's groups. The
    missing-keypoint policy and the splits are applied by the trainer (they depend on the split)."""
    return load_dataset(cfg.data, cache_dir=cache_dir, synth_n=cfg.synth_n,
                        synth_seed=cfg.synth_seed, synth_pose=cfg.synth_pose, groups=cfg.groups,
                        group_regex=cfg.group_regex)
