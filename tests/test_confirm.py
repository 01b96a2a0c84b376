"""sweep.confirm: which configs are confirmed, how replicates pair, the plan's checks, and the two
phases end to end through Ray with a fake train function reporting val and test metrics."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from fkd_core import metrics as M
from fkd_core.config import TrialConfig, config_fields
from sweep import confirm as C
from sweep import plan as P
from sweep import verdicts as V
from sweep.tables import prepare

ARM_FIELDS = {"shape", "alpha"}


# --- choosing the recipes --------------------------------------------------------------------

def search_row(i: int, augment: str, shape: str, alpha: float, lr: float, rmse: float,
               status: str = "completed") -> dict:
    cfg = TrialConfig(augment=augment, shape=shape, alpha=alpha, lr=lr, max_epochs=8)
    return {**cfg.to_dict(), "trial_id": f"s{i}", "status": status, "phase": "search",
            f"best_{M.VAL_RMSE}": rmse, "epochs": 8 if status == "completed" else 2,
            "loss_label": cfg.loss_label}


def search_table() -> pd.DataFrame:
    rows = [search_row(0, "none", "none", 0.0, 1e-3, 2.0),
            search_row(1, "none", "none", 0.0, 2e-3, 1.9),          # best base, none
            search_row(2, "none", "none", 0.0, 3e-3, 1.0, "asha_stopped"),  # early: not eligible
            search_row(3, "none", "cgd", 0.3, 5e-4, 1.8),           # best cgd, none (other lr)
            search_row(4, "none", "cgd", 0.01, 2e-3, 1.95),
            search_row(5, "study", "none", 0.0, 1e-3, 2.5),
            search_row(6, "study", "cgd", 0.05, 1e-3, 2.4)]
    return prepare(pd.DataFrame(rows), searched=["lr", "alpha"])


def test_best_config_is_taken_among_full_budget_trials():
    arms = {(a.cell, a.arm): a for a in C.choose_arms(search_table())}
    assert arms[("none", "base")].source_trial == "s1"     # not s2: ASHA stopped it at epoch 2
    assert arms[("none", "cgd")].source_trial == "s3"
    assert len(arms) == 4


def test_confirm_pairs_differ_only_in_the_arm():
    arms = C.choose_arms(search_table())
    configs = C.missing_configs(arms, pd.DataFrame(), upto=3)
    assert len(configs) == 4 * 3
    by = {(c["cell"], c["cfg"]["shape"], c["replicate"]): c["cfg"] for c in configs}
    for cell in ("none", "study"):
        for r in range(3):
            base, shaped = by[(cell, "none", r)], by[(cell, "cgd", r)]
            differ = {k for k in config_fields() if base[k] != shaped[k]}
            assert differ == ARM_FIELDS
            assert base["seed"] == base["split_seed"] == shaped["split_seed"] == P.CONFIRM_SEED0 + r
            assert base["score_test"] and shaped["score_test"]
    # the shape arm keeps the base arm's lr (2e-3), with its own best alpha (0.3)
    assert by[("none", "cgd", 0)]["lr"] == 2e-3 and by[("none", "cgd", 0)]["alpha"] == 0.3


def test_missing_configs_skips_replicates_already_run():
    arms = C.choose_arms(search_table())
    done = pd.DataFrame({"cell": ["none", "none"], "arm": ["base", "cgd"], "replicate": [0, 0]})
    todo = C.missing_configs(arms, done, upto=2)
    assert len(todo) == 4 * 2 - 2
    assert all(not (c["cell"] == "none" and c["replicate"] == 0) for c in todo)


def test_confirm_trials_run_a_fixed_budget_and_score_what_was_fixed_before():
    arms = C.choose_arms(search_table())
    for c in C.missing_configs(arms, pd.DataFrame(), upto=1):
        cfg = TrialConfig(**c["cfg"])
        assert cfg.patience == cfg.max_epochs == 8                  # early stopping can never fire
        assert cfg.schedule == C.FIXED_SCHEDULE == "cosine"         # the search's plateau, replaced
        assert cfg.scored == "final"
    onecycle = C.fixed_budget({"schedule": "onecycle", "max_epochs": 30, "patience": 5}, "best_val")
    assert onecycle == {"schedule": "onecycle", "max_epochs": 30, "patience": 30, "scored": "best_val"}
    [noisier] = C.missing_configs(arms[:1], pd.DataFrame(), upto=1, scored="best_val")
    assert noisier["cfg"]["scored"] == "best_val"


def test_fixed_alphas_add_an_arm_at_the_studys_alpha_beside_the_tuned_one():
    assert (C.arm_label("none"), C.arm_label("cgd"), C.arm_label("cgd", 0.01)) == ("base", "cgd", "cgd@0.01")
    arms = {(a.cell, a.arm): a for a in C.choose_arms(search_table(), fixed_alphas=[0.01])}
    assert len(arms) == 6 and arms[("none", "cgd@0.01")].fields["alpha"] == 0.01
    assert arms[("none", "cgd")].fields["alpha"] == 0.3
    configs = C.missing_configs(list(arms.values()), pd.DataFrame(), upto=2)
    assert len(configs) == 6 * 2 and {c["arm"] for c in configs} == {"base", "cgd", "cgd@0.01"}
    fixed, base = (next(c["cfg"] for c in configs if c["arm"] == a and c["cell"] == "none"
                        and c["replicate"] == 0) for a in ("cgd@0.01", "base"))
    assert {k for k in config_fields() if fixed[k] != base[k]} == ARM_FIELDS
    done = pd.DataFrame({"cell": ["none"], "arm": ["cgd@0.01"], "replicate": [0]})
    left = C.missing_configs(list(arms.values()), done, upto=1)
    assert ("none", "cgd@0.01") not in {(c["cell"], c["arm"]) for c in left} and len(left) == 5


def test_a_recorded_arm_label_is_the_arm_of_a_confirm_trial():
    from sweep.confirm_recovery import key_of, recorded_keys

    rows = pd.DataFrame([{**search_row(0, "none", "cgd", 0.01, 1e-3, 2.0), "phase": "confirm",
                          "replicate": 0, "cell": "none", "arm": "cgd@0.01"},
                         {**search_row(1, "none", "cgd", 0.3, 1e-3, 2.0), "arm": ""}])
    assert list(prepare(rows, ["lr", "alpha"])["arm"]) == ["cgd@0.01", "cgd"]
    config = {"cell": "none", "replicate": 1, "arm": "cgd@0.01", "cfg": {"shape": "cgd", "alpha": 0.01}}
    assert key_of(config) == ("none", "cgd@0.01", 1)
    assert key_of({**config, "arm": None}) == ("none", "cgd", 1)    # configs written before labels
    assert recorded_keys(rows.to_dict("records")) == {("none", "cgd@0.01", 0)}


# --- the plan ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"replicates": 0}, "must be >= 1 replicate, got 0"),
    ({"replicates": 3, "margin": -1.0}, "--margin must be >= 0 px, got -1"),
    ({"replicates": 4, "until_decided": True, "max_seeds": 3}, "--max-seeds 3 is below the first round of 4"),
    ({"replicates": 3, "max_seeds": 6}, "--max-seeds needs --until-decided"),
    ({"replicates": 3, "until_decided": True}, "--until-decided needs --max-seeds M"),
    ({"replicates": 3, "open_ended": True}, "--open-ended needs --until-decided --max-seeds M"),
    ({"replicates": 3, "alpha": 1.5}, r"alpha must be in \(0, 1\), got 1.5"),
])
def test_bad_plans(kwargs, message):
    with pytest.raises(P.ConfirmError, match=message):
        P.Plan(**kwargs)


@pytest.mark.parametrize("argv,message", [
    (["--confirm", "0"], "--confirm/--replicates must be >= 1 replicate, got 0"),
    (["--confirm", "2", "--margin", "-1"], "--margin must be >= 0 px, got -1"),
    (["--confirm", "4", "--until-decided", "--max-seeds", "3"], "below the first round of 4"),
    (["--space", "rigidity", "--margin", "0.1"], "--margin need --confirm N"),
])
def test_sweep_run_rejects_bad_confirm_options_in_one_line(argv, message, capsys):
    from sweep.run import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("sweep.run: error:")


def test_sweep_confirm_rejects_a_folder_without_a_sweep(tmp_path, capsys):
    assert C.main([str(tmp_path), "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep.json not found" in err
    assert C.main([str(tmp_path), "--seeds", "0"]) == 2


@pytest.mark.parametrize("argv,replicates", [
    (["--replicates", "4"], 4),
    (["--seeds", "3"], 3),                 # the old spelling, which older commands still use
    (["--replicates", "2", "--until-decided", "--max-seeds", "6"], 2),
])
def test_sweep_confirm_takes_replicates_and_its_old_name_seeds(argv, replicates):
    args = C.build_parser().parse_args(["results/x", *argv])
    assert C.replicates_of(args) == replicates


@pytest.mark.parametrize("argv,message", [
    ([], "sweep.confirm: error: the following arguments are required: --replicates\n"),
    (["--replicates", "2", "--seeds", "2"],
     "sweep.confirm: error: --seeds is the old name of --replicates: give one of them\n"),
    (["--replicates", "0"], "sweep.confirm: error: --confirm/--replicates must be >= 1 replicate, got 0\n"),
])
def test_sweep_confirm_replicates_errors_are_one_line(tmp_path, capsys, argv, message):
    assert C.main([str(tmp_path), *argv]) == 2
    assert capsys.readouterr().err == message
    assert list(tmp_path.iterdir()) == []   # refused before anything is written or locked


def test_sweep_confirm_help_names_replicates_not_seeds():
    text = C.build_parser().format_help()
    assert "--replicates N" in text and "--seeds" not in text


@pytest.mark.parametrize("text,message", [
    ('{"name": "s", ', "not readable as JSON (Expecting property name enclosed in double quotes: "
                       "line 1 column 15 (char 14))"),
    ('{"name": "s"}', "key 'space' is missing; it is not a sweep.json that sweep.run wrote"),
    ('{"name": "s", "space": {"seeds": "many"}, "storage_path": "/x", "resources": {}, '
     '"max_concurrent": 1}', "seeds"),
])
def test_sweep_confirm_on_a_broken_sweep_json_names_the_file(tmp_path, capsys, text, message):
    """issue 21, item 9: the line says which file and what is wrong in it."""
    (tmp_path / "sweep.json").write_text(text)
    assert C.main([str(tmp_path), "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sweep.confirm: error: {tmp_path / 'sweep.json'}")
    assert message in err and list(tmp_path.iterdir()) == [tmp_path / "sweep.json"]


def test_space_default_and_command_line_override():
    from sweep.run import build_parser
    from sweep.spaces import get_space

    quick = get_space("quick")
    plan = P.plan_of(build_parser().parse_args([]), quick)
    assert (plan.replicates, plan.until_decided, plan.max_seeds) == (3, True, 9)
    plan = P.plan_of(build_parser().parse_args(["--confirm", "2"]), quick)
    assert (plan.replicates, plan.until_decided, plan.max_seeds) == (2, False, None)
    assert P.plan_of(build_parser().parse_args(["--smoke-test"]), quick) is None
    assert P.plan_of(build_parser().parse_args([]), get_space("rigidity")) is None


# --- both phases end to end, with a fake train function ------------------------------------------

EFFECT = {"none": -0.3, "study": 0.0}     # shape − base test RMSE per cell, by construction


def fake_train(cfg, data, report, *, checkpoint_dir=None, resume_from=None):
    """Deterministic val and test metrics; test only when cfg.score_test (as fkd_core.train).

    The shape arm's test RMSE differs from its base partner by EFFECT[augment] plus a small
    replicate-dependent wobble, so paired differences have a known mean and a spread.
    """
    wobble = 0.004 * math.sin(cfg.seed) if cfg.uses_shape else 0.0
    level = 2.0 + 0.1 * math.cos(cfg.seed) + (EFFECT[cfg.augment] + wobble if cfg.uses_shape else 0.0)
    val_level = level + 50 * abs(math.log10(cfg.lr / 1e-3)) * 0.01
    for epoch in range(1, cfg.max_epochs + 1):
        val = val_level + 1.0 / epoch
        row = {M.EPOCH: epoch, M.TRAIN_LOSS: val, M.VAL_LOSS: val, M.VAL_RMSE: val,
               M.VAL_NME: val / 40, M.VAL_SHAPE: val, M.LR: cfg.lr, M.EPOCH_SECONDS: 0.01,
               M.IMAGES_PER_S: 1.0, M.DIVERGED: False}
        if cfg.score_test:
            # the test value at the best-val epoch (the last) is `level`; earlier ones are worse
            row.update({M.TEST_RMSE: level + 1.0 / epoch - 1.0 / cfg.max_epochs,
                        M.TEST_NME: level / 40, M.TEST_SHAPE: level})
        report(row)


@pytest.fixture(scope="module")
def two_phases(ray_local, tmp_path_factory):
    from sweep.datasets import load_data
    from sweep.search import run_sweep
    from sweep.settings import local_settings
    from sweep.spaces import from_dict

    space = from_dict({
        "grid": True, "seeds": 1, "num_samples": 8, "max_epochs": 4,
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "fixed": {"backbone": "small_cnn", "synth_n": 60},
        "axes": {"augment": ["none", "study"], "shape": ["none", "cgd"]},
        "search": {"alpha": {"log_uniform": [1e-3, 1.0], "when": {"shape": ["cgd"]}},
                   "lr": {"log_uniform": [3e-4, 3e-3]}}})
    tmp = tmp_path_factory.mktemp("confirm")
    s = local_settings(space, str(tmp), "two", max_concurrent=2)
    data = load_data(space)
    run_sweep(s, data, train_fn=fake_train, log=None)
    plan = P.Plan(3, margin=0.05, until_decided=True, max_seeds=9)
    result = C.confirm(s, data, plan, train_fn=fake_train, log=None)
    return tmp / "two", result, plan


@pytest.mark.slow
def test_both_phases_land_in_the_same_parquet_files(two_phases):
    folder, result, _ = two_phases
    trials = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    search, conf = trials[trials.phase == "search"], trials[trials.phase == "confirm"]
    assert len(search) == 8 and len(conf) == 4 * result.replicates
    assert conf.replicate.notna().all() and search.replicate.isna().all()
    # test metrics: recorded at the best-val epoch (the last) for confirm trials, absent in search
    assert np.isfinite(conf[f"best_{M.TEST_RMSE}"]).all() and search[f"best_{M.TEST_RMSE}"].isna().all()
    assert (conf.best_epoch == conf.max_epochs).all() and (conf.status == "completed").all()
    search_rows = epochs[epochs.trial_id.isin(search.trial_id)]
    assert search_rows[M.TEST_RMSE].isna().all()
    assert epochs[epochs.trial_id.isin(conf.trial_id)][M.TEST_RMSE].notna().all()


@pytest.mark.slow
def test_test_rows_are_identical_across_arms_seeds_replicates_and_phases(two_phases):
    folder, _, _ = two_phases
    trials = pd.read_parquet(folder / "trials.parquet")
    assert trials.seed.nunique() > 2 and set(trials.phase) == {"search", "confirm"}
    for column in ("data", "synth_n", "synth_seed", "synth_pose", "test_fraction", "test_seed",
                   "groups", "group_regex", "data_hash"):
        assert trials[column].nunique() == 1, column
    assert (trials.score_test == (trials.phase == "confirm")).all()   # search never scores test


@pytest.mark.slow
def test_verdicts_follow_the_constructed_effects_and_rounds(two_phases):
    folder, result, plan = two_phases
    table = result.table.set_index("cell")
    assert table.loc["none", "verdict"] == "better"
    assert table.loc["none", "d_mean"] == pytest.approx(-0.3, abs=0.01)
    assert table.loc["study", "verdict"] == "equivalent"
    assert result.looks >= 2 and result.replicates == 3 * result.looks   # rounds of 3 were added
    saved = json.loads((folder / "sweep.json").read_text())["confirm"]
    assert saved["plan"]["margin"] == 0.05 and saved["plan"]["sequential"]
    assert saved["replicates"] == result.replicates and saved["looks"] == result.looks


@pytest.mark.slow
def test_analyze_prints_a_verdict_per_cell(two_phases, tmp_path, capsys):
    from sweep import analyze

    folder, _, _ = two_phases
    assert analyze.main([str(folder), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Verdicts (confirm phase, test split):"
    cells = [line.split() for line in out.splitlines() if line.startswith(("  none ", "  study "))]
    assert {c[0]: c[-1] for c in cells} == {"none": "better", "study": "equivalent"}
    text = (tmp_path / "report.md").read_text()
    assert text.index("## 1. Verdicts") < text.index("## 2. Search")
    assert "group-sequential" in text and "Bonferroni" in text and "synthetic" in text
    assert "What a decision will take" in text and "Beyond these test people" in text
    assert (tmp_path / "fig1_confirm_verdicts.png").stat().st_size > 10_000


def fake_train_with_groups(cfg: TrialConfig, data, report, **kwargs) -> None:
    """fake_train, plus the per-group test sums and the shape share train() reports."""
    def with_groups(row: dict) -> None:
        row[M.SHAPE_SHARE] = 0.2 * cfg.alpha if cfg.uses_shape else 0.0
        if M.TEST_RMSE in row:   # two groups whose sums give the row's test RMSE
            sse = row[M.TEST_RMSE] ** 2 * 10
            row.update({M.TEST_GROUP_IDS: ["a", "b"], M.TEST_GROUP_SSE: [0.4 * sse, 0.6 * sse],
                        M.TEST_GROUP_COUNT: [4, 6]})
        report(row)
    fake_train(cfg, data, with_groups, **kwargs)


@pytest.mark.slow
def test_a_fixed_alpha_arm_is_confirmed_on_a_fixed_budget_end_to_end(ray_local, tmp_path):
    from sweep.datasets import load_data
    from sweep.search import run_sweep
    from sweep.settings import local_settings
    from sweep.spaces import from_dict

    space = from_dict({
        "grid": True, "seeds": 1, "num_samples": 4, "max_epochs": 3, "asha": None,
        "fixed": {"backbone": "small_cnn", "synth_n": 60, "patience": 1},
        "axes": {"augment": ["none", "study"], "shape": ["none", "cgd"]},
        "search": {"alpha": {"log_uniform": [1e-3, 1.0], "when": {"shape": ["cgd"]}}},
        "confirm": {"replicates": 2, "fixed_alphas": [0.01]}})
    s = local_settings(space, str(tmp_path), "fixed", max_concurrent=2)
    data = load_data(space)
    run_sweep(s, data, train_fn=fake_train_with_groups, log=None)
    result = C.confirm(s, data, P.Plan(2), train_fn=fake_train_with_groups, log=None)
    trials = pd.read_parquet(tmp_path / "fixed" / "trials.parquet")
    conf = trials[trials.phase == "confirm"]
    assert len(conf) == 2 * 3 * 2 and sorted(set(conf.arm)) == ["base", "cgd", "cgd@0.01"]
    assert (conf[conf.arm == "cgd@0.01"].alpha == 0.01).all()
    assert (conf.patience == conf.max_epochs).all() and (conf.schedule == "cosine").all()
    assert (conf.scored == "final").all() and (conf.epochs == 3).all()
    assert (conf[conf.arm == "base"].shape_share == 0.0).all()
    assert conf[conf.arm == "cgd@0.01"].shape_share.to_numpy() == pytest.approx(0.002)
    for _, t in conf.iterrows():
        assert math.sqrt(sum(t.test_group_sse) / sum(t.test_group_count)) == \
            pytest.approx(t.scored_test_rmse_px, rel=1e-9)
    assert {("none", "cgd@0.01"), ("study", "cgd@0.01")} <= set(zip(result.table.cell, result.table["shape"]))
def _frozen(tmp_path, plan: "P.Plan", replicates: int, looks: int) -> None:
    saved = {"confirm": {"plan": plan.to_dict(), "replicates": replicates, "looks": looks}}
    (tmp_path / "sweep.json").write_text(json.dumps(saved))


GS = P.Plan(3, 0.05, True, 9)                            # rounds of 3 up to 9, group-sequential


@pytest.mark.parametrize("plan,message", [
    (P.Plan(3, margin=0.1, until_decided=True, max_seeds=12), "cannot change now"),
    (P.Plan(9, margin=0.05), "confirm plan is frozen (group-sequential, rounds of 3 up to 9"),
    (P.Plan(4, 0.05, True, 9), "this run asks for group-sequential, rounds of 4 up to 9"),
    (P.Plan(3, 0.05, True, 12), "this run asks for group-sequential, rounds of 3 up to 12"),
    (P.Plan(3, 0.05, True, 9, open_ended=True), "this run asks for sequence, rounds of 3 up to 9"),
])
def test_a_frozen_group_sequential_plan_refuses_every_change(tmp_path, plan, message):
    _frozen(tmp_path, GS, 6, 2)
    with pytest.raises(P.ConfirmError, match=re.escape(message)):
        P.record_plan(str(tmp_path), plan, [])
    P.record_plan(str(tmp_path), GS, [])                 # the same plan goes on (after a kill)


def test_a_plan_is_frozen_at_the_first_round_even_before_a_look(tmp_path):
    _frozen(tmp_path, GS, 0, 0)
    with pytest.raises(P.ConfirmError, match="confirm plan is frozen"):
        P.record_plan(str(tmp_path), P.Plan(5, 0.05, True, 10), [])


def test_a_fixed_plan_that_looked_cannot_add_replicates(tmp_path):
    _frozen(tmp_path, P.Plan(3), 3, 1)
    with pytest.raises(P.ConfirmError, match="adding replicates after looking would void them"):
        P.record_plan(str(tmp_path), P.Plan(5), [])
    with pytest.raises(P.ConfirmError, match="adding replicates after looking would void them"):
        P.record_plan(str(tmp_path), P.Plan(3, until_decided=True, max_seeds=9), [])
    with pytest.raises(P.ConfirmError, match="α = 0.05.*this run asks for .*α = 0.1"):
        P.record_plan(str(tmp_path), P.Plan(3, alpha=0.1), [])


def test_an_open_ended_plan_may_continue_past_its_maximum(tmp_path):
    """The confidence sequence is valid at any number of looks and its mixture depends on the
    rounds alone: a higher --max-seeds is the one change allowed, and it keeps the sequence."""
    first = P.Plan(3, 0.05, True, 9, open_ended=True)
    _frozen(tmp_path, first, 9, 3)
    longer = P.Plan(3, 0.05, True, 15, open_ended=True)
    P.record_plan(str(tmp_path), longer, [])
    saved = json.loads((tmp_path / "sweep.json").read_text())["confirm"]["plan"]
    assert saved["max_seeds"] == 15 and saved["design"] == "sequence"
    assert longer.rule().cs_horizon == first.rule().cs_horizon == 12
    assert longer.rule().critical(9, 1) == first.rule().critical(9, 1)
    with pytest.raises(P.ConfirmError, match="confirm plan is frozen"):
        P.record_plan(str(tmp_path), P.Plan(5, 0.05, True, 15, open_ended=True), [])


def test_a_plan_reads_back_as_it_was_recorded():
    for plan in (P.Plan(3), GS, P.Plan(3, 0.05, True, 9, open_ended=True)):
        assert P.Plan.from_dict(plan.to_dict()) == plan
    old = {"replicates": 5, "until_decided": True, "max_seeds": 10, "margin": 0.05,
           "sequential": True, "first_round": 5, "max_replicates": 10}   # before the designs
    assert P.Plan.from_dict(old).rule() == V.Rule.from_dict(old)
    assert P.Plan.from_dict(old).design == "sequence"


def test_every_look_is_recorded_with_its_statistics_and_boundary(tmp_path):
    _frozen(tmp_path, GS, 0, 0)
    rule = GS.rule()
    rng = np.random.default_rng(0)
    for n in (3, 6):
        trials = pd.DataFrame([{"cell": "c", "arm": arm, "replicate": r, "outcome": "ok",
                                "alpha": 0.1 if arm == "cgd" else 0.0,
                                V.TEST_RMSE_COLUMN: 2.0 + (0.1 * rng.standard_normal()
                                                           if arm == "cgd" else 0.0)}
                               for r in range(n) for arm in ("base", "cgd")])
        P.record_look(str(tmp_path), n, V.verdict_table(trials, rule))
    saved = json.loads((tmp_path / "sweep.json").read_text())["confirm"]
    assert saved["looks"] == 2 and saved["replicates"] == 6
    log = saved["look_log"]
    assert [look["n"] for look in log] == [3, 6] and len(log[1]["cells"]) == 1
    cell = log[1]["cells"][0]
    assert cell["critical"] == pytest.approx(rule.critical(6, 1))
    assert cell["level"] == 0.95 and cell["verdict"] in V.VERDICTS and cell["d_sd"] > 0
