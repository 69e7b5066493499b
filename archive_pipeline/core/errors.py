"""Errors of the archiver, each saying whether trying the whole partition again can help, and what to do.

Dagster's RetryPolicy retries what is transient (timeouts, dropped connections, serialization
failures and recovery conflicts, S3 throttling and 5xx); what needs a human (a wrong password, a
missing table, a permission, a value the format cannot hold, bad configuration, a full disk) fails
at once so nobody waits through the backoff.

One function, :func:`classify`, decides by *cause*, not by driver: psycopg, adbc-driver-postgresql
(``adbc_driver_manager`` errors and the bare ``OSError`` its Arrow stream raises), libpq connect
failures that carry no SQLSTATE, botocore and the operating system all end up in the same table of
causes. :func:`wrap` turns any exception into an :class:`ArchiveError` that names table, day,
cause and remedy, with secrets scrubbed.
"""

from __future__ import annotations


import errno
import functools
import json
import re
import shlex
import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import quote, quote_plus, unquote

# --------------------------------------------------------------------------------------------------
# Secrets


# scheme://user:password@ and scheme://:password@ (user optional), whatever the password holds ('/', '?', '#' and
# '@' too: AWS's secret keys hold '/', and a password written unencoded is quoted so by libpq and botocore) to the
# last @ before the host; also after one slash: a DSN taken for a path (a config file's) is printed with its // folded
_URI_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*:/{1,2}[^:/@\s]*:)\S*@")
# password=... as a URI query parameter (ends at & or #)
_QUERY_PASSWORD = re.compile(r"([?&](?:(?:ssl)?password|oauth_client_secret)=)[^&#\s'\"]*", re.IGNORECASE)
# password=value / password = 'quoted \' value' in libpq key=value form (also PGPASSWORD=, sslpassword=)
_KV_PASSWORD = re.compile(r"(\b(?:(?:pg|ssl)?password|oauth_client_secret)\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)",
                          re.IGNORECASE)  # (libpq 18 takes an OAuth client's secret in the string too)


