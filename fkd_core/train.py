"""The command line of one trial: ``python -m fkd_core.train``; the trial itself is fkd_core.trainer.

    python -m fkd_core.train --data synthetic --backbone small_cnn --loss cgd --alpha 0.01 \\
        --augment study --epochs 20 --out runs/cgd        # progress on stderr, files in runs/cgd
    python -m fkd_core.train --data ../shared/data/fkd-yt15/training.csv.gz --epochs 5 --json
    python -m fkd_core.train ... --out runs/cgd --resume    # after Ctrl-C (exit 130), SIGTERM (143), kill -9

    >>> from fkd_core import TrialConfig, train
    >>> rows = []
    >>> summary = train(TrialConfig(max_epochs=2, synth_n=200), report=rows.append)  # loads cfg.data
    >>> from fkd_core.data import load_for_config       # or the sweep's form: data loaded once
    >>> cfg = TrialConfig(max_epochs=2)
    >>> summary = train.train(cfg, load_for_config(cfg), rows.append)

The parts of a trial live in modules of their own: fkd_core.device (device, GPU memory share,
autocast), fkd_core.checkpoint (checkpoint files), fkd_core.loop (the epoch loop, evaluate) and
fkd_core.trainer (train, TrainSummary, split_rows). This module re-exports the names a user
of the Python API reaches for, so ``from fkd_core.train import train, load_checkpoint`` works.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, get_args

from fkd_core import api, cli, metrics, recipes
from fkd_core.checkpoint import MODEL_KEYS, RESUME_KEYS, load_checkpoint
from fkd_core.config import BaseLoss, CompileMode, ShapeTerm, TrialConfig
from fkd_core.data import KeypointData, load_for_config
from fkd_core.device import limit_gpu_memory, resolve_device
from fkd_core.losses import parse_loss_spec
from fkd_core.models import BACKBONES, WeightsUnavailable
from fkd_core.rundir import (BEST, CHECKPOINT, EXIT_CODES, Interrupted, Interrupts, RunDir, check_start,
                             strict_json, summary_from_rows)
from fkd_core.trainer import Report, TrainSummary, split_rows, train, training_split

# The Python API (re-exported from their homes) and the command line's entry point.
__all__ = ["BEST", "CHECKPOINT", "MODEL_KEYS", "RESUME_KEYS", "TrainSummary", "limit_gpu_memory",
           "load_checkpoint", "main", "resolve_device", "split_rows", "train", "training_split"]


# --- command line ------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line + exit 2, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


# Fields whose flags keep the spellings they had before the CLI was generated: --epochs, and
# --loss, which names the base loss and the shape term in one spec ("wing+cgd").
_SPELLED = {"max_epochs", "loss", "shape", "alpha", "compile", "compile_mode"}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m fkd_core.train", description="Train one keypoint model. Every "
                "TrialConfig field has a flag; a flag not given keeps the recipe's value, else "
                "TrialConfig's default (shown).")
    losses = [f"{b}+{s}" if s != "none" else b for b in get_args(BaseLoss) for s in get_args(ShapeTerm)]
    p.add_argument("--loss", default=None, metavar="BASE[+SHAPE]",
                   help=f"base loss and optional shape term: {' | '.join(losses)}; a shape term alone "
                        "(cgd) means mse+cgd. Sets the fields loss and shape (default: 'mse')")
    p.add_argument("--alpha", type=float, default=None, help=cli.flag_help("alpha", None))
    p.add_argument("--epochs", "--max-epochs", dest="epochs", type=int, default=None,
                   help=cli.flag_help("max_epochs", TrialConfig.max_epochs))
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   choices=list(get_args(CompileMode)),
                   help="torch.compile the model; MODE reduce-overhead adds CUDA graphs (GPU). "
                        "Sets the fields compile and compile_mode. Off by default: on a CPU it was "
                        "measured slower")
    p.add_argument("--recipe", help=f"a named recipe ({', '.join(recipes.recipe_names())}) or a "
                                    "YAML file of TrialConfig fields; flags given override it")
    p.add_argument("--out", default=None, help="folder for best.pt, checkpoint.pt, metrics.csv, "
                                               "summary.json (default runs/<time>-<backbone>-<loss>)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    start.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (without it, or --resume, a folder that "
                            "holds a run is refused)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    cli.add_config_flags(p, skip=_SPELLED)
    return p


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    """The TrialConfig of the flags given; TrialConfig's defaults for the rest (alpha: 0.01 when
    --loss names a shape term, as TrialConfig(shape="cgd") gives)."""
    fields = cli.config_values(args)
    if args.loss is not None:
        fields["loss"], fields["shape"] = parse_loss_spec(args.loss)
    if args.alpha is not None:
        fields["alpha"] = args.alpha
    if args.epochs is not None:
        fields["max_epochs"] = args.epochs
    if args.compile is not None:
        fields.update(compile=True, compile_mode=args.compile)
    return TrialConfig(**fields)


def _progress_line(row: dict[str, Any], max_epochs: int, tag: str) -> str:
    flag = "  DIVERGED" if row[metrics.DIVERGED] else ""
    return (f"[{tag}] epoch {row[metrics.EPOCH]:>3}/{max_epochs}  train_loss {row[metrics.TRAIN_LOSS]:.4g}"
            f"  val_rmse {row[metrics.VAL_RMSE]:.3f} px  nme {row[metrics.VAL_NME]:.4f}"
            f"  shape {row[metrics.VAL_SHAPE]:.3f} px"
            + (f"  test_rmse {row[metrics.TEST_RMSE]:.3f} px" if metrics.TEST_RMSE in row else "")
            + f"  lr {row[metrics.LR]:.2g}"
            f"  {row[metrics.EPOCH_SECONDS]:.1f} s  {row[metrics.IMAGES_PER_S]:.0f} img/s{flag}")


class StepBar:
    """The CLI's progress bar inside an epoch, redrawn in place on a terminal, at most every
    ``every`` seconds; the epoch's line (report) replaces it. Silent when stream is no TTY."""

    def __init__(self, stream: Any, tag: str, max_epochs: int, every: float = 0.5) -> None:
        self.stream, self.tag, self.max_epochs, self.every = stream, tag, max_epochs, every
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.epoch, self.started, self.last = 1, time.perf_counter(), -math.inf

    def __call__(self, step: int, total: int) -> None:
        now = time.perf_counter()
        if step == 1:
            self.started = now
        if not self.enabled or (now - self.last < self.every and step < total):
            return
        self.last = now
        # The clock starts when step 1 ends, so step - 1 steps are timed (none at step 1).
        self.stream.write("\r" + self.render(step, total, now - self.started, timed_steps=step - 1))
        self.stream.flush()

    def render(self, step: int, total: int, seconds: float, width: int = 30,
               timed_steps: int | None = None) -> str:
        """timed_steps: steps done in ``seconds`` (default: step); none timed yet = no estimate."""
        filled = width * step // max(total, 1)
        timed = step if timed_steps is None else timed_steps
        if step >= total:
            left = "~0 s left"
        elif timed > 0 and seconds > 0:
            left = f"~{(total - step) * seconds / timed:.0f} s left"
        else:
            left = "estimating time left"
        return (f"[{self.tag}] epoch {self.epoch:>3}/{self.max_epochs} [{'#' * filled}{'.' * (width - filled)}] "
                f"{step}/{total} steps  {seconds:.0f} s, {left}")

    def epoch_done(self, next_epoch: int) -> None:
        """Clear the bar before the epoch's line is printed."""
        self.epoch = next_epoch
        if self.enabled:
            self.stream.write("\r\033[K")


