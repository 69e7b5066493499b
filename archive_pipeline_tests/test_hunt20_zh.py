"""Hunt 20 (zh): a hostile PostgreSQL environment set by the DBA (ALTER ROLE/DATABASE ... SET, or the server) across
archive, skip, verify (deep), compare, restore and removal: transaction defaults, timeouts, search_path with shadowing
objects, output styles, client encodings, session_replication_role, tiny memory settings, privileges.

What held up (probed with real roles, no test here): one non-superuser role owning a declaratively partitioned table,
with DateStyle German, IntervalStyle sql_standard, TimeZone Pacific/Chatham, extra_float_digits -15, bytea_output
escape, standard_conforming_strings off, default_transaction_isolation serializable + deferrable, xmloption document,
timezone_abbreviations India, array_nulls off, quote_all_identifiers on, client_encoding LATIN1, work_mem 64kB,
temp_buffers 100, default_toast_compression lz4, idle_session_timeout 2s, all at once, ran archive (jsonl, csv,
parquet), deep verification, compare, list --check-source, removal (drop, delete, detach) and restore into original
and into new with the same fingerprints, bytes and rows as the plain role's; a read-only role's deep verification and
removal are refused naming default_transaction_read_only; no USAGE on a column type's schema is refused by deep
verification and restore naming the GRANT USAGE ON SCHEMA to give. Not probed: transaction_timeout (the cluster here
is PostgreSQL 15), lc_messages in another language (no such locale on this machine)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline.defs.resources import PostgresResource

DAY = dt.date(2024, 3, 10)


def _role(conn, pg, schema: str, settings: dict[str, str], *, owns: tuple[str, ...] = ()) -> tuple[str, str]:
    """A LOGIN role (not a superuser) with every privilege on the test's schema and its tables, owning ``owns``,
    and ``settings`` set for it by the DBA (ALTER ROLE ... SET, as a superuser); its name and DSN."""
    role = f"{schema}_dba_set"
    r, s = sql.Identifier(role), sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-zh'").format(r))
    conn.execute(sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(s, r))
    conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA {} TO {}").format(s, r))
    for table in owns:
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(schema, table), r))
    for name, value in settings.items():
        conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(r, sql.Identifier(name), sql.SQL(value)))
    return role, psycopg.conninfo.make_conninfo(pg.dsn, user=role, password="pw-zh")


def _drop_role(conn, role: str) -> None:
    """The role dropped, what it owns handed back to the test's own role (the schema's fixture drops it)."""
    conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _count(conn, query: str, schema: str) -> int:
    s = sql.Identifier(schema)
    return conn.execute(sql.SQL(query).format(s=s)).fetchone()[0]


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["restore-into-original", "removal-with-allowed-audit-trigger"])
def test_a_roles_session_replication_role_replica_skips_foreign_keys_and_triggers_in_restore_and_removal(
        pg, conn, schema, store, temp_dir, command):
    """Scenario: the DBA set ``ALTER ROLE archiver SET session_replication_role = replica`` (a superuser may set it
    for any role; it is what logical-replication and bulk-load roles are given, and it lingers). The role is not a
    superuser. (a) restore-into-original: ``S.ev`` (id, p REFERENCES S.parent, at) had day D archived; then the day's
    rows were deleted and so were the parent rows 6..10 they referenced; ``restore_day(into='original')`` is run on a
    session from ``PostgresResource.connect()``, as the command line and Dagster open them. (b)
    removal-with-allowed-audit-trigger: ``S.ev`` has an AFTER DELETE audit trigger writing into ``S.audit``, and the
    table says ``retention: {action: delete, allow_delete_triggers: true}`` (README: "if they only log (an audit
    trigger), set retention.allow_delete_triggers: true"); ``remove_day`` of the archived day is run the same way.

    Now: neither the resource's connect (``session_settings.session_pinned``: quote_all_identifiers,
    default_transaction_isolation, jit, idle_session_timeout) nor the restore's ``_INPUT_SETTINGS`` nor the removal
    pin session_replication_role, so every user trigger and every foreign key's RI trigger (enabled ORIGIN, the
    default) is skipped in those sessions. (a) The restore commits 10 rows, 5 of them referencing parent rows that
    do not exist, and reports success ("fingerprint ... equals the manifest's"); the same restore by a role without
    the setting is refused "an archived row references a row its foreign key's table lacks ... nothing was
    restored". (b) The removal deletes the day's 20 rows and reports them removed, and the audit trigger the user
    allowed never ran: S.audit holds 0 rows of the 20 deletions (a role without the setting logs all 20).

    Should: every session the product writes through behaves as session_replication_role = origin whatever the
    role's default: pin it with the other session settings (``SET session_replication_role = origin``, allowed to a
    superuser or a role granted SET on it), and where it cannot be set (a non-superuser's session stuck in replica),
    refuse restore and removal up front with a typed, permanent error naming table, day and the setting (remedy:
    ALTER ROLE ... RESET session_replication_role), nothing written."""
    s = sql.Identifier(schema)
    if command == "restore-into-original":
        conn.execute(sql.SQL("CREATE TABLE {s}.parent (id int PRIMARY KEY)").format(s=s))
        conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int PRIMARY KEY, p int REFERENCES {s}.parent, "
                             "at timestamptz NOT NULL)").format(s=s))
        conn.execute(sql.SQL("INSERT INTO {s}.parent SELECT g FROM generate_series(1, 10) g").format(s=s))
        conn.execute(sql.SQL("INSERT INTO {s}.ev SELECT g, g, %s::timestamptz + g * interval '1 minute' "
                             "FROM generate_series(1, 10) g").format(s=s), (f"{DAY} 00:00+00",))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY)
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        conn.execute(sql.SQL("DELETE FROM {s}.ev").format(s=s))
        conn.execute(sql.SQL("DELETE FROM {s}.parent WHERE id > 5").format(s=s))
        role, dsn = _role(conn, pg, schema, {"session_replication_role": "replica"})
        try:
            with PostgresResource(dsn=dsn).connect() as session:
                try:
                    restore_day(session, store, spec, DAY, into="original", temp_dir=temp_dir)
                except ArchiveError:
                    pass  # refused: fine, if it left nothing dangling (checked below)
        finally:
            _drop_role(conn, role)
        dangling = _count(conn, "SELECT count(*) FROM {s}.ev e WHERE NOT EXISTS "
                                "(SELECT FROM {s}.parent p WHERE p.id = e.p)", schema)
        assert dangling == 0, f"the restore committed {dangling} rows whose foreign key references no parent row"
    else:
        conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, v text)").format(s=s))
        conn.execute(sql.SQL("CREATE TABLE {s}.audit (id int, op text)").format(s=s))
        conn.execute(sql.SQL("CREATE FUNCTION {s}.log_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                             "INSERT INTO {s}.audit VALUES (OLD.id, TG_OP); RETURN OLD; END $$").format(s=s))
        conn.execute(sql.SQL("CREATE TRIGGER log_delete AFTER DELETE ON {s}.ev FOR EACH ROW "
                             "EXECUTE FUNCTION {s}.log_delete()").format(s=s))
        conn.execute(sql.SQL("INSERT INTO {s}.ev SELECT g, %s::timestamptz + g * interval '1 minute', 'x' "
                             "FROM generate_series(1, 20) g").format(s=s), (f"{DAY} 00:00+00",))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY,
                         retention={"keep_days": 1, "action": "delete", "allow_delete_triggers": True})
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        role, dsn = _role(conn, pg, schema, {"session_replication_role": "replica"}, owns=("ev",))
        try:
            with PostgresResource(dsn=dsn).connect() as session:
                try:
                    remove_day(session, spec, DAY, store, temp_dir=temp_dir)
                except ArchiveError:
                    pass  # refused: fine, if the rows are all still there (checked below)
        finally:
            _drop_role(conn, role)
        left = _count(conn, "SELECT count(*) FROM {s}.ev", schema)
        logged = _count(conn, "SELECT count(*) FROM {s}.audit", schema)
        assert left == 20 or logged == 20, (f"{20 - left} rows were deleted and the audit trigger the table allows "
                                            f"logged {logged} of those deletions")


# The PostgreSQL functions some of the product's statements call by their bare names, with what a schema of the
# user's put before pg_catalog on the role's path would have them run instead
SHADOWS = {"current_database()": "name", "current_setting(text)": "text", "pg_is_in_recovery()": "boolean",
           "set_config(text, text, boolean)": "text", "to_regclass(text)": "regclass"}


@pytest.mark.parametrize("command", ["archive", "restore-into-new", "removal"])
def test_a_roles_search_path_with_a_schema_before_pg_catalog_shadows_functions_the_product_calls_by_bare_name(
        pg, conn, schema, store, temp_dir, command):
    """Scenario: the DBA set ``ALTER ROLE archiver SET search_path = app, pg_catalog, public`` (pg_catalog listed,
    after the application's schema: the setup of a compatibility layer whose functions are to win over PostgreSQL's),
    and the schema ``app`` holds functions of the names and argument types of PostgreSQL's current_database(),
    current_setting(text), pg_is_in_recovery(), set_config(text, text, boolean) and to_regclass(text) (each here
    raises 'SHADOWED <name>', to show where it is called). The role (not a superuser) owns the declaratively
    partitioned ``S.ev`` with retention ``drop``. Then, on sessions from ``PostgresResource.connect()``: archive
    the day; restore it into a new table; remove it.

    Now: session_settings' docstring promises "Every query the archiver, the fingerprint, restore and verification
    send runs with PostgreSQL's own schema first on the path ... even when the role's path lists a schema of its own
    before pg_catalog", but CATALOG_FIRST is applied only inside some blocks (the snapshot, the load, the removal's
    pinned_settings), and statements outside them call PostgreSQL's functions by bare name, so the role's path picks
    the user's: the archive fails in source.server_identity ("SELECT current_database(), current_setting(
    'server_version'), ..."); the restore into a new table in restore's catalog lookups ("to_regclass(%s)"); the
    removal in lifecycle._in_recovery ("SELECT pg_is_in_recovery()"), and past that in its ``set_config(
    'row_security', 'off', true)`` and ``current_setting``. Each says "the database reported an error (RaiseException
    SQLSTATE P0001: SHADOWED ...); not retried: ... read the message", naming no setting. With a function that
    answers instead of raising, the user's answer is taken for PostgreSQL's (the manifest's source database, whether
    the server is a standby, whether row security is off for the removal's count).

    Should: the product's statements resolve to PostgreSQL's functions whatever the role's path: set the composed
    CATALOG_FIRST path for the whole session when it is opened (session_pinned), or qualify every call
    (pg_catalog.current_database() ...), as most statements already do; the archive, the restore and the removal
    then succeed here."""
    s = sql.Identifier(schema)
    app = sql.Identifier(f"{schema}_app")
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)"
                         ).format(s=s))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev_d PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00')").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {s}.ev SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', "
                         "'x' || g FROM generate_series(1, 20) g").format(s=s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop"})
    if command != "archive":
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)  # by the plain role
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(app))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(app))
        for signature, returns in SHADOWS.items():
            name, args = signature.split("(", 1)
            params = ", ".join(f"a{i} {t.strip()}" for i, t in enumerate(args.rstrip(")").split(",")) if t.strip())
            conn.execute(sql.SQL("CREATE FUNCTION {}.{}(" + params + ") RETURNS " + returns + " LANGUAGE plpgsql AS "
                                 "$$ BEGIN RAISE EXCEPTION 'SHADOWED " + name + "'; END $$").format(
                app, sql.Identifier(name)))
        role, dsn = _role(conn, pg, schema, {"search_path": f"{app.as_string(conn)}, pg_catalog, public"},
                          owns=("ev", "ev_d"))
        try:
            with PostgresResource(dsn=dsn).connect() as session:
                if command == "archive":
                    result = archive_partition(session, spec, DAY, store, temp_dir=temp_dir)
                    assert result.rows == 20
                elif command == "restore-into-new":
                    restored = restore_day(session, store, spec, DAY, into="new", target=f"{schema}.back",
                                           temp_dir=temp_dir)
                    assert restored.rows == 20 and restored.fingerprint_checked
                else:
                    removal = remove_day(session, spec, DAY, store, temp_dir=temp_dir)
                    assert removal.rows == 20 and removal.action == "drop"
        finally:
            _drop_role(conn, role)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(app))
