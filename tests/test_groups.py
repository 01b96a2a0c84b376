"""Groups: sidecar CSVs, image-folder names, synthetic faces; bad groups input is one line, exit 2."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fkd_core import train as train_module
from fkd_core.config import TrialConfig
from fkd_core.data import (DataError, groups_from_names, load_dataset, main, read_groups_file, sidecar,
                           split_kind, three_way_split)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / "../shared/data"
SAMPLE = SHARED / "fkd-yt15/sample-64.csv"
TRAINING = SHARED / "fkd-yt15/training.csv.gz"
GROUPS = SHARED / "fkd-yt15/training.groups.csv"
YT68 = SHARED / "youtube-faces-68"
# sample-64.csv holds rows 0-39 and 2000-2023 of training.csv.gz (../shared/data/README.md).
SAMPLE_ROWS = list(range(40)) + list(range(2000, 2024))

needs_data = pytest.mark.skipif(not GROUPS.is_file() or not YT68.is_dir(), reason="../shared/data not present")


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def sample(tmp_path) -> Path:
    """sample-64.csv in a tmp folder with its sidecar sample-64.groups.csv (the shared groups of
    its 64 source rows), in the shared file's format (row, group, source_image)."""
    path = tmp_path / "sample-64.csv"
    shutil.copy(SAMPLE, path)
    shared = pd.read_csv(GROUPS).set_index("row").loc[SAMPLE_ROWS].reset_index(drop=True)
    shared.insert(0, "row", range(64))
    shared.to_csv(tmp_path / "sample-64.groups.csv", index=False)
    return path


def test_sidecar_name_drops_the_data_suffixes():
    assert sidecar("d/training.csv.gz") == Path("d/training.groups.csv")
    assert sidecar("training.zip") == Path("training.groups.csv")
    assert sidecar("a.b.csv") == Path("a.b.groups.csv")


@needs_data
def test_kaggle_file_reads_its_sidecar(sample, cache):
    data = load_dataset(str(sample), cache_dir=cache)
    expected = pd.read_csv(GROUPS).set_index("row").loc[SAMPLE_ROWS, "group"].tolist()
    assert list(data.groups) == expected and data.groups[0] == "Luis_Fonsi"
    assert data.groups_from == str(sample.with_name("sample-64.groups.csv"))
    assert split_kind(data, TrialConfig()) == "group-disjoint"
    # groups="none" forgets them: row-level, and it says so.
    plain = load_dataset(str(sample), cache_dir=cache, groups="none")
    assert plain.groups is None and split_kind(plain, TrialConfig(groups="none")) == "row-level"
    assert three_way_split(plain, TrialConfig(groups="none")).kind == "row-level"


@needs_data
def test_a_file_without_sidecar_is_row_level(cache):
    data = load_dataset(str(SAMPLE), cache_dir=cache)     # sample-64.groups.csv is not shared
    assert data.groups is None and three_way_split(data, TrialConfig()).kind == "row-level"


@needs_data
@pytest.mark.slow
def test_fkd_yt15_split_keeps_every_person_on_one_side(tmp_path_factory):
    data = load_dataset(str(TRAINING), cache_dir=str(tmp_path_factory.mktemp("cache")))
    assert len(data) == 3462 and len(set(data.groups)) == 347
    groups = np.array(data.groups)
    for split_seed in (0, 1):
        s = three_way_split(data, TrialConfig(data=str(TRAINING), split_seed=split_seed))
        sides = [set(groups[rows]) for rows in (s.train, s.val, s.test)]
        assert s.kind == "group-disjoint"
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(3462))
        assert len(sides[2]) == round(0.15 * 347) == 52 and len(sides[1]) == 52   # ~15% of people
        assert 0.13 < len(s.test) / 3462 < 0.17


def test_synthetic_faces_are_each_their_own_group():
    data = load_dataset("synthetic", synth_n=40)
    assert len(set(data.groups)) == 40 and data.groups_from.startswith("synthetic: every face is its own group")
    assert split_kind(data, TrialConfig()) == "group-disjoint"
    assert load_dataset("synthetic", synth_n=40, groups="none").groups is None


# --- image folders: the group from the file name -----------------------------------------------------


