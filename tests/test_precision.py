"""fkd_core.precision: the CPU class from flags and torch's capability, "auto" from the committed
measurement, bf16 numerics against fp32, and precision_used recorded in the summary, the
checkpoint and trials.parquet."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fkd_core import metrics, precision
from fkd_core.config import TrialConfig
from fkd_core.data import load_dataset
from fkd_core.losses import build_objective
from fkd_core.models import build_model
from fkd_core.device import autocast_dtype
from fkd_core.rundir import CHECKPOINT
from fkd_core.trainer import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
ROOT = Path(__file__).resolve().parents[1]
FAST = dict(synth_n=224, batch_size=24, device="cpu", patience=50, max_epochs=1)


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nflags\t\t: fpu\n")
    return path


def test_flags_are_the_first_processors_and_none_without_the_file(tmp_path):
    assert precision.cpu_flags(_cpuinfo(tmp_path, "fpu avx512f amx_tile")) == {"fpu", "avx512f", "amx_tile"}
    assert precision.cpu_flags(tmp_path / "absent") == frozenset()
    assert precision.cpu_flags(tmp_path) == frozenset()          # a directory: unreadable, no crash


@pytest.mark.parametrize("flags, capability, expected", [
    ("avx512f avx512_bf16 amx_bf16 amx_tile", "AVX512", "amx"),
    ("avx512f avx512_bf16", "AVX512", "avx512_bf16"),
    ("avx512f avx512_bf16 amx_bf16", "AVX512", "avx512_bf16"),   # AMX without its tile state
    ("avx512f amx_bf16 amx_tile avx512_bf16", "AVX2", "none"),  # torch does not run AVX512 here
    ("avx2 fma", "AVX2", "none"),
    ("", "DEFAULT", "none"),                                    # no /proc/cpuinfo (macOS)
    ("", "AVX512", "none"),
])
def test_cpu_class(flags, capability, expected):
    assert precision.cpu_class(frozenset(flags.split()), capability) == expected


def test_this_machines_class_is_one_of_the_known():
    assert precision.cpu_class() in precision.CPU_CLASSES


def test_explicit_precisions_are_obeyed_and_auto_is_bf16_on_cuda_fp32_on_other_devices():
    for device in (CPU, CUDA, torch.device("mps")):
        assert precision.precision_used("fp32", device, "small_cnn", "heatmap", "amx") == "fp32"
        assert precision.precision_used("bf16", device, "small_cnn", "heatmap", "none") == "bf16"
    assert precision.precision_used("auto", CUDA, "small_cnn", "heatmap", "none") == "bf16"
    assert precision.precision_used("auto", torch.device("mps"), "small_cnn", "heatmap", "amx") == "fp32"


def test_auto_on_a_cpu_follows_the_measured_ratio_of_the_model():
    for klass, table in precision.MEASURED.items():
        for (backbone, head), ratio in table.items():
            used = precision.precision_used("auto", CPU, backbone, head, klass)
            assert used == ("bf16" if ratio >= precision.GAIN else "fp32"), (klass, backbone, head)
    # Every model measured on AMX gained (1.09x-1.72x), so an unmeasured one gets bf16 too.
    assert precision.precision_used("auto", CPU, "mobilenet_v3_small", "heatmap", "amx") == "bf16"
    for backbone in ("small_cnn", "res_cnn", "resnet18"):   # no bf16 units: never bf16
        assert precision.precision_used("auto", CPU, backbone, "heatmap", "none") == "fp32"


def test_a_mixed_table_gives_bf16_only_where_measured_faster(monkeypatch):
    monkeypatch.setitem(precision.MEASURED, "test", {("a", "h"): 1.30, ("b", "h"): 1.04, ("c", "h"): 0.80})
    picks = {b: precision.precision_used("auto", CPU, b, "h", "test") for b in ("a", "b", "c", "unmeasured")}
    assert picks == {"a": "bf16", "b": "fp32", "c": "fp32", "unmeasured": "fp32"}


def test_the_table_of_the_measured_class_is_the_committed_measurement():
    # MEASURED cites bench/results/precision.json: the lowest bf16/fp32 ratio per (backbone, head).
    committed = json.loads((ROOT / "bench/results/precision.json").read_text())
    assert committed["cpu_class"] in precision.MEASURED and not committed["quick"]
    lowest: dict[tuple[str, str], float] = {}
    for row in committed["models"]:
        key = (row["backbone"], row["head"])
        lowest[key] = min(lowest.get(key, math.inf), row["bf16_over_fp32"])
    assert {k: round(v, 2) for k, v in lowest.items()} == precision.MEASURED[committed["cpu_class"]]


def test_names_and_dtypes_round_trip():
    assert {precision.name_of(d) for d in precision.DTYPES.values()} == set(precision.DTYPES)
    assert precision.DTYPES["bf16"] is torch.bfloat16 and precision.DTYPES["fp32"] is None


# --- numerics ------------------------------------------------------------------------------------

def _perturbed(head: str) -> torch.nn.Module:
    """A tiny model whose zero-initialised last layer is given weights, so outputs differ by image."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 15, width=0.5, head=head, heatmap_size=24)
    last = model.head.logits if head == "heatmap" else model.head.linear
    with torch.no_grad():
        last.weight.normal_(0.0, 0.01)
    return model.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("head", ["regression", "heatmap"])
