"""Named training recipes: small YAML files of TrialConfig fields in fkd_core/recipes/.

    python -m fkd_core.train --recipe best-cpu --data ../shared/data/fkd-yt15/training.csv.gz \\
        --out runs/best                      # then: python -m fkd_core.predict --checkpoint runs/best/best.pt
    python -m fkd_core.train --recipe best-cpu --epochs 10 --head regression   # flags override it
    python -m fkd_core.train --recipe my-recipe.yaml ...                       # or a file

    >>> fields = load_recipe("best-cpu")          # {"backbone": "res_cnn", ...}
    >>> TrialConfig(**fields)

A recipe holds only TrialConfig fields (a YAML mapping; comments say why each value); fields it
leaves out keep TrialConfig's defaults. Every command-line flag given overrides the recipe. The
sweep's ``tuned`` space (sweep/spaces/tuned.yaml) starts from a recipe and searches around it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from fkd_core.config import TrialConfig

RECIPE_DIR = Path(__file__).with_name("recipes")

# Flags of fkd_core.train whose names differ from the TrialConfig fields they set.
_FLAG_FIELDS: dict[str, tuple[str, ...]] = {
    "epochs": ("max_epochs",), "loss": ("loss", "shape", "alpha"), "compile": ("compile", "compile_mode"),
}
# Flags this module adds (default None = not given): TrialConfig field -> type.
_NEW_FLAGS: dict[str, type] = {
    "width": float, "depth": int, "head": str, "heatmap_size": int, "optimizer": str,
    "weight_decay": float, "schedule": str, "warmup_epochs": int, "ema_decay": float,
}


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """A recipe's file: a name in fkd_core/recipes/, or a .yaml path."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(f"{path}: no such recipe file")
        return path
    path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown recipe {name_or_path!r}; valid: {recipe_names()} or a .yaml file")
    return path


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """TrialConfig fields of a recipe, typed and validated; errors name the file and the key."""
    path = recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", -1) + 1
        raise ValueError(f"{path}: line {line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of TrialConfig fields, got {type(raw).__name__}")
    defaults = TrialConfig()
    fields = {}
    for key, value in raw.items():
        if key not in defaults.to_dict():
            raise ValueError(f"{path}: key {key!r} is not a TrialConfig field (see fkd_core/config.py)")
        fields[key] = _typed(path, key, value, type(getattr(defaults, key)))
    try:
        TrialConfig(**fields)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return fields


def _typed(path: Path, key: str, value: Any, kind: type) -> Any:
    """value as the field's type: YAML reads 1e-3 as a string and 2 as an int where floats go."""
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise TypeError
        return kind(value) if kind in (int, float) else str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: key {key!r}: expected {kind.__name__}, got {value!r}") from None


def dump_recipe(cfg: TrialConfig, path: str | Path, *, keys: Sequence[str] | None = None,
                comment: str = "") -> Path:
    """Write cfg's fields (those that differ from TrialConfig's defaults, or the given keys)."""
    defaults = TrialConfig().to_dict()
    values = cfg.to_dict()
    chosen = {k: values[k] for k in (keys or [k for k in values if values[k] != defaults[k]])}
    text = "".join(f"# {line}\n" for line in comment.splitlines()) + yaml.safe_dump(chosen, sort_keys=False)
    path = Path(path)
    path.write_text(text)
    return path


# --- command line (fkd_core.train) -------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--recipe and the flags of the accuracy knobs (None = not given: the recipe/default holds)."""
    p.add_argument("--recipe", help=f"a named recipe ({', '.join(recipe_names())}) or a YAML file "
                                    "of TrialConfig fields; flags given override it")
    p.add_argument("--width", type=float, help="width multiplier (small_cnn, res_cnn)")
    p.add_argument("--depth", type=int, help="blocks per stage (small_cnn, res_cnn)")
    p.add_argument("--head", help="regression | heatmap | unet (unet: small_cnn, res_cnn)")
    p.add_argument("--heatmap-size", type=int, help="heatmap side, a divisor of the input (24)")
    p.add_argument("--optimizer", help="adam | adamw | sgd")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", help="plateau | cosine | onecycle")
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--ema-decay", type=float, help="average the weights every step with this decay "
                                                   "(e.g. 0.998); validation and best.pt use it; 0: off")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="validate with flip averaging (recorded in the checkpoint; predict uses it)")


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations of the flags present on the command line (argparse fills a default only
    where the namespace has no value yet, so a pre-filled marker survives where none was given)."""
    marker = object()
    ns = argparse.Namespace(**{a.dest: marker for a in parser._actions if a.dest != "help"})
    parser.parse_args(sys.argv[1:] if argv is None else argv, namespace=ns)
    return {k for k, v in vars(ns).items() if v is not marker}


def resolve(args: argparse.Namespace, given: set[str],
            from_flags: Callable[[argparse.Namespace], TrialConfig]) -> TrialConfig:
    """The run's TrialConfig: the recipe (if any), then every flag given on top of it."""
    flags = from_flags(args)
    new = {f: getattr(args, f) for f in (*_NEW_FLAGS, "tta_flip") if getattr(args, f) is not None}
    if args.recipe is None:
        return flags.replace(**new)
    fields = load_recipe(args.recipe)
    names = {f.name for f in dataclasses.fields(TrialConfig)}
    for dest in given:
        fields.update({f: getattr(flags, f) for f in _FLAG_FIELDS.get(dest, (dest,)) if f in names})
    return TrialConfig(**{**fields, **new})
