"""Missing-keypoint policies and splits: test, validation and train rows.

Three splits (DESIGN.md, "How the answer is decided"):

- **test**: ``test_fraction`` of the groups (people), chosen from the data's content hash and
  ``test_seed`` only. No split seed, training seed, loss or phase moves it, and it is removed from
  training and validation in every run; it is read only for final numbers (``score_test``).
- **validation**: ``val_fraction`` of all groups, drawn from the rest per ``split_seed``;
  ``split="tail"`` (the study's defect) takes the file's last non-test rows instead.
- **train**: everything else.

With groups no group is on two sides ("group-disjoint"). Without them (``groups="none"``, or a
file without a groups sidecar) every row is its own group: the same draw, but "row-level", since
frames of one person may then land on two sides.

    >>> s = three_way_split(data, cfg)
    >>> s.train, s.val, s.test, s.kind        # sorted row indices, "group-disjoint" | "row-level"
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import get_args

import numpy as np
import torch
from torch import Tensor

from fkd_core.config import Missing, Split, TrialConfig
from fkd_core.data.dataset import KeypointData
from fkd_core.data.errors import DataError
from fkd_core.data.groups import with_groups

MISSING_POLICIES: tuple[str, ...] = get_args(Missing)   # the names live in TrialConfig's Literals
SPLIT_MODES: tuple[str, ...] = get_args(Split)
GROUP_DISJOINT = "group-disjoint"
ROW_LEVEL = "row-level"


def forward_fill(values: Tensor) -> Tensor:
    """Replace each NaN of values [N, ...] by the last finite value above it in the same column
    (pandas' ffill over rows); NaNs before the first finite value stay NaN."""
    flat = values.reshape(len(values), -1)
    rows = torch.arange(len(values)).unsqueeze(1).expand_as(flat)
    source_row = torch.where(torch.isfinite(flat), rows, 0).cummax(dim=0).values
    return flat.gather(0, source_row).reshape(values.shape)


def forward_fill_outside(values: Tensor, held_out: np.ndarray | None) -> Tensor:
    """forward_fill over the rows of values [N, ...] that are not in held_out (sorted row
    indices), in file order; held-out rows keep their values and lend none to the others."""
    if held_out is None or len(held_out) == 0:
        return forward_fill(values)
    rows = torch.as_tensor(np.setdiff1d(np.arange(len(values)), held_out), dtype=torch.long)
    out = values.clone()
    out[rows] = forward_fill(values[rows])
    return out


def apply_missing(data: KeypointData, policy: str, held_out: np.ndarray | None = None) -> KeypointData:
    """The missing-keypoint policy.

    "mask": unchanged; losses and metrics skip the NaN keypoints (correct).
    "ffill": the study's forward fill over the file's rows, per coordinate column: every missing
        value becomes the previous row's, so one face's eyebrows land on thousands of others.
        ``held_out`` (the test rows) neither lend nor receive values: a test face's labels must
        never reach training (fkd-yt15's row 1107, a test person and the last fully labelled
        row, would otherwise fill 32,978 of the 33,032 filled training coordinates).
    "drop": only the rows where all K keypoints are present.
    """
    if policy == "mask":
        return data
    if policy == "ffill":
        return replace(data, keypoints=forward_fill_outside(data.keypoints, held_out))
    if policy == "drop":
        return data.subset(data.complete_mask())
    raise ValueError(f"Unknown missing policy {policy!r}; valid: {list(MISSING_POLICIES)}")


def split_indices(n: int, val_fraction: float, seed: int, mode: str = "shuffle"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices, each sorted; at least one row in each. Two-way and
    row-level, with no test split: for tools and benchmarks; trials use three_way_split.

    "shuffle": a seeded random draw of round(n * val_fraction) validation rows (correct).
    "tail": the file's last rows, the study's defect (its tail also held augmented copies).
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"Unknown split mode {mode!r}; valid: {list(SPLIT_MODES)}")
    if n < 2 or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"split_indices needs n >= 2 and 0 < val_fraction < 1, got n={n}, {val_fraction}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    if mode == "tail":
        return np.arange(n - n_val), np.arange(n - n_val, n)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# --- three splits -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Splits:
    """Sorted row indices of each split (int64 [n]) and whether groups keep them apart."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    kind: str


def split_groups(data: KeypointData, groups: str = "auto") -> np.ndarray | None:
    """int64 [N] group code of each row (codes follow the sorted group names), or None when the
    split is row-level (no groups, or groups == "none")."""
    if groups == "none" or data.groups is None:
        return None
    return np.unique(np.asarray(data.groups, dtype=object).astype(str), return_inverse=True)[1].reshape(-1)


def _seed_of(content_hash: str, test_seed: int) -> np.random.Generator:
    """The test draw's generator: the data's own hash and test_seed, nothing a run varies."""
    digest = int(hashlib.sha256(content_hash.encode()).hexdigest()[:16], 16)
    return np.random.default_rng([test_seed, digest])


def draw_splits(codes: np.ndarray | None, n_rows: int, *, content_hash: str, test_fraction: float,
                test_seed: int, val_fraction: float, split_seed: int, mode: str = "shuffle",
                source: str = "data") -> Splits:
    """Three splits of n_rows rows with group codes [n_rows] (None: each row its own group).

    test: round(test_fraction * G) of the G groups (at least one), from (content_hash, test_seed).
    val: round(val_fraction * G) of the other groups (at least one) per split_seed; or, for
        mode "tail", the last round(val_fraction * n_rows) non-test rows in file order.
    train: the rest, never empty.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"Unknown split mode {mode!r}; valid: {list(SPLIT_MODES)}")
    if not (0.0 < test_fraction < 1.0 and 0.0 < val_fraction < 1.0):
        raise ValueError(f"test_fraction and val_fraction must be in (0, 1), got {test_fraction}, {val_fraction}")
    grouped = codes is not None
    codes = np.asarray(codes, np.int64) if grouped else np.arange(n_rows)
    n_groups = int(codes.max()) + 1 if n_rows else 0
    unit = "groups" if grouped else "rows"
    n_test = max(1, round(test_fraction * n_groups))
    n_val = max(1, round(val_fraction * (n_rows if mode == "tail" else n_groups)))
    is_test = np.isin(codes, _seed_of(content_hash, test_seed).permutation(n_groups)[:n_test])
    rest = np.flatnonzero(~is_test)
    if mode == "tail":
        left = len(rest) - n_val
        val = rest[max(left, 0):]
    else:
        others = np.unique(codes[rest])
        left = len(others) - n_val
        chosen = others[np.random.default_rng(split_seed).permutation(len(others))[:n_val]]
        val = rest[np.isin(codes[rest], chosen)]
    if left < 1:
        raise DataError(f"{source}: {n_groups} {unit}: test_fraction={test_fraction:g} takes {n_test} and "
                        f"val_fraction={val_fraction:g} takes {n_val} {'rows' if mode == 'tail' else unit}, "
                        f"leaving {max(left, 0)} for training; expected at least one {unit[:-1]} in each split")
    train = np.setdiff1d(rest, val)
    kind = GROUP_DISJOINT if grouped and mode == "shuffle" else ROW_LEVEL
    return Splits(train=train, val=np.sort(val), test=np.flatnonzero(is_test), kind=kind)


def three_way_split(data: KeypointData, cfg: TrialConfig) -> Splits:
    """The trial's test, validation and train rows (see the module docstring)."""
    if cfg.groups not in ("auto", "none") and data.groups_from != cfg.groups:   # loaded without them
        data = with_groups(data, None, "kaggle", cfg.groups, cfg.group_regex)
    return draw_splits(split_groups(data, cfg.groups), len(data), content_hash=data.content_hash,
                       test_fraction=cfg.test_fraction, test_seed=cfg.test_seed,
                       val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, mode=cfg.split,
                       source=data.source)


def held_out_rows(data: KeypointData, cfg: TrialConfig) -> np.ndarray:
    """The test rows (sorted int64): the same for every run on this data set and test_seed."""
    return three_way_split(data, cfg).test


def split_kind(data: KeypointData, cfg: TrialConfig) -> str:
    """"group-disjoint" when no group is on two sides of any split, else "row-level" (no groups,
    or split="tail", whose validation tail cuts through groups; its test split stays disjoint)."""
    grouped = cfg.groups != "none" and (data.groups is not None or cfg.groups != "auto")
    return GROUP_DISJOINT if grouped and cfg.split == "shuffle" else ROW_LEVEL
