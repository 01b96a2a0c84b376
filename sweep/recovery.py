"""``--resume`` rebuilt from what survives a killed driver: nothing lost, nothing run twice.

Tune's own restore reads ``experiment_state-*.json``, a snapshot Tune rewrites in place: a
``kill -9`` during that write leaves it empty, and even an intact snapshot can predate a trial
that started (or finished) after it, which Tune then forgets or proposes again. So a resume
never relies on it. It takes the sweep's state from the records written as events happen:

- ``optuna.db``: every trial the sweep has proposed (not WAITING), in order, with its picks;
- ``trials.parquet`` and its parts (sweep.store): trials already recorded (a damaged file or
  part is moved aside, then rebuilt);
- each Tune trial folder: ``params.json`` (its config and Optuna number), ``result.json`` (one
  line per reported epoch) and its latest complete ``checkpoint_*/checkpoint.pt``, in a local
  folder or under a ``file://``, ``s3://`` or ``gs://`` storage alike (pyarrow filesystems).

Nothing read from storage is unpickled: Tune's ``Tuner.restore`` would load ``tuner.pkl`` (and
the searcher's and callbacks' pickled state), so it is never called; checkpoints load with
``torch.load(weights_only=True)``.

Then every proposed trial ends up recorded exactly once: a trial that had ended but was not yet
recorded is recorded from its rows; every unfinished one runs once more, from its latest
checkpoint when one exists (phase A: a Tune run of exactly those configs, FIFO, recorded under
the original trial ids, results told to Optuna); the trials never proposed run as a normal
sweep continues (phase B: the same Optuna study hands out its remaining enqueued grid points,
then TPE). An unfinished trial that ASHA would have stopped runs to max_epochs in phase A (its
rung statistics went with the driver).

    python -m sweep.run --name my-study --resume
"""
from __future__ import annotations

import dataclasses
import json
import math
import posixpath
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sweep import results as R
from sweep import store
from sweep.guard import WriteGuard
from sweep.results import ResultsWriter
from sweep.store import DamagedResults
from sweep.trainable import ROWS_FILE
from sweep.tuning import diverged, tuner

RESUME_OF = "resume_of"
"""Config key of a phase-A trial: the id of the trial it continues (its rows and record)."""
RESUME_CHECKPOINT = "resume_checkpoint"
"""Config key of a phase-A trial: the checkpoint folder it starts from (None: from scratch)."""
OPTUNA_TRIAL = "optuna_trial"
"""Config key set by sweep.spaces.Sampler: the Optuna trial number that proposed the trial."""


# --- what the trial folders say ----------------------------------------------------------

@dataclass
class Found:
    """One sweep trial as its Tune folders describe it (a phase-A rerun folds into its origin)."""

    trial_id: str
    cfg: dict[str, Any]
    optuna_trial: int | None = None
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_epoch: int = 0

    @property
    def stopped_by_tune(self) -> bool:
        return bool(self.last.get("done"))


def scan(experiment: str | Path) -> dict[str, Found]:
    """Every trial folder under Tune's experiment folder (a path or a URI), by sweep trial id."""
    tree = StorageTree(str(experiment))
    found: dict[str, Found] = {}
    for folder in tree.trial_folders():   # oldest first: reruns after their origins
        try:
            params = json.loads(tree.read(f"{folder}/params.json"))
        except (OSError, ValueError):
            continue   # the driver died writing it: the trial never reported anything
        key = params.get(RESUME_OF) or posixpath.basename(folder)
        trial = found.setdefault(key, Found(key, params["cfg"], params.get(OPTUNA_TRIAL)))
        for row in _result_lines(tree, f"{folder}/result.json"):
            trial.rows[int(row["epoch"])] = row
            trial.last = row
        epoch, path = _latest_checkpoint(tree, folder)
        if path is not None and epoch >= trial.checkpoint_epoch:
            trial.checkpoint, trial.checkpoint_epoch = tree.name(path), epoch
            # The checkpoint's own rows: result.json may not have received the last ones.
            for row in _result_lines(tree, f"{path}/{ROWS_FILE}"):
                if int(row["epoch"]) <= epoch:
                    trial.rows.setdefault(int(row["epoch"]), row)
    return found


