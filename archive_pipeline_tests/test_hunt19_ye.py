"""Hunt 19 (ye): a review of two fixes just merged, for regressions and holes: Parquet's parallel readers (fix-yd:
client_connection_check_interval, the snapshot let go once every reader imported it, ADBC's blocking calls off the
main thread) and restore's / prune's remedies (fix-yb: causes that refuse every day alike, Run.again).

What held up (read in the code, not run as tests): a reader failing in the open phase closes the readers already opened (the
_write finally); the start phase's first failure cancels the other readers' execute (adbc_cancel); an interrupt in the
start phase is raised as KeyboardInterrupt (test_hunt19_yd's case); client_connection_check_interval's SET is one
statement outside the transaction; Run.again quotes names with control characters ($'...') and spaces (shlex) and
keeps --table/--day/--from/--to and --dry-run; the prune remedy keeps --config. Not probed for lack of time: SIGTERM
through the CLI, Dagster termination of a parquet parallel run, same_members between imports."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec, parse_config
from archive_pipeline_tests.test_hunt17_wf import _env, _events, cli
from archive_pipeline_tests.test_hunt19_yb import restore_range_as


def test_a_range_restore_refused_by_the_targets_row_level_security_does_not_skip_its_first_day(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: three archived days D1..D3; ``archive-pipeline restore --from D1 --to D3 --into existing --target
    S.back`` by a role that may INSERT into S.back, which has row-level security enabled (its owner is another
    role). PostgreSQL refuses every COPY into it for this role ("COPY FROM not supported with row-level security"):
    every day alike, until the role or the table is changed.

    Now: exit 1 (not 2, as for the other grants), nothing restored, and "...; then: run archive-pipeline restore
    --table S.events --from D2 --to D3 --into existing --target S.back to restore the rest of S.events (D2, D3,
    without D1)": the fix-yb bug again. restore's error handling (restore.py, the InsufficientPrivilege branch for
    row security) replaces the cause with a text naming the relation ("S.back has row-level security whose
    policies apply to this role ..."), which is in no set, so cli._refuses_every_day (errors.CONFIGURATION_CAUSES)
    is False, and _restore_then leaves D1 out; _ROW_SECURITY_TARGET (the COPY's own refusal) is not in the set
    either. A user who does as told never restores D1.

    Should: the target's row-level security refuses every day alike: exit 2 and a remedy that includes D1 (the
    whole range again, nothing was restored). Fix idea: add _ROW_SECURITY_TARGET.cause to CONFIGURATION_CAUSES
    and keep the set's cause when a
    branch words it for the relation (or decide 'alike' by a flag on the classification, not by its text)."""
    days, table = _events(conn, schema, n_days=3)
    spec = parse_config({"tables": [table]}).tables[0]
    for day in days:
        archive_partition(conn, spec, day, store)
    env = _env(pg, s3, bucket, tmp_path, [table])
    role = sql.Identifier(f"{schema}_rls")
    back = sql.Identifier(schema, "back")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(back, sql.Identifier(schema, "events")))
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(back))
    conn.execute(sql.SQL("CREATE POLICY everything ON {} USING (true) WITH CHECK (true)").format(back))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
    conn.execute(sql.SQL("GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema), role))
    done = restore_range_as(conn, pg, env, f"{schema}_rls", days, "existing", f"{schema}.back")
    answer = json.loads(done.stdout)
    error = answer.get("error", "")
    assert answer["days"] == [], answer
    assert f"without {days[0]}" not in error and f"but for {days[0]}" not in error, error
    assert done.returncode == 2, (done.returncode, error)


class _HoldingProxy:
    """A TCP proxy to PostgreSQL: connections pass through until ``hold`` is set; from then on a new connection is
    accepted and left unanswered (a server that takes the connection and says nothing: a full pooler, a SYN-ACKing
    load balancer whose backend is gone) until ``HOLD_SECONDS`` have passed, then closed (``let_go`` is set)."""

    HOLD_SECONDS = 20

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hold, self.held, self.let_go = threading.Event(), threading.Event(), threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.hold.is_set():
                threading.Thread(target=self._keep, args=(client,), daemon=True).start()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _keep(self, client) -> None:
        self.held.set()
        time.sleep(self.HOLD_SECONDS)
        self.let_go.set()
        client.close()

    @staticmethod
    def _pipe(a, b) -> None:
        import socket

        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def test_a_run_terminated_while_a_parquet_reader_connects_stops_without_waiting_for_the_connect(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """Scenario: a day archived as Parquet (one stream); the reader's ADBC connection is slow to be answered (a
    pooler full of sessions, a server that accepted the TCP connection and is slow to authenticate: a proxy stands
    in, holding the reader's connection unanswered for 20 s) and the run is terminated meanwhile (Dagster's
    termination arrives as SIGINT, the CLI's Ctrl-C).

    Now: fix-yd moved the readers' opening into a worker thread (Parquet._open_readers -> _off_the_main_thread
    ([import_all], [stop.set])): the interrupt reaches the main thread's wait, but the "cancel" of the opening is
    only ``stop.set``, which import_all reads between readers; nothing ends the connect under way, and
    StreamGroup._await waits for the thread to end. The interrupt is raised only once the connect fails (here when
    the proxy lets go after 20 s; with no connect_timeout, when TCP gives up): the run does not stop on its
    termination, and Dagster's termination escalates to SIGKILL. The fix's promise ("SIGINT becomes
    KeyboardInterrupt", waited for "interruptibly") holds for the queries' start, not for the connects.

    Should: KeyboardInterrupt at once, the connect abandoned (the worker closes the connection it gets afterwards,
    nothing left in pg_stat_activity). Fix idea: run each connect in a daemon thread whose result is closed if the
    wait was interrupted, and let the open phase's wait end on the interrupt without joining the connect; or pass
    connect_timeout to the reader's DSN and bound the wait."""
    import signal
    import threading

    from archive_pipeline.core.formats import parquet

    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, body text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 s', "
                         "md5(g::text) FROM generate_series(1, 100) g").format(table))
    proxy = _HoldingProxy(pg.port)
    connect = parquet._adbc_connect

    def held_connect(*args, **kwargs):  # the reader's connect, from here on held by the proxy
        proxy.hold.set()
        return connect(*args, **kwargs)

    monkeypatch.setattr(parquet, "_adbc_connect", held_connect)

    def terminate_once_held() -> None:
        if proxy.held.wait(30):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="parquet",
                     compression="zstd")
    dsn = psycopg.conninfo.make_conninfo(pg.dsn, host="127.0.0.1", port=proxy.port)
    try:
        with psycopg.connect(dsn, autocommit=True) as archiving:
            threading.Thread(target=terminate_once_held, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                archive_partition(archiving, spec, dt.date(2024, 3, 10), store, temp_dir=str(temp_dir))
            waited_for_the_connect = proxy.let_go.is_set()
    finally:
        proxy.close()
    assert proxy.held.is_set()
    assert not waited_for_the_connect, "the interrupt was raised only once the reader's connect had failed"


def test_a_range_restore_whose_first_days_archive_alone_has_a_dropped_column_is_not_told_it_failed_for_coming_first(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: S.events had a column ``legacy`` when D1 was archived; it was dropped before D2 and D3 were.
    ``archive-pipeline restore --from D1 --to D3 --into existing --target S.back`` into a table of today's columns.
    D1's archive alone names ``legacy``: D2 and D3 restore into S.back as it is.

    Now: the COPY of D1 fails with UndefinedColumn (42703), classified as errors._UNDEFINED, which is in
    errors.CONFIGURATION_CAUSES; fix-yb's cli._refuses_every_day takes it for a cause that refuses every day alike:
    exit 2 (a usage/configuration error) and "then, once that is fixed, run the command again for the whole range
    (no day of it was restored; D1 failed only for coming first)". That is false: the cause is D1's own archive
    (its manifest's columns), D2 and D3 would restore now, and a user who will not add a dropped column back to the
    target is told nothing else can be restored.

    Should: a refusal decided by the day's own archive (a column only its manifest has) is the day's own: exit 1
    and the remedy restores the rest without D1 (as before fix-yb), or names both ways (add the column and restore
    the whole range; or restore D2..D3). Fix idea: decide "alike" in restore from what refused (a target column the
    manifest names and the target lacks is the day's; a missing target table, a grant, a read-only session are
    alike), not only from the cause's classification; or compare the failed day's columns with the range's other
    manifests before saying it failed only for coming first."""
    days, table = _events(conn, schema, n_days=3)
    events = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN legacy text DEFAULT 'x'").format(events))
    spec = parse_config({"tables": [table]}).tables[0]
    archive_partition(conn, spec, days[0], store)
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN legacy").format(events))
    for day in days[1:]:
        archive_partition(conn, spec, day, store)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(sql.Identifier(schema, "back"), events))
    env = _env(pg, s3, bucket, tmp_path, [table])
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[2].isoformat(), "--into", "existing",
               "--target", f"{schema}.back", "--json")
    answer = json.loads(done.stdout)
    error = answer.get("error", "")
    assert answer["days"] == [], answer
    assert "failed only for coming first" not in error, error
    assert done.returncode == 1, (done.returncode, error)
