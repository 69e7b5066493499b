"""Parallel hunt: ``parallel_streams`` (one day read by N sessions in one exported snapshot) under
hostile data and faults that test_parallel and test_edgehunt do not cover: hostile types at N=4
equal to N=1 and byte-for-byte deterministic, days spread over inheritance children and several
partitions, streams with no rows of the day, a run's termination while the streams are awaited, a
cancel racing a finishing stream, and a plan that falls back to one stream saying why.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import re
import signal
import threading
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import parallel, streams
from archive_pipeline.core.formats import parquet
from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.source import day_filter, describe_table, read_snapshot
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.streams import StreamGroup
from archive_pipeline_tests.helpers import assert_nothing_left, download, tiny_tmpfs
from archive_pipeline_tests.test_exactness import _differences
from archive_pipeline_tests.test_typehunt import EDGES, SHAPED, _edge_table

DAY = dt.date(2024, 3, 10)
FORMATS = ("jsonl", "csv", "parquet")


def _spec(name: str, fmt: str, streams: int | str, day_column: str = "at") -> TableSpec:
    return TableSpec(name=name, day_column=day_column, start_date="2024-03-01", format=fmt, compression="zstd",
                     chunk_size=100, parallel_streams=streams)


def _one_and_four(conn, s3_client, bucket, temp_dir, name: str, fmt: str, rows: int, tag: str = "",
                  again: bool = True) -> S3Store:
    """Archive ``name``'s DAY with one stream and with four: the same rows and fingerprint, and (with
    ``again``) the four-stream object byte-identical from run to run; returns the four-stream store."""
    results, bodies = {}, {}
    for label, streams in (("one", 1), ("four", 4), ("again", 4))[:3 if again else 2]:
        store = S3Store(s3_client, bucket, prefix=f"{tag}{label}", part_size=MIN_PART_SIZE)
        results[label] = archive_partition(conn, _spec(name, fmt, streams), DAY, store, temp_dir=str(temp_dir))
        bodies[label] = download(s3_client, bucket, results[label].key)
    assert results["one"].rows == results["four"].rows == rows
    assert results["one"].fingerprint == results["four"].fingerprint
    assert results["one"].streams.startswith("1 stream") or results["one"].streams == ""
    assert results["four"].streams.startswith("4 stream(s)"), results["four"].streams
    if again:
        assert bodies["four"] == bodies["again"] and results["four"].md5 == results["again"].md5
    return S3Store(s3_client, bucket, prefix=f"{tag}four", part_size=MIN_PART_SIZE)


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_types_at_four_streams_equal_one_stream_and_restore_exactly(fmt, conn, schema, s3_client, bucket,
                                                                          temp_dir):
    """test_typehunt's edge values (TOASTed 1.2 MB text, BC and year-10000 dates, composites, ranges,
    odd names), one row per page so each of four ctid ranges holds rows of the day."""
    _edge_table(conn, schema, "edges", EDGES if fmt == "parquet" else {**EDGES, **SHAPED})
    table = sql.Identifier(schema, "edges")
    conn.execute(sql.SQL("ALTER TABLE {} SET (fillfactor = 10)").format(table))
    for _ in range(2):
        conn.execute(sql.SQL("INSERT INTO {t} SELECT * FROM {t}").format(t=table))
    conn.execute(sql.SQL("VACUUM FULL {}").format(table))
    store = _one_and_four(conn, s3_client, bucket, temp_dir, f"{schema}.edges", fmt, 16,
                          again=fmt == "parquet")  # text: byte-identical reruns in test_parallel
    restored = restore_day(conn, store, _spec(f"{schema}.edges", fmt, 4), DAY, into="new", target=f"{schema}.back",
                           temp_dir=str(temp_dir))
    assert restored.fingerprint_checked and restored.rows == 16
    assert _differences(conn, schema, "edges", "back", {}) == []


@pytest.mark.parametrize("fmt", ["parquet"])  # its readers are ADBC sessions of their own; text: test_parallel
def test_a_day_over_inheritance_children_and_sub_partitions_at_four_streams(fmt, conn, schema, s3_client, bucket,
                                                                             temp_dir):
    """The ctid ranges are cut by one relation's size but apply to every relation the query reads: an
    inheritance parent with two children (one with a column more), and a partitioned table whose day
    spans a child, a sub-partitioned child with a default and the default partition."""
    s = sql.Identifier(schema)
    rows = sql.SQL("SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '20 s', md5(g::text) "
                   "FROM generate_series(0, 4319) g")
    conn.execute(sql.SQL("CREATE TABLE {}.par (id int, at timestamptz, body text) WITH (fillfactor = 10)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {s}.kid1 () INHERITS ({s}.par); CREATE TABLE {s}.kid2 (extra int) "
                         "INHERITS ({s}.par)").format(s=s))
    for child in ("par", "kid1", "kid2"):
        conn.execute(sql.SQL("INSERT INTO {}.{} (id, at, body) {} LIMIT 1000").format(s, sql.Identifier(child), rows))
    conn.execute(sql.SQL(
        "CREATE TABLE {s}.pp (id int, at timestamptz, body text) PARTITION BY RANGE (at); "
        "CREATE TABLE {s}.pp1 PARTITION OF {s}.pp FOR VALUES FROM ('2024-03-01 00:00+00') TO ('2024-03-10 12:00+00') "
        "WITH (fillfactor = 10); "
        "CREATE TABLE {s}.pp2 PARTITION OF {s}.pp FOR VALUES FROM ('2024-03-10 12:00+00') TO ('2024-03-10 18:00+00') "
        "PARTITION BY LIST (id); "
        "CREATE TABLE {s}.pp2a PARTITION OF {s}.pp2 FOR VALUES IN (1, 2, 2200); "
        "CREATE TABLE {s}.pp2d PARTITION OF {s}.pp2 DEFAULT; "
        "CREATE TABLE {s}.ppd PARTITION OF {s}.pp DEFAULT").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.pp {}").format(s, rows))
    _one_and_four(conn, s3_client, bucket, temp_dir, f"{schema}.par", fmt, 3000, "par", again=False)
    _one_and_four(conn, s3_client, bucket, temp_dir, f"{schema}.pp", fmt, 4320, "pp", again=False)


@pytest.mark.parametrize("fmt", ["parquet"])  # empty IPC spools; text: an empty spool appends nothing
def test_streams_without_rows_of_the_day(fmt, conn, schema, s3_client, bucket, temp_dir):
    """The day's 30 rows sit in the relation's last page, after 3000 rows of the day before: three
    of four streams read nothing (empty Arrow spools, and stream 0 gives the schema)."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text) WITH (fillfactor = 10)").format(table))
    for day, count in ((DAY - dt.timedelta(days=1), 3000), (DAY, 30)):
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, md5(g::text) FROM generate_series(1, %s) g").format(table),
                     (day, count))
    _one_and_four(conn, s3_client, bucket, temp_dir, f"{schema}.ev", fmt, 30)


