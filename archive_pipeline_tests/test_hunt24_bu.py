"""Hunt 24 (bu): the Dagster side of retention (retention_assets.py, the retention schedule, lifecycle.py as its
core twin): records and checks of removals retried, completed for another run, or of days with nothing to remove."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, instance_for_test

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import run_check_evaluations, run_materializations
from archive_pipeline_tests.test_hunt16_vn import _removal_run_racing_a_prune_killed_after_its_commit
from archive_pipeline_tests.test_lifecycle import DAYS, _removal_defs, events, spec_for  # noqa: F401 - fixture

DAY = DAYS[0]


def _meta(materialization) -> dict:
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def _empty_day_archived(conn, events: str, store):
    """The day before DAY of ``events.events`` (retention: drop after 30 days) archived as empty: (that day, the
    config, its table's spec, the day's archive key)."""
    first = DAY - dt.timedelta(days=1)
    table = {"name": f"{events}.events", "day_column": "created_at", "start_date": first.isoformat(),
             "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}
    config = parse_config({"retry": {"max_retries": 0}, "tables": [table]})
    spec = config.tables[0]
    assert archive_partition(conn, spec, first, store).empty  # (a manifest alone: no rows, no object)
    return first, config, spec, keys.table_day_key(spec, spec.period(first), store.prefix)


def test_a_removal_completing_a_prunes_committed_mark_under_its_lock_records_removed_by_unknown(
        pg, conn, events, store, archive_env, monkeypatch):
    """Scenario: a declarative table, retention drop. The Dagster removal job (B) runs for 2024-03-10; right after B
    read the day's manifest (no mark), `archive-pipeline prune` (A) removes the day (drop, COMMIT) and is killed
    before its "done" mark: the manifest stays pending, ``by: archive-pipeline prune``. B goes on
    (_removable_or_removed takes A's mark), and core.remove_day, under the table-day lock, settles A's mark:
    completed.

    Now: lifecycle._remove_day's settle branch returns ``Removal(..., completed=True)`` without ``removed_by`` (its
    already-removed branch passes ``removed_by=mark.get("by")``); retention_assets._removing takes ``by`` from
    ``removal.removed_by or ""`` for a completed removal, so B's source_removed record says ``already_removed:
    True, removed_by: "unknown"`` while the manifest it has just completed names "archive-pipeline prune" (had B
    met the pending mark first, it would have settled it itself and named prune). Hunt 16 (vn) made it say
    already_removed; who removed the day was lost on the way.

    Should: ``removed_by: archive-pipeline prune``, as the mark says. Fix idea: in _remove_day's
    ``settled.outcome == "completed"`` branch pass ``removed_by=mark.get("by")`` to Removal."""
    run_b, records, _, mark = _removal_run_racing_a_prune_killed_after_its_commit(pg, conn, events, store,
                                                                                 monkeypatch, "drop")
    assert run_b.success and mark["state"] == "done" and mark["by"] == "archive-pipeline prune", (records, mark)
    [record] = records
    assert record.get("removed_by") == "archive-pipeline prune", (
        f"the record of the removal names no remover: {record}; the manifest's mark: {mark}")


def test_a_removal_retried_after_its_own_commit_records_already_removed(conn, events, store, s3, archive_env,
                                                                        monkeypatch):
    """Scenario: a declarative table, retention drop, ``retry: {max_retries: 1}``. The removal job runs 2024-03-10:
    it proves the day, marks the manifest pending, drops the partition and COMMITs; the "done" mark's PUT is answered
    503 once (a store throttling: RemovalNotRecorded, retryable). Dagster's RetryPolicy retries the step in the same
    run; the retry settles the pending mark (completed) and the run succeeds.

    Now: the retry finds the day removed: settle_pending_removal completes the mark, then remove_day returns
    ``already_removed=True`` (its done mark), and _removing records ``already_removed: True`` with ``run_id`` = this
    very run: the day's only source_removed record says the run found the day removed already and removed nothing,
    though this run's first attempt did the removal (300 rows dropped). A user filtering removals on
    ``already_removed`` finds no run that removed the day.

    Should: a removal whose mark is this run's own (``by`` = ``dagster run <this run>``) is recorded as this run's
    removal: ``already_removed: False``. Fix idea: in _removing, ``earlier`` is false where the mark's ``by`` names
    ``context.run.run_id``."""
    result = archive_partition(conn, spec_for(events, "drop"), DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        remove = _removal_defs(events, max_retries=1).resolve_job_def(f"Remove_{events}_events")
        # the first manifest PUT is the pending mark; the done mark fails (all of its attempts in the first step
        # attempt: the premise below checks that the step was retried once), then the store answers again
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=503, skip=1, times=6))
        done = remove.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        records = [_meta(m) for m in run_materializations(instance, done.run_id)]
        retried = [e for e in instance.all_logs(done.run_id)
                   if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    mark = load_manifest(store, result.key)["removed"]
    assert done.success and mark["state"] == "done" and mark["by"] == f"dagster run {done.run_id}", (records, mark)
    assert len(retried) == 1, retried  # (the premise: the done mark failed, and the step was retried)
    [record] = records
    assert record["already_removed"] is False, (
        f"run {done.run_id} removed the day (its first attempt) and records that it found it removed: {record}")


def test_a_removal_of_an_archived_empty_day_with_no_partition_records_a_drop_done_before(
        conn, events, store, archive_env):
    """Scenario: a declarative table (partitions for 2024-03-10 and 11 only), retention drop, ``start_date``
    2024-03-09: a day before the first partition. 2024-03-09 is archived as empty (no rows: a manifest, no object),
    and its removal runs (the retention schedule requests every archived due day).

    Now: core.remove_day finds nothing to remove (no partition of its own, no row) and returns ``Removal(nothing=
    True, relation "", removed_at None)``, which `prune` reports as "no data". retention_assets._removing ignores
    ``removal.nothing``: it records a source_removed materialization ``action: drop``, ``relation: ""``,
    ``already_removed: False``, ``run_id`` = this run and ``removed_at: "before"`` (the words of a day removed
    earlier): a record that this run dropped the day -- or that it had been removed before -- for a day nothing was
    ever removed from, and whose manifest carries no removal mark.

    Should: say what happened: nothing to remove (the day had no rows and no partition): e.g. a materialization
    with ``nothing_to_remove: True`` and no action/relation/removed_at, or the log line and no record. Fix idea:
    in _removing, branch on ``removal.nothing`` as the CLI does."""
    from archive_pipeline.definitions import build_definitions

    first, config, spec, key = _empty_day_archived(conn, events, store)
    with instance_for_test() as instance:
        done = build_definitions(config).resolve_job_def(f"Remove_{events}_events").execute_in_process(
            partition_key=first.isoformat(), instance=instance, raise_on_error=False)
        records = [_meta(m) for m in run_materializations(instance, done.run_id)]
    assert "removed" not in load_manifest(store, key)  # (the premise: nothing was removed)
    assert done.success, records
    for record in records:
        assert record.get("removed_at") != "before" and record.get("relation") != "", (
            f"nothing was removed of {first} (no partition, no row), and its removal record says: {record}")


def test_the_proof_of_a_removed_empty_day_says_its_object_and_digests_were_checked(conn, events, store,
                                                                                   archive_env):
    """Scenario: a declarative table, retention drop, ``start_date`` 2024-03-09, whose partition for 2024-03-09 was
    created ahead and holds no row. The day is archived as empty (a manifest alone: no data object) and removed (its
    empty partition dropped, the manifest marked done). The removal runs for the day again (a backfill of
    source_removed over the table's history, a manual re-launch).

    Now: _removing proves the removed day by its archive alone (deep_verify) and records archive_proven passed with
    _proven_text's words for every removed day: "removed from the source (done, ...) after its archive was proven;
    the archive is intact (object, digests and rows checked now)" -- an object, digests checked for a day that
    has no object and no digest (the archive_intact check's sibling, checks.py, says of such a day "no rows that
    day; its manifest records it as empty").

    Should: the verdict says what was checked: the manifest, recording the day as empty (no object). Fix idea:
    _proven_text words an ``empty`` manifest (no ``object``) apart."""
    from archive_pipeline.definitions import build_definitions

    conn.execute(f"CREATE TABLE {events}.events_20240309 PARTITION OF {events}.events "
                 "FOR VALUES FROM ('2024-03-09 00:00+00') TO ('2024-03-10 00:00+00')")
    first, config, spec, key = _empty_day_archived(conn, events, store)
    remove = build_definitions(config).resolve_job_def(f"Remove_{events}_events")
    with instance_for_test() as instance:
        removed = remove.execute_in_process(partition_key=first.isoformat(), instance=instance)
        manifest = load_manifest(store, key)
        assert removed.success and manifest["removed"]["state"] == "done" and not manifest.get("object"), manifest
        again = remove.execute_in_process(partition_key=first.isoformat(), instance=instance)
        proofs = [(e.passed, e.description) for e in run_check_evaluations(instance, again.run_id)]
    assert again.success and proofs and all(passed for passed, _ in proofs), proofs
    for _, description in proofs:
        assert "object" not in description and "digests" not in description, (
            f"{first} was archived empty (no object, no digest); its proof says: {description}")
