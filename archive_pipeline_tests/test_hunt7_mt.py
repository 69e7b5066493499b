"""Hunt 7, class: concurrent operations on the same table, day or bucket, forced into one interleaving by the
fault proxy's ``hold``, a PostgreSQL lock held by another session, or a trigger waiting on an advisory lock.
Each test fails on a bug and passes once it is fixed."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import DayRemovedError, archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import load_manifest, verify_archive
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - fixture: two days of 300 rows
from archive_pipeline_tests.test_race_hunt import in_thread, proxied

DAY = dt.date(2024, 3, 10)


@contextlib.contextmanager
def two_databases(pg, conn, schema: str, rows_a: int, rows_b: int):
    """``<schema>.events`` with the day in this database (``rows_a`` rows) and in another one (``rows_b``)."""
    other_db = f"{schema}_b"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other_db)))
    try:
        create_sample_events(conn, [DAY], rows_per_day=rows_a, schema=schema)
        with pg.connect(dbname=other_db) as b_setup:
            b_setup.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            create_sample_events(b_setup, [DAY], rows_per_day=rows_b, schema=schema)
        yield other_db
    finally:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other_db)))


def test_a_run_from_another_database_does_not_delete_the_generation_an_overwrite_is_about_to_commit(
        pg, conn, schema, s3, bucket):
    """Two deployments archive ``<schema>.events`` to one bucket and prefix from two databases (an old database
    and its replacement during a migration, both schedules on; advisory locks are per database, so the two
    table-day locks do not exclude each other). The day is archived from A (generation 1). A user runs
    ``archive --overwrite --day 2024-03-10`` on A: it uploads generation 2 (``.g2``) and is about to write the
    manifest. Meanwhile B's schedule runs the day: its ``_tidy`` lists the day, finds ``.g2``, which no manifest
    names yet, takes it for a leftover of a killed run and deletes it; then B refuses the day as another
    database's archive. A then commits its manifest, naming ``.g2``: the run is green, and the day's archive is a
    manifest whose object does not exist (verify: "object ... is missing"; the previous generation was retired).
    The code already guards the commit against the other database (``_refuse_replaced``, If-Match), but the
    tidying deletes what it cannot own: a generation that is not yet committed must not be deleted by a run that
    the lock does not exclude, or the run that committed a manifest naming a missing object must fail."""
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"})
    direct = S3Store(s3.client(), bucket, prefix="archive")
    key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
    with two_databases(pg, conn, schema, 300, 200) as other_db:
        assert archive_partition(conn, spec, DAY, direct).generation == 1
        with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as a_conn, pg.connect(dbname=other_db) as b_conn:
            commit = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
            a_thread, a_outcome = in_thread(lambda: archive_partition(a_conn, spec, DAY, proxied(proxy, bucket),
                                                                      overwrite=True))
            try:
                assert proxy.wait_held(1), a_outcome  # A stored .g2; its manifest waits
                assert direct.head(key.replace(".jsonl", ".g2.jsonl")) is not None
                b_error = None
                try:
                    archive_partition(b_conn, spec, DAY, direct)
                except Exception as exc:  # noqa: BLE001 - B refuses A's database's archive (expected)
                    b_error = exc
            finally:
                commit.gate.set()
                a_thread.join(60)
    manifest = load_manifest(direct, key)
    problems = verify_archive(direct, key, {})
    # Now: B fails (ForeignArchiveError, as it should), A succeeds with generation 2, and the manifest in the store
    # names ...2024-03-10.g2.jsonl.zst, which B's tidying deleted: ['object s3://.../2024-03-10.g2.jsonl.zst is missing'].
    assert problems == [], (problems, manifest["object"]["key"], repr(a_outcome.get("error")), repr(b_error))



def test_two_overwrites_from_two_databases_never_commit_a_manifest_over_the_other_runs_object(pg, conn, schema, s3,
                                                                                             bucket):
    """The same two deployments as above; this time both run ``archive --overwrite`` of 2024-03-10 (A's database
    has 300 rows of it, B's 200). A uploads generation 2 and its manifest write waits; B lists the day, deletes
    A's ``.g2`` as an uncommitted leftover (``_tidy``), picks generation 2 as well (the manifest it read is
    generation 1) and stores its own 200 rows at the same key; its manifest write waits. A's manifest lands first
    (If-Match the generation-1 manifest: granted), B's is then refused and B fails, keeping ``.g2`` because the
    manifest now names that key. Result: A reports success, and the store's manifest (A's: 300 rows, A's MD5 and
    fingerprint) names an object that holds B's 200 rows, an archive that is not what its manifest says (found
    only by a verify that downloads). A run must never commit a manifest over an object it did not store: the
    tidying must not delete a generation another run may be committing, and a generation's object must not be
    written where another run's may be."""
    import hashlib

    from archive_pipeline_tests.helpers import download

    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"})
    direct = S3Store(s3.client(), bucket, prefix="archive")
    key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
    with two_databases(pg, conn, schema, 300, 200) as other_db:
        assert archive_partition(conn, spec, DAY, direct).generation == 1
        with FaultProxy(s3.endpoint_url) as proxy_a, FaultProxy(s3.endpoint_url) as proxy_b, \
                pg.connect() as a_conn, pg.connect(dbname=other_db) as b_conn:
            a_commit = proxy_a.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
            b_commit = proxy_b.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
            a_thread, a_outcome = in_thread(lambda: archive_partition(a_conn, spec, DAY, proxied(proxy_a, bucket),
                                                                      overwrite=True))
            b_thread = None
            try:
                assert proxy_a.wait_held(1), a_outcome  # A stored .g2; its manifest waits
                b_thread, b_outcome = in_thread(lambda: archive_partition(b_conn, spec, DAY, proxied(proxy_b, bucket),
                                                                          overwrite=True))
                assert proxy_b.wait_held(1), b_outcome  # B deleted A's .g2, stored its own there; its manifest waits
                a_commit.gate.set()
                a_thread.join(60)
            finally:
                a_commit.gate.set()
                b_commit.gate.set()
                a_thread.join(60)
                if b_thread is not None:
                    b_thread.join(60)
    manifest = load_manifest(direct, key)
    body = download(s3.client(), bucket, manifest["object"]["key"])
    outcomes = {name: repr(o.get("error")) if "error" in o else (o["result"].rows, o["result"].md5)
                for name, o in (("A", a_outcome), ("B", b_outcome))}
    # Now: A succeeds (300 rows), B fails; the manifest (A's, 300 rows) names .g2, which holds B's 200 rows.
    assert hashlib.md5(body).hexdigest() == manifest["object"]["md5"], (outcomes, manifest["rows"],
                                                                        manifest["object"]["key"])