def test_a_cancel_never_races_the_close_of_a_finishing_stream():
    """A failure cancels the streams still reading; a stream finishing at that moment must not close
    its connection while the cancel is using it (psycopg's close frees the libpq connection the
    cancel reads). Stream 1 finishes while stream 0's failure is cancelling it: its close waits."""
    cancelling, closed = threading.Event(), threading.Event()
    seen: list[bool] = []

    def cancel_stream_1() -> None:
        cancelling.set()
        closed.wait(0.2)  # where the close does not wait for the cancel, it happens now
        seen.append(closed.is_set())

    group = StreamGroup([lambda: None, cancel_stream_1])

    def stream_0() -> None:
        raise RuntimeError("stream 0 failed")

    def stream_1() -> None:
        assert cancelling.wait(10)
        group.finished(1)
        closed.set()  # the connection's close

    with pytest.raises(RuntimeError, match="stream 0 failed"):
        group.run([stream_0, stream_1])
    assert seen == [False]


def test_a_cancel_lost_between_two_statements_is_sent_again(monkeypatch):
    """A cancel only stops a statement that is running: one that reaches a stream's session before
    its COPY (or the fingerprint's query) has started is lost, and that stream read its whole range
    before the failed day could end. The failed group cancels the streams still running again."""
    monkeypatch.setattr(streams, "CANCEL_AGAIN_SECONDS", 0.05, raising=False)
    running, stop = threading.Event(), threading.Event()
    group = StreamGroup([lambda: None, lambda: running.is_set() and stop.set()])

    def stream_0() -> None:
        raise RuntimeError("stream 0 failed")

    def stream_1() -> None:
        while group.failure is None:  # its statement starts only after the first cancel
            time.sleep(0.001)
        running.set()
        stop.wait(10)  # a statement that runs until it is cancelled

    with pytest.raises(RuntimeError, match="stream 0 failed"):
        group.run([stream_0, stream_1])
    assert stop.is_set()


