"""Hunt 14 (TK): regressions and holes in the latest fixes (views fingerprinted in their transaction, printed
names' "named:"/"any:" modes and aclitem roles, the CLI's lost database, restore's undecodable Parquet)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.helpers import assert_nothing_left

DAY = dt.date(2024, 3, 10)


def _spec(name: str, fmt: str = "jsonl", streams: int | str = 1, **kwargs) -> TableSpec:
    return TableSpec(name=name, day_column=kwargs.pop("day_column", "created_at"), start_date="2024-03-01",
                     format=fmt, compression=kwargs.pop("compression", "zstd"), chunk_size=100,
                     parallel_streams=streams, **kwargs)


def _after_the_fingerprint(monkeypatch, pg, statement: sql.Composable) -> list:
    """Run ``statement`` in another session once the day's fingerprint is taken (first: a small day) and
    before its rows are read (``plan_streams`` is called in between). Returns a list that is non-empty once
    it ran."""
    from archive_pipeline.core import archive

    planned = archive.plan_streams
    done: list = []

    def change_then_plan(*args, **kwargs):
        if not done:
            with pg.connect() as other:
                other.execute(statement)
            done.append(True)
        return planned(*args, **kwargs)

    monkeypatch.setattr(archive, "plan_streams", change_then_plan)
    return done


def _archived_green_or_refused(conn, store, spec, temp_dir, monkeypatch, done, rows):
    """The day's archive run: a retryable refusal with nothing left (fine), or a green archive whose proof must
    not find the object differing from its own manifest."""
    from archive_pipeline.core.verify import deep_verify

    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        assert exc.retryable, exc
        assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
        return
    assert done and result.rows == rows
    monkeypatch.undo()
    problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    assert not [p for p in problems if "not the ones recorded" in p], problems


def test_a_role_an_aclitem_names_dropped_during_the_read_is_not_archived_green(pg, conn, schema, store, temp_dir,
                                                                               monkeypatch):
    """An ``aclitem[]`` column prints its grantee's role name from the catalog as committed when the value is
    output, and the role's OID as a number once the role is gone. The last fix re-checks after the read every
    role's name as "any:regrole" -- a mode in which an object dropped meanwhile is ignored (meant for another
    session's temporary table). ``DROP ROLE`` of a role that only a stored aclitem value names (makeaclitem():
    no dependency) takes no lock the day's read holds. Here a 200-row day is fingerprinted first, then the role
    is dropped before the COPY. What happens now: the day is archived green, its rows printing ``<oid>=r/...``
    where its fingerprint hashed ``<role>=r/...``; its proof finds the object is not what its manifest
    recorded (and cannot even load it: aclitem's input refuses a number for a role). Expected: the day fails,
    retryable, with nothing published (as for a regclass value's relation dropped, and a role renamed). Fix idea: record the roles the day's aclitem values name ("named:regrole",
    from the snapshot's values: aclitem's grantee/grantor via aclexplode) or treat a role dropped as a change
    in "any:" mode (roles are never temporary)."""
    role = f"{schema}_gone_role"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    table = sql.Identifier(schema, "acl_audit")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, acl aclitem[])").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', "
                         "ARRAY[pg_catalog.makeaclitem({}::regrole, 'pg_database_owner'::regrole, 'SELECT', false)] "
                         "FROM generate_series(1, 200) g").format(table, sql.Literal(f"{DAY} 00:00+00"),
                                                                  sql.Literal(role)))
    done = _after_the_fingerprint(monkeypatch, pg, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    spec = _spec(f"{schema}.acl_audit")
    try:
        with pytest.raises(ArchiveError) as raised:
            archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
        assert done and raised.value.retryable, raised.value
        assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
    finally:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_a_relation_a_views_regclass_value_names_dropped_during_the_read_is_not_archived_green(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """A day read through a view records its reg* names in "any:" mode (every object of the kind: the view's
    query may print names it does not return), and "any:" ignores an object dropped meanwhile. A ``regclass``
    value prints its relation's name as committed when output, and the OID as a number once the relation is
    gone; ``DROP TABLE`` of the relation a value names takes no lock the day's read (of the view and its base
    table) holds. Here a 200-row view day of ``(id, created_at, rel regclass)`` naming ``<schema>.gone`` is
    fingerprinted first (a view: in its reading transaction), then ``gone`` is dropped before the COPY. What
    happens now: the day is archived green, its rows printing the OID where its fingerprint hashed the name;
    its proof says the object is not what its manifest recorded. Expected: the day fails, retryable, with
    nothing published -- as the same day read from the table directly now does. Fix idea: in "any:" mode a
    dropped object is a change unless it was a temporary relation (relpersistence 't') of another session."""
    gone = sql.Identifier(schema, "gone")
    conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(gone))
    base = sql.Identifier(schema, "rels")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, rel regclass)").format(base))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', {}::regclass "
                         "FROM generate_series(1, 200) g").format(base, sql.Literal(f"{DAY} 00:00+00"),
                                                                  sql.Literal(f"{schema}.gone")))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, created_at, rel FROM {}").format(
        sql.Identifier(schema, "v"), base))
    done = _after_the_fingerprint(monkeypatch, pg, sql.SQL("DROP TABLE {}").format(gone))
    _archived_green_or_refused(conn, store, _spec(f"{schema}.v"), temp_dir, monkeypatch, done, 200)


def test_a_relation_a_regclass_value_names_dropped_during_a_deep_proof_is_no_altered_archive(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """Deep verification loads the archived rows into a temporary table and fingerprints them; it takes the
    printed names first (relation_printed_names) so that a rename during the proof is "no verdict", not an
    altered archive (_renamed_meanwhile). Without a day's ``where`` those are "any:" names, and "any:" ignores
    an object dropped meanwhile. A ``regclass`` value loaded before ``DROP TABLE`` of the relation it names
    prints the OID afterwards. Here an intact archive of ``(id, created_at, rel regclass)`` naming
    ``<schema>.gone`` is proven, and ``gone`` is dropped after the load and before the loaded rows are
    fingerprinted. What happens now: the proof says the archive's rows are not the ones recorded (an intact
    archive reported altered). Expected: a retryable "no verdict" ArchiveError (as for a rename), or at most
    that the source differs -- never that the object is not what its manifest recorded. Fix idea: a dropped
    object is a change in printed_names_changed for the names of a restore target / proof table too ("named:"
    from the loaded rows, or "any:" counting drops of non-temporary objects)."""
    from archive_pipeline.core import verify

    gone = sql.Identifier(schema, "gone")
    conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(gone))
    table = sql.Identifier(schema, "rels")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, rel regclass)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', {}::regclass "
                         "FROM generate_series(1, 50) g").format(table, sql.Literal(f"{DAY} 00:00+00"),
                                                                 sql.Literal(f"{schema}.gone")))
    spec = _spec(f"{schema}.rels")
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    loaded = verify._loaded_fingerprint
    done = []

    def drop_then_fingerprint(*args, **kwargs):
        if not done:
            with pg.connect() as other:
                other.execute(sql.SQL("DROP TABLE {}").format(gone))
            done.append(True)
        return loaded(*args, **kwargs)

    monkeypatch.setattr(verify, "_loaded_fingerprint", drop_then_fingerprint)
    try:
        problems = verify.deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        assert exc.retryable, exc
        return
    assert done
    assert not [p for p in problems if "not the ones recorded" in p], problems


def test_a_day_whose_aclitem_names_a_dropped_role_is_not_archived_green_and_unprovable(conn, schema, store,
                                                                                      temp_dir):
    """An ``aclitem`` naming a role that no longer exists (a ``makeaclitem()`` value, or ``relacl`` copied into
    an audit table before the role was dropped: a stored value holds no dependency) prints the role's OID as
    a number (``16385=r/postgres``), which aclitem's input refuses (``role "16385" does not exist``). The
    README refuses up front the days no restore or proof could read back (a regproc naming an overloaded
    function, an xml value xml's input refuses, a circle of negative radius: "archived, such a day would be
    green, and no restore or proof of it could succeed"). What happens now: the day is archived green, and
    its proof (deep verification, the blocking check) fails with an untyped "the server rejected the
    archiver's SQL (UndefinedObject ...): report it" -- no verdict, no restore ever. Expected: the archive
    refuses the day naming the column and the cause (a role an aclitem names is gone), as it does for the
    other values whose input refuses their output; or, if archived, its proof succeeds. Fix idea: add
    aclitem naming a missing role (aclexplode's grantee/grantor not in pg_authid, 0 = PUBLIC aside) to
    refuse_unreadable's EXISTS check."""
    from archive_pipeline.core.verify import deep_verify

    role = f"{schema}_was_role"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    table = sql.Identifier(schema, "acl_audit")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, acl aclitem[])").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', "
                         "ARRAY[pg_catalog.makeaclitem({}::regrole, 'pg_database_owner'::regrole, 'SELECT', false)] "
                         "FROM generate_series(1, 20) g").format(table, sql.Literal(f"{DAY} 00:00+00"),
                                                                 sql.Literal(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    spec = _spec(f"{schema}.acl_audit")
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        assert "acl" in str(exc) and not exc.retryable, exc
        assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
        return
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


@pytest.mark.xfail(strict=True, reason="known, left open: refusing views that call a VOLATILE function would also "
                   "refuse views of deterministic functions of users (VOLATILE is CREATE FUNCTION's default) and of "
                   "pg_sleep(); telling them apart (a second fingerprint, or the rows' own hash as written) is not "
                   "done yet")
def test_a_view_calling_a_volatile_function_is_not_archived_green_under_a_fingerprint_of_other_values(
        conn, schema, store, temp_dir):
    """The last fix fingerprints a view's day in the transaction that reads it, so a view of ``now()`` (stable
    in a transaction) prints the same values in the fingerprint and in the COPY. A view whose query calls a
    *volatile* function (``clock_timestamp()``, ``random()``, ``gen_random_uuid()``, ``nextval()``, a user's
    VOLATILE function) prints other values on every evaluation, in one transaction too: the fingerprint
    query and the COPY each evaluate it. What happens now: a 100-row day of ``SELECT id, created_at,
    clock_timestamp() AS seen_at FROM base`` is archived green; its manifest's fingerprint is of other values
    than the object holds, and its proof (deep verification, the blocking check) says the archive's rows
    "are not the ones recorded" -- an intact object reported as altered, forever. Expected: the day is refused
    up front (a typed, non-retryable error naming the view and the volatile function: its rows are not one
    day's content that can be archived and proven), or archived so that the object and its manifest agree
    (the fingerprint computed from the rows written). Fix idea: the view's functions are already listed
    (_VIEW_FUNCTIONS, read_relations): refuse a view whose query calls a function with provolatile = 'v'
    (pg_catalog's too), naming it; or fingerprint the rows as written rather than by a second query."""
    from archive_pipeline.core.verify import deep_verify

    base = sql.Identifier(schema, "base")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz)").format(base))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute' "
                         "FROM generate_series(1, 100) g").format(base, sql.Literal(f"{DAY} 00:00+00")))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, created_at, clock_timestamp() AS seen_at FROM {}").format(
        sql.Identifier(schema, "v"), base))
    spec = _spec(f"{schema}.v")
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        assert "clock_timestamp" in str(exc) and not exc.retryable, exc
        assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
        return
    problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    assert not [p for p in problems if "not the ones recorded" in p], problems


