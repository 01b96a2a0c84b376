"""The GPU script's compile section: ``TrialConfig(compile=True)`` against eager, one backbone and
mode after another, each really compiled or loudly not.

    from bench.gpu_compile import compiled_run
    compiled_run("resnet50", batch=256, epochs=3, device="cuda", mode="default")

Three traps of measuring several compiled models in one process, all avoided here:
- every backbone runs the same ``KeypointNet.forward`` code object, so dynamo's per-code cache
  fills up across measurements; at its recompile limit (8) dynamo silently runs eager and a
  "compiled" number reads as a 1.0x speedup. Dynamo is reset before each measurement, and the
  recompile limit is made an error (``fail_on_recompile_limit_hit``);
- a tail batch (e.g. 6963 % 256 = 51 rows) adds a graph of its own, or a dynamic-shape graph: the
  data are sized so that training and validation rows are whole batches;
- a backend error would fall back to eager when ``suppress_errors`` is on: it is kept off, and a
  measurement whose dynamo counters show no captured graph is an error, not a number.
"""
from __future__ import annotations

import importlib.util
import shutil
from typing import Any

import torch

from fkd_core.config import TrialConfig
from fkd_core.data import load_dataset
from fkd_core.metrics import IMAGES_PER_S
from fkd_core.trainer import train

# Training and validation batches of a compile measurement: whole batches only (no tail graph).
TRAIN_BATCHES, VAL_BATCHES = 24, 4


class FellBackToEager(RuntimeError):
    """A compiled measurement ran (partly) eager: its number would not be a compiled one."""


def compile_unavailable(device: str) -> str | None:
    """Why torch.compile's default backend (inductor) cannot run on ``device`` here, or None."""
    if device == "cpu":
        cxx = torch._inductor.config.cpp.cxx[0] if isinstance(torch._inductor.config.cpp.cxx, tuple) \
            else torch._inductor.config.cpp.cxx
        candidates = [cxx] if cxx else ["g++", "c++", "clang++"]
        if not any(shutil.which(c) for c in candidates):
            return f"no C++ compiler ({'/'.join(candidates)}) on PATH: inductor needs one on the CPU"
        return None
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed: inductor needs it on the GPU"
    return None


def whole_batch_data(batch: int, train_batches: int = TRAIN_BATCHES, val_batches: int = VAL_BATCHES):
    """(synthetic faces, val_fraction, test_fraction) with exactly train_batches + val_batches full
    batches once one batch of faces is held out as the test split (never scored here)."""
    faces = batch * (train_batches + val_batches + 1)
    return (load_dataset("synthetic", synth_n=faces, synth_seed=0), val_batches * batch / faces,
            batch / faces)


def compiled_run(backbone: str, batch: int, epochs: int, device: str, mode: str,
                 train_batches: int = TRAIN_BATCHES, val_batches: int = VAL_BATCHES) -> dict[str, Any]:
    """Train with TrialConfig(compile=True, compile_mode=mode) on whole batches; the best epoch's
    images/s after the first (which compiles) and dynamo's counts of what it compiled.

    Raises FellBackToEager when dynamo compiled no graph for the model, or hit its recompile limit.
    """
    from torch._dynamo.utils import counters

    torch._dynamo.reset()   # forget the previous backbone's graphs of KeypointNet.forward
    counters.clear()
    data, val_fraction, test_fraction = whole_batch_data(batch, train_batches, val_batches)
    rows: list[dict] = []
    cfg = TrialConfig(backbone=backbone, batch_size=batch, max_epochs=epochs, device=device,
                      patience=epochs + 1, seed=0, val_fraction=val_fraction,
                      test_fraction=test_fraction, compile=True, compile_mode=mode)
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, suppress_errors=False):
            train(cfg, data, rows.append)
    except Exception as e:
        if "recompile" in type(e).__name__.lower() or "recompile_limit" in str(e):
            raise FellBackToEager(f"{backbone} {mode}: dynamo hit its recompile limit: {e}") from e
        raise
    graphs = counters["stats"]["unique_graphs"]
    if graphs == 0:
        raise FellBackToEager(f"{backbone} {mode}: dynamo compiled no graph; the run was eager")
    warm = rows[1:] or rows
    return {"compiled_images_per_s": max(r[IMAGES_PER_S] for r in warm), "graphs": graphs,
            "graph_breaks": sum(counters["graph_break"].values()),
            "frames_compiled": counters["frames"]["ok"], "frames_seen": counters["frames"]["total"]}
