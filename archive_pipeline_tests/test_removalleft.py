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
from archive_pipeline_tests.helpers import refused_everywhere, run_check_evaluations
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
    refused_everywhere(conn, spec, store, key, pattern, DAY)


# ---- 1. what keeps a naming-mode day table from being dropped ------------------------------------------

def test_a_day_table_others_inherit_from_or_use_the_row_type_of_is_refused_up_front(conn, schema, store):
    """Naming mode, action drop: ``log_20240310`` has a table inheriting from it (``log_20240310_late``) and a view
    over it; then a function takes its row type; then another table's default takes numbers from a sequence it
    owns. Was: the dry run said "would drop"; the real run, after the whole proof, failed with PostgreSQL's "cannot
    drop table ... because other objects depend on it" (the view alone was refused up front). Now both refuse up
    front, naming the table, the day, each dependent and the remedy; every row stays."""
    log, day_table, late = _ident(schema, "log"), _ident(schema, "log_20240310"), _ident(schema, "log_20240310_late")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(late, day_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(day_table))
    spec = _naming_spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(_ident(schema, "recent"), day_table))
    _refused_everywhere(conn, spec, store, key, f"{schema}.log_20240310 cannot be dropped while other objects depend "
                        f"on it \\(table {schema}.log_20240310_late inheriting from it; view or rule of "
                        f"{schema}.recent\\).*'detach'")
    conn.execute(sql.SQL("ALTER TABLE {} NO INHERIT {}").format(late, day_table))
    conn.execute(sql.SQL("DROP VIEW {}").format(_ident(schema, "recent")))
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

def _published_table(conn, schema: str, declarative: bool) -> TableSpec:
    """``ev`` without a primary key, 20 rows on DAY: a plain table, or partitioned with a partition for DAY, for
    the empty day before and for the day after."""
    ev = _ident(schema, "ev")
    if declarative:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(ev))
        for day in (DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)):
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                _ident(schema, f"ev_{day:%Y%m%d}"), ev, sql.Literal(f"{day} 00:00+00"),
                sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
    else:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(ev))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min' "
                         "FROM generate_series(1, 20) g").format(ev))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-09", retention={"keep_days": 1,
                     "action": "delete"}, **({"partitioning": {"mode": "declarative"}} if declarative else {}))


@pytest.mark.parametrize("declarative", [False, True])
def test_delete_from_a_published_table_without_replica_identity_is_refused_up_front(conn, schema, store, publication,
                                                                                     declarative):
    """Action delete on a table without replica identity (no primary key) whose deletes a publication publishes: by
    name, FOR ALL TABLES, FOR TABLES IN SCHEMA, or (a partition) its partitioned parent's WITH
    (publish_via_partition_root). Was: the dry run said "would delete"; the real run, after the whole proof, failed
    with PostgreSQL's "cannot delete from table ... because it does not have a replica identity and publishes
    deletes". Now both refuse up front, naming the relation, the publication and the remedy; with REPLICA
    IDENTITY FULL the day is removed (the next day's partition, without one, does not stand in the way). An empty
    day's partition is refused too: PostgreSQL refuses the DELETE of no row alike (was: "would delete")."""
    spec = _published_table(conn, schema, declarative)
    ev, pub = _ident(schema, "ev"), _ident(publication)
    key = archive_partition(conn, spec, DAY, store).key
    relation = _ident(schema, "ev_20240310") if declarative else ev
    published = [sql.SQL("FOR TABLE {} WITH (publish_via_partition_root)").format(ev)] if declarative else [
        sql.SQL("FOR TABLE {}").format(ev), sql.SQL("FOR ALL TABLES"),
        sql.SQL("FOR TABLES IN SCHEMA {}").format(_ident(schema))]
    for target in published:
        conn.execute(sql.SQL("CREATE PUBLICATION {} ").format(pub) + target)
        _refused_everywhere(conn, spec, store, key, f"{schema}.ev{'_20240310' if declarative else ''} has no "
                            f"replica identity, and "
                            f"publication {publication} publishes its deletes. Give it one \\(ALTER TABLE ... "
                            "REPLICA IDENTITY FULL")
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(pub))
    assert _count(conn, ev) == 20
    conn.execute(sql.SQL("CREATE PUBLICATION {} ").format(pub) + published[0])
    conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(relation))
    # (in declarative mode the next day's partition, still without one, is not the day's: not refused)
    assert remove_day(conn, spec, DAY, store).rows == 20 and _count(conn, ev) == 0
    if declarative:  # an empty day's partition is refused too: DELETE of no row fails on it all the same
        before = dt.date(2024, 3, 9)
        empty = archive_partition(conn, spec, before, store)
        assert empty.rows == 0
        with pytest.raises(RemovalRefused, match=f"{schema}.ev_20240309 has no replica identity"):
            remove_day(conn, spec, before, store, dry_run=True)


