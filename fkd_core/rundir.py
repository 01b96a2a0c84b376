"""A training run's folder (``python -m fkd_core.train --out DIR``) behaves like a sweep's results
folder: one owner at a time, never silently overwritten, its history on disk after every epoch.

    with RunDir.open(Path("runs/cgd"), resume=False, overwrite=False) as run:   # RunDirError
        with Interrupts() as stop:          # Ctrl-C / SIGTERM end the run at the next safe point
            ...  # on every epoch's row: run.metrics.append(row); stop.check()
        run.write_summary({"stopped": "max_epochs", ...})

- ``RunLock``: an exclusive ``flock`` on ``DIR/.lock`` for the whole run (the idea of
  ``sweep/lock.py``; fkd_core never imports sweep). The kernel drops it however the process
  ends, ``kill -9`` included, so a crashed run never blocks the next.
- ``RunDir.open`` refuses a folder that holds a run unless ``resume`` (continue it) or
  ``overwrite`` (delete its files first) is given; a start that fails before writing anything
  leaves no folder that holds only ``.lock``.
- ``MetricsLog``: ``metrics.csv`` appended, flushed and fsynced once per epoch; on resume the
  rows after the checkpoint's epoch (epochs that will run again) are dropped first, so the file
  ends with each epoch once.
- ``Interrupts``: SIGINT and SIGTERM raise ``Interrupted`` only at a safe point (after a training
  step, or after an epoch's row is written), so that an epoch whose checkpoint is on disk always
  has its row in metrics.csv; a second signal raises at once.
- ``atomic_write``: write-then-rename; a failed write (a full disk) removes its temp file and
  names the path.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import signal
import socket
import time
from pathlib import Path
from types import FrameType
from typing import Any

from fkd_core import metrics

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
LOCK = ".lock"
RUN_FILES = (CHECKPOINT, BEST, METRICS, SUMMARY)
"""The files that make a folder hold a run (what --overwrite deletes)."""
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""128 + the signal number, as a shell reports a process ended by it."""


class RunDirError(ValueError):
    """A run folder that cannot be used as asked; the message is one line for users."""


class WriteFailed(OSError):
    """A file that could not be written (a full disk, a read-only folder): names the file."""

    def __str__(self) -> str:
        return f"{self.filename}: cannot write ({self.strerror})"


def atomic_write(path: Path, payload: bytes) -> None:
    """Write-then-rename, so a reader (or a crash) never sees half a file; a failed write leaves
    no temp file behind and raises WriteFailed naming ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except BaseException as err:   # a second Ctrl-C mid-write too
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise WriteFailed(err.errno, err.strerror or str(err), str(path)) from None
        raise


# --- ownership ---------------------------------------------------------------------------------

class RunLock:
    """Exclusive, crash-safe ownership of a run folder (see the module docstring)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        # O_CLOEXEC (Python's default): a child process must not inherit, and so keep, the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise RunDirError(f"{self.path.parent}: in use by another training run ({holder}); wait "
                              "for it to end or pick another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)    # closing drops the flock
            self._fd = None


def _describe(raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode())
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its details yet"


def existing_run(folder: Path) -> list[str]:
    """The run files in ``folder`` (empty: no run there)."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def check_start(folder: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before any data is loaded, a start that would mix two runs' files: a folder that
    holds a run needs --resume or --overwrite, and --resume needs its checkpoint.pt."""
    if resume and not (folder / CHECKPOINT).is_file():
        raise RunDirError(f"{folder / CHECKPOINT}: nothing to resume (--resume continues the run in --out)")
    found = existing_run(folder)
    if found and not (resume or overwrite):
        raise RunDirError(f"{folder}: holds a training run ({', '.join(found)}); pass --resume to "
                          "continue it or --overwrite to replace it")


