"""sweep.commands: printed commands name the interpreter so that they run in a new shell."""
from __future__ import annotations

import sys
from pathlib import Path

from sweep import commands


def _venv(root: Path) -> Path:
    exe = root / ".venv" / "bin" / "python"
    exe.parent.mkdir(parents=True)
    exe.write_text("")
    exe.chmod(0o755)
    return exe


def test_interpreter_below_the_working_directory_is_printed_relative(tmp_path, monkeypatch):
    exe = _venv(tmp_path)
    monkeypatch.setattr(sys, "executable", str(exe))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")          # a new shell: the venv is not on PATH
    assert commands.module("sweep.analyze", "results/x") == ".venv/bin/python -m sweep.analyze results/x"
    assert commands.script("optuna-dashboard") == ".venv/bin/optuna-dashboard"
    assert not commands.installed("optuna-dashboard")
    (exe.parent / "optuna-dashboard").write_text("")
    assert commands.installed("optuna-dashboard")


def test_elsewhere_absolute_and_activated_plain_python(tmp_path, monkeypatch):
    exe = _venv(tmp_path / "repo")
    monkeypatch.setattr(sys, "executable", str(exe))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert commands.python() == str(exe)
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")   # after . .venv/bin/activate
    assert commands.python() == "python"
