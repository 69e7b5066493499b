"""Hunt 6 (lg): what the Dagster side shows is not true (partition status, materialization metadata, check
results), through Dagster's own APIs."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events

DAY = dt.date(2024, 3, 10)


def _events(schema: str, **table) -> object:
    return parse_config({"retry": {"max_retries": 0, "delay_seconds": 0},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": DAY.isoformat(), **table}]})


def _states(instance, run_id) -> dict[str, list[tuple[str, object]]]:
    out: dict[str, list] = {}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        event = record.event_log_entry.dagster_event
        materialization = event.step_materialization_data.materialization
        out.setdefault(event.partition, []).append(
            (materialization.tags.get("archive/state"), materialization.metadata["dagster/row_count"].value))
    return out


def test_a_removed_day_archived_again_after_a_key_template_change_is_shown_as_an_empty_day(
        conn, schema, archive_env):
    """2024-03-10 (5 rows) is archived and removed by its Remove_ job (retention delete). Later the person gives
    the table another key_template (the README's remedy when a table's zone changes: "a key_template that keeps
    the new periods apart (another prefix)") and backfills, or re-launches, 2024-03-10. The run finds nothing at
    the new key, reads the now-empty source and succeeds: the partition's latest materialization says
    ``state: empty``, ``dagster/row_count`` 0, and its archive_intact passes, so the UI (and source_unchanged,
    which compares the latest materialization's manifest) now say the day had no rows; the archive holding its
    5 rows, the only copy, is no longer what the partition points at. The README: "A removed day is never
    archived again from its now-empty source — not by a backfill, the sensor, the schedule or overwrite: such a
    run fails and says when the day was removed and where its archive is." The Dagster side knows where: the
    partition's last materialization records the archive's manifest key."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    before = _events(schema, retention={"keep_days": 30, "action": "delete"})
    defs = build_definitions(before)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        assert defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))).fetchone()[0] == 0
        after = _events(schema, retention={"keep_days": 30, "action": "delete"},
                        key_template="{prefix}/v2/{schema}.{table}/{year}/{month}/{date}.{ext}")
        again = build_definitions(after).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        states = _states(instance, again.run_id)
    assert not again.success and states == {}, (
        f"the removed day was recorded again as {states} (state, rows), not refused as removed")


def _source_unchanged(instance, run_id):
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records:
        evaluation = record.event_log_entry.dagster_event.asset_check_evaluation_data
        if evaluation.check_name == "source_unchanged":
            return evaluation
    return None


def test_source_unchanged_does_not_call_a_removed_day_restored_into_the_original_table_rows_in_no_archive(
        conn, schema, store, temp_dir, archive_env):
    """2024-03-10 (5 rows) is archived and removed by its Remove_ job (retention delete). The person restores it
    into the original table (``restore --into original``): the source holds exactly the archive's 5 rows again,
    "an ordinary source day again". Then they run verify_archives. source_unchanged fails red: "5 rows arrived in
    the source after retention removed the day ... and are in no archive", and tells them to archive the day
    again with overwrite. Those rows are the archive's own (the restore proved their fingerprint equals the
    manifest's): the day should compare equal (or be listed as restored), not be reported as changed."""
    from archive_pipeline.core.restore import restore_day

    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = _events(schema, retention={"keep_days": 30, "action": "delete"})
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        assert defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        restore_day(conn, store, config.tables[0], DAY, into="original", temp_dir=temp_dir)
        result = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        evaluation = _source_unchanged(instance, result.run_id)
    assert evaluation is not None
    assert evaluation.passed, evaluation.description


def test_source_unchanged_does_not_call_a_naming_mode_day_that_retention_detached_rows_in_no_archive(
        conn, schema, archive_env):
    """A legacy naming-mode table (``log`` with one INHERITS child per day, ``log_20240310``) with retention
    ``detach``: the README says detach "takes the day's table out of the tables it inherits from (NO INHERIT): it
    keeps its name and rows, and later removals of the day find it removed while it inherits from nothing".
    2024-03-10 is archived and removed by the Remove_ job, which detaches log_20240310 (10 rows, as intended).
    The weekly verify_archives then fails source_unchanged red: "10 rows arrived in the source after retention
    removed the day ... and are in no archive", with the run config to archive the day again; but no row
    arrived: the detached table holds exactly the removed rows (the ones in the archive), as detach means to
    keep them. The day should be listed as removed, not as changed."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 () INHERITS ({}.log)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g"
                         ).format(s))
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, "tables": [
        {"name": f"{schema}.log", "start_date": DAY.isoformat(),
         "partitioning": {"mode": "naming", "pattern": "log_%Y%m%d"},
         "retention": {"keep_days": 30, "action": "detach"}}]})
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_log").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        assert defs.resolve_job_def(f"Remove_{schema}_log").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.log").format(s)).fetchone()[0] == 0
        result = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        evaluation = _source_unchanged(instance, result.run_id)
    assert evaluation is not None
    assert evaluation.passed, evaluation.description
