"""Hunt 14 (TJ): parallel extraction (``parallel_streams``) and the source changing while a day is read."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec

DAY = dt.date(2024, 3, 10)


def _spec(name: str, fmt: str, streams: int | str, **kwargs) -> TableSpec:
    return TableSpec(name=name, day_column=kwargs.pop("day_column", "created_at"), start_date="2024-03-01",
                     format=fmt, compression=kwargs.pop("compression", "zstd"), chunk_size=100,
                     parallel_streams=streams, **kwargs)


def _paged_table(conn, schema: str, name: str = "ev", rows: int = 2000) -> str:
    """A plain table of the day only, spread over many pages (fillfactor 10): N ctid ranges each hold rows."""
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, name text) WITH (fillfactor = 10)")
                 .format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 second', 'row ' || g "
                         "FROM generate_series(1, {}) g").format(table, sql.Literal(f"{DAY} 00:00+00"),
                                                                 sql.Literal(rows)))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    return f"{schema}.{name}"



def test_a_view_of_transaction_time_is_fingerprinted_in_the_transaction_that_reads_it(conn, schema, store,
                                                                                        temp_dir):
    """A new day the planner expects to be big (>= 50,000 rows) is fingerprinted by a second session that
    imports the snapshot (README: "the same content fingerprint (computed over the whole day in the same
    snapshot, by one more session alongside)"). A snapshot is not a transaction: a view whose query
    calls now() (``SELECT *, now() AS read_at FROM t`` -- also current_timestamp, txid_current(),
    pg_backend_pid()...) prints the reading transaction's start time. The COPY runs in the archive's
    transaction, the fingerprint in the second session's, which starts later: the manifest's fingerprint
    is of other values than the object's. What happens now: the day is archived green, and its proof
    (deep verification, the blocking check) loads the object and finds it differs from its own manifest:
    an intact archive reported as not what was archived. With the fingerprint taken first (a small day,
    or the same view read by one transaction) the object and its manifest agree.
    Expected: the manifest's fingerprint describes the object: deep verification of the fresh archive
    finds nothing (or at most says the source changed since, never that the object differs from its
    manifest). Fix idea: fingerprint first, in the reading transaction, when the day's query calls a
    function that is not immutable (a view, as already done for foreign tables), or never alongside for
    views."""
    from archive_pipeline.core.verify import deep_verify

    base = sql.Identifier(schema, "base")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz)").format(base))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 second' "
                         "FROM generate_series(1, 60000) g").format(base, sql.Literal(f"{DAY} 00:00+00")))
    conn.execute(sql.SQL("ANALYZE {}").format(base))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, created_at, now() AS read_at FROM {}").format(
        sql.Identifier(schema, "v"), base))
    spec = _spec(f"{schema}.v", "jsonl", 1)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 60000
    problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    # (the source's own now() differs at verification time: that the source differs is fair; that the object is
    # not what its manifest recorded is not)
    assert not [p for p in problems if "not the ones recorded" in p], problems


def test_a_parquet_view_of_transaction_time_is_fingerprinted_in_the_readers_transaction(conn, schema, store,
                                                                                          temp_dir):
    """Parquet reads a day in a session of its own (ADBC) that imports the archive's snapshot; the day's
    fingerprint is taken in the archive's session (first, for a small day). A snapshot is not a
    transaction: a view whose query calls now() prints each transaction's own start time, so the rows
    the Parquet reader wrote carry another read_at than the rows the fingerprint hashed. What happens
    now: a 100-row day of ``SELECT id, created_at, now() AS read_at FROM base`` is archived green, and
    deep verification of the fresh archive says its rows are not the ones recorded (an intact object
    reported as differing from its own manifest). Expected: the object and its manifest agree (the
    README's one-snapshot promise, as for a foreign table, where the reader's own remote transaction is
    why the fingerprint is taken in the reader's session: ``fingerprint_in_reader``). Fix idea: take the
    fingerprint in the reader's transaction (fingerprint_in_reader) whenever the day's query is a view
    or calls a function that is not immutable."""
    from archive_pipeline.core.verify import deep_verify

    base = sql.Identifier(schema, "base")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz)").format(base))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 second' "
                         "FROM generate_series(1, 100) g").format(base, sql.Literal(f"{DAY} 00:00+00")))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, created_at, now() AS read_at FROM {}").format(
        sql.Identifier(schema, "v"), base))
    spec = _spec(f"{schema}.v", "parquet", 1)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 100
    problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    assert not [p for p in problems if "not the ones recorded" in p], problems


def test_a_role_renamed_while_the_streams_read_aclitem_values_is_not_archived_green(pg, conn, schema, store,
                                                                                     temp_dir, monkeypatch):
    """An ``aclitem[]`` column (an audit table keeping ``pg_class.relacl`` as it was) prints role names
    from the catalog as committed when the value is output, not as the snapshot sees it -- as reg* values
    and enum labels do, which the archive re-checks (README: "the names a day's values print from the
    catalog ... renamed during the read fail the day, retryable"). ``ALTER ROLE ... RENAME`` takes no lock
    the day's read holds. Here the day (200 rows, 2 streams) is fingerprinted first, then the role is
    renamed before the streams COPY. What happens now: the day is archived green with values printing
    the new name under a fingerprint of the old one; its proof finds the object is not what its
    manifest recorded (and a restore after the role is renamed back cannot even load it). Expected: the
    day fails, retryable (a typed error naming the rename), with nothing published -- or its object and
    manifest agree. Fix idea: add ``aclitem`` (its grantee and grantor roles, from pg_authid) to the
    printed names re-checked after the read (_NAMED_BY_CATALOG / printed_names_changed)."""
    from archive_pipeline.core import archive
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.verify import deep_verify
    from archive_pipeline_tests.helpers import assert_nothing_left

    role = f"{schema}_auditor"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    table = sql.Identifier(schema, "acl_audit")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, acl aclitem[]) WITH (fillfactor = 10)")
                 .format(table))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(role)))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', "
                         "(SELECT relacl FROM pg_class WHERE oid = {}::regclass) FROM generate_series(1, 200) g")
                 .format(table, sql.Literal(f"{DAY} 00:00+00"), sql.Literal(f"{schema}.acl_audit")))
    renamed = f"{role}_renamed"
    planned = archive.plan_streams
    done = []

    def rename_then_plan(*args, **kwargs):  # after the fingerprint (taken first: a small day), before the COPY
        if not done:
            with pg.connect() as other:
                other.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(role),
                                                                         sql.Identifier(renamed)))
            done.append(True)
        return planned(*args, **kwargs)

    monkeypatch.setattr(archive, "plan_streams", rename_then_plan)
    spec = _spec(f"{schema}.acl_audit", "jsonl", 2)
    try:
        try:
            result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
        except ArchiveError as exc:
            assert exc.retryable, exc
            assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
            return
        assert done and result.rows == 200
        monkeypatch.setattr(archive, "plan_streams", planned)
        problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
        assert not [p for p in problems if "not the ones recorded" in p], problems
    finally:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        for name in (role, renamed):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


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


def test_a_relation_a_regclass_value_names_dropped_during_the_read_is_not_archived_green(pg, conn, schema, store,
                                                                                          temp_dir, monkeypatch):
    """A ``regclass`` value prints its relation's name from the catalog as committed when it is output, and
    the relation's OID as a number once the relation is gone. The archive re-checks, after the read, that
    no name a reg* value prints was renamed (same_printed_names), but by design ignores objects dropped
    meanwhile ("Objects created or dropped meanwhile are no rename"). A drop changes the printed text as
    much as a rename: ``DROP TABLE`` of the named relation takes no lock the day's read holds. Here a
    200-row day (2 streams) of ``(id, created_at, rel regclass)`` naming ``<schema>.gone`` is fingerprinted
    first, then ``gone`` is dropped before the streams COPY. What happens now: the day is archived green,
    its rows printing ``16xxx`` where its fingerprint hashed ``<schema>.gone``; its proof finds the object
    is not what its manifest recorded. Expected: the day fails, retryable, with nothing published (the
    retry prints the number in both) -- or its object and manifest agree. Fix idea: in
    printed_names_changed, an object of ``then`` missing from ``now`` is a change too."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.verify import deep_verify
    from archive_pipeline_tests.helpers import assert_nothing_left

    gone = sql.Identifier(schema, "gone")
    conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(gone))
    table = sql.Identifier(schema, "rels")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, rel regclass) WITH (fillfactor = 10)")
                 .format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', {}::regclass "
                         "FROM generate_series(1, 200) g").format(table, sql.Literal(f"{DAY} 00:00+00"),
                                                                  sql.Literal(f"{schema}.gone")))
    done = _after_the_fingerprint(monkeypatch, pg, sql.SQL("DROP TABLE {}").format(gone))
    spec = _spec(f"{schema}.rels", "jsonl", 2)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        assert exc.retryable, exc
        assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
        return
    assert done and result.rows == 200
    monkeypatch.undo()
    problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    assert not [p for p in problems if "not the ones recorded" in p], problems
