"""Hunt 5 (ko): an error's classification carried through Dagster: what the step failure of the archive asset,
the removal asset and the on-demand checks tells a person (retried or not, cause, remedy, metadata)."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(3)]


def _config(schema: str, **settings):
    return parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": FIRST.isoformat(), **settings}]})


def _failure(result):
    """The step failure's description a person reads, and the number of retries Dagster made."""
    kinds = [e.event_type_value for e in result.all_events]
    [failure] = [e.step_failure_data for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    return failure.user_failure_data.description, kinds.count("STEP_UP_FOR_RETRY")


def _reader_without_select(conn, pg, schema: str) -> tuple[str, str]:
    """A login role that may use the schema but not read its tables (no GRANT SELECT): its name and DSN."""
    role = f"{schema}_nosel"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    return role, pg.dsn_for(role)


def _drop_role(conn, role: str) -> None:
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_an_archive_refused_select_tells_what_to_do_about_the_privilege(conn, schema, pg, archive_env, monkeypatch):
    """A DBA gives the code location a role that may use the schema but was never granted SELECT on the table
    (or had it revoked), and the day's partition is launched. The step fails at once, not retried (right), with
    "role 'x' may not SELECT from 's.events'; GRANT SELECT ...", and then "What to do: Check table 's.events' in
    <file>: its name, day_column (created_at) and partitioning mode (column) must match the database": advice
    about the configuration, which is right, and nothing about the privilege. The catalog's refusal
    (``source.describe_table``: "may not SELECT") is a SourceError with cause "permission denied" but no
    remedy, so Dagster's failure falls back to ``assets.remedy``'s generic SourceError advice. Expected: the
    failure's "What to do" names the grant (GRANT SELECT ON the table TO the role), as a permission refused by
    the server says (errors' "permission denied" remedy), not a check of name, day_column and mode."""
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    role, dsn = _reader_without_select(conn, pg, schema)
    try:
        monkeypatch.setenv("ARCHIVE_PG_DSN", dsn)
        with instance_for_test() as instance:
            result = build_definitions(_config(schema), check_source=False).resolve_job_def(
                f"Archive_{schema}_events").execute_in_process(instance=instance, partition_key=FIRST.isoformat(),
                                                               raise_on_error=False)
        text, retries = _failure(result)
    finally:
        _drop_role(conn, role)
    assert not result.success and retries == 0
    assert f"{schema}.events {FIRST}" in text, text
    advice = text.split("What to do:", 1)[-1]
    assert "GRANT SELECT" in advice, text
    assert "day_column" not in advice, text


def test_source_unchanged_refused_select_tells_what_to_do_about_the_privilege(conn, schema, pg, archive_env,
                                                                              monkeypatch):
    """An archived day; then the code location's role loses SELECT on the table (a DBA's revoke, or a new role
    given without the grant) and the person runs verify_archives (source_unchanged). The check cannot compare and
    fails, not retried (right), naming table and day and "role 'x' may not SELECT from 's.events'; GRANT
    SELECT ...", and then "What to do: check that the store (ARCHIVE_S3_ENDPOINT_URL, ARCHIVE_S3_BUCKET,
    credentials) and the database are reachable from this code location": a network check for a privilege. The
    catalog's refusal is a SourceError without a remedy (``source.describe_table``), and ``checks._unreachable``
    then puts the "unreachable" advice in. Expected: the advice names the missing grant (GRANT SELECT ON the
    table TO the role), never reachability."""
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    config = _config(schema)
    with instance_for_test() as instance:
        assert build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=FIRST.isoformat()).success
        role, dsn = _reader_without_select(conn, pg, schema)
        try:
            monkeypatch.setenv("ARCHIVE_PG_DSN", dsn)
            result = build_definitions(config, check_source=False).resolve_job_def("verify_archives") \
                .execute_in_process(instance=instance, raise_on_error=False)
            text, retries = _failure(result)
        finally:
            _drop_role(conn, role)
    assert not result.success and retries == 0
    assert f"{schema}.events {FIRST}" in text, text
    advice = text.split("What to do:", 1)[-1]
    assert "GRANT SELECT" in advice, text
    assert "reachable" not in advice, text