# The environment's secrets, hidden wherever a message quotes them (a session token ending in a newline, mounted
# from a file, was quoted whole by Python's HTTP client refusing the header): the store's client reads them itself
ENV_SECRETS = ("ARCHIVE_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` without the given secrets, the environment's S3 secrets or those the process's store clients sign
    with (see :func:`hide_signing_secrets`), in any form a message quotes them (see :func:`_forms`), or any password
    written in a URI or as ``password=...``, safe for logs, Dagster event logs and metadata."""
    import os

    # (only values long enough to be real keys or tokens: AWS's are 40 characters and more; a test stack's
    # "test" or "testing" is in table names and our own words, and hiding it there would mangle and disclose it)
    known = [v for v in (*(os.environ.get(name) for name in ENV_SECRETS), *_signing_secrets())
             if isinstance(v, str) and len(v.strip()) >= _ENV_SECRET_MIN]
    for secret in dict.fromkeys([*secrets, *known]):
        if secret and secret.strip():
            for form in _forms(secret):
                text = _hide(text, form)
    text = _URI_CREDENTIALS.sub(r"\1***@", text)
    text = _QUERY_PASSWORD.sub(r"\1***", text)
    return _KV_PASSWORD.sub(r"\1***", text)


@functools.lru_cache(maxsize=256)
def _forms(secret: str) -> tuple[str, ...]:
    """Every way a message may quote ``secret``, longest first: as it is, without the white space around it, each
    of its lines (a token wrapped onto two lines in the file it was mounted from), percent-encoded, and as Python's
    repr of it or of its UTF-8 bytes and JSON write it: http.client refusing a header holding a newline quotes
    ``b'...\\n...'``, the newline as a backslash and an n, where the secret as written is nowhere."""
    pieces = {secret, secret.strip(), *(line.strip() for line in secret.splitlines())}
    forms: set[str] = set()
    for piece in (p for p in pieces if p):
        encoded = piece.encode("utf-8", "surrogateescape")  # (a byte no UTF-8 holds, read from the environment)
        forms |= {piece, quote(encoded, safe=""), quote_plus(encoded, safe=""), quote(encoded), repr(piece)[1:-1],
                  repr(encoded)[2:-1], json.dumps(piece)[1:-1]}
    return tuple(sorted(forms, key=len, reverse=True))


# The credentials objects the process's S3 clients sign with (see hide_signing_secrets), weakly: a client's go with it
_SIGNING: weakref.WeakSet[object] = weakref.WeakSet()
_SIGNING_LOCK = threading.Lock()


def hide_signing_secrets(client: object) -> None:
    """Hide the secret key and session token ``client`` signs with in every message :func:`redact` cleans from now
    on, whatever supplied them (a resource's setting from a variable of the team's own naming, a profile, a role):
    the store's errors quote botocore's, which quote a token http.client refused whole, and the environment's
    variables (ENV_SECRETS) are only where the command line's come from. The credentials are read when a message is
    cleaned, as the client holds them then (refreshed ones as last fetched: reading never fetches)."""
    credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if credentials is not None:
        with _SIGNING_LOCK:
            _SIGNING.add(credentials)


def _signing_secrets() -> list[object]:
    """The secret keys and session tokens of :data:`_SIGNING`, as each client holds them now."""
    with _SIGNING_LOCK:
        held = list(_SIGNING)
    # botocore's refreshable credentials keep their last fetch frozen (their properties would fetch again); plain
    # ones hold theirs as attributes
    current = [getattr(credentials, "_frozen_credentials", credentials) for credentials in held]
    return [getattr(c, name, None) for c in current for name in ("secret_key", "token")]


_SHORT_SECRET = 4  # a secret shorter than this is hidden only where it stands alone (see _hide)
_ENV_SECRET_MIN = 16  # an environment's or a client's S3 secret shorter than this is not hidden in every message (see redact)


def _hide(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced by ``***``. A secret of a few characters (a demo role's "pw") is
    in countless words: replacing it inside them mangles every message and hides nothing a reader could
    not guess, so it is replaced only where no letter or digit adjoins it (as in a DSN or after "password=")."""
    if len(secret) >= _SHORT_SECRET:
        return text.replace(secret, "***")
    return re.sub(rf"(?<![^\W_]){re.escape(secret)}(?![^\W_])", "***", text)


# --------------------------------------------------------------------------------------------------
# Error types


class ArchiveError(Exception):
    """Base error; ``table`` and ``day`` say which partition it concerns, ``remedy`` what to do.

    ``str(error)`` is the message followed by ``; to fix: <remedy>`` when a remedy is known, so the
    advice reaches the Dagster UI and logs with no extra plumbing.
    """

    OVERWRITES = False  # a class whose every error only archiving the day again with overwrite ends
    EVERY_DAY: bool | None = None  # a class whose every error refuses every day alike (see every_day)

    def __init__(self, message: str, *, table: str | None = None, day: str | None = None,
                 retryable: bool = False, remedy: str | None = None, cause: str | None = None,
                 needs_overwrite: bool = False, every_day: bool | None = None,
                 problems: Iterable[str] = ()) -> None:
        # needs_overwrite: only archiving the day again with overwrite ends it (a day changed since it was archived,
        # an archive of another format or database at its key): what the command line and Dagster advise, told by
        # the error itself rather than by its words (a strict table's refusal also says "with overwrite", and
        # overwrite alone does not end it)
        self.needs_overwrite = needs_overwrite or self.OVERWRITES
        # every_day: whether the cause refuses every day of a range alike (the target's, the role's, the
        # configuration's: True) or is the day's own (its archive's columns or bytes: False), told where it was
        # raised, which knows what refused; None: not told, and the cause's classification decides
        # (CONFIGURATION_CAUSES). The same SQLSTATE can be either: a target lacking a column every day has, or a
        # column only one day's archive names.
        self.every_day = self.EVERY_DAY if every_day is None else every_day
        # problems: what a check found, each as it said it, where the message embeds them (a removal refused for a
        # day its proof failed): they quote the database (a differing row, PostgreSQL's words), so a reader that
        # words the message for itself (the command line, see cli._quoting) keeps them exactly as they are, and
        # Dagster records them as the failed proof they are
        self.problems = list(problems)
        self.message = message
        self.table = table
        self.day = day
        self.retryable = retryable
        self.remedy = remedy
        self.cause = cause
        super().__init__(message)

    def __str__(self) -> str:
        if self.remedy and "to fix:" not in self.message:
            return f"{self.message}; to fix: {self.remedy}"
        return self.message


_VERDICTS = ("; transient, retried", "; not retried: a retry cannot fix this")


def without_verdict(exc: BaseException) -> str:
    """What failed and why, without the message's closing word on retrying: for a failure that is logged and passed
    over (a cleanup step, a listing that only saves requests), which nothing retries whatever its cause, in a
    Dagster run or a command alike."""
    said = exc.message if isinstance(exc, ArchiveError) else str(exc)
    for verdict in _VERDICTS:
        said = said.removesuffix(verdict)
    return said


class SourceError(ArchiveError):
    """Something about PostgreSQL: the connection, the table, its privileges, its data."""


class SessionSettingError(SourceError):
    """A setting the role's session starts with (the DBA's ``ALTER ROLE/DATABASE ... SET``) under which writing
    would be wrong and that the role may not change: refused before anything is written. The role's, so every
    day alike, and permanent until the setting is changed."""

    EVERY_DAY = True


class UnsupportedTypeError(ArchiveError):
    """A column's type cannot be represented faithfully in the chosen format."""


class UploadError(ArchiveError):
    """The object store refused or corrupted an upload; the multipart upload was aborted."""


# --------------------------------------------------------------------------------------------------
# Classification


@dataclass(frozen=True)
class Classification:
    """What went wrong and whether running the whole partition again may succeed.

    ``cause`` is a short phrase for people ("wrong password", "statement_timeout"); ``remedy`` says
    what to change (or that it is retried automatically and what to look at if it persists);
    ``where`` is ``"source"``, ``"store"``, ``"local"`` or ``"unknown"`` and picks the error type.
    """

    retryable: bool
    cause: str
    remedy: str
    where: str = "unknown"
    sqlstate: str | None = None


# The opening of every retryable remedy: the sensor says its own next tick in its place (sensors._after_retry)
RETRIED = "retried automatically"
_DSN = "ARCHIVE_PG_DSN"


_SERVER_MESSAGE = re.compile(r"\b(?:ERROR|FATAL|PANIC):\s+([^\n]*)")


def _src(retryable: bool, cause: str, remedy: str) -> Classification:
    return Classification(retryable, cause, remedy, "source")


def _store(retryable: bool, cause: str, remedy: str) -> Classification:
    return Classification(retryable, cause, remedy, "store")


_CONNECTION_LOST = _src(True, "the database connection was lost (server closed it, network dropped or backend "
                        "terminated)", f"{RETRIED}; if it persists, check the server log for crashes or restarts "
                        "and the network between Dagster and PostgreSQL")
_CONNECT_FAILED = _src(True, "the database server could not be reached (refused, unreachable or timed out)",
                       f"{RETRIED}; if it persists, check that PostgreSQL runs and listens on the host and port in "
                       f"{_DSN} (listen_addresses, firewall)")
_TERMINATED = _src(True, "the session's backend was terminated (pg_terminate_backend, or the server shutting down)",
                   f"{RETRIED}; if it recurs, look for a job that kills long queries or for server restarts")
_STARTING = _src(True, "the database server is starting up, shutting down or in recovery",
                 f"{RETRIED} once the server accepts connections")
_SESSIONS = ("a day's archive uses its own session, one more per stream when it reads Parquet or several "
             "streams, and one for the fingerprint when there is room; it reads with fewer streams rather than "
             "exceed the limits, but needs one session, two for Parquet")
_MAX_CONNECTIONS = _src(True, "the server has no free connection slots (max_connections reached)",
                        f"lower the pool limit in dagster.yaml ({_SESSIONS}) or raise max_connections on the server")
_ROLE_LIMIT = _src(True, "the role's CONNECTION LIMIT is reached",
                   f"lower the pool limit in dagster.yaml ({_SESSIONS}) or ALTER ROLE <login role> CONNECTION "
                   "LIMIT <n> with room for them")
_DB_LIMIT = _src(True, "the database's CONNECTION LIMIT is reached",
                 "lower the pool limit in dagster.yaml or ALTER DATABASE <database> CONNECTION LIMIT <n>")
_STATEMENT_TIMEOUT = _src(True, "statement_timeout: reading the day took longer than allowed",
                          "raise source.statement_timeout_ms (0 = no limit) in the archive config; the day's "
                          "reads take that setting, other statements the role's or database's (ALTER ROLE "
                          "<login role> SET statement_timeout = ...); a day that always takes longer will time out on every retry")
_CANCELED = _src(True, "the query was cancelled (pg_cancel_backend or a client cancel)",
                 f"{RETRIED}; if it recurs, look for a job that cancels long queries")
# 57014 whose message is not PostgreSQL's English (lc_messages in another language): which of the two it was
_CANCELED_UNTOLD = _src(True, "the statement was cancelled: by statement_timeout, or by a cancel request (the "
                        "server's message, in another language than English, does not say which)",
                        f"{RETRIED}; if it recurs, raise source.statement_timeout_ms (0 = no limit) in the archive "
                        "config, or look for a job that cancels long queries")
_LOCK_TIMEOUT = _src(True, "lock_timeout: another session holds a conflicting lock on the table "
                     "(ALTER TABLE, TRUNCATE, VACUUM FULL, REINDEX, LOCK ...)",
                     f"{RETRIED}; if it persists, find the blocker with pg_blocking_pids() / pg_locks, or raise "
                     "source.lock_timeout_ms")
_IDLE_TIMEOUT = _src(True, "idle_in_transaction_session_timeout ended the snapshot's session",
                     "raise source.idle_in_transaction_timeout_ms (the snapshot-holding session waits in its "
                     "transaction while the day's other sessions, for the fingerprint, parallel streams or the "
                     "Parquet reader, connect and import its snapshot), or the role's/server's idle timeout")
# 57P05 (PostgreSQL 14+): idle_session_timeout ends a session idle outside a transaction. Our own sessions turn it
# off (session_settings.session_pinned); one set for the role or database still ends a session opened without
# that (a pooler's, a reader's reconnect) or one idle before it was turned off: not the snapshot's timeout above.
_IDLE_SESSION_TIMEOUT = _src(True, "idle_session_timeout ended the session while it was idle between statements "
                             "(the role's, database's or server's setting that reaps idle connections)",
                             f"{RETRIED}; if it recurs, turn it off for the archiving role (ALTER ROLE <login role> "
                             "SET idle_session_timeout = 0: the role's setting wins over the database's and the server's), "
                             "or look for a pooler that opens sessions without the archiver's settings")
_RECOVERY_CONFLICT = _src(True, "hot-standby recovery conflict: the replica cancelled the read so WAL replay "
                          "could remove rows the snapshot still needed",
                          "set hot_standby_feedback = on on the replica, or raise max_standby_streaming_delay "
                          "(and max_standby_archive_delay) above the longest day's read; retried automatically")
# A standby whose backend is blocked sending rows to a busy client cannot send the conflict's error in
# the middle of a message: it ends the session, and the client sees only the connection closing.
_LOST_ON_STANDBY = _src(True, "the database connection was lost; on a hot standby that is also how a conflict with "
                        "recovery ends a read whose client was busy (the replica cannot send the error mid-row)",
                        f"{_RECOVERY_CONFLICT.remedy}; if it persists, check the replica's log for "
                        "\"conflict with recovery\", crashes or restarts, and the network")
_SERIALIZATION = _src(True, "serialization failure or deadlock", RETRIED)
_WRONG_PASSWORD = _src(False, "wrong password (password authentication failed)",
                       f"check the password in {_DSN} (and that the role's password was not rotated); PostgreSQL "
                       "says the same when the role's VALID UNTIL has passed (see pg_roles.rolvaliduntil): ALTER ROLE "
                       "<login role> VALID UNTIL 'infinity' (or a later date)")
_NO_PASSWORD = _src(False, "the server wants a password and none was given", f"add the password to {_DSN}")
_NO_HBA = _src(False, "pg_hba.conf has no entry allowing this host, user and database",
               "add a pg_hba.conf line for this client address, user and database on the server (or set "
               f"sslmode=require in {_DSN} if the line is hostssl) and reload the server")
_NO_ROLE = _src(False, "the database role does not exist", f"check the user in {_DSN} or CREATE ROLE it")
_NO_LOGIN = _src(False, "the role may not log in", "ALTER ROLE <login role> LOGIN, or use a role that may")
_NO_DATABASE = _src(False, "the database does not exist", f"check the database name in {_DSN}")
_NO_CONNECT = _src(False, "the role may not connect to the database (no CONNECT privilege: a DBA's REVOKE CONNECT ... "
                   "FROM PUBLIC)", "GRANT CONNECT ON DATABASE <database> TO <login role> (as the database's owner)")
_CLOSED_DATABASE = _src(False, "the database accepts no connections (ALLOW_CONNECTIONS false)",
                        "ALTER DATABASE <database> ALLOW_CONNECTIONS true (as a superuser), or connect to another "
                        f"database in {_DSN}")
_AUTH = _src(False, "authentication was refused", f"check the user, password and sslmode in {_DSN}")
_BAD_DSN = _src(False, "the connection string is malformed",
                f"fix {_DSN} (libpq URI postgresql://user:password@host:port/db, special characters "
                "percent-encoded, or key=value form)")
_BAD_SERVICE = _src(False, "the connection service the connection string names is not defined (or its file is missing "
                    "or malformed)", f"check the service name in {_DSN} (service=...) or $PGSERVICE against the "
                    "service file: $PGSERVICEFILE, ~/.pg_service.conf or pg_service.conf in $PGSYSCONFDIR")
_BAD_HOST = _src(False, "the database host name does not resolve", f"check the host in {_DSN} (and DNS)")
# libpq reached the server and asked; the server is not what the DSN's target_session_attrs asks for
_SESSION_ATTRS = _src(False, "the server reached is not the kind the connection string's target_session_attrs asks "
                      "for (a primary where it asks for a standby, or a read-only session where it asks for read-write)",
                      f"check target_session_attrs in {_DSN} (any, read-write, read-only, primary, standby, "
                      "prefer-standby) and which server(s) its host names (a failover may have promoted a standby)")
_DNS_TEMPORARY = _src(True, "temporary DNS failure resolving the database host",
                      f"{RETRIED}; if it persists, check the resolver")
_TLS = _src(False, "TLS negotiation with the server failed",
            f"check sslmode, sslrootcert and the server certificate in {_DSN}")
_PERMISSION = _src(False, "permission denied", "GRANT SELECT ON <table> TO <role> (and GRANT USAGE ON SCHEMA)")
_ROW_SECURITY = _src(False, "row-level security would hide rows of the table from this role (an archive, its "
                     "fingerprint and a removal must see every row, so row_security is off in our sessions)",
                     "archive with a role that bypasses row-level security: the table's owner (without FORCE ROW "
                     "LEVEL SECURITY), a role with BYPASSRLS (ALTER ROLE <role> BYPASSRLS), or a superuser")
_ROW_SECURITY_TARGET = _src(False, "the target table has row-level security, and PostgreSQL loads no COPY into such a "
                            "table for a role its policies apply to",
                            "restore as the table's owner (without FORCE ROW LEVEL SECURITY), a role with BYPASSRLS or "
                            "a superuser; or restore into a new table and copy the rows on from there")
_UNDEFINED = _src(False, "the table, column or schema does not exist (any more)",
                  "check the table name and day_column in archive_tables.yaml against the database")
_DATA = _src(False, "a value in the day cannot be read or converted (data exception)",
             "fix the offending rows, or archive the table in a format that keeps the value as text (jsonl/csv)")
_STACK_DEPTH = _src(False, "a function or trigger recursed past PostgreSQL's stack depth limit (a trigger that "
                           "fires itself, a recursive function or view); no value is at fault",
                    "find the recursion in the function or trigger the message's context names and end it; "
                    "raising max_stack_depth only helps for deep but finite nesting")
_STACK_NESTING = _src(False, "a value nests (JSON, arrays, composite values) deeper than PostgreSQL's stack depth "
                      "limit lets it be read where this statement reads it (a JSONL line is read as JSON, a level or "
                      "two deeper than the values it holds)",
                      "raise max_stack_depth for the role that runs this (a superuser: ALTER ROLE <login role> SET "
                      "max_stack_depth = '6MB', within the server's ulimit -s) and run it again; a table holding "
                      "such values archives as csv or parquet, which read each value by itself")
_PROGRAM_LIMIT = _src(False, "a value, row or query exceeds a PostgreSQL limit (e.g. a value over 1 GB as "
                      "text or JSON)", "a retry cannot help: archive this table as parquet (binary COPY, no "
                      "1 GB text value) or csv (no per-row JSON), or shorten/split the oversized values")
_DISK_FULL_SERVER = _src(False, "the database server ran out of disk space",
                         "free space on the server (temp_tablespaces, pg_wal), then archive again")
_OUT_OF_MEMORY = _src(True, "the database server ran out of memory or another resource",
                      f"{RETRIED}; if it persists, lower the pool limit in dagster.yaml or work_mem")
_LOCK_TABLE = _src(False, "the server's lock table is full (out of shared memory for locks): the statement needs "
                   "more locks than max_locks_per_transaction allows (a LOCK or query on a partitioned table locks "
                   "every partition)", "raise max_locks_per_transaction on the server (postgresql.conf; a restart) "
                   "above the table's partition count, or keep fewer partitions")
_CONFIG_LIMIT = _src(False, "a server configuration limit was exceeded",
                     "raise the limit named in the message on the server")
_DROPPED = _src(False, "the database was dropped", f"check {_DSN}")
# A hot standby has no data of an UNLOGGED table (nor of a temporary one): every read of it is refused there.
_UNLOGGED_ON_STANDBY = _src(False, "the table (or a partition of it) is UNLOGGED, and a hot standby holds no data of "
                            "an unlogged table: it cannot be read there",
                            "archive it from the primary (point ARCHIVE_PG_DSN, or the connection you pass, at the "
                            "primary for this table), or make it logged on the primary (ALTER TABLE ... SET LOGGED)")
# An archive only reads; restores, removals and deep verification (its temporary table) write. Where the
# server refuses a write, the session is read-only: a hot standby, or default_transaction_read_only set
# for the role, the database or the connection (a pooler's read-only route).
_READ_ONLY = _src(False, "the database session is read-only (a hot standby, or default_transaction_read_only on "
                  "for the role, database or connection), and this step writes",
                  "run restores, removals and deep verification against the primary (ARCHIVE_PG_PRIMARY_DSN, or "
                  "the connection you pass), with default_transaction_read_only off for its role and database "
                  "(ALTER ROLE <login role> RESET default_transaction_read_only); an archive of a view whose "
                  "functions write cannot be taken in the archive's READ ONLY snapshot")
_CORRUPTED = _src(False, "the server reports corrupted data or an internal error",
                  "check the server log; verify the table with amcheck / pg_amcheck")
_SQL_REJECTED = _src(False, "the server rejected the archiver's SQL",
                     "check the table definition; if it looks right, report it with this message")
_SOURCE_OTHER = _src(False, "the database reported an error", "read the message; fix the cause and archive again")
TABLE_MISSING = "the configured table does not exist"  # the cause of a SourceError for a table not in the catalog
# Causes that a setting or a grant fixes, not a retry (the CLI exits 2 for them, as for a bad setting).
SETTING_MISFITS = "a setting does not fit the table"  # (hourly granularity over a date day_column, say)
CONFIGURATION_CAUSES = frozenset({TABLE_MISSING, _UNDEFINED.cause, _PERMISSION.cause, _ROW_SECURITY.cause,
                                  _ROW_SECURITY_TARGET.cause, SETTING_MISFITS, _READ_ONLY.cause})
_CONSTRAINT = _src(False, "a value breaks a constraint (a CHECK, NOT NULL, unique key or domain constraint, perhaps "
                   "added since the day was archived)", "load into a table without that constraint (a new table, or a "
                   "column of the domain's base type), or relax the constraint while the day is restored")
_SERVER_IO = _src(True, "the database server had an I/O or system error",
                  f"{RETRIED}; if it persists, check the server log and its disks")
# 58P01 undefined_file, 58P02 duplicate_file: not the disk failing (58030) but a file the server looks for and does
# not find (an extension's shared library a package upgrade replaced or removed), or finds where it must create one:
# no retry brings the file back or takes it away
_SERVER_FILE = _src(False, "a file the server needs is missing (58P01), or one is in the way where the server creates "
                    "its own (58P02): most often an extension's shared library (the .so the message names) removed or "
                    "replaced by a package upgrade",
                    "install the extension's package built for this server's major version (the library the message "
                    "names), or ALTER EXTENSION ... UPDATE to the version whose files are installed; for another file, "
                    "restore or remove the file the message names (the server log says more), then archive again")

_DISK_FULL_LOCAL = Classification(
    False, "no space left for the temp file", "free space in the temp directory or point the store's temp_dir at a "
    "volume that holds the largest day's object (it is staged whole before the last part uploads); an immediate "
    "retry would fail the same way", "local")
_TEMP_NOT_WRITABLE = Classification(False, "the temp directory is not writable",
                                    "fix temp_dir's permissions or choose another temp_dir", "local")
_TEMP_MISSING = Classification(False, "the temp directory does not exist or is not a directory",
                               "create it, or point temp_dir at a directory that exists", "local")
_LOCAL_IO = Classification(False, "an I/O error on the local disk", "check the disk behind temp_dir", "local")
_FILE_TOO_LARGE_LOCAL = Classification(
    False, "the temp file outgrew the process's file-size limit", "raise the limit (ulimit -f, systemd's "
    "LimitFSIZE=) or point temp_dir at a file system that allows a file as large as the day's object (it is staged "
    "whole); an immediate retry would fail the same way", "local")
# What the one local file of an operation (its temp file) can meet: the message names its directory
_TEMP_FILE_CAUSES = frozenset(c.cause for c in (_DISK_FULL_LOCAL, _TEMP_NOT_WRITABLE, _TEMP_MISSING, _LOCAL_IO,
                                                _FILE_TOO_LARGE_LOCAL))
_LOCAL_NETWORK = Classification(True, "a network connection was reset or timed out",
                                f"{RETRIED}; if it persists, check the network", "unknown")
_OUT_OF_MEMORY_LOCAL = Classification(False, "the archiving process ran out of memory",
                                      "give the run more memory or lower chunk_size / the store's max_concurrency",
                                      "local")
_NO_THREAD_LOCAL = Classification(False, "the archiving process could not start a thread (its limit of threads or "
                                  "of memory is reached)", "give the run more memory or a higher thread limit "
                                  "(ulimit -u, a container's pids limit), or lower the store's max_concurrency",
                                  "local")
_TOO_MANY_FILES_LOCAL = Classification(
    False, "the process reached its limit of open files (each parallel stream holds a connection, a socket to the "
    "store and a temp file)", "raise the limit (ulimit -n, systemd's LimitNOFILE, a container's nofile), or lower "
    "the table's parallel_streams", "local")
_UNKNOWN = Classification(False, "an unexpected error", "read the message; it is not retried because nothing "
                          "says a retry would help", "unknown")

# S3
_S3_UNREACHABLE = _store(True, "the object store could not be reached or timed out",
                         f"{RETRIED}; if it persists, check ARCHIVE_S3_ENDPOINT_URL and the network")
_S3_STREAM = _store(True, "the object store's response broke off or arrived incomplete", RETRIED)
_S3_CHECKSUM = _store(True, "a response from the object store failed its checksum (corrupted in transit)",
                      f"{RETRIED}; if it persists on an S3-compatible store, set "
                      "AWS_RESPONSE_CHECKSUM_VALIDATION=when_required")
_S3_TLS = _store(False, "TLS validation of the object store failed",
                 "check ARCHIVE_S3_ENDPOINT_URL and the CA bundle (AWS_CA_BUNDLE)")
_S3_NO_CREDENTIALS = _store(False, "no (or incomplete) credentials for the object store",
                            "set ARCHIVE_S3_ACCESS_KEY_ID and ARCHIVE_S3_SECRET_ACCESS_KEY, or an instance role")
_S3_CONFIG = _store(False, "the object store client is misconfigured (region, endpoint or parameters)",
                    "check ARCHIVE_S3_REGION and ARCHIVE_S3_ENDPOINT_URL")
_S3_THROTTLED = _store(True, "the object store is throttling or temporarily failing (5xx, SlowDown)",
                       f"{RETRIED}; if it persists, lower the pool limit or the store's max_concurrency")
_S3_CORRUPTED = _store(True, "an upload arrived corrupted (BadDigest / checksum mismatch)",
                       f"{RETRIED}; if it recurs, check proxies between Dagster and the store")
# A SHA-256 mismatch is also how some stores refuse the checksum headers botocore 1.36 and later sends
_S3_SHA_MISMATCH = _store(True, "an upload arrived corrupted (XAmzContentSHA256Mismatch)",
                          f"{RETRIED}; if it recurs, check proxies between Dagster and the store; if every upload "
                          "fails so, the store may refuse the checksum headers botocore 1.36 and later sends: set "
                          "AWS_REQUEST_CHECKSUM_CALCULATION=when_required")
_S3_GONE = _store(True, "the multipart upload disappeared or conflicted with another writer", RETRIED)
# NoSuchUpload on a live upload's part or Complete: our own abort never races them, so another run aborted it (a run
# of the day on another database or server, whose lock does not exclude ours, tidying it as a leftover; or a bucket
# lifecycle rule whose AbortIncompleteMultipartUpload age is shorter than the upload)
_S3_UPLOAD_ABORTED = _store(True, "another run aborted this upload (NoSuchUpload: a run of the same day on another "
                            "database or server, which this run's table-day lock does not exclude, took it for a "
                            "leftover; or a bucket lifecycle rule aborted it)",
                            f"{RETRIED}; archive each table from one database and one server only, and keep the "
                            "bucket's AbortIncompleteMultipartUpload age above the longest run")
# What the archiver asks of a bucket (README, "Permissions"): a refused request names the one its operation needs.
S3_PERMISSIONS = ("s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucketMultipartUploads",
                  "s3:AbortMultipartUpload")
_PERMISSION_OF = {"ListObjectsV2": "s3:ListBucket", "HeadBucket": "s3:ListBucket",
                  "GetObject": "s3:GetObject (and s3:ListBucket, without which S3 answers 403 for a missing key: the "
                               "day may simply not be archived)",
                  "HeadObject": "s3:GetObject (and s3:ListBucket, without which S3 answers 403 for a missing key)",
                  "PutObject": "s3:PutObject", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
                  "CompleteMultipartUpload": "s3:PutObject", "CopyObject": "s3:GetObject and s3:PutObject",
                  "DeleteObject": "s3:DeleteObject", "DeleteObjects": "s3:DeleteObject",
                  "ListMultipartUploads": "s3:ListBucketMultipartUploads",
                  "AbortMultipartUpload": "s3:AbortMultipartUpload"}
_S3_ACCESS = _store(False, "the object store refused access", f"grant {', '.join(S3_PERMISSIONS)} on the bucket to "
                    "these credentials")
# The store settings that send server-side-encryption headers with every object write (README, "Store settings"):
# what a bucket policy that denies writes without them asks for
SSE_SETTINGS = ("ARCHIVE_S3_SSE (AES256 or aws:kms) and, for a key of its own, ARCHIVE_S3_SSE_KMS_KEY_ID (the "
                "archive_store resource's server_side_encryption and sse_kms_key_id)")
# No grant lifts an explicit Deny (IAM weighs every Deny before any Allow): AWS names it in the AccessDenied's message
# ("... with an explicit deny in a resource-based policy"), as for the bucket policy AWS recommends for encrypted
# buckets, which denies every PutObject sent without x-amz-server-side-encryption (or with another value)
_S3_EXPLICIT_DENY = _store(False, "a policy explicitly denies the request (the bucket policy, the role's own policy, "
                           "an SCP, a permissions boundary or a KMS key's policy: the store's answer says which), "
                           "which no grant lifts", "change the policy that denies it, or send what its conditions ask "
                           "for: a bucket policy that requires server-side encryption is met by setting "
                           f"{SSE_SETTINGS} to the values it names")
# A Requester Pays bucket of another account refuses any request without x-amz-request-payer (which the archiver never
# sends), so that the bucket's owner is not billed: told apart where the store says so (a code or its message); AWS's
# own answer is a bare AccessDenied, indistinguishable from a missing grant
_S3_REQUESTER_PAYS = _store(False, "the bucket is a Requester Pays bucket of another account, and the archiver does "
                            "not send x-amz-request-payer (no grant is missing)",
                            "archive to a bucket of the credentials' own account, or have the bucket's owner turn "
                            "Requester Pays off for it")
_S3_KMS = _store(False, "the bucket's KMS key refused the request (disabled, deleted, or not usable by these "
                 "credentials)", "enable the bucket's KMS key, or allow kms:GenerateDataKey and kms:Decrypt on it to "
                 "these credentials (the key's policy or the role's)")
# A store that does not support the server-side encryption the archiver was set to send (MinIO without a KMS answers
# 501 NotImplemented "Server side encryption specified but KMS is not configured"; others refuse the method): no
# checksum or condition is to blame, and only the encryption settings (or the store's KMS) change it
_S3_SSE_UNSUPPORTED = _store(False, "the object store does not support the server-side encryption the archiver sends "
                             "with every object write (x-amz-server-side-encryption: a store without a KMS "
                             "configured, or without that method)",
                             f"unset {SSE_SETTINGS} for this store (its bucket's default encryption then applies), "
                             "or configure the encryption they name on the store (MinIO: its KMS, KES)")
_S3_ARCHIVED = _store(False, "the object is in an archive storage class (GLACIER, DEEP_ARCHIVE or an archive access "
                      "tier) and cannot be read until it is restored",
                      "restore it first (aws s3api restore-object --bucket <bucket> --key <key> --restore-request "
                      "Days=7, or the console's Initiate restore), wait until the restore has completed, then run again")
_S3_BAD_KEY = _store(False, "the object store rejected the credentials",
                     "check ARCHIVE_S3_ACCESS_KEY_ID / ARCHIVE_S3_SECRET_ACCESS_KEY (and the region)")
_S3_NO_BUCKET = _store(False, "the bucket does not exist", "check ARCHIVE_S3_BUCKET (or create the bucket)")
_S3_CLOCK = _store(False, "this machine's clock is too far off the store's", "synchronise the clock (NTP)")
_S3_TOO_LARGE = _store(False, "the object or a part is too large for the store",
                       "raise the store's part_size_mb, or split the table's days")
_S3_REJECTED = _store(False, "the object store rejected the request", "read the error code in the message")
_S3_UNSUPPORTED = _store(False, "the object store does not implement a request or header the archiver sent",
                         "on an S3-compatible store, set AWS_REQUEST_CHECKSUM_CALCULATION=when_required and "
                         "AWS_RESPONSE_CHECKSUM_VALIDATION=when_required, and check that it supports multipart uploads")
# the requests that carry the checksum headers botocore adds by default (what the unsupported's remedy is about)
_CHECKSUMMED = ("PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload",
                "GetObject")  # (its x-amz-checksum-mode header)
_S3_REGION = _store(False, "the bucket is in another region (or behind another endpoint) than the requests are sent "
                    "to (a 301 PermanentRedirect, or a request signed for the wrong region)",
                    "set ARCHIVE_S3_REGION to the bucket's region (the store's answer names it: x-amz-bucket-region "
                    "or the message), or ARCHIVE_S3_ENDPOINT_URL to its endpoint")
# A 304 (or another redirect than the region's 301) to a request the archiver sent without a condition: no answer
# the store itself gives such a request, so something between them (a caching gateway, a proxy) answered instead
_S3_NOT_THE_OBJECT = _store(True, "the store's answer was not the object's: a 3xx (such as 304 Not Modified) to a "
                            "request sent without a condition, as a caching gateway or proxy answers",
                            f"{RETRIED}; if it persists, check the caching proxies or gateways between the archiver "
                            "and the store (they must pass S3 requests through uncached)")
# S3's own 307: a bucket created moments ago (its name not yet known to every endpoint), or requests sent to another
# region's endpoint than the bucket's
_S3_REDIRECTED = _store(True, "the store redirected the request to another endpoint (307 TemporaryRedirect: a bucket "
                        "created moments ago, or the requests are sent to another region's endpoint than the bucket's)",
                        f"{RETRIED}; if it persists, set ARCHIVE_S3_REGION to the bucket's region (the answer's "
                        "x-amz-bucket-region names it), or ARCHIVE_S3_ENDPOINT_URL to its endpoint")
_S3_UNEQUAL_PARTS = _store(False, "the object store takes only multipart uploads whose parts (but the last) are all "
                           "the same size (Cloudflare R2's rule), and this day's object grew past the parts of its "
                           "first size", "set ARCHIVE_S3_EQUAL_PARTS=true (ArchiveStoreResource.equal_parts: true; "
                           "the README: Cloudflare R2), "
                           "then run the day again")
_S3_TOKEN_EXPIRED = _store(True, "the object store's temporary credentials expired",
                           f"{RETRIED} with fresh credentials; if it persists, check the credential source (role "
                           "session duration, token refresh)")

# A TLS connection the store's end closed without TLS's goodbye (ssl's EOF "in violation of protocol", also at the
# handshake: a load balancer with no backend, a store restarting) or broke (a bad record MAC): a dropped connection
# on an https endpoint, which botocore retries as well; not a certificate or a scheme to fix (_S3_TLS)
_S3_TLS_DROPPED = _store(True, "the object store's TLS connection was closed or broken before its answer came (a "
                         "dropped connection, not a certificate problem)",
                         f"{RETRIED}; if it persists, check the network and any load balancer or proxy in front of "
                         "the store (an idle timeout that cuts connections, a backend that is down)")
_S3_PROXY = _store(True, "the HTTP proxy between the archiver and the object store could not be reached or refused "
                   "the connection", f"{RETRIED}; if it persists, check the proxy that HTTPS_PROXY / HTTP_PROXY name "
                   "(or the client's proxies setting), or exclude the store from it with NO_PROXY")
_S3_PROXY_AUTH = _store(False, "the HTTP proxy between the archiver and the object store asks for credentials (407 "
                        "Proxy Authentication Required)", "put the proxy's user and password in the URL HTTPS_PROXY / "
                        "HTTP_PROXY name (http://user:password@proxy:port), or exclude the store from the proxy with "
                        "NO_PROXY")
# S3's own RequestTimeout (a 400: "Your socket connection to the server was not read from or written to within the
# timeout period") and HTTP's 408, a proxy's page when a request's body stalls past its limit: the same cause
_S3_TIMED_OUT = _store(True, "the request timed out before the store, or a proxy in front of it, had its whole body "
                       "(S3's RequestTimeout, HTTP 408 Request Timeout)",
                       f"{RETRIED}; if it persists, check the network between the archiver and the store and the "
                       "body timeout of any proxy or load balancer in front of it (nginx: client_body_timeout; an "
                       "ALB's idle timeout), or lower the store's max_concurrency so each part gets more bandwidth")
_S3_BAD_GATEWAY = _store(True, "a proxy or gateway in front of the object store got no valid answer from it (502 Bad "
                         "Gateway)", f"{RETRIED}; if it persists, check that the store behind the proxy is up and "
                         "reachable from it (the proxy's error log says why it failed)")
_S3_GATEWAY_TIMEOUT = _store(True, "a proxy or gateway in front of the object store timed out waiting for its answer "
                             "(504 Gateway Timeout)", f"{RETRIED}; if it persists, check the store's health and the "
                             "proxy's upstream timeout (nginx: proxy_read_timeout), or lower the store's "
                             "max_concurrency")
_S3_BODY_REFUSED = _store(False, "a proxy in front of the object store refused the request's body as too large (413 "
                          "with no S3 error code: its body limit is below the archiver's part size)",
                          "raise the proxy's body limit above the store's part size (part_size_mb, 8 MiB by default; "
                          "nginx: client_max_body_size, 1m by default, 0 for none)")
# An answer with a status this module has no cause for and no S3 error code: a HEAD's (which has no body), or the
# error page of a proxy, gateway or web server that is not the store's S3 API
_S3_BARE_STATUS = _store(False, "the object store, or a proxy or gateway in front of it, refused the request with a "
                         "bare HTTP status (no S3 error code: a HEAD's answer, or an error page)",
                         "check that ARCHIVE_S3_ENDPOINT_URL is the store's S3 API (not its web console or another "
                         "service), ARCHIVE_S3_BUCKET its bucket and ARCHIVE_S3_REGION its region; where a proxy or "
                         "gateway sits in front of the store, its log says why it refused the request")

_S3_RETRY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "RequestThrottled", "KMS.ThrottlingException", "InternalError", "ServiceUnavailable"}
# The codes that say a request's body arrived damaged (its Content-MD5 or x-amz-checksum-* did not match what the store
# computed): the one list both classify (retryable) and the store (sent again on the spot, see store.S3Store's
# corrupt_attempts) read, so a damaged copy is never resent for one store's code and failed at once for another's
S3_CORRUPT_CODES = frozenset({"BadDigest", "InvalidDigest", "InvalidChecksum", "XAmzContentSHA256Mismatch",
                              "XAmzContentChecksumMismatch"})  # (the last: MinIO's for a CRC32/SHA mismatch)
