"""Connections from the environment, for code that runs outside Dagster (the command line).

The same variables as the code location (see definitions.py): ``ARCHIVE_PG_DSN`` (and
``ARCHIVE_PG_PRIMARY_DSN``, the primary, when that one is a hot standby), ``ARCHIVE_S3_BUCKET``,
``ARCHIVE_S3_PREFIX``, ``ARCHIVE_S3_ENDPOINT_URL``, ``ARCHIVE_S3_REGION``,
``ARCHIVE_S3_ACCESS_KEY_ID`` / ``ARCHIVE_S3_SECRET_ACCESS_KEY``, ``ARCHIVE_S3_SSE`` /
``ARCHIVE_S3_SSE_KMS_KEY_ID``. No error raised here carries the DSN's password or a secret key.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import psycopg
import psycopg.conninfo

from archive_pipeline.core.boto import env_profile, new_session
from archive_pipeline.core.config import ArchiveConfig, ConfigError, SourceSettings, config_path
from archive_pipeline.core.errors import (classify, describe_connect_error, missing_grant, not_utf8, password_of,
                                         permission_remedy, redact, scrub_parse_error)
from archive_pipeline.core.session_settings import CONNECT_PARAMETERS
from archive_pipeline.core.store import CLOCK_SKEW_ALLOWED, S3Store, encryption_headers

DSN_VAR = "ARCHIVE_PG_DSN"
PRIMARY_DSN_VAR = "ARCHIVE_PG_PRIMARY_DSN"
BUCKET_VAR = "ARCHIVE_S3_BUCKET"
PREFIX_VAR = "ARCHIVE_S3_PREFIX"
ENDPOINT_VAR = "ARCHIVE_S3_ENDPOINT_URL"
REGION_VAR = "ARCHIVE_S3_REGION"
KEY_ID_VAR = "ARCHIVE_S3_ACCESS_KEY_ID"
SECRET_VAR = "ARCHIVE_S3_SECRET_ACCESS_KEY"
VERIFY_ETAGS_VAR = "ARCHIVE_S3_VERIFY_ETAGS"
EQUAL_PARTS_VAR = "ARCHIVE_S3_EQUAL_PARTS"
SSE_VAR = "ARCHIVE_S3_SSE"
SSE_KMS_KEY_VAR = "ARCHIVE_S3_SSE_KMS_KEY_ID"


class UnreachableError(Exception):
    """The source database or the object store cannot be reached (or refuses us); the message says
    which and what to check, without secrets. ``retryable``: whether trying again later may work (a
    server down or full) or a setting must change first (a wrong password, a missing database)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


# Variables whose values are secrets: a value swapped into another variable is not quoted back.
_SECRET_VARS = (SECRET_VAR, "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD")
# An AWS secret access key (40 characters of base64) or session token, whichever variable it was put in
_SECRET_SHAPE = re.compile(r"[A-Za-z0-9/+=]{40,}")


def _quoted(value: str, env: Mapping[str, str] | None = None, *, public: bool = False) -> str:
    """A variable's value as a message about it quotes it, without the credentials of a URI or a
    ``password=`` in it: variables get swapped, and a DSN set as the bucket was printed whole. Nor is
    a value shown that holds another variable's secret, or has the shape of an S3 secret key (the secret
    pasted into the bucket's variable was printed as "not a bucket name"), unless it is ``public``: the key
    prefix is in every key, listing and manifest, so hiding it protects nothing, and any folder path of 40
    characters has that shape (the refusal of a doubled '/' withheld the path the '//' was in)."""
    env = os.environ if env is None else env
    dsn = env.get(DSN_VAR)
    text = redact(value, *(env.get(name) for name in _SECRET_VARS), password_of(dsn) if dsn else None)
    if not public and _SECRET_SHAPE.search(text):
        return "(not shown: it has the shape of a secret key)"
    return repr(text)


def _required(env: Mapping[str, str], name: str, what: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"${name} is not set: export it with {what}")
    return value


def dsn_password(dsn: str) -> str | None:
    """The DSN's password, to hide it (see :func:`password_of`: also of a DSN libpq cannot parse or take)."""
    return password_of(dsn)


