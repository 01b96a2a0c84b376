"""sweep.analyze on Parquet results the tests write themselves (and, marked slow, on a real
smoke sweep): the verdict numbers equal what pandas computes from the same files, and the
search is shown at one budget."""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fkd_core import metrics as M
from fkd_core.config import TrialConfig
from sweep import analyze, figures, tables

# t(1 − 0.05/8, 3): four confirm replicates per arm, four comparisons (Bonferroni: 1 − α/4 each)
T_BONFERRONI4_DF3 = 5.391949
SEEDS = (0, 1, 2)
ALPHAS = (0.01, 0.1)
REAL_SOURCE = "../shared/data/fkd-yt15/training.csv.gz"


def _metrics(rng: np.random.Generator, backbone: str, augment: str, alpha: float,
             seed: int) -> tuple[float, float, float]:
    """Plausible (rmse, nme, shape) with a shared seed effect so that pairing matters."""
    rmse = (3.0 if backbone == "small_cnn" else 2.5) - (0.2 if augment == "study" else 0.0)
    rmse += 0.3 * seed - (0.15 if alpha == 0.01 else 0.05 if alpha > 0 else 0.0)
    rmse += 0.02 * rng.standard_normal()
    shape = rmse * 0.8 - (0.3 if alpha > 0 else 0.0) + 0.02 * rng.standard_normal()
    return rmse, rmse / 40.0, shape


def _trial_row(i: int, cfg: TrialConfig, status: str, metrics: tuple[float, float, float],
               epochs: int, synthetic: bool) -> dict:
    rmse, nme, shape = metrics
    return {"trial_id": f"t{i:03d}", "experiment": "fixture", "status": status,
            "error": "RuntimeError: CUDA out of memory" if status == "error" else "",
            **cfg.to_dict(), "loss_label": cfg.loss_label,
            "best_val_rmse_px": rmse, "best_val_nme": nme, "best_val_shape_err_px": shape,
            "best_epoch": epochs, "final_val_rmse_px": rmse, "final_val_nme": nme,
            "final_val_shape_err_px": shape, "epochs": epochs, "wall_seconds": 3.0 * epochs,
            "node": "127.0.0.1", "data_source": cfg.data if not synthetic else
            "synthetic(n=2000,seed=0,pose=1.0)", "data_hash": "ab" * 32,
            "data_synthetic": synthetic, "best_checkpoint": "", "versions": "{}",
            "git_commit": "0" * 40}


def _epoch_rows(trial_id: str, n: int, final: tuple[float, float, float],
                diverged: bool = False) -> list[dict]:
    rows = []
    for e in range(1, n + 1):
        scale = 1.0 + 2.0 / e  # curves that fall towards the final value
        rows.append({"trial_id": trial_id, M.EPOCH: e, M.TRAIN_LOSS: (0.9 * final[0] * scale) ** 2,
                     M.VAL_LOSS: (final[0] * scale) ** 2, M.VAL_RMSE: final[0] * scale,
                     M.VAL_NME: final[1] * scale, M.VAL_SHAPE: final[2] * scale, M.LR: 1e-3,
                     M.EPOCH_SECONDS: 3.0, M.IMAGES_PER_S: 400.0, M.DIVERGED: False})
    if diverged:
        rows[-1].update({M.VAL_RMSE: math.inf, M.TRAIN_LOSS: math.nan, M.DIVERGED: True})
    return rows


