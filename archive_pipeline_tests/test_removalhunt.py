"""Letting the source go, hunted as a hostile environment would: the retention window in zones away from
UTC, partition layouts the removal meets in the wild, faults between its steps. Real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import RemovalRefused, due_days, remove_day
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


# ---- the retention window ----------------------------------------------------------------------------

@pytest.mark.parametrize(("zone", "utc", "last_due"), [
    ("America/Los_Angeles", "2024-03-12T02:00", "2024-03-09"),  # 2024-03-11 19:00 there
    ("Pacific/Pago_Pago", "2024-03-12T02:00", "2024-03-09"),  # 2024-03-11 15:00 there
    ("UTC", "2024-03-12T02:00", "2024-03-10"),
    ("Pacific/Kiritimati", "2024-03-11T20:00", "2024-03-10"),  # 2024-03-12 10:00 there
])
def test_keep_days_counts_from_today_in_the_tables_zone_not_the_utc_date(zone, utc, last_due):
    """At 02:00 UTC on 2024-03-12 it is still 2024-03-11 in Los Angeles (19:00) and Pago Pago (15:00). With
    keep_days 1 the day kept there is 2024-03-10, so 2024-03-09 is the last due. Was: the UTC date taken as
    the local today, so 2024-03-10 was due (and removed by the asset or `prune`) 19 and 15 hours after it
    ended, a day inside the window; and east of UTC (Kiritimati, 14 hours ahead) a day was kept longer
    than asked."""
    spec = TableSpec(name="a.b", day_column="d", start_date="2024-03-01", timezone=zone,
                     retention={"keep_days": 1, "action": "delete"})
    now = dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC)
    assert due_days(spec, now)[-1].isoformat() == last_due
    local_today = now.astimezone(__import__("zoneinfo").ZoneInfo(zone)).date()
    assert due_days(spec, local_today) == due_days(spec, now)  # a date is the table's own today
    with pytest.raises(ValueError, match="aware"):
        due_days(spec, now.replace(tzinfo=None))


# ---- partition layouts -------------------------------------------------------------------------------

def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _fill(conn, table: sql.Identifier, day: str, rows: int, first: int = 1) -> None:
    conn.execute(sql.SQL("INSERT INTO {} (id, at, v) SELECT g, {}::timestamptz + g * interval '1 min', 'r' || g "
                         "FROM generate_series({}, {}) g").format(table, sql.Literal(f"{day} 00:00+00"),
                                                                  sql.Literal(first), sql.Literal(first + rows - 1)))


def _count(conn, table: sql.Identifier) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


def _ev_spec(schema: str, action: str, name: str = "ev") -> TableSpec:
    return TableSpec(name=f"{schema}.{name}", day_column="at", start_date=DAY, partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": action})


@pytest.fixture
def other_schema(conn, schema):
    name = f"{schema}_parts"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(_ident(name)))
    yield name
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(_ident(name)))


@pytest.mark.parametrize("action", ["detach", "drop"])
def test_a_day_partition_in_another_schema_than_its_parent_is_removed_and_restored(conn, schema, other_schema, store,
                                                                                   action):
    """Partitions kept in a schema of their own (CREATE TABLE parts.ev_20240310 PARTITION OF public.ev). Was:
    detach and drop looked the day's partition up in the parent's schema and failed, dry run included, with
    "table '<schema>.ev_20240310' does not exist ... check the table's name in the YAML configuration",
    though the table's name was right; the archive recorded the partition under the wrong schema too, so a
    restore into the original table re-created it there."""
    from archive_pipeline.core.restore import restore_day

    ev = _ident(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text) PARTITION BY RANGE (at)").format(ev))
    for day, lo, hi in (("20240310", "2024-03-10", "2024-03-11"), ("20240311", "2024-03-11", "2024-03-12")):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            _ident(other_schema, f"ev_{day}"), ev, sql.Literal(f"{lo} 00:00+00"), sql.Literal(f"{hi} 00:00+00")))
    _fill(conn, ev, "2024-03-10", 40)
    _fill(conn, ev, "2024-03-11", 5, first=100)
    spec = _ev_spec(schema, action)
    result = archive_partition(conn, spec, DAY, store)
    child = f"{other_schema}.ev_20240310"
    assert load_manifest(store, result.key)["table_definition"]["partition"]["child"] == child
    assert remove_day(conn, spec, DAY, store, dry_run=True).relation == child
    removal = remove_day(conn, spec, DAY, store)
    assert (removal.relation, removal.rows) == (child, 40)
    assert _count(conn, ev) == 5
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (_ident(other_schema, "ev_20240310").as_string(conn),)
                          ).fetchone()[0]
    assert exists is (action == "detach")
    assert load_manifest(store, result.key)["removed"]["state"] == "done"
    if action == "drop":  # the dropped partition comes back where it was, with its rows
        assert restore_day(conn, store, spec, DAY, into="original").rows == 40
        assert _count(conn, _ident(other_schema, "ev_20240310")) == 40 and _count(conn, ev) == 45


def test_what_keeps_a_partition_from_being_detached_or_dropped_refuses_before_anything_naming_it(conn, schema,
                                                                                                 store):
    """Three days whose partition PostgreSQL will not let go: 03-10 a foreign table (postgres_fdw), 03-11 under a
    view and another table's foreign key, 03-12 with a row another table references through a foreign key to
    the parent. Each is refused as a RemovalRefused naming the day, the dry run alike where it can know; rows,
    partitions and the manifest stay as they were. Was: the dry run said "would drop" for 03-10 and 03-11; the
    real runs failed with the database's error after the whole proof: "not supported for foreign tables ...
    check the table definition; if it looks right, report it", "other objects depend on it", and for 03-12
    a restore's remedy ("load into a table without that constraint ... while the day is restored")."""
    ev, keyed = _ident(schema, "ev"), _ident(schema, "keyed")  # (a foreign partition's parent has no unique key)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text) PARTITION BY RANGE (at)").format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text, PRIMARY KEY (id, at)) "
                         "PARTITION BY RANGE (at)").format(keyed))
    server = _ident(f"{schema}_loop")
    conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS postgres_fdw SCHEMA {}").format(_ident(schema)))
    conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {}, port {}, dbname {})"
                         ).format(server, sql.Literal(conn.info.host), sql.Literal(str(conn.info.port)),
                                  sql.Literal(conn.info.dbname)))
    conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS (user {})").format(
        server, sql.Literal(conn.info.user)))
    remote = _ident(schema, "remote_20240310")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text)").format(remote))
    _fill(conn, remote, "2024-03-10", 10)
    conn.execute(sql.SQL("CREATE FOREIGN TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10+00') TO "
                         "('2024-03-11+00') SERVER {} OPTIONS (schema_name {}, table_name 'remote_20240310')").format(
        _ident(schema, "ev_20240310"), ev, server, sql.Literal(schema)))
    for name, table, day, hi in (("ev", ev, "2024-03-11", "2024-03-12"), ("keyed", keyed, "2024-03-12", "2024-03-13")):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            _ident(schema, f"{name}_{day.replace('-', '')}"), table,
            sql.Literal(f"{day} 00:00+00"), sql.Literal(f"{hi} 00:00+00")))
        _fill(conn, table, day, 10)
    conn.execute(sql.SQL("ALTER TABLE {} ADD UNIQUE (id)").format(_ident(schema, "ev_20240311")))
    conn.execute(sql.SQL("CREATE TABLE {} (r int REFERENCES {} (id))").format(_ident(schema, "child_refs"),
                                                                              _ident(schema, "ev_20240311")))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(_ident(schema, "recent"),
                                                                     _ident(schema, "ev_20240311")))
    conn.execute(sql.SQL("CREATE TABLE {} (r int, rat timestamptz, FOREIGN KEY (r, rat) REFERENCES {} (id, at))"
                         ).format(_ident(schema, "parent_refs"), keyed))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3, '2024-03-12 00:03+00')").format(_ident(schema, "parent_refs")))
    specs = {name: TableSpec(name=f"{schema}.{name}", day_column="at", start_date=DAY,
                             partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})
             for name in ("ev", "keyed")}
    expected = {
        dt.date(2024, 3, 10): ("is a foreign table .* use retention action 'delete'", True),
        dt.date(2024, 3, 11): (f"cannot be dropped while other objects depend on it \\(foreign key child_refs_r_fkey "
                               f"of {schema}.child_refs; view or rule of {schema}.recent\\)", True),
        # (a key to the partitioned parent: refused up front since hunt16 vh, by the dry run too)
        dt.date(2024, 3, 12): (f"cannot be dropped while other objects depend on it \\(foreign key parent_refs_r_rat_fkey "
                               f"of {schema}.parent_refs\\)", True),
    }
    for day, (pattern, *dry_knows) in ((d, e if isinstance(e, tuple) else (e,)) for d, e in expected.items()):
        spec = specs["keyed" if day == dt.date(2024, 3, 12) else "ev"]
        result = archive_partition(conn, spec, day, store)
        before = store.get_verified_bytes(result.manifest_key)
        if dry_knows:
            with pytest.raises(RemovalRefused, match=pattern):
                remove_day(conn, spec, day, store, dry_run=True)
        with pytest.raises(RemovalRefused, match=pattern) as caught:
            remove_day(conn, spec, day, store)
        assert (caught.value.table, caught.value.day) == (spec.name, day.isoformat())
        assert (store.get_verified_bytes(result.manifest_key) or b'').rstrip() == before.rstrip(), day  # no mark left behind
    assert (_count(conn, ev), _count(conn, keyed)) == (20, 10)
    conn.execute(sql.SQL("DROP SERVER {} CASCADE").format(server))