_S3_GONE_CODES = {"NoSuchUpload", "InvalidPart", "InvalidPartOrder", "PreconditionFailed", "ConditionalRequestConflict",
                  "OperationAborted"}
_S3_TOKEN_CODES = {"ExpiredToken", "TokenRefreshRequired", "RequestExpired"}
_S3_ACCESS_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden"}
_S3_KMS_CODES = {"KMS.DisabledException", "KMS.NotFoundException", "KMS.AccessDeniedException",
                 "KMS.KMSInvalidStateException", "KMS.InvalidKeyUsageException", "KMS.KeyUnavailableException"}
_S3_KEY_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "AuthorizationHeaderMalformed",
                 "InvalidSecurity", "UnrecognizedClientException"}
_S3_BUCKET_CODES = {"NoSuchBucket", "InvalidBucketName"}
_S3_SIZE_CODES = {"EntityTooLarge", "EntityTooSmall", "MaxMessageLengthExceeded"}
# What an S3 error code says, whatever status it came with (RequestTimeTooSkewed is a 403 that no grant fixes,
# NotImplemented a 5xx that no retry fixes, RequestTimeout a 400 that a retry does): the first set holding it
_S3_CODES: tuple[tuple[Collection[str], Classification], ...] = (
    ({"XAmzContentSHA256Mismatch"}, _S3_SHA_MISMATCH), (S3_CORRUPT_CODES, _S3_CORRUPTED),
    ({"RequestTimeTooSkewed"}, _S3_CLOCK), (_S3_TOKEN_CODES, _S3_TOKEN_EXPIRED),
    ({"IncompleteBody"}, _S3_STREAM),  # (a 400 for a body cut short in transit)
    ({"NotImplemented"}, _S3_UNSUPPORTED), ({"PermanentRedirect"}, _S3_REGION),
    ({"TemporaryRedirect"}, _S3_REDIRECTED), ({"RequestTimeout"}, _S3_TIMED_OUT), (_S3_RETRY_CODES, _S3_THROTTLED),
    ({"NoSuchUpload"}, _S3_UPLOAD_ABORTED), (_S3_GONE_CODES, _S3_GONE), (_S3_KEY_CODES, _S3_BAD_KEY),
    (_S3_KMS_CODES, _S3_KMS),
    ({"RequestPayerDenied"}, _S3_REQUESTER_PAYS),  # (Huawei OBS's code; AWS answers a bare AccessDenied)
    ({"InvalidObjectState"}, _S3_ARCHIVED),  # (a 403 for an object in GLACIER / DEEP_ARCHIVE: no grant is missing)
    (_S3_ACCESS_CODES, _S3_ACCESS), (_S3_BUCKET_CODES, _S3_NO_BUCKET), (_S3_SIZE_CODES, _S3_TOO_LARGE))
