"""Several connections read one day together, inside one exported snapshot (``parallel_streams``).

Why: one COPY is one PostgreSQL backend, so one core of the database and one core of the archiver
at most. DuckDB's PostgreSQL scanner goes past that by giving several connections disjoint ranges
of one table in one snapshot; this module does the same for one day.

The plan (:func:`plan_streams`) is decided once, in the coordinating snapshot, and every stream
only executes its part of it:

- **ctid page ranges** (the default): stream *i* reads pages ``[b_i, b_i+1)`` of the relation
  with a TID range scan (PostgreSQL 14+), the day's filter still applied. The first range starts
  at page 0 and the last one is open-ended, so together they cover every possible tuple id exactly
  once: each row visible in the snapshot is read by exactly one stream, whatever the relation's
  size is now. The size (``pg_relation_size``, read in the snapshot) only balances the streams;
  pages added meanwhile hold only tuples the snapshot cannot see, and they fall in the last range
  anyway. Used for a day that is its own relation (a declarative or naming-mode partition), for
  tables without an index on the day column, and for relations mostly of the day.
- **key ranges**: a plain table (or a partition of many days) with a btree index on its timestamp
  day column, where the day is usually a small part of the relation: page ranges would make the
  streams scan the history. The day is cut into equal time slices ``[s_i, s_i+1)`` that cover it
  exactly. A ``date`` day among many days of an indexed relation is read by one stream.

Every stream is its own session (``open_text_sessions``) that imports the coordinator's snapshot
(``SET TRANSACTION SNAPSHOT``); the coordinator ends its transaction as soon as all have imported
it, and each stream ends its own as soon as its rows are read. :class:`StreamGroup` runs them:
the first failure (a terminated backend, a timeout, a refused value) cancels and closes all
others, and is raised unchanged, so the partition fails with the same classification as a single
stream. Stream 0 writes straight into the archive file; the others write into nameless spool files
appended in stream order afterwards, so the object's rows are in a deterministic order.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from archive_pipeline.core.errors import snapshot_gone
from archive_pipeline.core.formats.common import ByteSink, Extraction, WriteStats
from archive_pipeline.core.streams import StreamGroup, spools
from archive_pipeline.core.periods import Period
from archive_pipeline.core.session_settings import (CONNECT_PARAMETERS, act_as, apply_settings, pinned_options,
                                                    switched_role, unpinned_defaults, watch_client)
from archive_pipeline.core.source import READ_SETTINGS, SourceTable, estimated_rows, lock_day, reads_foreign_tables, \
    same_members, scanned_relations

# Inside a stream's transaction: make the TID range scan the plan (an open-ended last range would
# otherwise be read through an index on the day column, i.e. the whole day for a part of it).
CTID_SETTINGS = {"enable_indexscan": "off", "enable_bitmapscan": "off"}
_TIMESTAMPS = ("timestamp", "timestamptz")


@dataclass(frozen=True)
class StreamPlan:
    """Per stream, a condition ANDed to the day's filter; one ``TRUE`` condition = a single stream."""

    conditions: tuple[sql.Composable, ...]
    kind: str  # "single" | "ctid" | "key"
    reason: str  # why this plan, for logs and the bench
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def streams(self) -> int:
        return len(self.conditions)


SINGLE = StreamPlan((sql.SQL("TRUE"),), "single", "one stream requested")

# Asked for ``n`` slots for the streams beyond the first (the Dagster layer: of the table's pool);
# yields how many it granted, without waiting, and gives them back on exit.
StreamSlots = Callable[[int], AbstractContextManager[int]]
# parallel_streams: auto, conservative bounds. Measured (bench/run.py --streams 1,2,4, 1M rows): on two
# cores one stream already keeps both busy (archiver, PostgreSQL), and N=2 gained nothing for CSV and
# Parquet (JSONL 10%), so a stream gets two of the archiver's cores; every stream is one more session.
AUTO_ROWS_PER_STREAM = 2_000_000
AUTO_MAX_STREAMS = 4


