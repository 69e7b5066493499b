"""Real PostgreSQL faults through ``archive_partition`` in every format, and through
``PostgresResource.connect``: the error says table, day and cause, is retried only when waiting can
help, holds no secret, and leaves nothing behind (no object, no open multipart upload, no temp file).

Faults are injected at a known point of the stream through the archiver's own ``progress``
callback (``progress_every=0``: called after the first chunk or Arrow batch). Faults that must hit a
*running* COPY read the view ``events_stalling``, whose row 35,000 sleeps in the server: the COPY is
provably still active when the fault arrives, whatever socket buffers and read-ahead hold (a fault
that never came would show as a failure after the stall, not as a pass). Only a COPY stalls: the
content fingerprint, computed in the same snapshot before the COPY, reads the view too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import os
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError, SourceError, wrap
from archive_pipeline.local.local_stack import LocalPostgres, create_sample_events, free_port, start_postgres
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline.core.store import S3Store
from archive_pipeline_tests.helpers import assert_nothing_left

DAY = dt.date(2024, 3, 10)
ROWS = 40_000
STALL_AT = 35_000  # after the first chunk and the first 4 MiB Arrow batch (~18,000 rows)
FORMATS = [("jsonl", "zstd"), ("csv", "gzip"), ("parquet", "zstd")]
PASSWORD = "fa ult's:p@ss/%"  # needs percent-encoding in a URI and quoting in key=value form


@pytest.fixture(autouse=True)
def _collect_leaked_adbc_objects():
    """Run finalizers at a safe point: a leaked ADBC connection's ``__del__`` raises, and when that
    happens inside pytest's own traceback formatting (ast.parse) CPython 3.11 reports an internal error."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def source(pg: LocalPostgres) -> Iterator[tuple[str, str, str]]:
    """(schema, role, dsn): the sample table with one big day, readable by a password-only role."""
    schema = f"faults_{os.getpid()}"
    role = f"faults_app_{os.getpid()}"
    dsn = pg.create_password_role(role, PASSWORD)
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        create_sample_events(conn, [DAY], ROWS, schema=schema)
        conn.execute(sql.SQL("CREATE VIEW {v} AS SELECT e.*, CASE WHEN e.id = {n} AND current_query() ILIKE 'COPY%%' AND current_query() NOT LIKE '%%hashtextextended%%' "
                             "THEN pg_sleep(60)::text END AS stall "
                             "FROM {t} e").format(v=sql.Identifier(schema, "events_stalling"),
                                                  t=sql.Identifier(schema, "events"), n=sql.Literal(STALL_AT)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}")
                     .format(s=sql.Identifier(schema), r=sql.Identifier(role)))
    yield schema, role, dsn
    with pg.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def fresh_role(pg: LocalPostgres, schema: str, label: str) -> tuple[str, str]:
    """Another password role that may read ``schema`` (for tests that count or limit its sessions)."""
    role = f"faults_{label}_{os.getpid()}"
    dsn = pg.create_password_role(role, PASSWORD)
    with pg.connect() as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}")
                     .format(s=sql.Identifier(schema), r=sql.Identifier(role)))
    return role, dsn


def spec_for(schema: str, fmt: str, compression: str, table: str = "events") -> TableSpec:
    return TableSpec(name=f"{schema}.{table}", day_column="created_at", start_date=DAY, format=fmt,
                     compression=compression, chunk_size=1000)


def once(action: Callable[[], None]) -> Callable[[int, int], None]:
    """A progress callback that runs ``action`` the first time only (mid-stream)."""
    done: list[bool] = []

    def progress(rows: int, size: int) -> None:
        if not done:
            done.append(True)
            action()

    return progress


def archive_fails(conn: psycopg.Connection, spec: TableSpec, store: S3Store, temp_dir, **kwargs) -> ArchiveError:
    with pytest.raises(ArchiveError) as caught:
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), progress_every=0, **kwargs)
    return caught.value