# What an HTTP status says where the answer's code says nothing known: S3's own statuses, and the bare ones a proxy,
# load balancer or gateway in front of the store answers with its own error page (botocore names a page it cannot
# parse by its status: code "408"). One table, so each has its cause and a remedy; other 3xx and 5xx below it.
_S3_STATUSES: dict[int, Classification] = {
    301: _S3_REGION, 307: _S3_REDIRECTED, 403: _S3_ACCESS, 407: _S3_PROXY_AUTH, 408: _S3_TIMED_OUT,
    413: _S3_BODY_REFUSED, 429: _S3_THROTTLED, 501: _S3_UNSUPPORTED, 502: _S3_BAD_GATEWAY, 503: _S3_THROTTLED,
    504: _S3_GATEWAY_TIMEOUT}


# Every session that imports the archive's snapshot meets this: the Parquet (ADBC) reader, a parallel
# stream, the fingerprint's session alongside the read.
_SNAPSHOT_GONE = _src(True, "the exported snapshot was gone before a session reading the day (a parallel stream, "
                      "the fingerprint's session or the Parquet reader) imported it (the snapshot's session "
                      "ended: terminated, timed out or disconnected)", f"{RETRIED}; if it recurs, raise "
                      "source.idle_in_transaction_timeout_ms above the time a new session takes to connect, or "
                      "stop whatever kills the archive's first connection")


def _fixed_part(text: str) -> str:
    """The server's own words of a message: the text after ``ERROR:``/``FATAL:`` if present, quoted
    names blanked, cut at the first ``": "`` (where PostgreSQL puts values), lower case."""
    server = _SERVER_MESSAGE.search(text)
    return _fixed(server.group(1) if server is not None else text.strip().split("\n")[0])


def _fixed(message: str) -> str:
    """``message`` (a server's, without its severity) with quoted names blanked, cut at the first ``": "``, lower
    case: the words that say its cause."""
    return re.sub(r'"[^"]*"', '""', message).split(": ")[0].lower()


def _by_sqlstate(code: str, text: str) -> Classification:
    """The cause behind a SQLSTATE; the server's own words refine codes that cover several causes."""
    lowered = _fixed_part(text)
    if code == "22023" and lowered.startswith("invalid snapshot identifier"):
        return _SNAPSHOT_GONE
    if code == "55000" and lowered.startswith("could not import the requested snapshot"):
        return _SNAPSHOT_GONE
    # A standby reports every recovery conflict as 40001 (57P04 if the database was dropped); the
    # code decides, so a data error quoting a value like "conflict with recovery" stays a data error.
    if code in ("40001", "40P01", "57P01", "57014") and "conflict with recovery" in lowered:
        return _RECOVERY_CONFLICT
    exact: dict[str, Classification] = {
        "57014": (_STATEMENT_TIMEOUT if "statement timeout" in lowered else _CANCELED if "canceling statement" in lowered
                  else _CANCELED_UNTOLD),
        "55P03": _LOCK_TIMEOUT, "25P03": _IDLE_TIMEOUT, "57P05": _IDLE_SESSION_TIMEOUT,
        "57P01": _TERMINATED, "57P02": _TERMINATED, "57P03": _STARTING, "57P04": _DROPPED,
        "53300": (_ROLE_LIMIT if "for role" in lowered else _DB_LIMIT if "for database" in lowered
                  else _MAX_CONNECTIONS),
        "58P01": _SERVER_FILE, "58P02": _SERVER_FILE, "53100": _DISK_FULL_SERVER, "53200": _LOCK_TABLE if "max_locks_per_transaction" in text else _OUT_OF_MEMORY, "53400": _CONFIG_LIMIT,
        "28P01": _WRONG_PASSWORD, "3D000": _NO_DATABASE,
        "42501": _ROW_SECURITY if "row-level security" in lowered else _PERMISSION, "25006": _READ_ONLY,
        "42P01": _UNDEFINED, "42703": _UNDEFINED, "3F000": _UNDEFINED, "55006": _SERIALIZATION,
        **({"0A000": _ROW_SECURITY_TARGET} if "copy from not supported with row-level security" in lowered else {}),
        **({"0A000": _UNLOGGED_ON_STANDBY} if lowered.startswith("cannot access temporary or unlogged relations "
                                                                 "during recovery") else {}),
    }
    if code in exact:
        return exact[code]
    if code == "28000":
        return _match_auth(lowered) or _AUTH
    if code == "XX000" and "invalid memory alloc request size" in lowered:
        return _PROGRAM_LIMIT
    klass = code[:2]
    by_class: dict[str, Classification] = {
        "08": _CONNECTION_LOST, "40": _SERIALIZATION, "53": _OUT_OF_MEMORY, "57": _TERMINATED,
        "58": _SERVER_IO, "54": _PROGRAM_LIMIT, "22": _DATA, "42": _SQL_REJECTED, "28": _AUTH,
        "XX": _CORRUPTED, "0A": _SQL_REJECTED, "23": _CONSTRAINT,
    }
    return by_class.get(klass, _SOURCE_OTHER)


def snapshot_gone(exc: BaseException) -> BaseException:
    """``exc``, raised by our own ``SET TRANSACTION SNAPSHOT``, as the retryable error it is where its SQLSTATE
    says the snapshot could not be imported (22023, 55000: the exporting session ended), whatever language the
    server's messages are in; any other error as it is."""
    state = _sqlstate(exc, str(exc))  # (ADBC's errors carry it in their text)
    if state not in ("22023", "55000"):
        return exc
    return SourceError(f"{_SNAPSHOT_GONE.cause} ({type(exc).__name__} SQLSTATE {state}: "
                       f"{(str(exc).strip().splitlines() or [''])[0]})", retryable=True,
                       cause=_SNAPSHOT_GONE.cause, remedy=_SNAPSHOT_GONE.remedy)


def _match_auth(lowered: str) -> Classification | None:
    if "password authentication failed" in lowered:
        return _WRONG_PASSWORD
    if "no pg_hba.conf entry" in lowered or "pg_hba.conf rejects connection" in lowered:
        return _NO_HBA
    if re.search(r'role "[^"]*" does not exist', lowered):
        return _NO_ROLE
    if "is not permitted to log in" in lowered:
        return _NO_LOGIN
    return None


# Server and libpq messages that arrive without a SQLSTATE (connect-time errors, the Arrow stream's
# OSError). Order matters: the more specific first.
_MESSAGES: list[tuple[re.Pattern[str], Classification]] = [
    (re.compile(p, re.IGNORECASE), c) for p, c in [
        (r"conflict with recovery", _RECOVERY_CONFLICT),
        (r"password authentication failed", _WRONG_PASSWORD),
        (r"no password supplied|password is required", _NO_PASSWORD),
        (r"no pg_hba\.conf entry|pg_hba\.conf rejects connection", _NO_HBA),
        (r"role \"[^\"]*\" does not exist", _NO_ROLE),
        (r"is not permitted to log in", _NO_LOGIN),
        (r"database \"[^\"]*\" does not exist", _NO_DATABASE),
        (r"permission denied for database|does not have CONNECT privilege", _NO_CONNECT),
        (r"is not currently accepting connections", _CLOSED_DATABASE),
        (r"authentication failed|authentication method \S+ not supported", _AUTH),
        (r"too many connections for role", _ROLE_LIMIT),
        (r"too many connections for database", _DB_LIMIT),
        (r"too many clients already|remaining connection slots are reserved", _MAX_CONNECTIONS),
        (r"the database system is (starting up|shutting down|in recovery mode|not yet accepting|"
         r"not accepting)", _STARTING),
        (r"canceling statement due to statement timeout", _STATEMENT_TIMEOUT),
        (r"canceling statement due to lock timeout", _LOCK_TIMEOUT),
        (r"canceling statement due to user request", _CANCELED),
        (r"idle-in-transaction timeout", _IDLE_TIMEOUT),
        (r"idle-session timeout", _IDLE_SESSION_TIMEOUT),
        (r"terminating connection due to (administrator command|immediate shutdown)|"
         r"unexpected postmaster exit", _TERMINATED),
        (r"invalid memory alloc request size|exceeds the maximum allowed|cannot enlarge string buffer|"
         r"total size of jsonb|out of memory.*(string|buffer) (is|of) too large", _PROGRAM_LIMIT),
        (r"\bout of (shared )?memory\b", _OUT_OF_MEMORY),  # (53200 without its SQLSTATE: ADBC's text)
        (r"no space left on device", _DISK_FULL_SERVER),
        (r"temporary failure in name resolution|EAI_AGAIN", _DNS_TEMPORARY),
        (r"could not translate host name|name or service not known|nodename nor servname|"
         r"failed to resolve host|no address associated with hostname", _BAD_HOST),
        (r"certificate verify failed|ssl error|server does not support ssl|sslmode value|"
         r"certificate (has expired|is not yet valid)|could not load (private key|certificate)", _TLS),
        (r"definition of service \"[^\"]*\" not found|service file \"[^\"]*\" not found|"
         r"syntax error in service file", _BAD_SERVICE),
        (r"invalid connection option|invalid uri|invalid percent-encoded|missing \"=\" after|"
         r"unterminated quoted string|invalid integer value .* for connection option|"
         r"end of string reached when looking for matching|unexpected character .* in uri|"
         r"invalid port number|servname not supported|invalid .* value: \"|unexpected spaces found|"
         r"use percent-encoded", _BAD_DSN),
        # (not where another host of the string could not be reached: a failover under way, retried)
        (r"(?s)^(?!.*(connection refused|timeout expired|timed out|network is unreachable|no route to host)).*"
         r"(server is (not )?in hot standby mode|session is (not )?read-only)", _SESSION_ATTRS),
        # (libpq's wrapper alone, "connection to server at ... failed", only where no server answered after it:
        # a login's refusal is taken apart first, see _server_said)
        (r"connection refused|timeout expired|timed out|network is unreachable|no route to host|"
         r"could not connect to server|connection to server at .* failed", _CONNECT_FAILED),
        (r"server closed the connection unexpectedly|terminating connection|could not receive data from server|"
         r"could not send data to server|no connection to the server|connection (is|was) (closed|lost)|"
         r"connection reset|broken pipe|ssl syscall error|ssl connection has been closed|"
         r"lost synchronization with server|PQgetCopyData\(\) failed", _CONNECTION_LOST),
    ]
]

