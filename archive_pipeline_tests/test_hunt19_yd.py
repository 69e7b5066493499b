"""Hunt 19 (yd): parallel extraction (``parallel_streams: N``, N > 1) under faults and hostile sources: a stream's
backend terminated or cancelled, the snapshot's owner lost, connection limits, statement_timeout, S3 faults during the
merged upload, the archiving process killed or interrupted while streams run, odd ctid layouts, N vs 1 stream.

What held up (probed, no test here): a stream cancelled (pg_cancel_backend) or hitting statement_timeout is classified
as a single stream's would be, in jsonl, csv and parquet, leaving nothing; UploadPart/Create/Complete faults (403,
reset, 5xx) during the merged upload leave no upload, object or temp file; N=16 vs N=1 gives the same fingerprint and
rows, and deep verification proves it, over HOT-updated tables, inheritance parents with rows and empty children,
TOASTed text and bytea, tables with fewer pages than streams, LIST-partitioned parents with a default partition, time
slices in America/New_York and Asia/Kathmandu over a DESC index, and a materialized view.

All three bugs below are in the Parquet streams (ADBC sessions opened one after the other in the main thread,
``Parquet._write`` -> ``_open_reader``): the same scenarios with jsonl pass."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import parallel
from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline_tests.helpers import assert_nothing_left

DAY = dt.date(2024, 3, 10)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child that archives one day with a stream asleep in the server (standing in for a stream whose range holds no
# row of the day for a long stretch of pages: its backend sends nothing meanwhile), as the parallel tests stall one.
_CHILD = r"""
import json, sys, datetime as dt
import boto3, psycopg
from psycopg import sql
from archive_pipeline.core import parallel
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
args = json.loads(sys.argv[1])
ranges = parallel.ctid_ranges
stall = sql.SQL("(id <> {} OR pg_sleep(60)::text IS NOT NULL)").format(sql.Literal(args["stall"]))
parallel.ctid_ranges = lambda bounds: [sql.SQL("{} AND {}").format(c, stall) for c in ranges(bounds)]
client = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
store = S3Store(client, args["bucket"], prefix="archive", part_size=MIN_PART_SIZE)
with psycopg.connect(args["dsn"], autocommit=True) as conn:
    archive_partition(conn, TableSpec(**args["spec"]), dt.date.fromisoformat(args["day"]), store,
                      temp_dir=args["temp_dir"])
"""


def _role(pg, conn, schema: str, tag: str) -> tuple[str, str]:
    role = f"yd_{os.getpid()}_{tag}"
    dsn = pg.create_password_role(role, "pw")
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(role)))
    return role, dsn


def _spread(conn, schema: str, rows: int = 3000) -> str:
    """``rows`` rows of DAY over ~100 pages (fillfactor 10): every ctid range of a few streams holds rows."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, body text) WITH (fillfactor = 10)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 s', md5(g::text) "
                         "FROM generate_series(1, %s) g").format(table, sql.Literal(f"{DAY} 00:00+00")), (rows,))
    return f"{schema}.ev"


def _backends(conn, role: str) -> list[tuple]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT pid, backend_type, state, wait_event, left(query, 50) FROM pg_stat_activity "
                        "WHERE usename = %s", (role,)).fetchall()


def test_a_killed_archivers_parquet_stream_does_not_go_on_reading_for_nobody(pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: a day archived as Parquet with ``parallel_streams: 2``; the archiving process is SIGKILLed (OOM
    killer, a CI or pod timeout) while one stream's backend is in a long statement that sends nothing yet (its ctid
    range's rows of the day come late; pg_sleep stands in).

    Now: 4 s after the kill that backend is still there, active, holding the snapshot and AccessShareLock on the
    day's relation (a TRUNCATE or the retention's DROP of the partition queues behind it, and every reader behind
    that), for as long as its statement runs. The text formats' stream sessions are opened by
    ``parallel.open_snapshot_sessions``, which calls ``watch_client`` (client_connection_check_interval = 1 s:
    "killed mid-read, the server notices and ends the session"); the Parquet streams are ADBC sessions
    (``Parquet._open_reader`` -> ``_adbc_connect``), which never set it. (jsonl here: no session left.)

    Should: no session of a killed run outlives it by more than a few seconds, as the README promises for the
    extraction's sessions. Fix idea: give the ADBC connection ``-c client_connection_check_interval=1000`` in its
    libpq options (14+), or SET it on the reader's cursor before BEGIN."""
    fmt = "parquet"
    name = _spread(conn, schema)
    role, dsn = _role(pg, conn, schema, fmt)
    args = {"dsn": dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "day": DAY.isoformat(),
            "temp_dir": str(tmp_path), "stall": 2900,
            "spec": {"name": name, "day_column": "at", "start_date": "2024-03-01", "format": fmt,
                     "compression": "zstd", "parallel_streams": 2}}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not any(w == "PgSleep" for _, _, _, w, _ in _backends(conn, role)):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        time.sleep(4)  # client_connection_check_interval (1 s) several times over
        left = _backends(conn, role)
    finally:
        if child.poll() is None:
            child.kill()
        conn.execute("SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity WHERE usename = %s", (role,))
    assert left == [], left


