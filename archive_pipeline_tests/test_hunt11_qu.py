"""Hunt 11 (qu): Dagster runs under faults and retries (ranged runs, retries, terminations, re-execution)."""

from __future__ import annotations


import datetime as dt
import json
import os
import signal
import threading

from dagster import (AssetCheckKey, AssetKey, DagsterEventType, DagsterRunStatus, ReexecutionOptions, RunsFilter,
                     execute_job, instance_for_test, reconstructable)

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline.local.local_stack import create_sample_events

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(5)]
RANGE = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
         "dagster/asset_partition_range_end": DAYS[-1].isoformat()}


def _raw(schema, retry=1, **table):
    return {"retry": {"max_retries": retry, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
            "tables": [{"name": f"{schema}.events", "day_column": "created_at", "start_date": FIRST.isoformat(),
                        **table}]}


def _job_from_environment():
    """The archive job of the table configured in $QU_CONFIG (reconstructable, as a re-execution needs)."""
    return build_definitions(parse_config(json.loads(os.environ["QU_CONFIG"]))).resolve_job_def(os.environ["QU_JOB"])


def _use(monkeypatch, raw, schema):
    monkeypatch.setenv("QU_CONFIG", json.dumps(raw))
    monkeypatch.setenv("QU_JOB", f"Archive_{schema}_events")
    return parse_config(raw).tables[0]


def _failures(instance, run_id):
    return [e.dagster_event.step_failure_data.user_failure_data.description
            for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.is_step_failure
            and e.dagster_event.step_failure_data.user_failure_data]


def _materialized(instance, run_id):
    return [(r.event_log_entry.dagster_event.partition,
             r.event_log_entry.dagster_event.step_materialization_data.materialization.tags.get("archive/state"))
            for r in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records]


def _checks(instance, spec, name="archive_intact"):
    return instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(asset_key(spec), name),
                                                                        limit=50)


def test_a_ranged_run_terminated_while_it_waits_to_retry_names_the_day_it_leaves_unarchived(
        conn, schema, archive_env, pg, monkeypatch):
    """A backfill's ranged run of 2024-03-10..14: 2024-03-13 fails retryably (another session holds its table-day
    lock), the other four are archived, and the step is "up for retry" (retry: delay_seconds 5 here, 30..120 s by
    default). The person clicks Terminate during that wait. Now: the run sits out the whole backoff, then Dagster
    logs "Started re-execution (attempt # 2)" and raises the deferred interrupt at the step's boundary, before
    the asset's code runs, so the run ends CANCELED with a bare ``DagsterExecutionInterruptedError`` as its step
    failure: no table, no day, nothing saying that 2024-03-13 was left unarchived or what to do. The README
    promises that a terminated run's archive step "fails naming table, day and what the day is left as", and that
    "a run terminated mid-range names the day it cut off, the days that failed before and those it never started".
    Expected: the final step failure names the table and 2024-03-13 (failed, not archived) and how to redo it.
    Fix idea: handle a termination that lands in the retry wait where the product can (e.g. an ``op`` hook /
    run-status sensor recording the days left, from the STEP_UP_FOR_RETRY's failed_days metadata), or wait for the
    retry inside the step, where a termination is the product's to word."""
    import time

    from archive_pipeline.core.locks import lock_key

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    raw = _raw(schema, retry=2)
    raw["retry"]["delay_seconds"] = 5
    spec = _use(monkeypatch, raw, schema)
    locked = DAYS[3].isoformat()
    with pg.connect() as other, instance_for_test() as instance:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[3])).fetchone()[0]

        def terminate() -> None:  # once the step is up for retry (its wait has begun): the UI's Terminate
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
                if runs and any("to be tried again in" in (e.user_message or "")  # (the step waits out the backoff)
                                for e in instance.all_logs(runs[0].run_id)):
                    instance.report_run_canceling(runs[0])
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                time.sleep(0.05)

        worker = threading.Thread(target=terminate)
        worker.start()
        try:
            with execute_job(reconstructable(_job_from_environment), instance=instance, tags=RANGE,
                             raise_on_error=False) as first:
                run_id = first.run_id
        finally:
            worker.join(60)
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.CANCELED
        assert sorted(p for p, _ in _materialized(instance, run_id)) == [d.isoformat() for d in DAYS
                                                                        if d.isoformat() != locked]
        final = [e.dagster_event.step_failure_data for e in instance.all_logs(run_id)
                 if e.dagster_event and e.dagster_event.is_step_failure][-1]
        said = final.user_failure_data.description if final.user_failure_data else final.error.to_string()
    assert spec.name in said and locked in said, (
        f"the terminated run's step failure names neither the table nor the day it left unarchived:\n{said[:600]}")