class RunDir:
    """An owned run folder: its lock, its metrics log and its summary."""

    def __init__(self, folder: Path, lock: RunLock, created: bool, metrics_log: "MetricsLog"):
        self.folder, self.lock, self.created, self.metrics = folder, lock, created, metrics_log

    @classmethod
    def open(cls, folder: Path, *, resume: bool, overwrite: bool, resume_epoch: int = 0) -> "RunDir":
        """Create/lock ``folder`` and check it again under the lock (another run may have
        written it since check_start); ``overwrite`` deletes the old run's files, ``resume``
        keeps metrics.csv's rows up to ``resume_epoch`` (the checkpoint's)."""
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise WriteFailed(err.errno, err.strerror or str(err), str(folder)) from None
        lock = RunLock(folder)
        lock.acquire()
        try:
            check_start(folder, resume, overwrite)
            if overwrite:   # --overwrite and --resume exclude each other (the CLI's parser)
                for name in existing_run(folder):
                    (folder / name).unlink()
            for name in RUN_FILES:   # a killed writer's temp files: under the lock, nobody else's
                for tmp in folder.glob(f".{name}.*.tmp"):
                    tmp.unlink(missing_ok=True)
            log = MetricsLog(folder / METRICS, keep_until=resume_epoch if resume else 0)
        except BaseException:
            lock.release()
            raise
        return cls(folder, lock, created, log)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json, atomically, as strict JSON (non-finite numbers become null)."""
        atomic_write(self.folder / SUMMARY, (strict_json(summary) + "\n").encode())

    def close(self) -> None:
        """Close the log and drop the lock; a folder this run created and left holding only
        ``.lock`` (a start that failed) is removed."""
        self.metrics.close()
        self.lock.release()
        if self.created and {p.name for p in self.folder.iterdir()} <= {LOCK}:
            (self.folder / LOCK).unlink(missing_ok=True)
            self.folder.rmdir()

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def strict_json(values: dict[str, Any]) -> str:
    """JSON without Infinity/NaN tokens (strict parsers reject them): non-finite -> null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
    return json.dumps(clean)


# --- history -----------------------------------------------------------------------------------

class MetricsLog:
    """metrics.csv, one row per epoch, appended and made durable as each epoch ends."""

    def __init__(self, path: Path, keep_until: int = 0):
        """keep_until: keep the existing rows of epochs <= this (0: start a new file)."""
        self.path = path
        self.rows = self._kept_rows(keep_until) if keep_until > 0 else []
        self.appended = 0   # rows this process wrote
        self.fields = list(self.rows[0]) if self.rows else None
        self._file = None
        if self.rows:   # rewrite the kept rows (atomically), then append to that file
            atomic_write(path, self._csv_text(self.rows))
            self._file = open(path, "a", newline="")
        elif path.exists():
            path.unlink()

    def _kept_rows(self, keep_until: int) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [r for r in rows if r.get(metrics.EPOCH, "").isdigit() and int(r[metrics.EPOCH]) <= keep_until]

    def _csv_text(self, rows: list[dict[str, Any]]) -> bytes:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fields)
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue().encode()

    def append(self, row: dict[str, Any]) -> None:
        """Write one epoch's row and fsync it: kill -9 right after loses nothing."""
        try:
            if self._file is None:
                self.fields = list(row)
                self._file = open(self.path, "w", newline="")
                csv.DictWriter(self._file, fieldnames=self.fields).writeheader()
            csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore").writerow(row)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise WriteFailed(err.errno, err.strerror or str(err), str(self.path)) from None
        self.rows.append(row)
        self.appended += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def summary_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best and final validation metrics of the rows written so far (an interrupted run's
    summary: train() returned no TrainSummary). Values read back from the CSV are strings."""
    done = [{k: _number(v) for k, v in r.items()} for r in rows]
    if not done:
        return {"epochs": 0, "best_epoch": 0}
    best = min(done, key=lambda r: r[metrics.VAL_RMSE])
    last = done[-1]
    out: dict[str, Any] = {f"best_{k}": best[k] for k in metrics.VAL_METRICS}
    out["best_epoch"] = int(best[metrics.EPOCH]) if math.isfinite(best[metrics.VAL_RMSE]) else 0
    out |= {f"final_{k}": last[k] for k in metrics.VAL_METRICS}
    out["epochs"] = int(last[metrics.EPOCH])
    return out


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# --- signals -----------------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which (EXIT_CODES maps it to the exit code)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """SIGINT/SIGTERM handlers for the duration of a run, restored on exit.

    A signal is held until ``check()`` is called at a safe point; a second signal raises at
    once (someone who presses Ctrl-C twice does not want to wait for the epoch to end).
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is not None:
            raise Interrupted(signum)
        self.pending = signum

    def check(self) -> None:
        """Raise Interrupted if a signal arrived since the run started."""
        if self.pending is not None:
            raise Interrupted(self.pending)

    def __enter__(self) -> "Interrupts":
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