def test_delete_goes_ahead_where_the_publication_does_not_publish_deletes_or_a_key_identifies_rows(conn, schema,
                                                                                                   store, publication):
    """Not refused: a publication of inserts and updates only, and then one of deletes on a table with a primary
    key (its default replica identity); a deferrable primary key identifies nothing (PostgreSQL refuses it)."""
    spec = _published_table(conn, schema, False)
    ev = _ident(schema, "ev")
    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update')").format(
        _ident(publication), ev))
    key = archive_partition(conn, spec, DAY, store).key
    assert remove_day(conn, spec, DAY, store, dry_run=True).rows == 20
    conn.execute(sql.SQL("ALTER PUBLICATION {} SET (publish = 'delete')").format(_ident(publication)))
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id) DEFERRABLE").format(ev))
    _refused_everywhere(conn, spec, store, key, "has no replica identity")
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT ev_pkey, ADD PRIMARY KEY (id)").format(ev))
    assert remove_day(conn, spec, DAY, store).rows == 20 and _count(conn, ev) == 0


# ---- 3. a mark the store did not keep ----------------------------------------------------------------------

def _day_tables(conn, schema: str, *days: dt.date) -> sql.Identifier:
    """Naming mode: ``log`` and a day table of 10 rows inheriting from it for each of ``days``."""
    log = _ident(schema, "log")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    for day in days:
        day_table = _ident(schema, f"log_{day:%Y%m%d}")
        conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
        conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(day_table))
    return log


def _lax_store(proxy, bucket: str):
    """A store that checks no ETag (``verify_etags: false``), through ``proxy``."""
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store

    return S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE,
                   verify_etags=False)


def test_no_removal_on_a_pending_mark_that_does_not_read_back(conn, schema, store, s3, bucket):
    """``verify_etags: false`` (stores whose ETags are not MD5s), and the pending mark's PUT answered 200 while the
    store kept nothing (``lose``) or kept other bytes (``flip_request_byte``). Was: the removal went on and dropped
    the day: with the mark lost, the manifest still said the day was an ordinary archived one meanwhile (had the
    process died before the "done" mark, an archive run could have replaced the only copy with an empty day); with
    it damaged, the day's manifest was left unreadable and the removal failed "replaced meanwhile". Now the mark is
    read back before anything is removed: refused, retryable, every row and the proven manifest kept (a damaged
    mark replaced by it); the next removal goes ahead."""
    from archive_pipeline.core.store import CorruptedWrite
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    log = _day_tables(conn, schema, DAY)
    spec = _naming_spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    proven = store.get_verified_bytes(f"{key}.manifest.json")
    with FaultProxy(s3.endpoint_url) as proxy:
        lax = _lax_store(proxy, bucket)
        for fault in ("lose", "flip_request_byte"):
            # every copy put_bytes sends (corrupt_attempts, 3) lost or damaged; the take-back then lands
            proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action=fault, times=3))
            with pytest.raises(CorruptedWrite, match="did not read back as written") as caught:
                remove_day(conn, spec, DAY, lax)
            assert caught.value.retryable and _count(conn, log) == 10, fault
            assert (store.get_verified_bytes(f"{key}.manifest.json") or b'').rstrip() == proven.rstrip(), fault
        assert remove_day(conn, spec, DAY, lax).rows == 10
    assert _count(conn, log) == 0 and load_manifest(store, key)["removed"]["state"] == "done"


