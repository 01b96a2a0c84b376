"""fkd_core.rundir: the lock, refusing a run folder, metrics.csv on resume, signals, atomic writes."""
from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest

from fkd_core import rundir
from fkd_core.rundir import (CHECKPOINT, Interrupted, Interrupts, MetricsLog, RunDir, RunDirError, RunLock,
                             WriteFailed, atomic_write, check_start, summary_from_rows)


def _row(epoch: int, rmse: float) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "val_loss": 2.0, "val_rmse_px": rmse, "val_nme": rmse / 10,
            "val_shape_err_px": rmse / 2, "lr": 0.001, "epoch_seconds": 0.5, "images_per_s": 100.0,
            "diverged": False}


def test_a_held_lock_refuses_a_second_owner_naming_the_holder(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunDirError, match=rf"^{tmp_path}: in use by another training run \(pid {os.getpid()} on "):
        RunDir.open(tmp_path, resume=False, overwrite=False)
    first.release()
    RunDir.open(tmp_path, resume=False, overwrite=False).close()   # free again once released


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"x")
    (tmp_path / "metrics.csv").write_text("epoch\n1\n")
    with pytest.raises(RunDirError, match=r"holds a training run \(best.pt, metrics.csv\); pass --resume "
                                          r"to continue it or --overwrite to replace it$"):
        check_start(tmp_path, resume=False, overwrite=False)
    with pytest.raises(RunDirError, match=rf"^{tmp_path / CHECKPOINT}: nothing to resume"):
        check_start(tmp_path, resume=True, overwrite=False)
    with RunDir.open(tmp_path, resume=False, overwrite=True):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]   # the old run's files are gone


def test_a_start_that_writes_nothing_leaves_no_folder_holding_only_the_lock(tmp_path):
    RunDir.open(tmp_path / "new", resume=False, overwrite=False).close()
    assert not (tmp_path / "new").exists()
    with RunDir.open(tmp_path / "used", resume=False, overwrite=False) as run:
        run.metrics.append(_row(1, 3.0))
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == [".lock", "metrics.csv"]


def test_resume_keeps_the_rows_up_to_the_checkpoints_epoch_then_appends(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    for epoch in range(1, 6):           # epochs 4 and 5 ran after the last resume point (epoch 3)
        log.append(_row(epoch, 10.0 - epoch))
    log.close()
    resumed = MetricsLog(tmp_path / "metrics.csv", keep_until=3)
    assert [r["epoch"] for r in resumed.rows] == ["1", "2", "3"]
    for epoch in range(4, 8):
        resumed.append(_row(epoch, 10.0 - epoch))
    resumed.close()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,") and [int(l.split(",")[0]) for l in lines[1:]] == list(range(1, 8))


def test_each_row_is_on_disk_when_append_returns(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    log.append(_row(1, 4.0))
    log.append(_row(2, 3.5))
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3   # header + 2, file still open
    log.close()


def test_summary_from_rows_takes_the_best_and_the_last_epoch():
    rows = [_row(1, 4.0), {k: str(v) for k, v in _row(2, 2.5).items()}, _row(3, 3.0)]
    summary = summary_from_rows(rows)
    assert summary["best_epoch"] == 2 and summary["best_val_rmse_px"] == 2.5 and summary["best_val_nme"] == 0.25
    assert summary["epochs"] == 3 and summary["final_val_rmse_px"] == 3.0
    assert summary_from_rows([]) == {"epochs": 0, "best_epoch": 0}


def test_a_failed_write_names_the_path_and_leaves_no_temp_file(tmp_path, monkeypatch):
    def full_disk(self, payload):
        with open(self, "wb") as f:
            f.write(payload[:3])          # part of it reached the disk, then the disk was full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(WriteFailed) as caught:
        atomic_write(target, b"payload")
    assert str(caught.value) == f"{target}: cannot write (No space left on device)"
    assert caught.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


def test_write_summary_is_strict_json(tmp_path):
    with RunDir.open(tmp_path, resume=False, overwrite=False) as run:
        run.write_summary({"stopped": "interrupted", "best_val_rmse_px": float("inf"), "epochs": 0})
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "stopped": "interrupted", "best_val_rmse_px": None, "epochs": 0}


def test_a_signal_waits_for_the_next_safe_point_and_a_second_one_does_not():
    before = signal.getsignal(signal.SIGTERM)
    with Interrupts() as stop:
        os.kill(os.getpid(), signal.SIGTERM)   # handled between bytecodes: no exception yet
        assert stop.pending == signal.SIGTERM
        with pytest.raises(Interrupted) as caught:
            stop.check()
        assert caught.value.signum == signal.SIGTERM and str(caught.value) == "SIGTERM"
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)   # a second signal: at once
    assert signal.getsignal(signal.SIGTERM) is before
    assert rundir.EXIT_CODES == {signal.SIGINT: 130, signal.SIGTERM: 143}


def test_a_second_ctrl_c_mid_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def interrupted_write(self, payload):
        with open(self, "wb") as f:
            f.write(payload[:3])
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(Path, "write_bytes", interrupted_write)
    with pytest.raises(Interrupted):
        atomic_write(tmp_path / "best.pt", b"payload")
    assert list(tmp_path.iterdir()) == []


def test_opening_a_run_removes_the_temp_files_a_killed_writer_left(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"x")
    (tmp_path / f".{CHECKPOINT}.4242.tmp").write_bytes(b"half")    # kill -9 in the middle of a write
    (tmp_path / ".notes.tmp").write_text("not ours")
    with RunDir.open(tmp_path, resume=True, overwrite=False, resume_epoch=0):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".notes.tmp", CHECKPOINT]
