"""Keypoint schemas: names, left/right flip pairs and the normalising pair used by NME.

    >>> from fkd_core.schema import get_schema
    >>> get_schema("kaggle15").num_keypoints
    15
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schema:
    """What the K keypoints of a layout are.

    Attributes:
        name: registry name ("kaggle15", "ibug68", "generic<K>").
        keypoints: K keypoint names, in data-column order.
        flip_pairs: index pairs (i, j) that swap under a horizontal flip (left/right are the
            subject's, as in Kaggle's file).
        norm_pair: the two keypoints whose distance d_n normalises NME, or None when the layout
            has no such pair (NME is then NaN).
    """

    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    norm_pair: tuple[int, int] | None = None

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def columns(self) -> tuple[str, ...]:
        """CSV column names in Kaggle order: name_x, name_y for each keypoint."""
        return tuple(f"{k}_{axis}" for k in self.keypoints for axis in ("x", "y"))

    def flip_permutation(self) -> list[int]:
        """perm such that keypoints[:, perm] relabels a mirrored face correctly."""
        perm = list(range(self.num_keypoints))
        for i, j in self.flip_pairs:
            perm[i], perm[j] = j, i
        return perm


_KAGGLE15_NAMES = (
    "left_eye_center", "right_eye_center",
    "left_eye_inner_corner", "left_eye_outer_corner",
    "right_eye_inner_corner", "right_eye_outer_corner",
    "left_eyebrow_inner_end", "left_eyebrow_outer_end",
    "right_eyebrow_inner_end", "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner", "mouth_right_corner",
    "mouth_center_top_lip", "mouth_center_bottom_lip",
)


def _pairs_by_name(names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    index = {n: i for i, n in enumerate(names)}
    return tuple(
        (i, index[n.replace("left", "right")])
        for i, n in enumerate(names)
        if "left" in n
    )


KAGGLE15 = Schema(
    name="kaggle15",
    keypoints=_KAGGLE15_NAMES,
    flip_pairs=_pairs_by_name(_KAGGLE15_NAMES),
    norm_pair=(0, 1),  # the two eye centres (DESIGN.md)
)

# iBUG / 300-W 68-point layout, 0-based. Mirror pairs follow the standard 300-W convention.
_IBUG68_FLIP = (
    [(i, 16 - i) for i in range(8)]          # jaw
    + [(17 + i, 26 - i) for i in range(5)]   # brows
    + [(31, 35), (32, 34)]                   # nostrils
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]  # mouth
)
IBUG68 = Schema(
    name="ibug68",
    keypoints=tuple(f"p{i}" for i in range(68)),
    flip_pairs=tuple(_IBUG68_FLIP),
    norm_pair=(36, 45),  # outer eye corners (DESIGN.md)
)

SCHEMAS: dict[str, Schema] = {s.name: s for s in (KAGGLE15, IBUG68)}


def generic(num_keypoints: int) -> Schema:
    """K unnamed points, no flip pairs, no normalising pair."""
    if num_keypoints < 1:
        raise ValueError(f"a schema needs at least one keypoint, got {num_keypoints}")
    return Schema(name=f"generic{num_keypoints}", keypoints=tuple(f"p{i}" for i in range(num_keypoints)))


def get_schema(name: str) -> Schema:
    """Look a schema up by name; "generic<K>" builds one for K points."""
    if name in SCHEMAS:
        return SCHEMAS[name]
    if name.startswith("generic") and name[len("generic"):].isdigit():
        return generic(int(name[len("generic"):]))
    raise ValueError(f"Unknown schema {name!r}; valid: {sorted(SCHEMAS)} or 'generic<K>'")


def schema_for(num_keypoints: int) -> Schema:
    """The natural schema for K points: Kaggle 15, iBUG 68, else generic."""
    for schema in SCHEMAS.values():
        if schema.num_keypoints == num_keypoints:
            return schema
    return generic(num_keypoints)
