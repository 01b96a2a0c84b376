"""predict: a Kaggle submission from a real (one-epoch) checkpoint, and the prediction figure."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch

from fkd_core import predict as predict_module
from fkd_core.config import TrialConfig
from fkd_core.data import load_dataset
from fkd_core.schema import KAGGLE15
from fkd_core.rundir import BEST
from fkd_core.trainer import train

N_TEST = 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    faces = load_dataset("synthetic", synth_n=120, synth_seed=0)
    train(TrialConfig(synth_n=120, batch_size=32, max_epochs=1, device="cpu"), faces,
          lambda row: None, checkpoint_dir=str(out))
    return out / BEST


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory):
    """A Kaggle test.csv (ImageId,Image) of synthetic faces."""
    images = load_dataset("synthetic", synth_n=N_TEST, synth_seed=7).images
    pixels = images.reshape(N_TEST, -1).numpy()
    path = tmp_path_factory.mktemp("kaggle") / "test.csv"
    pd.DataFrame({"ImageId": np.arange(1, N_TEST + 1),
                  "Image": [" ".join(map(str, row)) for row in pixels]}).to_csv(path, index=False)
    return path


def _lookup(path) -> pd.DataFrame:
    rows = [(img, name) for img in (1, 3, 5) for name in KAGGLE15.columns[::3]]
    table = pd.DataFrame(rows, columns=["ImageId", "FeatureName"])
    table.insert(0, "RowId", np.arange(1, len(table) + 1))
    table.to_csv(path, index=False)
    return table


def test_submission_has_one_row_per_lookup_row_within_the_image(checkpoint, test_csv, tmp_path):
    lookup = _lookup(tmp_path / "IdLookupTable.csv")
    out = tmp_path / "submission.csv"
    code = predict_module.main(["--checkpoint", str(checkpoint), "--images", str(test_csv),
                                "--lookup", str(tmp_path / "IdLookupTable.csv"), "--out", str(out),
                                "--device", "cpu"])
    assert code == 0
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["RowId", "Location"]
    assert sub["RowId"].tolist() == lookup["RowId"].tolist()
    assert sub["Location"].between(0, 96).all()


def test_submission_without_lookup_covers_every_image_and_feature(checkpoint, test_csv, tmp_path):
    out = tmp_path / "submission.csv"
    assert predict_module.main(["--checkpoint", str(checkpoint), "--images", str(test_csv),
                                "--out", str(out), "--device", "cpu"]) == 0
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["RowId", "ImageId", "FeatureName", "Location"]
    assert len(sub) == N_TEST * 30
    assert sub["FeatureName"].iloc[:30].tolist() == list(KAGGLE15.columns)


def test_locations_are_clipped_to_the_image():
    pred = torch.tensor([[[-5.0, 50.0]] * 15])
    pred[0, 1] = torch.tensor([120.0, 96.0])
    table = predict_module.submission(pred, ["1"], KAGGLE15, 96)
    assert table["Location"].min() == 0.0 and table["Location"].max() == 96.0


def test_unknown_lookup_feature_is_one_line_exit_2(checkpoint, test_csv, tmp_path, capsys):
    pd.DataFrame({"RowId": [1], "ImageId": [1], "FeatureName": ["chin_x"]}).to_csv(
        tmp_path / "lookup.csv", index=False)
    code = predict_module.main(["--checkpoint", str(checkpoint), "--images", str(test_csv),
                                "--lookup", str(tmp_path / "lookup.csv"), "--out",
                                str(tmp_path / "s.csv"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "chin_x" in err[0] and "row 1" in err[0]


def test_model_round_trip_and_plot(checkpoint, tmp_path):
    model = predict_module.load_model(checkpoint)
    faces = load_dataset("synthetic", synth_n=6, synth_seed=3)
    pred = predict_module.predict(model, faces.images, device="cpu")
    assert pred.shape == (6, 15, 2) and torch.isfinite(pred).all()
    path = predict_module.plot_predictions(faces.images, pred, faces.keypoints,
                                           path=tmp_path / "faces.png", title="synthetic faces")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("head", ["regression", "heatmap"])
def test_flip_averaging_keeps_a_symmetric_face_symmetric(head):
    """On a left/right-symmetric image, the flip average of any model (here a random one) puts
    each left keypoint at the mirror of its right partner and the centre-line ones on the axis."""
    from fkd_core.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 15, head=head).eval()
    with torch.no_grad():   # random weights everywhere, so that the plain prediction is lopsided
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    raw = load_dataset("synthetic", synth_n=4, synth_seed=1).images
    symmetric = torch.maximum(raw, raw.flip(-1))
    perm = KAGGLE15.flip_permutation()
    plain = predict_module.predict(model, symmetric)
    averaged = predict_module.predict(model, symmetric, flip_perm=perm)
    mirror = lambda p: torch.stack([95.0 - p[:, perm, 0], p[:, perm, 1]], dim=-1)
    assert (plain - mirror(plain)).abs().max() > 0.05          # the test would catch a no-op
    assert (averaged - mirror(averaged)).abs().max() < 1e-3
    centre = [k for k in range(15) if perm[k] == k]            # nose tip, lip centres
    assert centre and (averaged[:, centre, 0] - 47.5).abs().max() < 1e-3


def test_predict_cli_uses_the_checkpoints_flip_setting_and_says_so(checkpoint, test_csv, tmp_path, capsys):
    out = tmp_path / "s.csv"
    argv = ["--checkpoint", str(checkpoint), "--images", str(test_csv), "--out", str(out), "--device", "cpu"]
    assert predict_module.main(argv) == 0
    assert "flip averaging off" in capsys.readouterr().err      # trained with tta_flip=False
    plain = pd.read_csv(out)["Location"]
    assert predict_module.main(argv + ["--tta-flip"]) == 0
    assert "flip averaging on" in capsys.readouterr().err
    assert not np.allclose(pd.read_csv(out)["Location"], plain)


# --- a checkpoint that is not one, a device that is not there (issue 21, item 8) ------------------

def _broken(checkpoint, tmp_path) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, the reason the one line gives)."""
    raw = checkpoint.read_bytes()
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    planted = tmp_path / "planted.pt"
    torch.save({"format": 1, "run": types.SimpleNamespace(x=1)}, planted)
    state = torch.load(checkpoint, weights_only=True)
    state["model"] = {"trunk.weight": torch.zeros(2)}          # the right keys, someone else's weights
    foreign = tmp_path / "foreign.pt"
    torch.save(state, foreign)
    return {
        "text": (b"RowId,Location\n1,2\n", "not a readable checkpoint (not a torch.save archive: it starts "
                                           "with b'RowId,Lo')"),
        "truncated": (raw[: len(raw) // 3], "not a readable checkpoint (a truncated or damaged torch.save archive)"),
        "empty": (b"", "not a readable checkpoint (an empty file)"),
        "wrong_keys": (other.read_bytes(), "not a checkpoint of fkd_core.train: missing key(s) format, epoch, "
                                           "model, config, num_keypoints, mean_face, image_size, schema"),
        "pickle": (planted.read_bytes(), "not a readable checkpoint (it holds objects other than tensors and "
                                         "plain types; refused without running them)"),
        "foreign_weights": (foreign.read_bytes(), "its entries do not rebuild a model (RuntimeError: Error(s) in "
                                                  "loading state_dict for KeypointNet:)"),
    }


@pytest.mark.parametrize("case", ["text", "truncated", "empty", "wrong_keys", "pickle", "foreign_weights"])
def test_a_broken_checkpoint_is_one_line_naming_the_file(case, checkpoint, test_csv, tmp_path, capsys):
    payload, reason = _broken(checkpoint, tmp_path)[case]
    bad = tmp_path / "best.pt"
    bad.write_bytes(payload)
    code = predict_module.main(["--checkpoint", str(bad), "--images", str(test_csv), "--out",
                                str(tmp_path / "s.csv"), "--device", "cpu"])
    assert code == 2 and capsys.readouterr().err.strip().splitlines() == [f"error: {bad}: {reason}"]
    assert not (tmp_path / "s.csv").exists()


def test_a_gpu_this_machine_lacks_is_one_line(checkpoint, test_csv, tmp_path, capsys):
    code = predict_module.main(["--checkpoint", str(checkpoint), "--images", str(test_csv), "--out",
                                str(tmp_path / "s.csv"), "--device", "cuda:7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --device cuda:7: this machine has ")
