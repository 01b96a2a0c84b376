"""The prepared GPU script on the CPU: its dry run with a failing worker, the time budget, the
packing barrier and shared window, compiled backbones in sequence, the two shell scripts."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu
from bench.gpu_compile import FellBackToEager, compile_unavailable, compiled_run
from bench.gpu_packing import packed_run, window_summary
from fkd_core.config import TrialConfig
from fkd_core.data import load_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_with_a_failed_worker_reaches_every_section_within_budget(tmp_path):
    budget = gpu.DEFAULT_BUDGET_S["cpu"]
    start = time.monotonic()
    assert gpu.main(["--dry-run", "--out", str(tmp_path), "--inject-failure", "raise",
                     "--budget-seconds", str(budget)]) == 0
    wall = time.monotonic() - start
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["device"] == "cpu (dry run)" and result["budget_s"] == budget
    assert [k for k in result["seconds"] if k != "total"] == ["matmul", "throughput", "augmentation",
                                                             "packing", "sweep", "compile"]
    assert result["seconds"]["total"] <= budget and wall <= budget + 5
    one, two = result["packing"]
    assert one["trials"] == 1 and not any("injected" in e for e in one["errors"])   # a lone trial never is
    assert two["trials"] == 2
    assert two["errors"][-1].startswith("worker 1: RuntimeError: injected failure (--inject-failure raise)")
    [failed] = [w for w in two["workers"] if "error" in w]
    assert failed["worker"] == 1 and "RuntimeError: injected failure" in failed["traceback"]
    assert result["sweep"] == {"skipped": "dry run"}
    [compiled] = result["compile"]                              # reached, measured or bounded
    assert compiled["backbone"] == "small_cnn" and ("compiled_images_per_s" in compiled or "error" in compiled)
    md = (tmp_path / "gpu.md").read_text()
    assert "injected failure" in md and "Study sweep: skipped, dry run" in md


def test_budget_gives_each_section_its_plan_and_what_earlier_ones_left():
    budget = gpu.Budget(60, {"a": 10, "b": 20, "c": 30}, t0=time.monotonic())
    assert budget.bound("a") == pytest.approx(10, abs=0.1)
    assert budget.bound("c") == pytest.approx(60, abs=0.1)     # nothing used yet: all of it
    late = gpu.Budget(60, {"a": 10, "b": 20, "c": 30}, t0=time.monotonic() - 25)
    assert late.bound("b") == pytest.approx(5, abs=0.1) and late.bound("a") == 0.0
    small = gpu.Budget(30, {"a": 10, "b": 20, "c": 30})
    assert small.plans == {"a": 5, "b": 10, "c": 15}


def test_hard_limit_interrupts_a_running_section():
    start = time.monotonic()
    with pytest.raises(gpu.SectionTimeout, match="stopped at its"):
        with gpu.hard_limit(0.5):
            time.sleep(5)
    assert time.monotonic() - start < 2
    with pytest.raises(gpu.SectionTimeout, match="no time left"):
        with gpu.hard_limit(0):
            pass


def test_window_summary_counts_images_over_the_shared_window():
    rows = [{"worker": 0, "start": 10.0, "end": 14.0, "images": 100, "epochs": 2, "images_per_s": 30.0,
             "memory_fraction": 0.2, "peak_mib": 900.0},
            {"worker": 1, "start": 11.0, "end": 15.0, "images": 100, "epochs": 2, "images_per_s": 20.0,
             "memory_fraction": 0.2, "peak_mib": 1000.0},
            {"worker": 2, "error": "exited with code 3 without a row"}]
    s = window_summary(rows, bare=50.0)
    assert s["window_s"] == 5.0 and s["aggregate_images_per_s"] == 200 / 5.0
    assert s["overlap"] == pytest.approx(3.0 / 5.0)            # 11..14 of 10..15
    assert [(w.get("start_s"), w.get("end_s")) for w in s["workers"]] == [(0.0, 4.0), (1.0, 5.0), (None, None)]
    assert s["per_trial_vs_bare"] == [0.6, 0.4] and s["trial_peak_mib"] == 1000.0
    assert s["errors"] == ["worker 2: exited with code 3 without a row"]


@pytest.mark.slow
def test_packed_workers_run_together_and_a_dead_worker_sends_an_error_row():
    faces = load_dataset("synthetic", synth_n=96, synth_seed=0)
    result = packed_run("small_cnn", 3, batch=8, epochs=4, data=faces, device="cpu", seconds=120,
                        inject="exit")
    ok = [w for w in result["workers"] if "error" not in w]
    assert [w["worker"] for w in ok] == [0, 1]
    assert result["errors"] == ["worker 2: exited with code 3 without a row"]
    # Both timed windows started at the barrier and overlapped for most of the shared window.
    assert min(w["start_s"] for w in ok) == 0.0
    assert result["window_s"] == pytest.approx(max(w["end_s"] for w in ok))
    assert result["overlap"] > 0.5, result["workers"]
    assert result["aggregate_images_per_s"] == pytest.approx(sum(w["images"] for w in ok) / result["window_s"])
    # 96 faces - round(0.15 * 96) test - round(0.15 * 96) validation = 68 training faces
    assert all(w["images"] == w["epochs"] * 68 for w in ok)


@pytest.mark.slow
def test_a_packing_run_ends_at_its_deadline_with_a_row_per_worker():
    start = time.monotonic()
    faces = load_dataset("synthetic", synth_n=64, synth_seed=0)
    result = packed_run("small_cnn", 2, batch=8, epochs=2, data=faces, device="cpu", seconds=1.0)
    assert time.monotonic() - start < 15                        # killed, not waited for
    assert result["errors"] == [f"worker {i}: no row within the run's 1 s deadline; killed" for i in (0, 1)]
    assert result["aggregate_images_per_s"] == 0.0 and not result["started"]


@pytest.fixture()
def compile_backend(monkeypatch):
    """Inductor where a C++ compiler exists; else dynamo with its eager backend, which still
    shows whether dynamo captured graphs (what the recompile limit takes away)."""
    reason = compile_unavailable("cpu")
    if reason:
        real = torch.compile
        monkeypatch.setattr(torch, "compile", lambda model, mode=None: real(model, backend="eager"))
    return reason


@pytest.mark.slow
def test_two_backbones_compiled_in_sequence_are_both_compiled(compile_backend):
    sizes = dict(batch=4, epochs=2, device="cpu", mode="default", train_batches=2, val_batches=1)
    first = compiled_run("small_cnn", **sizes)
    second = compiled_run("resnet18", **sizes)
    for run in (first, second):
        # One training and one evaluation graph of KeypointNet.forward, no tail-batch graph, no
        # graph break, every frame dynamo saw compiled.
        assert run["graphs"] == 2 and run["graph_breaks"] == 0, run
        assert run["frames_compiled"] == run["frames_seen"] >= 1
        assert run["compiled_images_per_s"] > 0
    # Without the reset, resnet18 would add graphs to small_cnn's cache of the same code object;
    # a full cache runs eager, and that is an error, not a number:
    with torch._dynamo.config.patch(recompile_limit=1):
        with pytest.raises(FellBackToEager, match="recompile limit"):
            compiled_run("small_cnn", **sizes)


def test_compile_check_says_why_it_cannot_run(monkeypatch):
    # inductor's config must be patched through its own API: monkeypatch's undo deleted the
    # attribute, and every later torch.compile in the session failed.
    monkeypatch.setattr("shutil.which", lambda name: None)
    with torch._inductor.config.patch({"cpp.cxx": (None, "g++")}):
        assert compile_unavailable("cpu").startswith("no C++ compiler")
    assert hasattr(torch._inductor.config.cpp, "cxx")


def test_refuses_without_cuda_unless_dry_run(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu.main(["--out", "/nonexistent-never-written"]) == 2
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_time_boxed_sweep_keeps_its_outputs_out_of_gpu_json(tmp_path):
    """The sweep section on the CPU: Ctrl-C at the end of the box, finished trials kept, only
    counts, statuses and timings returned, every file in its own work folder."""
    from bench.gpu_sweep import study_sweep

    faces = REPO.parent / "shared/data/fkd-yt15/training.csv.gz"
    if not faces.exists():
        pytest.skip(f"{faces} is not here")
    # Many 2-epoch trials: some finish, the box cuts the rest. (3-epoch trials finished none in
    # the 60 s box once, on 2 cores shared with three other busy processes.)
    space = tmp_path / "space.yaml"
    space.write_text("grid: true\nseeds: 200\nmax_epochs: 2\nasha: null\n"
                     "fixed: {backbone: small_cnn, patience: 5, checkpoint_every: 2}\naxes: {}\n")
    workdir = tmp_path / "sweep"
    result = study_sweep(workdir, 60, faces, ("--space", str(space)))
    assert result["interrupted_after_s"] == 60
    assert 1 <= result["trials_rows"] < 200 and result["epochs_rows"] >= 2 * result["trials_rows"]
    assert result["statuses"] == {"completed": result["trials_rows"]}
    assert 60 <= result["wall_s"] < 60 + 30 + 5
    assert result["median_epoch_s"] > 0 and "log_tail" not in result
    assert (workdir / "fkd-yt15-study-gpu" / "trials.parquet").is_file()
    assert len(json.dumps(result)) < 2000                       # nothing bulky travels back


def test_study_space_for_the_gpu_checkpoints_sparsely(tmp_path):
    from bench.gpu_sweep import study_space
    from sweep.spaces import get_space

    space = get_space(str(study_space(tmp_path, checkpoint_every=5)))
    configs = [TrialConfig(**space.fields(cell, seed=0)) for cell in space.cells()]
    assert len(configs) == 8 * 3                                 # the study's grid, unchanged
    assert {(c.checkpoint_every, c.checkpoint_best) for c in configs} == {(5, False)}


def test_prepare_report_counts_untracked_files_without_a_venv(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / "notes.bin").write_bytes(b"\0" * 3 * 2**20)        # untracked, not ignored: it travels
    (clone / "runs").mkdir()
    (clone / "runs" / "ignored.bin").write_bytes(b"\0" * 2**20)  # ignored: it does not
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    done = subprocess.run(["bash", "bench/gpu_prepare.sh", "--report"], cwd=clone, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "python: python3" in done.stdout                     # no .venv in the clone
    assert "untracked (not ignored) 3.0 MiB" in done.stdout and ".gpu 0.0 MiB" in done.stdout


@pytest.mark.slow
def test_gpu_sh_passes_the_remaining_budget(tmp_path):
    """bench/gpu.sh end to end on the CPU (DRY_RUN), with a 60 s limit: bench.gpu gets what
    the limit leaves minus the margin, and its whole run fits in it."""
    env = {**os.environ, "DRY_RUN": "1", "LIMIT": "60", "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert 30 <= result["budget_s"] <= 40 and result["seconds"]["total"] <= result["budget_s"]
    assert "[gpu.sh] exit 0" in done.stdout
