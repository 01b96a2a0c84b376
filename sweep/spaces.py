"""Named search spaces, and user YAML files of the same form.

A space is a small designed experiment plus an optional search:

- ``fixed``: TrialConfig values shared by every trial.
- ``axes``: categorical factors. A list gives values of the field named by the axis
  (``backbone: [small_cnn, resnet18]``); a mapping gives named *bundles* of field values
  (``protocol: {corrected: {split: shuffle, missing: mask}}``). Bundles are applied in axis order,
  so a later axis overrides an earlier one.
- ``seeds``: how many training seeds each cell is repeated over. The split seed stays fixed, so
  trials of the same cell and seed differ only in the factor being compared (paired comparisons).
- ``search``: continuous parameters that Optuna's seeded TPE samples, optionally only ``when``
  other fields take given values (alpha exists only when a shape term is on).
- ``grid``: true fixes the axes of every trial as an enqueued Optuna point (``points_to_evaluate``,
  Space.points): the axis combinations (cell x arm) in turn, so every arm of a cell gets the same
  number of trials and the same seeds, and a designed experiment is reproduced exactly while its
  trials still live in the Optuna study; ``search`` parameters are still sampled by TPE. A grid
  whose trials cannot give every combination x seed a trial, or every combination the same
  number, is refused (Space.check_balance). False lets TPE pick the axes too.
- ``recipe``: a training recipe (fkd_core/recipes/NAME.yaml or a file) whose fields are fixed
  under the space's own ``fixed`` (``tuned.yaml`` searches around ``best-cpu``).
- ``asha``: grace period and reduction factor of ASHA on val_rmse_px, or null to run every trial
  to ``max_epochs`` (designed comparisons need equal budgets, so the grids use null). ASHA keeps
  separate rungs per cell x arm (sweep.scheduler).
- ``confirm``: the confirm phase run after the search unless the command line says otherwise
  (sweep.confirm): ``{replicates: N, until_decided: bool, max_seeds: M, margin: px}``, or absent;
  ``scored: final | best_val`` (what a confirm trial's test score is read from, default final)
  and ``fixed_alphas: [0.01]`` (an extra arm per shape term at each α, beside the tuned one).

Why grids go through Optuna rather than ``tune.grid_search``: one code path for every space, one
Optuna study per sweep (optuna-dashboard shows all of them), and a grid may still search alpha.

The trial seed comes from the trial number (Space.seed_of), never from TPE: on a grid, trial n
runs combination n % C with seed (n // C) % seeds (C combinations), so the arms of a cell are
paired seed by seed; without a grid, n % seeds.

    >>> space = get_space("quick")
    >>> len(space.cells())            # 2 augmentations x 2 losses x 1 seed (small_cnn only)
    4
    >>> len(space.points())           # its 16 trials: each combination 4 times
    16
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, get_args


from fkd_core.config import Scored, TrialConfig, config_fields
from fkd_core.recipes import load_recipe
from sweep.space_check import (BACKBONE_NAMES, Asha, SpaceError, check_raw, check_search_bounds,
                               load_yaml)

_SHAPE_ON = ["cgd", "seed_cgd"]


# The default (`make sweep`): a useful answer in < 10 minutes on 2 CPU cores. CPU backbones only:
# resnet18 trains ~11 images/s on one core here (its trials took 90-114 s and learned least), so it
# lives in the GPU-sized spaces. small_cnn: 4 search trials per cell x arm (ASHA has peers to
# rank), then the confirm phase in rounds of 3 paired replicates until decided or 9.
QUICK: dict[str, Any] = {
    "description": "CPU-sized: small_cnn x augmentation none/study x MSE vs MSE + alpha*CGD; lr "
                   "and alpha searched (TPE), ASHA per cell x arm; then confirm on paired "
                   "replicates, verdicts on the test split.",
    "grid": True,
    "seeds": 1,
    "num_samples": 16,
    "max_epochs": 10,
    "asha": {"grace_period": 2, "reduction_factor": 2},
    "fixed": {"data": "synthetic", "synth_n": 1000, "patience": 10, "backbone": "small_cnn"},
    "axes": {"augment": ["none", "study"], "shape": ["none", "cgd"]},
    "search": {"alpha": {"log_uniform": [1e-3, 1.0], "when": {"shape": _SHAPE_ON}},
               "lr": {"log_uniform": [3e-4, 3e-3]}},
    "confirm": {"replicates": 3, "until_decided": True, "max_seeds": 9, "margin": 0.05},
}

SPACES: dict[str, dict[str, Any]] = {
    "quick": QUICK,
    "study": {
        "description": "The study's grid: resnet50/densenet121 x {MSE, MSE + 0.01*CGD} x "
                       "augmentation {none, study}, paired seeds and splits, full budget.",
        "grid": True,
        "seeds": 3,
        "max_epochs": 200,   # the study's recipe (early stopping, patience 20, ends it sooner)
        "asha": None,
        # pretrained stays False because offline machines have no ImageNet weights cached; a
        # YAML copy of this space with `pretrained: true` repeats the study's initialisation.
        "fixed": {"pretrained": False},
        "axes": {"backbone": ["resnet50", "densenet121"], "augment": ["none", "study"],
                 "objective": {"mse": {"shape": "none", "alpha": 0.0},
                               "mse+0.01*cgd": {"shape": "cgd", "alpha": 0.01}}},
        "search": {},
    },
    "full": {
        "description": "Everything: every backbone, base loss, shape term, alpha, augmentation, "
                       "learning rate and missing policy, searched by TPE with ASHA.",
        "grid": False,
        "seeds": 3,
        "num_samples": 64,
        "max_epochs": 60,
        "asha": {"grace_period": 4, "reduction_factor": 3},
        "fixed": {},
        "axes": {"backbone": list(BACKBONE_NAMES), "loss": ["mse", "wing", "soft_wing"],
                 "shape": ["none", "cgd", "seed_cgd"], "augment": ["none", "study", "full"],
                 "missing": ["mask", "ffill"]},
        "search": {"alpha": {"log_uniform": [1e-3, 1.0], "when": {"shape": _SHAPE_ON}},
                   "lr": {"log_uniform": [1e-4, 3e-3]}},
    },
    "reproduce": {
        "description": "The study's defects (seed_cgd, forward fill, its rotation formula, tail "
                       "split) vs the corrected protocol, each with MSE vs MSE + CGD, paired seeds.",
        "grid": True,
        "seeds": 3,
        "max_epochs": 30,
        "asha": None,
        "fixed": {"backbone": "small_cnn"},
        "axes": {
            "protocol": {
                "study_defects": {"missing": "ffill", "augment": "study_exact", "split": "tail",
                                  "shape": "seed_cgd", "alpha": 0.01},
                # Per-face CGD is a mean in pixels, ~1e6 times smaller than the study's batch sum,
                # so its alpha is 0.1 (about a tenth of the MSE's scale), not the study's 0.01.
                "corrected": {"missing": "mask", "augment": "study", "split": "shuffle",
                              "shape": "cgd", "alpha": 0.1},
            },
            # Overrides the protocol's shape term for the MSE arm (later axes win).
            "objective": {"mse": {"shape": "none", "alpha": 0.0}, "mse+cgd": {}},
        },
        "search": {},
    },
    "rigidity": {
        "description": "Synthetic faces with pose variation 0 (rigid) / 1 / 2 x MSE vs MSE + "
                       "0.1*CGD: does CGD help rigid structures but not posed faces?",
        "grid": True,
        "seeds": 3,
        "max_epochs": 20,
        "asha": None,
        "fixed": {"data": "synthetic", "synth_n": 2000, "backbone": "small_cnn"},
        "axes": {"synth_pose": [0.0, 1.0, 2.0],
                 "objective": {"mse": {"shape": "none", "alpha": 0.0},
                               "mse+0.1*cgd": {"shape": "cgd", "alpha": 0.1}}},
        "search": {},
    },
}

_KEYS = ("name", "description", "grid", "seeds", "num_samples", "max_epochs", "asha", "fixed",
         "axes", "search", "confirm", "recipe")
_CONFIRM_KEYS = {"replicates": int, "until_decided": bool, "max_seeds": int, "margin": float,
                 "open_ended": bool, "scored": str, "fixed_alphas": list}
# Confirm keys that shape the arms and trials (sweep.confirm), not the decision plan.
ARM_KEYS = ("scored", "fixed_alphas")
_DATA_FIELDS = ("data", "synth_n", "synth_seed", "synth_pose")


@dataclass(frozen=True)
class Param:
    """A continuous parameter sampled by TPE, optionally only when other fields match."""

    low: float
    high: float
    log: bool
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def applies(self, fields: Mapping[str, Any]) -> bool:
        return all(fields.get(k, _default(k)) in allowed for k, allowed in self.when.items())


@dataclass(frozen=True)
class Space:
    """A resolved search space; see the module docstring for the meaning of each part."""

    name: str
    description: str
    fixed: Mapping[str, Any]
    axes: Mapping[str, Mapping[Any, Mapping[str, Any]]]   # axis -> label -> field values
    search: Mapping[str, Param]
    seeds: int
    max_epochs: int
    grid: bool
    asha: Asha | None
    num_samples: int | None = None   # None: one trial per grid point (grid) or 16 (search)
    confirm: Mapping[str, Any] | None = None   # the confirm phase's defaults (module docstring)

    @property
    def trials(self) -> int:
        """Trials a sweep runs unless told otherwise."""
        if self.num_samples is not None:
            return self.num_samples
        return len(self.cells()) if self.grid else 16

    def combos(self) -> list[dict[str, Any]]:
        """Every combination of axis labels, first axis outermost."""
        names = list(self.axes)
        return [dict(zip(names, c)) for c in itertools.product(*(list(self.axes[n]) for n in names))]

    def cells(self) -> list[dict[str, Any]]:
        """One grid point per combination x seed (seed-major: every combination for seed 0, then
        seed 1, ...); [] without a grid."""
        return [c for _ in range(self.seeds) for c in self.combos()] if self.grid else []

    def points(self) -> list[dict[str, Any]]:
        """The axis labels of each of the sweep's trials in trial order (grid only): the
        combinations in turn, so trial n is combos()[n % C], as seed_of(n) assumes."""
        combos = self.combos()
        return [combos[n % len(combos)] for n in range(self.trials)] if self.grid else []

    def seed_of(self, number: int) -> int:
        """The training seed of trial `number` (module docstring)."""
        return (number // len(self.combos())) % self.seeds if self.grid else number % self.seeds

    def check_balance(self, origin: str) -> None:
        """Refuse a grid whose trials cannot give every combination (cell x arm) x seed a trial,
        or every combination the same number of trials; one line with the numbers."""
        if not self.grid:
            return
        combos, trials = len(self.combos()), self.trials
        need = combos * self.seeds
        if trials < need:
            raise SpaceError(f"{origin}: {trials} trials cannot give each of the {combos} cell x arm "
                             f"combinations x {self.seeds} seeds a trial: that needs {need} "
                             f"(--num-samples {need}, or fewer --seeds)")
        if trials % combos:
            low, high = trials - trials % combos, trials - trials % combos + combos
            raise SpaceError(f"{origin}: {trials} trials cannot be shared equally by the {combos} cell "
                             f"x arm combinations: use --num-samples {low} or {high}")

    def fields(self, picks: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """TrialConfig fields of one trial from its axis labels and search values."""
        out = {**self.fixed, "max_epochs": self.max_epochs, "seed": seed}
        for axis, label in picks.items():
            if axis in self.axes:
                out.update(self.axes[axis][label])
        out.update({k: v for k, v in picks.items() if k in self.search})
        return out

    def data_configs(self) -> list[TrialConfig]:
        """One TrialConfig per distinct data set the space can ask for (search params at low)."""
        seen: dict[str, TrialConfig] = {}
        for picks in self.combos():
            cfg = TrialConfig(**self.fields(picks, seed=0))
            seen.setdefault(data_key(cfg), cfg)
        return list(seen.values())

    def with_overrides(self, *, fixed: Mapping[str, Any] | None = None, seeds: int | None = None,
                       max_epochs: int | None = None, num_samples: int | None = None) -> "Space":
        """A copy with command-line overrides; fixed values replace axes of the same field, and
        the same field inside a bundle axis (as max_epochs replaces a cell's own epochs)."""
        fixed = dict(fixed or {})
        replaced = set(fixed) | ({"max_epochs"} if max_epochs else set())
        axes = {a: {label: {k: v for k, v in fields.items() if k not in replaced}
                    for label, fields in values.items()}
                for a, values in self.axes.items() if a not in fixed}
        space = dataclasses.replace(
            self, fixed={**self.fixed, **fixed}, axes=axes,
            seeds=seeds or self.seeds, max_epochs=max_epochs or self.max_epochs,
            num_samples=num_samples if num_samples is not None else self.num_samples)
        _check_cells(space, f"space {self.name}")
        space.check_balance(f"space {self.name}")
        return space

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (``from_dict(space.to_dict())`` gives the same space)."""
        return {
            "name": self.name, "description": self.description, "grid": self.grid,
            "seeds": self.seeds, "num_samples": self.num_samples, "max_epochs": self.max_epochs,
            "asha": dataclasses.asdict(self.asha) if self.asha else None,
            "fixed": dict(self.fixed),
            "axes": {a: ({lab: dict(f) for lab, f in v.items()} if _is_bundle_axis(a, v)
                         else list(v)) for a, v in self.axes.items()},
            "search": {k: {("log_uniform" if p.log else "uniform"): [p.low, p.high],
                           **({"when": {w: list(a) for w, a in p.when.items()}} if p.when else {})}
                       for k, p in self.search.items()},
            **({"confirm": dict(self.confirm)} if self.confirm else {}),
        }


def get_space(name_or_path: str) -> Space:
    """A named space, or a YAML file of the same form. Unknown names list the valid ones."""
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise SpaceError(f"{path}: no such space file")
        raw = load_yaml(path) or {}
        if not isinstance(raw, dict):
            raise SpaceError(f"{path}: expected a mapping of {list(_KEYS)}")
        return from_dict({"name": path.stem, **raw}, origin=str(path))
    if name_or_path not in SPACES:
        raise SpaceError(f"unknown space {name_or_path!r}; valid: {sorted(SPACES)} "
                         "or a .yaml file")
    return from_dict({"name": name_or_path, **SPACES[name_or_path]}, origin=name_or_path)


def from_dict(raw: Mapping[str, Any], origin: str = "space") -> Space:
    """Validate the YAML form; every error names the origin and the offending key."""
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise SpaceError(f"{origin}: unknown keys {unknown}; valid: {list(_KEYS)}")
    check_raw(raw, origin)   # every value's type, before anything below indexes into it
    fixed = dict(raw.get("fixed") or {})
    _check_fields(fixed, f"{origin}: fixed")
    if raw.get("recipe"):   # a recipe (fkd_core/recipes) under the space's own fixed values
        fixed = {**load_recipe(str(raw["recipe"])), **fixed}
    axes = {name: _axis(name, values, f"{origin}: axes.{name}")
            for name, values in (raw.get("axes") or {}).items()}
    search = {name: _param(name, spec, f"{origin}: search.{name}")
              for name, spec in (raw.get("search") or {}).items()}
    asha = raw.get("asha")
    space = Space(
        name=str(raw.get("name", origin)), description=str(raw.get("description", "")),
        fixed=fixed, axes=axes, search=search, seeds=_positive(raw.get("seeds", 1), origin, "seeds"),
        max_epochs=_positive(raw.get("max_epochs", fixed.get("max_epochs", 30)), origin, "max_epochs"),
        grid=bool(raw.get("grid", True)),
        asha=Asha(int(asha["grace_period"]), float(asha["reduction_factor"])) if asha else None,
        num_samples=raw.get("num_samples"), confirm=_confirm(raw.get("confirm"), origin))
    _check_cells(space, origin)
    check_search_bounds(space, origin)
    return space


def _confirm(raw: Any, origin: str) -> dict[str, Any] | None:
    """The space's confirm settings, checked for keys and types (sweep.confirm checks values)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or "replicates" not in raw:
        raise SpaceError(f"{origin}: confirm: expected a mapping with replicates (and optionally "
                         f"{sorted(set(_CONFIRM_KEYS) - {'replicates'})})")
    for key, value in raw.items():
        kind = _CONFIRM_KEYS.get(key)
        if kind is None:
            raise SpaceError(f"{origin}: confirm.{key}: unknown key; valid: {sorted(_CONFIRM_KEYS)}")
        if value is not None and not isinstance(value, (int, float) if kind is float else kind):
            raise SpaceError(f"{origin}: confirm.{key}: expected {kind.__name__}, got {value!r}")
    scored = raw.get("scored")
    if scored is not None and scored not in get_args(Scored):
        raise SpaceError(f"{origin}: confirm.scored: expected one of {list(get_args(Scored))}, got {scored!r}")
    for alpha in raw.get("fixed_alphas") or []:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
            raise SpaceError(f"{origin}: confirm.fixed_alphas: expected a list of alphas > 0, got {alpha!r}")
    return dict(raw)


class Sampler:
    """Optuna define-by-run space: suggests the axes and search params, computes nothing.

    A callable object rather than a closure so that Tune can pickle it with the searcher.
    """

    def __init__(self, space: Space):
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        picks: dict[str, Any] = {}
        for axis, labels in self.space.axes.items():
            picks[axis] = trial.suggest_categorical(axis, list(labels))
        chosen = self.space.fields(picks, seed=0)
        for name, param in self.space.search.items():
            if param.applies(chosen):
                picks[name] = trial.suggest_float(name, param.low, param.high, log=param.log)
        seed = self.space.seed_of(trial.number)
        trial.set_user_attr("seed", seed)
        # The Tune config: Optuna's picks (what was searched) plus the complete TrialConfig
        # fields under "cfg", which the trainable turns into TrialConfig(**config["cfg"]).
        # "optuna_trial" ties the Tune trial to its Optuna trial for a resume (sweep.recovery).
        return {"cfg": self.space.fields(picks, seed=seed), "optuna_trial": trial.number}


def data_key(cfg: TrialConfig) -> str:
    """Identity of the data set a trial trains on: trials with equal keys share one copy."""
    if cfg.data == "synthetic":
        return f"synthetic(n={cfg.synth_n},seed={cfg.synth_seed},pose={cfg.synth_pose:g})"
    return cfg.data


# --- validation helpers -------------------------------------------------------------------

def _axis(name: str, values: Any, where: str) -> dict[Any, dict[str, Any]]:
    if isinstance(values, Mapping):
        for label, bundle in values.items():
            _check_fields(dict(bundle or {}), f"{where}.{label}")
        return {label: dict(bundle or {}) for label, bundle in values.items()}
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where}: expected a non-empty list of values or a mapping of bundles")
    _check_fields({name: values[0]}, where)
    return {v: {name: v} for v in values}


