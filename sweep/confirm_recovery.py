"""An interrupted confirm phase goes on where it stopped: each replicate of each cell x arm once.

Each confirm round is a Tune run of its own (``<storage>/<name>-confirm-<time>-<round>``). A
driver killed (or a Ctrl-C) during one leaves trials that trained but are not in trials.parquet.
Before a round, the confirm phase (``sweep.run --resume`` or a second ``sweep.confirm``) reads
those trial folders the way ``sweep.recovery`` reads the search's (params.json, result.json,
checkpoints), and:

- a trial that had ended is recorded from its rows, under its own id;
- a trial that had not is handed back to the round under its own id (``RESUME_OF``), from its
  latest checkpoint when one exists (``RESUME_CHECKPOINT``), instead of a fresh trial;
- a (cell, arm, replicate) already recorded is never run or recorded again.
"""
from __future__ import annotations

import json
import posixpath
from typing import Any, Callable

from sweep import results as R
from sweep.recovery import (RESUME_CHECKPOINT, RESUME_OF, Found, StorageTree, ended, scan,
                            settled_record)
from sweep.scheduler import arm_of_fields
from sweep.store import TRIALS_FILE, compact, read_results

Key = tuple[str, str, int]
"""(cell, arm, replicate) of a confirm trial."""


def key_of(config: dict[str, Any]) -> Key:
    """The (cell, arm, replicate) of a confirm trial's Tune config (its arm label when it has one:
    "cgd@0.01" and "cgd" share a shape term; older configs had none)."""
    return str(config["cell"]), config.get("arm") or arm_of_fields(config["cfg"]), int(config["replicate"])


def recorded_keys(records: Any) -> set[Key]:
    """Keys of the confirm trials in trials.parquet's records (dicts)."""
    return {(str(r["cell"]), r.get("arm") or arm_of_fields(r), int(r["replicate"])) for r in records
            if r.get("phase") == "confirm" and r.get("replicate") is not None}


def round_folders(s: Any) -> list[str]:
    """The confirm rounds' Tune experiment folders (paths or URIs), oldest first (names carry
    the start time)."""
    tree = StorageTree(s.storage_path)
    return [tree.name(p) for p in tree.folders(prefix=f"{s.name}-confirm-")]


def _labels(experiment: str) -> dict[str, tuple[str, int, str]]:
    """Trial id -> (cell, replicate, arm label or ""), from each trial folder's params.json."""
    tree, out = StorageTree(experiment), {}
    for folder in tree.trial_folders():
        try:
            p = json.loads(tree.read(f"{folder}/params.json"))
            out[p.get(RESUME_OF) or posixpath.basename(folder)] = (str(p["cell"]), int(p["replicate"]),
                                                                    str(p.get("arm") or ""))
        except (OSError, ValueError, KeyError, TypeError):
            continue   # cut short by the kill: that trial never reported anything
    return out


def _gather(s: Any) -> dict[str, tuple[Key, Found]]:
    """Every confirm trial the round folders describe; a later round's rerun of a trial adds to
    (and, for the same epoch, replaces) what the earlier folders hold."""
    found: dict[str, tuple[Key, Found]] = {}
    for experiment in round_folders(s):
        labels = _labels(experiment)
        for trial_id, trial in scan(experiment).items():
            if trial_id not in labels:
                continue
            cell, replicate, arm = labels[trial_id]
            if trial_id not in found:
                found[trial_id] = ((cell, arm or arm_of_fields(trial.cfg), replicate), trial)
                continue
            old = found[trial_id][1]
            old.rows.update(trial.rows)
            old.last = trial.last or old.last
            if trial.checkpoint and trial.checkpoint_epoch >= old.checkpoint_epoch:
                old.checkpoint, old.checkpoint_epoch = trial.checkpoint, trial.checkpoint_epoch
    return found


def recover(s: Any, info: dict[str, Any], log: Callable[[str], None] | None = None
            ) -> dict[Key, dict[str, Any]]:
    """Record confirm trials that ended unrecorded; return what continues each unfinished one:
    {key: {RESUME_OF: its trial id, RESUME_CHECKPOINT: its latest checkpoint or None}}."""
    writer = R.ResultsWriter(s.results_uri, s.name, info, log=None)
    writer.setup()
    table = read_results(s.results_uri, TRIALS_FILE,
                         columns=["phase", "cell", "replicate", "shape", "alpha"])
    have = recorded_keys(table.to_pylist() if table is not None else [])
    unfinished: dict[Key, tuple[int, dict[str, Any]]] = {}
    settled = 0
    for trial_id, (key, trial) in _gather(s).items():
        if trial_id in writer.recorded or key in have:
            continue
        writer.merge_rows(trial_id, trial.rows.values())
        if ended(trial):
            rec = settled_record(s, info, trial, writer)
            rec.update(phase="confirm", cell=key[0], arm=key[1], replicate=key[2])
            writer.save(rec)
            have.add(key)
            settled += 1
        elif key not in unfinished or trial.checkpoint_epoch > unfinished[key][0]:
            unfinished[key] = (trial.checkpoint_epoch, {RESUME_OF: trial_id,
                                                        RESUME_CHECKPOINT: trial.checkpoint})
    if settled or unfinished:
        writer.write_unfinished()   # the continued trials' epochs so far, for the round's writer
        compact(s.results_uri)
        if log:
            log(f"  confirm resume: {settled} interrupted trials recorded from their rows, "
                f"{len(unfinished)} to continue from their last checkpoint (or rerun)")
    return {k: v for k, (_, v) in unfinished.items()}


def continued(configs: list[dict[str, Any]], resumes: dict[Key, dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """The round's configs, each carrying RESUME_OF / RESUME_CHECKPOINT (None for fresh trials):
    every config needs the same keys (sweep.confirm builds Tune's space from the first)."""
    fresh = {RESUME_OF: None, RESUME_CHECKPOINT: None}
    return [{**c, **resumes.get(key_of(c), fresh)} for c in configs]
