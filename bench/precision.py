"""Where the time goes: fp32 against bf16 autocast, per model, against the matmul ceiling.

    python -m bench.precision                 # every model (~6-10 min on one quiet core)
    python -m bench.precision --quick         # tiny sizes, a smoke check (~1 min)
    python -m bench --only precision          # the same rows in the project's table

In one run, on one thread (CPU time of that thread: images per core-second, as bench.trainer):
1. the n x n matmul rate (n = 2048) in fp32 and in bf16: the ceiling;
2. per backbone and head (MODELS): a training step (batch 64, channels_last, autocast forward,
   loss in fp32, backward, AdamW step) in fp32 and in bf16; images/s and their ratio. fp32 and
   bf16 steps alternate, so that a drift of the machine hits both alike;
3. each model's FLOPs per training step (torch.utils.flop_counter.FlopCounterMode: forward and
   backward convolutions and matmuls), hence its training FLOP/s and the fraction of the bf16
   matmul rate it reaches (the issue's target: >= 40% for the recipe model);
4. a torch.profiler table by op, per precision, for the recipe model (fkd_core/recipes/fast-cpu
   .yaml): bench/results/precision-profile-{fp32,bf16}.txt, with the share of self CPU time in
   conversions, batch norm, the heatmap head's upsampling and the soft-argmax.

Everything lands in bench/results/precision.json and precision.md (``--out`` elsewhere). The
bf16/fp32 ratios of the machine's CPU class are what fkd_core.precision.MEASURED holds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from fkd_core import heads, precision, recipes
from fkd_core.config import TrialConfig
from fkd_core.losses import build_objective
from fkd_core.models import KNOBBED, build_model
from fkd_core.synth import one_thread

RECIPE = "fast-cpu"   # the recipe whose minutes issue 20 counts (best-cpu's successor)
RECIPE_FRACTION_TARGET = 0.40   # issue 20: the recipe model's FLOP/s over the bf16 matmul rate
PRECISIONS = ("fp32", "bf16")
RESULTS = "bench/results"


@dataclass(frozen=True)
class Model:
    """A model of the table: backbone, head and knobs, as TrialConfig names them."""

    backbone: str
    head: str
    depth: int = 1
    width: float = 1.0

    @property
    def label(self) -> str:
        knobs = f" d{self.depth}" + (f" w{self.width:g}" if self.width != 1.0 else "")
        return f"{self.backbone}{knobs if self.backbone in KNOBBED else ''} + {self.head}"


MODELS = (Model("small_cnn", "regression", 1), Model("small_cnn", "heatmap", 1),
          Model("small_cnn", "regression", 2), Model("small_cnn", "heatmap", 2),
          Model("res_cnn", "regression", 1), Model("res_cnn", "heatmap", 2),
          Model("s2d_cnn", "heatmap", 2), Model("s2d_cnn", "unet", 2),
          Model("resnet18", "regression"), Model("resnet18", "heatmap"))


@dataclass(frozen=True)
class Sizes:
    batch: int = 64
    image: int = 96
    steps: int = 12          # timed steps per precision and round
    rounds: int = 3          # alternations fp32 / bf16
    matmul_n: int = 2048
    profile_steps: int = 5


# QUICK at 64 px, a power of two: every trunk's halvings are exact, so s2d_cnn's unet head finds
# the maps it reads (16, 8, 4) on its x2 steps up from 2. At 48 px the trunk goes 12 -> 6 -> 3 -> 2
# and the steps from 2 (4, 8) miss them.
FULL, QUICK = Sizes(), Sizes(batch=8, image=64, steps=2, rounds=1, matmul_n=256, profile_steps=1)


def recipe_model() -> Model:
    """The model of the recipe whose minutes the issue counts."""
    cfg = TrialConfig(**recipes.load_recipe(RECIPE))
    return Model(cfg.backbone, cfg.head, cfg.depth, cfg.width)


# --- the ceiling -------------------------------------------------------------------------------

def matmul_gflops(n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """n x n @ n x n in dtype: 2 n^3 FLOP per product, best of ``repeats`` (thread CPU time)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    a @ b   # the first product pays for oneDNN's kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        a @ b
        best = min(best, time.thread_time() - start)
    return 2 * n**3 / max(best, 1e-9) / 1e9


