"""Run a sweep: Ray Tune schedules fkd_core.train trials, Optuna proposes them, ASHA stops the
weak ones early, and every trial and epoch lands in Parquet.

    python -m sweep.run --cluster clusters/local.yaml             # `quick` on synthetic faces
    python -m sweep.run --cluster clusters/local.yaml --space rigidity --name synthetic-rigidity
    python -m sweep.run --cluster clusters/local.yaml --data ../shared/data/fkd-yt15/training.csv.gz \
        --name fkd-yt15-quick --seeds 3 --max-epochs 30
    python -m sweep.run --cluster clusters/local.yaml --name fkd-yt15-quick --resume
    python -m sweep.run --smoke-test --mlflow sqlite:///runs/mlflow.db   # + one MLflow run per trial
    python -m sweep.run --cluster clusters/local.yaml --confirm 3 --until-decided --max-seeds 12

A sweep is a search (ASHA + TPE on validation; ASHA ranks a trial only within its cell x arm) and,
with --confirm N or a space that sets `confirm`, a confirm phase (sweep.confirm): the best config
of each cell x arm retrained on N paired replicates at full budget, scored on the test split, and
one verdict per cell (sweep.verdicts).

Writes <results-dir>/<name>/: trials.parquet, epochs.parquet, optuna.db (optuna-dashboard
sqlite:///.../optuna.db), sweep.json (how it was run), checkpoints/<trial>/best.pt, ray/ (Tune's
experiment: trial checkpoints and state for --resume). Read them with python -m sweep.analyze.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sweep import commands, tracking
from sweep.cluster import ClusterError, ClusterSpec, connect, load_cluster, per_trial_resources
from sweep.confirm import ConfirmError, Interrupted, add_plan_options, plan_of
from sweep.lock import FolderError, SweepBusy, SweepLock, check_name, check_writable, lock_dir
from sweep.spaces import ARM_KEYS, Sampler, Space, SpaceError, data_key, describe, from_dict, get_space
from sweep.store import DamagedResults, compact, read_results

if TYPE_CHECKING:
    from sweep.guard import WriteGuard
    from sweep.trainable import TrainFn


class _Lazy:
    """A module imported on first attribute use: `--help` should not wait seconds for torch/ray.

    A plain import at that moment (not importlib's LazyLoader, whose half-made module in
    sys.modules broke a later `import sweep.results` elsewhere in the same process)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


M = _Lazy("fkd_core.metrics")   # metric names (imports torch)
R = _Lazy("sweep.results")      # Parquet results (imports ray.tune)

SWEEP_FILE = "sweep.json"
OPTUNA_FILE = "optuna.db"
# A trial that raises is retried this many times from its last checkpoint, then recorded as error.
MAX_FAILURES = 2
# Smoke test: the whole pipeline in well under 2 minutes on 2 cores.
SMOKE = {"fixed": {"backbone": "small_cnn", "synth_n": 300}, "max_epochs": 2, "seeds": 1,
         "num_samples": 4}
_SYNTH_FIELDS = ("synth_n", "synth_seed", "synth_pose")


class UsageError(ValueError):
    """A problem with the command line or its files; reported as one line, exit status 2."""


@dataclass(frozen=True)
class Settings:
    """Everything a sweep needs once the command line and cluster file are resolved."""

    name: str
    space: Space
    results_uri: str
    """<results-dir>/<name>: a local folder or an s3:// / gs:// URI."""
    storage_path: str
    """Ray Tune's storage_path; the experiment lives in <storage_path>/<name>."""
    resources: dict[str, float]
    max_concurrent: int | None = None
    resume: bool = False
    tpe_seed: int = 0
    sampler: str = "tpe"
    """"tpe" (seeded TPE, the default) or "random" (the full-budget reference of bench/asha.py)."""
    command: list[str] = field(default_factory=list)

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def optuna_path(self) -> Path:
        """SQLite file of the study: in the results folder, or a local cache for URIs."""
        if "://" in self.results_uri:
            return Path.home() / ".cache" / "fkd-sweep" / self.name / OPTUNA_FILE
        return Path(self.results_uri) / OPTUNA_FILE


@dataclass
class Outcome:
    settings: Settings
    trials: Any                   # pandas DataFrame of trials.parquet
    fit_seconds: float
    paths: dict[str, str]
    epochs: Any = None            # pandas DataFrame of epochs.parquet


