"""Parquet's memory bounded by the largest value (issue 11 §5): the order in which a big row's
buffers are let go.

ADBC keeps buffers as big as the largest row it has read (libpq's input buffer and its own) for as
long as its session is open, and the Parquet writer needs about 2.5x a row more to write it. So:
- when the day's row count is known before the read (the fingerprint was taken first), the session
  is closed as soon as the last row has arrived, *before* that batch is written;
- when it is not, a big batch that arrives while the session is open is held in a spool file, with
  everything after it, and written once the session is closed;
- the writer writes natively to the archive file, which hashes what was appended afterwards (a
  Python file object would get a copy of every page).
The peak RSS itself is measured by ``bench/big_value.py`` (a benchmark, not a timed test); these
tests pin the order of events with spies on the real objects, and the archives they produce are
checked row for row (deep verification) against the source.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from archive_pipeline.core import archive
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.formats import parquet
from archive_pipeline.core.sink import temp_archive_file
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)
ROWS = 3000


@pytest.fixture
def table(conn, schema) -> str:
    """A day of rows with a few long values among them, over several Arrow batches."""
    name = sql.Identifier(schema, "docs")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, at date, body text, n numeric)").format(name))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}, CASE WHEN g % 1000 = 0 THEN repeat(md5(g::text), 20000) "
                         "ELSE 'doc ✓ ' || g END, g / 3.0 FROM generate_series(1, {}) g").format(
        name, sql.Literal(DAY.isoformat()), sql.Literal(ROWS)))
    conn.execute(sql.SQL("ANALYZE {}").format(name))
    return f"{schema}.docs"


def _spec(name: str, streams: int = 1) -> TableSpec:
    return TableSpec(name=name, day_column="at", start_date="2024-03-01", format="parquet",
                     parallel_streams=streams)


def record_events(monkeypatch) -> list[tuple[str, int]]:
    """("close", stream) when a reader's session ends, ("write", rows) when the writer writes a row group:
    spies that call the real methods."""
    events: list[tuple[str, int]] = []
    close, write_table = parquet._Readers.close, pq.ParquetWriter.write_table

    def spy_close(self, i):
        if self.is_open(i):
            events.append(("close", i))
        return close(self, i)

    def spy_write(self, table, *args, **kwargs):  # (each row group is written as a table of its batches)
        events.append(("write", table.num_rows))
        return write_table(self, table, *args, **kwargs)

    monkeypatch.setattr(parquet._Readers, "close", spy_close)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", spy_write)
    monkeypatch.setattr(parquet, "BATCH_BYTES", 64 << 10)  # several batches from a small day
    monkeypatch.setattr(parquet, "row_group_bytes", lambda schema: 1)  # each batch its own row group, at once
    return events


def _archive_and_prove(conn, s3_client, bucket, temp_dir, spec: TableSpec, prefix: str):
    store = S3Store(s3_client, bucket, prefix=prefix)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == ROWS
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []  # rows equal the source's
    assert list(temp_dir.iterdir()) == []
    return result


def test_a_known_row_count_ends_the_session_before_the_last_batch_is_written(
        conn, s3_client, bucket, temp_dir, table, monkeypatch):
    events = record_events(monkeypatch)  # the day is small: its fingerprint (and row count) comes first
    _archive_and_prove(conn, s3_client, bucket, temp_dir, _spec(table), "known")
    writes = [i for i, (kind, _) in enumerate(events) if kind == "write"]
    assert len(writes) > 2, events
    # once the last row is read (the reader thread may be batches ahead of the writer), before the
    # last batch is written; without a known count it would come after every write
    assert events.index(("close", 0)) < writes[-1], events
    assert sum(events[i][1] for i in writes) == ROWS


def test_a_big_batch_waits_in_a_spool_until_the_session_has_ended(
        conn, s3_client, bucket, temp_dir, table, monkeypatch):
    plain = _archive_and_prove(conn, s3_client, bucket, temp_dir, _spec(table), "plain")
    events = record_events(monkeypatch)
    monkeypatch.setattr(archive, "FINGERPRINT_ALONGSIDE_ROWS", 1)  # row count unknown during the read
    monkeypatch.setattr(parquet, "HOLD_BYTES", 512 << 10)  # the batches holding a 640 kB value are "big"
    held = _archive_and_prove(conn, s3_client, bucket, temp_dir, _spec(table), "held")
    closed = events.index(("close", 0))
    before = [n for kind, n in events[:closed] if kind == "write"]
    after = [n for kind, n in events[closed:] if kind == "write"]
    assert before and after, events  # small batches went straight on; from the first big one on, held
    assert sum(before) < 1000 <= sum(before) + after[0]  # the first held batch holds row 1000
    assert sum(before) + sum(after) == ROWS
    assert held.fingerprint == plain.fingerprint


def test_held_batches_keep_the_stream_order_with_parallel_streams(
        conn, s3_client, bucket, temp_dir, table, monkeypatch):
    one = _archive_and_prove(conn, s3_client, bucket, temp_dir, _spec(table), "one")
    record_events(monkeypatch)
    monkeypatch.setattr(parquet, "HOLD_BYTES", 512 << 10)
    two = _archive_and_prove(conn, s3_client, bucket, temp_dir, _spec(table, streams=2), "two")
    assert two.fingerprint == one.fingerprint


def test_what_a_native_writer_appends_is_hashed_and_announced(temp_dir):
    grown: list[int] = []
    payload = os.urandom(9 << 20)  # more than one read-back chunk
    with temp_archive_file(temp_dir) as sink:
        sink.on_grow = grown.append
        sink.write(b"head")
        with pa.OSFile(os.dup(sink.fd), mode="wb") as native:
            native.write(payload)
        sink.absorb_appended()
        assert sink.size == len(payload) + 4 == grown[-1]
        assert sink.md5 == hashlib.md5(b"head" + payload).hexdigest()
        assert sink.sha256 == hashlib.sha256(b"head" + payload).hexdigest()
        assert sink.path.read_bytes() == b"head" + payload