# --- one model's training step ------------------------------------------------------------------

@dataclass
class Step:
    """A model, its AdamW optimiser and one fixed batch: step() trains on it once."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    images: torch.Tensor
    keypoints: torch.Tensor
    objective: Callable
    amp_dtype: torch.dtype | None

    @classmethod
    def build(cls, m: Model, name: str, sizes: Sizes) -> "Step":
        torch.manual_seed(0)
        cfg = TrialConfig(backbone=m.backbone, head=m.head, depth=m.depth, width=m.width,
                          heatmap_size=sizes.image // 4)
        model = build_model(m.backbone, 15, image_size=sizes.image, width=m.width, depth=m.depth,
                            head=m.head, heatmap_size=cfg.heatmap_size)
        model = model.to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(1)
        images = torch.rand(sizes.batch, 1, sizes.image, sizes.image, generator=gen)
        keypoints = torch.rand(sizes.batch, 15, 2, generator=gen) * sizes.image
        return cls(model, torch.optim.AdamW(model.parameters(), lr=1e-3),
                   images.contiguous(memory_format=torch.channels_last), keypoints,
                   build_objective(cfg), precision.DTYPES[name])

    def step(self) -> None:
        # The same autocast scope as fkd_core.train: forward only; loss and backward outside it.
        with torch.autocast("cpu", dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            pred = self.model(self.images)
        mask = torch.ones(self.keypoints.shape[:2], dtype=torch.bool)
        loss = self.objective(pred.float(), self.keypoints, mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def seconds(self, steps: int) -> list[float]:
        """Thread CPU seconds of each of ``steps`` steps (after one untimed warm-up step)."""
        self.step()
        times = []
        for _ in range(steps):
            start = time.thread_time()
            self.step()
            times.append(time.thread_time() - start)
        return times


def step_flops(step: Step) -> int:
    """FLOPs of one training step (forward + backward convolutions and matmuls) in fp32."""
    counter = FlopCounterMode(display=False)
    with counter:
        Step(step.model, torch.optim.SGD(step.model.parameters(), lr=0.0), step.images,
             step.keypoints, step.objective, None).step()
    return counter.get_total_flops()


def measure_model(m: Model, sizes: Sizes) -> dict:
    """fp32 and bf16 images/s of one model, alternating, median step; FLOPs per image."""
    steps = {name: Step.build(m, name, sizes) for name in PRECISIONS}
    times: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    for _ in range(sizes.rounds):
        for name in PRECISIONS:
            times[name] += steps[name].seconds(sizes.steps)
    ips = {name: sizes.batch / float(torch.tensor(t).median()) for name, t in times.items()}
    flops = step_flops(Step.build(m, "fp32", sizes))
    print(f"[bench.precision] {m.label}: {ips['fp32']:.0f} img/s fp32, {ips['bf16']:.0f} bf16", file=sys.stderr)
    return {"model": m.label, **asdict(m), "img_per_s": ips, "bf16_over_fp32": ips["bf16"] / ips["fp32"],
            "flop_per_image": flops / sizes.batch,
            "gflops": {name: flops / sizes.batch * ips[name] / 1e9 for name in PRECISIONS}}


# --- where the time goes ---------------------------------------------------------------------

# Categories of the profile: op-name fragments -> category; soft-argmax is the labelled region.
CATEGORIES = {
    "conversions": ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous",
                    "reorder", "to_dense", "to_mkldnn"),
    "batch_norm": ("batch_norm",),
    "upsampling": ("upsample",),
    "convolution": ("convolution", "mkldnn_conv"),
    "optimizer": ("_foreach", "adamw", "addcdiv", "lerp"),
}
SOFT_ARGMAX = "soft_argmax"


@contextlib.contextmanager
def labelled_soft_argmax() -> Iterator[None]:
    """heads.soft_argmax inside a record_function region, so the profile can name its time."""
    original = heads.soft_argmax

    def labelled(logits: torch.Tensor, image_size: int) -> torch.Tensor:
        with record_function(SOFT_ARGMAX):
            return original(logits, image_size)

    heads.soft_argmax = labelled
    try:
        yield
    finally:
        heads.soft_argmax = original


def category(op: str) -> str | None:
    low = op.lower()
    return next((c for c, parts in CATEGORIES.items() if any(p.lower() in low for p in parts)), None)


def profile_step(m: Model, name: str, sizes: Sizes) -> tuple[str, dict[str, float]]:
    """(torch.profiler table by op, share of self CPU time per category) of training steps."""
    step = Step.build(m, name, sizes)
    step.step()
    with labelled_soft_argmax(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(sizes.profile_steps):
            step.step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events if not e.key.startswith("ProfilerStep")) or 1.0
    shares = dict.fromkeys([*CATEGORIES, SOFT_ARGMAX], 0.0)
    for e in events:
        if e.key == SOFT_ARGMAX:   # a region: its inclusive forward time
            shares[SOFT_ARGMAX] += e.cpu_time_total / total
        elif "softmax_backward" in e.key:
            shares[SOFT_ARGMAX] += e.self_cpu_time_total / total
        elif (c := category(e.key)) is not None:
            shares[c] += e.self_cpu_time_total / total
    return events.table(sort_by="self_cpu_time_total", row_limit=30), shares


# --- the run ---------------------------------------------------------------------------------

def measure(sizes: Sizes, models: tuple[Model, ...], out: Path | None) -> dict:
    """Every number of the module's docstring, in one run on one thread."""
    recipe = recipe_model()
    with one_thread():
        result = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": sizes == QUICK,
                  "load_average_at_start": os.getloadavg()[0],   # > 1 per core: a shared machine
                  "cpu_class": precision.cpu_class(), "torch": torch.__version__,
                  "capability": torch.backends.cpu.get_cpu_capability(), "sizes": asdict(sizes),
                  "matmul_gflops": {name: matmul_gflops(sizes.matmul_n, precision.DTYPES[name] or torch.float32)
                                    for name in PRECISIONS},
                  "models": [measure_model(m, sizes) for m in models], "recipe": recipe.label}
        ceiling = result["matmul_gflops"]["bf16"]
        for row in result["models"]:
            row["fraction_of_bf16_matmul"] = {n: g / ceiling for n, g in row["gflops"].items()}
        result["profile_shares"] = {}
        for name in PRECISIONS:
            table, result["profile_shares"][name] = profile_step(recipe, name, sizes)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"precision-profile-{name}.txt").write_text(table + "\n")
    return result


