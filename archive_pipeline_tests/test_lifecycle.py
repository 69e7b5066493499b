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
from archive_pipeline_tests.helpers import run_check_evaluations, run_materializations

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


def spec_for(schema: str, action: str = "drop", **extra) -> TableSpec:
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
        archive = defs.resolve_job_def(f"Archive_{events}_events")
        remove = defs.resolve_job_def(f"Remove_{events}_events")
        for day in DAYS:
            assert archive.execute_in_process(partition_key=day.isoformat(), instance=instance).success
        # A damaged archive: the proof fails, the check says so, nothing is removed.
        key = f"archive/{events}.events/2024/03/2024-03-11.jsonl.zst"
        s3_client.put_object(Bucket=archive_env, Key=key, Body=b"damaged")
        failed = remove.execute_in_process(partition_key="2024-03-11", instance=instance, raise_on_error=False)
        assert not failed.success
        [evaluation] = run_check_evaluations(instance, failed.run_id)
        assert not evaluation.passed and "is damaged: the store holds 7 bytes" in evaluation.description
        assert evaluation.partition == "2024-03-11"
        assert table_exists(conn, events, "events_20240311")
        # A dry run proves and removes nothing.
        dry = remove.execute_in_process(partition_key="2024-03-10", instance=instance, run_config={
            "ops": {removal_key.to_python_identifier(): {"config": {"dry_run": True}}}})
        assert dry.success and run_check_evaluations(instance, dry.run_id)[0].passed
        assert table_exists(conn, events, "events_20240310")
        done = remove.execute_in_process(partition_key="2024-03-10", instance=instance)
        assert done.success and not table_exists(conn, events, "events_20240310")
        [materialization] = run_materializations(instance, done.run_id)
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
    # the source no longer has the rows (removed on purpose), and the archive is still there, whole: proven alone
    assert deep_verify(conn, store, spec, DAYS[0]) == []
    assert load_manifest(store, result.key)["rows"] == 300


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


# --- a removal that did not finish: its pending mark is settled by the next run (found by a fault hunt) -------

def _faulty_store(proxy, bucket):
    from archive_pipeline.core.store import S3Store

    return S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")


def _day_rows(conn, schema: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= '2024-03-10+00' AND created_at < "
                                "'2024-03-11+00'").format(sql.Identifier(schema, "events"))).fetchone()[0]


def _restored_rows(conn, store, spec, schema: str, name: str) -> int:
    from archive_pipeline.core.restore import restore_day

    restored = restore_day(conn, store, spec, DAYS[0], into="new", target=f"{schema}.{name}")
    assert restored.fingerprint_checked
    return restored.rows


@pytest.mark.parametrize(("action", "settler"), [("delete", "removal"), ("detach", "removal"), ("drop", "removal"),
                                                 ("delete", "archive"), ("drop", "archive")])
def test_a_committed_removal_whose_done_mark_fails_is_completed_by_the_next_run(conn, events, store, s3, bucket,
                                                                                action, settler):
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    spec = spec_for(events, action)
    result = archive_partition(conn, spec, DAYS[0], store)
    with FaultProxy(s3.endpoint_url) as proxy:
        # the pending mark goes through, every later manifest PUT (the "done" mark) is refused
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=503, skip=1, times=None))
        with pytest.raises(ArchiveError) as caught:
            remove_day(conn, spec, DAYS[0], _faulty_store(proxy, bucket), removed_by="test")
        assert [r.status for r in proxy.requests(method="PUT")] == [200, 503]
    error = caught.value
    text = str(error)
    assert (error.table, error.day, error.retryable) == (spec.name, "2024-03-10", True)
    assert type(error).__name__ == "RemovalNotRecorded"
    assert spec.name in text and "2024-03-10" in text and "committed in the source" in text
    assert "300 rows are gone" in text and "run the removal of this day again" in text
    # The rows are gone, the manifest says pending, the archive is intact, and nothing archives over it.
    assert _day_rows(conn, events) == 0
    assert table_exists(conn, events, "events_20240310") is (action != "drop")
    pending = load_manifest(store, result.key)
    assert pending["removed"]["state"] == "pending" and pending["removed"]["xid"]
    if settler == "removal":  # a re-run settles it: the committed removal is completed, nothing else is touched
        done = remove_day(conn, spec, DAYS[0], store, removed_by="test")
        assert done.completed and not done.already_removed and (done.rows, done.action) == (300, action)
        assert done.relation == (f"{events}.events_20240310" if action != "delete" else f"{events}.events")
    # nothing archives over it; an archive run that meets the pending mark first completes it
    for overwrite in (False, True):
        with pytest.raises(DayRemovedError):
            archive_partition(conn, spec, DAYS[0], store, overwrite=overwrite)
    manifest = load_manifest(store, result.key)
    assert manifest["removed"]["state"] == "done" and manifest["removed"]["rows"] == 300
    assert manifest["removed"]["at"] == pending["removed"]["at"]
    assert "committed" in manifest["removed"]["settled_because"]
    assert {k: v for k, v in manifest.items() if k not in ("removed", "manifest_sha256")} == \
        {k: v for k, v in pending.items() if k not in ("removed", "manifest_sha256")}
    assert remove_day(conn, spec, DAYS[0], store).already_removed
    assert _restored_rows(conn, store, spec, events, "back") == 300  # the only copy is whole
    assert table_exists(conn, events, "events_20240311")


