"""Hunt 25 (ci): the core Python API called by a library user with their own psycopg connection, in states the
command line never makes (a row factory, another cursor class, an open transaction of the caller's)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg.rows import dict_row, namedtuple_row

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import compare_days, day_statuses
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


def _events(conn, schema: str) -> TableSpec:
    """``schema.ev``: five rows on DAY; its spec (JSONL, uncompressed)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, v text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'v' || g FROM generate_series(1, 5) g", (DAY,))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")


def test_archiving_on_a_callers_dict_row_connection_fails_as_an_unexpected_keyerror(pg, schema, conn, store,
                                                                                   temp_dir):
    """Scenario: a library user archives a day with the connection their application already uses everywhere,
    ``psycopg.connect(dsn, autocommit=True, row_factory=dict_row)`` (psycopg's documented way to get dicts), and
    calls ``archive_partition(c, spec, day, store)`` on a healthy table.

    Now: every core query reads its rows by position on the caller's connection (``conn.execute(...).fetchone()[0]``,
    first in locks.table_day_lock's ``pg_try_advisory_lock``), and a dict row has no key 0: the call fails with
    ArchiveError "archiving <table> for <day> failed: an unexpected error (KeyError: 0); not retried ...; to fix:
    read the message", which names neither the row factory nor any remedy; deep_verify, restore_day and
    compare_days fail the same way (compare_days with a bare ``ValueError: zip() argument 2 is shorter ...``, not
    even an ArchiveError). With namedtuple_row it is "DataError: can't create a namedtuple row: Encountered
    duplicate field name: 'current_setting'".

    Should: the day is archived whatever row factory the caller's connection has: the core reads its own queries
    through cursors of its own row factory (``conn.cursor(row_factory=tuple_row)``, or ``conn.execute`` replaced by
    a helper that does so), leaving the connection's factory as it was; at the least a usage error up front
    (ValueError, like require_autocommit's) naming ``row_factory`` and the remedy."""
    spec = _events(conn, schema)
    with psycopg.connect(pg.dsn, autocommit=True, row_factory=dict_row) as c:
        try:
            result = archive_partition(c, spec, DAY, store, temp_dir=temp_dir)
        except ArchiveError as exc:
            pytest.fail(f"a dict_row connection cannot archive a healthy day: {exc}")
        except (ValueError, TypeError) as exc:  # a usage error up front is acceptable if it says what to change
            assert "row_factory" in str(exc), exc
            return
        assert result.rows == 5
        assert c.row_factory is dict_row


