"""Hunt 8 (nl): what a Dagster operator sees and does, through Dagster's own APIs (jobs run in process with a test
instance, checks and failures read back from it), for situations this session made possible or changed: a renamed
composite field, a deep proof with no verdict, expression-keyed hourly tables on a fall-back night."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline_tests.test_hunt4_tt import _failures, _range

DAY = dt.date(2024, 3, 10)


def _composite_table(conn, schema, days=(DAY,)):
    """ev (id pos, at date, c comp): ``pos`` a domain over int, ``comp`` a composite (a int, b text); 5 rows a day."""
    conn.execute(sql.SQL("CREATE TYPE {} AS (a int, b text)").format(sql.Identifier(schema, "comp")))
    conn.execute(sql.SQL("CREATE DOMAIN {} AS int CHECK (VALUE > 0)").format(sql.Identifier(schema, "pos")))
    conn.execute(sql.SQL("CREATE TABLE {} (id {}, at date, c {})").format(
        sql.Identifier(schema, "ev"), sql.Identifier(schema, "pos"), sql.Identifier(schema, "comp")))
    for day in days:
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, row(g, 'x' || g)::{} FROM generate_series(1, 5) g").format(
            sql.Identifier(schema, "ev"), sql.Identifier(schema, "comp")), (day,))


def _config(schema, **table):
    return parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                         "tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(),
                                     **table}]})


def _check_evaluations(instance, run_id, name):
    return [r.event_log_entry.dagster_event.asset_check_evaluation_data
            for r in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
            if r.event_log_entry.dagster_event.asset_check_evaluation_data.check_name == name]


def test_a_backfill_after_a_composite_field_rename_does_not_advise_re_executing_it_without_overwrite(
        conn, schema, archive_env):
    """Two days of a table with a composite column (comp: a int, b text) are archived by one backfill run. A
    migration renames a field (``ALTER TYPE comp RENAME ATTRIBUTE b TO bb``); this session made the re-run refuse
    such a day as changed, not retried. The person backfills the two days again: the run fails, each day's cause
    naming the type change with the launchpad run config ``overwrite: true``, and the run's failure ends with
    "Then: re-execute this run (Runs → this run → Re-execute → From failure), or launch a backfill of the failed
    days of Archive_...; days already archived are not archived again": both redo the run without overwrite,
    which fails again the same way, for ever (the scheduled backfills too). A removed day is already left out of
    that advice; a day that changed in the source should be too (or the advice should say: with overwrite)."""
    days = [DAY, DAY + dt.timedelta(days=1)]
    _composite_table(conn, schema, days)
    defs = build_definitions(_config(schema))
    job = defs.resolve_job_def(f"Archive_{schema}_ev")
    tags = _range(days[0], days[-1])
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=tags).success
        conn.execute(sql.SQL("ALTER TYPE {} RENAME ATTRIBUTE b TO bb").format(sql.Identifier(schema, "comp")))
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        [message] = _failures(instance, result.run_id)
    assert "(a, bb)" in message and "overwrite: true" in message  # (the premise: both days refused as changed)
    last = message.rsplit("would re-archive every changed day).", 1)[1]
    assert "Re-execute" not in last and "launch a backfill of the failed days" not in last, last


def test_a_blocking_deep_check_without_verdict_says_how_to_archive_the_day_again_with_overwrite(
        conn, schema, archive_env):
    """A table with ``deep_check: true`` (the proof is blocking); a day is archived and proven. A migration renames
    the domain of its ``id`` column (``ALTER DOMAIN pos RENAME TO pos2``). The next run of the day (a backfill, a
    launch from the UI) finds the archive identical and proves it: the recorded type is gone, which this session
    made "no verdict" (not damage): the step fails, not retried, saying "... cannot be loaded to be proven (no
    verdict on the archive); archive the day again with overwrite". Its "What to do" is "Fix the cause above, then
    launch partition 2024-03-10 of Archive_... again": there is nothing to fix (the rename is right), and launching
    the partition again fails the same way. Should: like every other refusal that needs overwrite, give the
    launchpad's run config (``ops: archive__<schema>__ev: config: overwrite: true``)."""
    _composite_table(conn, schema)
    defs = build_definitions(_config(schema, deep_check=True))
    job = defs.resolve_job_def(f"Archive_{schema}_ev")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        conn.execute(sql.SQL("ALTER DOMAIN {} RENAME TO pos2").format(sql.Identifier(schema, "pos")))
        result = job.execute_in_process(instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        [message] = _failures(instance, result.run_id)
    assert "no verdict" in message, message  # (the premise)
    advice = message.split("What to do:", 1)[1]
    assert "overwrite: true" in advice and f"archive__{schema}__ev" in advice, message


def test_a_re_run_without_verdict_does_not_turn_the_proven_archive_of_the_day_not_intact(conn, schema, archive_env):
    """A table with ``deep_check: true``; 2024-03-10 is archived and its content proven ("content proven: the
    archive loaded back into PostgreSQL has the source's fingerprint", archive_intact green). The domain of a
    column is renamed (no change of any row or of the archive: compare says equal). The day is launched again:
    it is found identical ("skipped", nothing uploaded), its proof has no verdict (the recorded type is gone),
    and the run fails. That run recorded the skip as the day's latest materialization, "not verified: ... (no
    verdict on the archive)", over the proof of the very same object. The weekly ``verify_archives`` then turns
    the day's archive_intact red: "NOT intact: its content was never proven" -- an archive proven when written,
    unchanged since, called not intact because a later run could not judge it. Should: no failed integrity
    verdict for it (the earlier proof stands, or the check says it has no verdict, not NOT intact)."""
    _composite_table(conn, schema)
    defs = build_definitions(_config(schema, deep_check=True))
    job = defs.resolve_job_def(f"Archive_{schema}_ev")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        conn.execute(sql.SQL("ALTER DOMAIN {} RENAME TO pos2").format(sql.Identifier(schema, "pos")))
        assert not job.execute_in_process(instance=instance, partition_key=DAY.isoformat(),
                                          raise_on_error=False).success
        result = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        verdicts = _check_evaluations(instance, result.run_id, "archive_intact")
    assert verdicts and all(v.passed for v in verdicts), [(v.partition, v.description) for v in verdicts]


def test_the_removal_of_the_first_fall_back_hour_does_not_blame_the_hour_before_it(conn, schema, archive_env):
    """An hourly Europe/Berlin table whose day column is a ``timestamp`` (wall-clock time) is partitioned by
    RANGE (date_trunc('hour', at)), one child per wall-clock hour of 2024-10-27 (the fall-back night), with
    retention ``drop`` (the layout this session's expression-key fix made droppable). The first 02:00 hour
    (02:00+02:00) holds no row (wall-clock 02:xx rows are the second one's, 2024-10-27-02:00+0100), and is archived
    as empty. The removal schedule requests it (due, archived); the Remove_ run fails: "2024-10-27-02:00 is not
    one partition of its own: its partition ev_1 (FOR VALUES FROM ('2024-10-27 01:00:00') TO ('2024-10-27
    02:00:00')) also holds rows of other hours, which dropping or detaching it would remove with them". Untrue:
    ev_1 holds only the 01:00 hour's rows, and does not hold the 02:00 hour at all (the 01:00 hour's own removal
    drops it). The operator is sent to inspect the wrong partition, and told to switch the table to 'delete'.
    Should: not name ev_1 as the hour's partition (say no partition holds it, or that it has no rows)."""
    conn.execute(f"SET search_path TO {schema}")
    conn.execute("CREATE TABLE ev (id int, at timestamp) PARTITION BY RANGE (date_trunc('hour', at))")
    for h in range(0, 5):
        conn.execute(f"CREATE TABLE ev_{h} PARTITION OF ev FOR VALUES FROM ('2024-10-27 0{h}:00') "
                     f"TO ('2024-10-27 0{h + 1}:00')")
    conn.execute("INSERT INTO ev SELECT g, '2024-10-27 00:00'::timestamp + g * interval '10 min' "
                 "FROM generate_series(0, 29) g")
    conn.execute("RESET search_path")
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-10-26", "granularity": "hourly",
         "timezone": "Europe/Berlin", "partitioning": {"mode": "declarative"},
         "retention": {"keep_days": 30, "action": "drop"}}]})
    defs = build_definitions(config)
    hour = "2024-10-27-02:00"
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_ev").execute_in_process(
            instance=instance, partition_key=hour).success
        result = defs.resolve_job_def(f"Remove_{schema}_ev").execute_in_process(
            instance=instance, partition_key=hour, raise_on_error=False)
        failures = _failures(instance, result.run_id)
    assert not any(f"{schema}.ev_1 " in f for f in failures), failures
