"""Hunt 3 aa: the Parquet path, which reads each day through adbc-driver-postgresql in sessions of its own
that import the archive's snapshot (README "Formats and types", "Retries and errors").

Faults are real: a backend terminated from another session, a server backend that runs out of memory
(its address space limited with prlimit), a connection string the archiver itself connected with, a
function a user created on the session's path. What must hold: the archive is exact (restore + EXCEPT ALL,
deep verification) or the day fails with a typed error naming table, day and cause, classified retryable
only when waiting helps, with nothing left behind (no object, no open upload, no temp file, no session).
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import subprocess
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError, UnsupportedTypeError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import assert_nothing_left

DAY = dt.date(2024, 3, 10)
PASSWORD = "aa p@ss:'/%\\x"  # percent-encoded in a URI, quoted and escaped in key=value form


@pytest.fixture(autouse=True)
def _collect_leaked_adbc_objects():
    """Finalizers of leaked ADBC objects run here, not inside pytest's reporting."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def big(pg):
    """(schema, role, dsn): ``<schema>.ev``, ~80 MB on DAY without an index (so 4 streams read 4 ctid
    ranges, each still sending when the first batch arrives), readable by a password role."""
    schema = f"aa_{os.getpid()}"
    role = f"aa_app_{os.getpid()}"
    dsn = pg.create_password_role(role, PASSWORD)
    with pg.connect() as conn:
        s = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id bigint, at timestamptz, note text)").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s::timestamptz + (g %% 86000) * interval '1 second', "
                             "md5(g::text) || repeat('n', 300) FROM generate_series(1, 200000) g").format(s),
                     (DAY.isoformat(),))
        conn.execute(sql.SQL("ANALYZE {}.ev").format(s))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}")
                     .format(s=s, r=sql.Identifier(role)))
    yield schema, role, dsn
    with pg.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def role_sessions(pg, role: str, timeout: float = 10.0) -> list[tuple]:
    """The sessions ``role`` still has, once terminated and closed ones had (bounded) time to exit."""
    deadline = time.monotonic() + timeout
    with pg.connect() as admin:
        while True:
            rows = admin.execute("SELECT pid, state, left(query, 80) FROM pg_stat_activity WHERE usename = %s",
                                 (role,)).fetchall()
            if not rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def copy_backends(admin, user: str, marker: str) -> list[tuple[int, str]]:
    """Backends of ``user`` running a COPY (ADBC's binary COPY) whose query holds ``marker``."""
    return admin.execute("SELECT pid, query FROM pg_stat_activity WHERE usename = %s AND state = 'active' "
                         "AND query ILIKE 'COPY%%' AND strpos(query, %s) > 0 ORDER BY pid", (user, marker)).fetchall()


# ---- guard: one of four ADBC streams terminated mid-read --------------------------------------------------

def test_one_of_four_adbc_streams_terminated_mid_read_fails_the_day_retryable_and_leaves_nothing(
        pg, big, store, temp_dir):
    """parallel_streams: 4 reads the day with four ADBC sessions. Terminating one of the later streams'
    backends (which spool their row groups) while it reads fails the day, retryable, naming table and day, without the
    password, and leaves no object, no upload, no spool or temp file and no session of the role."""
    schema, role, dsn = big
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="parquet", parallel_streams=4)
    seen: list[list] = []

    def progress(rows: int, size: int) -> None:
        if seen:
            return
        deadline = time.monotonic() + 10
        with pg.connect() as admin:
            while True:  # a later stream (not the first range, which has no lower bound) still sending rows
                copies = copy_backends(admin, role, "ctid")
                middle = [pid for pid, query in copies if "ctid OPERATOR(pg_catalog.>=)" in query]  # (the SQL names PostgreSQL's operator)
                if middle or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            seen.append(copies)
            assert middle, copies
            assert admin.execute("SELECT pg_terminate_backend(%s, 30000)", (middle[0],)).fetchone()[0]

    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(ArchiveError) as caught:
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), progress=progress, progress_every=0)
    err = caught.value
    assert seen, "the day's first batch never came"
    assert err.retryable is True and (err.table, err.day) == (spec.name, DAY.isoformat()), str(err)
    assert PASSWORD not in str(err) and "p%40ss" not in str(err)
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
    assert role_sessions(pg, role) == []


# ---- bug: a user's concat() on the session's path is what the Parquet query calls ------------------------

