"""Hunt 12 (rj): the product's own operations racing each other on one table-day (archive, overwrite,
removal, restore, verify, compare; CLI beside Dagster), each interleaving forced by a parked seam
(a threading.Event) or a PostgreSQL lock the test holds. Each test fails on a bug."""

from __future__ import annotations

import datetime as dt
import threading

import pytest  # noqa: F401
from psycopg import sql  # noqa: F401

from archive_pipeline.core import restore as restore_mod
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - fixture
from archive_pipeline_tests.test_race_hunt import wait_until  # noqa: F401

DAY = dt.date(2024, 3, 10)
NEXT = dt.date(2024, 3, 11)


def _park(monkeypatch, module, name: str, thread_name: str) -> tuple[threading.Event, threading.Event]:
    """Make ``module.name`` wait (in the thread called ``thread_name`` only) until the test lets it go."""
    gate, parked = threading.Event(), threading.Event()
    original = getattr(module, name)

    def waiting(*args, **kwargs):
        if threading.current_thread().name == thread_name:
            parked.set()
            gate.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, waiting)
    return gate, parked


def _in_thread(name: str, fn) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


def test_a_restore_meeting_another_restore_into_the_same_table_names_the_archived_table(pg, conn, events, store,
                                                                                       monkeypatch):
    """Two restores of events 2024-03-10 into the same new table (two operators, or a CLI restore beside a
    script). The first is parked inside its transaction (rows loaded, before its check); the second meets
    the target's table-day lock. Now its ArchiveError has table='restore into <schema>.copy' (the lock's
    internal name, no table of anyone's) and says "restore into <schema>.copy 2024-03-10 is being archived,
    removed or restored by another run", which names neither the archived table nor what is really going on.
    Should: table = the archived table (<schema>.events), and a message that names it, the day and that
    another restore into <schema>.copy holds that day (retryable). Fix idea: keep the lock's key name
    internal; raise _held with the manifest's table and a holder text naming the target."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    gate, parked = _park(monkeypatch, restore_mod, "_check", "first")
    target = f"{events}.copy"
    with pg.connect() as first, pg.connect() as second:
        thread, outcome = _in_thread("first", lambda: restore_mod.restore_day(first, store, spec, DAY, into="new",
                                                                               target=target))
        try:
            assert parked.wait(30), outcome
            with pytest.raises(ArchiveError) as caught:
                restore_mod.restore_day(second, store, spec, DAY, into="new", target=target)
        finally:
            gate.set()
            thread.join(60)
    assert outcome.get("result") is not None, outcome  # (the premise: the first restore loaded the day)
    error = caught.value
    assert error.retryable, error.__dict__
    assert error.table == spec.name, error.__dict__
    assert not str(error).startswith("restore into"), str(error)
