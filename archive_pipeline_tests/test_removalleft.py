"""Letting the source go: what PostgreSQL or the store would refuse only after the proof (a day table that others
inherit from, a DELETE a publication forbids), a pending mark the store did not keep, and the source changing
or the day sitting at an edge between proof and removal. Real PostgreSQL and S3."""

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


def _count(conn, table: sql.Identifier) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


def _naming_spec(schema: str, action: str) -> TableSpec:
    return TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                     retention={"keep_days": 1, "action": action})


def _refused_everywhere(conn, spec, store, key: str, pattern: str) -> None:
    """The dry run and the real run refuse alike, naming table and day; no mark is left behind."""
    before = store.get_verified_bytes(f"{key}.manifest.json")
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused, match=pattern) as caught:
            remove_day(conn, spec, DAY, store, dry_run=dry_run)
        assert (caught.value.table, caught.value.day) == (spec.name, DAY.isoformat()), dry_run
    assert store.get_verified_bytes(f"{key}.manifest.json") == before


# ---- 1. what keeps a naming-mode day table from being dropped ------------------------------------------

def test_a_day_table_others_inherit_from_or_use_the_row_type_of_is_refused_up_front(conn, schema, store):
    """Naming mode, action drop: ``log_20240310`` has a table inheriting from it (``log_20240310_late``), and a
    function takes its row type. Was: the dry run said "would drop"; the real run, after the whole proof, failed
    with PostgreSQL's "cannot drop table ... because other objects depend on it". Now both refuse up front, naming
    the table, the day, each dependent and the remedy; every row stays."""
    log, day_table, late = _ident(schema, "log"), _ident(schema, "log_20240310"), _ident(schema, "log_20240310_late")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(late, day_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(day_table))
    spec = _naming_spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    _refused_everywhere(conn, spec, store, key, f"{schema}.log_20240310 cannot be dropped while other objects depend "
                        f"on it \\(table {schema}.log_20240310_late inheriting from it\\).*'detach'")
    conn.execute(sql.SQL("ALTER TABLE {} NO INHERIT {}").format(late, day_table))
    conn.execute(sql.SQL("CREATE FUNCTION {}(r {}) RETURNS int LANGUAGE sql AS 'SELECT r.id'").format(
        _ident(schema, "first_id"), day_table))
    _refused_everywhere(conn, spec, store, key, f"function {schema}.first_id\\({schema}.log_20240310\\)")
    conn.execute(sql.SQL("DROP FUNCTION {}").format(_ident(schema, "first_id")))
    seq, other = _ident(schema, "log_20240310_seq"), _ident(schema, "other")  # its own default is no dependent
    conn.execute(sql.SQL("CREATE SEQUENCE {} OWNED BY {}.id").format(seq, day_table))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER id SET DEFAULT nextval({})").format(day_table, sql.Literal(
        seq.as_string(conn))))
    conn.execute(sql.SQL("CREATE TABLE {} (n int DEFAULT nextval({}))").format(other, sql.Literal(seq.as_string(conn))))
    _refused_everywhere(conn, spec, store, key, f"default value for column n of table {schema}.other \\(its "
                        f"sequence {schema}.log_20240310_seq\\)\\)")
    assert _count(conn, log) == 10
    conn.execute(sql.SQL("DROP TABLE {}").format(other))
    assert remove_day(conn, spec, DAY, store).rows == 10 and _count(conn, log) == 0


# ---- 2. a DELETE a publication forbids -----------------------------------------------------------------

@pytest.fixture
def publication(conn, schema):
    name = f"{schema}_pub"
    yield name
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(_ident(name)))


