"""Hunt 25 (cy): a table's configuration changed between runs, then every command run on days archived under the
old configuration."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import DayRemovedError, archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.plan import day_statuses

DAY = dt.date(2024, 3, 10)
FOLDERS = "{prefix}/{format}/{schema}.{table}/{date}.{ext}"  # each format in its own folder (test_hunt7_mf's)


def _events(conn, schema: str, rows: int = 5) -> None:
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date NOT NULL)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, date '2024-03-10' FROM generate_series(1, %s) g").format(table),
                 (rows,))


def _spec(schema: str, **changes):
    entry = {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
             "retention": {"keep_days": 1, "action": "delete"}}
    return parse_config({"tables": [entry | changes]}).tables[0]


def test_a_removed_day_in_a_format_folder_layout_is_archived_again_as_empty_after_the_format_changed(
        conn, schema, store, temp_dir):
    """Scenario: a table keeps each format in its own folder (key_template
    ``{prefix}/{format}/{schema}.{table}/{date}.{ext}``, a layout test_hunt7_mf already has list and compare find);
    2024-03-10 is archived as jsonl and removed from the source by retention (delete). The table is switched to
    csv and an archive run (a backfill, the schedule) meets the day.

    Now: the run archives the emptied source as an empty day (state ``empty``, exit 0 / a green partition) at the
    csv key. ``_Archiving._removed_elsewhere`` and ``_archived_elsewhere`` look for the day's other-format keys only
    in the day's own listing (``keys.listed_under(..., existing.listing)``), which for this layout is the csv
    folder's; the jsonl folder, which ``manifest.day_archive`` (list, compare, restore) does list, is never looked
    at. ``list`` goes on calling the day removed (the removal governs in ``current_archive``) while the run says it
    archived an empty day.

    Should: refuse the day as removed ("was removed from the source ... that archive is the day's only copy"), as
    it does for the default layout: look for the other formats' keys as day_archive does (one listing of each other
    key's day prefix where they are not under the day's own)."""
    _events(conn, schema)
    before = _spec(schema, format="jsonl", key_template=FOLDERS)
    assert archive_partition(conn, before, DAY, store, temp_dir=str(temp_dir)).rows == 5
    assert remove_day(conn, before, DAY, store).rows == 5
    now = _spec(schema, format="csv", key_template=FOLDERS)
    with pytest.raises(DayRemovedError):  # (now: returns an empty day's result, its manifest written at the csv key)
        archive_partition(conn, now, DAY, store, temp_dir=str(temp_dir))


def _an_hour_removed_then_daily(conn, schema: str, store, temp_dir):
    """An hourly table whose hour 2024-03-10-01:00 was archived and removed, configured daily since: its table,
    its daily spec and five days from 2024-03-10."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 01:30+00' FROM generate_series(1, 3) g").format(table))
    hourly = _spec(schema, granularity="hourly")
    assert archive_partition(conn, hourly, "2024-03-10-01:00", store, temp_dir=str(temp_dir)).rows == 3
    assert remove_day(conn, hourly, "2024-03-10-01:00", store).rows == 3
    return table, _spec(schema), [DAY + dt.timedelta(days=i) for i in range(5)]


def test_list_after_hourly_became_daily_tells_the_user_to_move_the_former_hours_archives_out_of_the_folder(
        conn, schema, store, temp_dir, caplog):
    """Scenario: an hourly table (default key_template) has its hour 2024-03-10-01:00 archived and removed from the
    source; the table is then configured daily (the README: a granularity change is supported, and a run looks for
    the removed hours under the hourly default template before it archives their day). The user lists five days
    of March (``list --from 2024-03-10 --to 2024-03-14``).

    Now: ``listing.listed_absent`` lists the days' folder (``archive/<schema>.ev/2024/03/``), meets the hour's keys
    (``.../2024-03-10/2024-03-10T01.jsonl.zst``), which are no day's key of the daily table, and ``_unaccounted``
    warns that they are "damaged on the way, or put there by something else ... Move what is not the table's
    archives out of its folder": the only copy of the removed hour's rows, which the archive run's
    ``_removed_in_overlapping`` looks for exactly there (moved away, the day is archived again as new). Every
    such listing is thrown away too (each day read on its own), for every range, for good.

    Should: keys of the table's other granularities under their default templates (the ones the run itself looks
    at) are the table's archives: accounted for, not called strays; at most named as the former granularity's."""
    table, daily, days = _an_hour_removed_then_daily(conn, schema, store, temp_dir)
    with caplog.at_level("WARNING"):
        day_statuses(conn, daily, store, days)
    strays = [r.getMessage() for r in caplog.records if "Move what is not the table's archives" in r.getMessage()]
    assert strays == [], strays


def test_the_archive_dry_run_after_hourly_became_daily_does_not_call_the_former_hours_archives_strays(
        conn, schema, store, temp_dir, caplog):
    """Scenario: as above, with the four days after the removed hour archived as the daily table they are now; the
    user asks what ``archive --dry-run`` over the five days would do (plan.plan_archive, whose one listing of the
    days already archived is listing.day_listings).

    Should: the hour's keys are the table's own (as list counts them), not "put there by something else ... Move
    what is not the table's archives out of its folder"."""
    from archive_pipeline.core.plan import plan_archive

    table, daily, days = _an_hour_removed_then_daily(conn, schema, store, temp_dir)
    for n, day in enumerate(days[1:], start=10):
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(table), (n, f"{day} 12:00+00"))
        assert archive_partition(conn, daily, day, store, temp_dir=str(temp_dir)).rows == 1
    with caplog.at_level("WARNING"):
        plan_archive(conn, daily, store, days, overwrite=False)
    strays = [r.getMessage() for r in caplog.records if "Move what is not the table's archives" in r.getMessage()]
    assert strays == [], strays
