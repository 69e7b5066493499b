"""Hunt 2 (n): batched backfill runs (several days in one run), per-day isolation and concurrency.

Every test drives the archive job through Dagster (``execute_in_process`` of a ranged run, the tags a
backfill with ``max_days_per_run`` gives its runs) against the real PostgreSQL and moto S3 of the fixtures.
Each failing test asserts the correct behaviour; the passing ones guard per-day isolation that matters."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time

from dagster import AssetCheckKey, DagsterEventType, DagsterRunStatus, RunsFilter, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.core.locks import _lock_row, lock_key
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.store import S3Store
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_cancelhunt import terminated_when_held

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(4)]


def _range(first, last) -> dict[str, str]:
    """The tags of a backfill's ranged run (BackfillPolicy.multi_run)."""
    return {"dagster/asset_partition_range_start": str(first), "dagster/asset_partition_range_end": str(last)}


RANGE = _range(DAYS[0], DAYS[-1])


def _config(schema: str, max_retries: int = 1, **table):
    return parse_config({"retry": {"max_retries": max_retries, "delay_seconds": 0},
                         "backfill": {"max_days_per_run": 10},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": FIRST.isoformat(), **table}]})


def _job(config, schema: str):
    return build_definitions(config).resolve_job_def(f"Archive_{schema}_events")


def _states(instance, run_id: str) -> dict[str, list[str]]:
    """Per day, the archive/state of each materialization the run recorded for it."""
    out: dict[str, list[str]] = {}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        event = record.event_log_entry.dagster_event
        out.setdefault(event.partition, []).append(event.step_materialization_data.materialization.tags["archive/state"])
    return out


def _failures(instance, run_id: str) -> list[str]:
    """The step failures of the run as a person reads them (our description, else Dagster's error)."""
    out = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.is_step_failure:
            data = event.step_failure_data
            out.append(data.user_failure_data.description if data.user_failure_data else data.error.message)
    return out


def _step_events(result) -> list[str]:
    return [e.event_type_value for e in result.all_events if e.event_type_value.startswith("STEP_")]


def _on_event(instance, monkeypatch, action) -> None:
    """Call ``action(dagster_event)`` in the run's own thread right after the instance stored each event
    (the instance is the test's: this is the test's instrument, the archiver runs unchanged)."""
    original = instance.handle_new_event

    def handle(event, *args, **kwargs):
        original(event, *args, **kwargs)
        if event.dagster_event is not None:
            action(event.dagster_event)

    monkeypatch.setattr(instance, "handle_new_event", handle)


def _is_materialization_of(event, day: dt.date) -> bool:
    return event.event_type == DagsterEventType.ASSET_MATERIALIZATION and event.partition == day.isoformat()


# ------------------------------------------------------------------------------------------------
# Bugs


def test_a_session_lost_while_idle_between_days_does_not_fail_the_next_day(pg, conn, schema, archive_env, s3,
                                                                          monkeypatch):
    """A ranged run (run config deep_check: true) archives 2024-03-10 and downloads it to check it; its
    PostgreSQL session, idle meanwhile and holding no lock, is ended by the server (pg_terminate_backend
    by an operator's idle-session reaper, idle_session_timeout, a failover). 2024-03-11, which has
    nothing to do with it, then fails ("the session's backend was terminated ... transient, retried")
    although the run would reconnect for 2024-03-12 anyway: the run ends failed (here without retries
    left; with retries it waits out the backoff and redoes that day). The reused session is only replaced
    when a failed day has *noticed* it was broken, so a lost idle session costs the next day."""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema, max_retries=0)
    job = _job(config, schema)
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        held = proxy.add(Fault(method="GET", path=rf"/{DAYS[0]}\.jsonl\.zst$", action="hold", times=1,
                               hold_timeout=60))
        killed: list = []

        def end_the_idle_session() -> None:
            try:
                if proxy.wait_held(1, timeout=60):  # the run is between archiving 03-10 and 03-11
                    with pg.connect() as admin:
                        killed.extend(admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                            "'archive_pipeline' AND state = 'idle' AND pid <> pg_backend_pid()").fetchall())
                        deadline = time.monotonic() + 10
                        while time.monotonic() < deadline and admin.execute(
                                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'archive_pipeline' "
                                "AND pid <> pg_backend_pid()").fetchone()[0]:
                            time.sleep(0.02)
            finally:
                held.gate.set()

        killer = threading.Thread(target=end_the_idle_session)
        killer.start()
        result = job.execute_in_process(instance=instance, tags=RANGE, raise_on_error=False, run_config={
            "ops": {f"archive__{schema}__events": {"config": {"deep_check": True}}}})
        killer.join(60)
        assert killed == [(True,)]
        assert result.success, _failures(instance, result.run_id)
        assert sorted(_states(instance, result.run_id)) == [d.isoformat() for d in DAYS]