def assert_failed_cleanly(err: ArchiveError, *, retryable: bool, spec: TableSpec, store: S3Store, temp_dir,
                          secrets: tuple[str, ...] = (PASSWORD,)) -> None:
    text = str(err)
    assert err.retryable is retryable, text
    assert (err.table, err.day) == (spec.name, DAY.isoformat())
    assert spec.name in text and DAY.isoformat() in text, text
    for secret in secrets:
        for form in (secret, psycopg.conninfo.make_conninfo("", password=secret)):
            assert form not in text
    assert "fa ult" not in text and "fa%20ult" not in text, text
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)


def original(err: ArchiveError) -> BaseException:
    """The driver's exception the archiver turned into ``err`` (``raise ... from None`` keeps it as context)."""
    assert err.__context__ is not None, err
    return err.__context__


def assert_wrapped(err: ArchiveError, spec: TableSpec, *, cause: str, remedy: str, retryable: bool) -> None:
    """What the message will say once archive.py wraps through errors.wrap, checked on the real exception."""
    wrapped = wrap(original(err), spec.name, DAY.isoformat(), PASSWORD)
    assert wrapped.retryable is retryable
    assert cause in str(wrapped) and f"to fix: {remedy}" in str(wrapped), str(wrapped)
    assert PASSWORD not in str(wrapped)


@contextlib.contextmanager
def superuser(pg: LocalPostgres) -> Iterator[psycopg.Connection]:
    with pg.connect() as conn:
        yield conn


def role_backends(admin: psycopg.Connection, role: str, timeout: float = 10.0) -> int:
    """How many sessions ``role`` still has, once terminated ones had (bounded) time to exit."""
    deadline = time.monotonic() + timeout
    while True:
        count = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)).fetchone()[0]
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def copy_backends(admin: psycopg.Connection, role: str, exclude: int) -> list[int]:
    """Backends of ``role`` running a COPY (the ADBC reader's binary COPY), other than ``exclude``."""
    return [r[0] for r in admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE usename = %s AND query ILIKE 'COPY%%' AND state = 'active' "
        "AND pid <> %s",
        (role, exclude))]


# --- mid-COPY: terminated backend ------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_terminated_backend_mid_copy_is_retried(pg, source, store, temp_dir, fmt, compression):
    schema, role, dsn = source
    spec = spec_for(schema, fmt, compression, table="events_stalling")
    with psycopg.connect(dsn, autocommit=True) as conn, superuser(pg) as admin:
        def terminate() -> None:
            if fmt == "parquet":  # the rows flow through ADBC's own connection: kill that one
                victims = copy_backends(admin, role, conn.info.backend_pid)
                assert len(victims) == 1, victims
            else:
                victims = [conn.info.backend_pid]
            for pid in victims:
                assert admin.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,)).fetchone()[0]

        err = archive_fails(conn, spec, store, temp_dir, progress=once(terminate))
    assert_failed_cleanly(err, retryable=True, spec=spec, store=store, temp_dir=temp_dir)
    wrapped = wrap(original(err), spec.name, DAY.isoformat(), PASSWORD)
    assert wrapped.retryable and ("terminated" in str(wrapped) or "connection was lost" in str(wrapped))


def test_parquet_snapshot_holder_terminated_is_retried(pg, source, store, temp_dir):
    """Parquet: the psycopg connection ends its transaction once ADBC imported the snapshot, but it
    still holds the table-day lock; killing it mid-read must fail the day (another run may now
    archive the same day) before anything is published, and be retried."""
    schema, role, dsn = source
    spec = spec_for(schema, "parquet", "zstd")
    with psycopg.connect(dsn, autocommit=True) as conn, superuser(pg) as admin:
        kill = once(lambda: admin.execute("SELECT pg_terminate_backend(%s, 30000)", (conn.info.backend_pid,)))
        err = archive_fails(conn, spec, store, temp_dir, progress=kill)
    assert_failed_cleanly(err, retryable=True, spec=spec, store=store, temp_dir=temp_dir)
    assert "lock was lost" in str(err)