class StorageTree:
    """Tune's experiment folder on a pyarrow filesystem: a local path, file://, s3:// or gs://.

    Only text (JSON lines) and checkpoint.pt (torch.load with weights_only=True) are read from
    it; Tune's pickles there (tuner.pkl, searcher and callback state) never are.
    """

    def __init__(self, root: str):
        import pyarrow.fs as pafs

        self.uri = root.rstrip("/")
        self.fs, self.root = R.filesystem(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def _info(self, path: str, recursive: bool = False) -> list[Any]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
        return self.fs.get_file_info(selector)

    def trial_folders(self) -> list[str]:
        import pyarrow.fs as pafs

        params = [i for d in self._info(self.root) if d.type == pafs.FileType.Directory
                  for i in self.fs.get_file_info([f"{d.path}/params.json"])
                  if i.type == pafs.FileType.File]
        params.sort(key=lambda i: (i.mtime_ns or 0, i.path))
        return [posixpath.dirname(i.path) for i in params]

    def folders(self, prefix: str = "") -> list[str]:
        """The folders right under the root whose names start with prefix, by name."""
        import pyarrow.fs as pafs

        return sorted(d.path for d in self._info(self.root) if d.type == pafs.FileType.Directory
                      and d.base_name.startswith(prefix))

    def checkpoints(self, folder: str) -> list[str]:
        import pyarrow.fs as pafs

        return sorted((d.path for d in self._info(folder) if d.type == pafs.FileType.Directory
                       and d.base_name.startswith("checkpoint_")), reverse=True)

    def read(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode(errors="replace")

    def exists(self, path: str) -> bool:
        """path: absolute in this filesystem, or relative to the root."""
        import pyarrow.fs as pafs

        path = path if path.startswith(self.root) else f"{self.root}/{path}"
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def name(self, path: str) -> str:
        """A path of this tree as Ray and R.filesystem take it: local path, else a URI."""
        return path if self.local else self.uri + path[len(self.root.rstrip("/")):]

    def load_checkpoint(self, folder: str) -> dict[str, Any]:
        from fkd_core.train import CHECKPOINT, load_checkpoint

        if self.local:
            return load_checkpoint(Path(folder) / CHECKPOINT)
        with tempfile.TemporaryDirectory(prefix="fkd-resume-") as tmp:   # torch.load wants a file
            import pyarrow.fs as pafs

            pafs.copy_files(f"{folder}/{CHECKPOINT}", f"{tmp}/{CHECKPOINT}",
                            source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
            return load_checkpoint(Path(tmp) / CHECKPOINT)


def _result_lines(tree: StorageTree, path: str) -> list[dict[str, Any]]:
    """Tune's per-epoch lines; a line cut short by the kill is skipped."""
    if not tree.exists(path):
        return []
    rows = []
    for line in tree.read(path).splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def _latest_checkpoint(tree: StorageTree, folder: str) -> tuple[int, str | None]:
    """(epoch, folder) of the newest checkpoint that loads; a half-copied one is skipped."""
    for ckpt in tree.checkpoints(folder):
        try:
            return int(tree.load_checkpoint(ckpt)["epoch"]), ckpt
        except Exception:   # noqa: BLE001 - truncated zip, missing file: any failure means unusable
            continue
    return 0, None


# --- the plan ------------------------------------------------------------------------------

@dataclass
class Plan:
    settle: list[Found]                 # ended, not recorded: record from their rows
    rerun: list[dict[str, Any]]         # phase-A configs
    numbers: dict[str, int]             # sweep trial id -> Optuna trial number
    proposed: int                       # trials the study has handed out


def plan(study: Any, space: Any, found: dict[str, Found], recorded: set[str]) -> Plan:
    """Sort every proposed trial into recorded / to settle / to rerun (module docstring)."""
    import optuna

    from fkd_core.config import TrialConfig

    proposed = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    by_number = {f.optuna_trial: f for f in found.values() if f.optuna_trial is not None}
    unmatched = [f for f in found.values() if f.optuna_trial is None]
    settle, rerun, numbers = [], [], {}
    for ot in proposed:
        trial = by_number.get(ot.number)
        if trial is None:   # folders written before the Optuna number was in the config
            cfg = TrialConfig(**space.fields(ot.params, seed=ot.user_attrs.get("seed", 0)))
            trial = next((f for f in unmatched if TrialConfig(**f.cfg) == cfg), None)
            if trial is not None:
                unmatched.remove(trial)
        if trial is None:   # proposed, never started (or its folder is gone): from scratch
            trial_id = uuid.uuid4().hex[:8]   # Tune's id format; the rerun is filed under it
            numbers[trial_id] = ot.number
            rerun.append({"cfg": space.fields(ot.params, seed=ot.user_attrs.get("seed", 0)),
                          OPTUNA_TRIAL: ot.number, RESUME_OF: trial_id, RESUME_CHECKPOINT: None})
            continue
        numbers[trial.trial_id] = ot.number
        if trial.trial_id in recorded:
            continue
        if ended(trial):
            settle.append(trial)
        else:
            rerun.append({"cfg": trial.cfg, OPTUNA_TRIAL: ot.number, RESUME_OF: trial.trial_id,
                          RESUME_CHECKPOINT: trial.checkpoint})
    return Plan(settle, rerun, numbers, len(proposed))


def ended(trial: Found) -> bool:
    """Tune stopped it (ASHA, divergence) or it ran its whole budget before the kill."""
    from fkd_core import metrics as M

    rows = trial.rows.values()
    return bool(rows) and (trial.stopped_by_tune or any(r.get(M.DIVERGED) for r in rows)
                           or max(trial.rows) >= int(trial.cfg.get("max_epochs", math.inf)))


# --- running it ----------------------------------------------------------------------------

def resume_sweep(s: Any, trainable: Any, info: dict[str, Any], new_tuner: Callable[[Any], Any],
                 log: Callable[[str], None] | None) -> tuple[Any, float]:
    """Record, rerun and continue the sweep ``s`` (see the module docstring).

    ``new_tuner(settings)`` builds a normal sweep's Tuner and its writer's WriteGuard
    (sweep.search); returns phase B's result grid (or []) and the seconds Tune ran.
    """
    import optuna

    _fetch_study(s)
    _set_aside_damaged(s.results_uri, log)
    writer = R.ResultsWriter(s.results_uri, s.name, info, log=None)
    writer.setup()
    try:
        study = optuna.load_study(study_name=s.name, storage=f"sqlite:///{s.optuna_path.resolve()}")
    except KeyError:   # optuna.db lost or replaced: it is the list of trials the sweep proposed
        raise DamagedResults(f"{s.optuna_path}: no Optuna study {s.name!r}, which --resume needs "
                             "(the list of proposed trials); start a new sweep with another --name") from None
    found = scan(s.experiment_path)
    for trial in found.values():   # epochs reported after the last Parquet write
        writer.merge_rows(trial.trial_id, trial.rows.values())
    todo = plan(study, s.space, found, set(writer.recorded))
    for trial in todo.settle:
        writer.save(settled_record(s, info, trial, writer))
    writer.write_unfinished()   # the reruns' epochs so far, for phase A's writer
    if log:
        log(f"  resume: {len(writer.recorded)} trials recorded ({len(todo.settle)} just now), "
            f"{len(todo.rerun)} to rerun from their last checkpoint, "
            f"{max(s.space.trials - todo.proposed, 0)} not started yet")
    start = time.perf_counter()
    if todo.rerun:
        _rerun(s, trainable, info, todo.rerun, log)
    recorded = _tell_optuna(study, s.results_uri, todo)
    grid: Any = []
    remaining = s.space.trials - todo.proposed
    if any(item[RESUME_OF] not in recorded for item in todo.rerun):
        return grid, time.perf_counter() - start   # Ctrl-C in phase A: stop, resume later
    if remaining > 0:
        # Phase B: the study pops its remaining enqueued grid points first, then samples.
        space = dataclasses.replace(s.space, num_samples=remaining)
        tuner, guard = new_tuner(dataclasses.replace(s, space=space))
        grid = tuner.fit()
        guard.raise_if_failed()
    return grid, time.perf_counter() - start


def _fetch_study(s: Any) -> None:
    """A URI sweep keeps optuna.db in a local cache (sweep.run) and copies it next to its
    results; resuming on a machine without that cache starts from the copy."""
    if "://" not in s.results_uri or s.optuna_path.exists():
        return
    import pyarrow.fs as pafs

    fs, path = store.filesystem(f"{s.results_uri}/{s.optuna_path.name}")
    if fs.get_file_info(path).type == pafs.FileType.File:
        s.optuna_path.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(s.optuna_path), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())


def _set_aside_damaged(results_uri: str, log: Callable[[str], None] | None) -> None:
    """A truncated trials/epochs.parquet or part is moved aside; the rebuild replaces it."""
    for err in store.set_aside_damaged(results_uri):
        if log:
            log(f"  {err}: moved aside, rebuilding it")


def settled_record(s: Any, info: dict[str, Any], trial: Found, writer: Any) -> dict[str, Any]:
    from fkd_core.config import TrialConfig
    from sweep.spaces import data_key
    from sweep.trainable import DEVICE, DEVICE_NAME, PRECISION_USED

    cfg = TrialConfig(**trial.cfg)
    rows = list(writer.rows.get(trial.trial_id, {}).values())
    best = ""
    if trial.checkpoint and StorageTree(trial.checkpoint).exists("best.pt"):
        best = f"checkpoints/{trial.trial_id}/best.pt"
        R.copy_file(*R.filesystem(f"{trial.checkpoint}/best.pt"), f"{s.results_uri}/{best}")
    return R.trial_record(
        trial_id=trial.trial_id, experiment=s.name, cfg=cfg, rows=rows,
        status=R.trial_status(rows, cfg.max_epochs, error=None, stopped_by_tune=trial.stopped_by_tune),
        error=None, wall_seconds=float(trial.last.get("time_total_s", 0.0)),
        node=str(trial.last.get("hostname", "")), device=str(trial.last.get(DEVICE, "")),
        device_name=str(trial.last.get(DEVICE_NAME, "")), data=info[data_key(cfg)],
        best_checkpoint=best, versions=writer.versions, git_commit=writer.git_commit,
        precision_used=str(trial.last.get(PRECISION_USED, "")))


def _rerun(s: Any, trainable: Any, info: dict[str, Any], items: list[dict[str, Any]],
           log: Callable[[str], None] | None) -> None:
    """Phase A: exactly these configs, once each (Tune still retries a crash from its checkpoint)."""
    guard = WriteGuard(ResumedWriter(s.results_uri, s.name, info, log=log, total=s.space.trials))
    tuner(s, trainable, name=s.name, callbacks=[guard], search_alg=_fixed_configs(items),
          num_samples=len(items), stop=diverged).fit()
    guard.raise_if_failed()


def _fixed_configs(items: list[dict[str, Any]]) -> Any:
    """A Tune searcher that hands out exactly ``items``, in order, once each."""
    from ray.tune.search import Searcher

    class FixedConfigs(Searcher):
        def __init__(self) -> None:
            super().__init__(metric=None, mode=None)
            self.items = list(items)

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            return self.items.pop(0) if self.items else Searcher.FINISHED

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass

    return FixedConfigs()


def _tell_optuna(study: Any, results_uri: str, todo: Plan) -> set[str]:
    """Finish the Optuna trials of settled and rerun trials as OptunaSearch would have; return
    the ids of the recorded trials."""
    import optuna

    from fkd_core import metrics as M

    table = store.read_results(results_uri, store.TRIALS_FILE)
    records = {r["trial_id"]: r for r in table.to_pylist()} if table is not None else {}
    for trial_id, rec in records.items():
        number = todo.numbers.get(trial_id, rec.get(OPTUNA_TRIAL))
        if number is None or study.trials[number].state != optuna.trial.TrialState.RUNNING:
            continue
        value = rec[f"final_{M.VAL_RMSE}"]
        if rec["status"] == "error" or value is None or math.isnan(value):
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(number, value)
    return set(records)


# --- phase A's results writer ---------------------------------------------------------------

class _Renamed:
    """A Tune trial seen under the id of the trial it continues."""

    def __init__(self, trial: Any):
        self._trial = trial

    @property
    def trial_id(self) -> str:
        return self._trial.config.get(RESUME_OF) or self._trial.trial_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


class ResumedWriter(ResultsWriter):
    """ResultsWriter that files a phase-A trial's epochs and record under its original id."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        super().on_trial_result(iteration, trials, _Renamed(trial), result, **info)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_complete(iteration, trials, _Renamed(trial), **info)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_error(iteration, trials, _Renamed(trial), **info)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_recover(iteration, trials, _Renamed(trial), **info)
