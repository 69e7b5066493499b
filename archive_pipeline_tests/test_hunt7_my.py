"""Hunt 7 (my): regressions and holes in the newest product changes."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.plan import compare_days, day_statuses

DAY = dt.date(2024, 3, 10)


def test_a_range_finds_days_archived_under_a_former_format_named_in_the_file_name_before_its_first_dot(
        conn, schema, store, temp_dir):
    """A user names each object with its format in the file name (``key_template:
    {prefix}/{schema}.{table}/{date}-{format}.{ext}``), archives four days as jsonl, then switches the table to
    csv. The day alone is found under its former format's key (``list --day``/``compare --day``: archived,
    equal). What happens: over the four days (a range of more than three days is answered from one listing)
    every day is ``missing`` / ``not-archived``: the plan now renders the former formats' keys only where
    {format} or {ext} stands in a folder, taking a file name's {format} to share the day's prefix
    (``<dir>/<name up to its first dot>``), but here {format} comes before the first dot, so
    ``.../2024-03-10-jsonl`` is not ``.../2024-03-10-csv`` and the day's former archive is never looked at (before
    the change it was). What should happen: the range gives each day the answer the day alone gets."""
    days = [DAY + dt.timedelta(days=i) for i in range(4)]
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, date '2024-03-10' + g % 4 FROM generate_series(1, 20) g").format(table))
    entry = {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
             "key_template": "{prefix}/{schema}.{table}/{date}-{format}.{ext}"}
    before = parse_config({"tables": [entry | {"format": "jsonl"}]}).tables[0]
    for day in days:
        archive_partition(conn, before, day, store, temp_dir=str(temp_dir))
    now = parse_config({"tables": [entry | {"format": "csv"}]}).tables[0]
    assert [s.state for s in day_statuses(conn, now, store, days[:1])] == ["archived"]  # the day alone: found
    assert [c.result for c in compare_days(conn, now, store, days[:1])] == ["equal"]
    assert [s.state for s in day_statuses(conn, now, store, days)] == ["archived"] * 4
    assert [c.result for c in compare_days(conn, now, store, days)] == ["equal"] * 4
