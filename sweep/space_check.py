"""Validation of a space's YAML form before Ray starts: every value, its type, where it is.

``sweep.spaces`` builds a Space from a mapping; this module (which imports nothing of it, and
holds the names both need: SpaceError, BACKBONE_NAMES, Asha) makes sure that mapping is well
formed first, so that a mistake in a user's file is one line naming the file, the key and what
was expected instead of a Traceback (or, worse, a trial that fails three times under Ray):

    >>> check_raw({"fixed": {"lr": "abc"}}, origin="my.yaml")
    Traceback (most recent call last):
    SpaceError: my.yaml: fixed.lr: expected a number, got 'abc'

    load_yaml("my.yaml")   # a syntax error or a !!python tag -> SpaceError with line and column
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

# fkd_core.config's Literal is the one list of backbone names (torch-free, so building a space
# never imports torch); re-exported here for the spaces.
from fkd_core.config import BACKBONE_NAMES, TrialConfig, config_fields


class SpaceError(ValueError):
    """A space (named or YAML) that cannot be used; the message is one line for users."""


@dataclass(frozen=True)
class Asha:
    """A space's `asha:` block (sweep.scheduler); here so that the check knows its keys."""

    grace_period: int
    reduction_factor: float


_EXPECTED = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
# Top-level keys whose type this module knows; others are left to sweep.spaces.
_TOP_LEVEL = {"name": str, "description": str, "grid": bool, "seeds": int, "num_samples": int,
              "max_epochs": int}


# --- reading the file ---------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a number: YAML 1.1 needs a dot (``1.0e-3``), so a
    learning rate written the usual way would otherwise arrive as the string '1e-3'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(path: Path) -> Any:
    """The file's content (plain YAML only); any problem is one SpaceError line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpaceError(f"{path}: cannot read it ({type(err).__name__}: {err})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        if isinstance(err, yaml.constructor.ConstructorError) and "tag" in str(err.problem):
            tag = str(err.problem).split("'")[1] if "'" in str(err.problem) else "?"
            raise SpaceError(f"{path}: {where}: tag {tag.replace('tag:yaml.org,2002:', '!!')} is "
                             "not allowed; a space is plain YAML (mappings, lists, numbers, "
                             "strings)") from None
        raise SpaceError(f"{path}: {where}: YAML syntax error: {err.problem}") from None
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: YAML error: {' '.join(str(err).split())}") from None


# --- the mapping --------------------------------------------------------------------------

def check_raw(raw: Mapping[str, Any], origin: str) -> None:
    """Check the shape and type of every part of a space's YAML form (see sweep.spaces)."""
    for key, kind in _TOP_LEVEL.items():
        value = raw.get(key)
        if value is not None and not _is(value, kind):
            raise SpaceError(f"{origin}: {key}: expected {_EXPECTED[kind]}, got {value!r}")
    if raw.get("num_samples") is not None and raw["num_samples"] < 1:
        raise SpaceError(f"{origin}: num_samples: expected a positive integer or null, got "
                         f"{raw['num_samples']!r}")
    _check_values(_mapping(raw.get("fixed"), f"{origin}: fixed", "TrialConfig fields"),
                  f"{origin}: fixed")
    for axis, values in _mapping(raw.get("axes"), f"{origin}: axes", "axes").items():
        _check_axis(axis, values, f"{origin}: axes.{axis}")
    for name, spec in _mapping(raw.get("search"), f"{origin}: search", "parameters").items():
        _check_param(name, spec, f"{origin}: search.{name}")
    _check_asha(raw.get("asha"), f"{origin}: asha")


def _mapping(value: Any, where: str, of: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpaceError(f"{where}: expected a mapping of {of}, got {_kind(value)} {_short(value)}")
    return value


def _check_axis(axis: str, values: Any, where: str) -> None:
    if isinstance(values, Mapping):   # named bundles of field values
        for label, bundle in values.items():
            _check_values(_mapping(bundle, f"{where}.{label}", "TrialConfig fields"), f"{where}.{label}")
        return
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where}: expected a non-empty list of values or a mapping of bundles, "
                         f"got {_short(values)}")
    for i, value in enumerate(values):
        _check_value(axis, value, f"{where}[{i}]")


