"""The records of a sweep, trials.parquet and epochs.parquet, local or s3:// / gs://.

``ResultsWriter`` is a Tune callback: it collects the epoch rows of the trials running and,
when a trial ends, writes its epochs and its row as two small atomic parts (sweep.store), so
recording a trial costs the same at trial 100,000 as at trial 10, a crash never leaves a
half-written file nor loses a recorded trial, and the driver holds no finished trial's epochs.
When the Tune run ends it compacts the parts into the two files. It also copies the best
checkpoint of the best trials to ``<results>/checkpoints/<trial_id>/best.pt`` for prediction
figures. The columns are documented in results/README.md.

    >>> from sweep.store import read_results, TRIALS_FILE
    >>> trials = read_results("results/fkd-yt15-quick", TRIALS_FILE).to_pandas()
    >>> import pandas as pd
    >>> trials = pd.read_parquet("results/fkd-yt15-quick/trials.parquet")   # once compacted
"""
from __future__ import annotations

import json
import math
import platform
import posixpath
import subprocess
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from ray.tune import Callback

from fkd_core import metrics as M
from fkd_core.config import TrialConfig, config_fields, uses_shape
from sweep.spaces import data_key
from sweep.store import (EPOCHS_FILE, TRIALS_FILE, UNFINISHED, compact, filesystem,
                         list_parts, part_trial, part_uri, read_part, read_results, write_atomic)
from sweep.trainable import DEVICE, DEVICE_NAME, PRECISION_USED

STATUSES = ("completed", "asha_stopped", "early_stopped", "diverged", "error")
# Best checkpoints kept per arm (base loss + shape term, any alpha): enough for prediction
# figures of the best trials without keeping hundreds of models.
KEEP_CHECKPOINTS = 3

_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
# Per-test-group columns (fkd_core.metrics.TEST_GROUP_KEYS): lists, one entry per test person.
GROUP_TYPES = {M.TEST_GROUP_IDS: pa.list_(pa.string()), M.TEST_GROUP_SSE: pa.list_(pa.float64()),
               M.TEST_GROUP_COUNT: pa.list_(pa.int64())}
_METRIC_TYPES = {M.EPOCH: pa.int64(), M.DIVERGED: pa.bool_(), **GROUP_TYPES}
# Test metrics of an epoch: present only in confirm trials (TrialConfig.score_test), null elsewhere.
TEST_METRICS = (M.TEST_RMSE, M.TEST_NME, M.TEST_SHAPE)
EPOCH_KEYS = tuple(dict.fromkeys((*M.EPOCH_ROW_KEYS, *TEST_METRICS, *M.TEST_GROUP_KEYS)))
PHASES = ("search", "confirm")


def trial_schema() -> pa.Schema:
    """Column types of trials.parquet: ids, status, every TrialConfig field, metrics, provenance."""
    cols = [("trial_id", pa.string()), ("experiment", pa.string()), ("status", pa.string()),
            ("error", pa.string())]
    cols += [(name, _ARROW[kind]) for name, kind in config_fields().items()]
    cols += [("loss_label", pa.string())]
    # phase: search (ASHA + TPE, validation only) or confirm (full budget, paired replicates,
    # test scored); replicate and cell (the search's cell label) are set for confirm trials only.
    cols += [("phase", pa.string()), ("replicate", pa.int64()), ("cell", pa.string())]
    # arm: the confirm arm's label (sweep.confirm.arm_label: "base", "cgd", "cgd@0.01"); "" in search.
    cols += [("arm", pa.string())]
    cols += [(f"best_{m}", pa.float64()) for m in M.VAL_METRICS] + [("best_epoch", pa.int64())]
    cols += [(f"final_{m}", pa.float64()) for m in M.VAL_METRICS]
    cols += [(f"best_{m}", pa.float64()) for m in TEST_METRICS]
    # The scored weights' test RMSE and per-group sums (TrialConfig.scored: final or best_val) and
    # the shape term's share of the last epoch's training loss; confirm trials (test scored) only.
    cols += [("scored_test_rmse_px", pa.float64()), *GROUP_TYPES.items(), (M.SHAPE_SHARE, pa.float64())]
    cols += [("epochs", pa.int64()), ("wall_seconds", pa.float64()), ("node", pa.string()),
             (DEVICE_NAME, pa.string()), ("data_source", pa.string()), ("data_hash", pa.string()),
             ("data_synthetic", pa.bool_()), ("best_checkpoint", pa.string()),
             ("versions", pa.string()), ("git_commit", pa.string()), (PRECISION_USED, pa.string())]
    # `device` is both a TrialConfig field and the device used: it holds the resolved one
    # ("cpu", "cuda:0"), still a valid TrialConfig value.
    return pa.schema(cols)


