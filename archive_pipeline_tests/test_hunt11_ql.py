"""Hunt 11 (ql): parallel extraction (``parallel_streams``) and batched runs at their edges."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.local.local_stack import LocalPostgres, create_sample_events, start_postgres

DAY = dt.date(2024, 3, 10)


@pytest.fixture(scope="module")
def crowded_pg() -> Iterator[LocalPostgres]:
    """A cluster of its own with ten connection slots (none reserved), a 3,000-row day in public.events
    and a login role ``archiver`` (not a superuser, no pg_read_all_stats) that may read it."""
    server = start_postgres({"max_connections": "10", "superuser_reserved_connections": "0", "autovacuum": "off"})
    with server.connect() as conn:
        create_sample_events(conn, [DAY], 3000)
    server.create_password_role("archiver", "pw-ql")
    with server.connect() as conn:
        conn.execute("GRANT SELECT ON public.events TO archiver")
    yield server
    server.stop()


def test_streams_are_fitted_to_max_connections_filled_by_other_roles_sessions(crowded_pg, store, temp_dir):
    """Parallel extraction (README): "Before it reads, a day counts the sessions its role, its database and
    the server still allow: it reads with fewer streams ... rather than ask for sessions a limit would refuse
    at every attempt". The server-wide count (``parallel.free_sessions``) counts the rows of pg_stat_activity
    whose ``backend_type = 'client backend'``; but PostgreSQL shows a role without pg_read_all_stats the
    backend_type of its OWN sessions only (every other user's row has it NULL). So an ordinary archiving role
    counts only its own sessions: with max_connections nearly taken by other roles (an application, a pooler)
    it believes the whole server is free, plans four streams, and the streams' connects are refused ("sorry,
    too many clients already") -- at every attempt, the retries included, while one stream would have fit.

    Here: 10 slots, 8 held by the superuser's sessions, the archiver's own session is the 9th: one session is
    free. Now: the day fails on the streams' connects. Expected: the day is archived with one stream and the
    fingerprint beside it (or first), and its streams note says the connection limits left room for fewer.
    Fix idea: count the rows whose backend_type is NULL too when they have a usesysid (other users' client
    sessions), or every row but the role's own non-client ones; conservative is fine."""
    spec = TableSpec(name="public.events", day_column="created_at", start_date=DAY, format="jsonl",
                     parallel_streams=4)
    held: list[psycopg.Connection] = []
    try:
        with psycopg.connect(crowded_pg.dsn_for("archiver", "pw-ql"), autocommit=True) as archiving:
            deadline = time.monotonic() + 20
            while len(held) < 8:  # a closed session's backend may hold its slot a moment
                try:
                    held.append(crowded_pg.connect())
                except psycopg.OperationalError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            result = archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
    finally:
        for conn in held:
            conn.close()
    assert result.rows == 3000
    assert "connection limits" in result.streams, result.streams