def _check_param(name: str, spec: Any, where: str) -> None:
    shape = "{log_uniform: [low, high]} or {uniform: [low, high]}, optionally with when: {...}"
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{where}: expected {shape}, got {_short(spec)}")
    kinds = [k for k in ("log_uniform", "uniform") if k in spec]
    extra = sorted(set(spec) - {"log_uniform", "uniform", "when"})
    if len(kinds) != 1 or extra:
        raise SpaceError(f"{where}: expected {shape}, got keys {sorted(spec)}")
    bounds = spec[kinds[0]]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is(b, float) for b in bounds)):
        raise SpaceError(f"{where}.{kinds[0]}: expected [low, high] (two numbers), got {_short(bounds)}")
    kind = config_fields().get(name)
    if kind is not None and kind is not float:
        raise SpaceError(f"{where}: only number fields can be searched ({name} is "
                         f"{_EXPECTED[kind]}); make it an axis")
    for field, allowed in _mapping(spec.get("when"), f"{where}.when", "field values").items():
        for i, value in enumerate(allowed if isinstance(allowed, list) else [allowed]):
            _check_value(field, value, f"{where}.when.{field}[{i}]")


def _check_asha(asha: Any, where: str) -> None:
    if asha is None:
        return
    known = {f.name for f in Asha.__dataclass_fields__.values()}
    asha = _mapping(asha, where, f"{sorted(known)}")
    missing, unknown = sorted({"grace_period", "reduction_factor"} - set(asha)), sorted(set(asha) - known)
    if missing or unknown:
        raise SpaceError(f"{where}: expected null or {{grace_period: N, reduction_factor: R}}; "
                         + (f"missing {missing}" if missing else f"unknown keys {unknown}"))
    if not (_is(asha["grace_period"], int) and asha["grace_period"] >= 1):
        raise SpaceError(f"{where}.grace_period: expected a positive integer, got {asha['grace_period']!r}")
    if not (_is(asha["reduction_factor"], float) and asha["reduction_factor"] > 1):
        raise SpaceError(f"{where}.reduction_factor: expected a number > 1, got {asha['reduction_factor']!r}")


def _check_values(values: Mapping[str, Any], where: str) -> None:
    for name, value in values.items():
        _check_value(name, value, f"{where}.{name}")


def _check_value(name: str, value: Any, where: str) -> None:
    """One value of a TrialConfig field: its type, its allowed names. Ranges that depend on
    other fields (brightness_low <= brightness_high) are TrialConfig's, checked per cell."""
    kind = config_fields().get(name)
    if kind is None:
        return   # an unknown field or an axis of bundles: sweep.spaces names it
    if not _is(value, kind):
        raise SpaceError(f"{where}: expected {_EXPECTED[kind]}, got {_short(value)}")
    allowed = _allowed(name)
    if allowed is not None and value not in allowed:
        raise SpaceError(f"{where}: {value!r} is not one of {list(allowed)}")


def _allowed(name: str) -> tuple[str, ...] | None:
    """The names a field accepts: its Literal values, or the registered backbones."""
    if name == "backbone":
        return BACKBONE_NAMES
    hint = typing.get_type_hints(TrialConfig)[name]
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _kind(value: Any) -> str:
    return {list: "a list", dict: "a mapping", str: "a string"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_search_bounds(space: Any, origin: str) -> None:
    """Every cell's TrialConfig at the *high* end of each searched range too (sweep.spaces
    checks the low end): ``flip_p: {uniform: [0.5, 2]}`` fails here, not in a trial."""
    high = {k: p.high for k, p in space.search.items()}
    for picks in space.combos():
        try:
            TrialConfig(**space.fields({**picks, **high}, seed=0))
        except (TypeError, ValueError) as err:
            raise SpaceError(f"{origin}: search at its high end: {err}") from None
