"""Hunt 20 (zi): which rows belong to a period -- the boundary of "that day's rows" -- across archive, skip, verify,
compare, restore, removal and discovery: day columns of type date, timestamp and timestamptz in the table's zone,
catch-all partitions (MINVALUE/MAXVALUE, infinity, a bound past year 9999), and a change of the table's configured time
zone after archives exist.

What held up (probed, not kept as tests): a removal's guards against rows outside the period (NULL days included) in
the partition or day table it would drop or detach; the date column's exemption from "another period" through a zone
change (and Pacific/Apia's two-date day); hourly tables in zones whose offsets move by less than an hour (refused at
load); a monthly table's start_date in the middle of a month (refused at load)."""

from __future__ import annotations

import pytest
from psycopg import sql

from archive_pipeline.core import plan
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.discovery import existing_days
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline_tests.test_hunt18_xn import DAY, _spec


def test_a_day_removed_in_utc_leaves_its_late_evening_rows_archived_as_an_empty_berlin_day_after_a_zone_change(
        conn, schema, store, temp_dir):
    """Scenario: a daily UTC table (timestamptz day column, retention delete) holds 5 rows on 2024-03-10 at
    23:31..23:35 UTC. The day is archived (``…/2024-03-10.jsonl.zst``) and retention removes it from the source,
    proven. Then the table's ``timezone`` is changed to Europe/Berlin and the new partition 2024-03-11 (Berlin:
    [2024-03-10 23:00 UTC, 2024-03-11 23:00 UTC)) is archived -- it is exactly the Berlin day those 5 removed rows
    belong to (00:31..00:35 local).

    Now: ``archive_partition`` finds nothing at ``…/2024-03-11.jsonl.zst`` and the source holds no row of the period
    (its rows went with the UTC day's removal), so it publishes an empty archive: success, rows 0, a green
    partition. ``_Archiving._removed_in_overlapping`` (``keys.overlapping_period_keys``) looks for removed
    overlapping periods only among the *other granularities in the table's current zone*; a zone change is covered
    only at the same key (``manifest.another_period``), never at the neighbouring keys the former zone's periods
    overlap. The Berlin day's archive says "no rows", while its 5 rows sit in the UTC day's archive, which a
    restore of the Berlin configuration refuses to load.

    Should: as for a granularity change (README: "does not archive again, as new and empty, a period whose rows
    left the source with a removed period of the former granularity"), the run refuses the period naming the
    removed UTC archive that overlaps it and that restoring it needs the table configured as it was. Fix idea: in
    overlapping_period_keys also render the periods of the same granularity in the zones the table's manifests
    recorded (or read the neighbouring keys' manifests and compare their recorded instants with the period's)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, note text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, '2024-03-10 23:30+00'::timestamptz + g * interval '1 minute', "
                 "'x' FROM generate_series(1, 5) g")
    utc = _spec(schema)
    archived = archive_partition(conn, utc, DAY, store, temp_dir=temp_dir)
    assert archived.rows == 5
    assert remove_day(conn, utc, utc.period(DAY), store, temp_dir=temp_dir).rows == 5
    berlin = _spec(schema, timezone="Europe/Berlin")
    assert berlin.period("2024-03-11").utc_start.isoformat() == "2024-03-10T23:00:00+00:00"
    try:
        result = archive_partition(conn, berlin, "2024-03-11", store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "remov" in str(exc).lower(), exc
        return
    pytest.fail(f"Berlin's 2024-03-11, whose 5 rows (00:31..00:35 local) were removed from the source with the UTC "
                f"day {archived.key}, was archived as a new period from the emptied source: rows {result.rows}, "
                f"empty {result.empty}, at {result.manifest_key}")


@pytest.mark.parametrize("upper", ["MAXVALUE", "'infinity'", "'10000-01-01 00:00+00'"])
def test_past_days_in_a_partition_open_towards_the_future_are_said_to_have_no_data_and_never_archived(
        conn, schema, store, upper):
    """Scenario: a declarative daily UTC table (timestamptz key) with a child for 2024-03-10 and a "future" child
    ``FROM ('2024-03-11 00:00+00') TO (MAXVALUE)`` -- the usual catch-all for rows after the last pre-created
    partition (pg_partman's maintenance lagging, a hand-made layout), also written ``TO ('infinity')`` or
    ``TO ('10000-01-01')``. Rows arrive on 2024-03-10, 2024-03-11 and 2024-03-12; the last two land in the future
    child. The sensor asks which days have data, and ``archive-pipeline archive --from 2024-03-10 --to 2024-03-12``
    asks ``plan.present_days`` before archiving.

    Now: ``ChildRange._ends`` treats any child unbounded on one side as a catch-all that "holds no period", so
    ``catalog_days`` / ``existing_days`` (the sensor's discovery) and ``plan.present_days`` (the command line's
    archive, list and dry run) find only 2024-03-10. 2024-03-11 and 2024-03-12 are "no data for this day in
    PostgreSQL" (exit 0), the sensor's tick says "0 of them with data" for ever, and their rows are in no archive and
    reported nowhere -- while ``archive_partition`` of such a day, asked directly, reads them through the parent.
    The bounded side (2024-03-11) is a real instant: the child's rows from there on are days of the table.

    Should: a child bounded on one side holds the periods from its bounded side on (or up to it), probed for rows
    like any other candidate (or, as a DEFAULT partition is for the command line, the days are probed through the
    parent). Fix idea: in ``_ends``/``held_periods`` clamp an unbounded side to the candidates' range rather than
    dropping the child; in ``present_days`` probe days not found whenever a child is unbounded on a side."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.d10 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00')").format(s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.later PARTITION OF {}.ev FOR VALUES FROM ('2024-03-11 00:00+00') TO ({})"
                         ).format(s, s, sql.SQL(upper)))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 05:00+00'), (2, '2024-03-11 05:00+00'), "
                         "(3, '2024-03-12 05:00+00')").format(s))
    spec = _spec(schema, partitioning={"mode": "declarative"})
    days = [spec.period(d) for d in ("2024-03-10", "2024-03-11", "2024-03-12")]
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.later").format(s)).fetchone()[0] == 2
    sensor = [d.key for d in existing_days(conn, spec, days)]
    cli = sorted(d.key for d in plan.present_days(conn, spec, days)[0])
    planned = {p.day.key: p.action for p in plan.plan_archive(conn, spec, store, days, overwrite=False)}
    assert sensor == cli == ["2024-03-10", "2024-03-11", "2024-03-12"] and "no-data" not in planned.values(), (
        f"the days with rows in the child bounded FROM ('2024-03-11') TO ({upper}) are not found: the sensor's "
        f"discovery finds {sensor}, the command line's {cli}, and its plan says {planned} ('no data for this day "
        "in PostgreSQL') for days holding a row each")