def write_results(folder: Path, synthetic: bool = True) -> Path:
    """A 2 backbones x 2 augmentations x (MSE, CGD@0.01, CGD@0.1) x 3 seeds sweep, plus an
    error trial with finite metrics (crashed late), one with NaN, and a diverged (inf) one."""
    rng = np.random.default_rng(0)
    data = "synthetic" if synthetic else REAL_SOURCE
    trials, epochs, i = [], [], 0
    for backbone in ("small_cnn", "resnet18"):
        for augment in ("none", "study"):
            for alpha in (0.0, *ALPHAS):
                for seed in SEEDS:
                    cfg = TrialConfig(data=data, backbone=backbone, augment=augment, seed=seed,
                                      shape="cgd" if alpha else "none", alpha=alpha,
                                      max_epochs=12)
                    m = _metrics(rng, backbone, augment, alpha, seed)
                    n, status = (4, "asha_stopped") if (i % 5 == 3) else (12, "completed")
                    trials.append(_trial_row(i, cfg, status, m, n, synthetic))
                    epochs += _epoch_rows(f"t{i:03d}", n, m)
                    i += 1
    cfg = TrialConfig(data=data, backbone="small_cnn", augment="none", seed=0, max_epochs=12)
    trials.append(_trial_row(i, cfg, "error", (0.5, 0.01, 0.4), 5, synthetic))  # finite: still out
    epochs += _epoch_rows(f"t{i:03d}", 5, (0.5, 0.01, 0.4))
    trials.append(_trial_row(i + 1, cfg.replace(seed=1), "error", (math.nan,) * 3, 0, synthetic))
    div = cfg.replace(seed=1, shape="cgd", alpha=0.01)
    trials.append(_trial_row(i + 2, div, "diverged", (math.inf,) * 3, 3, synthetic))
    epochs += _epoch_rows(f"t{i + 2:03d}", 3, (2.0, 0.05, 1.5), diverged=True)
    for row in trials:
        row.update(phase="search", replicate=None, cell="")
    trials += _confirm_rows(len(trials), data, synthetic)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(trials).to_parquet(folder / "trials.parquet", index=False)
    pd.DataFrame(epochs).to_parquet(folder / "epochs.parquet", index=False)
    return folder


# Constructed confirm effects per cell (shape − base test RMSE) and the verdict they must get.
CONFIRM_EFFECTS = {"small_cnn / none": -0.4, "small_cnn / study": 0.3,
                   "resnet18 / none": 0.0, "resnet18 / study": -0.05}
CONFIRM_VERDICTS = {"small_cnn / none": "better", "small_cnn / study": "worse",
                    "resnet18 / none": "equivalent", "resnet18 / study": "undecided"}
WOBBLE = {"resnet18 / none": 0.004, "resnet18 / study": 0.3}   # spread of d per replicate


