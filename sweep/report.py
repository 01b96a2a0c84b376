"""report.md: the confirm verdicts on test first, then the search, labelled as such.

    python -m sweep.analyze results/<name>      # writes report.md (this module) + figures

Section 1 is the answer: one verdict per cell from the confirm phase (sweep.verdicts), with the
method, the margin fixed before the run, Holm over the cells, the replicates and looks, and whether
the splits were group-disjoint. Section 2 is the search, an optimiser: only its full-budget trials
are shown, and nothing in it is evidence for or against the shape term.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from fkd_core import metrics as M
from sweep import figures as F
from sweep import verdicts as V
from sweep.figures import importance_params
from sweep.tables import (MAX_CELL_LEVELS, best, cell_columns, full_budget, plain, prepare,
                          searched_params)
from sweep.stats import importance_ranking


def data_phrase(trials: pd.DataFrame) -> str:
    """How the report names the data; the word "synthetic" appears iff the data was."""
    sources = sorted(set(trials["data_source"].astype(str)))
    if trials["data_synthetic"].astype(bool).any():
        return f"synthetic faces ({', '.join(f'`{s}`' for s in sources)}; not real data)"
    return "the real faces of " + ", ".join(f"`{s}`" for s in sources)




def optuna_importance(t: pd.DataFrame, params: Sequence[str]) -> pd.Series:
    """Optuna's PED-ANOVA importance of each parameter for reaching a low val RMSE.

    fANOVA and mean-decrease-impurity need scikit-learn, which the project does not depend on;
    PED-ANOVA needs only numpy. α is a conditional parameter, as in the sweep's define-by-run
    space: present only in trials with a shape term.
    """
    import optuna

    ok = t[t["outcome"] == "ok"]
    dists = {p: _distribution(ok[p], optuna) for p in params}
    trials = [optuna.trial.create_trial(
        params={p: plain(r[p]) for p in params if not (p == "alpha" and r["arm"] == "base")},
        distributions={p: d for p, d in dists.items()
                       if not (p == "alpha" and r["arm"] == "base")},
        value=float(r[best(M.OBJECTIVE)])) for _, r in ok.iterrows()]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize")
        study.add_trials(trials)
        # PED-ANOVA wants >= 5 trials in the top quantile to be stable.
        q = min(0.5, max(0.1, 5 / len(trials)))
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=q)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(study, evaluator=evaluator)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return pd.Series(result, dtype=float).reindex(list(params)).fillna(0.0)


def _distribution(col: pd.Series, optuna: Any) -> Any:
    if col.name == "alpha" or (pd.api.types.is_float_dtype(col) and col.nunique() > MAX_CELL_LEVELS):
        v = col.astype(float)
        v = v[v > 0]
        log = bool(v.min() > 0 and v.max() / v.min() >= 10)
        return optuna.distributions.FloatDistribution(float(v.min()), float(v.max()), log=log)
    return optuna.distributions.CategoricalDistribution(sorted({plain(x) for x in col}, key=str))


def importance_markdown(t: pd.DataFrame, params: Sequence[str]) -> str:
    ok = t[t["outcome"] == "ok"]
    eps = importance_ranking(ok, params, best(M.OBJECTIVE))
    try:
        ped = optuna_importance(t, params) if len(ok) >= 10 else None
        ped_note = "" if ped is not None else "PED-ANOVA skipped: fewer than 10 finished trials."
    except (ValueError, RuntimeError) as exc:  # e.g. too few distinct values for a parameter
        ped, ped_note = None, f"PED-ANOVA failed: {exc}."
    lines = ["| rank | parameter | ε² (variance of val RMSE explained) | Optuna PED-ANOVA |",
             "|---|---|---|---|"]
    for i, (p, e) in enumerate(eps.items(), 1):
        ped_text = f"{ped[p]:.3f}" if ped is not None else "—"
        lines.append(f"| {i} | {p} | {e:.3f} | {ped_text} |")
    return "\n".join(lines) + (f"\n\n{ped_note.strip()}" if ped_note else "")


# --- report -------------------------------------------------------------------------------

def budget_markdown(t: pd.DataFrame) -> str:
    used, full = int(t["epochs"].sum()), int(t["max_epochs"].sum())
    counts = t["status"].value_counts()
    lines = [f"- trials: {len(t)} ({', '.join(f'{s}: {n}' for s, n in counts.items())})",
             f"- compute used: {used} of {full} epochs (sum of epochs / sum of max_epochs = "
             f"{used / max(full, 1):.1%}); wall time {t['wall_seconds'].sum() / 60:.1f} "
             "trial-minutes"]
    stops = t.loc[t["status"] == "asha_stopped", "epochs"].value_counts().sort_index()
    if len(stops):
        lines.append("- ASHA stopped trials after " + ", ".join(
            f"{int(e)} epochs ({n} trials)" for e, n in stops.items()))
    per_arm = t.groupby("objective_label")["epochs"].agg(["count", "mean"])
    lines.append("- mean epochs per trial: " + ", ".join(
        f"{lab} {r['mean']:.1f} ({int(r['count'])} trials)" for lab, r in per_arm.iterrows()))
    return "\n".join(lines)


def excluded_markdown(t: pd.DataFrame) -> str:
    bad = t[t["outcome"] != "ok"]
    if bad.empty:
        return "No trial failed or diverged."
    lines = [f"{(bad['outcome'] == 'failed').sum()} failed and "
             f"{(bad['outcome'] == 'diverged').sum()} diverged trials, excluded from every mean:",
             "", "| trial | outcome | status | loss | α | cell | seed | epochs | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in bad.iterrows():
        err = str(r.get("error") or "").replace("|", "/").replace("\n", " ")[:120]
        lines.append(f"| {r['trial_id']} | {r['outcome']} | {r['status']} | "
                     f"{r['objective_label']} | {r['alpha']:g} | {r['cell']} | {r['seed']} | "
                     f"{r['epochs']} | {err} |")
    return "\n".join(lines)


@dataclass
class Report:
    """Sections of report.md in order; figures are file names relative to the report."""

    parts: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.parts.extend(lines)

    def figure(self, name: str | None, caption: str, missing: str) -> None:
        self.add(f"![{caption}]({name})" if name else f"_{missing}_", "")

    def text(self) -> str:
        return "\n".join(self.parts).rstrip() + "\n"


# --- section 1: verdicts ---------------------------------------------------------------------

def rule_of(settings: dict[str, Any]) -> tuple[V.Rule, str]:
    """The decision rule recorded in sweep.json before the confirm phase ran, and a note."""
    plan = (settings.get("confirm") or {}).get("plan")
    if not plan:
        return V.Rule(), "the default: no confirm plan is recorded in sweep.json"
    return V.Rule.from_dict(plan), "the plan was frozen at the first confirm round (sweep.json)"


def split_phrase(settings: dict[str, Any]) -> str:
    by_cell = (settings.get("confirm") or {}).get("split") or {}
    kinds = sorted(set(by_cell.values()))
    if len(kinds) > 1:   # e.g. the reproduction: split=tail cuts validation through groups
        return "; ".join(f"{kind} in {', '.join(sorted(c for c, k in by_cell.items() if k == kind))}"
                         for kind in kinds) + " (the test split is the same in every cell)"
    return kinds[0] if kinds else "not recorded"


def verdict_markdown(table: pd.DataFrame) -> str:
    lines = ["| cell | shape term (α) | replicates | d = test RMSE shape − base, px: mean "
             "[decision interval] | interval level | P(improvement) | test RMSE base / shape, px "
             "| α·shape / base loss, end of training | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        share = getattr(r, "shape_share", math.nan)
        lines.append(f"| {r.cell} | {r.shape} (α={r.alpha:.3g}) | {r.n} | {_num(r.d_mean)} "
                     f"[{_num(r.ci_low)}, {_num(r.ci_high)}] | {r.level:.4g} | "
                     f"{_num(r.p_improve, 2)} | {_num(r.base_test_rmse)} / "
                     f"{_num(r.shape_test_rmse)} | {_num(share, 4)} | **{r.verdict_text}** |")
    return "\n".join(lines)


def plan_markdown(table: pd.DataFrame) -> str:
    """Item 4 of the plan: per comparison, what a decision will take (sweep.verdicts.plan_row)."""
    lines = ["| cell | shape term | sd of d, px | replicates for 80% power (design) | still to run "
             "| cost, trial-minutes | measured on |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.cell} | {r.shape} | {_num(r.d_sd)} | {_count(r.needed)} "
                     f"({r.plan_design}) | {_count(r.more)} | {_num(r.more_minutes, 1)} | "
                     f"{r.hardware} |")
    return "\n".join(lines)


PLAN_NOTE = ("Replicates for 80% power: the fewest at which a look decides with probability ≥ "
             "0.8 both when the true d is 0 (equivalent) and when it is ±margin (better/worse), "
             "and, for a cell still undecided, when the true d is its estimate (an estimate "
             "between 0 and the margin is the hard case), for normal d with the estimated sd, "
             "under the design in force and its multiplicity level. A fixed-N look cannot be "
             "extended, so its number is that of a new confirm; a group-sequential plan that "
             "cannot reach it by its maximum, or has run to its maximum undecided, shows a new "
             "fixed-N confirm's. Cost = still to run × the measured wall minutes of one base and one shape "
             "trial of the cell.")


def population_markdown(table: pd.DataFrame, available: bool) -> str:
    if not available:
        return f"_The interval over test people too is {V.NO_GROUPS}._"
    lines = ["| cell | shape term | d given these test people, px | d over people too, px |",
             "|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.cell} | {r.shape} | [{_num(r.ci_low)}, {_num(r.ci_high)}] | "
                     f"[{_num(r.pop_low)}, {_num(r.pop_high)}] |")
    return "\n".join(lines)


POPULATIONS = ("Which population each interval covers: the decision interval is over training "
               "replicates (seeds, validation splits) with the test people held fixed: it says "
               "what the shape term does for *these* test people. The second interval also "
               "resamples the test people (a bootstrap over test groups crossed with replicates, "
               "at the same level): it says what it would do for new people drawn like them. It "
               "informs; the verdict is read off the first.")


def _num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _count(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else str(int(x))


def method_sentence(rule: V.Rule, note: str, replicates: int, looks: int, split: str,
                    scored: str, scored_as: str = "final") -> str:
    what = (f"the weights fixed before the run as scored (`scored` = {scored_as}; the default "
            "'final' is the final weights, the EMA average when the recipe has one, 'best_val' the "
            "noisier best-validation epoch)" if scored == V.SCORED_COLUMN else
            "each trial's best epoch on validation (a confirm recorded before fixed-budget "
            "trials: the noisier choice)")
    return (f"Decision: {rule.method()}; {V.MULTIPLICITY}, so the family-wise error over every "
            f"verdict word is at most α = {rule.alpha:g}. The interval printed is the one "
            f"decided on. The method {V.ASSUMPTION}. Equivalence margin ±{rule.margin:g} px "
            f"({note}). "
            f"{replicates} paired replicate(s) per arm, {looks} look(s) at the data. Splits: "
            f"{split}. Replicate r trains both arms with the same seed and the same "
            "train/validation split (a fresh split per replicate); the test rows are the same in "
            f"every trial. Scored: {what}. P(improvement) = P(mean d < 0) under the Student-t "
            "posterior (flat prior).")


PAIRING = ("Each shape arm is trained with the base arm's best search config plus the shape "
           "term and α of its own best search trial, so a pair differs only in the arm: d is the "
           "effect of adding α·shape term to the base recipe.")


def verdict_section(t: pd.DataFrame, settings: dict[str, Any], phrase: str,
                    out: Path) -> tuple[list[str], pd.DataFrame, str]:
    """Markdown lines of section 1, the verdict table (empty when there is none), console text."""
    confirm = t[t["phase"] == "confirm"]
    head = ["## 1. Verdicts: confirm phase, scored on the test split", ""]
    if confirm.empty or not V.has_test_metrics(confirm):
        why = (f"No confirm phase in these results ({phrase}): the search alone does not answer "
               "the question. Run `python -m sweep.confirm <results> --replicates N`."
               if confirm.empty else f"No verdict: {V.NO_TEST_METRICS}.")
        return head + [f"_{why}_", ""], pd.DataFrame(), verdict_lines(pd.DataFrame(), why)
    rule, note = rule_of(settings)
    table = V.verdict_table(confirm, rule)
    table["margin"] = rule.margin
    replicates = int(confirm["replicate"].max()) + 1
    looks = int((settings.get("confirm") or {}).get("looks", 1))
    counts = table["verdict"].value_counts()
    lead = ", ".join(f"{counts.get(v, 0)} {v}" for v in V.VERDICTS if counts.get(v, 0))
    sentence = f"On {phrase}: {lead} of {len(table)} cell(s) (shape term vs base loss, test RMSE)."
    scored, scored_as = str(table["scored"].iloc[0]), str(table["scored_as"].iloc[0])
    lines = head + [sentence.replace(lead, f"**{lead}**", 1), "", verdict_markdown(table), "",
                    method_sentence(rule, note, replicates, looks, split_phrase(settings), scored,
                                    scored_as),
                    "", PAIRING, "", "### What a decision will take", "", plan_markdown(table), "",
                    PLAN_NOTE, "", "### Beyond these test people", "",
                    population_markdown(table, V.has_groups(confirm)), "", POPULATIONS, ""]
    fig = F.figure_verdicts(V.paired_differences(confirm), table, out, rule.method())
    lines += [f"![confirm verdicts]({fig})", ""] if fig else []
    return lines, table, verdict_lines(table, sentence)


def verdict_console(result: Any, rule: V.Rule, uri: str) -> str:
    """The end-of-run verdict table for sweep.run / sweep.confirm (confirm.Result), the plan
    under it."""
    lines = ["\nVerdicts (confirm phase, test split):"]
    if result.table.empty:
        return "\n".join(lines + [f"  no verdict: {result.note or 'no paired confirm trials'}"])
    rows = [{"cell": r.cell, "shape (α)": f"{r.shape} ({r.alpha:.3g})", "n": r.n,
             "d = shape − base, px [interval]": f"{_num(r.d_mean)} [{_num(r.ci_low)}, "
                                                f"{_num(r.ci_high)}]",
             "P(improve)": _num(r.p_improve, 2), "verdict": r.verdict_text}
            for r in result.table.itertuples()]
    lines.append(pd.DataFrame(rows).to_string(index=False))
    lines.append(f"  {rule.method()}; Bonferroni over {len(result.table)} comparison(s) (level "
                 f"{result.table['level'].iloc[0]:.4g} each); margin ±{rule.margin:g} px; "
                 f"{result.replicates} replicate(s), {result.looks} look(s); {V.ASSUMPTION}")
    lines += ["", "Plan (80% power at the margin):", *plan_lines(result.table)]
    return "\n".join(lines)


def plan_lines(table: pd.DataFrame) -> list[str]:
    """One console line per comparison: sd of d, replicates needed, still to run, their cost."""
    return [f"    {r.cell} / {r.shape}: sd(d) {_num(r.d_sd)} px; {_count(r.needed)} replicates "
            f"({r.plan_design}); {_count(r.more)} more = {_num(r.more_minutes, 1)} trial-minutes "
            f"on {r.hardware}" for r in table.itertuples()]


def verdict_lines(table: pd.DataFrame, lead: str) -> str:
    """Section 1 as console text (sweep.analyze prints it): the lead, then one line per cell,
    then the plan."""
    lines = ["Verdicts (confirm phase, test split):", f"  {lead}"]
    for r in table.itertuples():
        lines.append(f"  {r.cell:<24} {r.shape} (α={r.alpha:.3g})  n={r.n}  d={_num(r.d_mean)} "
                     f"[{_num(r.ci_low)}, {_num(r.ci_high)}] px  P(improve)={_num(r.p_improve, 2)}"
                     f"  {r.verdict}")
    if len(table):
        lines += ["Plan (80% power at the margin):", *plan_lines(table)]
    return "\n".join(lines)


# --- section 2: the search -------------------------------------------------------------------

def recipes_markdown(t: pd.DataFrame) -> str:
    """The best full-budget search trial of each cell x arm (what the confirm phase retrains)."""
    full = full_budget(t)
    if full.empty:
        return "_No search trial ran the full budget._"
    lines = ["| cell | arm | trial | α | lr | val RMSE (px) at best epoch | best epoch / epochs |",
             "|---|---|---|---|---|---|---|"]
    for (cell, arm), g in full.groupby(["cell", "arm"], sort=False):
        r = g.loc[g[best(M.OBJECTIVE)].astype(float).idxmin()]
        lines.append(f"| {cell} | {r['objective_label']} | `{r['trial_id']}` | {r['alpha']:.3g} | "
                     f"{r['lr']:.3g} | {r[best(M.VAL_RMSE)]:.3f} | {r['best_epoch']} / {r['epochs']} |")
    return "\n".join(lines)


def search_section(t: pd.DataFrame, epochs: pd.DataFrame, root: str, out: Path, r: "Report") -> None:
    search = t[t["phase"] == "search"]
    full = full_budget(t)
    stopped = int((search["status"] == "asha_stopped").sum())
    r.add("## 2. Search (validation split; an optimiser, not evidence)", "",
          f"{len(search)} search trials; {len(full)} ran the full budget and are the only ones "
          f"shown below ({stopped} stopped early by ASHA, which ranks a trial only against its "
          "own cell x arm, are left out: their numbers are from earlier epochs). Best full-budget "
          "trial per cell x arm; the confirm phase retrains the base arm's config, and that "
          "same config plus the shape arm's α (so the shape arm's own lr below is not used):", "", recipes_markdown(t), "")
    r.add("### α response (search, full budget)", "")
    r.figure(F.figure_alpha(full, out), "alpha response", "α figure skipped: no full-budget shape-arm trial.")
    r.add("### Accuracy vs shape trade-off (search, full budget)", "")
    r.figure(F.figure_tradeoff(full, out), "trade-off", "Trade-off figure skipped: no full-budget trial.")
    r.add("### Learning curves (search, full budget)", "")
    r.figure(F.figure_curves(full, epochs, out), "learning curves",
             "Learning curves skipped: no full-budget trial with epochs.")
    r.add("### Predictions on validation faces (search, full budget)", "",
          *F.prediction_section(full, root, out), "")
    r.add("### Budget (search)", "", budget_markdown(search), "")
    r.figure(F.figure_budget(search, out), "budget", "")
    r.add("### Which hyperparameters matter (search, full budget)", "")
    params = importance_params(full)
    r.figure(F.figure_parallel(full, params, out), "parallel coordinates",
             "Parallel coordinates skipped: fewer than one full-budget trial or nothing varies.")
    if params and len(full) > 2:
        seed_note = ("; seed is a reference for what noise alone explains" if "seed" in params
                     else "")
        r.add(importance_markdown(full, params), "",
              "ε² = share of the variance of val RMSE between the parameter's levels (numeric "
              f"parameters in 4 equal-count bins), corrected for the number of levels{seed_note}.", "")


def build_report(trials: pd.DataFrame, epochs: pd.DataFrame, root: str, out: Path,
                 settings: dict[str, Any] | None = None
                 ) -> tuple[str, dict[str, pd.DataFrame], str]:
    """Write every figure into out; return report.md's text, its tables by name, and the
    verdicts as console text."""
    settings = settings or {}
    searched = searched_params(settings)
    t = prepare(trials, searched)
    phrase = data_phrase(t)
    cols = cell_columns(t[t["phase"] == "search"], searched)
    r = Report()
    r.add(f"# Sweep analysis: {Path(root.rstrip('/')).name}", "",
          f"Data: {phrase}. Source: `{root}`; {len(t)} trials ({(t['phase'] == 'search').sum()} "
          f"search, {(t['phase'] == 'confirm').sum()} confirm). Made by "
          f"`python -m sweep.analyze {root}`. Cells are formed by "
          f"{', '.join(f'`{c}`' for c in cols) or 'nothing (one cell)'}; arms by the shape term "
          "(none = base loss).", "")
    lines, table, console = verdict_section(t, settings, phrase, out)
    r.add(*lines)
    search_section(t, epochs, root, out, r)
    r.add("## Failed and diverged trials", "", excluded_markdown(t), "")
    return r.text(), {"verdicts": table}, console