def test_a_refused_removal_whose_mark_could_not_be_taken_back_is_not_a_removed_day(conn, events, store, s3, bucket):
    """A late row stops the removal, and the PUT that puts the unmarked manifest back fails: the manifest
    stays pending while every row is in the source. The next removal takes the mark back, and the day
    is an ordinary changed day again: refused as changed, archived again with overwrite, then removed."""
    from archive_pipeline.core.archive import LateRowsError
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    spec = spec_for(events, "delete")
    result = archive_partition(conn, spec, DAYS[0], store)
    original = s3.client().get_object(Bucket=bucket, Key=result.manifest_key)["Body"].read()
    conn.execute(sql.SQL("INSERT INTO {} (id, created_at, user_id, event_type) VALUES "
                         "(999999, '2024-03-10 23:00+00', 1, 'late')").format(sql.Identifier(events, "events")))
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=503, skip=1, times=None))
        with pytest.raises(RemovalRefused, match="rows changed since they were archived") as caught:
            remove_day(conn, spec, DAYS[0], _faulty_store(proxy, bucket), proven=True)
    assert any("could not take back the pending removal mark" in note for note in caught.value.__notes__)
    assert _day_rows(conn, events) == 301
    assert load_manifest(store, result.key)["removed"]["state"] == "pending"
    # The next removal recognises the leftover mark (its transaction was rolled back, the rows are all
    # there), puts back the manifest as it was, and proves the day from scratch: changed, so refused.
    with pytest.raises(RemovalRefused, match="(?:not proven|not the archive.s any more).*first difference: the source has a row the archive "
                                             "lacks: \\(999999"):
        remove_day(conn, spec, DAYS[0], store)
    assert s3.client().get_object(Bucket=bucket, Key=result.manifest_key)["Body"].read() == original
    assert _day_rows(conn, events) == 301
    with pytest.raises(LateRowsError, match="301 rows now, the archive holds 300"):
        archive_partition(conn, spec, DAYS[0], store)
    again = archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    assert (again.rows, again.generation) == (301, 2)
    assert remove_day(conn, spec, DAYS[0], store).rows == 301 and _day_rows(conn, events) == 0
    assert load_manifest(store, result.key)["removed"]["state"] == "done"


def test_an_archive_run_settles_a_pending_mark_a_refused_removal_left(conn, events, store, s3, bucket):
    """The same leftover mark met by the next *archive* run (the daily schedule comes first): it is
    taken back there, and the day is the ordinary changed day it is (refused as changed, archived
    again with overwrite), never a removed one."""
    from archive_pipeline.core.archive import LateRowsError
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    spec = spec_for(events, "delete")
    result = archive_partition(conn, spec, DAYS[0], store)
    conn.execute(sql.SQL("INSERT INTO {} (id, created_at, user_id, event_type) VALUES "
                         "(999999, '2024-03-10 23:00+00', 1, 'late')").format(sql.Identifier(events, "events")))
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=503, skip=1, times=None))
        with pytest.raises(RemovalRefused):
            remove_day(conn, spec, DAYS[0], _faulty_store(proxy, bucket), proven=True)
    assert load_manifest(store, result.key)["removed"]["state"] == "pending"
    with pytest.raises(LateRowsError, match="301 rows now, the archive holds 300"):
        archive_partition(conn, spec, DAYS[0], store)
    assert "removed" not in load_manifest(store, result.key)
    again = archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    assert (again.rows, again.generation) == (301, 2) and _day_rows(conn, events) == 301