def connect_source(env: Mapping[str, str] | None = None, *, connect_timeout: int = 10) -> psycopg.Connection:
    """An autocommit connection to ``$ARCHIVE_PG_DSN``, waiting ``connect_timeout`` seconds at most unless the
    DSN or ``$PGCONNECT_TIMEOUT`` says otherwise (see :func:`default_connect_timeout`).

    Raises :class:`ConfigError` when the variable is unset or malformed and :class:`UnreachableError`
    when the server cannot be reached or refuses the login; neither message contains the password.
    """
    env = os.environ if env is None else env
    return _connect(_required(env, DSN_VAR, "the source database's libpq URI or key=value string"), DSN_VAR,
                    connect_timeout)


def connect_primary(env: Mapping[str, str] | None = None, *, connect_timeout: int = 10) -> psycopg.Connection | None:
    """An autocommit connection to ``$ARCHIVE_PG_PRIMARY_DSN``, or None when it is not set (the source
    is then the primary too). What writes (removals, restores) and what needs a writable scratch
    database beside a hot standby (deep verification) goes there, as in the code location."""
    env = os.environ if env is None else env
    dsn = env.get(PRIMARY_DSN_VAR, "").strip()
    return _connect(dsn, PRIMARY_DSN_VAR, connect_timeout) if dsn else None


def _env_file_quotes(value: str) -> bool:
    """Whether ``value`` is wrapped in the quotes of an env file that a tool kept (``docker --env-file``,
    systemd's EnvironmentFile without quoting): ``"postgresql://..."`` or ``'archive'``."""
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""


def check_dsn(dsn: str, variable: str) -> None:
    """A connection string libpq can parse, with a number for every port, or a :class:`ConfigError` naming the
    variable (never the password): a string no connection can be made with is a setting to fix, at load."""
    if _env_file_quotes(dsn.strip()):
        quote = dsn.strip()[0]
        raise ConfigError(f"${variable} is wrapped in quotes ({quote}...{quote}), which the tool that set "
                          "it kept (docker --env-file and systemd's EnvironmentFile take quotes literally): remove the "
                          "quotes around the value")
    if (why := not_utf8(dsn)) is not None:  # psycopg's UnicodeEncodeError would quote the whole string
        raise ConfigError(f"${variable} is not a valid connection string: {why}: write it in UTF-8 (in a URI, "
                          "percent-encode a password's other bytes as %XX)")
    try:
        options = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:  # libpq quotes the piece it stumbled on: a URI whole, or the password's
        reason = scrub_parse_error(redact(str(exc).strip(), dsn, password_of(dsn)))  # (the password, as guessed)
        raise ConfigError(f"${variable} is not a valid connection string: {reason}") from None
    ports = [p.strip() for p in str(options.get("port") or "").split(",")]
    if any(p and not (p.isascii() and p.isdigit()) for p in ports):  # never quoted: it may be a password's piece (a '/' in it)
        raise ConfigError(f"${variable} is malformed: its port is not a number; in a URI a password (or user) "
                          "holding '/', '@', ':' or '?' must be percent-encoded (%2F, %40, %3A, %3F)")


def default_connect_timeout(dsn: str, seconds: int) -> dict[str, int]:
    """``connect_timeout=seconds`` as a keyword of ``psycopg.connect``, or nothing when the DSN names its own
    ``connect_timeout`` or ``$PGCONNECT_TIMEOUT`` (libpq's variable) is set: psycopg puts keywords over the
    DSN's, so a hard-coded value replaced the user's (a hung server waited 10 s whatever the DSN said). A blank
    variable counts as unset, as every other variable here does; a DSN that cannot be parsed gets ``seconds``
    (the connect then fails on its syntax, and says so)."""
    try:
        given = "connect_timeout" in psycopg.conninfo.conninfo_to_dict(dsn)
    except (psycopg.ProgrammingError, UnicodeEncodeError):  # (not UTF-8: the connect says so, see not_utf8)
        given = False
    return {} if given or os.environ.get("PGCONNECT_TIMEOUT", "").strip() else {"connect_timeout": seconds}


def _connect(dsn: str, variable: str, connect_timeout: int) -> psycopg.Connection:
    check_dsn(dsn, variable)
    try:
        return psycopg.connect(dsn, autocommit=True, **default_connect_timeout(dsn, connect_timeout),
                               application_name="archive_pipeline_cli", **CONNECT_PARAMETERS)
    except psycopg.Error as exc:
        described = describe_connect_error(exc, dsn, variable)  # host, port, database, user, cause; no password
        raise UnreachableError(f"{described.message} (${variable}); to fix: {described.remedy}",
                               retryable=described.retryable) from None