@pytest.mark.parametrize("name,group", [
    ("Luis_Fonsi_21.jpg", "Luis_Fonsi"), ("Al_Gore_00.png", "Al_Gore"), ("x_007.jpeg", "x"),
    ("Mary_2nd_01.jpg", "Mary_2nd"), ("noext_12", "noext"), ("single.png", "single"),
    ("sub/Al_Gore_3.png", "sub/Al_Gore"), ("Luis_Fonsi.v2_21.jpg", "Luis_Fonsi.v2"),
])
def test_default_group_of_an_image_name(name, group):
    assert groups_from_names("f.csv", [name], "", "1") == (group,)


def test_group_regex_overrides_the_default():
    names = ["cam1-Luis_Fonsi_21.jpg", "cam2-Luis_Fonsi_22.jpg", "cam1-Al_Gore_00.jpg"]
    assert groups_from_names("f.csv", names, r"^(cam\d)-", "1") == ("cam1", "cam2", "cam1")
    assert groups_from_names("f.csv", names, r"-([A-Za-z]+)_", "1") == ("Luis", "Luis", "Al")


@pytest.fixture
def folder(tmp_path) -> Path:
    """6 youtube-faces-68 frames of 2 people (3 each) in a tmp folder, with their CSV."""
    if not YT68.is_dir():
        pytest.skip("../shared/data not present")
    frame = pd.read_csv(YT68 / "training_frames_keypoints.csv")
    person = frame.iloc[:, 0].str.replace(r"_\d+\.jpg$", "", regex=True)
    rows = pd.concat([frame[person == p].head(3) for p in ("Luis_Fonsi", "Valerie_Harper")])
    rows.columns = [""] + list(rows.columns[1:])    # the shared header: ",0,1,...,135"
    (tmp_path / "faces").mkdir()
    for name in rows.iloc[:, 0]:
        shutil.copy(YT68 / "training" / name, tmp_path / "faces" / name)
    rows.to_csv(tmp_path / "faces.csv", index=False)
    return tmp_path


def test_image_folder_groups_come_from_the_names(folder, cache):
    data = load_dataset(str(folder / "faces.csv"), cache_dir=cache, image_dir=str(folder / "faces"))
    assert data.groups == ("Luis_Fonsi",) * 3 + ("Valerie_Harper",) * 3
    assert data.groups_from.startswith("file names")
    with pytest.raises(DataError, match="2 groups: .* leaving 0 for training"):   # 2 people, 3 splits
        three_way_split(data, TrialConfig())
    rows = three_way_split(data, TrialConfig(groups="none", test_fraction=0.3, val_fraction=0.3))
    assert rows.kind == "row-level" and (len(rows.train), len(rows.val), len(rows.test)) == (2, 2, 2)


def test_image_folder_regex_that_matches_no_name(folder, cache):
    with pytest.raises(DataError) as err:
        load_dataset(str(folder / "faces.csv"), cache_dir=cache, image_dir=str(folder / "faces"),
                     group_regex=r"^(\d+)-")
    message = str(err.value)
    assert message.startswith(f"{folder / 'faces.csv'}: row 1, column 1 (image name): expected a name that "
                              "group_regex '^(\\\\d+)-' matches, got 'Luis_Fonsi_") and "\n" not in message


# --- bad groups files: one line naming the groups file, its row and column -----------------------------


def _groups_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """(groups file, expected fragment) for a broken groups file of a 64-row data set."""
    rows = [f"{r},person{r // 8}" for r in range(64)]
    header = "row,group"
    lines = {
        "missing_row": [header] + rows[:10] + rows[11:],
        "extra_row": [header] + rows + ["64,person8"],
        "duplicate_row": [header] + rows[:5] + ["3,person0"] + rows[6:],
        "fewer_lines": [header] + rows[:60],
        "not_a_number": [header] + rows[:7] + ["seven,person0"] + rows[8:],
        "empty_group": [header] + rows[:9] + ["9,"] + rows[10:],
        "missing_column": ["row,person"] + rows,
    }.get(case)
    path = tmp_path / "g.csv"
    if lines is not None:
        path.write_text("\n".join(lines) + "\n")
    elif case == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    elif case == "fifo":
        os.mkfifo(path)
    expected = {
        "missing_row": "row 64, column row: expected one line per row of", "extra_row":
        "row 65, column row: expected a row number of", "duplicate_row":
        "row 6, column row: expected each row of", "fewer_lines": "row 61, column row: expected one line per row",
        "not_a_number": "row 8, column row: expected a row number of", "empty_group":
        "row 10, column group: expected a group name, got an empty field", "missing_column":
        "header, column group: expected a CSV with columns row,group", "binary":
        "header: expected a CSV with columns row,group", "fifo": "not a regular file (a FIFO)",
        "absent": "got no such file",
    }[case]
    return path, expected


