"""ASHA + Optuna TPE against the same number of trials run to the full budget (random search).

    python -m bench.asha [--quick]

Both sweeps search the same space (the quick space with small_cnn only, on synthetic faces) with
the same sampler seed, so TPE's random start-up trials are the random search's first trials: the
comparison isolates what early stopping costs. The best of 12 trials is one noisy draw, so the
pair is repeated with 3 sampler and split seeds: epochs are summed over the repeats, the best
RMSE ratio is the median of the repeats' ratios (each one printed).
Targets: the ASHA sweep's best val RMSE within 3% of the full budget's, using <= 40% of its epochs.
"""
from __future__ import annotations

import argparse
import logging
import tempfile

from sweep.datasets import load_data
from sweep.search import run_sweep
from sweep.settings import local_settings
from sweep.tuning import quiet_environment
from sweep.spaces import Space, from_dict

CONCURRENCY = 2
RMSE_TARGET = 1.03
EPOCH_TARGET = 0.40


REPEATS = (1, 3)   # (quick, full): sampler and split seeds 0..n-1


def space(quick: bool, asha: bool, seed: int = 0) -> Space:
    """The quick space without resnet18 (CPU minutes): augmentation none/study x MSE vs
    MSE + alpha*CGD, alpha log-uniform in [1e-3, 1] when the shape term is on."""
    trials, epochs, synth_n = (6, 4, 300) if quick else (12, 12, 800)
    return from_dict({
        "name": "asha" if asha else "full", "grid": False, "seeds": 1, "num_samples": trials,
        "max_epochs": epochs,
        # Rungs at 1, 3 and 9 epochs of 12: a third of the trials go on at each.
        "asha": {"grace_period": 1, "reduction_factor": 3} if asha else None,
        "fixed": {"backbone": "small_cnn", "synth_n": synth_n, "patience": 1000, "split_seed": seed},
        "axes": {"augment": ["none", "study"], "shape": ["none", "cgd"]},
        "search": {"alpha": {"log_uniform": [1e-3, 1.0], "when": {"shape": ["cgd"]}}}})


def sweep(quick: bool, asha: bool, folder: str, seed: int) -> dict[str, float]:
    s = space(quick, asha, seed)
    settings = local_settings(s, folder, f"{s.name}-{seed}", max_concurrent=CONCURRENCY,
                              sampler="tpe" if asha else "random", tpe_seed=seed)
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
            pairs = [(sweep(quick, False, tmp, seed), sweep(quick, True, tmp, seed))
                     for seed in range(REPEATS[0] if quick else REPEATS[1])]
    finally:
        ray.shutdown()
    total = lambda key, side: sum(pair[side][key] for pair in pairs)
    n, repeats = int(pairs[0][0]["trials"]), len(pairs)
    epoch_ratio = total("epochs", 1) / total("epochs", 0)
    ratios = [asha["best"] / full["best"] for full, asha in pairs]
    median = sorted(ratios)[len(ratios) // 2]
    full_best, asha_best = (sorted(pair[side]["best"] for pair in pairs)[repeats // 2] for side in (0, 1))
    return [
        {"name": f"epochs trained, {n} trials x {repeats} seeds: random search at full budget vs ASHA + TPE",
         "reference": total("epochs", 0), "ours": total("epochs", 1), "ratio": epoch_ratio,
         "target": f"<= {EPOCH_TARGET}", "passed": epoch_ratio <= EPOCH_TARGET},
        {"name": "best val RMSE px: full budget vs ASHA + TPE (median over seeds)", "reference": full_best,
         "ours": asha_best, "ratio": median, "target": f"<= {RMSE_TARGET}",
         "passed": median <= RMSE_TARGET,
         "note": "per seed: " + ", ".join(f"{f['best']:.2f}/{a['best']:.2f} = {a['best'] / f['best']:.3f}"
                                          for f, a in pairs)},
        {"name": "sweep wall s: full budget vs ASHA + TPE", "reference": total("seconds", 0),
         "ours": total("seconds", 1), "ratio": total("seconds", 1) / total("seconds", 0),
         "target": "reported", "passed": None},
    ]


def main() -> None:
    from bench.sweep_overhead import print_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter trials")
    print_rows(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