# --- command line ------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every usage error here
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sweep.run", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", default="clusters/local.yaml",
                   help="clusters/local.yaml (start Ray here), or a `ray up` file / KubeRay "
                        "manifest (join the running cluster). Default: %(default)s")
    p.add_argument("--space", default="quick",
                   help="named space (quick, study, full, reproduce, rigidity) or a YAML file of "
                        "the same form (sweep/spaces/). Default: %(default)s")
    p.add_argument("--data", help="Kaggle training CSV (.csv/.csv.gz/.zip), image-folder CSV, or "
                                  "'synthetic' (the embedded faces). Default: the space's data")
    p.add_argument("--name", help="experiment name = results folder name. Default: "
                                  "<space>-<data>-<date-time>; required with --resume")
    p.add_argument("--num-samples", type=int, help="trials to run. Default: one per grid cell "
                   "and seed; beyond that TPE proposes the rest")
    p.add_argument("--max-epochs", type=int, help="epoch budget of every trial (and ASHA's max_t)")
    p.add_argument("--seeds", type=int, help="training seeds per cell (paired across losses)")
    p.add_argument("--cpus-per-trial", type=float, help="cores per trial (cluster file default)")
    p.add_argument("--gpus-per-trial", type=float, help="GPU per trial; 0.25 packs four trials "
                   "on one GPU, each capped at its share of the GPU's memory. Default: cluster file")
    p.add_argument("--storage", help="Ray Tune storage for trial checkpoints and experiment "
                   "state: a path, s3://bucket/prefix or gs://bucket/prefix (needed on "
                   "multi-node clusters). Default: <results-dir>/<name>/ray")
    p.add_argument("--results-dir", help="where <name>/ goes: a path or an s3:// / gs:// URI. "
                   "Default: the cluster file's results_dir, or --storage when it is a URI")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name after "
                   "Ctrl-C or a crash: finished trials are kept, running ones resume from their "
                   "checkpoints; the space and options come from its sweep.json")
    p.add_argument("--smoke-test", action="store_true", help="4 tiny trials of 2 epochs "
                   "(small_cnn, 300 synthetic faces): checks the whole pipeline in < 2 minutes")
    p.add_argument("--tpe-seed", type=int, default=0, help="seed of Optuna's TPE sampler")
    p.add_argument("--mlflow", metavar="URI", help="also log every trial (config, per-epoch "
                   "metrics; one run per trial) to MLflow: sqlite:///runs/mlflow.db or "
                   "http://HOST:PORT (needs the mlflow extra)")
    p.add_argument("--confirm", type=int, metavar="N", help="after the search, retrain each "
                   "cell x arm's best config on N paired replicates and give verdicts on the test "
                   "split. Default: the space's `confirm` (quick: 3, until decided, up to 9)")
    add_plan_options(p)
    return p


def resolve(args: argparse.Namespace, cluster: ClusterSpec, cluster_gpus: float,
            cluster_cpus: float) -> Settings:
    """Settings from the parsed command line, the cluster file and the cluster's size."""
    if args.resume:
        return _resumed(args, cluster)
    space = _space(args)
    name = args.name or f"{space.name}-{_data_tag(space)}-{time.strftime('%Y%m%d-%H%M%S')}"
    results_uri = f"{_results_root(args, cluster).rstrip('/')}/{name}"
    if _exists(f"{results_uri}/{R.TRIALS_FILE}") or _exists(f"{results_uri}/{SWEEP_FILE}"):
        raise UsageError(f"{results_uri} already holds a sweep: add --resume to continue it, "
                         "or pick another --name")
    return Settings(name=name, space=space, results_uri=results_uri,
                    storage_path=_storage(args, cluster, results_uri),
                    resources=_resources(args, cluster, cluster_gpus),
                    max_concurrent=_concurrency(args, cluster, cluster_gpus, cluster_cpus),
                    tpe_seed=args.tpe_seed, command=sys.argv[:])


