"""Hunt 26 (dl): session defaults a DBA sets on the server (ALTER ROLE ... SET), not the archiver, across compare,
verification (deep, and the source_unchanged check's source_changed), restore and removal.

Each test is a bug found: it fails now and passes once the product is fixed.

What held up (probed, no test here): a non-superuser role with DateStyle 'Postgres, MDY', IntervalStyle
postgres_verbose, standard_conforming_strings off, TimeZone America/St_Johns, extra_float_digits -15, bytea_output
escape, timezone_abbreviations India, xmloption document and array_nulls off, owning a declaratively partitioned
table (interval with mixed signs, bytea, float8, timestamptz[], tstzrange, jsonb and text with backslashes), ran the
command line's archive, list --check-source, compare --rows, verify --deep, restore --into new, archive (skipped),
prune --dry-run, prune (detach) and restore --into original in csv, jsonl and parquet: equal, proven and restored
exact, the ATTACH remedy's bound in ISO with its offset; exit_on_error on for a caller's plain connection (the core
API) across archive, compare, deep verification, restore and removal of a day with a NOT NULL domain."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import SourceError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify, load_manifest, source_changed
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_hunt17_wl import _late_row, replay_paused, standby  # noqa: F401 - the fixture
from archive_pipeline_tests.test_hunt20_zh import _drop_role, _role

DAY = dt.date(2024, 3, 10)


@pytest.mark.parametrize("command", ["compare", "deep-verify", "restore-into-new", "removal"])
def test_a_roles_standard_conforming_strings_off_makes_an_intact_array_of_an_xml_array_domain_unprovable(
        pg, conn, schema, store, temp_dir, command):
    """Scenario: the DBA of a legacy application set ``ALTER ROLE app SET standard_conforming_strings = off`` (the
    pre-9.1 default, still set for applications that write backslash escapes in plain literals). The role owns
    ``S.ev (id int, at date, x S.xs[])`` where ``CREATE DOMAIN S.xs AS xml[]`` (an array of an xml-array domain,
    which the product supports: source.xml_array_text, fingerprint._xml_array_text for ``arrays`` >= 2). Day D (one
    row, ``{{<a/>}}``) is archived (CSV); then, on a session of that role from ``PostgresResource.connect()`` (as the
    command line and Dagster open them): compare the day, prove it (deep verification), restore it into a new table,
    remove it (retention delete).

    Now: every one of them fails on the intact archive with ``InvalidRegularExpression: invalid regular expression:
    brackets [] not balanced``. The fingerprint's text of such a column is source._array_literal, whose SQL holds
    the plain literal ``'\\[(?!1:)'`` (written for standard strings); fingerprint.CANONICAL_SETTINGS, under which
    compare, deep verification, restore's check and the removal's re-check compute it, pins TimeZone, DateStyle
    ... but not standard_conforming_strings (SNAPSHOT_SETTINGS does, so the archive itself passes), so under the
    role's ``off`` the backslash is an escape and the pattern becomes ``[(?!1:)``. compare says "unreadable: a value
    in the day cannot be read or converted"; deep verification says the archive "does not read back as its columns'
    types now ... a type or domain of the table changed" (none did); restore says "fix the offending rows, or archive
    the table in a format that keeps the value as text (jsonl/csv)" (it is CSV); the removal is refused for ever.

    Should: the same verdicts as under a role without the setting: equal, proven ([]), restored (1 row, fingerprint
    checked), removed (1 row). Fix idea: add ``"standard_conforming_strings": "on"`` to
    fingerprint.CANONICAL_SETTINGS (as source.SNAPSHOT_SETTINGS has it), or write the pattern so it means the same
    either way (``'[[](?!1:)'``)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE DOMAIN {}.xs AS xml[]").format(s))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, x {s}.xs[])").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {s}.ev VALUES (1, %s, ARRAY[ARRAY['<a/>']::xml[]::{s}.xs])").format(s=s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                     retention={"keep_days": 1, "action": "delete"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 1  # by the plain role
    role, dsn = _role(conn, pg, schema, {"standard_conforming_strings": "off"}, owns=("ev",))
    try:
        with PostgresResource(dsn=dsn).connect() as session:
            # the role's setting is in force for its sessions (the session itself pins it on from its start)
            assert session.execute("SELECT reset_val FROM pg_catalog.pg_settings "
                                   "WHERE name = 'standard_conforming_strings'").fetchone()[0] == "off"
            if command == "compare":
                [compared] = compare_days(session, spec, store, [DAY])
                assert compared.result == "equal", compared
            elif command == "deep-verify":
                assert deep_verify(session, store, spec, DAY, temp_dir=temp_dir) == []
            elif command == "restore-into-new":
                restored = restore_day(session, store, spec, DAY, into="new", target=f"{schema}.back",
                                       temp_dir=temp_dir)
                assert restored.rows == 1 and restored.fingerprint_checked
            else:
                assert remove_day(session, spec, DAY, store, temp_dir=temp_dir).rows == 1
    finally:
        _drop_role(conn, role)


STANDBY_DAY = utc_today() - dt.timedelta(days=5)