@pytest.mark.parametrize("layout", ["partition", "inheritance"])
def test_delete_never_cascades_into_other_tables_through_a_key_on_one_partition(conn, schema, store, layout):
    """Another table's foreign key references one of the table's partitions (or, in column mode, a table inheriting
    from it), ON DELETE CASCADE. Was: only keys on the table itself were refused, so the removal's DELETE FROM the
    table deleted the day's rows and PostgreSQL cascaded into the other table: its 5 rows, never archived, were
    gone. Now refused before anything (the dry run alike), naming the key; every row stays."""
    ev, part = _ident(schema, "ev"), _ident(schema, "ev_20240310")
    if layout == "partition":
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text) PARTITION BY RANGE (at)").format(ev))
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10+00') TO ('2024-03-11+00')"
                             ).format(part, ev))
        spec = _ev_spec(schema, "delete")
    else:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text)").format(ev))
        conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(part, ev))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY,
                         retention={"keep_days": 1, "action": "delete"})
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(part))
    _fill(conn, part, "2024-03-10", 20)
    notes = _ident(schema, "notes")
    conn.execute(sql.SQL("CREATE TABLE {} (event int REFERENCES {} (id) ON DELETE CASCADE, note text)").format(
        notes, part))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'kept nowhere else' FROM generate_series(1, 5) g").format(notes))
    result = archive_partition(conn, spec, DAY, store)
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused, match=r"foreign keys \['notes_event_fkey'\] reference the table"):
            remove_day(conn, spec, DAY, store, dry_run=dry_run)
    assert (_count(conn, ev), _count(conn, notes)) == (20, 5)
    assert "removed" not in load_manifest(store, result.key)


