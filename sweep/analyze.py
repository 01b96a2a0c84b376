"""Turn a sweep's Parquet results into report.md and figures: does MSE + α·CGD beat MSE?

    python -m sweep.analyze results/<name>                 # writes report.md + fig*.png there
    python -m sweep.analyze s3://bucket/runs/<name> --out analysis/<name>

Reads only ``trials.parquet`` and ``epochs.parquet`` (local, s3:// or gs:// through pyarrow's
filesystems) and, for the prediction figure, the best checkpoints when they are reachable.

How trials are grouped (see ``cell_columns``):
- *arm*: the objective. "base" = no shape term (shape == "none" or α == 0); otherwise the shape
  term's name ("cgd", "seed_cgd"), compared with the base arm of the same cell.
- *cell*: every TrialConfig column that varies in the table except the arm (shape, alpha), the
  replicate keys (seed, split_seed, synth_seed), runtime knobs (device, precision, ...), and
  sampled continuous hyperparameters (floats with more than 5 distinct values, e.g. a
  log-uniform lr): so backbone × augmentation for ``quick``/``study``, the defect switches for
  ``reproduce`` and synth_pose for ``rigidity``.
- *replicate*: (seed, split_seed, synth_seed). Trials sharing a replicate key within an arm are
  averaged first, so a CI is over independent seeds and a paired difference matches the same
  seed and split in both arms.
- *best α*: per cell and shape term, the α level whose mean val RMSE over replicates is lowest,
  among levels with ≥ 2 replicates. A sampled (log-uniform) α is grouped into decades first;
  when still no level has two replicates, the arm is pooled over all its α.
- *metrics*: each trial's values at its best epoch (``best_val_*`` columns, the epoch the best
  checkpoint holds). Failed (error) and diverged trials are counted and listed, never averaged.
- *equal budget*: ASHA stops trials at a rung by comparing them with every trial that reached
  it, whatever their cell, so two arms of a pair can end with different epoch counts. Where ASHA
  stopped a trial of a compared pair (same replicate, base arm or chosen shape arm) after e
  epochs, both arms of that pair are scored at their best epoch within the first e
  (``budget_matched``): the difference then measures the loss, not the budget. A trial's own
  early stopping is part of the recipe and caps nothing.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fkd_core import metrics as M
from fkd_core.config import TrialConfig, config_fields
from sweep.stats import MeanCI, importance_ranking, mean_ci, paired_difference, pareto_front

OK_STATUSES = ("completed", "asha_stopped", "early_stopped")
ARM_COLUMNS = ("shape", "alpha")
REPLICATE_KEYS = ("seed", "split_seed", "synth_seed")
# Knobs that change speed, not results: they never split cells nor enter importance.
RUNTIME_COLUMNS = ("device", "precision", "channels_last", "compile", "compile_mode")
# A float column with more distinct values than this was sampled, not gridded: not a cell.
MAX_CELL_LEVELS = 5
# Cells drawn in the learning-curve figure; more would make unreadable panels.
MAX_CURVE_CELLS = 8
# Validation faces drawn per prediction figure.
N_PREDICTION_FACES = 8
METRIC_LABELS = {M.VAL_RMSE: "val RMSE (px)", M.VAL_NME: "val NME",
                 M.VAL_SHAPE: "val shape err (px)"}


def best(metric: str) -> str:
    """trials.parquet column of a metric at the trial's best epoch."""
    return f"best_{metric}"


# --- reading ------------------------------------------------------------------------------

def read_parquet(root: str, name: str) -> pd.DataFrame:
    """root/name as a DataFrame; root is a folder or an s3:// / gs:// URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = f"{root.rstrip('/')}/{name}"
    try:
        if "://" in root:
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(uri)
            return pq.read_table(path, filesystem=fs).to_pandas()
        return pq.read_table(uri).to_pandas()
    except pa.ArrowInvalid as exc:   # truncated: one line saying how to rebuild it (exit 2)
        from sweep.results import damaged

        raise damaged(uri, exc) from None


def classify(trials: pd.DataFrame) -> pd.Series:
    """'ok', 'failed' or 'diverged' per trial, from the status and the metric values."""
    rmse = trials[best(M.VAL_RMSE)].astype(float)
    diverged = (trials["status"] == "diverged") | np.isinf(rmse)
    failed = ~diverged & ((trials["status"] == "error") | rmse.isna()
                          | ~trials["status"].isin(OK_STATUSES))
    return pd.Series(np.select([diverged, failed], ["diverged", "failed"], "ok"),
                     index=trials.index, name="outcome")


# --- arms, α levels, cells ------------------------------------------------------------------

def arm_of(trials: pd.DataFrame) -> pd.Series:
    """'base' when the objective has no shape term, else the shape term's name."""
    on = (trials["shape"] != "none") & (trials["alpha"].astype(float) > 0)
    return trials["shape"].where(on, "base").astype(str)


def arm_label(loss: str, arm: str) -> str:
    """'MSE', 'MSE+CGD', 'WING+SEED_CGD' for tables and legends."""
    return loss.upper() if arm == "base" else f"{loss.upper()}+{arm.upper()}"