def endpoint_has_credentials(url: str) -> bool:
    """True when the endpoint URL carries a user or secret (``http://key:secret@minio``): boto3 never signs
    with them, and its error messages quote the URL whole. The one test, for the environment variable and
    for the Dagster resource's setting. Not the netloc's '@' alone: a secret written unencoded may hold '/' (AWS's
    keys do), '?' or '#', where urlsplit ends the netloc, and its '@' then stands in what it takes for the path,
    query or fragment; an endpoint has no use for an '@' in any of them, so one anywhere counts (as it does in a
    URL too malformed to split)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "@" in url
    return "@" in parts.netloc + parts.path + parts.query + parts.fragment


def check_endpoint_url(url: str | None, bucket: str | None = None) -> None:
    """An endpoint botocore can use, or a :class:`ConfigError` naming the variable: without its scheme
    (``minio:9000``) every run failed with a bare "ValueError: Invalid endpoint", retried with backoff,
    and the command line printed botocore's traceback. Credentials in the URL (``http://key:secret@minio``)
    are refused: botocore never uses them, and its errors quote the URL whole. So is a path ending in the
    ``bucket``'s name (a console's "S3 API" URL pasted whole): botocore puts the bucket after the endpoint's
    path, and every request went to /<bucket>/<bucket>, "bucket does not exist"."""
    if not url:
        return
    shown = "(not shown: it holds credentials)" if "@" in url else repr(url)
    if any(c.isspace() for c in url):  # urlsplit drops a newline, botocore does not: "Invalid endpoint" every run
        raise ConfigError(f"{ENDPOINT_VAR} {shown} holds whitespace (a secret mounted from a file often ends in a "
                          "newline): write the URL alone, e.g. http://minio:9000")
    if endpoint_has_credentials(url):  # boto3 signs with the keys, never these: they only reached its messages and logs
        # (before the URL's other checks: a secret holding '/' made its "port" no number, refused as no URL)
        raise ConfigError(f"{ENDPOINT_VAR} {shown}: boto3 ignores a user or secret in the URL (it signs with "
                          f"${KEY_ID_VAR} and ${SECRET_VAR}, or its usual chain) and would show them in its error "
                          "messages: remove the 'user:secret@' part, e.g. http://minio:9000, and set the keys in "
                          "those variables")
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a port that is not a number, or out of range
        usable = False
    if not usable:
        raise ConfigError(f"{ENDPOINT_VAR} {shown} is not an http(s) URL: write it with its scheme and host, "
                          "e.g. http://minio:9000 or https://<account>.r2.cloudflarestorage.com (unset it for AWS)")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):  # botocore: "not a valid URI", every run
        raise ConfigError(f"{ENDPOINT_VAR} {shown} has a query or fragment ('?...' or '#...'), which an endpoint "
                          "cannot have: write the scheme, host and port alone, e.g. http://minio:9000 (the region "
                          f"goes in ${REGION_VAR})")
    if bucket and parts.path.rstrip("/").rsplit("/", 1)[-1] == bucket.strip():
        raise ConfigError(f"{ENDPOINT_VAR} {shown} ends in the bucket's name, which botocore adds after the "
                          f"endpoint itself: write the scheme, host and port alone (e.g. "
                          f"{parts.scheme}://{parts.netloc}); the bucket goes in ${BUCKET_VAR} alone")


def s3_setting(env: Mapping[str, str], name: str) -> str | None:
    """An ARCHIVE_S3_* variable without the white space around it (a value mounted from a file ends in a
    newline, which botocore put into the Authorization header, failing every request as "broken off"), or
    None when unset or blank."""
    return (env.get(name) or "").strip() or None


def check_s3_settings(env: Mapping[str, str]) -> None:
    """The prefix must read back as written at the front of every key (no '.'/'..' part, no control
    character), and the region and access key id can hold no white space inside: a :class:`ConfigError`
    naming the variable, at load, instead of keys written under another folder or every run retried."""
    check_prefix(s3_setting(env, PREFIX_VAR), f"${PREFIX_VAR}")
    server_side_encryption(env)
    verify_etags(env)
    equal_parts(env)
    _check_botocore_settings(env)
    for name in (REGION_VAR, KEY_ID_VAR):
        value = s3_setting(env, name)
        if value and any(c.isspace() or not c.isprintable() for c in value):
            raise ConfigError(f"${name} {_quoted(value)} holds white space or a control character: write the "
                              "value alone")
    region = s3_setting(env, REGION_VAR)
    if region:  # botocore's own check, which every run's client would fail (the command line refuses it up front)
        from botocore.exceptions import InvalidRegionError
        from botocore.utils import validate_region_name

        try:
            validate_region_name(region)
        except InvalidRegionError:
            raise ConfigError(f"${REGION_VAR} {_quoted(region, env)} is not a region name: set it to the store's "
                              "region (e.g. us-east-1, eu-central-1; R2: auto), or unset it for us-east-1") from None


def server_side_encryption(env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """$ARCHIVE_S3_SSE (AES256 or aws:kms) and $ARCHIVE_S3_SSE_KMS_KEY_ID, as the archive_store resource's
    ``server_side_encryption`` and ``sse_kms_key_id`` (which the default resources take from them): sent with every
    object write, as a bucket policy that denies unencrypted writes asks. A value S3 does not take, or a key id
    without aws:kms, fails the load naming the variables."""
    env = os.environ if env is None else env
    settings = {"server_side_encryption": s3_setting(env, SSE_VAR), "sse_kms_key_id": s3_setting(env, SSE_KMS_KEY_VAR)}
    try:
        encryption_headers(*settings.values())
    except ValueError as exc:
        raise ConfigError(f"${SSE_VAR} / ${SSE_KMS_KEY_VAR}: {exc} (unset both for the bucket's default "
                          "encryption)") from None
    return settings


def verify_etags(env: Mapping[str, str] | None = None) -> bool:
    """$ARCHIVE_S3_VERIFY_ETAGS: false for a store whose ETags are not MD5s (SSE-KMS), as the archive_store
    resource's ``verify_etags`` (which the default resources take from it): the command line could not read
    such a bucket at all. Unset, it is false where $ARCHIVE_S3_SSE asks for aws:kms (whose objects' ETags are never
    their MD5s), else true. Anything but true/false fails the load naming the variable."""
    env = os.environ if env is None else env
    return _flag(env, VERIFY_ETAGS_VAR, s3_setting(env, SSE_VAR) != "aws:kms",
                 "set it to false for a store whose ETags are not MD5s (SSE-KMS), or unset it")


def equal_parts(env: Mapping[str, str] | None = None) -> bool:
    """$ARCHIVE_S3_EQUAL_PARTS: true for a store that takes only parts of one size (Cloudflare R2), as the
    archive_store resource's ``equal_parts`` (which the default resources and the command line take from it)."""
    return _flag(os.environ if env is None else env, EQUAL_PARTS_VAR, False,
                 "set it to true for a store that takes only parts of one size (Cloudflare R2), or unset it")