def test_re_executing_from_failure_an_overwrite_run_redoes_the_day_it_failed_though_an_older_run_archived_it(
        conn, schema, archive_env, pg, store, monkeypatch):
    """Run R1 archives 2024-03-10..14 with run config ``overwrite: true`` (one ranged run) and succeeds. Later a row
    of 2024-03-13 is corrected in PostgreSQL, so the person re-executes R1 (Runs → R1 → Re-execute → All steps: "a
    fresh run of the range, overwrite and all", README). That run R2 archives four days again, but 2024-03-13
    fails, retryably (another session holds its table-day lock; retries are off here), and its failure says "Then:
    re-execute this run (Runs → this run → Re-execute → From failure) ...". The person does so (R3, which Dagster
    tags ``dagster/is_resume_retry``). Now: R3 counts every day that any run of the re-execution group ever
    materialized as done, R1's 2024-03-13 (archived before the correction) among them; it logs "retry of this
    run; 5 of 5 days were archived by an earlier attempt and are not done again", archives nothing and ends
    SUCCESS; the partition shows MATERIALIZED, while its archive still holds the old row (the next plain run of the
    day fails "changed since it was archived"). The overwrite the person asked for twice is never applied.
    Expected: the re-execution from failure archives 2024-03-13 again with overwrite (only R2's recorded days are
    R2's done). Fix idea: in ``_archive_days`` count as done only days materialized by the parent chain since the
    day was last planned (e.g. the parent run and its own resumed ancestors, not an earlier "all steps" run)."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.locks import lock_key

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    spec = _use(monkeypatch, _raw(schema, retry=0), schema)
    config = {"ops": {f"archive__{schema}__events": {"config": {"overwrite": True}}}}
    job = reconstructable(_job_from_environment)
    changed = DAYS[3]
    with instance_for_test() as instance:
        with execute_job(job, instance=instance, tags=RANGE, run_config=config) as r1:
            assert r1.success
            r1_id = r1.run_id
        conn.execute(f'UPDATE "{schema}".events SET amount = amount + 1 WHERE created_at >= %s AND created_at < %s',
                     (changed, changed + dt.timedelta(days=1)))
        with pg.connect() as other:
            assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, changed)).fetchone()[0]
            with execute_job(job, instance=instance, tags=RANGE, run_config=config,
                             reexecution_options=ReexecutionOptions(parent_run_id=r1_id), raise_on_error=False) as r2:
                assert not r2.success
                r2_id = r2.run_id
            other.execute("SELECT pg_advisory_unlock_all()")
        [message] = _failures(instance, r2_id)
        assert f"1 of 5 days failed ({changed})" in message and "From failure" in message, message  # (the premise)
        # Runs → R2 → Re-execute → From failure (the UI's re-execution tags the run as a resume retry)
        with execute_job(job, instance=instance, tags={**RANGE, "dagster/is_resume_retry": "true"},
                         run_config=config, reexecution_options=ReexecutionOptions.from_failure(r2_id, instance),
                         raise_on_error=False) as r3:
            redone = [p for p, _ in _materialized(instance, r3.run_id)]
    assert changed.isoformat() in redone, f"the re-execution from failure archived {redone} only"
    assert archive_partition(conn, spec, changed, store).skipped  # the archive holds the corrected row


def test_a_one_day_run_terminated_while_its_materialization_is_stored_names_table_and_day_and_records_the_check(
        conn, schema, archive_env, monkeypatch):
    """The schedule's run of 2024-03-10 (one day, retry on) archives the day; the person clicks Terminate just as
    Dagster stores the day's materialization (the step's output, a yielded MaterializeResult). Now: Dagster raises
    the deferred interrupt at the step's boundary when it resumes the asset's generator, past the asset's own
    handling: the run ends CANCELED with a bare ``DagsterExecutionInterruptedError`` (no table, no day, nothing on
    what the day is left as), and the day stays materialized (published) with no ``archive_intact`` result at all:
    half recorded. A ranged run handles exactly this (its days are logged with ``context.log_event`` inside the
    asset's code, "so a termination while one is stored is handled as any other ... its check is recorded too, so
    the day is not left half recorded"), and the README promises that a terminated run's archive step "fails
    naming table, day and what the day is left as". Expected: the step failure names the table and the day, and
    the day's archive_intact is recorded for it. Fix idea: for a one-day run too, record the day's events inside
    the asset's code (``log_event`` under the same try/except), or yield the check with the materialization
    (``MaterializeResult(check_results=...)``) so no resume point falls between them."""
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    raw = _raw(schema, retry=2)
    spec = _use(monkeypatch, raw, schema)
    defs = build_definitions(parse_config(raw))
    day = DAYS[0].isoformat()
    with instance_for_test() as instance:
        storage = instance.event_log_storage
        real = storage.store_event
        fired = []

        def store_event(event):  # the UI's Terminate, arriving while the day's materialization is stored
            real(event)
            dagster_event = event.dagster_event
            if dagster_event is not None and dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION \
                    and not fired:
                fired.append(event)
                instance.report_run_canceling(instance.get_run_by_id(event.run_id))
                os.kill(os.getpid(), signal.SIGINT)

        monkeypatch.setattr(storage, "store_event", store_event)
        result = defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=day, instance=instance, raise_on_error=False)
        assert instance.get_run_by_id(result.run_id).status == DagsterRunStatus.CANCELED
        assert [p for p, _ in _materialized(instance, result.run_id)] == [day]  # published and recorded
        final = [e.dagster_event.step_failure_data for e in instance.all_logs(result.run_id)
                 if e.dagster_event and e.dagster_event.is_step_failure][-1]
        said = final.user_failure_data.description if final.user_failure_data else final.error.to_string()
        checks = [(c.partition, c.status.value) for c in _checks(instance, spec)]
    assert spec.name in said and day in said, f"the step failure names neither table nor day:\n{said[:400]}"
    assert checks == [(day, "SUCCEEDED")], f"the archived day's archive_intact was not recorded: {checks}"


def test_a_removal_terminated_while_its_proof_is_stored_names_table_and_day(conn, schema, archive_env, monkeypatch):
    """2024-03-10 is archived; its removal run (retention, one day) proves the archive and yields the day's
    ``archive_proven`` verdict; the person clicks Terminate just as Dagster stores that verdict. Now: the deferred
    interrupt is raised at the step's boundary when Dagster resumes the removal's generator, past its
    ``except (DagsterExecutionInterruptedError, KeyboardInterrupt)`` (which words a termination "cancelled while
    removing ...; nothing was changed"): the run ends CANCELED with a bare ``DagsterExecutionInterruptedError``,
    no table, no day, nothing on whether the source was touched. README: a terminated run's "archive, removal or
    check step fails naming table, day and what the day is left as". Expected: the step failure names the table
    and the day (and that nothing was removed; the rows are all still there). Fix idea: log the verdict with
    ``context.log_event`` inside the guarded code instead of yielding it, as the ranged archive run does."""
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    raw = _raw(schema, retry=2, retention={"keep_days": 30, "action": "delete"})
    spec = _use(monkeypatch, raw, schema)
    defs = build_definitions(parse_config(raw))
    day = DAYS[0].isoformat()
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=day, instance=instance).success
        storage = instance.event_log_storage
        real = storage.store_event
        fired = []

        def store_event(event):  # the UI's Terminate, arriving while the removal's proof is stored
            real(event)
            dagster_event = event.dagster_event
            if dagster_event is not None and dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION \
                    and event.run_id != "" and not fired and dagster_event.job_name.startswith("Remove_"):
                fired.append(event)
                instance.report_run_canceling(instance.get_run_by_id(event.run_id))
                os.kill(os.getpid(), signal.SIGINT)

        monkeypatch.setattr(storage, "store_event", store_event)
        result = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(  # a dry run: the proof is
            partition_key=day, instance=instance, raise_on_error=False, run_config={  # recorded before anything else
                "ops": {AssetKey(["source_removed", schema, "events"]).to_python_identifier(): {
                    "config": {"dry_run": True}}}})
        assert fired and instance.get_run_by_id(result.run_id).status == DagsterRunStatus.CANCELED
        final = [e.dagster_event.step_failure_data for e in instance.all_logs(result.run_id)
                 if e.dagster_event and e.dagster_event.is_step_failure][-1]
        said = final.user_failure_data.description if final.user_failure_data else final.error.to_string()
    assert conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone()[0] == 5  # nothing removed
    assert spec.name in said and day in said, f"the removal's step failure names neither table nor day:\n{said[:400]}"
