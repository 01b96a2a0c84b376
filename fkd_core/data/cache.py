"""A content-addressed cache of parsed data files: <dir>/<sha256>-s<size>-v<version>.npz.

Keyed by the sha256 of the file's bytes, so a changed file is parsed again and an unchanged one
costs a file read; a small stat index per path lets a repeated load skip even the hashing.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fkd_core.data.dataset import KeypointData
from fkd_core.kaggle_csv import atomic_write
from fkd_core.schema import KAGGLE15, Schema

# Bump when the parsed arrays of a file could change, so that old cache entries are ignored
# (2: 16-bit images scaled instead of clipped; keypoints far outside the image rejected).
CACHE_VERSION = 2


def default_cache_dir() -> Path:
    """$FKD_CACHE_DIR, else $XDG_CACHE_HOME/fkd-sweep, else ~/.cache/fkd-sweep."""
    if os.environ.get("FKD_CACHE_DIR"):
        return Path(os.environ["FKD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fkd-sweep"


@dataclass(frozen=True)
class Cache:
    """Parsed arrays in <dir>/<sha256>-s<size>-v<version>.npz. A small stat index (size, mtime)
    per path lets a repeated load skip even hashing the file, as git's index does."""

    root: Path

    def entry(self, digest: str, size: int) -> Path:
        return self.root / f"{digest}-s{size}-v{CACHE_VERSION}.npz"

    def _index(self, path: Path) -> Path:
        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
        return self.root / "index" / f"{key}.json"

    @staticmethod
    def _stat(path: Path) -> list[int]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]

    def known_digest(self, path: Path) -> str | None:
        try:
            saved = json.loads(self._index(path).read_text())
        except (OSError, ValueError):
            return None
        return saved.get("sha256") if saved.get("stat") == self._stat(path) else None

    def remember(self, path: Path, digest: str) -> None:
        try_write(self._index(path), json.dumps({"stat": self._stat(path), "sha256": digest}).encode())

    def load(self, digest: str, size: int, source: str) -> KeypointData | None:
        try:
            with np.load(self.entry(digest, size), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                images, keypoints = torch.from_numpy(z["images"]), torch.from_numpy(z["keypoints"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None  # absent or damaged: parse again
        ids = tuple(meta["image_ids"]) if meta["image_ids"] is not None else None
        return KeypointData(images, keypoints, _schema_from(meta["schema"]), source, digest, False, ids)

    def save(self, data: KeypointData) -> None:
        meta = {"schema": _schema_to(data.schema), "image_ids": data.image_ids}
        buf = io.BytesIO()
        np.savez(buf, images=data.images.numpy(), keypoints=data.keypoints.numpy(), meta=np.array(json.dumps(meta)))
        try_write(self.entry(data.content_hash, data.images.shape[-1]), buf.getvalue())


def try_write(target: Path, payload: bytes) -> None:
    """A cache write: a read-only or full cache dir costs speed next time, never the load."""
    try:
        atomic_write(target, payload)
    except OSError as exc:
        print(f"fkd_core.data: not cached ({exc})", file=sys.stderr)


def _schema_to(schema: Schema) -> dict:
    return {"name": schema.name, "keypoints": list(schema.keypoints),
            "flip_pairs": [list(p) for p in schema.flip_pairs], "norm_pair": schema.norm_pair}


def _schema_from(d: dict) -> Schema:
    norm = tuple(d["norm_pair"]) if d["norm_pair"] is not None else None
    schema = Schema(d["name"], tuple(d["keypoints"]), tuple(tuple(p) for p in d["flip_pairs"]), norm)
    return KAGGLE15 if schema == KAGGLE15 else schema  # the registry's object, as a parse gives
