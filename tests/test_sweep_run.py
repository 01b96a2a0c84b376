"""sweep.run end to end: the CLI, faults (retry, persistent error, divergence), Ctrl-C + --resume,
the data set shared through the object store. Real Ray, real fkd_core.train on tiny synthetic data.
"""
from __future__ import annotations

import json
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
from sweep.datasets import load_data
from sweep.run import SMOKE, main
from sweep.search import run_sweep
from sweep.settings import local_settings
from sweep.spaces import from_dict
from sweep.store import read_results

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
    (["--name", "x", "--resume", "--results-dir", "bogus://b/p"],
     "bogus://b/p/x/sweep.json: cannot reach it (Unrecognized filesystem type in URI"),
    (["--name", "x", "--resume", "--storage", "file:///nonexistent/store"],
     "file:///nonexistent/store/x/sweep.json not found: nothing to resume under --name x"),
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


@pytest.mark.parametrize("argv,root", [
    ([], "CLUSTER"),                                              # the cluster file's results_dir
    (["--storage", "s3://bucket/sweeps"], "s3://bucket/sweeps"),  # a URI --storage holds them too
    (["--storage", "scratch/ray"], "CLUSTER"),                    # a local --storage does not
    (["--storage", "s3://bucket/sweeps", "--results-dir", "out"], "out"),
])
def test_target_fixes_the_results_root_and_name_once_and_leaves_args_alone(tmp_path, argv, root):
    from sweep.cluster import load_cluster
    from sweep.run import _space, build_parser, target

    cluster = load_cluster(local_cluster(tmp_path, 2))
    args = build_parser().parse_args(["--smoke-test", *argv])
    where = target(args, cluster, _space(args))
    assert args.name is None                                      # issue 22: args not mutated
    assert where.root == (str(tmp_path / "results") if root == "CLUSTER" else root)
    assert where.name.startswith("quick-synthetic-")
    assert where.folder == f"{where.root}/{where.name}"
    named = build_parser().parse_args(["--name", "mine", *argv])
    assert target(named, cluster, None).folder == f"{where.root}/mine"


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


# --- no code from storage (issue 21, item 1) ---------------------------------------------------

PLANT = ("import os, pickle, sys\n"
         "class P:\n"
         "    def __reduce__(self):\n"
         "        return (os.system, ('touch ' + sys.argv[2],))\n"
         "open(sys.argv[1], 'wb').write(pickle.dumps(P()))\n")