def test_an_interrupt_while_the_streams_are_awaited_stops_them_before_run_returns():
    """A run's termination arrives as SIGINT in the main thread, usually while it waits for the other
    streams (stream 0 is done): the streams still reading are cancelled and have ended when ``run``
    raises, since its caller closes the sessions and spools they use."""
    stop, returned, reading_started = threading.Event(), threading.Event(), threading.Event()
    group = StreamGroup([lambda: None, stop.set])

    def reading() -> None:
        reading_started.set()
        stop.wait(60)  # a stream reading until cancelled
        time.sleep(0.05)  # then closing its cursor: run() must wait for that too
        returned.set()

    def interrupt_once_waiting() -> None:
        # run() has started the stream (a loaded machine may take longer than any fixed pause to get there);
        # stream 0 returns at once: a moment later the main thread is in the join
        reading_started.wait(60)
        time.sleep(0.2)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt_once_waiting).start()
    with pytest.raises(KeyboardInterrupt):
        group.run([lambda: None, reading])
    assert stop.is_set() and returned.is_set()


def _stall_in_ranges(monkeypatch, row_id: int) -> None:
    """Row ``row_id`` sleeps 30 s in the server, only in the stream whose ctid range holds it."""
    ranges = parallel.ctid_ranges
    stall = sql.SQL("(id <> {} OR pg_sleep(30)::text IS NOT NULL)").format(sql.Literal(row_id))
    monkeypatch.setattr(parallel, "ctid_ranges", lambda bounds: [
        sql.SQL("{} AND {}").format(cond, stall) for cond in ranges(bounds)])


def test_a_terminated_run_leaves_no_stream_reading_in_postgresql(pg, conn, schema, store, temp_dir, monkeypatch):
    """Dagster terminates a run with SIGINT; the main thread is then usually waiting for the other
    streams. The stream still reading (asleep in the server here) was left running: its session was
    closed under it, and its backend went on for as long as its statement did."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text) WITH (fillfactor = 10)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, md5(g::text) FROM generate_series(1, 3000) g").format(table),
                 (DAY,))
    role = f"ph_{os.getpid()}_{schema}"
    dsn = pg.create_password_role(role, "pä ss")
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(role)))
    _stall_in_ranges(monkeypatch, 2900)  # in stream 1 of 2
    copies = "SELECT wait_event FROM pg_stat_activity WHERE usename = %s AND query LIKE 'COPY%%' AND state = 'active'"

    def terminate_once_stream_0_is_done() -> None:
        with pg.connect() as watcher:
            deadline = time.monotonic() + 20
            while watcher.execute(copies, (role,)).fetchall() != [("PgSleep",)] and time.monotonic() < deadline:
                time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    spec = _spec(f"{schema}.ev", "jsonl", 2)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        threading.Thread(target=terminate_once_stream_0_is_done).start()
        with pytest.raises(KeyboardInterrupt):
            archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
        others = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND pid <> %s"
        deadline = time.monotonic() + 10
        while conn.execute(others, (role, archiving.info.backend_pid)).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert conn.execute(others, (role, archiving.info.backend_pid)).fetchone()[0] == 0
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)


def test_a_view_or_a_small_table_read_with_one_stream_says_why(conn, schema, store, temp_dir, caplog):
    """``parallel_streams: 4`` on a view (no ctid to split by), or on a day whose relation has fewer
    pages than streams, reads with one stream: correct, but it said so nowhere, so a user tuning N saw
    no effect and no reason. The day's result (shown as its Dagster metadata) and the log now say it."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date); CREATE VIEW {s}.v AS SELECT * FROM {s}.ev; "
                         "INSERT INTO {s}.ev SELECT g, {d} FROM generate_series(1, 10) g").format(
        s=s, d=sql.Literal(DAY)))
    caplog.set_level(logging.INFO, logger="archive_pipeline")
    view = archive_partition(conn, _spec(f"{schema}.v", "csv", 4), DAY, store, temp_dir=str(temp_dir))
    assert view.rows == 10
    assert view.streams == (f"1 stream(s), parallel_streams is 4: {schema}.v is a view or foreign table: it has no "
                            "ctid to split by")
    assert any(view.streams in r.getMessage() for r in caplog.records)
    small = archive_partition(conn, _spec(f"{schema}.ev", "csv", 4), DAY, store, temp_dir=str(temp_dir))
    assert small.streams == "1 stream(s), parallel_streams is 4: the relation has 1 page(s): nothing to split"
    auto = archive_partition(conn, _spec(f"{schema}.ev", "jsonl", "auto"), DAY,
                             S3Store(store.client, store.bucket, prefix="auto"), temp_dir=str(temp_dir))
    assert re.fullmatch(r"1 stream\(s\), parallel_streams is auto: ~\d+ rows estimated on \d+ core\(s\), one stream "
                        r"\(one per 2,000,000 rows and two cores\)", auto.streams), auto.streams
    single = archive_partition(conn, _spec(f"{schema}.ev", "jsonl", 1), DAY,
                               S3Store(store.client, store.bucket, prefix="one"), temp_dir=str(temp_dir))
    assert single.streams == ""


