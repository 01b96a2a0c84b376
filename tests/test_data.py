"""Readers, cache, splits, missing policies and user-facing errors, on the real shared data."""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fkd_core import data as D
from fkd_core.config import TrialConfig
from fkd_core.data import DataError, apply_missing, load_dataset, load_for_config, split_indices
from fkd_core.schema import KAGGLE15

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / "../shared/data"
SAMPLE = SHARED / "fkd-yt15/sample-64.csv"
YT68 = SHARED / "youtube-faces-68"
BROWS = [KAGGLE15.keypoints.index(n) for n in KAGGLE15.keypoints if "eyebrow" in n]

needs_data = pytest.mark.skipif(not SAMPLE.is_file() or not YT68.is_dir(), reason="../shared/data not present")


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture(scope="module")
def sample_lines() -> list[str]:
    return SAMPLE.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# --- the Kaggle layout -----------------------------------------------------------------------------


@needs_data
def test_sample_64_counts_and_first_values(cache):
    data = load_dataset(str(SAMPLE), cache_dir=cache)
    assert len(data) == 64 and data.schema is KAGGLE15 and not data.synthetic
    assert data.images.shape == (64, 1, 96, 96) and data.images.dtype == torch.uint8
    assert data.keypoints.shape == (64, 15, 2) and data.keypoints.dtype == torch.float32
    assert int(data.complete_mask().sum()) == 39
    first = SAMPLE.read_text().split("\n")[1].split(",")
    assert data.keypoints[0, 0].tolist() == pytest.approx([float(first[0]), float(first[1])])
    assert data.images[0, 0, 0, :3].tolist() == [int(v) for v in first[-1].split(" ")[:3]]
    assert data.content_hash == "565134a2b05045a3c578afb3acf045d3ccf7ca44708a4f730fc4e96d1834da37"


