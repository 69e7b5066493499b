"""Hunt D: real PostgreSQL faults at each step of the archive, the proof, the restore and the removal.

Each fault is real: a backend terminated from another session, a timeout the role or the session sets,
a connection limit, a server restart. What must hold: the fault is classified by its cause, named with
table, day, cause and remedy; nothing is left half written; no secret anywhere; the next run recovers.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import archive
from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


def _events(conn, schema: str, rows: int = 3000) -> sql.Identifier:
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + (g % 86000) * interval '1 second', 'n' || g "
                         "FROM generate_series(1, {}) g").format(table, sql.Literal(DAY.isoformat()),
                                                                 sql.Literal(rows)))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    return table


def _spec(name: str, fmt: str = "csv", **extra) -> TableSpec:
    return TableSpec(name=name, day_column="created_at", start_date=DAY, format=fmt, compression="zstd", **extra)


# ---- the archive: the first session waits for the fingerprint's, inside its read transaction ------------

@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_the_read_transaction_does_not_idle_while_the_fingerprint_alongside_finishes(
        pg, conn, schema, store, temp_dir, monkeypatch, fmt):
    """A first archive of a day fingerprints it in a second session while the first one COPYs it. When the
    fingerprint takes longer than the COPY (CSV: COPY is cheap, the fingerprint is not; README: +19% wall time
    for CSV, i.e. the fingerprint outlasts the read), the first session has read every row and then waits,
    *idle in its REPEATABLE READ transaction*, for the other one. Under idle_in_transaction_session_timeout
    (source.idle_in_transaction_timeout_ms, or the role's/server's) the server kills it and the day fails,
    "retryable", at every retry alike. Here one row of a view costs the fingerprint 5 s, so the wait is
    certain; the timeout is 2.5 s (not less: a loaded machine stretches the short gaps between the archive's
    statements). Should: the first session ends its read transaction once its rows are read (the second one
    holds the snapshot and the day's locks itself), as the parallel streams and the Parquet reader already
    make it do."""
    _events(conn, schema)
    # NULL whatever the query (a value that depended on it would make the archive differ from its fingerprint)
    conn.execute(sql.SQL("CREATE VIEW {v} AS SELECT e.*, CASE WHEN e.id = 1500 AND current_query() LIKE "
                         "'%%hashtextextended%%' AND pg_sleep(5) IS NULL THEN 'never' END AS slow FROM {t} e").format(
        v=sql.Identifier(schema, "ev_view"), t=sql.Identifier(schema, "ev")))
    monkeypatch.setattr(archive, "FINGERPRINT_ALONGSIDE_ROWS", 1)  # this small day takes the alongside path
    spec = _spec(f"{schema}.ev_view", fmt)
    with pg.connect() as archiving:
        result = archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir),
                                   session_settings={"idle_in_transaction_session_timeout": "2500"})
    assert result.rows == 3000 and not result.skipped


# ---- deep verification: the loading session waits for the source's fingerprint, inside its transaction ----

def _slow_view(conn, schema: str) -> str:
    """``<schema>.ev_view``: the day's 3,000 rows, one of which costs a fingerprint (a query hashing rows) 5 s."""
    _events(conn, schema)
    # NULL whatever the query (a value that depended on it would make the archive differ from its fingerprint)
    conn.execute(sql.SQL("CREATE VIEW {v} AS SELECT e.*, CASE WHEN e.id = 1500 AND current_query() LIKE "
                         "'%%hashtextextended%%' AND pg_sleep(5) IS NULL THEN 'never' END AS slow FROM {t} e").format(
        v=sql.Identifier(schema, "ev_view"), t=sql.Identifier(schema, "ev")))
    return f"{schema}.ev_view"


def test_deep_verification_does_not_idle_in_its_load_transaction_while_the_source_is_fingerprinted(
        pg, conn, schema, store, temp_dir):
    """Deep verification loads the archive into a temporary table in one transaction on the proving session
    while a second session fingerprints the source, then waits for that fingerprint *inside* the load's
    transaction (the temporary table is ON COMMIT DROP). A source whose fingerprint takes longer than the
    load (a big CSV day: loading text is cheap, the source's typed values are not) keeps the proving session
    idle in transaction; under idle_in_transaction_session_timeout (PostgresResource and the command line set
    source.idle_in_transaction_timeout_ms on it) it is killed and a proof that holds fails, "retryable", at
    every retry alike. Should: proven ([]), e.g. by computing the loaded rows' fingerprint, ending the load's
    transaction (or keeping it busy) before waiting for the source's."""
    name = _slow_view(conn, schema)
    spec = _spec(name, "csv")
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))  # (fingerprinted first: a small day)
    with pg.connect() as proving:
        proving.execute("SET idle_in_transaction_session_timeout = 2500")
        assert deep_verify(proving, store, spec, DAY, temp_dir=str(temp_dir)) == []


