"""sweep.analyze on Parquet results the tests write themselves (and, marked slow, on a real
smoke sweep): the headline numbers equal what pandas computes from the same files."""
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
from sweep import analyze

T_975_DF2 = 4.302653  # t(0.975, 2): three seeds per arm in the fixture
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
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(trials).to_parquet(folder / "trials.parquet", index=False)
    pd.DataFrame(epochs).to_parquet(folder / "epochs.parquet", index=False)
    return folder


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


def test_headline_equals_pandas(results: Path) -> None:
    report = results / "report.md"
    head = pd.read_csv(results / "headline.csv")
    trials = pd.read_parquet(results / "trials.parquet")
    epochs = pd.read_parquet(results / "epochs.parquet")
    assert len(head) == 4 * 3  # 4 cells x 3 metrics, one shape term
    for backbone in ("small_cnn", "resnet18"):
        for augment in ("none", "study"):
            for metric in M.VAL_METRICS:
                exp = expected_cell(trials, epochs, backbone, augment, metric)
                got = head[(head["cell"] == f"{backbone} / {augment}") & (head["metric"] == metric)]
                assert len(got) == 1
                got = got.iloc[0]
                assert got["alpha_level"] == pytest.approx(exp["alpha"])
                assert got["base_mean"] == pytest.approx(exp["base_mean"], rel=1e-9)
                assert got["base_high"] - got["base_mean"] == pytest.approx(exp["base_half"], rel=1e-6)
                assert got["shape_mean"] == pytest.approx(exp["shape_mean"], rel=1e-9)
                assert got["diff_mean"] == pytest.approx(exp["diff_mean"], rel=1e-9, abs=1e-12)
                assert got["diff_high"] - got["diff_mean"] == pytest.approx(exp["diff_half"], rel=1e-6)
                assert got["base_n"] == 3 and got["diff_n"] == 3
                assert got["budget_matched"] == exp["matched"]
    assert head["budget_matched"].sum() > 0   # the fixture has ASHA-stopped trials in pairs
    # The same numbers, as printed in the report's table.
    exp = expected_cell(trials, epochs, "small_cnn", "none", M.VAL_RMSE)
    assert f"{exp['diff_mean']:.3f} [{exp['diff_mean'] - exp['diff_half']:.3f}, " \
           f"{exp['diff_mean'] + exp['diff_half']:.3f}] (3)" in report.read_text()


def test_asha_budget_is_equalised_within_a_pair() -> None:
    """MSE stopped by ASHA at epoch 2, CGD ran 8: both are compared at their best within 2."""
    rows, curves = [], []
    for seed in SEEDS:
        for arm, (n, status) in (("base", (2, "asha_stopped")), ("shape", (8, "completed"))):
            cfg = TrialConfig(seed=seed, shape="cgd" if arm == "shape" else "none",
                              alpha=0.1 if arm == "shape" else 0.0, max_epochs=8)
            final = (3.0 + 0.1 * seed, 0.07, 2.0)    # every curve falls as 1 + 2/epoch
            curve = _epoch_rows(f"t{len(rows):03d}", n, final)
            at_end = curve[-1]
            rows.append(_trial_row(len(rows), cfg, status, (at_end[M.VAL_RMSE], at_end[M.VAL_NME],
                                                           at_end[M.VAL_SHAPE]), n, True))
            curves += curve
    t, epochs = analyze.prepare(pd.DataFrame(rows)), pd.DataFrame(curves)
    unmatched = analyze.headline(t).set_index("metric").loc[M.VAL_RMSE]
    # 3.x * (1 + 2/8) - 3.x * (1 + 2/2): the longer budget alone "wins" by 0.75 * 3.x
    assert unmatched["diff_mean"] == pytest.approx(-0.75 * 3.1)
    matched = analyze.headline(t, epochs).set_index("metric").loc[M.VAL_RMSE]
    assert matched["diff_mean"] == pytest.approx(0.0) and matched["budget_matched"] == 3
    assert matched["shape_mean"] == pytest.approx(2 * 3.1)
    sentence = analyze.budget_sentence(analyze.headline(t, epochs))
    assert "ASHA stopped one trial of 3 of the 3 compared pairs early" in sentence
    assert analyze.budget_sentence(analyze.headline(t)) == ""


