"""Ingest benchmark: the Kaggle-layout reader against the naive way, measured in one run.

    python -m bench.ingest            # on ../shared/data/fkd-yt15/training.csv.gz (3462 faces)
    python -m bench.ingest --quick    # fewer repeats

Rows (seconds, best of the repeats, so that other processes on a shared machine count least):
- naive reference: ``pd.read_csv`` then one ``np.fromstring(..., sep=" ")`` per row;
- our reader cold: ``load_dataset(path, cache=False)`` (hash, gunzip, vectorised parse);
- our cached load: ``load_dataset(path)`` once the cache holds the file;
- the gunzip floor: decompressing the file and nothing else, the least a cold read can cost.
Targets: cold >= 4x faster than naive, cached >= 100x.
When the shared data is absent, a synthetic file of the same size and layout stands in (noted).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from fkd_core.data import load_dataset, write_kaggle_csv

DATA = Path(__file__).resolve().parents[1] / "../shared/data/fkd-yt15/training.csv.gz"


def naive_read(path: Path) -> np.ndarray:
    """The usual notebook code: pandas, then one string split per row. uint8 [N, 96, 96]."""
    frame = pd.read_csv(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pixels = [np.fromstring(text, sep=" ", dtype=np.float32) for text in frame["Image"]]
    return np.stack(pixels).astype(np.uint8).reshape(-1, 96, 96)


def gunzip_floor(path: Path) -> int:
    return len(zlib.decompress(path.read_bytes(), wbits=31))


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of fn over the repeats, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _row(name: str, reference: float, ours: float, ratio: float, target: str, passed: bool | None,
         note: str = "") -> dict:
    # "reference"/"ours" are what `python -m bench` prints; "*_s" say the unit.
    return {"name": name, "reference_s": reference, "ours_s": ours, "reference": reference, "ours": ours,
            "ratio": ratio, "target": target, "passed": passed, "note": note}


def _stand_in(folder: Path) -> Path:
    """A synthetic Kaggle-layout file of the shared file's size, when the shared data is absent."""
    from fkd_core.synth import generate

    images, keypoints = generate(3462, seed=0, complete_fraction=0.32)
    return write_kaggle_csv(folder / "synthetic-training.csv.gz", images, keypoints)


def run(quick: bool = False) -> list[dict]:
    """Rows {name, reference_s, ours_s, ratio, target, passed} (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, note = (DATA, "") if DATA.is_file() else (_stand_in(Path(tmp)), "synthetic stand-in file")
        reps = 1 if quick else 3
        naive = best_of(lambda: naive_read(path), 1 if quick else 2)
        floor = best_of(lambda: gunzip_floor(path), reps)
        cold = best_of(lambda: load_dataset(str(path), cache=False), reps)
        load_dataset(str(path), cache_dir=tmp)  # fills the cache
        cached = best_of(lambda: load_dataset(str(path), cache_dir=tmp), 5)
    return [
        _row("cold read (no cache) vs naive pandas + per-row split", naive, cold, naive / cold,
             ">= 4x faster", naive / cold >= 4, note),
        _row("cached load vs naive", naive, cached, naive / cached, ">= 100x faster", naive / cached >= 100, note),
        _row("cold read vs gunzip-only floor (x the floor)", floor, cold, cold / floor, "report", None, note),
    ]


def markdown(rows: list[dict]) -> str:
    lines = ["| measure | reference (s) | ours (s) | ratio | target | pass |", "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "" if r["passed"] is None else ("pass" if r["passed"] else "FAIL")
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['name']}{note} | {r['reference_s']:.3f} | {r['ours_s']:.3f} | {r['ratio']:.1f} | "
                     f"{r['target']} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat each")
    args = parser.parse_args(argv)
    print(markdown(run(quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
