"""Sweep overhead: 8 fixed-length trials at concurrency 2 against the ideal.

    python -m bench.sweep_overhead [--quick]

The ideal is the sum of the trials' own training time (Tune's time_total_s: the trial function
from its first line to its return) divided by the 2 concurrent slots. Ours is the wall time of
the whole sweep from ray.init to the last Parquet write, Ray's start-up included; the start-up
is also reported on its own. Target: ours <= 1.25x the ideal.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time

from sweep.datasets import load_data
from sweep.search import run_sweep
from sweep.settings import local_settings
from sweep.tuning import quiet_environment
from sweep.spaces import Space, from_dict

TARGET = 1.25
CONCURRENCY = 2
TRIALS = 8


def space(quick: bool) -> Space:
    """8 identical small_cnn trials (seeds 0-7) that all run every epoch: no ASHA, no early stop.

    ~35 s per trial on one core, the length of a quick-space small_cnn trial: the sweep's fixed
    cost (Ray start-up, the first worker processes) weighs less on longer trials.
    """
    synth_n, epochs = (600, 3) if quick else (2000, 8)
    return from_dict({"name": "overhead", "grid": True, "seeds": TRIALS, "max_epochs": epochs,
                      "asha": None, "axes": {},
                      "fixed": {"backbone": "small_cnn", "synth_n": synth_n, "patience": 1000}})


def measure(quick: bool) -> dict[str, float]:
    import ray

    quiet_environment()
    sweep_space = space(quick)
    data = load_data(sweep_space)    # the trainer's reference pays no data loading either
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ray.init(num_cpus=CONCURRENCY, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        startup = time.perf_counter() - start
        try:
            outcome = run_sweep(local_settings(sweep_space, tmp, "overhead",
                                               max_concurrent=CONCURRENCY), data, log=None)
            wall = time.perf_counter() - start
        finally:
            ray.shutdown()
    trial_seconds = float(outcome.trials.wall_seconds.sum())
    return {"wall": wall, "startup": startup, "fit": outcome.fit_seconds,
            "ideal": trial_seconds / CONCURRENCY, "trials": len(outcome.trials)}


def run(quick: bool = False) -> list[dict]:
    m = measure(quick)
    ratio = m["wall"] / m["ideal"]
    return [
        {"name": f"{m['trials']} small_cnn trials at concurrency {CONCURRENCY}: wall s "
                 "(Ray start-up included) vs ideal = sum of trial times / 2",
         "reference": m["ideal"], "ours": m["wall"], "ratio": ratio, "target": f"<= {TARGET}",
         "passed": ratio <= TARGET},
        {"name": "of which Ray start-up (ray.init) s", "reference": None, "ours": m["startup"],
         "ratio": None, "target": "reported", "passed": None},
    ]


def print_rows(rows: list[dict]) -> None:
    """The rows as a markdown table (python -m bench prints them all together)."""
    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.3g}"
    print("| measure | reference | ours | ratio | target | pass |\n|---|---|---|---|---|---|")
    for r in rows:
        verdict = "" if r["passed"] is None else ("pass" if r["passed"] else "FAIL")
        note = f" ({r['note']})" if r.get("note") else ""
        print(f"| {r['name']}{note} | {fmt(r['reference'])} | {fmt(r['ours'])} | {fmt(r['ratio'])} "
              f"| {r['target']} | {verdict} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller trials (a smoke check)")
    print_rows(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
