"""Setting our sessions' settings, the search path among them.

Every query the archiver, the fingerprint, restore and verification send runs with PostgreSQL's own
schema first on the path: its functions, operators and casts are what our SQL's names resolve to,
even when the role's path lists a schema of its own before ``pg_catalog`` (where a ``>=`` on dates
or a ``hashtextextended`` would otherwise shadow PostgreSQL's). The session's own path follows, so
what users' objects run inside our statements — a view's plpgsql function, a domain's CHECK, a
restore target's trigger — still finds its unqualified names, and names a session prints (``reg*``
values, ``format_type``) read as before. ``pg_temp`` comes last. The path is composed in the session
from its current value, idempotently (applying it twice gives the same path).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import weakref
from collections.abc import Callable, Iterator
from typing import NamedTuple

import psycopg
from psycopg import sql
from psycopg.adapt import AdaptersMap
from psycopg._preparing import PrepareManager  # (see _lend)
from psycopg.conninfo import conninfo_to_dict
from psycopg.raw_cursor import RawCursorMixin
from psycopg.rows import tuple_row

from archive_pipeline.core.errors import SessionSettingError, SourceError, classify, sql_name

CATALOG_FIRST = "pg_catalog, <the session's path>, pg_temp"  # the value that asks for the composed path

# Every session we open speaks UTF-8, whatever the database's encoding (the server converts): in a SQL_ASCII
# database a session left in SQL_ASCII gets every text value back as bytes from psycopg (a TimeZone read and
# set back became "b'Etc/UTC'", which failed every command there) and cannot send a name outside ASCII. Given
# at connect time, it is in the connection string that the run's other sessions are opened with.
CONNECT_PARAMETERS = {"client_encoding": "UTF8"}

# Set for the whole of every session we open, before it reads the catalog: with quote_all_identifiers on
# (a role set up for pg_dump), format_type printed "text" and regproc names quoted, so a table's types
# read in one session differed from another's (compare said "differs"), and ADBC misread every type.
# default_transaction_isolation too: a role set to serializable (with read only and deferrable, a reporting role)
# made every statement we run outside our own REPEATABLE READ transactions wait for a safe snapshot behind any
# serializable writer, and on a hot standby fail ("cannot use serializable mode in a hot standby").
# exit_on_error too: a role's "fail fast" default (ALTER ROLE ... SET exit_on_error = on; any user may set it) turns
# every ERROR into FATAL, and our SQL expects to catch some inside a savepoint (a domain's NOT NULL probe, a value
# failure's column probe, a sensor's per-day probe): the backend exited there, and a healthy day failed at every
# retry as "the database connection was lost". (A connection a Python caller passes in keeps its own value outside
# the archive's snapshot, which pins it too: source.SNAPSHOT_SETTINGS.)
# And the settings our SQL's text and psycopg's reading of our results depend on (PARSING_PINNED), for the whole
# session from its start, before any statement built as text runs: a role's standard_conforming_strings off made
# the backslash of a regular expression in our SQL an escape (the fingerprint of an array of an xml-array domain
# failed, and compare, deep verification, restore and removal called an intact archive unreadable); its DateStyle
# 'SQL, DMY' or IntervalStyle postgres_verbose printed times and intervals psycopg cannot read (a paused standby's
# replay time failed compare and the source_unchanged check with a raw NotImplementedError); extra_float_digits
# below 1 rounded the floats we read. DateStyle is pinned to ISO output only: the role's day order for input (DMY,
# MDY) is kept, for users' functions that run inside our statements. The archive's snapshot and the fingerprint set
# their own output settings on top (source.SNAPSHOT_SETTINGS, fingerprint.CANONICAL_SETTINGS). TimeZone is not
# pinned: every time our SQL writes carries its offset, psycopg reads a time in any zone, and what a day is in a
# zone is decided under the table's own zone (discovery.pinned_settings); search_path is composed per block of our
# statements (CATALOG_FIRST), the role's own path kept behind pg_catalog.
PARSING_PINNED = {"standard_conforming_strings": "on", "DateStyle": "ISO", "IntervalStyle": "postgres",
                  "extra_float_digits": "1", "bytea_output": "hex"}
SESSION_PINNED = {"quote_all_identifiers": "off", "default_transaction_isolation": "read committed",
                  "exit_on_error": "off", **PARSING_PINNED}

# Those of PARSING_PINNED the server reports to the client (GUC_REPORT): a caller's connection is checked for
# them without a round trip (see _to_ours).
_REPORTED = ("standard_conforming_strings", "DateStyle", "IntervalStyle")


def holds_pinned(name: str, value: str) -> bool:
    """Whether ``value`` of the :data:`SESSION_PINNED` setting ``name`` is as pinned: DateStyle by its output
    style alone (``ISO, DMY`` is pinned already; see :data:`PARSING_PINNED`); extra_float_digits at any of 1 to 3
    (its highest), each of which prints a float's shortest exact text (PostgreSQL 12+; only below 1 is it rounded):
    taken for unpinned, a role's harmless ``extra_float_digits = 3`` (a driver's or pg_dump's habit) made every
    session we open send libpq ``options``, which PgBouncer refuses; the others exactly."""
    if name.lower() == "datestyle":
        return value.split(",")[0].strip().upper() == SESSION_PINNED["DateStyle"]
    if name.lower() == "extra_float_digits":
        return value.strip() in ("1", "2", "3")
    return value == SESSION_PINNED[name]


def unpinned_defaults(conn: psycopg.Connection) -> dict[str, str]:
    """The :data:`SESSION_PINNED` settings a new session logged in as ``conn`` was would start with otherwise
    (``conn``'s own start values, ``reset_val``: its role's, database's and connection string's), with the
    values to pin them to. Usually none: only then do the sessions we open send libpq ``options`` (a pooler
    such as PgBouncer refuses that startup parameter unless told to ignore it)."""
    try:
        with conn.transaction():  # (a savepoint inside the caller's snapshot: a refusal must not abort it)
            rows = conn.execute("SELECT name, reset_val FROM pg_catalog.pg_settings WHERE name = ANY(%s)",
                                (list(SESSION_PINNED),)).fetchall()
    except psycopg.errors.InsufficientPrivilege:  # a DBA revoked pg_settings: pin them all, whatever they are
        return dict(SESSION_PINNED)
    return {name: SESSION_PINNED[name] for name, value in rows if not holds_pinned(name, value)}


def pinned_options(dsn: str, settings: dict[str, str]) -> str:
    """libpq ``options`` for a session opened with ``dsn`` that set ``settings`` (see :func:`unpinned_defaults`)
    from its start (before the first statement, which under a serializable default would already wait or fail),
    after the DSN's own options (or $PGOPTIONS, which an explicit ``options`` would otherwise replace)."""
    own = (conninfo_to_dict(dsn).get("options") or os.environ.get("PGOPTIONS", "")).strip()
    pinned = " ".join(f"-c {name}={value.replace(' ', chr(92) + ' ')}" for name, value in settings.items())
    return own if not pinned or own.endswith(pinned) else f"{own} {pinned}".strip()


