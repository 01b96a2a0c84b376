"""What a data file's header says: the Kaggle layout (keypoint columns, then Image; or a test.csv's
ImageId,Image) or the image-folder layout (an image name, then x0,y0,x1,y1,...)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fkd_core.data.errors import DataError, fail
from fkd_core.encoding import text_problem
from fkd_core.schema import KAGGLE15, Schema, schema_for


@dataclass(frozen=True)
class Layout:
    """What a header says: "kaggle" (prefix columns, then Image) or "folder" (name, x0, y0, ...)."""

    kind: str
    columns: tuple[str, ...]
    schema: Schema | None     # None for a Kaggle test.csv (ImageId, Image): no keypoints
    path: Path

    @property
    def prefix(self) -> tuple[str, ...]:
        """Kaggle: the columns before Image."""
        return self.columns[:-1]


def _header_columns(line: bytes) -> tuple[str, ...]:
    text = line.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    return tuple(c.strip().strip('"') for c in text.split(","))


def _pair_names(columns: Sequence[str]) -> list[str] | None:
    """Keypoint names if columns are name_x, name_y pairs, else None."""
    if len(columns) % 2 or not columns:
        return None
    xs, ys = columns[0::2], columns[1::2]
    if all(x.endswith("_x") and y == x[:-2] + "_y" for x, y in zip(xs, ys)):
        return [x[:-2] for x in xs]
    return None


def _coordinate_header(columns: Sequence[str]) -> bool:
    """Image-folder coordinate columns: 0,1,2,... or x0,y0,x1,y1,... or name_x,name_y pairs."""
    if not columns or len(columns) % 2:
        return False
    numbered = [str(i) for i in range(len(columns))]
    xy = [f"{a}{i}" for i in range(len(columns) // 2) for a in "xy"]
    return list(columns) in (numbered, xy) or _pair_names(columns) is not None


def _kaggle_schema(path: Path, prefix: Sequence[str]) -> Schema | None:
    if tuple(prefix) == ("ImageId",):
        return None
    if tuple(prefix) == KAGGLE15.columns:
        return KAGGLE15
    names = _pair_names(prefix)
    if names is None:
        raise fail(path, 0, ",".join(prefix[:3]) + ("..." if len(prefix) > 3 else ""),
                   "Kaggle keypoint columns (left_eye_center_x, left_eye_center_y, ...) or ImageId "
                   "before Image", f"{len(prefix)} other columns")
    return KAGGLE15 if len(names) == 15 and tuple(names) == KAGGLE15.keypoints else Schema(
        name=f"generic{len(names)}", keypoints=tuple(names))


def _check_unique(path: Path, columns: Sequence[str]) -> None:
    """A repeated column (e.g. a pasted x/y pair) would silently pick one copy, or crash pandas."""
    seen: set[str] = set()
    for i, name in enumerate(columns):
        if name and name in seen:
            raise fail(path, 0, name, "each column name once", f"{name!r} again as column {i + 1}")
        seen.add(name)


def classify(path: Path, line: bytes) -> Layout:
    """Classify a header line; raise DataError when it matches neither layout (or is not UTF-8:
    a UTF-16 header would otherwise come back as column names full of NUL bytes)."""
    if problem := text_problem(path, line):
        raise DataError(problem)
    columns = _header_columns(line)
    _check_unique(path, columns)
    if "Image" in columns:
        if columns[-1] != "Image" or len(columns) < 2:
            raise fail(path, 0, "Image", "Image as the last of at least two columns (Kaggle layout)",
                       f"columns {', '.join(columns[:4])}{', ...' if len(columns) > 4 else ''}")
        return Layout("kaggle", columns, _kaggle_schema(path, columns[:-1]), path)
    if columns[0].endswith("_x") or columns == ("ImageId",):
        raise fail(path, 0, "Image", "an Image column (the Kaggle layout ends with it)",
                   f"{len(columns)} columns without it ({', '.join(columns[:2])}, ...)")
    if len(columns) >= 3 and _coordinate_header(columns[1:]):
        k = (len(columns) - 1) // 2
        names = _pair_names(columns[1:])
        schema = schema_for(k) if names is None else Schema(name=f"generic{k}", keypoints=tuple(names))
        return Layout("folder", columns, schema, path)
    raise fail(path, 0, columns[0] or "1", "a Kaggle header (keypoint columns, then Image; or ImageId,Image) "
               "or an image-folder header (image name, then x0,y0,x1,y1,...)",
               f"{len(columns)} columns starting {', '.join(columns[:3])!r}")
