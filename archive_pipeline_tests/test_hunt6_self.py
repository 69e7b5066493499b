"""This session's own checks of its changes (hunt 6)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError, redact
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import S3Store

DAY = dt.date(2024, 3, 10)


def _deepest_jsonb(conn) -> int:
    """The deepest array nesting jsonb_in reads under this server's max_stack_depth (a bisection)."""
    low, high = 1, 1 << 17
    while low < high:
        middle = (low + high + 1) // 2
        try:
            with conn.transaction():
                conn.execute("SELECT %s::jsonb IS NULL", ("[" * middle + "]" * middle,))
            low = middle
        except psycopg.errors.StatementTooComplex:
            high = middle - 1
    return low


def test_a_value_nested_too_deep_for_a_jsonl_line_is_named_as_such(conn, schema, s3_client, bucket, temp_dir):
    """A jsonb nested almost as deep as PostgreSQL reads it archives as JSONL (the text is exact), but each JSONL
    line is read back as JSON a level or two deeper than the value, past the server's stack depth limit. Was:
    "a function or trigger recursed ...; no value is at fault", pointing the user at a recursion that is not
    there. Should: the nesting named as the cause, with max_stack_depth as what to raise."""
    depth = _deepest_jsonb(conn)
    table = sql.Identifier(schema, "nested")
    conn.execute(sql.SQL("CREATE TABLE {} (at date, v jsonb)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, %s::jsonb)").format(table, sql.Literal(DAY)),
                 ("[" * depth + "]" * depth,))
    spec = TableSpec(name=f"{schema}.nested", day_column="at", start_date="2024-01-01", format="jsonl",
                     compression="zstd")
    store = S3Store(s3_client, bucket, prefix="deep")
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 1
    with pytest.raises(ArchiveError) as raised:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    said = f"{raised.value} {raised.value.remedy}"
    assert "nest" in said and "max_stack_depth" in said and "recursed" not in said, said
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.back",)).fetchone()[0] is None


@pytest.mark.parametrize("password", ["p", "ab", "xyz"])
def test_a_short_password_is_hidden_without_mangling_the_message(password):
    """A password of one to three characters (a test or demo role's) was replaced wherever its letters stood in
    any word: "permission denied for table apples" with password "p" read "***ermission denied for table
    a******les". Should: the words stay readable; the password is hidden where it stands alone, as in a DSN."""
    message = f"permission denied for table apples; connecting to postgresql://u:{password}@db/x password={password}"
    shown = redact(message, password)
    assert shown.startswith("permission denied for table apples;"), shown
    assert f":{password}@" not in shown and f"password={password}" not in shown, shown
    assert redact(f"the password is {password}.", password) == "the password is ***."


def test_the_glacier_remedy_names_the_object_to_restore(conn, schema, s3_client, bucket, temp_dir):
    """An archive moved to GLACIER by a lifecycle rule is restored first with ``aws s3api restore-object``. Was:
    the remedy showed ``--bucket <bucket> --key <key>``, leaving the user to find the key. Should: the command
    names the bucket and the very key the refused GET read, ready to paste."""
    import shlex

    from archive_pipeline.core.restore import restore_day

    conn.execute(sql.SQL("CREATE TABLE {} (at date, id int)").format(sql.Identifier(schema, "cold rows")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, 1)").format(sql.Identifier(schema, "cold rows"),
                                                                sql.Literal(DAY)))
    spec = TableSpec(name=f"{schema}.cold rows", day_column="at", start_date="2024-01-01", format="csv",
                     compression="zstd")
    store = S3Store(s3_client, bucket, prefix="cold")
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    s3_client.copy_object(Bucket=bucket, Key=result.key, CopySource={"Bucket": bucket, "Key": result.key},
                          StorageClass="GLACIER", MetadataDirective="COPY")
    with pytest.raises(ArchiveError) as raised:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    remedy = raised.value.remedy or ""
    assert f"--bucket {shlex.quote(bucket)} --key {shlex.quote(result.key)} " in remedy, remedy
    assert "<key>" not in str(raised.value), str(raised.value)