def test_a_parquet_stream_that_cannot_import_the_snapshot_is_retried_not_refused(source, store, temp_dir,
                                                                                  monkeypatch):
    """The snapshot's exporting session ended before the second stream's reader imported it (e.g. a
    role's idle_in_transaction_session_timeout while readers connect): PostgreSQL says 22023, a
    class-22 code, yet no value is at fault; the day is retried with the snapshot remedy, never
    refused as an unconvertible value."""
    from archive_pipeline.core.formats import parquet

    schema, _, dsn = source
    spec = spec_for(schema, "parquet", "zstd").model_copy(update={"parallel_streams": 2})
    opened = parquet.Parquet._open_reader

    def export_ends_before_the_second_reader(self, extraction):
        if opened_readers:  # the exporting transaction ends, as an idle timeout would end it
            extraction.conn.execute("COMMIT")
        opened_readers.append(True)
        return opened(self, extraction)

    opened_readers: list[bool] = []
    monkeypatch.setattr(parquet.Parquet, "_open_reader", export_ends_before_the_second_reader)
    with psycopg.connect(dsn, autocommit=True) as conn:
        err = archive_fails(conn, spec, store, temp_dir)
    assert len(opened_readers) == 2
    assert_failed_cleanly(err, retryable=True, spec=spec, store=store, temp_dir=temp_dir)
    assert type(err).__name__ != "UnsupportedTypeError" and "snapshot was gone" in str(err), str(err)
    assert "idle_in_transaction_timeout_ms" in str(err)


def test_parquet_snapshot_holder_is_not_idle_in_transaction_while_adbc_reads(source, store, temp_dir):
    """Parquet: the first connection exports the snapshot and ends its transaction as soon as ADBC has
    imported it, so an idle_in_transaction_session_timeout shorter than a pause in the read (here
    2 s against 4 s; not less: the exporting session is idle in its transaction while ADBC connects, which a
    loaded machine stretches) no longer kills the day: it is archived."""
    schema, _, dsn = source
    spec = spec_for(schema, "parquet", "zstd")
    with psycopg.connect(dsn, autocommit=True) as conn:
        result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), progress_every=0,
                                   session_settings={"idle_in_transaction_session_timeout": "2000"},
                                   progress=once(lambda: time.sleep(4)))
    assert result.rows > 0 and not result.skipped
    assert list(temp_dir.iterdir()) == []


# --- statement_timeout, lock_timeout ------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_statement_timeout_is_retried_and_names_the_setting(source, store, temp_dir, fmt, compression):
    schema, _, dsn = source
    spec = spec_for(schema, fmt, compression, table="events_stalling")
    with psycopg.connect(dsn, autocommit=True) as conn:
        err = archive_fails(conn, spec, store, temp_dir, session_settings={"statement_timeout": "50"})
    assert_failed_cleanly(err, retryable=True, spec=spec, store=store, temp_dir=temp_dir)
    assert "statement timeout" in str(err)
    assert_wrapped(err, spec, cause="statement_timeout", remedy="raise source.statement_timeout_ms", retryable=True)


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_lock_timeout_behind_an_exclusive_lock_is_retried(pg, source, store, temp_dir, fmt, compression):
    schema, _, dsn = source
    spec = spec_for(schema, fmt, compression)
    with psycopg.connect(dsn, autocommit=True) as conn, superuser(pg) as holder:
        holder.execute("BEGIN")
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "events")))
        try:
            err = archive_fails(conn, spec, store, temp_dir, session_settings={"lock_timeout": "100"})
        finally:
            holder.execute("ROLLBACK")
    assert_failed_cleanly(err, retryable=True, spec=spec, store=store, temp_dir=temp_dir)
    assert "lock timeout" in str(err)
    assert_wrapped(err, spec, cause="lock_timeout", remedy=f"retried automatically; if it persists, find the "
                   "blocker with pg_blocking_pids()", retryable=True)


