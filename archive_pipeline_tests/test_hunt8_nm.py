"""Hunt 8 (nm): adversarial review of ae0f4bb..f01d213 (Dagster advice for days needing overwrite, the skipped
day's record, the restore's read-back of a re-created partition's bound)."""

from __future__ import annotations

import datetime as dt
import re

from dagster import instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline_tests.test_hunt4_tt import _failures, _range

DAY = dt.date(2024, 3, 10)


def _domain_table(conn, schema, days):
    """ev (id pos, at date): ``pos`` a domain over int; 5 rows a day."""
    conn.execute(sql.SQL("CREATE DOMAIN {} AS int CHECK (VALUE > 0)").format(sql.Identifier(schema, "pos")))
    conn.execute(sql.SQL("CREATE TABLE {} (id {}, at date)").format(
        sql.Identifier(schema, "ev"), sql.Identifier(schema, "pos")))
    for day in days:
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s FROM generate_series(1, 5) g").format(
            sql.Identifier(schema, "ev")), (day,))


def test_a_backfill_of_days_without_verdict_does_not_advise_re_executing_it(conn, schema, archive_env):
    """A table with ``deep_check: true``; 2024-03-10 and 11 are archived (and proven) by one backfill run. A
    migration renames the domain of the ``id`` column (``ALTER DOMAIN pos RENAME TO pos2``): nothing changed in
    any row. The person backfills the two days again: each day is found identical, its proof has no verdict (the
    recorded type is gone), and each day's cause says "... cannot be proven here. To archive 2024-03-10 again,
    open the job ... in the launchpad ... overwrite: true" (this commit's advice: only overwrite ends it). The
    run's failure then ends with "Then: re-execute this run (Runs → this run → Re-execute → From failure), or
    launch a backfill of the failed days of Archive_...; days already archived are not archived again": both
    redo the run without overwrite, which fails again the same way, for ever. The commit left out of that advice
    the days refused as changed (LateRowsError) but not the days without verdict, whose own advice is the same
    overwrite. Should: not advise re-executing (or a backfill of) days whose only remedy is overwrite.
    (Cause: ``defs/assets.py`` ``_needs_overwrite`` knows only ``LateRowsError``, not ``verify.TYPE_GONE``.)"""
    days = [DAY, DAY + dt.timedelta(days=1)]
    _domain_table(conn, schema, days)
    config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                           "tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(),
                                       "deep_check": True}]})
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_ev")
    tags = _range(days[0], days[-1])
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=tags).success
        conn.execute(sql.SQL("ALTER DOMAIN {} RENAME TO pos2").format(sql.Identifier(schema, "pos")))
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        failures = _failures(instance, result.run_id)
    message = failures[-1]
    assert "no verdict" in message and "overwrite: true" in message, failures  # (the premise)
    last = message.rsplit("would re-archive every changed day).", 1)[1]
    assert "Re-execute" not in last and "launch a backfill of the failed days" not in last, last


def test_restore_into_original_re_creates_the_open_ended_partition_the_day_was_archived_from(
        conn, schema, store, temp_dir):
    """``ev`` is partitioned by RANGE (at) with an open-ended partition for its history, ``ev_old FOR VALUES FROM
    (MINVALUE) TO ('2024-03-11')``, and one a day after it. 2024-03-10 is archived (declarative mode): its manifest
    records ev_old, with that bound, as the day's partition (``table_definition.partition``). The DBA drops ev_old
    (the history is archived). Later the user runs ``restore --into original`` for 2024-03-10, which (README)
    re-creates the partition the manifest records. What happens (since 2cd04af): refused, "the partition ... ev_old its
    manifest records would be created with the bound "FOR VALUES FROM (MINVALUE) TO ('2024-03-11 00:00:00+00')",
    which is not the day's (the manifest was edited?); nothing was restored": the manifest was not edited, and its
    bound, the very one the table had, holds the day. Before, the partition was re-created and the day restored.
    Should: restore the day (the bound holds it; a week's partition is accepted), or at least refuse naming the
    real cause, not an edit. (Cause: ``restore._refuse_created_bound`` tests ``ChildRange.holds``, False for a
    MINVALUE/MAXVALUE side.)"""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import restore_day

    conn.execute(f"SET search_path TO {schema}")
    conn.execute("CREATE TABLE ev (id int, at timestamptz, v text) PARTITION BY RANGE (at)")
    conn.execute("CREATE TABLE ev_old PARTITION OF ev FOR VALUES FROM (MINVALUE) TO ('2024-03-11 00:00+00')")
    conn.execute("CREATE TABLE ev_0311 PARTITION OF ev FOR VALUES FROM ('2024-03-11 00:00+00') TO ('2024-03-12 00:00+00')")
    conn.execute("INSERT INTO ev SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 hour', 'x' "
                 "FROM generate_series(0, 30) g")
    conn.execute("RESET search_path")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=dt.date(2024, 3, 1),
                     partitioning={"mode": "declarative"})
    archived = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert archived.rows == 24
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "ev_old")))
    restore_day(conn, store, spec, DAY, into="original")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ev_old"))).fetchone()[0] == 24


from archive_pipeline_tests.test_cancelhunt import dagster_env, proxy, terminated_when_held  # noqa: E402,F401


def test_a_cancelled_backfill_does_not_advise_redoing_a_changed_day_without_overwrite(
        conn, schema, pg, bucket, proxy, dagster_env):  # noqa: F811
    """2024-03-10 of ``ev`` is archived; a late row then arrives in it. A backfill of 2024-03-10 .. 12 runs: 03-10 is
    refused as changed since archived (LateRowsError: "To archive 2024-03-10 again, open the job ... in the
    launchpad ... overwrite: true"), then the person terminates the run while 03-11 uploads. The run's failure
    ends: "Then: launch a backfill of 2024-03-10, 2024-03-12 (or re-execute this run from failure) of Archive_...
    with the day cut off; days already archived are found identical and not uploaded again": a backfill (or re-execution)
    without overwrite fails 03-10 again the same way. This commit left the changed days out of that advice in
    ``batch_failure`` (the run's failure when no one terminates it) but not in the cancelled run's.
    Should: not list a day refused as changed among the days to backfill or re-execute without overwrite.
    (Cause: ``defs/assets.py`` ``cancelled_batch`` lists every failed day, without ``_needs_overwrite``.)"""
    from archive_pipeline.core.archive import render_key
    from dagster import DagsterRunStatus

    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, v text)").format(sql.Identifier(schema, "ev")))
    for day in days:
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, 'x' FROM generate_series(1, 5) g").format(
            sql.Identifier(schema, "ev")), (day,))
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10},
                           "tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(),
                                       "compression": "none"}]})
    spec = config.tables[0]
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_ev")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        conn.execute(sql.SQL("INSERT INTO {} VALUES (99, %s, 'late')").format(sql.Identifier(schema, "ev")), (DAY,))
        key = render_key(spec, days[1], "archive")
        status, failures = terminated_when_held(instance, job, proxy, None, tags=_range(days[0], days[-1]),
                                                method="PUT", path=".*" + re.escape(key.split("/")[-1]))
    assert status == DagsterRunStatus.CANCELED, failures
    message = failures[-1]
    assert "overwrite: true" in message and "Never started" in message, message  # (the premise)
    then = message.rsplit("Then:", 1)[1]
    assert DAY.isoformat() not in then, then