# ADBC appends ". SQLSTATE: 22P02" at the very end; only there, since quoted values and the echoed
# query come earlier and may contain anything.
_SQLSTATE_IN_TEXT = re.compile(r"SQLSTATE: ([0-9A-Z]{5})\s*$")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, psycopg's or ADBC's (which carries it in its text): what to test instead
    of the message's words, which a server speaking another language (lc_messages) says otherwise."""
    return _sqlstate(exc, str(exc))


# The CONTEXT line PostgreSQL adds where a statement waited for another transaction's row rather than a table's lock
# (XactLockTableWait: 'while inserting index tuple (0,26) in relation "ev_pkey"', 'while locking tuple (0,31) in
# relation "kinds"', 'while deleting tuple ...'), read by its shape, not by its words, which lc_messages translates
# along with the order of its parts and their spacing: the relation first in Japanese and Chinese
# ('リレーション"ev_pkey"のインデックスタプル(0,26)の挿入中'), the tuple id with a space in French
# ("(0, 26) ... « ev_pkey »") or without parentheses in Korean ('0,26 튜플 ... "ev_pkey"'), the quotes of the
# language (»ev_pkey«, « ev_pkey »), an apostrophe anywhere in the words (Ukrainian "зв'язку", French "l'index").
# Its line is the first of the CONTEXT (the wait's callback is the innermost when lock_timeout fires), so a later
# line (COPY's, a function's) is never read: a row COPY quotes may hold any such text.
_QUOTED_NAME = re.compile(r'"(?P<a>[^\n]+)"|»(?P<b>[^\n]+)«|«(?P<c>[^\n]+)»|„(?P<d>[^\n]+)“|“(?P<e>[^\n]+)”'
                          r'|「(?P<f>[^\n]+)」')
_TUPLE_ID = re.compile(r"(?<![\w.])\(?\s*(\d+)\s*,\s*(\d+)\s*\)?(?![\w.])")


def waited_row(exc: BaseException) -> tuple[str, str] | None:
    """(tuple id as "block,offset", relation name as the server printed it, unqualified) of the row another session's
    transaction held that ``exc`` (a lock_timeout, a deadlock) waited for, or None where it waited for a table's
    lock: a row's wait is ended by that transaction's end, and pg_locks on the table shows no conflicting lock for
    it. Read from the first CONTEXT line by its shape alone, whatever the server's lc_messages (see _QUOTED_NAME):
    a quoted relation name and, outside it, a tuple id, in either order. Lock-timeout errors carry no table or
    schema field, and the wait is over once the error is raised, so nothing else names the row afterwards;
    :func:`~archive_pipeline.core.source.row_waited` looks the name up in the catalog."""
    context = getattr(getattr(exc, "diag", None), "context", None)
    line = context.strip().splitlines()[0] if isinstance(context, str) and context.strip() else ""
    quoted = _QUOTED_NAME.search(line)
    tid = _TUPLE_ID.search(line[:quoted.start()] + " " + line[quoted.end():]) if quoted else None
    if quoted is None or tid is None:
        return None
    return f"{tid[1]},{tid[2]}", next(name for name in quoted.groups() if name is not None).strip()


def _sqlstate(exc: BaseException, text: str) -> str | None:
    code = getattr(exc, "sqlstate", None)
    if isinstance(code, str) and re.fullmatch(r"[0-9A-Z]{5}", code):
        return code
    found = _SQLSTATE_IN_TEXT.search(text)
    return found.group(1) if found else None


_SERVER_UNKNOWN = _src(False, "the database reported an error", "read the message; fix the cause and archive again")
# A login the server answered with a refusal neither its English words nor a message catalog here (see _translated)
# names: the server was reached, so never "could not be reached"; not retried, as every refusal at login but a full
# server or one starting up
_LOGIN_REFUSED = _src(False, "the server refused the login for a reason not recognised here (its words are quoted: a "
                      "server whose lc_messages is not English is read through PostgreSQL's message catalogs, "
                      "postgres-<version>.mo, and none on this machine holds these words)",
                      "read the server's words and fix what they name (the role, its password, pg_hba.conf, a CONNECTION "
                      "LIMIT, the database), then archive again; to have such refusals recognised, and the transient "
                      "ones (a full server, one starting up) retried, install PostgreSQL's translations on this machine "
                      "(its locale files, where pg_config --localedir says) or set lc_messages = 'C' on the server")

# libpq's own words before a server's answer to a login ('connection to server at "host" (addr), port N failed: ' or
# 'connection to server on socket "path" failed: '), then the server's message as libpq prints it: its severity word
# as lc_messages translates it (FATAL, ВАЖНО), a colon and two spaces. libpq's own reasons ("Connection refused",
# "timeout expired", "SSL error: ...") have no severity word.
_LOGIN_ANSWER = re.compile(r'connection to server (?:at "[^"\n]*"(?: \([^)\n]*\))?, port \d+|on socket "[^"\n]*") '
                           r'failed: [^\s:][^:\n]{0,40}:  (?P<said>[^\n]*)')


def _server_said(text: str) -> tuple[str, bool] | None:
    """The server's message in ``text`` (its first line, without its severity word) and whether it answered a
    login (libpq's connect failure, in any language: see _LOGIN_ANSWER); None where the text is libpq's own."""
    login = _LOGIN_ANSWER.search(text)
    if login is not None:
        return login.group("said"), True
    server = _SERVER_MESSAGE.search(text)
    return (server.group(1), False) if server is not None else None


def _match(text: str) -> Classification | None:
    """The first cause of the _MESSAGES table whose pattern ``text`` holds."""
    return next((classification for pattern, classification in _MESSAGES if pattern.search(text)), None)


def _by_message(text: str) -> Classification | None:
    """Match known causes against the server's own words, never against data it quotes.

    Where the text holds a server message (``ERROR:``/``FATAL:``, as libpq and ADBC pass it on without
    a SQLSTATE; or a login's answer in any language), only its fixed part is matched: quoted names are blanked and
    everything after the first ``": "`` (where PostgreSQL puts values) is cut, so a row holding "statement timeout"
    in a data error cannot pass for a transient cause; a login's refusal, which never carries a SQLSTATE, is also
    read in another language through PostgreSQL's message catalogs (:func:`_translated`). An unrecognised server
    message fails at once; a login the server answered is never "could not be reached". Text without a server
    message is libpq's own (connect failures, lost connections).
    """
    said = _server_said(text)
    if said is None:
        return _match(text)
    message, at_login = said
    found = _match(_fixed(message))
    if found is not None or not at_login:  # (a statement's error: its SQLSTATE decides, where it has one)
        return found or _SERVER_UNKNOWN
    return _translated(message) or _LOGIN_REFUSED


# A printf conversion of a message template ("%s", "%d", "%1$s", "%.*s", "%m"; "%%" a percent sign)
_PRINTF = re.compile(r"%(?:%|(?:\d+\$)?[-+ #0']*(?:\*|\d+)?(?:\.(?:\*|\d+))?(?:hh|h|ll|l|L|q|j|z|t)?"
                     r"[diouxXeEfFgGaAcspm])")
# Where PostgreSQL's message catalogs are found when pg_config is not there to say (packages, source builds, Homebrew)
_LOCALE_DIRS = ("/usr/share/locale", "/usr/local/share/locale", "/usr/local/pgsql/share/locale",
                "/opt/homebrew/share/locale")
_MIN_WORDS = 8  # characters of a translation besides its values: a shorter one could match nearly any message


def _translated(message: str) -> Classification | None:
    """The cause of a server ``message`` in another language than English: a login's refusal carries no SQLSTATE,
    so its words are all there is. Each translation (msgstr) of a message the English table recognises (msgid),
    in PostgreSQL's catalogs on this machine, is matched against the whole message, the longest first; None where
    none matches (no catalogs here, or a language or version they lack)."""
    line = message.strip()
    return next((cause for pattern, cause in _translations() if pattern.fullmatch(line)), None)


@functools.cache
def _translations() -> tuple[tuple[re.Pattern[str], Classification], ...]:
    """(pattern of a translation, its English message's cause) for every language's catalog, the most specific
    first; read once (a second or two), on the first message that needs it."""
    causes: dict[str, Classification | None] = {}  # per English message: each language's catalog has the same
    found: dict[str, Classification] = {}
    for msgid, msgstr in _catalog_entries():
        if msgid not in causes:
            causes[msgid] = _match(_fixed(_PRINTF.sub("", msgid)))
        if causes[msgid] is not None and len(_PRINTF.sub("", msgstr).strip()) >= _MIN_WORDS:
            found.setdefault(msgstr, causes[msgid])
    ordered = sorted(found, key=lambda msgstr: -len(_PRINTF.sub("", msgstr)))
    return tuple((re.compile(_template_pattern(m), re.DOTALL), found[m]) for m in ordered)


def _template_pattern(template: str) -> str:
    """A regular expression of a message template: its words literal, each value (``%s``, ``%d``) any text."""
    parts, at = [], 0
    for found in _PRINTF.finditer(template):
        parts += [re.escape(template[at:found.start()]), "%" if found.group() == "%%" else ".*?"]
        at = found.end()
    return "".join(parts) + re.escape(template[at:])


def _catalog_entries() -> list[tuple[str, str]]:
    """(msgid, msgstr) of every translated message in PostgreSQL's server catalogs (postgres-<version>.mo) on
    this machine: where pg_config says, and where packages put them."""
    import gettext
    import glob
    import os

    dirs = dict.fromkeys(d for d in (_pg_config_localedir(), *_LOCALE_DIRS) if d)
    paths = sorted({p for d in dirs for name in ("postgres-*.mo", "postgres.mo")
                    for p in glob.glob(os.path.join(d, "*", "LC_MESSAGES", name))})
    entries: list[tuple[str, str]] = []
    for path in paths:
        try:
            with open(path, "rb") as fp:
                catalog = gettext.GNUTranslations(fp)._catalog  # (msgid -> msgstr; gettext has no public listing)
        except Exception:  # noqa: BLE001 - an unreadable catalog only leaves its language unrecognised
            continue
        entries += [(k, v) for k, v in catalog.items() if isinstance(k, str) and k and isinstance(v, str) and v != k]
    return entries


