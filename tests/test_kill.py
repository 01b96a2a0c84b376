"""A driver killed by SIGKILL at varied moments, then --resume: nothing lost, nothing run twice.

A real sweep (sweep.run CLI, real Ray, small_cnn on 200 synthetic faces): 4 trials of 4 epochs,
2 at once. The driver is killed three times (mid-trial, with Tune's experiment state left empty
as a kill during its in-place write leaves it; at a seeded random moment of a resume; right
after a trial was recorded, then that trial's part of trials.parquet cut in half), and a second driver of the same name is refused while one runs.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tests.test_sweep_run import ENV, ROOT, local_cluster, study_trials, tiny_space

SEEDS, EPOCHS = 4, 4


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**ENV, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 150) -> bool:
    """SIGKILL the driver once ready() holds; False when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the kill point never came")


@pytest.mark.slow
def test_sigkill_at_varied_moments_then_resume_loses_and_repeats_nothing(tmp_path):
    cluster = local_cluster(tmp_path, 2)
    base = [sys.executable, "-m", "sweep.run", "--cluster", cluster]
    first = base + ["--space", tiny_space(tmp_path, seeds=SEEDS, max_epochs=EPOCHS), "--name", "kk"]
    resume = base + ["--name", "kk", "--resume"]
    folder = tmp_path / "results" / "kk"
    experiment = folder / "ray" / "kk"
    rng = random.Random(13)
    kills = 0

    # 1. Mid-trial: a trial has reported epoch 2 (its checkpoint_000001 exists).
    log = tmp_path / "run1.log"
    proc = start(first, log)
    kills += kill_when(proc, lambda: any(experiment.glob("*/checkpoint_000001")))
    for state in experiment.glob("experiment_state-*.json"):
        state.write_text("")      # what a kill during Tune's in-place rewrite leaves behind

    # 2. A seeded random moment after the resume has planned its work; meanwhile a second
    #    driver of the same name is refused (the folder is locked).
    log = tmp_path / "run2.log"
    proc = start(resume, log)
    began = []

    def planned_then_waited() -> bool:
        if not began and "resume:" in log.read_text():
            began.append(time.monotonic())
            second = subprocess.run(resume, cwd=ROOT, env=ENV, capture_output=True, text=True,
                                    timeout=60)
            assert second.returncode == 2, second.stderr
            assert "is in use by another sweep (pid" in second.stderr
            assert second.stderr.count("\n") == 1
        return bool(began) and time.monotonic() - began[0] > rng.uniform(0.5, 4.0)

    kills += kill_when(proc, planned_then_waited)

    # 3. Right after a trial was recorded (its parts just written, sweep.store).
    log = tmp_path / "run3.log"
    proc = start(resume, log)
    kills += kill_when(proc, lambda: "[  1/" in log.read_text())
    assert kills >= 2, "the sweep outran the kill points"
    # ... and its trials part is then found cut short: the resume rebuilds it from the rest.
    part = sorted((folder / "parts" / "trials").glob("*.parquet"))[-1]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])

    done = subprocess.run(resume, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert f"{part}: damaged Parquet file" in done.stdout
    assert len(list(part.parent.glob(f"_{part.name}.damaged-*"))) == 1

    trials = pd.read_parquet(folder / "trials.parquet")
    assert trials.trial_id.is_unique and len(trials) == SEEDS          # every trial exactly once
    assert sorted(trials.seed) == list(range(SEEDS))
    assert set(trials.status) == {"completed"} and (trials.epochs == EPOCHS).all()
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert {t: sorted(e) for t, e in epochs.groupby("trial_id").epoch} == \
        {t: list(range(1, EPOCHS + 1)) for t in trials.trial_id}
    states = [t.state for t in study_trials(folder, "kk")]
    assert states == [optuna.trial.TrialState.COMPLETE] * SEEDS       # none proposed twice
    # Reruns start from the last checkpoint: each kill costs at most the epoch each of the 2
    # running trials had in flight, where restarting from scratch would redo up to 3 each.
    trained = sum(1 for f in experiment.glob("*/result.json")
                  for line in f.read_text().splitlines() if line.strip().startswith("{"))
    assert trained <= SEEDS * EPOCHS + 2 * kills, trained
