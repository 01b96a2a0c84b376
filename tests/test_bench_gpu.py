"""The prepared GPU script runs its whole code path on the CPU (--dry-run) and writes its numbers."""
import json

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
    assert all(len(r["per_trial_images_per_s"]) == r["trials"] for r in result["packing"])
    assert result["sweep"] == {"skipped": "dry run"}
    assert "| small_cnn | 8 |" in (tmp_path / "gpu.md").read_text()


def test_refuses_without_cuda_unless_dry_run(capsys):
    if gpu.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu.main(["--out", "/nonexistent-never-written"]) == 2
    assert "--dry-run" in capsys.readouterr().err