def _pg_config_localedir() -> str | None:
    """Where this machine's PostgreSQL keeps its message catalogs (``pg_config --localedir``), if pg_config runs."""
    import shutil
    import subprocess

    tool = shutil.which("pg_config")
    if tool is None:
        return None
    try:
        done = subprocess.run([tool, "--localedir"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def is_recursion(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL's stack depth limit (54001) met with a function or trigger on the stack (its
    context names one: PL/pgSQL, SQL): a recursion, which no value of the row causes and no format avoids, unlike
    a value nested too deeply for where it is read (no function on the stack: the JSON or array parser's own)."""
    context = (getattr(getattr(exc, "diag", None), "context", None) or "").lower()
    return getattr(exc, "sqlstate", None) == "54001" and ("function" in context or "trigger" in context)


def _stack_depth(exc: BaseException) -> Classification:
    """A recursion (see :func:`is_recursion`), else a value nested too deeply for where it is read."""
    return _STACK_DEPTH if is_recursion(exc) else _STACK_NESTING


def _with_sqlstate(c: Classification, code: str | None) -> Classification:
    return Classification(c.retryable, c.cause, c.remedy, c.where, code)


def _classify_database(exc: BaseException, text: str, *, connection_error: bool) -> Classification | None:
    """psycopg, adbc_driver_manager or an Arrow ``OSError`` from libpq: SQLSTATE, then message, then type."""
    code = _sqlstate(exc, text)
    if code == "54001" and "stack depth limit exceeded" in _fixed_part(text):
        return _with_sqlstate(_stack_depth(exc), code)
    if code is not None:
        return _with_sqlstate(_by_sqlstate(code, text), code)
    found = _by_message(text)
    if found is not None:
        return found
    if connection_error:  # no server answer and no known message: the connection itself failed
        return _CONNECTION_LOST
    return None


def _classify_boto(exc: BaseException) -> Classification | None:
    try:
        import botocore.exceptions as bx
    except ImportError:  # pragma: no cover - botocore is a dependency
        return None
    if isinstance(exc, bx.FlexibleChecksumError | bx.ChecksumError):
        return _S3_CHECKSUM
    if isinstance(exc, bx.SSLError | bx.ProxyConnectionError):  # (ConnectionErrors, whose causes differ)
        return _connection_failed(exc)
    if isinstance(exc, bx.ConnectionError | bx.ReadTimeoutError | bx.ConnectionClosedError):
        return _S3_UNREACHABLE
    from botocore.parsers import ResponseParserError

    if isinstance(exc, bx.IncompleteReadError | bx.ResponseStreamingError | bx.HTTPClientError
                  | ResponseParserError):  # an answer that cannot be parsed: damaged on the way, most likely
        return _S3_STREAM
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
        return _S3_NO_CREDENTIALS
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        said = str(error.get("Message", "")).lower()
        if "explicit deny" in said:  # AccessDenied "... with an explicit deny in a resource-based policy"
            return _S3_EXPLICIT_DENY
        if _REQUESTER_PAYS.search(said):
            return _S3_REQUESTER_PAYS
        if "kms:" in said:  # AccessDenied "... not authorized to perform: kms:..."
            return _S3_KMS
        if error.get("Code") == "InvalidEncryptionAlgorithmError" or (
                _SSE_REFUSED.search(said) and error.get("Code") not in _S3_ACCESS_CODES | _S3_KMS_CODES):
            return _S3_SSE_UNSUPPORTED
        if ("x-amz-checksum" in said or "x-amz-sdk-checksum" in said) \
                and error.get("Code") not in S3_CORRUPT_CODES:  # B2's 400 for botocore's default CRC32 headers
            # (a checksum the store computed otherwise, BadDigest, is the upload damaged on the way: retried)
            return _S3_UNSUPPORTED
        if error.get("Code") == "InvalidPart" and "same length" in said:  # R2's rule of equal parts
            return _S3_UNEQUAL_PARTS
        if error.get("Code") == "AuthorizationHeaderMalformed" and re.search(r"\bregion (?:'[^']*' )?is wrong", said):
            # "the region 'us-east-1' is wrong; expecting 'eu-west-1'" (AWS), "the region is wrong; expecting
            # 'eu-central-1'" (MinIO): signed for another region
            return _S3_REGION  # (else a malformed credential: the keys' settings)
        return _s3_code(str(error.get("Code", "")), int(status))
    if isinstance(exc, bx.BotoCoreError):
        return _S3_CONFIG
    try:
        from boto3.exceptions import S3UploadFailedError
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, S3UploadFailedError):  # boto3's transfer manager keeps only the text
        found = re.search(r"An error occurred \(([^)]+)\)", str(exc))
        return _s3_code(found.group(1), 0) if found else _S3_THROTTLED
    return None


# A store's words for a refusal of the server-side encryption a write asked for (its header, or a method or KMS it
# lacks): MinIO's "Server side encryption specified but KMS is not configured", "The encryption method specified is
# not supported"; AWS's InvalidArgument naming x-amz-server-side-encryption. (Not a read of an object stored with
# SSE-C, "stored using a form of Server Side Encryption": no setting of the archiver's is to blame there.)
_SSE_REFUSED = re.compile(r"server[ -]side[ -]encryption (?:specified|is not (?:supported|implemented|configured))"
                          r"|\bkms (?:is )?not configured|x-amz-server-side-encryption"
                          r"|encryption (?:method|algorithm)[^.]* not supported"
                          r"|(?:not|n't) support(?:ed)? (?:for )?server[ -]side[ -]encryption")


def refuses_encryption(exc: BaseException) -> bool:
    """Whether the store refused ``exc``'s write for the server-side encryption it asked for (see
    :data:`_S3_SSE_UNSUPPORTED`): not for a condition or a checksum header, whatever its status (501 included)."""
    return _classify_boto(exc) == _S3_SSE_UNSUPPORTED


# A store's words for a Requester Pays refusal (its message, where its code is a plain AccessDenied)
_REQUESTER_PAYS = re.compile(r"requester[ -]?pays?\b|request-?payer")


def names_its_cause(code: str) -> bool:
    """Whether an S3 error ``code`` has a cause of its own here (:data:`_S3_CODES`: ExpiredToken, InvalidToken,
    RequestTimeTooSkewed, ...), which a caller reading the status alone must not take for another."""
    return any(code in codes for codes, _ in _S3_CODES)


def missing_grant(exc: BaseException) -> bool:
    """Whether the store refused ``exc``'s request for want of a grant, as far as its answer tells: an access refused
    with no other cause in its code or message (an explicit deny, a Requester Pays bucket, a KMS key, expired or
    wrong credentials, a clock far off are not), the refusals a grant of the operation's permission may end."""
    return _classify_boto(exc) == _S3_ACCESS


# What ssl says of a TLS connection the other end closed without TLS's goodbye or broke mid-record: no certificate
_TLS_DROPPED = re.compile(r"EOF occurred in violation of protocol|UNEXPECTED_EOF_WHILE_READING|"
                          r"TLS/SSL connection has been closed|BAD_RECORD_MAC|bad record mac")


def _connection_failed(exc: BaseException) -> Classification:
    """botocore's SSLError or ProxyConnectionError by what urllib3 said (its ``error``, which the message of a
    ProxyConnectionError leaves out): a certificate or scheme that fails every handshake the same way (_S3_TLS), a
    TLS connection dropped (retried), a proxy asking for credentials (407) or one that could not be reached."""
    from botocore.exceptions import ProxyConnectionError

    said = str(getattr(exc, "kwargs", {}).get("error", ""))
    if isinstance(exc, ProxyConnectionError):
        return _S3_PROXY_AUTH if re.search(r"\b407\b", said) else _S3_PROXY
    return _S3_TLS_DROPPED if _TLS_DROPPED.search(said) else _S3_TLS


def for_operation(found: Classification, what: str, encryption: Mapping[str, str] | None = None) -> Classification:
    """``found`` for a request described by ``what`` ("listing s3://... (ListObjectsV2)"): a refused access
    names the permission that operation needs (a least-privilege role lacking only s3:ListBucket was told
    to grant five others it had); ``encryption``: the server-side-encryption parameters the store sends with its
    object writes (see :func:`_for_encryption`)."""
    operation = re.search(r"\((\w+)\)\s*$", what)
    if encryption and operation:
        found = _for_encryption(found, operation.group(1), encryption)
    if found == _S3_ARCHIVED:  # the restore-object command for the object the request read
        uri = re.search(r"\bs3://([^/\s]+)/(.+?) \(\w+\)\s*$", what)
        if uri:
            return replace(found, remedy=found.remedy.replace("<bucket>", shlex.quote(uri.group(1))).replace(
                "<key>", shlex.quote(uri.group(2))))
        return found
    if found == _S3_UNSUPPORTED and operation and operation.group(1) not in _CHECKSUMMED:  # no checksum header sent
        return replace(found, cause=f"the object store does not implement {operation.group(1)}",
                       remedy=f"the archiver needs {operation.group(1)} (S3's API): use a store or gateway that "
                              "implements it (or a newer version of it)")
    remedy = permission_remedy(operation.group(1)) if operation else None
    return replace(found, remedy=remedy) if found == _S3_ACCESS and remedy else found


# the requests that carry the store's server-side-encryption parameters, and the writes that encrypt with its key
# (a multipart upload's parts take the upload's)
_SENDING_SSE = ("PutObject", "CreateMultipartUpload")
_ENCRYPTED_WRITES = (*_SENDING_SSE, "UploadPart", "CompleteMultipartUpload")
_KMS_KEY_SETTING = "ARCHIVE_S3_SSE_KMS_KEY_ID (the archive_store resource's sse_kms_key_id)"


def _for_encryption(found: Classification, operation: str, encryption: Mapping[str, str]) -> Classification:
    """``found`` for ``operation`` of a store that sends ``encryption`` (ServerSideEncryption, SSEKMSKeyId) with its
    writes: a KMS refusal names the key the archiver was set to use, where it was (the words written before a key
    could be chosen blamed "the bucket's KMS key", which the operator found enabled and granted); a write the store
    does not implement may be refusing the encryption header as well as a checksum header, and says so."""
    key = encryption.get("SSEKMSKeyId")
    if found == _S3_KMS and key and operation in _ENCRYPTED_WRITES:
        return replace(found, cause=f"the KMS key the archiver is set to encrypt with, {key} ({_KMS_KEY_SETTING}), "
                                    "refused the request (disabled, deleted or pending deletion, of another account "
                                    "or region, or not usable by these credentials)",
                       remedy=f"set {_KMS_KEY_SETTING} to a key of the bucket's region that these credentials may "
                              "use (or unset it for the bucket's key), or enable that key and allow "
                              "kms:GenerateDataKey and kms:Decrypt on it to these credentials (the key's policy or "
                              "the role's)")
    if found == _S3_KMS and key:  # a read: the key the object was written with
        return replace(found, cause=f"the KMS key the object is encrypted with refused the request (for what the "
                                    f"archiver wrote since it was set, {key}, its {_KMS_KEY_SETTING}; else the "
                                    "bucket's)",
                       remedy="enable that key, or allow kms:Decrypt on it to these credentials (the key's policy "
                              "or the role's)")
    if found == _S3_UNSUPPORTED and operation in _SENDING_SSE:
        return replace(found, remedy=f"{found.remedy}; the archiver also sends server-side encryption "
                                     f"({encryption.get('ServerSideEncryption')}): if the store does not support it, "
                                     f"unset {SSE_SETTINGS}")
    return found


def permission_remedy(operation: str) -> str | None:
    """The grant an S3 ``operation`` ("ListObjectsV2", "HeadBucket") refused for want of a permission needs."""
    needed = _PERMISSION_OF.get(operation)
    if needed is None:
        return None
    return (f"grant {needed} on the bucket to these credentials ({operation} needs it; the archiver needs "
            f"{', '.join(S3_PERMISSIONS)})")


def _s3_code(code: str, status: int) -> Classification:
    """An S3 error by its code, else by its status (:data:`_S3_STATUSES`); ``status`` 0 where only the code is known
    (boto3's transfer manager), whose code is then the status where the answer had no code of its own."""
    status = status or (int(code) if code.isdecimal() else 0)
    found = next((classification for codes, classification in _S3_CODES if code in codes), None)
    return found or _s3_status(status) or (_S3_BARE_STATUS if not code or code.isdecimal() else _S3_REJECTED)


def _s3_status(status: int) -> Classification | None:
    """What ``status`` says of a request: :data:`_S3_STATUSES`, else a 3xx that was not the store's answer (its
    conditional answers, 304 to an If-None-Match, are handled where sent) or a 5xx that may pass; None for another."""
    if status in _S3_STATUSES:
        return _S3_STATUSES[status]
    if 300 <= status < 400:
        return _S3_NOT_THE_OBJECT
    return _S3_THROTTLED if status >= 500 else None


def _classify_os(exc: OSError, text: str) -> Classification:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _DISK_FULL_LOCAL
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return _TEMP_NOT_WRITABLE
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # the one local path opened is the temp file's
        return _TEMP_MISSING
    if exc.errno == errno.EIO:
        return _LOCAL_IO
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return _TOO_MANY_FILES_LOCAL
    if exc.errno == errno.EFBIG:
        return _FILE_TOO_LARGE_LOCAL
    if isinstance(exc, ConnectionError | TimeoutError) or exc.errno in (
            errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
            errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN):
        return _LOCAL_NETWORK
    # adbc-driver-postgresql's Arrow stream raises a bare OSError whose text is libpq's
    from_libpq = "[libpq]" in text or "SQLSTATE" in text
    found = _classify_database(exc, text, connection_error=from_libpq)
    return found if found is not None else _UNKNOWN


def _classify_one(exc: BaseException) -> Classification | None:
    if isinstance(exc, ArchiveError):
        where = "store" if isinstance(exc, UploadError) else "source" if isinstance(exc, SourceError) else "unknown"
        return Classification(exc.retryable, exc.cause or type(exc).__name__, exc.remedy or "", where)
    text = str(exc)
    module = type(exc).__module__ or ""
    if module.startswith("psycopg"):
        import psycopg

        return _classify_database(exc, text, connection_error=isinstance(exc, psycopg.OperationalError
                                                                         | psycopg.InterfaceError))
    if module.startswith("adbc_driver"):
        import adbc_driver_manager

        return _classify_database(exc, text, connection_error=isinstance(exc, adbc_driver_manager.OperationalError))
    if module.startswith(("botocore", "boto3")):
        return _classify_boto(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "ArrowMemoryError" or (
            module.startswith("zstandard") and ("Allocation error" in text or "not enough memory" in text)):
        return _OUT_OF_MEMORY_LOCAL  # (Python's, Arrow's "malloc of size ... failed", zstd's allocation error)
    if (isinstance(exc, RuntimeError) and "can't start new thread" in text) or (  # (CPython's words, any locale)
            module.startswith("pyarrow") and "Failed to launch worker thread" in text):  # (Arrow's pool)
        return _NO_THREAD_LOCAL
    if isinstance(exc, OSError):
        return _classify_os(exc, text)
    if module.startswith("pyarrow") and "[libpq]" in text:
        # adbc-driver-postgresql's Arrow stream passes libpq's failure on as an Arrow error: an OSError
        # in some versions, ArrowInvalid in others (1.8, pinned) for the very same fault
        return _classify_database(exc, text, connection_error=True) or _UNKNOWN
    return None


def with_roles(remedy: str, user: str | None, login: str | None = None) -> str:
    """``remedy`` with its roles named: ``<role>`` by ``user``, the role PostgreSQL checks privileges of (a
    SET ROLE's: a GRANT's grantee), ``<login role>`` by ``login``, the role the session logged in as
    (session_user), for what applies at login: a role's settings (ALTER ROLE ... SET/RESET), CONNECTION LIMIT,
    VALID UNTIL, LOGIN and CONNECT. SET ROLE applies none of those, so naming the acting role there changed
    nothing and the next run was refused the same way. Without ``login`` (no SET ROLE known of: a refused
    login, a DSN's user) both are ``user``; a placeholder without a name stays as it is."""
    for placeholder, name in (("<login role>", login or user), ("<role>", user)):
        remedy = remedy.replace(placeholder, sql_name(name, qualified=False) if name else placeholder)
    return remedy


def classify(exc: BaseException, *, table: str | None = None, user: str | None = None,
             login: str | None = None) -> Classification:
    """Why ``exc`` happened, whether a retry of the whole partition may help, and what to do.

    Decides by cause: the SQLSTATE (attribute, or ``SQLSTATE: XXXXX`` in an ADBC message), then the
    server's or libpq's message (connect-time errors carry no SQLSTATE), then the exception type.
    An exception nobody recognises is looked for in its ``__cause__`` / ``__context__`` and is
    otherwise *not* retried. ``table``, ``user`` and ``login`` fill the placeholders of remedies like GRANT
    (see :func:`with_roles`).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    found: Classification | None = None
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        found = _classify_one(current)
        if found is not None:
            break
        current = current.__cause__ or current.__context__
    result = found or _UNKNOWN
    remedy = result.remedy.replace("<table>", sql_name(table) if table else "<table>")
    return Classification(result.retryable, result.cause, with_roles(remedy, user, login), result.where,
                          result.sqlstate)


# PostgreSQL's reserved key words (pg_get_keywords() catcode R and T, 16) and the role names a GRANT reads as
# special (PUBLIC, NONE): a name that is one of them is quoted (``GRANT ... TO user`` is a syntax error)
_KEYWORDS = frozenset("""
all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate collation column
concurrently constraint create cross current_catalog current_date current_role current_schema current_time
current_timestamp current_user default deferrable desc distinct do else end except false fetch for foreign freeze from
full grant group having ilike in initially inner intersect into is isnull join lateral leading left like limit
localtime localtimestamp natural not notnull null offset on only or order outer overlaps placing primary references
returning right select session_user similar some symmetric system_user table tablesample then to trailing true union
unique user using variadic verbose when where window with public none
""".split())


def sql_name(name: str, *, qualified: bool = True) -> str:
    """``name`` (``schema.table`` split at its first dot, or with ``qualified=False`` a role, whose name may
    hold a dot) as a statement to paste needs it: as it is where PostgreSQL reads it back unchanged, else
    double-quoted (``"Mixed Case"."Nasty Events"``, ``"user"``)."""
    def part(text: str) -> str:
        plain = re.fullmatch(r"[a-z_][a-z0-9_$]*", text) and text not in _KEYWORDS
        return text if plain else '"' + text.replace('"', '""') + '"'

    return ".".join(part(p) for p in (name.split(".", 1) if qualified else [name]))


def is_retryable(exc: BaseException) -> bool:
    """Whether running the partition again from scratch may succeed."""
    return classify(exc).retryable


def _detail(exc: BaseException, limit: int = 600) -> str:
    """The exception's own text on one line, bounded (ADBC appends the whole query)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"\s*Query was: .*?(?=\. SQLSTATE|$)", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_AGAIN = {"archiving": "archive", "restoring": "restore", "removing": "remove the day", "proving": "prove",
          "comparing": "compare"}

# What a privilege refused means where more than SELECT is needed (the restore says its own).
_PERMISSION_FOR = {
    "proving": "GRANT SELECT ON <table> TO <role> (and USAGE on its schema), and TEMPORARY on the database (GRANT "
               "TEMPORARY ON DATABASE <database> TO <role>): the proof loads the archive into a temporary table",
    "removing": "a removal needs what its action does: detach and drop, ownership of <table> and of the day's partition "
                "or table (remove as their owner, or GRANT the owner's role TO <role>); delete, GRANT SELECT, DELETE ON <table> "
                "TO <role>; and TEMPORARY on the database for the proof before it",
}


def remedy_for(remedy: str, doing: str) -> str:
    """A remedy that ends in "archive again" as it reads for what failed ("restoring": "restore again")."""
    return remedy.replace("archive again", f"{_AGAIN.get(doing, 'try')} again") if doing != "archiving" else remedy


def named(exc: ArchiveError, table: str, day: str, password: str | None = None) -> ArchiveError:
    """``exc`` (see :func:`wrap`) with table and day also named in its message, where it named them not
    (a discovery error names the table only, and a person reading it must know which day failed)."""
    wrap(exc, table, day, password)
    if exc.day not in exc.message or exc.table not in exc.message:
        exc.message = f"{exc.table} {exc.day}: {exc.message}"
        exc.args = (exc.message,)
    return exc


def is_cancellation(exc: BaseException | None) -> bool:
    """Whether ``exc`` stops the work from outside rather than failing it: Ctrl-C (KeyboardInterrupt, also the
    command line's SIGTERM), a terminated Dagster run (DagsterExecutionInterruptedError), an exit. They are
    BaseExceptions that are not Exceptions, and nothing of ours catches them as failures."""
    return exc is not None and not isinstance(exc, Exception)


# What a day is left as when its work is cancelled, by what was interrupted (the words of note_cancelled)
CANCELLED_LEAVES = {
    "archiving": "nothing of the day was published (an earlier archive of it stays as it was)",
    "recording": "the day is archived (its object and manifest are in the bucket) and was being recorded in "
                 "Dagster; a run of the day finds it identical and records it again without uploading anything",
    "committing": "its manifest was on its way to the store and may still land: the day is then archived, else it "
                  "stays as it was; the next run of the day finds which",
    "removing": "the source keeps the day unless the removal had committed; a removal left marked 'pending' is "
                "settled by the next run of the day",
    # (Dagster's: the check a run makes of the archive it has just published, cut off; the day is recorded so)
    "checking the new archive": "the day's new archive is published (its object and manifest are in the bucket, in "
                                "place of any earlier archive of it) and recorded in Dagster as not verified; a run "
                                "of the day checks it (without overwrite it finds it identical and uploads nothing)",
    # (Dagster's: a run terminated after its commit, while it tidied the generation it replaced; recorded so)
    "tidying after the new archive": "the day's new archive is published (its object and manifest are in the "
                                     "bucket) and recorded in Dagster as not verified; what the run was tidying "
                                     "after it (the generation it replaced) is left for the next run of the day, "
                                     "which checks it (without overwrite it finds it identical and uploads nothing)",
    "recording the removal": "the day was removed from the source (its removal committed) and was being recorded "
                             "in Dagster; a run of the day finds it removed and records it again",
    "tidying": "the day is archived (its new manifest is in the bucket); what the run was tidying after it (the "
               "generation it replaced) is left for the next run of the day",
    "restoring": "the day's restore was rolled back",
    "waiting to retry": "it failed (its cause is above) and was waiting to be archived again: nothing of it was "
                        "published, an earlier archive of it stays as it was",
    "finishing": "the day's restore had committed: the day is restored; do not restore it again (a target without "
                 "the day column cannot tell it holds it)",
    "proving": "nothing was changed",
    "checking": "nothing was changed",
}


def note_cancelled(exc: BaseException, table: str, day: str, doing: str) -> None:
    """Record on a cancellation what it interrupted (``interrupted``: "archiving public.events 2024-03-10"),
    the innermost first: the command line names table and day in one line instead of a traceback."""
    if is_cancellation(exc) and getattr(exc, "interrupted", None) is None:
        try:
            exc.interrupted = f"{doing} {table} {day}"  # type: ignore[attr-defined]
            exc.cancelled_at = (doing, table, day)  # type: ignore[attr-defined]  # (the same, its parts)
        except (AttributeError, TypeError):  # an exception type without a __dict__
            pass


def renote_cancelled(exc: BaseException, table: str, day: str, doing: str) -> None:
    """Record what a cancellation interrupted where an inner step's note is no longer true: the step it named
    turned out to have completed (a manifest PUT whose answer was lost, found landed)."""
    if is_cancellation(exc):
        try:
            exc.interrupted = None  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            return
        note_cancelled(exc, table, day, doing)


_REFUSED = re.compile(r"permission denied for (schema|type|table|view|materialized view|sequence|foreign table|"
                      r"function|database|tablespace) (.+)")


def refused_kind(exc: BaseException) -> str | None:
    """The kind of object PostgreSQL's "permission denied for <kind> <name>" names (table, tablespace ...), or None."""
    found = _REFUSED.fullmatch(getattr(getattr(exc, "diag", None), "message_primary", None) or "")
    return found.group(1) if found else None


def refused_grant(exc: BaseException, table: str, user: str | None,
                  own_readable: bool | Callable[[], bool] = False, login: str | None = None) -> str | None:
    """The grant that PostgreSQL's "permission denied for <kind> <name>" asks for, where it is not the
    configured table's SELECT (which the remedies by what failed give): USAGE on a column type's schema or
    on the type, SELECT on a table a view reads (its owner's privilege, not the archiving role's).
    ``own_readable``: the role may read the configured relation (asked after the refusal), so a refused relation
    of the same name is another one it reads (a reporting view ``s.ev`` over ``raw.ev``); a callable is asked only
    where a refused relation has the configured one's name. ``login``: the session's login role, whose setting
    default_tablespace is (see :func:`with_roles`)."""
    found = _REFUSED.fullmatch(getattr(getattr(exc, "diag", None), "message_primary", None) or "")
    if found is None:
        return None
    kind, name = found.groups()
    role = sql_name(user, qualified=False) if user else "<role>"
    # the configured name splits at its first dot, as TableSpec splits it: "s.ev.v2" is the relation "ev.v2"
    own_schema, _, own_name = table.partition(".") if "." in table else ("", "", table)
    if kind == "tablespace":  # where the role's new tables go (default_tablespace): a restore's table, a partition
        return with_roles(f"GRANT CREATE ON TABLESPACE {sql_name(name, qualified=False)} TO <role>, or give the role "
                          "a tablespace it may use (ALTER ROLE <login role> RESET default_tablespace)", user, login)
    if kind == "schema" and name != own_schema:  # not the table's own schema
        return f"GRANT USAGE ON SCHEMA {sql_name(name, qualified=False)} TO {role}"  # (as printed: unquoted)
    if kind == "type":
        return f"GRANT USAGE ON TYPE {name} TO {role}"
    # (a function's and a relation's name are printed bare, unquoted and unqualified: quoted here as SQL reads them)
    if kind == "function":  # (a DBA's REVOKE EXECUTE ... FROM PUBLIC of a function we call: pg_export_snapshot, say)
        return (f"GRANT EXECUTE ON FUNCTION {sql_name(name, qualified=False)} TO {role} (as a superuser or the "
                "function's owner)")
    if kind in ("table", "view", "materialized view", "foreign table") and (
            name != own_name or (own_readable() if callable(own_readable) else own_readable)):
        quoted = sql_name(name, qualified=False)
        return (f"the role may not read {kind} {quoted}, which {table} reads (a view's, or a rule's): GRANT SELECT "
                f"ON {quoted} (in its schema) TO the owner of the view that reads it (a view reads with its owner's "
                f"privileges), or to {role} for a view with security_invoker")
    return None


def wrap(exc: BaseException, table: str, day: str, password: str | None = None, *,
         user: str | Callable[[], str] | None = None, login: str | None = None, database: str | None = None,
         standby: bool = False, doing: str = "archiving", temp_dir: str | None = None,
         own_readable: bool | Callable[[], bool] = False,
         waited: str | Callable[[], str | None] | None = None) -> ArchiveError:
    """``exc`` as an :class:`ArchiveError` naming ``table``, ``day``, the cause and the remedy, with the
    right ``retryable`` flag and no secret (``password``, URI credentials, ``password=``) in its text.
    ``standby``: the source is a hot standby, where a lost connection may be a silent recovery conflict.
    ``doing``: what failed, as the message begins ("archiving", "removing", "proving"). ``user`` and
    ``database`` fill in the remedy's statements (``GRANT ... TO <role>``, ``ON DATABASE <database>``); a callable
    ``user`` is asked only where the remedy names the role (a query on a session that may be in trouble); ``login``
    the session's login role, named by what applies at login (see :func:`with_roles`; default ``user``).
    ``temp_dir``: the directory of the operation's temp file, named where that file failed (full, too large).
    ``own_readable``: the role may read the configured relation (see :func:`refused_grant`).
    ``waited``: the row a lock_timeout waited for, where it waited for a row rather than a table's lock (asked only
    of a lock_timeout: see :func:`~archive_pipeline.core.source.row_waited`), told as :func:`_row_wait` words it.

    An :class:`ArchiveError` is returned itself, with table and day filled in. Raise the result
    ``from None``: a chained driver exception may hold the DSN.
    """
    if isinstance(exc, ArchiveError):
        exc.table, exc.day = exc.table or table, exc.day or day
        exc.message = redact(exc.message, password)
        exc.args = (exc.message,)
        return exc
    found = classify(exc, table=table)  # (its <role> filled in below)
    permission = found.cause == _PERMISSION.cause
    if permission and doing in _PERMISSION_FOR:
        found = replace(found, remedy=_PERMISSION_FOR[doing].replace("<table>", sql_name(table)))
    role = (user() if callable(user) else user) if permission or "<role>" in found.remedy or \
        "<login role>" in found.remedy and not login else None
    found = replace(found, remedy=with_roles(found.remedy, role, login))
    if permission and (refused := refused_grant(exc, table, role, own_readable, login)):
        found = replace(found, remedy=refused)
    if found.cause == _IDLE_TIMEOUT.cause and doing == "removing":  # no snapshot sessions: it waited on the store
        found = replace(found, cause="idle_in_transaction_session_timeout ended the removal's transaction while it "
                                     "waited for the store (its pending mark's PUT, the proven object's HEAD)",
                        remedy="retried automatically; if the store is that slow, raise the role's or the server's "
                               "idle_in_transaction_session_timeout (or source.idle_in_transaction_timeout_ms) above "
                               "the store's slowest answer")
    if found.cause == _STATEMENT_TIMEOUT.cause and doing == "removing":  # it read the day; then it waited to write
        found = replace(found, cause="statement_timeout: removing the day took longer than allowed (deleting, "
                                     "detaching or dropping it, or waiting for a lock on the table that another "
                                     "session holds: the wait counts too)",
                        remedy="retried automatically; if another session holds a lock on the table "
                               "(pg_blocking_pids(), pg_locks), the removal goes on once it ends; if the removal "
                               "itself takes longer, raise source.statement_timeout_ms (0 = no limit) in the archive "
                               "config, or (action delete) lower retention.batch_rows")
    if found.cause == _LOCK_TIMEOUT.cause and (row := waited() if callable(waited) else waited):
        found = _row_wait(found, row, doing)
    elif found.cause == _LOCK_TIMEOUT.cause and doing == "removing":  # its LOCK TABLE waits for writers too
        found = replace(found, cause="lock_timeout: another session holds a lock on the day's table that the "
                                     "removal's lock conflicts with: an open transaction that wrote rows of it (INSERT, "
                                     "UPDATE, DELETE: the removal locks writers out; for retention 'detach' or 'drop' "
                                     "readers too), or a DDL (ALTER TABLE, TRUNCATE, VACUUM FULL, REINDEX, LOCK ...)",
                        remedy=f"{RETRIED}; if it persists, find the session with pg_blocking_pids() / pg_locks and "
                               "let its transaction end (an application 'idle in transaction' holds its locks until "
                               "then), or raise source.lock_timeout_ms")
    if standby and found.cause == _CONNECTION_LOST.cause:
        found = replace(found, cause=_LOST_ON_STANDBY.cause, remedy=_LOST_ON_STANDBY.remedy)
    if database:
        found = replace(found, remedy=found.remedy.replace("<database>", sql_name(database, qualified=False)))
    if temp_dir is not None and found.cause in _TEMP_FILE_CAUSES:
        found = replace(found, cause=f"{found.cause} (the temp directory {temp_dir})",
                        remedy=f"{found.remedy} (temp_dir is the archive_store resource's setting; TMPDIR sets the "
                               f"default, and the command line's)")
    error_type = {"source": SourceError, "store": UploadError}.get(found.where, ArchiveError)
    detail = redact(_detail(exc), password)
    if found.cause == _BAD_DSN.cause:  # libpq quotes pieces of the string, perhaps of the password
        detail = scrub_parse_error(detail)
    code = f" SQLSTATE {found.sqlstate}" if found.sqlstate and found.sqlstate not in detail else ""
    message = (f"{doing} {table} for {day} failed: {found.cause} ({type(exc).__name__}{code}: {detail}); "
               f"{'transient, retried' if found.retryable else 'not retried: a retry cannot fix this'}")
    return error_type(message, table=table, day=day, retryable=found.retryable, remedy=remedy_for(found.remedy, doing),
                      cause=found.cause)


def _row_wait(found: Classification, row: str, doing: str) -> Classification:
    """``found`` (a lock_timeout) where the statement waited for ``row`` (a tuple of a relation), which another
    session's open transaction holds, rather than for a table's lock: told as a table's (ALTER TABLE, TRUNCATE ...),
    the operator looked in pg_locks for a DDL that did not exist, and the transaction holding the row went unnamed."""
    return replace(found, cause=f"lock_timeout: while {doing}, the session waited for a row, {row}, that another "
                                "session's open transaction holds (it updated, deleted or locked it: an UPDATE, a "
                                "SELECT ... FOR UPDATE, a child table's row referencing it; or inserted one of the "
                                "same key) and has not yet committed or rolled back",
                   remedy=f"{RETRIED}; if it persists, let that transaction end (pg_blocking_pids() of the waiting "
                          "session names it while it waits; pg_stat_activity shows it 'idle in transaction') and "
                          "try again, or raise source.lock_timeout_ms")


# --------------------------------------------------------------------------------------------------
# Connections


def _libpq_keywords() -> set[str]:
    try:
        from psycopg import pq

        return {d.keyword.decode() for d in pq.Conninfo.get_defaults()}
    except Exception:  # noqa: BLE001 - only used to keep harmless words in a scrubbed message
        return {"host", "hostaddr", "port", "dbname", "user", "password", "sslmode", "connect_timeout"}


def scrub_parse_error(text: str) -> str:
    """libpq's conninfo parse errors quote pieces of the string, which may be pieces of a password:
    keep quoted option names (and the "=" of 'missing "=" after ...'), replace every other quoted token."""
    keywords = _libpq_keywords() | {"="}
    kept: list[str] = []

    def keep(found: re.Match) -> str:  # an option name quoted whole: set aside, so it is not taken for a bound
        kept.append(found.group(0))
        return f"\x00{len(kept) - 1}\x00"

    text = re.sub(r'"([^"\n]*)"', lambda m: keep(m) if m.group(1) in keywords else m.group(0), text)
    # everything else from a line's first quote to its last: a password may hold quotes itself (pa"ss), and a
    # quote of its own must not be taken for the end of libpq's quoted piece
    lines = [re.sub(r'"[^\n]*"', '"***"', line) if line.count('"') > 1 else  # (an unpaired one: to the end)
             re.sub(r'"[^\n]*$', '"***', line) for line in text.split("\n")]
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], "\n".join(lines))