def auto_streams(estimated_rows: int, cores: int | None = None) -> int:
    """Streams for ``parallel_streams: auto``: one per AUTO_ROWS_PER_STREAM estimated rows of the
    day, at most one per two of the archiver's cores, and at most AUTO_MAX_STREAMS."""
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, min(AUTO_MAX_STREAMS, cores // 2, estimated_rows // AUTO_ROWS_PER_STREAM))


def plan_streams(conn: psycopg.Connection, table: SourceTable, where: sql.Composable, day: dt.date,
                 requested: int | str, estimate: int | None = None) -> StreamPlan:
    """How ``requested`` streams (or ``"auto"``: see :func:`auto_streams`) split the day, read inside
    the coordinator's snapshot (cheap: catalog lookups, the relation's size, for a partitioned table
    one row of the day, which names the partition holding it, for a plain table the relations the day's query
    reads (one EXPLAIN: an inheritance parent's children), and for ``auto`` or a relation indexed
    on the day column the planner's ``estimate`` of the day's rows: one EXPLAIN unless the caller has
    it already)."""
    if requested == "auto":
        estimate = estimated_rows(conn, table, where) if estimate is None else estimate
        requested = auto_streams(estimate)
        if requested <= 1:
            return replace(SINGLE, reason=f"auto: ~{estimate:,} rows estimated on {len(os.sched_getaffinity(0))} "
                                          f"core(s), one stream (one per {AUTO_ROWS_PER_STREAM:,} rows and two cores)")
    if requested <= 1:
        return SINGLE
    if table.relkind not in ("r", "p", "m"):
        return replace(SINGLE, reason=f"{table.qualified} is a view or foreign table: it has no ctid to split by")
    if reads_foreign_tables(conn, table, where):
        return replace(SINGLE, reason=f"the day of {table.qualified} is read from a foreign table (a child or "
                                      "partition on another server), whose rows are not in the exported snapshot: "
                                      "each stream would read them in a snapshot of its own")
    oid = conn.execute("SELECT %s::pg_catalog.regclass::pg_catalog.oid", (table.identifier.as_string(conn),)).fetchone()[0]
    readable = conn.execute("SELECT pg_catalog.has_table_privilege(%s, 'SELECT')", (oid,)).fetchone()[0]
    # what the day's query reads (partitions left after pruning, a parent and its children not excluded by their
    # CHECK constraints): the relations whose indexes, rows and pages decide the plan, not the whole tree's
    scanned = scanned_relations(conn, table, where) or ([] if table.relkind == "p" else [oid])
    if (table.relkind != "p" and table.day_column is not None and table.day_column.base_type in _TIMESTAMPS
            and _day_index(conn, scanned, table)
            # slices of the index where the table holds much more than the day; a table mostly of the day is
            # read in page ranges (each page once: time slices of rows stored out of time order read every page
            # once per stream)
            and (not readable or not _mostly_the_day(conn, scanned, table, where, estimate))):
        return _sliced(conn, _largest(conn, scanned), table, day, requested)
    if not readable:
        # SELECT granted column by column: the system columns (ctid, tableoid) are not among them
        return replace(SINGLE, reason=f"the role may read {table.qualified}'s columns but not its ctid (column "
                                      "privileges only): nothing to split by")
    if table.relkind == "p":
        # The relation holding the day's rows (the planner prunes the rest): one row tells which.
        row = conn.execute(sql.SQL("SELECT tableoid FROM {} WHERE {} LIMIT 1").format(table.identifier, where))
        found = row.fetchone()
        if found is None:
            return replace(SINGLE, reason="the day has no rows")
        scanned = scanned or [found[0]]
    # the ranges apply to every relation the query reads, so they are cut by the largest of them: for a partitioned
    # table, the first partition found may be a night's few pages, which would cut the day's big ones into one range
    # of nearly all their rows; an inheritance parent's own size is often 0 pages. A table without children: itself.
    paged = _largest(conn, scanned)
    indexed = _index_reads_less(conn, scanned, table, where, estimate)
    if indexed is None:
        return _ctid_plan(conn, paged, requested)
    if table.day_column.base_type in _TIMESTAMPS:  # a partition of many days, indexed: slices of the index
        return _sliced(conn, paged, table, day, requested)
    return replace(SINGLE, reason=indexed)


def _largest(conn: psycopg.Connection, oids: Sequence[int]) -> int:
    """The OID of the largest of ``oids`` (the relations the day's query scans)."""
    return conn.execute("SELECT u.oid FROM pg_catalog.unnest(%s::pg_catalog.oid[]) AS u(oid) "
                        "ORDER BY pg_catalog.pg_relation_size(u.oid) DESC LIMIT 1", (list(oids),)).fetchone()[0]


def _mostly_the_day(conn: psycopg.Connection, scanned: Sequence[int], table: SourceTable, where: sql.Composable,
                    estimate: int | None) -> bool:
    """Whether the planner's statistics say at least half of the rows the day's query reads (those of the relations
    it scans: the estimate is of the day over them) are the day's. Not known (one never analyzed): no."""
    tuples = _scanned_tuples(conn, scanned)
    if tuples <= 0:
        return False
    rows = estimated_rows(conn, table, where) if estimate is None else estimate
    return rows * 2 >= tuples


def _index_reads_less(conn: psycopg.Connection, scanned: Sequence[int], table: SourceTable, where: sql.Composable,
                      estimate: int | None) -> str | None:
    """Why ctid ranges would read far more than the day: the relations the day's query scans hold more than twice
    the day's rows (the planner's estimates) and an index on the day column reads the day alone. Ranges of pages
    cover each of them whole, its history included, with index scans off; an inheritance child the query never
    reads (excluded by its CHECK constraint) is no part of that."""
    if table.day_column is None or not _day_index(conn, scanned, table):
        return None
    tuples = _scanned_tuples(conn, scanned)
    rows = estimated_rows(conn, table, where) if estimate is None else estimate
    if tuples <= 0 or rows * 2 >= tuples:  # never analyzed (-1), or mostly the day
        return None
    name = conn.execute("SELECT %s::pg_catalog.regclass::text", (scanned[0],)).fetchone()[0] if len(scanned) == 1 \
        else f"the {len(scanned)} relations of {table.qualified} the day's query reads"
    return (f"ctid ranges would read all of {name} (~{tuples:,.0f} rows) for the day's ~{rows:,}, which the index "
            f"on {table.day_column.name} reads alone (a {table.day_column.base_type} day cannot be cut in time slices)")


def _scanned_tuples(conn: psycopg.Connection, scanned: Sequence[int]) -> int:
    """The planner's count of rows (reltuples) of the relations the day's query scans, as the day's estimate
    counts them; -1 (not known) if one holding pages was never analyzed. A relation of 0 pages holds 0 rows
    whatever its reltuples says: an empty inheritance parent is never analyzed (autovacuum analyzes a relation
    whose own rows change), and its -1 made every day of its children "not known", read in page ranges."""
    return conn.execute(
        "SELECT CASE WHEN pg_catalog.bool_or(c.reltuples < 0 AND s.size > 0) THEN -1 "
        "ELSE pg_catalog.sum(CASE WHEN s.size = 0 THEN 0 ELSE c.reltuples::pg_catalog.int8 END)::pg_catalog.int8 END "
        # whole numbers: a role's extra_float_digits (-15) prints a float with one digit
        "FROM pg_catalog.unnest(%s::pg_catalog.oid[]) AS u(oid) JOIN pg_catalog.pg_class c ON c.oid = u.oid "
        "CROSS JOIN LATERAL (SELECT pg_catalog.pg_relation_size(c.oid) AS size) s", (list(scanned),)).fetchone()[0] or 0


def _day_index(conn: psycopg.Connection, scanned: Sequence[int], table: SourceTable) -> bool:
    """Whether a valid btree index leads with the day column (so a time slice is an index range) in every relation
    the day's query scans (an inheritance parent and its children alike). Not a partial one: the day's query does
    not imply its predicate. Without such an index, every stream would scan the whole relation (ctid ranges read
    it once between them)."""
    return bool(conn.execute(
        "SELECT pg_catalog.bool_and(EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c "
        "ON c.oid = i.indexrelid JOIN pg_catalog.pg_am am ON am.oid = c.relam JOIN pg_catalog.pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = u.oid AND i.indisvalid "
        "AND i.indpred IS NULL AND am.amname = 'btree' AND a.attname = %s)) "
        "FROM pg_catalog.unnest(%s::pg_catalog.oid[]) AS u(oid)",
        (table.day_column.name, list(scanned))).fetchone()[0])


def _pages(conn: psycopg.Connection, oid: int) -> int:
    return conn.execute("SELECT pg_catalog.pg_relation_size(%s) / pg_catalog.current_setting('block_size')::bigint",
                        (oid,)).fetchone()[0]


def _sliced(conn: psycopg.Connection, oid: int, table: SourceTable, day: Period | dt.date,
            requested: int) -> StreamPlan:
    """Time slices of the day, at most one per page of the largest relation the day's query reads: a table of a
    page or two is read by one session, not N that each import the snapshot and take the day's locks."""
    pages = _pages(conn, oid)
    if min(requested, pages) <= 1:
        return replace(SINGLE, reason=f"the relation has {pages} page(s): nothing to split")
    return _key_plan(table, day, min(requested, pages))


def _ctid_plan(conn: psycopg.Connection, oid: int, requested: int) -> StreamPlan:
    pages = _pages(conn, oid)
    streams = min(requested, pages)
    if streams <= 1:
        return replace(SINGLE, reason=f"the relation has {pages} page(s): nothing to split")
    bounds = [pages * i // streams for i in range(1, streams)]
    return StreamPlan(tuple(ctid_ranges(bounds)), "ctid", f"{streams} ctid ranges over {pages} pages",
                      dict(CTID_SETTINGS))


def ctid_ranges(bounds: Sequence[int]) -> Iterator[sql.Composable]:
    """Conditions for pages ``[0, b1)``, ``[b1, b2)``, ..., ``[bn, ∞)``: every tuple id in exactly one."""
    def tid(page: int) -> sql.Composable:
        return sql.SQL("{}::pg_catalog.tid").format(sql.Literal(f"({page},0)"))

    edges = [None, *bounds, None]
    for low, high in zip(edges, edges[1:]):
        parts = ([sql.SQL("ctid OPERATOR(pg_catalog.>=) {}").format(tid(low))] if low is not None else []) + \
                ([sql.SQL("ctid OPERATOR(pg_catalog.<) {}").format(tid(high))] if high is not None else [])
        yield sql.SQL(" AND ").join(parts)


def _key_plan(table: SourceTable, day: Period | dt.date, requested: int) -> StreamPlan:
    """Equal time slices of the period, ``[s_i, s_i+1)``; the first and last are open at its ends, so
    together with the period's filter they cover it exactly whatever the filter's own bounds are (the
    slices only balance the streams: an hourly, 23-hour or monthly period is cut the same way)."""
    if isinstance(day, Period):
        start, end = ((day.utc_start, day.utc_end) if table.day_column.base_type == "timestamptz"
                      else day.wall_bounds)
    else:
        start = dt.datetime.combine(day, dt.time())
        if table.day_column.base_type == "timestamptz":
            start = start.replace(tzinfo=dt.UTC)
        end = start + dt.timedelta(days=1)
    step = (end - start) / requested
    cuts = [sql.Literal(start + step * i) for i in range(1, requested)]
    col = sql.Identifier(table.day_column.name)
    edges = [None, *cuts, None]
    conditions = []
    for low, high in zip(edges, edges[1:]):
        parts = ([sql.SQL("{} OPERATOR(pg_catalog.>=) {}").format(col, low)] if low is not None else []) + \
                ([sql.SQL("{} OPERATOR(pg_catalog.<) {}").format(col, high)] if high is not None else [])
        conditions.append(sql.SQL(" AND ").join(parts))
    return StreamPlan(tuple(conditions), "key", f"{requested} time slices of the day over the index on "
                      f"{table.day_column.name}")


def stream_extractions(extraction: Extraction, plan: StreamPlan,
                       conns: Sequence[object]) -> list[Extraction]:
    """One extraction per stream: its own session, the day's filter AND its range, the header once,
    progress summed over the streams and reported one call at a time (a caller's callback need not be
    thread-safe, and the totals it sees never go backwards)."""
    totals = [(0, 0)] * plan.streams
    lock = threading.Lock()
    report = extraction.progress

    def progress_of(i: int) -> Callable[[int, int], None] | None:
        if report is None:
            return None

        def progress(rows: int, size: int) -> None:
            with lock:
                totals[i] = (rows, size)
                report(sum(r for r, _ in totals), sum(b for _, b in totals))
        return progress

    return [replace(extraction, conn=conn, where=sql.SQL("({}) AND ({})").format(extraction.where, cond),
                    snapshot=replace(extraction.snapshot, release=lambda: None), header=(i == 0),
                    progress=progress_of(i), settings=_stream_settings(extraction, plan))
            for i, (conn, cond) in enumerate(zip(conns, plan.conditions, strict=True))]


def _stream_settings(extraction: Extraction, plan: StreamPlan) -> dict[str, str]:
    """A stream's settings: the read's, rows in the relation's order whoever built the extraction (see
    source.READ_SETTINGS), and its plan's (a ctid range's index scans off)."""
    return {**extraction.settings, **READ_SETTINGS, **plan.settings}


def dsn_of(conn: psycopg.Connection) -> str:
    """The coordinator's connection string, password included (the streams log in the same way), in UTF-8
    whatever the coordinator speaks (a caller's plain connection to a SQL_ASCII database speaks SQL_ASCII)."""
    info = conn.info
    return make_conninfo(info.dsn, **({"password": info.password} if info.password else {}), **CONNECT_PARAMETERS,
                         options=pinned_options(info.dsn, unpinned_defaults(conn)))


_FREE_SESSIONS = """
SELECT least(
    (SELECT CASE WHEN r.rolsuper OR r.rolconnlimit < 0 THEN NULL
                 ELSE r.rolconnlimit - (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a
                                        WHERE a.usesysid = r.oid) END
     FROM pg_catalog.pg_roles r WHERE r.rolname = session_user),
    (SELECT CASE WHEN d.datconnlimit < 0 THEN NULL
                 ELSE d.datconnlimit - (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a
                                        WHERE a.datid = d.oid) END
     FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()),
    pg_catalog.current_setting('max_connections')::int
      - pg_catalog.current_setting('superuser_reserved_connections')::int
      - (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'
         -- another role's session shows no backend_type without pg_read_all_stats: counted by its user (a
         -- background worker of one counts too: fewer streams, never more than the server takes)
         OR (backend_type IS NULL AND usesysid IS NOT NULL)))
"""


def free_sessions(conn: psycopg.Connection) -> int:
    """How many more sessions ``conn``'s role can open now: the tightest of its role's, its
    database's and the server's connection limits, less the sessions counted against each. A day
    that needs more than this would fail at every attempt, the retries included. The role is the
    one that logs in (``session_user``), which PostgreSQL limits, not one it switched to (``-c
    role=...``, ALTER ROLE ... SET role). 0 where the role may not count them (a DBA revoked
    pg_stat_activity): the day is then read by this session alone, as at a connection limit."""
    try:
        with conn.transaction():  # (a savepoint inside the snapshot: a refusal must not abort it)
            return int(conn.execute(_FREE_SESSIONS).fetchone()[0])
    except psycopg.errors.InsufficientPrivilege:
        return 0


def open_snapshot_sessions(coordinator: psycopg.Connection, snapshot_id: str, count: int,
                           settings: dict[str, str], table: SourceTable,
                           where: sql.Composable) -> list[psycopg.Connection]:
    """``count`` sessions logged in as ``coordinator`` is and acting as its role (a ``SET ROLE`` of the caller's
    is taken over: see :func:`~archive_pipeline.core.session_settings.switched_role`), each in a READ ONLY
    transaction that imported ``snapshot_id`` (so they see exactly its data) and holds the day's locks (see
    :func:`~archive_pipeline.core.source.lock_day`), with ``settings``. Any failure closes those
    already opened."""
    dsn = dsn_of(coordinator)
    switched = switched_role(coordinator)
    opened: list[psycopg.Connection] = []
    try:
        for _ in range(count):
            conn = psycopg.connect(dsn, autocommit=True)
            opened.append(conn)
            act_as(conn.execute, switched)
            watch_client(conn)  # killed mid-read, the server notices and ends the session (see watch_client)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
            except psycopg.Error as exc:
                raise snapshot_gone(exc) from None
            lock_day(conn.execute, table, where, coordinator)
            apply_settings(conn.execute, settings)
    except BaseException:
        for conn in opened:
            conn.close()
        raise
    return opened


def open_text_sessions(extraction: Extraction, count: int, settings: dict[str, str]) -> list[psycopg.Connection]:
    """``count`` sessions in the coordinator's snapshot."""
    return open_snapshot_sessions(extraction.conn, extraction.snapshot.snapshot_id, count, settings,
                                  extraction.table, extraction.where)


def merge_stats(parts: Sequence[WriteStats]) -> WriteStats:
    """The day's statistics from its streams' (types and encodings are the same in every stream)."""
    first = parts[0]
    return WriteStats(rows=sum(p.rows for p in parts), bytes=sum(p.bytes for p in parts),
                      output_types=first.output_types, encodings=first.encodings)


def write_text_streams(fmt, codec, level: int | None, extraction: Extraction, plan: StreamPlan, out: ByteSink,
                       temp_dir: str | os.PathLike | None) -> WriteStats:
    """JSONL / CSV: each stream COPYs its range through its own compressor, stream 0 into ``out``,
    the others into spools appended in order. Concatenated zstd frames, gzip members and lz4 frames
    are each one valid stream of the codec (every reader here reads across them), and compressing
    per stream spreads the compressor's CPU over the streams."""
    sessions = open_text_sessions(extraction, plan.streams, _stream_settings(extraction, plan))
    try:
        # every stream holds the snapshot now: the coordinator is done (inside the try: where its COMMIT
        # fails, a terminated coordinator say, the streams must not be left idle in their transactions)
        extraction.snapshot.release()
        group = StreamGroup([conn.cancel_safe for conn in sessions])
        parts = stream_extractions(extraction, plan, sessions)
        with spools(plan.streams - 1, temp_dir) as spooled:
            sinks = [out, *spooled]

            def task(i: int) -> Callable[[], WriteStats]:
                def run() -> WriteStats:
                    with codec.open(sinks[i], level) as writer:
                        stats = fmt.write(parts[i], writer)
                    same_members(sessions[i], extraction.table, extraction.where)  # (see source.same_members)
                    sessions[i].execute("COMMIT")  # the read transaction ends as soon as the rows are read
                    group.finished(i)
                    sessions[i].close()
                    return stats
                return run

            results = group.run([task(i) for i in range(plan.streams)])
            for spool in spooled:
                spool.append_to(out)
                spool.close()  # appended: its disk space is free before the next one's turn
    finally:
        for conn in sessions:
            conn.close()
    return merge_stats(results)


def write_day(fmt, codec, level: int | None, extraction: Extraction, plan: StreamPlan, sink: ByteSink,
              temp_dir: str | os.PathLike | None = None) -> WriteStats:
    """The day's rows through ``fmt`` (and ``codec``) into ``sink``, by one stream or by ``plan``'s."""
    if plan.streams == 1:
        if not fmt.reads_in_own_session:
            # read in the coordinator's session, after any fingerprint it took first (which keeps its own settings):
            # for this transaction's rest, rows in the relation's order (see source.READ_SETTINGS)
            apply_settings(extraction.conn.execute, READ_SETTINGS)
        with codec.open(sink, level) as out:
            return fmt.write(extraction, out)
    if fmt.compresses_internally:
        parts = stream_extractions(extraction, plan, [extraction.conn] * plan.streams)
        return fmt.write_streams(extraction, parts, sink, temp_dir)
    return write_text_streams(fmt, codec, level, extraction, plan, sink, temp_dir)
