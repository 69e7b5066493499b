"""Retry classification of real exception objects, raised by the real drivers against the real
servers (PostgreSQL through psycopg and adbc-driver-postgresql, moto's S3 over HTTP, the kernel),
plus secret scrubbing and the messages people read."""

from __future__ import annotations

import os
import pickle
import socket
import threading

import adbc_driver_postgresql.dbapi as adbc
import boto3
import botocore.config
import botocore.exceptions as bx
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from archive_pipeline.core.errors import (
    ArchiveError,
    Classification,
    SourceError,
    UploadError,
    classify,
    describe_connect_error,
    is_retryable,
    redact,
    wrap,
)
from archive_pipeline.local.local_stack import LocalPostgres, free_port

PASSWORD = "pa ss'w@rd:/%é"


def raised(call) -> BaseException:
    """The exception ``call`` raises (it must raise)."""
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the object under test
        return exc
    raise AssertionError("expected an exception")


@pytest.fixture(scope="module")
def app_role(pg: LocalPostgres) -> tuple[str, str]:
    """A role that must log in with a password (scram-sha-256), and its DSN."""
    name = f"errors_app_{os.getpid()}"
    return name, pg.create_password_role(name, PASSWORD)


@pytest.fixture
def sp(pg: LocalPostgres):
    """A superuser psycopg connection."""
    with pg.connect() as conn:
        yield conn


@pytest.fixture
def ap(pg: LocalPostgres):
    """A superuser ADBC cursor (the driver the Parquet format reads with)."""
    conn = adbc.connect(pg.dsn, autocommit=True)
    cur = conn.cursor()
    yield cur
    cur.close()
    conn.close()


def adbc_stream(cur, query: str) -> None:
    cur.execute(query)
    for _ in cur.fetch_record_batch():
        pass


# --- psycopg ----------------------------------------------------------------------------------------

def test_psycopg_statement_timeout_is_retried_with_the_setting_to_raise(sp):
    sp.execute("SET statement_timeout = 20")
    c = classify(raised(lambda: sp.execute("SELECT pg_sleep(2)")))
    assert (c.retryable, c.sqlstate) == (True, "57014")
    assert "statement_timeout" in c.cause and "statement_timeout_ms" in c.remedy and "ALTER ROLE" in c.remedy


def test_psycopg_lock_timeout_is_retried(pg, sp, schema):
    table = sql.Identifier(schema, "locked")
    sp.execute(sql.SQL("CREATE TABLE {} (a int)").format(table))
    with pg.connect() as holder:
        holder.execute("BEGIN")
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        sp.execute("SET lock_timeout = 20")
        c = classify(raised(lambda: sp.execute(sql.SQL("SELECT * FROM {}").format(table))))
        holder.execute("ROLLBACK")
    assert c.retryable and "lock_timeout" in c.cause and "pg_blocking_pids" in c.remedy


def test_psycopg_terminated_backend_is_retried(pg, sp):
    with pg.connect() as victim:
        sp.execute("SELECT pg_terminate_backend(%s, 30000)", (victim.info.backend_pid,))
        exc = raised(lambda: victim.execute("SELECT pg_sleep(0.01)"))
        assert is_retryable(exc)
        # the connection is unusable afterwards; that error is retried too
        assert is_retryable(raised(lambda: victim.execute("SELECT 1")))


@pytest.mark.parametrize(("query", "sqlstate", "cause"), [
    ("SELECT '{{{{{{{1}}}}}}}'::int[]", "54000", "exceeds a PostgreSQL limit"),
    ("SELECT 1/0", "22012", "data exception"),
    ("SELECT 'x'::int", "22P02", "data exception"),
    ("SELECT * FROM no_such_table_here", "42P01", "does not exist"),
])
def test_psycopg_errors_a_retry_cannot_fix(sp, query, sqlstate, cause):
    c = classify(raised(lambda: sp.execute(query)))
    assert (c.retryable, c.sqlstate) == (False, sqlstate)
    assert cause in c.cause and c.remedy


def test_permission_denied_says_what_to_grant(pg, sp, schema):
    table = f"{schema}.secret"
    sp.execute(sql.SQL("CREATE TABLE {} (a int)").format(sql.Identifier(schema, "secret")))
    sp.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(sql.Identifier(schema)))
    sp.execute("SET ROLE pg_monitor")  # a role without SELECT on the table
    exc = raised(lambda: sp.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, "secret"))))
    sp.execute("RESET ROLE")
    c = classify(exc, table=table, user="archiver")
    assert not c.retryable and f"GRANT SELECT ON {table} TO archiver" in c.remedy