def _repetitive_day(conn, schema: str, rows: int) -> str:
    """A day of ``rows`` rows with a 2,100-byte repeated text each: a small Parquet object (dictionary,
    zstd), but 2 KB a row as plain Arrow."""
    table = sql.Identifier(schema, "rep")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}, repeat('abc', 700) FROM generate_series(1, {}) g").format(
        table, sql.Literal(DAY), sql.Literal(rows)))
    return f"{schema}.rep"


def test_a_parquet_day_that_fits_the_temp_dir_with_one_stream_fits_it_with_four(conn, schema, store, tmp_path):
    """The later streams' Arrow spools were uncompressed: with four streams this day needed ~6 MB of
    temp_dir for a Parquet object of a few KB, and failed (ENOSPC) where one stream fits in 2 MB."""
    name = _repetitive_day(conn, schema, 4000)
    with tiny_tmpfs(tmp_path / "tiny", "2m") as tiny:
        one = archive_partition(conn, _spec(name, "parquet", 1), DAY, store, temp_dir=str(tiny))
        four = archive_partition(conn, _spec(name, "parquet", 4), DAY,
                                 S3Store(store.client, store.bucket, prefix="four"), temp_dir=str(tiny))
        assert four.rows == one.rows == 4000 and four.fingerprint == one.fingerprint
        assert four.streams.startswith("4 stream(s)")
        assert list(tiny.iterdir()) == []


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_each_spool_is_let_go_once_its_rows_are_in_the_archive_file(fmt, conn, schema, store, temp_dir,
                                                                   monkeypatch):
    """Spools were all kept until the last was appended: the temp dir held the day twice over (the
    archive file and every later stream's spool) at the end of the read."""
    name = _repetitive_day(conn, schema, 4000)
    events: list[tuple[str, int]] = []
    opened, append_to, close = streams.Spool.__init__, streams.Spool.append_to, streams.Spool.close

    def spy_init(self, temp_dir) -> None:
        opened(self, temp_dir)
        self.number = len([e for e in events if e[0] == "open"])
        events.append(("open", self.number))

    def spy_close(self) -> None:
        if not self.closed:
            events.append(("close", self.number))
        close(self)

    monkeypatch.setattr(streams.Spool, "__init__", spy_init)
    monkeypatch.setattr(streams.Spool, "close", spy_close)
    monkeypatch.setattr(streams.Spool, "append_to",
                        lambda self, out: events.append(("append", self.number)) or append_to(self, out))
    if fmt == "parquet":  # spools[0] is stream 0's, for a big batch it holds (none here)
        spooled = parquet._write_spooled
        monkeypatch.setattr(parquet, "_write_spooled", lambda spool, write: events.append(
            ("append", spool.number)) or spooled(spool, write))
    archive_partition(conn, _spec(name, fmt, 4), DAY, store, temp_dir=str(temp_dir))
    first = 1 if fmt == "parquet" else 0
    later = [e for e in events if e[0] != "open" and e[1] >= first]
    assert later == [(kind, n) for n in range(first, first + 3) for kind in ("append", "close")]


