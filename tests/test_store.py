"""sweep.store: parts read as one table with the compacted file, newest part per trial, crash-safe
compaction (also under SIGKILL at random moments), old single-file studies, damaged parts."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fkd_core import metrics as M
from sweep import results as R
from sweep import store as S

ROOT = Path(__file__).resolve().parents[1]


def epoch_rows(trial_id: str, n: int, rmse: float = 2.0) -> list[dict]:
    return [{"trial_id": trial_id, M.EPOCH: e, M.VAL_RMSE: rmse, M.DIVERGED: False}
            for e in range(1, n + 1)]


def put(folder: Path, trial_id: str, epochs: int, rmse: float = 2.0) -> None:
    """A trial recorded as the writer does it: its epochs part, then its row's part."""
    S.write_atomic(R.to_table(epoch_rows(trial_id, epochs, rmse), R.epoch_schema()),
                   S.part_uri(str(folder), S.EPOCHS_FILE, trial_id))
    S.write_atomic(R.to_table([{"trial_id": trial_id, "status": "completed", "epochs": epochs,
                                "best_val_rmse_px": rmse}], R.trial_schema()),
                   S.part_uri(str(folder), S.TRIALS_FILE, trial_id))


def read(folder: Path, name: str) -> pd.DataFrame:
    return S.read_results(str(folder), name).to_pandas()


