"""Hunt 25 (cs): the core Python API on a caller's own psycopg connection, round two: the connection's adapters
map, pipeline mode, a transaction the caller's own error aborted, and the session's prepared statements.

Held up (probed, no test here): a caller's SET ROLE to a role with fewer rights (archive, restore into new and
existing, deep_verify, compare, list, check_removable) is honoured and left as it was; iter_restore_days reaches
the connection only through restore_archive, which is wrapped; restore, compare and list keep a caller's PREPAREd
statement; loaders for numeric (FloatLoader), json/jsonb and date (TextLoader) change no verdict."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg.types.string import StrDumper, TextLoader

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import compare_days, day_statuses
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


def _events(conn, schema: str) -> TableSpec:
    """``schema.ev``: five rows on DAY; its spec (JSONL, uncompressed)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, v text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'v' || g FROM generate_series(1, 5) g", (DAY,))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")


def _adapt_str_as_text(c: psycopg.Connection) -> None:
    c.adapters.register_dumper(str, StrDumper)  # psycopg's own option: str parameters typed text, not unknown


def _load_timestamptz_as_text(c: psycopg.Connection) -> None:
    c.adapters.register_loader("timestamptz", TextLoader)  # timestamps kept as strings (a JSON API's)


@pytest.mark.parametrize("adapt", [_adapt_str_as_text, _load_timestamptz_as_text], ids=["str-dumper", "tz-loader"])
def test_a_callers_adapters_map_fails_a_healthy_day_as_a_missing_table_or_an_unexpected_error(
        pg, schema, conn, store, temp_dir, adapt):
    """Scenario: a library user's application configures its connection's adapters, as psycopg documents
    (``c.adapters.register_dumper(str, psycopg.types.string.StrDumper)``: str parameters sent as ``text`` rather
    than ``unknown``; or ``c.adapters.register_loader("timestamptz", TextLoader)``: timestamps kept as strings),
    and archives a healthy day with it: ``archive_partition(c, spec, day, store)``.

    Now: callers_connection (the speaks_utf8 decorator) gives the core tuple rows and a cursor class of its own,
    but every cursor still copies the connection's adapters map, so the core's own parameters and results go
    through the caller's adapters. With the str dumper, formats/big_values._may_read_system_columns passes the
    table's oid as a str to ``has_table_privilege(%s::pg_catalog.regclass, 'SELECT')``; typed ``text``, the cast
    parses it as a name, not an oid (an ``unknown`` literal would read it as the oid): the call fails with SourceError "the table, column or
    schema does not exist (any more) (UndefinedTable ...: relation "16385" does not exist); not retried ...; to
    fix: check the table name and day_column in archive_tables.yaml" — a permanent refusal sending the user to a
    configuration that is right. With the timestamptz loader the snapshot's time is read as a str and
    manifest.build_manifest's ``result.snapshot_at.isoformat()`` fails: "an unexpected error (AttributeError:
    'str' object has no attribute 'isoformat')", after the whole day was read and uploaded; compare_days on that connection reports ``source_rows='5'`` (a str)
    where an int8 loader is text.

    Should: the day is archived whatever adapters the caller's connection has: the core's cursors use an adapters
    map of its own (``psycopg.Cursor(conn)`` then a fresh ``AdaptersMap(psycopg.adapters)`` on it, or
    callers_connection swapping the connection's map for the call and putting it back), as it already does
    for row_factory and cursor_factory; the caller's map is left as it was."""
    spec = _events(conn, schema)
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        adapt(c)
        try:
            result = archive_partition(c, spec, DAY, store, temp_dir=temp_dir)
        except ArchiveError as exc:
            pytest.fail(f"a connection with its own adapters cannot archive a healthy day: {exc} "
                        f"(retryable={exc.retryable}, remedy: {exc.remedy})")
        assert result.rows == 5


def test_a_connection_in_pipeline_mode_is_refused_as_a_database_error_and_its_pipeline_aborted(
        pg, schema, conn, store, temp_dir):
    """Scenario: a library user's application runs its connection in pipeline mode (``with c.pipeline():``,
    psycopg's batching of statements; the connection is in autocommit mode) and archives a healthy day inside the
    block: ``archive_partition(c, spec, day, store)``.

    Now: require_autocommit lets it through (autocommit, and the transaction status reads IDLE), and the statements
    of the archive's snapshot transaction (its ``SET TRANSACTION ISOLATION LEVEL``) are sent as pipelined ones,
    after others of the same implicit transaction: the call fails
    with SourceError "the database reported an error (ActiveSqlTransaction SQLSTATE 25001: SET TRANSACTION
    ISOLATION LEVEL must be called before any query); not retried ...; to fix: read the message; fix the cause and
    archive again" — no cause the user can find (nothing names the pipeline), and it leaves the caller's pipeline
    aborted: where the caller catches the error inside the block, leaving it raises ``PipelineAborted``. restore_day and deep_verify in a pipeline fail as "an
    unexpected error (NotSupportedError: COPY cannot be used in pipeline mode)".

    Should: refused up front, before anything is sent, as a usage error (ValueError, as require_autocommit's)
    saying the connection is in pipeline mode and to call outside ``conn.pipeline()``, the caller's pipeline left
    usable (check ``conn.pgconn.pipeline_status`` in require_autocommit / callers_connection); or the call leaves
    pipeline mode for its duration."""
    spec = _events(conn, schema)
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        refused = None
        try:
            with c.pipeline():
                try:
                    archive_partition(c, spec, DAY, store, temp_dir=temp_dir)
                except ValueError as exc:  # a usage error up front is what a careful user expects
                    refused = exc
        except psycopg.errors.PipelineAborted:
            pytest.fail("archive_partition inside the caller's pipeline left it aborted (PipelineAborted on exit)")
        except ArchiveError as exc:
            pytest.fail(f"archive_partition in pipeline mode failed as a database error, not a usage error: {exc}")
        assert refused is not None and "pipeline" in str(refused), refused