def _descriptors_in(path) -> list[str]:
    """What this process holds open under ``path`` (nameless files show as ``#inode (deleted)``)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith(str(path)):
                found.append(target)
    return found


def test_a_parquet_day_failing_on_a_full_temp_dir_keeps_no_spool_open(conn, schema, store, tmp_path):
    """A later stream's Arrow writer held a descriptor of its own on its spool; when the day failed
    (here: the temp dir is full) it stayed open in the exception's reference cycle, so the nameless
    spool's space stayed taken after the day had failed, until the garbage collector ran."""
    table = sql.Identifier(schema, "hex")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}, md5(g::text) || md5((g * 3)::text) "
                         "FROM generate_series(1, 20000) g").format(table, sql.Literal(DAY)))
    spec = _spec(f"{schema}.hex", "parquet", 4)
    gc.disable()  # the cycle is freed by the collector only: no collection may hide the descriptor
    try:
        with tiny_tmpfs(tmp_path / "tiny", "256k") as tiny:
            with pytest.raises(ArchiveError) as caught:
                archive_partition(conn, spec, DAY, store, temp_dir=str(tiny))
            assert "no space left" in str(caught.value) and not caught.value.retryable
            del caught
            assert _descriptors_in(tiny) == []
    finally:
        gc.enable()
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), tmp_path / "tiny")


def _plan_kind(conn, name: str) -> str:
    described = describe_table(conn, name, "at")
    with read_snapshot(conn):
        return parallel.plan_streams(conn, described, day_filter(described, DAY), DAY, 4).kind


