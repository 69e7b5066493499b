"""The content fingerprint taken by a second session while the day is read (issue 10 §2, its cost).

A first archive, or an overwrite, reads the day whatever its fingerprint, so a second session that
imported the archive's snapshot fingerprints the day while the rows stream. What must hold: the
fingerprint is the one taken first (the source's in the same snapshot), in every format and with
parallel streams; a fingerprint session that dies fails the day as any other lost session does and
leaves nothing behind; a failed read leaves no fingerprint session running; at a connection limit
the fingerprint is taken first instead; a day estimated big that turns out empty is archived empty.
The threshold is lowered here so the small test days take that path (the spy on
``open_snapshot_sessions`` only records: the real function opens the sessions).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import archive
from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.verify import deep_verify, source_fingerprint
from archive_pipeline_tests.helpers import assert_nothing_left

DAY = dt.date(2024, 3, 10)
ROWS = 2000
PASSWORD = "fp s3cret ✓"


@pytest.fixture
def table(conn, schema) -> str:
    name = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, note text, amount numeric, "
                         "tags text[], payload jsonb)").format(name))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '40 seconds', "
                         "CASE WHEN g % 9 = 0 THEN NULL ELSE 'ñ ' || g END, g / 7.0, ARRAY['x', NULL], "
                         "jsonb_build_object('g', g) FROM generate_series(1, {}) g").format(
        name, sql.Literal(DAY.isoformat()), sql.Literal(ROWS)))
    conn.execute(sql.SQL("ANALYZE {}").format(name))
    return f"{schema}.ev"


@pytest.fixture
def role_dsn(pg, conn, schema) -> tuple[str, str]:
    """A password role that can read the schema (the second session logs in as the first did)."""
    role = f"fpa_{os.getpid()}_{schema}"
    dsn = pg.create_password_role(role, PASSWORD)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(role)))
    return role, dsn


def spy_on_sessions(monkeypatch) -> list[psycopg.Connection]:
    """Every fingerprint session the archiver opens from now on (the real function opens them)."""
    opened: list[psycopg.Connection] = []
    real = archive.open_snapshot_sessions

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        opened.extend(result)
        return result

    monkeypatch.setattr(archive, "open_snapshot_sessions", spy)
    return opened


@pytest.fixture
def sessions(monkeypatch) -> list[psycopg.Connection]:
    """Every fingerprint session the archiver opens (taken alongside for any day of at least one row)."""
    monkeypatch.setattr(archive, "FINGERPRINT_ALONGSIDE_ROWS", 1)
    return spy_on_sessions(monkeypatch)


def _spec(name: str, fmt: str = "jsonl", compression: str = "zstd", streams: int = 1) -> TableSpec:
    return TableSpec(name=name, day_column="created_at", start_date="2024-03-01", format=fmt,
                     compression=compression, chunk_size=100, parallel_streams=streams)


def _assert_sessions(conn, role: str, expected: list[tuple]) -> None:
    """The role's sessions (pid, state) are ``expected``, within 10 s: a closed session's backend
    leaves pg_stat_activity a moment after the client has gone."""
    deadline = time.monotonic() + 10
    while (found := conn.execute("SELECT pid, state FROM pg_stat_activity WHERE usename = %s ORDER BY pid",
                                 (role,)).fetchall()) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert found == expected


@pytest.mark.parametrize(("fmt", "compression", "streams"), [("jsonl", "zstd", 1), ("csv", "gzip", 1),
                                                             ("parquet", "zstd", 1), ("jsonl", "lz4", 3),
                                                             ("parquet", "zstd", 3)])
def test_a_new_day_is_fingerprinted_alongside_as_it_would_be_first(conn, table, role_dsn, sessions, store,
                                                                   temp_dir, fmt, compression, streams):
    role, dsn = role_dsn
    spec = _spec(table, fmt, compression, streams)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        result = archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
        _assert_sessions(conn, role, [(archiving.info.backend_pid, "idle")])
    assert len(sessions) == 1 and sessions[0].closed
    assert result.rows == ROWS and not result.skipped and result.fingerprint_seconds > 0
    assert result.fingerprint == str(source_fingerprint(conn, spec, DAY))
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []  # the rows read back have it too
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).skipped  # a re-run compares first
    assert len(sessions) == 1


def test_an_overwrite_is_fingerprinted_alongside_and_commits_a_new_generation(conn, table, sessions, store,
                                                                             temp_dir):
    spec = _spec(table)
    first = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    conn.execute(sql.SQL("UPDATE {} SET note = 'changed' WHERE id = 5").format(sql.Identifier(*table.split("."))))
    with pytest.raises(ArchiveError, match="changed since it was archived"):
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))  # without overwrite: compared first
    assert len(sessions) == 1
    again = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), overwrite=True)
    assert len(sessions) == 2
    assert again.generation == first.generation + 1 and again.fingerprint != first.fingerprint
    assert again.fingerprint == str(source_fingerprint(conn, spec, DAY))
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


def test_a_fingerprint_session_that_dies_fails_the_day_and_leaves_nothing(conn, table, role_dsn, monkeypatch, store,
                                                                          temp_dir):
    role, dsn = role_dsn
    monkeypatch.setattr(archive, "FINGERPRINT_ALONGSIDE_ROWS", 1)
    real = archive.open_snapshot_sessions

    def opened_then_terminated(*args, **kwargs):
        result = real(*args, **kwargs)
        assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (result[0].info.backend_pid,)).fetchone()[0]
        return result

    monkeypatch.setattr(archive, "open_snapshot_sessions", opened_then_terminated)
    spec = _spec(table)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        with pytest.raises(ArchiveError) as caught:
            archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
        _assert_sessions(conn, role, [(archiving.info.backend_pid, "idle")])
    err = caught.value
    assert err.retryable and spec.name in str(err) and DAY.isoformat() in str(err), str(err)
    assert PASSWORD not in str(err)
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)


def test_a_failed_read_leaves_no_fingerprint_session(conn, table, role_dsn, sessions, store, temp_dir):
    role, dsn = role_dsn
    spec = _spec(table)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        def terminate_the_reader(rows: int, size: int) -> None:
            conn.execute("SELECT pg_terminate_backend(%s, 30000)", (archiving.info.backend_pid,))

        with pytest.raises(ArchiveError) as caught:
            archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir), progress=terminate_the_reader,
                              progress_every=0)
    assert caught.value.retryable, str(caught.value)
    assert len(sessions) == 1 and sessions[0].closed
    _assert_sessions(conn, role, [])
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)


def test_at_the_connection_limit_the_fingerprint_is_taken_first(pg, conn, schema, table, monkeypatch, store,
                                                                temp_dir):
    monkeypatch.setattr(archive, "FINGERPRINT_ALONGSIDE_ROWS", 1)
    role = f"fpl_{os.getpid()}_{schema}"
    dsn = pg.create_password_role(role, PASSWORD, connection_limit=1)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(role)))
    spec = _spec(table)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        result = archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == ROWS and result.fingerprint == str(source_fingerprint(conn, spec, DAY))
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


@pytest.mark.parametrize(("fmt", "streams"), [("parquet", 1), ("parquet", 3), ("jsonl", 3), ("csv", 2)])
def test_a_day_fits_the_connection_limits_it_finds(pg, conn, schema, table, monkeypatch, store, temp_dir, fmt,
                                                   streams):
    """A role allowed two sessions: the archive's own and one more. The fingerprint is then taken
    first and the day read with as many streams as fit (one Parquet reader, or two text streams):
    archived, where asking for more sessions would fail every attempt."""
    monkeypatch.setattr(archive, "FINGERPRINT_ALONGSIDE_ROWS", 1)
    role = f"fpl2_{os.getpid()}_{schema}"
    dsn = pg.create_password_role(role, PASSWORD, connection_limit=2)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(role)))
    spec = _spec(table, fmt).model_copy(update={"parallel_streams": streams})
    with psycopg.connect(dsn, autocommit=True) as archiving:
        result = archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == ROWS and result.fingerprint == str(source_fingerprint(conn, spec, DAY))
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_day_estimated_big_that_is_empty_is_archived_empty(conn, table, sessions, s3_client, bucket, store,
                                                             temp_dir, fmt):
    """The planner's estimate is only a guess: statistics say rows, the day has none (deleted since)."""
    conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(*table.split("."))))  # no ANALYZE: stale estimate
    spec = _spec(table, fmt)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert len(sessions) == 1
    assert (result.rows, result.empty, result.key) == (0, True, "")
    key = render_key(spec, DAY, store.prefix)
    assert store.head(key) is None and store.head(manifest_key(key)) is not None
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    assert list(temp_dir.iterdir()) == []
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).skipped