@needs_data
def test_gzip_and_zip_give_identical_arrays(tmp_path, cache):
    raw = SAMPLE.read_bytes()
    (tmp_path / "training.csv.gz").write_bytes(gzip.compress(raw))
    with zipfile.ZipFile(tmp_path / "training.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("training.csv", raw)
    plain = load_dataset(str(SAMPLE), cache=False)
    for name in ("training.csv.gz", "training.zip"):
        other = load_dataset(str(tmp_path / name), cache_dir=cache)
        assert torch.equal(other.images, plain.images)
        assert torch.equal(other.keypoints.nan_to_num(-1), plain.keypoints.nan_to_num(-1))


@needs_data
def test_agrees_with_a_naive_pandas_parse():
    frame = pd.read_csv(SAMPLE)
    pixels = np.stack([np.array(s.split(), dtype=np.uint8) for s in frame["Image"]])
    data = load_dataset(str(SAMPLE), cache=False)
    assert np.array_equal(data.images.reshape(64, -1).numpy(), pixels)
    expected = frame[list(KAGGLE15.columns)].to_numpy(np.float32).reshape(64, 15, 2)
    assert np.array_equal(np.nan_to_num(data.keypoints.numpy(), nan=-1), np.nan_to_num(expected, nan=-1))


@needs_data
def test_small_pieces_and_crlf_lines_parse_the_same(tmp_path, monkeypatch):
    (tmp_path / "crlf.csv").write_bytes(SAMPLE.read_bytes().replace(b"\n", b"\r\n"))
    monkeypatch.setattr(D.streams, "PIECE_BYTES", 4096)  # lines cross many piece boundaries
    small = load_dataset(str(tmp_path / "crlf.csv"), cache=False)
    monkeypatch.undo()
    plain = load_dataset(str(SAMPLE), cache=False)
    assert torch.equal(small.images, plain.images)


def test_test_csv_gives_image_ids_and_nan_keypoints(tmp_path):
    images = torch.randint(0, 256, (3, 1, 96, 96), dtype=torch.uint8)
    path = D.write_kaggle_csv(tmp_path / "test.csv", images, None, image_ids=["7", "8", "9"])
    test = D.load_test_images(str(path), cache_dir=str(tmp_path / "cache"))
    assert test.image_ids == ("7", "8", "9") and torch.equal(test.images, images)
    assert test.keypoints.shape == (3, 15, 2) and torch.isnan(test.keypoints).all()


@needs_data
def test_second_load_comes_from_the_cache(monkeypatch, cache):
    first = load_dataset(str(SAMPLE), cache_dir=cache)
    assert len(list(Path(cache).glob("*.npz"))) == 1
    monkeypatch.setattr(D.kaggle, "read_kaggle", lambda *a: pytest.fail("parsed again"))
    monkeypatch.setattr(Path, "read_bytes", lambda *a: pytest.fail("read (and hashed) again"))
    second = load_dataset(str(SAMPLE), cache_dir=cache)
    assert torch.equal(first.images, second.images) and second.content_hash == first.content_hash
    assert second.source == str(SAMPLE)


@needs_data
def test_image_size_rescales_images_and_keypoints(cache):
    small = load_dataset(str(SAMPLE), image_size=48, cache_dir=cache)
    full = load_dataset(str(SAMPLE), cache_dir=cache)
    assert small.images.shape == (64, 1, 48, 48)
    assert torch.allclose(small.keypoints, (full.keypoints + 0.5) / 2 - 0.5, equal_nan=True)


# --- the image-folder layout -------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> tuple[Path, pd.DataFrame]:
    """4 rows of youtube-faces-68 in a tmp folder; the last image re-saved as a 150x100 RGBA PNG."""
    if not YT68.is_dir():
        pytest.skip("../shared/data not present")
    frame = pd.read_csv(YT68 / "training_frames_keypoints.csv", nrows=4)
    images = tmp_path / "faces"
    images.mkdir()
    for name in frame.iloc[:3, 0]:
        shutil.copy(YT68 / "training" / name, images / name)
    last = frame.iloc[3, 0]
    with Image.open(YT68 / "training" / last) as im:
        w, h = im.size
        im.convert("RGBA").resize((150, 100)).save(images / "odd.png")
    frame.iloc[3, 0] = "odd.png"
    frame.iloc[3, 1::2] *= 150 / w   # keypoints follow the resize, to the pixel-area convention
    frame.iloc[3, 2::2] *= 100 / h   # (close enough for this test: checked to 1 px below)
    frame.to_csv(tmp_path / "faces.csv", index=False)
    return tmp_path, frame


def test_image_folder_reads_any_size_and_colour(folder, cache):
    root, frame = folder
    data = load_dataset(str(root / "faces.csv"), cache_dir=cache, image_dir=str(root / "faces"))
    assert data.images.shape == (4, 1, 96, 96) and data.schema.name == "ibug68"
    assert data.image_ids == tuple(frame.iloc[:, 0])
    for row in range(3):
        with Image.open(root / "faces" / frame.iloc[row, 0]) as im:
            w, h = im.size
        xy = frame.iloc[row, 1:].to_numpy(np.float32).reshape(68, 2)
        expected = (xy + 0.5) * np.array([96 / w, 96 / h], np.float32) - 0.5
        assert np.allclose(data.keypoints[row].numpy(), expected, atol=1e-4)
    # The same face as a 150x100 RGBA PNG lands on (nearly) the same 96x96 image and keypoints.
    original = pd.read_csv(YT68 / "training_frames_keypoints.csv", nrows=4)
    with Image.open(YT68 / "training" / original.iloc[3, 0]) as im:
        w, h = im.size
    xy = original.iloc[3, 1:].to_numpy(np.float32).reshape(68, 2)
    expected = (xy + 0.5) * np.array([96 / w, 96 / h], np.float32) - 0.5
    assert np.abs(data.keypoints[3].numpy() - expected).max() < 1.0
    assert (data.images[3, 0].float() - _reference_face(original.iloc[3, 0])).abs().mean() < 12


def _reference_face(name: str) -> torch.Tensor:
    with Image.open(YT68 / "training" / name) as im:
        return torch.from_numpy(np.array(im.convert("L").resize((96, 96), Image.BILINEAR))).float()


def test_image_folder_finds_images_next_to_the_csv(folder, cache):
    root, _ = folder
    shutil.copy(root / "faces.csv", root / "faces" / "faces.csv")
    data = load_dataset(str(root / "faces" / "faces.csv"), cache_dir=cache)
    assert len(data) == 4


# --- missing keypoints and splits --------------------------------------------------------------------


@needs_data
def test_ffill_copies_the_last_complete_rows_eyebrows_and_mask_keeps_nan(cache):
    data = load_dataset(str(SAMPLE), cache_dir=cache)
    no_brows = torch.isnan(data.keypoints[:, BROWS]).all(dim=(1, 2)).numpy()
    first = int(np.flatnonzero(no_brows)[0])                  # the tail of 4-keypoint rows starts
    end = first + int(np.argmin(no_brows[first:])) if not no_brows[first:].all() else len(data)
    donor = first - 1
    assert bool(data.complete_mask()[donor]) and end - first >= 10
    filled = apply_missing(data, "ffill").keypoints
    for row in range(first, end):   # every following face gets the donor face's eyebrows
        assert torch.equal(filled[row, BROWS], data.keypoints[donor, BROWS])
    assert torch.isnan(apply_missing(data, "mask").keypoints[first:end, BROWS]).all()


@needs_data
def test_drop_keeps_complete_rows(cache):
    data = load_dataset(str(SAMPLE), cache_dir=cache)
    assert len(apply_missing(data, "drop")) == 39
    with pytest.raises(ValueError, match="valid"):
        apply_missing(data, "zero")


def test_forward_fill_is_per_column_and_leading_nan_stays():
    nan = float("nan")
    values = torch.tensor([[nan, 1.0], [2.0, nan], [nan, nan], [3.0, 4.0]])
    filled = D.forward_fill(values)
    assert torch.equal(filled.nan_to_num(-9), torch.tensor([[-9, 1.0], [2.0, 1.0], [2.0, 1.0], [3.0, 4.0]]))


def test_split_indices_shuffle_and_tail():
    train, val = split_indices(100, 0.15, seed=3)
    assert len(val) == 15 and len(train) == 85
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert not np.array_equal(val, np.arange(85, 100))
    again_train, again_val = split_indices(100, 0.15, seed=3)
    assert np.array_equal(val, again_val)
    assert not np.array_equal(val, split_indices(100, 0.15, seed=4)[1])
    tail_train, tail_val = split_indices(100, 0.15, seed=3, mode="tail")
    assert np.array_equal(tail_val, np.arange(85, 100)) and np.array_equal(tail_train, np.arange(85))
    with pytest.raises(ValueError, match="valid"):
        split_indices(100, 0.15, 0, mode="head")


def test_load_for_config_uses_the_synthetic_knobs():
    data = load_for_config(TrialConfig(synth_n=30, synth_seed=2, synth_pose=0.0))
    assert data.synthetic and len(data) == 30 and "seed=2" in data.source and "pose=0" in data.source


def test_subset_keeps_ids_and_accepts_masks():
    data = D.KeypointData(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, 1, 2), KAGGLE15,
                          "x", "h", False, ("a", "b", "c"))
    assert data.subset(np.array([2, 0])).image_ids == ("c", "a")
    assert data.subset(torch.tensor([False, True, True])).image_ids == ("b", "c")


