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
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from sweep import commands, tracking
from sweep.cluster import ClusterError, ClusterSpec, connect, load_cluster, per_trial_resources
from sweep.confirm import Interrupted
from sweep.console import failures, header, summary
from sweep.datasets import load_or_fail
from sweep.lock import FolderError, SweepBusy, SweepLock, check_name, check_writable, lock_dir
from sweep.plan import ConfirmError, add_plan_options, plan_of, saved_plan
from sweep.search import run_sweep
from sweep.settings import (SWEEP_FILE, Parser, Settings, UsageError, exists, first_line,
                            saved_settings)
from sweep.space_check import SpaceError
from sweep.spaces import ARM_KEYS, Space, get_space
from sweep.store import TRIALS_FILE, DamagedResults
from sweep.tuning import quiet_environment

# Smoke test: the whole pipeline in well under 2 minutes on 2 cores.
SMOKE = {"fixed": {"backbone": "small_cnn", "synth_n": 300}, "max_epochs": 2, "seeds": 1,
         "num_samples": 4}
_SYNTH_FIELDS = ("synth_n", "synth_seed", "synth_pose")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where this run's sweep lives, fixed once from the command line: <root>/<name>."""

    root: str
    """--results-dir, else a URI --storage, else the cluster file's results_dir."""
    name: str
    """--name, or <space>-<data>-<date-time> for a new sweep."""

    @property
    def folder(self) -> str:
        return f"{self.root.rstrip('/')}/{self.name}"


# --- command line ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m sweep.run", description=__doc__.split("\n\n")[0],
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


def target(args: argparse.Namespace, cluster: ClusterSpec, space: Space | None) -> Target:
    """The results root and the sweep's name: computed here, once, for the whole run (space:
    the new sweep's, for its default name; None on --resume, which needs --name)."""
    root = args.results_dir or (args.storage if args.storage and "://" in args.storage
                                else cluster.results_dir)
    if args.name or space is None:
        return Target(root, args.name)
    return Target(root, f"{space.name}-{_data_tag(space)}-{time.strftime('%Y%m%d-%H%M%S')}")


