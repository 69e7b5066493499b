"""Hunt 11, class: the source changing while an operation runs (and between operations). Each test makes the
change happen at a fixed seam of the operation (a core function monkeypatched to run it on a second connection
first) and fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import archive as archive_mod
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


def _swap_schemas(pg, schema: str) -> None:
    """On another session: the table's schema renamed away and another schema renamed into its name. ALTER
    SCHEMA ... RENAME takes no lock on the tables in it, so it does not wait for a run holding the day's locks."""
    with pg.connect() as other:
        other.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(schema),
                                                                     sql.Identifier(schema + "_was")))
        other.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(schema + "_new"),
                                                                     sql.Identifier(schema)))


def test_schema_swapped_after_the_locks_archives_the_other_tables_rows_green(pg, conn, schema, store, temp_dir,
                                                                              s3_client, bucket):
    """A migration swaps schemas (ALTER SCHEMA app RENAME TO app_old; ALTER SCHEMA app_new RENAME TO app) while
    the day of app.t is being archived, after the run took its snapshot and the day's locks and fingerprinted the
    day, before it reads the rows (parallel_streams 1). Schema renames take no lock on the tables, so nothing waits. Now the run's
    COPY (and each parallel stream's) resolves app.t by name again and reads the other table (its rows were
    committed before the snapshot, so the snapshot sees them): as many rows as the fingerprint counted, so the
    archive is published green with a manifest whose fingerprint is the locked table's rows, over an object
    holding the other table's rows (deep verification then calls the archive altered). It should fail,
    retryable, naming the table and day (the relation the name resolves to is not the one locked and
    fingerprinted), and publish nothing. Fix idea: read by the locked relation's OID (or check, after the read,
    that the name still resolves to the OID hold_day saw, as _same_relation does before it)."""
    other = schema + "_new"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
    try:
        for s, value in ((schema, "original"), (other, "impostor")):
            t = sql.Identifier(s, "t")
            conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text)").format(t))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00'::timestamptz + g * interval '1 s', "
                                 "%s FROM generate_series(1, 2000) g").format(t), (value,))
            conn.execute(sql.SQL("ANALYZE {}").format(t))
        spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format="jsonl",
                         parallel_streams=1)
        real = archive_mod.write_day

        def swapped_then_read(*args, **kwargs):
            _swap_schemas(pg, schema)
            return real(*args, **kwargs)

        archive_mod.write_day = swapped_then_read
        try:
            with pytest.raises(ArchiveError) as caught:
                result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
                problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
                raise AssertionError(f"published green ({result.rows} rows, {result.key}); its deep verification "
                                     f"now says: {problems}")
        finally:
            archive_mod.write_day = real
        assert "2024-03-10" in str(caught.value)
        assert not s3_client.list_objects_v2(Bucket=bucket).get("Contents")  # nothing published
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema + "_was")))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)))
        # the fixture drops the schema of the test's name (the impostor's now)


def test_schema_swapped_after_the_removals_recheck_deletes_the_other_tables_unarchived_rows(pg, conn, schema, store,
                                                                                             temp_dir):
    """A day of app.t is archived and proven; retention (action delete) removes it. While the removal runs —
    after it locked app.t (SHARE ROW EXCLUSIVE) and re-fingerprinted the day equal to the archive, before its
    DELETE — a migration swaps schemas (ALTER SCHEMA app RENAME TO app_old; ALTER SCHEMA app_new RENAME TO app),
    which takes no lock on the tables. The DELETE resolves app.t by name again and deletes the day's rows of the
    OTHER table, which no archive holds: as many as were archived, so the count check passes, and the removal
    commits and reports the day removed, while the archived rows are still in app_old.t and the other table's
    rows are gone for good. It should refuse (retryable, naming table and day) and delete nothing: the relation
    the DELETE reaches must be the one locked and proven. Fix idea: after the DELETE (inside the transaction),
    check the name still resolves to the locked OID (or DELETE by the OID's regclass resolved once, under lock)."""
    from archive_pipeline.core import lifecycle

    other = schema + "_new"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
    try:
        for s, value in ((schema, "archived"), (other, "never archived")):
            t = sql.Identifier(s, "t")
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz, v text)").format(t))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00'::timestamptz + g * interval '1 s', "
                                 "%s FROM generate_series(1, 50) g").format(t), (value,))
        spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format="jsonl",
                         retention={"keep_days": 1, "action": "delete"})
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        real = lifecycle._foreign_delete

        def swapped_then_go_on(*args, **kwargs):
            _swap_schemas(pg, schema)
            return real(*args, **kwargs)

        lifecycle._foreign_delete = swapped_then_go_on
        try:
            try:
                removal = lifecycle.remove_day(conn, spec, DAY, store, removed_by="test", temp_dir=str(temp_dir))
            except ArchiveError as exc:
                assert "2024-03-10" in str(exc)
                removal = None
        finally:
            lifecycle._foreign_delete = real
        never_archived = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, "t"))).fetchone()[0]  # (the other table, under the name now)
        assert never_archived == 50, (f"the removal ({removal}) deleted {50 - never_archived} rows of a table no "
                                      "archive holds")
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema + "_was")))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)))


