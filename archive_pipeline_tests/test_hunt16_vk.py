"""Hunt 16 (vk), class: two operations of the product racing on one table-day from different sessions (archive
--overwrite against verify, restore, removal, two removals, two restores), forced into one interleaving by a seam
that runs the other operation at the exact point, and the table-day lock's session lost mid-operation. Each test
fails on the current code and passes once the bug it names is fixed."""

from __future__ import annotations

import datetime as dt
import json

import yaml
from click.testing import CliRunner

from archive_pipeline import cli as cli_module
from archive_pipeline.cli import main
from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_lifecycle import events  # noqa: F401 - fixture (2024-03-10 and 11, 300 rows)

DAY = dt.date(2024, 3, 10)


def _env(pg, s3, bucket: str, tmp_path, table: dict) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250",
            "ARCHIVE_S3_ACCESS_KEY_ID": "testing", "ARCHIVE_S3_SECRET_ACCESS_KEY": "testing"}


def _events(conn, schema: str, **extra) -> tuple[dict, TableSpec]:
    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], rows_per_day=200, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
             "partitioning": {"mode": "declarative"}, "format": "jsonl", "compression": "zstd", **extra}
    return table, TableSpec(**{**table, "start_date": DAY})


def test_verify_deep_racing_an_overwrite_reports_the_generation_it_proved(pg, conn, schema, s3, bucket, store,
                                                                          s3_client, tmp_path, monkeypatch):
    """`archive-pipeline verify --deep --day 2024-03-10 --json` while another process runs `archive --overwrite
    --day 2024-03-10`. verify reads the manifest (generation 1), checks the stored object (intact), and then the
    overwrite commits generation 2 and deletes generation 1 before the deep proof downloads it. deep_verify sees
    the object gone, reads the manifest again and proves generation 2 instead: the day is reported ok. But the
    report's "key" is still generation 1's object (archive/.../2024-03-10.jsonl.zst), which no longer exists:
    the verdict is about one generation and the report names another (a script that copies or checks the key it
    was told is proven finds nothing there). Expected: the report names the object actually proven, generation 2's
    (...2024-03-10.g2.jsonl.zst), as it does when the overwrite lands before the light check.
    Fix idea: deep_verify returns (or exposes) the manifest it proved, and cli.verify reports its object key."""
    table, spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store)
    real = cli_module.deep_verify_of  # (the seam: the command's deep proof)
    raced = []

    def overwrite_first(*args, **kwargs):
        if not raced:
            with pg.connect() as other:
                raced.append(archive_partition(other, spec, DAY, store, overwrite=True))
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_module, "deep_verify_of", overwrite_first)
    done = CliRunner(env=_env(pg, s3, bucket, tmp_path, table)).invoke(
        main, ["verify", "--deep", "--day", DAY.isoformat(), "--json"])
    assert raced and raced[0].generation == 2, (done.output, done.exception)
    out = json.loads(done.stdout)
    [day] = out["days"]
    assert day["ok"], day  # (the premise: the new generation is proven)
    assert day["key"] == raced[0].key, (day["key"], "proved", raced[0].key)


