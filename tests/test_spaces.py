"""sweep.spaces: named spaces, YAML files, the define-by-run sampler."""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml

from fkd_core.config import TrialConfig
from sweep.space_check import BACKBONE_NAMES, SpaceError
from sweep.spaces import SPACES, Sampler, data_key, from_dict, get_space

EXAMPLES = sorted(Path(__file__).resolve().parents[1].glob("sweep/spaces/*.yaml"))


def _configs(space) -> list[TrialConfig]:
    """TrialConfigs of the grid cells, seeds as the sampler assigns them (number % seeds)."""
    return [TrialConfig(**space.fields(cell, seed=i % space.seeds))
            for i, cell in enumerate(space.cells())]


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_named_space_builds_valid_trials(name):
    space = get_space(name)
    assert space.trials >= 1
    for cfg in _configs(space):
        assert cfg.max_epochs == space.max_epochs
    assert from_dict(space.to_dict()) == space


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_yaml_spaces_load(path):
    assert get_space(str(path)).cells()


def test_backbone_names_match_the_model_registry():
    from fkd_core.models import BACKBONES

    assert sorted(BACKBONE_NAMES) == sorted(BACKBONES)


@pytest.mark.parametrize("name,cells", [("quick", 4), ("study", 24), ("reproduce", 12),
                                        ("rigidity", 18)])
def test_grid_sizes(name, cells):
    assert len(get_space(name).cells()) == cells


def test_study_grid_is_paired_across_losses():
    cfgs = _configs(get_space("study"))
    pairs = Counter((c.backbone, c.augment, c.seed, c.split_seed) for c in cfgs)
    assert set(pairs.values()) == {2}            # every cell x seed has MSE and MSE + CGD
    assert {c.loss_label for c in cfgs} == {"mse", "mse+0.01*cgd"}
    assert {c.seed for c in cfgs} == {0, 1, 2} and {c.split_seed for c in cfgs} == {0}
    assert {c.backbone for c in cfgs} == {"resnet50", "densenet121"}


def test_reproduce_sets_the_study_defects_against_the_corrected_protocol():
    cfgs = _configs(get_space("reproduce"))
    defects = [c for c in cfgs if c.split == "tail"]
    corrected = [c for c in cfgs if c.split == "shuffle"]
    assert len(defects) == len(corrected) == 6
    assert {(c.missing, c.augment) for c in defects} == {("ffill", "study_exact")}
    assert {(c.missing, c.augment) for c in corrected} == {("mask", "study")}
    assert {c.loss_label for c in defects} == {"mse", "mse+0.01*seed_cgd"}
    assert {c.loss_label for c in corrected} == {"mse", "mse+0.1*cgd"}
    assert all(c.shape == "none" for c in cfgs if c.loss_label == "mse")


def test_rigidity_needs_one_data_set_per_pose():
    space = get_space("rigidity")
    assert sorted(c.synth_pose for c in space.data_configs()) == [0.0, 1.0, 2.0]
    assert len({data_key(c) for c in _configs(space)}) == 3


def _study(space, seed=0):
    return optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))


def test_sampler_suggests_alpha_only_when_a_shape_term_is_on():
    space = get_space("full")
    study, sampler = _study(space), Sampler(space)
    for _ in range(40):
        trial = study.ask()
        cfg = TrialConfig(**sampler(trial)["cfg"])
        if cfg.shape == "none":
            assert "alpha" not in trial.params and cfg.alpha == 0.0
        else:
            assert 1e-3 <= trial.params["alpha"] <= 1.0 and cfg.alpha == trial.params["alpha"]
        assert cfg.seed == trial.number % space.seeds
        study.tell(trial, 1.0)


def test_enqueued_cells_are_run_as_given_and_tpe_is_seeded():
    space = get_space("quick").with_overrides(seeds=2)

    def draw(seed):
        study = _study(space, seed)
        for cell in space.cells():
            study.enqueue_trial(cell)
        out = []
        for _ in space.cells():
            trial = study.ask()
            out.append(Sampler(space)(trial)["cfg"])
            study.tell(trial, 1.0)
        return out

    first = draw(0)
    assert first == draw(0)                                     # reproducible
    assert [c["alpha"] for c in first if "alpha" in c] != \
        [c["alpha"] for c in draw(1) if "alpha" in c]           # the seed matters
    for cell, cfg in zip(space.cells(), first):
        assert {k: cfg[k] for k in cell} == cell
    assert [c["seed"] for c in first] == [0] * len(space.combos()) + [1] * len(space.combos())


def _search_configs(space, seed=0):
    """The cfg of every trial of a sweep: its points enqueued as _searcher does, then asked."""
    study = _study(space, seed)
    for point in space.points():
        study.enqueue_trial(point)
    out = []
    for _ in range(space.trials):
        trial = study.ask()
        out.append(Sampler(space)(trial)["cfg"])
        study.tell(trial, 1.0)
    return out


