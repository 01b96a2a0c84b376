"""Cluster files: where a sweep runs and how it joins Ray.

Three kinds of file are accepted by ``--cluster``:

- ``clusters/local.yaml`` (this project's small schema, ``kind: local``): start Ray in this
  process with the cores, GPUs and dashboard binding it names.
- a ``ray up`` file (``clusters/aws.yaml``, ``clusters/gcp.yaml``; recognised by ``provider``):
  the sweep runs on the head node of a cluster started with ``ray up`` and joins it with
  ``ray.init(address="auto")``.
- a KubeRay manifest (``clusters/kuberay.yaml``; ``apiVersion: ray.io/...``): the same, from the
  RayJob's driver.

    >>> spec = load_cluster("clusters/local.yaml")
    >>> spec.kind, spec.dashboard_host
    ('local', '127.0.0.1')
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

Kind = Literal["local", "ray_up", "kuberay"]

# A GPU per trial this large packs four 96x96 trials on a card; Ray does not isolate their memory.
PACKED_GPU_FRACTION = 0.25


class ClusterError(ValueError):
    """A cluster file that cannot be used; the message is one line for users."""


@dataclass(frozen=True)
class ClusterSpec:
    path: str
    kind: Kind
    num_cpus: int | None = None
    """Cores Ray may use on a local machine (None: all)."""
    num_gpus: int | None = None
    """GPUs Ray may use on a local machine (None: all it detects)."""
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | str = "auto"
    """A fraction packs several trials per GPU; "auto" = PACKED_GPU_FRACTION when GPUs exist."""
    results_dir: str = "results"
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = False
    object_store_mb: int | None = None
    loopback_only: bool = False
    """Local only: every Ray process (GCS, raylet, workers, agents) listens on 127.0.0.1."""
    max_trials_at_once: int | None = None
    """What the cluster file says it can hold at once (ray up / KubeRay), None for local."""

    @property
    def multi_node(self) -> bool:
        """Trials may run on other machines, so checkpoints need shared storage."""
        return self.kind != "local"


_LOCAL_KEYS = {f.name for f in dataclasses.fields(ClusterSpec)} - {"path", "max_trials_at_once"}
"""The keys of clusters/local.yaml; _RULES below says what each takes."""


def load_cluster(path: str) -> ClusterSpec:
    """Read a cluster file of any accepted kind (see the module docstring)."""
    file = Path(path)
    if not file.is_file():
        raise ClusterError(f"{path}: no such cluster file")
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ClusterError(f"{path}: expected a YAML mapping")
    try:
        if "provider" in raw:
            return ClusterSpec(path=path, kind="ray_up", gpus_per_trial="auto",
                               max_trials_at_once=_ray_up_capacity(raw))
        if str(raw.get("apiVersion", "")).startswith("ray.io/"):
            return ClusterSpec(path=path, kind="kuberay", gpus_per_trial="auto",
                               max_trials_at_once=_kuberay_capacity(raw))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ClusterError(f"{path}: cannot read the worker types' sizes (max_workers, "
                           f"resources, maxReplicas, GPU limits): {type(err).__name__} {err}") from None
    return _local(path, raw)


def _read_yaml(path: str) -> Any:
    """Plain YAML only: safe_load refuses tags such as !!python/object, which would run code."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError) as err:
        raise ClusterError(f"{path}: cannot read it ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ClusterError(f"{path}{where}: not a plain YAML cluster file ({problem})") from None


def _local(path: str, raw: dict[str, Any]) -> ClusterSpec:
    if raw.get("kind", "local") != "local":
        raise ClusterError(f"{path}: kind must be 'local' (or give a `ray up` file or a "
                           "KubeRay manifest)")
    unknown = sorted(set(raw) - _LOCAL_KEYS)
    if unknown:
        raise ClusterError(f"{path}: unknown keys {unknown}; valid: {sorted(_LOCAL_KEYS)}")
    values = {k: v for k, v in raw.items() if v is not None}
    for key, value in values.items():
        _check_value(path, key, value)
    return ClusterSpec(path=path, **values)


def _number(v: Any, kinds: tuple[type, ...] = (int, float)) -> bool:
    return isinstance(v, kinds) and not isinstance(v, bool)


# What each local key takes (checked here so that a wrong type is one line, not an assert
# inside ray.init), and how the message says it.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: isinstance(v, str), "a string"),
    "num_cpus": (lambda v: _number(v, (int,)) and v >= 1, "an integer >= 1"),
    "num_gpus": (lambda v: _number(v, (int,)) and v >= 0, "an integer >= 0"),
    "cpus_per_trial": (lambda v: _number(v) and v > 0, "a number > 0"),
    "gpus_per_trial": (lambda v: v == "auto" or (_number(v) and v >= 0), "'auto' or a number >= 0"),
    "results_dir": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "dashboard_host": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "include_dashboard": (lambda v: isinstance(v, bool), "true or false"),
    "object_store_mb": (lambda v: _number(v, (int,)) and v >= 1, "an integer >= 1"),
    "loopback_only": (lambda v: isinstance(v, bool), "true or false"),
}