def _confirm_rows(start: int, data: str, synthetic: bool) -> list[dict]:
    """4 replicates x 2 arms per cell; test RMSE shared by a replicate's arms plus the effect."""
    rows = []
    for cell, effect in CONFIRM_EFFECTS.items():
        backbone, augment = cell.split(" / ")
        for r in range(4):
            base = 2.0 + 0.2 * r
            wobble = WOBBLE.get(cell, 0.02) * (1 if r % 2 else -1) * (1 + r / 4)
            for shape, value in (("none", base), ("cgd", base + effect + wobble)):
                cfg = TrialConfig(data=data, backbone=backbone, augment=augment, seed=1000 + r,
                                  split_seed=1000 + r, shape=shape, alpha=0.1 if shape == "cgd" else 0.0,
                                  max_epochs=12, score_test=True)
                row = _trial_row(start + len(rows), cfg, "completed", (value, 0.05, 1.5), 12,
                                 synthetic)
                row.update(phase="confirm", replicate=r, cell=cell, best_test_rmse_px=value,
                           best_test_nme=value / 40, best_test_shape_err_px=1.5)
                rows.append(row)
    return rows


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture sweep, analysed once for the module (figures take seconds to render)."""
    folder = write_results(tmp_path_factory.mktemp("results") / "fixture-sweep")
    analyze.analyze(str(folder))
    return folder


def expected_cell(trials: pd.DataFrame, epochs: pd.DataFrame, backbone: str, augment: str,
                  metric: str) -> dict:
    """The headline numbers of one cell, computed here with plain pandas from the files.

    Pairs in which ASHA stopped a trial after e epochs are scored, in both arms, at the best
    epoch within the first e (equal budget)."""
    ok = trials[trials["status"].isin(["completed", "asha_stopped", "early_stopped"])]
    cell = ok[(ok["backbone"] == backbone) & (ok["augment"] == augment)]
    rmse_by_alpha = cell[cell["alpha"] > 0].groupby(["alpha", "seed"])["best_val_rmse_px"] \
        .mean().groupby("alpha").mean()
    alpha = rmse_by_alpha.idxmin()
    base, shaped = (cell[cell["alpha"] == a].set_index("seed") for a in (0.0, alpha))
    values: dict[str, dict[int, float]] = {"base": {}, "shape": {}}
    matched = 0
    for seed in base.index:
        pair = {"base": base.loc[seed], "shape": shaped.loc[seed]}
        cut = [t["epochs"] for t in pair.values() if t["status"] == "asha_stopped"]
        matched += bool(cut)
        for arm, t in pair.items():
            if not cut:   # each at its own best epoch, as trials.parquet records it
                values[arm][seed] = t[f"best_{metric}"]
                continue
            curve = epochs[(epochs["trial_id"] == t["trial_id"]) & (epochs["epoch"] <= min(cut))]
            values[arm][seed] = curve.loc[curve["val_rmse_px"].idxmin(), metric] \
                if t["epochs"] > min(cut) else t[f"best_{metric}"]
    per_seed = pd.DataFrame(values)
    diff = per_seed["shape"] - per_seed["base"]
    half = lambda s: T_975_DF2 * s.std(ddof=1) / math.sqrt(len(s))  # noqa: E731
    return {"alpha": alpha, "base_mean": per_seed["base"].mean(), "base_half": half(per_seed["base"]),
            "shape_mean": per_seed["shape"].mean(), "diff_mean": diff.mean(),
            "diff_half": half(diff), "matched": matched}


def test_verdicts_equal_pandas(results: Path) -> None:
    """Each cell's paired test difference recomputed from trials.parquet with plain pandas."""
    table = pd.read_csv(results / "verdicts.csv")
    trials = pd.read_parquet(results / "trials.parquet")
    conf = trials[trials["phase"] == "confirm"]
    assert len(table) == 4
    for _, row in table.iterrows():
        cell = conf[conf["cell"] == row["cell"]].pivot_table(
            index="replicate", columns="shape", values="best_test_rmse_px")
        d = cell["cgd"] - cell["none"]
        half = T_BONFERRONI4_DF3 * d.std(ddof=1) / math.sqrt(len(d))
        assert row["n"] == len(d) == 4
        assert row["d_mean"] == pytest.approx(d.mean(), rel=1e-12)
        assert row["ci_high"] - row["d_mean"] == pytest.approx(half, rel=1e-6)
        assert row["verdict"] == CONFIRM_VERDICTS[row["cell"]]
    text = (results / "report.md").read_text()
    assert text.index("## 1. Verdicts") < text.index("## 2. Search")
    assert "Bonferroni" in text and "Student-t interval" in text and "margin ±0.05 px" in text


def test_search_tables_show_full_budget_trials_only(results: Path) -> None:
    """ASHA-stopped trials (4 of 12 epochs) never appear beside full-budget ones."""
    text = (results / "report.md").read_text()
    search = text[text.index("## 2. Search"):]
    trials = pd.read_parquet(results / "trials.parquet")
    for tid in trials.loc[trials["status"] == "asha_stopped", "trial_id"]:
        assert f"`{tid}`" not in search
    table = [line for line in search.splitlines() if line.startswith("| ") and "`t" in line]
    assert len(table) == 4 * 2 and all(line.endswith("| 12 / 12 |") for line in table)


