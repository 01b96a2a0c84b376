"""bench.records: its quick mode runs, the reference writer is the one it replaces, and ours
records every trial once while holding no epoch row."""
from __future__ import annotations

import pandas as pd
import pytest

from bench import records as B
from sweep import store as S


def test_synthetic_trials_are_shaped_like_real_ones():
    rec, rows = B.trial(7)
    assert len(rows) == B.EPOCHS and sorted(rows) == list(range(1, B.EPOCHS + 1))
    assert rec["trial_id"] == "trial_000007" and rec["epochs"] == B.EPOCHS and rec["seed"] == 7
    assert set(B.R.trial_schema().names) <= set(rec)      # every trials.parquet column


def test_the_reference_rewrites_both_files_with_every_row(tmp_path):
    writer = B.RewriteAll(str(tmp_path))
    for i in range(3):
        writer.record(*B.trial(i))
    assert len(pd.read_parquet(tmp_path / S.TRIALS_FILE)) == 3
    assert len(pd.read_parquet(tmp_path / S.EPOCHS_FILE)) == 3 * B.EPOCHS


def test_ours_in_the_bench_is_the_real_writer_and_holds_no_rows(tmp_path):
    B.fill_parts(str(tmp_path), 4)
    writer = B.parts_writer(str(tmp_path), 4)
    B.ours_record(writer, *B.trial(4))
    assert writer.rows == {} and len(writer.recorded) == 5
    assert len(S.list_parts(str(tmp_path), S.TRIALS_FILE)) == 5
    S.compact(str(tmp_path))
    assert len(pd.read_parquet(tmp_path / S.EPOCHS_FILE)) == 5 * B.EPOCHS


def test_extrapolation_is_linear_through_the_two_largest_points():
    points = {100: {"t": 1.0}, 1000: {"t": 2.0}, 10_000: {"t": 11.0}}
    assert B.extrapolate(points, "t", 100_000) == 101.0


@pytest.mark.slow
def test_quick_mode_runs_and_reports_every_row():
    rows = B.run(quick=True)
    names = [r["name"] for r in rows]
    assert names[:2] == ["record time per trial at 100 trials (ms)",
                         "record time per trial at 1k trials (ms)"]
    assert len(rows) == 2 + 1 + 3 + 2 + 1
    for r in rows:
        assert r["reference"] > 0 and r["ours"] > 0, r
    memory = next(r for r in rows if r["name"] == "driver memory per recorded trial (bytes)")
    assert memory["passed"] and memory["reference"] > 50 * memory["ours"]   # epoch rows vs ids


@pytest.mark.slow
def test_full_mode_extrapolates_the_reference_beyond_its_largest_size_and_says_so(monkeypatch):
    monkeypatch.setitem(B.SIZES, False, (10, 20, 40))
    monkeypatch.setattr(B, "REFERENCE_MAX", 20)
    rows = {r["name"]: r for r in B.run(quick=False)}
    last = rows["record time per trial at 40 trials (ms)"]
    assert last["note"] == "reference extrapolated linearly from 10 and 20"
    assert rows["record time per trial at 20 trials (ms)"]["note"] == ""
    assert "reference extrapolated" in rows["driver memory at 40 trials (MB, Python heap)"]["note"]
    total = rows["hours spent recording a whole 40-trial sweep"]
    assert total["note"] == "reference extrapolated from its per-trial cost at 10 and 20"
    assert total["reference"] > 0 and total["ours"] > 0
