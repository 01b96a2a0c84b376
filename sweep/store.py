"""A results folder's Parquet storage: append-only parts, the one reader, crash-safe compaction.

No Ray, no torch: readers (sweep.analyze, notebooks) import it cheaply. Layout of a sweep's
folder (local, s3:// or gs://):

    trials.parquet            compacted: one row per trial (also the committed studies' format)
    epochs.parquet            compacted: one row per trial and epoch
    parts/trials/<seq>-<trial_id>.parquet   one part per recorded trial, since the compaction
    parts/epochs/<seq>-<trial_id>.parquet   that trial's every epoch row
    parts/unfinished/...      epochs of trials not recorded yet (kept for --resume, never read as results)

A part is written atomically (temporary file + rename; on an object store one put of the whole
file), so recording a trial costs two small writes whatever the sweep's size. A trial's newest
part replaces everything older about that trial (an older part, its rows in the compacted file):
a retried or re-recorded trial reads once. ``read_results`` applies that rule to the compacted
file and the parts together; ``compact`` folds the parts into the compacted file (a new file
renamed over the old one, then the parts deleted), so a kill at any point leaves either the old
file and the parts or the new file and parts it already holds: nothing lost, nothing read twice.

    python -m sweep.store compact results/<name>     # fold the parts now (a sweep's end does it)

    >>> from sweep.store import read_results, TRIALS_FILE
    >>> trials = read_results("results/fkd-yt15-quick", TRIALS_FILE).to_pandas()
"""
from __future__ import annotations

import argparse
import os
import posixpath
import sys
import time
import uuid
from typing import Callable, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweep import commands
from sweep.lock import SweepBusy, SweepLock, lock_dir

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
PARTS_DIR = "parts"
UNFINISHED = "unfinished"
"""parts/ folder of epoch rows of trials not yet recorded (read back only by ResultsWriter.setup)."""
KEY = "trial_id"
# Parts read per Arrow dataset scan while compacting: bounds memory (a chunk of 1024 trials'
# epochs is ~80k rows) and gives the compacted file row groups of a useful size.
CHUNK = 1024
# Threads cost more than they bring on parts of one row (trials) or 80 rows (epochs): measured
# 2x slower scans with them (bench/records.py's compaction row).
THREADS = False
_SUFFIX = ".parquet"


class DamagedResults(ValueError):
    """A results file that cannot be read; the message names it and how to recover, one line."""


# --- paths and single files ---------------------------------------------------------------

def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or an s3:// / gs:// URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def parts_dir(results_uri: str, name: str) -> str:
    """parts/trials for trials.parquet, parts/epochs for epochs.parquet, parts/unfinished."""
    return f"{results_uri.rstrip('/')}/{PARTS_DIR}/{name.removesuffix(_SUFFIX)}"


def part_uri(results_uri: str, name: str, trial_id: str) -> str:
    """A new part's URI; the nanosecond prefix orders parts as they were written."""
    return f"{parts_dir(results_uri, name)}/{time.time_ns():020d}-{trial_id}{_SUFFIX}"


def part_trial(path: str) -> str:
    """The trial id a part's file name carries."""
    return posixpath.basename(path).removesuffix(_SUFFIX).split("-", 1)[1]


def list_parts(results_uri: str, name: str) -> list[str]:
    """Paths of a file's parts, oldest first; temporaries (.name) and set-aside ones (_name) skipped."""
    fs, path = filesystem(parts_dir(results_uri, name))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted((i.path for i in infos if i.type == pafs.FileType.File
                   and i.base_name.endswith(_SUFFIX) and i.base_name[0] not in "._"),
                  key=posixpath.basename)


def newest_parts(paths: Iterable[str]) -> dict[str, str]:
    """trial id -> its newest part, from paths listed oldest first."""
    return {part_trial(p): p for p in paths}


