"""Hunt 12 (rv): a review of the last fixes (environment secrets redacted everywhere, former keys tidied,
wall-clock expression keys, not-checked days, 404 deletes, Parquet readers)."""

from __future__ import annotations

import datetime as dt
import json
import os

import yaml
from psycopg import sql

from archive_pipeline_tests.test_cli import ROOT, cli

UTC = dt.UTC


def _env(pg, s3, bucket, config, secret="testing"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="cli", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="test", ARCHIVE_S3_SECRET_ACCESS_KEY=secret, COLUMNS="200")
    return env


def test_an_s3_secret_that_is_a_common_word_does_not_blank_table_names_in_messages(pg, s3, bucket, conn, schema,
                                                                                  tmp_path):
    """The S3 secret key is LocalStack's documented default, ``test`` (moto's is ``testing``), and the table
    is ``<schema>.test_results``, not created yet. Since redact hides the environment's S3 secrets
    (ARCHIVE_S3_SECRET_ACCESS_KEY, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) wherever they stand in any message,
    as substrings from 4 characters on, `archive --day` says the table "<schema>.***_results" does not exist,
    and its remedy names "***_results" too: no table named, nothing pasteable, and a reader who knows the
    configured table name reads the secret off the '***'. Our own words are mangled as well ("la***" for
    "latest"). Expected: the message names <schema>.test_results (the secret appears nowhere in it: there is
    nothing to hide). Fix idea: hide the environment's secrets only in text that came from outside (botocore's,
    http.client's messages), and only values long enough to be secrets (a real secret key is 40 characters),
    or only where no letter or digit adjoins them."""
    table = dict(name=f"{schema}.test_results", day_column="at", start_date="2024-03-10", format="jsonl",
                 partitioning={"mode": "column"})
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = _env(pg, s3, bucket, config, secret="test")
    done = cli(env, "archive", "--day", "2024-03-10")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output  # (the premise: the table is missing)
    assert "***" not in output and f"{schema}.test_results" in output, output


def test_the_hour_before_a_repeated_hour_is_removable_with_the_zone_spelled_by_another_name(conn, schema, store,
                                                                                             temp_dir):
    """As test_hunt12_rs's first test, an hourly Europe/London table partitioned by one wall-clock hour a child on
    the fall-back night 2024-10-27, but its key written ``(at AT TIME ZONE 'GB')`` - the same zone, by the alias
    PostgreSQL and the tz database accept (or 'europe/london', which PostgreSQL matches case-insensitively). What
    happens: _converts_by_table_zone compares the key's zone string with spec.timezone literally, so the key is
    not taken as wall-clock; the child ev_00's upper bound (the ambiguous 01:00) is read as an instant, and the
    hour 00:00, alone in ev_00, is refused: "is not one partition of its own". Expected: ev_00 dropped, the
    other hours' rows left. Fix idea: compare zones by what they are, e.g. ask PostgreSQL whether the key's zone
    and the table's give the same offsets (or zoneinfo's canonical names, with case folded), not by spelling."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TABLE {s}.ev (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE ((at AT TIME ZONE 'GB'))")
    for h in range(4):
        a = dt.datetime(2024, 10, 27, h)
        conn.execute(f"CREATE TABLE {s}.ev_{h:02d} PARTITION OF {s}.ev FOR VALUES FROM ('{a}') TO "
                     f"('{a + dt.timedelta(hours=1)}')")
    for i, moment in enumerate([dt.datetime(2024, 10, 26, 23, 30, tzinfo=UTC), dt.datetime(2024, 10, 27, 0, 30, tzinfo=UTC),
                                dt.datetime(2024, 10, 27, 1, 30, tzinfo=UTC), dt.datetime(2024, 10, 27, 2, 0, tzinfo=UTC)]):
        conn.execute(f"INSERT INTO {s}.ev VALUES (%s, %s)", (i, moment))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=dt.date(2024, 10, 27), granularity="hourly",
                     timezone="Europe/London", partitioning={"mode": "declarative"}, format="jsonl",
                     retention={"keep_days": 1, "action": "drop"})
    hour = spec.period("2024-10-27-00:00")
    assert archive_partition(conn, spec, hour, store, temp_dir=str(temp_dir)).rows == 1
    conn.autocommit = True
    try:
        removal = remove_day(conn, spec, hour, store, dry_run=True, temp_dir=str(temp_dir))
    except RemovalRefused as exc:
        raise AssertionError(f"the hour's own partition was refused: {exc}") from None
    assert removal.relation.endswith("ev_00"), removal


def test_compare_does_not_pass_a_table_it_cannot_read_that_has_nothing_archived_yet(pg, conn, schema, s3, bucket,
                                                                                    tmp_path):
    """Two tables: `events` (declarative, three days, archived) and a new column-mode table `plain` with a row,
    added to the configuration but not archived yet, which the read-only role `compare` runs as may not SELECT
    (not granted yet). Since the fix of test_hunt12_ru's compare, a table whose days cannot be looked for lists
    its *archived* days `unreadable`; `plain` has none, so it vanishes from the report: `compare --json` answers
    ok: true, exit 0, `events`' days equal and not one word of `plain` (whose day is in fact not archived, a
    difference compare exists to report). Expected: a failing exit (1, or 2 for the grant) and `plain` named
    (its error with the GRANT to run). Fix idea: a table whose days cannot be looked for and that lists no
    archived day is reported as the table's error (a row with the table and the cause), never dropped."""
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.conftest import utc_today
    from archive_pipeline_tests.test_cli import cli_json

    days = [utc_today() - dt.timedelta(days=n) for n in (3, 2, 1)]
    create_sample_events(conn, days, 20, schema=schema)
    conn.execute(f"CREATE TABLE {schema}.plain (id int, created_at timestamptz)")
    conn.execute(f"INSERT INTO {schema}.plain VALUES (1, %s)", (dt.datetime.combine(days[0], dt.time(1), UTC),))
    start = days[0].isoformat()
    events = {"name": f"{schema}.events", "day_column": "created_at", "start_date": start,
              "partitioning": {"mode": "declarative"}}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [events]}))
    env = _env(pg, s3, bucket, config)
    cli_json(env, "archive")
    config.write_text(yaml.safe_dump({"tables": [events, {"name": f"{schema}.plain", "day_column": "created_at",
                                                          "start_date": start}]}))
    role = f"rv_ro_{schema}"
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Ro-pass-7f3a'")
    conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}; "
                 f"REVOKE SELECT ON {schema}.plain FROM {role}")
    ro = dict(env, ARCHIVE_PG_DSN=f"postgresql://{role}:Ro-pass-7f3a@{pg.dsn.split('@', 1)[1]}")
    done = cli(ro, "compare", "--json")
    assert done.returncode in (1, 2), done.stdout + done.stderr
    assert "plain" in done.stdout, done.stdout