def epoch_schema() -> pa.Schema:
    return pa.schema([("trial_id", pa.string())]
                     + [(k, _METRIC_TYPES.get(k, pa.float64())) for k in EPOCH_KEYS])


# --- one trial's record -------------------------------------------------------------------

def trial_status(rows: list[dict[str, Any]], max_epochs: int, *, error: str | None,
                 stopped_by_tune: bool) -> str:
    """How a trial ended, from its rows and how Tune ended it (module README lists them).

    ``stopped_by_tune``: the last row was marked done by Tune (ASHA's or the stopper's decision)
    rather than the trial returning on its own (train's early stopping or max_epochs).
    """
    if error is not None:
        return "error"
    if any(r.get(M.DIVERGED) for r in rows):
        return "diverged"
    epochs = max((int(r[M.EPOCH]) for r in rows), default=0)
    if epochs >= max_epochs:
        return "completed"
    return "asha_stopped" if stopped_by_tune else "early_stopped"


def metric_summary(rows: list[dict[str, Any]], scored: str = "final") -> dict[str, Any]:
    """Best (at the epoch of the lowest finite val RMSE, the epoch best.pt holds) and final
    metrics; the scored epoch's test RMSE and per-group sums (scored: TrialConfig.scored, "final"
    the last epoch, "best_val" the best one) and the last epoch's shape share."""
    out: dict[str, Any] = {f"{p}_{m}": math.nan for p in ("best", "final") for m in M.VAL_METRICS}
    out.update({f"best_{m}": math.nan for m in TEST_METRICS})
    out.update(best_epoch=None, epochs=len(rows), scored_test_rmse_px=math.nan, **dict.fromkeys(GROUP_TYPES),
               **{M.SHAPE_SHARE: math.nan})
    if not rows:
        return out
    ordered = sorted(rows, key=lambda r: r[M.EPOCH])
    finite = [r for r in ordered if math.isfinite(r[M.VAL_RMSE])]
    best = min(finite, key=lambda r: r[M.VAL_RMSE]) if finite else None
    for m in M.VAL_METRICS:
        out[f"final_{m}"] = float(ordered[-1][m])
        out[f"best_{m}"] = float(best[m]) if best else (math.inf if m == M.VAL_RMSE else math.nan)
    for m in TEST_METRICS:   # test metrics at the epoch chosen on validation, never the best test
        value = best.get(m) if best else None
        out[f"best_{m}"] = float(value) if value is not None else math.nan
    out.update(best_epoch=int(best[M.EPOCH]) if best else None, epochs=int(ordered[-1][M.EPOCH]))
    share = ordered[-1].get(M.SHAPE_SHARE)
    out[M.SHAPE_SHARE] = math.nan if share is None else float(share)
    chosen = ordered[-1] if scored == "final" else best
    if chosen is not None and chosen.get(M.TEST_RMSE) is not None:
        out["scored_test_rmse_px"] = float(chosen[M.TEST_RMSE])
        out.update({k: chosen.get(k) for k in GROUP_TYPES})
    return out


@dataclass(frozen=True)
class DataInfo:
    source: str
    content_hash: str
    synthetic: bool


def trial_record(*, trial_id: str, experiment: str, cfg: TrialConfig, rows: list[dict[str, Any]],
                 status: str, error: str | None, wall_seconds: float, node: str, device: str,
                 device_name: str, data: DataInfo, best_checkpoint: str, versions: str,
                 git_commit: str, phase: str = "search", replicate: int | None = None,
                 cell: str = "", arm: str = "", precision_used: str = "") -> dict[str, Any]:
    """One row of trials.parquet (arm: the confirm arm's label, "" for search trials;
    precision_used: "fp32" / "bf16" as the trial ran, "" unknown)."""
    fields = {**cfg.to_dict(), "device": device or cfg.device}
    return {"trial_id": trial_id, "experiment": experiment, "status": status, "error": error or "",
            **fields, "loss_label": cfg.loss_label, "phase": phase, "replicate": replicate,
            "cell": cell, "arm": arm, **metric_summary(rows, cfg.scored),
            "wall_seconds": wall_seconds, "node": node, DEVICE_NAME: device_name,
            "data_source": data.source, "data_hash": data.content_hash,
            "data_synthetic": data.synthetic, "best_checkpoint": best_checkpoint,
            "versions": versions, "git_commit": git_commit, PRECISION_USED: precision_used}