def _check_value(path: str, key: str, value: Any) -> None:
    ok, expected = _RULES[key]
    if not ok(value):
        raise ClusterError(f"{path}: {key} must be {expected}, got {value!r}")


def _ray_up_capacity(raw: dict[str, Any]) -> int | None:
    """Trials at once when every worker type is scaled to its max, one GPU-trial slot each."""
    slots = 0
    for node in (raw.get("available_node_types") or {}).values():
        gpus = (node.get("resources") or {}).get("GPU", 0)
        slots += int(node.get("max_workers", 0)) * int(gpus / PACKED_GPU_FRACTION)
    return slots or None


def _kuberay_capacity(raw: dict[str, Any]) -> int | None:
    spec = raw.get("spec", {})
    cluster = spec.get("rayClusterSpec", spec)
    slots = 0
    for group in cluster.get("workerGroupSpecs", []):
        for container in group["template"]["spec"]["containers"]:
            gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            slots += int(group.get("maxReplicas", 0)) * int(gpus / PACKED_GPU_FRACTION)
    return slots or None


def connect(spec: ClusterSpec) -> None:
    """Start Ray on this machine (local) or join the running cluster (ray up, KubeRay)."""
    import logging

    import ray

    if spec.multi_node:
        ray.init(address="auto", logging_level=logging.WARNING, log_to_driver=False)
        return
    store = spec.object_store_mb * 2**20 if spec.object_store_mb else None
    if spec.loopback_only:
        _keep_on_loopback()
    ray.init(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, object_store_memory=store,
             include_dashboard=spec.include_dashboard, dashboard_host=spec.dashboard_host,
             # Trials print nothing the sweep needs; their errors reach the results table.
             logging_level=logging.WARNING, log_to_driver=False)


def _keep_on_loopback() -> None:
    """Make Ray treat this machine as a non-cluster, whose node IP is 127.0.0.1.

    Ray 2.60 binds its servers to the node IP, and ray.init turns a node IP of 127.0.0.1 into
    the machine's external address; only with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 does it keep
    the loopback address (its one meaning). The variable reaches the processes Ray starts; the
    driver read it at import, so its copy of the constant is set too.
    """
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def per_trial_resources(spec: ClusterSpec, cluster_gpus: float) -> dict[str, float]:
    """Ray resources of one trial; "auto" GPUs pack trials when the cluster has GPUs."""
    gpus = spec.gpus_per_trial
    if gpus == "auto":
        # A cloud cluster starts with no GPU worker up: trust the file's GPU worker types.
        has_gpus = cluster_gpus > 0 or (spec.multi_node and spec.max_trials_at_once)
        gpus = PACKED_GPU_FRACTION if has_gpus else 0.0
    return {"cpu": float(spec.cpus_per_trial), "gpu": float(gpus)}
