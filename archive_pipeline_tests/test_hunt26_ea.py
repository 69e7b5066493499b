"""Hunt 26 (ea): parallel extraction (``parallel_streams: N``) under hostile conditions.

Each test fails now for the reason its docstring states (Scenario / Now / Should).
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from psycopg import sql

from archive_pipeline.core import archive
from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.helpers import assert_nothing_left
from archive_pipeline_tests.test_hunt6_lu import de, de_schema, german  # noqa: F401 - fixtures: a German server

DAY = dt.date(2024, 3, 10)


def _queue_ddl_behind_the_coordinator(monkeypatch, server, statement: sql.Composable) -> list[threading.Thread]:
    """Once the archive's session holds its snapshot and the day's locks (when it plans the streams), issue
    ``statement`` from another session and wait until it is queued behind the coordinator's lock, as
    test_parallel's test_a_change_snapshots_do_not_isolate_is_never_archived_as_an_empty_day does."""
    planned = archive.plan_streams
    started: list[threading.Thread] = []

    def change_waits_for_the_coordinator(*args, **kwargs):
        def run() -> None:
            with server.connect() as other:
                other.execute(statement)
        thread = threading.Thread(target=run)
        thread.start()
        started.append(thread)
        deadline = time.monotonic() + 30
        with server.connect() as probe:
            while time.monotonic() < deadline and not probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ~* '^ALTER'"
            ).fetchone()[0]:
                time.sleep(0.02)
        return planned(*args, **kwargs)

    monkeypatch.setattr(archive, "plan_streams", change_waits_for_the_coordinator)
    return started


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_ddl_queued_while_streams_import_the_snapshot_is_named_so_on_a_german_server(
        fmt, german, de, de_schema, store, temp_dir, monkeypatch):
    """Scenario: the source server's messages are German (lc_messages = 'de_DE.UTF-8', what initdb gives a server
    installed in a German locale). A table with ``parallel_streams: 4`` is archived with ``source.lock_timeout_ms:
    5000``; while the run holds its snapshot, a migration's ``ALTER TABLE ... ADD COLUMN`` queues behind its lock.

    Now: each stream (and Parquet's reader) takes the day's locks in ``source.lock_day`` with a fixed 200 ms wait
    (IMPORT_LOCK_WAIT_MS), which fails with SQLSTATE 55P03; lock_day recognises that only by the English words
    ``"lock timeout" in str(exc).lower()`` (source.py, lock_day), so the German "storniere Anfrage wegen
    Zeitüberschreitung einer Sperre" is re-raised raw and classified as a plain lock_timeout: "another session
    holds a conflicting lock ... raise source.lock_timeout_ms". That remedy cannot help (the wait that failed is
    the fixed 200 ms one, and lock_timeout_ms is 5000 already), and the cause the English server gives ("another
    session is waiting to change <table> ... run the table's DDL outside its archive runs") is lost.

    Should: the same classification whatever the server's language, as the project does elsewhere (by SQLSTATE,
    never by English text): retryable, "another session is waiting to change" the table, without the
    lock_timeout_ms remedy; nothing left behind. Fix idea: in lock_day test ``sqlstate_of(exc) == "55P03"`` (the
    ADBC reader's error carries it in its text: errors._sqlstate), not the message's words."""
    table = sql.Identifier(de_schema, "ev")
    de.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, body text) WITH (fillfactor = 10)").format(table))
    de.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10'::timestamptz + g * interval '1 second', md5(g::text) "
                       "FROM generate_series(1, 3000) g").format(table))
    waiting = _queue_ddl_behind_the_coordinator(
        monkeypatch, german, sql.SQL("ALTER TABLE {} ADD COLUMN added int").format(table))
    spec = TableSpec(name=f"{de_schema}.ev", day_column="at", start_date="2024-03-01", format=fmt,
                     compression="zstd", parallel_streams=4)
    try:
        with german.connect() as archiving, pytest.raises(ArchiveError) as caught:
            archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir),
                              session_settings={"lock_timeout": "5000"})
    finally:
        for thread in waiting:
            thread.join(30)
    err = caught.value
    told = f"{err} / {getattr(err, 'cause', '')} / {getattr(err, 'remedy', '')}"
    assert waiting, "the ALTER TABLE was never queued"
    assert err.retryable, told
    assert "waiting to change" in str(err), told  # as on an English server (test_parallel)
    assert "raise source.lock_timeout_ms" not in told, told
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
