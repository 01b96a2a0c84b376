"""What sweep.run prints: the header before the search, the summary after it, the failures line.

    from sweep.console import summary
    print(summary(run_sweep(s, data_sets)))   # verdicts (or how to get them), search table, paths
"""
from __future__ import annotations

from typing import Any

from sweep import commands
from sweep.search import Outcome
from sweep.settings import Settings
from sweep.spaces import describe


def summary(outcome: Outcome, verdicts: str | None = None) -> str:
    """The confirm verdicts on test first, then the search (full-budget trials only), then paths."""
    t = outcome.trials
    search = t[t["phase"] == "search"] if "phase" in t else t
    lines = [verdicts if verdicts else
             f"\nVerdicts: none (search only; add --confirm N, or run "
             f"{commands.module('sweep.confirm', outcome.settings.results_uri, '--replicates', 'N')})"]
    lines += [f"\nSearch: {len(search)} trials in {outcome.fit_seconds:.0f} s: "
              + ", ".join(f"{n} {st}" for st, n in search["status"].value_counts().items())]
    lines += ["Search, best full-budget trial per cell x arm (validation; the optimiser's pick, "
              "not evidence):", _search_table(search, list(outcome.settings.space.search))]
    lines += ["\nWrote:"] + [f"  {k:<12}{v}" for k, v in outcome.paths.items()]
    study = f"sqlite:///{outcome.settings.optuna_path.resolve()}"
    dashboard = commands.line(commands.script("optuna-dashboard"), study)
    if not commands.installed("optuna-dashboard"):   # an optional extra: say how to get it
        dashboard = f"{commands.module('pip', 'install', 'optuna-dashboard')} && {dashboard}"
    lines += [f"\nNext: {commands.module('sweep.analyze', outcome.settings.results_uri)}",
              f"Study in a browser: {dashboard}"]
    return "\n".join(lines)


def _search_table(search: Any, searched: list[str]) -> str:
    from fkd_core.metrics import VAL_RMSE   # torch, as sweep.tables: not for sweep.run --help
    from sweep.tables import full_budget, prepare

    full = full_budget(prepare(search, searched))
    if full.empty:
        return "  (no search trial ran the full budget)"
    col = f"best_{VAL_RMSE}"
    rows = full.loc[full.groupby(["cell", "arm"], sort=False)[col].idxmin().to_numpy()]
    rows = rows.rename(columns={col: "val RMSE px", "objective_label": "arm label"})
    return rows[["cell", "arm label", "alpha", "lr", "val RMSE px", "best_epoch", "epochs",
                 "trial_id"]].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def header(s: Settings, data_sets: dict[str, Any]) -> str:
    data = "; ".join(f"{d.source}{' (synthetic)' if d.synthetic else ''}, {len(d)} faces"
                     for d in data_sets.values())
    res = f"{s.resources['cpu']:g} CPU" + (f" + {s.resources['gpu']:g} GPU" if s.resources["gpu"] else "")
    verb = "Resuming" if s.resume else "Sweep"
    return (f"{verb} {s.name}: {s.space.trials} trials, {res} each, up to "
            f"{s.max_concurrent or 'as many as fit'} at once\n  space {describe(s.space)}\n"
            f"  data {data}\n  results {s.results_uri}")


def failures(trials: Any) -> str | None:
    """'N of M trials failed (...)' with the first error's line, or None when none failed."""
    if trials is None or trials.empty:
        return None
    errors = trials[trials["status"] == "error"]
    if errors.empty:
        return None
    first = next((e for e in errors["error"] if e), "no message recorded")
    return (f"{len(errors)} of {len(trials)} trials failed; the first error: "
            f"{first.splitlines()[0]}")

