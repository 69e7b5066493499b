"""Hunt 13 (si): two operations on one table-day at once, from different sessions or processes, forced into
one interleaving by a PostgreSQL lock a second connection holds or a seam held with a threading.Event."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - fixtures

DAY = dt.date(2024, 3, 10)


def test_a_day_held_by_an_earlier_version_names_the_holding_backend(pg, conn, events, store):
    """A run of the version before 2026-12 (still going during an upgrade) holds the day's legacy lock
    (hashtext of the name, the day's number) exclusively. This version's archive of the day fails fast,
    retryable, but says only "(a run of an earlier archive_pipeline version, or of another table whose name
    that version's lock hashed alike)": no backend pid, no application_name, no since-when, where the same
    lock held under the current key names "held by PostgreSQL backend <pid>, <application>, connected since
    ...". With two candidates (a run of this table, or of another table whose name hashes alike) the user
    has no way to find out which session to wait for or end. Should: name the holder of the legacy key as
    well (pg_locks row objsubid 2, classid = hashtext, objid = the day's number). Fix idea: _holder() for the
    legacy key too."""
    spec = spec_for(events)
    with pg.connect() as holder:
        holder.execute("SET application_name = 'archiver-v2026-11'")
        holder.execute("SELECT pg_advisory_lock(hashtext(%s), %s)", (f"archive_pipeline:{spec.name}", DAY.toordinal()))
        pid = holder.info.backend_pid
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, store)
    text = str(caught.value)
    assert caught.value.retryable and "another run" in text
    assert str(pid) in text and "archiver-v2026-11" in text, text
