"""Hunt 13 (sb): what a Dagster operator sees and does (a UI that tells the truth at a glance)."""

from __future__ import annotations

import datetime as dt

from dagster import build_sensor_context, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, daily_partitions, job_name
from archive_pipeline.defs.resources import ArchiveS3Resource, ArchiveStoreResource, PostgresResource

DAY = dt.date(2024, 3, 10)


def _offline_resources() -> dict:
    """Resources that are never connected to (definitions built for their shape only)."""
    return {"postgres": PostgresResource(dsn="postgresql://u@localhost:1/x"),
            "archive_store": ArchiveStoreResource(s3=ArchiveS3Resource(), bucket="b")}


def test_the_removal_assets_of_two_schemas_tables_of_one_name_are_told_apart_in_the_asset_graph():
    """Scenario: ``public.events`` and ``sales.events`` both have ``retention``. The README (Configuration) says each
    table's asset is in the group ``archive_<schema>`` "so public.events and sales.events are told apart in the asset
    graph, whose nodes show only the key's last part".

    Now: their removal assets ``source_removed/public/events`` and ``source_removed/sales/events`` are both in the one
    group ``retention``, so the asset graph shows two nodes labelled ``events`` side by side in that group: an operator
    looking at a red/overdue "events" removal cannot tell at a glance which table's source is (not) being let go, and
    materializing "the" events node of the retention group may remove the wrong schema's day.

    Expected: within every group, no two assets share the label the graph shows (the key's last part). Fix idea:
    group the removal asset per schema (``retention_<schema>``), as the archive assets are (``archive_<schema>``)."""
    config = parse_config({"tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
         "retention": {"keep_days": 30, "action": "delete"}} for schema in ("public", "sales")]})
    graph = build_definitions(config, _offline_resources(), check_source=False).resolve_asset_graph()
    labels: dict[tuple[str, str], list[str]] = {}
    for key in graph.get_all_asset_keys():
        labels.setdefault((graph.get(key).group_name, key.path[-1]), []).append(key.to_user_string())
    clashing = {f"{group}/{label}": keys for (group, label), keys in labels.items() if len(keys) > 1}
    assert not clashing, f"nodes the asset graph labels alike in one group: {clashing}"


def test_a_removed_day_in_a_backfill_range_still_shows_as_materialized_not_failed(conn, schema, archive_env):
    """Scenario: ``events`` has retention (delete). 2024-03-10..11 are archived, then 2024-03-10 is removed from the
    source by Remove_<schema>_events (proven first; its archive is the day's only copy and is kept). Later rows of
    2024-03-12 arrive and the operator launches a backfill of 2024-03-10..12 of Archive_<schema>_events (one ranged
    run; the README: "A day retention removed says there is nothing to do for it, and is left out of the redo
    advice").

    Now: the run counts the removed day as a failed day (its step failure even says "nothing to do for this day: it
    is archived, and its archive is kept"), the step fails, and Dagster's partition status of the archive asset
    (``get_status_by_partition``, the asset's partition bar) turns 2024-03-10 FAILED: red, beside the green days,
    for a day that is archived, proven and properly let go. At a glance the operator reads "this day's archive
    failed", which is the one thing that is not true of it.

    Expected: 2024-03-10 keeps its MATERIALIZED status (the other days archived as usual). Fix idea: in a ranged
    run, do not count a NOTHING_TO_DO day (removed, archive kept) among the failed days: log it (an observation or
    an info line) and let the step succeed when nothing else failed."""
    from dagster import AssetPartitionStatus

    from archive_pipeline.defs.retention_assets import removal_job_name
    from archive_pipeline.local.local_stack import create_sample_events

    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    create_sample_events(conn, days[:2], rows_per_day=4, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    job = defs.resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[1].isoformat()}).success
        assert defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=days[0].isoformat()).success
        create_sample_events(conn, days[2:], rows_per_day=4, schema=schema)  # the new day
        job.execute_in_process(instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[2].isoformat()})
        status = {day: found.value if found else None for day, found in instance.get_status_by_partition(
            asset_key(spec), [d.isoformat() for d in days], daily_partitions(spec)).items()}
    assert status == {d.isoformat(): AssetPartitionStatus.MATERIALIZED.value for d in days}, status