def rows(result: dict) -> list[dict]:
    """The project table's rows: ratios bf16/fp32 per model, fractions of the bf16 ceiling."""
    mm = result["matmul_gflops"]
    out = [{"name": f"{result['sizes']['matmul_n']}² matmul GFLOP/s, fp32 vs bf16", "reference": mm["fp32"],
            "ours": mm["bf16"], "ratio": mm["bf16"] / mm["fp32"], "target": "report", "passed": None,
            "note": f"CPU class {result['cpu_class']}, 1 thread"}]
    for r in result["models"]:
        out.append({"name": f"{r['model']}: train img/s, fp32 vs bf16 (ratio bf16/fp32)",
                    "reference": r["img_per_s"]["fp32"], "ours": r["img_per_s"]["bf16"],
                    "ratio": r["bf16_over_fp32"], "target": "report", "passed": None,
                    "note": f"{r['flop_per_image'] / 1e6:.0f} MFLOP/img, img per core-second"})
        recipe = r["model"] == result["recipe"]
        fraction = r["fraction_of_bf16_matmul"]["bf16"]
        out.append({"name": f"{r['model']}: bf16 training GFLOP/s vs bf16 matmul GFLOP/s"
                            + (" (the recipe's model)" if recipe else ""),
                    "reference": mm["bf16"], "ours": r["gflops"]["bf16"], "ratio": fraction,
                    "target": f">= {RECIPE_FRACTION_TARGET:.2f}" if recipe else "report",
                    "passed": fraction >= RECIPE_FRACTION_TARGET if recipe else None,
                    "note": f"fp32 training reaches {r['fraction_of_bf16_matmul']['fp32']:.2f}"})
    for name, shares in result["profile_shares"].items():
        spent = ", ".join(f"{c} {100 * s:.0f}%" for c, s in shares.items())
        out.append({"name": f"{result['recipe']}: {name} step, share of self CPU time", "reference": None,
                    "ours": None, "ratio": None, "target": "report", "passed": None, "note": spent})
    return out


