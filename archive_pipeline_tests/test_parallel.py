"""Parallel snapshot-shared extraction (``parallel_streams``, issue 14 §1): N sessions import one
exported snapshot and each reads a disjoint range of the day, and their output is one object.

Small tables spread over many pages (fillfactor 10), so four ctid ranges each hold rows. What must
hold: N=1 and N=4 archive the same rows (fingerprint, row multiset) in every format and codec, the
N=4 object is byte-identical from run to run, it reads back through the project's own readers
(deep verification loads it into PostgreSQL and compares fingerprints), and one stream's failure
fails the day as a single stream would, leaving nothing behind.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import threading
import time

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import ConfigError, TableSpec, parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.formats.common import Extraction
from archive_pipeline.core import parallel
from archive_pipeline.core.parallel import StreamPlan, auto_streams, ctid_ranges, plan_streams, stream_extractions
from archive_pipeline.core.source import describe_table, day_filter, read_snapshot
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import (
    assert_nothing_left,
    archive_while_the_store_holds_a_part,
    decompress,
    download,
    read_csv,
    read_jsonl,
)

DAY = dt.date(2024, 3, 10)
ROWS = 3000
STALL_ID = 2200  # in the last quarter of the pages: read by stream 3 of 4
_COLUMNS = ("id bigint, created_at timestamptz, name text, amount numeric(12,2), tags text[], "
            "payload jsonb, flag boolean")
_FILL = ("SELECT g, {day}::timestamptz + g * interval '1 second', CASE WHEN g % 7 = 0 THEN NULL ELSE 'näme ✓ ' || g END, "
         "g * 1.25, ARRAY['a,b', NULL, 'c\"d'], jsonb_build_object('k', g, 'ü', 'x'), g % 2 = 0 "
         "FROM generate_series(1, {rows}) g")


def _fill(conn, table: sql.Identifier) -> None:
    conn.execute(sql.SQL("INSERT INTO {} " + _FILL).format(table, day=sql.Literal(DAY.isoformat()),
                                                          rows=sql.Literal(ROWS)))


@pytest.fixture
def partitioned(conn, schema) -> str:
    """A declaratively partitioned table whose day is one child of ~300 pages."""
    parent = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (" + _COLUMNS + ") PARTITION BY RANGE (created_at)").format(parent))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({}) WITH (fillfactor = 10)").format(
        sql.Identifier(schema, "ev_20240310"), parent, sql.Literal(f"{DAY} 00:00+00"),
        sql.Literal(f"{DAY + dt.timedelta(days=1)} 00:00+00")))
    _fill(conn, parent)
    return f"{schema}.ev"


def _spec(name: str, fmt: str, compression: str, streams: int, **kwargs) -> TableSpec:
    return TableSpec(name=name, day_column="created_at", start_date="2024-03-01", format=fmt,
                     compression=compression, chunk_size=100, parallel_streams=streams, **kwargs)


def _rows(body: bytes, fmt: str, compression: str) -> list:
    if fmt == "parquet":
        return sorted(map(repr, pq.read_table(io.BytesIO(body)).to_pylist()))
    data = decompress(body, compression)
    rows = read_jsonl(data) if fmt == "jsonl" else read_csv(data)
    return sorted(map(repr, rows))


@pytest.mark.parametrize(("fmt", "compression"), [("jsonl", "zstd"), ("csv", "gzip"), ("jsonl", "lz4"),
                                                  ("csv", "none"), ("parquet", "zstd")])
def test_four_streams_archive_the_same_rows_as_one(conn, s3_client, bucket, partitioned, temp_dir, fmt, compression):
    results, bodies = {}, {}
    for label, streams in (("one", 1), ("four", 4), ("again", 4)):
        store = S3Store(s3_client, bucket, prefix=label, part_size=MIN_PART_SIZE)
        results[label] = archive_partition(conn, _spec(partitioned, fmt, compression, streams), DAY, store,
                                           temp_dir=str(temp_dir))
        bodies[label] = download(s3_client, bucket, results[label].key)
    one, four = results["one"], results["four"]
    assert one.rows == four.rows == ROWS
    assert one.fingerprint == four.fingerprint
    assert _rows(bodies["one"], fmt, compression) == _rows(bodies["four"], fmt, compression)
    assert bodies["four"] == bodies["again"] and four.md5 == results["again"].md5  # deterministic order
    if fmt == "csv":
        assert decompress(bodies["four"], compression).count(b"id,created_at,") == 1  # the header once
    # the project's own reader loads it back into PostgreSQL with the manifest's fingerprint
    store = S3Store(s3_client, bucket, prefix="four", part_size=MIN_PART_SIZE)
    assert deep_verify(conn, store, _spec(partitioned, fmt, compression, 4), DAY, temp_dir=str(temp_dir)) == []
    assert list(temp_dir.iterdir()) == []


def _plan(conn, name: str, streams: int | str = 4, day_column: str | None = "created_at"):
    table = describe_table(conn, name, day_column)
    with read_snapshot(conn):
        return plan_streams(conn, table, day_filter(table, DAY), DAY, streams)


def test_the_plan_follows_the_relation(conn, schema, partitioned):
    plain, indexed, date_table = (sql.Identifier(schema, n) for n in ("plain", "indexed", "by_date"))
    for table in (plain, indexed):
        conn.execute(sql.SQL("CREATE TABLE {} (" + _COLUMNS + ") WITH (fillfactor = 10)").format(table))
        _fill(conn, table)
    conn.execute(sql.SQL("CREATE INDEX ON {} (created_at)").format(indexed))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, day date) WITH (fillfactor = 10)").format(date_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {} FROM generate_series(1, 2000) g").format(
        date_table, sql.Literal(DAY)))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(sql.Identifier(schema, "v"), plain))
    assert (_plan(conn, partitioned).kind, _plan(conn, partitioned).streams) == ("ctid", 4)
    assert (_plan(conn, f"{schema}.plain").kind, _plan(conn, f"{schema}.plain").streams) == ("ctid", 4)
    assert (_plan(conn, f"{schema}.indexed").kind, _plan(conn, f"{schema}.indexed").streams) == ("key", 4)
    assert _plan(conn, f"{schema}.by_date", day_column="day").kind == "ctid"  # a date cannot be sliced by time
    assert _plan(conn, f"{schema}.v").streams == 1  # a view has no ctid
    assert _plan(conn, partitioned, streams=1).streams == 1


def test_ctid_ranges_cover_every_tuple_id_once():
    texts = [c.as_string(None) for c in ctid_ranges([10, 20])]
    lt, ge = "ctid OPERATOR(pg_catalog.<)", "ctid OPERATOR(pg_catalog.>=)"
    assert texts == [f"{lt} '(10,0)'::pg_catalog.tid",
                     f"{ge} '(10,0)'::pg_catalog.tid AND {lt} '(20,0)'::pg_catalog.tid",
                     f"{ge} '(20,0)'::pg_catalog.tid"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_date_column_table_and_a_key_range_table(conn, schema, s3_client, bucket, temp_dir, fmt):
    """Column mode: the day filter plus a ctid range (no index), or a time slice (index on the column)."""
    for name, index in (("plain", False), ("indexed", True)):
        table = sql.Identifier(schema, name)
        conn.execute(sql.SQL("CREATE TABLE {} (" + _COLUMNS + ") WITH (fillfactor = 10)").format(table))
        _fill(conn, table)
        conn.execute(sql.SQL("INSERT INTO {} (id, created_at) VALUES (-1, {}), (-2, {})").format(
            table, sql.Literal(f"{DAY - dt.timedelta(days=1)} 23:59:59.999999+00"),
            sql.Literal(f"{DAY + dt.timedelta(days=1)} 00:00+00")))  # the neighbours stay out
        if index:
            conn.execute(sql.SQL("CREATE INDEX ON {} (created_at)").format(table))
        store = S3Store(s3_client, bucket, prefix=name, part_size=MIN_PART_SIZE)
        spec = _spec(f"{schema}.{name}", fmt, "zstd", 4)
        result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
        assert result.rows == ROWS
        assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


def _streams_setting(value):
    config = parse_config({"tables": [{"name": "public.events", "day_column": "created_at",
                                       "start_date": "2024-01-01", "parallel_streams": value}]})
    return config.tables[0].parallel_streams


def test_parallel_streams_is_validated():
    for bad in (0, 17, -1, "fast", True, 2.5, None):
        with pytest.raises(ConfigError, match=r"'parallel_streams': must be a whole number from 1 to 16, or auto"):
            _streams_setting(bad)
    assert [_streams_setting(v) for v in (1, 16, "4", "auto")] == [1, 16, 4, "auto"]
    assert TableSpec(name="a.b", day_column="c", start_date="2024-01-01").parallel_streams == 1


@pytest.mark.parametrize(("rows", "cores", "streams"), [
    (0, 8, 1), (1_999_999, 8, 1), (2_000_000, 8, 1), (4_000_000, 8, 2), (10_000_000, 8, 4), (10**9, 64, 4),
    (10_000_000, 2, 1), (10_000_000, 1, 1), (10_000_000, 5, 2)])
def test_auto_streams_follow_the_estimate_and_the_cores(rows, cores, streams):
    assert auto_streams(rows, cores) == streams


def test_auto_plans_one_stream_for_a_small_day_and_several_when_rows_and_cores_allow(
        conn, s3_client, bucket, partitioned, temp_dir, monkeypatch):
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*partitioned.split("."))))  # the planner's estimate
    plan = _plan(conn, partitioned, streams="auto")
    assert plan.streams == 1 and plan.reason.startswith("auto: ~") and "one stream" in plan.reason
    monkeypatch.setattr(parallel, "AUTO_ROWS_PER_STREAM", 1000)  # ~3,000 rows: two or three streams...
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(8)))  # ...on an 8-core host
    plan = _plan(conn, partitioned, streams="auto")
    assert plan.kind == "ctid" and plan.streams in (2, 3), plan  # as the estimate falls either side of 3,000
    one = archive_partition(conn, _spec(partitioned, "jsonl", "zstd", 1), DAY,
                            S3Store(s3_client, bucket, prefix="one"), temp_dir=str(temp_dir))
    auto = archive_partition(conn, _spec(partitioned, "jsonl", "zstd", "auto"), DAY,
                             S3Store(s3_client, bucket, prefix="auto"), temp_dir=str(temp_dir))
    assert auto.rows == one.rows == ROWS and auto.fingerprint == one.fingerprint
    bodies = {name: download(s3_client, bucket, r.key) for name, r in (("one", one), ("auto", auto))}
    assert _rows(bodies["auto"], "jsonl", "zstd") == _rows(bodies["one"], "jsonl", "zstd")
    zstd_frame = b"\x28\xb5\x2f\xfd"  # each stream compresses its own rows: one frame per stream
    assert bodies["one"].count(zstd_frame) == 1 and bodies["auto"].count(zstd_frame) == plan.streams


@pytest.mark.parametrize(("fmt", "compression"), [("jsonl", "zstd"), ("parquet", "zstd")])
def test_one_terminated_stream_fails_the_day_and_leaves_nothing(pg, conn, schema, partitioned, s3_client, bucket,
                                                                temp_dir, fmt, compression, monkeypatch):
    """Row STALL_ID sleeps in the server, only in the stream whose ctid range holds it (its range
    condition gets a pg_sleep for that row, injected here; the fingerprint reads no ctid range), so
    exactly one stream is provably mid-COPY when it is killed. (Row security did this before; our
    sessions now refuse to read through a policy.)"""
    role = f"par_{os.getpid()}_{fmt}"
    password = "s3cret pässword"
    dsn = pg.create_password_role(role, password)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(role)))
    real_ranges = parallel.ctid_ranges
    stall = sql.SQL("(id <> {} OR pg_sleep(30)::text IS NOT NULL)").format(sql.Literal(STALL_ID))
    monkeypatch.setattr(parallel, "ctid_ranges", lambda bounds: [
        sql.SQL("{} AND {}").format(cond, stall) for cond in real_ranges(bounds)])
    killed: list[int] = []

    def kill_the_sleeper(rows: int, size: int) -> None:
        deadline = time.monotonic() + 20
        while not killed and time.monotonic() < deadline:
            found = conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s AND wait_event = 'PgSleep'",
                                 (role,)).fetchall()
            for (pid,) in found:  # no wait: a dying backend may block sending its FATAL while this callback
                # holds up the reader, so waiting for it here could time out (it did in CI)
                assert conn.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,)).fetchone()[0]
                killed.append(pid)
            time.sleep(0.01)

    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    spec = _spec(partitioned, fmt, compression, 4)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        with pytest.raises(ArchiveError) as caught:
            archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir), progress=kill_the_sleeper,
                              progress_every=0)
        err = caught.value
        assert len(killed) == 1
        assert err.retryable, str(err)
        assert spec.name in str(err) and DAY.isoformat() in str(err) and password not in str(err)
        assert "terminat" in str(err) or "connection was lost" in str(err), str(err)
        # the other streams were closed, the coordinator is idle and not in a transaction
        deadline = time.monotonic() + 10
        while (left := conn.execute("SELECT pid, state FROM pg_stat_activity WHERE usename = %s AND pid <> %s",
                                    (role, archiving.info.backend_pid)).fetchall()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == []
        assert conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                            (archiving.info.backend_pid,)).fetchone()[0] == "idle"
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)


def test_no_stream_waits_in_a_transaction_while_the_store_holds_a_part(pg, s3, conn, schema, bucket):
    """issue 11 §2 with four streams: the coordinator ends its transaction once the streams imported
    the snapshot, each stream as soon as its rows are read, so with the first part held by the store
    only the coordinator is left, idle, under a 3 s idle_in_transaction_session_timeout."""
    table = sql.Identifier(schema, "big")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) "
                         "FROM generate_series(1, 100000) g").format(table, sql.Literal(DAY)))
    spec = TableSpec(name=f"{schema}.big", day_column="at", start_date="2024-03-01", format="csv",
                     compression="none", parallel_streams=4)
    result = archive_while_the_store_holds_a_part(pg, s3, conn, bucket, spec, DAY,
                                                  f"archive-parallel-idle-{os.getpid()}")
    assert result.rows == 100000 and result.parts >= 2


def test_progress_from_many_streams_reaches_the_callback_one_call_at_a_time(conn, partitioned):
    """The caller's progress callback need not be thread-safe: four streams reporting at once never
    overlap in it, and the summed totals it sees never go backwards."""
    seen: list[tuple[int, int]] = []
    inside = threading.Lock()

    def callback(rows: int, size: int) -> None:
        assert inside.acquire(blocking=False), "two progress calls overlapped"
        try:
            time.sleep(0.001)
            seen.append((rows, size))
        finally:
            inside.release()

    table = describe_table(conn, partitioned, "created_at")
    with read_snapshot(conn) as snapshot:
        extraction = Extraction(conn=conn, table=table, where=day_filter(table, DAY), snapshot=snapshot,
                                chunk_rows=100, progress=callback)
        plan = StreamPlan(tuple(psycopg.sql.SQL("TRUE") for _ in range(4)), "ctid", "test")
        parts = stream_extractions(extraction, plan, [conn] * 4)

    def report(part: Extraction) -> None:
        for n in range(1, 51):
            part.progress(n, 10 * n)

    threads = [threading.Thread(target=report, args=(part,)) for part in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 200 and seen[-1] == (200, 2000)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(seen, seen[1:]))


@pytest.mark.parametrize(("fmt", "streams", "change"), [
    ("parquet", 1, "TRUNCATE {child}"),  # the ADBC reader imports the snapshot
    ("jsonl", 3, "TRUNCATE {child}"),  # three stream sessions import it
    ("csv", 1, "ALTER TABLE {parent} ALTER COLUMN amount TYPE numeric(14,2)"),  # a rewrite; the fingerprint alongside
    ("parquet", 3, "DROP TABLE {child}"),
])
def test_a_change_snapshots_do_not_isolate_is_never_archived_as_an_empty_day(
        pg, conn, schema, partitioned, s3_client, bucket, temp_dir, monkeypatch, fmt, streams, change):
    """TRUNCATE, a rewrite and dropping the day's partition are not MVCC-safe: a session whose snapshot
    predates them but which locks the table after they commit sees the day empty, and so would its
    fingerprint. Here the change is issued once the coordinator holds its snapshot (it waits for the
    coordinator's lock): the sessions that import the snapshot must not queue behind it, nor read after
    it. The day fails, retryable, with nothing published; it was archived as an empty day before."""
    from archive_pipeline.core import archive

    monkeypatch.setattr(archive, "FINGERPRINT_ALONGSIDE_ROWS", 1)  # the fingerprint in a session of its own
    child, parent = sql.Identifier(schema, "ev_20240310"), sql.Identifier(schema, "ev")
    planned = archive.plan_streams
    waiting: list[threading.Thread] = []

    def change_waits_for_the_coordinator(*args, **kwargs):
        def run() -> None:
            with pg.connect() as other:
                other.execute(sql.SQL(change).format(child=child, parent=parent))
        thread = threading.Thread(target=run)
        thread.start()
        waiting.append(thread)
        deadline = time.monotonic() + 60  # the change must be queued: without it the day is archived
        while time.monotonic() < deadline and not conn_waiting(pg):
            time.sleep(0.02)
        return planned(*args, **kwargs)

    def conn_waiting(server) -> bool:
        with server.connect() as probe:
            return bool(probe.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND query ~* '^(TRUNCATE|ALTER|DROP)'").fetchone()[0])

    monkeypatch.setattr(archive, "plan_streams", change_waits_for_the_coordinator)
    store = S3Store(s3_client, bucket, prefix="race")
    spec = _spec(partitioned, fmt, "zstd", streams)
    with pytest.raises(ArchiveError) as caught:  # (a lock_timeout, so that the old code failed rather than hung)
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), session_settings={"lock_timeout": "5000"})
    for thread in waiting:
        thread.join(30)
    err = caught.value
    assert err.retryable and "waiting to change" in str(err), str(err)
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)


def test_each_stream_beyond_the_first_takes_a_slot_of_the_tables_pool(schema, partitioned, archive_env):
    """issue 14 §1: "each stream takes a slot of the table's concurrency pool". Dagster claims one slot for
    the step; a day with 4 streams opened 4 sessions on it. Now each further stream claims a slot of the
    table's pool: a pool with 3 slots reads the day with 3 streams, one whose slot another run holds with 2,
    and the slots are given back when the day is read."""
    from dagster import instance_for_test

    from archive_pipeline.definitions import build_definitions

    pool = f"{schema}_source"
    config = parse_config({"tables": [{"name": partitioned, "day_column": "created_at", "start_date": "2024-03-01",
                                       "parallel_streams": 4, "pool": pool}]})
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_ev")
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 3}}}) as instance:
        storage = instance.event_log_storage
        notes = []
        for holder in (None, "another-run"):
            if holder:
                storage.set_concurrency_slots(pool, 3)
                assert storage.claim_concurrency_slot(pool, holder, "its_step").is_claimed
            result = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, run_config={
                "ops": {f"archive__{schema}__ev": {"config": {"overwrite": True}}}})
            assert result.success
            [event] = result.get_asset_materialization_events()
            notes.append(str(event.materialization.metadata["streams"].value))
            info = storage.get_concurrency_info(pool)
            held = {holder} if holder else set()
            assert {s.run_id for s in info.claimed_slots} == held == {p.run_id for p in info.pending_steps}, info
    assert notes[0].startswith("3 stream(s), parallel_streams is 4: 4 planned, the pool had 3 slot(s)"), notes
    assert notes[1].startswith("2 stream(s), parallel_streams is 4: 4 planned, the pool had 2 slot(s)"), notes