# --- connect-time errors (no SQLSTATE: decided by the message) ----------------------------------------

def rejected_role(pg: LocalPostgres) -> str:
    """A role that pg_hba.conf turns away ("pg_hba.conf rejects connection ...")."""
    name = f"errors_rejected_{os.getpid()}"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    pg.add_hba_lines([f'host all "{name}" 127.0.0.1/32 reject'], role=name)
    return name


def test_psycopg_connect_failures_by_cause(pg, app_role):
    name, dsn = app_role
    psycopg.connect(dsn).close()  # the right password does get in
    cases = {
        "wrong password": (pg.dsn_for(name, "not-it"), False, "check the password in ARCHIVE_PG_DSN"),
        "no role": (pg.dsn_for("no_such_role_x"), False, "check the user"),
        "no database": (pg.dsn_for("postgres", database="no_such_db"), False, "check the database name"),
        "server down": (f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", True, "listens"),
        "malformed": (f"postgresql://{name}:{PASSWORD}@127.0.0.1:{pg.port}x/postgres", False, "fix ARCHIVE_PG_DSN"),
        "bad host": ("postgresql://u@no-such-host.invalid/db", False, "check the host"),
        "TLS required, server has none": (pg.dsn_for("postgres") + "?sslmode=require", False, "sslmode"),
        "pg_hba rejects": (pg.dsn_for(rejected_role(pg)), False, "add a pg_hba.conf line"),
    }
    for label, (target, retryable, remedy) in cases.items():
        exc = raised(lambda t=target: psycopg.connect(t, connect_timeout=3))
        assert isinstance(exc, psycopg.Error) and getattr(exc, "sqlstate", None) is None, label
        c = classify(exc)
        assert (label, c.retryable) == (label, retryable), str(exc)
        assert remedy in c.remedy, (label, c)


def test_role_connection_limit_is_retried_and_named(pg, sp):
    name = f"errors_limited_{os.getpid()}"
    sp.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 0").format(sql.Identifier(name)))
    for connect in (lambda: psycopg.connect(pg.dsn_for(name)), lambda: adbc.connect(pg.dsn_for(name))):
        c = classify(raised(connect))
        assert c.retryable and "CONNECTION LIMIT" in c.cause and "pool limit in dagster.yaml" in c.remedy


def test_adbc_connect_failures_by_cause(pg, app_role):
    name, _ = app_role
    assert not is_retryable(raised(lambda: adbc.connect(pg.dsn_for(name, "not-it"))))
    assert not is_retryable(raised(lambda: adbc.connect(pg.dsn_for("postgres", database="no_such_db"))))
    down = raised(lambda: adbc.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"))
    assert type(down).__module__.startswith("adbc_driver_manager") and is_retryable(down)


# --- ADBC (the Parquet reader): adbc_driver_manager errors and the Arrow stream's bare OSError ---------

def test_adbc_stream_statement_timeout_is_an_oserror_and_retried(ap):
    ap.execute("SET statement_timeout = 50")
    exc = raised(lambda: adbc_stream(ap, "SELECT g, repeat('x', 200) FROM generate_series(1, 3000000) g"))
    c = classify(exc)
    assert c.retryable and "statement_timeout" in c.cause, (type(exc), exc)


def test_adbc_stream_terminated_backend_is_retried(ap, sp):
    ap.execute("SELECT pg_backend_pid()")
    pid = ap.fetchone()[0]
    ap.execute("SELECT g, repeat('x', 200) FROM generate_series(1, 3000000) g")

    def read() -> None:
        for n, _ in enumerate(ap.fetch_record_batch()):
            if n == 1:
                sp.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))

    exc = raised(read)
    # an OSError from adbc-driver-postgresql 1.9+, ArrowInvalid from 1.8 (pinned): classified alike
    assert isinstance(exc, OSError | pa.ArrowException) and "[libpq]" in str(exc)
    assert is_retryable(exc), exc


@pytest.mark.parametrize("kind", [OSError, pa.ArrowInvalid, pa.ArrowIOError])
def test_libpq_failures_from_the_arrow_stream_are_classified_whatever_the_arrow_error(kind):
    lost = kind("[libpq] Execution error [PGRES_FATAL_ERROR]: FATAL:  terminating connection due to administrator "
                "command\nserver closed the connection unexpectedly\n")
    refused = kind("[libpq] Execution error [PGRES_FATAL_ERROR]: ERROR:  permission denied for table events\n")
    assert is_retryable(lost) and not is_retryable(refused)
    assert classify(lost).where == classify(refused).where == "source"