def set_session(conn: psycopg.Connection, settings: dict[str, object]) -> None:
    """Set ``settings`` for the session with SET, which takes no snapshot (``set_config`` in a SELECT does: under a
    role's serializable deferrable default it waited behind any serializable writer, and on a standby failed)."""
    if settings:
        conn.execute(sql.SQL("; ").join(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(str(value)))
                                        for name, value in settings.items()))


# session_replication_role: a role's 'replica' (what logical-replication and bulk-load roles are given, and it
# lingers) has PostgreSQL skip every user trigger and every foreign key's check in the session: a restore into the
# original table committed rows referencing no parent row, and a removal's DELETE never ran the audit trigger the
# table allows. Only a superuser (or a role granted SET on it, PostgreSQL 15 and later) may set it, so it is pinned
# where the session may (a superuser's: session_pinned; any other's: writing_as_origin), and what writes refuses
# a session stuck in another value (writing_as_origin); what only reads is not affected by it.
ORIGIN = {"session_replication_role": "origin"}


def session_pinned(conn: psycopg.Connection) -> dict[str, str]:
    """:data:`SESSION_PINNED`, and no idle_session_timeout where the server has one (14 and later): a role's
    ``idle_session_timeout`` (set to reap idle connections) ended the session that holds the table-day lock
    while the day's parts were still uploading, and every retry of the day failed the same way. A superuser's
    session also gets :data:`ORIGIN` (known without a round trip: the server reports ``is_superuser``)."""
    return {**SESSION_PINNED, "jit": "off",  # (see source.SNAPSHOT_SETTINGS: catalog walks paid ~24 ms to compile)
            **({"idle_session_timeout": "0"} if conn.info.server_version >= 140000 else {}),
            **(ORIGIN if conn.info.parameter_status("is_superuser") == "on" else {})}