@pytest.mark.parametrize("check_source", [False, True])
@pytest.mark.parametrize("action", ["drop", "delete"])
def test_list_racing_a_removal_does_not_say_the_removed_rows_are_back(pg, conn, events, store, s3, bucket,
                                                                     check_source, action):
    """`archive-pipeline list` (with or without --check-source) runs while `prune` (or the source_removed asset)
    removes 2024-03-10 (drop or delete). list first asks the source which days have rows (the day has), then reads
    the day's manifest; the removal commits and writes its `removed: done` mark in between. Without
    --check-source, list shows the day with the note "rows of the day are in the source again after its drop at
    ... (restored, or rows arrived since ...)", although no row of it is in the source. With --check-source it
    fingerprints the emptied source against the archive and reports the day `changed` ("source has 0 rows,
    archive 300"; exit 1), as if rows were lost, and the re-check for a manifest replaced meanwhile
    (`_again_where_replaced`) does not catch it: the manifest it read already was the removed one. Run a moment
    later list says "dropped from the source at ...". The opposite order (manifest read first) was fixed in hunt 4
    (test_hunt4_ee); this one, where the source was probed before the manifest was read, must be told as a removed
    day too (probe the source again for a removed day, or read the manifests before probing the source)."""
    from archive_pipeline.core import plan

    spec = spec_for(events, action)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as other:
        held = proxy.add(Fault(method="GET", path=r"\.manifest\.json$", action="hold", times=1))
        thread, outcome = in_thread(lambda: plan.day_statuses(conn, spec, proxied(proxy, bucket), [DAY],
                                                              check_source=check_source))
        try:
            assert proxy.wait_held(1), outcome  # the source was probed (the day has rows); the manifest waits
            assert remove_day(other, spec, DAY, store, removed_by="prune").rows == 300
        finally:
            held.gate.set()
            thread.join(60)
    assert "error" not in outcome, repr(outcome.get("error"))
    [status] = outcome["result"]
    # Now: without --check-source, state 'archived' with the note "rows of the day are in the source again after its
    # drop at ..."; with it, state 'changed', note "source has 0 rows, archive 300".
    assert "in the source again" not in status.note and status.state == "archived", status