# ---- helpers: terminate a session when it runs a given step ------------------------------------------------

class _KillAt:
    """A watcher (its own superuser session) that terminates backend ``pid()`` once pg_stat_activity shows it
    running a query LIKE ``pattern``; ``killed`` says whether it did."""

    def __init__(self, pg, pid, pattern: str, timeout: float = 20.0) -> None:
        self.pg, self.pid, self.pattern, self.timeout = pg, pid, pattern, timeout
        self.killed = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        with self.pg.connect() as watcher:
            while time.monotonic() < deadline:
                pid = self.pid()
                if pid is not None and watcher.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                        "AND query LIKE %s", (pid, self.pattern)).fetchone():
                    self.killed.set()
                    return
                time.sleep(0.002)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(self.timeout + 5)


def test_a_restore_terminated_while_it_loads_leaves_nothing_and_runs_again(
        pg, conn, schema, store, temp_dir):
    """(Held.) The restoring session is terminated in the middle of its COPY into the new table."""
    from archive_pipeline.core.restore import RestoreError, restore_day

    _events(conn, schema, rows=100000)
    spec = _spec(f"{schema}.ev", "csv")
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    target = f"{schema}.back"
    with pg.connect() as restoring:
        with _KillAt(pg, lambda: restoring.info.backend_pid, "COPY %FROM STDIN%") as kill, \
                pytest.raises(RestoreError) as caught:
            restore_day(restoring, store, spec, DAY, into="new", target=target, temp_dir=str(temp_dir))
    assert kill.killed.is_set()
    err = caught.value
    assert err.retryable and (err.table, err.day) == (spec.name, DAY.isoformat()), str(err)
    assert "terminated" in str(err) and "to fix:" in str(err), str(err)
    assert conn.execute("SELECT to_regclass(%s)", (target,)).fetchone()[0] is None
    assert list(temp_dir.iterdir()) == []
    with pg.connect() as again:
        assert restore_day(again, store, spec, DAY, into="new", target=target, temp_dir=str(temp_dir)).rows == 100000


# ---- secrets: no password in the error or anything it carries --------------------------------------------

PASSWORD = "hunt d's:p@ss/%ü"


def _chain_texts(exc: BaseException) -> list[str]:
    """The text of ``exc`` and of every exception it carries (cause, context, notes, args), as a traceback
    printer or an error tracker shows them."""
    import traceback

    texts, seen, todo = [], set(), [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *map(str, getattr(current, "__notes__", []))]
        todo += [current.__cause__, current.__context__]
    texts.append("".join(traceback.format_exception(exc)))
    return texts


def _password_role(pg, conn, schema: str, label: str) -> tuple[str, str]:
    import os

    role = f"hd_{label}_{os.getpid()}_{schema}"
    dsn = pg.create_password_role(role, PASSWORD)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(role)))
    return role, dsn