def test_a_removal_settling_a_mark_that_its_own_run_completes_meanwhile_is_not_called_unrecorded(
        pg, conn, schema, s3, bucket, store, monkeypatch):
    """Two removals of one day: `archive-pipeline prune` (A) and the Dagster retention asset (B). A proves the day,
    marks the manifest pending, drops the partition and COMMITs; then its session is terminated (a DBA's
    pg_terminate_backend, a pooler restart), releasing the table-day lock, while its process goes on to write the
    "done" mark. B takes the lock, finds the pending mark, learns that A's transaction committed and starts
    settling it: it reads the manifest (A's pending bytes), deep-checks the archive, and meanwhile A's "done" mark
    lands. B's own "done" write is conditioned on the pending bytes and is refused, and B fails with
    RemovalNotRecorded ("the removal is committed ... but ... not marked done", remedy: run the removal again),
    though the day is removed and recorded as removed exactly as it should be: a failure naming a cause that does
    not exist. Expected: B sees the mark completed by the run that removed the day (as _remove's own
    _completed_for_us does, and as the take-back branch of _settle does with _unmarked_now) and reports the day
    as removed. Fix idea: in _settle's completed branch, on a refused write, read the manifest again and accept a
    "done" mark of the same xid."""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.test_race_hunt import in_thread, proxied

    _, spec = _events(conn, schema, retention={"keep_days": 30, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    real_verify = lifecycle.verify_archive
    with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as a_conn:
        a_pid = a_conn.info.backend_pid
        # A's second manifest PUT is its "done" mark, written after its COMMIT
        held = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", skip=1, times=1))
        thread, outcome = in_thread(lambda: remove_day(a_conn, spec, DAY, proxied(proxy, bucket), removed_by="A"))
        try:
            assert proxy.wait_held(1), outcome
            conn.execute("SELECT pg_terminate_backend(%s, 30000)", (a_pid,))

            def a_lands_meanwhile(*args, **kwargs):
                held.gate.set()
                thread.join(60)
                return real_verify(*args, **kwargs)

            monkeypatch.setattr(lifecycle, "verify_archive", a_lands_meanwhile)
            with pg.connect() as b_conn:
                try:
                    removal = remove_day(b_conn, spec, DAY, store, removed_by="B")
                except Exception as exc:  # noqa: BLE001 - the bug: reported below with A's outcome
                    removal = exc
        finally:
            held.gate.set()
            thread.join(60)
    manifest = load_manifest(store, keys.table_day_key(spec, spec.period(DAY), store.prefix))
    assert manifest["removed"]["state"] == "done", manifest["removed"]  # (the premise: the day is recorded removed)
    assert "error" not in outcome, repr(outcome.get("error"))  # (A finished: its mark landed)
    assert not isinstance(removal, Exception), f"{type(removal).__name__}: {removal}"


def test_a_deep_checked_run_racing_an_overwrite_names_the_archive_it_proved(conn, schema, store, pg):
    """A table with deep_check: true. Dagster's run archives 2024-03-10 (generation 1) and releases the table-day
    lock; before its check runs, a user's `archive-pipeline archive --overwrite --day 2024-03-10` commits
    generation 2 and deletes generation 1. The check (checks.verify_result, with the run's recorded values) sees
    the recorded object gone, finds the day archived again since, checks and proves generation 2: it passes. But
    its metadata "archive" (what the UI shows as the archive checked) is generation 1's object, which no longer
    exists, and its "verified" text says "content proven" without the "archived again since" it found: the
    check's result is about generation 2 and names generation 1 (the same happens to verify_archives after any
    overwrite from the command line). Expected: the metadata names the object proven (generation 2's).
    Fix idea: verify_result takes the archive's URI from the manifest it checked when `replaced` is set."""
    from archive_pipeline.defs.assets import recorded
    from archive_pipeline.defs.checks import verify_result

    _, spec = _events(conn, schema)
    ran = archive_partition(conn, spec, DAY, store)
    with pg.connect() as other:
        again = archive_partition(other, spec, DAY, store, overwrite=True)
    assert again.generation == 2 and again.key != ran.key
    verdict = verify_result(store, spec, DAY, recorded(ran), deep=True, conn=conn)
    assert verdict.passed, verdict.problems  # (the premise: generation 2 is proven)
    assert verdict.metadata["archive"] == store.uri(again.key), (verdict.metadata["archive"], "proved",
                                                                  store.uri(again.key))


def test_a_removal_run_racing_a_prune_of_the_day_does_not_blame_someone_else_and_advise_a_restore(
        pg, conn, events, store, archive_env, monkeypatch):
    """Two removals of one day at once: the Dagster retention asset (Remove_<table>, run B) and `archive-pipeline
    prune` (A, retention action drop). B reads the day's manifest (no removal mark yet); A then proves the day,
    drops its partition and marks the manifest done. B goes on to check_removable (before its proof, outside the
    table-day lock) and fails, not retryable: "stays as it is: no partition of ... holds the day now (its
    partition was detached or dropped since the day was archived, by someone else: pg_partman's retention, a
    DBA) ... if not, restore the day from its archive into the table (restore --into original ...)": a cause that
    is false (our own retention removed it, as the manifest records) and a remedy that would put back rows
    retention just removed. Expected: as remove_day does under the lock, B finds the day removed (its manifest,
    read again, is marked done) and reports it already removed (or at least says another removal run removed it).
    Fix idea: on RemovalRefused from check_removable, read the manifest again; if it is marked removed now, go the
    "removed" way (prove the archive alone, then remove_day, which reports already_removed)."""
    from dagster import instance_for_test

    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.defs import retention_assets
    from archive_pipeline_tests.test_lifecycle import spec_for
    from archive_pipeline_tests.test_race_hunt import _removal_defs

    spec = spec_for(events, "drop")
    archive_partition(conn, spec, DAY, store)
    real_check = retention_assets.check_removable
    fired = []

    def prune_lands_first(*args, **kwargs):
        if not fired:  # A, on its own session, lands right after B read the manifest
            fired.append(True)
            with pg.connect() as other:
                assert remove_day(other, spec, DAY, store, removed_by="archive-pipeline").rows == 300
        return real_check(*args, **kwargs)

    monkeypatch.setattr(retention_assets, "check_removable", prune_lands_first)
    with instance_for_test() as instance:
        remove = _removal_defs(events).resolve_job_def(f"Remove_{events}_events")
        run_b = remove.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        failures = [e.event_specific_data.error.to_string() for e in run_b.all_events if e.is_step_failure]
    assert fired
    assert not any("by someone else" in f or "restore the day from its archive" in f for f in failures), failures
    assert run_b.success, failures


def test_an_overwrite_whose_lock_session_dies_during_its_commit_says_so_and_does_not_commit(
        pg, conn, schema, store, s3_client, bucket, monkeypatch):
    """`archive --overwrite --day 2024-03-10` (A) has uploaded generation 2 and checked that it still holds the
    table-day lock; while it reads the manifest once more before replacing it, its PostgreSQL session is
    terminated (pg_terminate_backend by a DBA, an idle-session reaper, a failover of a pooler), which releases
    the lock. Another archive run of the day (B, the Dagster schedule) takes the lock at once, tidies generation 2
    as an uncommitted leftover and keeps generation 1 (same rows). A then writes its manifest anyway (nothing
    checks the lock again): for a moment the day's manifest names an object B deleted, until A's HEAD finds it
    gone, puts generation 1's manifest back and fails saying "a run of the day on another server removed it as a
    leftover ... archive each table from one server only": a cause that is false (one server; A lost its lock),
    with a remedy that fixes nothing. Expected: A notices the lost lock before its manifest PUT (require_lock_held
    right before the write, after the last GET) and fails, retryable, saying its session/lock was lost; generation
    1's manifest is never replaced. Fix idea: call require_lock_held(self.conn, ...) just before _put_manifest."""
    from archive_pipeline.core import archive as archive_module
    from archive_pipeline.core.errors import ArchiveError

    _, spec = _events(conn, schema)
    first = archive_partition(conn, spec, DAY, store)
    mkey = keys.manifest_key(keys.table_day_key(spec, spec.period(DAY), store.prefix))
    puts = []
    real_put = store.put_bytes

    def counting_put(key, *args, **kwargs):
        if key == mkey:
            puts.append(key)
        return real_put(key, *args, **kwargs)

    real_refuse = archive_module._Archiving._refuse_replaced
    raced = []

    def session_dies_meanwhile(self, result, existing):
        if not raced:
            conn.execute("SELECT pg_terminate_backend(%s, 30000)", (self.conn.info.backend_pid,))
            with pg.connect() as other:
                raced.append(archive_partition(other, spec, DAY, store))  # B: the lock is free
            puts.clear()
        return real_refuse(self, result, existing)

    monkeypatch.setattr(archive_module._Archiving, "_refuse_replaced", session_dies_meanwhile)
    monkeypatch.setattr(store, "put_bytes", counting_put)
    with pg.connect() as a_conn:
        try:
            archive_partition(a_conn, spec, DAY, store, overwrite=True)
            failure = None
        except ArchiveError as exc:
            failure = exc
    assert raced and raced[0].skipped, raced  # (the premise: B ran in between and kept generation 1)
    assert failure is not None and failure.retryable
    assert "another server" not in str(failure) and "lock" in str(failure), str(failure)
    assert not puts, "A wrote the day's manifest after its lock was lost"
    assert s3_client.head_object(Bucket=bucket, Key=first.key)