def test_parquet_reader_that_fails_to_start_leaves_no_connection(pg, source, store, temp_dir):
    schema, _, _ = source
    role, dsn = fresh_role(pg, schema, "leak")
    spec = spec_for(schema, "parquet", "zstd")
    with psycopg.connect(dsn, autocommit=True) as conn, superuser(pg) as holder:
        holder.execute("BEGIN")
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "events")))
        try:
            err = archive_fails(conn, spec, store, temp_dir, session_settings={"lock_timeout": "100"})
        finally:
            holder.execute("ROLLBACK")
    assert err.retryable
    with superuser(pg) as admin:
        left = role_backends(admin, role, timeout=30)  # its own session closed just before, too
    del err  # its traceback holds the leaked connection; collect it here, not inside pytest's reporting
    gc.collect()
    assert left == 0


# --- the second (ADBC) connection of Parquet ---------------------------------------------------------------

def test_parquet_reader_over_the_role_connection_limit_is_retried(pg, source, store, temp_dir):
    schema, _, _ = source
    role, dsn = fresh_role(pg, schema, "limit1")
    spec = spec_for(schema, "parquet", "zstd")
    with superuser(pg) as admin:
        admin.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 1").format(sql.Identifier(role)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        err = archive_fails(conn, spec, store, temp_dir)
    assert_failed_cleanly(err, retryable=True, spec=spec, store=store, temp_dir=temp_dir)
    assert_wrapped(err, spec, cause="CONNECTION LIMIT", remedy="lower the pool limit in dagster.yaml", retryable=True)


def test_parquet_reader_after_a_password_rotation_fails_at_once(pg, source, store, temp_dir):
    """The archiver's first connection got in; the password changed before ADBC's connected (a
    rotation): a retry with the same DSN cannot succeed, so it must not wait through the backoff."""
    schema, role, dsn = source
    spec = spec_for(schema, "parquet", "zstd")
    with psycopg.connect(dsn, autocommit=True) as conn, superuser(pg) as admin:
        admin.execute(sql.SQL("ALTER ROLE {} PASSWORD 'rotated-elsewhere'").format(sql.Identifier(role)))
        try:
            err = archive_fails(conn, spec, store, temp_dir)
        finally:
            admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD)))
    assert_failed_cleanly(err, retryable=False, spec=spec, store=store, temp_dir=temp_dir,
                          secrets=(PASSWORD, "rotated-elsewhere"))
    assert_wrapped(err, spec, cause="wrong password", remedy="check the password in ARCHIVE_PG_DSN", retryable=False)


def test_archive_error_message_carries_cause_and_remedy(pg, source, store, temp_dir):
    schema, role, dsn = source
    spec = spec_for(schema, "parquet", "zstd")
    with psycopg.connect(dsn, autocommit=True) as conn, superuser(pg) as admin:
        admin.execute(sql.SQL("ALTER ROLE {} PASSWORD 'rotated-elsewhere'").format(sql.Identifier(role)))
        try:
            err = archive_fails(conn, spec, store, temp_dir)
        finally:
            admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD)))
    assert "wrong password" in str(err) and "to fix: check the password in ARCHIVE_PG_DSN" in str(err)


# --- a small cluster of its own: max_connections, server down ----------------------------------------------

@pytest.fixture(scope="module")
def small_pg() -> Iterator[LocalPostgres]:
    """Few connection slots, none reserved, so a test can really fill max_connections."""
    server = start_postgres({"max_connections": "4", "superuser_reserved_connections": "0",
                             "autovacuum": "off"})
    with server.connect() as conn:
        create_sample_events(conn, [DAY], 2000)
    yield server
    server.stop()


def client_sessions(server: LocalPostgres) -> int | None:
    """Client sessions other than the one asking, or None while no slot is free to ask."""
    try:
        with server.connect() as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                "AND pid <> pg_backend_pid()").fetchone()[0]
    except psycopg.OperationalError:
        return None