@pytest.mark.parametrize(("fmt", "streams"), [("parquet", 1), ("csv", 2)])
def test_a_password_rotated_before_the_second_session_is_nowhere_in_the_error(pg, conn, schema, store, temp_dir,
                                                                              fmt, streams):
    _events(conn, schema)
    role, dsn = _password_role(pg, conn, schema, "rot")
    spec = _spec(f"{schema}.ev", fmt, parallel_streams=streams)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD 'rotated elsewhere'").format(sql.Identifier(role)))
        with pytest.raises(ArchiveError) as caught:
            archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
    err = caught.value
    assert not err.retryable and "wrong password" in str(err), str(err)
    from urllib.parse import quote
    for text in _chain_texts(err):
        for form in (PASSWORD, quote(PASSWORD, safe=""), "p@ss"):
            assert form not in text, text


# ---- a server crash while a removal's transaction is open ------------------------------------------------

def test_a_pending_mark_whose_transaction_died_in_a_crash_is_not_completed_by_a_reused_transaction_id(
        s3_client, store, temp_dir):
    """The removal writes its pending mark with its transaction's id (txid_current()) and only then locks and
    deletes. The server crashes (immediate shutdown, a power loss, an OOM kill of the postmaster) meanwhile, and
    the mark stays pending (here the store is unreachable for the take-back, as when the archiver's host went
    down with it). That transaction never wrote WAL, so after crash recovery PostgreSQL hands its id out again
    ("transaction ID ... is in the future" until then): the next committed transaction of the cluster gets it.
    Settling the mark asks txid_status(id), hears 'committed', and completes the removal: the manifest says
    'removed: done' while every row is still in the source (a changed day is then refused for ever as removed,
    DayRemovedError). Should: taken back (the source still has the day's rows), e.g. by checking the source's
    rows as well before completing, or by making the mark's transaction durable before the PUT (a WAL record of
    it: the LOCK, or a row written, then flushed), so its id is never handed out again."""
    from botocore.exceptions import EndpointConnectionError

    from archive_pipeline.core.lifecycle import remove_day, settle_pending_removal
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import start_postgres

    server = start_postgres({"autovacuum": "off"})
    try:
        with server.connect() as setup:
            setup.execute("CREATE SCHEMA hd")
            _events(setup, "hd", rows=300)
            setup.execute("CHECKPOINT")
        spec = TableSpec(name="hd.ev", day_column="created_at", start_date=DAY,
                         retention={"keep_days": 30, "action": "delete"})
        with server.connect() as archiving:
            result = archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
        state = {"crashed": False}

        def crash_at_the_pending_mark(params, **_) -> None:
            if not state["crashed"] and params["Key"].endswith(".manifest.json"):
                server.stop(keep_root=True)  # the removal's transaction is open, its id assigned
                state["crashed"] = True

        def store_gone_too(**_) -> None:
            if state["crashed"]:
                raise EndpointConnectionError(endpoint_url="http://store")

        events = s3_client.meta.events
        events.register("before-parameter-build.s3.PutObject", crash_at_the_pending_mark)
        events.register("before-call.s3.GetObject", store_gone_too)
        try:
            with server.connect() as removing, pytest.raises(ArchiveError):
                remove_day(removing, spec, DAY, store, proven=True)
        finally:
            events.unregister("before-parameter-build.s3.PutObject", crash_at_the_pending_mark)
            events.unregister("before-call.s3.GetObject", store_gone_too)
        assert state["crashed"] and load_manifest(store, result.key)["removed"]["state"] == "pending"
        server.restart()
        with server.connect() as later:
            for _ in range(5):  # the cluster's ordinary work after the restart: a few committed transactions
                later.execute("SELECT txid_current()")
            settled = settle_pending_removal(later, spec, DAY, store)
            rows = later.execute("SELECT count(*) FROM hd.ev WHERE created_at >= %s::timestamptz AND "
                                 "created_at < %s::timestamptz + interval '1 day'", (DAY, DAY)).fetchone()[0]
        assert rows == 300
        assert settled.outcome == "taken back", (settled.outcome, settled.why)
        assert "removed" not in load_manifest(store, result.key)
    finally:
        server.stop()