@contextlib.contextmanager
def writing_as_origin(conn: psycopg.Connection, table: str, day: str, doing: str) -> Iterator[None]:
    """Run the block, which writes to the user's tables (a restore, a removal), with ``conn`` in
    session_replication_role = origin (see :data:`ORIGIN`), the value it had put back afterwards; where the
    session has another value that its role may not change, refuse up front, before anything is written, with a
    :class:`SessionSettingError` naming ``table``, ``day`` and the remedy. ``conn`` is idle in autocommit mode
    (both writers require it); SHOW and SET take no snapshot (see :func:`set_session`)."""
    value = conn.execute("SHOW session_replication_role").fetchone()[0]
    if value == ORIGIN["session_replication_role"]:
        yield
        return
    try:
        with conn.transaction():  # (a refusal rolls back only this)
            set_session(conn, ORIGIN)
    except psycopg.errors.InsufficientPrivilege:
        role = sql_name(conn.info.user, qualified=False)
        raise SessionSettingError(
            f"{doing} {table} for {day} is refused: the session runs with session_replication_role = {value} (set "
            "for the role or the database by a superuser), under which PostgreSQL skips every trigger and every "
            "foreign key's check of the rows written, and the role may not set it back to origin (only a superuser "
            "may); nothing was written", table=table, day=day, retryable=False,
            cause=f"session_replication_role is {value} for the role {role}, and the role may not change it",
            remedy=f"as a superuser: ALTER ROLE {role} RESET session_replication_role (and ALTER DATABASE <database> "
                   "RESET session_replication_role, if set there); or GRANT SET ON PARAMETER session_replication_role "
                   f"TO {role} (PostgreSQL 15 and later)") from None
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            set_session(conn, {"session_replication_role": value})


def watch_client(conn: psycopg.Connection) -> None:
    """Have the server check every second, during a long statement, that this client is still there (PostgreSQL
    14 and later; elsewhere, or where the platform has no such check, nothing). A process killed in the middle of
    a statement that sends nothing back (a fingerprint, a restore's check, a removal's re-check) otherwise left
    its backend running to the statement's end, holding the table-day lock, and every run of the day was refused
    as "another run" meanwhile. Asked alone: a refusal must not undo the session's other settings."""
    if conn.autocommit:
        watch_client_through(conn.execute, conn.info.server_version)


def watch_client_through(execute: Callable[[str], object], server_version: int) -> None:
    """:func:`watch_client` for a session reached through ``execute`` (one statement, outside any transaction: a
    refusal must not abort one), on a server of ``server_version``: the Parquet readers' ADBC sessions too, whose
    statements of the day (a stream's COPY waiting for its range's first row of the day) send nothing for as long
    as the ones of psycopg's sessions; left unwatched, a killed archiver's stream held the snapshot and the day's
    locks to its statement's end."""
    if server_version < 140000:
        return
    with contextlib.suppress(Exception):  # psycopg's error or ADBC's: this platform or server has no such check
        execute("SET client_connection_check_interval = 1000")