def test_a_users_concat_on_the_path_does_not_change_what_parquet_archives(pg, conn, schema, store, temp_dir):
    """README: every function the archiver's queries use "resolves to PostgreSQL's own first ... a `>=` on
    dates or a `hashtextextended` in a schema the role's path lists before `pg_catalog` is never called".
    The Parquet query reads every type without an Arrow mapping (inet, timetz, composites, ranges, ...) as
    ``concat(col)``, unqualified. PostgreSQL resolves a function by path order only among identical
    signatures: a user's ``concat(inet)`` (an exact match) beats ``pg_catalog.concat(VARIADIC "any")``
    wherever the path lists it. A schema of the application holding such a helper (here it prints the
    address without its mask) makes the Parquet archive hold the helper's text, and the run is green; only a
    later proof or restore finds the archive wrong. Should: the archive holds inet's own output (call
    ``pg_catalog.concat``), so it restores to the source's rows and is proven."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, addr inet)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, '10.0.0.0/8'), (2, %s, '192.168.1.5/24'), (3, %s, NULL)")
                 .format(s), (DAY, DAY, DAY))
    conn.execute(sql.SQL("CREATE FUNCTION {}.concat(inet) RETURNS text LANGUAGE sql AS $$ SELECT host($1) $$")
                 .format(s))
    dsn = psycopg.conninfo.make_conninfo(pg.dsn, options=f"-c search_path={schema},public")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="parquet")
    with psycopg.connect(dsn, autocommit=True) as app:
        result = archive_partition(app, spec, DAY, store, temp_dir=str(temp_dir))
        assert result.rows == 3
        assert deep_verify(app, store, spec, DAY, temp_dir=str(temp_dir)) == []
        restore_day(app, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    lost = conn.execute(sql.SQL("SELECT id, addr::text FROM {s}.ev EXCEPT ALL SELECT id, addr::text FROM {s}.back")
                        .format(s=s)).fetchall()
    assert lost == []


# ---- bug: a connection option the archiver connected with, unknown to ADBC's own libpq --------------------

@pytest.mark.parametrize("option", ["max_protocol_version=3.0", "sslkeylogfile=%2Ftmp%2Faa-keylog"])
def test_parquet_reads_with_every_option_the_archiver_itself_connected_with(pg, conn, schema, store, temp_dir,
                                                                            option):
    """The archiver connects with psycopg (libpq 18) and opens Parquet's reader with the same options
    (``conn.info.dsn``) through adbc-driver-postgresql 1.8, which bundles libpq 16. An option libpq 17/18
    added (``max_protocol_version``, ``min_protocol_version``, ``sslkeylogfile``, ``sslnegotiation``, ...)
    in ARCHIVE_PG_DSN connects the archive's own session, and CSV and JSONL archive, but every Parquet day
    fails: "the connection string is malformed (... invalid connection option "max_protocol_version"); not
    retried; to fix: fix ARCHIVE_PG_DSN" - a DSN that is not malformed. Should: the day is archived (the
    reader's DSN carries only what its libpq knows; protocol 3.0 is all libpq 16 speaks), or at least the
    message says the Parquet reader's libpq does not know the option."""
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s FROM generate_series(1, 100) g").format(
        sql.Identifier(schema)), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="parquet")
    with psycopg.connect(f"{pg.dsn}?{option}", autocommit=True) as app:
        assert option.split("=")[0] in app.info.dsn  # a valid option: the archive's own session has it
        result = archive_partition(app, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 100


# ---- bug: the server running out of memory in the ADBC session is refused as a too-big value ---------------

def _vm_size(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmSize for {pid}")


def _limit_address_space(pid: int, limit: int) -> None:
    """RLIMIT_AS of server backend ``pid`` (run as the server's user: the cluster runs as postgres when we are root)."""
    if os.geteuid() == 0:
        subprocess.run(["runuser", "-u", "postgres", "--", "prlimit", f"--pid={pid}", f"--as={limit}:{limit}"],
                       check=True, capture_output=True)
    else:
        import resource
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))


def test_a_server_out_of_memory_in_the_adbc_session_is_retryable_not_a_value_too_big(pg, conn, schema, store,
                                                                                   temp_dir):
    """The ADBC backend runs out of memory mid-read (a real 53200: its address space is limited once the
    first batch arrived, so sending the day's 64 MiB value fails with "ERROR: out of memory / DETAIL: Failed
    on request of size 67108868 in memory context "COPY TO""). ADBC's Arrow stream carries no SQLSTATE;
    ``is_value_failure`` takes any "out of memory" without one for a value over PostgreSQL's limit, the
    probe (on the archive's own session) finds no column failing, and the day is refused anyway:
    UnsupportedTypeError, not retried, "a value of the day ... is larger than PostgreSQL can send in one
    piece (1 GB per value or row as text ...); keep such values smaller or outside the archived table" - for a
    64 MiB value that any format (and a retry) archives. README: the server out of memory (53200) is
    retried. Should: a retryable error saying the server ran out of memory, nothing left behind."""
    t = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, note text)").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER note SET STORAGE EXTERNAL").format(t))
    # ~60 MB of small rows first: the server is still sending them when the first batch arrives
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, repeat('s', 200) FROM generate_series(1, 250000) g").format(t),
                 (DAY,))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (250001, %s, repeat('B', 64 << 20))").format(t), (DAY,))
    conn.execute(sql.SQL("ANALYZE {}").format(t))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="parquet")
    limited: list[int] = []

    def progress(rows: int, size: int) -> None:
        if limited:
            return
        with pg.connect() as admin:
            pids = [pid for pid, _ in copy_backends(admin, "postgres", schema)]
        assert len(pids) == 1, pids
        _limit_address_space(pids[0], _vm_size(pids[0]) + (16 << 20))
        limited.append(pids[0])

    with pg.connect() as archiving, pytest.raises(ArchiveError) as caught:
        archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir), progress=progress, progress_every=0)
    err = caught.value
    assert limited
    assert "out of memory" in str(err.__context__ or err), repr(err.__context__)  # the fault did happen
    assert not isinstance(err, UnsupportedTypeError), str(err)
    assert err.retryable is True, str(err)
    assert "larger than PostgreSQL can send" not in str(err), str(err)
    assert (err.table, err.day) == (spec.name, DAY.isoformat())
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
