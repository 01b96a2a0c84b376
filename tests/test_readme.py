"""The README's commands work as printed: every ```bash block runs, in the README's order, in a
fresh shell (no virtual environment activated, not even on PATH) on a copy of the repository,
after install (the copy's .venv is the interpreter running these tests). So do the `Next:`
commands the programs print. A ```python block (the Python API) runs there too, in its place in
that order, as `.venv/bin/python -c BLOCK` from the copy's root.

An HTML comment right above a block tells this test to shrink it or skip it, so that the README
says openly what the test changes:

    <!-- readme-test: replace "--epochs 30" "--epochs 1"; replace "A" "B" (why) -->
    <!-- readme-test: skip: why -->

Each replaced text must occur in its block, so a marker cannot silently go stale.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
_BLOCK = re.compile(r"(?:<!--\s*readme-test:(?P<marker>.*?)-->\s*\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```",
                    re.S)
_REPLACE = re.compile(r'replace\s+"([^"]*)"\s+"([^"]*)"')
# A block that runs longer is itself a README bug: the test must stay at a few minutes.
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    line: int
    code: str
    skip: str | None
    replacements: list[tuple[str, str]]

    lang: str = "bash"

    def runnable(self) -> str:
        """The block as a bash script, its replacements made (a python block: python -c)."""
        code = self.code
        for old, new in self.replacements:
            code = code.replace(old, new)
        return code if self.lang == "bash" else f".venv/bin/python -c {shlex.quote(code)}\n"


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for m in _BLOCK.finditer(text):
        marker = (m.group("marker") or "").strip()
        line = text.count("\n", 0, m.start("code"))
        skip = marker[len("skip:"):].strip() if marker.startswith("skip:") else None
        replacements = _REPLACE.findall(marker)
        for old, _ in replacements:
            assert old in m.group("code"), f"README.md:{line}: readme-test replaces {old!r}, which the block lacks"
        blocks.append(Block(line, m.group("code"), skip, replacements, m.group("lang")))
    return blocks


def test_markers_parse_and_must_match_their_block():
    text = ('x\n<!-- readme-test: replace "--n 2000" "--n 30"; replace "a b" "c" (small) -->\n'
            '```bash\nrun --n 2000 a b\n```\n<!-- readme-test: skip: a server -->\n```bash\nserve\n```\n'
            '```bash\nplain\n```\n')
    a, b, c = readme_blocks(text)
    assert (a.line, a.runnable(), a.skip) == (3, "run --n 30 c\n", None)
    assert (b.skip, b.runnable()) == ("a server", "serve\n") and (c.skip, c.replacements) == (None, [])
    with pytest.raises(AssertionError, match="lacks"):
        readme_blocks('<!-- readme-test: replace "--epochs 30" "--epochs 1" -->\n```bash\nrun --epochs 3\n```\n')


def test_python_blocks_parse_and_run_as_python_c():
    text = ('<!-- readme-test: replace "max_epochs=30" "max_epochs=1" -->\n'
            '```python\nprint("it\'s", 30)\nTrialConfig(max_epochs=30)\n```\n')
    (block,) = readme_blocks(text)
    assert block.lang == "python"
    assert block.runnable() == (".venv/bin/python -c 'print(\"it'\"'\"'s\", 30)\n"
                                "TrialConfig(max_epochs=1)\n'\n")


def test_the_readme_has_a_python_api_block_that_runs_the_api():
    (block,) = [b for b in readme_blocks((ROOT / "README.md").read_text()) if b.lang == "python"]
    assert block.skip is None
    assert "from fkd_core import TrialConfig, train, predict" in block.code
    assert "from sweep import read_frames" in block.code


@pytest.mark.slow
def test_the_python_api_block_runs_on_the_synthetic_set(tmp_path):
    """The README's python block alone (the full test above runs it too, after every earlier
    block), after the one command that writes the data it reads."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the copy is made from git's tracked files")
    repo = tmp_path / "fkd-sweep"
    _copy_repository(repo)
    env = _fresh_shell_env(tmp_path)
    _run(".venv/bin/python -m fkd_core.synth --n 300 --seed 1 --out data/synthetic/training.csv.gz",
         repo, env, "synthetic set")
    (block,) = [b for b in readme_blocks((repo / "README.md").read_text()) if b.lang == "python"]
    out = _run(block.runnable(), repo, env, f"README.md:{block.line}")
    assert "mse+0.01*cgd: best val RMSE" in out and "after 1 epochs" in out
    assert (repo / "runs" / "api" / "best.pt").is_file()


def test_readme_links_are_tracked_files():
    """Every relative link of the README points at a file git tracks and does not ignore."""
    links = re.findall(r"\]\(((?!https?:|#)[^)#]+)\)", (ROOT / "README.md").read_text())
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    assert links and [link for link in links if link not in tracked] == []
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *links], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.stdout == "", f".gitignore covers tracked files the README links: {ignored.stdout}"


def _copy_repository(dest: Path) -> None:
    """The tracked files (what a clone has), with .venv = the installed interpreter's env."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)     # copy2: mtimes kept, so make sees an installed .venv
    (dest / ".venv").symlink_to(Path(sys.prefix))


def _fresh_shell_env(tmp: Path) -> dict[str, str]:
    """A new login's environment: nothing of this interpreter's venv on PATH or activated."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if p and os.path.abspath(p) != venv_bin and not p.endswith("/.venv/bin")]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=os.pathsep.join(path), FKD_CACHE_DIR=str(tmp / "cache"), MPLBACKEND="Agg")
    return env


def _run(script: str, cwd: Path, env: dict[str, str], what: str) -> str:
    start = time.perf_counter()
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, (f"{what} failed (exit {proc.returncode}, {seconds:.0f} s):\n{script}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    print(f"{what}: {seconds:.0f} s")
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_every_readme_block_runs_as_printed(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the copy is made from git's tracked files")
    repo = tmp_path / "fkd-sweep"
    _copy_repository(repo)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)      # ../shared/data, as next to the checkout
    env = _fresh_shell_env(tmp_path)
    assert "No module named" in subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", "python3 -c 'import sweep.run'"], cwd=tmp_path,
        env=env, capture_output=True, text=True).stderr, "the fresh shell must not see the venv"
    blocks = readme_blocks((repo / "README.md").read_text())
    ran, printed_ran = 0, set()
    for block in blocks:
        if block.skip is not None:
            continue
        if "../shared/" in block.code and not SHARED.is_dir():
            # The development data sits next to this project's checkouts, as the README says;
            # a clone elsewhere lacks it (tests/test_data.py skips the same way).
            print(f"README.md:{block.line}: skipped, ../shared/data not present")
            continue
        # The install happened (that is what runs this test): make must not redo it in the copy.
        code = re.sub(r"^make ", "make -o .venv/.installed ", block.runnable(), flags=re.M)
        out = _run(code, repo, env, f"README.md:{block.line}")
        ran += 1
        for command in re.findall(r"^Next: (.+)$", out, flags=re.M):
            form = command.strip().rsplit(" ", 1)[0]   # the command less its results folder
            if form not in printed_ran and command.strip() not in code:   # each form once
                printed_ran.add(form)
                _run(command, repo, env, f"README.md:{block.line}, printed: {command}")
    assert ran >= 3, f"only {ran} README blocks ran"
