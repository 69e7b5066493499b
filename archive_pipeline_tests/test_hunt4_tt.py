"""Hunt 4 (tt): backfills and batched runs (several days of a table in one Dagster run).

Each test drives the archive job through Dagster (the tags a backfill with ``max_days_per_run`` gives its
ranged runs) against the real PostgreSQL and S3 of the fixtures, and asserts what should happen."""

from __future__ import annotations

import datetime as dt
import json
import os

from dagster import DagsterEventType, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline.local.local_stack import create_sample_events

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(4)]


def _range(first, last) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": str(first), "dagster/asset_partition_range_end": str(last)}


RANGE = _range(DAYS[0], DAYS[-1])


def _config(schema: str, max_retries: int = 1, **table):
    return parse_config({"retry": {"max_retries": max_retries, "delay_seconds": 0},
                         "backfill": {"max_days_per_run": 10},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": FIRST.isoformat(), **table}]})


def _states(instance, run_id):
    out = {}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        event = record.event_log_entry.dagster_event
        out.setdefault(event.partition, []).append(event.step_materialization_data.materialization.tags["archive/state"])
    return out


def _failures(instance, run_id):
    out = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.is_step_failure:
            data = event.step_failure_data
            out.append(data.user_failure_data.description if data.user_failure_data else data.error.message)
    return out


def _job_from_environment():
    """The archive job of the table configured in $TT_CONFIG (reconstructable, as a re-execution needs)."""
    config = parse_config(json.loads(os.environ["TT_CONFIG"]))
    return build_definitions(config).resolve_job_def(os.environ["TT_JOB"])


def test_re_executing_a_failed_overwrite_backfill_run_as_advised_does_not_archive_its_good_days_again(
        pg, conn, schema, archive_env, s3_client, monkeypatch):
    """A person backfills 2024-03-10..13 with the launchpad's run config ``overwrite: true`` (the README's way to
    archive changed days again). Another run holds 2024-03-11's table-day lock, so that day fails and the other
    three are archived anew. The run's failure says: "re-execute this run (Runs → this run → Re-execute → From
    failure) ...; days already archived are found identical and not uploaded again". Doing exactly that
    (Dagster's re-execution keeps the parent's run config and range tags) archives 2024-03-10, 12 and 13 a
    second time as new generations (``.g2`` objects), because the re-execution still overwrites. Either the
    re-execution should not redo the days its parent run already archived, or the failure must not promise it."""
    from dagster import ReexecutionOptions, execute_job, reconstructable

    from archive_pipeline.core.locks import lock_key

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    raw = {"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10},
           "tables": [{"name": f"{schema}.events", "day_column": "created_at", "start_date": FIRST.isoformat()}]}
    monkeypatch.setenv("TT_CONFIG", json.dumps(raw))
    monkeypatch.setenv("TT_JOB", f"Archive_{schema}_events")
    spec = parse_config(raw).tables[0]
    run_config = {"ops": {f"archive__{schema}__events": {"config": {"overwrite": True}}}}
    locked = DAYS[1]
    with instance_for_test() as instance, pg.connect() as other:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, locked)).fetchone()[0]
        with execute_job(reconstructable(_job_from_environment), instance=instance, run_config=run_config,
                         tags=RANGE, raise_on_error=False) as first:
            assert not first.success
        other.execute("SELECT pg_advisory_unlock_all()")
        good = [d.isoformat() for d in DAYS if d != locked]
        assert _states(instance, first.run_id) == dict.fromkeys(good, ["archived"])
        [message] = _failures(instance, first.run_id)
        promised = "Re-execute" in message and "not uploaded again" in message
        # The UI's Re-execute → From failure: the parent's run config and tags (its range), the failed step.
        with execute_job(reconstructable(_job_from_environment), instance=instance, tags=RANGE,
                         reexecution_options=ReexecutionOptions.from_failure(first.run_id, instance),
                         raise_on_error=False) as again:
            assert again.success
            states = _states(instance, again.run_id)
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=archive_env).get("Contents", []))
    uploaded_again = sorted(day for day, st in states.items() if day in good and "archived" in st)
    assert not (promised and uploaded_again), (
        f"the failure promised re-execution would not upload the archived days again, yet it archived "
        f"{uploaded_again} again; objects now: {keys}\n\n{message}")



