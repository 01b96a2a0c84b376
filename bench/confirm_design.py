"""Choose the confirm design on a simulation: error rate and replicates to a decision.

    python -m bench.confirm_design                    # writes docs/confirm-design.md (~1 min)
    python -m bench.confirm_design --paths 2000 --out /tmp/confirm-design.md   # a quick check

One comparison (K = 1, α = 0.05, margin ±0.05 px), d normal with true mean in {0, margin/2,
margin, 2·margin} and sd in {0.02, 0.07, 0.229} px (a small one; the paired sd at a fixed epoch
and at the best-validation epoch measured on fkd-yt15), rounds of 3 up to 9 and of 5 up to 20.
Each design stops at the first look that decides, or at the maximum. Designs:
- today: the sequence as main ran it before (Lai's confidence sequence tuned for the maximum;
  "differs" once any look's interval excluded 0, "equivalent" from the current look only);
- obf / pocock: the new group-sequential repeated t intervals (sweep.stats.gs_critical) with
  O'Brien–Fleming- or Pocock-type spending, running intersection over the looks;
- sequence: the new anytime-valid sequence (running intersection), tuned for the maximum;
- fixed: one look at the maximum, the reference every design's cost is read against.
A wrong word: "better" when d >= 0, "worse" when d <= 0, "equivalent" when |d| >= margin.
A second table repeats the issue's three-cell study (10 replicates, one look) under the old
rule (Holm separately over the "d = 0" and "equivalence" p-values) and the new one (Bonferroni
intervals over both families at once). Vectorised numpy: every path of a setting at once.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from scipy import stats as sps

from sweep import stats as S
from sweep import verdicts as V

MARGIN, ALPHA = 0.05, 0.05
EFFECTS = (0.0, MARGIN / 2, MARGIN, 2 * MARGIN)
SDS = (0.02, 0.07, 0.229)
SCHEDULES = ((3, 9), (5, 20))
DESIGNS = ("today", "obf", "pocock", "sequence", "fixed")


def rule_of(design: str, rounds: int, top: int) -> V.Rule:
    if design == "fixed":
        return V.Rule(margin=MARGIN, alpha=ALPHA, first_round=top, max_replicates=top)
    if design in ("sequence", "today"):
        return V.Rule(margin=MARGIN, alpha=ALPHA, sequential=True, first_round=rounds,
                      max_replicates=top, design="sequence", cs_horizon=top)
    return V.Rule(margin=MARGIN, alpha=ALPHA, sequential=True, first_round=rounds,
                  max_replicates=top, spending=design)


def today(d: np.ndarray, rule: V.Rule) -> tuple[np.ndarray, np.ndarray]:
    """Words and stopping n of the old rule: p_zero from the largest e-value over the looks
    (the sequence excluded 0 at some look), equivalence from the current look's interval."""
    runs = d.shape[0]
    word = np.full(runs, "undecided", dtype=object)
    stop = np.full(runs, rule.max_replicates)
    excluded = np.zeros(runs, dtype=bool)
    done = np.zeros(runs, dtype=bool)
    for n in rule.looks(rule.max_replicates):
        x = d[:, :n]
        mean, half = x.mean(axis=1), rule.critical(n, 1) * x.std(axis=1, ddof=1) / math.sqrt(n)
        excluded |= np.abs(mean) > half
        now = np.where(excluded, np.where(mean < 0, "better", "worse"),
                       np.where(np.abs(mean) + half < MARGIN, "equivalent", "undecided"))
        fresh = ~done & (now != "undecided")
        word[~done], stop[fresh] = now[~done], n
        done |= fresh
    return word, stop


def new(d: np.ndarray, rule: V.Rule) -> tuple[np.ndarray, np.ndarray]:
    """Words and stopping n of sweep.verdicts' rule (running intersection, stop when decided)."""
    runs = d.shape[0]
    word = np.full(runs, "undecided", dtype=object)
    stop = np.full(runs, rule.max_replicates)
    done = np.zeros(runs, dtype=bool)
    for n in rule.looks(rule.max_replicates):
        now = V.words(*V.intervals(d[:, :n], rule, 1), MARGIN)
        fresh = ~done & (now != "undecided")
        word[~done], stop[fresh] = now[~done], n
        done |= fresh
    return word, stop


def wrong(word: np.ndarray, true_d: float) -> np.ndarray:
    return (((word == "better") & (true_d >= 0)) | ((word == "worse") & (true_d <= 0))
            | ((word == "equivalent") & (abs(true_d) >= MARGIN)))