def alpha_levels(trials: pd.DataFrame) -> pd.Series:
    """α level per trial: α itself on a grid, its decade when α was sampled continuously.

    A grid repeats each α over seeds; a sampler (log-uniform α) almost never does, so there
    "the α whose mean over seeds is best" is taken over decades [10^k, 10^(k+1)) instead.
    Base-arm trials get level 0.
    """
    alpha = trials["alpha"].astype(float).where(trials["arm"] != "base", 0.0)
    shaped = alpha[alpha > 0]
    if shaped.nunique() > len(shaped) / 2:
        alpha = alpha.where(alpha <= 0, 10.0 ** np.floor(np.log10(alpha.where(alpha > 0, 1.0))))
    return alpha


# alpha_level of a shape arm pooled over all its α (no α level had two seeds to average).
POOLED = -1.0


def alpha_text(level: float, binned: bool) -> str:
    if level == POOLED:
        return "all sampled α, pooled"
    if not level > 0:
        return "0"
    return f"[{level:g}, {level * 10:g})" if binned else f"{level:g}"


def cell_columns(trials: pd.DataFrame) -> list[str]:
    """The TrialConfig columns that define cells (module docstring), backbone first."""
    skip = set(ARM_COLUMNS) | set(REPLICATE_KEYS) | set(RUNTIME_COLUMNS)
    cols = []
    for name, kind in config_fields().items():
        if name in skip or name not in trials or trials[name].nunique(dropna=False) < 2:
            continue
        if kind is float and trials[name].nunique() > MAX_CELL_LEVELS:
            continue
        cols.append(name)
    order = {"backbone": 0, "augment": 1}
    return sorted(cols, key=lambda c: order.get(c, 2))


def cell_label(values: Sequence[Any], cols: Sequence[str]) -> str:
    """'small_cnn / none' for a cell; 'all trials' when nothing varies."""
    if not cols:
        return "all trials"
    return " / ".join(f"{v}" if c in ("backbone", "augment") else f"{c}={v}"
                      for c, v in zip(cols, values))


def prepare(trials: pd.DataFrame) -> pd.DataFrame:
    """Add outcome, arm, alpha_level and cell columns to a copy of the trials table."""
    t = trials.copy()
    t["outcome"] = classify(t)
    t["arm"] = arm_of(t)
    t["alpha_level"] = alpha_levels(t)
    cols = cell_columns(t)
    t["cell"] = [cell_label(v, cols) for v in t[cols].itertuples(index=False)] if cols \
        else "all trials"
    t["objective_label"] = [arm_label(lo, a) for lo, a in zip(t["loss"], t["arm"])]
    return t


def is_binned(t: pd.DataFrame) -> bool:
    shaped = t.loc[t["arm"] != "base", "alpha"].astype(float)
    return bool(len(shaped)) and not np.allclose(t.loc[shaped.index, "alpha_level"], shaped)


# --- headline ---------------------------------------------------------------------------

def replicate_means(rows: pd.DataFrame, column: str) -> pd.Series:
    """One value per replicate key (mean over trials sharing it): the unit of a CI."""
    return rows.groupby(list(REPLICATE_KEYS))[column].mean()


def best_alpha(rows: pd.DataFrame) -> float:
    """The α level of a shape arm whose mean objective over replicates is lowest.

    Only levels with at least two replicates compete: a single seed's lucky value would
    otherwise win. When no level has two (a sampled α, few seeds), the arm is pooled over all
    its α (POOLED): MSE+CGD at the α the sampler chose, which still pairs seed by seed.
    """
    levels = {lvl: replicate_means(g, best(M.OBJECTIVE)) for lvl, g in rows.groupby("alpha_level")}
    if len(levels) == 1:
        return next(iter(levels))
    eligible = {lvl: m.mean() for lvl, m in levels.items() if m.size >= 2}
    if not eligible:
        return POOLED
    return min(sorted(eligible), key=lambda lvl: eligible[lvl])


def arm_at(rows: pd.DataFrame, level: float) -> pd.DataFrame:
    """The trials of a shape arm at one α level (all of them when pooled)."""
    return rows if level == POOLED else rows[rows["alpha_level"] == level]


