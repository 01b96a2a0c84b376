"""Recipes: files round-trip to TrialConfig, flags override them, bad recipes are one line + exit 2,
and the `tuned` space starts from the best CPU recipe."""
from __future__ import annotations

import pytest

from fkd_core import recipes, train as train_module
from fkd_core.config import TrialConfig
from fkd_core.recipes import dump_recipe, load_recipe, recipe_names


def _cfg(argv: list[str]) -> TrialConfig:
    args = train_module._parser().parse_args(argv)
    return recipes.resolve(args, recipes.given_flags(train_module._parser(), argv),
                           train_module.config_from_args)


def test_a_recipe_file_round_trips_to_the_same_trial_config(tmp_path):
    cfg = TrialConfig(backbone="res_cnn", head="heatmap", heatmap_size=12, width=1.5, depth=2,
                      optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="onecycle",
                      augment="robust", blur_sigma=1.0, tta_flip=True, max_epochs=40, shape="cgd", alpha=0.1)
    path = dump_recipe(cfg, tmp_path / "mine.yaml", comment="a test recipe\nsecond line")
    assert path.read_text().startswith("# a test recipe\n# second line\n")
    assert TrialConfig(**load_recipe(str(path))) == cfg
    assert "data" not in load_recipe(str(path))        # defaults are left out of the file


def test_yaml_numbers_are_typed_by_the_field(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("lr: 1e-3\nwidth: 2\nmax_epochs: 10\n")   # YAML 1.1 reads 1e-3 as a string
    fields = load_recipe(str(path))
    assert fields == {"lr": 0.001, "width": 2.0, "max_epochs": 10}
    assert isinstance(fields["width"], float)


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_is_a_valid_trial_config(name):
    assert TrialConfig(**load_recipe(name)).max_epochs >= 1


def test_best_cpu_is_shipped_and_flags_given_override_it():
    base = TrialConfig(**load_recipe("best-cpu"))
    cfg = _cfg(["--recipe", "best-cpu", "--epochs", "3", "--head", "regression", "--lr", "0.001",
                "--no-tta-flip"])
    # --lr 0.001 equals the CLI default and still wins over the recipe's value.
    assert (cfg.max_epochs, cfg.head, cfg.lr, cfg.tta_flip) == (3, "regression", 0.001, False)
    assert cfg.replace(max_epochs=base.max_epochs, head=base.head, lr=base.lr, tta_flip=base.tta_flip) == base
    assert _cfg(["--recipe", "best-cpu"]) == base
    assert _cfg(["--recipe", "best-cpu", "--loss", "cgd"]).replace(shape="none", alpha=0.0) == base


def test_without_a_recipe_the_new_flags_set_their_fields():
    cfg = _cfg(["--width", "0.5", "--depth", "2", "--schedule", "cosine", "--warmup-epochs", "2",
                "--optimizer", "adamw", "--weight-decay", "0.01", "--heatmap-size", "12", "--tta-flip"])
    assert (cfg.width, cfg.depth, cfg.schedule, cfg.warmup_epochs, cfg.optimizer, cfg.weight_decay,
            cfg.heatmap_size, cfg.tta_flip) == (0.5, 2, "cosine", 2, "adamw", 0.01, 12, True)


@pytest.mark.parametrize("argv, expected", [
    (["--recipe", "fastest"], "unknown recipe 'fastest'; valid: ['best-cpu'"),
    (["--recipe", "{bad}"], "key 'learning_rate' is not a TrialConfig field"),
    (["--recipe", "{typed}"], "key 'tta_flip': expected bool, got 'yes please'"),
    (["--recipe", "/nonexistent/r.yaml"], "/nonexistent/r.yaml: no such recipe file"),
    (["--width", "0"], "TrialConfig.width must be > 0 (a width multiplier), got 0"),
    (["--recipe", "best-cpu", "--width", "-1"], "TrialConfig.width must be > 0"),
    (["--head", "heatmap", "--heatmap-size", "25"], "heatmap_size must be a divisor of the input size 96"),
    (["--head", "dense"], "TrialConfig.head='dense'; valid: ['regression', 'heatmap', 'unet']"),
    (["--backbone", "resnet18", "--head", "unet"], '"unet" needs the skip maps of small_cnn or res_cnn'),
    (["--recipe", "best-cpu", "--ema-decay", "1"], "TrialConfig.ema_decay must be in [0, 1) (0 = off), got 1"),
])
def test_bad_recipes_and_knobs_are_one_line_and_exit_2(argv, expected, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("backbone: res_cnn\nlearning_rate: 0.1\n")
    (tmp_path / "typed.yaml").write_text("tta_flip: yes please\n")
    argv = [str(tmp_path / "bad.yaml") if a == "{bad}" else str(tmp_path / "typed.yaml") if a == "{typed}"
            else a for a in argv]
    code = train_module.main(argv + ["--synth-n", "20", "--epochs", "1", "--device", "cpu",
                                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "run").exists()            # failed before any training


def test_tuned_space_searches_around_the_best_recipe():
    from sweep.spaces import get_space

    space = get_space("sweep/spaces/tuned.yaml")
    best = load_recipe("best-cpu")
    assert {k: space.fixed[k] for k in best if k in space.fixed} == {k: v for k, v in best.items()
                                                                    if k in space.fixed}
    assert set(space.axes["head"]) == {"regression", "heatmap"}
    assert {"lr", "weight_decay"} <= set(space.search)
    cells = space.cells()
    assert all(TrialConfig(**space.fields(c, seed=0)).augment == best["augment"] for c in cells)