@pytest.mark.parametrize("source", ["emptied", "changed"])
def test_a_pending_mark_without_a_transaction_is_settled_by_the_source(conn, events, store, source):
    """A mark that names no transaction (an older version wrote it, or PostgreSQL no longer knows it):
    a source with no rows of the day was removed; one whose rows are not the archived ones cannot tell (late rows
    after a removal that committed look alike: see test_hunt24_bn), so the mark stays pending, the removal is
    refused naming the doubt, and an overwrite keeps the marked archive beside its own."""
    from archive_pipeline.core.manifest import encode_manifest

    spec = spec_for(events, "delete")
    result = archive_partition(conn, spec, DAYS[0], store)
    manifest = load_manifest(store, result.key)
    marked = {**manifest, "removed": {"at": "2024-05-01T00:00:00+00:00", "action": "delete", "state": "pending"}}
    store.put_bytes(result.manifest_key, encode_manifest(marked), "application/json")
    events_table = sql.Identifier(events, "events")
    if source == "emptied":
        conn.execute(sql.SQL("DELETE FROM {} WHERE created_at < '2024-03-11+00'").format(events_table))
        done = remove_day(conn, spec, DAYS[0], store)
        assert done.completed and done.rows == 300
        now = load_manifest(store, result.key)
        assert now["removed"]["state"] == "done" and now["removed"]["rows"] == 300
        assert "no rows of the day left" in now["removed"]["settled_because"]
        with pytest.raises(DayRemovedError):
            archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    else:
        conn.execute(sql.SQL("UPDATE {} SET event_type = 'edited' WHERE id = (SELECT min(id) FROM {})").format(
            events_table, events_table))
        with pytest.raises(RemovalRefused, match="stays marked 'pending'.*cannot be told.*names no transaction.*"
                                                 "300 rows of the day, which are not the 300 archived") as refused:
            remove_day(conn, spec, DAYS[0], store)
        assert refused.value.needs_overwrite and "overwrite" in refused.value.remedy
        assert load_manifest(store, result.key)["removed"] == marked["removed"]  # the mark kept, nothing changed
        assert _day_rows(conn, events) == 300
        with pytest.raises(DayRemovedError, match="set overwrite"):
            archive_partition(conn, spec, DAYS[0], store)
        again = archive_partition(conn, spec, DAYS[0], store, overwrite=True)
        now = load_manifest(store, result.key)
        assert again.rows == 300 and "removed" not in now
        assert [k["key"] for k in now["kept"]] == [manifest["object"]["key"]]  # the marked archive, kept
    from archive_pipeline.core.lifecycle import settle_pending_removal

    assert settle_pending_removal(conn, spec, DAYS[0], store).outcome == "none"


def test_settling_a_pending_mark_of_an_intact_day_makes_it_an_ordinary_archived_day(conn, events, store):
    from archive_pipeline.core.lifecycle import settle_pending_removal
    from archive_pipeline.core.manifest import encode_manifest

    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAYS[0], store)
    manifest = load_manifest(store, result.key)
    conn.execute("BEGIN")
    xid = conn.execute("SELECT txid_current()").fetchone()[0]
    conn.execute("ROLLBACK")  # a removal whose transaction was rolled back, and whose mark stayed
    marked = {**manifest, "removed": {"at": "2024-05-01T00:00:00+00:00", "action": "drop", "state": "pending",
                                      "xid": str(xid)}}
    store.put_bytes(result.manifest_key, encode_manifest(marked), "application/json")
    settled = settle_pending_removal(conn, spec, DAYS[0], store)
    assert settled.outcome == "taken back" and f"transaction {xid} was rolled back" in settled.why
    assert load_manifest(store, result.key) == manifest == settled.manifest
    assert archive_partition(conn, spec, DAYS[0], store).skipped
    assert remove_day(conn, spec, DAYS[0], store).rows == 300 and not table_exists(conn, events, "events_20240310")


def test_a_committed_removal_whose_archive_broke_meanwhile_stays_pending(conn, events, store, s3, bucket, s3_client):
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAYS[0], store)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=503, skip=1, times=None))
        with pytest.raises(ArchiveError):
            remove_day(conn, spec, DAYS[0], _faulty_store(proxy, bucket))
    s3_client.put_object(Bucket=bucket, Key=result.key, Body=b"damaged")
    with pytest.raises(ArchiveError, match="was removed from the source .*no longer checks out: .*7") as caught:
        remove_day(conn, spec, DAYS[0], store)
    assert not caught.value.retryable
    assert load_manifest(store, result.key)["removed"]["state"] == "pending"  # still never archived over
    with pytest.raises(ArchiveError, match="no longer checks out"):  # the archive run tries to settle it too
        archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    assert load_manifest(store, result.key)["removed"]["state"] == "pending"