def check_finite(args: argparse.Namespace) -> None:
    """Every float flag is a finite number (float() accepts "inf" and "nan"); the ranges are
    TrialConfig's to check."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')}: expected a finite number, got {value}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_finite(args)
        cfg = recipes.resolve(args, recipes.given_flags(_parser(), argv), config_from_args)
        if cfg.backbone not in BACKBONES:   # before minutes of data loading, not after
            raise ValueError(f"Unknown backbone {cfg.backbone!r}; valid: {sorted(BACKBONES)}")
        device = resolve_device(cfg.device)
        out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.backbone}-{cfg.loss_label}")
        check_start(out, args.resume, args.overwrite)
        resumed = load_checkpoint(out, keys=RESUME_KEYS)["epoch"] if args.resume else 0
        data = load_for_config(cfg)
        tag = "synthetic" if data.synthetic else Path(data.source).name
        print(f"[{tag}] {data.source}: {len(data)} faces, {data.schema.name}; {cfg.backbone}, "
              f"loss {cfg.loss_label}, augment {cfg.augment}, device {device}; "
              f"writing to {out}", file=sys.stderr)
        with RunDir.open(out, resume=args.resume, overwrite=args.overwrite, resume_epoch=resumed) as run:
            summary = _train_into(run, cfg, data, tag, resumed)
    except Interrupted as stop:
        print(f"interrupted by {stop}; the epochs done are in {out}; continue with --out "
              f"{shlex.quote(str(out))} --resume", file=sys.stderr)
        return EXIT_CODES[stop.signum]
    except KeyboardInterrupt:   # Ctrl-C before training started: nothing was written
        print("interrupted by SIGINT before training started", file=sys.stderr)
        return EXIT_CODES[signal.SIGINT]
    except (ValueError, OSError, WeightsUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_outcome(summary, cfg, out, tag)
    if args.json:
        print(strict_json(summary.to_dict()))
    return 0


def _train_into(run: RunDir, cfg: TrialConfig, data: KeypointData, tag: str, resumed: int) -> TrainSummary:
    """train() into an owned run folder: each epoch's row appended to metrics.csv as it ends,
    summary.json written however the run ends (completed, interrupted, or an error)."""
    bar = StepBar(sys.stderr, tag, cfg.max_epochs)
    bar.epoch = resumed + 1
    with Interrupts() as stop:
        def on_step(step: int, total: int) -> None:
            bar(step, total)
            stop.check()

        def report(row: dict[str, Any]) -> None:
            run.metrics.append(row)
            bar.epoch_done(row[metrics.EPOCH] + 1)
            print(_progress_line(row, cfg.max_epochs, tag), file=sys.stderr, flush=True)
            stop.check()   # the row is on disk: a safe point to stop

        try:
            summary = train(cfg, data, report, checkpoint_dir=str(run.folder),
                            resume_from=str(run.folder) if resumed else None, on_step=on_step)
        except Interrupted as exc:
            _summary_of_unfinished(run, "interrupted", signal=str(exc))
            raise
        except Exception as exc:
            _summary_of_unfinished(run, "error", error=(str(exc).splitlines() or [type(exc).__name__])[0])
            raise
        run.write_summary(summary.to_dict())
    return summary


def _summary_of_unfinished(run: RunDir, stopped: str, **why: str) -> None:
    """summary.json of a run that did not return: what its rows say. Only after an epoch of
    its own: a start that failed leaves the folder as it was (and a new one is removed), so the
    next start is not refused. Best effort: the error may be the full disk this write hits too."""
    if run.metrics.appended == 0:
        return
    with contextlib.suppress(OSError):
        run.write_summary({**summary_from_rows(run.metrics.rows), "stopped": stopped, **why})


def _print_outcome(summary: TrainSummary, cfg: TrialConfig, out: Path, tag: str) -> None:
    if summary.best_epoch == 0:   # diverged in its first epoch: no model worth keeping
        print(f"[{tag}] diverged in epoch {summary.epochs} (loss not finite; lr {cfg.lr:g}): no model "
              f"saved; epochs in {out / 'metrics.csv'}", file=sys.stderr)
    else:
        print(f"[{tag}] {summary.stopped} after {summary.epochs} epochs: best val RMSE "
              f"{summary.best_val_rmse_px:.3f} px at epoch {summary.best_epoch}; best model {out / BEST}",
              file=sys.stderr)


def train_config(cfg: TrialConfig, data: KeypointData | None = None, report: Report | None = None,
                 **options: Any) -> TrainSummary:
    """``fkd_core.train(cfg)``, the Python API: train() with the data loaded from cfg.data when
    not given, and the epoch rows dropped when no report is given (pass ``rows.append`` to keep
    them). ``options``: train()'s keyword arguments (checkpoint_dir, resume_from, on_step)."""
    data = load_for_config(cfg) if data is None else data
    return train(cfg, data, (lambda row: None) if report is None else report, **options)


api.make_callable(__name__, train_config)   # `from fkd_core import train; train(cfg)` (fkd_core.api)

if __name__ == "__main__":
    sys.exit(main())