# --- deep verification: the source's fingerprint while the archive downloads and loads --------------------

def test_deep_verify_fingerprints_the_source_in_a_second_session(conn, table, role_dsn, store, temp_dir):
    role, dsn = role_dsn
    spec = _spec(table)
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    with psycopg.connect(dsn, autocommit=True) as verifying:
        from archive_pipeline.core import verify

        real, made = verify.psycopg.connect, []
        verify.psycopg.connect = lambda *a, **k: made.append(a) or real(*a, **k)
        try:
            assert deep_verify(verifying, store, spec, DAY, temp_dir=str(temp_dir)) == []
        finally:
            verify.psycopg.connect = real
        assert len(made) == 1  # the second session, logged in as the first (password included)
        _assert_sessions(conn, role, [(verifying.info.backend_pid, "idle")])
        conn.execute(sql.SQL("UPDATE {} SET amount = -amount WHERE id = 7").format(sql.Identifier(*table.split("."))))
        problems = deep_verify(verifying, store, spec, DAY, temp_dir=str(temp_dir))
        assert problems[0].startswith(f"the source's rows for {DAY} are not the archive's"), problems
        assert "first difference" in problems[1] and "-1" in problems[1], problems
        _assert_sessions(conn, role, [(verifying.info.backend_pid, "idle")])