# ---- the pending mark ----------------------------------------------------------------------------------

def _forge_pending(store, key: str, **mark) -> None:
    """Turn the day's manifest into one carrying a pending mark with these fields (what a removal that did not
    finish on some cluster left), as a consistent manifest (its checksum recomputed)."""
    from archive_pipeline.core.manifest import encode_manifest

    manifest = load_manifest(store, key)
    removed = {**(manifest.get("removed") or {"at": "2024-03-12T00:00:00+00:00", "action": "drop", "by": "test",
                                               "relation": "?"}), "state": "pending", **mark}
    removed.pop("rows", None)
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"} | {"removed": removed}
    store.put_bytes(f"{key}.manifest.json", encode_manifest(body), "application/json")


def _aborted_xid(pg) -> str:
    import psycopg

    with psycopg.connect(pg.dsn) as other:
        xid = other.execute("SELECT txid_current()").fetchone()[0]
        other.rollback()
    return str(xid)


def test_a_pending_mark_from_another_cluster_is_settled_by_the_source_not_by_its_transaction_number(pg, conn, schema,
                                                                                                    store):
    """The database moved to another cluster (a dump restored, a logical migration) while a removal's mark was
    pending. Its transaction number means nothing here: it may name an unrelated transaction of this cluster.
    Here it names a rolled-back one, on both sides of the truth:
    - the removal had committed (rows gone): was "taken back" (the manifest unmarked, the emptied day an
      ordinary archived day again, which an overwrite would replace with nothing); now completed, by the source;
    - the removal had not committed (rows all there): taken back, as it should be, by the source too.
    The mark now records the cluster's system identifier, and a different one sends the decision to the source."""
    ev = _ident(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text) PARTITION BY RANGE (at)").format(ev))
    for day, hi in (("2024-03-10", "2024-03-11"), ("2024-03-11", "2024-03-12")):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            _ident(schema, f"ev_{day.replace('-', '')}"), ev, sql.Literal(f"{day} 00:00+00"),
            sql.Literal(f"{hi} 00:00+00")))
        _fill(conn, ev, day, 20)
    spec = _ev_spec(schema, "drop")
    gone, kept = DAY, DAY + dt.timedelta(days=1)
    gone_key = archive_partition(conn, spec, gone, store).key
    kept_key = archive_partition(conn, spec, kept, store).key
    remove_day(conn, spec, gone, store)
    here = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]
    elsewhere = str(int(here) + 1)
    _forge_pending(store, gone_key, xid=_aborted_xid(pg), system=elsewhere)
    _forge_pending(store, kept_key, xid=_aborted_xid(pg), system=elsewhere)
    completed = remove_day(conn, spec, gone, store)
    assert completed.completed and completed.rows == 20
    mark = load_manifest(store, gone_key)["removed"]
    assert mark["state"] == "done" and "another cluster" in mark["settled_because"], mark
    assert "no rows of the day left" in mark["settled_because"]
    # the day still in the source: taken back, proven and removed from scratch
    again = remove_day(conn, spec, kept, store)
    assert not again.completed and again.rows == 20 and _count(conn, ev) == 0
    assert load_manifest(store, kept_key)["removed"]["state"] == "done"
    assert load_manifest(store, kept_key)["removed"]["system"] == here  # what a mark records now