def test_view_function_replaced_between_the_fingerprint_and_the_read_is_archived_green(pg, conn, schema, store,
                                                                                      temp_dir):
    """A day of a view (SELECT id, at, label(v) AS v FROM t, label a SQL function of the user's) is archived. While
    the run goes — after it took its snapshot and the day's locks and fingerprinted the day, before its COPY — a
    deploy runs CREATE OR REPLACE FUNCTION label(...) with a new body. That takes no lock the run holds (the
    function is no relation), and a function's definition is read from the catalog as committed, not as the
    snapshot sees it: the COPY prints the new labels, the fingerprint hashed the old ones, the row counts agree,
    and the archive is published green with a fingerprint that is not its object's rows (deep verification then
    says the archive was altered). It should fail, retryable, naming table and day (as an enum label renamed
    meanwhile does: the README's "one snapshot" promise), and publish nothing. Fix idea: record the user
    functions the view calls (pg_proc xmin) with the snapshot and check them again after the read, as
    same_printed_names does for enum labels; or fingerprint alongside in a session that plans after the COPY."""
    t, v, f = (sql.Identifier(schema, n) for n in ("t", "v", "label"))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v int)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00'::timestamptz + g * interval '1 s', g "
                         "FROM generate_series(1, 200) g").format(t))
    conn.execute(sql.SQL("CREATE FUNCTION {}(int) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'old ' || $1 $$"
                         ).format(f))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, at, {}(v) AS v FROM {}").format(v, f, t))
    spec = TableSpec(name=f"{schema}.v", day_column="at", start_date=DAY, format="jsonl")
    real = archive_mod.write_day

    def replaced_then_read(*args, **kwargs):
        with pg.connect() as other:
            other.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}(int) RETURNS text LANGUAGE sql IMMUTABLE "
                                  "AS $$ SELECT 'new ' || $1 $$").format(f))
        return real(*args, **kwargs)

    archive_mod.write_day = replaced_then_read
    try:
        with pytest.raises(ArchiveError) as caught:
            result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
            problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
            raise AssertionError(f"published green ({result.rows} rows, {result.key}); its deep verification "
                                 f"now says: {problems}")
    finally:
        archive_mod.write_day = real
    assert "2024-03-10" in str(caught.value)


def test_schema_swapped_after_the_removals_recheck_drops_the_other_schemas_day_table(pg, conn, schema, store,
                                                                                      temp_dir):
    """As the DELETE above, for retention action ``drop`` in naming mode (one table per day, log_20240310): the
    removal locks app.log_20240310 (ACCESS EXCLUSIVE), re-fingerprints it equal to the archive, and then — a
    migration having swapped schemas meanwhile (ALTER SCHEMA app RENAME TO app_old; ALTER SCHEMA app_new RENAME
    TO app; no table lock, so nothing waits) — runs DROP TABLE app.log_20240310 by name: it drops the OTHER
    schema's day table, whose rows no archive holds, and reports the day removed (its rows counted from the
    locked table), while the archived table lives on in app_old. Separate from the DELETE's case: a fix that
    re-checks the DELETE's rows would not cover the DDL of drop/detach. It should refuse (retryable, naming table
    and day) and drop nothing. Fix idea: DROP/DETACH the locked relation by its OID (regclass of the OID taken
    under the lock), or check inside the transaction, right before the DDL, that the name resolves to it."""
    import inspect

    from archive_pipeline.core import lifecycle

    other = schema + "_new"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
    try:
        for s, n in ((schema, 10), (other, 30)):
            day_table = sql.Identifier(s, "log_20240310")
            conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(day_table))
            conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, %s)").format(day_table), (n,))
        spec = TableSpec(name=f"{schema}.log", start_date=DAY, format="jsonl",
                         partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                         retention={"keep_days": 1, "action": "drop"})
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        real = lifecycle._refuse_unremovable

        def swapped_in_the_recheck(*args, **kwargs):
            if inspect.stack()[1].function == "_recheck_and_remove":  # (not the proof's call before the lock)
                _swap_schemas(pg, schema)
            return real(*args, **kwargs)

        lifecycle._refuse_unremovable = swapped_in_the_recheck
        try:
            try:
                removal = lifecycle.remove_day(conn, spec, DAY, store, removed_by="test", temp_dir=str(temp_dir))
            except ArchiveError as exc:
                assert "2024-03-10" in str(exc)
                removal = None
        finally:
            lifecycle._refuse_unremovable = real
        left = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                            (sql.Identifier(schema, "log_20240310").as_string(conn),)).fetchone()[0]
        assert left, f"the removal ({removal}) dropped the other schema's day table of 30 rows no archive holds"
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema + "_was")))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)))