def test_deep_verify_at_the_connection_limit_fingerprints_the_source_after_the_load(pg, conn, schema, table, store,
                                                                                   temp_dir):
    role = f"fpv_{os.getpid()}_{schema}"
    dsn = pg.create_password_role(role, PASSWORD, connection_limit=1)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(role)))
    spec = _spec(table, "parquet")
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    with psycopg.connect(dsn, autocommit=True) as verifying:
        assert deep_verify(verifying, store, spec, DAY, temp_dir=str(temp_dir)) == []


def test_deep_verify_of_a_damaged_object_stops_the_source_fingerprint(conn, table, role_dsn, s3_client, bucket,
                                                                      store, temp_dir):
    role, dsn = role_dsn
    spec = _spec(table, "csv", "gzip")
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    body = bytearray(s3_client.get_object(Bucket=bucket, Key=result.key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3_client.put_object(Bucket=bucket, Key=result.key, Body=bytes(body))
    with psycopg.connect(dsn, autocommit=True) as verifying:
        problems = deep_verify(verifying, store, spec, DAY, temp_dir=str(temp_dir))
        assert problems and "MD5" in " ".join(problems) or "ETag" in " ".join(problems), problems
        _assert_sessions(conn, role, [(verifying.info.backend_pid, "idle")])
    assert list(temp_dir.iterdir()) == []


def test_the_planners_estimate_decides_at_the_default_threshold(conn, schema, table, monkeypatch, store, temp_dir):
    """Below FINGERPRINT_ALONGSIDE_ROWS (planner estimate) the fingerprint is taken first, on the
    archive's own session; above it a second session computes it alongside."""
    opened = spy_on_sessions(monkeypatch)
    assert archive.FINGERPRINT_ALONGSIDE_ROWS == 50_000
    small = archive_partition(conn, _spec(table), DAY, store, temp_dir=str(temp_dir))
    assert small.rows == ROWS and opened == []
    big = sql.Identifier(schema, "big")
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT g AS id, {}::timestamptz + g * interval '1 second' AS created_at "
                         "FROM generate_series(1, 60000) g").format(big, sql.Literal(DAY.isoformat())))
    conn.execute(sql.SQL("ANALYZE {}").format(big))
    result = archive_partition(conn, _spec(f"{schema}.big"), DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 60_000 and len(opened) == 1 and opened[0].closed
    assert result.fingerprint == str(source_fingerprint(conn, _spec(f"{schema}.big"), DAY))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_rows_committed_during_the_read_are_in_neither_the_object_nor_the_fingerprint(pg, conn, table, sessions,
                                                                                      store, temp_dir, fmt):
    """The fingerprint session imported the archive's snapshot before the read began: a row committed
    while the day streams is outside both, and the next run sees the day as changed."""
    spec = _spec(table, fmt)
    before = str(source_fingerprint(conn, spec, DAY))
    inserted: list[bool] = []

    def insert_a_late_row(rows: int, size: int) -> None:
        if not inserted:
            inserted.append(True)
            with pg.connect() as writer:  # another session, committed at once
                writer.execute(sql.SQL("INSERT INTO {} (id, created_at) VALUES (-1, {}::timestamptz)").format(
                    sql.Identifier(*table.split(".")), sql.Literal(f"{DAY} 12:00+00")))

    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), progress=insert_a_late_row,
                               progress_every=0)
    assert inserted and len(sessions) == 1
    assert result.rows == ROWS and result.fingerprint == before
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))[0].startswith(
        f"the source's rows for {DAY} are not the archive's: {ROWS + 1:,} rows against {ROWS:,}")
    with pytest.raises(ArchiveError, match="changed since it was archived"):
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))


@pytest.mark.parametrize(("fmt", "streams"), [("csv", 1), ("parquet", 2)])
def test_the_benchmarks_count_only_fingerprint_archives_a_day(conn, table, store, temp_dir, monkeypatch, fmt,
                                                              streams):
    """bench/run.py's speed runs replace the fingerprint with a count(*) (``_switch_off_fingerprint``). A new
    parameter of ``_Archiving._timed_fingerprint`` once broke every one of them with a TypeError while the suite
    passed; an archive through the replacement proves the two still fit."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # bench/run.py puts bench/ first; undone after the test
    monkeypatch.setattr(archive._Archiving, "_timed_fingerprint", archive._Archiving._timed_fingerprint)
    monkeypatch.setattr(archive, "FINGERPRINT_ALONGSIDE_ROWS", archive.FINGERPRINT_ALONGSIDE_ROWS)
    loaded = importlib.util.spec_from_file_location("bench_run", Path(__file__).parents[1] / "bench" / "run.py")
    bench_run = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(bench_run)
    bench_run._switch_off_fingerprint()
    result = archive_partition(conn, _spec(table, fmt, streams=streams), DAY, store, temp_dir=str(temp_dir))
    assert result.rows == ROWS and result.fingerprint == f"{archive.fingerprint.ALGORITHM}:{ROWS}:0"