def _removal_defs(events: str, max_retries: int):
    """The code location of one table with retention; the removal asset takes the YAML's ``retry:``
    (here without a wait between attempts)."""
    from archive_pipeline import definitions
    from archive_pipeline.core.config import parse_config

    return definitions.build_definitions(parse_config({"retry": {"max_retries": max_retries, "delay_seconds": 0},
                                                       "tables": [{
        "name": f"{events}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]}))


def _step_events(instance, run_id: str) -> list:
    return [e.dagster_event.event_type for e in instance.all_logs(run_id) if e.dagster_event]


def _failure_text(result, events: str) -> str:
    from dagster import AssetKey

    return result.failure_data_for_node(AssetKey(["source_removed", events, "events"]).to_python_identifier()
                                        ).error.to_string()


def test_removal_in_dagster_completes_a_removal_whose_done_mark_failed(conn, events, store, s3, archive_env,
                                                                       monkeypatch):
    from dagster import AssetKey, DagsterEventType, instance_for_test

    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    result = archive_partition(conn, spec_for(events, "drop"), DAYS[0], store)
    removal_key = AssetKey(["source_removed", events, "events"])
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        defs = _removal_defs(events, max_retries=1)
        remove = defs.resolve_job_def(f"Remove_{events}_events")
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=503, skip=1, times=None))
        failed = remove.execute_in_process(partition_key="2024-03-10", instance=instance, raise_on_error=False)
        assert not failed.success
        assert _step_events(instance, failed.run_id).count(DagsterEventType.STEP_UP_FOR_RETRY) == 1
        assert "the removal is committed in the source" in _failure_text(failed, events)
        assert [e.passed for e in run_check_evaluations(instance, failed.run_id)] == [True]  # proven, before the removal
        assert not table_exists(conn, events, "events_20240310")
        assert load_manifest(store, result.key)["removed"]["state"] == "pending"
        proxy.clear()  # the store answers again: the next run settles the day
        done = remove.execute_in_process(partition_key="2024-03-10", instance=instance)
        assert done.success
        [evaluation] = run_check_evaluations(instance, done.run_id)
        assert evaluation.passed and "the archive is intact" in evaluation.description
        [materialization] = run_materializations(instance, done.run_id)
        meta = {k: v.value for k, v in materialization.metadata.items()}
        assert (meta["pending_mark"], meta["dagster/row_count"], meta["relation"]) == (
            "completed", 300, f"{events}.events_20240310")
        assert instance.get_materialized_partitions(removal_key) == {"2024-03-10"}
    manifest = load_manifest(store, result.key)
    assert manifest["removed"]["state"] == "done" and manifest["removed"]["rows"] == 300
    assert table_exists(conn, events, "events_20240311")


@pytest.mark.parametrize(("path", "status", "code", "retried"), [
    (r"/2024-03-10\.jsonl\.zst$", 503, "ServiceUnavailable", True),
    (r"/2024-03-10\.jsonl\.zst\.manifest\.json$", 503, "ServiceUnavailable", True),
    (r"/2024-03-10\.jsonl\.zst$", 403, "AccessDenied", False),
], ids=["object GET 503", "manifest GET 503", "object GET AccessDenied"])
def test_removal_in_dagster_records_no_failed_proof_when_a_download_fails(conn, events, store, s3, archive_env,
                                                                          monkeypatch, path, status, code, retried):
    """A download that fails proves nothing: the run fails (retried when that can help) and no
    archive_proven result is recorded; nothing is removed."""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    result = archive_partition(conn, spec_for(events, "drop"), DAYS[0], store)
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        defs = _removal_defs(events, max_retries=1)
        remove = defs.resolve_job_def(f"Remove_{events}_events")
        fault = proxy.add(Fault(method="GET", path=path, action="error", status=status, code=code, times=None))
        failed = remove.execute_in_process(partition_key="2024-03-10", instance=instance, raise_on_error=False)
        assert not failed.success and fault.hits >= 1
        assert run_check_evaluations(instance, failed.run_id) == []
        assert _step_events(instance, failed.run_id).count(DagsterEventType.STEP_UP_FOR_RETRY) == (1 if retried else 0)
        text = _failure_text(failed, events)
        assert f"{events}.events" in text and "2024-03-10" in text and code in text
    assert table_exists(conn, events, "events_20240310")
    assert "removed" not in load_manifest(store, result.key)
