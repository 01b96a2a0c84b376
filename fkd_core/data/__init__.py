"""Keypoint data sets: readers, validation, groups, splits, missing policies and a cache.

Sources (DESIGN.md, "Data"):
- Kaggle layout: ``training.csv`` / ``.csv.gz`` / Kaggle's ``training.zip`` (30 keypoint columns,
  then ``Image``: 9216 space-separated ints), and ``test.csv`` (``ImageId,Image``);
- image-folder layout: a CSV whose first column names an image file and whose other columns are
  x0,y0,x1,y1,... for any K; images of any size, colour and bit depth become grey and are resized
  to ``image_size``, keypoints scaled with them;
- ``"synthetic"`` (all keypoints present) or ``"synthetic-missing"`` (Kaggle-like missingness):
  faces drawn in memory by :mod:`fkd_core.synth`, labelled ``synthetic=True``.

    python -m fkd_core.data describe ../shared/data/fkd-yt15/training.csv.gz [--json] [--cache DIR]
    >>> data = load_dataset("../shared/data/fkd-yt15/training.csv.gz")   # + training.groups.csv
    >>> data.images.shape, data.keypoints.shape, len(set(data.groups))  # [3462, 1, 96, 96], [3462, 15, 2], 347
    >>> s = three_way_split(data, TrialConfig())                         # s.train, s.val, s.test, s.kind

Modules, one concept each: ``streams`` (bytes -> decompressed lines), ``layout`` (what a header
says), ``kaggle`` and ``folder`` (the two readers), ``values`` (keypoints: numbers, finite, near
the image), ``cache``, ``load`` (load_dataset), ``groups`` (who is who), ``splits`` (test /
validation / train and the missing-keypoint policies), ``cli`` (``describe``). The Kaggle
layout's writer is :mod:`fkd_core.kaggle_csv` (shared with the synthetic generator's CLI).

Coordinates are pixels of the S x S image with the pixel-index convention: the centre of pixel
(row i, column j) is (x=j, y=i). Parsed files are cached under the user cache dir (env
``FKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/fkd-sweep`` or ``~/.cache/fkd-sweep``) keyed by the
sha256 of the file bytes, so a second load costs a file read. Bad input raises :class:`DataError`,
one line naming the file, the row, the column and what was expected.
"""
from fkd_core.data.cache import default_cache_dir
from fkd_core.data.cli import cache_status, describe, main
from fkd_core.data.dataset import KeypointData
from fkd_core.data.errors import DataError
from fkd_core.data.groups import DEFAULT_GROUP_REGEX, groups_from_names, read_groups_file, sidecar, with_groups
from fkd_core.data.kaggle import KAGGLE_IMAGE_SIZE
from fkd_core.data.load import SYNTHETIC_SOURCES, load_dataset, load_for_config, load_test_images
from fkd_core.data.splits import (GROUP_DISJOINT, MISSING_POLICIES, ROW_LEVEL, SPLIT_MODES, Splits,
                                  apply_missing, draw_splits, forward_fill, held_out_rows, split_groups,
                                  split_indices, split_kind, three_way_split)
from fkd_core.data.values import KEYPOINT_MARGIN
from fkd_core.kaggle_csv import kaggle_csv_bytes, synthetic_marker, write_kaggle_csv

__all__ = [
    "DEFAULT_GROUP_REGEX", "GROUP_DISJOINT", "KAGGLE_IMAGE_SIZE", "KEYPOINT_MARGIN", "MISSING_POLICIES",
    "ROW_LEVEL", "SPLIT_MODES", "SYNTHETIC_SOURCES", "DataError", "KeypointData", "Splits",
    "apply_missing", "cache_status", "default_cache_dir", "describe", "draw_splits", "forward_fill",
    "groups_from_names", "held_out_rows", "kaggle_csv_bytes", "load_dataset", "load_for_config",
    "load_test_images", "main", "read_groups_file", "sidecar", "split_groups", "split_indices",
    "split_kind", "synthetic_marker", "three_way_split", "with_groups", "write_kaggle_csv",
]
