"""Hunt 18 (xj): time and calendar edges: zones that skip a day or an hour, DST, partitions whose bounds name
wall-clock times the zone never shows, and what discovery (the sensor's days) makes of them."""

from __future__ import annotations

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import ChildrenMemo, declarative_days, existing_days


@pytest.mark.parametrize("case", [
    # Samoa skipped 2011-12-30: a daily table keyed by a date, one partition per calendar date (pg_partman's layout)
    dict(zone="Pacific/Apia", granularity="daily", key_type="date", start="2011-12-01", period="2011-12-29",
         children=[("2011-12-28", "2011-12-29"), ("2011-12-30", "2011-12-31"), ("2011-12-31", "2012-01-01")],
         row="2011-12-30", neighbours=["2011-12-28", "2011-12-31"]),
    # Berlin skipped 02:00-03:00 on 2024-03-31: an hourly table keyed by a timestamp, one partition per wall-clock hour
    dict(zone="Europe/Berlin", granularity="hourly", key_type="timestamp", start="2024-03-31",
         period="2024-03-31-01:00",
         children=[("2024-03-31 00:00", "2024-03-31 01:00"), ("2024-03-31 02:00", "2024-03-31 03:00"),
                   ("2024-03-31 03:00", "2024-03-31 04:00")],
         row="2024-03-31 02:30", neighbours=["2024-03-31-00:00", "2024-03-31-03:00"]),
], ids=["apia-skipped-date", "berlin-skipped-hour"])
def test_rows_in_a_partition_of_a_skipped_wall_clock_range_make_their_period_a_day_with_data(conn, schema, store,
                                                                                             case):
    """Scenario: a declarative table keyed by wall-clock values (a ``date`` or ``timestamp`` key), one partition per
    calendar date (or wall-clock hour), as pg_partman lays them out, in a zone that skipped one: Pacific/Apia's
    2011-12-30 (daily, date key), Europe/Berlin's 2024-03-31 02:00-03:00 (hourly, timestamp key). Rows bearing the
    skipped label sit in that label's partition (dated 2011-12-30; a 02:30 wall-clock value). Partitions are made
    for the labels that have rows, so the period before the gap has none of its own. The README says the skipped
    label's rows belong to that period (2011-12-29 runs to the next real midnight, 12-31; a skipped-hour value is
    the hour before's), and archive_partition of the period does archive them (1 row).

    Now: discovery never finds the period: ``declarative_days`` and ``existing_days`` (what the sensor's tick
    requests; plan.present_days, behind ``list --check-source`` and prune, asks the same) return nothing for it. ChildRange.periods
    reads the skipped partition's bounds as instants, and the server maps both ends of a label range the zone
    skipped to the same instant (12-30 00:00 and 12-31 00:00 are both 2011-12-31 00:00+14; 02:00 and 03:00 both
    03:00+02), so periods_overlapping(start, start) is empty: the partition holds no period, its rows none. The
    sensor never requests the day (it stays "missing" forever while its rows wait in the source) although a
    manual run archives them, and the day's rows are in no discovered period.

    Should: a wall-clock partition's periods are the ones its labels fall into (ChildRange.overlaps already
    compares labels with Period.wall_bounds): the skipped partition holds the period before the gap, so the tick
    finds and requests 2011-12-29 / 2024-03-31-01:00. Fix idea: in ChildRange.periods/_ends/holds (and
    HeldRanges), for a wall_clock child whose instants collapse (start >= end), use the period containing the
    instant just before ``start`` (the period whose wall_bounds hold the labels), or compare by labels."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at {} NOT NULL) PARTITION BY RANGE (at)").format(
        s, sql.SQL(case["key_type"])))
    for i, (lo, hi) in enumerate(case["children"]):  # a partition for each label with rows, created as they came
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"ev_{i}"), s, sql.Literal(lo), sql.Literal(hi)))
        value = case["row"] if lo.startswith(case["row"][:13]) else lo
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES ({}, {})").format(s, sql.Literal(i + 1), sql.Literal(value)))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=case["start"], timezone=case["zone"],
                     granularity=case["granularity"], partitioning={"mode": "declarative"})

    # the row with the skipped label is the period's: a run of it archives that row (the README's rule)
    assert archive_partition(conn, spec, case["period"], store).rows == 1

    candidates = [spec.period(k) for k in sorted([case["period"], *case["neighbours"]])]
    found = [p.key for p in existing_days(conn, spec, candidates, ChildrenMemo())]
    held = [p.key for p in declarative_days(conn, spec)]
    assert found == [p.key for p in candidates], f"the sensor's probe found {found}, the catalog's periods are {held}"
    assert case["period"] in held, held
