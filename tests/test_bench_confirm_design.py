"""bench.confirm_design in a tiny mode: every design, schedule, sd and effect gets its row."""
from __future__ import annotations

from bench import confirm_design as CD


def test_tiny_run_writes_every_row(tmp_path):
    out = tmp_path / "design.md"
    assert CD.main(["--paths", "400", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| 0.02 |", "| 0.07 |", "| 0.229 |"))]
    assert len(rows) == len(CD.SCHEDULES) * len(CD.SDS) * len(CD.EFFECTS)
    assert all(line.count(" / ") == 2 * len(CD.DESIGNS) for line in rows)
    assert "## The choice" in text and "under the old rule" in text


def test_old_holm_rule_errs_more_than_the_new_one_on_the_issue_cells():
    old, new = CD.old_holm_study(40_000, 1)
    assert old > 0.055 and new < 0.05