def test_adbc_lock_timeout_and_fatal_errors(pg, ap, sp, schema):
    table = sql.Identifier(schema, "locked_adbc")
    sp.execute(sql.SQL("CREATE TABLE {} (a int)").format(table))
    with pg.connect() as holder:
        holder.execute("BEGIN")
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        ap.execute("SET lock_timeout = 20")
        c = classify(raised(lambda: ap.execute(sql.SQL("SELECT * FROM {}").format(table).as_string(sp))))
        holder.execute("ROLLBACK")
    assert c.retryable and c.sqlstate == "55P03"
    for query, code in [("SELECT '{{{{{{{1}}}}}}}'::int[]", "54000"), ("SELECT 1/0", "22012"),
                        ("SELECT * FROM no_such_table_here", "42P01")]:
        c = classify(raised(lambda q=query: adbc_stream(ap, q)))
        assert (c.retryable, c.sqlstate) == (False, code)


def test_recovery_conflict_text_from_libpq_is_retried_with_the_hint():
    # The exact text ADBC raised when test_replica.py provoked the conflict for real.
    exc = OSError("[libpq] Execution error [PGRES_FATAL_ERROR]: ERROR:  canceling statement due to conflict with "
                  "recovery\nDETAIL:  User query might have needed to see row versions that must be removed.\n")
    c = classify(exc)
    assert c.retryable and "hot_standby_feedback = on" in c.remedy and "max_standby_streaming_delay" in c.remedy


# --- S3 (botocore) --------------------------------------------------------------------------------------

def client_for(endpoint: str, **config):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, **config))


def test_s3_missing_bucket_fails_at_once(s3):
    exc = raised(lambda: client_for(s3.endpoint_url).put_object(Bucket="no-such-bucket-x", Key="k", Body=b"x"))
    assert isinstance(exc, bx.ClientError)
    c = classify(exc)
    assert (c.retryable, c.where) == (False, "store") and "ARCHIVE_S3_BUCKET" in c.remedy


def test_s3_unreachable_endpoint_is_retried():
    exc = raised(lambda: client_for(f"http://127.0.0.1:{free_port()}", connect_timeout=2).list_buckets())
    assert isinstance(exc, bx.EndpointConnectionError) and is_retryable(exc)