def test_every_arm_of_a_cell_gets_the_same_trials_and_seeds():
    yt15 = get_space(str(Path(__file__).resolve().parents[1] / "sweep/spaces/fkd-yt15.yaml"))
    shapes = [c["shape"] for c in _search_configs(yt15)]
    assert (shapes.count("none"), shapes.count("cgd")) == (4, 4)    # was 5 and 3 (TPE picked)
    quick = get_space("quick").with_overrides(seeds=2)
    by_combo: dict = {}
    for cfg in _search_configs(quick):
        by_combo.setdefault((cfg["augment"], cfg["shape"]), []).append(cfg["seed"])
    assert len(by_combo) == 4 and all(sorted(v) == [0, 0, 1, 1] for v in by_combo.values())


@pytest.mark.parametrize("overrides,message", [
    ({"seeds": 5}, "space quick: 16 trials cannot give each of the 4 cell x arm combinations x 5 seeds "
                   "a trial: that needs 20 (--num-samples 20, or fewer --seeds)"),
    ({"num_samples": 6}, "space quick: 6 trials cannot be shared equally by the 4 cell x arm "
                         "combinations: use --num-samples 4 or 8"),
])
def test_a_plan_that_starves_a_cell_or_an_arm_is_refused_in_one_line(overrides, message):
    with pytest.raises(SpaceError) as err:
        get_space("quick").with_overrides(**overrides)
    assert str(err.value) == message


def test_overrides_fix_a_field_and_drop_its_axis():
    space = get_space("quick").with_overrides(fixed={"backbone": "small_cnn", "data": "x.csv"},
                                              max_epochs=3, seeds=2, num_samples=8)
    assert "backbone" not in space.axes and space.trials == 8
    cfgs = _configs(space)
    assert {c.backbone for c in cfgs} == {"small_cnn"} and {c.max_epochs for c in cfgs} == {3}
    assert {c.data for c in cfgs} == {"x.csv"}


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in get_space("quick").to_dict().items()
                                    if k != "name"}))
    assert get_space(str(path)) == dataclasses.replace(get_space("quick"), name="mine")


@pytest.mark.parametrize("raw,message", [
    ({"axes": {"backbone": ["small_cnn"]}, "colour": 1}, "unknown keys ['colour']"),
    ({"axes": {"bogus_field": [1, 2]}}, "unknown TrialConfig fields ['bogus_field']"),
    ({"fixed": {"seed": 3}}, "seeds come from `seeds`"),
    ({"axes": {"augment": ["none", "sideways"]}}, "axes.augment[1]: 'sideways' is not one of"),
    ({"search": {"alpha": {"log_uniform": [0, 1]}}}, "0 < low < high"),
    ({"search": {"synth_pose": {"uniform": [0, 2]}}}, "data fields must be axes or fixed"),
    ({"seeds": 0}, "seeds must be a positive integer"),
])
def test_bad_spaces_fail_with_one_line_naming_the_file(raw, message):
    with pytest.raises(SpaceError) as err:
        from_dict(raw, origin="my.yaml")
    assert message in str(err.value) and str(err.value).startswith("my.yaml")
    assert "\n" not in str(err.value)


def test_unknown_space_name_lists_the_valid_ones():
    with pytest.raises(SpaceError, match="valid: \\['full', 'quick', 'reproduce'"):
        get_space("quik")


def test_alpha_search_is_log_uniform_over_the_range():
    space = get_space("quick")
    param = space.search["alpha"]
    assert param.log and math.isclose(param.low, 1e-3) and param.high == 1.0
    assert not param.applies({"shape": "none"}) and param.applies({"shape": "cgd"})


def test_default_space_trains_cpu_backbones_only_and_confirms():
    """make sweep must answer in < 10 minutes on 2 cores: resnet18 and larger are GPU-sized."""
    quick = get_space("quick")
    backbones = {quick.fixed.get("backbone")} | set(quick.axes.get("backbone", {}))
    assert backbones - {None} == {"small_cnn"}
    assert quick.confirm == {"replicates": 3, "until_decided": True, "max_seeds": 9, "margin": 0.05}
    assert quick.trials // len(quick.combos()) >= 4     # ASHA per cell x arm needs peers


@pytest.mark.parametrize("confirm,message", [
    ({"replicate": 3}, "expected a mapping with replicates"),
    ({"replicates": 3, "seeds": 2}, "confirm.seeds: unknown key"),
    ({"replicates": "3"}, "confirm.replicates: expected int"),
    ({"replicates": 3, "scored": "best_test"}, r"confirm.scored: expected one of \['final', 'best_val'\], got 'best_test'"),
    ({"replicates": 3, "fixed_alphas": 0.01}, "confirm.fixed_alphas: expected list, got 0.01"),
    ({"replicates": 3, "fixed_alphas": [0.01, -1]}, "confirm.fixed_alphas: expected a list of alphas > 0, got -1"),
    ({"replicates": 3, "fixed_alphas": ["x"]}, "confirm.fixed_alphas: expected a list of alphas > 0, got 'x'"),
])
def test_bad_confirm_settings_name_the_key(confirm, message):
    with pytest.raises(SpaceError, match=message):
        from_dict({"axes": {}, "confirm": confirm}, origin="mine.yaml")


