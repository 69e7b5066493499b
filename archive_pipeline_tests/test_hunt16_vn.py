"""Hunt 16 (vn): regressions and holes in the fixes just merged (removed days checked in single-day runs,
removed_verdict, deep_verify_of, _settle's _done_for, _removable_or_removed, the manifest's always-present note)."""

from __future__ import annotations

import datetime as dt
import os

from dagster import instance_for_test

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, job_name
from archive_pipeline_tests.helpers import run_check_evaluations, run_materializations
from archive_pipeline_tests.test_hunt16_vd import DAY, DAYS, _latest, _naming_days, _range
from archive_pipeline_tests.test_lifecycle import events  # noqa: F401 - fixture
from archive_pipeline_tests.test_hunt16_vg import _step_failures


def test_a_removal_settling_an_older_releases_mark_that_was_completed_meanwhile_does_not_crash_with_keyerror(
        conn, schema, store, monkeypatch):
    """Scenario: a day was removed (drop) by an older release of the archiver, whose pending removal mark records no
    ``xid`` (README: "a mark without one (written by an older version)" is settled by the source). The day's
    partition is gone; the mark stayed pending (its "done" write was slow or failed). A removal run of this release
    (prune, the Dagster retention asset, settle_pending_removal) settles it: the source holds no rows, so it
    completes the mark -- and meanwhile the older process's own "done" mark lands, so this run's conditional write
    is refused (If-Match the pending bytes).

    Now: the new _settle fallback calls ``_done_for(store, mkey, mark)``, which reads ``mark["xid"]`` once it finds
    the manifest marked done: a bare ``KeyError: 'xid'`` escapes (no table, day, cause or remedy: "a bug in
    archive_pipeline"), though the day is removed and recorded as removed exactly as it should be.

    Expected: the mark found done meanwhile is reported as completed (a Settlement), or at worst a typed
    ArchiveError naming table and day; never a bare KeyError. Fix idea: ``mark.get("xid")`` in _done_for (and
    decide what a mark without xid matches: a done mark of the same action/at/relation)."""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline_tests.test_hunt16_vk import _events

    _, spec = _events(conn, schema, retention={"keep_days": 30, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    key = keys.table_day_key(spec, spec.period(DAY), store.prefix)
    mkey = keys.manifest_key(key)
    [part] = conn.execute("SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass "
                          "AND inhrelid::regclass::text LIKE %s", (f"{schema}.events", "%0310%")).fetchone()
    conn.execute(f"DROP TABLE {part}")  # (the older release's removal, committed)
    manifest = {k: v for k, v in load_manifest(store, key).items() if k != "manifest_sha256"}
    old_mark = {"at": dt.datetime.now(dt.UTC).isoformat(), "action": "drop", "state": "pending",
                "by": "prune (an older release)", "relation": part}  # (no xid, no system: an older release's)
    lifecycle._write_manifest(store, mkey, {**manifest, "removed": old_mark})
    real_tidy = lifecycle._tidy_removed

    def old_process_completes_meanwhile(*args, **kwargs):  # (the seam: right before this run's "done" write)
        lifecycle._write_manifest(store, mkey, {**manifest, "removed": {**old_mark, "state": "done",
                                                                         "rows": manifest["rows"]}})
        return real_tidy(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "_tidy_removed", old_process_completes_meanwhile)
    try:
        settled = lifecycle.settle_pending_removal(conn, spec, DAY, store)
    except Exception as exc:  # noqa: BLE001 - judged below
        settled = exc
    assert load_manifest(store, key)["removed"]["state"] == "done"  # (the premise: the day is recorded removed)
    if isinstance(settled, ArchiveError):
        assert spec.name in str(settled) and DAY.isoformat() in str(settled), str(settled)
    else:
        assert not isinstance(settled, Exception), f"{type(settled).__name__}: {settled!r}"
        assert settled.outcome == "completed", settled


def _removal_run_racing_a_prune_killed_after_its_commit(pg, conn, schema, store, monkeypatch, action: str):
    """Run B (the Dagster removal job, Remove_<table>) of 2024-03-10; right after B read the day's manifest (no mark
    yet), `archive-pipeline prune` (A, its own session) proves the day, marks it pending, removes it and COMMITs, and
    is killed before its "done" mark (the mark stays pending, its transaction committed). Returns (run B's result,
    its materializations' metadata, its archive_proven verdicts, the manifest's removal mark at the end)."""
    from dagster import instance_for_test

    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.defs import retention_assets
    from archive_pipeline_tests.test_lifecycle import spec_for
    from archive_pipeline_tests.test_race_hunt import _removal_defs

    spec = spec_for(schema, action)
    archive_partition(conn, spec, DAY, store)
    real_check, real_marked = retention_assets.check_removable, lifecycle._marked_by_us
    fired = []

    def killed_after_its_commit(*args, **kwargs):  # (A's first step after its COMMIT: writing "done")
        raise KeyboardInterrupt("prune killed after its COMMIT")

    def prune_lands_first(*args, **kwargs):  # (the seam: B's check_removable, right after B read the manifest)
        if not fired:
            fired.append(True)
            monkeypatch.setattr(lifecycle, "_marked_by_us", killed_after_its_commit)
            try:
                with pg.connect() as other:
                    remove_day(other, spec, DAY, store, removed_by="archive-pipeline prune")
            except KeyboardInterrupt:
                pass
            finally:
                monkeypatch.setattr(lifecycle, "_marked_by_us", real_marked)
        return real_check(*args, **kwargs)

    monkeypatch.setattr(retention_assets, "check_removable", prune_lands_first)
    key = keys.table_day_key(spec, spec.period(DAY), store.prefix)
    with instance_for_test() as instance:
        remove = _removal_defs(schema, action).resolve_job_def(f"Remove_{schema}_events")
        run_b = remove.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        records = [{k: getattr(v, "value", v) for k, v in m.metadata.items()}
                   for m in run_materializations(instance, run_b.run_id)]
        proofs = [(e.passed, e.description) for e in run_check_evaluations(instance, run_b.run_id)]
    assert fired
    return run_b, records, proofs, load_manifest(store, key)["removed"]


def test_a_removal_run_racing_a_prune_does_not_record_that_it_removed_the_day_itself(
        pg, conn, events, store, archive_env, monkeypatch):
    """Scenario: a declarative table, retention drop. The Dagster removal job (B) runs for 2024-03-10; right after
    B read the day's manifest, `archive-pipeline prune` (A) removes the day (drop, COMMIT) and is killed before
    writing its "done" mark: the manifest stays marked pending, by "archive-pipeline prune". B's check_removable
    is refused (the partition is gone), the new _removable_or_removed takes the manifest as A marked it, proves
    the archive alone, and remove_day settles A's pending mark (completes it: A's transaction committed).

    Now: B's source_removed materialization says ``already_removed: False`` with ``run_id`` = B's run (and
    ``dagster/row_count`` 300): it records that THIS run removed the day's rows, while the manifest says A (prune)
    removed them and B removed nothing (remove_day returned Removal(completed=True), which the asset ignores). Had B
    found the same pending mark when it first read the manifest, it would settle it first and record
    ``already_removed: True, removed_by: archive-pipeline prune`` -- the same day, told two ways, one false.

    Expected (README: "a day found removed already says when and by whom it was (its mark), not this run, which
    removed nothing"): the record names the removal that did it (removed_by from the mark, already_removed True
    or the pending mark completed), not this run. Fix idea: in _removing, treat ``removal.completed`` like
    ``already_removed`` for ``by`` (the mark's ``by``: Removal(completed=True) should carry removed_by)."""
    run_b, records, _, mark = _removal_run_racing_a_prune_killed_after_its_commit(pg, conn, events, store,
                                                                                 monkeypatch, "drop")
    assert run_b.success and mark["state"] == "done" and mark["by"] == "archive-pipeline prune", (records, mark)
    [record] = records
    assert record.get("already_removed") is True or record.get("removed_by") == "archive-pipeline prune", (
        f"the removal job recorded that it removed the day itself: {record}; the manifest's mark: {mark}")


def test_a_removal_runs_proof_racing_a_prune_does_not_say_the_archive_equals_a_source_emptied_meanwhile(
        pg, conn, events, store, archive_env, monkeypatch):
    """Scenario: a declarative table, retention delete. The Dagster removal job (B) runs for 2024-03-10; right
    after B read the day's manifest (no mark), `archive-pipeline prune` (A) deletes the day's 300 rows, COMMITs,
    and is killed before its "done" mark (the manifest stays marked pending). B's check_removable passes (the table
    is there), and B proves the manifest it read against the source, which now has no rows of the day:
    deep_verify_of finds the difference, reads the manifest again (marked pending) and proves that one by its
    archive alone, returning it -- but the retention asset calls deep_verify, which drops the manifest proven, so
    B goes on with the unmarked one.

    Now: B's archive_proven passes with "2024-03-10: archive proven equal to the source" -- false: the source has
    no rows of the day (A deleted them); the archive was proven by itself, as the day's only copy. (Its record
    also says B removed the 300 rows: see the drop test above.)

    Expected: the verdict says what was proven: the day removed from the source (its mark) and its archive intact
    by itself, as it does when the mark is found on the first read. Fix idea: in _removing, use
    verify.deep_verify_of and take its proved manifest (and its removed mark) for the text, proven_sha and
    ``removed``."""
    run_b, records, proofs, mark = _removal_run_racing_a_prune_killed_after_its_commit(pg, conn, events, store,
                                                                                      monkeypatch, "delete")
    assert run_b.success and mark["state"] == "done", (records, proofs, mark)
    assert proofs and not any("equal to the source" in said for _, said in proofs), proofs


def test_a_removed_day_is_not_failed_as_damaged_on_a_heads_wrong_content_length_alone(
        conn, schema, archive_env, store, s3_client, bucket, monkeypatch):
    """Scenario: a legacy one-table-per-day table (naming mode, retention drop). Dagster archives 2024-03-10..12;
    retention lets 2024-03-11 go (its day table dropped: the archive is the day's only copy, its bytes intact). The
    store is reached through a gateway whose HEAD answers carry a wrong Content-Length for that object (a caching
    proxy, a CDN in front of MinIO: a corrupted response header; GETs are right). A backfill of the three days runs
    again as one ranged run.

    Now: _refuse_damaged believes the HEAD's size: "2024-03-11 was removed from the source ..., and its archive is
    damaged (size: recorded 74 bytes, stored 81); ... restore the archive's object or manifest from a backup of the
    bucket", not retryable, on every run -- for an object whose bytes are exactly the archived ones. The fix just
    merged downloads the object only where the ETag alone differs; verify --deep (verify.verify_archive) already
    knows "another size may be a gateway's wrong Content-Length on HEAD" and lets the download's digests decide, so
    `verify --deep` says the day is ok while every archive run fails it as damaged.

    Expected: the day is not failed as damaged on a HEAD's word alone where a download can tell: the object is
    downloaded, its size, MD5 and SHA-256 are as recorded, and the day is recorded as removed (the run succeeds).
    Fix idea: in _refuse_damaged, download (verify_archive deep with the manifest) whenever the object is there
    but its HEAD differs (size or ETag), not only for an ETag-only difference; fail as damaged on the download's
    word."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    config, spec = _naming_days(conn, schema)
    defs = build_definitions(config, check_source=False)
    key = asset_key(spec)
    job = defs.resolve_job_def(job_name(spec))
    gone = DAYS[1].isoformat()
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2])).success
        remove_day(conn, spec, spec.period(DAYS[1]), store)
        obj = _latest(instance, key, gone).asset_materialization.metadata["object_key"].value
        size = s3_client.head_object(Bucket=bucket, Key=obj)["ContentLength"]
        with FaultProxy(os.environ["ARCHIVE_S3_ENDPOINT_URL"]) as proxy:
            proxy.add(Fault(method="HEAD", path=rf"{obj.split('/')[-1]}$", action="set_header",
                            header=("Content-Length", str(size + 7)), times=None))
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            result = job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        failures = _step_failures(instance, result.run_id)
        recorded = {m.partition: m.metadata["state"].value
                    for m in run_materializations(instance, result.run_id) if m.asset_key == key}
    assert not any("damaged" in f for f in failures), failures
    assert result.success and recorded.get(gone) == "removed", (recorded, failures)


def test_a_removed_days_manifest_answered_by_a_gateways_page_with_retries_off_does_not_say_it_will_be_retried(
        conn, schema, archive_env, store, monkeypatch):
    """Scenario: a legacy one-table-per-day table (naming mode, retention drop), ``retry: max_retries: 0``. Dagster
    archives 2024-03-10..12; retention lets 2024-03-11 go. Partition 2024-03-11 is then materialized alone (the fix
    just merged looks at a removed day's archive in a run of the day alone too) while a gateway in front of the
    store answers the GET of its manifest with 200 and an error page (no ETag).

    Now: the day fails, retryable, but its message says "... manifest.json came back corrupted or as an error 3
    times (...); the run will be retried" followed by "What to do: not retried: retries are off (retry:
    max_retries: 0 ...); launch it again": retries_off rewrites "retried automatically" and "transient, retried"
    but not the store's "the run will be retried" (the fix for a removed day's HEAD relied on it), so the message
    says both that the run will be retried and that it will not. (The command line rewrites that phrase: cli.py's
    "; the run will be retried" -> "; retryable".)

    Expected: with retries off, the failure does not say the run will be retried (it says retries are off and to
    launch it again). Fix idea: retries_off also rewrites "; the run/the download/the day will be retried" (as the
    CLI's rewording does), or the store's words become "retryable"."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    config, spec = _naming_days(conn, schema)
    defs = build_definitions(config, check_source=False)
    job = defs.resolve_job_def(job_name(spec))
    gone = DAYS[1].isoformat()
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2])).success
        remove_day(conn, spec, spec.period(DAYS[1]), store)
        with FaultProxy(os.environ["ARCHIVE_S3_ENDPOINT_URL"]) as proxy:
            proxy.add(Fault(method="GET", path=rf"{gone}\.jsonl\.zst\.manifest\.json$", action="error_200",
                            times=None))
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            result = job.execute_in_process(instance=instance, partition_key=gone, raise_on_error=False)
        failures = _step_failures(instance, result.run_id)
    said = "\n".join(failures)
    assert not result.success and gone in said and "retries are off" in said, said
    assert "will be retried" not in said, said