def _flag(env: Mapping[str, str], name: str, default: bool, advice: str) -> bool:
    """A true/false variable; anything else fails the load naming it."""
    value = (s3_setting(env, name) or str(default)).lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ConfigError(f"${name} {_quoted(value)} is not true or false: {advice}")
    return value in ("true", "1", "yes", "on")


def check_prefix(prefix: str | None, setting: str) -> None:
    """A key prefix that reads back as written at the front of every key, or a :class:`ConfigError` naming
    ``setting`` (the variable, or the resource's field) that holds it."""
    if prefix:
        from archive_pipeline.core.keys import prefix_problem

        problem = prefix_problem(prefix)
        if _env_file_quotes(prefix):  # a folder named "archive" in quotes: the days under archive/ never found
            problem = ("the quotes of an env file, which the tool that set it kept (docker --env-file takes quotes "
                       "literally): remove the quotes around the value")
        if problem:
            raise ConfigError(f"{setting} {_quoted(prefix, public=True)} cannot begin the archives' keys: it holds "
                              f"{problem}; set it to a plain folder name such as archive or team/archive")


def check_keys_fit(config: ArchiveConfig, prefix: str) -> None:
    """Every table's keys under ``prefix`` are short enough for S3, or a :class:`ConfigError` naming them."""
    from archive_pipeline.core.keys import check_key_lengths

    try:
        check_key_lengths(config.tables, prefix)
    except ValueError as exc:
        raise ConfigError(f"{config.origin or config_path()}: {exc}") from None