# --- files (the storage itself: sweep.store) -----------------------------------------------

def to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    rows = list(rows)
    return pa.table({f.name: pa.array([_cell(r.get(f.name), f.type) for r in rows], type=f.type)
                     for f in schema}, schema=schema)


def _cell(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_list(kind):
        return [_cell(v, kind.value_type) for v in value]
    if pa.types.is_floating(kind):
        return float(value)
    if pa.types.is_integer(kind):
        return int(value)
    if pa.types.is_boolean(kind):
        return bool(value)
    return str(value)


def copy_file(src_fs: pafs.FileSystem, src: str, dest_uri: str) -> None:
    fs, dest = filesystem(dest_uri)
    fs.create_dir(posixpath.dirname(dest), recursive=True)
    pafs.copy_files(src, dest, source_filesystem=src_fs, destination_filesystem=fs)


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


# --- provenance --------------------------------------------------------------------------

def versions() -> str:
    """JSON of the versions that decide a trial's numbers."""
    packages = ("fkd-sweep", "torch", "torchvision", "numpy", "ray", "optuna", "pandas", "pyarrow")
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = ""
    return json.dumps(found, sort_keys=True)


def git_commit() -> str:
    """HEAD of this checkout, with "-dirty" when tracked files differ; "" outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


# --- the Tune callback -------------------------------------------------------------------

class ResultsWriter(Callback):
    """Records each trial as it ends: its epochs and its row, one part each (sweep.store).

    Holds only plain data, because Tune pickles callbacks with the experiment, and nothing that
    grows with the epochs recorded: the epoch rows of trials not recorded yet, the recorded
    trials' ids (with their last epoch), and the records of the few trials whose best.pt is kept.
    ``setup`` reloads those from the folder, so ``--resume`` keeps what earlier runs wrote;
    ``on_experiment_end`` compacts the parts.
    """

    def __init__(self, results_uri: str, experiment: str, data: Mapping[str, DataInfo], *,
                 log: Callable[[str], None] | None = print, total: int | None = None):
        self.results_uri = results_uri.rstrip("/")
        self.experiment = experiment
        self.data = dict(data)
        self.log = log
        self.total = total
        self.versions = versions()
        self.git_commit = git_commit()
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}   # trials not recorded yet
        self.recorded: dict[str, int] = {}                      # trial id -> its last epoch
        self.kept: dict[str, dict[str, Any]] = {}               # records that hold a best.pt
        self.unfinished: dict[str, list[str]] = {}              # parts/unfinished/ per trial
        self.last_done: dict[str, bool] = {}
        self.devices: dict[str, tuple[str, str]] = {}

    def uri(self, name: str) -> str:
        return f"{self.results_uri}/{name}"

    # Tune hooks ---------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        ids = read_results(self.results_uri, TRIALS_FILE,
                           columns=["trial_id", "epochs", "best_checkpoint"])
        if ids is not None:
            self.recorded = dict(zip(ids["trial_id"].to_pylist(), ids["epochs"].to_pylist()))
            holding = ids.filter(pc.not_equal(ids["best_checkpoint"], ""))["trial_id"].to_pylist()
            kept = read_results(self.results_uri, TRIALS_FILE, trial_ids=holding) if holding else None
            self.kept = {r["trial_id"]: r for r in kept.to_pylist()} if kept is not None else {}
        self._load_unfinished()

    def _load_unfinished(self) -> None:
        """Epochs a killed driver (or a --resume's planning) kept for trials not recorded yet."""
        fs, _ = filesystem(self.results_uri)
        for path in list_parts(self.results_uri, UNFINISHED):
            trial_id = part_trial(path)
            if trial_id in self.recorded:   # recorded, then killed before this part went
                fs.delete_file(path)
                continue
            self.unfinished.setdefault(trial_id, []).append(path)
            self.merge_rows(trial_id, read_part(fs, path).to_pylist())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        row = {k: result.get(k) for k in EPOCH_KEYS}
        self.rows.setdefault(trial.trial_id, {})[int(row[M.EPOCH])] = row
        # Tune marks the result it decides to stop on as done before callbacks see it; a trial
        # that returns on its own ends with a duplicate result callbacks never see.
        self.last_done[trial.trial_id] = bool(result.get("done"))
        self.devices[trial.trial_id] = (result.get(DEVICE, ""), result.get(DEVICE_NAME, ""))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.record(trial, error=None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.record(trial, error=_error_message(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.log:
            epoch = max(self.rows.get(trial.trial_id, {0: None}))
            self.log(f"      {trial.trial_id} failed after epoch {epoch} "
                     f"({_error_message(trial)}); retrying from its last checkpoint")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.write_unfinished()
        compact(self.results_uri)

    # recording ----------------------------------------------------------------------------
    def record(self, trial: Any, error: str | None) -> None:
        cfg = TrialConfig(**trial.config["cfg"])
        rows = list(self.rows.get(trial.trial_id, {}).values())
        last = trial.last_result or {}
        status = trial_status(rows, cfg.max_epochs, error=error,
                              stopped_by_tune=self.last_done.get(trial.trial_id, False))
        device, device_name = self.devices.get(trial.trial_id, ("", ""))
        rec = trial_record(
            trial_id=trial.trial_id, experiment=self.experiment, cfg=cfg, rows=rows, status=status,
            error=error, wall_seconds=float(last.get("time_total_s", 0.0)),
            node=str(last.get("hostname", "")), device=device, device_name=device_name,
            data=self.data[data_key(cfg)], best_checkpoint=self._keep_best(trial),
            versions=self.versions, git_commit=self.git_commit,
            phase=trial.config.get("phase", "search"), replicate=trial.config.get("replicate"),
            cell=trial.config.get("cell", ""), arm=trial.config.get("arm", ""),
            precision_used=str(last.get(PRECISION_USED, "")))
        self.save(rec)
        if self.log:
            self.log(progress_line(rec, len(self.recorded), self.total))

    def save(self, rec: dict[str, Any]) -> None:
        """Record one trial from its record and the epoch rows held for it: the epochs part
        first, then the row's, so a kill between leaves the trial unrecorded (and --resume
        records it again, its new parts replacing the first)."""
        trial_id = rec["trial_id"]
        rows = self.rows.pop(trial_id, {})
        epochs = [{"trial_id": trial_id, **row} for _, row in sorted(rows.items())]
        write_atomic(to_table(epochs, epoch_schema()), part_uri(self.results_uri, EPOCHS_FILE, trial_id))
        losers = []
        if rec["best_checkpoint"]:
            self.kept[trial_id] = rec
            losers = [(r, posixpath.dirname(r["best_checkpoint"])) for r in self._over_quota()]
        for loser, _ in losers:
            loser["best_checkpoint"] = ""
            del self.kept[loser["trial_id"]]
        self._write_record(rec)
        self.recorded[trial_id] = rec["epochs"]
        for loser, folder in losers:   # its row first says "no best.pt", then the file goes
            if loser is not rec:
                self._write_record(loser)
            delete_dir(self.uri(folder))
        fs, _ = filesystem(self.results_uri)
        for path in self.unfinished.pop(trial_id, []):
            fs.delete_file(path)

    def _write_record(self, rec: Mapping[str, Any]) -> None:
        write_atomic(to_table([rec], trial_schema()),
                     part_uri(self.results_uri, TRIALS_FILE, rec["trial_id"]))

    def _keep_best(self, trial: Any) -> str:
        """Copy best.pt of the trial's last checkpoint into the results folder."""
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return ""
        src = posixpath.join(checkpoint.path, "best.pt")
        if checkpoint.filesystem.get_file_info(src).type != pafs.FileType.File:
            return ""
        rel = f"checkpoints/{trial.trial_id}/best.pt"
        copy_file(checkpoint.filesystem, src, self.uri(rel))
        return rel

    def _over_quota(self) -> list[dict[str, Any]]:
        """Kept records beyond the KEEP_CHECKPOINTS best of their arm (base loss, shape term)."""
        by_arm: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for rec in self.kept.values():
            shape = rec["shape"] if uses_shape(rec["shape"], rec["alpha"]) else "none"
            by_arm.setdefault((rec.get("phase") or "search", rec["loss"], shape), []).append(rec)
        losers = []
        for recs in by_arm.values():
            recs.sort(key=lambda r: _sort_key(r["best_val_rmse_px"]))
            losers += recs[KEEP_CHECKPOINTS:]
        return losers

    def merge_rows(self, trial_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add rows of a trial not recorded yet (e.g. from Tune's folders after a kill); a
        recorded trial's rows are in its part already."""
        if trial_id in self.recorded:
            return
        known = self.rows.setdefault(trial_id, {})
        for row in rows:
            known.setdefault(int(row[M.EPOCH]), {k: row.get(k) for k in EPOCH_KEYS})

    def amend(self, trial_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rows Tune kept (epochs reported before a Tune restore): a recorded trial they extend
        is recorded again with them, its best/final metrics recomputed."""
        rows = list(rows)
        if trial_id not in self.recorded:
            self.merge_rows(trial_id, rows)
            return
        if max((int(r[M.EPOCH]) for r in rows), default=0) <= (self.recorded[trial_id] or 0):
            return
        old = read_results(self.results_uri, EPOCHS_FILE, trial_ids=[trial_id])
        known = {int(r[M.EPOCH]): {k: r.get(k) for k in EPOCH_KEYS}
                 for r in (old.to_pylist() if old is not None else [])}
        for row in rows:
            known.setdefault(int(row[M.EPOCH]), {k: row.get(k) for k in EPOCH_KEYS})
        rec = read_results(self.results_uri, TRIALS_FILE, trial_ids=[trial_id]).to_pylist()[0]
        rec.update(metric_summary(list(known.values()), rec.get("scored") or "final"))
        self.rows[trial_id] = known
        self.save(rec)

    def write_unfinished(self) -> None:
        """Keep the rows of trials not recorded yet in parts/unfinished/ (one part per trial,
        replacing its older ones), for the --resume that will record them."""
        fs, _ = filesystem(self.results_uri)
        for trial_id, rows in self.rows.items():
            if trial_id in self.recorded or not rows:
                continue
            epochs = [{"trial_id": trial_id, **row} for _, row in sorted(rows.items())]
            uri = part_uri(self.results_uri, UNFINISHED, trial_id)
            write_atomic(to_table(epochs, epoch_schema()), uri)
            for path in self.unfinished.get(trial_id, []):
                fs.delete_file(path)
            self.unfinished[trial_id] = [filesystem(uri)[1]]


def _sort_key(value: float | None) -> float:
    return math.inf if value is None or math.isnan(value) else value


def _error_message(trial: Any) -> str:
    """The last line of the trial's traceback (e.g. "RuntimeError: boom"), or its class."""
    text = ""
    try:
        if trial.error_file:
            with open(trial.error_file) as f:
                text = f.read()
    except OSError:
        pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "trial failed")[:500]


def progress_line(rec: Mapping[str, Any], done: int, total: int | None) -> str:
    """One compact line per finished trial."""
    count = f"[{done:>3}/{total}]" if total else f"[{done:>3}]"
    best = rec["best_val_rmse_px"]
    score = f"best val {best:6.3f} px @{rec['best_epoch']}" if best is not None and math.isfinite(best) \
        else "no finite val RMSE"
    error = f"  {rec['error']}" if rec["error"] else ""
    phase = ""
    if rec.get("phase") == "confirm":
        # A confirm trial's test score comes from the weights TrialConfig.scored names, which
        # are the best-validation epoch's only under scored=best_val (sweep.confirm).
        phase = f" confirm r{rec['replicate']}"
        score += f" (scored: {rec.get('scored') or 'final'} weights)"
    return (f"{count}{phase} {rec['trial_id']} {rec['backbone']:<12} {rec['loss_label']:<22} "
            f"aug={rec['augment']:<6} seed={rec['seed']}  {score}  {rec['status']} after "
            f"{rec['epochs']} ep, {rec['wall_seconds']:.0f}s{error}")