_CATALOG_FIRST_SQL = sql.SQL(
    "pg_catalog.concat_ws(', ', 'pg_catalog', NULLIF(pg_catalog.regexp_replace("
    "pg_catalog.current_setting('search_path'), '^pg_catalog, |, pg_temp$', '', 'g'), ''), 'pg_temp')")


def set_config(name: str, value: object, local: bool) -> sql.Composed:
    """``pg_catalog.set_config(name, value, local)``, the path composed in the session for :data:`CATALOG_FIRST`."""
    if name == "search_path" and value == CATALOG_FIRST:
        return sql.SQL("pg_catalog.set_config('search_path', {}, {})").format(_CATALOG_FIRST_SQL, sql.Literal(local))
    return sql.SQL("pg_catalog.set_config({}, {}, {})").format(sql.Literal(name), sql.Literal(str(value)),
                                                                sql.Literal(local))


def apply_settings(execute: Callable[[sql.Composable], object], settings: dict[str, object], local: bool = True) -> None:
    """Apply ``settings`` in one statement through ``execute`` (a psycopg connection's or cursor's)."""
    if settings:
        execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(set_config(n, v, local) for n, v in settings.items())))


def resolved(conn: psycopg.Connection, settings: dict[str, object]) -> dict[str, object]:
    """``settings`` with :data:`CATALOG_FIRST` composed once, in ``conn``'s session: the other sessions of
    the same work (parallel readers, the fingerprint's, ADBC's) then use ``conn``'s path, not their own
    default (a caller may have SET it on ``conn``)."""
    if settings.get("search_path") != CATALOG_FIRST:
        return settings
    path = conn.execute(sql.SQL("SELECT {}").format(_CATALOG_FIRST_SQL)).fetchone()[0]
    return {**settings, "search_path": path}


class SwitchedRole(NamedTuple):
    """The role a caller's session acts as (``current_user``) and the one it logged in as (``session_user``)."""

    role: str
    login: str


def switched_role(conn: psycopg.Connection) -> SwitchedRole | None:
    """The role ``conn`` acts as where it is not the one it logged in as (``SET ROLE``, or the login role's
    ``ALTER ROLE ... SET role``), else None. A session opened beside ``conn`` (a parallel stream, the fingerprint
    alongside, Parquet's reader) logs in afresh from the connection string, as the login role, and must switch as
    ``conn`` did (:func:`act_as`): with the login role's privileges, which a least-privilege setup leaves empty (a
    NOINHERIT login role that reads only after SET ROLE), raising parallel_streams or choosing Parquet lost the
    table that one stream of CSV read."""
    role, login = conn.execute("SELECT CURRENT_USER::text, SESSION_USER::text").fetchone()
    return SwitchedRole(role, login) if role != login else None


def act_as(execute: Callable[[sql.Composable], object], switched: SwitchedRole | None) -> None:
    """Have a session opened beside the caller's act as the caller's session does (see :func:`switched_role`):
    ``SET ROLE`` through ``execute`` (one statement: a psycopg connection's, or an ADBC cursor's), first thing,
    before it takes the day's locks or reads a row. Where the login role may not switch to that role (its
    membership revoked since the caller switched), refused, naming both roles: read as the login role, the day
    would fail on privileges that role need not hold, with a GRANT to the wrong role as its remedy."""
    if switched is None:
        return
    try:
        execute(sql.SQL("SET ROLE {}").format(sql.Identifier(switched.role)))
    except Exception as exc:
        if classify(exc).cause != "permission denied":
            raise
        role, login = (sql_name(name, qualified=False) for name in switched)
        raise SourceError(
            f"the caller's session acts as role {switched.role!r} (SET ROLE), and a session opened beside it (a "
            f"parallel stream, the fingerprint alongside, Parquet's reader), which logs in as {switched.login!r}, "
            f"may not SET ROLE to it: it would read the day with the privileges of another role", retryable=False,
            cause=f"role {switched.login!r} may not SET ROLE {switched.role!r}", every_day=True,
            remedy=f"GRANT {role} TO {login} (as a superuser or a role with ADMIN OPTION on {role}), or archive "
                   f"with a connection that logs in as {role}") from None