def test_source_unchanged_reading_the_manifest_just_before_a_removal_does_not_ask_to_archive_the_day_again(
        pg, conn, schema, archive_env, s3, bucket, monkeypatch):
    """Dagster's verify_archives runs the on-demand source_unchanged check while `prune` (or the source_removed
    asset) removes 2024-03-10 (retention drop). The check reads the day's manifest (no removal mark yet), the
    removal then proves, drops the partition, commits and marks the manifest done, and the check fingerprints the
    source against the manifest it read: it fails, "1 of 1 archived days changed in PostgreSQL after archiving:
    the source has 0 rows for 2024-03-10 now, the archive 300 ... What to do: archive those days again with run
    config overwrite: true": advice to re-archive a day retention has just removed on purpose. compare and list
    look at the manifest again when the source no longer matches (hunt 4) and say the day was removed; so should
    this check. (The removal is run from a hook at the point the check compares the source: where another
    process's removal lands.)"""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.core import verify
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.definitions import build_definitions

    create_sample_events(conn, [DAY], rows_per_day=300, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]})
    [spec] = config.tables
    defs = build_definitions(config)
    compare = verify.source_changed

    def removal_lands_first(*args, **kwargs):
        with pg.connect() as other:
            store = S3Store(s3.client(), bucket, prefix="archive")
            assert remove_day(other, spec, DAY, store, removed_by="prune").rows == 300
        monkeypatch.setattr(verify, "source_changed", compare)
        return compare(*args, **kwargs)

    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        monkeypatch.setattr(verify, "source_changed", removal_lands_first)
        checked = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
    unchanged = [e.asset_check_evaluation_data for e in checked.all_events
                 if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                 and e.asset_check_evaluation_data.check_name == "source_unchanged"]
    assert unchanged, "no source_unchanged verdict"
    # Now: failed, "... changed in PostgreSQL after archiving: 2024-03-10: the source has 0 rows for 2024-03-10 now,
    # the archive 300 ... archive those days again".
    assert all("archive those days again" not in (c.description or "") for c in unchanged), \
        [c.description for c in unchanged]


@pytest.mark.parametrize("overwrite", [False, True])
def test_archive_dry_run_racing_a_removal_does_not_plan_to_overwrite_the_removed_day(pg, conn, events, store,
                                                                                    monkeypatch, overwrite):
    """`archive-pipeline archive --dry-run [--overwrite] --day 2024-03-10` runs while `prune` removes the day
    (retention delete). The dry run reads the day's manifest (no removal mark yet); the removal proves, deletes the
    day's rows, commits and marks the manifest done; the dry run then fingerprints the emptied source against the
    manifest it read. It plans "overwrite" ("overwrite requested": an empty day over the only copy of 300 removed
    rows), or without --overwrite refuses the day as changed ("it has 0 rows now, the archive holds 300 ... set
    overwrite to archive the day again"), advice that the real run refuses at once: the day was removed by
    retention, and its archive is the only copy (DayRemovedError). The README promises the dry run decides "with
    the archiver's own rule"; a source that no longer matches should make it look at the manifest again, as
    compare and list do. (The removal is run from a hook at the point the dry run opens its snapshot of the
    source: where another process's removal lands.)"""
    from archive_pipeline.core import plan

    spec = spec_for(events, "delete")
    archive_partition(conn, spec, DAY, store)
    snapshot = plan.read_snapshot

    def removal_lands_first(*args, **kwargs):
        monkeypatch.setattr(plan, "read_snapshot", snapshot)
        with pg.connect() as other:
            assert remove_day(other, spec, DAY, store, removed_by="prune").rows == 300
        return snapshot(*args, **kwargs)

    monkeypatch.setattr(plan, "read_snapshot", removal_lands_first)
    [planned] = plan.plan_archive(conn, spec, store, [DAY], overwrite=overwrite)
    with pytest.raises(DayRemovedError):  # what the run the dry run plans does
        archive_partition(conn, spec, DAY, store, overwrite=overwrite)
    # Now: action 'overwrite' ("overwrite requested") with --overwrite; without it 'refuse' with "changed since it
    # was archived ... it has 0 rows now, the archive holds 300 ...; set overwrite to archive the day again".
    # (no-data: what the run reports for a removed day, nothing to archive and its archive kept; see
    # DayRemovedError.nothing_to_do)
    assert planned.action == "no-data" and "removed" in planned.reason and "set overwrite" not in planned.reason, \
        planned