def _param(name: str, spec: Any, where: str) -> Param:
    _check_fields({name: 1.0}, where)
    if name in _DATA_FIELDS:
        raise SpaceError(f"{where}: data fields must be axes or fixed (each data set is "
                         "loaded once per sweep)")
    kind = "log_uniform" if "log_uniform" in spec else "uniform"
    if kind not in spec or len(spec[kind]) != 2:
        raise SpaceError(f"{where}: expected {{log_uniform: [low, high]}} or {{uniform: [low, high]}}")
    low, high = (float(x) for x in spec[kind])
    if not low < high or (kind == "log_uniform" and low <= 0):
        raise SpaceError(f"{where}: need 0 < low < high for log_uniform, low < high otherwise")
    when = {k: tuple(v if isinstance(v, list) else [v]) for k, v in (spec.get("when") or {}).items()}
    _check_fields({k: _default(k) for k in when}, f"{where}.when")
    return Param(low, high, kind == "log_uniform", when)


def _check_fields(values: Mapping[str, Any], where: str) -> None:
    known = config_fields()
    bad = sorted(k for k in values if k not in known or k == "seed")
    if bad:
        hint = " (seeds come from `seeds`)" if "seed" in bad else ""
        raise SpaceError(f"{where}: unknown TrialConfig fields {bad}{hint}")