@pytest.mark.parametrize("call", ["compare", "list"])
def test_compare_and_list_in_a_callers_aborted_transaction_call_an_intact_day_unreadable(
        pg, schema, conn, store, temp_dir, call):
    """Scenario: a day is archived (intact, the source unchanged). A library user's monitoring job, on its own
    connection (not autocommit: compare_days and day_statuses do not require it), has an earlier statement of its
    own fail (``SELECT 1/0``; it catches the error and goes on without rolling back), then checks the day:
    ``compare_days(c, spec, store, [day])`` / ``day_statuses(c, spec, store, [day])``.

    Now: callers_connection leaves an aborted transaction as it is (_rolled_back_after and _to_ours step aside for
    INERROR), and the first query of the day fails with InFailedSqlTransaction; plan._compare_days / day_statuses
    catch it and report it as the day's verdict: compare ``result='unreadable'``, list ``state='unreadable'``,
    with the note "not checked (not retryable): reading ... failed: the database reported an error
    (InFailedSqlTransaction SQLSTATE 25P02 ...); to fix: read the message". Every day of the check is called
    unreadable, not retryable, for a state of the caller's connection (plan_archive says 'not-checked' the same
    way); a monitor acts on a false verdict about the archive.

    Should: a usage error up front (ValueError: the connection's transaction is aborted by an earlier error; roll
    it back first), as require_autocommit refuses a connection in a transaction block, never a verdict about
    the day."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(pg.dsn) as c:  # (not autocommit)
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT 1/0")
        try:
            verdicts = ([x.result for x in compare_days(c, spec, store, [DAY])] if call == "compare"
                        else [x.state for x in day_statuses(c, spec, store, [DAY])])
        except ValueError as exc:
            assert "transaction" in str(exc), exc
            return
    assert "unreadable" not in verdicts, (
        f"{call} on a connection whose transaction the caller's own error aborted called the intact day {verdicts}")


def test_deep_verify_deallocates_the_callers_prepared_statements(pg, schema, conn, store, temp_dir):
    """Scenario: a library user's application prepares a statement on its long-lived connection (``PREPARE
    lookup AS ...``, or one its framework keeps) and has run one of its own queries a few times (psycopg's default
    prepare_threshold, 5, auto-prepares it), then proves a day on the same connection: ``deep_verify(c, store,
    spec, day)``; afterwards it runs ``EXECUTE lookup``.

    Now: _prove creates its temporary table in the caller's session and drops it (``DROP TABLE``) in the end;
    psycopg, seeing a DROP on a connection whose prepared-statement cache is not empty, clears its cache with
    ``DEALLOCATE ALL`` (psycopg/_preparing.py _should_discard), which deallocates every prepared statement of
    the session, the caller's own ``lookup`` among them: the caller's next ``EXECUTE lookup`` fails with
    "prepared statement "lookup" does not exist". (archive, restore, compare and list keep it.)

    Should: the caller's session keeps its prepared statements: the proof's table is dropped without psycopg
    seeing a DROP on the caller's connection (created ``ON COMMIT DROP`` in a transaction of its own, or dropped
    through ``conn.pgconn`` / on a scratch session), or callers_connection keeps the caller's prepared-statement
    cache empty during the call (``prepare_threshold = None`` and no cached names) and restores it after."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute("PREPARE lookup AS SELECT 42")
        for i in range(6):  # the application's own query, auto-prepared by psycopg (threshold 5)
            c.execute("SELECT %s::int", (i,))
        assert deep_verify(c, store, spec, DAY, temp_dir=temp_dir) == []
        left = [name for (name,) in c.execute("SELECT name FROM pg_catalog.pg_prepared_statements")]
        assert "lookup" in left, f"deep_verify deallocated the caller's prepared statement 'lookup' (left: {left})"
        assert c.execute("EXECUTE lookup").fetchone() == (42,)
