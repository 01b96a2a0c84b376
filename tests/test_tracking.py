"""sweep.tracking: --mlflow logs every trial of a real smoke sweep, through Ray's own
MLflowLoggerCallback, to a real local tracking store and to a real `mlflow server`."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from sweep import tracking
from sweep.run import SMOKE, main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def test_bad_mlflow_uri_is_one_line_before_ray_starts(capsys):
    assert main(["--smoke-test", "--mlflow", "runs/mlruns"]) == 2
    err = capsys.readouterr().err
    assert err == ("sweep.run: error: --mlflow runs/mlruns: expected a tracking URI such as "
                   "sqlite:///runs/mlflow.db or http://127.0.0.1:5000\n")
    assert tracking.callbacks(None, "x") == []


def smoke_sweep(tmp_path: Path, uri: str, name: str) -> subprocess.CompletedProcess:
    cluster = tmp_path / "local.yaml"
    cluster.write_text(f"kind: local\nnum_cpus: 2\ncpus_per_trial: 1\ngpus_per_trial: 0\n"
                       f"results_dir: {tmp_path / 'results'}\n")
    proc = subprocess.run([sys.executable, "-m", "sweep.run", "--cluster", str(cluster), "--smoke-test",
                           "--name", name, "--mlflow", uri], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def assert_every_trial_logged(uri: str, folder: Path, name: str) -> None:
    """One MLflow run per row of trials.parquet, named by trial_id, with the trial's config as
    params and every epoch of epochs.parquet as metrics at step = epoch."""
    from mlflow.tracking import MlflowClient

    trials = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert len(trials) == SMOKE["num_samples"] and sorted(runs) == sorted(trials.trial_id)
    for _, t in trials.iterrows():
        run = runs[t.trial_id]
        assert run.info.status == "FINISHED" and run.data.tags["fkd_sweep"] == name
        params = run.data.params
        assert params["cfg/backbone"] == t.backbone == "small_cnn"
        assert params["cfg/synth_n"] == "300" and params["cfg/augment"] == t.augment
        assert params["cfg/shape"] == t["shape"]
        if t["shape"] != "none":
            assert float(params["cfg/alpha"]) == pytest.approx(t.alpha)
        history = client.get_metric_history(run.info.run_id, "val_rmse_px")
        mine = epochs[epochs.trial_id == t.trial_id].sort_values("epoch")
        assert [m.step for m in history] == mine.epoch.tolist() == list(range(1, t.epochs + 1))
        assert [m.value for m in history] == pytest.approx(mine.val_rmse_px.tolist())


@pytest.mark.slow
def test_mlflow_sqlite_store_holds_every_trial(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = smoke_sweep(tmp_path, uri, "tracked")
    assert "alembic" not in proc.stderr and "INFO" not in proc.stderr   # the store's setup is quiet
    assert_every_trial_logged(uri, tmp_path / "results" / "tracked", "tracked")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_on_localhost_holds_every_trial(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)   # its own group: stop all
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer within 90 s"
            time.sleep(0.5)
        smoke_sweep(tmp_path, uri, "served")
        assert_every_trial_logged(uri, tmp_path / "results" / "served", "served")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
