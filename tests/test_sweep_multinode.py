"""A real two-node Ray cluster on this machine (ray.cluster_utils.Cluster): a sweep spreads over
both nodes, the worker node is killed mid-sweep, and the sweep still records every trial (the
trials that ran there are retried on the head from their last checkpoint)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from ray.tune import Callback

from fkd_core import metrics as M
from sweep.datasets import load_data
from sweep.search import run_sweep
from sweep.settings import local_settings
from sweep.spaces import from_dict

pytestmark = pytest.mark.slow

# Notice a dead node within ~2 s instead of Ray's default ~15 s.
FAST_HEALTH_CHECK = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                     "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_pid(int(entry)) == pid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


class NodeKiller(Callback):
    """Tune callback: SIGKILLs every process of the worker node once a trial running there has
    reported its second epoch. Holds only ints, since Tune pickles callbacks."""

    def __init__(self, worker_raylet: int, worker_pids: list[int], marker: str):
        self.worker_raylet, self.worker_pids, self.marker = worker_raylet, worker_pids, marker

    def on_trial_result(self, iteration, trials, trial, result, **info):
        on_worker = parent_pid(result["pid"]) == self.worker_raylet
        if on_worker and result[M.EPOCH] >= 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text(trial.trial_id)   # the trial that was running there
            for pid in children(self.worker_raylet) + self.worker_pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_sweep_survives_losing_the_worker_node(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "_system_config": FAST_HEALTH_CHECK})
    worker = cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        assert ray.cluster_resources()["CPU"] == 3
        raylet = worker.all_processes["raylet"][0].process.pid
        pids = [p.process.pid for procs in worker.all_processes.values() for p in procs]
        marker = tmp_path / "killed"
        killer = NodeKiller(raylet, pids, str(marker))

        space = from_dict({"grid": True, "seeds": 5, "max_epochs": 4, "asha": None, "axes": {},
                           "fixed": {"backbone": "small_cnn", "synth_n": 200, "patience": 100}})
        # Local storage is shared here because both nodes are this machine; a real cluster
        # needs s3://, gs:// or NFS (sweep.run refuses a multi-node cluster without --storage).
        settings = local_settings(space, str(tmp_path), "two-nodes", max_concurrent=3)
        outcome = run_sweep(settings, load_data(space), callbacks=[killer], log=None)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert marker.exists(), "no trial ran on the worker node"
    trials = outcome.trials.set_index("trial_id")
    assert len(trials) == 5 and (trials.status == "completed").all()
    assert sorted(trials.seed) == [0, 1, 2, 3, 4]
    moved = trials.loc[marker.read_text()]
    assert moved.epochs == 4                      # finished on the head after the node died
    epochs = pd.read_parquet(tmp_path / "two-nodes" / "epochs.parquet")
    assert sorted(epochs[epochs.trial_id == moved.name].epoch) == [1, 2, 3, 4]
