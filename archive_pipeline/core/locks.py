"""One run at a time per table-day, whatever launched it: a PostgreSQL advisory lock.

Held by archiving, and by anything else that must not overlap it (re-checking and removing a day
from the source), so they exclude each other across Dagster runs, launchers, the CLI and machines.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import sys
from collections.abc import Iterator

import psycopg
from psycopg import sql

from archive_pipeline.core.errors import ArchiveError, is_cancellation


def lock_key(table: str, day: dt.date) -> tuple[int]:
    """The (table, day)'s advisory lock: one 64-bit key, a hash of the table's name and the day's number. A
    32-bit hash of the name alone (the lock's first key until 2026-12) met another table's among a few
    hundred tables often enough to lock unrelated runs out; 64 bits of name and day together do not."""
    digest = hashlib.blake2b(f"archive_pipeline:{table}\0{day.toordinal()}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big", signed=True),)


def _lock_row(key: tuple[int]) -> tuple[int, int]:
    """(classid, objid) of the key's row in pg_locks (whose objsubid is 1 for a 64-bit key)."""
    unsigned = key[0] & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def _legacy_key(table: str, day: dt.date) -> tuple[str, int]:
    """The lock versions before 2026-12 took: (hashtext of the name, the day's number), pg_locks' objsubid 2."""
    return f"archive_pipeline:{table}", day.toordinal()


def _held(table: str, day: dt.date, holder: str) -> ArchiveError:
    return ArchiveError(f"{table} {day} is being archived, removed or restored by another run right now{holder}",
                        table=table, day=day.isoformat(), retryable=True, cause="another run holds the table-day lock",
                        remedy="wait for that run to end, then run this again (a Dagster run with retries left tries "
                               "again by itself); one run per table-day at a time keeps the archive exact")


@contextlib.contextmanager
def table_day_lock(conn: psycopg.Connection, table: str, day: dt.date) -> Iterator[None]:
    """Hold the (table, day) session lock for the block, or fail at once (retryable) if another holds it.

    The lock before 2026-12 (:func:`_legacy_key`) is taken too, *shared*: versions before it take that key
    exclusively, so a run of such a version, still going while a deployment is upgraded, and a run of this one
    never work on one day at once, while runs of this version never wait for each other on it (its 32-bit hash
    of the name alone is shared by other tables'). A shared hold keeps an older run out however long this run
    lasts, whoever else shares it; telling an older holder from a run of this version by pg_locks could not
    (an older restore holds 64-bit keys of its own)."""
    key = lock_key(table, day)
    got = conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s::pg_catalog.int8)", key).fetchone()[0]
    if not got:
        raise _held(table, day, _holder(conn, key))
    legacy = _legacy_key(table, day)
    try:
        took_legacy = conn.execute("SELECT pg_catalog.pg_try_advisory_lock_shared(pg_catalog.hashtext(%s), %s)",
                                   legacy).fetchone()[0]
        if not took_legacy:
            holder = _holder(conn, legacy=legacy)
            raise _held(table, day, " (a run of an earlier archive_pipeline version, or of another table whose name "
                                    "that version's lock hashed alike" + (f"; {holder.strip(' ()')})" if holder
                                                                           else ")"))
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s::pg_catalog.int8)", key)
        raise
    try:
        yield
    finally:
        end_interrupted_query(conn, sys.exc_info()[1])
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s::pg_catalog.int8)", key)
                conn.execute("SELECT pg_catalog.pg_advisory_unlock_shared(pg_catalog.hashtext(%s), %s)", legacy)


def end_interrupted_query(conn: psycopg.Connection, exc: BaseException | None) -> None:
    """Cancel the server's query and close ``conn`` if ``exc``, a cancellation, left it in the middle of one.

    psycopg cancels the query itself only on KeyboardInterrupt and SystemExit. Interrupted by anything else (a
    terminated Dagster run raises DagsterExecutionInterruptedError in the step), the connection stays busy and
    the backend goes on: waiting for a lock up to lock_timeout, then reading the day for nobody, holding the
    table-day lock and its snapshot meanwhile. Closed, the session takes its locks with it."""
    if not is_cancellation(exc) or conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
        return
    with contextlib.suppress(Exception):
        conn.cancel_safe(timeout=5.0)
    conn.close()


