"""The Dagster side and the configuration as a new user dropping the location into a deployment meets
them: hostile table lists (YAML 1.1's readings of numbers, days written as numbers), names Dagster
derives from table names, partition keys that reach a run without Dagster checking them, settings
that load and then break the UI."""

from __future__ import annotations

import datetime as dt
import re
import textwrap

import pytest
from dagster import DagsterEventType, Definitions, build_sensor_context, instance_for_test, load_from_defs_folder
from psycopg import sql

from archive_pipeline.core.config import ConfigError, load_config, parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_dagster import events_config, job_name
from archive_pipeline_tests.test_dagster_edges import _plain_table, _tables
from archive_pipeline_tests.test_operator import _component_project, _error_chain

TABLE = "  - {name: public.events, day_column: at, start_date: 2024-01-01%s}\n"


def _load(tmp_path, text: str, name: str = "archive_tables.yaml"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_config(path)


class TestHostileTableLists:
    """Every bad input fails at load naming file, table and setting; nothing loads as another value."""

    @pytest.mark.parametrize(("top", "extra", "setting", "says"), [
        # YAML 1.1 (PyYAML, also Dagster's loader) reads a leading zero as octal: keep_days 48, not 60
        ("", ", retention: {keep_days: 060, action: delete}", "retention.keep_days",
         "060 reads as the octal number 48 in YAML 1.1; write it without the leading zero (60)"),
        ("", ", chunk_size: 010000", "chunk_size", "octal number 4096"),
        # a name that looks like a number is told how to keep it text
        ("", ", pool: 0755", "pool", "0755 reads as the octal number 493 in YAML 1.1; write it without the leading "
                                     "zero (755), or quote it ('0755') for text"),
        # ... and a colon as base 60: 1:30 is 90
        ("source: {lock_timeout_ms: 1:00}\n", "", "source.lock_timeout_ms", "1:00 reads as the base-60 number 60"),
    ])
    def test_a_number_yaml_reads_otherwise_than_it_shows_is_refused(self, tmp_path, top, extra, setting, says):
        """``keep_days: 060`` loaded as 48, so retention removed days from the source 12 days earlier than
        the file says; nothing in the load said so."""
        with pytest.raises(ConfigError) as raised:
            _load(tmp_path, top + "tables:\n" + TABLE % extra)
        message = str(raised.value)
        assert "archive_tables.yaml" in message and setting in message and says in message, message
        if setting != "source.lock_timeout_ms":
            assert "table 'public.events'" in message

    def test_numbers_that_read_the_same_either_way_still_load(self, tmp_path):
        """Zero-padded hours and minutes (octal 01 is 1), digit separators and 08 (not octal) are fine."""
        config = _load(tmp_path, "schedule: {hour: 07, minute: 00}\nsensor: {lookback_days: 08}\ntables:\n"
                       + TABLE % ", chunk_size: 10_000")
        assert (config.schedule.hour, config.schedule.minute, config.sensor.lookback_days) == (7, 0, 8)
        assert config.tables[0].chunk_size == 10_000

    def test_an_octal_looking_number_in_the_components_inline_attributes_is_refused(self, tmp_path, monkeypatch):
        _component_project(tmp_path, monkeypatch, """\
            check_source: false
            tables:
              - name: public.events
                day_column: at
                start_date: 2024-01-01
                retention: {keep_days: 030, action: delete}
            """)
        with pytest.raises(Exception) as raised:
            load_from_defs_folder(path_within_project=tmp_path)
        [error] = [e for e in _error_chain(raised.value) if isinstance(e, ConfigError)]
        assert re.search(r"defs\.yaml:\n  table 'public.events', setting 'retention.keep_days' \(line 8\): 030 "
                         r"reads as the octal number 24", str(error)), str(error)

    def test_a_components_attributes_given_twice_fail_the_load(self, tmp_path, monkeypatch):
        """A defs.yaml with two ``attributes:`` blocks (a merge, a copy-paste) loaded the second table list
        only: public.first was silently not archived."""
        from archive_pipeline_tests.test_deploy import _make_project

        _make_project(tmp_path, textwrap.dedent("""\
            type: archive_pipeline.defs.component.ArchiveTablesComponent
            attributes:
              check_source: false
              tables: [{name: public.first, day_column: at, start_date: 2024-01-01}]
            attributes:
              check_source: false
              tables: [{name: public.second, day_column: at, start_date: 2024-01-01}]
            """))
        monkeypatch.syspath_prepend(str(tmp_path))
        with pytest.raises(Exception) as raised:
            load_from_defs_folder(path_within_project=tmp_path)
        [error] = [e for e in _error_chain(raised.value) if isinstance(e, ConfigError)]
        assert re.search(r"defs\.yaml:\n  'attributes' is given twice \(lines 2 and 5\)", str(error)), str(error)

    @pytest.mark.parametrize("value", ["0", "20240101", "'1704067200'"])
    def test_a_start_date_written_as_a_number_is_refused(self, tmp_path, value):
        """Pydantic reads a number as Unix seconds: ``start_date: 0`` loaded as 1970-01-01 (the sensor then
        looked at every day since), ``1704067200`` as 2024-01-01; 20240101 was refused as "should have zero
        time", which does not say to write the day as YYYY-MM-DD."""
        with pytest.raises(ConfigError, match=r"table 'public.events', setting 'start_date': must be a day written "
                                              r"as YYYY-MM-DD"):
            _load(tmp_path, "tables:\n  - {name: public.events, day_column: at, start_date: %s}\n" % value)

    def test_a_sensor_interval_the_ui_cannot_show_is_refused(self, tmp_path):
        """``interval_seconds: 2147483648`` loaded, and then every GraphQL query that lists the sensor failed
        ("Int cannot represent non 32-bit signed integer value"): the UI's workspace pages broke."""
        with pytest.raises(ConfigError, match=rf"setting 'sensor.interval_seconds': Input should be less than or "
                                              rf"equal to 604800"):
            _load(tmp_path, "sensor: {interval_seconds: 2147483648}\ntables:\n" + TABLE % "")
        assert _load(tmp_path, "sensor: {interval_seconds: 604800}\ntables:\n" + TABLE % "").sensor.interval_seconds

    @pytest.mark.parametrize(("setting", "value"), [
        ("format", "no"),  # the Norway problem: a boolean where a name is expected
        ("timezone", "off"),
        ("pool", "yes"),
        ("day_column", "12"),
    ])
    def test_yaml_booleans_and_numbers_where_a_name_is_expected_are_refused(self, tmp_path, setting, value):
        table = {"name": "public.events", "day_column": "at", "start_date": "2024-01-01", setting: value}
        line = ", ".join(f"{k}: {v}" for k, v in table.items())
        with pytest.raises(ConfigError, match=rf"archive_tables.yaml:\n  table 'public.events', setting '{setting}'"):
            _load(tmp_path, f"tables:\n  - {{{line}}}\n")

    def test_a_table_list_in_utf16_with_its_bom_loads_its_non_ascii_names(self, tmp_path):
        text = "\ufefftables:\n  - {name: public.événements, day_column: at, start_date: 2024-01-01}\n"
        assert _load(tmp_path, text.encode("utf-16-le")).tables[0].name == "public.événements"

    def test_a_missing_file_given_by_path_does_not_say_to_set_the_environment_variable(self, tmp_path):
        """``load_config(path)`` (the factory, a component's config_path) does not read
        $ARCHIVE_PIPELINE_CONFIG, so telling the user to set it sent them the wrong way."""
        with pytest.raises(ConfigError) as raised:
            load_config(tmp_path / "nope.yaml")
        assert "nope.yaml not found" in str(raised.value) and "ARCHIVE_PIPELINE_CONFIG" not in str(raised.value)


class TestNamesDerivedFromTables:
    @pytest.mark.parametrize("suffix", ["archive_intact", "latest_archive_intact", "source_unchanged"])
    def test_a_table_named_like_another_tables_check_is_refused_naming_both(self, suffix):
        """A check's op is named after its table and check: public.events' ``archive_intact`` runs as
        ``archive__public__events_archive_intact``, which is also the archive op of the table
        ``public.events_archive_intact``. The load failed with Dagster's "Invalid dependencies" or
        "conflicting node definitions", naming neither table."""
        config = parse_config({"tables": [{"name": n, "day_column": "at", "start_date": "2024-01-01"}
                                          for n in ("public.events", f"public.events_{suffix}")]}, "tables.yaml")
        with pytest.raises(ConfigError) as raised:
            build_definitions(config, resources={}, check_source=False)
        assert str(raised.value) == (
            f"invalid archive configuration in tables.yaml:\n  tables 'public.events' and 'public.events_{suffix}' "
            f"would share the Dagster op name 'archive__public__events_{suffix}' (an asset's or a check's); rename "
            "one of them in the database or archive it from a second code location")

    @pytest.mark.parametrize("pair", [("public.Foo", "public.foo"), ("public.Foo Bar", "public.foo_bar")])
    def test_tables_that_sanitise_to_one_asset_name_are_refused_naming_both_and_what_to_do(self, pair):
        """Two PostgreSQL tables that differ in case or punctuation only get one Dagster name: refused (as before)
        naming both, and now saying what to do (non-ASCII names get keys of their own: test_namehunt). Not "a second code location" alone, as for job
        names: there the asset key would be the same, and Dagster merges one key's materializations across
        code locations (each location's sensor would then take the other table's days as archived), unless
        that location has its own asset_key_prefix."""
        with pytest.raises(ConfigError) as raised:
            parse_config({"tables": [{"name": n, "day_column": "at", "start_date": "2024-01-01"} for n in pair]})
        message = str(raised.value)
        assert f"tables {pair[0]!r} and {pair[1]!r} map to the same asset name" in message
        assert ("rename one of them in the database, or archive it from a second code location with its own "
                "asset_key_prefix") in message

    def test_tables_whose_names_only_look_alike_still_load(self):
        names = ["public.events", "public.events_archive", "public.archive_intact", "public.events_x_source_unchanged"]
        config = parse_config({"tables": [{"name": n, "day_column": "at", "start_date": "2024-01-01",
                                           "retention": {"keep_days": 30, "action": "delete"}} for n in names]})
        Definitions.validate_loadable(build_definitions(config, resources={}, check_source=False))


class TestPartitionKeysDagsterDoesNotCheck:
    """A run launched through the API (GraphQL launchRun, the launchpad with a ``dagster/partition`` tag)
    carries its partition as a tag that Dagster does not check against the partitions definition;
    ``execute_in_process(tags=...)`` does the same."""

    def test_a_day_not_over_yet_is_refused_and_nothing_is_archived(self, conn, schema, archive_env, s3_client):
        """Before, the run archived what the day held so far and reported it as the day's archive; the
        schedule's run after midnight then failed as "changed since it was archived"."""
        tomorrow = utc_today() + dt.timedelta(days=1)  # not over whenever the test runs
        create_sample_events(conn, [tomorrow], rows_per_day=20, schema=schema)
        defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)), check_source=False)
        with instance_for_test() as instance:
            result = defs.resolve_job_def(job_name(schema)).execute_in_process(
                tags={"dagster/partition": tomorrow.isoformat()}, instance=instance, raise_on_error=False)
            types = [e.event_type for e in result.all_events]
            [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
        assert not result.success and DagsterEventType.STEP_UP_FOR_RETRY not in types
        message = failure.step_failure_data.error.message
        assert f"{schema}.events {tomorrow}: not a partition of {job_name(schema)}: it is not over yet" in message
        assert "nothing was archived" in message
        assert s3_client.list_objects_v2(Bucket=archive_env).get("KeyCount", 0) == 0

    def test_a_skipped_hour_is_refused_not_archived_as_the_next_one(self, conn, schema, archive_env, s3_client):
        """Berlin's 02:00 of 2024-03-31 does not exist (the README: "refused"). Dagster reads the tag as the
        next hour, so the run archived 03:00 and recorded it as the materialization of partition 02:00, a
        partition that does not exist, while 03:00 stayed missing."""
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(sql.Identifier(schema, "h")))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-31 03:30+02')").format(sql.Identifier(schema, "h")))
        config = parse_config({"tables": [{"name": f"{schema}.h", "day_column": "at", "start_date": "2024-03-30",
                                           "granularity": "hourly", "timezone": "Europe/Berlin"}]})
        defs = build_definitions(config, check_source=False)
        with instance_for_test() as instance:
            result = defs.resolve_job_def(f"Archive_{schema}_h").execute_in_process(
                tags={"dagster/partition": "2024-03-31-02:00"}, instance=instance, raise_on_error=False)
            [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
        assert not result.success
        assert (f"{schema}.h 2024-03-31-02:00: not a partition of Archive_{schema}_h: there is no such hour in "
                "Europe/Berlin (Dagster would read it as 2024-03-31-03:00)") in failure.step_failure_data.error.message
        assert s3_client.list_objects_v2(Bucket=archive_env).get("KeyCount", 0) == 0

    def test_a_day_before_start_date_fails_at_once_naming_the_table(self, schema, archive_env):
        """Dagster's own "Invariant failed" was raised inside the step and retried as if transient (here
        twice), naming neither the table nor what to do."""
        defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)), check_source=False)
        with instance_for_test() as instance:
            result = defs.resolve_job_def(job_name(schema)).execute_in_process(
                tags={"dagster/partition": "2024-03-09"}, instance=instance, raise_on_error=False)
            types = [e.event_type for e in result.all_events]
            [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
        assert not result.success and DagsterEventType.STEP_UP_FOR_RETRY not in types
        message = failure.step_failure_data.error.message
        assert f"{schema}.events 2024-03-09: not a partition of {job_name(schema)}" in message
        assert "before the partitions definition start" in message and "launch a partition the job lists" in message


class TestConnectionSettingsAtLoad:
    def test_a_dsn_and_bucket_ending_in_a_newline_work_as_on_the_command_line(self, pg, conn, schema, archive_env,
                                                                              monkeypatch, s3_client):
        """A secret mounted from a file (Kubernetes ``--from-file``, Docker secrets) often ends in a newline.
        The command line strips it; the code location did not, and every run failed on the database
        'postgres\\n' with "read the message; fix the cause"."""
        create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=20, schema=schema)
        monkeypatch.setenv("ARCHIVE_PG_DSN", pg.dsn + "\n")
        monkeypatch.setenv("ARCHIVE_S3_BUCKET", archive_env + "\n")
        defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)))  # the table check reaches it too
        with instance_for_test() as instance:
            result = defs.resolve_job_def(job_name(schema)).execute_in_process(
                partition_key="2024-03-10", instance=instance, raise_on_error=False)
        assert result.success
        assert s3_client.head_object(Bucket=archive_env, Key=f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst")

    @pytest.mark.parametrize(("value", "hint"), [("archives/daily", "a key prefix goes in $ARCHIVE_S3_PREFIX"),
                                                 ("my archives", "")])
    def test_a_bucket_name_botocore_refuses_fails_the_load_naming_the_variable(self, monkeypatch, value, hint):
        """The location loaded, and every run failed with "What to do: check ARCHIVE_S3_REGION and
        ARCHIVE_S3_ENDPOINT_URL", the wrong variables; the command line already named the bucket's."""
        monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://archiver@127.0.0.1:9/none")
        monkeypatch.setenv("ARCHIVE_S3_BUCKET", value)
        config = parse_config({"tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01"}]})
        with pytest.raises(ConfigError) as raised:
            build_definitions(config, check_source=False)
        assert f"$ARCHIVE_S3_BUCKET {value!r} is not a bucket name" in str(raised.value)
        assert hint in str(raised.value)

    @pytest.mark.parametrize("value", ["archive-bucket", "Legacy_Bucket.2015"])
    def test_a_bucket_name_botocore_sends_loads(self, monkeypatch, value):
        monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://archiver@127.0.0.1:9/none")
        monkeypatch.setenv("ARCHIVE_S3_BUCKET", value)
        config = parse_config({"tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01"}]})
        assert build_definitions(config, check_source=False).resources["archive_store"]

    @pytest.mark.parametrize("value", ["http://127.0.0.1:9000\n", " http://127.0.0.1:9000"])
    def test_an_endpoint_url_with_whitespace_fails_the_load_naming_the_variable(self, monkeypatch, value):
        """Python's urlsplit drops a newline, so the load's check passed a URL that botocore refused in every
        run ("ValueError: Invalid endpoint", the failure the check exists to prevent); a leading space
        made every run a retried "endpoint unreachable"."""
        monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://archiver@127.0.0.1:9/none")
        monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", value)
        config = parse_config({"tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01"}]})
        with pytest.raises(ConfigError, match=rf"ARCHIVE_S3_ENDPOINT_URL {re.escape(repr(value))} holds whitespace"):
            build_definitions(config, check_source=False)


