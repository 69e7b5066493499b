"""Hunt 8 (nk): locks, waits and real PostgreSQL faults around the reads added for expression-keyed tables."""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg
from psycopg import sql

from archive_pipeline.core.config import TableSpec

DAY = dt.date(2024, 3, 10)


def _connect(pg, **settings):
    conn = psycopg.connect(pg.dsn, autocommit=True)
    for name, value in settings.items():
        conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    return conn


def _daily_table(conn, schema: str, key: str, first: dt.date, count: int) -> None:
    """ev partitioned by RANGE (key), one child a day from ``first``, ten rows in each."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamp, v text) PARTITION BY RANGE ({})").format(
        sql.Identifier(schema, "ev"), sql.SQL(key)))
    for i in range(count):
        day = first + dt.timedelta(days=i)
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"ev_{day:%Y%m%d}"), sql.Identifier(schema, "ev"), sql.Literal(str(day)),
            sql.Literal(str(day + dt.timedelta(days=1)))))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamp + g * interval '1 hour', 'x' "
                         "FROM generate_series(0, %s) g").format(sql.Identifier(schema, "ev")),
                 (str(first), count * 24 - 1))


def test_a_locked_old_partition_of_an_expression_keyed_table_holds_back_no_other_day(pg, conn, schema):
    """A user partitions ev by RANGE ((at::date)), one child a day (the README's example of an expression key),
    and runs VACUUM FULL (or an ALTER) on the partition of a day a month ago, which holds it ACCESS EXCLUSIVE.
    Meanwhile the sensor (or ``list --check-source``, ``compare``, ``archive --dry-run``) looks for the last
    week's days without an archive: each missing day gets one EXISTS probe through the parent, bounded by the
    day column only, which cannot prune by the expression key, so every probe plans and locks every partition,
    the month-old one too. Every day's probe waits out lock_timeout (one lock_timeout per day: a tick over a
    week of days at the default 30 s is three and a half minutes, past the daemon's tick timeout) and every day
    is listed "not inspected"; the same table keyed by RANGE (at) loses no day. The README promises that a read
    of a day bounds the key too ("plans, scans and locks only the partitions around the day") and that "a lock
    on one partition holds back its day only": the week's days should all be found, none failed."""
    from archive_pipeline.core.discovery import existing_days

    first = DAY - dt.timedelta(days=40)
    _daily_table(conn, schema, "(at::date)", first, 44)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=first, partitioning={"mode": "declarative"})
    week = [spec.period(DAY - dt.timedelta(days=i)) for i in range(6, -1, -1)]
    old = DAY - dt.timedelta(days=30)
    with _connect(pg) as vacuum, _connect(pg, lock_timeout="200ms") as sensor:
        vacuum.execute("BEGIN")
        vacuum.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(schema, f"ev_{old:%Y%m%d}")))
        failed = {}
        try:
            found = existing_days(sensor, spec, week, failed=failed)
        finally:
            vacuum.execute("ROLLBACK")
    assert {p.isoformat(): type(e).__name__ for p, e in failed.items()} == {}
    assert found == week


def test_the_code_location_loads_while_a_migration_holds_an_expression_keyed_table(pg, conn, schema, archive_env):
    """A user partitions ev by RANGE ((at::date)) (the README's example of an expression key) with
    ``source: {lock_timeout_ms: 300}``, and a migration (ALTER TABLE ev ..., a long one) holds ev ACCESS
    EXCLUSIVE while the code location (re)loads: a deploy, ``dagster dev``, the code server's reload. The load
    checks each table: describing ev prints its key with pg_get_expr(partexprs), which locks the parent, on a
    session with no lock_timeout at all, so the load waits for the migration to commit (Dagster's code server
    gives up on it: no sensor, schedule or run of any table meanwhile). The same table keyed by RANGE (at)
    loads at once (its check reads the catalog only). The load should give up on that table within the
    configured lock_timeout (a warning, as for a database that cannot be reached) and load."""
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions

    _daily_table(conn, schema, "(at::date)", DAY, 1)
    config = parse_config({"source": {"lock_timeout_ms": 300},
                           "tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
                                       "partitioning": {"mode": "declarative"}}]})
    outcome: dict = {}
    with _connect(pg) as migration:
        migration.execute("BEGIN")
        migration.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "ev")))

        def load() -> None:
            try:
                outcome["definitions"] = build_definitions(config)
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc

        thread = threading.Thread(target=load)
        started = time.monotonic()
        thread.start()
        thread.join(4)
        took = time.monotonic() - started
        migration.execute("ROLLBACK")  # the migration ends: a load still waiting goes on
        thread.join(30)
    assert took < 4, "the code location's load waited for the migration's lock (no lock_timeout on its session)"
    assert "error" not in outcome, outcome.get("error")


def test_a_removal_ended_by_the_idle_timeout_while_the_store_is_slow_names_that_wait(pg, conn, schema, s3, bucket,
                                                                                      temp_dir):
    """Retention action 'drop' on an expression-keyed table; the removal's transaction writes its pending mark
    and asks the store for the proven object (HEAD) before it locks and drops, waiting idle in its transaction
    meanwhile. The store is slow (throttled, a stalled connection retried) past the session's
    idle_in_transaction_session_timeout (source.idle_in_transaction_timeout_ms, or the role's), so PostgreSQL
    ends the session. The removal fails, retryable, its mark taken back (right), but the message says
    "idle_in_transaction_session_timeout ended the snapshot's session" and explains it by "the day's other
    sessions, for the fingerprint, parallel streams or the Parquet reader, connect and import its snapshot": a
    removal has no snapshot and no such sessions, so a DBA looks for the wrong thing. It should say that the
    removal's transaction waited on the object store (its pending mark / the object check) past that timeout."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    _daily_table(conn, schema, "(at::date)", DAY, 1)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY - dt.timedelta(days=5),
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    outcome: dict = {}
    with FaultProxy(s3.endpoint_url) as proxy:
        store = S3Store(proxy.client(), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        gate = proxy.add(Fault(method="HEAD", path=r"\.jsonl\.zst$", action="hold", times=1)).gate
        remover = _connect(pg, idle_in_transaction_session_timeout="500ms")
        pid = remover.info.backend_pid

        def remove() -> None:
            try:
                outcome["removal"] = remove_day(remover, spec, DAY, store, proven=True)
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc

        thread = threading.Thread(target=remove)
        thread.start()
        try:
            assert proxy.wait_held(1, timeout=20)
            deadline = time.monotonic() + 10
            while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            gate.set()
            thread.join(30)
            remover.close()
    error = outcome.get("error")
    assert isinstance(error, ArchiveError) and error.retryable, outcome
    assert "snapshot" not in str(error), str(error)
    assert "idle_in_transaction_timeout_ms" in (error.remedy or ""), error.remedy