GROUP_CASES = ["missing_row", "extra_row", "duplicate_row", "fewer_lines", "not_a_number", "empty_group",
               "missing_column", "binary", "fifo", "absent"]


@needs_data
@pytest.mark.parametrize("case", GROUP_CASES)
def test_bad_groups_file_is_one_line_naming_the_place(tmp_path, case, cache, capsys):
    path, fragment = _groups_case(tmp_path, case)
    with pytest.raises(DataError) as err:
        load_dataset(str(SAMPLE), cache_dir=cache, groups=str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and fragment in message
    assert main(["describe", str(SAMPLE), "--cache", cache, "--groups", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


@needs_data
def test_missing_row_names_the_data_row_without_group(tmp_path, cache):
    path, _ = _groups_case(tmp_path, "missing_row")
    with pytest.raises(DataError, match="got 63 lines; data row 10 has no group"):
        read_groups_file(path, 64, str(SAMPLE))


@needs_data
def test_bad_sidecar_stops_training_with_exit_2(sample, tmp_path, capsys):
    groups = sample.with_name("sample-64.groups.csv")
    groups.write_text(groups.read_text().replace("\n5,", "\n4,", 1))    # row 4 twice, row 5 never
    code = train_module.main(["--data", str(sample), "--epochs", "1", "--device", "cpu",
                              "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {groups}: row 6, column row: expected each row of {sample} once, got 4 again")


@pytest.mark.parametrize("changes,fragment", [
    (dict(test_fraction=0.0), "test_fraction must be in (0, 1)"),
    (dict(test_fraction=1.0), "test_fraction must be in (0, 1)"),
    (dict(test_fraction=0.9), "test_fraction + val_fraction must be < 1"),
    (dict(groups=""), "groups must be"),
    (dict(group_regex="(unclosed"), "group_regex must be a regular expression that compiles"),
])
def test_config_rejects_bad_group_and_test_settings(changes, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        TrialConfig(**changes)


def test_describe_rejects_a_test_fraction_outside_0_1(capsys):
    assert main(["describe", "synthetic", "--test-fraction", "1.5"]) == 2
    assert capsys.readouterr().err == "error: TrialConfig.test_fraction must be in (0, 1)\n"


def test_too_few_groups_for_three_splits_is_one_line():
    data = load_dataset("synthetic", synth_n=10)
    with pytest.raises(DataError) as err:
        three_way_split(data, TrialConfig(test_fraction=0.49, val_fraction=0.46))
    assert str(err.value) == ("synthetic(n=10,seed=0,pose=1): 10 groups: test_fraction=0.49 takes 5 and "
                              "val_fraction=0.46 takes 5 groups, leaving 0 for training; expected at least one "
                              "group in each split")


@needs_data
def test_describe_reports_groups_and_split_kind(sample, cache, capsys):
    assert main(["describe", str(sample), "--json", "--cache", cache]) == 0
    info = json.loads(capsys.readouterr().out)
    expected = pd.read_csv(GROUPS).set_index("row").loc[SAMPLE_ROWS, "group"].value_counts()
    assert info["groups"]["count"] == len(expected)
    assert info["groups"]["rows_per_group"]["max"] == expected.max()
    assert info["split_kind"] == "group-disjoint"
    assert sum(info["split_rows"][k] for k in ("train", "val", "test")) == 64
    assert main(["describe", str(SAMPLE), "--cache", cache]) == 0       # no sidecar: says so
    out = capsys.readouterr().out
    assert "groups: none (no groups file): splits are row-level" in out and "splits (row-level)" in out