def test_time_slices_need_the_day_index_in_every_inheritance_child_too(conn, schema):
    """An inheritance parent indexed on the day column, a child not: each time slice would scan the
    whole child, once per stream. Time slices only where every relation read has the index."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.par (id int, at timestamptz); CREATE INDEX ON {s}.par (at); "
                         "CREATE TABLE {s}.kid () INHERITS ({s}.par); CREATE TABLE {s}.grandkid () INHERITS ({s}.kid); "
                         "CREATE INDEX ON {s}.kid (at)").format(s=s))
    for table in ("par", "grandkid"):  # two weeks of rows: the day is a fraction of each (time slices pay)
        conn.execute(sql.SQL("INSERT INTO {}.{} SELECT g, '2024-03-03 00:00+00'::timestamptz + g * interval '1 min' "
                             "FROM generate_series(1, 20000) g").format(s, sql.Identifier(table)))
        conn.execute(sql.SQL("ANALYZE {}.{}").format(s, sql.Identifier(table)))
    assert _plan_kind(conn, f"{schema}.par") == "ctid"
    conn.execute(sql.SQL("CREATE INDEX ON {}.grandkid (at)").format(s))
    assert _plan_kind(conn, f"{schema}.par") == "key"


def test_a_partial_index_on_the_day_column_does_not_make_every_stream_scan_the_table(conn, schema):
    """Time slices pay only where each is an index range. A partial index on the day column made the
    plan slice the day anyway; its predicate is not implied by the day's query, so each of the four
    streams scanned the whole table (history included) where ctid ranges read it once between them."""
    table = sql.Identifier(schema, "hist")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, open boolean) WITH (fillfactor = 10)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-01 00:00+00'::timestamptz + g * interval '5 min', g % 9 = 0 "
                         "FROM generate_series(1, 4000) g").format(table))
    conn.execute(sql.SQL("CREATE INDEX ON {} (at) WHERE open").format(table))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    assert _plan_kind(conn, f"{schema}.hist") == "ctid"
    # what a time slice would have cost: a scan of the whole table per stream
    where = day_filter(describe_table(conn, f"{schema}.hist", "at"), DAY)
    slice_query = sql.SQL("EXPLAIN SELECT * FROM {} WHERE ({}) AND at < {}").format(
        table, where, sql.Literal(dt.datetime(2024, 3, 10, 6, tzinfo=dt.UTC)))
    assert "Seq Scan" in "\n".join(r[0] for r in conn.execute(slice_query).fetchall())


def test_the_connection_limit_counted_is_the_login_roles_not_the_role_it_switches_to(pg, conn, schema, store,
                                                                                    temp_dir):
    """A login role allowed two sessions that switches to a group role on login (``-c role=...``, or
    ALTER ROLE ... SET role): PostgreSQL limits the login role, but the free sessions were counted for
    ``current_user`` (the group role, unlimited), so four streams were planned and the second session
    was refused at every attempt ("too many connections for role")."""
    table = _repetitive_day(conn, schema, 3000)
    login, group = f"ph_login_{os.getpid()}_{schema}", f"ph_group_{os.getpid()}_{schema}"
    dsn = pg.create_password_role(login, "pä ss", connection_limit=2)
    conn.execute(sql.SQL("CREATE ROLE {g} NOLOGIN; GRANT {g} TO {l}; GRANT USAGE ON SCHEMA {s} TO {g}; "
                         "GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {g}").format(
        g=sql.Identifier(group), l=sql.Identifier(login), s=sql.Identifier(schema)))
    with psycopg.connect(dsn, autocommit=True, options=f"-c role={group}") as archiving:
        assert archiving.execute("SELECT current_user::text").fetchone()[0] == group
        result = archive_partition(archiving, _spec(table, "jsonl", 4), DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 3000
    assert result.streams.startswith("1 stream(s)") and "connection limits" in result.streams, result.streams


def test_an_interrupt_after_a_streams_error_is_what_the_group_raises():
    """A run's termination arriving while a failed group waits for its last stream was swallowed
    (the first failure won), so a run archiving several days carried on with the next day."""
    sent = threading.Event()
    group = StreamGroup([lambda: None] * 3)

    def failing() -> None:
        raise RuntimeError("stream 1 failed")

    def slow_to_end() -> None:  # its cancel was lost: it ends on its own, after the interrupt
        sent.wait(10)
        time.sleep(0.3)

    def interrupt_once_failed() -> None:
        while group.failure is None:
            time.sleep(0.001)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        sent.set()

    threading.Thread(target=interrupt_once_failed).start()
    with pytest.raises(KeyboardInterrupt):
        group.run([lambda: None, failing, slow_to_end])


def test_a_day_among_many_in_an_indexed_relation_is_not_read_by_scanning_all_of_it(conn, schema, s3_client, bucket,
                                                                                  temp_dir):
    """ctid ranges cover the whole relation with index scans off: four streams of a plain table with
    a date day column (which cannot be cut in time slices) read all its days, the history included,
    where one stream reads the day through its index; so did a monthly partition. Now such a day is
    read by one stream (date) or by time slices of the partition's index (timestamps); a relation
    that is mostly the day keeps its ctid ranges."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL(
        "CREATE TABLE {s}.days (id int, at date) WITH (fillfactor = 10); CREATE INDEX ON {s}.days (at); "
        "CREATE TABLE {s}.one_day (id int, at date) WITH (fillfactor = 10); CREATE INDEX ON {s}.one_day (at); "
        "CREATE TABLE {s}.monthly (id int, at timestamptz) PARTITION BY RANGE (at); CREATE INDEX ON {s}.monthly (at); "
        "CREATE TABLE {s}.march PARTITION OF {s}.monthly FOR VALUES FROM ('2024-03-01 00:00+00') TO "
        "('2024-04-01 00:00+00') WITH (fillfactor = 10)").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {s}.days SELECT g, '2024-03-01'::date + g % 10 FROM generate_series(1, 5000) g; "
                         "INSERT INTO {s}.one_day SELECT g, '2024-03-10' FROM generate_series(1, 5000) g; "
                         "INSERT INTO {s}.monthly SELECT g, '2024-03-01 00:00+00'::timestamptz + g * interval '5 min' "
                         "FROM generate_series(1, 8000) g").format(s=s))
    conn.execute(sql.SQL("ANALYZE {s}.days, {s}.one_day, {s}.monthly").format(s=s))
    assert _plan_kind(conn, f"{schema}.days") == "single"
    assert _plan_kind(conn, f"{schema}.one_day") == "ctid"
    assert _plan_kind(conn, f"{schema}.monthly") == "key"
    _one_and_four(conn, s3_client, bucket, temp_dir, f"{schema}.monthly", "csv", 288, again=False)