def test_a_naming_pattern_the_catalog_spells_only_in_another_case_is_named_not_a_quiet_no_new_days(
        conn, schema, archive_env):
    """Scenario: a legacy one-table-per-day table in naming mode, configured as ``name: <schema>.Events``,
    ``pattern: Events_%Y%m%d``; the day tables were created unquoted, so the catalog spells them ``events_20240310``,
    ``events_20240311`` (each with rows). The README: a table "that does not exist [is] refused the same way (one
    the catalog spells otherwise only in case ... is named)".

    Now: the load checks only that the schema exists, and passes. The sensor's tick is a green skip, "no new days to
    archive; inspected <schema>.Events (naming: read the days from the catalog ...; 1001 day(s), 1001 without an
    archive, 0 of them with data)", on every tick, forever: the operator reads "nothing to archive" while two days
    of rows wait under the lower-case names (a run launched by hand fails "table 'Events_20240310' does not
    exist" with no word of ``events_20240310``).

    Expected: the load (like a table spelled otherwise in case) or at least the sensor's tick names the catalog's
    spelling ``events_20240310`` of the pattern's tables, so the pattern can be fixed. Fix idea: at load (and in
    the tick's account of a naming table with no day table found), look for relnames matching the pattern
    case-insensitively (lower(relname) LIKE lower(prefix) || '%') and name them as the table checks do."""
    from archive_pipeline.core.config import ConfigError
    from archive_pipeline.defs.sensors import SENSOR_NAME

    for day in (DAY, DAY + dt.timedelta(days=1)):
        conn.execute(f'CREATE TABLE "{schema}".events_{day:%Y%m%d} (id int, created_at timestamptz)')
        conn.execute(f'INSERT INTO "{schema}".events_{day:%Y%m%d} VALUES (1, %s)', (day,))
    config = parse_config({"tables": [{"name": f"{schema}.Events", "start_date": DAY.isoformat(),
                                       "partitioning": {"mode": "naming", "pattern": "Events_%Y%m%d"}}]})
    try:
        defs = build_definitions(config)
    except ConfigError as refused:  # refused at load: it must name the catalog's spelling
        assert f"events_{DAY:%Y%m%d}" in str(refused), str(refused)
        return
    with instance_for_test() as instance:
        try:
            tick = defs.resolve_sensor_def(SENSOR_NAME).evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": defs.resources["postgres"]},
                repository_def=defs.get_repository_def()))
            said = tick.skip_message or f"requested {[r.partition_key for r in tick.run_requests]}"
        except Exception as exc:  # noqa: BLE001 - a failed tick is visible (red): what it says is what counts
            said = str(exc)
    assert f"events_{DAY:%Y%m%d}" in said, f"the tick does not name the day tables the pattern misses: {said}"


