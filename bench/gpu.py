"""The prepared GPU measurement: one script, planned to end within 7 minutes of a cold H100/H200
(``bash bench/gpu.sh``), every number in ``<out>/gpu.json`` (and the tables in ``gpu.md``).

    python -m bench.gpu --out bench/results --budget-seconds 360   # on a GPU machine (bench/gpu.sh)
    python -m bench.gpu --dry-run --out /tmp/gpu-dry                # same code path on the CPU, < 2 min
    python -m bench.gpu --dry-run --out /tmp/gpu-dry --inject-failure raise   # a packed worker fails

Sections, in order, each hard-bounded (SECTIONS: its planned seconds; time a section leaves
unused goes to the later ones; a section still running at its bound is stopped and says so):
1. the device, and a large bf16 matmul as the ceiling check (TFLOP/s);
2. training images/s of ``fkd_core.train`` vs a bare PyTorch loop (same model, batch, optimiser,
   bf16 autocast, channels_last, data already on the GPU) for resnet50, densenet121, resnet18 and
   small_cnn at batch 64 and 256; then ``augment="full"`` at batch 256 (augmentation's share);
3. packing (bench/gpu_packing.py): 1, 4 and 8 concurrent resnet50 trials on the one GPU (what
   ``--gpus-per-trial 1, 0.25, 0.125`` gives under Ray), more runs only when time is left:
   aggregate images/s over one shared window, overlap, each trial against the bare loop, GPU
   utilisation, card peak memory above the baseline taken before the workers start;
4. a time-boxed ``study``-space sweep on the real faces (bench/gpu_sweep.py), outputs in a temp
   folder, only counts, statuses and timings here;
5. ``TrialConfig(compile=True)`` (modes default and reduce-overhead = CUDA graphs) for small_cnn
   and resnet50 (bench/gpu_compile.py), each really compiled or an error.

``gpu.json`` is rewritten after every measured row, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench.gpu_compile import FellBackToEager, compile_unavailable, compiled_run
from bench.gpu_packing import INJECT, packed_run
from bench.gpu_sweep import GRACE_S, study_sweep
from fkd_core.config import TrialConfig
from fkd_core.data import load_dataset
from fkd_core.metrics import IMAGES_PER_S
from fkd_core.models import build_model
from fkd_core.trainer import train

# Targets of issue 6 on one H100 (aggregate over packed trials).
PACKED_TARGETS = {"resnet50": 10_000, "densenet121": 6_000}


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; the dry run shrinks everything."""

    device: str
    faces: int
    batches: tuple[int, ...]
    epochs: int
    bare_steps: int
    matmul_n: int
    backbones: tuple[str, ...]
    packing: tuple[tuple[str, int], ...]          # (backbone, trials) runs, always
    packing_extra: tuple[tuple[str, int], ...]    # runs made only when the section has time left
    packing_run_s: float                          # each packing run's deadline (spawn to last row)
    packing_faces: int                            # faces each packed trial trains on
    compile_runs: tuple[tuple[str, str], ...]     # (backbone, torch.compile mode), most wanted first
    compile_batches: tuple[int, int]              # (training, validation) whole batches
    sections: dict[str, float]                    # planned seconds per section, in order


FULL = Sizes("cuda", 8192, (64, 256), 3, 60, 8192, ("resnet50", "densenet121", "resnet18", "small_cnn"),
             (("resnet50", 1), ("resnet50", 4), ("resnet50", 8)),
             (("densenet121", 8), ("densenet121", 4), ("resnet50", 2)), 45.0, 4096,
             (("resnet50", "default"), ("small_cnn", "default"), ("resnet50", "reduce-overhead"),
              ("small_cnn", "reduce-overhead")), (24, 4),
             {"matmul": 15, "throughput": 75, "augmentation": 25, "packing": 100, "sweep": 90, "compile": 55})
