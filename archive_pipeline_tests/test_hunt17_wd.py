"""Hunt 17 (wd): the source changing meanwhile, and concurrent runs (DDL during a day's archive, removal or restore;
two runs of one day; retention racing archives)."""

from __future__ import annotations

import psycopg
import pytest

from archive_pipeline.core import archive as archive_mod
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline_tests.test_lifecycle import DAYS, events, spec_for  # noqa: F401 - fixture


@pytest.mark.parametrize("action", ["drop", "detach"])
def test_retention_dropping_another_days_partition_does_not_fail_this_days_archive(action, pg, conn, events, store,
                                                                                    monkeypatch):
    """Scenario: a declaratively partitioned table with retention ``action: drop``. The removal of 2024-03-10 (its
    own partition, already archived and proven) commits while the archive of 2024-03-11 is between its snapshot and
    its locks (the retention schedule and the archive schedule overlap; the removal holds ACCESS EXCLUSIVE on the
    parent, so an archive starting meanwhile waits exactly there and sees the commit).

    Now: the archive of 2024-03-11 fails (SourceError) saying ``events_20240310 changed (TRUNCATE, ... a partition
    dropped or detached) just after this run took its snapshot ...; reading on would see the day as it was not``,
    with the remedy "run the table's DDL outside its archive runs". Neither is true: 03-11's rows are in its own
    partition, untouched, and the day's read prunes 03-10's partition away; the "DDL" was archive_pipeline's own
    retention. ``hold_day`` already lets a partition that cannot hold the day's rows by its bound pass when it is
    *pending* detach (``may_hold_day``), but a completed DETACH or a DROP of another day's partition fails every
    day whose archive started meanwhile (``action: detach`` fails it the same way, "is no longer its partition").

    Expected: 2024-03-11 is archived (300 rows), as the README promises only that "dropping the day's partition"
    or a change of what the day reads fails the day. Fix idea: in hold_day, filter ``changed`` (gone relations) and
    ``detached`` through ``may_hold_day`` as ``pending`` already is (or through the relations the day's plan reads)."""
    spec = spec_for(events, action)
    archive_partition(conn, spec, DAYS[0], store)
    real = archive_mod.hold_day
    removed = []

    def retention_commits_first(*args, **kwargs):  # (the seam: after the snapshot, before the day's locks)
        if not removed:
            with psycopg.connect(pg.dsn, autocommit=True) as other:
                other.execute("SET lock_timeout = '5s'")
                removed.append(remove_day(other, spec, DAYS[0], store, removed_by="retention schedule"))
        return real(*args, **kwargs)

    monkeypatch.setattr(archive_mod, "hold_day", retention_commits_first)
    result = archive_partition(conn, spec, DAYS[1], store)
    assert removed and removed[0].rows == 300  # (the premise: 03-10 was removed meanwhile)
    assert result.rows == 300


def test_archive_on_a_connection_outside_autocommit_says_so_up_front(pg, conn, events, store):
    """Scenario: a Python caller passes ``psycopg.connect(dsn)`` (psycopg's default: not autocommit) to
    ``archive_partition``, as it might to the other core calls.

    Now: the run takes the table-day lock (opening a transaction on the caller's connection), then fails deep inside
    with ``ArchiveError: archiving <table> for 2024-03-10 failed: an unexpected error (ValueError: read_snapshot
    needs a connection in autocommit mode); not retried: ...; to fix: read the message; it is not retried because
    nothing says a retry would help`` -- the cause is an internal function's name, the remedy says nothing, and the
    caller's connection is left inside a transaction the run opened (INTRANS). remove_day and restore refuse such a
    connection up front with "needs a connection in autocommit mode (psycopg.connect(..., autocommit=True))".

    Expected: refused before anything is done (no transaction left open on the caller's connection), with a message
    or remedy that says to connect with ``autocommit=True``, as remove_day and restore do (README: every failure
    names its cause and remedy). Fix idea: ``require_autocommit(conn, "archiving a day")`` at the top of
    archive_partition (and say so in the README's Core API paragraph)."""
    spec = spec_for(events, "drop")
    with psycopg.connect(pg.dsn) as caller:  # (autocommit off: psycopg's default)
        with pytest.raises(Exception) as caught:
            archive_partition(caller, spec, DAYS[0], store)
        status = caller.info.transaction_status
        caller.rollback()
    said = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "autocommit=True" in said, said
    assert status == psycopg.pq.TransactionStatus.IDLE, f"the caller's connection was left {status.name}"