@pytest.mark.parametrize("check", ["compare", "source_changed"])
def test_a_roles_datestyle_hides_a_paused_standby_from_compare_and_the_source_unchanged_check(
        pg, standby, conn, schema, store, check):
    """Scenario: ARCHIVE_PG_DSN is a hot standby, read as a role the DBA gave ``ALTER ROLE reporting SET DateStyle =
    'SQL, DMY'`` (European day-first dates for its reports; set on the primary, replicated). The standby's WAL replay
    is paused (pg_wal_replay_pause(), as for a long report or a recovery investigation); the primary commits a late
    row of day D, and D is archived from the primary (51 rows). Then compare (``compare_days``) on the standby, or
    the source_unchanged check's ``verify.source_changed``, on a session of that role from
    ``PostgresResource.connect()``.

    Now: both end in a raw ``NotImplementedError: can't parse timestamptz with DateStyle 'SQL, DMY': '07/12/2026
    18:08:44.686735 UTC'``: no table, no day, no cause, no remedy (compare returns no verdict for any day of the
    run). The fingerprints differ (50 rows against 51), so plan._stale_standby / verify._source_changed ask
    source.refuse_stale_standby, and source.standby_replay fetches pg_last_xact_replay_timestamp() and the WAL
    receiver's last_msg_send_time as timestamptz values in the session's own DateStyle, which psycopg parses only
    in ISO; its ``except psycopg.Error`` does not catch psycopg's loader error (and were it a psycopg.Error, the
    replay would be None: the day called "differs", the verdict that made users overwrite with the standby's older
    rows). With DateStyle 'ISO, DMY' the same compare says not-checked (retryable), naming the paused replay.

    Should: the same answer as under an ISO DateStyle: compare's day not-checked (never "differs") with a note
    naming the paused replay (pg_wal_replay_resume()); source_changed a retryable SourceError saying so. Fix idea:
    read the replay's times in standby_replay under DateStyle ISO (discovery.pinned_settings, as child_ranges does)
    or as text/epoch, as locks._holder reads backend_start."""
    create_sample_events(conn, [STANDBY_DAY], rows_per_day=50, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=STANDBY_DAY,
                     partitioning={"mode": "declarative"})
    role, dsn = _role(conn, pg, schema, {"DateStyle": "'SQL, DMY'"})
    on_standby = psycopg.conninfo.make_conninfo(dsn, port=standby.port)
    try:
        with replay_paused(pg, standby):
            _late_row(conn, schema)
            result = archive_partition(conn, spec, STANDBY_DAY, store)
            assert result.rows == 51
            with PostgresResource(dsn=on_standby).connect() as session:
                assert session.info.parameter_status("in_hot_standby") == "on"
                if check == "compare":
                    [compared] = compare_days(session, spec, store, [STANDBY_DAY])
                    assert compared.result not in ("differs", "changed"), compared
                    assert "paused" in (compared.note or ""), compared
                else:
                    manifest = load_manifest(store, result.key)
                    with pytest.raises(SourceError, match="paused") as refused:
                        source_changed(session, spec, STANDBY_DAY, manifest)
                    assert refused.value.retryable is True
    finally:
        _drop_role(conn, role)


# The fixer's test of the class (not the hunter's): every setting our SQL's text or psycopg's reading of our results
# depends on, set hostile for the role, on a caller's plain connection (pinned for the call and given back) and on
# the resource's (pinned for the session), through Parquet's own reader session and parallel streams.
HOSTILE = {"standard_conforming_strings": "off", "DateStyle": "'SQL, DMY'", "IntervalStyle": "postgres_verbose",
           "extra_float_digits": "-15", "bytea_output": "escape"}


@pytest.mark.parametrize("how", ["plain", "resource"])
def test_a_roles_parsing_settings_change_no_verdict_of_any_command(pg, conn, schema, store, temp_dir, how):
    """Scenario: a role with every setting of :data:`HOSTILE` owns a declaratively partitioned table whose day holds
    an array of an xml-array domain, an interval, a float, a bytea and a timestamptz; as that role, on a plain
    ``psycopg.connect`` (the core API) or on ``PostgresResource.connect()``: archive (Parquet, two streams), compare,
    deep verification, restore into a new table, removal.

    Should: archived, equal, proven, restored and removed, every row; the caller's connection given back with its
    own settings. (Before the fix compare called the intact day unreadable: session_settings.PARSING_PINNED.)"""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE DOMAIN {}.xs AS xml[]").format(s))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, x {s}.xs[], i interval, f float8, b bytea, "
                         "t timestamptz) PARTITION BY RANGE (at)").format(s=s))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev_d PARTITION OF {s}.ev FOR VALUES FROM ({a}) TO ({b})").format(
        s=s, a=sql.Literal(DAY), b=sql.Literal(DAY + dt.timedelta(days=1))))
    conn.execute(sql.SQL("INSERT INTO {s}.ev SELECT g, %s, ARRAY[ARRAY['<a/>']::xml[]::{s}.xs], '-1 day 2 hours', "
                         "0.1 * g, '\\x5c00'::bytea, now() FROM generate_series(1, 3000) g").format(s=s), (DAY,))
    role, dsn = _role(conn, pg, schema, HOSTILE, owns=("ev", "ev_d"))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="parquet", parallel_streams=2,
                     retention={"keep_days": 1, "action": "delete"}, partitioning={"mode": "declarative"})
    shown = "SELECT pg_catalog.current_setting('standard_conforming_strings'), pg_catalog.current_setting('DateStyle')"
    try:
        opened = PostgresResource(dsn=dsn).connect() if how == "resource" else psycopg.connect(dsn, autocommit=True)
        with opened as session:
            before = session.execute(shown).fetchone()
            assert archive_partition(session, spec, DAY, store, temp_dir=temp_dir).rows == 3000
            [compared] = compare_days(session, spec, store, [DAY])
            assert compared.result == "equal", compared
            assert deep_verify(session, store, spec, DAY, temp_dir=temp_dir) == []
            restored = restore_day(session, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
            assert restored.rows == 3000 and restored.fingerprint_checked
            assert remove_day(session, spec, DAY, store, temp_dir=temp_dir).rows == 3000
            assert session.execute(shown).fetchone() == (before if how == "plain" else ("on", "ISO, DMY"))
            if how == "plain":
                assert before == ("off", "SQL, DMY")
    finally:
        _drop_role(conn, role)
