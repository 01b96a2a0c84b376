"""train(): real epochs on small synthetic sets; divergence, checkpoints, resume, host syncs, CLI."""
from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from fkd_core import device, loop, metrics, train as train_module, trainer
from fkd_core.config import TrialConfig
from fkd_core.data import held_out_rows, load_dataset
from fkd_core.rundir import RunLock
from fkd_core.checkpoint import load_checkpoint
from fkd_core.rundir import BEST, CHECKPOINT
from fkd_core.trainer import train, training_split

# Small and fast: 8 training steps of 24 faces per epoch on the CPU.
FAST = dict(synth_n=224, batch_size=24, device="cpu", patience=50)


@pytest.fixture(scope="module")
def faces():
    return load_dataset("synthetic", synth_n=FAST["synth_n"], synth_seed=0)


def _timeless(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in (metrics.EPOCH_SECONDS, metrics.IMAGES_PER_S)}


def test_two_epochs_lower_the_loss_and_report_each_epoch(faces):
    rows: list[dict] = []
    summary = train(TrialConfig(**FAST, max_epochs=2), faces, rows.append)
    assert [r[metrics.EPOCH] for r in rows] == [1, 2]
    assert all(tuple(r) == metrics.EPOCH_ROW_KEYS for r in rows)
    assert rows[1][metrics.TRAIN_LOSS] < rows[0][metrics.TRAIN_LOSS]
    assert not any(r[metrics.DIVERGED] for r in rows)
    assert summary.epochs == 2 and summary.stopped == "max_epochs"
    assert summary.best_val_rmse_px == min(r[metrics.VAL_RMSE] for r in rows)
    assert 0.0 < summary.final_val_nme < 1.0          # kaggle15 has a normalising pair


@pytest.mark.parametrize("changes", [
    dict(shape="seed_cgd", alpha=1e38),               # loss is inf from the first step
    dict(optimizer="sgd", lr=1e4),                     # weights explode to NaN within the epoch
])
def test_exploding_loss_ends_as_diverged(faces, tmp_path, changes):
    rows: list[dict] = []
    summary = train(TrialConfig(**FAST, max_epochs=5, **changes), faces, rows.append,
                    checkpoint_dir=str(tmp_path))
    assert len(rows) == 1 and rows[0][metrics.DIVERGED] is True
    assert rows[0][metrics.VAL_RMSE] == math.inf and rows[0][metrics.TRAIN_LOSS] == math.inf
    assert summary.stopped == "diverged" and summary.epochs == 1
    assert summary.best_val_rmse_px == math.inf
    assert not (tmp_path / CHECKPOINT).exists()        # NaN weights are never saved


def test_early_stopping_on_validation_rmse(faces, monkeypatch):
    # Scripted validation RMSEs: best at epoch 2, then two epochs without improvement.
    script = iter([5.0, 4.0, 4.5, 4.0, 3.0, 2.0])

    def scripted_evaluate(*args, **kwargs):
        rmse = next(script)
        return {"loss": rmse ** 2, "rmse_px": rmse, "nme": 0.1, "shape_err_px": 1.0}

    monkeypatch.setattr(trainer, "evaluate", scripted_evaluate)
    rows: list[dict] = []
    summary = train(TrialConfig(**{**FAST, "patience": 2}, max_epochs=6), faces, rows.append)
    assert summary.stopped == "early_stop"
    assert summary.epochs == len(rows) == 4 and summary.best_epoch == 2
    assert summary.best_val_rmse_px == 4.0 and summary.final_val_rmse_px == 4.0


def test_resume_continues_with_identical_weights_and_is_reproducible(faces, tmp_path):
    cfg = TrialConfig(**FAST, max_epochs=3, augment="study", dropout=0.3)
    straight: list[dict] = []
    train(cfg, faces, straight.append, checkpoint_dir=str(tmp_path / "a"))
    first: list[dict] = []
    train(cfg.replace(max_epochs=2), faces, first.append, checkpoint_dir=str(tmp_path / "b"))
    # Same config, same seed: the same numbers (CPU is deterministic here).
    assert [_timeless(r) for r in first] == [_timeless(r) for r in straight[:2]]
    resumed: list[dict] = []
    summary = train(cfg, faces, resumed.append, checkpoint_dir=str(tmp_path / "b"),
                    resume_from=str(tmp_path / "b"))
    assert [r[metrics.EPOCH] for r in resumed] == [3]
    assert _timeless(resumed[0]) == _timeless(straight[2])
    assert summary.epochs == 3
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b" / CHECKPOINT)
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    best = torch.load(tmp_path / "a" / BEST, weights_only=True)
    assert best["epoch"] == best["progress"]["best_epoch"]
    assert best["schema"] == "kaggle15" and best["config"]["backbone"] == "small_cnn"


_SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _count_host_syncs(monkeypatch) -> dict[str, int]:
    """Count tensor->host reads made directly by fkd_core code (torch's own internals excluded:
    Adam reads its CPU step counter, which is no device sync)."""
    counts = {"n": 0}
    for name in _SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, **kwargs):
            if "fkd_core" in sys._getframe(1).f_code.co_filename:
                counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return counts


@pytest.mark.parametrize("augment", ["none", "full"])
def test_no_host_sync_per_step(faces, monkeypatch, augment):
    """Host reads per epoch must not grow with the number of steps."""
    counts = _count_host_syncs(monkeypatch)
    per_run = []
    for batch_size in (56, 14):                        # 4 and 14 training steps per epoch
        counts["n"] = 0
        train(TrialConfig(**{**FAST, "batch_size": batch_size}, max_epochs=1, augment=augment),
              faces, lambda row: None)
        per_run.append(counts["n"])
    assert per_run[0] == per_run[1], f"host reads grew with steps: {per_run}"
    assert per_run[0] <= 4


def _count_device_transfers(monkeypatch) -> dict[str, int]:
    """Count what would be a host->device copy on a GPU, made directly by fkd_core code: tensors
    built from host data (torch.tensor, as_tensor, from_numpy) and .to()/.cuda() with a device.
    On the CPU these copy nothing, which is why they are counted by call, not by effect."""
    counts = {"n": 0}

    def counting(original, is_copy):
        def wrapper(*args, **kwargs):
            if "fkd_core" in sys._getframe(1).f_code.co_filename and is_copy(args, kwargs):
                counts["n"] += 1
            return original(*args, **kwargs)
        return wrapper

    always = lambda args, kwargs: True
    to_device = lambda args, kwargs: (kwargs.get("device") is not None
                                      or any(isinstance(a, (torch.device, str)) for a in args[1:]))
    for name in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, counting(getattr(torch, name), always))
    monkeypatch.setattr(torch.Tensor, "to", counting(torch.Tensor.to, to_device))
    monkeypatch.setattr(torch.Tensor, "cuda", counting(torch.Tensor.cuda, always))
    return counts


@pytest.mark.parametrize("augment", ["none", "full"])
def test_no_host_to_device_copy_per_step(faces, monkeypatch, augment):
    """Data, batches, augmentation draws and metrics stay on the device: the number of
    host->device transfers of an epoch must not grow with its number of steps."""
    train(TrialConfig(**FAST, max_epochs=1, augment=augment), faces, lambda row: None)  # warm imports
    counts = _count_device_transfers(monkeypatch)
    per_run = []
    for batch_size in (56, 14):                        # 4 and 14 training steps per epoch
        counts["n"] = 0
        train(TrialConfig(**{**FAST, "batch_size": batch_size}, max_epochs=1, augment=augment),
              faces, lambda row: None)
        per_run.append(counts["n"])
    assert per_run[0] == per_run[1], f"host->device transfers grew with steps: {per_run}"
    assert per_run[0] > 0   # the counter sees train's one-off moves of data and model


def test_bf16_autocast_path_runs_on_cpu(faces):
    # The CUDA recipe (bf16 autocast, channels_last) exercised where tests run: the CPU.
    rows: list[dict] = []
    train(TrialConfig(**FAST, max_epochs=1, precision="bf16", channels_last=True), faces, rows.append)
    assert math.isfinite(rows[0][metrics.VAL_RMSE]) and not rows[0][metrics.DIVERGED]


