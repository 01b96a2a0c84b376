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


def test_words_the_shell_would_split_or_expand_are_quoted():
    assert commands.line("a b", "$(touch x)", "plain") == "'a b' '$(touch x)' plain"


def test_the_printed_next_line_runs_as_printed_and_runs_nothing_else(tmp_path, monkeypatch):
    """issue 21, item 7: a --results-dir with a space and $(touch x), pasted into bash."""
    import subprocess

    import pandas as pd

    from sweep.console import summary
    from sweep.search import Outcome
    from sweep.settings import local_settings
    from sweep.spaces import get_space
    from tests.test_analyze import write_results

    root = tmp_path / "my results $(touch x)"
    s = local_settings(get_space("quick"), str(root), "study", max_concurrent=1)
    folder = write_results(Path(s.results_uri))
    outcome = Outcome(s, pd.read_parquet(folder / "trials.parquet"), 1.0, {})
    monkeypatch.chdir(tmp_path)
    text = summary(outcome)
    [next_line] = [l for l in text.splitlines() if l.startswith("Next: ")]
    [study_line] = [l for l in text.splitlines() if l.startswith("Study in a browser: ")]
    assert "'" in study_line.split("sqlite:///")[0][-2:]      # the study URI is one quoted word
    done = subprocess.run(["bash", "-c", next_line.removeprefix("Next: ")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (folder / "report.md").is_file() and not (tmp_path / "x").exists()