def test_a_naming_day_without_its_table_in_a_backfill_is_no_data_not_a_wrong_table_name_to_fix(
        conn, schema, archive_env):
    """Scenario: a naming-mode table (``pattern: events_%Y%m%d``) whose day tables exist for 2024-03-10 and
    2024-03-12; 2024-03-11 never had one (a gap: no data that day). The operator launches a backfill of
    2024-03-10..12 of Archive_<schema>_events (one ranged run). The command line's ``archive --from 2024-03-10 --to
    2024-03-12`` over the same tables says 2024-03-11 is ``no-data: no data for this day in PostgreSQL`` and exits 0.

    Now: the Dagster run fails 2024-03-11 (the partition turns FAILED) with "to fix: check the table's name in the
    YAML configuration (schema.table ...)", "What to do: Check table '<schema>.events' in <config>: its name,
    day_column (None) and partitioning mode (naming) must match the database", then "Then: re-execute this run ...
    or launch a backfill of the failed days": the table's name is right (its other days were just archived from
    it), and re-executing fails the same way forever. The operator is sent to fix a configuration that is not wrong.

    Expected: as the command line says it, the day has no data in PostgreSQL: no failure that sends the operator to
    the table's name or to re-executing (recorded as nothing to archive, or at most a failure saying the day's
    table does not exist, nothing to redo). Fix idea: in archive_one_day, treat SourceError(cause=NO_PERIOD_TABLE)
    of a naming table whose other days exist like the planner's no-data day (skip it, log it), or give it the
    NOTHING_TO_DO flag and a remedy naming the missing day table."""
    from dagster import DagsterEventType

    for day in (DAY, DAY + dt.timedelta(days=2)):
        conn.execute(f'CREATE TABLE "{schema}".events_{day:%Y%m%d} (id int, created_at timestamptz)')
        conn.execute(f'INSERT INTO "{schema}".events_{day:%Y%m%d} VALUES (1, %s)', (day,))
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10}, "tables": [{
        "name": f"{schema}.events", "start_date": DAY.isoformat(),
        "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": DAY.isoformat(),
            "dagster/asset_partition_range_end": (DAY + dt.timedelta(days=2)).isoformat()})
        archived = sorted(r.event_log_entry.dagster_event.partition for r in instance.get_records_for_run(
            result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records)
    assert archived[0] == DAY.isoformat() and archived[-1] == (DAY + dt.timedelta(days=2)).isoformat(), archived
    said = "\n".join(e.step_failure_data.user_failure_data.description for e in result.all_events
                     if e.is_step_failure and e.step_failure_data.user_failure_data)
    assert "its name, day_column" not in said and "Re-execute" not in said, (
        f"a day without its table is reported as a table name to fix and a run to redo:\n{said}")


def test_source_unchanged_on_a_naming_day_table_dropped_by_hand_gives_a_remedy_that_works(conn, schema, archive_env):
    """Scenario: a naming-mode table (``events_%Y%m%d``); 2024-03-10..12 are archived by a backfill run. Later a DBA
    drops ``events_20240310`` by hand (no retention configured: the archive is now the day's only copy). The
    operator runs verify_archives.

    Now: source_unchanged fails "1 of 3 archived days changed in PostgreSQL after archiving: 2024-03-10: the day's
    table is gone from the source; the archive holds 1 rows. What to do: archive those days again with run config
    ops: archive__<schema>__events: config: overwrite: true". Following that advice (partition 2024-03-10 of
    Archive_<schema>_events with overwrite) fails at once: "no table for 2024-03-10 ... to fix: check the table's
    name in the YAML configuration": the check stays red with a remedy that cannot be carried out, and the next
    failure sends the operator to a configuration that is right.

    Expected: either the remedy for a day whose table is gone is not "archive again with overwrite" (e.g. "the
    archive is the day's only copy: restore the day with `archive-pipeline restore` if it was dropped by mistake,
    else nothing to archive"), or following it succeeds. Fix idea: in source_unchanged, put a day whose table is
    gone (verify.source_changed's 'table is gone' case) in its own list with that remedy, not in changed_days
    under the overwrite run config."""
    from dagster import DagsterEventType

    from archive_pipeline.defs.assets import op_name

    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    for day in days:
        conn.execute(f'CREATE TABLE "{schema}".events_{day:%Y%m%d} (id int, created_at timestamptz)')
        conn.execute(f'INSERT INTO "{schema}".events_{day:%Y%m%d} VALUES (1, %s)', (day,))
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10}, "tables": [{
        "name": f"{schema}.events", "start_date": DAY.isoformat(),
        "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    job = defs.resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[-1].isoformat()}).success
        conn.execute(f'DROP TABLE "{schema}".events_{DAY:%Y%m%d}')
        verified = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        [said] = [e.event_specific_data.description for e in verified.all_events
                  if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                  and e.event_specific_data.check_name == "source_unchanged"]
        if "overwrite: true" not in said:
            return  # another remedy for the dropped day: what is asked for
        followed = job.execute_in_process(instance=instance, partition_key=DAY.isoformat(), raise_on_error=False,
                                          run_config={"ops": {op_name(spec): {"config": {"overwrite": True}}}})
        failed = "\n".join(e.step_failure_data.user_failure_data.description for e in followed.all_events
                           if e.is_step_failure and e.step_failure_data.user_failure_data)
    assert followed.success, f"source_unchanged said:\n{said}\n\nand following it failed:\n{failed}"
