"""The GPU script's sweep section: the ``study`` space on the real faces, end to end through Ray,
time-boxed, its files kept out of the folder that comes back from the device.

    from bench.gpu_sweep import study_sweep
    study_sweep(Path(tempfile.mkdtemp()), seconds=90, data=Path(".gpu/data/training.csv.gz"))

Only row counts, statuses and timings go into gpu.json: Tune's checkpoints and the kept best.pt
(270 MiB for resnet50 + Adam) would crowd out what the device sends back. The trials write a
checkpoint every CHECKPOINT_EVERY epochs and no best.pt (TrialConfig.checkpoint_every/_best), so
the section measures the GPU, not checkpoint I/O.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fkd_core.metrics import EPOCH_SECONDS, IMAGES_PER_S
from sweep.store import EPOCHS_FILE, TRIALS_FILE, read_results

GPU_SWEEP_ARGS = ("--gpus-per-trial", "0.25", "--max-epochs", "15")
CHECKPOINT_EVERY = 5
# Seconds the sweep gets after Ctrl-C to write its finished trials before it is killed.
GRACE_S = 30
NAME = "fkd-yt15-study-gpu"


def study_space(workdir: Path, checkpoint_every: int = CHECKPOINT_EVERY) -> Path:
    """The study space as a YAML file whose trials checkpoint every N epochs and keep no best.pt."""
    from sweep.spaces import SPACES

    space = {k: v for k, v in SPACES["study"].items() if k != "description"}
    space["fixed"] = {**space["fixed"], "checkpoint_every": checkpoint_every, "checkpoint_best": False}
    path = workdir / "study-gpu.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def study_sweep(workdir: Path, seconds: float, data: Path, args: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run ``sweep.run`` in ``workdir`` for at most ``seconds`` + GRACE_S: at the end of the box it
    gets Ctrl-C (SIGINT), which stops it with every finished trial written (the state --resume
    continues from). Returns its exit code, timings and the row counts of its Parquet files."""
    try:
        import ray  # noqa: F401  (only to know whether the sweep can run here)
    except ImportError:
        return {"skipped": "ray is not installed on this machine (see bench/gpu.sh)"}
    if not data.exists():
        return {"skipped": f"{data} not found (bench/gpu_prepare.sh puts the faces in .gpu/data)"}
    if seconds < 30:
        return {"skipped": f"out of time ({seconds:.0f} s left for the sweep's box)"}
    workdir.mkdir(parents=True, exist_ok=True)
    args = ("--space", str(study_space(workdir)), *GPU_SWEEP_ARGS) if args is None else args
    cmd = [sys.executable, "-m", "sweep.run", "--cluster", "clusters/local.yaml", "--data", str(data),
           "--name", NAME, "--results-dir", str(workdir), *args]
    start = time.perf_counter()
    log_path = workdir / "sweep.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        interrupted = False
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            interrupted = True
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    result: dict[str, Any] = {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
                              "interrupted_after_s": seconds if interrupted else None,
                              "wall_s": time.perf_counter() - start, "outputs": str(workdir)}
    result.update(_tables(workdir / NAME))
    if not result.get("trials_rows"):   # nothing to show for it: say why, briefly
        result["log_tail"] = log_path.read_text()[-1500:]
    return result


def _tables(results: Path) -> dict[str, Any]:
    """Row counts, trial statuses and epoch timings of the sweep's Parquet files."""
    out: dict[str, Any] = {}
    table = read_results(str(results), TRIALS_FILE)   # the compacted file and any parts
    if table is not None:
        trials = table.to_pandas()
        out["trials_rows"] = len(trials)
        out["statuses"] = {str(k): int(v) for k, v in trials["status"].value_counts().items()}
    table = read_results(str(results), EPOCHS_FILE)
    if table is not None:
        epochs = table.to_pandas()
        out["epochs_rows"] = len(epochs)
        if len(epochs):
            out["median_epoch_s"] = float(epochs[EPOCH_SECONDS].median())
            out["median_images_per_s"] = float(epochs[IMAGES_PER_S].median())
    return out
