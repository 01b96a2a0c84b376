"""A results writer that meets a full or read-only disk stops the sweep as Ctrl-C does.

Tune catches an exception raised in a callback, logs its traceback ("Error stopping trial") and
retries the trial, which would run a finished trial again and print a screen of stack. Wrapped
in a ``WriteGuard``, the writer's first OSError (ENOSPC, EROFS, EIO, ...) is kept instead, Tune
is interrupted through its own SIGINT handler (running trials stop with their state kept, as on
Ctrl-C: the sweep is resumable), the writer is called no more, and ``raise_if_failed`` raises
the error after ``fit`` for sweep.run to print in one line:

    guard = WriteGuard(R.ResultsWriter(...))
    tuner = tune.Tuner(..., run_config=tune.RunConfig(callbacks=[guard, ...]))
    tuner.fit()
    guard.raise_if_failed()
"""
from __future__ import annotations

import signal
from typing import Any, Callable

from ray.tune import Callback
from ray.tune.callback import _CallbackMeta


class WriteGuard(Callback):
    """Every Tune hook goes to ``writer``; its first OSError stops the sweep (module docstring)."""

    def __init__(self, writer: Callback):
        self.writer = writer
        self.error: OSError | None = None

    def _call(self, hook: str, *args: Any, **kwargs: Any) -> Any:
        if self.error is not None:
            return None   # the disk refused a write: later ones would fail the same way
        try:
            return getattr(self.writer, hook)(*args, **kwargs)
        except OSError as err:
            self.error = err
            _interrupt_tune()
            return None

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


def _interrupt_tune() -> None:
    """What Ctrl-C does: Tune's handler during fit (callbacks run on the driver's main thread)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, None)


def _forward(hook: str) -> Callable[..., Any]:
    def method(self: WriteGuard, *args: Any, **kwargs: Any) -> Any:
        return self._call(hook, *args, **kwargs)

    method.__name__ = method.__qualname__ = hook
    return method


# The hooks as Tune itself tells them apart (_CallbackMeta), so a hook added to Tune is guarded too.
for _hook in [n for n, a in vars(Callback).items() if _CallbackMeta.need_override_by_subclass(n, a)]:
    setattr(WriteGuard, _hook, _forward(_hook))