def _holder(conn: psycopg.Connection, key: tuple[int] | None = None, legacy: tuple[str, int] | None = None) -> str:
    """Who holds the lock ``key`` (or the ``legacy`` one, of two 32-bit keys: objsubid 2), as far as this role may
    see (pg_stat_activity hides other roles' queries)."""
    if legacy is not None:  # (hashtext's int4 as pg_locks shows it: an unsigned oid)
        row = "((pg_catalog.hashtext(%s)::pg_catalog.int8 + 4294967296) %% 4294967296)::pg_catalog.oid", "%s", 2
        args: tuple = legacy
    else:
        row, args = ("%s::pg_catalog.oid", "%s", 1), _lock_row(key)
    try:
        found = conn.execute(
            # backend_start as text: psycopg parses a timestamptz only in DateStyle ISO (a role's German fails)
            "SELECT l.pid, a.application_name, "
            "pg_catalog.to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM pg_catalog.pg_locks l "
            "LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            f"AND l.classid = {row[0]} AND l.objid = {row[1]}::pg_catalog.oid AND l.objsubid = {row[2]} "
            "AND l.mode = 'ExclusiveLock' AND l.pid <> pg_catalog.pg_backend_pid() AND l.database = "
            "(SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) LIMIT 1",
            args).fetchone()
    except psycopg.Error:
        return ""
    if found is None:
        return ""
    pid, application, started = found
    return (f" (held by PostgreSQL backend {pid}" + (f", {application}" if application else "")
            + (f", connected since {started} UTC" if started else "") + ")")


def require_autocommit(conn: psycopg.Connection, what: str) -> None:
    """Raise ValueError unless ``conn`` is in autocommit mode. Outside it, the first statement opens a
    transaction that only the caller ends, and a transaction block of ours inside it is a savepoint: what
    we then record as committed (a removal's "done" mark, a restore's result) could still be rolled back,
    and the locks taken meanwhile (a detach's ACCESS EXCLUSIVE) would be held until the caller commits."""
    if not conn.autocommit:
        raise ValueError(f"{what} needs a connection in autocommit mode (psycopg.connect(..., autocommit=True)): "
                         "it commits its own transaction, and only then records it")
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:  # inside the caller's conn.transaction()
        raise ValueError(f"{what} must be called outside a transaction block (its connection idle, in autocommit "
                         "mode): it begins and commits its own transactions, which inside the caller's would be "
                         "savepoints its COMMIT does not end; nothing was done")


def require_lock_held(conn: psycopg.Connection, table: str, day: dt.date) -> None:
    """Fail (retryable) unless this session still holds the (table, day) lock: if its session died,
    or a pooler moved us to another one, another run may have started on the same day, and this
    one must not publish."""
    key = lock_key(table, day)
    try:
        held = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_catalog.pg_backend_pid() AND classid = %s::pg_catalog.oid AND objid = %s::pg_catalog.oid "
            "AND objsubid = 1)", _lock_row(key)).fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        grant = sql.SQL("GRANT SELECT ON pg_catalog.pg_locks TO {}").format(
            sql.Identifier(conn.info.user)).as_string(conn)
        raise ArchiveError(f"{table} {day}: role {conn.info.user!r} may not read pg_catalog.pg_locks, where a run "
                           "checks that it still holds its table-day lock before it publishes (without it, two runs "
                           "of one day could both publish); nothing was done", table=table, day=day.isoformat(),
                           retryable=False, cause="permission denied",
                           remedy=f"{grant} (as a superuser), or archive with a role that may read it") from None
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ArchiveError(f"{table} {day}: the connection holding the table-day lock was lost before the "
                           f"archive was committed ({type(exc).__name__}: {first}); nothing was published",
                           table=table, day=day.isoformat(), retryable=True, cause="the database connection was lost",
                           remedy="retried automatically (a Dagster run with retries left, or run the command again); "
                                  "if it recurs, check what ends the archiving sessions (idle timeouts, a pooler, "
                                  "pg_terminate_backend)") from None
    if not held:  # e.g. a pooler (transaction mode) handed the session lock to another client
        raise ArchiveError(f"{table} {day}: this session no longer holds the table-day lock (a connection pooler "
                           "in transaction mode between us and PostgreSQL?); nothing was published. Connect "
                           "directly or in session mode", table=table, day=day.isoformat(), retryable=True,
                           cause="the session lost its table-day lock",
                           remedy="connect to PostgreSQL directly, or through a pooler in session mode (a pooler in "
                                  "transaction mode hands session locks to other clients)")
