"""Archive one day of one table: source -> format -> compress -> hashed temp file -> object store.

This is the whole hot path and it knows nothing of Dagster, so it can be tested, benchmarked and
run from a script the same way the asset runs it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from archive_pipeline import __version__, keys
from archive_pipeline.compression import get_codec
from archive_pipeline.config import TableSpec
from archive_pipeline.discovery import child_ranges, require_whole_days
from archive_pipeline.errors import ArchiveError, SourceError, is_retryable, redact
from archive_pipeline.formats import Extraction, Format, get_format
from archive_pipeline.manifest import build_manifest, encode_manifest, manifest_key
from archive_pipeline.memory import bound_allocator
from archive_pipeline.sink import temp_archive_file
from archive_pipeline.source import (
    SNAPSHOT_SETTINGS,
    Column,
    SourceTable,
    day_filter,
    describe_table,
    read_snapshot,
)
from archive_pipeline.store import S3Store, S3Upload
from archive_pipeline.verify import load_manifest, stored_object_problems

Progress = Callable[[int, int], None]  # (rows so far, formatted bytes so far)


class LateRowsError(ArchiveError):
    """The day changed in PostgreSQL after it was archived."""


@dataclass(frozen=True)
class ArchiveResult:
    table: str
    day: dt.date
    key: str
    uri: str
    rows: int
    bytes: int  # size of the stored object
    uncompressed_bytes: int  # formatted bytes before compression
    md5: str
    sha256: str
    format: str
    compression: str
    columns: tuple[Column, ...]
    output_types: dict[str, str]
    parts: int
    etag: str
    content_type: str
    content_encoding: str | None
    day_column: str | None
    source_relation: str  # the table read: the configured one, or the day's child in naming mode
    manifest_key: str
    snapshot_at: dt.datetime
    server_version: str
    extract_seconds: float  # until the last row was read and compressed
    duration_seconds: float  # everything, upload included
    upload_wait_seconds: float  # after the last row: waiting for the parts still in flight
    complete_seconds: float  # the store assembling the object
    skipped: bool = False  # an identical archive existed; nothing was uploaded
    archiver_version: str = __version__

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.duration_seconds if self.duration_seconds > 0 else 0.0

    @property
    def compression_ratio(self) -> float:
        return self.uncompressed_bytes / self.bytes if self.bytes else 0.0


def object_extension(spec: TableSpec) -> str:
    return keys.extension(spec.format, spec.compression)


def render_key(spec: TableSpec, day: dt.date, prefix: str = "") -> str:
    """The object key of one day, from the table's key template."""
    return keys.render(spec.key_template, prefix=prefix, schema=spec.schema_name, table=spec.table_name, day=day,
                       fmt=spec.format, compression=spec.compression)


def source_table(conn: psycopg.Connection, spec: TableSpec, day: dt.date) -> SourceTable:
    """The relation holding ``day`` and its columns, per the table's partitioning mode."""
    if spec.partitioning.mode == "naming":
        child = f"{spec.schema_name}.{spec.child_table(day)}"
        try:
            return describe_table(conn, child, spec.day_column)
        except SourceError as exc:
            raise SourceError(f"no table for {day} of {spec.name}: {exc}", table=spec.name, retryable=False) from None
    if spec.partitioning.mode == "declarative":
        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = start + dt.timedelta(days=1)
        require_whole_days(spec, [c for c in child_ranges(conn, spec)
                                  if (c.start is None or c.start < end) and (c.end is None or c.end > start)])
    return describe_table(conn, spec.name, spec.day_column)


@contextlib.contextmanager
def table_day_lock(conn: psycopg.Connection, spec: TableSpec, day: dt.date) -> Iterator[None]:
    """Make sure no other run archives the same table-day at the same time (a PostgreSQL advisory lock,
    so it holds across Dagster runs, launchers and machines)."""
    key = (f"archive_pipeline:{spec.name}", day.toordinal())
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)", key).fetchone()[0]
    if not got:
        raise ArchiveError(f"{spec.name} {day} is being archived by another run right now; retrying later",
                           table=spec.name, day=day.isoformat(), retryable=True)
    try:
        yield
    finally:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", key)


def _existing_archive(store: S3Store, key: str) -> dict | None:
    """The manifest of an archive that is still whole (object present with the recorded size and ETag)."""
    try:
        manifest = load_manifest(store, key)
    except ValueError:
        return None  # unreadable: archive again
    if manifest is None:
        return None
    head = store.head(key)
    if head is None or stored_object_problems(head, manifest):
        return None  # damaged or replaced: archive again
    return manifest


def _count_rows(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table.identifier, where)).fetchone()[0]


def _skipped_result(manifest: dict, spec: TableSpec, day: dt.date, table: SourceTable, snapshot,
                    started: float) -> ArchiveResult:
    obj = manifest["object"]
    elapsed = time.perf_counter() - started
    return ArchiveResult(
        table=spec.name, day=day, key=obj["key"], uri=obj["uri"], rows=manifest["rows"], bytes=obj["bytes"],
        uncompressed_bytes=manifest["uncompressed_bytes"], md5=obj["md5"], sha256=obj["sha256"],
        format=manifest["format"], compression=manifest["compression"], columns=table.columns,
        output_types={c["name"]: c["output_type"] for c in manifest["columns"]}, parts=obj["parts"],
        etag=obj["etag"], content_type=obj["content_type"], content_encoding=obj["content_encoding"],
        day_column=spec.day_column, source_relation=table.qualified, manifest_key=manifest_key(obj["key"]),
        snapshot_at=dt.datetime.fromisoformat(manifest["source"]["snapshot_at"]),
        server_version=snapshot.server_version, extract_seconds=elapsed, duration_seconds=elapsed,
        upload_wait_seconds=0.0, complete_seconds=0.0, skipped=True,
    )


