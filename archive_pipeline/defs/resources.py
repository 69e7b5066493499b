"""Dagster resources: the source database and the archive bucket, configured from the environment.

Every endpoint and secret arrives through ``EnvVar`` (see definitions.py), so no DSN, password or
key appears in the YAML file, the Dagster UI's run config, logs or metadata.
"""

import contextlib
from typing import Any
from collections.abc import Iterator

import psycopg
from dagster import ConfigurableResource, Failure, ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import Field, field_validator

from archive_pipeline.core.boto import new_session
from archive_pipeline.core.config import ConfigError
from archive_pipeline.core.environment import default_connect_timeout, endpoint_has_credentials
from archive_pipeline.core.errors import (ArchiveError, SourceError, classify, connection_target, describe_connect_error,
                                          password_of, redact, wrap)
from archive_pipeline.core.store import MiB, S3Store
from archive_pipeline.core.session_settings import CONNECT_PARAMETERS, session_pinned, set_session, watch_client


class PostgresResource(ConfigurableResource):
    """Connections to the source database; timeouts bound every statement of an extraction."""

    dsn: str = Field(description="libpq connection string or URI (from an environment variable)")
    statement_timeout_ms: int = Field(default=0, ge=0, description="per statement; 0 = no limit. "
                                      "One COPY is one statement, so this bounds a whole day's read")
    lock_timeout_ms: int = Field(default=30_000, ge=0, description="how long to wait for a lock; 0 = forever")
    idle_in_transaction_timeout_ms: int = Field(default=600_000, ge=0)
    connect_timeout_s: int = Field(default=10, ge=1, description="how long a connect waits, when neither the DSN's "
                                   "connect_timeout nor $PGCONNECT_TIMEOUT says")
    dsn_setting: str = Field(default="ARCHIVE_PG_DSN", description="where the DSN is set, named by the remedies of "
                             "a refused login (ARCHIVE_PG_PRIMARY_DSN for the primary's)")
    application_name: str = "archive_pipeline"

    @field_validator("dsn")
    @classmethod
    def _strip(cls, value: str) -> str:
        """Without the whitespace around it, as the command line reads it: a secret mounted from a file
        often ends in a newline, and every run then failed on the database 'postgres\\n'."""
        return value.strip()

    @contextlib.contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection, closed on exit.

        A connect failure becomes a :class:`SourceError` naming host, port, database, user, the
        reason and the remedy, retryable only when waiting can help (server down or full, not a
        wrong password or a missing database); libpq's text never reaches it unscrubbed, because
        it may hold the password (a malformed URI is echoed whole).
        """
        failure: SourceError | None = None
        try:
            conn = psycopg.connect(self.dsn, autocommit=True,
                                   **default_connect_timeout(self.dsn, self.connect_timeout_s),
                                   application_name=self.application_name, **CONNECT_PARAMETERS)
        except (psycopg.Error, UnicodeEncodeError) as exc:  # (a DSN not UTF-8: see errors.not_utf8)
            failure = describe_connect_error(exc, self.dsn, self.dsn_setting)
        if failure is not None:  # raised outside the except block: no chained driver error holding the DSN
            raise failure
        try:
            # the source: timeouts for everything the session does (an archive's snapshot sets them again,
            # locally); a removal's LOCK must give up after lock_timeout_ms, not queue every reader behind it
            try:  # SET: no snapshot, which a role's serializable deferrable default waited for (see set_session)
                set_session(conn, {**self.session_settings(), **session_pinned(conn)})
                watch_client(conn)
            except psycopg.Error as exc:
                found = classify(exc)
                raise SourceError(f"setting up the session failed: {type(exc).__name__}: {redact(str(exc), self.password)}",
                                  retryable=found.retryable, cause=found.cause, remedy=found.remedy) from None
            yield conn
        finally:
            conn.close()

    @property
    def password(self) -> str | None:
        """The DSN's password, so error messages can be scrubbed of it."""
        return password_of(self.dsn)

    @property
    def user(self) -> str | None:
        """The role the DSN connects as, for remedies such as ``GRANT SELECT ... TO <role>``."""
        return connection_target(self.dsn).get("user")

    def wrap_error(self, exc: BaseException, table: str, day: str) -> ArchiveError:
        """``exc`` as an :class:`ArchiveError` for ``table``/``day`` with cause, remedy, retry flag and
        this DSN's password scrubbed (see :func:`archive_pipeline.core.errors.wrap`)."""
        return wrap(exc, table, day, self.password, user=self.user)

    def session_settings(self) -> dict[str, str]:
        return {
            "statement_timeout": str(self.statement_timeout_ms),
            "lock_timeout": str(self.lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(self.idle_in_transaction_timeout_ms),
        }


POOL_CONNECTIONS = 66  # max_concurrency's bound (64), and the manifest's and listing's requests beside the parts


class ArchiveS3Resource(S3Resource):
    """dagster-aws's S3Resource as the archive needs it (the default resources use it; any S3Resource works):
    the white space around its settings removed when they are read (a value mounted from a file ends in a
    newline: botocore put it into the Authorization header, and every request failed as if the network had
    broken off), as the command line reads the same variables; and a connection pool for every part in flight."""

    @field_validator("region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                     "endpoint_url", check_fields=False)
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() or None if isinstance(value, str) else value

    def get_client(self) -> Any:
        """dagster-aws's client, with a connection pool for every part ``max_concurrency`` (at most 64) keeps in
        flight: botocore's default of 10 opened a new connection for each part beyond it, and logged
        "Connection pool is full, discarding connection" for each."""
        from botocore.config import Config
        from dagster_aws.s3.utils import construct_boto_client_retry_config, disable_signing

        session = new_session(profile_name=self.profile_name)
        client = session.client(
            "s3", region_name=self.region_name, use_ssl=self.use_ssl, verify=self.verify,
            endpoint_url=self.endpoint_url, aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key, aws_session_token=self.aws_session_token,
            config=construct_boto_client_retry_config(self.max_attempts).merge(
                Config(max_pool_connections=POOL_CONNECTIONS)))
        if self.use_unsigned_session:
            client.meta.events.register("choose-signer.s3.*", disable_signing)
        return client


class ArchiveStoreResource(ConfigurableResource):
    """The bucket and prefix archives are written to, through dagster-aws's S3 resource."""

    s3: ResourceDependency[S3Resource]
    bucket: str
    prefix: str = ""
    part_size_mb: int = Field(default=8, ge=5, le=5120, description="multipart part size; 10,000 parts at most")
    max_concurrency: int = Field(default=4, ge=1, le=64, description="parts uploaded at once")
    equal_parts: bool = Field(default=False, description="every part but the last the same size, as Cloudflare "
                              "R2 requires (one day's object is then at most part size x 10,000); by default parts "
                              "grow past the 1,000th, so a day of any size fits")
    verify_etags: bool = Field(default=True, description="compare each part's ETag with its MD5 (turn off "
                               "only for stores that encrypt with SSE-KMS or otherwise change ETags)")
    temp_dir: str | None = Field(default=None, description="where temp files go; default: the system temp dir")
    server_side_encryption: str | None = Field(default=None, description="AES256 or aws:kms, sent with every object "
                                               "write (as a bucket policy that denies unencrypted writes asks); "
                                               "default: none sent, the bucket's default encryption applies")
    sse_kms_key_id: str | None = Field(default=None, description="the KMS key (id or ARN) aws:kms encrypts with; "
                                       "default: the bucket's key, else the account's aws/s3 key")

    @field_validator("bucket", "prefix")
    @classmethod
    def _strip(cls, value: str) -> str:
        """Without the whitespace around it (a trailing newline of a mounted secret), as the command line."""
        return value.strip()

    @field_validator("temp_dir", "server_side_encryption", "sse_kms_key_id")
    @classmethod
    def _blank_is_default(cls, value: str | None) -> str | None:
        """A field left blank (``temp_dir: ""``, an unset variable's empty text) is the default (for temp_dir TMPDIR
        else the system temp dir, never the code server's working directory), as a blank AWS_PROFILE is unset."""
        return (value.strip() or None) if value is not None else None

    def store(self) -> S3Store:
        """The store; refuses an endpoint with a user or secret in it (``http://key:secret@minio``), as the
        environment's is refused at load: boto3 never signs with them, and its errors quote the URL whole."""
        endpoint = getattr(self.s3, "endpoint_url", None)
        if endpoint and endpoint_has_credentials(endpoint):
            raise ConfigError("the S3 resource's endpoint_url holds a user or secret (not shown): boto3 ignores "
                              "them (it signs with the resource's aws_access_key_id and aws_secret_access_key, or "
                              "its usual chain) and would show them in its error messages; remove the "
                              "'user:secret@' part, e.g. http://minio:9000, and give the keys as those settings")
        return S3Store(self.s3.get_client(), self.bucket, prefix=self.prefix, part_size=self.part_size_mb * MiB,
                       max_concurrency=self.max_concurrency, verify_etags=self.verify_etags,
                       equal_parts=self.equal_parts, server_side_encryption=self.server_side_encryption,
                       sse_kms_key_id=self.sse_kms_key_id)

    def store_for(self, what: str) -> S3Store:
        """:meth:`store`, or the step's failure naming ``what`` ("<table> <day>") and the setting to fix: a
        client that cannot be built (an endpoint without its scheme) fails at once, since no retry helps."""
        try:
            return self.store()
        except Exception as exc:  # noqa: BLE001 - botocore's ValueError, our ConfigError: the settings are wrong
            raise Failure(description=f"{what}: the S3 client cannot be built ({type(exc).__name__}: "
                                      f"{redact(str(exc))}); fix the archive_store resource's settings (endpoint_url "
                                      "with its scheme, e.g. http://minio:9000; region; bucket; "
                                      "server_side_encryption) or the ARCHIVE_S3_* "
                                      "environment", allow_retries=False) from None
