"""Commands as a user types them in a new shell, for the lines sweep.run prints.

`make` installs into .venv without activating it, so a printed `python -m sweep.analyze` fails
in a new shell (no pandas on the system python). Printing the interpreter that runs now, as a
path relative to the working directory when it lives below it (`.venv/bin/python`), keeps
every printed command runnable exactly as printed. Every word is quoted for the shell
(`shlex.join`), so that a results folder holding a space or `$(...)` pastes as one argument and
runs nothing.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def _as_typed(path: Path) -> str:
    """path relative to the working directory when below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def python() -> str:
    """This interpreter: `python` when that is what PATH finds, else its path."""
    # Not resolve(): a venv's python is a symlink to the base interpreter, which lacks the deps.
    exe = Path(os.path.abspath(sys.executable))
    found = shutil.which("python")
    if found and Path(os.path.abspath(found)) == exe:
        return "python"
    return _as_typed(exe)


def _script_path(name: str) -> Path:
    return Path(os.path.abspath(sys.executable)).parent / name


def script(name: str) -> str:
    """A console script next to this interpreter (e.g. optuna-dashboard), as typed."""
    return _as_typed(_script_path(name))


def installed(name: str) -> bool:
    return _script_path(name).is_file()


def module(name: str, *args: str) -> str:
    """`<python> -m name args...` as typed, every word quoted."""
    return line(python(), "-m", name, *args)


def line(*words: str) -> str:
    """One shell command line of these words, each quoted where the shell would split or expand it."""
    return shlex.join(words)
