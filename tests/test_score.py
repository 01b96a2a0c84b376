"""fkd_core.score: duplicated and unknown RowIds, huge values, encodings and quoting (issue 21).

Rows are numbered as the file's lines (the header is row 1), as in the rest of score's messages.
"""
from __future__ import annotations

import csv
import math

import pandas as pd
import pytest

from fkd_core import score


@pytest.fixture
def solution(tmp_path):
    path = tmp_path / "solution.csv"
    path.write_text("RowId,Location\n1,10.0\n2,20.0\n3,30.0\n")
    return path


def _score(tmp_path, solution, text: str | bytes, capsys) -> tuple[int, list[str], str]:
    sub = tmp_path / "submission.csv"
    sub.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = score.main(["--submission", str(sub), "--solution", str(solution)])
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


def test_a_duplicated_rowid_names_the_file_and_both_rows(tmp_path, solution, capsys):
    code, err, _ = _score(tmp_path, solution, "RowId,Location\n1,10\n2,20\n2,21\n3,30\n", capsys)
    assert code == 2 and err == [f"score: error: {tmp_path / 'submission.csv'}: row 4, column RowId: expected "
                                 "each RowId once, got '2' again (first at row 3)"]


def test_a_duplicated_rowid_in_the_solution_is_refused_too(tmp_path, solution, capsys):
    solution.write_text("RowId,Location\n1,10.0\n1,20.0\n")
    code, err, _ = _score(tmp_path, solution, "RowId,Location\n1,10\n", capsys)
    assert code == 2 and err == [f"score: error: {solution}: row 3, column RowId: expected each RowId once, "
                                 "got '1' again (first at row 2)"]


def test_a_rowid_that_is_not_in_the_solution_is_refused(tmp_path, solution, capsys):
    code, err, _ = _score(tmp_path, solution, "RowId,Location\n1,10\n2,20\n3,30\n9,40\n", capsys)
    assert code == 2 and err == [f"score: error: {tmp_path / 'submission.csv'}: row 5, column RowId: expected "
                                 f"a RowId of the solution ({solution}), got '9'"]


def test_a_huge_value_is_scored_without_overflow(tmp_path, solution, capsys):
    code, err, out = _score(tmp_path, solution, "RowId,Location\n1,1e308\n2,20\n3,30\n", capsys)
    # sqrt(((1e308 - 10)^2 + 0 + 0) / 3) = 1e308 / sqrt(3), computed on values scaled by 1e308
    assert code == 0 and err == []
    assert out.startswith(f"RMSE {1e308 / math.sqrt(3):.4g} px over 3 locations") and "inf" not in out
    assert score.rmse(pd.Series([1e308, 20.0, 30.0], index=["1", "2", "3"]), score.read_locations(solution)) \
        == pytest.approx(1e308 / math.sqrt(3), rel=1e-12)


def test_an_error_beyond_the_largest_float_is_refused_naming_the_row(tmp_path, solution, capsys):
    solution.write_text("RowId,Location\n1,10.0\n2,-1.7e308\n")
    code, err, _ = _score(tmp_path, solution, "RowId,Location\n1,10\n2,1.7e308\n", capsys)
    assert code == 2 and err == [f"score: error: {tmp_path / 'submission.csv'}: row 3, column Location: expected "
                                 "a location in pixels, got 1.7e+308 for -1.7e+308 (an error beyond the largest float, 1.8e+308)"]


@pytest.mark.parametrize("encoding, kind", [("utf-16", "UTF-16 text"), ("utf-32", "UTF-32 text")])
def test_another_encoding_is_named_without_nul_bytes(tmp_path, solution, encoding, kind, capsys):
    code, err, _ = _score(tmp_path, solution, "RowId,Location\n1,10\n2,20\n3,30\n".encode(encoding), capsys)
    assert code == 2 and err == [f"score: error: {tmp_path / 'submission.csv'}: {kind} (expected UTF-8)"]


def test_every_field_quoted_is_accepted(tmp_path, solution, capsys):
    table = pd.DataFrame({"RowId": ["1", "2", "3"], "Location": ["13.0", "16.0", "30.0"]})
    table.to_csv(tmp_path / "quoted.csv", index=False, quoting=csv.QUOTE_ALL)
    assert (tmp_path / "quoted.csv").read_text().startswith('"RowId","Location"')
    pd.read_csv(solution, dtype=str).to_csv(tmp_path / "solution_q.csv", index=False, quoting=csv.QUOTE_ALL)
    code, err, out = _score(tmp_path, tmp_path / "solution_q.csv", (tmp_path / "quoted.csv").read_bytes(), capsys)
    assert code == 0 and out.startswith("RMSE 2.8868 px over 3 locations")   # sqrt((9 + 16 + 0) / 3)


@pytest.mark.parametrize("text, message", [
    ("", "header: expected columns RowId,Location, got an empty file"),
    ("RowId,Location\n", "expected at least one row after the header, got none"),
    ("RowId,Location\n1,10\n2,20,5\n", "Error tokenizing data. C error: Expected 2 fields in line 3, saw 3"),
])
def test_an_empty_or_ragged_file_is_one_line_naming_it(tmp_path, solution, text, message, capsys):
    code, err, _ = _score(tmp_path, solution, text, capsys)
    assert code == 2 and err == [f"score: error: {tmp_path / 'submission.csv'}: {message}"]