def connection_target(dsn: str) -> dict[str, str]:
    """Host, port, database and user a DSN points at (libpq's defaults and PG* variables filled in),
    for messages; never the password. Empty if the DSN cannot be parsed."""
    import os

    params = _conninfo(dsn)
    if params is None or _slash_in_password(dsn, params):  # malformed, or misread: say so, echo nothing
        return {}
    params = {**_service(params.get("service") or os.environ.get("PGSERVICE")), **params}  # the DSN's own win
    user = params.get("user") or os.environ.get("PGUSER") or _os_user()
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost (socket)"
    if _stray_in_host(params):
        host = "***@" + host.rsplit("@", 1)[1]
    return {"host": host,
            "port": params.get("port") or os.environ.get("PGPORT") or "5432",
            "database": params.get("dbname") or os.environ.get("PGDATABASE") or user,
            "user": user}


def _service(name: str | None) -> dict[str, str]:
    """The settings of connection service ``name`` as libpq reads them (the user's service file, then the
    system's), without its password; empty if there is none: a DSN ``service=archive`` named localhost and
    the OS user, which are nowhere in the settings."""
    import configparser
    import os

    if not name:
        return {}
    files = [os.environ.get("PGSERVICEFILE") or os.path.expanduser("~/.pg_service.conf")]
    if os.environ.get("PGSYSCONFDIR"):
        files.append(os.path.join(os.environ["PGSYSCONFDIR"], "pg_service.conf"))
    for path in files:
        parser = configparser.RawConfigParser(strict=False, interpolation=None)
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        if parser.has_section(name):
            return {k: v for k, v in parser.items(name) if k != "password"}
    return {}