def _space(args: argparse.Namespace) -> Space:
    space = get_space(args.space)
    fixed: dict[str, Any] = {}
    num_samples, max_epochs, seeds = args.num_samples, args.max_epochs, args.seeds
    if args.smoke_test:
        fixed.update(SMOKE["fixed"])
        # `is None`, not `or`: an explicit 0 is the user's value (and rejected below).
        num_samples = SMOKE["num_samples"] if num_samples is None else num_samples
        max_epochs = SMOKE["max_epochs"] if max_epochs is None else max_epochs
        seeds = SMOKE["seeds"] if seeds is None else seeds
    if args.data:
        fixed["data"] = args.data
    for opt, value in (("--num-samples", num_samples), ("--max-epochs", max_epochs),
                       ("--seeds", seeds)):
        if value is not None and value < 1:
            raise UsageError(f"{opt} must be >= 1, got {value}")
    space = space.with_overrides(fixed=fixed, seeds=seeds, max_epochs=max_epochs,
                                 num_samples=num_samples)
    _check_data(space)
    return space


def _check_data(space: Space) -> None:
    """A space that varies the synthetic generator means nothing on a real data set."""
    data = space.fixed.get("data", "synthetic")
    varied = sorted({f for axis in space.axes.values() for fields in axis.values()
                     for f in fields if f in _SYNTH_FIELDS})
    if data != "synthetic" and varied:
        raise UsageError(f"space {space.name} varies {varied}, which only the synthetic faces "
                         f"have; drop --data {data}")
    if data != "synthetic" and "://" not in data and not Path(data).exists():
        raise UsageError(f"--data {data}: no such file")


def _data_tag(space: Space) -> str:
    data = space.fixed.get("data", "synthetic")
    return "synthetic" if data == "synthetic" else Path(data).name.split(".")[0]


def _storage(args: argparse.Namespace, cluster: ClusterSpec, results_uri: str) -> str:
    if args.storage:
        return args.storage if "://" in args.storage else os.path.abspath(args.storage)
    if cluster.multi_node:
        raise UsageError(f"{cluster.path} is a multi-node cluster: pass --storage s3://... or "
                         "gs://... (or an NFS path) so that every node reaches the checkpoints")
    return f"{results_uri}/ray" if "://" in results_uri else os.path.abspath(f"{results_uri}/ray")