def check_key_pair(env: Mapping[str, str]) -> None:
    """Both S3 keys or neither, or a :class:`ConfigError` naming them: with one alone boto3 refuses to sign
    ("partial credentials"), so the code location loaded and then failed every run and check on it."""
    if bool(s3_setting(env, KEY_ID_VAR)) != bool(s3_setting(env, SECRET_VAR)):  # (as they are used: stripped)
        raise ConfigError(f"set both ${KEY_ID_VAR} and ${SECRET_VAR}, or neither (boto3's usual chain)")


BUCKET_SYNTAX = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")  # what botocore accepts before sending anything


def check_bucket_name(bucket: str) -> None:
    """A bucket name botocore will send, or a :class:`ConfigError` naming the variable: in the code
    location a name with a '/' (a key prefix put in the bucket) or a space loaded, and every run then
    failed with "check ARCHIVE_S3_REGION and ARCHIVE_S3_ENDPOINT_URL", the wrong variables. (ARNs of
    access points are left to botocore; names valid only for old buckets, with capitals or '_', pass.)"""
    if bucket.startswith("arn:") or BUCKET_SYNTAX.match(bucket):
        return
    hint = f" (a key prefix goes in ${PREFIX_VAR})" if "/" in bucket else ""
    raise ConfigError(f"${BUCKET_VAR} {_quoted(bucket)} is not a bucket name (S3's are 3 to 63 lower-case letters, "
                      f"digits, dots and hyphens): set it to the archive bucket's name{hint}")


_CHECKSUM_VARS = ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")  # (the README's advice)


def _check_botocore_settings(env: Mapping[str, str]) -> None:
    """The AWS_* variables botocore reads that no client can be built with (a checksum setting it does not know,
    a profile not defined): refused at load naming them, where every run failed as a store "lost"."""
    for name in _CHECKSUM_VARS:
        value = env.get(name)
        if value is not None and value.lower() not in ("when_supported", "when_required"):  # (as botocore reads it)
            raise ConfigError(f"${name} {_quoted(value)} is not when_supported or when_required (botocore's two "
                              "values; note the underscore): set one of them, or unset it")
    found = env_profile(env)  # (a blank one is unset, for botocore too: see new_session)
    if found:
        profile_variable, profile = found
        import botocore.session

        import botocore.exceptions

        session = botocore.session.Session()
        for name, variable in (("config_file", "AWS_CONFIG_FILE"), ("credentials_file", "AWS_SHARED_CREDENTIALS_FILE")):
            if env.get(variable):  # (the env given, which may not be os.environ)
                session.set_config_variable(name, env[variable])
        try:
            profiles = session.available_profiles
        except botocore.exceptions.BotoCoreError as exc:  # a config file botocore cannot parse
            raise ConfigError(f"the AWS config or credentials file cannot be read ({exc}): fix it, or point "
                              "$AWS_CONFIG_FILE / $AWS_SHARED_CREDENTIALS_FILE at a valid one") from None
        if profile not in profiles:
            raise ConfigError(_botocore_setting(f"the config profile ({profile}) could not be found", profile_variable))


def _botocore_setting(exc: Exception | str, profile_variable: str = "AWS_PROFILE") -> str:
    """A botocore setting from the environment that no client can be built with, named with its fix."""
    if isinstance(exc, str) or type(exc).__name__ == "ProfileNotFound":
        return (f"${profile_variable} names a profile that is not in the AWS config or credentials file ({exc}): set "
                "it to one defined there (aws configure list-profiles), or unset it and set the keys in "
                f"${KEY_ID_VAR} and ${SECRET_VAR}")
    return (f"an AWS checksum setting is not one botocore knows ({exc}): set $AWS_REQUEST_CHECKSUM_CALCULATION and "
            "$AWS_RESPONSE_CHECKSUM_VALIDATION to when_supported or when_required (or unset them)")