def test_a_rerun_of_a_view_of_now_does_not_say_its_rows_were_updated(conn, schema, store, temp_dir):
    """A view whose query calls ``now()`` (``SELECT id, created_at, now() AS seen_at FROM base``: a common
    "exported at" column) is archived green since the last fix (fingerprinted in its reading transaction).
    Every later run of the same day (a schedule, a backfill over the range, the CLI's ``archive`` again)
    fingerprints the day first to decide whether to skip: its ``now()`` is that run's, so the day always
    "changed". What happens now: the re-run fails with LateRowsError "changed since it was archived ...: its
    content changed with the same 100 rows (rows updated, or inserted and deleted ...); set overwrite" -- no
    row was updated, and an overwrite only archives a day that the next run again calls changed: the day is
    red on every run. Expected: the cause is named (the view's values depend on the reading transaction:
    ``now()``), either by refusing such a view up front (naming the function) or in the re-run's error
    instead of "rows updated"; or the re-run skips the archived day. Fix idea: the view's functions are listed
    already (_VIEW_FUNCTIONS): refuse or flag a view calling a function that is not immutable, and say so in
    LateRowsError for a view."""
    base = sql.Identifier(schema, "base")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz)").format(base))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute' "
                         "FROM generate_series(1, 100) g").format(base, sql.Literal(f"{DAY} 00:00+00")))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, created_at, now() AS seen_at FROM {}").format(
        sql.Identifier(schema, "v"), base))
    spec = _spec(f"{schema}.v")
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:  # refused up front, naming the cause: fine
        assert "now()" in str(exc), exc
        return
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        said = str(exc)
        assert "rows updated" not in said and "now()" in said, said
