"""Hunt 7 (mq): regressions and holes in this session's product changes (d5e3cd4..)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError

DAY = dt.date(2024, 3, 10)


def _events(conn, schema: str, rows: int = 3) -> TableSpec:
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at date, note text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'n' || g FROM generate_series(1, %s) g", (DAY, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY)


def test_a_run_of_the_previous_version_holding_the_day_keeps_this_version_out(pg, conn, schema, store, s3_client,
                                                                               bucket):
    """A deployment is upgraded while a run of the previous version (d5e3cd4: the lock was
    pg_try_advisory_lock(hashtext('archive_pipeline:<table>'), <day's ordinal>)) still archives, removes or
    restores a table-day: a Dagster run launched before the code location reloaded, a CLI on another host, a
    removal schedule of a second code location. What happens: af9f032 moved the lock to one 64-bit key
    (blake2b of name and day), a different advisory lock (pg_locks objsubid 1, not 2), so the new version's run
    takes the same day at once and archives it alongside the old one (the "one run per table-day, whatever
    launched it" promise broken for the whole rollout; a removal of the old version may drop the partition under
    a new archive run). What should happen: during the transition the new version also takes (or at least
    checks) the previous key, and fails fast, retryable, naming the other run, with nothing written."""
    spec = _events(conn, schema)
    with pg.connect() as old_run:
        assert old_run.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)",
                               (f"archive_pipeline:{spec.name}", DAY.toordinal())).fetchone()[0]
        with pytest.raises(ArchiveError, match="being archived, removed or restored by another run") as failure:
            archive_partition(conn, spec, DAY, store)
        assert failure.value.retryable is True
        assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