def test_s3_read_timeout_is_retried():
    """A server that accepts and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(server.accept()[0])
                except OSError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            client = client_for(f"http://127.0.0.1:{server.getsockname()[1]}", read_timeout=0.3)
            exc = raised(client.list_buckets)
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
    assert isinstance(exc, bx.ReadTimeoutError) and is_retryable(exc)


def test_s3_without_credentials_fails_at_once(monkeypatch, s3, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.session.Session().client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    exc = raised(lambda: client.list_buckets())
    assert isinstance(exc, bx.NoCredentialsError)
    c = classify(exc)
    assert not c.retryable and "ARCHIVE_S3_ACCESS_KEY_ID" in c.remedy


def client_error(code: str, status: int) -> bx.ClientError:
    # The shape botocore's parser builds from an S3 error response.
    return bx.ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                          "UploadPart")


@pytest.mark.parametrize(("exc", "retryable"), [
    (client_error("AccessDenied", 403), False),
    (client_error("403", 403), False),  # HEAD: no body, only the status
    (client_error("NoSuchBucket", 404), False),
    (client_error("InvalidAccessKeyId", 403), False),
    (client_error("SignatureDoesNotMatch", 403), False),
    (client_error("SlowDown", 503), True),
    (client_error("InternalError", 500), True),
    (client_error("ServiceUnavailable", 503), True),
    (client_error("Whatever", 502), True),
    (client_error("TooManyRequests", 429), True),
    (client_error("BadDigest", 400), True),
    (client_error("RequestTimeout", 400), True),
    (client_error("NoSuchUpload", 404), True),
    (client_error("EntityTooLarge", 400), False),
    (bx.FlexibleChecksumError(error_msg="Expected checksum abc did not match calculated checksum def"), True),
    (bx.ConnectTimeoutError(endpoint_url="http://x"), True),
    (bx.ConnectionClosedError(endpoint_url="http://x"), True),
    (bx.IncompleteReadError(actual_bytes=1, expected_bytes=2), True),
    (bx.ResponseStreamingError(error="reset"), True),
    (bx.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), False),
    (bx.SSLError(endpoint_url="https://x", error="CERTIFICATE_VERIFY_FAILED"), False),
])
def test_s3_errors_by_code(exc, retryable):
    c = classify(exc)
    assert (c.retryable, c.where) == (retryable, "store") and c.remedy


@pytest.mark.parametrize(("code", "status", "retryable", "words"), [
    ("RequestTimeTooSkewed", 403, False, "clock"),  # a 403 with nothing to grant
    ("NotImplemented", 501, False, "does not implement"),  # a 5xx no retry fixes
    ("IncompleteBody", 400, True, "broke off"),  # a body cut short on the way
    ("ExpiredToken", 400, True, "credentials expired"),
    ("RequestExpired", 403, True, "credentials expired"),
])
def test_s3_codes_whose_status_misleads(code, status, retryable, words):
    c = classify(client_error(code, status))
    assert c.retryable is retryable and words in c.cause, c
    assert "grant s3:PutObject" not in c.remedy


# --- the machine -----------------------------------------------------------------------------------------

def test_disk_full_fails_at_once_with_what_to_free():
    def write_to_full_disk() -> None:
        with open("/dev/full", "wb", buffering=0) as f:
            f.write(b"x" * 4096)

    exc = raised(write_to_full_disk)
    assert isinstance(exc, OSError) and exc.errno == 28
    c = classify(exc)
    assert not c.retryable and "temp_dir" in c.remedy


def test_unknown_errors_are_not_retried_but_their_cause_is_looked_at():
    assert not is_retryable(ValueError("surprise"))
    try:
        try:
            raise TimeoutError("socket timed out")
        except TimeoutError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_retryable(outer)


# --- ArchiveError, wrap, redact ---------------------------------------------------------------------------

def test_archive_error_stays_backwards_compatible_and_carries_a_remedy():
    old = ArchiveError("x failed", table="s.t", day="2024-01-01", retryable=True)
    assert (str(old), old.table, old.day, old.retryable, old.remedy) == ("x failed", "s.t", "2024-01-01", True, None)
    new = SourceError("x failed", table="s.t", retryable=False, remedy="do y")
    assert str(new) == "x failed; to fix: do y"
    assert classify(new) == Classification(False, "SourceError", "do y", "source")
    assert str(pickle.loads(pickle.dumps(new))) == "x failed; to fix: do y"  # crosses process boundaries
    assert is_retryable(UploadError("u", retryable=True))


def test_wrap_names_table_day_cause_remedy_and_hides_the_password(pg, app_role):
    name, _ = app_role
    exc = raised(lambda: adbc.connect(pg.dsn_for(name, PASSWORD + "x")))
    err = wrap(exc, "public.events", "2024-03-10", PASSWORD + "x", user=name)
    text = str(err)
    assert isinstance(err, SourceError) and not err.retryable
    assert (err.table, err.day) == ("public.events", "2024-03-10")
    for part in ("public.events", "2024-03-10", "wrong password", "to fix: check the password in ARCHIVE_PG_DSN"):
        assert part in text, text
    assert PASSWORD not in text and "pa%20ss" not in text
    same = ArchiveError("mine", retryable=True)
    assert wrap(same, "t.t", "2024-01-01") is same and (same.table, same.day) == ("t.t", "2024-01-01")


def test_a_connection_lost_from_a_standby_names_the_likely_recovery_conflict(pg):
    """A replica whose backend is blocked sending rows to a busy client ends the session without an
    error on a recovery conflict; the client sees only the connection closing (a real one here)."""
    conn = psycopg.connect(pg.dsn, autocommit=True)
    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        exc = raised(lambda: conn.execute("SELECT 1"))
    finally:
        conn.close()
    on_primary, on_standby = (str(wrap(exc, "public.events", "2024-03-10", standby=flag)) for flag in (False, True))
    for text in (on_primary, on_standby):
        assert "the database connection was lost" in text and "transient, retried" in text, text
    assert "conflict with recovery" not in on_primary and "hot_standby_feedback" not in on_primary
    assert "conflict with recovery" in on_standby and "hot_standby_feedback = on" in on_standby, on_standby
    terminated = str(wrap(psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
                          "public.events", "2024-03-10", standby=True))
    assert "hot_standby_feedback" not in terminated  # other causes keep their own words


@pytest.mark.parametrize("text", [
    "postgresql://user:s3cr3t@host/db",
    "postgresql://:s3cr3t@host/db",
    "postgres://user:s3%2Fcr3t%40@host:5432/db?sslmode=require",
    "host=h password=s3cr3t dbname=d",
    "host=h password = 's3 cr3t' dbname=d",
    r"host=h password='s3\'cr3t' dbname=d",
    "postgresql://h/db?sslmode=require&password=s3cr3t&user=u",
    "PGPASSWORD=s3cr3t psql",
    "postgresql://user:s3@cr3t@host/db",  # an unencoded @ in the password
    "host=h password=s3&cr3t dbname=d",
    "host=h password=s3'cr3t dbname=d",
])
def test_redact_scrubs_passwords_in_every_form(text):
    out = redact(text)
    assert "s3" not in out.replace("sslmode", "") and "cr3t" not in out, out
    assert "***" in out


def test_redact_scrubs_given_secrets_also_percent_encoded():
    out = redact(f"failed for {PASSWORD} or {__import__('urllib.parse').parse.quote(PASSWORD, safe='')}", PASSWORD)
    assert "pa ss" not in out and "pa%20ss" not in out


def test_describe_connect_error_of_a_malformed_uri_never_echoes_the_password(pg):
    for dsn in (f"postgresql://app:{PASSWORD}@[::1/db", "postgresql://app:hunter2@127.0.0.1:54x/db",
                "host=127.0.0.1 password=hunter2 junk", "host=127.0.0.1 password='hunter2"):
        exc = raised(lambda d=dsn: psycopg.connect(d))
        err = describe_connect_error(exc, dsn)
        text = str(err)
        assert not err.retryable and "hunter2" not in text and "pa ss" not in text and "w@rd" not in text, text
        assert "to fix: fix ARCHIVE_PG_DSN" in text


def test_the_sqlstate_decides_over_words_quoted_from_the_data(sp):
    """A hostile value quoted in a data error must not pass for a transient cause."""
    for words in ("conflict with recovery", "server closed the connection unexpectedly", "too many clients already",
                  "canceling statement due to statement timeout"):
        c = classify(raised(lambda w=words: sp.execute("SELECT %s::int", (w,))))
        assert (c.retryable, c.sqlstate) == (False, "22P02"), (words, c)


def test_words_quoted_from_the_data_mid_stream_do_not_pass_for_a_transient_cause(ap):
    """ADBC's Arrow stream passes a mid-COPY server error on as a bare OSError without SQLSTATE."""
    for words in ("canceling statement due to statement timeout", "server closed the connection unexpectedly"):
        query = (f"SELECT (CASE WHEN g = 150000 THEN '{words}' ELSE g::text END)::int AS v, repeat('x', 100) AS pad "
                 "FROM generate_series(1, 200000) g")
        exc = raised(lambda q=query: adbc_stream(ap, q))
        assert isinstance(exc, OSError | pa.ArrowException) and "SQLSTATE" not in str(exc) and words in str(exc), exc
        c = classify(exc)
        assert not c.retryable, (type(exc), str(exc), c)


