"""sweep.run end to end: the CLI, faults (retry, persistent error, divergence), Ctrl-C + --resume,
the data set shared through the object store. Real Ray, real fkd_core.train on tiny synthetic data.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from fkd_core import metrics as M
from fkd_core.config import TrialConfig, config_fields
from sweep import results as R
from sweep.run import SMOKE, local_settings, load_data, main, run_sweep
from sweep.spaces import from_dict

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def local_cluster(tmp_path: Path, cpus: int) -> str:
    path = tmp_path / "local.yaml"
    path.write_text(f"kind: local\nnum_cpus: {cpus}\ncpus_per_trial: 1\ngpus_per_trial: 0\n"
                    f"results_dir: {tmp_path / 'results'}\n")
    return str(path)


def tiny_space(tmp_path: Path, seeds: int, max_epochs: int) -> str:
    """`seeds` identical small_cnn trials (a grid with no axes), to exercise the plumbing."""
    path = tmp_path / "tiny.yaml"
    path.write_text(f"grid: true\nseeds: {seeds}\nmax_epochs: {max_epochs}\nasha: null\n"
                    "fixed: {backbone: small_cnn, synth_n: 200, patience: 100}\naxes: {}\n")
    return str(path)


def study_trials(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}").trials


# --- command line errors (no Ray started) ---------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--space", "nope"], "unknown space 'nope'"),
    (["--cluster", "missing.yaml"], "missing.yaml: no such cluster file"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    # --smoke-test fills in what was not given, never an explicit 0 (issue 13, item 8)
    (["--smoke-test", "--num-samples", "0"], "--num-samples must be >= 1, got 0"),
    (["--smoke-test", "--max-epochs", "0"], "--max-epochs must be >= 1, got 0"),
    (["--smoke-test", "--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--max-epochs", "x"], "invalid int value"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--resume"], "--resume needs --name"),
    (["--data", "/no/such.csv"], "--data /no/such.csv: no such file"),
    (["--space", "rigidity", "--data", str(ROOT / "pyproject.toml")], "only the synthetic faces"),
    # a plan that starves a cell x arm is refused before the search (issue 21, item 6)
    (["--seeds", "5"], "16 trials cannot give each of the 4 cell x arm combinations x 5 seeds a trial: "
                       "that needs 20"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("sweep.run: error:")


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--space", "--data", "--name", "--num-samples", "--max-epochs", "--seeds",
                   "--cpus-per-trial", "--gpus-per-trial", "--storage", "--resume", "--smoke-test",
                   "--results-dir", "--confirm", "--margin", "--until-decided", "--max-seeds"):
        assert option in text


# --- the CLI end to end ----------------------------------------------------------------------

@pytest.mark.slow
def test_smoke_test_cli_writes_every_result(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sweep.run", "--cluster", local_cluster(tmp_path, 2), "--smoke-test",
         "--name", "smoke"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert seconds < 120, f"smoke test took {seconds:.0f} s"
    out = proc.stdout
    assert "Verdicts: none (search only" in out and "trials.parquet" in out
    assert "Search, best full-budget trial per cell x arm" in out
    assert "Trial status" not in out and "Traceback" not in out      # compact, no Tune tables

    folder = tmp_path / "results" / "smoke"
    trials = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert len(trials) == SMOKE["num_samples"] and set(trials.status) <= set(R.STATUSES)
    assert len(epochs) == trials.epochs.sum() and set(epochs.trial_id) == set(trials.trial_id)
    assert trials.data_synthetic.all() and trials.data_source.str.startswith("synthetic").all()
    assert set(trials["shape"]) == {"none", "cgd"} and (trials.max_epochs == 2).all()
    for _, row in trials.iterrows():
        TrialConfig(**{k: row[k] for k in config_fields()})
        if row.best_checkpoint:
            assert (folder / row.best_checkpoint).stat().st_size > 0
    states = {t.state for t in study_trials(folder, "smoke")}
    assert states == {optuna.trial.TrialState.COMPLETE}
    assert (folder / "sweep.json").is_file()


@pytest.mark.slow
def test_ctrl_c_then_resume_finishes_without_rerunning(tmp_path):
    cmd = [sys.executable, "-m", "sweep.run", "--cluster", local_cluster(tmp_path, 1),
           "--space", tiny_space(tmp_path, seeds=4, max_epochs=4), "--name", "rs"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:                  # one trial at a time: Ctrl-C after the first
        if line.startswith("[  1/4]"):
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 1        # unfinished: says how to resume
    folder = tmp_path / "results" / "rs"
    first = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    assert 1 <= len(first) < 4

    done = subprocess.run(cmd[:5] + ["--name", "rs", "--resume"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    final = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    assert len(final) == 4 and sorted(final.seed) == [0, 1, 2, 3]
    kept = final.loc[first.index]
    assert (kept.wall_seconds == first.wall_seconds).all()     # finished trials not re-run
    assert len(study_trials(folder, "rs")) == 4                # nor re-proposed to Optuna
    epochs = pd.read_parquet(folder / "epochs.parquet")
    per_trial = {t: sorted(e) for t, e in epochs.groupby("trial_id").epoch}
    assert list(per_trial.values()) == [[1, 2, 3, 4]] * 4     # every epoch once, none lost


# --- faults, in this process ---------------------------------------------------------------

def _row(epoch: int, rmse: float, diverged: bool = False) -> dict:
    return {M.EPOCH: epoch, M.TRAIN_LOSS: rmse, M.VAL_LOSS: rmse, M.VAL_RMSE: rmse,
            M.VAL_NME: rmse / 40, M.VAL_SHAPE: rmse, M.LR: 1e-3, M.EPOCH_SECONDS: 0.1,
            M.IMAGES_PER_S: 100.0, M.DIVERGED: diverged}


def faulty_train(cfg, data, report, *, checkpoint_dir=None, resume_from=None):
    """fkd_core.train with a fault chosen by the seed: 0 none, 1 crashes once after epoch 2,
    2 crashes every time, 3 diverges (as train reports it: inf + diverged, then returns)."""
    from fkd_core.train import train

    if cfg.seed == 2:
        raise RuntimeError("persistent failure")
    if cfg.seed == 3:
        report(_row(1, 5.0))
        report(_row(2, math.inf, diverged=True))
        return None

    def flaky(row):
        report(row)
        if cfg.seed == 1 and resume_from is None and row[M.EPOCH] == 2:
            raise RuntimeError("transient failure")

    return train(cfg, data, flaky, checkpoint_dir=checkpoint_dir, resume_from=resume_from)


@pytest.mark.slow
def test_retry_error_and_divergence_are_recorded(ray_local, tmp_path):
    space = from_dict({"grid": True, "seeds": 4, "max_epochs": 3, "asha": None, "axes": {},
                       "fixed": {"backbone": "small_cnn", "synth_n": 200, "patience": 100}})
    settings = local_settings(space, str(tmp_path), "faults", max_concurrent=2)
    outcome = run_sweep(settings, load_data(space), train_fn=faulty_train, log=None)

    t = outcome.trials.set_index("seed")
    assert list(t.sort_index().status) == ["completed", "completed", "error", "diverged"]
    assert t.loc[2, "error"] == "RuntimeError: persistent failure"
    assert t.loc[1, "epochs"] == 3 and t.loc[1, "best_epoch"] is not None
    assert t.loc[3, "best_val_rmse_px"] == 5.0 and t.loc[3, "final_val_rmse_px"] == math.inf
    epochs = pd.read_parquet(tmp_path / "faults" / "epochs.parquet")
    retried = epochs[epochs.trial_id == t.loc[1, "trial_id"]]
    assert sorted(retried.epoch) == [1, 2, 3]          # epoch 3 resumed, none repeated
    states = {tr.user_attrs["seed"]: tr.state for tr in study_trials(tmp_path / "faults", "faults")}
    S = optuna.trial.TrialState
    assert states == {0: S.COMPLETE, 1: S.COMPLETE, 2: S.FAIL, 3: S.COMPLETE}   # no zombie


@pytest.mark.slow
def test_data_reaches_trials_from_shared_memory_without_a_copy(ray_local):
    import ray

    from sweep.trainable import share, unshare

    data = load_data(from_dict({"fixed": {"synth_n": 50}, "axes": {}}))
    original = next(iter(data.values()))
    ref = ray.put(share(original))
    got = unshare(ray.get(ref))
    # Ray maps numpy buffers from the object store read-only; the tensors view that memory.
    raw = ray.get(ref).images
    assert isinstance(raw, np.ndarray) and not raw.flags.writeable
    assert got.images.data_ptr() == raw.__array_interface__["data"][0]
    assert got.images.equal(original.images) and len(got) == 50 and got.schema == original.schema


def test_smoke_test_keeps_explicit_values_and_fills_in_the_rest():
    from sweep.run import _space, build_parser

    space = _space(build_parser().parse_args(["--smoke-test", "--seeds", "2", "--num-samples", "8"]))
    assert (space.seeds, space.trials, space.max_epochs) == (2, 8, SMOKE["max_epochs"])


@pytest.mark.parametrize("text,message", [
    ("axes: {backbone: [small_cnn, nope]}\n", "axes.backbone[1]: 'nope' is not one of"),
    ("fixed: !!python/object:os.system {}\n", "tag !!python/object:os.system is not allowed"),
    ("fixed: {lr: abc}\n", "fixed.lr: expected a number, got 'abc'"),
])
def test_bad_space_file_is_one_line_before_ray_starts(tmp_path, capsys, text, message):
    space = tmp_path / "bad.yaml"
    space.write_text(text)
    start = time.perf_counter()
    assert main(["--space", str(space), "--results-dir", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - start < 5 and not (tmp_path / "r").exists()   # no Ray, no folder
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{space}: " in err and message in err


@pytest.mark.slow
def test_data_without_any_keypoint_is_one_line_before_trials_start(tmp_path):
    from fkd_core.synth import main as synth_main

    synth_main(["--n", "40", "--seed", "1", "--out", str(tmp_path / "s.csv")])
    frame = pd.read_csv(tmp_path / "s.csv")
    frame[frame.columns[:-1]] = np.nan                  # every keypoint missing
    frame.to_csv(tmp_path / "empty.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "sweep.run", "--cluster", local_cluster(tmp_path, 1),
                           "--smoke-test", "--data", str(tmp_path / "empty.csv"), "--name", "e"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if "WARNING" not in l]
    assert lines == [f"sweep.run: error: {tmp_path / 'empty.csv'}: no keypoint is present in any "
                     "of its 40 rows"]
