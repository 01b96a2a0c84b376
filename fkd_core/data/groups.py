"""Who is who: the group (person) of every row, so that no person is on two sides of a split.

Frames of one person are near-copies (same video, same light): a validation or test face whose
person is also in training measures memory of that person, not keypoint location. Sources:

- a Kaggle-layout file: the sidecar ``<name>.groups.csv`` next to it (``training.csv.gz`` ->
  ``training.groups.csv``), or any CSV given as ``groups=PATH``; columns ``row`` (0-based data
  row) and ``group`` (other columns are ignored), one line per data row;
- an image folder: the file name; by default the name without a trailing ``_<digits>`` and the
  extension (``Luis_Fonsi_21.jpg`` -> ``Luis_Fonsi``), or the first group of ``group_regex``;
- synthetic faces: every face is its own group, because every generated face is a new identity
  (nothing is shared between two rows but the generator).

``groups="none"`` drops them: splits are then row-level, and outputs say so.
"""
from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from fkd_core.data.dataset import KeypointData
from fkd_core.data.errors import fail, what_is

DEFAULT_GROUP_REGEX = r"^(.*?)(?:_\d+)?(?:\.[^./\\]*)?$"
"""An image name without a trailing _<digits> and its extension: Luis_Fonsi_21.jpg -> Luis_Fonsi."""
SYNTHETIC_GROUPS = "synthetic: every face is its own group (each generated face is a new identity)"
_DATA_SUFFIXES = (".gz", ".zip", ".csv")


def sidecar(path: str | Path) -> Path:
    """<name>.groups.csv next to a data file: training.csv.gz -> training.groups.csv."""
    path = Path(path)
    name = path.name
    for suffix in _DATA_SUFFIXES:   # in this order: .csv.gz loses .gz, then .csv
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return path.with_name(name + ".groups.csv")


def read_groups_file(file: str | Path, n_rows: int, data_source: str) -> tuple[str, ...]:
    """The group of each of the n_rows data rows, from a CSV with columns row,group.

    Raises:
        DataError: one line naming the groups file, its row and column, when the file is not a
            CSV with those columns, names a row the data does not have (or one twice), leaves a
            data row without a group, or gives an empty group name.
    """
    file = Path(file)
    expected = f"a CSV with columns row,group (one line per row of {data_source})"
    if not file.is_file():
        raise fail(file, "file", "", expected, what_is(file))
    try:
        raw = file.read_bytes()
        if b"\0" in raw[:65536]:
            raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "NUL byte: a binary file")
        frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, na_filter=False)
    except OSError as exc:
        raise fail(file, "file", "", expected, f"{type(exc).__name__}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise fail(file, 0, "", expected, f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("row", "group") if c not in columns]
    if missing:
        raise fail(file, 0, missing[0], expected, f"columns {', '.join(columns[:4])}")
    frame.columns = columns
    rows = _row_numbers(file, frame["row"], n_rows, data_source)
    names = frame["group"].str.strip().to_numpy()
    empty = np.flatnonzero(names == "")
    if empty.size:
        raise fail(file, int(empty[0]) + 1, "group", "a group name", "an empty field")
    groups = np.empty(n_rows, object)
    groups[rows] = names
    return tuple(groups.tolist())


def _row_numbers(file: Path, column: pd.Series, n_rows: int, data_source: str) -> np.ndarray:
    """The `row` column as ints, each data row 0..n_rows-1 exactly once."""
    text = column.str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    wanted = f"a row number of {data_source} (0..{n_rows - 1})"
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values >= n_rows))
    if bad.size:
        r = int(bad[0])
        raise fail(file, r + 1, "row", wanted, repr(text.iloc[r]))
    rows = values.astype(np.int64)
    first = {}
    for r, value in enumerate(rows.tolist()):
        if value in first:
            raise fail(file, r + 1, "row", f"each row of {data_source} once",
                       f"{value} again (first at row {first[value] + 1})")
        first[value] = r
    if len(rows) != n_rows:
        absent = int(np.setdiff1d(np.arange(n_rows), rows)[0])
        raise fail(file, len(rows) + 1, "row", f"one line per row of {data_source} ({n_rows} rows)",
                   f"{len(rows)} lines; data row {absent} has no group")
    return rows


def groups_from_names(source: str, names: Sequence[str], regex: str, column: str) -> tuple[str, ...]:
    """The group of each image name: the first group of `regex` (or its whole match when it has
    no group), searched in the name; DEFAULT_GROUP_REGEX when regex is empty."""
    try:
        pattern = re.compile(regex or DEFAULT_GROUP_REGEX)
    except re.error as exc:
        raise fail(source, 0, column, "a group_regex that compiles", f"{regex!r} ({exc})") from None
    out = []
    for r, name in enumerate(names):
        match = pattern.search(name)
        if match is None:
            raise fail(source, r + 1, column, f"a name that group_regex {pattern.pattern!r} matches", repr(name))
        group = match.group(1) if pattern.groups else match.group(0)
        if not group:
            raise fail(source, r + 1, column, f"a non-empty group from group_regex {pattern.pattern!r}",
                       f"'' from {name!r}")
        out.append(group)
    return tuple(out)


def with_groups(data: KeypointData, path: Path | None, kind: str, groups: str, group_regex: str,
                column: str = "") -> KeypointData:
    """data with its groups attached, as TrialConfig.groups / group_regex ask.

    Args:
        path: the data file (None for generated faces).
        kind: "kaggle", "folder" or "synthetic".
        groups: "auto", "none" or a groups CSV path.
        column: the image-name column of a folder CSV (for messages).
    """
    if groups == "none":
        return replace(data, groups=None, groups_from="")
    if groups != "auto":
        return replace(data, groups=read_groups_file(groups, len(data), data.source), groups_from=str(groups))
    if kind == "folder" and data.image_ids is not None:
        names = groups_from_names(data.source, data.image_ids, group_regex, column)
        how = f"file names (group_regex {group_regex!r})" if group_regex else "file names (without _<digits> and extension)"
        return replace(data, groups=names, groups_from=how)
    if path is not None and sidecar(path).is_file():
        return replace(data, groups=read_groups_file(sidecar(path), len(data), data.source),
                       groups_from=str(sidecar(path)))
    if data.synthetic:
        return replace(data, groups=tuple(str(i) for i in range(len(data))), groups_from=SYNTHETIC_GROUPS)
    return replace(data, groups=None, groups_from="")


def group_counts(groups: Sequence[str]) -> np.ndarray:
    """Rows per group, [G] in the order of the sorted group names."""
    return np.unique(np.asarray(groups, dtype=object).astype(str), return_counts=True)[1]

