"""An interrupted confirm phase goes on where it stopped (sweep.confirm_recovery), and
``sweep.confirm`` owns the results folder as ``sweep.run`` does (sweep.lock).

The slow test is a real sweep (sweep.run CLI, real Ray, small_cnn on 200 synthetic faces): a
search of one base and one CGD trial, then `--confirm 2` (2 arms x 2 replicates of 3 epochs, 2 at
once). The confirm phase is interrupted three ways: Ctrl-C after its first record, SIGKILL of the
`--resume` once a continued trial has checkpointed, then `python -m sweep.confirm` finishes it.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sweep import confirm as C
from sweep import plan as P
from sweep.lock import SweepBusy, SweepLock
from sweep.spaces import get_space
from tests.test_kill import kill_when, start
from tests.test_lock import hold_in_another_process
from tests.test_sweep_run import ENV, ROOT, local_cluster

REPLICATES, EPOCHS = 2, 3


def two_arm_space(tmp_path: Path) -> str:
    """One cell, two arms (MSE and MSE + CGD), one search trial each."""
    path = tmp_path / "two-arms.yaml"
    path.write_text(f"grid: true\nseeds: 1\nmax_epochs: {EPOCHS}\nasha: null\n"
                    "fixed: {backbone: small_cnn, synth_n: 200, patience: 100}\n"
                    "axes: {shape: [none, cgd]}\n"
                    "search: {alpha: {log_uniform: [0.01, 0.1], when: {shape: [cgd]}}}\n")
    return str(path)


def confirm_records(folder: Path) -> pd.DataFrame:
    trials = pd.read_parquet(folder / "trials.parquet")
    return trials[trials.phase == "confirm"]


@pytest.mark.slow
def test_confirm_interrupted_by_ctrl_c_and_sigkill_finishes_each_replicate_once(tmp_path):
    cluster = local_cluster(tmp_path, 2)
    base = [sys.executable, "-m", "sweep.run", "--cluster", cluster]
    folder = tmp_path / "results" / "cf"

    # 1. Ctrl-C once the first confirm trial is recorded: exit 1, no look at the verdicts.
    log = tmp_path / "run1.log"
    proc = start(base + ["--space", two_arm_space(tmp_path), "--name", "cf",
                         "--confirm", str(REPLICATES)], log)
    deadline = time.monotonic() + 240
    while " confirm r" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 1, log.read_text()[-3000:]
    text = log.read_text()
    assert "confirm trials of this round did not finish: continue with" in text
    assert "--name cf --resume" in text and "Traceback" not in text
    saved = json.loads((folder / "sweep.json").read_text())
    assert saved["space"]["confirm"]["replicates"] == REPLICATES      # --resume confirms as asked
    assert not saved["confirm"].get("looks")                          # nothing was looked at
    first = confirm_records(folder)
    assert 1 <= len(first) < 2 * REPLICATES

    # 2. --resume, SIGKILLed once a trial of its own round has checkpointed an epoch.
    rounds_before = set((folder / "ray").glob("cf-confirm-*"))
    log = tmp_path / "run2.log"
    proc = start(base + ["--name", "cf", "--resume"], log)
    kills = kill_when(proc, lambda: any(p not in rounds_before and any(p.glob("*/checkpoint_*"))
                                        for p in (folder / "ray").glob("cf-confirm-*")), 240)

    # 3. sweep.confirm on the same folder continues rather than starting over.
    done = subprocess.run([sys.executable, "-m", "sweep.confirm", str(folder), "--seeds",
                           str(REPLICATES), "--cluster", cluster], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr

    conf = confirm_records(folder)
    assert conf.trial_id.is_unique and len(conf) == 2 * REPLICATES
    keys = sorted(zip(conf["shape"], conf.replicate.astype(int)))
    assert keys == [(s, r) for s in ("cgd", "none") for r in range(REPLICATES)]   # each once
    assert (conf.status == "completed").all() and (conf.epochs == EPOCHS).all()
    kept = conf.set_index("trial_id").loc[first.trial_id]              # recorded ones not rerun
    assert (kept.wall_seconds.to_numpy() == first.wall_seconds.to_numpy()).all()
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert {t: sorted(e) for t, e in epochs[epochs.trial_id.isin(conf.trial_id)]
            .groupby("trial_id").epoch} == {t: list(range(1, EPOCHS + 1)) for t in conf.trial_id}
    saved = json.loads((folder / "sweep.json").read_text())["confirm"]
    assert saved["looks"] == 1 and saved["replicates"] == REPLICATES  # one look, at the end
    assert "Verdicts" in done.stdout
    # Continued trials start from their checkpoints: each interruption costs at most the epoch
    # each of the 2 running trials had in flight (rerunning from scratch would redo up to 2 each).
    trained = sum(1 for f in (folder / "ray").glob("cf-confirm-*/*/result.json")
                  for line in f.read_text().splitlines() if line.strip().startswith("{"))
    assert trained <= 2 * REPLICATES * EPOCHS + 2 * (1 + kills), trained


# --- the folder lock ----------------------------------------------------------------------------

def saved_sweep(tmp_path: Path) -> Path:
    folder = tmp_path / "results" / "held"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({
        "name": "held", "space": get_space("quick").to_dict(), "storage_path": str(folder / "ray"),
        "resources": {"cpu": 1.0, "gpu": 0.0}, "max_concurrent": 1}))
    return folder


def test_confirm_is_refused_while_a_sweep_holds_the_folder(tmp_path, capsys):
    folder = saved_sweep(tmp_path)
    holder = hold_in_another_process(folder)     # as sweep.run holds it (same lock file)
    try:
        start_time = time.perf_counter()
        assert C.main([str(folder), "--seeds", "2"]) == 2
        assert time.perf_counter() - start_time < 5   # refused before Ray starts
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sweep.confirm: error:")
    assert f"is in use by another sweep (pid {holder.pid} on " in err


def test_a_crashed_holders_lock_does_not_block_a_confirm_which_then_holds_it(tmp_path, capsys,
                                                                              monkeypatch):
    folder = saved_sweep(tmp_path)
    holder = hold_in_another_process(folder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    held = []

    def fake_confirm(s, data_sets, plan, **kw):
        with pytest.raises(SweepBusy):            # a second sweep or confirm is refused now
            SweepLock(folder).acquire()
        held.append(json.loads((folder / ".lock").read_text())["pid"])
        raise P.ConfirmError("stopped here by the test")

    monkeypatch.setattr(C, "confirm", fake_confirm)
    monkeypatch.setattr("sweep.confirm.connect", lambda cluster: None)
    monkeypatch.setattr("sweep.confirm.load_or_fail", lambda space: {})
    assert C.main([str(folder), "--seeds", "2"]) == 2
    assert "stopped here by the test" in capsys.readouterr().err
    import os

    assert held == [os.getpid()]
    with SweepLock(folder):                        # released when the confirm ended
        pass


def test_round_folders_and_labels_are_read_under_a_uri_storage_too(tmp_path):
    """The confirm rounds under a file:// (or s3://) --storage are read back as local ones are."""
    from types import SimpleNamespace

    from sweep.confirm_recovery import _labels, round_folders

    for name in ("s-confirm-20261201-2", "s-confirm-20261201-1", "s-other", "t-confirm-1"):
        (tmp_path / name).mkdir()
    trial = tmp_path / "s-confirm-20261201-1" / "abc"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({"cell": "augment=none", "replicate": 2,
                                                   "cfg": {}}))
    for storage in (str(tmp_path), f"file://{tmp_path}"):
        folders = round_folders(SimpleNamespace(storage_path=storage, name="s"))
        assert folders == [str(tmp_path / "s-confirm-20261201-1"), str(tmp_path / "s-confirm-20261201-2")]
        assert _labels(f"{storage}/s-confirm-20261201-1") == {"abc": ("augment=none", 2, "")}
