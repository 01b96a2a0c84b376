"""A sweep owns its results folder: one running ``sweep.run`` per ``--name`` at a time.

Two sweeps of the same name would share optuna.db and Tune's folder, and the last one to write
trials.parquet would overwrite the other's trials. ``SweepLock`` holds an exclusive ``flock`` on
``<results>/<name>/.lock`` for the whole run. The kernel drops the lock when the process ends,
however it ends (``kill -9`` included), so a crashed run never blocks the next one; the file's
text (pid, host, start time) only serves the message a second run prints:

    with SweepLock(Path("results/my-study")):     # SweepBusy: "... is in use by pid 123 ..."
        ...

Local folders only: for an s3:// / gs:// results URI the lock lives in the local cache folder of
the name, which keeps two drivers on this machine apart (a cloud sweep has one driver, the head).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path

LOCK_FILE = ".lock"
# One path segment that is also a valid Ray experiment, Optuna study and S3 key name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")


class FolderError(ValueError):
    """A --name or --results-dir that cannot hold a sweep; the message is one line for users."""


def check_name(name: str) -> None:
    """A sweep name is one folder under the results directory, never a path out of it."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise FolderError(f"--name {name!r}: must be one folder name (letters, digits and . _ + = -, "
                          "starting with a letter or digit, at most 128 characters)")


def check_writable(root: str) -> None:
    """Create ``root`` and write a file there, so that an unwritable --results-dir fails before
    Ray starts rather than with a Traceback minutes later (URIs are checked by their first write)."""
    if "://" in root:
        return
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".fkd-write-test-"):
            pass
    except OSError as err:
        raise FolderError(f"--results-dir {root}: cannot write there ({err.strerror or err})") from None


class SweepBusy(RuntimeError):
    """Another live process holds the sweep's lock; the message is one line for users."""


def lock_dir(results_uri: str, name: str) -> Path:
    """Where the lock file of a sweep lives: its results folder, or a local cache for URIs."""
    if "://" in results_uri:
        return Path.home() / ".cache" / "fkd-sweep" / name
    return Path(results_uri)


class SweepLock:
    """Exclusive, crash-safe ownership of a sweep's folder (see the module docstring)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:   # until the file we lock is the one at self.path (release may unlink it)
            fd = self._lock_or_raise()
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}).encode())
        self._fd = fd

    def _lock_or_raise(self) -> int:
        # O_CLOEXEC (Python's default): Ray's processes started from this one must not inherit
        # the descriptor, or a Ray process outliving a killed driver would keep the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise SweepBusy(f"{self.path.parent} is in use by another sweep ({holder}); wait for "
                            "it to end or pick another --name") from None
        return fd

    def release(self) -> None:
        """Drop the lock; a folder that holds nothing but the lock file (a start that failed
        before writing anything) goes too, so that it does not look like a sweep."""
        if self._fd is None:
            return
        try:
            if [p.name for p in self.path.parent.iterdir()] == [LOCK_FILE]:
                self.path.unlink()   # while still locked: a waiting acquire then retries
                self.path.parent.rmdir()
        except OSError:
            pass   # something appeared meanwhile, or the folder is not ours to remove
        os.close(self._fd)    # closing drops the flock; the file stays for the next run
        self._fd = None

    def __enter__(self) -> "SweepLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode())
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its details yet"
