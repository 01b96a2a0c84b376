"""sweep.recovery without Ray: what the trial folders say, and the resume plan built from them
and the Optuna study. (The end-to-end kill test is tests/test_kill.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch

from fkd_core.checkpoint import MODEL_KEYS
from fkd_core.rundir import CHECKPOINT
from sweep.recovery import OPTUNA_TRIAL, RESUME_CHECKPOINT, RESUME_OF, plan, scan
from sweep.spaces import from_dict
from sweep.trainable import ROWS_FILE

CFG = {"backbone": "small_cnn", "max_epochs": 4, "seed": 0}


def row(epoch: int, **extra) -> dict:
    return {"epoch": epoch, "val_rmse_px": 3.0 / epoch, "diverged": False, **extra}


def trial_folder(root: Path, name: str, params: dict, results: list[str],
                 checkpoints: dict[str, int | None] = {}, rows: list[dict] = ()) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "result.json").write_text("".join(line + "\n" for line in results))
    for ckpt, epoch in checkpoints.items():
        (folder / ckpt).mkdir()
        if epoch is None:   # cut short by the kill
            (folder / ckpt / CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
        else:
            # every key fkd_core.train.load_checkpoint asks for, so it loads as a real one does
            torch.save({**dict.fromkeys(MODEL_KEYS, 0), "format": 1, "epoch": epoch},
                       folder / ckpt / CHECKPOINT)
            (folder / ckpt / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_scan_reads_rows_and_the_newest_checkpoint_that_loads(tmp_path):
    trial_folder(tmp_path, "aaa", {"cfg": CFG, OPTUNA_TRIAL: 3},
                 [json.dumps(row(1)), '{"epoch": 2, "val_rm'],          # last line cut short
                 {"checkpoint_000001": 2, "checkpoint_000002": None},
                 rows=[row(1), row(2)])
    (tmp_path / "bbb").mkdir()                                           # never started
    found = scan(tmp_path)
    assert list(found) == ["aaa"]
    trial = found["aaa"]
    assert trial.optuna_trial == 3 and trial.cfg == CFG
    assert trial.checkpoint == str(tmp_path / "aaa" / "checkpoint_000001") and trial.checkpoint_epoch == 2
    assert sorted(trial.rows) == [1, 2]         # epoch 2 from the checkpoint's own rows
    assert not trial.stopped_by_tune


def test_a_rerun_folder_folds_into_the_trial_it_continues(tmp_path):
    import os
    import time

    trial_folder(tmp_path, "aaa", {"cfg": CFG, OPTUNA_TRIAL: 0}, [json.dumps(row(1))],
                 {"checkpoint_000000": 1}, rows=[row(1)])
    old = time.time() - 60
    os.utime(tmp_path / "aaa", (old, old))
    trial_folder(tmp_path, "ccc", {"cfg": CFG, OPTUNA_TRIAL: 0, RESUME_OF: "aaa"},
                 [json.dumps(row(2)), json.dumps(row(3, done=True))],
                 {"checkpoint_000001": 3}, rows=[row(1), row(2), row(3)])
    found = scan(tmp_path)
    assert list(found) == ["aaa"] and sorted(found["aaa"].rows) == [1, 2, 3]
    assert found["aaa"].checkpoint.endswith("ccc/checkpoint_000001") and found["aaa"].stopped_by_tune


def _study(n_enqueued: int, started: int) -> optuna.Study:
    """Grid points enqueued as sweep.run does, the first `started` asked (RUNNING)."""
    study = optuna.create_study(direction="minimize")
    for _ in range(n_enqueued):
        study.enqueue_trial({})
    for _ in range(started):
        trial = study.ask()
        trial.set_user_attr("seed", trial.number % 5)
    return study


def test_plan_sorts_every_proposed_trial_once(tmp_path):
    space = from_dict({"grid": True, "seeds": 5, "max_epochs": 4, "asha": None, "axes": {},
                       "fixed": {"backbone": "small_cnn"}})
    study = _study(5, started=4)            # 0..3 proposed, 4 still WAITING
    done = trial_folder(tmp_path, "t0", {"cfg": {**CFG, "seed": 0}, OPTUNA_TRIAL: 0},
                        [json.dumps(row(e)) for e in (1, 2, 3, 4)])
    trial_folder(tmp_path, "t1", {"cfg": {**CFG, "seed": 1}, OPTUNA_TRIAL: 1},
                 [json.dumps(row(1))], {"checkpoint_000001": 2}, rows=[row(1), row(2)])
    trial_folder(tmp_path, "t2", {"cfg": {**CFG, "seed": 2}, OPTUNA_TRIAL: 2},
                 [json.dumps(row(e)) for e in (1, 2, 3, 4)])            # ran its budget
    # t3 was proposed (Optuna number 3) but the driver died before Tune started it.
    todo = plan(study, space, scan(tmp_path), recorded={done.name})

    assert [t.trial_id for t in todo.settle] == ["t2"]
    by_number = {item[OPTUNA_TRIAL]: item for item in todo.rerun}
    assert sorted(by_number) == [1, 3] and todo.proposed == 4
    assert by_number[1][RESUME_OF] == "t1"
    assert by_number[1][RESUME_CHECKPOINT] == str(tmp_path / "t1" / "checkpoint_000001")
    assert by_number[3][RESUME_CHECKPOINT] is None and by_number[3]["cfg"]["seed"] == 3
    assert len(by_number[3][RESUME_OF]) == 8 and by_number[3][RESUME_OF] not in {"t0", "t1", "t2"}
    assert todo.numbers == {"t0": 0, "t1": 1, "t2": 2, by_number[3][RESUME_OF]: 3}


def test_folders_from_before_the_optuna_number_match_by_config(tmp_path):
    space = from_dict({"grid": True, "seeds": 2, "max_epochs": 4, "asha": None, "axes": {},
                       "fixed": {"backbone": "small_cnn"}})
    study = _study(2, started=2)
    trial_folder(tmp_path, "old", {"cfg": space.fields({}, seed=1)}, [json.dumps(row(1))])
    todo = plan(study, space, scan(tmp_path), recorded=set())
    assert todo.numbers["old"] == 1
    assert {item[OPTUNA_TRIAL]: item[RESUME_OF] for item in todo.rerun}[1] == "old"


def test_scan_reads_a_file_uri_as_it_reads_the_folder(tmp_path):
    """issue 21, item 1: a URI --storage resumes through scan too (pyarrow filesystems), not
    through Tune's Tuner.restore."""
    trial_folder(tmp_path, "aaa", {"cfg": CFG, OPTUNA_TRIAL: 1}, [json.dumps(row(1))],
                 {"checkpoint_000000": 1}, rows=[row(1)])
    (tmp_path / "tuner.pkl").write_bytes(b"\x80\x04 never read")
    local, uri = scan(tmp_path), scan(f"file://{tmp_path}")
    assert list(uri) == list(local) == ["aaa"]
    assert uri["aaa"].rows == local["aaa"].rows and uri["aaa"].checkpoint_epoch == 1
    assert uri["aaa"].checkpoint == str(tmp_path / "aaa" / "checkpoint_000000")
