"""sweep.lock: one sweep per folder, a crashed run's lock never blocks, names stay one segment,
an unwritable results directory fails before Ray starts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep.lock import LOCK_FILE, FolderError, SweepBusy, SweepLock, check_name, check_writable
from sweep.run import main

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom pathlib import Path\nfrom sweep.lock import SweepLock\n"
        "lock = SweepLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); time.sleep(60)\n")


def hold_in_another_process(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    holder = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(SweepBusy) as err:
            SweepLock(tmp_path).acquire()
        assert f"pid {holder.pid} on " in str(err.value) and "pick another --name" in str(err.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holders_lock_does_not_block(tmp_path):
    holder = hold_in_another_process(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # The file still names the dead process; the kernel released its flock with it.
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid
    with SweepLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    with SweepLock(tmp_path):   # released on exit, so this process can take it again
        pass


def test_a_stale_lock_file_from_another_host_does_not_block(tmp_path):
    (tmp_path / ".lock").write_text('{"pid": 1, "host": "gone", "started": "yesterday"}')
    with SweepLock(tmp_path):
        pass


def test_cli_refuses_a_name_another_sweep_holds_before_ray_starts(tmp_path, capsys):
    results = tmp_path / "results"
    holder = hold_in_another_process(results / "busy")
    try:
        start = time.perf_counter()
        assert main(["--smoke-test", "--name", "busy", "--results-dir", str(results)]) == 2
        assert time.perf_counter() - start < 5          # no Ray started
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by another sweep (pid" in err


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ".", "", "/abs", "x" * 129, "-rf", "a b"])
def test_names_are_one_path_segment(name):
    with pytest.raises(FolderError, match="must be one folder name"):
        check_name(name)


@pytest.mark.parametrize("name", ["fkd-yt15-quick", "quick-synthetic-20261129-082233", "a.b_c+d=e"])
def test_good_names_pass(name):
    check_name(name)


def test_cli_name_outside_the_results_dir_is_refused(tmp_path, capsys):
    assert main(["--smoke-test", "--name", "../escaped", "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--name '../escaped': must be one folder name" in err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("root", ["/proc/fkd-results", "/dev/null/results"])
def test_cli_unwritable_results_dir_is_one_line_before_ray(root, capsys):
    start = time.perf_counter()
    assert main(["--smoke-test", "--name", "x", "--results-dir", root]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--results-dir {root}: cannot write there" in err


def test_check_writable_creates_the_folder(tmp_path):
    check_writable(str(tmp_path / "new" / "results"))
    assert (tmp_path / "new" / "results").is_dir() and not list((tmp_path / "new" / "results").iterdir())


# --- a failed start leaves nothing behind (issue 21, item 10) ---------------------------------

def test_a_folder_holding_only_the_lock_goes_with_it(tmp_path):
    folder = tmp_path / "results" / "s"
    with SweepLock(folder):
        assert (folder / LOCK_FILE).is_file()
    assert not folder.exists() and (tmp_path / "results").is_dir()
    with SweepLock(folder):                  # a folder with results keeps its lock file
        (folder / "sweep.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE, "sweep.json"]


def test_acquire_retries_when_the_file_it_locked_was_unlinked(tmp_path, monkeypatch):
    """A run that opened the lock file just before its holder unlinked it (release above) must
    not hold that orphan while a third run locks the new file."""
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("")
    stale = os.open(folder / LOCK_FILE, os.O_RDWR)
    os.unlink(folder / LOCK_FILE)
    real, first = SweepLock._lock_or_raise, [stale]
    monkeypatch.setattr(SweepLock, "_lock_or_raise", lambda self: first.pop() if first else real(self))
    lock = SweepLock(folder)
    lock.acquire()
    assert os.fstat(lock._fd).st_ino == os.stat(folder / LOCK_FILE).st_ino
    lock.release()


def test_cli_start_that_fails_after_the_lock_leaves_no_folder(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("not,a,keypoint,file\n1,2,3,4\n")
    results = tmp_path / "r"
    assert main(["--data", str(csv), "--name", "n", "--results-dir", str(results)]) == 2
    assert capsys.readouterr().err.startswith("sweep.run: error: ")
    assert list(results.iterdir()) == []
