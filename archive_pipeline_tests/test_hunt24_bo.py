"""Hunt 24 (bo): the source side line by line (core/source.py, core/session_settings.py, core/discovery.py,
core/sqltext.py): SQL built from names, session settings forced on the connection, snapshot handling."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.defs.resources import PostgresResource

DAY = dt.date(2024, 3, 10)


@pytest.fixture
def role_with(conn, schema, pg):
    """A login role with these settings as its defaults (ALTER ROLE ... SET); its DSN."""
    made = []

    def make(**settings: str) -> str:
        role = f"{schema}_r{len(made)}"
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-bo-1' SUPERUSER").format(sql.Identifier(role)))
        made.append(role)
        for name, value in settings.items():
            conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(sql.Identifier(role), sql.Identifier(name),
                                                                      sql.Literal(value)))
        return psycopg.conninfo.make_conninfo(pg.dsn, user=role, password="pw-bo-1")

    yield make
    for role in made:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_roles_exit_on_error_makes_a_healthy_day_with_a_not_null_domain_fail_for_ever_as_a_lost_connection(
        conn, schema, store, temp_dir, role_with):
    """Scenario: the archiving role has ``ALTER ROLE ... SET exit_on_error = on`` (a DBA's "fail fast" default for
    batch roles; any user may set it). The table has a column of a domain that refuses NULL (``CREATE DOMAIN qty
    AS int CHECK (VALUE IS NOT NULL)``); the day's 3 rows are all valid. (The same table archives fine under that
    role without the domain, and with the domain under a role without the setting.)

    Now: the day fails, SourceError "the database connection was lost (server closed it, network dropped or
    backend terminated) (OperationalError: the connection is closed); transient, retried", retryable. The product
    probes inside savepoints, expecting an ERROR it catches: describe_relation -> breakable_domains ->
    _refuses_null converts a NULL to the domain in ``with conn.transaction()`` and reads the error as "refuses
    NULL". Under exit_on_error every ERROR is promoted to FATAL, the backend exits, and the archive's session is
    gone. session_settings pins quote_all_identifiers, default_transaction_isolation, jit, idle_session_timeout
    (session_pinned) and SNAPSHOT_SETTINGS pins a dozen more, but never exit_on_error, so every savepoint-guarded
    probe (a NOT VALID domain CHECK in _refuse_broken_domain, a value failure's column probe, a sensor's
    per-day probe in discovery._probed) kills the session. Every Dagster retry fails the same way, and the operator
    is sent to the server log and the network.

    Should: the day archived (3 rows): exit_on_error is a setting that changes what our SQL does, as the ones
    pinned already are. Fix idea: add ``"exit_on_error": "off"`` to session_settings.SESSION_PINNED /
    session_pinned (and to SNAPSHOT_SETTINGS for sessions opened beside, ADBC's too)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE DOMAIN {}.qty AS int CHECK (VALUE IS NOT NULL)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id {}.qty, at date)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s FROM generate_series(1, 3) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")
    with PostgresResource(dsn=role_with(exit_on_error="on")).connect() as session:  # the session a run archives with
        result = archive_partition(session, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 3


def test_a_percent_in_an_expression_keyed_day_column_fails_the_day_once_a_bytea_is_read_in_slices(
        conn, schema, store, temp_dir):
    """Scenario: a table partitioned by RANGE of an expression of its day column, whose name holds a ``%``
    (``"at%" timestamp``, ``PARTITION BY RANGE (("at%"::date))``: a column named after a report's "at %" header);
    one row of the day holds a bytea over big_values.BIG_BYTES (9 MiB: a scanned document). The same table
    without that big value archives fine.

    Now: the day fails, not retried: "an unexpected error (ProgrammingError: only '%s', '%b', '%t' are allowed as
    placeholders, got '%\"')". source.day_filter puts the key expression into the day's WHERE as
    ``sql.SQL(table.key_expression)`` (the catalog's text, ``(("at%")::date)``), and big_values._write_value
    sends that WHERE with parameters through sqltext.with_params, which doubles the ``%`` of names, literals and
    CatalogText but leaves plain sql.SQL as the statement's own text: the ``%`` inside the key is read as a
    placeholder. (verify._name_first_difference sends the same day filter through with_params: a deep
    verification naming the first differing row fails the same way.)

    Should: the day archived (2 rows, the big value whole). Fix idea: in day_filter wrap the catalog's key text as
    ``sqltext.CatalogText(table.key_expression)`` (and key_at's pieces of it), which with_params doubles."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL('CREATE TABLE {}.ev (id int, "at%" timestamp, b bytea) '
                         'PARTITION BY RANGE ((("at%")::date))').format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_m PARTITION OF {}.ev FOR VALUES FROM ('2024-03-01') TO ('2024-04-01')")
                 .format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 05:00', "
                         "pg_catalog.decode(pg_catalog.repeat('ab', 9 << 20), 'hex')), (2, '2024-03-10 06:00', 'x')")
                 .format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at%", start_date=DAY, format="csv", compression="none")
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 2


def test_a_percent_in_the_table_name_makes_rows_restored_after_a_removal_look_older_than_it(conn, schema):
    """Scenario: a table named ``sales 100%`` whose day was removed (a transaction ``xid``) and restored into it
    afterwards; settling the removal's pending mark asks whether every row of the day was written after ``xid``
    (lifecycle._written_after).

    Now (before the fix): the question went out with a parameter but without with_params, so the ``%`` of the
    table's quoted name was read as a placeholder: a ProgrammingError, caught as "cannot be told", answered False,
    and the settling concluded the removal never took effect.

    Should: rows written after ``xid`` are told so, whatever the table is named."""
    from archive_pipeline.core.lifecycle import _written_after

    table = sql.Identifier(schema, "sales 100%")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
    xid = conn.execute("SELECT pg_catalog.txid_current()").fetchone()[0]
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, {}), (2, {})").format(table, sql.Literal(DAY), sql.Literal(DAY)))
    spec = TableSpec(name=f"{schema}.sales 100%", day_column="at", start_date="2024-03-01")
    assert _written_after(conn, spec, spec.period(DAY), xid) is True
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3, {})").format(table, sql.Literal(DAY)))
    later = conn.execute("SELECT pg_catalog.txid_current()").fetchone()[0]
    assert _written_after(conn, spec, spec.period(DAY), later) is False