def test_checkpoint_holds_only_plain_types(faces, tmp_path):
    train(TrialConfig(**FAST, max_epochs=1), faces, lambda row: None, checkpoint_dir=str(tmp_path))
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)      # raises on any object
    assert set(state) >= {"model", "optimizer", "scheduler", "epoch", "rng", "progress",
                          "mean_face", "schema", "config"}
    assert state["mean_face"].shape == (15, 2)


def test_cli_trains_writes_files_and_prints_json_last(tmp_path, capsys):
    out = tmp_path / "run"
    code = train_module.main(["--data", "synthetic", "--synth-n", "120", "--epochs", "1",
                              "--loss", "wing+cgd", "--batch-size", "32", "--device", "cpu",
                              "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and summary["stopped"] == "max_epochs"
    assert summary["best_val_rmse_px"] > 0
    assert "synthetic" in captured.err
    assert (out / BEST).is_file() and (out / "metrics.csv").is_file() and (out / "summary.json").is_file()
    assert load_checkpoint(out / BEST)["config"]["shape"] == "cgd"


@pytest.mark.parametrize("argv", [
    ["--loss", "huber"],
    ["--data", "/nonexistent/training.csv", "--epochs", "1"],
    ["--backbone", "vgg16", "--synth-n", "20", "--epochs", "1"],
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, tmp_path, capsys):
    code = train_module.main(argv + ["--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:")


def test_splits_share_the_data_sets_images_instead_of_copying(faces, monkeypatch):
    """A sweep node holds the data set once: each trial gathers batches from the shared tensor."""
    made = []
    original = loop.Batches.of
    monkeypatch.setattr(loop.Batches, "of",
                        classmethod(lambda cls, *a: made.append(original(*a)) or made[-1]))
    train(TrialConfig(max_epochs=1, batch_size=64), faces, lambda row: None)
    train_rows, val_rows = made
    assert train_rows.images.data_ptr() == val_rows.images.data_ptr() == faces.images.data_ptr()
    assert len(train_rows) + len(val_rows) + len(held_out_rows(faces, TrialConfig())) == len(faces)
    assert set(train_rows.rows.tolist()).isdisjoint(val_rows.rows.tolist())


def test_drop_policy_trains_on_complete_rows_only():
    data = load_dataset("synthetic-missing", synth_n=200, synth_seed=0)
    train_idx, train_kps, val_idx = trainer.split_rows(data, TrialConfig(missing="drop"))
    assert torch.isfinite(train_kps).all()
    assert 0 < len(train_idx) < 200 - len(val_idx)
    assert torch.equal(train_kps, data.keypoints[train_idx])


# --- packed GPU trials: each caps its allocator at its share ----------------------------------

def test_gpu_memory_fraction_leaves_room_for_each_cuda_context():
    gib = 2**30
    # A quarter of an 80 GiB card minus a 0.75 GiB context: 20 - 0.75 = 19.25 GiB = 0.240625.
    assert device.gpu_memory_fraction(0.25, 80 * gib, context_bytes=3 * gib // 4) == pytest.approx(0.240625)
    for share in (1.0, 0.5, 0.25, 0.125):
        trials = round(1 / share)
        caps = trials * device.gpu_memory_fraction(share, 80 * gib) * 80 * gib
        assert caps + trials * device.CUDA_CONTEXT_BYTES == pytest.approx(80 * gib)


@pytest.mark.parametrize("share,message", [(0.0, "in (0, 1]"), (1.5, "in (0, 1]"),
                                           (0.125, "leaves nothing after the CUDA context")])
def test_gpu_memory_fraction_rejects_shares_that_cannot_fit(share, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        device.gpu_memory_fraction(share, 4 * 2**30, context_bytes=2**30)


def test_limit_gpu_memory_caps_only_a_shared_cuda_device(monkeypatch):
    calls = []

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, i: calls.append((f, i)))
    assert device.limit_gpu_memory(0.25, torch.device("cpu")) is None
    assert device.limit_gpu_memory(1.0, torch.device("cuda", 0)) is None
    assert calls == []
    got = device.limit_gpu_memory(0.5, torch.device("cuda", 1))
    assert calls == [(got, 1)] and got == pytest.approx(0.5 - device.CUDA_CONTEXT_BYTES / Props.total_memory)


def test_cli_compile_flag_sets_mode():
    parse = lambda argv: train_module.config_from_args(train_module._parser().parse_args(argv))  # noqa: E731
    assert (parse([]).compile, parse([]).compile_mode) == (False, "default")
    assert (parse(["--compile"]).compile, parse(["--compile"]).compile_mode) == (True, "default")
    cfg = parse(["--compile", "reduce-overhead"])
    assert (cfg.compile, cfg.compile_mode) == (True, "reduce-overhead")
    with pytest.raises(ValueError, match="compile_mode"):
        TrialConfig(compile=True, compile_mode="fast")


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(faces):
    """TrialConfig.compile: same seed, same data -> the same learning within float tolerance
    (dropout off: compiled graphs draw their dropout masks from a different random stream)."""
    runs = {}
    for compiled in (False, True):
        rows: list[dict] = []
        train(TrialConfig(**FAST, max_epochs=2, dropout=0.0, compile=compiled), faces, rows.append)
        runs[compiled] = rows
    for eager, compiled in zip(runs[False], runs[True]):
        assert compiled[metrics.TRAIN_LOSS] == pytest.approx(eager[metrics.TRAIN_LOSS], rel=1e-2)
        assert compiled[metrics.VAL_RMSE] == pytest.approx(eager[metrics.VAL_RMSE], rel=1e-2)
    assert runs[True][1][metrics.TRAIN_LOSS] < runs[True][0][metrics.TRAIN_LOSS]


# --- progress inside an epoch ----------------------------------------------------------------

def test_on_step_reports_every_step_of_every_epoch(faces):
    calls: list[tuple[int, int]] = []
    train(TrialConfig(**FAST, max_epochs=2), faces, lambda row: None, on_step=lambda s, n: calls.append((s, n)))
    n_train = len(faces) - 2 * round(0.15 * len(faces))         # 224 faces, 15% val + 15% test -> 156
    steps = -(-n_train // FAST["batch_size"])                    # 7 batches of 24 (the last 12)
    assert steps == 7 and calls == [(s, steps) for s in range(1, steps + 1)] * 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_step_bar_draws_in_place_on_a_terminal_only(monkeypatch):
    bar = train_module.StepBar(_Terminal(), "synthetic", max_epochs=30, every=0.5)
    assert bar.render(10, 40, 20.0, width=8) == \
        "[synthetic] epoch   1/30 [##......] 10/40 steps  20 s, ~60 s left"
    clock = iter([0.0, 0.1, 0.2, 0.7, 0.8, 9.0, 9.1])
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    for step in (1, 2, 3, 4, 5):       # throttled to every 0.5 s, but the last step is always drawn
        bar(step, 5)
    drawn = bar.stream.getvalue().split("\r")[1:]
    assert [d.split("] ")[-1].split(" steps")[0] for d in drawn] == ["1/5", "4/5", "5/5"]
    bar.epoch_done(2)
    assert bar.stream.getvalue().endswith("\r\033[K") and bar.epoch == 2
    quiet = train_module.StepBar(io.StringIO(), "x", 3)
    quiet(1, 1)
    quiet.epoch_done(2)
    assert quiet.stream.getvalue() == ""


def test_step_bar_gives_no_estimate_before_a_step_is_timed(monkeypatch):
    """The clock starts when step 1 ends: at step 1 nothing is timed yet ("~0 s left" was wrong);
    at step 3 two steps took 4 s, so the 7 steps left take ~14 s."""
    clock = iter([0.0, 100.0, 104.0])   # __init__, step 1, step 3
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    bar = train_module.StepBar(_Terminal(), "x", max_epochs=1, every=0.0)
    bar(1, 10)
    bar(3, 10)
    first, third = bar.stream.getvalue().split("\r")[1:]
    assert first.endswith("1/10 steps  0 s, estimating time left")
    assert third.endswith("3/10 steps  4 s, ~14 s left")


# --- a run that diverges in its first epoch (issue 13, item 10) -------------------------------

@pytest.mark.parametrize("lr", ["1e30", "1e38"])   # 1e38 overflows float32 inside Adam's update
def test_cli_first_epoch_divergence_is_recorded_not_a_traceback(lr, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_module.main(["--synth-n", "60", "--epochs", "3", "--lr", lr, "--device", "cpu",
                              "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert "diverged in epoch 1" in captured.err.strip().splitlines()[-1]
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("1,inf,inf,inf") and lines[1].endswith(",True")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "diverged" and summary["epochs"] == 1
    assert summary["best_val_rmse_px"] is None            # inf, written as strict-JSON null
    assert not (out / BEST).exists() and not (out / CHECKPOINT).exists()


def test_adam_overflow_inside_the_optimiser_is_a_divergence(faces):
    rows: list[dict] = []
    summary = train(TrialConfig(**FAST, max_epochs=3, lr=1e38), faces, rows.append)
    assert summary.stopped == "diverged" and [r[metrics.DIVERGED] for r in rows] == [True]


def test_data_with_every_keypoint_missing_is_rejected_in_one_line(tmp_path, capsys):
    data = load_dataset("synthetic", synth_n=40, synth_seed=0)
    empty = type(data)(**{**{f: getattr(data, f) for f in data.__dataclass_fields__},
                          "keypoints": torch.full_like(data.keypoints, math.nan)})
    # 40 faces, each its own group: 6 test + 6 validation (15% each), 28 training rows
    with pytest.raises(ValueError, match="no keypoint is present in the 28 training rows"):
        train(TrialConfig(**FAST, max_epochs=1), empty, lambda row: None)


# --- accuracy: schedules, heads, flip averaging, recipes ------------------------------------------


def test_cosine_schedule_with_warmup_gives_the_hand_computed_learning_rates(faces):
    rows: list[dict] = []
    train(TrialConfig(**FAST, max_epochs=4, lr=1e-3, schedule="cosine", warmup_epochs=1,
                      optimizer="adamw", weight_decay=0.05), faces, rows.append)
    # Warm-up epoch: lr * 1/2; then a half cosine over the 3 remaining epochs: cos(0), cos(pi/3),
    # cos(2 pi/3) -> factors 1, 0.75, 0.25.
    assert [r[metrics.LR] for r in rows] == pytest.approx([5e-4, 1e-3, 7.5e-4, 2.5e-4])


def test_onecycle_factors_rise_then_fall_to_a_ten_thousandth():
    from fkd_core.schedules import onecycle_factor

    factors = [onecycle_factor(e, 10, 0) for e in range(10)]     # warm-up: 30% = 3 epochs
    assert factors[0] == pytest.approx(0.04) and factors[3] == pytest.approx(1.0)
    assert factors[9] == pytest.approx(1e-4) and factors.index(max(factors)) == 3
    assert all(a > b for a, b in zip(factors[3:], factors[4:]))


def _uninterrupted_and_resumed(cfg: TrialConfig, faces, tmp_path, crash_after: int) -> tuple[list, list]:
    """The rows of cfg trained in one go (into tmp_path/a), and of the same trial crashed after
    epoch crash_after's checkpoint and resumed from it (tmp_path/b)."""
    full: list[dict] = []
    train(cfg, faces, full.append, checkpoint_dir=str(tmp_path / "a"))
    resumed: list[dict] = []

    def interrupted(row: dict) -> None:
        resumed.append(row)
        if len(resumed) == crash_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, faces, interrupted, checkpoint_dir=str(tmp_path / "b"))
    train(cfg, faces, resumed.append, checkpoint_dir=str(tmp_path / "b"), resume_from=str(tmp_path / "b"))
    return full, resumed


def test_heatmap_head_with_flip_averaging_trains_and_resumes_identically(faces, tmp_path):
    cfg = TrialConfig(**FAST, max_epochs=2, backbone="res_cnn", width=0.5, head="heatmap",
                      heatmap_size=12, tta_flip=True, schedule="cosine", augment="robust")
    full: list[dict] = []
    full, resumed = _uninterrupted_and_resumed(cfg, faces, tmp_path, crash_after=1)
    assert full[1][metrics.TRAIN_LOSS] < full[0][metrics.TRAIN_LOSS]
    assert [_timeless(r) for r in resumed] == [_timeless(r) for r in full]
    state = load_checkpoint(tmp_path / "a" / BEST)
    assert state["config"]["tta_flip"] and "head.logits.weight" in state["model"]


def test_weight_average_resumes_identically_and_is_what_best_pt_holds(faces, tmp_path):
    """ema_decay: after a crash the average and the trained weights both come back (identical
    rows); best.pt's "model" is the average (what predict loads), "train_model" the trained one."""
    cfg = TrialConfig(**FAST, max_epochs=3, head="unet", ema_decay=0.9, schedule="cosine")
    full, resumed = _uninterrupted_and_resumed(cfg, faces, tmp_path, crash_after=2)
    assert [_timeless(r) for r in resumed] == [_timeless(r) for r in full]
    state = load_checkpoint(tmp_path / "a" / CHECKPOINT)
    steps = 3 * -(-len(training_split(faces, cfg)[0]) // cfg.batch_size)
    assert state["ema_updates"] == steps
    assert any(not torch.equal(state["model"][k], state["train_model"][k]) for k in state["model"])


def test_weight_average_is_the_warmed_up_exponential_average_of_the_steps(faces):
    """Hand-computed: the first update copies w1; update t (t earlier ones) uses decay
    d_t = min(decay, (1 + t) / (10 + t)): d_1 = 2/11 (below the cap 0.2), then the cap."""
    from fkd_core.averaging import build_ema
    net = torch.nn.Linear(1, 1, bias=False)
    ema = build_ema(net, 0.2)
    expected = None
    for t, w in enumerate((1.0, 2.0, 4.0, 8.0)):
        net.weight.data.fill_(w)
        ema.update_parameters(net)
        d = min(0.2, (1 + t) / (10 + t))   # t earlier updates
        expected = w if t == 0 else d * expected + (1 - d) * w
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6), t
    # 1 -> 2/11*1 + 9/11*2 = 1.818 (warm-up 2/11 < 0.2) -> then the cap 0.2 from t = 2 on
    assert expected == pytest.approx(0.2 * (0.2 * (2 / 11 + 18 / 11) + 0.8 * 4) + 0.8 * 8)
    with pytest.raises(ValueError, match="ema decay=1: expected a value in"):
        build_ema(net, 1.0)
    # and fkd_core.train uses it for validation: decay 0 and decay 0.99 give the same training
    # steps and different validation numbers.
    rows = {}
    for decay in (0.0, 0.99):
        out: list[dict] = []
        train(TrialConfig(**FAST, max_epochs=1, ema_decay=decay), faces, out.append)
        rows[decay] = out[0]
    assert rows[0.0][metrics.TRAIN_LOSS] == rows[0.99][metrics.TRAIN_LOSS]
    assert rows[0.0][metrics.VAL_RMSE] != rows[0.99][metrics.VAL_RMSE]


def test_flip_averaging_changes_validation_only(faces):
    base = TrialConfig(**FAST, max_epochs=1)
    plain: list[dict] = []
    flipped: list[dict] = []
    train(base, faces, plain.append)
    train(base.replace(tta_flip=True), faces, flipped.append)
    assert plain[0][metrics.TRAIN_LOSS] == flipped[0][metrics.TRAIN_LOSS]   # same training steps
    assert plain[0][metrics.VAL_RMSE] != flipped[0][metrics.VAL_RMSE]


def test_cli_recipe_writes_a_best_pt_that_predict_reads(tmp_path, capsys):
    from fkd_core.predict import load_model, predict

    out = tmp_path / "best"
    code = train_module.main(["--recipe", "best-cpu", "--data", "synthetic", "--synth-n", "60",
                              "--epochs", "1", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    state = load_checkpoint(out / BEST)
    assert state["config"]["head"] == "heatmap" and state["config"]["max_epochs"] == 1
    faces = load_dataset("synthetic", synth_n=3, synth_seed=5)
    assert predict(load_model(out / BEST), faces.images).shape == (3, 15, 2)


# --- the run folder of the CLI (issue 21, items 2-4, 8-10) ----------------------------------------

TINY = ["--synth-n", "60", "--batch-size", "32", "--device", "cpu", "--patience", "100"]


def _cli(out, *extra: str) -> int:
    return train_module.main(TINY + ["--out", str(out), *extra])


def _epochs_in(out) -> list[int]:
    return [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]


def test_cli_refuses_an_existing_run_without_resume_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(out, "--epochs", "2") == 0
    best = (out / BEST).read_bytes()
    capsys.readouterr()
    assert _cli(out, "--epochs", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out}: holds a training run (checkpoint.pt, best.pt, metrics.csv, summary.json); "
                   "pass --resume to continue it or --overwrite to replace it"]
    assert (out / BEST).read_bytes() == best and _epochs_in(out) == [1, 2]
    assert _cli(out, "--epochs", "1", "--overwrite") == 0
    assert _epochs_in(out) == [1] and load_checkpoint(out / CHECKPOINT)["epoch"] == 1


def test_cli_refuses_a_folder_another_run_holds(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = RunLock(out)
    holder.acquire()
    try:
        assert _cli(out, "--epochs", "1") == 2
    finally:
        holder.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {out}: in use by another training run (pid {os.getpid()} on ")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]   # nothing of the refused run


def _signal_at(monkeypatch, epoch: int, signum: int) -> None:
    """Send signum to this process right after the report of ``epoch`` starts (as Ctrl-C would)."""
    real = train_module.train

    def train_then_signal(cfg, data, report, **kwargs):
        def report_and_signal(row):
            if row[metrics.EPOCH] == epoch:
                os.kill(os.getpid(), signum)
            report(row)
        return real(cfg, data, report_and_signal, **kwargs)

    monkeypatch.setattr(train_module, "train", train_then_signal)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_interrupted_at_epoch_12_writes_its_summary_and_resumes_to_30_rows(signum, code, tmp_path,
                                                                               capsys, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _signal_at(m, 12, signum)
        assert _cli(out, "--epochs", "30") == code
    err = capsys.readouterr().err
    name = signal.Signals(signum).name
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"interrupted by {name}; the epochs done are in {out}; continue with --out {out} --resume")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and summary["signal"] == name and summary["epochs"] == 12
    assert _epochs_in(out) == list(range(1, 13)) and load_checkpoint(out)["epoch"] == 12
    assert _cli(out, "--epochs", "30", "--resume") == 0
    assert _epochs_in(out) == list(range(1, 31))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "max_epochs" and summary["epochs"] == 30


def test_cli_on_a_full_disk_names_the_path_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    real, writes = Path.write_bytes, []

    def full_disk_in_epoch_2(self, payload):   # the disk fills up while epoch 2's checkpoint is written
        if self.name.startswith(f".{CHECKPOINT}."):
            writes.append(self)
            if len(writes) == 2:
                real(self, payload[:100])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, payload)

    monkeypatch.setattr(Path, "write_bytes", full_disk_in_epoch_2)
    out = tmp_path / "run"
    assert _cli(out, "--epochs", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {out / CHECKPOINT}: cannot write (No space left on device)"
    assert not list(out.glob(".*.tmp")) and load_checkpoint(out)["epoch"] == 1 and _epochs_in(out) == [1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "error" and summary["epochs"] == 1
    assert summary["error"] == f"{out / CHECKPOINT}: cannot write (No space left on device)"


def test_cli_a_start_that_fails_before_its_first_epoch_leaves_no_folder(tmp_path, capsys, monkeypatch):
    def no_rows(cfg, data, report, **kwargs):
        raise ValueError("synthetic(n=60): 0 training rows")

    monkeypatch.setattr(train_module, "train", no_rows)
    assert _cli(tmp_path / "run", "--epochs", "1") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: synthetic(n=60): 0 training rows"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--lr", "inf"], "--lr: expected a finite number, got inf"),
    (["--lr", "nan"], "--lr: expected a finite number, got nan"),
    (["--alpha=-inf", "--loss", "mse+cgd"], "--alpha: expected a finite number, got -inf"),
    (["--width", "inf"], "--width: expected a finite number, got inf"),
    (["--weight-decay", "nan"], "--weight-decay: expected a finite number, got nan"),
    (["--ema-decay", "inf"], "--ema-decay: expected a finite number, got inf"),
    (["--lr", "0"], "TrialConfig.lr must be > 0"),
    (["--device", "cuda:7"], "--device cuda:7: this machine has "),
    (["--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
])
def test_cli_float_flags_and_devices_are_checked_in_one_line(flags, message, tmp_path, capsys):
    assert train_module.main(["--synth-n", "60", "--epochs", "1", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()


def _bad_checkpoints(tmp_path) -> dict[str, Path]:
    """A text file, a truncated and an empty .pt, another program's .pt, and a planted pickle."""
    good = tmp_path / "good"
    train(TrialConfig(**FAST, max_epochs=1), load_dataset("synthetic", synth_n=224, synth_seed=0),
          lambda row: None, checkpoint_dir=str(good))
    raw = (good / CHECKPOINT).read_bytes()
    cases = {"text": b"not a checkpoint\n", "truncated": raw[: len(raw) // 2], "empty": b""}
    files = {}
    for name, payload in cases.items():
        files[name] = tmp_path / f"{name}.pt"
        files[name].write_bytes(payload)
    files["wrong_keys"] = tmp_path / "wrong_keys.pt"
    torch.save({"weights": torch.zeros(3)}, files["wrong_keys"])
    files["pickle"] = tmp_path / "pickle.pt"
    torch.save({"format": 1, "run": types.SimpleNamespace(x=1)}, files["pickle"])
    return files


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    return _bad_checkpoints(tmp_path_factory.mktemp("bad"))


BROKEN_CHECKPOINT_REASONS = {
    "text": "not a readable checkpoint (not a torch.save archive: it starts with b'not a ch')",
    "truncated": "not a readable checkpoint (a truncated or damaged torch.save archive)",
    "empty": "not a readable checkpoint (an empty file)",
    "wrong_keys": "not a checkpoint of fkd_core.train: missing key(s) format, epoch, model, config, "
                  "num_keypoints, mean_face, image_size, schema, optimizer, scheduler, rng, progress",
    "pickle": "not a readable checkpoint (it holds objects other than tensors and plain types; "
              "refused without running them)",
}


@pytest.mark.parametrize("case", list(BROKEN_CHECKPOINT_REASONS))
def test_cli_resume_from_a_broken_checkpoint_is_one_line_naming_it(case, bad_checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT).write_bytes(bad_checkpoints[case].read_bytes())
    assert _cli(out, "--epochs", "2", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out / CHECKPOINT}: {BROKEN_CHECKPOINT_REASONS[case]}"]


# --- the same, in a real process: signals, kill -9 ------------------------------------------------

def _start(out, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "fkd_core.train", *TINY, "--out", str(out), *extra],
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_epoch(proc: subprocess.Popen, epoch: int) -> list[str]:
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if f"epoch {epoch:>3}/" in line and "train_loss" in line:
            return lines
    raise AssertionError("".join(lines))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_real_run_stopped_by_a_signal_keeps_its_epochs_and_resumes_to_each_once(signum, tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--epochs", "40")
    _wait_for_epoch(proc, 3)
    proc.send_signal(signum)
    err = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[signum]
    done = _epochs_in(out)
    assert done == list(range(1, len(done) + 1)) and len(done) >= 3
    if signum != signal.SIGKILL:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stopped"] == "interrupted" and summary["epochs"] == len(done)
    assert subprocess.run([sys.executable, "-m", "fkd_core.train", *TINY, "--out", str(out), "--epochs", "40",
                           "--resume"], capture_output=True, env={**os.environ, "PYTHONPATH": str(
                               Path(__file__).resolve().parents[1])}).returncode == 0
    assert _epochs_in(out) == list(range(1, 41))
    assert json.loads((out / "summary.json").read_text())["epochs"] == 40


@pytest.mark.parametrize("count, said", [(0, "no CUDA GPU"), (1, "1 CUDA GPU (cuda:0)"),
                                         (4, "4 CUDA GPUs (cuda:0..cuda:3)")])
def test_a_gpu_index_beyond_the_machines_says_what_it_has(count, said, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(ValueError, match=rf"^--device cuda:{count}: this machine has {re.escape(said)}$"):
        device.resolve_device(f"cuda:{count}")
    if count:
        assert device.resolve_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
