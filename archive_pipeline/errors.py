"""Errors of the archiver, each saying whether trying the whole partition again can help.

Dagster's RetryPolicy retries what is transient (timeouts, dropped connections, serialization
failures, S3 throttling and 5xx); what needs a human (a missing table, a permission, a type the
format cannot hold, bad configuration) fails at once so nobody waits through the backoff.
"""

from __future__ import annotations

import re

import psycopg
import psycopg.errors as pg_errors

_URI_CREDENTIALS = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` without the given secrets or any password in a URI, safe for logs and metadata."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _URI_CREDENTIALS.sub(r"\1***@", text)


class ArchiveError(Exception):
    """Base error; ``table`` and ``day`` say which partition it concerns."""

    def __init__(self, message: str, *, table: str | None = None, day: str | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.table = table
        self.day = day
        self.retryable = retryable


class SourceError(ArchiveError):
    """Something about the PostgreSQL table itself (missing, no privilege, bad day column)."""


class UnsupportedTypeError(ArchiveError):
    """A column's type cannot be represented faithfully in the chosen format."""


class UploadError(ArchiveError):
    """The object store refused or corrupted an upload; the multipart upload was aborted."""


_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")  # connection, rollback, resources, operator, system
_TRANSIENT_S3_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                       "InternalError", "ServiceUnavailable", "BadDigest", "RequestLimitExceeded"}


def is_retryable(exc: BaseException) -> bool:
    """Whether running the partition again from scratch may succeed."""
    if isinstance(exc, ArchiveError):
        return exc.retryable
    if isinstance(exc, psycopg.Error):
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate is None:  # no server answer: the connection itself failed
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        if isinstance(exc, pg_errors.InsufficientPrivilege | pg_errors.InvalidAuthorizationSpecification
                      | pg_errors.InvalidPassword):
            return False
        return sqlstate.startswith(_TRANSIENT_SQLSTATE_CLASSES) or sqlstate == "55P03"  # lock_not_available
    try:
        from botocore.exceptions import ClientError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover - botocore is a dependency
        return False
    if isinstance(exc, BotoConnectionError | ReadTimeoutError):
        return True
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _TRANSIENT_S3_CODES or status >= 500 or status == 429
    return isinstance(exc, TimeoutError | ConnectionError)