def test_every_figure_is_a_nonempty_png(results: Path) -> None:
    text = (results / "report.md").read_text()
    figures = re.findall(r"\]\((fig[^)]+\.png)\)", text)
    expected = {"fig1_confirm_verdicts.png", "fig2_alpha_response.png", "fig3_tradeoff.png",
                "fig4_learning_curves.png", "fig6_budget.png", "fig7_parallel_coordinates.png"}
    assert expected <= set(figures)
    for name in figures:
        data = (results / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    # No checkpoints in this folder: figure 5 is skipped with a line saying why.
    assert "best checkpoint is not available here" in text


def test_failed_and_diverged_are_listed_not_averaged(results: Path) -> None:
    text = (results / "report.md").read_text()
    assert "2 failed and 1 diverged trials, excluded from every mean" in text
    for tid in ("t036", "t037", "t038"):
        assert f"| {tid} |" in text
    assert "CUDA out of memory" in text


def test_budget_numbers(results: Path) -> None:
    text = (results / "report.md").read_text()
    trials = pd.read_parquet(results / "trials.parquet")
    trials = trials[trials["phase"] == "search"]
    used, full = trials["epochs"].sum(), trials["max_epochs"].sum()
    assert f"compute used: {used} of {full} epochs" in text
    assert "ASHA stopped trials after 4 epochs" in text


@pytest.mark.parametrize("synthetic", [True, False])
def test_wording_follows_data_flag(results: Path, tmp_path: Path, synthetic: bool) -> None:
    folder = results if synthetic else write_results(tmp_path / "sweep", synthetic=False)
    text = (folder / "report.md").read_text() if synthetic else \
        analyze.analyze(str(folder)).read_text()
    assert ("synthetic" in text.lower()) == synthetic
    answer = next(line for line in text.splitlines() if line.startswith("On "))
    assert ("synthetic" in answer) == synthetic and "1 better, 1 worse" in answer
    if not synthetic:
        assert REAL_SOURCE in answer


def test_cells_follow_varying_columns(tmp_path: Path) -> None:
    """A reproduce-like space: cells differ by the defect switches, not by backbone."""
    rows = []
    for defects in (True, False):
        for arm in ("base", "shape"):
            for seed in SEEDS:
                shape = ("seed_cgd" if defects else "cgd") if arm == "shape" else "none"
                cfg = TrialConfig(split="tail" if defects else "shuffle",
                                  missing="ffill" if defects else "mask",
                                  augment="study_exact" if defects else "study",
                                  shape=shape, alpha=0.01 if arm == "shape" else 0.0, seed=seed,
                                  lr=10 ** (-3 - 0.1 * len(rows)))  # sampled: not a cell
                rows.append(_trial_row(len(rows), cfg, "completed", (2.0 + seed, 0.05, 1.5), 5,
                                       True))
    t = tables.prepare(pd.DataFrame(rows))
    assert tables.cell_columns(t) == ["augment", "split", "missing"]
    assert tables.cell_columns(t, searched=["augment"]) == ["split", "missing"]
    assert t["cell"].nunique() == 2 and set(t["phase"]) == {"search"}   # old files: all search
    assert set(t["objective_label"]) == {"MSE", "MSE+CGD", "MSE+SEED_CGD"}


def test_continuous_alpha_is_binned_by_decade(tmp_path: Path) -> None:
    alphas = [0.002, 0.005, 0.03, 0.07, 0.4, 0.9]
    rows = [_trial_row(i, TrialConfig(shape="cgd", alpha=a, seed=i % 2), "completed",
                       (2.0, 0.05, 1.5), 5, True) for i, a in enumerate(alphas)]
    t = tables.prepare(pd.DataFrame(rows))
    assert t["alpha_level"].tolist() == pytest.approx([0.001, 0.001, 0.01, 0.01, 0.1, 0.1])


def test_a_figure_with_one_replicate_says_so(tmp_path: Path, monkeypatch) -> None:
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.setdefault("fig", fig) and path.name)
    table = pd.DataFrame([{"cell": "none", "shape": "cgd", "alpha": 0.1, "n": 1, "d_mean": -0.1,
                           "ci_low": math.nan, "ci_high": math.nan, "verdict": "undecided",
                           "margin": 0.05}])
    figures.figure_verdicts({("none", "cgd"): pd.Series([-0.1])}, table, tmp_path, "method")
    assert "ONE REPLICATE" in drawn["fig"].axes[0].get_title()
    table["n"] = 3
    drawn.clear()
    figures.figure_verdicts({("none", "cgd"): pd.Series([-0.1, 0.0, -0.2])}, table, tmp_path, "m")
    assert "ONE REPLICATE" not in drawn["fig"].axes[0].get_title()