@contextlib.contextmanager
def every_slot_taken(server: LocalPostgres, own: int = 0) -> Iterator[None]:
    """Open connections until every slot of max_connections is one of ours: the ``own`` sessions the
    caller holds open and those opened here. A backend of a closed session (an earlier test's, a probe's)
    holds its slot a moment after its client has gone, so a refusal alone does not mean full: the server
    is full of our sessions only once they number max_connections. Afterwards close them and wait
    (bounded) until their backends have exited, so the next test finds the slots free again."""
    held: list[psycopg.Connection] = []
    try:
        deadline = time.monotonic() + 60
        limit = None
        while limit is None or own + len(held) < limit:
            try:
                held.append(server.connect())
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc), exc
                # a backend exiting still holds its slot: it frees it a moment later
                assert time.monotonic() < deadline, f"max_connections ({limit}) never reached by our {own} + " \
                                                    f"{len(held)} sessions"
                time.sleep(0.05)
                continue
            if limit is None:
                limit = held[0].execute("SELECT current_setting('max_connections')::int - "
                                        "current_setting('superuser_reserved_connections')::int").fetchone()[0]
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            server.connect().close()  # full now
        yield
    finally:
        for conn in held:
            conn.close()
        deadline = time.monotonic() + 30
        while (now := client_sessions(server)) is None or now > own:
            assert time.monotonic() < deadline, f"{now} sessions still open, {own} wanted"
            time.sleep(0.05)


def test_parquet_reader_when_max_connections_is_reached_is_retried(small_pg, store, temp_dir):
    spec = TableSpec(name="public.events", day_column="created_at", start_date=DAY, format="parquet")
    with small_pg.connect() as conn, every_slot_taken(small_pg, own=1):
        err = archive_fails(conn, spec, store, temp_dir)
    assert_failed_cleanly(err, retryable=True, spec=spec, store=store, temp_dir=temp_dir)
    assert "too many clients" in str(err)
    assert_wrapped(err, spec, cause="max_connections", remedy="lower the pool limit in dagster.yaml", retryable=True)


def test_resource_connect_when_max_connections_is_reached(small_pg):
    with every_slot_taken(small_pg), pytest.raises(SourceError) as caught:
        with PostgresResource(dsn=small_pg.dsn).connect():
            pass
    err = caught.value
    assert err.retryable and "max_connections" in str(err) and "to fix: lower the pool limit" in str(err)
    assert f"127.0.0.1:{small_pg.port}" in str(err) and "'postgres'" in str(err)


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_server_going_down_mid_copy_is_retried(small_pg, store, temp_dir, fmt, compression):
    """Immediate shutdown mid-stream. Even if the rest of the day was already in socket buffers, the
    snapshot's transaction cannot end cleanly, so the day must fail either way."""
    spec = TableSpec(name="public.events", day_column="created_at", start_date=DAY, format=fmt,
                     compression=compression, chunk_size=500)
    try:
        with small_pg.connect() as conn:
            err = archive_fails(conn, spec, store, temp_dir, progress=once(lambda: small_pg.stop(keep_root=True)))
    finally:
        if small_pg.process.poll() is not None:
            small_pg.restart()
    assert_failed_cleanly(err, retryable=True, spec=spec, store=store, temp_dir=temp_dir)


# --- PostgresResource.connect: every connect failure says where and why, never the password -----------------

def connect_error(dsn: str) -> SourceError:
    with pytest.raises(SourceError) as caught:
        with PostgresResource(dsn=dsn, connect_timeout_s=3).connect():
            pass
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # no chained DSN anywhere
    return caught.value


def test_resource_connect_wrong_password(pg, source):
    _, role, _ = source
    err = connect_error(pg.dsn_for(role, "Wr0ng pass'word"))
    text = str(err)
    assert not err.retryable and "wrong password" in text and "to fix: check the password in ARCHIVE_PG_DSN" in text
    for part in ("127.0.0.1", str(pg.port), "'postgres'", f"'{role}'"):
        assert part in text, text
    assert "Wr0ng" not in text and PASSWORD not in text


def test_resource_connect_wrong_password_in_key_value_form(pg, source):
    _, role, _ = source
    dsn = f"host=127.0.0.1 port={pg.port} dbname=postgres user={role} password='Wr0ng pass\\'word'"
    err = connect_error(dsn)
    assert not err.retryable and "Wr0ng" not in str(err) and f"127.0.0.1:{pg.port}" in str(err)