DRY = Sizes("cpu", 64, (8,), 2, 3, 256, ("small_cnn",), (("small_cnn", 1), ("small_cnn", 2)), (), 40.0, 64,
            (("small_cnn", "default"),), (6, 2),
            {"matmul": 3, "throughput": 10, "augmentation": 7, "packing": 45, "sweep": 0, "compile": 15})
# The dry run's budget leaves the interpreter's start (torch's import) and exit inside 2 minutes.
DEFAULT_BUDGET_S = {"cuda": 360.0, "cpu": 80.0}


class SectionTimeout(Exception):
    """A section ran into its hard bound."""


@contextlib.contextmanager
def hard_limit(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in the main thread after ``seconds`` (SIGALRM: it also interrupts
    a compilation or a long epoch, which a check between measurements cannot)."""
    if seconds <= 0:
        raise SectionTimeout("no time left")

    def alarm(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"stopped at its {seconds:.0f} s bound")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Budget:
    """The run's time: each section may use its plan plus whatever earlier sections left, never
    the plans of the sections after it. Plans shrink in proportion when the budget is smaller."""

    def __init__(self, seconds: float, plans: dict[str, float], t0: float | None = None) -> None:
        self.seconds, self.t0 = seconds, time.monotonic() if t0 is None else t0
        scale = min(1.0, seconds / max(sum(plans.values()), 1e-9))
        self.plans = {name: plan * scale for name, plan in plans.items()}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def bound(self, section: str) -> float:
        """Seconds ``section`` may run from now."""
        names = list(self.plans)
        later = sum(self.plans[n] for n in names[names.index(section) + 1:])
        return max(0.0, self.seconds - self.elapsed() - later)


def matmul_tflops(n: int, device: str) -> float:
    """bf16 n x n matmul throughput: the ceiling the trials are compared against."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 20 if device == "cuda" else 2
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def bare_loop_images_per_s(backbone: str, batch: int, steps: int, images: torch.Tensor,
                           keypoints: torch.Tensor, device: str) -> float:
    """The plain reference: index-slice batches of on-device data, forward, MSE, Adam step."""
    model = build_model(backbone, keypoints.shape[1]).to(device)
    cuda = device == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = images.to(device)
    y_all = torch.nan_to_num(keypoints.to(device), nan=48.0)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, x_all.shape[0], (batch,), device=device, generator=gen)
        x = x_all[idx].float().div_(255.0)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.mse_loss(model(x).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(max(3, steps // 10)):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def trainer_images_per_s(backbone: str, batch: int, epochs: int, data, device: str,
                         augment: str = "none", **changes) -> float:
    """fkd_core.train's own training images/s, best epoch after the first (warm-up, compile)."""
    rows: list[dict] = []
    cfg = TrialConfig(backbone=backbone, batch_size=batch, max_epochs=epochs, device=device,
                      patience=epochs + 1, augment=augment, seed=0, **changes)
    train(cfg, data, rows.append)
    warm = rows[1:] or rows
    return max(r[IMAGES_PER_S] for r in warm)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Run:
    """One run of the script: its result dict, its budget, and gpu.json after every row."""

    def __init__(self, sizes: Sizes, out: Path, budget_s: float, t0: float | None = None) -> None:
        self.sizes, self.out = sizes, out
        self.budget = Budget(budget_s, sizes.sections, t0)
        self.result: dict[str, Any] = {
            "device": torch.cuda.get_device_name(0) if sizes.device == "cuda" else "cpu (dry run)",
            "torch": torch.__version__, "sizes": asdict(sizes), "budget_s": budget_s,
            "plan_s": self.budget.plans, "seconds": {}, "stopped": {}}

    def save(self) -> None:
        self.result["seconds"]["total"] = round(self.budget.elapsed(), 1)
        (self.out / "gpu.json").write_text(json.dumps(self.result, indent=2, default=str))
        (self.out / "gpu.md").write_text(markdown(self.result) + "\n")

    def section(self, name: str, body: Callable[[float], None], bounded: bool = True) -> None:
        """Run body(bound) within the section's bound (SIGALRM unless it bounds itself)."""
        started, bound = time.monotonic(), self.budget.bound(name)
        try:
            if bounded:
                with hard_limit(bound):
                    body(bound)
            else:
                body(bound)
        except SectionTimeout as e:
            self.result["stopped"][name] = str(e)
        except Exception as e:   # a section that breaks must not cost the sections after it
            self.result["stopped"][name] = f"error: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        self.result["seconds"][name] = round(time.monotonic() - started, 1)
        self.save()
        _log(f"{name} done at {self.budget.elapsed():.0f} s (bound {bound:.0f} s)")


def measure(sizes: Sizes, out: Path, budget_s: float, sweep_data: Path,
            inject: str | None = None, t0: float | None = None) -> dict[str, Any]:
    """Every section in turn, each within its bound; gpu.json/gpu.md after every row.
    ``t0``: time.monotonic() the budget counts from (default: now)."""
    run = Run(sizes, out, budget_s, t0)
    result, device = run.result, sizes.device
    data = load_dataset("synthetic", synth_n=sizes.faces, synth_seed=0)

    def matmul(bound: float) -> None:
        result["matmul_bf16_tflops"] = matmul_tflops(sizes.matmul_n, device)
        _log(f"matmul bf16: {result['matmul_bf16_tflops']:.1f} TFLOP/s on {result['device']}")

    def throughput(bound: float) -> None:
        rows = result["throughput"] = []
        for backbone in sizes.backbones:
            for batch in sizes.batches:
                bare = bare_loop_images_per_s(backbone, batch, sizes.bare_steps, data.images,
                                              data.keypoints, device)
                ours = trainer_images_per_s(backbone, batch, sizes.epochs, data, device)
                rows.append({"backbone": backbone, "batch": batch, "bare_images_per_s": bare,
                             "train_images_per_s": ours, "ratio": ours / bare})
                run.save()
                _log(f"{backbone:>12} b{batch:<4} bare {bare:9.0f} img/s  train {ours:9.0f} img/s  x{ours / bare:.2f}")

    def augmentation(bound: float) -> None:
        rows = result["augmentation"] = []
        for row in [r for r in result.get("throughput", []) if r["batch"] == max(sizes.batches)]:
            aug = trainer_images_per_s(row["backbone"], row["batch"], sizes.epochs, data, device, "full")
            rows.append({"backbone": row["backbone"], "batch": row["batch"],
                         "train_images_per_s": row["train_images_per_s"], "augment_full_images_per_s": aug,
                         "augment_share": 1.0 - aug / row["train_images_per_s"]})
            run.save()
            _log(f"{row['backbone']:>12} b{row['batch']:<4} augment=full {aug:9.0f} img/s "
                 f"({100 * rows[-1]['augment_share']:.0f}% of a step)")

    def packing(bound: float) -> None:
        rows = result["packing"] = []
        end = time.monotonic() + bound
        batch = max(sizes.batches)
        faces = data.subset(range(min(sizes.packing_faces, len(data))))
        bare_at = {r["backbone"]: r["bare_images_per_s"] for r in result.get("throughput", []) if r["batch"] == batch}
        plan = [(b, n, True) for b, n in sizes.packing] + [(b, n, False) for b, n in sizes.packing_extra]
        for k, (backbone, trials, always) in enumerate(plan):
            # The runs always made share what is left; an extra run needs a whole deadline.
            left = end - time.monotonic()
            seconds = min(sizes.packing_run_s, left / max(1, len(sizes.packing) - k)) if always else \
                sizes.packing_run_s
            if left < seconds or seconds < 5:
                if always:
                    rows.append({"backbone": backbone, "trials": trials, "skipped": "out of time"})
                continue
            row = packed_run(backbone, trials, batch, sizes.epochs, faces, device, seconds,
                             bare_at.get(backbone), inject)
            rows.append(row)
            run.save()
            _log(f"packing {backbone} x{trials}: {row['aggregate_images_per_s']:.0f} img/s over "
                 f"{_num(row['window_s'], '.1f')} s, overlap {_num(row['overlap'], '.2f')}, util "
                 f"{_num(row['gpu_util_pct'])}%, card +{_num(row['card_peak_above_baseline_mib'])} MiB "
                 f"{' '.join(row['errors'])}")

    def sweep(bound: float) -> None:
        if device != "cuda":
            result["sweep"] = {"skipped": "dry run"}
            return
        # Outside --out: what comes back from the device is limited in size and count.
        workdir = Path(tempfile.mkdtemp(prefix="fkd-gpu-sweep-"))
        result["sweep"] = study_sweep(workdir, bound - GRACE_S - 5, sweep_data)

    def compiled(bound: float) -> None:
        rows = result["compile"] = []
        batch = max(sizes.batches)
        eager_at = {r["backbone"]: r["train_images_per_s"] for r in result.get("throughput", []) if r["batch"] == batch}
        reason = compile_unavailable(device)
        for backbone, mode in sizes.compile_runs:
            row: dict[str, Any] = {"backbone": backbone, "batch": batch, "mode": mode,
                                   "eager_images_per_s": eager_at.get(backbone)}
            rows.append(row)
            if reason:
                row["skipped"] = reason
                continue
            started = time.monotonic()
            try:
                row.update(compiled_run(backbone, batch, sizes.epochs, device, mode, *sizes.compile_batches))
                row["speedup"] = row["compiled_images_per_s"] / row["eager_images_per_s"] \
                    if row["eager_images_per_s"] else None
            except FellBackToEager as e:   # a number that would lie: say so loudly
                row["error"] = f"fell back to eager: {e}"
                _log(f"ERROR compile {backbone} {mode}: {row['error']}")
            except Exception as e:   # a mode that does not work here is a finding, not a crash
                if _timed_out(e):   # inductor wraps what is raised inside a compilation
                    row["error"] = f"timed out after {time.monotonic() - started:.0f} s (compilation included)"
                    raise SectionTimeout(f"stopped at its {bound:.0f} s bound") from e
                row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            finally:
                row["seconds_incl_compile"] = time.monotonic() - started
                torch._dynamo.reset()
                run.save()
            _log(f"compile {backbone} b{batch} {mode}: {row.get('compiled_images_per_s', row.get('error'))}")

    run.section("matmul", matmul)
    run.section("throughput", throughput)
    run.section("augmentation", augmentation)
    run.section("packing", packing, bounded=False)   # each run has its own deadline and kills late workers
    run.section("sweep", sweep, bounded=False)       # Ctrl-C at the end of its box, then a kill
    run.section("compile", compiled)
    return result


def _timed_out(error: BaseException | None) -> bool:
    """Whether SectionTimeout is anywhere in the chain of ``error``."""
    while error is not None:
        if isinstance(error, SectionTimeout) or str(error).startswith("SectionTimeout"):
            return True
        error = error.__cause__ or error.__context__
    return False


def markdown(result: dict) -> str:
    """The tables of whatever sections ``result`` holds so far."""
    lines = [f"Device: {result['device']}, torch {result['torch']}; bf16 matmul "
             f"{result.get('matmul_bf16_tflops', 0.0):.1f} TFLOP/s; {result['seconds'].get('total', 0):.0f} s "
             f"of a {result['budget_s']:.0f} s budget"]
    lines += [f"- {name}: {why}" for name, why in result["stopped"].items()]
    if result.get("throughput"):
        lines += ["", "| backbone | batch | bare loop img/s | fkd_core.train img/s | ratio | target |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['backbone']} | {r['batch']} | {r['bare_images_per_s']:,.0f} | "
                  f"{r['train_images_per_s']:,.0f} | {r['ratio']:.2f} | >= 0.9 |" for r in result["throughput"]]
    if result.get("augmentation"):
        lines += ["", "| backbone | batch | train img/s | with augment=full | augmentation share of a step | target |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['backbone']} | {r['batch']} | {r['train_images_per_s']:,.0f} | "
                  f"{r['augment_full_images_per_s']:,.0f} | {100 * r['augment_share']:.0f}% | <= 10% |"
                  for r in result["augmentation"]]
    if result.get("packing"):
        lines += ["", "| backbone | trials/GPU | aggregate img/s (shared window) | target img/s | window s | "
                  "overlap | each trial vs bare loop | GPU util % | card peak MiB above baseline | "
                  "trial peak MiB | errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["packing"]:
            if "skipped" in r:
                lines.append(f"| {r['backbone']} | {r['trials']} | {r['skipped']} | | | | | | | | |")
                continue
            ratios = "/".join(f"{x:.2f}" for x in r["per_trial_vs_bare"]) if r["per_trial_vs_bare"] else ""
            lines.append(f"| {r['backbone']} | {r['trials']} | {r['aggregate_images_per_s']:,.0f} | "
                         f"{PACKED_TARGETS.get(r['backbone'], '')} | {_num(r['window_s'], '.1f')} | "
                         f"{_num(r['overlap'], '.2f')} | {ratios} | {_num(r['gpu_util_pct'])} | "
                         f"{_num(r['card_peak_above_baseline_mib'])} | {_num(r['trial_peak_mib'])} | "
                         f"{'; '.join(r['errors'])} |")
    if "sweep" in result:
        sweep = result["sweep"]
        if "skipped" in sweep:
            lines += ["", f"Study sweep: skipped, {sweep['skipped']}"]
        else:
            box = f"Ctrl-C at {sweep['interrupted_after_s']:.0f} s" if sweep["interrupted_after_s"] else "in its box"
            lines += ["", f"Study sweep: exit {sweep['returncode']} after {sweep['wall_s']:.0f} s ({box}), "
                          f"{sweep.get('trials_rows', 0)} trials "
                          f"{sweep.get('statuses', {})}, {sweep.get('epochs_rows', 0)} epoch rows, median "
                          f"epoch {_num(sweep.get('median_epoch_s'), '.1f')} s at "
                          f"{_num(sweep.get('median_images_per_s'))} img/s"]
    if result.get("compile"):
        lines += ["", "| backbone | batch | torch.compile mode | eager img/s | compiled img/s | speedup "
                  "| graphs | s incl. compile |", "|---|---|---|---|---|---|---|---|"]
        for r in result["compile"]:
            if "compiled_images_per_s" not in r:
                lines.append(f"| {r['backbone']} | {r['batch']} | {r['mode']} | {r.get('skipped') or r.get('error')} "
                             f"| | | | |")
            else:
                lines.append(f"| {r['backbone']} | {r['batch']} | {r['mode']} | {_num(r['eager_images_per_s'])} | "
                             f"{r['compiled_images_per_s']:,.0f} | {_num(r['speedup'], '.2f')} | {r['graphs']} | "
                             f"{r['seconds_incl_compile']:.0f} |")
    return "\n".join(lines)


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec)


def _log(message: str) -> None:
    print(f"[gpu] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results", help="folder for gpu.json and gpu.md")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (< 2 minutes)")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="the whole run (bench/gpu.sh passes what its limit leaves); default "
                             f"{DEFAULT_BUDGET_S['cuda']:.0f}, dry run {DEFAULT_BUDGET_S['cpu']:.0f}")
    parser.add_argument("--sweep-data", default=".gpu/data/training.csv.gz",
                        help="faces for the sweep section (bench/gpu_prepare.sh writes them)")
    parser.add_argument("--inject-failure", choices=INJECT, default=None,
                        help="test switch: the last worker of every packed run of 2+ trials raises "
                             "(raise) or dies without a row (exit); the run must go on")
    t0 = time.monotonic()
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device; use --dry-run to exercise the code path on the CPU",
              file=sys.stderr)
        return 2
    sizes = DRY if args.dry_run else FULL
    budget = DEFAULT_BUDGET_S[sizes.device] if args.budget_seconds is None else args.budget_seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = measure(sizes, out, budget, Path(args.sweep_data), args.inject_failure, t0)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