def simulate(paths: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for rounds, top in SCHEDULES:
        for sd in SDS:
            for true_d in EFFECTS:
                d = true_d + sd * rng.standard_normal((paths, top))
                for design in DESIGNS:
                    rule = rule_of(design, rounds, top)
                    word, stop = (today if design == "today" else new)(d, rule)
                    rows.append({"schedule": f"{rounds} up to {top}", "sd": sd, "d": true_d,
                                 "design": design, "error": wrong(word, true_d).mean(),
                                 "decided": (word != "undecided").mean(), "n": stop.mean()})
    return rows


def old_holm_study(paths: int, seed: int) -> tuple[float, float]:
    """The issue's three cells, 10 replicates, one look: P(any wrong word) under the old rule
    (t and TOST p-values, Holm separately per family) and the new one (Bonferroni intervals)."""
    cells = [(0.0, 0.022), (0.05, 0.047), (0.0, 0.0022)]
    rng = np.random.default_rng(seed)
    d = np.stack([t + s * rng.standard_normal((paths, 10)) for t, s in cells])   # [3, paths, 10]
    mean, se = d.mean(axis=2), d.std(axis=2, ddof=1) / math.sqrt(10)
    p_zero = 2 * sps.t.sf(np.abs(mean) / se, 9)
    p_equiv = np.minimum(1, 2 * np.maximum(sps.t.sf((mean + MARGIN) / se, 9),
                                           sps.t.cdf((mean - MARGIN) / se, 9)))
    zero, equiv = _holm(p_zero) <= ALPHA, _holm(p_equiv) <= ALPHA
    old = np.where(zero, np.where(mean < 0, "better", "worse"),
                   np.where(equiv, "equivalent", "undecided"))
    rule = V.Rule(margin=MARGIN, alpha=ALPHA, first_round=10, max_replicates=10)
    fresh = np.stack([V.words(*V.intervals(x, rule, 3), MARGIN) for x in d])
    rate = lambda w: np.any([wrong(w[i], c[0]) for i, c in enumerate(cells)], axis=0).mean()  # noqa: E731
    return float(rate(old)), float(rate(fresh))


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values over axis 0 (the cells), per column (one simulated study)."""
    order = np.argsort(p, axis=0)
    m = p.shape[0]
    ranked = np.take_along_axis(p, order, axis=0) * (m - np.arange(m))[:, None]
    adj = np.minimum(1.0, np.maximum.accumulate(ranked, axis=0))
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=0)
    return out


def markdown(rows: list[dict], holm: tuple[float, float], paths: int, seconds: float) -> str:
    se = math.sqrt(ALPHA * (1 - ALPHA) / paths)
    lines = ["# Confirm design: the simulation that chose it", "",
             "Made by `python -m bench.confirm_design` (module docstring: the designs, the wrong "
             f"words). {paths:,} simulated confirms per setting, one comparison, α = {ALPHA}, "
             f"margin ±{MARGIN} px, d normal across replicates; {seconds:.0f} s. Monte-Carlo "
             f"standard error of an error rate near 5%: {se:.4f}.", "",
             "Columns per design: error = P(a wrong word), n = expected replicates at the stop "
             "(stopping at the first look that decides), dec = P(decided by the maximum).", ""]
    for sched in dict.fromkeys(r["schedule"] for r in rows):
        lines += [f"## Rounds of {sched} replicates", "",
                  "| sd, px | true d | " + " | ".join(f"{d}: error / n / dec" for d in DESIGNS) + " |",
                  "|---|---|" + "---|" * len(DESIGNS)]
        for sd in SDS:
            for true_d in EFFECTS:
                cell = {r["design"]: r for r in rows
                        if r["schedule"] == sched and r["sd"] == sd and r["d"] == true_d}
                lines.append(f"| {sd} | {true_d:g} | " + " | ".join(
                    f"{cell[d]['error']:.4f} / {cell[d]['n']:.1f} / {cell[d]['decided']:.2f}"
                    for d in DESIGNS) + " |")
        lines.append("")
    worst = {d: max(r["error"] for r in rows if r["design"] == d) for d in DESIGNS}
    mean = lambda d, k: np.mean([r[k] for r in rows if r["design"] == d])  # noqa: E731
    lines += ["## Summary over all settings", "",
              "| | " + " | ".join(DESIGNS) + " |", "|---|" + "---|" * len(DESIGNS),
              "| worst error rate | " + " | ".join(f"{worst[d]:.4f}" for d in DESIGNS) + " |",
              "| mean P(decided) | " + " | ".join(f"{mean(d, 'decided'):.3f}" for d in DESIGNS)
              + " |",
              "| mean replicates at the stop | " + " | ".join(f"{mean(d, 'n'):.2f}" for d in DESIGNS)
              + " |", "",
              f"The worst rate is the largest of {len(rows) // len(DESIGNS)} noisy estimates (SE "
              f"{se:.4f} each): the fixed-N t interval, exact by construction, reads "
              f"{worst['fixed']:.4f} too.", "",
              "## The issue's three cells (10 replicates, one look)", "",
              "(d = 0, sd 0.022), (d = 0.05 = margin, sd 0.047), (d = 0, sd 0.0022): "
              f"P(any wrong word) = {holm[0]:.4f} under the old rule (Holm separately over the "
              f"'d = 0' and the 'equivalence' p-values) and {holm[1]:.4f} under the new one "
              "(one Bonferroni interval per comparison deciding both families).", "",
              *CHOICE]
    return "\n".join(lines) + "\n"


CHOICE = [
    "## The choice", "",
    "Planned rounds (`--until-decided --max-seeds M`) use the t-calibrated group-sequential "
    "boundary with O'Brien–Fleming-type spending (`obf`). Read from the tables above: every new "
    "design keeps its error rate at α within Monte-Carlo error at every setting, including "
    "3 replicates at the first look, where the t calibration matters; `obf` costs almost nothing at the "
    "maximum against one fixed look (its last boundary is close to the fixed-N t quantile), so "
    "where the effect is clear it stops early and where it is not it decides as often as a "
    "fixed-N confirm of the same maximum. `pocock` stops earlier on large effects but is wider "
    "at the maximum, so it decides less often on the hard settings (d = margin/2, d = 0 at a "
    "large sd). Today's sequence and the new `sequence` pay for validity at any number of "
    "looks: they decide least and run longest, and are kept only for open-ended runs "
    "(`--open-ended`, continued past the planned maximum).",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.confirm_design",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--paths", type=int, default=40_000, help="simulated confirms per setting")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="docs/confirm-design.md")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = simulate(args.paths, args.seed)
    holm = old_holm_study(max(args.paths, 40_000), args.seed)
    text = markdown(rows, holm, args.paths, time.perf_counter() - start)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
