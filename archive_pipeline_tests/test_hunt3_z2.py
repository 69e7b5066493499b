"""Hunt z2: letting the source go (retention) on unusual table structures: sub-partitioned day partitions,
foreign-table partitions, partitions pending detach deeper down. Real PostgreSQL and S3 (moto over HTTP);
no mocks of the database."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _count(conn, table: sql.Identifier, where: str = "TRUE") -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE ").format(table) + sql.SQL(where)).fetchone()[0]


def _fill(conn, table: sql.Identifier, day: str, rows: int, first: int = 1) -> None:
    conn.execute(sql.SQL("INSERT INTO {} (id, at, v) SELECT g, {}::timestamptz + g * interval '1 min', 'r' || g "
                         "FROM generate_series({}, {}) g").format(table, sql.Literal(f"{day} 00:00+00"),
                                                                  sql.Literal(first), sql.Literal(first + rows - 1)))


def _spec(schema: str, action: str) -> TableSpec:
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": action})


def _sub_partitioned(conn, schema: str) -> sql.Identifier:
    """``ev`` by range of ``at``: ``ev_20240310`` (20 rows) is itself partitioned by HASH (id) into
    ``ev_20240310_0`` and ``ev_20240310_1``; ``ev_20240311`` (5 rows) is a plain partition."""
    ev, d10 = _ident(schema, "ev"), _ident(schema, "ev_20240310")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text) PARTITION BY RANGE (at)").format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') TO "
                         "('2024-03-11 00:00+00') PARTITION BY HASH (id)").format(d10, ev))
    for i in range(2):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS 2, REMAINDER {})").format(
            _ident(schema, f"ev_20240310_{i}"), d10, sql.Literal(i)))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-11 00:00+00') TO "
                         "('2024-03-12 00:00+00')").format(_ident(schema, "ev_20240311"), ev))
    _fill(conn, ev, "2024-03-10", 20)
    _fill(conn, ev, "2024-03-11", 5, first=100)
    return ev


# ---- 1. what depends on a sub-partition keeps DROP from dropping the day's partition -------------------------

@pytest.mark.parametrize("dependent", ["view", "foreign key", "row type"])
def test_drop_of_a_sub_partitioned_day_is_refused_up_front_for_what_depends_on_its_sub_partitions(
        conn, schema, store, dependent):
    """The day's partition ``ev_20240310`` is itself partitioned by hash; a view reads one of its hash
    partitions, or another table's foreign key references one, or a function takes its row type. DROP TABLE
    of the day's partition drops its sub-partitions too, and PostgreSQL refuses it ("cannot drop table
    ev_20240310 because other objects depend on it"). The README promises that ``drop`` refuses, naming the
    cause, a table that views, foreign keys or uses of its row type depend on, the dry run too, before the
    proof. Was: the dry run says it would drop ``ev_20240310``; the real run proves the whole archive, writes
    its pending mark, and then fails with the database's error as a generic SourceError ("read the
    message"), because the dependents query looks at the day's partition only, not at the partitions below it
    (the extension-member query does walk the tree). Should: RemovalRefused from the dry run and the real run
    alike, naming the dependent; every row and the manifest stay as they were."""
    ev = _sub_partitioned(conn, schema)
    hashed = _ident(schema, "ev_20240310_0")
    if dependent == "view":
        conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(_ident(schema, "recent"), hashed))
        named = f"{schema}.recent"
    elif dependent == "foreign key":
        conn.execute(sql.SQL("ALTER TABLE {} ADD UNIQUE (id)").format(hashed))
        conn.execute(sql.SQL("CREATE TABLE {} (r int REFERENCES {} (id))").format(_ident(schema, "refs"), hashed))
        named = "refs_r_fkey"
    else:
        conn.execute(sql.SQL("CREATE FUNCTION {}(r {}) RETURNS int LANGUAGE sql AS 'SELECT r.id'").format(
            _ident(schema, "first_id"), hashed))
        named = "first_id"
    spec = _spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    before = store.get_verified_bytes(f"{key}.manifest.json")
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused, match=named) as caught:
            remove_day(conn, spec, DAY, store, dry_run=dry_run)
        assert (caught.value.table, caught.value.day) == (spec.name, DAY.isoformat())
    assert _count(conn, ev) == 25
    assert (store.get_verified_bytes(f"{key}.manifest.json") or b'').rstrip() == before.rstrip()


# ---- 2. delete through a foreign-table partition ---------------------------------------------------------------

@pytest.fixture
def loopback(conn, schema):
    """A postgres_fdw server pointing at this very database (skipped where the extension is not available)."""
    if not conn.execute("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'postgres_fdw')").fetchone()[0]:
        pytest.skip("postgres_fdw is not installed on this server")
    server = _ident(f"{schema}_loop")
    conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS postgres_fdw SCHEMA {}").format(_ident(schema)))
    conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {}, port {}, dbname {})"
                         ).format(server, sql.Literal(conn.info.host), sql.Literal(str(conn.info.port)),
                                  sql.Literal(conn.info.dbname)))
    conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS (user {})").format(
        server, sql.Literal(conn.info.user)))
    yield server
    conn.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(server))


def test_delete_through_foreign_partitions_never_takes_rows_of_another_day(conn, schema, store, loopback):
    """The old days of ``ev`` live on another server (here: postgres_fdw to this database): its partitions for
    2024-03-09 and 2024-03-10 are foreign tables over the remote history table ``hist``, itself partitioned by
    day there (the usual layout of a history server). The README sends a foreign-table partition to retention
    action ``delete`` ("use retention action 'delete'"). Removing 2024-03-10 must delete its 20 rows and
    nothing else. Was: the removal's batched DELETE picks rows by ``(tableoid, ctid)``, which keeps
    postgres_fdw from pushing the DELETE down; it then deletes each row remotely by ``WHERE ctid = $1``,
    and on a partitioned remote table a ctid names a row in every partition: the 20 rows of 2024-03-09 (a day
    not due, never archived) were deleted too. The row counts agree (20 archived, 20 "deleted", none of the
    day left), so the manifest says ``removed: done`` and nothing tells. Should: the 20 rows of 2024-03-09 stay
    (the removal deletes foreign partitions' rows by the day's filter, pushed down, or refuses them)."""
    ev, hist = _ident(schema, "ev"), _ident(schema, "hist")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text) PARTITION BY RANGE (at)").format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text) PARTITION BY RANGE (at)").format(hist))
    for day, first in (("2024-03-09", 100), ("2024-03-10", 1)):
        after = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
        bounds = (sql.Literal(f"{day} 00:00+00"), sql.Literal(f"{after} 00:00+00"))
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            _ident(schema, f"hist_{day.replace('-', '')}"), hist, *bounds))
        conn.execute(sql.SQL("CREATE FOREIGN TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({}) SERVER {} "
                             "OPTIONS (schema_name {}, table_name 'hist')").format(
            _ident(schema, f"ev_{day.replace('-', '')}"), ev, *bounds, loopback, sql.Literal(schema)))
        _fill(conn, hist, day, 20, first=first)
    spec = _spec(schema, "delete")
    key = archive_partition(conn, spec, DAY, store).key
    assert load_manifest(store, key)["rows"] == 20
    try:
        removal = remove_day(conn, spec, DAY, store)
    except RemovalRefused:
        removal = None
    assert _count(conn, _ident(schema, "hist_20240309")) == 20, "rows of 2024-03-09 were deleted with 2024-03-10"
    if removal is not None:
        assert removal.rows == 20 and _count(conn, _ident(schema, "hist_20240310")) == 0


# ---- 3. a partition pending detach below the day's partition ---------------------------------------------------

def test_a_sub_partition_left_pending_detach_is_named_by_the_removal_not_called_an_unproven_archive(pg, conn, schema,
                                                                                                 store):
    """The day was archived (20 rows); then a DETACH PARTITION ... CONCURRENTLY of one of its hash partitions
    (``ev_20240310_1`` from ``ev_20240310``) was interrupted, leaving it pending detach: the table no longer reads
    its 12 rows. For the day's own partition pending detach the removal refuses naming it and the FINALIZE that
    ends it (test_mends), and the archive run refuses this very layout that way. Was: the removal only looks at
    the parent's direct children, so it proves the archive against a source that lost 12 rows and refuses with
    "its archive is not proven: ... 8 rows against 20", whose natural remedy (archive the day again with
    overwrite) only fails in turn. Should: refused (dry run and real run) naming the partition pending detach and
    the FINALIZE, like the archive; nothing removed, the manifest unchanged."""
    from archive_pipeline_tests.test_mends import _interrupted_detach

    ev = _sub_partitioned(conn, schema)
    spec = _spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    _interrupted_detach(pg, conn, f"{schema}.ev_20240310", f"{schema}.ev_20240310_1")
    before = store.get_verified_bytes(f"{key}.manifest.json")
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused) as caught:
            remove_day(conn, spec, DAY, store, dry_run=dry_run)
        assert f"{schema}.ev_20240310_1 is pending detach" in str(caught.value), caught.value
        assert "FINALIZE" in str(caught.value)
    assert (store.get_verified_bytes(f"{key}.manifest.json") or b'').rstrip() == before.rstrip()
    assert _count(conn, _ident(schema, "ev_20240310_1")) + _count(conn, ev) == 25


# ---- 4. re-running an archive of a removed day -----------------------------------------------------------------

def test_an_overwrite_of_a_day_dropped_from_the_source_is_not_told_to_set_overwrite(conn, schema, store):
    """The day's partition was dropped by retention (its rows exist only in the archive now). An operator re-runs
    the day's archive with overwrite (a backfill over a range with 'overwrite', say). The run must fail (a removed
    day is never archived again from its emptied source, overwrite or not), saying so. Was: DayRemovedError
    "... and the source now has other rows (0); archiving them without overwrite would replace the only copy ...
    to archive the rows there are now, set overwrite" although overwrite was set and the source has no rows:
    the remedy sends the operator round in a circle. Should: a message that says the source no longer holds
    the day (none of "other rows (0)" and "set overwrite"), naming when it was removed and where the archive is."""
    from archive_pipeline.core.archive import DayRemovedError

    ev = _sub_partitioned(conn, schema)
    spec = _spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    assert remove_day(conn, spec, DAY, store).rows == 20 and _count(conn, ev) == 5
    with pytest.raises(DayRemovedError, match="was removed from the source") as caught:
        archive_partition(conn, spec, DAY, store, overwrite=True)
    text = str(caught.value)
    assert "set overwrite" not in text and "other rows (0)" not in text, text
    assert load_manifest(store, key)["removed"]["state"] == "done"