def test_every_figure_is_a_nonempty_png(results: Path) -> None:
    text = (results / "report.md").read_text()
    figures = re.findall(r"\]\((fig[^)]+\.png)\)", text)
    expected = {"fig1_paired_differences.png", "fig2_alpha_response.png", "fig3_tradeoff.png",
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
    head = pd.read_csv(results / "headline.csv")
    assert np.isfinite(head[["base_mean", "shape_mean", "diff_mean"]].to_numpy()).all()


def test_budget_numbers(results: Path) -> None:
    text = (results / "report.md").read_text()
    trials = pd.read_parquet(results / "trials.parquet")
    used, full = trials["epochs"].sum(), trials["max_epochs"].sum()
    assert f"compute used: {used} of {full} epochs" in text
    assert "ASHA stopped trials after 4 epochs" in text


@pytest.mark.parametrize("synthetic", [True, False])
def test_wording_follows_data_flag(results: Path, tmp_path: Path, synthetic: bool) -> None:
    folder = results if synthetic else write_results(tmp_path / "sweep", synthetic=False)
    text = (folder / "report.md").read_text() if synthetic else \
        analyze.analyze(str(folder)).read_text()
    assert ("synthetic" in text.lower()) == synthetic
    answer = next(line for line in text.splitlines() if line.startswith("**"))
    assert ("synthetic" in answer) == synthetic
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
    t = analyze.prepare(pd.DataFrame(rows))
    assert analyze.cell_columns(t) == ["augment", "split", "missing"]
    head = analyze.headline(t)
    assert set(head["shape"]) == {"cgd", "seed_cgd"} and len(head) == 2 * 3
    assert set(head["shape_label"]) == {"MSE+CGD", "MSE+SEED_CGD"}


def test_continuous_alpha_is_binned_by_decade(tmp_path: Path) -> None:
    alphas = [0.002, 0.005, 0.03, 0.07, 0.4, 0.9]
    rows = [_trial_row(i, TrialConfig(shape="cgd", alpha=a, seed=i % 2), "completed",
                       (2.0, 0.05, 1.5), 5, True) for i, a in enumerate(alphas)]
    t = analyze.prepare(pd.DataFrame(rows))
    assert t["alpha_level"].tolist() == pytest.approx([0.001, 0.001, 0.01, 0.01, 0.1, 0.1])
    assert analyze.is_binned(t)


def test_sampled_alpha_without_repeats_is_pooled() -> None:
    """The quick space: one trial per seed and arm, α sampled in a different decade each time."""
    rows = []
    for seed, alpha in zip(SEEDS, (0.002, 0.03, 0.5)):
        rows.append(_trial_row(len(rows), TrialConfig(seed=seed), "completed",
                               (3.0 + seed, 0.07, 2.5), 8, True))
        rows.append(_trial_row(len(rows), TrialConfig(seed=seed, shape="cgd", alpha=alpha),
                               "completed", (2.9 + seed, 0.07, 2.2), 8, True))
    head = analyze.headline(analyze.prepare(pd.DataFrame(rows)))
    rmse = head[head["metric"] == M.VAL_RMSE].iloc[0]
    assert rmse["alpha_level"] == analyze.POOLED and rmse["diff_n"] == 3
    assert rmse["diff_mean"] == pytest.approx(-0.1) and rmse["diff_high"] < 0


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
    local = analyze.resolve_checkpoint(trial, str(tmp_path / "res"), str(scratch))
    assert local == str(ckpt)
    fetched = analyze.resolve_checkpoint(trial, (tmp_path / "res").as_uri(), str(scratch))
    assert fetched is not None and fetched.startswith(str(scratch))
    assert Path(fetched).read_bytes() == b"weights"
    gone = trial.copy()
    gone["best_checkpoint"] = "checkpoints/t999/best.pt"
    assert analyze.resolve_checkpoint(gone, (tmp_path / "res").as_uri(), str(scratch)) is None
    gone["best_checkpoint"] = ""
    assert analyze.resolve_checkpoint(gone, str(tmp_path / "res"), str(scratch)) is None


def test_prediction_figures_carry_their_trial(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    path = tmp_path / "fig5_predictions_base.png"
    fig = plt.figure()
    fig.savefig(path)
    plt.close(fig)
    assert analyze.tagged_trial(path) is None
    analyze.tag_png(path, "a42977ba")
    assert analyze.tagged_trial(path) == "a42977ba"
    assert analyze.tagged_trial(tmp_path / "missing.png") is None
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert analyze.tagged_trial(tmp_path / "broken.png") is None


def test_cli_writes_report(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    assert analyze.main([str(results), "--out", str(out)]) == 0
    assert (out / "report.md").stat().st_size > 1000
    assert (out / "report.md").read_text() == (results / "report.md").read_text()
    assert analyze.main([str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_smoke_sweep_end_to_end(tmp_path: Path) -> None:
    """A real smoke sweep (Ray, Optuna, training, checkpoints), then its analysis: the headline
    equals pandas' numbers, every figure is a PNG, and the prediction figures are drawn."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "sweep.run", "--cluster", "clusters/local.yaml", "--smoke-test",
           "--name", "smoke", "--results-dir", str(tmp_path)]
    subprocess.run(cmd, cwd=root, check=True, timeout=600, capture_output=True)
    folder, out = tmp_path / "smoke", tmp_path / "report"
    text = analyze.analyze(str(folder), str(out)).read_text()
    trials = pd.read_parquet(folder / "trials.parquet")
    assert ("synthetic" in text.lower()) == bool(trials["data_synthetic"].any())
    figures = re.findall(r"\]\((fig[^)]+\.png)\)", text)
    assert {"fig5_predictions_base.png", "fig5_predictions_cgd.png"} <= set(figures), text
    for name in figures:
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and (out / name).stat().st_size > 10_000
    _check_headline_against_pandas(folder, out / "headline.csv")
    # Committed results keep figures, not weights: without the checkpoints a later analysis into
    # the same folder still shows the figures drawn for these trials, and says so; elsewhere it
    # skips them.
    shutil.rmtree(folder / "checkpoints")
    again = analyze.analyze(str(folder), str(out)).read_text()
    assert again.count("drawn by an earlier analysis") == 2
    assert {"fig5_predictions_base.png", "fig5_predictions_cgd.png"} <= set(re.findall(r"\]\((fig[^)]+\.png)\)", again))
    elsewhere = analyze.analyze(str(folder), str(tmp_path / "other")).read_text()
    assert elsewhere.count("figure skipped, its best checkpoint is not available here") == 2


def _check_headline_against_pandas(folder: Path, headline_csv: Path) -> None:
    """Each cell's base-arm and paired numbers recomputed from the Parquet file with pandas."""
    trials = pd.read_parquet(folder / "trials.parquet")
    ok = trials[trials["status"].isin(["completed", "asha_stopped", "early_stopped"])]
    head = pd.read_csv(headline_csv)
    assert len(head) == 3 * ok["augment"].nunique()  # the smoke space: cells = augmentations
    for _, row in head.iterrows():
        col = f"best_{row['metric']}"
        cell = ok[ok["augment"] == row["cell"]]
        base = cell[cell["shape"] == "none"].groupby("seed")[col].mean()
        shaped = cell[cell["shape"] == "cgd"].groupby("seed")[col].mean()
        assert row["base_mean"] == pytest.approx(base.mean(), rel=1e-12)
        assert row["shape_mean"] == pytest.approx(shaped.mean(), rel=1e-12)
        assert row["diff_mean"] == pytest.approx((shaped - base).dropna().mean(), abs=1e-12)
