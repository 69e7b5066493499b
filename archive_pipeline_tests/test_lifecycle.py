"""Archive -> prove -> let go, on real PostgreSQL and S3: removal only of proven, unchanged days."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import DayRemovedError, archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import RemovalRefused, due_days, remove_day
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline.core.verify import deep_verify, load_manifest

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]


def children(conn, schema: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p "
        "ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace WHERE n.nspname = %s "
        "ORDER BY 1", (schema,))]


def table_exists(conn, schema: str, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, name).as_string(conn),)
                        ).fetchone()[0]


@pytest.fixture
def events(conn, schema):
    create_sample_events(conn, DAYS, rows_per_day=300, schema=schema)
    return schema


def spec_for(schema: str, action: str, **extra) -> TableSpec:
    return TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAYS[0],
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": action}, **extra)


@pytest.mark.parametrize("action", ["detach", "drop", "delete"])
def test_declarative_day_removed_only_after_proof(conn, events, store, action):
    spec = spec_for(events, action)
    archive_partition(conn, spec, DAYS[0], store)
    planned = remove_day(conn, spec, DAYS[0], store, dry_run=True)
    assert planned.dry_run and planned.rows == 300 and table_exists(conn, events, "events_20240310")
    done = remove_day(conn, spec, DAYS[0], store, removed_by="test")
    assert (done.rows, done.action, done.dry_run) == (300, action, False)
    count = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at < '2024-03-11+00'").format(
        sql.Identifier(events, "events"))).fetchone()[0]
    assert count == 0
    assert ("events_20240310" in children(conn, events)) is (action == "delete")
    assert table_exists(conn, events, "events_20240310") is (action != "drop")
    manifest = load_manifest(store, f"archive/{events}.events/2024/03/2024-03-10.jsonl.zst")
    assert manifest["removed"]["state"] == "done" and manifest["removed"]["action"] == action
    # Never archived again from the emptied source, overwrite or not; the archive stays.
    for overwrite in (False, True):
        with pytest.raises(DayRemovedError, match="was removed from the source"):
            archive_partition(conn, spec, DAYS[0], store, overwrite=overwrite)
    assert load_manifest(store, f"archive/{events}.events/2024/03/2024-03-10.jsonl.zst")["rows"] == 300
    assert remove_day(conn, spec, DAYS[0], store).already_removed
    assert table_exists(conn, events, "events_20240311")  # the neighbour is untouched


def test_a_late_row_between_proof_and_removal_stops_it(conn, events, store):
    spec = spec_for(events, "drop")
    archive_partition(conn, spec, DAYS[0], store)
    assert deep_verify(conn, store, spec, DAYS[0]) == []
    conn.execute(sql.SQL("INSERT INTO {} (id, created_at, user_id, event_type) VALUES "
                         "(999999, '2024-03-10 23:00+00', 1, 'late')").format(sql.Identifier(events, "events")))
    with pytest.raises(RemovalRefused, match="rows changed since they were archived"):
        remove_day(conn, spec, DAYS[0], store, proven=True)
    assert table_exists(conn, events, "events_20240310")
    manifest = load_manifest(store, f"archive/{events}.events/2024/03/2024-03-10.jsonl.zst")
    assert "removed" not in manifest  # the pending mark was taken back


def test_a_failed_proof_stops_removal(conn, events, store, s3_client, bucket):
    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAYS[0], store)
    s3_client.put_object(Bucket=bucket, Key=result.key, Body=b"damaged")
    with pytest.raises(RemovalRefused, match="not proven: .* is damaged: the store holds 7 bytes"):
        remove_day(conn, spec, DAYS[0], store)
    assert table_exists(conn, events, "events_20240310")


def test_column_and_naming_tables(conn, schema, store):
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(sql.Identifier(schema, "plain")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, DATE '2024-03-10' + (g % 2) FROM generate_series(1, 1000) g"
                         ).format(sql.Identifier(schema, "plain")))
    plain = TableSpec(name=f"{schema}.plain", day_column="at", start_date=DAYS[0],
                      retention={"keep_days": 1, "action": "delete", "batch_rows": 100})
    archive_partition(conn, plain, DAYS[0], store)
    assert remove_day(conn, plain, DAYS[0], store).rows == 500
    assert conn.execute(sql.SQL("SELECT count(*), min(at) FROM {}").format(sql.Identifier(schema, "plain"))
                        ).fetchone() == (500, DAYS[1])
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(schema, "log_20240310")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(sql.Identifier(schema, "log_20240310")))
    legacy = TableSpec(name=f"{schema}.log", start_date=DAYS[0], partitioning={"mode": "naming",
                       "pattern": "log_%Y%m%d"}, retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, legacy, DAYS[0], store)
    assert remove_day(conn, legacy, DAYS[0], store).rows == 10
    assert not table_exists(conn, schema, "log_20240310")


def test_retention_window_and_config_rules():
    spec = TableSpec(name="a.b", day_column="d", start_date="2024-03-01", retention={"keep_days": 3, "action": "delete"})
    assert due_days(spec, dt.date(2024, 3, 10)) == [dt.date(2024, 3, d) for d in range(1, 7)]
    with pytest.raises(ValueError, match="use action 'delete'"):
        TableSpec(name="a.b", day_column="d", start_date="2024-03-01", retention={"keep_days": 3, "action": "drop"})


def test_removal_in_dagster_is_blocked_by_its_proof_and_shows_what_was_removed(conn, events, archive_env,
                                                                                s3_client):
    from dagster import AssetKey, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions

    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{events}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]})
    defs = build_definitions(config)
    removal_key = AssetKey(["source_removed", events, "events"])
    with instance_for_test() as instance:
        archive = defs.resolve_job_def(f"archive_{events}_events")
        remove = defs.resolve_job_def(f"remove_{events}_events")
        for day in DAYS:
            assert archive.execute_in_process(partition_key=day.isoformat(), instance=instance).success
        # A damaged archive: the proof fails, the check says so, nothing is removed.
        key = f"archive/{events}.events/2024/03/2024-03-11.jsonl.zst"
        s3_client.put_object(Bucket=archive_env, Key=key, Body=b"damaged")
        failed = remove.execute_in_process(partition_key="2024-03-11", instance=instance, raise_on_error=False)
        assert not failed.success
        [evaluation] = failed.get_asset_check_evaluations()
        assert not evaluation.passed and "is damaged: the store holds 7 bytes" in evaluation.description
        assert evaluation.partition == "2024-03-11"
        assert table_exists(conn, events, "events_20240311")
        # A dry run proves and removes nothing.
        dry = remove.execute_in_process(partition_key="2024-03-10", instance=instance, run_config={
            "ops": {removal_key.to_python_identifier(): {"config": {"dry_run": True}}}})
        assert dry.success and dry.get_asset_check_evaluations()[0].passed
        assert table_exists(conn, events, "events_20240310")
        done = remove.execute_in_process(partition_key="2024-03-10", instance=instance)
        assert done.success and not table_exists(conn, events, "events_20240310")
        [materialization] = done.asset_materializations_for_node(removal_key.to_python_identifier())
        meta = {k: v.value for k, v in materialization.metadata.items()}
        assert (meta["action"], meta["dagster/row_count"], meta["run_id"]) == ("drop", 300, done.run_id)
        assert instance.get_materialized_partitions(removal_key) == {"2024-03-10"}
        # A backfill with overwrite over the removed day leaves its archive untouched.
        again = archive.execute_in_process(partition_key="2024-03-10", instance=instance, raise_on_error=False,
                                           run_config={"ops": {AssetKey(["archive", events, "events"])
                                                               .to_python_identifier(): {"config": {"overwrite": True}}}})
        assert not again.success
        assert load_manifest(_store(s3_client, archive_env), f"archive/{events}.events/2024/03/2024-03-10.jsonl.zst"
                             )["rows"] == 300


def _store(client, bucket):
    from archive_pipeline.core.store import S3Store

    return S3Store(client, bucket, prefix="archive")


def test_a_removed_days_archive_is_never_replaced_even_when_its_manifest_or_object_is_damaged(conn, events, store,
                                                                                               s3_client, bucket):
    """Found in review: the removed-day guard must hold when the stored archive does not check out."""
    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAYS[0], store)
    remove_day(conn, spec, DAYS[0], store)
    body = s3_client.get_object(Bucket=bucket, Key=result.key)["Body"].read()
    raw = s3_client.get_object(Bucket=bucket, Key=result.manifest_key)["Body"].read()
    # the manifest altered (its checksum no longer matches), then lost altogether, then the object replaced
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=raw.replace(b'"rows": 300', b'"rows": 301'))
    with pytest.raises(DayRemovedError, match="was removed from the source"):
        archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    s3_client.delete_object(Bucket=bucket, Key=result.manifest_key)
    with pytest.raises(ArchiveError, match="may have been removed from the source"):
        archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=raw)
    s3_client.put_object(Bucket=bucket, Key=result.key, Body=body + b"x")
    with pytest.raises(DayRemovedError, match="its archive is damaged"):
        archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    s3_client.put_object(Bucket=bucket, Key=result.key, Body=body)
    assert deep_verify(conn, store, spec, DAYS[0]) != []  # the source no longer has the rows...
    assert load_manifest(store, result.key)["rows"] == 300  # ...and the archive is still there, whole


def test_an_overwrite_that_loses_rows_keeps_the_previous_object(conn, events, store, s3_client, bucket):
    spec = spec_for(events, "drop")
    first = archive_partition(conn, spec, DAYS[0], store)
    conn.execute(sql.SQL("DELETE FROM {} WHERE created_at < '2024-03-10 12:00+00'").format(
        sql.Identifier(events, "events")))
    second = archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    assert second.rows < first.rows
    manifest = load_manifest(store, first.key)
    assert [k["key"] for k in manifest["kept"]] == [first.key] and manifest["kept"][0]["rows"] == 300
    assert s3_client.head_object(Bucket=bucket, Key=first.key)["ContentLength"] == first.bytes


def test_delete_is_refused_when_foreign_keys_reference_the_table(conn, schema, store):
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date)").format(sql.Identifier(schema, "parent")))
    conn.execute(sql.SQL("CREATE TABLE {} (pid int REFERENCES {} ON DELETE CASCADE)").format(
        sql.Identifier(schema, "child"), sql.Identifier(schema, "parent")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10')").format(sql.Identifier(schema, "parent")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(schema, "child")))
    spec = TableSpec(name=f"{schema}.parent", day_column="at", start_date=DAYS[0],
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAYS[0], store)
    with pytest.raises(RemovalRefused, match="foreign keys .* reference the table"):
        remove_day(conn, spec, DAYS[0], store)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "child"))).fetchone()[0] == 1