def _first_row_of_stream(conn, schema: str, stream: int, streams: int) -> int:
    """The id of the first row (in heap order) of stream ``stream``'s ctid range among ``streams`` (as
    parallel._ctid_plan cuts the pages)."""
    pages = conn.execute(sql.SQL("SELECT pg_relation_size({}) / 8192").format(
        sql.Literal(f"{schema}.ev"))).fetchone()[0]
    low = pages * stream // streams
    return conn.execute(sql.SQL("SELECT id FROM {} WHERE ctid >= {}::tid ORDER BY ctid LIMIT 1").format(
        sql.Identifier(schema, "ev"), sql.Literal(f"({low},0)"))).fetchone()[0]


def _stall_first_rows(monkeypatch, row_id: int, seconds: float) -> None:
    """Row ``row_id`` takes ``seconds`` in the server, in whichever stream's range holds it (standing in for a range
    whose first row of the day comes after a long stretch of other days' pages); the fingerprint reads no range."""
    ranges = parallel.ctid_ranges
    stall = sql.SQL("(id <> {} OR pg_sleep({})::text IS NOT NULL)").format(sql.Literal(row_id), sql.Literal(seconds))
    monkeypatch.setattr(parallel, "ctid_ranges", lambda bounds: [
        sql.SQL("{} AND {}").format(cond, stall) for cond in ranges(bounds)])


def test_a_parquet_streams_slow_first_rows_keep_the_snapshots_session_idle_in_its_transaction(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """Scenario: Parquet, ``parallel_streams: 2``, ``source.idle_in_transaction_timeout_ms: 2000`` (a DBA's reaper of
    idle transactions); the second stream's first row of the day comes 4 s after its query starts (a ctid range
    whose first pages hold other days' rows; pg_sleep stands in). Nothing is idle for 2 s except by our own doing.

    Now: ``Parquet._write`` opens the readers one after the other in the main thread, and ``_open_reader`` runs
    the reader's query (``cur.execute(query)``), which ADBC returns from only once the first rows arrived; the
    coordinator releases its snapshot (``extraction.snapshot.release()``) only after every reader is open. So the
    coordinator sits idle in its transaction for the sum of every stream's time to its first row, is terminated by
    idle_in_transaction_session_timeout, and the day fails ("retried") at every attempt, telling the user to raise
    the timeout "above the time a new session takes to connect", which is not what it waited for. Text streams
    (jsonl here) release the snapshot as soon as the sessions imported it: archived.

    Should: the day is archived; the coordinator waits only for the imports. Fix idea: open every reader up to
    its lock_day/settings (the import), release the snapshot, then start each reader's query in its stream's own
    thread (which also lets the streams start their scans together instead of one after the other)."""
    fmt = "parquet"
    name = _spread(conn, schema)
    role, dsn = _role(pg, conn, schema, f"idle{fmt}")
    _stall_first_rows(monkeypatch, _first_row_of_stream(conn, schema, 1, 2), 4)
    spec = TableSpec(name=name, day_column="at", start_date="2024-03-01", format=fmt, compression="zstd",
                     parallel_streams=2)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        result = archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir),
                                   session_settings={"idle_in_transaction_session_timeout": "2000"})
    assert result.rows == 3000 and result.streams.startswith("2 stream"), result


def test_a_run_terminated_while_a_parquet_stream_waits_for_its_first_rows_is_an_interrupt(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """Scenario: Parquet, ``parallel_streams: 2``; the run is terminated (Dagster's termination arrives as SIGINT,
    the CLI's Ctrl-C) while the main thread waits in ``_open_reader`` for the second stream's first rows (a long
    stretch of other days' pages; pg_sleep stands in).

    Now: the main thread is inside an ADBC blocking call, for which adbc_driver_manager swaps in its own native
    SIGINT handler (``_blocking_call``): the signal only cancels the reader's query, and the call raises the
    driver's "canceling statement due to user request". The interrupt is gone: ``archive_partition`` raises a
    SourceError "the query was cancelled ... transient, retried", not KeyboardInterrupt, so the CLI's Ctrl-C
    handling (exit 130, "the days after it were not tried") is never reached and it goes on to the next day, and
    Dagster sees an ordinary retryable failure of the step. StreamGroup's rule, "an interrupt ... wins over an
    error: ... the caller stops", holds for jsonl (which raises KeyboardInterrupt here) but not Parquet.

    Should: KeyboardInterrupt, after the readers are cancelled and closed. Fix idea: make ADBC's blocking calls
    (connect, execute, the first fetch) off the main thread (``_blocking_call`` is a plain call there) and wait for
    them interruptibly, cancelling the reader on KeyboardInterrupt; or note a SIGINT seen by ADBC's handler and
    re-raise it as KeyboardInterrupt."""
    fmt = "parquet"
    name = _spread(conn, schema)
    role, dsn = _role(pg, conn, schema, f"int{fmt}")
    _stall_first_rows(monkeypatch, _first_row_of_stream(conn, schema, 1, 2), 30)

    def terminate_once_asleep() -> None:
        with pg.connect() as watcher:
            deadline = time.monotonic() + 20
            while not any(w == "PgSleep" for _, _, _, w, _ in _backends(watcher, role)) \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    spec = TableSpec(name=name, day_column="at", start_date="2024-03-01", format=fmt, compression="zstd",
                     parallel_streams=2)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        threading.Thread(target=terminate_once_asleep).start()
        with pytest.raises(KeyboardInterrupt):
            archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