def test_a_ranged_run_cancelled_mid_day_names_every_day_it_leaves_unarchived(pg, conn, schema, archive_env, s3,
                                                                            monkeypatch):
    """A backfill's ranged run of 2024-03-10..13 is terminated from the UI while it uploads 2024-03-11;
    2024-03-10 had already failed (another run held its table-day lock). The step's failure, the only
    thing the run says, is "2024-03-11: cancelled while archiving ... What to do: launch partition
    2024-03-11 of Archive_... again": nothing about 2024-03-10 (its failure is lost) nor about 2024-03-12
    and 2024-03-13, which were never archived. The person relaunches one day and leaves three unarchived."""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    job = _job(config, schema)
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance, pg.connect() as other:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[0])).fetchone()[0]
        status, [message] = terminated_when_held(instance, job, proxy, None, tags=RANGE, method="PUT",
                                                 path=rf"/{DAYS[1]}\.jsonl\.zst$")
        other.execute("SELECT pg_advisory_unlock_all()")
        assert status == DagsterRunStatus.CANCELED
        assert _states(instance, instance.get_runs(limit=1)[0].run_id) == {}
        assert "cancelled" in message and spec.name in message
        missing = [d.isoformat() for d in DAYS if d.isoformat() not in message]
        assert not missing, f"days left unarchived that the failure does not name: {missing}\n{message}"


def test_a_ranged_run_terminated_while_a_day_is_recorded_says_table_days_and_cancelled(conn, schema, archive_env,
                                                                                      monkeypatch):
    """A ranged run is terminated from the UI right after 2024-03-10 is archived, while Dagster stores that
    day's materialization (most of a small day's time in a ranged run is spent there: README, Backfills).
    The interrupt is raised by Dagster when it resumes the step for the next day, outside the asset's code,
    so none of its handling applies: the run's only failure reads "dagster._core.errors.
    DagsterExecutionInterruptedError", with no table, no day, nothing about the three days never archived
    or what to do; the same termination a moment earlier or later says all that. (The run's PostgreSQL
    session also stays open until the abandoned step is garbage-collected.)"""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    job = _job(config, schema)
    with instance_for_test() as instance:
        fired: list = []

        def terminate(event) -> None:
            if not fired and _is_materialization_of(event, DAYS[0]):
                fired.append(event)
                [run] = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
                instance.report_run_canceling(run)
                os.kill(os.getpid(), signal.SIGINT)

        _on_event(instance, monkeypatch, terminate)
        result = job.execute_in_process(instance=instance, tags=RANGE, raise_on_error=False)
        assert fired
        assert instance.get_run_by_id(result.run_id).status == DagsterRunStatus.CANCELED
        assert "STEP_UP_FOR_RETRY" not in _step_events(result)
        assert sorted(_states(instance, result.run_id)) == [DAYS[0].isoformat()]
        [message] = _failures(instance, result.run_id)
        assert spec.name in message and "cancelled" in message, message
        assert all(d.isoformat() in message for d in DAYS[1:]), message


def test_a_neighbours_late_rows_do_not_deny_a_locked_day_its_retry(pg, conn, schema, archive_env, monkeypatch):
    """A ranged run of 2024-03-10..13 with retries left: 2024-03-11 got a late row after it was archived
    (fails for good: overwrite needed), and 2024-03-12's table-day lock is held by another run for a moment
    (the README: "the second fails that day, retryably, and finds it archived on retry"). Its failure even
    says "a Dagster run with retries left tries again by itself". But the step is not retried at all,
    because one neighbour's failure is permanent: 2024-03-12 stays unarchived and failed although the lock
    was free long before the run ended, and the run asks a person to redo a day a retry would have done."""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    late, locked = DAYS[1], DAYS[2]
    job = _job(config, schema)
    with instance_for_test() as instance, pg.connect() as other:
        assert job.execute_in_process(instance=instance, partition_key=late.isoformat()).success
        conn.execute(sql.SQL("INSERT INTO {} (id, created_at, user_id, event_type) VALUES (999999, %s, 1, 'late')")
                     .format(sql.Identifier(schema, "events")), (dt.datetime.combine(late, dt.time(12), dt.UTC),))
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, locked)).fetchone()[0]

        def other_run_ends(event) -> None:  # the other run lets the day go once this one has moved past it
            if _is_materialization_of(event, DAYS[3]):
                other.execute("SELECT pg_advisory_unlock_all()")

        _on_event(instance, monkeypatch, other_run_ends)
        result = job.execute_in_process(instance=instance, tags=RANGE, raise_on_error=False)
        assert not result.success  # the late day needs a person (overwrite): right
        states = _states(instance, result.run_id)
        assert late.isoformat() not in states
        assert states.get(locked.isoformat()) == ["archived"], (_step_events(result), _failures(instance, result.run_id))