def test_list_check_source_with_one_table_the_role_may_not_read_still_reports_the_other_tables(pg, conn, schema, s3,
                                                                                              bucket, tmp_path):
    """The case test_hunt12_ru fixed for `compare`, for `list --check-source`: two tables archived, the role the
    command runs as may not SELECT the column-mode `plain` (a REVOKE, a new grant missing). `compare --json` now
    lists plain's day `unreadable` with the GRANT and events' three days `equal`; `list --check-source --json`
    still answers only `{"ok": false, "exit_code": 2, "error": "role ... may not SELECT from '...plain'"}`: not
    one day of `events` (which it can check) is listed. README: "`compare` (and `list --check-source`) check
    every day even when one cannot be checked", and a table whose days cannot be looked for "fails those days
    only, and the other tables' work is done and reported". Expected: events' days listed (archived), plain's
    archived day listed `unreadable` (or not-checked) with the cause, exit 1 or 2. Fix idea: list_days catches
    a table's failure as compare's _compared does (the table's archived days with why)."""
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.conftest import utc_today
    from archive_pipeline_tests.test_cli import cli_json

    days = [utc_today() - dt.timedelta(days=n) for n in (3, 2, 1)]
    create_sample_events(conn, days, 20, schema=schema)
    conn.execute(f"CREATE TABLE {schema}.plain (id int, created_at timestamptz)")
    conn.execute(f"INSERT INTO {schema}.plain VALUES (1, %s)", (dt.datetime.combine(days[0], dt.time(1), UTC),))
    start = days[0].isoformat()
    tables = [{"name": f"{schema}.events", "day_column": "created_at", "start_date": start,
               "partitioning": {"mode": "declarative"}},
              {"name": f"{schema}.plain", "day_column": "created_at", "start_date": start}]
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}))
    env = _env(pg, s3, bucket, config)
    cli_json(env, "archive")
    role = f"rv_ro_{schema}"
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Ro-pass-7f3a'")
    conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}; "
                 f"REVOKE SELECT ON {schema}.plain FROM {role}")
    ro = dict(env, ARCHIVE_PG_DSN=f"postgresql://{role}:Ro-pass-7f3a@{pg.dsn.split('@', 1)[1]}")
    done = cli(ro, "list", "--check-source", "--json")
    answer = json.loads(done.stdout)
    assert done.returncode in (1, 2), done.stderr
    states = {(d["table"], d["day"]): d["state"] for d in answer.get("days", [])}
    assert {k: v for k, v in states.items() if k[0].endswith(".events")} == {
        (f"{schema}.events", d.isoformat()): "archived" for d in days}, answer
    assert states.get((f"{schema}.plain", start)) in ("unreadable", "not-checked"), answer