def test_a_command_line_budget_replaces_a_cells_own_epochs():
    yt15 = get_space(str(Path(__file__).resolve().parents[1] / "sweep/spaces/fkd-yt15.yaml"))
    assert [yt15.fields(c, 0)["max_epochs"] for c in yt15.combos()] == [40, 40, 50, 50]
    short = yt15.with_overrides(max_epochs=2, fixed={"data": "x.csv"})
    assert [short.fields(c, 0)["max_epochs"] for c in short.combos()] == [2, 2, 2, 2]
    assert [short.fields(c, 0)["head"] for c in short.combos()] == ["regression"] * 2 + ["heatmap"] * 2
    # a fixed field replaces the same field inside a bundle, not only an axis of that name
    bundled = from_dict({"axes": {"model": {"a": {"head": "heatmap", "width": 2.0},
                                            "b": {"head": "regression", "width": 0.5}}}})
    pinned = bundled.with_overrides(fixed={"head": "unet"})
    assert [pinned.fields(c, 0)["head"] for c in pinned.combos()] == ["unet", "unet"]
    assert [pinned.fields(c, 0)["width"] for c in pinned.combos()] == [2.0, 0.5]


def test_fkd_yt15_confirms_the_studys_alpha_and_scores_the_final_weights():
    space = get_space(str(Path(__file__).resolve().parents[1] / "sweep/spaces/fkd-yt15.yaml"))
    assert space.confirm["fixed_alphas"] == [0.01] and space.confirm["scored"] == "final"
    assert from_dict(space.to_dict()).confirm == space.confirm


# --- every value checked before Ray starts (issue 13, items 6 and 7) ---------------------------

@pytest.mark.parametrize("text,message", [
    ("fixed: [1, 2]\n", "fixed: expected a mapping of TrialConfig fields, got a list [1, 2]"),
    ("asha: {grace_period: x, reduction_factor: 2}\n",
     "asha.grace_period: expected a positive integer, got 'x'"),
    ("asha: {grace_period: 2}\n", "asha: expected null or {grace_period: N, reduction_factor: R}; "
                                  "missing ['reduction_factor']"),
    ("search: {lr: 5}\n", "search.lr: expected {log_uniform: [low, high]} or {uniform: [low, high]}"),
    ("search: {lr: {log_uniform: [1e-4, big]}}\n", "search.lr.log_uniform: expected [low, high] (two numbers)"),
    ("search: {batch_size: {uniform: [8, 64]}}\n", "search.batch_size: only number fields can be searched"),
    ("search: {flip_p: {uniform: [0.5, 2]}}\n", "search at its high end: TrialConfig.flip_p must be in [0, 1]"),
    ("fixed: {lr: 1e-3\naxes: [\n", "line 2, column 5: YAML syntax error"),
    ("fixed: !!python/object:os.system {}\n", "line 1, column 8: tag !!python/object:os.system is not allowed"),
    ("fixed: {lr: abc}\n", "fixed.lr: expected a number, got 'abc'"),
    ("fixed: {pretrained: 1}\n", "fixed.pretrained: expected true or false, got 1"),
    ("fixed: {backbone: vgg16}\n", "fixed.backbone: 'vgg16' is not one of ['resnet50', 'densenet121'"),
    ("axes: {backbone: [small_cnn, nope]}\n", "axes.backbone[1]: 'nope' is not one of"),
    ("axes: {objective: {mse: 5}}\n", "axes.objective.mse: expected a mapping of TrialConfig fields"),
    ("axes: {augment: none}\n", "axes.augment: expected a non-empty list of values or a mapping"),
    ("search: {alpha: {uniform: [0, 1], when: {shape: [cgdd]}}}\n",
     "search.alpha.when.shape[0]: 'cgdd' is not one of ['none', 'cgd', 'seed_cgd']"),
    ("num_samples: many\n", "num_samples: expected an integer, got 'many'"),
    ("num_samples: 0\n", "num_samples: expected a positive integer or null, got 0"),
    ("grid: maybe\n", "grid: expected true or false, got 'maybe'"),
])
def test_malformed_yaml_is_one_line_naming_file_key_and_expected_type(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as err:
        get_space(str(path))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_reads_exponent_numbers_without_a_dot(tmp_path):
    path = tmp_path / "mine.yaml"     # YAML 1.1 would read 1e-3 as the string '1e-3'
    path.write_text("fixed: {lr: 1e-3}\nsearch: {alpha: {log_uniform: [1e-3, 1]}}\n")
    space = get_space(str(path))
    assert space.fixed["lr"] == 0.001 and space.search["alpha"].low == 0.001