def budget_matched(base: pd.DataFrame, shaped: pd.DataFrame,
                   epochs: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Both arms with the pairs ASHA cut short rescored at a shared epoch (module docstring).

    Returns copies of base and shaped, and how many replicates (pairs) were rescored.
    """
    if epochs is None or epochs.empty:
        return base, shaped, 0
    keys = list(REPLICATE_KEYS)
    both = pd.concat([base, shaped])
    paired = set(base.groupby(keys).groups) & set(shaped.groupby(keys).groups)
    cut = both[both["status"] == "asha_stopped"]
    caps = {k: e for k, e in cut.groupby(keys)["epochs"].min().items() if k in paired}
    if not caps:
        return base, shaped, 0
    by_trial = {tid: g for tid, g in epochs.groupby("trial_id")}
    return _at_caps(base, caps, by_trial), _at_caps(shaped, caps, by_trial), len(caps)


def _at_caps(rows: pd.DataFrame, caps: dict[tuple, int], by_trial: dict[str, pd.DataFrame]) -> pd.DataFrame:
    out = rows.copy()
    for idx, trial in rows.iterrows():
        cap = caps.get(tuple(trial[k] for k in REPLICATE_KEYS))
        if cap is None or trial["epochs"] <= cap or trial["trial_id"] not in by_trial:
            continue
        curve = by_trial[trial["trial_id"]]
        curve = curve[(curve[M.EPOCH] <= cap) & np.isfinite(curve[M.OBJECTIVE])]
        if curve.empty:
            continue
        at = curve.loc[curve[M.OBJECTIVE].idxmin()]
        for metric in M.VAL_METRICS:
            out.at[idx, best(metric)] = at[metric]
    return out


def compare(base: pd.DataFrame, shaped: pd.DataFrame, metric: str) -> dict[str, MeanCI]:
    """Mean ± CI of each arm and the paired difference shaped − base for one metric."""
    a, b = replicate_means(base, best(metric)), replicate_means(shaped, best(metric))
    return {"base": mean_ci(a), "shape": mean_ci(b), "diff": paired_difference(a, b)}


def _ci_columns(prefix: str, ci: MeanCI) -> dict[str, float]:
    return {f"{prefix}_mean": ci.mean, f"{prefix}_low": ci.low, f"{prefix}_high": ci.high,
            f"{prefix}_n": ci.n}


HEADLINE_COLUMNS = ["cell", "shape", "alpha_level", "base_label", "shape_label", "metric",
                    *(f"{arm}_{part}" for arm in ("base", "shape", "diff")
                      for part in ("mean", "low", "high", "n")), "budget_matched"]


def headline(t: pd.DataFrame, epochs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (cell, shape term, metric) over the ok trials: base vs shape at best α.

    Columns: cell, shape, alpha_level, base_label, shape_label, metric, then mean/low/high/n
    for base_*, shape_* and diff_* (diff = shape − base, paired on the replicate key), and
    budget_matched: pairs rescored at a shared epoch because ASHA cut one short (needs
    ``epochs``; without it every trial counts at its own best epoch).
    """
    ok = t[t["outcome"] == "ok"]
    rows = []
    for cell, c in ok.groupby("cell", sort=False):
        base = c[c["arm"] == "base"]
        for shape in sorted(set(c["arm"]) - {"base"}) or [""]:
            arm = c[c["arm"] == shape]
            alpha = best_alpha(arm) if len(arm) else math.nan
            matched_base, chosen, matched = budget_matched(base, arm_at(arm, alpha), epochs)
            for metric in M.VAL_METRICS:
                r = compare(matched_base, chosen, metric)
                rows.append({"cell": cell, "shape": shape, "alpha_level": alpha,
                             "base_label": _first_label(base), "shape_label": _first_label(chosen),
                             "metric": metric, **_ci_columns("base", r["base"]),
                             **_ci_columns("shape", r["shape"]), **_ci_columns("diff", r["diff"]),
                             "budget_matched": matched})
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)


def _first_label(rows: pd.DataFrame) -> str:
    return str(rows["objective_label"].iloc[0]) if len(rows) else "—"


def ci(row: pd.Series, prefix: str) -> MeanCI:
    """The MeanCI of one headline row's base_*, shape_* or diff_* columns."""
    return MeanCI(row[f"{prefix}_mean"], row[f"{prefix}_low"], row[f"{prefix}_high"],
                  int(row[f"{prefix}_n"]))


def headline_markdown(head: pd.DataFrame, binned: bool) -> str:
    lines = ["| cell | metric | base loss: mean [95% CI] (n) | with shape term at best α: "
             "mean [95% CI] (n) | paired difference shape − base [95% CI] (pairs) |",
             "|---|---|---|---|---|"]
    for _, r in head.iterrows():
        digits = 4 if r["metric"] == M.VAL_NME else 3
        shape = f"{r['shape_label']}, α={alpha_text(r['alpha_level'], binned)}" \
            if r["shape"] else "—"
        lines.append(f"| {r['cell']} | {METRIC_LABELS[r['metric']]} "
                     f"| {r['base_label']}: {ci(r, 'base').fmt(digits)} ({r['base_n']}) "
                     f"| {shape}: {ci(r, 'shape').fmt(digits)} ({r['shape_n']}) "
                     f"| {ci(r, 'diff').fmt(digits)} ({r['diff_n']}) |")
    return "\n".join(lines)


def data_phrase(trials: pd.DataFrame) -> str:
    """How the report names the data; the word "synthetic" appears iff the data was."""
    sources = sorted(set(trials["data_source"].astype(str)))
    if trials["data_synthetic"].astype(bool).any():
        return f"synthetic faces ({', '.join(f'`{s}`' for s in sources)}; not real data)"
    return "the real faces of " + ", ".join(f"`{s}`" for s in sources)


def _verdicts(rows: pd.DataFrame) -> tuple[int, int, int]:
    """(lower, higher, undecided) counts of paired differences whose CI excludes zero."""
    lower = int((rows["diff_high"] < 0).sum())
    higher = int((rows["diff_low"] > 0).sum())
    return lower, higher, len(rows) - lower - higher


