"""Hunt 10 (ph): a review of today's fixes (renames during proofs and restores, pending removals committing during
checks, manifest shape checks, a date day column's zone change, the dry run's algorithm, CLI suggestions, Dagster
descriptions, Parquet's snapshot). Real PostgreSQL and moto S3 over HTTP."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.plan import compare_days

DAY = dt.date(2024, 3, 10)


def test_a_zone_change_of_a_table_whose_day_column_is_a_domain_over_date_refuses_the_removal(conn, schema, store):
    """A table's day_column is a domain over ``date`` (``CREATE DOMAIN bday AS date``), archived in UTC; the user
    then sets ``timezone: Europe/Berlin``. For a date the zone changes nothing about a day's rows (the day filter
    reads the column's base type: source._bound_values), and ``compare`` calls the day equal. Retention then removes
    the day: refused, "its archive holds the daily period 2024-03-10 in UTC ... another period with the same key".
    A plain ``date`` column's day is removed since today's fix. Should: removed alike. Cause:
    manifest._dated_by_calendar compares the manifest's pg_type with "date", and a domain's pg_type is its own
    name (its base type is not recorded, or not consulted)."""
    conn.execute(sql.SQL("CREATE DOMAIN {} AS date").format(sql.Identifier(schema, "bday")))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at {} NOT NULL)").format(sql.Identifier(schema, "t"),
                                                                           sql.Identifier(schema, "bday")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10'), (2, '2024-03-11')").format(
        sql.Identifier(schema, "t")))
    table = dict(name=f"{schema}.t", day_column="at", start_date=dt.date(2024, 3, 9), format="jsonl",
                 partitioning={"mode": "column"}, retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, TableSpec(**table), DAY, store)
    berlin = TableSpec(**table, timezone="Europe/Berlin")
    [compared] = compare_days(conn, berlin, store, [DAY])
    assert compared.result == "equal", compared  # (the premise: the same rows, by fingerprint)
    removal = remove_day(conn, berlin, DAY, store)
    assert removal.rows == 1


def test_a_from_hour_of_tomorrow_is_not_blamed_on_start_date(pg, s3, bucket, conn, schema, tmp_path):
    """On an hourly UTC table a user runs `archive-pipeline archive --from <tomorrow>-03:00` (a slip of the date;
    in UTC that hour has not begun). It is refused (exit 2), but stderr says "s.ev: no hourly period of the table
    in the selection (its first day, start_date, is 2024-03-10)": the user looks at start_date, years before the
    date given. Today's fix (cli._not_over) refuses only hours of a day after tomorrow (in a zone 14 hours ahead
    tomorrow's may be over) and leaves the rest to plan.not_ended, which with no --to takes now as the selection's
    end, finds nothing between a start after now and now, and answers False, so Run.days blames start_date (the
    cause test_hunt10_pe named). Should: says the hour has not ended yet / is after today, never start_date."""
    from archive_pipeline_tests.test_hunt10_pe import _hourly, cli, make_env

    config = _hourly(conn, schema, tmp_path)
    env = make_env(pg, s3.endpoint_url, bucket)
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    done = cli(env, "archive", "--config", str(config), "--from", f"{tomorrow}-03:00")
    assert done.returncode == 2, done.stderr
    assert "start_date" not in done.stderr.split("Usage:")[0], done.stderr