def test_resource_connect_malformed_uri_holding_a_password(pg, source):
    _, role, _ = source
    for dsn in (f"postgresql://{role}:{PASSWORD}@127.0.0.1:{pg.port}/postgres",  # unencoded: malformed
                f"postgresql://{role}:hunter2@127.0.0.1:{pg.port}x/postgres",
                f"postgresql://{role}:hunter2@[::1:{pg.port}/postgres"):
        err = connect_error(dsn)
        text = str(err)
        assert not err.retryable and "to fix: fix ARCHIVE_PG_DSN" in text, text
        assert "hunter2" not in text and "fa ult" not in text and "p@ss" not in text, text


def test_resource_connect_server_down():
    port = free_port()
    err = connect_error(f"postgresql://archiver:s3cret@127.0.0.1:{port}/warehouse")
    text = str(err)
    assert err.retryable and f"127.0.0.1:{port}" in text and "'warehouse'" in text and "'archiver'" in text
    assert "Connection refused" in text and "s3cret" not in text


def test_resource_connect_missing_database_and_role(pg):
    err = connect_error(pg.dsn_for("postgres", database="no_such_database"))
    assert not err.retryable and "database does not exist" in str(err) and "'no_such_database'" in str(err)
    err = connect_error(pg.dsn_for("no_such_role"))
    assert not err.retryable and "role does not exist" in str(err)


def test_resource_connect_role_connection_limit(pg):
    role = f"faults_zero_{os.getpid()}"
    with pg.connect() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 0").format(sql.Identifier(role)))
    err = connect_error(pg.dsn_for(role))
    assert err.retryable and "CONNECTION LIMIT" in str(err) and f"ALTER ROLE {role} CONNECTION LIMIT" in str(err)


def test_resource_connects_and_wraps_with_its_password(pg, source):
    schema, role, dsn = source
    resource = PostgresResource(dsn=dsn)
    with resource.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role
    assert resource.user == role and resource.password == PASSWORD
    err = resource.wrap_error(psycopg.OperationalError(f"oops {PASSWORD}"), f"{schema}.events", "2024-03-10")
    assert PASSWORD not in str(err) and err.retryable


# --- the temp dir fills up ------------------------------------------------------------------------------------

@pytest.fixture
def full_temp_dir(tmp_path) -> Iterator:
    """A 256 KiB tmpfs as temp_dir: the day does not fit, the kernel answers ENOSPC."""
    import pathlib
    import subprocess

    path = pathlib.Path(tmp_path) / "tiny"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0777", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); test_errors classifies a real "
                    "ENOSPC from /dev/full instead")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_temp_dir_full_fails_at_once(source, store, full_temp_dir, fmt, compression):
    schema, _, dsn = source
    spec = spec_for(schema, fmt, compression)
    with psycopg.connect(dsn, autocommit=True) as conn:
        err = archive_fails(conn, spec, store, full_temp_dir)
    assert_failed_cleanly(err, retryable=False, spec=spec, store=store, temp_dir=full_temp_dir)
    assert "No space left on device" in str(err)
    assert_wrapped(err, spec, cause="no space left for the temp file", remedy="free space in the temp directory",
                   retryable=False)


def test_resource_connect_while_the_server_shuts_down_is_retried(small_pg):
    """Smart shutdown waits for open sessions and turns new ones away (57P03, no SQLSTATE at connect)."""
    import signal

    postmaster = int((small_pg.root / "data" / "postmaster.pid").read_text().split()[0])
    with small_pg.connect() as open_session:
        os.kill(postmaster, signal.SIGTERM)
        try:
            deadline = time.monotonic() + 10
            while True:  # bounded: the postmaster handles the signal asynchronously
                try:
                    with PostgresResource(dsn=small_pg.dsn).connect():
                        pass
                except SourceError as exc:
                    err = exc
                    break
                assert time.monotonic() < deadline, "the server never started shutting down"
                time.sleep(0.05)
        finally:
            open_session.close()
    small_pg.stop(keep_root=True)
    small_pg.restart()
    assert err.retryable and "shutting down" in str(err) and "starting up, shutting down" in str(err), str(err)
