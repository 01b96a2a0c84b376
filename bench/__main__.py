"""Every benchmark of the project in one run, as one markdown table.

    python -m bench                 # all CPU benchmarks on this machine (~40 min on 2 cores; precision ~10, records ~15)
    python -m bench --quick         # smaller sizes, for a smoke check (~4-5 min)
    python -m bench --only ingest trainer
    python -m bench --gpu --out bench/results      # the GPU script (bench/gpu.py)

Each benchmark module exposes ``run(quick: bool) -> list[dict]``; every row holds the plain
reference and ours measured in the same run, their ratio, the target and pass/fail.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

# Order = the order of the table. Module name -> what it measures.
BENCHMARKS: dict[str, str] = {
    "ingest": "Kaggle CSV reader vs naive pandas + per-row split; cached load",
    "trainer": "fkd_core.train epoch vs a bare PyTorch loop; augmentation cost",
    "sweep_overhead": "8-trial sweep at concurrency 2 vs the ideal",
    "asha": "ASHA + Optuna vs the same trials at full budget",
    "memory": "peak RSS of 2 concurrent trials vs 1",
    "precision": "train img/s in fp32 vs bf16 per model; matmul ceiling; profile by op",
    "records": "recording a trial at 100 to 100k trials: rewrite-everything vs append-only parts",
}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.system()} {cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def run_one(name: str, quick: bool) -> list[dict]:
    module = importlib.import_module(f"bench.{name}")
    start = time.perf_counter()
    try:
        rows = module.run(quick=quick)
    except Exception as exc:  # one broken benchmark must not hide the others' numbers
        rows = [{"name": name, "reference": None, "ours": None, "ratio": None,
                 "target": "", "passed": False, "note": f"failed: {type(exc).__name__}: {exc}"}]
    for row in rows:
        row.setdefault("benchmark", name)
    print(f"[bench] {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return rows


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    head = "| benchmark | measure | reference | ours | ratio | target | pass |\n|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        verdict = "" if r.get("passed") is None else ("pass" if r["passed"] else "FAIL")
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {r['benchmark']} | {r['name']}{note} | {_fmt(r.get('reference'))} | "
                     f"{_fmt(r.get('ours'))} | {_fmt(r.get('ratio'))} | {r.get('target', '')} | {verdict} |")
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke check")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--gpu", action="store_true", help="run the GPU script (bench/gpu.py) instead")
    parser.add_argument("--dry-run", action="store_true", help="with --gpu: tiny sizes on the CPU")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON of all numbers")
    args = parser.parse_args(argv)
    if args.gpu:
        from bench import gpu

        return gpu.main(["--out", args.out] + (["--dry-run"] if args.dry_run else []))
    rows = [row for name in (args.only or BENCHMARKS) for row in run_one(name, args.quick)]
    table = markdown(rows)
    print(f"Machine: {machine()}\n\n{table}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench" + " ".join([""] + (argv if argv is not None else sys.argv[1:]))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out / "cpu.json").write_text(json.dumps({"machine": machine(), "quick": args.quick, "command": command,
                                              "when": when, "rows": rows}, indent=2, default=str))
    (out / "cpu.md").write_text(f"`{command}`, {when}\n\nMachine: {machine()}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