def answer_sentence(head: pd.DataFrame, phrase: str) -> str:
    """One sentence: the answer and the evidence behind it, from the headline rows."""
    rmse = head[(head["metric"] == M.VAL_RMSE) & (head["diff_n"] > 0)]
    shape = head[(head["metric"] == M.VAL_SHAPE) & (head["diff_n"] > 0)]
    if rmse.empty:
        return (f"On {phrase}, no cell has both arms on the same seeds, so these results "
                "cannot answer whether the shape term beats the base loss.")
    lo, hi, un = _verdicts(rmse)
    slo, shi, sun = _verdicts(shape)
    lead = ("Yes" if lo == len(rmse) else "Yes, in part" if lo and not hi
            else "No" if hi and not lo
            else "Not shown" if not lo and not hi else "It depends on the cell")
    labels = sorted(set(rmse["shape_label"]))
    who = labels[0] if len(labels) == 1 else "the shape-aware loss"
    where = "over its sampled α" if (rmse["alpha_level"] == POOLED).all() else "at its best α"
    top = rmse.loc[rmse["diff_mean"].abs().idxmax()]
    top_ci = MeanCI(top["diff_mean"], top["diff_low"], top["diff_high"], int(top["diff_n"]))
    return (f"**{lead}:** on {phrase}, {who} {where} had a lower validation RMSE than "
            f"{top['base_label']} in {lo} of {len(rmse)} cells, a higher one in {hi}, and no "
            f"difference its paired 95% CI over seeds separates from zero in {un} (largest "
            f"paired change: {top['cell']}, {top_ci.fmt(3)} px {_over(top_ci.n)}), while "
            f"its shape error was lower in {slo}, higher in {shi} and indistinguishable in {sun}.")


def budget_sentence(head: pd.DataFrame) -> str:
    """The equal-budget note under the headline table ("" when ASHA cut no compared pair)."""
    rmse = head[head["metric"] == M.VAL_RMSE] if len(head) else head
    matched = int(rmse["budget_matched"].sum()) if len(rmse) else 0
    if not matched:
        return ""
    pairs = int(rmse["diff_n"].sum())
    return (f" ASHA stopped one trial of {matched} of the {pairs} compared pairs early; both "
            "trials of such a pair are scored at their best epoch within the epochs the "
            "stopped one ran, so that the two arms had the same budget.")


def _over(n: int) -> str:
    return f"over {n} seeds" if n > 1 else "from a single seed, so no CI"


# --- figures ------------------------------------------------------------------------------

def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas, without pyplot's global state."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save(fig, path: Path) -> str:
    fig.savefig(path)
    return path.name


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def figure_paired(head: pd.DataFrame, out: Path, binned: bool) -> str | None:
    """Forest plot of the paired differences (shape − base) with their CIs, per metric."""
    head = head[head["diff_n"] > 0]
    if head.empty:
        return None
    comps = head[head["metric"] == M.VAL_RMSE][["cell", "shape", "alpha_level", "shape_label"]]
    fig = new_figure(12, 1.2 + 0.45 * len(comps))
    axes = fig.subplots(1, len(M.VAL_METRICS), sharey=True)
    ylabels = [f"{r.cell}\n{r.shape_label} α={alpha_text(r.alpha_level, binned)}"
               for r in comps.itertuples()]
    for ax, metric in zip(axes, M.VAL_METRICS):
        rows = head[head["metric"] == metric].reset_index(drop=True)
        y = np.arange(len(rows))
        err = np.vstack([rows["diff_mean"] - rows["diff_low"], rows["diff_high"] - rows["diff_mean"]])
        ax.errorbar(rows["diff_mean"], y, xerr=np.nan_to_num(err), fmt="o", capsize=4)
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(f"Δ {METRIC_LABELS[metric]} (shape − base)")
        ax.set_title(METRIC_LABELS[metric])
    axes[0].set_yticks(np.arange(len(comps)), ylabels)
    axes[0].invert_yaxis()
    fig.suptitle("Paired difference at the best α, mean and 95% CI over seeds (< 0: shape term better)")
    return save(fig, out / "fig1_paired_differences.png")


def _alpha_panel(ax, rows: pd.DataFrame, metric: str, color: Any, cell: str) -> None:
    """Shape-arm trials as dots at their α, α-level means as a line, the base arm's mean as a
    dashed line (its CI over seeds is in the table: a band here would hide the α effect)."""
    col = best(metric)
    shaped = rows[rows["arm"] != "base"]
    ax.scatter(shaped["alpha"], shaped[col], color=color, alpha=0.35, s=14)
    levels = shaped.groupby("alpha_level")
    xs = [np.exp(np.log(g["alpha"].astype(float)).mean()) for _, g in levels]
    ys = [replicate_means(g, col).mean() for _, g in levels]
    ax.plot(xs, ys, "-o", color=color, label=f"{cell}: {_first_label(shaped)}, mean per α")
    base = rows[rows["arm"] == "base"]
    if len(base):
        ax.axhline(replicate_means(base, col).mean(), color=color, linestyle="--",
                   linewidth=1.2, label=f"{cell}: {_first_label(base)} (α = 0)")