# ------------------------------------------------------------------------------------------------
# Guards (pass): per-day isolation that holds


def test_the_lock_sessions_termination_fails_only_that_day_and_the_retry_redoes_only_it(pg, conn, schema,
                                                                                      archive_env, s3, s3_client,
                                                                                      monkeypatch):
    """The session holding 2024-03-11's table-day lock is terminated while that day uploads: only that day
    fails (nothing published, the lock gone with the session), the next days reconnect, the step's retry
    redoes only 2024-03-11, and every day ends equal to the source."""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    job = _job(config, schema)
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        held = proxy.add(Fault(method="PUT", path=rf"/{DAYS[1]}\.jsonl\.zst$", action="hold", times=1,
                               hold_timeout=60))

        def kill() -> None:
            try:
                if proxy.wait_held(1, timeout=60):
                    with pg.connect() as admin:
                        assert admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = "
                                             "'advisory' AND classid = %s::oid AND objid = %s::oid AND objsubid = 1",
                                             _lock_row(lock_key(spec.name, DAYS[1]))).fetchall() == [(True,)]
            finally:
                held.gate.set()

        killer = threading.Thread(target=kill)
        killer.start()
        result = job.execute_in_process(instance=instance, tags=RANGE, raise_on_error=False)
        killer.join(60)
        assert result.success
        assert _step_events(result) == ["STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_SUCCESS"]
        assert _states(instance, result.run_id) == {d.isoformat(): ["archived"] for d in DAYS}
        checks = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(spec), "archive_intact"), limit=20)
        assert sorted((c.partition, c.status.value) for c in checks) == [(d.isoformat(), "SUCCEEDED") for d in DAYS]
    store = S3Store(s3_client, archive_env, prefix="archive")
    assert [(c.day.isoformat(), c.result) for c in compare_days(conn, spec, store, DAYS)] == \
        [(d.isoformat(), "equal") for d in DAYS]
    assert s3_client.list_multipart_uploads(Bucket=archive_env).get("Uploads", []) == []


def test_ranges_across_a_year_boundary_and_a_fall_back_night_record_each_period_with_its_own_rows(
        conn, schema, archive_env):
    """Range edges: a daily range from start_date across New Year and a leap day, and an hourly Berlin range
    across the repeated hour of 2024-10-27: each period's materialization and check carry that period's rows."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(
        sql.Identifier(schema, "ev")))
    instants = ["2023-12-31 23:59:59.999999+00", "2024-01-01 00:00+00", "2024-01-01 12:00+00", "2024-02-29 23:00+00",
                "2024-03-01 00:00+00", "2024-10-27 00:30+00", "2024-10-27 01:30+00", "2024-10-27 02:30+00"]
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(schema, "ev")),
                        list(enumerate(instants)))

    def run(table: dict, first: str, last: str, instance):
        config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 100},
                               "tables": [{"name": f"{schema}.ev", "day_column": "at", **table}]})
        job = build_definitions(config).resolve_job_def(f"Archive_{schema}_ev")
        result = job.execute_in_process(instance=instance, tags=_range(first, last))
        rows = {}
        for record in instance.get_records_for_run(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
            event = record.event_log_entry.dagster_event
            rows[event.partition] = event.step_materialization_data.materialization.metadata["dagster/row_count"].value
        checks = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(config.tables[0]), "archive_intact"), limit=200)
        assert sorted(c.partition for c in checks if c.run_id == result.run_id) == sorted(rows)
        return rows

    with instance_for_test() as instance:
        daily = run({"start_date": "2023-12-31"}, "2023-12-31", "2024-03-01", instance)
        assert len(daily) == 62
        assert {k: v for k, v in daily.items() if v} == {"2023-12-31": 1, "2024-01-01": 2, "2024-02-29": 1,
                                                          "2024-03-01": 1}
    with instance_for_test() as instance:
        hourly = run({"start_date": "2024-10-26", "granularity": "hourly", "timezone": "Europe/Berlin"},
                     "2024-10-27-01:00", "2024-10-27-03:00", instance)
        assert hourly == {"2024-10-27-01:00": 0, "2024-10-27-02:00": 1, "2024-10-27-02:00+0100": 1,
                          "2024-10-27-03:00": 1}
