"""The read path: an archive back into PostgreSQL, exactly, and proven so by its fingerprint.

:func:`load_into` streams a local archive file of any format and codec the project writes into an
existing table (``COPY ... FROM STDIN``, or ``json_populate_recordset`` for JSONL) in flat memory;
the deep verification loads an archive into a temporary table with it and compares fingerprints.
:func:`restore_day` is the whole trip for one day: manifest -> verified download -> a new table,
an existing one, or the original table (re-creating a dropped partition) -> fingerprint compared
in the same transaction, which is rolled back if the restored rows are not the archived day.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import psycopg
import pyarrow as pa
from psycopg import sql

from archive_pipeline import fingerprint as fp
from archive_pipeline import readers
from archive_pipeline.errors import ArchiveError, is_retryable
from archive_pipeline.source import Column, describe_table, prefetch

_names = itertools.count()


class RestoreError(ArchiveError):
    """A restore could not be done as asked; nothing of it was committed."""


class ArchiveCorruptError(RestoreError):
    """The downloaded object is not the one its manifest describes (size or MD5), or does not decode."""


class FingerprintMismatchError(RestoreError):
    """The restored rows are not the archived day's rows; the restore was rolled back."""


class RestoreConflictError(RestoreError):
    """Restored rows collide with rows already in the target (primary key or unique constraint)."""


def manifest_columns(manifest: dict) -> list[str]:
    return [c["name"] for c in manifest["columns"]]


def _column_list(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


@contextlib.contextmanager
def _input_settings(conn: psycopg.Connection) -> Iterator[None]:
    """Money was archived as numeric text; money's input reads it in the "C" monetary locale only
    (elsewhere the decimal point may be a comma). The previous setting is put back afterwards, since
    money's text output (and so a fingerprint) depends on it."""
    previous = conn.execute("SELECT current_setting('lc_monetary')").fetchone()[0]
    conn.execute("SELECT set_config('lc_monetary', 'C', true)")
    try:
        yield
    finally:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            conn.execute("SELECT set_config('lc_monetary', %s, true)", (previous,))


def _copy(conn: psycopg.Connection, statement: sql.Composable, chunks: Iterator[pa.Buffer | bytes]) -> int:
    """Feed ``chunks`` to ``COPY ... FROM STDIN``; a reader thread decodes the next chunk meanwhile
    (at most two wait in memory)."""
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            for chunk in prefetch(chunks, depth=2):
                copy.write(memoryview(chunk))
        return cur.rowcount


def load_into(conn: psycopg.Connection, archive_path: str | os.PathLike, manifest: dict,
              target: sql.Composable) -> int:
    """Load the rows of the local archive file ``archive_path`` (described by ``manifest``) into the
    existing table ``target`` and return how many were loaded.

    ``target`` must have the manifest's columns (by name) with the manifest's types; other columns
    get their defaults. Every value comes back as PostgreSQL had it, for every type of the README's
    type table (see :mod:`archive_pipeline.readers` for how each format is read). Runs in the
    caller's transaction if there is one (as a savepoint), else in its own; memory stays flat.
    """
    fmt, compression = manifest["format"], manifest["compression"]
    columns = manifest_columns(manifest)
    cols = _column_list(columns)
    try:
        with conn.transaction(), _input_settings(conn):
            if fmt == "csv":
                match = "MATCH" if conn.info.server_version >= 150000 else "true"
                statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER {})").format(
                    target, cols, sql.SQL(match))
                return _copy(conn, statement, readers.decompressed_chunks(archive_path, compression))
            if fmt == "parquet":
                statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(target, cols)
                return _copy(conn, statement, readers.parquet_csv_chunks(archive_path, columns))
            if fmt == "jsonl":
                statement = sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM json_populate_recordset(NULL::{t}, %s::json)"
                                    ).format(t=target, c=cols)
                rows = 0
                for block in prefetch(readers.jsonl_arrays(archive_path, compression), depth=2):
                    rows += conn.execute(statement, (block,), prepare=False).rowcount
                return rows
            raise readers.ArchiveDecodeError(f"unknown format {fmt!r}")
    except (readers.ArchiveDecodeError, pa.ArrowInvalid, OSError, UnicodeDecodeError,
            psycopg.errors.DataException, psycopg.errors.BadCopyFileFormat, psycopg.errors.InvalidTextRepresentation
            ) as exc:
        raise ArchiveCorruptError(
            f"the archive of {manifest.get('table')} for {manifest.get('day')} ({fmt}/{compression}, "
            f"{manifest.get('object', {}) and (manifest.get('object') or {}).get('key')}) does not load: "
            f"{type(exc).__name__}: {exc}; check the object against its manifest (MD5) and restore from a "
            "good copy", table=manifest.get("table"), day=manifest.get("day"), retryable=False) from exc