def figure_alpha(t: pd.DataFrame, out: Path) -> str | None:
    """RMSE and shape error against α (log axis), one row per backbone."""
    ok = t[t["outcome"] == "ok"]
    shaped = ok[ok["arm"] != "base"]
    if shaped.empty:
        return None
    groups = sorted(shaped.groupby(["cell", "arm"]).groups)  # one line per (cell, shape term)
    colors = _colors([f"{cell} {arm}" for cell, arm in groups])
    backbones = sorted(ok["backbone"].unique())
    # Pad the log axis: a grid with a single α would otherwise give it zero width.
    xlim = (shaped["alpha"].min() / 3, shaped["alpha"].max() * 3)
    fig = new_figure(12, 3.6 * len(backbones))
    axes = fig.subplots(len(backbones), 2, squeeze=False)
    for row, bb in zip(axes, backbones):
        for cell, arm in groups:
            rows = ok[(ok["cell"] == cell) & ok["arm"].isin(["base", arm])]
            if rows["backbone"].iloc[0] == bb:
                for ax, metric in zip(row, (M.VAL_RMSE, M.VAL_SHAPE)):
                    _alpha_panel(ax, rows, metric, colors[f"{cell} {arm}"], cell)
        for ax, metric in zip(row, (M.VAL_RMSE, M.VAL_SHAPE)):
            ax.set(xscale="log", xlim=xlim, xlabel="α (weight of the shape term, log scale)",
                   ylabel=METRIC_LABELS[metric], title=f"{bb}: {METRIC_LABELS[metric]} vs α")
        row[0].legend(fontsize=7)
    fig.suptitle("α response: dots = trials, line = mean over seeds per α, dashed = base loss")
    return save(fig, out / "fig2_alpha_response.png")


def figure_tradeoff(t: pd.DataFrame, out: Path) -> str | None:
    """Every ok trial in (val RMSE, val shape error), coloured by loss, with the Pareto front."""
    ok = t[t["outcome"] == "ok"]
    if ok.empty:
        return None
    x, y = ok[best(M.VAL_RMSE)].to_numpy(float), ok[best(M.VAL_SHAPE)].to_numpy(float)
    colors = _colors(sorted(ok["objective_label"].unique()))
    fig = new_figure(7.5, 5.5)
    ax = fig.subplots()
    for lab, c in colors.items():
        sel = (ok["objective_label"] == lab).to_numpy()
        ax.scatter(x[sel], y[sel], color=c, s=22, alpha=0.8, label=lab)
    front = pareto_front(x, y)
    order = np.argsort(x[front])
    ax.step(x[front][order], y[front][order], where="post", color="black", linewidth=1.2,
            label="Pareto front")
    ax.scatter(x[front], y[front], facecolors="none", edgecolors="black", s=70)
    ax.set_xlabel("val RMSE (px), lower is better")
    ax.set_ylabel("val shape error (px), lower is better")
    ax.set_title("Accuracy vs shape: every finished trial at its best epoch")
    ax.legend()
    return save(fig, out / "fig3_tradeoff.png")


def best_trials(t: pd.DataFrame) -> pd.DataFrame:
    """The best ok trial (lowest objective) of each (cell, arm)."""
    ok = t[t["outcome"] == "ok"]
    idx = ok.groupby(["cell", "arm"])[best(M.OBJECTIVE)].idxmin()
    return ok.loc[idx.to_numpy()]


def figure_curves(t: pd.DataFrame, epochs: pd.DataFrame, out: Path) -> str | None:
    """Train/val loss and val RMSE per epoch of the best trial of each arm, one row per cell."""
    from matplotlib.ticker import MaxNLocator

    bests = best_trials(t)
    cells = list(dict.fromkeys(bests.sort_values(best(M.OBJECTIVE))["cell"]))[:MAX_CURVE_CELLS]
    if not cells or epochs.empty:
        return None
    colors = _colors(sorted(bests["objective_label"].unique()))
    fig = new_figure(12, 3.2 * len(cells))
    axes = fig.subplots(len(cells), 2, squeeze=False)
    for (ax_loss, ax_rmse), cell in zip(axes, cells):
        for _, trial in bests[bests["cell"] == cell].iterrows():
            e = epochs[epochs["trial_id"] == trial["trial_id"]].sort_values(M.EPOCH)
            e = e[np.isfinite(e[M.VAL_RMSE].astype(float))]
            c, lab = colors[trial["objective_label"]], _curve_label(trial)
            ax_loss.plot(e[M.EPOCH], e[M.TRAIN_LOSS], color=c, label=f"{lab} train")
            ax_loss.plot(e[M.EPOCH], e[M.VAL_LOSS], color=c, linestyle="--", label=f"{lab} val")
            ax_rmse.plot(e[M.EPOCH], e[M.VAL_RMSE], color=c, label=lab)
        ax_loss.set_yscale("log")
        ax_loss.set(title=f"{cell}: loss (objective, incl. α·shape term)", xlabel="epoch",
                    ylabel="objective (MSE in px² + α·shape, log scale)")
        ax_rmse.set(title=f"{cell}: validation RMSE", xlabel="epoch", ylabel="val RMSE (px)")
        for ax in (ax_loss, ax_rmse):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_loss.legend(fontsize=7)
        ax_rmse.legend(fontsize=7)
    fig.suptitle("Learning curves of the best trial of each loss, per cell")
    return save(fig, out / "fig4_learning_curves.png")