@pytest.mark.parametrize("published", ["the table", "all tables", "its schema", "the parent, via its root"])
def test_delete_from_a_published_table_without_replica_identity_is_refused_up_front(conn, schema, store, publication,
                                                                                     published):
    """Action delete on a table a publication publishes deletes for (named, FOR ALL TABLES, FOR TABLES IN SCHEMA,
    or its partitioned parent's, publish_via_partition_root), with no replica identity (no primary key). Was: the
    dry run said "would delete"; the real run, after the whole proof, failed with PostgreSQL's "cannot delete
    from table ... because it does not have a replica identity and publishes deletes". Now both refuse up front,
    naming the relation, the publication and the remedy; with REPLICA IDENTITY FULL the day is removed."""
    ev, part = _ident(schema, "ev"), _ident(schema, "ev_20240310")
    declarative = published == "the parent, via its root"
    if declarative:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(ev))
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10+00') TO ('2024-03-11+00')"
                             ).format(part, ev))
    else:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(ev))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min' "
                         "FROM generate_series(1, 20) g").format(ev))
    target = {"the table": sql.SQL("FOR TABLE {}").format(ev), "all tables": sql.SQL("FOR ALL TABLES"),
              "its schema": sql.SQL("FOR TABLES IN SCHEMA {}").format(_ident(schema)),
              "the parent, via its root": sql.SQL("FOR TABLE {} WITH (publish_via_partition_root)").format(ev)}
    conn.execute(sql.SQL("CREATE PUBLICATION {} ").format(_ident(publication)) + target[published])
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, retention={"keep_days": 1,
                     "action": "delete"}, **({"partitioning": {"mode": "declarative"}} if declarative else {}))
    key = archive_partition(conn, spec, DAY, store).key
    relation = f"{schema}.ev_20240310" if declarative else f"{schema}.ev"
    _refused_everywhere(conn, spec, store, key, f"{relation} has no replica identity, and publication {publication} "
                        f"publishes its deletes. Give it one \\(ALTER TABLE ... REPLICA IDENTITY FULL")
    assert _count(conn, ev) == 20
    conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(part if declarative else ev))
    assert remove_day(conn, spec, DAY, store).rows == 20 and _count(conn, ev) == 0


def test_delete_goes_ahead_where_the_publication_does_not_publish_deletes_or_a_key_identifies_rows(conn, schema,
                                                                                                   store, publication):
    """Not refused: a publication of inserts and updates only, and then one of deletes on a table with a primary
    key (its default replica identity); a deferrable primary key identifies nothing (PostgreSQL refuses it)."""
    ev = _ident(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(ev))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min' "
                         "FROM generate_series(1, 20) g").format(ev))
    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update')").format(
        _ident(publication), ev))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY,
                     retention={"keep_days": 1, "action": "delete"})
    key = archive_partition(conn, spec, DAY, store).key
    assert remove_day(conn, spec, DAY, store, dry_run=True).rows == 20
    conn.execute(sql.SQL("ALTER PUBLICATION {} SET (publish = 'delete')").format(_ident(publication)))
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id) DEFERRABLE").format(ev))
    _refused_everywhere(conn, spec, store, key, "has no replica identity")
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT ev_pkey, ADD PRIMARY KEY (id)").format(ev))
    assert remove_day(conn, spec, DAY, store).rows == 20 and _count(conn, ev) == 0


# ---- 3. a pending mark the store did not keep ------------------------------------------------------------

