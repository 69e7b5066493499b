"""Hunt 7 (mj): real PostgreSQL faults during the round-trip operations (restore, compare, verify --deep,
removal, prune, list with the source).

Each fault is real: a backend terminated from another session once pg_stat_activity shows it at a given
statement (made to wait there by a lock another session holds, so the moment is certain).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import psycopg
from psycopg import sql

from archive_pipeline_tests.test_cli import ROWS, cli, cli_json, days, edit_config, setup  # noqa: F401 - fixtures


def _terminate_when_waiting(pg, pattern: str, timeout: float = 30.0) -> threading.Event:
    """Start a watcher (its own session) that terminates the first backend it sees waiting on a lock while
    running a query LIKE ``pattern``; the event is set once it did."""
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout
        with pg.connect() as watcher:
            while time.monotonic() < deadline:
                if watcher.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event_type = "
                                   "'Lock' AND query LIKE %s AND pid <> pg_backend_pid()", (pattern,)).fetchone():
                    done.set()
                    return
                time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    return done


def test_prune_that_loses_the_database_exits_3_and_does_not_go_on_with_a_closed_connection(pg, conn, setup, days):
    """A user runs `archive-pipeline prune` over two due days (retention: drop). While the first day's removal
    waits for its ACCESS EXCLUSIVE lock (a report query holds the partition), a DBA's watchdog terminates the
    prune's backend. What happens: prune goes on to the second day on the connection it just lost, reports
    that day "failed: the database connection was lost (... the connection is closed)" as if its removal had
    been tried, and exits 1 ("a check found differences, or a day failed"). What should happen (README, Exit
    codes: 3 "the database ... cannot be reached"; `restore`, `verify`, `compare` and `list` end the command
    on a lost connection with exit 3, retryable): prune ends with exit 3, retryable, naming the day it was
    removing, and leaves the second day alone (not reported as a failed removal). Nothing is removed either
    way: a second prune removes both days."""
    env, spec = setup
    schema = spec.name.split(".")[0]
    edit_config(env, {"retention": {"keep_days": 1, "action": "drop"}})
    first, second = days[0].isoformat(), days[1].isoformat()
    cli_json(env, "archive", "--from", first, "--to", second)
    reader = psycopg.connect(pg.dsn)  # a report's open transaction holds the first day's partition
    try:
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, f"events_{days[0]:%Y%m%d}")))
        killed = _terminate_when_waiting(pg, "LOCK TABLE%ACCESS EXCLUSIVE%")
        done = cli(env, "prune", "--from", first, "--to", second, "--json")
        assert killed.is_set(), done.stdout + done.stderr
    finally:
        reader.close()
    answer = json.loads(done.stdout)
    # nothing was removed
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))).fetchone()[0] \
        == 3 * ROWS
    assert done.returncode == 3 and answer.get("retryable") is True, (done.returncode, done.stdout, done.stderr)
    assert first in done.stdout and second not in [d.get("day") for d in answer.get("days", [])
                                                   if d.get("status") == "failed"], done.stdout
    again = cli_json(env, "prune", "--from", first, "--to", second)
    assert [d["status"] for d in again["days"]] == ["removed", "removed"], again
