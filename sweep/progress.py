"""Live status of a running sweep: trials running and finished, the best validation RMSE so far
per arm, elapsed time and an estimate of the time left.

    progress = Progress(total=24)
    run_sweep(settings, data, callbacks=[progress], log=progress.print)

On a terminal one status line is redrawn in place (at most every ``every`` seconds) below the
sweep's own lines; ``log=progress.print`` lets those lines pass above it. Elsewhere (a log file,
CI) a plain status line is printed at most every ``plain_every`` seconds, so a long silence
still shows the sweep is alive. Ray's own progress tables stay off (``verbose=0``).

The best values are labelled "search": they come from the search phase, where trials have
different budgets and were picked by their luck, so they are not an estimate of the effect.
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from typing import IO, Any, Callable

from ray.tune import Callback

from fkd_core import metrics as M
from fkd_core.config import uses_shape

_FINISHED = ("TERMINATED", "ERROR")


def arm(cfg: dict[str, Any]) -> str:
    """The loss arm of a trial's config: the base loss, or base + shape term when alpha > 0."""
    base = cfg.get("loss", "mse")
    shape = cfg.get("shape", "none")
    return f"{base}+{shape}" if uses_shape(shape, cfg.get("alpha", 0.0)) else base


def duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def estimate_left(elapsed: float, done: float, total: int) -> float | None:
    """Seconds left at the rate so far; done counts running trials by their share of epochs.

    None before any work is done (no rate yet). ASHA stops trials early, so this leans long.
    """
    if done <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0.0) * elapsed / done


class Progress(Callback):
    """A Tune callback that shows the sweep's status. Counts come from Tune's trial list at each
    call (not from our own bookkeeping), so a resumed sweep shows its earlier trials too."""

    def __init__(self, total: int, *, stream: IO[str] | None = None, every: float = 1.0,
                 plain_every: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.before = 0
        """Trials of the sweep finished before this Tuner started (a resumed sweep's)."""
        self.stream = stream          # None: sys.stdout at each write (a stream may not pickle)
        self.every, self.plain_every, self.clock = every, plain_every, clock
        self.started = clock()
        self.last_draw = -math.inf
        self.drawn = False            # a status line is on screen (terminal only)
        # Tune calls on_trial_complete before it marks the trial TERMINATED.
        self.ended: set[str] = set()

    # --- output --------------------------------------------------------------------------
    @property
    def out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stdout

    @property
    def live(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)())

    def print(self, line: str) -> None:
        """Print one of the sweep's own lines above the status line."""
        self._clear()
        self.out.write(line + "\n")
        self.out.flush()
        if self.live:
            self.last_draw = -math.inf   # redraw below it at the next tick

    def _clear(self) -> None:
        if self.drawn:
            self.out.write("\r\033[K")
            self.drawn = False

    def _draw(self, trials: list, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last_draw < (self.every if self.live else self.plain_every):
            return
        self.last_draw = now
        line = self.status(trials, now - self.started)
        if self.live:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.out.write("\r" + line[:width] + "\033[K")   # no wrap: \r redraws one row
            self.drawn = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    # --- the status line -----------------------------------------------------------------
    def status(self, trials: list, elapsed: float) -> str:
        ended = [t.status in _FINISHED or t.trial_id in self.ended for t in trials]
        running = sum(t.status == "RUNNING" and not e for t, e in zip(trials, ended))
        finished = sum(ended)
        best: dict[str, float] = {}
        done = float(finished)
        for t, e in zip(trials, ended):
            cfg = t.config.get("cfg", {})
            value = (getattr(t, "metric_analysis", {}) or {}).get(M.OBJECTIVE, {}).get("min")
            if value is not None and math.isfinite(value):
                name = arm(cfg)
                best[name] = min(best.get(name, math.inf), value)
            if not e and t.status == "RUNNING" and t.last_result:
                epochs = max(int(cfg.get("max_epochs", 1)), 1)
                done += min(int(t.last_result.get(M.EPOCH, 0) or 0) / epochs, 1.0)
        arms = ", ".join(f"{k} {v:.3f}" for k, v in sorted(best.items())) or "-"
        left = estimate_left(elapsed, done, self.total - self.before)
        finished += self.before
        eta = "estimating time left" if left is None else f"~{duration(left)} left"
        # Counts and times first: a narrow terminal cuts the line's end, the per-arm values.
        return (f"[{finished}/{self.total} finished, {running} running, {duration(elapsed)} elapsed, "
                f"{eta}] best val RMSE px so far (search): {arms}")

    # --- Tune hooks ----------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        self.started, self.last_draw, self.drawn = self.clock(), -math.inf, False
        self.ended = set()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._draw(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        self._draw(trials, force=self.live)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        self._draw(trials, force=self.live)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._clear()
        self.out.flush()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the experiment; a terminal stream does not pickle.
        return {**self.__dict__, "stream": None, "drawn": False}
