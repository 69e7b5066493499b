"""Archive one day of one table: source -> format -> compress -> hashed temp file -> object store.

This is the whole hot path and it knows nothing of Dagster, so it can be tested, benchmarked and
run from a script the same way the asset runs it.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from archive_pipeline import __version__
from archive_pipeline.compression import get_codec
from archive_pipeline.config import TableSpec
from archive_pipeline.errors import ArchiveError, is_retryable
from archive_pipeline.manifest import build_manifest, encode_manifest, manifest_key
from archive_pipeline.formats import Extraction, Format, get_format
from archive_pipeline.sink import temp_archive_file
from archive_pipeline.source import SNAPSHOT_SETTINGS, Column, day_filter, describe_table, read_snapshot
from archive_pipeline.store import S3Store, S3Upload

Progress = Callable[[int, int], None]  # (rows so far, formatted bytes so far)


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
    day_column: str
    manifest_key: str
    snapshot_at: dt.datetime
    server_version: str
    extract_seconds: float  # until the last row was read and compressed
    duration_seconds: float  # everything, upload included
    upload_wait_seconds: float  # after the last row: waiting for the parts still in flight
    complete_seconds: float  # the store assembling the object
    archiver_version: str = __version__

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.duration_seconds if self.duration_seconds > 0 else 0.0

    @property
    def compression_ratio(self) -> float:
        return self.uncompressed_bytes / self.bytes if self.bytes else 0.0


def object_extension(spec: TableSpec, fmt: Format | None = None) -> str:
    fmt = fmt or get_format(spec.format)
    if fmt.compresses_internally:
        return fmt.extension
    codec = get_codec(spec.compression)
    if not codec.extension:
        return fmt.extension
    return f"{fmt.extension}.{codec.extension}"


def render_key(spec: TableSpec, day: dt.date, prefix: str = "") -> str:
    """The object key of one day, from the table's key template."""
    key = spec.key_template.format(
        prefix=prefix.strip("/"), schema=spec.schema_name, table=spec.table_name, year=f"{day:%Y}",
        month=f"{day:%m}", day=f"{day:%d}", date=day.isoformat(), ext=object_extension(spec), format=spec.format,
    )
    return re.sub(r"/{2,}", "/", key).strip("/")


def archive_partition(conn: psycopg.Connection, spec: TableSpec, day: dt.date, store: S3Store, *,
                      temp_dir: str | None = None, progress: Progress | None = None,
                      progress_every: float = 10.0, session_settings: dict[str, str] | None = None) -> ArchiveResult:
    """Archive ``day`` of ``spec`` to ``store`` and describe what was stored.

    The rows are read in one REPEATABLE READ snapshot; parts upload while rows are still read; any
    failure removes the temp file and aborts the upload, so no object appears under the key. Errors
    come out as :class:`ArchiveError` naming the table and day and saying whether a retry may help.
    """
    started = time.perf_counter()
    fmt = get_format(spec.format, spec.compression, spec.compression_level)
    key = render_key(spec, day, store.prefix)
    settings = {**SNAPSHOT_SETTINGS, **(session_settings or {})}
    upload: S3Upload | None = None
    published = False
    try:
        with temp_archive_file(temp_dir, suffix=f".{object_extension(spec, fmt)}") as sink:
            with read_snapshot(conn, settings) as snapshot:
                table = describe_table(conn, spec.name, spec.day_column)
                codec = get_codec("none" if fmt.compresses_internally else spec.compression)
                upload = store.begin(key, content_type=fmt.content_type, content_encoding=codec.content_encoding,
                                     metadata={"table": spec.name, "day": day.isoformat(), "format": spec.format,
                                               "compression": spec.compression})
                sink.on_grow = lambda size: upload.grow(sink.fd, size)
                extraction = Extraction(conn=conn, table=table, where=day_filter(table, day), snapshot=snapshot,
                                        chunk_rows=spec.chunk_size, settings=settings, progress=progress,
                                        progress_every=progress_every)
                with codec.open(sink, spec.compression_level) as out:
                    stats = fmt.write(extraction, out)
            extracted = time.perf_counter()
            stored = upload.finish(sink.fd, sink.size, sink.md5)
            published = True
            md5, sha256 = sink.md5, sink.sha256
        result = ArchiveResult(
            table=spec.name, day=day, key=key, uri=stored.uri, rows=stats.rows, bytes=stored.size,
            uncompressed_bytes=stats.bytes, md5=md5, sha256=sha256, format=spec.format,
            compression=spec.compression, columns=table.columns, output_types=stats.output_types,
            parts=stored.parts, etag=stored.etag, content_type=fmt.content_type,
            content_encoding=codec.content_encoding, day_column=spec.day_column, manifest_key=manifest_key(key),
            snapshot_at=snapshot.taken_at, server_version=snapshot.server_version,
            extract_seconds=extracted - started, duration_seconds=time.perf_counter() - started,
            upload_wait_seconds=stored.wait_seconds, complete_seconds=stored.complete_seconds,
        )
        store.put_bytes(result.manifest_key, encode_manifest(build_manifest(result)), "application/json")
    except BaseException as exc:
        if published:  # the manifest could not be written: withdraw the data so a retry starts clean
            store.delete(key)
        elif upload is not None:
            upload.abort()
        if isinstance(exc, ArchiveError):
            exc.table, exc.day = exc.table or spec.name, exc.day or day.isoformat()
            raise
        if isinstance(exc, Exception):
            raise ArchiveError(f"archiving {spec.name} for {day.isoformat()} failed: {type(exc).__name__}: {exc}",
                               table=spec.name, day=day.isoformat(), retryable=is_retryable(exc)) from exc
        raise
    return result
