"""Hunt 4 (kk): the day column and time at their edges, end to end. Real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import existing_days
from archive_pipeline.core.periods import parse_period


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


@pytest.mark.parametrize("zone, edge_day", [("America/New_York", "2024-03-09"), ("Asia/Tokyo", "2024-03-12")])
def test_declarative_expression_key_in_another_zone_finds_every_day_with_rows(conn, schema, zone, edge_day):
    """A timestamptz day column can only be range-partitioned by day through an immutable expression, e.g.
    ``PARTITION BY RANGE (((at AT TIME ZONE 'UTC')::date))`` (``at::date`` is refused by PostgreSQL): children
    hold UTC days 2024-03-10 and 2024-03-11. The table is configured with its users' zone (``timezone:
    America/New_York``, or ``Asia/Tokyo``). Discovery reads each child's bound ``'2024-03-10'`` as the local
    midnight of the table's zone, so it finds local days 03-10 and 03-11 only; but the first child's rows of
    03-10 00:00..05:00 UTC are New York's 2024-03-09 (the last child's 15:00..24:00 UTC are Tokyo's 03-12).
    That day has rows, is never requested by the sensor, and stays out of every archive. Discovery should
    find every local day the children's rows can fall on (or refuse a key whose zone is not the table's,
    naming it)."""
    ev = _ident(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL) "
                         "PARTITION BY RANGE (((at AT TIME ZONE 'UTC')::date))").format(ev))
    for day in ("2024-03-10", "2024-03-11"):
        nxt = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            _ident(schema, f"ev_{day.replace('-', '')}"), ev, sql.Literal(day), sql.Literal(nxt)))
    # a row every hour of both UTC days
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 47) g").format(ev))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", timezone=zone,
                     partitioning={"mode": "declarative"})
    candidates = [parse_period("daily", zone, f"2024-03-{d:02d}") for d in range(1, 20)]
    found = {p.key for p in existing_days(conn, spec, candidates)}
    # every local day that holds a row of the table
    with_rows = {r[0] for r in conn.execute(sql.SQL(
        "SELECT DISTINCT (at AT TIME ZONE {})::date::text FROM {}").format(sql.Literal(zone), ev))}
    assert edge_day in with_rows
    assert with_rows <= found, sorted(with_rows - found)


def test_hourly_refusal_for_a_zone_moving_by_seconds_says_by_how_much():
    """A user configures an hourly table in Europe/Amsterdam with ``start_date: 1937-06-01`` (history load):
    on 1937-07-01 Amsterdam moved from +00:19:32 to +00:20, 28 seconds. The load is refused (rightly), but
    the message says Amsterdam "moves them by 0 minutes", which contradicts the refusal itself ("need a zone
    whose clocks move by whole hours"). It should name the real shift (28 seconds, or 0:00:28)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        TableSpec(name="public.ev", day_column="at", start_date="1937-06-01", granularity="hourly",
                  timezone="Europe/Amsterdam")
    message = str(caught.value)
    assert "moves them by" in message
    assert "by 0 minutes" not in message, message
    assert "28 seconds" in message or "0:00:28" in message, message


@pytest.mark.parametrize("key_type, zone, forever", [("date", "UTC", "5874897-12-31"), ("date", "UTC", "300000-01-01"),
                                                     ("timestamp", "America/New_York", "294276-12-31 23:00:00")])
def test_a_forever_child_bounded_past_timestamps_range_does_not_break_every_day(conn, schema, store, key_type, zone,
                                                                                forever):
    """A declarative table keyed by a ``date`` column, with a child for 2024-03-10 and a "forever" child
    ``FOR VALUES FROM ('2024-03-11') TO ('5874897-12-31')`` (date's last day; PostgreSQL accepts any date
    there, far past timestamptz's 294276 AD). Discovery reads every bound as ``::timestamptz``, which overflows:
    the sensor's discovery dies with a bare ``DatetimeFieldOverflow: timestamp out of range`` and every archive
    run of every day fails with "a value in the day cannot be read or converted ... fix the offending rows, or
    archive the table in a format that keeps the value as text" (the rows are fine; it is a partition bound).
    The same with a ``timestamp`` key and a bound a few hours before timestamp's end, read in a zone west of UTC
    (``'294276-12-31 23:00'`` in America/New_York is past 294276 AD in UTC). The README says a bound at the
    calendar's ends (MAXVALUE, infinity, TO ('10000-01-01')) is a catch-all that holds no period; a bound past
    timestamptz's range should be the same: 2024-03-10 archives its row, and discovery finds the days with rows."""
    ev = _ident(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at {} NOT NULL) PARTITION BY RANGE (at)").format(
        ev, sql.SQL(key_type)))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10') TO ('2024-03-11')").format(
        _ident(schema, "ev_20240310"), ev))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-11') TO ({})").format(
        _ident(schema, "ev_later"), ev, sql.Literal(forever)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00'), (2, '2024-03-12 12:00')").format(ev))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", timezone=zone,
                     partitioning={"mode": "declarative"})
    from archive_pipeline.core.archive import archive_partition

    candidates = [parse_period("daily", zone, f"2024-03-{d:02d}") for d in range(1, 20)]
    found = {p.key for p in existing_days(conn, spec, candidates)}
    assert "2024-03-10" in found, found
    assert archive_partition(conn, spec, "2024-03-10", store).rows == 1


def test_cli_day_that_the_zone_skipped_is_refused_not_read_as_the_next_day(pg, s3, bucket, conn, schema, tmp_path):
    """Samoa (Pacific/Apia) skipped 2011-12-30. A user runs ``archive-pipeline archive --day 2011-12-30`` (or
    ``list``/``compare``/``prune --day 2011-12-30``) on a daily Apia table: the command silently acts on
    2011-12-31 instead (archives it, exit 0), though that is not the day named. The Dagster run of partition
    2011-12-30 is refused ("there is no such day in Pacific/Apia"), and so is a skipped hour on the command line
    ("does not exist in ... (the clocks skip it)"); the command line should refuse the day the same way (exit 2,
    naming the day and the zone) or select nothing, never another day."""
    from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config

    ev = _ident(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL)").format(ev))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2011-12-29 12:00-10'), (2, '2011-12-31 12:00+14')").format(ev))
    config = write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2011-12-01",
                                      "timezone": "Pacific/Apia"}])
    result = cli(make_env(pg, s3.endpoint_url, bucket, config), "archive", "--day", "2011-12-30")
    assert "2011-12-31" not in result.stdout, result.stdout
    assert result.returncode == 2 and "2011-12-30" in result.stdout + result.stderr, (result.stdout, result.stderr)