@pytest.mark.slow
def test_resume_from_a_uri_storage_never_unpickles_a_planted_tuner_pkl(tmp_path):
    store = f"file://{tmp_path / 'store'}"
    env = {**ENV, "HOME": str(tmp_path)}       # the URI sweep's optuna.db cache goes here
    cmd = [sys.executable, "-m", "sweep.run", "--cluster", local_cluster(tmp_path, 1),
           "--space", tiny_space(tmp_path, seeds=3, max_epochs=3), "--name", "uri",
           "--storage", store]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("[  1/3]"):
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 1
    folder, marker = tmp_path / "store" / "uri", tmp_path / "marker"
    for planted in ("tuner.pkl", "searcher-state-planted.pkl"):
        subprocess.run([sys.executable, "-c", PLANT, str(folder / planted), str(marker)], check=True)
    done = subprocess.run([*cmd[:5], "--name", "uri", "--storage", store, "--resume"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    assert not marker.exists()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    final = pd.read_parquet(folder / "trials.parquet")
    assert len(final) == 3 and sorted(final.seed) == [0, 1, 2]
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert sorted(epochs.groupby("trial_id").epoch.count()) == [3, 3, 3]


# --- data checks before Ray, failed trials, broken sweep.json (issue 21, items 5 and 8) ----------

def one_person_csv(tmp_path: Path) -> Path:
    """40 synthetic faces in the Kaggle layout whose groups sidecar names one person for all."""
    from fkd_core.synth import main as synth_main

    csv = tmp_path / "one.csv"
    synth_main(["--n", "40", "--seed", "1", "--out", str(csv)])
    pd.DataFrame({"row": range(40), "group": "Same_Person"}).to_csv(tmp_path / "one.groups.csv",
                                                                    index=False)
    return csv


def test_data_whose_split_cannot_be_formed_is_one_line_before_ray(tmp_path, capsys):
    csv = one_person_csv(tmp_path)
    capsys.readouterr()                                           # synth's own progress lines
    start = time.perf_counter()
    assert main(["--smoke-test", "--data", str(csv), "--name", "one",
                 "--results-dir", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - start < 30                       # no Ray, no trial
    assert capsys.readouterr().err == (
        f"sweep.run: error: {csv}: 1 groups: test_fraction=0.15 takes 1 and val_fraction=0.15 "
        "takes 1 groups, leaving 0 for training; expected at least one group in each split\n")
    assert list((tmp_path / "r").iterdir()) == []                 # and no folder of only .lock


def saved_sweep_json(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "r" / "s"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(text)
    return folder / "sweep.json"


GOOD_SAVED = {"name": "s", "space": {"fixed": {}}, "storage_path": "/x", "resources": {"cpu": 1.0},
              "max_concurrent": 1}


@pytest.mark.parametrize("text,message", [
    ('{"name": "s", "space": {', "not readable as JSON (Expecting property name enclosed in double "
                                "quotes: line 1 column 25 (char 24))"),
    ("", "not readable as JSON (Expecting value: line 1 column 1 (char 0))"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"name": "s"}', "key 'space' is missing; it is not a sweep.json that sweep.run wrote"),
    (json.dumps({**GOOD_SAVED, "resources": 4}), "key 'resources' must be a JSON object, got 4"),
    (json.dumps({**GOOD_SAVED, "max_concurrent": "2"}),
     "key 'max_concurrent' must be a JSON integer or null, got '2'"),
    (json.dumps({**GOOD_SAVED, "tpe_seed": True}), "key 'tpe_seed' must be a JSON integer, got True"),
])
def test_broken_sweep_json_under_resume_is_one_line_naming_it(tmp_path, capsys, text, message):
    path = saved_sweep_json(tmp_path, text)
    assert main(["--name", "s", "--resume", "--results-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == f"sweep.run: error: {path}: {message}\n"


def test_failures_say_how_many_and_the_first_error():
    from sweep.console import failures

    trials = pd.DataFrame({"status": ["completed", "error", "error"],
                           "error": ["", "RuntimeError: boom\nmore", "ValueError: x"]})
    assert failures(trials) == "2 of 3 trials failed; the first error: RuntimeError: boom"
    assert failures(trials[trials.status != "error"]) is None and failures(None) is None


def always_failing_train(cfg, data, report, *, checkpoint_dir=None, resume_from=None):
    raise RuntimeError(f"no luck for seed {cfg.seed}")


WITH_TRAIN_FN = ("import sys\nfrom sweep import run\nfrom tests.test_sweep_run import always_failing_train\n"
                 "real = run.run_sweep\n"
                 "run.run_sweep = lambda s, d, **kw: real(s, d, train_fn=always_failing_train, **kw)\n"
                 "sys.exit(run.main(sys.argv[1:]))\n")


@pytest.mark.slow
def test_a_sweep_whose_trials_all_failed_exits_1_saying_how_many_and_why(tmp_path):
    proc = subprocess.run([sys.executable, "-c", WITH_TRAIN_FN, "--cluster",
                           local_cluster(tmp_path, 2), "--space", tiny_space(tmp_path, 2, 2),
                           "--name", "fails"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "sweep.run: 2 of 2 trials failed; the first error: RuntimeError: no luck for seed " \
        in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# --- SIGTERM and a full or read-only disk (issue 21, item 8) ------------------------------------

@pytest.mark.slow
def test_sigterm_ends_a_sweep_as_ctrl_c_does_and_it_resumes(tmp_path):
    cmd = [sys.executable, "-m", "sweep.run", "--cluster", local_cluster(tmp_path, 1),
           "--space", tiny_space(tmp_path, seeds=3, max_epochs=2), "--name", "term"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("[  1/3]"):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 1
    text = "".join(out)
    assert "Traceback" not in text and "trials did not finish: continue with " in text, text[-3000:]
    done = subprocess.run([*cmd[:5], "--name", "term", "--resume"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    epochs = pd.read_parquet(tmp_path / "results" / "term" / "epochs.parquet")
    assert sorted(epochs.groupby("trial_id").epoch.count()) == [2, 2, 2]


FULL_DISK = ("import errno, os, sys\nimport pyarrow.parquet as pq\n"
             "real, calls, code = pq.write_table, [], getattr(errno, sys.argv[1])\n"
             "def write(table, where, *a, **k):\n"
             "    calls.append(where)\n"
             "    if len(calls) > 2:   # the first trials/epochs write lands; later ones fail\n"
             "        raise OSError(code, os.strerror(code), str(where))\n"
             "    return real(table, where, *a, **k)\n"
             "pq.write_table = write\n"
             "from sweep.run import main\nsys.exit(main(sys.argv[2:]))\n")


@pytest.mark.slow
@pytest.mark.parametrize("code,says", [("ENOSPC", "No space left on device"),
                                       ("EROFS", "Read-only file system")])
def test_a_full_or_read_only_disk_is_one_line_and_the_records_stay_intact(tmp_path, code, says):
    cluster, space = local_cluster(tmp_path, 1), tiny_space(tmp_path, seeds=2, max_epochs=2)
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, code, "--cluster", cluster,
                           "--space", space, "--name", "disk"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=240)
    lines = [l for l in proc.stderr.splitlines() if "WARNING" not in l and l.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    folder = tmp_path / "results" / "disk"
    assert len(lines) == 1 and lines[0].startswith(f"sweep.run: error: {folder}/"), lines
    assert f".parquet.tmp-" in lines[0] and f": {says}; the results written so far are intact" in lines[0]
    assert "--resume" in lines[0] and "Traceback" not in proc.stdout
    # the last good write, readable: the first trial's parts (compaction runs at the sweep's end)
    first = read_results(str(folder), "trials.parquet").to_pandas()
    done = subprocess.run([sys.executable, "-m", "sweep.run", "--cluster", cluster, "--name", "disk",
                           "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    final = pd.read_parquet(folder / "trials.parquet")
    assert len(final) == 2 and set(first.trial_id) <= set(final.trial_id)
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert sorted(epochs.groupby("trial_id").epoch.count()) == [2, 2]


def test_an_open_ended_plan_is_kept_in_the_space_that_resume_reads(tmp_path):
    """--open-ended goes into the space's confirm block (sweep.json), so a sweep resumed before
    its confirm began confirms with the sequence it was started with, not group-sequentially."""
    from sweep.plan import Plan
    from sweep.run import build_parser, confirm_plan
    from sweep.spaces import get_space

    args = build_parser().parse_args(["--confirm", "3", "--until-decided", "--max-seeds", "9",
                                      "--open-ended"])
    s = local_settings(get_space("quick"), str(tmp_path), "oe", max_concurrent=1)
    saved, plan = confirm_plan(args, s)
    assert plan.open_ended and saved.space.confirm["open_ended"] is True
    assert Plan.from_dict(saved.space.confirm) == plan
    assert from_dict(saved.space.to_dict()).confirm["open_ended"] is True   # the key is valid
