"""TrialConfig.checkpoint_every / checkpoint_best: which epochs write checkpoint.pt and best.pt,
which epochs the sweep hands to Tune, and that a resume from the last written epoch still
reproduces an uninterrupted run."""
from __future__ import annotations

import shutil

import pytest

from fkd_core import metrics, trainer
from fkd_core.config import TrialConfig
from fkd_core.data import load_dataset
from fkd_core.checkpoint import checkpoint_due, load_checkpoint
from fkd_core.rundir import BEST, CHECKPOINT
from fkd_core.trainer import train
from sweep import trainable
from sweep.spaces import data_key
from tests.test_train import _timeless

# Two training steps of 24 faces per epoch on the CPU.
FAST = dict(synth_n=64, batch_size=24, device="cpu", patience=50)


@pytest.fixture(scope="module")
def faces():
    return load_dataset("synthetic", synth_n=FAST["synth_n"], synth_seed=0)


def _epochs_on_disk(directory):
    """(epoch in checkpoint.pt, epoch in best.pt), None where the file is absent."""
    return tuple(load_checkpoint(directory / name)["epoch"] if (directory / name).is_file() else None
                 for name in (CHECKPOINT, BEST))


def test_checkpoint_due():
    assert [e for e in range(1, 8) if checkpoint_due(3, e, last=e == 7)] == [3, 6, 7]
    assert [e for e in range(1, 5) if checkpoint_due(0, e, last=e == 4)] == [4]
    assert all(checkpoint_due(1, e, last=False) for e in range(1, 5))
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        TrialConfig(checkpoint_every=-1)


def _scripted(monkeypatch, rmses):
    """Validation RMSEs in the given order, so that the improving epochs are known."""
    script = iter(rmses)

    def evaluate(*args, **kwargs):
        rmse = next(script)
        return {"loss": rmse ** 2, "rmse_px": rmse, "nme": 0.1, "shape_err_px": 1.0}

    monkeypatch.setattr(trainer, "evaluate", evaluate)


def test_every_n_epochs_and_no_best(faces, tmp_path, monkeypatch):
    _scripted(monkeypatch, [5.0, 4.0, 3.0, 2.0, 1.0])
    seen = []
    cfg = TrialConfig(**FAST, max_epochs=5, checkpoint_every=2, checkpoint_best=False)
    train(cfg, faces, lambda row: seen.append(_epochs_on_disk(tmp_path)), checkpoint_dir=str(tmp_path))
    # After epoch 1 nothing; 2 and 4 are due; 5 is the last epoch, always written; never best.pt.
    assert seen == [(None, None), (2, None), (2, None), (4, None), (5, None)]


def test_best_only_writes_best_on_improvement_and_the_last_epoch(faces, tmp_path, monkeypatch):
    _scripted(monkeypatch, [5.0, 4.0, 4.5, 3.0, 3.5, 3.6])
    seen = []
    cfg = TrialConfig(**{**FAST, "patience": 2}, max_epochs=10, checkpoint_every=0)
    summary = train(cfg, faces, lambda row: seen.append(_epochs_on_disk(tmp_path)), checkpoint_dir=str(tmp_path))
    assert summary.stopped == "early_stop" and summary.epochs == 6
    # The early stop at epoch 6 is the trial's last epoch: its resume point is written.
    assert seen == [(None, 1), (None, 2), (None, 2), (None, 4), (None, 4), (6, 4)]


def test_resume_from_the_last_written_epoch_repeats_the_rest_identically(faces, tmp_path):
    cfg = TrialConfig(**FAST, max_epochs=4, augment="study", checkpoint_every=2)
    straight: list[dict] = []
    train(cfg, faces, straight.append)

    class Killed(Exception):
        pass

    def dies_after_epoch_3(row):
        if row[metrics.EPOCH] == 3:
            raise Killed
    with pytest.raises(Killed):
        train(cfg, faces, dies_after_epoch_3, checkpoint_dir=str(tmp_path))
    assert load_checkpoint(tmp_path)["epoch"] == 2      # epoch 3 was not a resume point
    resumed: list[dict] = []
    summary = train(cfg, faces, resumed.append, checkpoint_dir=str(tmp_path), resume_from=str(tmp_path))
    assert [r[metrics.EPOCH] for r in resumed] == [3, 4]
    assert [_timeless(r) for r in resumed] == [_timeless(r) for r in straight[2:]]
    assert summary.epochs == 4 and load_checkpoint(tmp_path)["epoch"] == 4


@pytest.fixture()
def fake_tune(monkeypatch, tmp_path):
    """tune.report that persists each handed checkpoint (as Tune copies it to storage) and
    tune.get_checkpoint that returns the last persisted one."""
    from ray import tune

    reported, persisted = [], []

    def report(metrics_row, checkpoint=None):
        saved = None
        if checkpoint is not None:
            saved = tmp_path / f"persisted-{len(reported)}"
            shutil.copytree(checkpoint.path, saved)
            persisted.append(saved)
        reported.append((metrics_row[metrics.EPOCH], saved))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint",
                        lambda: tune.Checkpoint.from_directory(str(persisted[-1])) if persisted else None)
    monkeypatch.setattr(trainable, "_assigned_resources", lambda: {"CPU": 1.0})
    return reported


@pytest.mark.filterwarnings("ignore:`get_checkpoint` is meant")
def test_sweep_hands_tune_only_written_epochs_and_resumes_from_the_last(faces, fake_tune):
    cfg = TrialConfig(**FAST, max_epochs=4, checkpoint_every=2, checkpoint_best=False)
    datasets = {data_key(cfg): trainable.share(faces)}
    threads = trainable.torch.get_num_threads()   # train_trial sets it to the trial's CPUs

    def crashing_train(cfg, data, report, **kwargs):
        def report_then_crash(row):
            report(row)
            if row[metrics.EPOCH] == 3:
                raise RuntimeError("worker lost")
        return train(cfg, data, report_then_crash, **kwargs)

    try:
        with pytest.raises(RuntimeError, match="worker lost"):
            trainable.train_trial({"cfg": cfg.to_dict()}, datasets=datasets, train_fn=crashing_train)
        assert [(epoch, saved is not None) for epoch, saved in fake_tune] == [(1, False), (2, True), (3, False)]
        trainable.train_trial({"cfg": cfg.to_dict()}, datasets=datasets)   # Tune's retry
    finally:
        trainable.torch.set_num_threads(threads)
    assert [(epoch, saved is not None) for epoch, saved in fake_tune[3:]] == [(3, False), (4, True)]
    assert load_checkpoint(fake_tune[-1][1])["epoch"] == 4
