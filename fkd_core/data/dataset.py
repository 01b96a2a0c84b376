"""KeypointData: one in-memory data set (images, keypoints, and who is who)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fkd_core.schema import Schema


@dataclass(frozen=True)
class KeypointData:
    """One in-memory data set.

    Attributes:
        images: uint8 [N, 1, S, S] grey images (S = 96 for the Kaggle layout).
        keypoints: float32 [N, K, 2] pixels of the S x S image, NaN = missing.
        schema: what the K keypoints are.
        source: the path as given, or "synthetic(n=..,seed=..,pose=..)".
        content_hash: sha256 of the source file bytes (or of the synthetic parameters).
        synthetic: True for generated faces; every output that shows the data says so.
        image_ids: test.csv ImageId / image-folder file names, one per row, or None.
        groups: the group (person) of each row, or None when unknown: splits are then row-level.
        groups_from: where the groups came from (a groups CSV, "file names", "synthetic ..."),
            "" without groups.
    """

    images: Tensor
    keypoints: Tensor
    schema: Schema
    source: str
    content_hash: str
    synthetic: bool
    image_ids: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    groups_from: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx: Sequence[int] | np.ndarray | Tensor) -> "KeypointData":
        """The rows idx (indices or a bool mask [N]), in that order."""
        index = torch.as_tensor(np.asarray(idx) if not isinstance(idx, Tensor) else idx)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.long()
        rows = index.tolist()
        ids = None if self.image_ids is None else tuple(self.image_ids[i] for i in rows)
        groups = None if self.groups is None else tuple(self.groups[i] for i in rows)
        return replace(self, images=self.images[index], keypoints=self.keypoints[index], image_ids=ids,
                       groups=groups)

    def complete_mask(self) -> Tensor:
        """bool [N]: True where every keypoint of the row is present."""
        return torch.isfinite(self.keypoints).all(dim=2).all(dim=1)