class TestSensorTicks:
    def test_a_tick_that_could_not_inspect_a_table_and_requests_nothing_fails_naming_it(self, conn, schema,
                                                                                       archive_env):
        """A table dropped (or its SELECT revoked) after the location loaded: every tick was "skipped" with
        "no new days to archive; ... could not inspect <table>", grey in the UI, forever, so nobody learnt
        that the table's new days were no longer archived. The tick now fails, naming the table, the cause
        and the remedy; a tick with other tables' days to request still requests them (see
        test_dagster_edges' locked table)."""
        today = utc_today()
        _plain_table(conn, schema, "gone", [today - dt.timedelta(days=1)])
        _plain_table(conn, schema, "quiet", [])
        defs = build_definitions(_tables(schema, ["gone", "quiet"], today - dt.timedelta(days=5)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "gone")))
        repo = defs.get_repository_def()
        with instance_for_test() as instance, pytest.raises(Exception) as raised:
            repo.get_sensor_def("archive_new_days").evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": defs.resources["postgres"]}, repository_def=repo))
        message = "\n".join(str(e) for e in _error_chain(raised.value))
        assert f"could not inspect {schema}.gone: table '{schema}.gone' does not exist" in message
        assert "to fix: check the table's name" in message
        assert f"inspected {schema}.quiet" in message  # what it did look at, as a skip said

    def test_a_run_of_another_code_location_with_the_same_run_key_does_not_hide_a_day(self, conn, schema,
                                                                                      archive_env):
        """Tables whose Dagster names collide (``a.b_c``, ``a_b.c``) are told to go to a second code location;
        there the job, and so the run keys (``Archive_a_b_c:<day>``), are the same. The sensor left out a
        day whose run key the *other* location's sensor had used ("already have a run"), so the day was
        never requested; the daemon itself keeps the two apart by repository, and so does the sensor now."""
        import uuid

        from dagster import DagsterRun, DagsterRunStatus, SensorEvaluationContext
        from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

        day = utc_today() - dt.timedelta(days=1)
        _plain_table(conn, schema, "events", [day])
        defs = build_definitions(_tables(schema, ["events"], day - dt.timedelta(days=3)))
        repo = defs.get_repository_def()
        sensor = repo.get_sensor_def("archive_new_days")
        run_key = f"{job_name(schema)}:{day.isoformat()}"

        def used_by(location: str, instance) -> None:
            origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin(location), repo.name),
                                     job_name(schema))
            instance.add_run(DagsterRun(job_name=job_name(schema), run_id=str(uuid.uuid4()),
                                        status=DagsterRunStatus.FAILURE, remote_job_origin=origin,
                                        tags={"dagster/run_key": run_key, "dagster/sensor_name": "archive_new_days",
                                              "archive/table": f"{schema[:2]}.{schema[2:]}_events"}))

        def requested(instance) -> list[str]:
            context = SensorEvaluationContext(
                instance_ref=None, instance=instance, repository_name=repo.name, repository_def=repo,
                sensor_name="archive_new_days", resources={"postgres": defs.resources["postgres"]},
                code_location_origin=RegisteredCodeLocationOrigin("here"))
            return [r.run_key for r in sensor.evaluate_tick(context).run_requests]

        with instance_for_test() as instance:
            used_by("there", instance)
            assert requested(instance) == [run_key]
            used_by("here", instance)  # this location's sensor did use it: left out, as the daemon would
            assert requested(instance) == []


