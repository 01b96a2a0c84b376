"""sweep.report's verdict section and console text: the decision interval, the plan under the
verdicts, and the interval over test people (or why there is none)."""
from __future__ import annotations

import pandas as pd
import pytest

from sweep import report as Rp
from sweep import verdicts as V
from tests.test_verdicts import confirm_rows


class Result:   # the fields of sweep.confirm.Result that the console text reads
    def __init__(self, table: pd.DataFrame, replicates: int, looks: int):
        self.table, self.replicates, self.looks, self.note = table, replicates, looks, ""


def section(trials: pd.DataFrame, tmp_path) -> tuple[str, pd.DataFrame, str]:
    trials = trials.assign(phase="confirm")
    settings = {"confirm": {"plan": V.Rule().to_dict(), "looks": 1}}
    lines, table, console = Rp.verdict_section(trials, settings, "synthetic faces", tmp_path)
    return "\n".join(lines), table, console


def test_console_prints_the_plan_under_the_verdicts():
    table = V.verdict_table(confirm_rows(), V.Rule())
    text = Rp.verdict_console(Result(table, 4, 1), V.Rule(), "results/x")
    head, plan = text.split("Plan (80% power at the margin):")
    assert "Bonferroni over 4 comparison(s) (level 0.9875 each)" in head
    assert "assumes d is normal" in head
    rows = plan.strip().splitlines()
    assert len(rows) == 4 and all("trial-minutes on cpu on vm" in r for r in rows)
    undecided = table[table["verdict"] == "undecided"]
    for r in undecided.itertuples():   # an undecided verdict always comes with its number
        assert f"{r.cell} / {r.shape}: sd(d) " in plan and f"{int(r.more)} more" in plan


def test_section_says_the_population_interval_is_not_available_without_groups(tmp_path):
    text, _, console = section(confirm_rows(), tmp_path)
    assert "### What a decision will take" in text and "| sd of d, px |" in text
    assert "over test people too is not available" in text
    assert "for *these* test people" in text and "Plan (80% power" in console


def test_section_shows_both_intervals_with_groups(tmp_path):
    text, table, _ = section(confirm_rows(groups=True), tmp_path)
    assert "| d given these test people, px | d over people too, px |" in text
    row = table.set_index(["cell", "shape"]).loc[("none", "cgd")]
    assert f"[{row.pop_low:.3f}, {row.pop_high:.3f}]" in text


def test_within_the_margin_is_printed(tmp_path):
    rows = confirm_rows()
    small = (rows["cell"] == "study") & (rows["arm"] == "cgd")
    # d = −0.03 ± 0.001 per replicate: the interval lies below 0 and inside ±0.05
    rows.loc[small, V.TEST_RMSE_COLUMN] = 2.0 + 0.1 * rows.loc[small, "replicate"] - 0.03 \
        + 0.001 * (-1.0) ** rows.loc[small, "replicate"]
    table = V.verdict_table(rows, V.Rule()).set_index(["cell", "shape"])
    assert table.loc[("study", "cgd"), "verdict"] == "better"
    assert table.loc[("study", "cgd"), "verdict_text"] == "better, within the margin"
    md = Rp.verdict_markdown(table.reset_index())
    assert "**better, within the margin**" in md


def test_the_report_says_what_was_scored(tmp_path):
    rows = confirm_rows(scored=True).assign(scored="final")
    text, _, _ = section(rows, tmp_path)
    assert "`scored` = final" in text
    text, _, _ = section(confirm_rows(), tmp_path)
    assert "best epoch on validation" in text and "noisier" in text


def test_the_shape_terms_share_of_the_loss_is_shown_per_arm():
    """Issue 19 item 7: an alpha too small to act shows as a tiny share next to its verdict."""
    rows = confirm_rows()
    table = V.verdict_table(rows, V.Rule())
    assert table["shape_share"].isna().all()                 # older studies: not recorded
    assert "| n/a | **" in Rp.verdict_markdown(table)
    rows["shape_share"] = [0.0 if a == "base" else (0.25 if a == "cgd" else 0.0005) for a in rows["arm"]]
    table = V.verdict_table(rows, V.Rule()).set_index(["cell", "shape"])
    assert table.loc[("none", "cgd"), "shape_share"] == pytest.approx(0.25)
    assert table.loc[("study", "cgd@0.01"), "shape_share"] == pytest.approx(0.0005)
    md = Rp.verdict_markdown(table.reset_index())
    assert "| α·shape / base loss, end of training |" in md
    assert "| 0.2500 | **" in md and "| 0.0005 | **" in md