def markdown(result: dict) -> str:
    lines = [f"CPU class {result['cpu_class']} (torch capability {result['capability']}), torch "
             f"{result['torch']}, one thread, batch {result['sizes']['batch']}, channels_last, AdamW step "
             f"included; {result['when']}, load average {result['load_average_at_start']:.1f} at the start"
             f"{' (--quick: tiny sizes, not a measurement)' if result['quick'] else ''}.", "", "| model | MFLOP/img | fp32 img/s | bf16 img/s | bf16/fp32 | "
             "fp32 GFLOP/s | bf16 GFLOP/s | bf16 / bf16 matmul |", "|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        lines.append(f"| {r['model']} | {r['flop_per_image'] / 1e6:.1f} | {r['img_per_s']['fp32']:.0f} | "
                     f"{r['img_per_s']['bf16']:.0f} | {r['bf16_over_fp32']:.2f} | {r['gflops']['fp32']:.1f} | "
                     f"{r['gflops']['bf16']:.1f} | {r['fraction_of_bf16_matmul']['bf16']:.2f} |")
    mm = result["matmul_gflops"]
    lines += ["", f"{result['sizes']['matmul_n']}² matmul: fp32 {mm['fp32']:.0f} GFLOP/s, bf16 {mm['bf16']:.0f} "
              f"GFLOP/s ({mm['bf16'] / mm['fp32']:.2f}x).", "",
              f"Share of self CPU time in a training step of {result['recipe']} (torch.profiler, tables "
              "in precision-profile-*.txt; its times are wall-clock, so on a shared machine a preemption "
              "lands in whatever op runs):", "",
              "| category | " + " | ".join(result["profile_shares"]) + " |",
              "|---|" + "---|" * len(result["profile_shares"])]
    shares = result["profile_shares"].values()
    for c in [*CATEGORIES, SOFT_ARGMAX]:
        lines.append(f"| {c} | " + " | ".join(f"{100 * s[c]:.1f}%" for s in shares) + " |")
    return "\n".join(lines)


def run(quick: bool = False, out: str | None = None) -> list[dict]:
    """Rows for `python -m bench`; the JSON, markdown and profile tables go to ``out`` (default
    bench/results; in quick mode nowhere unless given, so a smoke check never overwrites the
    committed measurement that fkd_core.precision.MEASURED cites)."""
    folder = Path(out) if out else (None if quick else Path(RESULTS))
    result = measure(QUICK if quick else FULL, MODELS, folder)
    if folder is not None:
        (folder / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
        (folder / "precision.md").write_text(markdown(result) + "\n")
    return rows(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check, not a measurement")
    parser.add_argument("--out", default=RESULTS, help="folder for precision.json/.md and the profiles")
    args = parser.parse_args(argv)
    run(quick=args.quick, out=args.out)
    print((Path(args.out) / "precision.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
