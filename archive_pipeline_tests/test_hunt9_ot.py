"""Hunt 9 (ot): a hostile review of the JSONL restore / verify layout-change / ancestor-bound / period-comparison
commits: legitimate work now refused or answered differently."""

from __future__ import annotations

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.verify import deep_verify


def test_verify_deep_of_a_repeated_autumn_hour_after_a_zone_rename_gives_a_verdict(conn, schema, store):
    """An hourly table archived with ``timezone: Europe/Kiev`` is later written with the zone's current name
    ``Europe/Kyiv`` (the README: a zone renamed to another name of the same zone keeps the period). The user runs
    ``verify --deep`` of the first repeated hour of the autumn change, 2024-10-27-03:00. It now raises "its
    archive holds the hourly period ... in Europe/Kiev, and the table is now configured as hourly in Europe/Kyiv:
    another period ... (no verdict on the archive)": another_period compares the recorded bounds with the period's
    ZoneInfo datetimes by ``==``, which Python answers False across zones for a time whose offset depends on
    ``fold`` (PEP 495), although the instants are equal. It should prove the hour (same instants, same rows)."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-10-27 00:10+00'), (2, '2024-10-27 00:20+00')")
                 .format(table))
    spec = dict(name=f"{schema}.ev", day_column="at", start_date="2024-10-01", granularity="hourly")
    before = TableSpec(**spec, timezone="Europe/Kiev")
    done = archive_partition(conn, before, "2024-10-27-03:00", store)
    assert done.rows == 2 and not done.skipped
    assert deep_verify(conn, store, before, "2024-10-27-03:00") == []
    after = TableSpec(**spec, timezone="Europe/Kyiv")
    assert deep_verify(conn, store, after, "2024-10-27-03:00") == []