def store_from_env(env: Mapping[str, str] | None = None, *, check: bool = True) -> S3Store:
    """The archive bucket as an :class:`S3Store`, with boto3 built from the environment.

    ``check`` asks the store for the bucket once (HEAD), so an unreachable endpoint, a missing bucket
    or refused credentials fail here with :class:`UnreachableError` instead of in the middle of a run.
    """
    from botocore.config import Config
    from botocore.exceptions import (BotoCoreError, ClientError, CredentialRetrievalError,
                                     InvalidChecksumConfigError, InvalidRegionError, NoCredentialsError,
                                     ParamValidationError, PartialCredentialsError, ProfileNotFound,
                                     ProxyConnectionError, SSLError)

    env = os.environ if env is None else env
    bucket = _required(env, BUCKET_VAR, "the name of the archive bucket")
    options: dict[str, object] = {"region_name": s3_setting(env, REGION_VAR) or "us-east-1"}
    if env.get(ENDPOINT_VAR):
        options["endpoint_url"] = env[ENDPOINT_VAR]
    check_key_pair(env)
    check_s3_settings(env)
    if s3_setting(env, KEY_ID_VAR):
        options["aws_access_key_id"] = s3_setting(env, KEY_ID_VAR)
        options["aws_secret_access_key"] = s3_setting(env, SECRET_VAR)
    check_endpoint_url(env.get(ENDPOINT_VAR), bucket)
    try:
        # a session of its own, not boto3's default one, which keeps the first credentials it read from the
        # environment's chain for the life of the process (a token rotated since, a second store in one process)
        client = new_session().client("s3", config=Config(
            connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}), **options)
    except (ProfileNotFound, InvalidChecksumConfigError) as exc:  # a setting of botocore's own chain: name it
        raise ConfigError(_botocore_setting(exc)) from None
    except InvalidRegionError:
        raise ConfigError(f"${REGION_VAR} {_quoted(str(options['region_name']), env)} is not a region name: set it to "
                          "the store's region (e.g. us-east-1, eu-central-1; R2: auto), or unset it for us-east-1") \
            from None
    store = S3Store(client, bucket, prefix=s3_setting(env, PREFIX_VAR) or "", verify_etags=verify_etags(env),
                    equal_parts=equal_parts(env), **server_side_encryption(env))
    if check:
        try:
            client.head_bucket(Bucket=bucket)
        except ParamValidationError:  # botocore's own check, before any request: no store was asked
            hint = f" (a key prefix goes in ${PREFIX_VAR})" if "/" in bucket else ""
            raise ConfigError(f"${BUCKET_VAR} {_quoted(bucket, env)} is not a bucket name (S3's are 3 to 63 lower-case "
                              f"letters, digits, dots and hyphens): set it to the archive bucket's name{hint}") \
                from None
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            region = headers.get("x-amz-bucket-region")
            # 403 (refused) and 400 (S3's status for an expired or invalid session token) without another region's
            # header: their cause is in a code, which a HEAD's answer has no body for
            if (status == 403 or status == 400 and region in (None, client.meta.region_name)) and \
                    (other := _refused_for_another_cause(client, bucket, exc)) is not None:
                cause, remedy, retryable = other
                raise UnreachableError(f"bucket {bucket!r} refused HeadBucket ({status}) at "
                                       f"{env.get(ENDPOINT_VAR) or 'AWS S3'}: {cause}: {remedy}",
                                       retryable=retryable) from None
            if status in (301, 307, 400) and region and region != client.meta.region_name:
                # a HEAD's answer has no body: the bucket's region, in a header, says it (a redirect, or a request
                # signed for another region); the same on every retry
                raise UnreachableError(f"bucket {bucket!r} is in region {region!r}, not {client.meta.region_name!r} "
                                       f"(HeadBucket answered {status}): set ${REGION_VAR}={region}",
                                       retryable=False) from None
            if status == 429 or status >= 500 and status != 501:  # throttled (SlowDown), failing for the moment:
                # not the bucket's name or the credentials
                raise UnreachableError(f"bucket {bucket!r} at {env.get(ENDPOINT_VAR) or 'AWS S3'} answered {status} "
                                       "(the store is throttling requests, busy or failing for the moment): retried "
                                       "automatically; if it persists, check the store's health and lower the runs' "
                                       "concurrency against it", retryable=True) \
                    from None
            reason, remedy = {
                404: ("does not exist", f"check ${BUCKET_VAR} (or create the bucket)"),
                # HeadBucket is allowed by s3:ListBucket; right keys without it are refused alike
                403: ("refused HeadBucket (403)",
                      f"{permission_remedy('HeadBucket')}, and check ${BUCKET_VAR} and the S3 credentials"),
                301: ("is elsewhere (301: another region or endpoint)",
                      f"set ${REGION_VAR} to the bucket's region (or ${ENDPOINT_VAR} to its endpoint)"),
            }.get(status, (None, None))
            if reason is None:  # another status (a proxy's 408, 407 or 413 page): the core's table says it
                found = classify(exc)
                raise UnreachableError(f"bucket {bucket!r} at {env.get(ENDPOINT_VAR) or 'AWS S3'} answered {status} "
                                       f"({found.cause}): {found.remedy}", retryable=found.retryable) from None
            raise UnreachableError(f"bucket {bucket!r} {reason} at {env.get(ENDPOINT_VAR) or 'AWS S3'}: {remedy}",
                                   retryable=status not in (301, 400, 403, 404)) from None
        except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as exc:
            # not the store: no request was signed; the same on every retry
            raise ConfigError(f"no S3 credentials ({type(exc).__name__}: {redact(str(exc), env.get(SECRET_VAR))}): set "
                              f"${KEY_ID_VAR} and ${SECRET_VAR}, or give boto3 credentials its own way "
                              "(AWS_PROFILE, an instance or task role)") from None
        except (SSLError, ProxyConnectionError) as exc:  # by what urllib3 said, as the core's requests are
            if (found := classify(exc)).retryable:  # a TLS connection dropped, a proxy not reached: not refused
                raise UnreachableError(f"cannot reach the object store at {env.get(ENDPOINT_VAR) or 'AWS S3'}: "
                                       f"{found.cause}: {found.remedy}", retryable=True) from None
            if isinstance(exc, ProxyConnectionError):  # a proxy asking for credentials (407): a setting to fix
                raise ConfigError(f"cannot reach the object store at {env.get(ENDPOINT_VAR) or 'AWS S3'}: "
                                  f"{found.cause}: {found.remedy}") from None
            raise ConfigError(_tls_refused(exc, env)) from None  # the endpoint's scheme or the CA bundle
        except BotoCoreError as exc:
            raise UnreachableError(f"cannot reach the object store ({type(exc).__name__}: "
                                   f"{redact(str(exc), env.get(SECRET_VAR))}): check ${ENDPOINT_VAR} "
                                   "and the network") from None
    return store


