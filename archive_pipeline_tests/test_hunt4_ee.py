"""Hunt 4, class: concurrent operations on the same table-day (two runs, a run and a reader, a run and a
removal or restore), forced into one interleaving by the fault proxy's ``hold`` or a hook at the point where another
process's work lands. Each test fails on a bug and passes once it is fixed."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core import plan
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - fixture
from archive_pipeline_tests.test_race_hunt import in_thread, proxied

DAY = dt.date(2024, 3, 10)


def test_compare_racing_an_overwrite_does_not_call_the_day_different(pg, conn, events, store, s3, bucket):
    """A user runs `archive-pipeline compare --day 2024-03-10` while another run (the CLI's `archive
    --overwrite`, or a Dagster run with overwrite) archives the same day again. compare reads the manifest
    (generation 1), fingerprints the source (equal), then HEADs the manifest's object; the overwrite committed
    generation 2 and retired generation 1 in between. compare reports the day as `differs` ("the archive's
    object is not as recorded: object ... is missing") and exits 1, though the day's archive is whole and
    equal to the source at every moment. It should look at the manifest again (as `verify` and deep
    verification do when the object is gone) and compare against the archive the day has now: `equal`."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as other:
        held = proxy.add(Fault(method="HEAD", path=r"/2024-03-10\.jsonl\.zst$", action="hold", times=1))
        thread, outcome = in_thread(lambda: plan.compare_days(conn, spec, proxied(proxy, bucket), [DAY]))
        try:
            assert proxy.wait_held(1), outcome
            again = archive_partition(other, spec, DAY, store, overwrite=True)
            assert again.generation == 2 and not again.skipped
        finally:
            held.gate.set()
            thread.join(60)
    assert "error" not in outcome, repr(outcome.get("error"))
    [comparison] = outcome["result"]
    assert comparison.result == "equal", comparison


def test_a_deep_checked_run_racing_an_overwrite_is_not_called_unproven(pg, conn, schema, archive_env, s3, bucket,
                                                                       monkeypatch):
    """A table with deep_check: true (the check blocks). Dagster's run archives 2024-03-10 (generation 1,
    300 rows) and releases the table-day lock; before its check reads the manifest, a late row arrives and a
    user's `archive-pipeline archive --overwrite --day 2024-03-10` (or another run with overwrite) commits
    generation 2 (301 rows). The check then compares the new manifest with what this run recorded, and the
    run fails, not retryable, as "the archive is NOT proven ... the archive in the bucket is not what was
    recorded: manifest md5 ..., manifest rows: 301, recorded 300", recording the day as NOT proven (a later
    re-check of it can never clear that) and telling the user to archive it again, though the bucket holds a
    whole, proven archive of the day's rows now. It should see that another run replaced the archive meanwhile
    (as `verify` and deep verification do) and say so (or prove the current one), not call it damaged."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=300, schema=schema)
    spec_yaml = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
                 "deep_check": True}
    config = parse_config({"retry": {"max_retries": 0}, "tables": [spec_yaml]})
    [spec] = config.tables
    direct = S3Store(s3.client(), bucket, prefix="archive")
    with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as other:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        held = proxy.add(Fault(method="GET", path=r"/2024-03-10\.jsonl\.zst\.manifest\.json$", action="hold",
                               times=1))
        defs = build_definitions(config)
        with instance_for_test() as instance:
            job = defs.resolve_job_def(f"Archive_{schema}_events")
            thread, outcome = in_thread(lambda: job.execute_in_process(partition_key=DAY.isoformat(),
                                                                       instance=instance, raise_on_error=False))
            try:
                assert proxy.wait_held(1), outcome
                other.execute(sql.SQL("INSERT INTO {}.events (id, created_at, user_id, event_type) VALUES "
                                      "(999999, '2024-03-10 12:00+00', 1, 'late')").format(sql.Identifier(schema)))
                again = archive_partition(other, spec, DAY, direct, overwrite=True)
                assert again.generation == 2 and not again.skipped and again.rows == 301
            finally:
                held.gate.set()
                thread.join(120)
    assert "error" not in outcome, repr(outcome.get("error"))
    result = outcome["result"]
    failures = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
    checks = [e.asset_check_evaluation_data for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    # Now: the check fails as "NOT intact: manifest md5: ..., recorded ...; manifest rows: 301, recorded 300",
    # the step fails (not retryable) as "the archive is NOT proven ... the archive in the bucket is not what was
    # recorded", and the materialization records "NOT proven", which no later re-check of the day can clear.
    assert not any("NOT" in (c.description or "") for c in checks), [c.description for c in checks]
    assert not any("not what was recorded" in f or "NOT proven" in f for f in failures), failures


@pytest.mark.parametrize("reader", ["compare", "list --check-source"])
def test_a_reader_racing_a_removal_does_not_call_the_removed_day_changed(pg, conn, events, store, monkeypatch,
                                                                         reader):
    """`archive-pipeline compare` (or `list --check-source`) runs while `prune` (or the source_removed asset)
    removes 2024-03-10 (retention action drop). The reader has read the day's manifest (not yet marked
    removed) and seen the day's partition; the removal then proves, drops and marks the day `removed: done`;
    the reader fingerprints the source: 0 rows. compare reports the day `differs` (source 0 rows, archive 300;
    exit 1) and list `changed` ("source has 0 rows, archive 300"), as if rows had been lost from the source or
    the archive were wrong, though the day was just removed by retention exactly as designed (run a moment
    later, both say so: `not-in-source` / archived, "dropped from the source at ..."). A source that no longer
    matches should make the reader look at the manifest again before calling the day changed. (The removal is
    run from a hook at the point the reader fingerprints the source: where another process's removal lands.)"""
    spec = spec_for(events, "drop")
    archive_partition(conn, spec, DAY, store)
    fingerprint_source = plan.source_fingerprint

    def removal_lands_first(*args, **kwargs):
        with pg.connect() as other:
            remove_day(other, spec, DAY, store)  # another process: prune
        return fingerprint_source(*args, **kwargs)

    monkeypatch.setattr(plan, "source_fingerprint", removal_lands_first)
    if reader == "compare":
        [comparison] = plan.compare_days(conn, spec, store, [DAY])
        assert comparison.result == "not-in-source", comparison
    else:
        [status] = plan.day_statuses(conn, spec, store, [DAY], check_source=True)
        assert status.state == "archived", status


def test_verify_archives_racing_an_overwrite_does_not_record_the_day_broken(pg, conn, schema, archive_env, s3,
                                                                            bucket, monkeypatch):
    """Dagster's verify_archives (latest_archive_intact, also recorded as the day's archive_intact) re-checks
    2024-03-10 while a user's `archive-pipeline archive --overwrite --day 2024-03-10` (or a Dagster run with
    overwrite) archives the same rows again: the check reads the manifest (generation 1), the overwrite commits
    generation 2 (the same bytes, the same MD5) and deletes generation 1, then the check HEADs generation 1.
    The check fails, "NOT intact: object ... is missing", and records that on the day, though the day's archive
    is whole and exactly what the materialization recorded (a re-check a moment later passes). The command
    line's `verify` looks at the manifest again in this case and checks the current generation; the Dagster
    check (checks.verify_result) should too."""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=300, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat()}]})
    [spec] = config.tables
    direct = S3Store(s3.client(), bucket, prefix="archive")
    with instance_for_test() as instance:
        archived = build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance)
        assert archived.success
        with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as other:
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            held = proxy.add(Fault(method="HEAD", path=r"/2024-03-10\.jsonl\.zst$", action="hold", times=1))
            job = build_definitions(config).resolve_job_def("verify_archives")
            thread, outcome = in_thread(lambda: job.execute_in_process(instance=instance, raise_on_error=False))
            try:
                assert proxy.wait_held(1), outcome
                again = archive_partition(other, spec, DAY, direct, overwrite=True)
                assert again.generation == 2 and again.md5 == archived.get_asset_materialization_events()[
                    0].materialization.metadata["md5"].value
            finally:
                held.gate.set()
                thread.join(120)
    assert "error" not in outcome, repr(outcome.get("error"))
    checks = [e.asset_check_evaluation_data for e in outcome["result"].all_events
              if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]
    assert checks and all(c.passed for c in checks), [c.description for c in checks]


def test_source_unchanged_racing_a_removal_does_not_ask_to_archive_the_removed_day_again(
        pg, conn, schema, archive_env, s3, bucket, monkeypatch):
    """`prune` (or the source_removed asset) removes 2024-03-10 (retention drop): it marks the manifest
    pending, drops the day's partition, commits, and then writes the "done" mark. Dagster's verify_archives
    runs in that moment (the removal committed, its done mark not yet written). Its source_unchanged check
    treats a pending mark as "no removal" and compares: it fails, "1 of 1 archived days changed in PostgreSQL
    after archiving: the source has 0 rows for 2024-03-10 now, the archive 300 ... archive those days again
    with run config overwrite: true", advice to re-archive a day whose rows retention has just removed on
    purpose (deep verification, compare and list treat a pending mark with no rows left in the source as a
    removal). It should say the day is being removed (not compared), as it does once the mark reads done."""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=300, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]})
    [spec] = config.tables
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as other:
            # the removal's second manifest PUT is its "done" mark, written after its COMMIT
            held = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", skip=1, times=1))
            thread, outcome = in_thread(lambda: remove_day(other, spec, DAY, proxied(proxy, bucket)))
            try:
                assert proxy.wait_held(1), outcome
                checked = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance,
                                                                                     raise_on_error=False)
            finally:
                held.gate.set()
                thread.join(60)
    assert "error" not in outcome, repr(outcome.get("error"))
    unchanged = [e.asset_check_evaluation_data for e in checked.all_events
                 if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                 and e.asset_check_evaluation_data.check_name == "source_unchanged"]
    assert unchanged, "no source_unchanged verdict"
    assert all("archive those days again" not in (c.description or "") for c in unchanged), \
        [c.description for c in unchanged]


def test_two_first_archives_of_one_key_from_two_databases_never_leave_a_mix(pg, conn, schema, s3, bucket):
    """Two deployments archive `<schema>.events` 2024-03-10 to the same bucket and prefix from two databases
    (the old database and its replacement during a migration with both schedules still on; or a primary and
    a server that does not share its advisory locks). The README's "Whose archive it is" promises an archive of
    another database at the key is refused without overwrite, but the two table-day locks do not exclude each
    other (advisory locks are per database). Both first archives list the day empty and write generation 1.
    Forced interleaving: B's object (200 rows) is stored, then A's (300 rows) over it, A's manifest, and last
    B's manifest. Both runs report success, and the store holds B's manifest (200 rows, B's MD5 and
    fingerprint) naming an object that holds A's 300 rows: an archive that is not what its manifest says,
    unnoticed. A first archive skips the re-read of the manifest before its commit (`_refuse_replaced`: "a day
    that had no manifest has no removal to race with"), so a manifest that appeared meanwhile is overwritten
    silently. The manifest in the store must describe the object it names, or one run must fail (naming the
    other database's archive)."""
    import hashlib

    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.helpers import download

    other_db = f"{schema}_b"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other_db)))
    try:
        create_sample_events(conn, [DAY], rows_per_day=300, schema=schema)
        with pg.connect(dbname=other_db) as b_setup:
            b_setup.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            create_sample_events(b_setup, [DAY], rows_per_day=200, schema=schema)
        spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                         partitioning={"mode": "declarative"})
        data = r"/2024-03-10\.jsonl\.zst$"
        with FaultProxy(s3.endpoint_url) as proxy_a, FaultProxy(s3.endpoint_url) as proxy_b, \
                pg.connect() as a_conn, pg.connect(dbname=other_db) as b_conn:
            a_data = proxy_a.add(Fault(method="PUT", path=data, action="hold", times=1))
            b_manifest = proxy_b.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
            a_thread, a_outcome = in_thread(lambda: archive_partition(a_conn, spec, DAY, proxied(proxy_a, bucket)))
            b_thread = None
            try:
                assert proxy_a.wait_held(1), a_outcome  # A listed the day empty; its object waits
                b_thread, b_outcome = in_thread(lambda: archive_partition(b_conn, spec, DAY,
                                                                          proxied(proxy_b, bucket)))
                assert proxy_b.wait_held(1), b_outcome  # B listed it empty too, stored its object; its manifest waits
                a_data.gate.set()
                a_thread.join(60)
            finally:
                a_data.gate.set()
                b_manifest.gate.set()
                a_thread.join(60)
                if b_thread is not None:
                    b_thread.join(60)
        store = S3Store(s3.client(), bucket, prefix="archive")
        manifest = load_manifest(store, f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst")
        body = download(s3.client(), bucket, manifest["object"]["key"])
        outcomes = {"A": a_outcome, "B": b_outcome}
        # Now: both succeed (rows 300 and 200), and the manifest (B's: 200 rows) names an object of A's 300 rows.
        assert hashlib.md5(body).hexdigest() == manifest["object"]["md5"], (
            {k: repr(v.get("error")) if "error" in v else (v["result"].rows, v["result"].md5)
             for k, v in outcomes.items()}, manifest["rows"], manifest["object"]["md5"])
    finally:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other_db)))