def test_a_server_that_never_answers_times_out_and_is_retried():
    """A listening socket that never speaks (a hung server, a black-holing firewall): libpq's
    connect_timeout fires, with no SQLSTATE and no server message."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        exc = raised(lambda: psycopg.connect(f"postgresql://u@127.0.0.1:{port}/db", connect_timeout=2))
    c = classify(exc)
    assert c.retryable and "could not be reached" in c.cause, exc
    err = describe_connect_error(exc, f"postgresql://u:hunter2@127.0.0.1:{port}/db")
    assert err.retryable and f"127.0.0.1:{port}" in str(err) and "hunter2" not in str(err)


def test_a_sqlstate_quoted_from_the_data_is_not_taken_for_the_real_one(ap):
    exc = raised(lambda: adbc_stream(ap, "SELECT 'x SQLSTATE: 57014'::int"))
    c = classify(exc)
    assert (c.retryable, c.sqlstate) == (False, "22P02"), (str(exc), c)
    text_only = OSError(str(exc).replace("SQLSTATE: 22P02", "SQLSTATE: 22P02 "))  # the text alone decides too
    assert classify(text_only).sqlstate == "22P02"


def test_a_snapshot_gone_before_the_parquet_reader_imports_it_is_retried(pg, ap):
    """The archive's first connection exported the snapshot and died before ADBC imported it."""
    exporter = pg.connect()
    exporter.autocommit = False
    snapshot = exporter.execute("SELECT pg_export_snapshot()").fetchone()[0]
    with pg.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (exporter.info.backend_pid,))
    exporter.close()
    ap.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    exc = raised(lambda: ap.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
    ap.execute("ROLLBACK")
    c = classify(exc)
    assert (c.retryable, c.sqlstate) == (True, "22023") and "snapshot" in c.cause, (str(exc), c)