def test_with_retries_off_a_transient_failure_does_not_say_it_is_retried(conn, schema, archive_env, monkeypatch):
    """A user sets ``retry: max_retries: 0`` (they retry by hand) and the store is unreachable when the day runs.
    Was: the step failure said "transient, retried" and "This looked transient and was retried", though Dagster
    retried nothing. Should: it says the failure looked transient but retries are off, and where to turn them on."""
    import socket

    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat()}]})
    with instance_for_test() as instance:
        result = build_definitions(config, check_source=False).resolve_job_def(
            f"Archive_{schema}_events").execute_in_process(instance=instance, partition_key=DAY.isoformat(),
                                                           raise_on_error=False)
    [failed] = [e.step_failure_data for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    text = failed.user_failure_data.description
    assert "retries are off" in text and "max_retries: 0" in text, text
    assert "transient, retried" not in text and "was retried" not in text and "retried automatically" not in text, text


def test_a_failed_removal_carries_the_metadata_an_archive_failure_does(conn, schema, archive_env):
    """A removal (Remove_<table>) of a due day that was never archived fails, not retried. Was: its Failure carried
    no metadata, while the archive step's failures carry table, day, retryable and error, which is what a person
    filters failed runs by. Should: the same four keys."""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 1, "delay_seconds": 0},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat(),
                                       "retention": {"keep_days": 30, "action": "delete"}}]})
    with instance_for_test() as instance:
        result = build_definitions(config).resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
    [failed] = [e.step_failure_data for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    metadata = {k: getattr(v, "value", v) for k, v in failed.user_failure_data.metadata.items()}
    assert metadata["table"] == f"{schema}.events" and metadata["day"] == DAY.isoformat(), metadata
    assert metadata["retryable"] is False and metadata["error"], metadata
    assert "has no archive" in failed.user_failure_data.description


def test_a_check_that_could_not_check_names_table_and_day_once():
    """An on-demand check whose comparison failed (the core's error already says "comparing <table> for <day>
    failed: ..."). Was: "<table> <day>: could not check the archive: comparing <table> for <day> failed: ...",
    table and day twice. Should: once; and still once where the core's message names neither."""
    from archive_pipeline.core.config import TableSpec as Spec
    from archive_pipeline.core.errors import SourceError
    from archive_pipeline.defs.checks import _unreachable

    spec = Spec(name="s.events", day_column="at", start_date="2024-01-01")
    named = _unreachable(spec, DAY, SourceError(f"comparing s.events for {DAY} failed: the session was lost"))
    bare = _unreachable(spec, DAY, SourceError("the session was lost"))
    for failed in (named, bare):
        assert failed.description.count("s.events") == 1 and failed.description.count(str(DAY)) == 1, failed.description


@pytest.mark.parametrize("action", ["drop", "detach"])
def test_a_day_under_a_month_partition_is_refused_saying_what_the_partition_holds(conn, schema, store, temp_dir,
                                                                                   action):
    """Daily archives of a table partitioned by month, retention action drop/detach: the day's removal is refused
    (dropping the month would remove the other days). Was: "is not one partition of its own (partitions:
    ['ev_202403'])", which reads as if the day had a partition list. Should: the month partition named with its
    range, saying it holds other days' rows too; and nothing removed."""
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(conn, schema, [("ev_202403", "2024-03-01", "2024-04-01")])
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-11 12:00+00')").format(
        sql.Identifier(schema, "ev")))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01", format="csv",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": action})
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    with pytest.raises(RemovalRefused) as raised:
        remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
    said = str(raised.value)
    assert f"{schema}.ev_202403" in said and "FOR VALUES FROM" in said and "other days" in said, said
    assert "partitions: [" not in said and "'delete'" in said, said
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ev"))).fetchone()[0] == 2
