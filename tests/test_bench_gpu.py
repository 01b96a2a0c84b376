"""The prepared GPU script runs its whole code path on the CPU (--dry-run) and writes its numbers."""
import json
from pathlib import Path

import pytest

from bench import gpu


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    assert gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["device"] == "cpu (dry run)"
    assert result["matmul_bf16_tflops"] > 0
    [row] = result["throughput"]
    assert row["backbone"] == "small_cnn" and row["batch"] == 8
    assert row["bare_images_per_s"] > 0 and row["train_images_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["train_images_per_s"] / row["bare_images_per_s"])
    [aug] = result["augmentation"]
    assert aug["augment_full_images_per_s"] > 0
    assert aug["augment_share"] == pytest.approx(1 - aug["augment_full_images_per_s"] / row["train_images_per_s"])
    assert [r["trials"] for r in result["packing"]] == [1, 2]
    for r in result["packing"]:
        assert len(r["per_trial_images_per_s"]) == r["trials"] and r["errors"] == []
        assert r["per_trial_vs_bare"] == pytest.approx([x / row["bare_images_per_s"] for x in r["per_trial_images_per_s"]])
        assert r["trial_memory_fraction"] is None      # no cap on the CPU
    assert result["sweep"] == {"skipped": "dry run"}
    [compiled] = result["compile"]
    assert compiled["mode"] == "default" and compiled["compiled_images_per_s"] > 0
    assert compiled["speedup"] == pytest.approx(compiled["compiled_images_per_s"] / row["train_images_per_s"])
    assert set(result["seconds"]) == {"throughput", "augmentation", "packing", "sweep", "compile"}
    md = (tmp_path / "gpu.md").read_text()
    assert md.count("| small_cnn |") == 1 + 1 + 2 + 1   # throughput, augmentation, 2 packings, compile


@pytest.mark.slow
def test_out_of_budget_skips_compile_and_keeps_what_was_measured(tmp_path):
    assert gpu.main(["--dry-run", "--out", str(tmp_path), "--budget-seconds", "0"]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["compile"] == [{"backbone": "small_cnn", "mode": "default", "skipped": "out of time"}]
    assert len(result["throughput"]) == 1 and len(result["packing"]) == 2
    assert "out of time" in (tmp_path / "gpu.md").read_text()


def test_refuses_without_cuda_unless_dry_run(capsys):
    if gpu.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu.main(["--out", "/nonexistent-never-written"]) == 2
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_time_boxed_sweep_is_interrupted_and_keeps_its_finished_trials(tmp_path):
    """The GPU script's sweep section, on the CPU: Ctrl-C at the end of the box, results kept."""
    faces = "../shared/data/fkd-yt15/training.csv.gz"
    if not Path(faces).exists():
        pytest.skip(f"{faces} is not here")
    space = tmp_path / "space.yaml"   # many 3-epoch trials: some finish, the box cuts the rest
    space.write_text("grid: true\nseeds: 200\nmax_epochs: 3\nasha: null\n"
                     "fixed: {backbone: small_cnn, patience: 5}\naxes: {}\n")
    result = gpu.study_sweep(tmp_path, 60, Path(faces), ("--space", str(space),))
    assert result["interrupted_after_s"] == 60, result["tail"]
    assert 1 <= result["trials_rows"] < 200 and result["epochs_rows"] >= 3 * result["trials_rows"]
    assert result["statuses"] == {"completed": result["trials_rows"]}
    assert 60 <= result["wall_s"] < 60 + 45
