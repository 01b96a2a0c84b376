"""Figures of a sweep's report, from prepared trials (sweep.tables.prepare); matplotlib, no pyplot.

Every search-phase figure draws only trials at one budget: the ones ASHA let run to the full
budget (sweep.tables.full_budget). Trials ASHA stopped early carry early-epoch numbers and would
look worse for that reason alone. The confirm figure draws the paired test differences; with one
replicate it says so on the figure.

    from sweep.figures import figure_verdicts
    figure_verdicts(diffs, table, Path("results/x"))
"""
from __future__ import annotations

import math
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fkd_core import metrics as M
from fkd_core.config import TrialConfig, config_fields
from sweep.tables import (MAX_CELL_LEVELS, MAX_CURVE_CELLS, METRIC_LABELS, N_PREDICTION_FACES,
                          RUNTIME_COLUMNS, best, first_label, plain, replicate_means)
from sweep.stats import pareto_front

# Characters per line of fig1's title at 8 pt: the title spans the axes (9 in less the cell labels).
TITLE_WIDTH = 105


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


def figure_verdicts(diffs: dict[tuple[str, str], pd.Series], table: pd.DataFrame, out: Path,
                    method: str) -> str | None:
    """Confirm phase: each replicate's paired test difference (dots) and the cell's decision
    interval (the one the verdict is read off, sweep.verdicts).

    diffs: (cell, shape) -> d per replicate (sweep.verdicts.paired_differences); table: the
    verdict table, same keys in the same order.
    """
    if table.empty:
        return None
    method = textwrap.fill(method, TITLE_WIDTH)   # the design's name runs to ~200 characters
    fig = new_figure(9, 1.75 + 0.55 * len(table) + 0.15 * method.count("\n"))
    ax = fig.subplots()
    for y, row in enumerate(table.itertuples()):
        d = diffs[(row.cell, row.shape)].to_numpy(float)
        ax.scatter(d, np.full(len(d), y), color="grey", s=14, alpha=0.6, zorder=2)
        if math.isfinite(row.ci_low) and math.isfinite(row.ci_high):
            ax.plot([row.ci_low, row.ci_high], [y, y], color="black", linewidth=2, zorder=3)
        ax.scatter([row.d_mean], [y], color="black", s=36, zorder=4)
        word = getattr(row, "verdict_text", row.verdict)
        ax.text(1.01, y, f"{word} (n={row.n})", transform=ax.get_yaxis_transform(),
                va="center", fontsize=8)
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    margin = float(table["margin"].iloc[0]) if "margin" in table else 0.0
    if margin > 0:
        ax.axvspan(-margin, margin, color="tab:green", alpha=0.12, label=f"±margin {margin:g} px")
        ax.legend(fontsize=7, loc="best")
    ax.set_yticks(range(len(table)), [f"{r.cell}\n{r.shape}, α={r.alpha:.3g}" for r in table.itertuples()])
    ax.invert_yaxis()
    ax.set_xlabel("d = test RMSE (shape arm) − test RMSE (base arm), px (< 0: shape term better)")
    n = int(table["n"].max())
    level = f"{table['level'].iloc[0]:.4g}" if "level" in table else "95%"
    title = textwrap.fill("Confirm phase, test split: paired differences per replicate, mean and the "
                          f"decision interval (level {level} each, multiplicity-adjusted)", TITLE_WIDTH)
    if n < 2:
        title += "\nONE REPLICATE: no interval, no verdict can be drawn"
    ax.set_title(f"{title}\n{method}", fontsize=8)
    return save(fig, out / "fig1_confirm_verdicts.png")


def _alpha_panel(ax, rows: pd.DataFrame, metric: str, color: Any, cell: str) -> None:
    """Shape-arm trials as dots at their α, α-level means as a line, the base arm's mean as a
    dashed line (its CI over seeds is in the table: a band here would hide the α effect)."""
    col = best(metric)
    shaped = rows[rows["arm"] != "base"]
    ax.scatter(shaped["alpha"], shaped[col], color=color, alpha=0.35, s=14)
    levels = shaped.groupby("alpha_level")
    xs = [np.exp(np.log(g["alpha"].astype(float)).mean()) for _, g in levels]
    ys = [replicate_means(g, col).mean() for _, g in levels]
    ax.plot(xs, ys, "-o", color=color, label=f"{cell}: {first_label(shaped)}, mean per α")
    base = rows[rows["arm"] == "base"]
    if len(base):
        ax.axhline(replicate_means(base, col).mean(), color=color, linestyle="--",
                   linewidth=1.2, label=f"{cell}: {first_label(base)} (α = 0)")


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
    title = "Search, full-budget trials: α response (dots = trials, line = mean per α, dashed = base loss)"
    if ok["seed"].nunique() < 2:
        title += "\nONE SEED: every point is a single run, no replicate"
    fig.suptitle(title)
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
    ax.set_title("Search, full-budget trials: accuracy vs shape at each trial's best epoch")
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
    fig.suptitle("Search: learning curves of the best full-budget trial of each arm, per cell")
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
            return _unit(v, lo, hi), *_spread(list(_unit(levels, lo, hi)), labels)
        lo, hi = float(v.min()), float(v.max())
        levels = np.unique(v) if len(np.unique(v)) <= MAX_CELL_LEVELS else np.array([lo, hi])
        return _unit(v, lo, hi), list(_unit(levels, lo, hi)), [f"{x:.3g}" for x in levels]
    cats = sorted(col.astype(str).unique())
    pos = {c: i / max(len(cats) - 1, 1) for i, c in enumerate(cats)}
    return col.astype(str).map(pos).to_numpy(float), list(pos.values()), cats


def _spread(ticks: list[float], labels: list[str], gap: float = 0.06) -> tuple[list, list]:
    """Drop tick labels closer than `gap` (axis fraction) to the previous kept one: two sampled
    α of 0.0443 and 0.0431 would otherwise print on top of each other."""
    kept: list[tuple[float, str]] = []
    for y, lab in sorted(zip(ticks, labels)):
        if not kept or y - kept[-1][0] >= gap:
            kept.append((y, lab))
    return [y for y, _ in kept], [lab for _, lab in kept]


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
    logs = [c for c in params if _is_log_axis(ok[c])]
    on_log = f" ({', '.join(logs)} on log axes)" if logs else ""
    ax.set_title(f"Search, full-budget trials: hyperparameters{on_log}; colour = val RMSE")
    fig.colorbar(_mappable(norm, cmap), ax=ax, label="val RMSE (px)")
    return save(fig, out / "fig7_parallel_coordinates.png")


def _is_log_axis(col: pd.Series) -> bool:
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return False
    positive = col.to_numpy(float)
    positive = positive[positive > 0]
    return bool(len(positive)) and positive.max() / positive.min() >= 10


def _mappable(norm, cmap):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


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
    return TrialConfig(**{k: plain(trial[k]) for k in config_fields() if k in trial})


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