def test_a_done_mark_that_does_not_read_back_leaves_the_removal_pending_and_the_next_run_completes_it(
        conn, schema, store, s3, bucket):
    """``verify_etags: false``, and the "done" mark's PUT (after the COMMIT) answered 200 while the store kept nothing
    or damaged bytes. Was: the removal reported success; the manifest still said "pending" (lost) or could no longer
    be read at all (damaged), and every later removal of the day was refused as an untrusted manifest to "archive
    again (overwrite)" from the emptied source. Now: RemovalNotRecorded (retryable), the pending mark readable in
    the store, and the next run completes it."""
    from archive_pipeline.core.lifecycle import RemovalNotRecorded
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    days = {"lose": DAY, "flip_request_byte": DAY + dt.timedelta(days=1)}
    log = _day_tables(conn, schema, *days.values())
    spec = _naming_spec(schema, "drop")
    keys = {day: archive_partition(conn, spec, day, store).key for day in days.values()}
    with FaultProxy(s3.endpoint_url) as proxy:
        lax = _lax_store(proxy, bucket)
        for fault, day in days.items():
            proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action=fault, skip=1, times=3))
            with pytest.raises(RemovalNotRecorded, match="did not read back as written") as caught:
                remove_day(conn, spec, day, lax)
            assert caught.value.retryable, fault
            assert load_manifest(store, keys[day])["removed"]["state"] == "pending", fault
            again = remove_day(conn, spec, day, lax)
            assert again.completed and again.rows == 10, fault
            assert load_manifest(store, keys[day])["removed"]["state"] == "done", fault
    assert _count(conn, log) == 0


# ---- 4. hostile names, privileges ----------------------------------------------------------------------------

def test_a_naming_mode_day_table_with_quotes_percent_and_non_ascii_in_its_name(conn, schema, store, publication):
    """Naming mode, the parent ``Lög "x" 100%`` and its day table ``Lög "x" 100%_20240310``: a double quote, a
    percent sign (a placeholder to a driver that formats queries) and non-ASCII letters. A delete from it while
    published without replica identity is refused naming it; drop is refused while a table inherits from it;
    detach removes it."""
    name = 'Lög "x" 100%'
    log, day_table = _ident(schema, name), _ident(schema, f"{name}_20240310")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(_ident(schema, f"{name}_late"), day_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(day_table))
    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(_ident(publication), day_table))
    specs = {action: TableSpec(name=f"{schema}.{name}", start_date=DAY, retention={"keep_days": 1, "action": action},
                               partitioning={"mode": "naming", "pattern": name.replace("%", "%%") + "_%Y%m%d"})
             for action in ("delete", "drop", "detach")}
    key = archive_partition(conn, specs["delete"], DAY, store).key
    _refused_everywhere(conn, specs["delete"], store, key, f'{schema}.Lög "x" 100%_20240310 has no replica identity')
    _refused_everywhere(conn, specs["drop"], store, key, f'table {schema}."Lög ""x"" 100%_late" inheriting from it')
    assert remove_day(conn, specs["detach"], DAY, store, dry_run=True).rows == 10
    assert remove_day(conn, specs["detach"], DAY, store).rows == 10 and _count(conn, log) == 0
    assert load_manifest(store, key)["removed"]["state"] == "done"
    assert remove_day(conn, specs["detach"], DAY, store).already_removed


