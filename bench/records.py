"""Record benchmark: what recording one finished trial costs, and the driver's memory, as a sweep
grows; the writer before issue 20 (every row in memory, both files rewritten per trial) against
the parts writer (sweep.results.ResultsWriter.save, sweep.store), measured in one run.

    python -m bench.records            # 100 / 1k / 10k / 100k trials (~15 min, ~3 GB of temp disk)
    python -m bench.records --quick    # 100 / 1k trials (~1 min)

Records are shaped like real ones: a real trials.parquet row (every column, from
sweep.results.trial_record) and 80 epoch rows per trial, each with its own values.
- Record time at N trials: the median wall time of recording a few more trials once the sweep holds
  N. The reference rewrites everything, so it is measured at 100, 1k and 10k; its 100k point is
  extrapolated linearly from 1k and 10k (a rewrite costs in proportion to the rows it writes)
  and labelled so. Ours records into a folder that holds N trials' parts: filled with byte
  copies of one trial's two parts (same count and size as a real sweep's), then real records.
- Driver memory: the Python heap (tracemalloc peak) of the writer's state at N trials plus those
  records; Arrow's own buffers are not counted, which favours the reference. Per recorded
  trial it is the slope between the two largest N.
- Compaction at N: folding N trials' parts into the two files (ours only, once per sweep),
  next to one rewrite of the reference (which it did after every trial).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

from fkd_core import metrics as M
from fkd_core.config import TrialConfig
from sweep import results as R
from sweep import store as S

EPOCHS = 80          # epoch rows per trial, as a 80-epoch recipe reports
FLAT_TARGET = 1.5    # ours: record time at the largest N over the time at 100 trials
BYTES_TARGET = 512   # ours: heap per recorded trial; one epoch row alone is ~700 B
SIZES = {True: (100, 1000), False: (100, 1000, 10_000, 100_000)}
REFERENCE_MAX = 10_000   # larger N: the reference is extrapolated


# --- synthetic records -------------------------------------------------------------------

def epoch_rows(i: int) -> dict[int, dict[str, Any]]:
    """80 epoch rows of trial i, every EPOCH_KEYS column, values distinct per trial."""
    rows = {}
    for e in range(1, EPOCHS + 1):
        rmse = 2.0 + 8.0 / e + (i % 97) * 1e-3
        rows[e] = {k: float(rmse * (j + 1)) for j, k in enumerate(R.EPOCH_KEYS)}
        rows[e].update({M.EPOCH: e, M.DIVERGED: False})
        rows[e].update(dict.fromkeys(M.TEST_GROUP_KEYS))   # per-group lists: confirm trials only
    return rows


def trial(i: int) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """(record, epoch rows) of synthetic trial i."""
    rows = epoch_rows(i)
    cfg = TrialConfig(shape="cgd", alpha=0.01, seed=i, max_epochs=EPOCHS)
    rec = R.trial_record(
        trial_id=f"trial_{i:06d}", experiment="bench", cfg=cfg, rows=list(rows.values()),
        status="completed", error=None, wall_seconds=60.0 + i, node="node-0", device="cpu",
        device_name="x86_64", data=R.DataInfo("synthetic(n=2000)", "ab12", True),
        best_checkpoint="", versions="{}", git_commit="0" * 40)
    return rec, rows


# --- the reference: the writer before issue 20 -------------------------------------------

class RewriteAll:
    """ResultsWriter.write() as it was: every record and epoch row in memory, both files
    rewritten (temporary file + rename) after every finished trial."""

    def __init__(self, folder: str):
        self.folder = folder
        self.records: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}

    def add(self, rec: dict[str, Any], rows: dict[int, dict[str, Any]]) -> None:
        self.records[rec["trial_id"]] = rec
        self.rows[rec["trial_id"]] = rows

    def record(self, rec: dict[str, Any], rows: dict[int, dict[str, Any]]) -> None:
        self.add(rec, rows)
        S.write_atomic(R.to_table(self.records.values(), R.trial_schema()),
                       f"{self.folder}/{S.TRIALS_FILE}")
        epochs = [{"trial_id": t, **row} for t, by_epoch in self.rows.items()
                  for _, row in sorted(by_epoch.items())]
        S.write_atomic(R.to_table(epochs, R.epoch_schema()), f"{self.folder}/{S.EPOCHS_FILE}")


def reference_at(n: int, folder: str) -> RewriteAll:
    writer = RewriteAll(folder)
    for i in range(n):
        writer.add(*trial(i))
    return writer


# --- ours ----------------------------------------------------------------------------------

def parts_writer(folder: str, n: int) -> R.ResultsWriter:
    """A ResultsWriter as it stands at trial n of a sweep: n trials recorded (their ids held)."""
    writer = R.ResultsWriter(folder, "bench", {}, log=None)
    writer.recorded = {f"trial_{i:06d}": EPOCHS for i in range(n)}
    return writer


def fill_parts(folder: str, n: int) -> None:
    """n trials' parts: byte copies of one real trial's two parts, under n trial ids."""
    rec, rows = trial(0)
    probe = R.ResultsWriter(folder, "bench", {}, log=None)
    probe.rows[rec["trial_id"]] = rows
    probe.save(rec)
    for name in (S.TRIALS_FILE, S.EPOCHS_FILE):
        (first,) = S.list_parts(folder, name)
        data, parent = Path(first).read_bytes(), Path(first).parent
        for i in range(1, n):
            (parent / f"{time.time_ns():020d}-trial_{i:06d}.parquet").write_bytes(data)


def ours_record(writer: R.ResultsWriter, rec: dict[str, Any], rows: dict[int, dict[str, Any]]) -> None:
    writer.rows[rec["trial_id"]] = rows      # what on_trial_result collected
    writer.save(rec)


# --- measuring -----------------------------------------------------------------------------

def median_record_s(record: Callable[[dict, dict], None], first: int, count: int) -> float:
    """Median wall seconds of recording trials first .. first+count-1 (built outside the clock;
    the median, so that another process's burst on a shared machine counts least)."""
    made = [trial(first + k) for k in range(count)]
    times = []
    for rec, rows in made:
        start = time.perf_counter()
        record(rec, rows)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(build: Callable[[], Any], work: Callable[[Any], None]) -> int:
    """tracemalloc peak while work(state) runs on the state build() returns: the state's heap
    plus what the work allocates (build's own passing allocations, e.g. reading git's HEAD for
    provenance, are not counted)."""
    tracemalloc.start()
    try:
        state = build()
        tracemalloc.reset_peak()
        work(state)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure_reference(n: int, tmp: Path, count: int) -> dict[str, float]:
    folder = str(tmp / f"ref-{n}")
    writer = reference_at(n, folder)
    record_s = median_record_s(writer.record, n, count)
    del writer
    memory = peak_bytes(lambda: reference_at(n, folder), lambda w: w.record(*trial(n)))
    shutil.rmtree(folder, ignore_errors=True)
    return {"record_s": record_s, "memory": memory}


def measure_ours(n: int, tmp: Path, count: int) -> dict[str, float]:
    folder = str(tmp / f"ours-{n}")
    fill_parts(folder, n)
    writer = parts_writer(folder, n)
    record_s = median_record_s(lambda rec, rows: ours_record(writer, rec, rows), n, count)

    def records(w: R.ResultsWriter) -> None:
        for k in range(count):
            ours_record(w, *trial(n + count + k))
    memory = peak_bytes(lambda: parts_writer(folder, n + count), records)
    start = time.perf_counter()
    S.compact(folder)
    compact_s = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    return {"record_s": record_s, "memory": memory, "compact_s": compact_s}


def slope(points: dict[int, dict[str, float]], key: str) -> float:
    """Change of ``key`` per trial between the two largest measured N."""
    (a, low), (b, high) = sorted(points.items())[-2:]
    return (high[key] - low[key]) / (b - a)


def extrapolate(points: dict[int, dict[str, float]], key: str, n: int) -> float:
    """Linear in N through the two largest measured points (the reference's cost is ~ rows held)."""
    largest = max(points)
    return points[largest][key] + slope(points, key) * (n - largest)


def at(points: dict[int, dict[str, float]], key: str, n: int) -> float:
    """The measured value at n, else the extrapolated one."""
    return points[n][key] if n in points else extrapolate(points, key, n)


# --- rows ----------------------------------------------------------------------------------

def _row(name: str, reference: float | None, ours: float | None, target: str = "reported",
         passed: bool | None = None, note: str = "") -> dict:
    ratio = reference / ours if reference is not None and ours else None
    return {"name": name, "reference": reference, "ours": ours, "ratio": ratio,
            "target": target, "passed": passed, "note": note}


def label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def run(quick: bool = False) -> list[dict]:
    """Rows {name, reference, ours, ratio (reference / ours), target, passed}."""
    sizes, count = SIZES[quick], 5 if quick else 20
    with tempfile.TemporaryDirectory(prefix="bench-records-") as tmp:
        ours = {n: measure_ours(n, Path(tmp), count) for n in sizes}
        ref = {n: measure_reference(n, Path(tmp), 2 if n >= 10_000 else count)
               for n in sizes if n <= REFERENCE_MAX}
    return (record_rows(ref, ours, sizes) + memory_rows(ref, ours, sizes)
            + compaction_rows(ref, ours, sizes) + [sweep_total_row(ref, ours, sizes[-1])])


def record_rows(ref: dict, ours: dict, sizes: tuple[int, ...]) -> list[dict]:
    fitted = "reference extrapolated linearly from " + " and ".join(label(k) for k in sorted(ref)[-2:])
    rows = [_row(f"record time per trial at {label(n)} trials (ms)", 1e3 * at(ref, "record_s", n),
                 1e3 * ours[n]["record_s"], note="" if n in ref else fitted) for n in sizes]
    small, big = sizes[0], sizes[-1]
    flat = ours[big]["record_s"] / ours[small]["record_s"]
    rows.append(_row(f"record time at {label(big)} / at {label(small)} trials",
                     at(ref, "record_s", big) / ref[small]["record_s"], flat,
                     f"ours <= {FLAT_TARGET}", flat <= FLAT_TARGET))
    return rows


def memory_rows(ref: dict, ours: dict, sizes: tuple[int, ...]) -> list[dict]:
    rows = [_row(f"driver memory at {label(n)} trials (MB, Python heap)",
                 at(ref, "memory", n) / 2**20, ours[n]["memory"] / 2**20,
                 note="" if n in ref else "reference extrapolated") for n in sizes]
    per_trial = slope(ours, "memory")
    rows.append(_row("driver memory per recorded trial (bytes)", slope(ref, "memory"), per_trial,
                     f"ours <= {BYTES_TARGET} (no epoch row held)", per_trial <= BYTES_TARGET))
    return rows


def compaction_rows(ref: dict, ours: dict, sizes: tuple[int, ...]) -> list[dict]:
    return [_row(f"compaction at {label(n)} trials (s): one rewrite (reference, after every "
                 "trial) vs one compaction (ours, once per sweep)", at(ref, "record_s", n),
                 ours[n]["compact_s"], note="" if n in ref else "reference extrapolated")
            for n in sizes]


def sweep_total_row(ref: dict, ours: dict, n: int) -> dict:
    """Hours a whole n-trial sweep spends recording: the reference sums its growing rewrites
    (linear per trial, so quadratic in all), ours n records plus one compaction."""
    per_trial, largest = slope(ref, "record_s"), max(ref)
    base = ref[largest]["record_s"] - per_trial * largest
    reference = (base * n + per_trial * n * (n + 1) / 2) / 3600
    mine = (ours[n]["record_s"] * n + ours[n]["compact_s"]) / 3600
    return _row(f"hours spent recording a whole {label(n)}-trial sweep", reference, mine,
                note="reference extrapolated from its per-trial cost at "
                + " and ".join(label(k) for k in sorted(ref)[-2:]))


def main(argv: list[str] | None = None) -> int:
    from bench.sweep_overhead import print_rows

    parser = argparse.ArgumentParser(prog="python -m bench.records", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 1k trials only")
    print_rows(run(parser.parse_args(argv).quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