def test_a_timestamp_day_archived_in_utc_is_refused_as_another_periods_rows_after_a_zone_change(
        conn, schema, store, temp_dir):
    """Scenario: a daily table whose day column is ``timestamp`` (without time zone) holds 5 rows on 2024-03-10
    (12:01..12:05). It is archived in UTC; then the table's ``timezone`` is set to Europe/Berlin, and the day's
    archive run (the sensor's, a backfill) and its retention removal run.

    Now: both refuse the day, permanently: "its archive holds the daily period 2024-03-10 in UTC, and the table is
    now configured as daily in Europe/Berlin: another period with the same key, not this one's rows". That is
    untrue: a ``timestamp`` column's day is its wall-clock calendar day in any zone (``Period.wall_bounds``:
    ``[2024-03-10 00:00, 2024-03-11 00:00)`` in UTC and in Berlin alike; ``source._bound_values``), so the archive
    holds exactly the Berlin day's rows. ``manifest.another_period`` exempts only a ``date`` day column
    (``_dated_by_calendar``); every archived day of such a table needs an ``overwrite`` (a second generation of
    identical rows) before retention may remove it.

    Should: a ``timestamp`` day column keeps its daily and monthly archives, proofs and removals through a zone
    change as a ``date`` column does (where the recorded bounds span the same wall-clock dates, ``_same_dates``:
    Pacific/Apia's two-date day is still another period): the run skips the identical archive and the removal
    proceeds. Fix idea: in ``_dated_by_calendar`` also accept ``timestamp without time zone`` for daily and monthly
    periods."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at timestamp NOT NULL, note text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, '2024-03-10 12:00'::timestamp + g * interval '1 minute', "
                 "'x' FROM generate_series(1, 5) g")
    utc = _spec(schema)
    assert archive_partition(conn, utc, DAY, store, temp_dir=temp_dir).rows == 5
    berlin = _spec(schema, timezone="Europe/Berlin")
    assert berlin.period(DAY).wall_bounds == utc.period(DAY).wall_bounds  # the same rows, whichever zone
    problems = []
    try:
        again = archive_partition(conn, berlin, DAY, store, temp_dir=temp_dir)
        if again.rows != 5:
            problems.append(f"the archive run gave {again.rows} rows")
    except ArchiveError as exc:
        problems.append(f"the archive run refused: {exc}")
    try:
        removed = remove_day(conn, berlin, berlin.period(DAY), store, temp_dir=temp_dir)
        if removed.rows != 5:
            problems.append(f"the removal removed {removed.rows} rows")
    except ArchiveError as exc:
        problems.append(f"the removal refused: {exc}")
    assert not problems, "; ".join(problems)