def _to_ours(conn: object) -> dict[str, str] | None:
    """Switch a caller's session that does not speak UTF-8 to it, one whose transactions are serializable
    by default to read committed, and one whose strings, DateStyle or IntervalStyle our SQL or psycopg's reading
    of our results cannot work under to ours (see :data:`SESSION_PINNED`); the settings to give back, or None.
    (SHOW and SET take no snapshot; a transaction the caller has open keeps its own isolation.)"""
    if not isinstance(conn, psycopg.Connection) or conn.closed:
        return None
    before = {}
    encoding = conn.info.parameter_status("client_encoding")
    if encoding not in (None, "UTF8"):
        before["client_encoding"] = encoding
    for name in _REPORTED:  # (reported by the server: no round trip)
        value = conn.info.parameter_status(name)
        if value is not None and not holds_pinned(name, value):
            before[name] = value
    if _serializable_may_hurt(conn):
        try:
            isolation = conn.execute("SHOW default_transaction_isolation").fetchone()[0]
        except psycopg.OperationalError:  # a session lost meanwhile: the call's own handling says so, typed
            return None
        if isolation == "serializable":
            before["default_transaction_isolation"] = isolation
    if not before:
        return None
    # (session-wide even inside a transaction, unless it rolls back)
    ours = {"client_encoding": "UTF8", **SESSION_PINNED}
    set_session(conn, {name: ours[name] for name in before})
    return before


def _serializable_may_hurt(conn: psycopg.Connection) -> bool:
    """Where a serializable default hurts our statements outside our own transactions: a hot standby (refused
    there) or a read-only session (with deferrable, each waits for a safe snapshot). Both are reported by the
    server (14 and later), so an ordinary session costs no round trip, and a lost one meets its first query
    in the call's own error handling."""
    return "on" in (conn.info.parameter_status("in_hot_standby"), conn.info.parameter_status(
        "default_transaction_read_only"))


def _give_back(conn: psycopg.Connection, settings: dict[str, str]) -> None:
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
        set_session(conn, settings)


# The callers' connections a core entry point is running on now (see :func:`callers_connection`): an entry point
# that another one calls on the same connection (deep_verify inside remove_day) finds it set up already.
_ENTERED: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


def _our_cursor_class(theirs: type, default: type) -> type:
    """``theirs`` where it takes our ``%s`` placeholders (psycopg's Cursor, a ClientCursor, a subclass), else
    ``default``: a RawCursor sends them to the server as written, which calls them a syntax error."""
    if isinstance(theirs, type) and issubclass(theirs, default) and not issubclass(theirs, RawCursorMixin):
        return theirs
    return default


def _rolled_back_after(conn: psycopg.Connection) -> contextlib.AbstractContextManager:
    """A block that leaves nothing in the caller's transaction, where the call runs inside one (or would open
    one: a connection not in autocommit mode): a savepoint (a transaction of its own on an idle connection)
    rolled back at the end. What the core does there is transaction-local and would otherwise outlive the call
    to the caller's COMMIT: the fingerprint's SET LOCALs (TimeZone UTC, DateStyle ISO, the search path: the
    caller's next insert of a local time stored it shifted) and a proof's temporary table (a copy of the
    day's rows, left in a pooled session). The calls that write (archive, restore, removal) refuse such a
    connection up front (:func:`archive_pipeline.core.locks.require_autocommit`); the others only read, and
    their verdict is what the rollback keeps. (An aborted transaction is refused before: :func:`refuse_unusable`.)"""
    status = conn.info.transaction_status
    if conn.closed or (conn.autocommit and status == psycopg.pq.TransactionStatus.IDLE):
        return contextlib.nullcontext()
    return conn.transaction(force_rollback=True)


