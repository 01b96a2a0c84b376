"""clusters/*.yaml: ray up files pass Ray's own validator offline; KubeRay and local files hold
what sweep.run and Kubernetes need."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sweep.cluster import ClusterError, load_cluster, per_trial_resources

CLUSTERS = Path(__file__).resolve().parents[1] / "clusters"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_ray_up_files_pass_rays_validator(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTERS / name).read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    # The facts that bite: the default max_workers (2) caps the cluster; the default
    # setup_commands install a nightly Ray.
    assert raw["max_workers"] >= 4
    assert any('ray[default,tune]==2.60.0' in c for c in prepared["setup_commands"])
    assert any("pip install" in c and "fkd-sweep" in c for c in prepared["setup_commands"])
    assert "." in raw["file_mounts"].values()
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"].get("GPU", 0) == 0
    workers = [t for n, t in types.items() if n != raw["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers)
    text = (CLUSTERS / name).read_text().lower()
    assert "secret" not in text and "aws_access_key" not in text and "private_key" not in text


def test_aws_workers_are_spot_and_gcp_workers_preemptible():
    aws = yaml.safe_load((CLUSTERS / "aws.yaml").read_text())["available_node_types"]
    gcp = yaml.safe_load((CLUSTERS / "gcp.yaml").read_text())["available_node_types"]
    assert aws["gpu_spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert gcp["gpu_preemptible"]["node_config"]["scheduling"]["preemptible"] is True


def test_an_unknown_top_level_key_is_rejected_by_rays_validator():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTERS / "aws.yaml").read_text())
    raw["num_samples"] = 8
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


def test_kuberay_manifest_has_a_gpu_worker_group_and_the_sweep_entrypoint():
    doc = yaml.safe_load((CLUSTERS / "kuberay.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayJob", "RayCluster")
    cluster = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert head["template"]["spec"]["containers"][0]["image"]
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if int(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                         .get("nvidia.com/gpu", 0)) >= 1]
    assert gpu_groups
    for group in gpu_groups:
        assert group["groupName"] and group["maxReplicas"] >= group["minReplicas"] >= 0
        assert group["template"]["spec"]["containers"][0]["image"]
    if doc["kind"] == "RayJob":
        assert "sweep.run" in doc["spec"]["entrypoint"] and "--storage" in doc["spec"]["entrypoint"]


def test_local_file_is_read_with_loopback_dashboard():
    spec = load_cluster(str(CLUSTERS / "local.yaml"))
    assert spec.kind == "local" and not spec.multi_node
    assert spec.dashboard_host == "127.0.0.1" and spec.results_dir == "results"
    assert per_trial_resources(spec, cluster_gpus=0) == {"cpu": 1.0, "gpu": 0.0}
    assert per_trial_resources(spec, cluster_gpus=1)["gpu"] == 0.25


@pytest.mark.parametrize("name,kind", [("aws.yaml", "ray_up"), ("gcp.yaml", "ray_up"),
                                       ("kuberay.yaml", "kuberay")])
def test_cloud_files_join_a_running_cluster_with_packed_gpus(name, kind):
    spec = load_cluster(str(CLUSTERS / name))
    assert spec.kind == kind and spec.multi_node
    assert spec.max_trials_at_once == 32          # 8 GPU workers x 4 trials each
    # No GPU worker is up when the sweep starts; the file's GPU worker types decide.
    assert per_trial_resources(spec, cluster_gpus=0)["gpu"] == 0.25


def test_bad_local_file_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kind: local\ncpus: 4\n")
    with pytest.raises(ClusterError, match=r"unknown keys \['cpus'\]"):
        load_cluster(str(path))
    with pytest.raises(ClusterError, match="no such cluster file"):
        load_cluster(str(tmp_path / "missing.yaml"))


# --- one line and exit 2 for every broken cluster file (issue 21, item 8) --------------------

@pytest.mark.parametrize("text,message", [
    ("kind: local\nnum_cpus: [1,\n", ", line 3 column 1: not a plain YAML cluster file (expected the node content, but found '<stream end>')"),
    ("kind: local\n\tnum_cpus: 2\n", ", line 2 column 1: not a plain YAML cluster file (found character"),
    ("kind: local\nnum_cpus: four\n", ": num_cpus must be an integer >= 1, got 'four'"),
    ("kind: local\nnum_cpus: 2.5\n", ": num_cpus must be an integer >= 1, got 2.5"),
    ("kind: local\ncpus_per_trial: x\n", ": cpus_per_trial must be a number > 0, got 'x'"),
    ("kind: local\ncpus_per_trial: 0\n", ": cpus_per_trial must be a number > 0, got 0"),
    ("kind: local\ngpus_per_trial: -1\n", ": gpus_per_trial must be 'auto' or a number >= 0, got -1"),
    ("kind: local\ninclude_dashboard: 'yes'\n", ": include_dashboard must be true or false, got 'yes'"),
    ("kind: local\nresults_dir: 3\n", ": results_dir must be a non-empty string, got 3"),
    ("kind: local\nobject_store_mb: true\n", ": object_store_mb must be an integer >= 1, got True"),
    ("provider: {type: aws}\navailable_node_types: {gpu: {max_workers: many}}\n",
     ": cannot read the worker types' sizes (max_workers, resources, maxReplicas, GPU limits): "
     "ValueError invalid literal for int() with base 10: 'many'"),
    ("- just\n- a list\n", ": expected a YAML mapping"),
])
def test_broken_cluster_file_is_one_line_and_exit_2_before_ray(tmp_path, capsys, text, message):
    from sweep.run import main

    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["--cluster", str(path), "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sweep.run: error: {path}{message}"), err


def test_a_python_tag_is_refused_and_runs_nothing(tmp_path, capsys):
    from sweep.run import main

    marker = tmp_path / "marker"
    path = tmp_path / "c.yaml"
    path.write_text(f"kind: local\nnum_cpus: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["--cluster", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"sweep.run: error: {path}, line 2 column 11: not a plain YAML cluster file "
                   "(could not determine a constructor for the tag "
                   "'tag:yaml.org,2002:python/object/apply:os.system')\n")
    assert not marker.exists()


def test_every_local_key_has_a_rule():
    from sweep.cluster import _LOCAL_KEYS, _RULES

    assert set(_RULES) == _LOCAL_KEYS


# --- a one-machine cluster listens on loopback only (issue 13, item 9) -------------------------

LISTENERS = r'''
import os, sys, time
from sweep.cluster import connect, load_cluster
import ray

connect(load_cluster(sys.argv[1]))

@ray.remote
def pid():
    return os.getpid()

ray.get([pid.remote() for _ in range(2)])    # trial-like workers are up
time.sleep(1)

def parent(p):
    try:
        return int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0

def ours(p):
    while p > 1:
        if p == os.getpid():
            return True
        p = parent(p)
    return False

inodes = {}
for p in filter(str.isdigit, os.listdir("/proc")):
    if not ours(int(p)):
        continue
    try:
        for fd in os.listdir(f"/proc/{p}/fd"):
            link = os.readlink(f"/proc/{p}/fd/{fd}")
            if link.startswith("socket:["):
                inodes[link[8:-1]] = p
    except OSError:
        pass
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:            # LISTEN, one of our processes
            print(f[1].rsplit(":", 1)[0], open(f"/proc/{inodes[f[9]]}/comm").read().strip())
ray.shutdown()
'''
# 127.0.0.1 as /proc/net/tcp writes it, and as an IPv4-mapped IPv6 address in tcp6.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.mark.slow
def test_local_cluster_listens_on_loopback_only(tmp_path):
    import subprocess
    import sys

    cluster = tmp_path / "local.yaml"
    raw = yaml.safe_load((CLUSTERS / "local.yaml").read_text())
    cluster.write_text(yaml.safe_dump({**raw, "num_cpus": 1, "gpus_per_trial": 0}))
    proc = subprocess.run([sys.executable, "-c", LISTENERS, str(cluster)], capture_output=True,
                          text=True, timeout=120, cwd=CLUSTERS.parent,
                          env={**__import__("os").environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    listeners = [line.split(" ", 1) for line in proc.stdout.splitlines()]
    names = {name for _, name in listeners}
    assert {"gcs_server", "raylet"} <= names, listeners      # Ray's own servers were seen
    assert all(addr in LOOPBACK for addr, _ in listeners), listeners


def test_local_file_keeps_ray_on_loopback_and_cloud_files_do_not():
    assert load_cluster(str(CLUSTERS / "local.yaml")).loopback_only is True
    assert not load_cluster(str(CLUSTERS / "aws.yaml")).loopback_only