def _check_cells(space: Space, origin: str) -> None:
    """Build the TrialConfig of every cell so that a bad value fails before Ray starts."""
    low = {k: p.low for k, p in space.search.items()}
    try:
        for picks in space.combos():
            TrialConfig(**space.fields({**picks, **low}, seed=0))
    except (TypeError, ValueError) as err:
        raise SpaceError(f"{origin}: {err}") from None


def _positive(value: Any, origin: str, key: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise SpaceError(f"{origin}: {key} must be a positive integer, got {value!r}")
    return value


def _is_bundle_axis(name: str, axis: Mapping[Any, Mapping[str, Any]]) -> bool:
    return any(dict(fields) != {name: label} for label, fields in axis.items())


def _default(name: str) -> Any:
    return getattr(TrialConfig(), name)


def describe(space: Space) -> str:
    """One line per part, for --help and the sweep's first lines."""
    axes = ", ".join(f"{a}={list(v)}" for a, v in space.axes.items()) or "no axes"
    search = ", ".join(f"{k}~{'log' if p.log else ''}U[{p.low:g},{p.high:g}]"
                       for k, p in space.search.items())
    asha = (f"ASHA grace {space.asha.grace_period} x{space.asha.reduction_factor:g}"
            if space.asha else "no early stopping by ASHA")
    return (f"{space.name}: {axes}; {search or 'nothing searched'}; {space.seeds} seed(s); "
            f"{space.max_epochs} epochs; {asha}")