def write_atomic(table: pa.Table, uri: str) -> None:
    """Write a Parquet file so that readers see the old file or the new one, never half of one."""
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if "://" in uri:   # an object appears whole when its one put completes
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        with fs.open_output_stream(path) as out:
            out.write(sink.getvalue())
        return
    tmp = _temporary(path)
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def _temporary(path: str) -> str:
    # A leading dot: pyarrow datasets, pandas and DuckDB's *.parquet globs all skip it.
    return posixpath.join(posixpath.dirname(path),
                          f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")


def read_table(uri: str) -> pa.Table | None:
    """One Parquet file's table, None when there is no file; a damaged file raises DamagedResults."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    return read_checked(lambda: pq.read_table(path, filesystem=fs), uri)


def read_part(fs: pafs.FileSystem, path: str) -> pa.Table:
    """One part (a path from ``list_parts``) as a table; a damaged one raises DamagedResults."""
    return read_checked(lambda: pq.read_table(path, filesystem=fs), path)


def damaged(uri: str, err: Exception) -> DamagedResults:
    folder = uri.split(f"/{PARTS_DIR}/")[0] if f"/{PARTS_DIR}/" in uri else posixpath.dirname(uri)
    parent, name = posixpath.split(folder.rstrip("/"))
    resume = commands.module("sweep.run", "--name", name, "--results-dir", parent or ".", "--resume")
    return DamagedResults(f"{uri}: damaged Parquet file ({' '.join(str(err).split())[:120]}); "
                          f"{resume} rebuilds it from the sweep's other records (optuna.db, "
                          "ray/ trial folders)")


def read_checked(read: Callable[[], pa.Table], uri: str) -> pa.Table:
    """``read()`` with a truncated or foreign file turned into one DamagedResults line."""
    try:
        return read()
    except (pa.ArrowInvalid, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise damaged(uri, err) from None


# --- the one reader -----------------------------------------------------------------------

def read_results(results_uri: str, name: str, *, columns: Sequence[str] | None = None,
                 where: ds.Expression | None = None,
                 trial_ids: Iterable[str] | None = None) -> pa.Table | None:
    """trials.parquet or epochs.parquet of a results folder as one table: the compacted file
    (or a committed study's single file) and the parts, each trial from its newest source.

    ``columns`` and ``where`` (a pyarrow.dataset expression) are pushed into the scan;
    ``trial_ids`` reads only those trials (only their parts are opened).
    None when the folder holds neither file nor parts.
    """
    fs, _ = filesystem(results_uri)
    parts = newest_parts(list_parts(results_uri, name))
    if trial_ids is not None:
        wanted = set(trial_ids)
        parts = {t: p for t, p in parts.items() if t in wanted}
        only = pc.field(KEY).isin(pa.array(sorted(wanted), pa.string()))
        where = only if where is None else where & only
    compacted = f"{results_uri.rstrip('/')}/{name}"
    base = _scan_file(compacted, set(parts), columns, where)
    tables = [] if base is None else [base]
    if parts:
        tables.append(_scan_parts(fs, list(parts.values()), columns, where))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _scan_file(uri: str, superseded: set[str], columns: Sequence[str] | None,
               where: ds.Expression | None) -> pa.Table | None:
    """The compacted file's rows, less the trials a part supersedes."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    if superseded:
        keep = ~pc.field(KEY).isin(pa.array(sorted(superseded), pa.string()))
        where = keep if where is None else where & keep
    return read_checked(lambda: ds.dataset(path, format="parquet", filesystem=fs)
                        .to_table(columns=_present(fs, [path], columns), filter=where), uri)


def _scan_parts(fs: pafs.FileSystem, paths: list[str], columns: Sequence[str] | None,
                where: ds.Expression | None) -> pa.Table:
    schema = parts_schema(fs, paths)
    cols = None if columns is None else [c for c in columns if c in schema.names]
    try:
        return ds.dataset(paths, schema=schema, format="parquet", filesystem=fs) \
            .to_table(columns=cols, filter=where, use_threads=THREADS)
    except (pa.ArrowInvalid, OSError) as err:
        raise damaged(_first_damaged(fs, paths) or paths[0], err) from None


def _present(fs: pafs.FileSystem, paths: list[str], columns: Sequence[str] | None) -> list[str] | None:
    """The asked-for columns a file has (a study older than a column reads without it)."""
    if columns is None:
        return None
    names = set(pq.read_schema(paths[0], filesystem=fs).names)
    return [c for c in columns if c in names]


def parts_schema(fs: pafs.FileSystem, paths: list[str]) -> pa.Schema:
    """The union of the parts' columns: parts written by an older version lack new columns."""
    try:
        return pa.unify_schemas([pq.read_schema(p, filesystem=fs) for p in paths])
    except (pa.ArrowInvalid, OSError) as err:
        raise damaged(_first_damaged(fs, paths) or paths[0], err) from None


def _first_damaged(fs: pafs.FileSystem, paths: list[str]) -> str | None:
    for path in paths:
        try:
            pq.read_metadata(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError):
            return path
    return None


# --- compaction ---------------------------------------------------------------------------

def compact(results_uri: str) -> dict[str, int]:
    """Fold the parts of trials.parquet and epochs.parquet into the files; {name: parts folded}.

    Run by the driver at a sweep's end and by ``python -m sweep.store compact``; never two at
    once on a folder (both hold the sweep's lock), while a running sweep may add parts: a part
    written after the listing stays and still supersedes what it replaces.
    """
    return {name: _compact_one(results_uri, name) for name in (TRIALS_FILE, EPOCHS_FILE)}


def _compact_one(results_uri: str, name: str) -> int:
    paths = list_parts(results_uri, name)
    if not paths:
        return 0
    fs, target = filesystem(f"{results_uri.rstrip('/')}/{name}")
    newest = newest_parts(paths)
    has_base = fs.get_file_info(target).type == pafs.FileType.File
    schemas = [parts_schema(fs, list(newest.values()))]
    if has_base:
        schemas.insert(0, read_checked(lambda: pq.read_schema(target, filesystem=fs), target))
    schema = pa.unify_schemas(schemas)
    tmp = _temporary(target)
    with pq.ParquetWriter(tmp, schema, filesystem=fs) as out:
        if has_base:
            _copy_base(fs, target, set(newest), schema, out)
        chunk_paths = list(newest.values())
        for i in range(0, len(chunk_paths), CHUNK):
            out.write_table(ds.dataset(chunk_paths[i:i + CHUNK], schema=schema, format="parquet",
                                       filesystem=fs).to_table(use_threads=THREADS))
    fs.move(tmp, target)   # the moment the folded parts become redundant, never lost
    for path in paths:
        fs.delete_file(path)
    return len(paths)


def _copy_base(fs: pafs.FileSystem, path: str, superseded: set[str], schema: pa.Schema,
               out: pq.ParquetWriter) -> None:
    """Stream the old compacted file into ``out``, less the trials the parts replace."""
    keep = ~pc.field(KEY).isin(pa.array(sorted(superseded), pa.string()))
    scan = ds.dataset(path, format="parquet", filesystem=fs).scanner(filter=keep)
    try:
        for batch in scan.to_batches():
            if batch.num_rows:
                out.write_table(conform(pa.Table.from_batches([batch]), schema))
    except (pa.ArrowInvalid, OSError) as err:
        raise damaged(path, err) from None


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, in its order; a missing column is all null."""
    cols = [table[f.name].cast(f.type) if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


# --- damaged files ------------------------------------------------------------------------

def set_aside_damaged(results_uri: str) -> list[DamagedResults]:
    """Rename every unreadable compacted file or part out of the way; the errors, one per file.

    A compacted file becomes ``<name>.damaged-<time>``, a part ``_<part>.damaged-<time>`` in its
    folder (no reader sees either); ``--resume`` then records the lost trials again.
    """
    fs, _ = filesystem(results_uri)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    found = []
    for name in (TRIALS_FILE, EPOCHS_FILE):
        compacted = filesystem(f"{results_uri.rstrip('/')}/{name}")[1]
        for path in (compacted, *list_parts(results_uri, name)):
            if fs.get_file_info(path).type != pafs.FileType.File:
                continue
            try:
                pq.read_table(path, filesystem=fs)
            except (pa.ArrowInvalid, OSError) as err:
                head, base = posixpath.split(path)
                fs.move(path, f"{path}.damaged-{stamp}" if path == compacted
                        else posixpath.join(head, f"_{base}.damaged-{stamp}"))
                found.append(damaged(f"{results_uri.rstrip('/')}/{name}" if path == compacted
                                     else path, err))
    return found


# --- command line -------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sweep.store", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compact", help="fold parts/ into trials.parquet and epochs.parquet")
    c.add_argument("results", help="results folder: results/<name>, s3://... or gs://...")
    args = p.parse_args(argv)
    uri = args.results.rstrip("/")
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        print(f"sweep.store: error: {uri}: no such results folder", file=sys.stderr)
        return 2
    lock = SweepLock(lock_dir(uri, posixpath.basename(uri)))
    try:
        lock.acquire()
        folded = compact(uri)
    except (SweepBusy, DamagedResults) as err:
        print(f"sweep.store: error: {err}", file=sys.stderr)
        return 2
    finally:
        lock.release()
    print(", ".join(f"{name}: {n} parts folded" for name, n in folded.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
