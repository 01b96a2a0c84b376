"""A sweep's Settings and its sweep.json: the one place that writes, reads and checks them.

    from sweep.settings import saved_settings
    s = saved_settings("results/fkd-yt15", resume=False)   # the Settings sweep.run recorded

sweep.run builds Settings from the command line (sweep.run.resolve) and saves them here;
--resume, sweep.confirm and sweep.analyze read them back through read_saved / read_json, so a
broken sweep.json is the same one line (UsageError naming the file and key) everywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs

from sweep.spaces import Space, from_dict
from sweep.store import filesystem

SWEEP_FILE = "sweep.json"
OPTUNA_FILE = "optuna.db"


class UsageError(ValueError):
    """A problem with the command line or its files; reported as one line, exit status 2."""


@dataclass(frozen=True)
class Settings:
    """Everything a sweep needs once the command line and cluster file are resolved."""

    name: str
    space: Space
    results_uri: str
    """<results-dir>/<name>: a local folder or an s3:// / gs:// URI."""
    storage_path: str
    """Ray Tune's storage_path; the experiment lives in <storage_path>/<name>."""
    resources: dict[str, float]
    max_concurrent: int | None = None
    resume: bool = False
    tpe_seed: int = 0
    sampler: str = "tpe"
    """"tpe" (seeded TPE, the default) or "random" (the full-budget reference of bench/asha.py)."""
    command: list[str] = field(default_factory=list)

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def optuna_path(self) -> Path:
        """SQLite file of the study: in the results folder, or a local cache for URIs."""
        if "://" in self.results_uri:
            return Path.home() / ".cache" / "fkd-sweep" / self.name / OPTUNA_FILE
        return Path(self.results_uri) / OPTUNA_FILE


class Parser(argparse.ArgumentParser):
    """The command lines of sweep.run and sweep.confirm: a usage error is a UsageError."""

    def error(self, message: str) -> None:  # one line, exit 2, as for every usage error here
        raise UsageError(message)


def local_settings(space: Space, results_dir: str, name: str, *, max_concurrent: int,
                   cpus_per_trial: float = 1.0, sampler: str = "tpe", tpe_seed: int = 0) -> Settings:
    """Settings of a sweep on this machine, for benchmarks and tests that skip the CLI."""
    uri = os.path.abspath(f"{results_dir}/{name}")
    return Settings(name=name, space=space, results_uri=uri, storage_path=f"{uri}/ray",
                    resources={"cpu": cpus_per_trial, "gpu": 0.0},
                    max_concurrent=max_concurrent, sampler=sampler, tpe_seed=tpe_seed)



# --- files next to the Parquet results ------------------------------------------------------

def exists(uri: str) -> bool:
    """uri is a file; UsageError naming it when its filesystem cannot be reached at all."""
    try:
        fs, path = filesystem(uri)
        return fs.get_file_info(path).type == pafs.FileType.File
    except (OSError, ValueError) as err:   # pyarrow: unknown scheme, no credentials, no route
        raise UsageError(f"{uri}: cannot reach it ({first_line(err)})") from None


def read_json(uri: str, expected: str = "a JSON object") -> dict[str, Any] | None:
    """A JSON object from a file or URI; None when absent; UsageError naming it when broken
    (`expected`: what the message says the file should have held)."""
    if not exists(uri):
        return None
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            payload = json.loads(f.read().decode())
    except (OSError, ValueError) as err:   # ValueError: bad JSON or bytes that are not UTF-8
        raise UsageError(f"{uri}: not readable as JSON ({first_line(err)})") from None
    if not isinstance(payload, dict):
        raise UsageError(f"{uri}: expected {expected}, got {type(payload).__name__}")
    return payload


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# What a sweep.json must hold for --resume and sweep.confirm, with its JSON type; then the keys
# it may lack (written before they existed), with their defaults.
_SAVED_KEYS = {"name": str, "space": dict, "storage_path": str, "resources": dict,
               "max_concurrent": (int, type(None))}
_SAVED_OPTIONAL = {"tpe_seed": (int, 0), "sampler": (str, "tpe")}


def read_saved(uri: str) -> dict[str, Any] | None:
    """<uri>/sweep.json with the keys that rebuild its Settings checked; None when absent."""
    file = f"{uri}/{SWEEP_FILE}"
    saved = read_json(file)
    if saved is None:
        return None
    saved = {**{k: default for k, (_, default) in _SAVED_OPTIONAL.items()}, **saved}
    kinds = {**_SAVED_KEYS, **{k: kind for k, (kind, _) in _SAVED_OPTIONAL.items()}}
    for key, kind in kinds.items():
        if key not in saved:
            raise UsageError(f"{file}: key {key!r} is missing; it is not a sweep.json that "
                             "sweep.run wrote")
        if not isinstance(saved[key], kind) or isinstance(saved[key], bool):
            raise UsageError(f"{file}: key {key!r} must be a JSON "
                             f"{_json_type(kind)}, got {saved[key]!r:.60}")
    return saved


def _json_type(kind: Any) -> str:
    names = {str: "string", dict: "object", int: "integer", type(None): "null"}
    return " or ".join(names[k] for k in (kind if isinstance(kind, tuple) else (kind,)))


def saved_settings(uri: str, *, resume: bool) -> Settings:
    """The Settings a sweep.json records, for --resume and sweep.confirm (UsageError when bad)."""
    saved = read_saved(uri)
    if saved is None:
        raise UsageError(f"{uri}/{SWEEP_FILE} not found: not a sweep's results folder")
    return Settings(name=saved["name"], space=from_dict(saved["space"], origin=f"{uri}/{SWEEP_FILE}"),
                    results_uri=uri, storage_path=saved["storage_path"],
                    resources=saved["resources"], max_concurrent=saved["max_concurrent"],
                    resume=resume, tpe_seed=saved["tpe_seed"], sampler=saved["sampler"],
                    command=sys.argv[:])


def write_json(uri: str, payload: dict[str, Any]) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(payload, indent=2, default=str).encode())


def save_settings(s: Settings, data_sets: dict[str, Any]) -> None:
    write_json(f"{s.results_uri}/{SWEEP_FILE}", {
        "name": s.name, "space": s.space.to_dict(), "storage_path": s.storage_path,
        "resources": s.resources, "max_concurrent": s.max_concurrent, "tpe_seed": s.tpe_seed,
        "sampler": s.sampler,
        "command": s.command, "data": {k: vars(v) for k, v in data_sets.items()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z")})



def update_sweep_json(uri: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply change() to <uri>/sweep.json (an empty object when absent) and write it back."""
    saved = read_json(f"{uri}/{SWEEP_FILE}") or {}
    change(saved)
    write_json(f"{uri}/{SWEEP_FILE}", saved)
