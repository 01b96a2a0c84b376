"""Checkpoint files: what a trial saves each epoch, and the one reader of them.

    >>> from fkd_core.checkpoint import load_checkpoint, RESUME_KEYS
    >>> state = load_checkpoint("runs/cgd")                    # runs/cgd/checkpoint.pt, for predict
    >>> state = load_checkpoint("runs/cgd", keys=RESUME_KEYS)  # all a resume needs

A checkpoint holds tensors and plain types only (see fkd_core.trainer's Trial.state), so it is
always read with weights_only=True: nothing read from storage is unpickled.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from fkd_core.config import TrialConfig
from fkd_core.data import KeypointData
from fkd_core.rundir import BEST, CHECKPOINT, atomic_write

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout; a resume or predict refuses any other."""


def save_checkpoint(directory: str | Path, state: dict[str, Any], best: bool, resume: bool = True) -> None:
    """checkpoint.pt when ``resume`` (a resume point), best.pt when ``best`` (the epoch improved
    the best val RMSE); the same bytes, serialised once. best.pt goes first, so that checkpoint.pt
    is the epoch's last file: a kill right after it is a kill before the epoch's report."""
    if not (best or resume):
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    if best:
        atomic_write(directory / BEST, buffer.getvalue())
    if resume:
        atomic_write(directory / CHECKPOINT, buffer.getvalue())


def checkpoint_due(every: int, epoch: int, last: bool) -> bool:
    """Whether ``epoch`` writes checkpoint.pt under TrialConfig.checkpoint_every (the trial's
    last epoch always does, so a finished trial's checkpoint holds its final state)."""
    return last or (every > 0 and epoch % every == 0)


# What predict needs of a checkpoint, and what a resume needs on top (see fkd_core.trainer.Trial.state).
MODEL_KEYS = ("format", "epoch", "model", "config", "num_keypoints", "mean_face", "image_size", "schema")
RESUME_KEYS = MODEL_KEYS + ("optimizer", "scheduler", "rng", "progress")
_ZIP_MAGIC = b"PK\x03\x04"   # torch.save writes a zip archive


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    keys: tuple[str, ...] = MODEL_KEYS) -> dict[str, Any]:
    """A checkpoint file, or checkpoint.pt inside a directory; tensors and plain types only.

    A file that is not one (text, truncated, empty, another program's .pt, a pickle of code)
    is a ValueError of one line naming it; ``keys``: the entries the caller needs.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:   # arbitrary bytes fail torch's unpickler in many ways (IndexError, ...)
        raise ValueError(f"{path}: not a readable checkpoint ({_unreadable(path, err)})") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path}: not a checkpoint of fkd_core.train: missing key(s) {', '.join(missing)}")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: key format: expected {CHECKPOINT_FORMAT}, got {state['format']!r}")
    return state


def _unreadable(path: Path, err: Exception) -> str:
    """Why torch.load refused a file, in words (torch's own messages run to several lines, and
    for a file of pickled code they advise weights_only=False, which would run it)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "an empty file"
    if not head.startswith(_ZIP_MAGIC):
        return f"not a torch.save archive: it starts with {head[:8]!r}"
    if isinstance(err, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain types; refused without running them"
    return "a truncated or damaged torch.save archive"


def check_resumable(state: dict[str, Any], cfg: TrialConfig, data: KeypointData) -> None:
    """A checkpoint that this trial (backbone, keypoints) can continue, else a one-line ValueError."""
    saved = state["config"]
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {state.get('format')!r}; this version reads {CHECKPOINT_FORMAT}")
    if saved["backbone"] != cfg.backbone or state["num_keypoints"] != data.schema.num_keypoints:
        raise ValueError(f"checkpoint is {saved['backbone']} with {state['num_keypoints']} keypoints; "
                         f"the trial is {cfg.backbone} with {data.schema.num_keypoints}")