def resolve(args: argparse.Namespace, cluster: ClusterSpec, where: Target, space: Space,
            cluster_gpus: float, cluster_cpus: float) -> Settings:
    """A new sweep's Settings from the parsed command line (its space: _space(args)), the
    cluster file and the cluster's size."""
    results_uri = where.folder
    if exists(f"{results_uri}/{TRIALS_FILE}") or exists(f"{results_uri}/{SWEEP_FILE}"):
        raise UsageError(f"{results_uri} already holds a sweep: add --resume to continue it, "
                         "or pick another --name")
    return Settings(name=where.name, space=space, results_uri=results_uri,
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


def check_resume_args(args: argparse.Namespace) -> None:
    if not args.name:
        raise UsageError("--resume needs --name (the folder under the results directory)")
    clashing = [o for o, v in (("--space", args.space != "quick"), ("--data", args.data),
                               ("--num-samples", args.num_samples), ("--seeds", args.seeds),
                               ("--max-epochs", args.max_epochs),
                               ("--smoke-test", args.smoke_test)) if v]
    if clashing:
        raise UsageError(f"--resume continues the sweep as saved in its {SWEEP_FILE}; "
                         f"drop {' '.join(clashing)}")


def resumed(args: argparse.Namespace, cluster: ClusterSpec) -> tuple[Target, Settings]:
    """--resume: the sweep --name's folder and the Settings its sweep.json records."""
    check_resume_args(args)
    where = target(args, cluster, space=None)
    if not exists(f"{where.folder}/{SWEEP_FILE}"):
        raise UsageError(f"{where.folder}/{SWEEP_FILE} not found: nothing to resume under --name "
                         f"{args.name}")
    return where, saved_settings(where.folder, resume=True)


def confirm_plan(args: argparse.Namespace, s: Settings) -> tuple[Settings, Any]:
    """The confirm plan of this run. A new sweep keeps it as its space's `confirm` in sweep.json
    (none: no confirm), so that --resume, which takes no options, confirms as the first run
    asked; a resumed sweep whose confirm phase began continues that phase's own plan."""
    if s.resume:
        return s, (args.confirm is None and saved_plan(s.results_uri)) or plan_of(args, s.space)
    plan = plan_of(args, s.space)
    keep = {k: v for k, v in plan.to_dict().items()
            if k in ("replicates", "margin", "until_decided", "max_seeds", "open_ended")} if plan else None
    if keep is not None:   # the arms' settings (sweep.spaces.ARM_KEYS) go on with the plan
        keep |= {k: v for k, v in (s.space.confirm or {}).items() if k in ARM_KEYS}
    return dataclasses.replace(s, space=dataclasses.replace(s.space, confirm=keep)), plan


def confirm_after_search(s: Settings, data_sets: dict[str, Any], plan: Any) -> str:
    """Run the confirm phase on the search just finished; return the verdict table's text."""
    from sweep.confirm import confirm
    from sweep.report import verdict_console   # pandas, torch: after the search, not at --help

    result = confirm(s, data_sets, plan)
    return verdict_console(result, plan.rule(), s.results_uri)


# --- running it --------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    lock = None
    try:
        args = build_parser().parse_args(argv)
        quiet_environment()   # after parsing: --help and usage errors need no optuna import
        cluster = load_cluster(args.cluster)
        # Bad options, spaces, sweep.json files and data fail here, before Ray starts.
        if args.resume:
            where, saved = resumed(args, cluster)
            space = saved.space
        else:
            space, saved = _space(args), None
            where = target(args, cluster, space)
        tracking.check(args.mlflow)
        plan_of(args, None if args.resume else space)
        # The sweep owns its folder from here on: a second run of the same name stops here.
        lock = _own_folder(where)
        data_sets = load_or_fail(space)
    except (UsageError, ClusterError, SpaceError, ConfirmError, tracking.TrackingError, FolderError,
            SweepBusy) as err:
        if lock is not None:
            lock.release()   # and the folder with it, when the lock file is all it holds
        print(f"sweep.run: error: {err}", file=sys.stderr)
        return 2
    return _on_cluster(args, cluster, where, saved or space, data_sets, lock)


def _on_cluster(args: argparse.Namespace, cluster: ClusterSpec, where: Target,
                start: Settings | Space, data_sets: dict[str, Any], lock: SweepLock) -> int:
    """Start or join Ray, run the sweep (start: a resumed sweep's Settings, or a new one's
    space), and turn interruptions and failed writes into a --resume line."""
    import ray

    try:
        connect(cluster)
        _sigterm_as_ctrl_c()   # after ray.init, which installs a handler of its own
        return _main(args, cluster, where, start, data_sets)
    except (UsageError, SpaceError, ConfirmError, DamagedResults) as err:
        print(f"sweep.run: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM outside Tune's fit (which handles its own)
        print(f"sweep.run: interrupted; continue with {_resume_command(args, cluster, where)}",
              file=sys.stderr)
        return 130
    except OSError as err:   # ENOSPC, EROFS, ... at a write: what was written stays; resume later
        print(f"sweep.run: error: {_os_error(err)}; the results written so far are intact: "
              f"fix that and continue with {_resume_command(args, cluster, where)}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
        lock.release()


def _own_folder(where: Target) -> SweepLock:
    """Check --name and --results-dir, then lock <results-dir>/<name> (sweep.lock)."""
    check_name(where.name)
    check_writable(where.root)
    lock = SweepLock(lock_dir(where.folder, where.name))
    lock.acquire()
    return lock


def _main(args: argparse.Namespace, cluster: ClusterSpec, where: Target, start: Settings | Space,
          data_sets: dict[str, Any]) -> int:
    import ray

    from sweep.progress import Progress   # ray.tune: after ray.init, not at --help

    if isinstance(start, Settings):
        s = start
    else:
        resources = ray.cluster_resources()
        s = resolve(args, cluster, where, start, resources.get("GPU", 0.0), resources.get("CPU", 1.0))
    s, plan = confirm_plan(args, s)
    trackers = tracking.callbacks(args.mlflow, s.name)
    print(header(s, data_sets), flush=True)
    progress = Progress(s.space.trials)
    outcome = run_sweep(s, data_sets, callbacks=[progress, *trackers], log=progress.print)
    failed = failures(outcome.trials)
    if outcome.trials is None or outcome.trials.empty:
        print("No trial finished.", file=sys.stderr)
        return 1
    again = _resume_command(args, cluster, where)
    missing = s.space.trials - len(outcome.trials[outcome.trials["phase"] == "search"])
    if missing > 0:   # interrupted (Ctrl-C, SIGTERM) or the driver lost the cluster
        print(summary(outcome))
        print(f"\n{missing} trials did not finish: continue with {again}")
        return 1
    try:
        verdicts = confirm_after_search(s, data_sets, plan) if plan and not failed else None
    except Interrupted as err:   # Ctrl-C or a lost cluster during the confirm phase
        print(summary(outcome))
        print(f"\n{err}: continue with {again}")
        return 1
    print(summary(outcome, verdicts))
    if failed:
        skipped = "; so no confirm phase ran" if plan else ""
        print(f"sweep.run: {failed}{skipped}", file=sys.stderr)
        return 1
    return 0


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


def _resume_command(args: argparse.Namespace, cluster: ClusterSpec, where: Target) -> str:
    extra = [o for opt, v in (("--results-dir", args.results_dir), ("--storage", args.storage))
             if v for o in (opt, v)]
    return commands.module("sweep.run", "--cluster", str(cluster.path), "--name", where.name,
                           *extra, "--resume")


def _os_error(err: OSError) -> str:
    """'<file>: No space left on device' for a failed write, as the OS says it."""
    where = err.filename or "a results file"
    return f"{where}: {err.strerror or first_line(err)}"


if __name__ == "__main__":
    sys.exit(main())