def refuse_unusable(conn: psycopg.Connection, what: str) -> None:
    """Raise ValueError, before anything is sent, where the caller's ``conn`` is in a state no statement of ours
    can run in: pipeline mode (our statements would be queued behind the caller's in one implicit transaction,
    where our ``SET TRANSACTION`` fails and COPY is not supported; the day failed as a database error with no
    cause the caller could find, and the caller's pipeline was left aborted), or a transaction an earlier error
    of the caller's aborted (every statement fails until it is rolled back: compare and list called an intact
    day "unreadable", a false verdict on the archive), or a command of the caller's still running on it (a COPY
    block: the call waited for the connection for ever). A lost session is not refused here: the call's own
    handling reports it, typed and retryable."""
    if conn.closed:
        return
    if conn.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
        raise ValueError(f"{what} is refused: its connection is in pipeline mode (inside the caller's "
                         "conn.pipeline() block), where its statements would be batched with the caller's and "
                         "COPY is not supported; call it outside the conn.pipeline() block; nothing was sent")
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:  # (a COPY block, a stream() open)
        raise ValueError(f"{what} is refused: its connection is running a command of the caller's (a cur.copy() "
                         "block or a cur.stream() not finished, or another thread's query), which holds it until it "
                         "ends, so the call would wait for ever; finish that command first and call again; nothing "
                         "was sent")
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        raise ValueError(f"{what} is refused: its connection's transaction was aborted by an earlier error of the "
                         "caller's (every statement fails until the transaction ends, which says nothing about the "
                         "archive); roll it back first (conn.rollback()) and call again; nothing was sent")


class _Lent(NamedTuple):
    """What :func:`callers_connection` swaps on a caller's connection for the call, to give back afterwards."""

    row_factory: object
    cursor_factory: type
    server_cursor_factory: type
    adapters: AdaptersMap | None
    prepared: PrepareManager


def _lend(conn: psycopg.Connection) -> _Lent:
    """Set ``conn`` up as the core expects for the call (see :func:`callers_connection`); what was there before.

    The adapters map and the prepared-statement cache have no public setter: psycopg (3.3, its
    ``_connection_base.BaseConnection``) keeps them in ``_adapters`` (None until first asked for, then a copy of
    ``psycopg.adapters``; every cursor copies it when created) and ``_prepared`` (a ``_preparing.PrepareManager``),
    which are swapped whole and put back as they were. Ours are the default adapters and a cache that prepares
    nothing (``prepare_threshold`` None) and is empty: psycopg empties its cache with ``DEALLOCATE ALL``, which
    drops every prepared statement of the session, the caller's own (``PREPARE``) with psycopg's, when it
    sees a DROP, an ALTER or a ROLLBACK (``PrepareManager._should_discard`` and ``clear``, which a transaction's
    rollback calls) while the cache holds names; an empty one sends nothing."""
    lent = _Lent(conn.row_factory, conn.cursor_factory, conn.server_cursor_factory, conn._adapters, conn._prepared)
    conn.row_factory = tuple_row
    conn.cursor_factory = _our_cursor_class(lent.cursor_factory, psycopg.Cursor)
    conn.server_cursor_factory = _our_cursor_class(lent.server_cursor_factory, psycopg.ServerCursor)
    conn._adapters = AdaptersMap(psycopg.adapters)
    conn._prepared = PrepareManager()
    conn._prepared.prepare_threshold = None
    return lent


def _give_back_lent(conn: psycopg.Connection, lent: _Lent) -> None:
    conn.row_factory, conn.cursor_factory, conn.server_cursor_factory = lent[:3]
    conn._adapters, conn._prepared = lent.adapters, lent.prepared


