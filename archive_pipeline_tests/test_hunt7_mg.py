"""Hunt 7 (mg): what a Dagster operator sees and does, through Dagster's own APIs (jobs run in process with a
test instance, checks and partition status read back from it) against the real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

from dagster import instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_hunt4_tt import _failures

ORIGIN = "attributes of /srv/project/defs/archive/defs.yaml"


def test_a_removal_refused_as_not_due_names_where_the_tables_were_configured(conn, schema, archive_env):
    """The tables come from a Component's inline attributes (or ``build_definitions(load_config("x.yaml"))``):
    the configuration's origin, which every archive failure names ("... in attributes of .../defs.yaml").
    A person materializes the removal of a day retention still keeps. The run fails saying "To remove it
    sooner, lower retention.keep_days for the table in archive_tables.yaml": a file this project does not
    have (or another code location's), so the person edits the wrong file, or finds none. The removal asset
    builds its words from ``config_path()`` instead of the configuration's origin (it should name ORIGIN)."""
    today = utc_today()
    day = today - dt.timedelta(days=1)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(),
         "retention": {"keep_days": 30, "action": "delete"}}]}, ORIGIN)
    defs = build_definitions(config)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        [message] = _failures(instance, result.run_id)
    assert "keep_days" in message
    assert ORIGIN in message and "archive_tables.yaml" not in message, message
