"""Hunt 14 (tm): regressions in the latest fixes (wall-clock keyed timestamptz children, the aclitem check,
printed names counting every drop, date days through a zone change, a stopped restore's rest)."""

from __future__ import annotations

import pytest

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.helpers import assert_nothing_left

DAY = dt.date(2024, 3, 10)


def test_an_aclitem_without_privileges_naming_a_dropped_role_is_refused_before_anything_is_written(conn, schema,
                                                                                                    store, temp_dir):
    """An ``aclitem`` may hold no privilege at all (``bob=/postgres``: aclitem's input takes an empty list, and a
    REVOKE copied from ``relacl`` into an audit table leaves such entries). Its grantee dropped, it prints the
    role's OID (``16385=/postgres``), which aclitem's input refuses, like any aclitem naming a dropped role.
    What happens now: UNREADABLE_VALUES' aclitem check looks for the missing role among ``aclexplode()``'s rows,
    and aclexplode returns no row for an item without privileges: the day is archived green, and its proof fails
    with an untyped "the server rejected the archiver's SQL (UndefinedObject ...)" (no verdict, no restore ever).
    Expected (README: days no restore or proof could read back are refused up front): the archive refuses the day
    naming the column and the cause, with nothing written; or, if archived, its proof succeeds.
    Fix idea: read grantee and grantor without aclexplode (e.g. compare the item's text with its re-parse, or
    check ``pg_catalog.aclitem_grantee``-like parts through ``split_part(e::text, '/', 2)`` / the '=' prefix), or
    add ``OR NOT EXISTS (SELECT FROM aclexplode(...))`` with the text check for an item holding no privileges."""
    from archive_pipeline.core.verify import deep_verify

    role = f"{schema}_no_privs"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    table = sql.Identifier(schema, "acl_audit")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, acl aclitem[])").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', "
                         "ARRAY[(pg_catalog.quote_ident({}) || '=/' || pg_catalog.quote_ident(current_user))"
                         "::pg_catalog.aclitem] FROM generate_series(1, 20) g").format(
        table, sql.Literal(f"{DAY} 00:00+00"), sql.Literal(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    printed = conn.execute(sql.SQL("SELECT acl::text FROM {} LIMIT 1").format(table)).fetchone()[0]
    assert role not in printed  # (its number now)
    spec = TableSpec(name=f"{schema}.acl_audit", day_column="created_at", start_date="2024-03-01")
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        assert "acl" in str(exc) and not exc.retryable, exc
        assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
        return
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


def test_an_aclitem_without_privileges_naming_a_role_whose_name_is_digits_is_archived_and_proven(conn, schema, store,
                                                                                                temp_dir):
    """The counterpart of the test above: a role may be named by digits only (``CREATE ROLE "90210"``), and an item
    without privileges naming it prints that name as a dropped role's number would look. It reads back (aclitem's
    input finds the role by name), so the day is archived and proven, not refused."""
    from archive_pipeline.core.verify import deep_verify

    role = str(90_000 + abs(hash(schema)) % 9_000)
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        table = sql.Identifier(schema, "acl_digits")
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, acl aclitem[])").format(table))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', "
                             "ARRAY[({} || '=/' || pg_catalog.quote_ident(current_user))::pg_catalog.aclitem, "
                             "('=r/' || {})::pg_catalog.aclitem] FROM generate_series(1, 5) g").format(
            table, sql.Literal(f"{DAY} 00:00+00"), sql.Literal(role), sql.Literal(role)))
        printed = conn.execute(sql.SQL("SELECT acl::text FROM {} LIMIT 1").format(table)).fetchone()[0]
        assert printed.startswith("{" + role + "=/"), printed
        spec = TableSpec(name=f"{schema}.acl_digits", day_column="created_at", start_date="2024-03-01")
        result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
        assert result.rows == 5
        assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []
    finally:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, "acl_digits")))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_trolls_first_summer_hour_is_one_partition_of_its_own_despite_the_skipped_hours_children(conn, schema,
                                                                                                  store):
    """Scenario: an hourly Antarctica/Troll table (its clocks jump two hours, 01:00 +00 to 03:00 +02, on
    2024-03-31), a ``timestamptz`` day column partitioned by its wall clock there (``PARTITION BY RANGE ((at AT
    TIME ZONE 'Antarctica/Troll'))``) with one child per label hour, as pg_partman lays them out: ``ev_01``
    (FROM '01:00' TO '02:00') and ``ev_02`` can never hold a row (no instant is labelled 01:xx or 02:xx that
    night); the hour ``2024-03-31-03:00`` (01:00-02:00 UTC) is all in ``ev_03``. Retention ``drop`` is due for it.

    Now: ChildRange reads the child's bounds as instants (the server reads the skipped '01:00' as 01:00 +00, the
    instant labelled 03:00) and compares labels of those instants, so ``ev_01`` seems to hold exactly the
    03:00 hour too (overlaps and is_period both say so): the removal refuses with "its rows are split across the
    partitions ev_01, ev_03", though ev_01 holds none and never can. Should: ev_03 is the hour's one partition and
    is dropped (ev_01 is left alone). Fix idea: compare a wall-clock child by its bound labels as printed (not
    its instants read back), or skip a child whose label range lies wholly inside a skipped gap."""
    from archive_pipeline.core.lifecycle import remove_day

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL) "
                         "PARTITION BY RANGE ((at AT TIME ZONE 'Antarctica/Troll'))").format(s))
    for h in range(5):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"ev_{h:02d}"), s, sql.Literal(f"2024-03-31 {h:02d}:00"),
            sql.Literal(f"2024-03-31 {h + 1:02d}:00")))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-31 00:30+00'), (2, '2024-03-31 01:30+00'), "
                         "(3, '2024-03-31 02:30+00')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-31", granularity="hourly",
                     timezone="Antarctica/Troll", partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop"})
    assert archive_partition(conn, spec, "2024-03-31-03:00", store).rows == 1
    remove_day(conn, spec, "2024-03-31-03:00", store)
    left = [r[0] for r in conn.execute(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1", (f"{schema}.ev",))]
    assert left == ["ev_00", "ev_01", "ev_02", "ev_04"], left
    assert sorted(r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}.ev").format(s))) == [1, 3]


@pytest.mark.xfail(strict=True, reason="known, chosen: a view's day records every relation's name (its values are not "
                   "known before the read), and since test_hunt14_tk any drop during the read fails the day, retryable, "
                   "so that no day is published under a fingerprint of names it no longer prints")
def test_a_view_with_a_regclass_column_is_not_failed_by_an_unrelated_table_dropped_during_its_read(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """Scenario: a view whose rows carry a ``regclass`` column (an audit view: ``SELECT id, created_at,
    tbl::regclass ...``) naming one table, in a database where other applications create and drop their own
    (non-temporary) staging tables all day. While the view's day is read, one such unrelated table, which no
    value of the day names, is dropped.

    Now: since 'any:' mode was folded into 'named:' (47add1d), a view's printed names record every relation of
    the database and any drop counts: the day fails "a name a regclass value prints (a relation ... renamed or
    dropped) ... was changed while the day was read", though no value printed another name; on a busy database
    (an ETL dropping a staging table every few seconds, REINDEX CONCURRENTLY dropping the old index) every retry
    fails the same way and the day never goes green. Should: a drop of a relation no value printed is no change;
    the day is archived green. Fix idea: for a view, read the oids its returned values name after the read (from
    the rows fingerprinted), or count a drop only for the oids the day's values name, comparing every object's
    name only for renames as the 'any:' mode did."""
    import psycopg

    from archive_pipeline.core import archive as archive_mod

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.audit (id bigint, created_at timestamptz, tbl text)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.named_one (x int)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.staging_tmp (x int)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.audit SELECT g, {}::timestamptz + g * interval '1 minute', {} "
                         "FROM generate_series(1, 5) g").format(s, sql.Literal(f"{DAY} 00:00+00"),
                                                                sql.Literal(f"{schema}.named_one")))
    conn.execute(sql.SQL("CREATE VIEW {}.audit_v AS SELECT id, created_at, tbl::pg_catalog.regclass AS tbl "
                         "FROM {}.audit").format(s, s))
    real = archive_mod.same_printed_names

    def drop_meanwhile(*args, **kwargs):
        with psycopg.connect(pg.dsn, autocommit=True) as other:
            other.execute(sql.SQL("DROP TABLE IF EXISTS {}.staging_tmp").format(s))
        return real(*args, **kwargs)

    monkeypatch.setattr(archive_mod, "same_printed_names", drop_meanwhile)
    spec = TableSpec(name=f"{schema}.audit_v", day_column="created_at", start_date="2024-03-01")
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 5