def test_compare_and_list_on_a_namedtuple_row_connection_call_an_intact_archive_unreadable(pg, schema, conn, store,
                                                                                          temp_dir):
    """Scenario: a day is archived (intact, the source unchanged). A library user's monitoring job checks it with
    its own connection, opened with ``row_factory=namedtuple_row``: ``compare_days(c, spec, store, [day])`` and
    ``day_statuses(c, spec, store, [day])``.

    Now: both return a verdict instead of failing: compare says ``result='unreadable'`` (source rows None, "not
    checked (not retryable): reading ... failed: an unexpected error (DataError: can't create a namedtuple row:
    Encountered duplicate field name: ...)") and list says ``state='unreadable'`` for an archive that is whole and
    equal to its source: plan._compare_days / day_statuses catch the unexpected error of the archiver's own SQL
    (several unnamed ``current_setting`` columns in one SELECT, which a namedtuple cannot hold) and report it as
    the day's state. A monitor counting 'unreadable' days raises an alarm for every day; one that acts on it
    (re-archives, pages someone) acts on a false verdict.

    Should: 'equal' and 'archived', as on a plain connection: the core's queries read through cursors with its
    own row factory (``conn.cursor(row_factory=tuple_row)``), whatever the caller's connection has; an error of
    the archiver's own making is never a verdict about the day."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(pg.dsn, autocommit=True, row_factory=namedtuple_row) as c:
        compared = compare_days(c, spec, store, [DAY])
        listed = day_statuses(c, spec, store, [DAY])
    assert [x.result for x in compared] == ["equal"], compared
    assert [x.state for x in listed] == ["archived"], listed


def test_a_raw_cursor_connection_is_told_to_check_its_table_definition(pg, schema, conn, store, temp_dir):
    """Scenario: a library user whose application uses PostgreSQL-style placeholders sets
    ``cursor_factory=psycopg.RawCursor`` on its connection (psycopg's documented option: ``$1`` instead of
    ``%s``) and calls ``archive_partition(c, spec, day, store)`` on a healthy table.

    Now: every core query with parameters is written with ``%s`` and sent through ``conn.execute``, which a
    RawCursor passes to the server as is: the call fails with SourceError "the server rejected the archiver's SQL
    (SyntaxError SQLSTATE 42601: syntax error at or near "%" LINE 1: SELECT
    pg_catalog.pg_try_advisory_lock(%s::pg_catalog.int8) ...); not retried ...; to fix: check the table
    definition; if it looks right, report it": the remedy sends the user to their table, which is fine, and nothing
    names the cursor class
    (deep_verify and restore_day say the same; compare_days reports the intact day 'unreadable').

    Should: the day is archived: the core runs its queries through a cursor class of its own
    (``psycopg.Cursor(conn)``, not ``conn.execute``/``conn.cursor()``, which use the connection's factory), or at
    the least refuses up front with a usage error naming ``cursor_factory``; never a remedy about the table."""
    spec = _events(conn, schema)
    with psycopg.connect(pg.dsn, autocommit=True, cursor_factory=psycopg.RawCursor) as c:
        try:
            result = archive_partition(c, spec, DAY, store, temp_dir=temp_dir)
        except ArchiveError as exc:
            said = f"{exc} / remedy: {exc.remedy}"
            assert "table definition" not in said, said
            pytest.fail(f"a RawCursor connection cannot archive a healthy day: {said}")
        except (ValueError, TypeError) as exc:
            assert "cursor_factory" in str(exc) or "RawCursor" in str(exc), exc
            return
        assert result.rows == 5


def test_compare_inside_the_callers_transaction_leaves_it_in_utc_and_the_callers_next_insert_shifted(
        pg, schema, conn, store, temp_dir):
    """Scenario: a library user's session runs in its own zone (``SET TimeZone = 'Asia/Kathmandu'``, +05:45) and
    DateStyle (``SET DateStyle = 'SQL, DMY'``). In one transaction of theirs (not autocommit; compare_days does
    not require autocommit, unlike archive and restore) they compare a day and then record the check:
    ``compare_days(c, ...)``, then ``INSERT INTO checks VALUES ('2024-03-10 12:00')`` (a timestamptz), COMMIT.

    Now: compare's fingerprint applies its fixed settings with ``set_config(name, value, true)``
    (session_settings.apply_settings, local=True) inside ``with conn.transaction()``, which within the caller's
    transaction is a savepoint: a SET LOCAL outlives RELEASE SAVEPOINT and lasts to the end of the caller's
    transaction. The rest of the caller's transaction runs with TimeZone UTC, DateStyle ISO, IntervalStyle
    iso_8601, search_path pg_catalog first, row_security off, lc_monetary C and jit off: their insert stores 12:00
    UTC, 5 h 45 min later than they wrote, and what they read back prints in another style. deep_verify and
    source_fingerprint do the same.

    Should: the caller's transaction comes back with the settings it had: apply the fixed settings inside a
    subtransaction and put the previous values back (``set_config(..., true)`` with the values read before) before
    releasing it, or refuse a connection inside a transaction (require_autocommit) as archive and restore do."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"CREATE TABLE {schema}.checks (at timestamptz)")
    with psycopg.connect(pg.dsn) as c:  # (not autocommit: the first statement opens the caller's transaction)
        c.execute("SET TimeZone = 'Asia/Kathmandu'")
        c.execute("SET DateStyle = 'SQL, DMY'")
        c.commit()
        assert [x.result for x in compare_days(c, spec, store, [DAY])] == ["equal"]
        inside = c.execute("SELECT current_setting('TimeZone'), current_setting('DateStyle')").fetchone()
        c.execute(f"INSERT INTO {schema}.checks VALUES ('2024-03-10 12:00')")
        c.commit()
    stored = conn.execute(f"SELECT at FROM {schema}.checks").fetchone()[0]
    assert stored == dt.datetime(2024, 3, 10, 6, 15, tzinfo=dt.UTC), (
        f"the caller's insert after compare_days stored {stored} (its transaction ran with TimeZone, DateStyle "
        f"{inside}, not Asia/Kathmandu, 'SQL, DMY')")


def test_deep_verify_inside_the_callers_transaction_leaves_its_temporary_table_in_the_session(pg, schema, conn,
                                                                                              store, temp_dir):
    """Scenario: a library user proves a day with ``deep_verify(c, store, spec, day)`` on their own connection,
    which is inside a transaction of theirs (not autocommit; deep_verify does not require autocommit), then
    commits and keeps using the session (a pooled connection, an application's long-lived session).

    Now: _prove loads the archive into ``pg_temp.archive_pipeline_verify_<n>`` on the caller's connection (no
    scratch_conn given) and drops it in ``finally`` through _drop_quietly, which does nothing unless the
    connection is IDLE; inside the caller's transaction it is INTRANS, so the table stays, holding a copy of the
    day's rows, after the caller commits, for the life of the session (and a pooled session's next user). It also
    leaves the transaction's settings switched (see the compare test above).

    Should: nothing of the proof is left in the caller's session: drop the temporary table inside the
    transaction too (``DROP TABLE`` in a savepoint, as it was created), or create it ``ON COMMIT DROP`` /
    refuse a connection inside a transaction up front."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(pg.dsn) as c:  # (not autocommit: the first statement opens the caller's transaction)
        c.execute("SELECT 1")
        assert deep_verify(c, store, spec, DAY, temp_dir=temp_dir) == []
        c.commit()
        left = c.execute("SELECT relname FROM pg_catalog.pg_class WHERE relpersistence = 't' AND relkind = 'r' "
                         "AND relnamespace = pg_catalog.pg_my_temp_schema()").fetchall()
    assert left == [], f"deep_verify left {left} in the caller's session after its transaction committed"