def test_a_bf16_step_keeps_coordinates_loss_and_gradients_in_fp32_close_to_fp32(head):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(16, 1, 96, 96, generator=gen).contiguous(memory_format=torch.channels_last)
    y = 20 + 56 * torch.rand(16, 15, 2, generator=gen)
    mask = torch.ones(16, 15, dtype=torch.bool)
    objective = build_objective(TrialConfig(loss="mse", shape="cgd", alpha=0.01))
    out = {}
    for name, dtype in precision.DTYPES.items():
        model = _perturbed(head)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(x)
        assert pred.dtype == torch.float32          # the heads hand back fp32 pixels
        loss = objective(pred.float(), y, mask)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert all(p.dtype == torch.float32 for p in model.parameters())
        out[name] = pred.detach(), loss.item(), grads, metrics.rmse_px(pred.detach(), y, mask).item()
    (p32, l32, g32, r32), (p16, l16, g16, r16) = out["fp32"], out["bf16"]
    assert math.isfinite(l16) and math.isfinite(r16)
    # Predictions spread ~8 px (regression) / ~0.3 px (heatmap) around the mean face here.
    assert (p16 - p32).abs().max() < 0.5 and (p16 - p32).abs().mean() < 0.15   # px
    assert abs(l16 - l32) / l32 < 0.01 and abs(r16 - r32) / r32 < 0.01
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


@pytest.mark.parametrize("head", ["regression", "heatmap", "unet"])
def test_the_layer_that_makes_pixels_runs_in_fp32_under_bf16_autocast(head):
    # bf16 offsets x 48 px would move in steps of ~0.2-0.4 px; the logits feed the softmax.
    model = build_model("small_cnn", 15, width=0.5, head=head, heatmap_size=24)
    last = model.head.linear if head == "regression" else model.head.logits
    seen = []
    last.register_forward_hook(lambda module, args, output: seen.append((args[0].dtype, output.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.rand(2, 1, 96, 96))
        inner = model.trunk[0][0](torch.rand(2, 1, 96, 96))
    assert inner.dtype == torch.bfloat16            # autocast is on for the trunk
    assert seen == [(torch.float32, torch.float32)]


@pytest.mark.parametrize("backbone, head", [("small_cnn", "heatmap"), ("small_cnn", "unet"),
                                           ("res_cnn", "heatmap"), ("res_cnn", "regression"),
                                           ("s2d_cnn", "unet"), ("s2d_cnn", "heatmap")])
def test_every_feature_map_stays_channels_last_in_both_precisions(backbone, head):
    # oneDNN's NHWC kernels need no reorder between layers only when every map is NHWC.
    model = build_model(backbone, 15, width=0.5, head=head).to(memory_format=torch.channels_last)
    dropped = []

    def check(module, args, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[1] > 1 \
                and not out.is_contiguous(memory_format=torch.channels_last):
            dropped.append(type(module).__name__)

    for module in model.modules():
        module.register_forward_hook(check)
    x = torch.rand(2, 1, 96, 96).contiguous(memory_format=torch.channels_last)
    for dtype in precision.DTYPES.values():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            model(x)
    assert dropped == []


@pytest.fixture(scope="module")
def faces():
    return load_dataset("synthetic", synth_n=FAST["synth_n"], synth_seed=0)


def test_a_bf16_epoch_scores_close_to_fp32_and_records_what_ran(faces, tmp_path):
    runs = {}
    for name in ("fp32", "bf16"):
        rows: list[dict] = []
        cfg = TrialConfig(**FAST, precision=name, head="heatmap", width=0.5)
        summary = train(cfg, faces, rows.append, checkpoint_dir=str(tmp_path / name))
        state = torch.load(tmp_path / name / CHECKPOINT, weights_only=True)
        assert summary.precision_used == state["precision_used"] == name
        assert not rows[0][metrics.DIVERGED] and math.isfinite(rows[0][metrics.TRAIN_LOSS])
        runs[name] = rows[0]
    for key in (metrics.TRAIN_LOSS, metrics.VAL_RMSE, metrics.VAL_NME):
        assert abs(runs["bf16"][key] - runs["fp32"][key]) / runs["fp32"][key] < 0.05, key


def test_auto_resolves_through_fkd_core_precision(faces, monkeypatch):
    cfg = TrialConfig(**FAST, precision="auto")
    monkeypatch.setattr(precision, "cpu_class", lambda *a: "amx")
    assert autocast_dtype(cfg, CPU) is torch.bfloat16
    assert train(cfg, faces, lambda row: None).precision_used == "bf16"
    monkeypatch.setattr(precision, "cpu_class", lambda *a: "none")
    assert autocast_dtype(cfg, CPU) is None
    assert train(cfg, faces, lambda row: None).precision_used == "fp32"


def test_trials_parquet_has_the_precision_each_trial_reported(tmp_path):
    from sweep import results as R
    from sweep.spaces import data_key
    from sweep.trainable import PRECISION_USED
    from tests.test_results import fake_trial, row

    cfg = TrialConfig(max_epochs=1)
    writer = R.ResultsWriter(str(tmp_path), "x", {data_key(cfg): R.DataInfo("s", "h", True)}, log=None)
    writer.setup()
    for trial_id, used in (("t16", "bf16"), ("t32", "fp32")):
        trial = fake_trial(trial_id, cfg, None)
        result = {**row(1, 3.0), "done": False, PRECISION_USED: used}
        trial.last_result = {**trial.last_result, **result}
        writer.on_trial_result(0, [], trial, result)
        writer.on_trial_complete(0, [], trial)
    from sweep.store import read_results

    table = read_results(str(tmp_path), R.TRIALS_FILE)
    assert table.schema.field(PRECISION_USED).type == "string"
    assert dict(zip(table["trial_id"].to_pylist(), table[PRECISION_USED].to_pylist())) == \
        {"t16": "bf16", "t32": "fp32"}
