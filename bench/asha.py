"""ASHA + Optuna TPE against the same number of trials run to the full budget (random search).

    python -m bench.asha [--quick]

Both sweeps search the same space (the quick space with small_cnn only, on synthetic faces) with
the same sampler seed, so TPE's random start-up trials are the random search's first trials: the
comparison isolates what early stopping costs.
Targets: the ASHA sweep's best val RMSE within 3% of the full budget's, using <= 40% of its epochs.
"""
from __future__ import annotations

import argparse
import logging
import tempfile

from sweep.run import load_data, local_settings, quiet_environment, run_sweep
from sweep.spaces import Space, from_dict

CONCURRENCY = 2
RMSE_TARGET = 1.03
EPOCH_TARGET = 0.40


def space(quick: bool, asha: bool) -> Space:
    """The quick space without resnet18 (CPU minutes): augmentation none/study x MSE vs
    MSE + alpha*CGD, alpha log-uniform in [1e-3, 1] when the shape term is on."""
    trials, epochs, synth_n = (6, 4, 300) if quick else (12, 12, 800)
    return from_dict({
        "name": "asha" if asha else "full", "grid": False, "seeds": 1, "num_samples": trials,
        "max_epochs": epochs,
        # Rungs at 1, 3 and 9 epochs of 12: a third of the trials go on at each.
        "asha": {"grace_period": 1, "reduction_factor": 3} if asha else None,
        "fixed": {"backbone": "small_cnn", "synth_n": synth_n, "patience": 1000},
        "axes": {"augment": ["none", "study"], "shape": ["none", "cgd"]},
        "search": {"alpha": {"log_uniform": [1e-3, 1.0], "when": {"shape": ["cgd"]}}}})


def sweep(quick: bool, asha: bool, folder: str) -> dict[str, float]:
    s = space(quick, asha)
    settings = local_settings(s, folder, s.name, max_concurrent=CONCURRENCY,
                              sampler="tpe" if asha else "random")
    outcome = run_sweep(settings, load_data(s), log=None)
    t = outcome.trials
    return {"epochs": float(t.epochs.sum()), "best": float(t.best_val_rmse_px.min()),
            "seconds": outcome.fit_seconds, "trials": len(t)}


def run(quick: bool = False) -> list[dict]:
    import ray

    quiet_environment()
    ray.init(num_cpus=CONCURRENCY, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            full, asha = sweep(quick, False, tmp), sweep(quick, True, tmp)
    finally:
        ray.shutdown()
    n = int(full["trials"])
    epoch_ratio, rmse_ratio = asha["epochs"] / full["epochs"], asha["best"] / full["best"]
    return [
        {"name": f"epochs trained, {n} trials: random search at full budget vs ASHA + TPE",
         "reference": full["epochs"], "ours": asha["epochs"], "ratio": epoch_ratio,
         "target": f"<= {EPOCH_TARGET}", "passed": epoch_ratio <= EPOCH_TARGET},
        {"name": "best val RMSE px: full budget vs ASHA + TPE", "reference": full["best"],
         "ours": asha["best"], "ratio": rmse_ratio, "target": f"<= {RMSE_TARGET}",
         "passed": rmse_ratio <= RMSE_TARGET},
        {"name": "sweep wall s: full budget vs ASHA + TPE", "reference": full["seconds"],
         "ours": asha["seconds"], "ratio": asha["seconds"] / full["seconds"],
         "target": "reported", "passed": None},
    ]


def main() -> None:
    from bench.sweep_overhead import print_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter trials")
    print_rows(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