# --- bad input: one line naming file, row, column and what was expected ------------------------------


def _kaggle_case(tmp_path: Path, lines: list[str], case: str) -> tuple[str, str]:
    """(path, expected message fragment) for one malformed Kaggle file built from real rows."""
    head, rows = lines[0], [r for r in lines[1:4]]
    cells = [r.split(",") for r in rows]
    if case == "no_image_column":
        return _write(tmp_path / "t.csv", [head.rsplit(",", 1)[0]] + [r.rsplit(",", 1)[0] for r in rows]), \
            "header, column Image: expected an Image column"
    if case in ("9215", "9217"):
        pixels = cells[1][-1].split(" ")
        cells[1][-1] = " ".join(pixels[:-1] if case == "9215" else pixels + ["7"])
        return _write(tmp_path / "t.csv", [head] + [",".join(c) for c in cells]), \
            f"row 2, column Image: expected 9216 pixel values (96x96), got {case}"
    if case in ("abc", "256", "-1", "1.5"):
        pixels = cells[2][-1].split(" ")
        pixels[4] = case
        cells[2][-1] = " ".join(pixels)
        return _write(tmp_path / "t.csv", [head] + [",".join(c) for c in cells]), \
            f"row 3, column Image: expected integers 0..255 separated by single spaces, got '{case}' as value 5"
    if case == "keypoint":
        cells[1][20] = "n/a"
        return _write(tmp_path / "t.csv", [head] + [",".join(c) for c in cells]), \
            "row 2, column nose_tip_x: expected a number or an empty field (missing), got 'n/a'"
    if case in ("5000", "-5000", "inf", "-inf", "1e39"):
        cells[1][20 + case.startswith("-")] = case      # nose_tip_x, or nose_tip_y for the negatives
        column = "nose_tip_y" if case.startswith("-") else "nose_tip_x"
        expected = (f"a coordinate within 0.5 of the image's side around it (-48..144 for a 96x96 image), "
                    f"got {case}" if case.strip("-") == "5000"
                    else f"a finite number or an empty field (missing), got '{case}'")
        return _write(tmp_path / "t.csv", [head] + [",".join(c) for c in cells]), f"row 2, column {column}: expected {expected}"
    if case == "duplicate_pair":   # nose_tip_x,nose_tip_y pasted over by the left eye's pair
        return _write(tmp_path / "t.csv", [head.replace("nose_tip_x,nose_tip_y", "left_eye_center_x,left_eye_center_y")]
                      + rows), "header, column left_eye_center_x: expected each column name once, got " \
                               "'left_eye_center_x' again as column 21"
    if case == "empty":
        return _write(tmp_path / "t.csv", []), "header: expected a CSV header line, got an empty file"
    if case == "truncated_gz":
        blob = gzip.compress(("\n".join(lines[:20]) + "\n").encode())
        (tmp_path / "t.csv.gz").write_bytes(blob[: len(blob) // 2])
        return str(tmp_path / "t.csv.gz"), "expected a complete gzip stream, got a truncated file"
    if case == "neither":
        return _write(tmp_path / "t.csv", ["a,b", "1,2"]), "header, column a: expected a Kaggle header"
    raise AssertionError(case)


KAGGLE_CASES = ["no_image_column", "9215", "9217", "abc", "256", "-1", "1.5", "keypoint", "empty",
                "truncated_gz", "neither", "5000", "-5000", "inf", "-inf", "1e39", "duplicate_pair"]


@needs_data
@pytest.mark.parametrize("case", KAGGLE_CASES)
def test_bad_kaggle_input_is_one_line_naming_the_place(tmp_path, sample_lines, case, capsys):
    path, fragment = _kaggle_case(tmp_path, sample_lines, case)
    with pytest.raises(DataError) as err:
        load_dataset(path, cache_dir=str(tmp_path / "cache"))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert fragment in message
    assert D.main(["describe", path, "--cache", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def _folder_case(tmp_path: Path, case: str) -> tuple[str, str]:
    root = tmp_path / "imgs"
    root.mkdir()
    name = "Luis_Fonsi_21.jpg"
    shutil.copy(YT68 / "training" / name, root / name)
    (root / "bad.jpg").write_text("not an image")
    header = "," + ",".join(str(i) for i in range(4))
    target = {"missing_file": "nobody.jpg", "escape": "../x.jpg", "absolute": "/etc/passwd",
              "unreadable": "bad.jpg"}[case]
    path = _write(tmp_path / "f.csv", [header, f"{name},1,2,3,4", f"{target},1,2,3,4"])
    expected = {"missing_file": f"an image file in {root}, got 'nobody.jpg' (no such file)",
                "escape": f"a file name inside {root}, got '../x.jpg'",
                "absolute": f"a file name inside {root}, got '/etc/passwd'",
                "unreadable": "a readable image file, got 'bad.jpg'"}[case]
    return path, f"row 2, column 1 (image name): expected {expected}"


@needs_data
@pytest.mark.parametrize("case", ["missing_file", "escape", "absolute", "unreadable"])
def test_bad_image_folder_input(tmp_path, case, capsys):
    path, fragment = _folder_case(tmp_path, case)
    with pytest.raises(DataError, match=None) as err:
        load_dataset(path, cache_dir=str(tmp_path / "cache"), image_dir=str(tmp_path / "imgs"))
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert D.main(["describe", path, "--images", str(tmp_path / "imgs"), "--cache", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@needs_data
@pytest.mark.slow
def test_cli_exit_code_2_without_traceback(tmp_path, sample_lines):
    path, fragment = _kaggle_case(tmp_path, sample_lines, "9215")
    done = subprocess.run([sys.executable, "-m", "fkd_core.data", "describe", path, "--cache", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1 and fragment in done.stderr


# --- describe ----------------------------------------------------------------------------------------


@needs_data
def test_describe_json(cache, capsys):
    assert D.main(["describe", str(SAMPLE), "--json", "--cache", cache]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"rows", "keypoints", "complete_rows", "present_per_keypoint"} <= set(info)
    assert (info["rows"], info["keypoints"], info["complete_rows"]) == (64, 15, 39)
    assert info["present_per_keypoint"]["left_eye_center"] == 64 and info["image_size"] == [96, 96]
    assert info["cache"].startswith("miss") and not info["synthetic"]
    assert D.main(["describe", str(SAMPLE), "--json", "--cache", cache]) == 0
    assert json.loads(capsys.readouterr().out)["cache"].startswith("hit")


def test_describe_labels_synthetic(capsys):
    assert D.main(["describe", "synthetic"]) == 0  # default 2000 faces, generated in memory
    out = capsys.readouterr().out
    assert out.startswith("SYNTHETIC faces: synthetic(n=2000")


# --- issue 13: values, bit depths, huge images, duplicated columns, unreadable and special files --------


@needs_data
def test_nan_text_stays_missing_and_a_point_just_outside_the_image_is_kept(tmp_path, sample_lines):
    cells = [r.split(",") for r in sample_lines[1:3]]
    cells[0][20], cells[0][21] = "nan", ""              # missing, as before
    cells[1][20], cells[1][21] = "-40.5", "143.0"       # outside the 96x96 image, inside the margin
    data = load_dataset(_write(tmp_path / "t.csv", [sample_lines[0]] + [",".join(c) for c in cells]), cache=False)
    assert torch.isnan(data.keypoints[0, 10]).all()
    assert data.keypoints[1, 10].tolist() == [-40.5, 143.0]


@needs_data
def test_image_folder_keypoint_far_outside_its_image(tmp_path, capsys):
    root = tmp_path / "imgs"
    root.mkdir()
    name = "Luis_Fonsi_21.jpg"
    shutil.copy(YT68 / "training" / name, root / name)
    with Image.open(root / name) as im:
        w, h = im.size
    path = _write(tmp_path / "f.csv", [",0,1,2,3", f"{name},1,2,3,4", f"{name},1,2,3,{2 * h}"])
    with pytest.raises(DataError) as err:
        load_dataset(path, cache=False, image_dir=str(root))
    assert str(err.value) == (f"{path}: row 2, column 3: expected a coordinate within 0.5 of the image's side "
                              f"around it ({-h / 2:g}..{1.5 * h:g} for a {w}x{h} image), got {2 * h}")


def _folder_of(tmp_path: Path, images: dict[str, Image.Image]) -> str:
    """A CSV with one row per image (2 keypoints each, inside the image) and the images."""
    root = tmp_path / "imgs"
    root.mkdir()
    for name, im in images.items():
        im.save(root / name)
    return _write(tmp_path / "f.csv", [",0,1,2,3"] + [f"{n},10,20,30,40" for n in images])


@needs_data
def test_16_bit_png_reads_like_the_8_bit_image(tmp_path):
    with Image.open(YT68 / "training" / "Luis_Fonsi_21.jpg") as im:
        grey = np.asarray(im.convert("L"))
    wide = Image.fromarray(grey.astype(np.uint16) * 257)          # 0..65535, same picture
    path = _folder_of(tmp_path, {"eight.png": Image.fromarray(grey), "sixteen.png": wide})
    with Image.open(tmp_path / "imgs" / "sixteen.png") as im:
        assert im.mode.startswith("I")                            # really stored with 16 bits
    data = load_dataset(path, cache=False, image_dir=str(tmp_path / "imgs"))
    assert torch.equal(data.images[0], data.images[1])
    assert (data.images[1] == 255).float().mean() < 0.05          # not the near-white clip


def test_an_oversized_image_is_one_line_naming_file_and_row(tmp_path, monkeypatch, capsys):
    from PIL import Image as PILImage

    path = _folder_of(tmp_path, {"small.png": Image.new("L", (40, 40)), "huge.png": Image.new("L", (200, 200))})
    # 200x200 > 2 x 10000 pixels: PIL's DecompressionBombError, as a 20000x20000 image under the default.
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(DataError) as err:
        load_dataset(path, cache=False, image_dir=str(tmp_path / "imgs"))
    message = str(err.value)
    assert message.startswith(f"{path}: row 2, column 1 (image name): expected an image of at most 20000 pixels, "
                              "got 'huge.png' (") and "\n" not in message
    assert D.main(["describe", path, "--images", str(tmp_path / "imgs"), "--cache", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


@needs_data
def test_duplicated_pair_stops_train_and_sweep_with_one_line(tmp_path, sample_lines, capsys):
    from fkd_core import train as train_module

    path, fragment = _kaggle_case(tmp_path, sample_lines, "duplicate_pair")
    code = train_module.main(["--data", path, "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {path}: {fragment}"]
    from sweep.datasets import load_or_fail
    from sweep.settings import UsageError

    class Space:   # the sweep loads each data set of its space before Ray starts
        def data_configs(self):
            return [TrialConfig(data=path)]

    with pytest.raises(UsageError) as usage:
        load_or_fail(Space())
    assert str(usage.value) == f"{path}: {fragment}"


@needs_data
def test_describe_an_unreadable_file_is_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "locked.csv"
    shutil.copy(SAMPLE, path)
    real = Path.read_bytes

    def read_bytes(self):    # chmod 000 does not stop root, so the denial is simulated
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert D.main(["describe", str(path), "--cache", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == (f"error: {path}: file: expected a readable file, "
                                       "got PermissionError: Permission denied\n")


def test_a_fifo_is_not_a_regular_file(tmp_path, capsys):
    fifo = tmp_path / "training.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"got not a regular file \(a FIFO\)$"):
        load_dataset(str(fifo), cache_dir=str(tmp_path / "c"))
    assert D.main(["describe", str(fifo), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file (a FIFO)" in err and "no such file" not in err


# --- quoting and encodings (issue 21, item 10) ----------------------------------------------------

@needs_data
def test_a_kaggle_file_with_every_field_quoted_reads_like_the_plain_one(tmp_path, cache):
    plain = load_dataset(str(SAMPLE), cache_dir=cache, groups="none")
    table = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    table.to_csv(tmp_path / "quoted.csv", index=False, quoting=csv.QUOTE_ALL)
    assert (tmp_path / "quoted.csv").read_text().startswith('"left_eye_center_x","left_eye_center_y",')
    quoted = load_dataset(str(tmp_path / "quoted.csv"), cache_dir=cache, groups="none")
    assert torch.equal(quoted.images, plain.images)
    assert torch.equal(quoted.keypoints.isnan(), plain.keypoints.isnan())
    assert torch.equal(quoted.keypoints.nan_to_num(), plain.keypoints.nan_to_num())
    test = table[["Image"]].head(3).assign(ImageId=["7", "8", "9"])[["ImageId", "Image"]]
    test.to_csv(tmp_path / "test.csv", index=False, quoting=csv.QUOTE_ALL)
    images = D.load_test_images(str(tmp_path / "test.csv"), cache_dir=cache)
    assert images.image_ids == ("7", "8", "9") and torch.equal(images.images, plain.images[:3])


def test_an_image_folder_csv_with_every_field_quoted_reads_like_the_plain_one(folder, cache):
    root, frame = folder
    frame.to_csv(root / "quoted.csv", index=False, quoting=csv.QUOTE_ALL)
    plain = load_dataset(str(root / "faces.csv"), cache=False, image_dir=str(root / "faces"), groups="none")
    quoted = load_dataset(str(root / "quoted.csv"), cache=False, image_dir=str(root / "faces"), groups="none")
    assert quoted.image_ids == plain.image_ids and torch.equal(quoted.images, plain.images)
    assert torch.equal(quoted.keypoints, plain.keypoints)


@needs_data
@pytest.mark.parametrize("encoding, kind", [("utf-16", "UTF-16 text"), ("utf-16-le", "UTF-16 text"),
                                            ("utf-16-be", "UTF-16 text"), ("utf-32", "UTF-32 text")])
@pytest.mark.parametrize("layout", ["kaggle.csv", "kaggle.csv.gz", "folder.csv"])
def test_a_file_in_another_encoding_is_named_without_nul_bytes(encoding, kind, layout, tmp_path, capsys):
    text = (SAMPLE.read_text() if layout.startswith("kaggle")
            else (YT68 / "training_frames_keypoints.csv").read_text()[:5000].rsplit("\n", 1)[0] + "\n")
    path = tmp_path / layout
    payload = text.encode(encoding)
    path.write_bytes(gzip.compress(payload) if layout.endswith(".gz") else payload)
    with pytest.raises(DataError) as err:
        load_dataset(str(path), cache=False)
    assert str(err.value) == f"{path}: {kind} (expected UTF-8)"
    assert D.main(["describe", str(path), "--cache", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err == f"error: {path}: {kind} (expected UTF-8)\n"


def test_a_latin_1_header_is_named_not_utf_8(tmp_path):
    path = tmp_path / "faces.csv"
    path.write_bytes("image_name,x0,y0\nvisage_é.jpg,1,2\n".encode("latin-1").replace(b"image", b"imag\xe9"))
    with pytest.raises(DataError, match=r"faces.csv: not UTF-8 text: byte 0xe9 at offset 4 \(expected UTF-8\)$"):
        load_dataset(str(path), cache=False)