@pytest.mark.parametrize("fault", ["lose", "flip_request_byte"])
def test_no_removal_on_a_pending_mark_that_does_not_read_back(conn, schema, store, s3, bucket, fault):
    """``verify_etags: false`` (stores whose ETags are not MD5s), and the pending mark's PUT answered 200 while the
    store kept nothing (``lose``) or kept other bytes (``flip_request_byte``). Was: the
    removal went on and dropped the day: with the mark not kept, the manifest still said the day was an ordinary
    archived one (an archive run could have replaced the only copy with an empty day had the process died before
    the "done" mark); with it damaged, the day's manifest was left unreadable and the removal failed "replaced
    meanwhile". Now the mark is read back before anything is removed: refused, retryable, every row and the
    proven manifest kept; the next removal goes ahead."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    log, day_table = _ident(schema, "log"), _ident(schema, "log_20240310")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(day_table))
    spec = _naming_spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    proven = store.get_verified_bytes(f"{key}.manifest.json")
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action=fault, times=1))
        lax = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE,
                      verify_etags=False)
        with pytest.raises(ArchiveError) as caught:
            remove_day(conn, spec, DAY, lax)
        assert isinstance(caught.value, RemovalRefused) and caught.value.retryable, caught.value
        assert "did not read back" in caught.value.message and "nothing was removed" in caught.value.message
        assert _count(conn, log) == 10
        assert store.get_verified_bytes(f"{key}.manifest.json") == proven
        assert remove_day(conn, spec, DAY, lax).rows == 10
    assert _count(conn, log) == 0 and load_manifest(store, key)["removed"]["state"] == "done"


@pytest.mark.parametrize("fault", ["lose", "flip_request_byte"])
def test_a_done_mark_that_does_not_read_back_leaves_the_removal_pending_and_the_next_run_completes_it(
        conn, schema, store, s3, bucket, fault):
    """``verify_etags: false``, and the "done" mark's PUT (after the COMMIT) answered 200 while the store kept nothing
    or damaged bytes. Was: the removal reported success; the manifest still said "pending" (lost) or could no longer
    be read at all (damaged), and every later removal of the day was refused as an untrusted manifest to "archive
    again (overwrite)" from the emptied source. Now: RemovalNotRecorded (retryable), the pending mark readable in
    the store, and the next run completes it."""
    from archive_pipeline.core.lifecycle import RemovalNotRecorded
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    log, day_table = _ident(schema, "log"), _ident(schema, "log_20240310")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(day_table))
    spec = _naming_spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action=fault, skip=1, times=1))
        lax = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE,
                      verify_etags=False)
        with pytest.raises(RemovalNotRecorded, match="did not read back as written") as caught:
            remove_day(conn, spec, DAY, lax)
        assert caught.value.retryable and _count(conn, log) == 0
        assert load_manifest(store, key)["removed"]["state"] == "pending"
        again = remove_day(conn, spec, DAY, lax)
    assert again.completed and again.rows == 10 and load_manifest(store, key)["removed"]["state"] == "done"


# ---- 4. hostile names, days at the edge ------------------------------------------------------------------

@pytest.mark.parametrize("action", ["drop", "detach", "delete"])
def test_a_naming_mode_day_table_with_quotes_percent_and_non_ascii_in_its_name_is_removed(conn, schema, store, action):
    """Naming mode, the parent ``Lög "x" 100%`` and its day table ``Lög "x" 100%_20240310``: a double quote, a
    percent sign (a placeholder to a driver that formats queries) and non-ASCII letters, for each action, dry
    run first; a published table without replica identity is refused naming it; the removal is done."""
    name = 'Lög "x" 100%'
    log, day_table = _ident(schema, name), _ident(schema, f"{name}_20240310")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(day_table))
    spec = TableSpec(name=f"{schema}.{name}", start_date=DAY, retention={"keep_days": 1, "action": action},
                     partitioning={"mode": "naming", "pattern": name.replace("%", "%%") + "_%Y%m%d"})
    key = archive_partition(conn, spec, DAY, store).key
    if action == "delete":
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(_ident(f"{schema}_pub"), day_table))
        try:
            _refused_everywhere(conn, spec, store, key, f'{schema}.Lög "x" 100%_20240310 has no replica identity')
        finally:
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(_ident(f"{schema}_pub")))
    assert remove_day(conn, spec, DAY, store, dry_run=True).rows == 10
    removal = remove_day(conn, spec, DAY, store)
    assert removal.rows == 10 and _count(conn, log) == 0
    assert load_manifest(store, key)["removed"]["state"] == "done"
    assert remove_day(conn, spec, DAY, store).already_removed