class TestScheduleAcrossDaylightSaving:
    @pytest.mark.parametrize("granularity", ["hourly", "daily"])
    @pytest.mark.parametrize(("zone", "hour"), [("Europe/Berlin", 0), ("America/Santiago", 23)])
    def test_each_period_is_requested_once_and_only_when_over(self, granularity, zone, hour):
        """Ticks of the daily schedule (UTC) over both DST changes of a zone east and one west of UTC
        (Santiago's clocks change at local midnight): every partition Dagster lists is requested exactly
        once, never before it is over."""
        from dagster import build_schedule_context
        from dagster._core.definitions.partitions.context import partition_loading_context

        from archive_pipeline.defs.assets import daily_partitions

        config = parse_config({"schedule": {"hour": hour}, "tables": [{
            "name": "public.events", "day_column": "at", "start_date": "2024-03-25", "granularity": granularity,
            "timezone": zone}]})
        spec = config.tables[0]
        defs = build_definitions(config, resources={}, check_source=False)
        repo = defs.get_repository_def()
        schedule = repo.get_schedule_def("archive_public_events_daily")
        requested: list[str] = []
        # Berlin's changes (March 31, October 27) and Santiago's (April 7, September 8), a few days around each
        windows = [(dt.date(2024, 3, 28), 6), (dt.date(2024, 4, 4), 6), (dt.date(2024, 9, 5), 6),
                   (dt.date(2024, 10, 24), 6)]
        for first, days in windows:
            for n in range(days):
                tick_at = dt.datetime.combine(first + dt.timedelta(days=n), dt.time(hour), dt.UTC)
                result = schedule.evaluate_tick(build_schedule_context(scheduled_execution_time=tick_at,
                                                                       repository_def=repo))
                for request in result.run_requests or []:
                    assert spec.period(request.partition_key).utc_end <= tick_at, (tick_at, request.partition_key)
                    requested.append(request.partition_key)
        assert len(requested) == len(set(requested))
        partitions = daily_partitions(spec)
        for first, days in windows:  # every partition that ended between the window's first and last ticks
            lo = dt.datetime.combine(first - dt.timedelta(days=1), dt.time(), dt.UTC)
            hi = dt.datetime.combine(first + dt.timedelta(days=days - 1), dt.time(), dt.UTC)
            with partition_loading_context(effective_dt=hi):
                expected = {k for k in partitions.get_partition_keys()
                            if lo < spec.period(k).utc_end <= hi}
            assert expected and expected <= set(requested), sorted(expected - set(requested))[:5]