def archive_partition(conn: psycopg.Connection, spec: TableSpec, day: dt.date, store: S3Store, *,
                      temp_dir: str | None = None, progress: Progress | None = None, progress_every: float = 10.0,
                      session_settings: dict[str, str] | None = None, overwrite: bool | None = None) -> ArchiveResult:
    """Archive ``day`` of ``spec`` to ``store`` and describe what was stored.

    The rows are read in one REPEATABLE READ snapshot; parts upload while rows are still read; any
    failure removes the temp file and aborts the upload, so no object appears under the key. An
    archive that already exists with the same row count is kept (``skipped``) unless ``overwrite``;
    one whose day has since gained or lost rows raises :class:`LateRowsError`. Errors come out as
    :class:`ArchiveError` naming the table and day and saying whether a retry may help.
    """
    overwrite = spec.overwrite if overwrite is None else overwrite
    bound_allocator()
    try:
        with table_day_lock(conn, spec, day):
            return _archive(conn, spec, day, store, temp_dir=temp_dir, progress=progress,
                            progress_every=progress_every, settings={**SNAPSHOT_SETTINGS, **(session_settings or {})},
                            overwrite=overwrite)
    except ArchiveError as exc:
        exc.table, exc.day = exc.table or spec.name, exc.day or day.isoformat()
        raise
    except Exception as exc:
        message = redact(f"archiving {spec.name} for {day.isoformat()} failed: {type(exc).__name__}: {exc}",
                         conn.info.password)
        raise ArchiveError(message, table=spec.name, day=day.isoformat(), retryable=is_retryable(exc)) from None


def _archive(conn: psycopg.Connection, spec: TableSpec, day: dt.date, store: S3Store, *, temp_dir: str | None,
             progress: Progress | None, progress_every: float, settings: dict[str, str],
             overwrite: bool) -> ArchiveResult:
    started = time.perf_counter()
    fmt = get_format(spec.format, spec.compression, spec.compression_level)
    codec = get_codec("none" if fmt.compresses_internally else spec.compression)
    key = render_key(spec, day, store.prefix)
    existing = None if overwrite else _existing_archive(store, key)
    upload: S3Upload | None = None
    published = False
    try:
        with temp_archive_file(temp_dir, suffix=f".{object_extension(spec)}") as sink:
            with read_snapshot(conn, settings) as snapshot:
                table = source_table(conn, spec, day)
                where = day_filter(table, day)
                if existing is not None:
                    rows_now = _count_rows(conn, table, where)
                    if rows_now == existing["rows"]:
                        return _skipped_result(existing, spec, day, table, snapshot, started)
                    raise LateRowsError(
                        f"{spec.name} {day} has {rows_now:,} rows now but its archive {existing['object']['uri']} "
                        f"holds {existing['rows']:,} (snapshot {existing['source']['snapshot_at']}): rows arrived or "
                        "changed late; set overwrite to replace the archive", retryable=False)
                upload = store.begin(key, content_type=fmt.content_type, content_encoding=codec.content_encoding,
                                     metadata={"table": spec.name, "day": day.isoformat(), "format": spec.format,
                                               "compression": spec.compression})
                sink.on_grow = lambda size: upload.grow(sink.fd, size)
                extraction = Extraction(conn=conn, table=table, where=where, snapshot=snapshot,
                                        chunk_rows=spec.chunk_size, settings=settings, progress=progress,
                                        progress_every=progress_every)
                with codec.open(sink, spec.compression_level) as out:
                    stats = fmt.write(extraction, out)
            extracted = time.perf_counter()
            stored = upload.finish(sink.fd, sink.size, sink.md5)
            published = True
        result = ArchiveResult(
            table=spec.name, day=day, key=key, uri=stored.uri, rows=stats.rows, bytes=stored.size,
            uncompressed_bytes=stats.bytes, md5=sink.md5, sha256=sink.sha256, format=spec.format,
            compression=spec.compression, columns=table.columns, output_types=stats.output_types,
            parts=stored.parts, etag=stored.etag, content_type=fmt.content_type,
            content_encoding=codec.content_encoding, day_column=spec.day_column, source_relation=table.qualified,
            manifest_key=manifest_key(key), snapshot_at=snapshot.taken_at, server_version=snapshot.server_version,
            extract_seconds=extracted - started, duration_seconds=time.perf_counter() - started,
            upload_wait_seconds=stored.wait_seconds, complete_seconds=stored.complete_seconds,
        )
        store.put_bytes(result.manifest_key, encode_manifest(build_manifest(result)), "application/json")
        return result
    except BaseException:
        if published:  # the manifest could not be written: withdraw the data so a retry starts clean
            store.delete(key)
        elif upload is not None:
            upload.abort()
        raise

