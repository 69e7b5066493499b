"""Hunt 10 (ps): Dagster runs with failures, taken as an operator would."""

from __future__ import annotations

import datetime as dt
import json
import os

from dagster import AssetCheckKey, DagsterEventType, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(4)]
RANGE = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
         "dagster/asset_partition_range_end": DAYS[-1].isoformat()}


def _config(schema, retry=1, **table):
    return parse_config({"retry": {"max_retries": retry, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": FIRST.isoformat(), **table}]})


def _failure_text(result):
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    data = failures[-1].step_failure_data
    return (data.user_failure_data.description if data.user_failure_data else None), data.error


def _checks(instance, spec, name="archive_intact"):
    return instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(asset_key(spec), name), limit=50)


def _job_from_environment():
    """The archive job of the table configured in $PS_CONFIG (reconstructable, as a re-execution needs)."""
    return build_definitions(parse_config(json.loads(os.environ["PS_CONFIG"]))).resolve_job_def(os.environ["PS_JOB"])


def _proof_meets_a_correction(pg, conn, schema, s3, monkeypatch, proxy, instance, changed):
    """A ranged run of DAYS (table with deep_check) during which ``changed`` is corrected in PostgreSQL while
    its archive is being proven (the proof's download of its object is held until the UPDATE committed)."""
    import threading

    from dagster import execute_job, reconstructable

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    raw = {"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10},
           "tables": [{"name": f"{schema}.events", "day_column": "created_at", "start_date": FIRST.isoformat(),
                       "deep_check": True}]}
    monkeypatch.setenv("PS_CONFIG", json.dumps(raw))
    monkeypatch.setenv("PS_JOB", f"Archive_{schema}_events")
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
    gate = threading.Event()
    proxy.add(Fault(method="GET", path=rf"/{changed}\.jsonl\.zst$", action="hold", gate=gate, times=1))

    def correct() -> None:
        try:
            if proxy.wait_held(1, timeout=30):
                with pg.connect() as other:
                    other.execute(f'UPDATE "{schema}".events SET amount = amount + 1 WHERE created_at >= %s '
                                  "AND created_at < %s", (changed, changed + dt.timedelta(days=1)))
                    other.commit()
        finally:
            gate.set()

    worker = threading.Thread(target=correct)
    worker.start()
    try:
        with execute_job(reconstructable(_job_from_environment), instance=instance, tags=RANGE,
                         raise_on_error=False) as first:
            assert not first.success
            message, _ = _failure_text(first)
            run_id = first.run_id
    finally:
        worker.join()
    assert f"1 of 4 days failed ({changed})" in message and "source changed" in message, message
    return run_id, message


def test_a_ranged_run_whose_blocking_proof_found_the_source_changed_does_not_advise_a_re_execution_that_cannot_help(
        pg, conn, schema, archive_env, s3, monkeypatch):
    """A table sets ``deep_check: true`` (the blocking content proof) and a person backfills 2024-03-10..13 in one
    ranged run. While 2024-03-12 is being proven, an application corrects a row of that day in PostgreSQL. The
    proof fails for that day alone; the day's own text rightly says the source changed after the snapshot and
    that the day is archived again with ``overwrite: true`` from the launchpad. But the run's failure then adds
    "Then: re-execute this run (Runs → this run → Re-execute → From failure) ...". Doing that fails again on the
    same day ("changed since it was archived ... overwrite"): a re-execution cannot help, as the code already
    knows for a day that changed (``_needs_overwrite`` days are left out of that advice). The run's failure
    should not send the person to re-execute for that day (the unproven day's failure should carry
    NEEDS_OVERWRITE like the other changed-day failures)."""
    from dagster import ReexecutionOptions, execute_job, reconstructable

    changed = DAYS[2]
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        run_id, message = _proof_meets_a_correction(pg, conn, schema, s3, monkeypatch, proxy, instance, changed)
        with execute_job(reconstructable(_job_from_environment), instance=instance, tags=RANGE,
                         reexecution_options=ReexecutionOptions.from_failure(run_id, instance),
                         raise_on_error=False) as again:
            redone = again.success
            again_message, _ = _failure_text(again) if not redone else (None, None)
    advised = "Re-execute" in message
    assert redone or not advised, (
        f"the failure advised re-executing the run, which fails again on {changed}:\n\n{again_message}\n\n"
        f"--- the advice was:\n{message}")


def test_a_blocking_proof_that_found_the_source_changed_does_not_call_the_archive_not_intact(
        pg, conn, schema, archive_env, s3, monkeypatch):
    """Same ranged run as above: 2024-03-12 is corrected in PostgreSQL while its archive is proven. The run's
    failure says it plainly: "the source changed after the snapshot the archive was read from" (the archive holds
    exactly the snapshot's rows; ``unproven`` keeps "a changed source is not a damaged archive" apart). The day's
    ``archive_intact`` result, which is what the UI shows on the asset's check tab, says instead
    "2024-03-12: NOT intact: the source's rows ... are not the archive's": red and worded as a damaged archive.
    An operator reading the check looks for corruption in the bucket. The check's description should say that the
    source changed after the snapshot (not proven against the source), not that the archive is not intact."""
    changed = DAYS[2]
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        run_id, message = _proof_meets_a_correction(pg, conn, schema, s3, monkeypatch, proxy, instance, changed)
        spec = parse_config(json.loads(os.environ["PS_CONFIG"])).tables[0]
        [record] = [c for c in _checks(instance, spec) if c.partition == changed.isoformat()]
        evaluation = record.event.dagster_event.asset_check_evaluation_data
    assert not evaluation.passed
    assert "NOT intact" not in (evaluation.description or ""), (
        f"the check of {changed} reads as a damaged archive, while the run says the source changed:\n"
        f"{evaluation.description}\n\n--- the run:\n{message}")


def test_a_removal_run_of_a_range_of_days_fails_with_a_message_naming_table_days_and_what_to_do(
        conn, schema, archive_env):
    """A person archived 2024-03-10..13 in one ranged run (a backfill), then launches the removal job
    ``Remove_<schema>_events`` for the same range the same way: with the range tags
    (``dagster/asset_partition_range_start``/``_end``) the backfill's run carried, as the launchpad's tags or
    ``dagster job launch --tags`` let them. The archive job takes such a run day by day (and refuses a bad key
    with its own message, run_periods); the removal run instead fails on Dagster's
    ``DagsterInvariantViolationError: Cannot access partition_key for a partitioned run with a range of
    partitions``, with Dagster's stack trace and neither the table, the days nor what to do. It should fail
    (or work) with a Failure that names the table and the range and says how to remove those days (one
    partition per run: a backfill of Remove_<schema>_events, or the schedule)."""
    from archive_pipeline.defs.retention_assets import removal_job_name

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema, retention={"keep_days": 1, "action": "delete"})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(instance=instance,
                                                                                  tags=RANGE).success
        result = defs.resolve_job_def(removal_job_name(spec)).execute_in_process(instance=instance, tags=RANGE,
                                                                                  raise_on_error=False)
    if result.success:
        return
    description, error = _failure_text(result)
    assert description is not None and spec.name in description, (
        f"the removal run of {DAYS[0]}..{DAYS[-1]} failed with Dagster's own error, no table, days or remedy:\n"
        f"{error.cls_name}: {error.message}\n{''.join(error.stack[-3:])}")


def test_a_ranged_run_with_the_database_down_names_the_cause_once_not_once_per_day(schema, archive_env, monkeypatch):
    """A person backfills 30 days of a table (``backfill.max_days_per_run`` is 50 by default, so one ranged run)
    while PostgreSQL is down (the connection is refused). The run fails, rightly, and each day's connect fails
    with the same cause. The run's failure, what the UI shows for the run, repeats the same two paragraphs
    ("cannot connect to PostgreSQL at ...", "What to do: ...") once per day: 30 identical copies, ~20 KB, a wall
    the operator must scroll through to find that the days all failed for one reason ("30 of 30 days failed ...;
    the other 0 are archived" then the same text over and over). Days that failed with the same cause and advice
    should be named together, with the cause and what to do said once."""
    days = [FIRST + dt.timedelta(days=i) for i in range(30)]
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 50},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": FIRST.isoformat()}]})
    monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://archiver:pw@127.0.0.1:9/postgres?connect_timeout=2")
    with instance_for_test() as instance:
        result = build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, raise_on_error=False,
            tags={"dagster/asset_partition_range_start": days[0].isoformat(),
                  "dagster/asset_partition_range_end": days[-1].isoformat()})
    assert not result.success
    description, _ = _failure_text(result)
    assert "30 of 30 days failed" in description, description
    copies = description.count("cannot connect to PostgreSQL")
    assert copies <= 1, (f"the run's failure says the same cause {copies} times ({len(description):,} characters):\n"
                         f"{description[:1500]}\n...")