def test_a_backfill_over_a_day_retention_removed_does_not_advise_archiving_that_day_again(
        conn, schema, archive_env, s3_client):
    """Retention removed 2024-03-11 (detach) after its archive was proven. A person backfills 2024-03-10..13
    (to fill gaps). The removed day fails, as the README says ("a removed day is never archived again ...
    such a run fails and says when the day was removed and where its archive is"), and the message does say
    there is nothing to archive. But what it tells the person to do is "Fix the cause above, then launch
    partition 2024-03-11 of Archive_... again", and the run's "Then: re-execute this run ..., or launch a
    backfill of the failed days": advice that can only fail again, for ever (there is nothing to fix: the
    archive is the day's only copy). The removed day's advice should say so (restore it if the rows are
    wanted; the day needs no run), not to launch it again."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.store import S3Store

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema, max_retries=0, partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "detach"})
    spec = config.tables[0]
    removed = DAYS[1].isoformat()
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=RANGE).success
        remove_day(conn, spec, DAYS[1], S3Store(s3_client, archive_env, prefix="archive"))
        result = job.execute_in_process(instance=instance, tags=RANGE, raise_on_error=False)
        assert _states(instance, result.run_id) == {d.isoformat(): ["removed" if d == DAYS[1] else "skipped"]
                                                    for d in DAYS}
        # (since hunt13 sb a removed day in a ranged run is logged as nothing to do, not failed: the run succeeds
        # and its log says why, with no advice to launch the day again; since hunt13 sg it is recorded "removed")
        assert result.success and not _failures(instance, result.run_id)
        message = "\n".join(e.message for e in instance.all_logs(result.run_id) if removed in (e.message or ""))
    assert "was removed from the source" in message and "nothing to archive" in message, message
    advice = message.split("nothing to archive", 1)[1]
    assert f"launch partition {removed}" not in advice and "launch a backfill of the failed days" not in advice, message


def test_a_backfill_range_over_apias_skipped_day_still_archives_the_neighbouring_days(conn, schema, archive_env):
    """Samoa (Pacific/Apia) skipped 2011-12-30 (its clocks went from 2011-12-29 23:59:59 -10 to 2011-12-31
    00:00 +14), but Dagster's daily partitions still list a partition 2011-12-30. A person backfills December
    2011 of an Apia table; with ``max_days_per_run`` the UI gives one ranged run of the month. That run is
    refused as a whole ("not a partition ...: there is no such day"; nothing was archived): 2011-12-28, 29
    and 31, real days with rows, are never archived, and every backfill of a range that includes the phantom
    day fails the same way, each of its up to max_days_per_run days shown as failed. One bad partition should
    fail alone (the README: "A failed day fails alone. The run goes on with the next day"): the neighbouring
    days archived and materialized, 2011-12-30 named as failed (or recorded)."""
    from psycopg import sql

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2011-12-27 12:00+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(1, 100) g").format(s))
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 50}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": "2011-12-01", "timezone": "Pacific/Apia"}]})
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_ev")
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False,
                                        tags=_range("2011-12-28", "2011-12-31"))
        states = _states(instance, result.run_id)
        failures = _failures(instance, result.run_id)
    assert {day: states.get(day) for day in ("2011-12-28", "2011-12-29", "2011-12-31")} == \
        {"2011-12-28": ["archived"], "2011-12-29": ["archived"], "2011-12-31": ["archived"]}, failures


def test_the_sensor_requests_a_tables_new_day_that_a_running_shared_job_backfill_of_other_tables_leaves_out(
        pg, conn, schema, archive_env):
    """Three tables share their partitions, so they share the job ``Archives_daily_<start>_UTC``. A person
    selects two of them (a and c) in the asset graph and backfills the last two days: the UI runs the shared
    job, ranged, with the asset selection [a, c]. While that run is queued or running, the sensor ticks: table b
    has rows on both days and no archive, and no run archives b. The sensor counts the run as in flight for
    every table of the shared job, whatever its asset selection, so b's days are not requested until the
    backfill (which can be a long queue of ranged runs) is over. Only the tables the run selects are in flight."""
    import uuid

    from dagster import DagsterRun, DagsterRunStatus, build_sensor_context

    from archive_pipeline.defs.resources import PostgresResource
    from archive_pipeline_tests.conftest import utc_today
    from archive_pipeline_tests.test_hunt3_z5 import plain_table, tables_config

    today = utc_today()
    days = [today - dt.timedelta(days=2), today - dt.timedelta(days=1)]
    for name in ("a", "b", "c"):
        plain_table(conn, schema, name, days)
    config = tables_config(schema, ["a", "b", "c"], days[0])
    defs = build_definitions(config)
    shared = f"Archives_daily_{days[0]:%Y_%m_%d}_UTC"
    assert defs.resolve_job_def(shared) is not None
    selected = frozenset(asset_key(spec) for spec in config.tables if spec.name.endswith((".a", ".c")))
    with instance_for_test() as instance:
        instance.add_run(DagsterRun(job_name=shared, run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                    asset_selection=selected,
                                    tags={"dagster/backfill": "bkfl0002", **_range(days[0], days[-1])}))
        repo = defs.get_repository_def()
        result = repo.get_sensor_def("archive_new_days").evaluate_tick(build_sensor_context(
            instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
    wanted = sorted((r.job_name, r.partition_key) for r in result.run_requests or [])
    assert wanted == [(f"Archive_{schema}_b", d.isoformat()) for d in days], wanted


def test_a_ranged_run_whose_database_does_not_answer_does_not_wait_out_the_connect_timeout_for_every_day(
        conn, schema, archive_env):
    """A backfill's ranged run starts while the source database does not answer (a failover in progress, a
    host that accepts the connection and never replies): connecting waits ``connect_timeout_s`` and fails. The
    run then tries to connect again for the next day, and the next, each waiting the full timeout: a run of
    ``max_days_per_run`` (default 50) days at the default 10 s spends over 8 minutes before it fails (and again
    on every retry), and its failure repeats the same unreachable-server cause once per day. No day can succeed
    without the connection (the command line's range stops at a lost connection for this reason: "the next day
    would fail the same way"); the run should fail once the connection cannot be made, naming the days it did
    not archive. Here: 2 days, the shortest timeout, a database that accepts and never answers."""
    import socket
    import threading
    import time

    from archive_pipeline.definitions import default_resources
    from archive_pipeline.defs.resources import PostgresResource

    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = _config(schema, max_retries=0)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])  # accepted, never answered
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    port = server.getsockname()[1]
    resources = default_resources(config)
    resources["postgres"] = PostgresResource(dsn=f"host=127.0.0.1 port={port} dbname=x user=x sslmode=disable gssencmode=disable", connect_timeout_s=1)
    job = build_definitions(config, resources=resources, check_source=False).resolve_job_def(
        f"Archive_{schema}_events")
    try:
        with instance_for_test() as instance:
            started = time.monotonic()
            result = job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[1]), raise_on_error=False)
            took = time.monotonic() - started
            [message] = _failures(instance, result.run_id)
    finally:
        server.close()
        for sock in held:
            sock.close()
    assert not result.success
    # (libpq waits at least 2 s: a connect_timeout of 1 is read as 2)
    assert len(held) == 1, (f"the run tried to connect {len(held)} times, waiting out the timeout each time "
                            f"({took:.1f} s in all):\n{message}")


