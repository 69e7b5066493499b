"""Hunt 4, zd: adversarial review of the very last product fixes (restore's unique violations ...)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def test_a_unique_violation_in_the_recreated_partition_of_a_table_holding_other_days_is_not_rows_already_there(
        conn, schema, store, temp_dir):
    """A user archives a day of ev (partitioned by day, one child a day; the next day's partition holds its own
    rows) and drops the day's partition. Later a unique index on (at, note) is added to ev; the day's archived
    rows have two equal notes. The user restores the day into='original': the restore re-creates the day's
    partition, and the load is refused by the index. What happens: ``_unique_violation`` counts the re-created
    partition as the target's (fixed), but then asks whether the *whole* target ``ev`` holds rows -- it does,
    another day's -- and says "rows of the archive ... already exist in ev ... Use on_conflict='skip'": the
    partition the rows went to was created empty by this very restore, and skipping would drop archived rows.
    Expected: the archived rows collide among themselves under the target's constraint (as when ev is empty)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, note text) PARTITION BY RANGE (at); "
                         "CREATE TABLE {s}.ev_20240310 PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-10') "
                         "TO ('2024-03-11'); "
                         "CREATE TABLE {s}.ev_20240311 PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-11') "
                         "TO ('2024-03-12')").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'same'), (2, %s, 'same'), (3, %s, 'other'), "
                         "(4, %s, 'next')").format(s), (DAY, DAY, DAY, DAY + dt.timedelta(days=1)))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                     partitioning={"mode": "declarative"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
    conn.execute(sql.SQL("DROP TABLE {}.ev_20240310").format(s))
    conn.execute(sql.SQL("CREATE UNIQUE INDEX ev_note ON {}.ev (at, note)").format(s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    text = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "on_conflict='skip'" not in text, text
    assert "among themselves" in text, text