def _stray_in_host(params: dict[str, str]) -> str | None:
    """What a URI's host holds before an '@': the rest of a password whose '@' was not percent-encoded
    (``postgresql://u:pa@ss@host/db`` is password 'pa' at host 'ss@host'), never shown."""
    host = params.get("host") or ""
    return host.rsplit("@", 1)[0] if "@" in host else None


def _slash_in_password(dsn: str, params: dict[str, str]) -> bool:
    """Whether a URI's user or password holds an unencoded '/' (base64 passwords do): libpq ends them at
    the first '/', so ``postgresql://u:pa/ss@host/db`` is host 'u', port 'pa' and database 'ss@host/db'
    (an '@' before the '/' makes the next piece the host): host, port and database are never shown."""
    database = params.get("dbname") or ""
    # (and an '@' then ':' in the password: its second half read as host and port, "ss:secret@host")
    return bool(re.match(r"postgres(?:ql)?://", dsn.lstrip(), re.IGNORECASE)) and (
        "@" in database or "@" in str(params.get("port") or ""))


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "<os user>"


def _reason(text: str) -> str:
    """The informative part of a libpq connect error: its FATAL/last line, one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = [line for line in lines if "FATAL:" in line]
    line = fatal[-1] if fatal else " ".join(lines)
    return " ".join(line.split())


def describe_connect_error(exc: BaseException, dsn: str, setting: str = "ARCHIVE_PG_DSN") -> SourceError:
    """A connect failure as a :class:`SourceError` saying host, port, database, user, the reason and
    what to do, naming ``setting`` (where the DSN came from: ARCHIVE_PG_PRIMARY_DSN for the primary's)
    in the remedy; never the password, whatever libpq echoed (a malformed URI comes back whole)."""
    described = _connect_error(exc, dsn)
    if setting != "ARCHIVE_PG_DSN" and described.remedy:
        described.remedy = described.remedy.replace("ARCHIVE_PG_DSN", setting)
    return described


def not_utf8(dsn: str) -> str | None:
    """Where ``dsn`` holds a byte that is not UTF-8, which libpq (through psycopg) cannot take, or None. Python reads
    such a byte of the environment (a value written in Latin-1) as a lone surrogate, and psycopg's UnicodeEncodeError
    then quotes the whole string, password and all: this says where, never what."""
    try:
        dsn.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"character {exc.start + 1} of its {len(dsn)} is a byte that is not UTF-8 (a value written in "
                "Latin-1 or another legacy encoding?)")
    return None


def _connect_error(exc: BaseException, dsn: str) -> SourceError:
    if (why := not_utf8(dsn)) is not None:  # (psycopg's UnicodeEncodeError, whose text is the DSN: never quoted)
        return SourceError(f"cannot connect to PostgreSQL: {_BAD_DSN.cause} ({why})", retryable=False,
                           remedy=f"write {_DSN} in UTF-8 (in a URI, percent-encode a password's other bytes as %XX)",
                           cause=_BAD_DSN.cause)
    params = _conninfo(dsn) or {}
    if _slash_in_password(dsn, params):  # libpq's reason names what it took for host, port or database
        return SourceError(f"cannot connect to PostgreSQL: {_BAD_DSN.cause} (a '/', or an '@' and then a ':', in the "
                           "user or password of the URI ends them there; libpq read the rest as host, port and "
                           "database)", retryable=False,
                           remedy=f"percent-encode each '/', '@' and ':' in the password (or user) of {_DSN} as %2F, "
                                  "%40 and %3A", cause=_BAD_DSN.cause)
    target = connection_target(dsn)
    found = classify(exc, user=target.get("user"))
    if target.get("database"):  # the remedy's statement with the database it is about
        found = replace(found, remedy=found.remedy.replace("<database>", sql_name(target["database"], qualified=False)))
    password = password_of(dsn)
    stray = _stray_in_host(params)
    if stray:
        found = replace(_BAD_DSN, remedy=f"percent-encode each '@' in the password (or user) of {_DSN} as %40: "
                        "libpq ends the password at its first '@'")
    text = redact(str(exc), password)
    if stray:  # as libpq quotes the host
        text = text.replace(f"{stray}@", "***@")
    if not target:
        found = _BAD_DSN  # psycopg could not parse it either
        reason = scrub_parse_error(_reason(text))
        message = f"cannot connect to PostgreSQL: {found.cause} ({reason})"
    else:
        if found.cause == _BAD_DSN.cause:
            text = scrub_parse_error(text)
        where = f"{target['host']}:{target['port']}, database {target['database']!r} as user {target['user']!r}"
        message = f"cannot connect to PostgreSQL at {where}: {found.cause} ({_reason(text)})"
    message = redact(message, password)
    return SourceError(message, retryable=found.retryable, remedy=found.remedy, cause=found.cause)


def _conninfo(dsn: str) -> dict[str, str] | None:
    """The DSN's parameters as libpq parses them (None: it cannot)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception:  # noqa: BLE001 - malformed: nothing to read
        return None


def password_of(dsn: str) -> str | None:
    """The password in ``dsn`` (URI or key=value form), to redact it from messages; None if it has none."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(dsn).get("password")
    except Exception:  # noqa: BLE001
        found = re.search(r"://[^:/@\s]*:([^@\s]+)@", dsn) or re.search(r"password\s*=\s*'?([^'\s]+)", dsn)
        password = unquote(found.group(1)) if found else None
    return str(password) if password else None