@contextlib.contextmanager
def callers_connection(conn: object, what: str = "the call", writes: bool = False) -> Iterator[None]:
    """Run a core entry point's block (``what``, for a refusal's message) on a caller's connection ``conn`` as
    on one of our own, and give the caller everything back as it was afterwards (on error too):

    - refused up front where no statement of ours can run (see :func:`refuse_unusable`);
    - rows as tuples and cursors that take ``%s``: the core reads its rows by position and writes its
      parameters as ``%s``, and a caller's ``row_factory=dict_row`` (``KeyError: 0``), ``namedtuple_row``
      (our unnamed ``current_setting`` columns) or ``cursor_factory=psycopg.RawCursor`` (``$1`` placeholders)
      failed every call, or had compare and list call an intact archive "unreadable";
    - psycopg's default adapters: a caller's dumper of str as ``text`` made an oid parameter read as a table
      name (a healthy day "does not exist"), a loader of timestamptz as str failed the manifest's snapshot time;
    - the caller's prepared statements kept (see :func:`_lend`);
    - client_encoding UTF8, read committed by default, and standard strings, DateStyle ISO and IntervalStyle
      postgres (see :func:`_to_ours`);
    - nothing left in the caller's transaction (see :func:`_rolled_back_after`), but where the entry point
      ``writes`` into it (``restore.load_into``: its rows are the caller's to commit).

    Anything but a psycopg connection (None, a factory of connections) passes through. An entry point called
    by another on the same connection finds it done already, and leaves it to the outer one to give back."""
    if not isinstance(conn, psycopg.Connection) or conn in _ENTERED:
        yield
        return
    refuse_unusable(conn, what)
    lent = _lend(conn)
    _ENTERED.add(conn)
    try:
        with contextlib.ExitStack() as undo:
            with contextlib.suppress(psycopg.OperationalError):  # a lost session: the call's own handling says so
                undo.enter_context(contextlib.nullcontext() if writes else _rolled_back_after(conn))
            before = _to_ours(conn)
            try:
                yield
            finally:
                if before is not None:
                    _give_back(conn, before)
    finally:
        _ENTERED.discard(conn)
        _give_back_lent(conn, lent)


def _call_named(name: str, arguments: dict[str, object]) -> str:
    """``name`` with the table and day(s) of its ``arguments`` where it has them, for a refusal's message."""
    spec, manifest = arguments.get("spec"), arguments.get("manifest")
    table = getattr(spec, "name", None) or (manifest.get("table") if isinstance(manifest, dict) else None)
    day = arguments.get("day", arguments.get("first"))
    days = arguments.get("days")
    if day is None and isinstance(manifest, dict):
        day = manifest.get("day")
    named = f"{name} of {table}" if table else name
    if day is not None:
        return f"{named} for {getattr(day, 'key', day)}"
    if isinstance(days, (list, tuple)) and days:
        return f"{named} for {', '.join(str(getattr(d, 'key', d)) for d in days)}"
    return named


def speaks_utf8(*names: str, writes: bool = False) -> Callable:
    """Run the decorated core entry point with each of its connections (the parameters ``names``, ``conn`` by
    default) set up as :func:`callers_connection` says, and given back afterwards. Every public function that
    takes a caller's connection has it: the boundary where a caller's connection becomes the core's. (Named for
    its first duty: a caller's plain ``psycopg.connect`` to a SQL_ASCII database starts in SQL_ASCII, where
    psycopg returns every text value as bytes: a setting read and put back became "b'Etc/UTC'", a catalog name
    failed ``normalize()``, and compare, verification, restore and removal failed on such a connection with raw
    errors.) ``writes``: the function writes into the caller's transaction, which keeps what it wrote."""
    wanted = names or ("conn",)

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            bound = signature.bind_partial(*args, **kwargs)
            what = _call_named(function.__name__, bound.arguments)
            with contextlib.ExitStack() as stack:
                for name in wanted:
                    stack.enter_context(callers_connection(bound.arguments.get(name), what, writes))
                return function(*args, **kwargs)

        return wrapper

    return decorate


def without_user_triggers(conn: psycopg.Connection, table: sql.Composable) -> None:
    """Disable the triggers a user's event trigger may have put on a table we just created for ourselves (a
    proof's or a restore's temporary table): an ``updated_at := now()`` BEFORE INSERT trigger on every new
    table changed the archived rows as they loaded, and an intact archive "differed"."""
    if conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE tgrelid = %s::pg_catalog.regclass "
                    "AND NOT tgisinternal)", (table.as_string(conn),)).fetchone()[0]:
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(table))