def test_the_verdict_figure_title_fits_inside_the_figure(tmp_path: Path, monkeypatch) -> None:
    """fkd-yt15's design text (~190 characters) once ran past the right edge of fig1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.setdefault("fig", fig) and path.name)
    method = ("group-sequential repeated t intervals, Lan–DeMets O'Brien–Fleming-type α-spending "
              "calibrated for the t statistic, looks every 3 up to 6 replicates, running intersection "
              "over the looks")
    table = pd.DataFrame([{"cell": f"head={h} / max_epochs=40", "shape": "cgd", "alpha": 0.14, "n": 6,
                           "d_mean": -0.01, "ci_low": -0.05, "ci_high": 0.03, "verdict": "undecided",
                           "margin": 0.05, "level": 0.9875} for h in ("regression", "heatmap")])
    diffs = {(c, "cgd"): pd.Series([-0.01, 0.02, -0.03]) for c in table["cell"]}
    figures.figure_verdicts(diffs, table, tmp_path, method)
    fig = drawn["fig"]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    title = fig.axes[0].title.get_window_extent(canvas.get_renderer())
    assert 0 <= title.x0 and title.x1 <= fig.bbox.x1
    assert title.y1 <= fig.bbox.y1
    assert max(len(line) for line in fig.axes[0].get_title().split("\n")) <= figures.TITLE_WIDTH


def test_parallel_coordinates_title_and_ticks(tmp_path: Path, monkeypatch) -> None:
    """The title names only the log axes drawn; close α values do not print over each other."""
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.setdefault("fig", fig) and path.name)
    rows = [_trial_row(i, TrialConfig(shape="cgd", alpha=a, seed=i), "completed",
                       (2.0 + i, 0.05, 1.5), 5, True) for i, a in enumerate((0.0431, 0.0443, 0.9))]
    t = tables.prepare(pd.DataFrame(rows))
    figures.figure_parallel(t, ["alpha", "seed"], tmp_path)
    ax = drawn["fig"].axes[0]
    assert "lr" not in ax.get_title() and "alpha on log axes" in ax.get_title()
    texts = [x.get_text() for x in ax.texts]
    assert not ("0.0431" in texts and "0.0443" in texts)


def test_reads_through_pyarrow_filesystems(results: Path) -> None:
    """A URI goes through pyarrow.fs (file:// here; s3:// and gs:// take the same path)."""
    local = analyze.read_parquet(str(results), "trials.parquet")
    remote = analyze.read_parquet(results.as_uri(), "trials.parquet")
    pd.testing.assert_frame_equal(local, remote)
    assert analyze.default_out("s3://bucket/runs/quick/") == Path("analysis/quick")


def test_checkpoint_found_locally_or_fetched(tmp_path: Path) -> None:
    ckpt = tmp_path / "res" / "checkpoints" / "t007" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    trial = pd.Series({"trial_id": "t007", "best_checkpoint": "checkpoints/t007/best.pt"})
    scratch = tmp_path / "scratch"
    local = figures.resolve_checkpoint(trial, str(tmp_path / "res"), str(scratch))
    assert local == str(ckpt)
    fetched = figures.resolve_checkpoint(trial, (tmp_path / "res").as_uri(), str(scratch))
    assert fetched is not None and fetched.startswith(str(scratch))
    assert Path(fetched).read_bytes() == b"weights"
    gone = trial.copy()
    gone["best_checkpoint"] = "checkpoints/t999/best.pt"
    assert figures.resolve_checkpoint(gone, (tmp_path / "res").as_uri(), str(scratch)) is None
    gone["best_checkpoint"] = ""
    assert figures.resolve_checkpoint(gone, str(tmp_path / "res"), str(scratch)) is None


def test_prediction_figures_carry_their_trial(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    path = tmp_path / "fig5_predictions_base.png"
    fig = plt.figure()
    fig.savefig(path)
    plt.close(fig)
    assert figures.tagged_trial(path) is None
    figures.tag_png(path, "a42977ba")
    assert figures.tagged_trial(path) == "a42977ba"
    assert figures.tagged_trial(tmp_path / "missing.png") is None
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert figures.tagged_trial(tmp_path / "broken.png") is None


def test_cli_writes_report(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    assert analyze.main([str(results), "--out", str(out)]) == 0
    assert (out / "report.md").stat().st_size > 1000
    assert (out / "report.md").read_text() == (results / "report.md").read_text()
    assert analyze.main([str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_smoke_sweep_end_to_end(tmp_path: Path) -> None:
    """A real smoke sweep with a confirm phase (Ray, Optuna, training, checkpoints), then its
    analysis: both phases in Parquet, a verdict line per cell, every figure a PNG, the
    prediction figures drawn."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "sweep.run", "--cluster", "clusters/local.yaml", "--smoke-test",
           "--confirm", "2", "--name", "smoke", "--results-dir", str(tmp_path)]
    run = subprocess.run(cmd, cwd=root, check=True, timeout=600, capture_output=True, text=True)
    assert run.stdout.index("Verdicts (confirm phase, test split):") < run.stdout.index("Search:")
    folder, out = tmp_path / "smoke", tmp_path / "report"
    trials = pd.read_parquet(folder / "trials.parquet")
    assert trials["phase"].value_counts().to_dict() == {"search": 4, "confirm": 8}
    cli = subprocess.run([sys.executable, "-m", "sweep.analyze", str(folder), "--out", str(out)],
                         cwd=root, check=True, timeout=300, capture_output=True, text=True).stdout
    conf = trials[trials["phase"] == "confirm"]
    if np.isfinite(conf["best_test_rmse_px"]).any():   # an fkd_core.train that scores test
        for cell in ("none", "study"):
            assert re.search(rf"^  {cell} .*  (better|worse|equivalent|undecided)$", cli, re.M), cli
    else:
        assert "no test metrics" in cli
    text = (out / "report.md").read_text()
    assert ("synthetic" in text.lower()) == bool(trials["data_synthetic"].any())
    drawn = re.findall(r"\]\((fig[^)]+\.png)\)", text)
    assert {"fig5_predictions_base.png", "fig5_predictions_cgd.png"} <= set(drawn), text
    for name in drawn:
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and (out / name).stat().st_size > 10_000
    # Committed results keep figures, not weights: without the checkpoints a later analysis into
    # the same folder still shows the figures drawn for these trials, and says so; elsewhere it
    # skips them.
    shutil.rmtree(folder / "checkpoints")
    again = analyze.analyze(str(folder), str(out)).read_text()
    assert again.count("drawn by an earlier analysis") == 2
    elsewhere = analyze.analyze(str(folder), str(tmp_path / "other")).read_text()
    assert elsewhere.count("figure skipped, its best checkpoint is not available here") == 2


# --- one line naming the file for a folder analyze cannot read (issue 21, items 8 and 9) --------

def test_cli_on_an_empty_folder_says_it_is_not_a_sweep(tmp_path: Path, capsys) -> None:
    from sweep.analyze import main

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err == (
        f"sweep.analyze: error: {tmp_path / 'empty' / 'trials.parquet'}: no such file; "
        f"{tmp_path / 'empty'} is not a sweep's results folder (python -m sweep.run writes "
        "trials.parquet and epochs.parquet there)\n")


@pytest.mark.parametrize("text,message", [
    ('{"space": ', "not readable as JSON (Expecting value: line 1 column 11 (char 10))"),
    ("\xff\xfe{", "not readable as JSON ("),
    ('["space"]', "expected a JSON object with a 'space' object, as sweep.run writes it"),
    ('{"space": 3}', "expected a JSON object with a 'space' object, as sweep.run writes it"),
])
def test_cli_on_a_broken_sweep_json_names_it(results: Path, tmp_path: Path, capsys, text,
                                             message) -> None:
    import shutil

    from sweep.analyze import main

    folder = tmp_path / "copy"
    shutil.copytree(results, folder)
    (folder / "sweep.json").write_bytes(text.encode("latin-1"))
    assert main([str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sweep.analyze: error: {folder / 'sweep.json'}: {message}")
    assert err.count("\n") == 1
