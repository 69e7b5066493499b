"""Letting the source go, hunted as a hostile environment would: the retention window in zones away from
UTC, partition layouts the removal meets in the wild, faults between its steps. Real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import RemovalRefused, due_days, remove_day
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


# ---- the retention window ----------------------------------------------------------------------------

@pytest.mark.parametrize(("zone", "utc", "last_due"), [
    ("America/Los_Angeles", "2024-03-12T02:00", "2024-03-09"),  # 2024-03-11 19:00 there
    ("Pacific/Pago_Pago", "2024-03-12T02:00", "2024-03-09"),  # 2024-03-11 15:00 there
    ("UTC", "2024-03-12T02:00", "2024-03-10"),
    ("Pacific/Kiritimati", "2024-03-11T20:00", "2024-03-10"),  # 2024-03-12 10:00 there
])
def test_keep_days_counts_from_today_in_the_tables_zone_not_the_utc_date(zone, utc, last_due):
    """At 02:00 UTC on 2024-03-12 it is still 2024-03-11 in Los Angeles (19:00) and Pago Pago (15:00). With
    keep_days 1 the day kept there is 2024-03-10, so 2024-03-09 is the last due. Was: the UTC date taken as
    the local today, so 2024-03-10 was due (and removed by the asset or `prune`) 19 and 15 hours after it
    ended, a day inside the window; and east of UTC (Kiritimati, 14 hours ahead) a day was kept longer
    than asked."""
    spec = TableSpec(name="a.b", day_column="d", start_date="2024-03-01", timezone=zone,
                     retention={"keep_days": 1, "action": "delete"})
    now = dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC)
    assert due_days(spec, now)[-1].isoformat() == last_due
    local_today = now.astimezone(__import__("zoneinfo").ZoneInfo(zone)).date()
    assert due_days(spec, local_today) == due_days(spec, now)  # a date is the table's own today
    with pytest.raises(ValueError, match="aware"):
        due_days(spec, now.replace(tzinfo=None))