def _curve_label(trial: pd.Series) -> str:
    alpha = f" α={trial['alpha']:g}" if trial["arm"] != "base" else ""
    return f"{trial['objective_label']}{alpha} (seed {trial['seed']})"


def figure_budget(t: pd.DataFrame, out: Path) -> str:
    """Epochs per trial by status, and the epochs used against the full budget."""
    from matplotlib.ticker import MaxNLocator

    statuses = sorted(t["status"].astype(str).unique())
    colors = _colors(statuses)
    fig = new_figure(12, 4.2)
    ax_hist, ax_bar = fig.subplots(1, 2)
    top = int(max(t["max_epochs"].max(), t["epochs"].max(), 1))
    bins = np.arange(-0.5, top + 1.5, max(1, top // 40))  # from 0: trials that never reported
    data = [t.loc[t["status"] == s, "epochs"].to_numpy(float) for s in statuses]
    ax_hist.hist(data, bins=bins, stacked=True, color=[colors[s] for s in statuses],
                 label=statuses)
    ax_hist.set(xlabel="epochs run by the trial", ylabel="trials",
                title="Epochs per trial by how it ended (ASHA stops sit at its rungs)")
    ax_hist.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_hist.legend(fontsize=8)
    left = 0.0
    for s in statuses:
        used = float(t.loc[t["status"] == s, "epochs"].sum())
        ax_bar.barh([0], [used], left=left, color=colors[s], label=f"{s}: {used:.0f}")
        left += used
    full = float(t["max_epochs"].sum())
    ax_bar.barh([0], [max(full - left, 0.0)], left=left, color="lightgrey",
                label=f"not run: {max(full - left, 0):.0f}")
    ax_bar.set(yticks=[], xlabel="epochs (trial × epoch)",
               title=f"Compute used: {left:.0f} of {full:.0f} epochs ({left / full:.0%})")
    ax_bar.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    return save(fig, out / "fig6_budget.png")


# --- importance and parallel coordinates --------------------------------------------------

def importance_params(t: pd.DataFrame) -> list[str]:
    """Config columns that vary among ok trials, runtime knobs excluded (seed kept as a
    reference: a parameter that should not matter shows the noise floor of the ranking)."""
    ok = t[t["outcome"] == "ok"]
    return [n for n in config_fields() if n in ok and n not in RUNTIME_COLUMNS
            and ok[n].nunique() > 1]


def _axis_values(col: pd.Series) -> tuple[np.ndarray, list[float], list[str]]:
    """Positions in [0, 1] for a parallel-coordinates axis, plus tick positions and labels."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        v = col.to_numpy(float)
        positive = v[v > 0]
        if len(positive) and positive.max() / positive.min() >= 10:  # log axis for α, lr
            floor = np.log10(positive.min()) - (1.0 if (v <= 0).any() else 0.0)
            v = np.log10(np.where(v > 0, v, 10.0 ** floor))
            lo, hi = float(v.min()), float(v.max())
            levels = np.unique(v) if len(np.unique(v)) <= MAX_CELL_LEVELS else np.array([lo, hi])
            labels = [_num_tick(col, 10 ** x) if x == lo else f"{10 ** x:.3g}" for x in levels]
            return _unit(v, lo, hi), list(_unit(levels, lo, hi)), labels
        lo, hi = float(v.min()), float(v.max())
        levels = np.unique(v) if len(np.unique(v)) <= MAX_CELL_LEVELS else np.array([lo, hi])
        return _unit(v, lo, hi), list(_unit(levels, lo, hi)), [f"{x:.3g}" for x in levels]
    cats = sorted(col.astype(str).unique())
    pos = {c: i / max(len(cats) - 1, 1) for i, c in enumerate(cats)}
    return col.astype(str).map(pos).to_numpy(float), list(pos.values()), cats


def _unit(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5)


def _num_tick(col: pd.Series, low: float) -> str:
    return "0 (off)" if (col <= 0).any() else f"{low:.3g}"


def figure_parallel(t: pd.DataFrame, params: Sequence[str], out: Path) -> str | None:
    """Parallel coordinates over the varying hyperparameters, lines coloured by val RMSE."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    ok = t[t["outcome"] == "ok"]
    if ok.empty or not params:
        return None
    cols = list(params) + [best(M.OBJECTIVE)]
    axes_data = [_axis_values(ok[c]) for c in cols]
    score = ok[best(M.OBJECTIVE)].to_numpy(float)
    norm, cmap = Normalize(score.min(), score.max()), colormaps["viridis_r"]
    fig = new_figure(max(8.0, 1.6 * len(cols)), 5.0)
    ax = fig.subplots()
    ys = np.vstack([a[0] for a in axes_data])
    for j in np.argsort(-score):  # best trials drawn last, on top
        ax.plot(range(len(cols)), ys[:, j], color=cmap(norm(score[j])), alpha=0.7, linewidth=1.2)
    for i, (_, ticks, labels) in enumerate(axes_data):
        ax.axvline(i, color="black", linewidth=0.8)
        for y, lab in zip(ticks, labels):
            ax.text(i + 0.03, y, lab, fontsize=7, va="center",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
    names = [METRIC_LABELS[M.OBJECTIVE] if c == best(M.OBJECTIVE) else c for c in cols]
    ax.set_xticks(range(len(cols)), names, rotation=20)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(cols) - 0.4)
    ax.set_title("Hyperparameters of every finished trial (α, lr on log axes); colour = val RMSE")
    fig.colorbar(_mappable(norm, cmap), ax=ax, label="val RMSE (px)")
    return save(fig, out / "fig7_parallel_coordinates.png")


def _mappable(norm, cmap):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


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
        params={p: _py(r[p]) for p in params if not (p == "alpha" and r["arm"] == "base")},
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
    return optuna.distributions.CategoricalDistribution(sorted({_py(x) for x in col}, key=str))


def _py(x: Any) -> Any:
    """numpy scalar -> Python scalar (Optuna and TrialConfig want plain types)."""
    return x.item() if hasattr(x, "item") else x


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


# --- prediction figure ------------------------------------------------------------------

def resolve_checkpoint(trial: pd.Series, root: str, scratch: str) -> str | None:
    """A local path to the trial's best.pt, or None when it is not reachable.

    sweep.results records it relative to the results folder (checkpoints/<trial_id>/best.pt);
    a bucket's copy is fetched into scratch, a local one is used where it lies.
    """
    recorded = str(trial.get("best_checkpoint") or "")
    if not recorded:
        return None
    if "://" in root or "://" in recorded:
        uri = recorded if "://" in recorded else f"{root.rstrip('/')}/{recorded}"
        return fetch(uri, os.path.join(scratch, str(trial["trial_id"]), "best.pt"))
    for path in (os.path.join(root, recorded), recorded):
        if os.path.isfile(path):
            return path
    return None


def fetch(uri: str, local: str) -> str | None:
    """Copy one file from an s3:// / gs:// (or file://) URI to local; None when it is absent."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    os.makedirs(os.path.dirname(local), exist_ok=True)
    pafs.copy_files(path, local, source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return local


def trial_config(trial: pd.Series) -> TrialConfig:
    return TrialConfig(**{k: _py(trial[k]) for k in config_fields() if k in trial})


def figure_predictions(trial: pd.Series, checkpoint: str, out: Path) -> str:
    """Predicted (and true) keypoints on the first validation faces of the trial's own split."""
    from fkd_core.data import load_for_config
    from fkd_core.predict import load_model, plot_predictions, predict
    from fkd_core.train import training_split

    cfg = trial_config(trial)
    _, val = training_split(load_for_config(cfg), cfg)  # the rows this trial validated on
    faces = val.subset(np.arange(min(N_PREDICTION_FACES, len(val))))
    model = load_model(checkpoint, device="cpu")
    pred = predict(model, faces.images)
    errors = face_rmse(pred.numpy(), faces.keypoints.numpy())
    name = prediction_figure_name(trial)
    plot_predictions(faces.images, pred, faces.keypoints, path=out / name,
                     labels=[f"val face {i}: RMSE {e:.2f} px" for i, e in enumerate(errors)],
                     title=f"{_curve_label(trial)}, {trial['cell']}, val RMSE "
                           f"{trial[best(M.VAL_RMSE)]:.2f} px")
    tag_png(out / name, trial["trial_id"])
    return name


def prediction_figure_name(trial: pd.Series) -> str:
    return f"fig5_predictions_{trial['arm']}.png"


# A PNG text chunk naming the trial a prediction figure was drawn from: a later analysis without
# the checkpoints (committed results keep Parquet and figures, not weights) can still show it.
TRIAL_TAG = "fkd_trial_id"


def tag_png(path: Path, trial_id: str) -> None:
    from PIL import Image, PngImagePlugin

    with Image.open(path) as image:
        image.load()
    info = PngImagePlugin.PngInfo()
    for key, value in image.text.items():
        info.add_text(key, value)
    info.add_text(TRIAL_TAG, str(trial_id))
    image.save(path, pnginfo=info)


def tagged_trial(path: Path) -> str | None:
    """The trial a prediction figure was drawn from (None: no such file or no tag)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get(TRIAL_TAG)
    except (OSError, UnidentifiedImageError):
        return None


def face_rmse(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """RMSE per face over its present coordinates: pred, target [N, K, 2] px, NaN = missing."""
    sq = (pred - target) ** 2
    return np.sqrt(np.nanmean(sq.reshape(len(sq), -1), axis=1))


def prediction_section(t: pd.DataFrame, root: str, out: Path) -> list[str]:
    """Markdown lines of section 5; each trial missing a checkpoint or data gets a note."""
    ok = t[t["outcome"] == "ok"]
    with tempfile.TemporaryDirectory(prefix="fkd-analyze-") as scratch:
        lines = [_prediction_line(ok[ok["arm"] == arm], root, out, scratch)
                 for arm in ["base"] + sorted(set(ok["arm"]) - {"base"})
                 if (ok["arm"] == arm).any()]
    return lines or ["- no finished trial to draw."]


def _prediction_line(rows: pd.DataFrame, root: str, out: Path, scratch: str) -> str:
    """The figure of the best trial of one arm, or a line saying why it is skipped."""
    trial = rows.loc[rows[best(M.OBJECTIVE)].idxmin()]
    what = f"best {trial['objective_label']} trial `{trial['trial_id']}`"
    ckpt = resolve_checkpoint(trial, root, scratch)
    earlier = out / prediction_figure_name(trial)
    if ckpt is None and tagged_trial(earlier) == trial["trial_id"]:
        return (f"- {what} (drawn by an earlier analysis from its checkpoint, which is not here "
                f"now):\n\n  ![predictions]({earlier.name})")
    if ckpt is None:
        return f"- {what}: figure skipped, its best checkpoint is not available here."
    try:
        return f"- {what}:\n\n  ![predictions]({figure_predictions(trial, ckpt, out)})"
    # A missing data file or a checkpoint from another version must not cost the rest of the
    # report: the reason goes into the report instead.
    except Exception as exc:  # noqa: BLE001
        return f"- {what}: figure skipped ({type(exc).__name__}: {exc})."


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


def build_report(trials: pd.DataFrame, epochs: pd.DataFrame, root: str,
                 out: Path) -> tuple[str, pd.DataFrame]:
    """Write every figure into out; return the text of report.md and the headline table."""
    t = prepare(trials)
    head, binned, cols = headline(t, epochs), is_binned(t), cell_columns(t)
    phrase = data_phrase(t)
    r = Report()
    r.add(f"# Sweep analysis: {Path(root.rstrip('/')).name}", "",
          f"Data: {phrase}. Source: `{root}`; {len(t)} trials "
          f"({(t['outcome'] == 'ok').sum()} finished). Made by "
          f"`python -m sweep.analyze {root}`.", "",
          f"Cells are formed by {', '.join(f'`{c}`' for c in cols) or 'nothing (one cell)'}; "
          "arms by the shape term (none = base loss); replicates by (seed, split_seed, "
          "synth_seed). Values are each trial's metrics at its best epoch; CIs are Student-t "
          "95% intervals over seeds; differences are paired on the same seed and split."
          + (" α was sampled continuously, so α levels are decades." if binned else ""), "")
    r.add("## 1. Does the shape term beat the base loss?", "", answer_sentence(head, phrase), "",
          headline_markdown(head, binned) if len(head) else "_no finished trials_", "",
          "The best α is chosen by mean val RMSE on the same validation data it is scored on, "
          "which slightly favours the shape arm when several α were tried."
          + budget_sentence(head)
          + (" Where no α level had two seeds, the shape arm is pooled over all its sampled α "
             "(one value per seed)." if (head.get("alpha_level") == POOLED).any() else ""), "")
    r.figure(figure_paired(head, out, binned), "paired differences",
             "Paired-difference figure skipped: no cell has both arms on a common seed.")
    r.add("## 2. α response", "")
    r.figure(figure_alpha(t, out), "alpha response", "α figure skipped: no trial with a shape term.")
    r.add("## 3. Accuracy vs shape trade-off", "")
    r.figure(figure_tradeoff(t, out), "trade-off", "Trade-off figure skipped: no finished trial.")
    r.add("## 4. Learning curves", "")
    r.figure(figure_curves(t, epochs, out), "learning curves",
             "Learning curves skipped: no finished trial with epochs.")
    r.add("## 5. Predictions on validation faces", "", *prediction_section(t, root, out), "")
    r.add("## 6. Budget", "", budget_markdown(t), "")
    r.figure(figure_budget(t, out), "budget", "")
    r.add("## 7. Which hyperparameters matter", "")
    params = importance_params(t)
    r.figure(figure_parallel(t, params, out), "parallel coordinates",
             "Parallel coordinates skipped: no finished trial or nothing varies.")
    if params and (t["outcome"] == "ok").sum() > 2:
        r.add(importance_markdown(t, params), "",
              "ε² = share of the variance of val RMSE between the parameter's levels (numeric "
              "parameters in 4 equal-count bins), corrected for the number of levels; seed is a "
              "reference for what noise alone explains.", "")
    r.add("## Failed and diverged trials", "", excluded_markdown(t), "")
    return r.text(), head


def analyze(root: str, out: str | None = None) -> Path:
    """Read root's Parquet results, write report.md and figures into out; return report path."""
    trials = read_parquet(root, "trials.parquet")
    epochs = read_parquet(root, "epochs.parquet")
    out_dir = Path(out) if out else default_out(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.md"
    text, head = build_report(trials, epochs, root, out_dir)
    report.write_text(text)
    head.to_csv(out_dir / "headline.csv", index=False)  # the table's numbers, machine-readable
    return report


def default_out(root: str) -> Path:
    """Next to the results when they are local; ./analysis/<name> for a bucket."""
    if "://" in root:
        return Path("analysis") / Path(root.rstrip("/")).name
    return Path(root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sweep.analyze",
        description="Write report.md and figures from a sweep's trials.parquet / epochs.parquet.")
    parser.add_argument("results", help="results folder: local path, s3://... or gs://...")
    parser.add_argument("--out", help="where report.md and the figures go "
                        "(default: the results folder; ./analysis/<name> for a bucket)")
    args = parser.parse_args(argv)
    try:
        report = analyze(args.results, args.out)
    except FileNotFoundError as exc:
        print(f"{args.results}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        if type(exc).__name__ != "DamagedResults":   # sweep.results, imported only on that path
            raise
        print(f"sweep.analyze: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