def _resources(args: argparse.Namespace, cluster: ClusterSpec, cluster_gpus: float
               ) -> dict[str, float]:
    res = per_trial_resources(cluster, cluster_gpus)
    if args.cpus_per_trial is not None:
        res["cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        res["gpu"] = args.gpus_per_trial
    if res["cpu"] <= 0 or res["gpu"] < 0:
        raise UsageError(f"need --cpus-per-trial > 0 and --gpus-per-trial >= 0, got {res}")
    if res["gpu"] > 0 and cluster_gpus == 0 and not cluster.multi_node:
        raise UsageError(f"--gpus-per-trial {res['gpu']:g}: Ray sees no GPU on this machine")
    return res


def _concurrency(args: argparse.Namespace, cluster: ClusterSpec, cluster_gpus: float,
                 cluster_cpus: float) -> int | None:
    """Trials at once: what the machine holds (local) or the cluster file promises (cloud).

    Tune lets a custom searcher have one pending trial unless told this, which would keep an
    autoscaling cluster from growing more than a node at a time.
    """
    if cluster.multi_node:
        return cluster.max_trials_at_once
    res = _resources(args, cluster, cluster_gpus)
    slots = int(cluster_cpus // res["cpu"])
    if res["gpu"] > 0:
        slots = min(slots, int(cluster_gpus // res["gpu"]))
    return max(slots, 1)


def _check_resume_args(args: argparse.Namespace) -> None:
    if not args.name:
        raise UsageError("--resume needs --name (the folder under the results directory)")
    clashing = [o for o, v in (("--space", args.space != "quick"), ("--data", args.data),
                               ("--num-samples", args.num_samples), ("--seeds", args.seeds),
                               ("--max-epochs", args.max_epochs),
                               ("--smoke-test", args.smoke_test)) if v]
    if clashing:
        raise UsageError(f"--resume continues the sweep as saved in its {SWEEP_FILE}; "
                         f"drop {' '.join(clashing)}")


def _resumed(args: argparse.Namespace, cluster: ClusterSpec) -> Settings:
    _check_resume_args(args)
    uri = f"{_results_root(args, cluster).rstrip('/')}/{args.name}"
    if not _exists(f"{uri}/{SWEEP_FILE}"):
        raise UsageError(f"{uri}/{SWEEP_FILE} not found: nothing to resume under --name {args.name}")
    return saved_settings(uri, resume=True)


def _results_root(args: argparse.Namespace, cluster: ClusterSpec) -> str:
    """--results-dir, else a URI --storage, else the cluster file's results_dir."""
    return args.results_dir or (args.storage if args.storage and "://" in args.storage
                                else cluster.results_dir)


def local_settings(space: Space, results_dir: str, name: str, *, max_concurrent: int,
                   cpus_per_trial: float = 1.0, sampler: str = "tpe", tpe_seed: int = 0) -> Settings:
    """Settings of a sweep on this machine, for benchmarks and tests that skip the CLI."""
    uri = os.path.abspath(f"{results_dir}/{name}")
    return Settings(name=name, space=space, results_uri=uri, storage_path=f"{uri}/ray",
                    resources={"cpu": cpus_per_trial, "gpu": 0.0},
                    max_concurrent=max_concurrent, sampler=sampler, tpe_seed=tpe_seed)


# --- files next to the Parquet results ------------------------------------------------------

def _exists(uri: str) -> bool:
    """uri is a file; UsageError naming it when its filesystem cannot be reached at all."""
    import pyarrow.fs as pafs

    try:
        fs, path = R.filesystem(uri)
        return fs.get_file_info(path).type == pafs.FileType.File
    except (OSError, ValueError) as err:   # pyarrow: unknown scheme, no credentials, no route
        raise UsageError(f"{uri}: cannot reach it ({_first_line(err)})") from None


def _read_json(uri: str) -> dict[str, Any] | None:
    """A JSON object from a file or URI; None when absent; UsageError naming it when broken."""
    if not _exists(uri):
        return None
    fs, path = R.filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            payload = json.loads(f.read().decode())
    except (OSError, ValueError) as err:   # ValueError: bad JSON or bytes that are not UTF-8
        raise UsageError(f"{uri}: not readable as JSON ({_first_line(err)})") from None
    if not isinstance(payload, dict):
        raise UsageError(f"{uri}: expected a JSON object, got {type(payload).__name__}")
    return payload


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# What a sweep.json must hold for --resume and sweep.confirm, with its JSON type; then the keys
# it may lack (written before they existed), with their defaults.
_SAVED_KEYS = {"name": str, "space": dict, "storage_path": str, "resources": dict,
               "max_concurrent": (int, type(None))}
_SAVED_OPTIONAL = {"tpe_seed": (int, 0), "sampler": (str, "tpe")}


def read_saved(uri: str) -> dict[str, Any] | None:
    """<uri>/sweep.json with the keys that rebuild its Settings checked; None when absent."""
    file = f"{uri}/{SWEEP_FILE}"
    saved = _read_json(file)
    if saved is None:
        return None
    saved = {**{k: default for k, (_, default) in _SAVED_OPTIONAL.items()}, **saved}
    kinds = {**_SAVED_KEYS, **{k: kind for k, (kind, _) in _SAVED_OPTIONAL.items()}}
    for key, kind in kinds.items():
        if key not in saved:
            raise UsageError(f"{file}: key {key!r} is missing; it is not a sweep.json that "
                             "sweep.run wrote")
        if not isinstance(saved[key], kind) or isinstance(saved[key], bool):
            raise UsageError(f"{file}: key {key!r} must be a JSON "
                             f"{_json_type(kind)}, got {saved[key]!r:.60}")
    return saved


def _json_type(kind: Any) -> str:
    names = {str: "string", dict: "object", int: "integer", type(None): "null"}
    return " or ".join(names[k] for k in (kind if isinstance(kind, tuple) else (kind,)))


def saved_settings(uri: str, *, resume: bool) -> Settings:
    """The Settings a sweep.json records, for --resume and sweep.confirm (UsageError when bad)."""
    saved = read_saved(uri)
    if saved is None:
        raise UsageError(f"{uri}/{SWEEP_FILE} not found: not a sweep's results folder")
    return Settings(name=saved["name"], space=from_dict(saved["space"], origin=f"{uri}/{SWEEP_FILE}"),
                    results_uri=uri, storage_path=saved["storage_path"],
                    resources=saved["resources"], max_concurrent=saved["max_concurrent"],
                    resume=resume, tpe_seed=saved["tpe_seed"], sampler=saved["sampler"],
                    command=sys.argv[:])


def _write_json(uri: str, payload: dict[str, Any]) -> None:
    fs, path = R.filesystem(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(payload, indent=2, default=str).encode())


def save_settings(s: Settings, data_sets: dict[str, R.DataInfo]) -> None:
    _write_json(f"{s.results_uri}/{SWEEP_FILE}", {
        "name": s.name, "space": s.space.to_dict(), "storage_path": s.storage_path,
        "resources": s.resources, "max_concurrent": s.max_concurrent, "tpe_seed": s.tpe_seed,
        "sampler": s.sampler,
        "command": s.command, "data": {k: vars(v) for k, v in data_sets.items()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z")})


# --- the sweep ---------------------------------------------------------------------------

def load_data(space: Space) -> dict[str, Any]:
    """Each distinct data set of the space, loaded once, keyed by data_key."""
    from fkd_core.data import load_for_config

    return {data_key(cfg): load_for_config(cfg) for cfg in space.data_configs()}


def data_info(data_sets: dict[str, Any]) -> dict[str, R.DataInfo]:
    return {k: R.DataInfo(d.source, d.content_hash, bool(d.synthetic)) for k, d in data_sets.items()}


def run_sweep(s: Settings, data_sets: dict[str, Any], *, train_fn: TrainFn | None = None,
              callbacks: Sequence[Any] = (), log: Callable[[str], None] | None = print) -> Outcome:
    """Run (or resume) the sweep on the Ray cluster this process is connected to."""
    from ray import tune

    from sweep.trainable import share, train_trial

    info = data_info(data_sets)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, datasets={k: share(d) for k, d in data_sets.items()},
                             train_fn=train_fn),
        {"cpu": s.resources["cpu"], "gpu": s.resources["gpu"]})
    if s.resume:
        # Rebuilt from Optuna, Parquet, JSON and checkpoint.pt, in a folder or a bucket alike;
        # never Tune.restore, which unpickles tuner.pkl from storage (sweep.recovery).
        from sweep.recovery import resume_sweep

        grid, fit_seconds = resume_sweep(
            s, trainable, info,
            lambda st: _new_tuner(st, trainable, info, callbacks, log, total=s.space.trials), log)
    else:
        save_settings(s, info)
        tuner, guard = _new_tuner(s, trainable, info, callbacks, log)
        start = time.perf_counter()
        grid = tuner.fit()
        fit_seconds = time.perf_counter() - start
        guard.raise_if_failed()
    trials = _finalize(s, info, grid)
    epochs = read_results(s.results_uri, R.EPOCHS_FILE)
    return Outcome(s, trials, fit_seconds, _paths(s), epochs.to_pandas() if epochs is not None else None)


def _new_tuner(s: Settings, trainable: Any, info: dict[str, R.DataInfo],
               callbacks: Sequence[Any], log: Callable[[str], None] | None,
               total: int | None = None) -> tuple[Any, WriteGuard]:
    """A sweep's Tuner and the guard of its results writer (call guard.raise_if_failed() after
    fit). total: the trials of the whole sweep, when this Tuner runs the rest of a resumed one."""
    from ray import tune

    from sweep.guard import WriteGuard
    from sweep.progress import Progress
    from sweep.scheduler import scheduler_for

    space = s.space
    total = space.trials if total is None else total
    guard = WriteGuard(R.ResultsWriter(s.results_uri, s.name, info, log=log, total=total))
    for callback in callbacks:   # counts go on from the trials the resumed sweep already has
        if isinstance(callback, Progress):
            callback.total, callback.before = total, total - space.trials
    scheduler = scheduler_for(space)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(s), scheduler=scheduler, num_samples=space.trials,
            metric=M.OBJECTIVE, mode="min", max_concurrent_trials=s.max_concurrent,
            # A trial's worker process (Python, torch, CUDA context) serves the next trial too:
            # a new one costs seconds per trial, more than a whole CPU epoch of small_cnn.
            reuse_actors=True,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=s.name, storage_path=s.storage_path, verbose=0, stop=_diverged,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            # One checkpoint per trial: the latest, which holds best.pt too.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[guard, *callbacks]))
    return tuner, guard


def _searcher(s: Settings) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    s.optuna_path.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent trials: the constant liar keeps TPE from proposing what is already running.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=s.tpe_seed, constant_liar=True) \
            if s.sampler == "tpe" else optuna.samplers.RandomSampler(seed=s.tpe_seed)
    return OptunaSearch(
        Sampler(s.space), metric=M.OBJECTIVE, mode="min", sampler=sampler, study_name=s.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{s.optuna_path.resolve()}"),
        # Every trial of a grid enqueued with its axes (Space.points: the combinations in turn), so
        # TPE samples only the search parameters and every arm of a cell gets the same number of
        # trials; a resumed study still holds the ones not yet run (enqueued at its start).
        points_to_evaluate=None if s.resume else s.space.points() or None)


def _trial_name(trial: Any) -> str:
    return trial.trial_id


def _diverged(trial_id: str, result: dict[str, Any]) -> bool:
    """Stopper: a diverged epoch ends the trial at once (train stops too; this makes sure)."""
    return bool(result.get(M.DIVERGED))


def _finalize(s: Settings, info: dict[str, R.DataInfo], grid: Any) -> Any:
    """Add every row Tune kept (also from before a Tune restore), then compact the parts."""
    writer = R.ResultsWriter(s.results_uri, s.name, info, log=None)
    writer.setup()
    for result in grid:
        frame = result.metrics_dataframe
        if frame is not None and M.EPOCH in frame and result.metrics:
            writer.amend(result.metrics["trial_id"], frame.to_dict("records"))
    writer.write_unfinished()
    compact(s.results_uri)
    if "://" in s.results_uri and s.optuna_path.exists():
        import pyarrow.fs as pafs

        R.copy_file(pafs.LocalFileSystem(), str(s.optuna_path), f"{s.results_uri}/{OPTUNA_FILE}")
    table = read_results(s.results_uri, R.TRIALS_FILE)
    return table.to_pandas() if table is not None else None


def _paths(s: Settings) -> dict[str, str]:
    u = s.results_uri
    return {"trials": f"{u}/{R.TRIALS_FILE}", "epochs": f"{u}/{R.EPOCHS_FILE}",
            "optuna": f"{u}/{OPTUNA_FILE}", "settings": f"{u}/{SWEEP_FILE}",
            "checkpoints": f"{u}/checkpoints/", "ray": s.experiment_path}


# --- the end-of-sweep summary --------------------------------------------------------------

def summary(outcome: Outcome, verdicts: str | None = None) -> str:
    """The confirm verdicts on test first, then the search (full-budget trials only), then paths."""
    t = outcome.trials
    search = t[t["phase"] == "search"] if "phase" in t else t
    lines = [verdicts if verdicts else
             f"\nVerdicts: none (search only; add --confirm N, or run "
             f"{commands.module('sweep.confirm', outcome.settings.results_uri, '--seeds', 'N')})"]
    lines += [f"\nSearch: {len(search)} trials in {outcome.fit_seconds:.0f} s: "
              + ", ".join(f"{n} {st}" for st, n in search["status"].value_counts().items())]
    lines += ["Search, best full-budget trial per cell x arm (validation; the optimiser's pick, "
              "not evidence):", _search_table(search, list(outcome.settings.space.search))]
    lines += ["\nWrote:"] + [f"  {k:<12}{v}" for k, v in outcome.paths.items()]
    study = f"sqlite:///{outcome.settings.optuna_path.resolve()}"
    dashboard = commands.line(commands.script("optuna-dashboard"), study)
    if not commands.installed("optuna-dashboard"):   # an optional extra: say how to get it
        dashboard = f"{commands.module('pip', 'install', 'optuna-dashboard')} && {dashboard}"
    lines += [f"\nNext: {commands.module('sweep.analyze', outcome.settings.results_uri)}",
              f"Study in a browser: {dashboard}"]
    return "\n".join(lines)


def _search_table(search: Any, searched: list[str]) -> str:
    from sweep.analyze import full_budget, prepare

    full = full_budget(prepare(search, searched))
    if full.empty:
        return "  (no search trial ran the full budget)"
    col = f"best_{M.VAL_RMSE}"
    rows = full.loc[full.groupby(["cell", "arm"], sort=False)[col].idxmin().to_numpy()]
    rows = rows.rename(columns={col: "val RMSE px", "objective_label": "arm label"})
    return rows[["cell", "arm label", "alpha", "lr", "val RMSE px", "best_epoch", "epochs",
                 "trial_id"]].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def confirm_after_search(s: Settings, data_sets: dict[str, Any], plan: Any) -> str:
    """Run the confirm phase on the search just finished; return the verdict table's text."""
    from sweep.confirm import confirm
    from sweep.report import verdict_console

    result = confirm(s, data_sets, plan)
    return verdict_console(result, plan.rule(), s.results_uri)


def header(s: Settings, data_sets: dict[str, Any]) -> str:
    data = "; ".join(f"{d.source}{' (synthetic)' if d.synthetic else ''}, {len(d)} faces"
                     for d in data_sets.values())
    res = f"{s.resources['cpu']:g} CPU" + (f" + {s.resources['gpu']:g} GPU" if s.resources["gpu"] else "")
    verb = "Resuming" if s.resume else "Sweep"
    return (f"{verb} {s.name}: {s.space.trials} trials, {res} each, up to "
            f"{s.max_concurrent or 'as many as fit'} at once\n  space {describe(s.space)}\n"
            f"  data {data}\n  results {s.results_uri}")


def quiet_environment() -> None:
    """Ray/Tune settings for compact output; call before ray.init (main and benchmarks do)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Our one line per trial instead of Tune's tables and tracebacks (errors reach the results
    # table and the progress line).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # num_to_keep=1 snapshots the experiment at each checkpoint on purpose; don't warn about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray warns at every start that it turned token authentication on (its default); the
    # setting stays as Ray chose it, only the line goes, so that a user sees our lines only.
    import logging

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # On Ctrl-C, SIGTERM or a failed write Tune advises `Tuner.restore(...)`, which unpickles
    # from storage; sweep.run prints its own --resume line instead.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    lock = None
    try:
        args = build_parser().parse_args(argv)
        quiet_environment()   # after parsing: --help and usage errors need no optuna import
        cluster = load_cluster(args.cluster)
        # Bad options, spaces, sweep.json files and data fail here, before Ray starts.
        space = _resumed(args, cluster).space if args.resume else _space(args)
        tracking.check(args.mlflow)
        plan_of(args, None if args.resume else space)
        # The sweep owns its folder from here on: a second run of the same name stops here.
        lock = _own_folder(args, cluster, space)
        data_sets = _load_or_fail(space)
    except (UsageError, ClusterError, SpaceError, ConfirmError, tracking.TrackingError, FolderError,
            SweepBusy) as err:
        if lock is not None:
            lock.release()   # and the folder with it, when the lock file is all it holds
        print(f"sweep.run: error: {err}", file=sys.stderr)
        return 2
    import ray

    try:
        connect(cluster)
        _sigterm_as_ctrl_c()   # after ray.init, which installs a handler of its own
        return _main(args, cluster, data_sets)
    except (UsageError, SpaceError, ConfirmError, DamagedResults) as err:
        print(f"sweep.run: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM outside Tune's fit (which handles its own)
        print(f"sweep.run: interrupted; continue with {_resume_command(args, cluster)}",
              file=sys.stderr)
        return 130
    except OSError as err:   # ENOSPC, EROFS, ... at a write: what was written stays; resume later
        print(f"sweep.run: error: {_os_error(err)}; the results written so far are intact: "
              f"fix that and continue with {_resume_command(args, cluster)}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
        lock.release()


def _own_folder(args: argparse.Namespace, cluster: ClusterSpec, space: Space | None) -> SweepLock:
    """Check --name and --results-dir, then lock <results-dir>/<name> (sweep.lock)."""
    if args.name is None and space is not None:   # the default name, fixed now for the lock
        args.name = f"{space.name}-{_data_tag(space)}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_name(args.name)
    root = _results_root(args, cluster)
    check_writable(root)
    folder = f"{root.rstrip('/')}/{args.name}"
    if args.resume and "://" not in folder and not Path(folder, SWEEP_FILE).is_file():
        raise UsageError(f"{folder}/{SWEEP_FILE} not found: nothing to resume under --name {args.name}")
    lock = SweepLock(lock_dir(folder, args.name))
    lock.acquire()
    return lock


def _main(args: argparse.Namespace, cluster: ClusterSpec, data_sets: dict[str, Any]) -> int:
    import ray

    resources = ray.cluster_resources()
    s = resolve(args, cluster, resources.get("GPU", 0.0), resources.get("CPU", 1.0))
    s, plan = confirm_plan(args, s)
    from sweep.progress import Progress

    trackers = tracking.callbacks(args.mlflow, s.name)
    print(header(s, data_sets), flush=True)
    progress = Progress(s.space.trials)
    outcome = run_sweep(s, data_sets, callbacks=[progress, *trackers], log=progress.print)
    failed = failures(outcome.trials)
    if outcome.trials is None or outcome.trials.empty:
        print("No trial finished.", file=sys.stderr)
        return 1
    missing = s.space.trials - len(outcome.trials[outcome.trials["phase"] == "search"])
    if missing > 0:   # interrupted (Ctrl-C, SIGTERM) or the driver lost the cluster
        print(summary(outcome))
        print(f"\n{missing} trials did not finish: continue with {_resume_command(args, cluster)}")
        return 1
    try:
        verdicts = confirm_after_search(s, data_sets, plan) if plan and not failed else None
    except Interrupted as err:   # Ctrl-C or a lost cluster during the confirm phase
        print(summary(outcome))
        print(f"\n{err}: continue with {_resume_command(args, cluster)}")
        return 1
    print(summary(outcome, verdicts))
    if failed:
        skipped = "; so no confirm phase ran" if plan else ""
        print(f"sweep.run: {failed}{skipped}", file=sys.stderr)
        return 1
    return 0


def failures(trials: Any) -> str | None:
    """'N of M trials failed (...)' with the first error's line, or None when none failed."""
    if trials is None or trials.empty:
        return None
    errors = trials[trials["status"] == "error"]
    if errors.empty:
        return None
    first = next((e for e in errors["error"] if e), "no message recorded")
    return (f"{len(errors)} of {len(trials)} trials failed; the first error: "
            f"{first.splitlines()[0]}")


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM (kill, a scheduler's preemption) goes where Ctrl-C goes: during Tune's fit, its
    handler stops the trials and keeps their state, so the sweep ends resumable; elsewhere a
    KeyboardInterrupt. ray.init's own handler calls sys.exit inside Tune's loop instead, which
    aborts the driver (exit 134) with a stack dump."""
    def forward(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, forward)


def _resume_command(args: argparse.Namespace, cluster: ClusterSpec) -> str:
    extra = [o for opt, v in (("--results-dir", args.results_dir), ("--storage", args.storage))
             if v for o in (opt, v)]
    return commands.module("sweep.run", "--cluster", str(cluster.path), "--name", args.name,
                           *extra, "--resume")


def _os_error(err: OSError) -> str:
    """'<file>: No space left on device' for a failed write, as the OS says it."""
    where = err.filename or "a results file"
    return f"{where}: {err.strerror or _first_line(err)}"


def confirm_plan(args: argparse.Namespace, s: Settings) -> tuple[Settings, Any]:
    """The confirm plan of this run. A new sweep keeps it as its space's `confirm` in sweep.json
    (none: no confirm), so that --resume, which takes no options, confirms as the first run
    asked; a resumed sweep whose confirm phase began continues that phase's own plan."""
    import dataclasses

    from sweep.confirm import saved_plan

    if s.resume:
        return s, (args.confirm is None and saved_plan(s.results_uri)) or plan_of(args, s.space)
    plan = plan_of(args, s.space)
    keep = {k: v for k, v in plan.to_dict().items()
            if k in ("replicates", "margin", "until_decided", "max_seeds")} if plan else None
    if keep is not None:   # the arms' settings (sweep.spaces.ARM_KEYS) go on with the plan
        keep |= {k: v for k, v in (s.space.confirm or {}).items() if k in ARM_KEYS}
    return dataclasses.replace(s, space=dataclasses.replace(s.space, confirm=keep)), plan


def _load_or_fail(space: Space) -> dict[str, Any]:
    from fkd_core.data import DataError

    try:
        data_sets = load_data(space)
    except (DataError, FileNotFoundError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    for d in data_sets.values():   # every trial would fail on it: say so once, before Tune starts
        if not d.keypoints.isfinite().all(dim=-1).any():
            raise UsageError(f"{d.source}: no keypoint is present in any of its {len(d)} rows")
    _check_splits(space, data_sets)
    return data_sets


def _check_splits(space: Space, data_sets: dict[str, Any]) -> None:
    """Every split the space's trials would draw, drawn once here: a data set whose split cannot
    be formed (one person only, too few rows, no keypoint on one side) is one line before Ray
    starts, not an error in every trial. The split does not depend on the trial seed."""
    from fkd_core.config import TrialConfig
    from fkd_core.data import DataError
    from fkd_core.train import split_rows

    for picks in space.combos():
        cfg = TrialConfig(**space.fields(picks, seed=0))
        try:
            split_rows(data_sets[data_key(cfg)], cfg)
        except (DataError, ValueError) as err:
            raise UsageError(_first_line(err)) from None


if __name__ == "__main__":
    sys.exit(main())
