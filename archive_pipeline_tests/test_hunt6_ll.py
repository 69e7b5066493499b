"""Hunt 6 (ll): a real PostgreSQL fault (a terminated session) at one statement of an operation, and what the
operation then says and leaves."""

from __future__ import annotations

import contextlib
import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError

DAY = dt.date(2024, 3, 10)
ROWS = 3000


def _events(conn, schema: str, name: str = "ev", *, declarative: bool = False) -> str:
    table = sql.Identifier(schema, name)
    if declarative:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, note text) "
                             "PARTITION BY RANGE (created_at)").format(table))
        for day in (DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)):
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(schema, f"{name}_{day:%Y%m%d}"), table, sql.Literal(f"{day} 00:00+00"),
                sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
    else:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + (g % 86000) * interval '1 second', 'n' || g "
                         "FROM generate_series(1, {}) g").format(table, sql.Literal(DAY.isoformat()), sql.Literal(ROWS)))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    return f"{schema}.{name}"


@contextlib.contextmanager
def terminated_at(pg, marker: str):
    """The first time a session of the code under test sends a statement containing ``marker``, its backend is
    terminated (pg_terminate_backend from another session, waiting until it is gone) just before the statement
    reaches it: a real administrator's termination, a failover, an OOM kill of the backend, at that point."""
    state = {"killed": False}
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, **kw):
        text = query.as_string(self.connection) if hasattr(query, "as_string") else str(query)
        if not state["killed"] and marker in text:
            state["killed"] = True
            with psycopg.connect(pg.dsn, autocommit=True) as killer:
                original(killer.cursor(), "SELECT pg_terminate_backend(%s, 5000)", (self.connection.info.backend_pid,))
        return original(self, query, params, **kw)

    psycopg.Cursor.execute = execute
    try:
        yield state
    finally:
        psycopg.Cursor.execute = original


TYPE_CHECK = "to_regtype(%s) IS NOT NULL"


@pytest.mark.parametrize("operation", ["deep_verify", "restore_new", "remove_day"])
def test_a_session_terminated_while_the_manifests_types_are_checked_is_not_a_damaged_manifest(
        pg, conn, schema, store, temp_dir, operation):
    """A user proves a day (`verify --deep`, the `deep_check`), restores it into a new table, or lets retention
    remove it. Each first checks every type name the manifest records with `SELECT to_regtype(%s) IS NOT NULL`
    (restore.checked_type_sql). When the session is terminated at that statement (an administrator's
    pg_terminate_backend, a failover, the backend killed), the error says "column 'id' of the manifest: 'bigint'
    is not a type name (terminating connection due to administrator command); the manifest is damaged", a
    RestoreError with retryable False: the user is told the archive is damaged (and a removal is refused for
    it), and Dagster does not retry. Should: a SourceError/ArchiveError naming the terminated session as the
    cause, retryable, as the same termination at any other statement of these operations says; the manifest is
    fine and the same operation run again succeeds."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline.core.verify import deep_verify

    name = _events(conn, schema, declarative=operation == "remove_day")
    spec = TableSpec(name=name, day_column="created_at", start_date=DAY, format="csv", compression="zstd",
                     **({"partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}
                        if operation == "remove_day" else {}))
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))

    def run(session):
        if operation == "deep_verify":
            return deep_verify(session, store, spec, DAY, temp_dir=str(temp_dir))
        if operation == "restore_new":
            return restore_day(session, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
        return remove_day(session, spec, DAY, store, temp_dir=str(temp_dir))

    with pg.connect() as session, terminated_at(pg, TYPE_CHECK) as fault, pytest.raises(ArchiveError) as caught:
        run(session)
    assert fault["killed"]
    err = caught.value
    assert (err.table, err.day) == (spec.name, DAY.isoformat()), str(err)
    assert "damaged" not in str(err), str(err)
    assert err.retryable, str(err)
    assert "terminat" in str(err), str(err)
    with pg.connect() as again:
        done = run(again)
    assert done == [] if operation == "deep_verify" else done.rows == ROWS


@contextlib.contextmanager
def settings_view_locked(pg):
    """Another session holds ACCESS EXCLUSIVE on pg_catalog.pg_settings: a session reading that view waits, and
    under its lock_timeout fails there with LockNotAvailable ("canceling statement due to lock timeout")."""
    with psycopg.connect(pg.dsn) as holder:
        holder.execute("LOCK TABLE pg_catalog.pg_settings IN ACCESS EXCLUSIVE MODE")
        yield
        holder.rollback()


@pytest.mark.parametrize("streams", [1, 2])
def test_a_lock_timeout_while_the_second_session_is_prepared_is_retryable_not_an_aborted_transaction(
        pg, conn, schema, store, temp_dir, streams):
    """A first archive of a day the planner expects to hold 50,000 rows or more (or with parallel_streams 2) opens
    a second session beside the archiving one, and to build its connection string asks the archiving session,
    inside the day's REPEATABLE READ transaction, `SELECT name, reset_val FROM pg_catalog.pg_settings ...`
    (parallel.dsn_of -> session_settings.unpinned_defaults). That statement meets the session's lock_timeout
    (source.lock_timeout_ms; a statement_timeout or a cancel does the same). The error is a QueryCanceled /
    LockNotAvailable, i.e. a psycopg.OperationalError, which archive.py catches as "no second session could be
    opened" and then fingerprints on the archiving session, whose transaction is aborted: the day fails with
    "InFailedSqlTransaction SQLSTATE 25P02: current transaction is aborted ... not retried: a retry cannot fix
    this". Should: the lock timeout itself, named as the cause, retryable (as the same timeout at every other
    statement of the archive says), and the next run archives the day."""
    table = sql.Identifier(schema, "big")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + (g % 86000) * interval '1 second' "
                         "FROM generate_series(1, 60000) g").format(table, sql.Literal(DAY.isoformat())))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    spec = TableSpec(name=f"{schema}.big", day_column="created_at", start_date=DAY, format="csv",
                     compression="zstd", parallel_streams=streams)
    # (since the settings query runs in a savepoint, the archive may also read on without the second session, as at
    # a connection limit: a green archive of the day's rows is right too)
    from archive_pipeline.core.plan import compare_days

    with pg.connect() as archiving, settings_view_locked(pg):
        try:
            done = archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir),
                                     session_settings={"lock_timeout": "300"})
        except ArchiveError as err:
            assert (err.table, err.day) == (spec.name, DAY.isoformat()), str(err)
            assert "aborted" not in str(err), str(err)
            assert "lock" in str(err) and err.retryable, str(err)
        else:
            assert done.rows == 60000
            assert [c.result for c in compare_days(conn, spec, store, [DAY])] == ["equal"]
            return
    assert list(temp_dir.iterdir()) == []
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    with pg.connect() as again:
        assert archive_partition(again, spec, DAY, store, temp_dir=str(temp_dir)).rows == 60000