def _tls_refused(exc: Exception, env: Mapping[str, str]) -> str:
    """The message of a HeadBucket whose TLS handshake failed: the core's cause and remedy for it (not "cannot
    reach the object store", which a cron wrapper retried forever), with the scheme to check first, since an
    https:// endpoint for a store that speaks plain HTTP fails so as well as a certificate no CA bundle trusts."""
    found = classify(exc)
    said = redact(str(exc), env.get(SECRET_VAR))
    return (f"{found.cause} at {env.get(ENDPOINT_VAR) or 'AWS S3'} ({type(exc).__name__}: {said}): "
            f"{found.remedy}; its scheme must be what the store speaks (http:// for a store without TLS, https:// "
            "with a certificate this machine trusts: point $AWS_CA_BUNDLE at the CA of a self-signed one)")


def _refused_for_another_cause(client: Any, bucket: str, refused: Any) -> tuple[str, str, bool] | None:
    """(cause, remedy, retryable) of a HeadBucket 403 or 400 that no grant fixes, or None (a missing grant, as far
    as can be told, or nothing more to tell). A HEAD's answer has no body, so no error code: the store's Date header
    says whether this machine's clock is off, and a one-key listing (which s3:ListBucket allows, as it does
    HeadBucket) answers with the code (RequestTimeTooSkewed, InvalidAccessKeyId, SignatureDoesNotMatch, an expired
    token, which S3 answers 400) or the message (an explicit deny of a policy, which no grant lifts)."""
    from botocore.exceptions import BotoCoreError, ClientError

    said = refused.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        skew = abs(email.utils.parsedate_to_datetime(said) - dt.datetime.now(dt.timezone.utc)) if said else None
    except (TypeError, ValueError):
        skew = None
    if skew is not None and skew > CLOCK_SKEW_ALLOWED:
        return (f"this machine's clock is {skew.total_seconds() / 60:.0f} minutes off the store's (its Date header "
                f"says {said})", "synchronise the clock (NTP); no permission is missing", False)
    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as exc:
        if missing_grant(exc):
            return None
        found = classify(exc)
        return f"{found.cause} ({exc.response.get('Error', {}).get('Code')})", found.remedy, found.retryable
    except BotoCoreError:
        return None
    return None


def session_settings(source: SourceSettings) -> dict[str, str]:
    """The ``source:`` timeouts of the YAML file as session settings (as PostgresResource sets them)."""
    return {
        "statement_timeout": str(source.statement_timeout_ms),
        "lock_timeout": str(source.lock_timeout_ms),
        "idle_in_transaction_session_timeout": str(source.idle_in_transaction_timeout_ms),
    }