def test_a_removal_the_role_may_not_carry_out_is_refused_up_front(pg, conn, schema, store):
    """A role that may read and delete the table's rows but does not own it: detach and drop need the owner (of the
    parent too, for DETACH PARTITION), delete needs the DELETE privilege. Was: the dry run said "would detach" and
    "would delete"; the real run failed after the whole proof with PostgreSQL's "must be owner of table ev" or
    "permission denied". Now both refuse up front, naming the relation, its owner or the privilege, and the
    remedy; granted it, the role removes the day."""
    import psycopg

    role = f"{schema}_remover"
    ev, part = _ident(schema, "ev"), _ident(schema, "ev_20240310")
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(_ident(role)))
    try:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(ev))
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10+00') TO ('2024-03-11+00')"
                             ).format(part, ev))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g").format(ev))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(_ident(schema), _ident(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {}, {} TO {}").format(ev, part, _ident(role)))
        specs = {action: TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY,
                                   partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": action})
                 for action in ("detach", "delete")}
        key = archive_partition(conn, specs["detach"], DAY, store).key
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as remover:
            _refused_everywhere(remover, specs["delete"], store, key,
                                f"permission denied: the role {role} may not DELETE from {schema}.ev; to fix: GRANT "
                                f"DELETE ON {schema}.ev TO {role}")
            _refused_everywhere(remover, specs["detach"], store, key,
                                f"only the owner of {schema}.ev \\(postgres\\) may detach it, and the role {role} is "
                                f"not a member of postgres; to fix: remove the day as its owner, postgres, or GRANT postgres TO {role}")
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(ev, _ident(role)))
            _refused_everywhere(remover, specs["detach"], store, key, f"only the owner of {schema}.ev_20240310")
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(part, _ident(role)))
            assert remove_day(remover, specs["detach"], DAY, store).rows == 10 and _count(conn, ev) == 0
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(_ident(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(_ident(role)))


def test_what_the_removal_would_refuse_anyway_is_refused_before_the_proof(conn, schema, store, s3_client, bucket):
    """A day the removal cannot carry out (its day table has a table inheriting from it) whose archive is also
    damaged. Was: the proof ran first (the whole download and load of a large day) and the day was refused as
    "not proven"; fixing the archive only led to the second refusal. Now the removal, and its dry run, refuse
    what they would refuse whatever the archive before proving it."""
    log = _day_tables(conn, schema, DAY)
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(_ident(schema, "log_20240310_late"),
                                                                    _ident(schema, "log_20240310")))
    spec = _naming_spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"damaged")
    _refused_everywhere(conn, spec, store, key, "cannot be dropped while other objects depend on it")
    assert _count(conn, log) == 10


def test_the_retention_asset_refuses_what_the_removal_would_refuse_before_proving(conn, schema, archive_env, store,
                                                                                    s3_client):
    """The Dagster retention asset proves the archive itself before it removes. Was: for a day whose table has
    a table inheriting from it, the whole proof ran (the check ``archive_proven`` recorded, here failed on a
    damaged object) and only then was the day refused. Now the run fails on the refusal, naming the dependent,
    before any proof: no check evaluation is recorded either way, and nothing is removed."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions

    log = _day_tables(conn, schema, DAY)
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(_ident(schema, "log_20240310_late"),
                                                                    _ident(schema, "log_20240310")))
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.log", "start_date": DAY.isoformat(), "retention": {"keep_days": 1, "action": "drop"},
        "partitioning": {"mode": "naming", "pattern": "log_%Y%m%d"}}]})
    defs = build_definitions(config)
    key = archive_partition(conn, config.tables[0], DAY, store).key  # the bucket and prefix the location uses
    s3_client.put_object(Bucket=archive_env, Key=key, Body=b"damaged")
    with instance_for_test() as instance:
        failed = defs.resolve_job_def(f"Remove_{schema}_log").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        assert not failed.success and run_check_evaluations(instance, failed.run_id) == []
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"table {schema}.log_20240310_late inheriting from it" in str(failure.event_specific_data.error)
    assert _count(conn, log) == 10