def test_parts_read_as_one_table_by_read_results_pandas_and_duckdb(tmp_path):
    for i in range(5):
        put(tmp_path, f"t{i}", epochs=i + 1)
    trials, epochs = read(tmp_path, S.TRIALS_FILE), read(tmp_path, S.EPOCHS_FILE)
    assert sorted(trials.trial_id) == [f"t{i}" for i in range(5)] and len(epochs) == 15
    assert list(epochs.groupby("trial_id").size()) == [1, 2, 3, 4, 5]
    assert len(pd.read_parquet(tmp_path / "parts" / "epochs")) == 15        # a Parquet dataset
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/parts/epochs/*.parquet')")
    assert got.fetchall() == [(15,)]


def test_the_same_trial_written_twice_reads_once_with_its_newest_part(tmp_path):
    put(tmp_path, "a", epochs=3, rmse=5.0)
    put(tmp_path, "b", epochs=2)
    put(tmp_path, "a", epochs=4, rmse=1.0)      # a retried trial, recorded again
    trials = read(tmp_path, S.TRIALS_FILE).set_index("trial_id")
    assert len(trials) == 2 and trials.loc["a", "best_val_rmse_px"] == 1.0
    epochs = read(tmp_path, S.EPOCHS_FILE)
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == 4 + 2
    assert (epochs[epochs.trial_id == "a"][M.VAL_RMSE] == 1.0).all()
    only_b = S.read_results(str(tmp_path), S.EPOCHS_FILE, trial_ids=["b"]).to_pandas()
    assert list(only_b.trial_id) == ["b", "b"]
    assert S.compact(str(tmp_path)) == {S.TRIALS_FILE: 3, S.EPOCHS_FILE: 3}
    assert read(tmp_path, S.TRIALS_FILE).set_index("trial_id").loc["a", "best_val_rmse_px"] == 1.0


def test_a_part_after_compaction_replaces_the_trials_compacted_rows(tmp_path):
    put(tmp_path, "a", epochs=3, rmse=5.0)
    put(tmp_path, "b", epochs=2)
    S.compact(str(tmp_path))
    assert S.list_parts(str(tmp_path), S.TRIALS_FILE) == []
    assert len(pd.read_parquet(tmp_path / S.TRIALS_FILE)) == 2            # the single file
    put(tmp_path, "a", epochs=1, rmse=1.0)
    epochs = read(tmp_path, S.EPOCHS_FILE)
    assert sorted(zip(epochs.trial_id, epochs.epoch)) == [("a", 1), ("b", 1), ("b", 2)]
    S.compact(str(tmp_path))
    assert len(pd.read_parquet(tmp_path / S.EPOCHS_FILE)) == 3


def test_a_kill_between_writing_parts_and_compacting_loses_and_duplicates_nothing(tmp_path):
    for i in range(4):
        put(tmp_path, f"t{i}", epochs=3)
    S.compact(str(tmp_path))
    put(tmp_path, "t4", epochs=3)
    put(tmp_path, "t1", epochs=5)               # re-recorded after the compaction
    (tmp_path / "parts" / "trials" / ".x.parquet.tmp-dead").write_bytes(b"half")   # killed write
    # The kill after the compacted file's rename, before the parts' deletion: both are there.
    shutil.copytree(tmp_path / "parts", tmp_path / "parts-before")
    S.compact(str(tmp_path))
    shutil.rmtree(tmp_path / "parts")
    (tmp_path / "parts-before").rename(tmp_path / "parts")
    for _ in range(2):                          # read now, and after the next compaction
        trials, epochs = read(tmp_path, S.TRIALS_FILE), read(tmp_path, S.EPOCHS_FILE)
        assert sorted(trials.trial_id) == [f"t{i}" for i in range(5)]
        assert not epochs.duplicated(["trial_id", "epoch"]).any()
        assert dict(epochs.groupby("trial_id").size()) == {"t0": 3, "t1": 5, "t2": 3, "t3": 3, "t4": 3}
        S.compact(str(tmp_path))
    assert len(pd.read_parquet(tmp_path / S.EPOCHS_FILE)) == 17


def test_a_committed_single_file_study_reads_through_read_results():
    folder = ROOT / "results" / "fkd-yt15"
    for name in (S.TRIALS_FILE, S.EPOCHS_FILE):
        ours, plain = S.read_results(str(folder), name), pq.read_table(folder / name)
        assert ours.schema == plain.schema and ours.to_pandas().equals(plain.to_pandas())


def test_columns_missing_from_old_parts_read_as_null(tmp_path):
    old = pa.table({"trial_id": ["a"], "status": ["completed"]})
    S.write_atomic(old, S.part_uri(str(tmp_path), S.TRIALS_FILE, "a"))
    new = pa.table({"trial_id": ["b"], "status": ["completed"], "precision": ["bf16"]})
    S.write_atomic(new, S.part_uri(str(tmp_path), S.TRIALS_FILE, "b"))
    got = read(tmp_path, S.TRIALS_FILE).set_index("trial_id")
    assert pd.isna(got.loc["a", "precision"]) and got.loc["b", "precision"] == "bf16"
    S.compact(str(tmp_path))
    assert list(pd.read_parquet(tmp_path / S.TRIALS_FILE).columns) == ["trial_id", "status", "precision"]


def test_a_damaged_part_is_one_line_and_set_aside(tmp_path):
    put(tmp_path, "a", epochs=2)
    put(tmp_path, "b", epochs=2)
    part = S.list_parts(str(tmp_path), S.TRIALS_FILE)[-1]
    data = Path(part).read_bytes()
    Path(part).write_bytes(data[: len(data) // 2])
    with pytest.raises(S.DamagedResults) as err:
        S.read_results(str(tmp_path), S.TRIALS_FILE)
    assert str(err.value).startswith(f"{part}: damaged Parquet file (") and "\n" not in str(err.value)
    assert f"--name {tmp_path.name} --results-dir {tmp_path.parent} --resume" in str(err.value)
    errors = S.set_aside_damaged(str(tmp_path))
    assert [str(e).split(":")[0] for e in errors] == [part]
    assert list(read(tmp_path, S.TRIALS_FILE).trial_id) == ["a"]
    assert [p.name.split(".damaged-")[0] for p in Path(part).parent.glob("_*")] == \
        [f"_{Path(part).name}"]


def test_compact_command(tmp_path, capsys):
    put(tmp_path, "a", epochs=2)
    assert S.main(["compact", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "trials.parquet: 1 parts folded, epochs.parquet: 1 parts folded"
    assert S.main(["compact", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"sweep.store: error: {tmp_path / 'nope'}: no such results folder\n"


def test_compact_command_is_refused_while_a_sweep_holds_the_folder(tmp_path, capsys):
    from sweep.lock import SweepLock

    put(tmp_path, "a", epochs=2)
    with SweepLock(tmp_path):
        assert S.main(["compact", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sweep.store: error: {tmp_path} is in use by another sweep (pid ")
    assert err.count("\n") == 1 and len(S.list_parts(str(tmp_path), S.TRIALS_FILE)) == 1


_RECORD_AND_COMPACT = """
import json, random, sys
from pathlib import Path
import pyarrow as pa
from sweep import store
folder = Path(sys.argv[1])
expected = json.loads((folder.parent / "expected.json").read_text())
rng = random.Random()
while True:   # a trial recorded again (same epochs, new values), then a compaction
    trial_id = rng.choice(sorted(expected))
    n, value = expected[trial_id], rng.random()
    epochs = pa.table({"trial_id": [trial_id] * n, "epoch": list(range(1, n + 1)),
                       "val_rmse_px": [value] * n})
    store.write_atomic(epochs, store.part_uri(str(folder), store.EPOCHS_FILE, trial_id))
    trials = pa.table({"trial_id": [trial_id], "epochs": [n], "best_val_rmse_px": [value]})
    store.write_atomic(trials, store.part_uri(str(folder), store.TRIALS_FILE, trial_id))
    store.compact(str(folder))
    (folder.parent / "looping").touch()
"""


@pytest.mark.slow
def test_compaction_killed_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    """SIGKILL a process that records and compacts in a loop; after every kill the folder reads
    every trial once, with all its epochs."""
    rng = random.Random(5)
    folder = tmp_path / "sweep"
    expected: dict[str, int] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_no in range(10):
        for _ in range(30):
            trial_id = f"t{rng.randrange(100)}"      # some trials are recorded again
            expected[trial_id] = rng.randint(1, 6)
            put(folder, trial_id, expected[trial_id], rmse=float(round_no))
        (tmp_path / "expected.json").write_text(json.dumps(expected))
        proc = subprocess.Popen([sys.executable, "-c", _RECORD_AND_COMPACT, str(folder)],
                                cwd=ROOT, env=env)
        looping = tmp_path / "looping"
        while not looping.exists():                  # python and pyarrow start (seconds)
            assert proc.poll() is None, "the recording loop ended by itself"
            time.sleep(0.05)
        looping.unlink()
        time.sleep(rng.uniform(0.0, 0.5))            # a few iterations: anywhere in one
        assert proc.poll() is None, "the recording loop ended by itself"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        trials, epochs = read(folder, S.TRIALS_FILE), read(folder, S.EPOCHS_FILE)
        assert trials.trial_id.is_unique and set(trials.trial_id) == set(expected)
        assert not epochs.duplicated(["trial_id", "epoch"]).any()
        assert dict(epochs.groupby("trial_id").size()) == expected
        assert dict(zip(trials.trial_id, trials.epochs)) == expected
    S.compact(str(folder))
    assert len(pd.read_parquet(folder / S.EPOCHS_FILE)) == sum(expected.values())
    assert len(pd.read_parquet(folder / S.TRIALS_FILE)) == len(expected)
