"""Archiving from a hot-standby streaming replica, as production setups do to spare the primary.

A real replica (``pg_basebackup -R``, streaming) of a primary of its own: every format archives a
day from it exactly as from the primary (exported snapshot, ``SET TRANSACTION SNAPSHOT``, advisory
lock and READ ONLY transaction all work on a standby). A recovery conflict is provoked for real
(rows the archive's snapshot may still need are deleted and vacuumed on the primary while the
replica streams the day, with ``max_standby_streaming_delay = 0``) and must come out retryable with
the hot_standby_feedback / max_standby_streaming_delay hint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError, classify, wrap
from archive_pipeline.core.locks import lock_key
from archive_pipeline.local.local_stack import LocalPostgres, create_sample_events, start_postgres, start_replica, wait_for_replay
from archive_pipeline_tests.helpers import assert_nothing_left, decompress, download, read_csv, read_jsonl

DAY = dt.date(2024, 3, 10)
DAY2 = dt.date(2024, 3, 11)
ROWS = 60_000  # the conflict test's day: more than socket buffers hold, so the conflict usually hits a running
STALL_AT = 35_000  # after the first chunk and the first 4 MiB Arrow batch
SMALL_ROWS = 3_000  # COPY (if the COPY has ended, the snapshot's idle session is terminated: fails the same)
FORMATS = [("jsonl", "zstd"), ("csv", "gzip"), ("parquet", "zstd")]


@pytest.fixture(scope="module")
def primary() -> Iterator[LocalPostgres]:
    # autovacuum off: nothing but the test itself may remove rows and so cancel a replica's read
    server = start_postgres({"autovacuum": "off"})
    with server.connect() as conn:
        create_sample_events(conn, [DAY], ROWS)
        create_sample_events(conn, [DAY2], SMALL_ROWS)
        # Row STALL_AT sleeps in the server, so a conflict always meets a running COPY (the ADBC one for
        # Parquet); only in a COPY, not in the fingerprint (ADBC runs its query as a COPY too: told by its hash calls).
        conn.execute(sql.SQL("CREATE VIEW events_stalling AS SELECT e.*, CASE WHEN e.id = {} "
                             "AND current_query() ILIKE 'COPY%%' AND current_query() NOT LIKE '%%hashtextextended%%' THEN pg_sleep(60)::text "
                             "END AS stall FROM events e").format(sql.Literal(STALL_AT)))
        conn.execute("CREATE TABLE churn (id int)")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replica(primary: LocalPostgres) -> Iterator[LocalPostgres]:
    server = start_replica(primary)
    yield server
    server.stop()


def spec_for(fmt: str, compression: str, table: str = "events") -> TableSpec:
    return TableSpec(name=f"public.{table}", day_column="created_at", start_date=DAY, format=fmt,
                     compression=compression, chunk_size=1000)


def day_fingerprint(conn: psycopg.Connection, day: dt.date = DAY) -> tuple[int, int]:
    """Row count and an order-independent sum of row hashes of ``day``."""
    return conn.execute(
        "SELECT count(*), coalesce(sum(hashtextextended(e::text, 0)), 0) FROM events e "
        "WHERE created_at >= %s AND created_at < %s",
        (dt.datetime.combine(day, dt.time(), dt.UTC), dt.datetime.combine(day + dt.timedelta(days=1), dt.time(),
                                                                            dt.UTC))).fetchone()


def test_replica_is_a_streaming_hot_standby_with_the_primary_rows(primary, replica):
    with replica.connect() as conn, primary.connect() as source:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        assert conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()[0] == "streaming"
        assert day_fingerprint(conn) == day_fingerprint(source) and day_fingerprint(conn)[0] == ROWS
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO churn VALUES (1)")


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_archive_a_day_from_the_replica(primary, replica, store, s3_client, bucket, temp_dir, fmt, compression):
    spec = spec_for(fmt, compression)
    with replica.connect() as conn:
        result = archive_partition(conn, spec, DAY2, store, temp_dir=str(temp_dir))
        # the advisory lock was taken and released on the standby itself
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] == 0
    body = download(s3_client, bucket, result.key)
    assert result.rows == SMALL_ROWS and hashlib.md5(body).hexdigest() == result.md5
    if fmt == "jsonl":
        ids = {r["id"] for r in read_jsonl(decompress(body, compression))}
    elif fmt == "csv":
        ids = {int(r["id"]) for r in read_csv(decompress(body, compression))}
    else:
        import io

        import pyarrow.parquet as pq

        ids = set(pq.read_table(io.BytesIO(body), columns=["id"]).column("id").to_pylist())
    assert ids == set(range(1, SMALL_ROWS + 1))
    assert list(temp_dir.iterdir()) == []


def test_advisory_locks_are_per_server(primary, replica):
    """What the archiver's table-day lock does *not* do: a lock held on the primary does not keep a
    run on the replica from archiving the same day (documented; use one source per table)."""
    key = lock_key("public.events", DAY)
    with primary.connect() as p, replica.connect() as r:
        assert p.execute("SELECT pg_try_advisory_lock(%s)", key).fetchone()[0]
        assert r.execute("SELECT pg_try_advisory_lock(%s)", key).fetchone()[0]


@pytest.fixture
def conflict_prone(replica: LocalPostgres) -> Iterator[LocalPostgres]:
    """The replica cancelling conflicting reads at once instead of after 30 s (the default)."""
    replica.reconfigure({"max_standby_streaming_delay": "0", "hot_standby_feedback": "off"})
    yield replica
    replica.reconfigure({"max_standby_streaming_delay": "30s"})


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_recovery_conflict_is_retried_with_the_hint(primary, conflict_prone, store, temp_dir, fmt, compression):
    spec = spec_for(fmt, compression, table="events_stalling")
    with primary.connect() as source:
        source.execute("INSERT INTO churn SELECT generate_series(1, 100)")
    wait_for_replay(primary, conflict_prone)
    fired: list[bool] = []

    def remove_rows_the_snapshot_may_need(rows: int, size: int) -> None:
        # Mid-stream, on the primary: rows deleted after the archive's snapshot was taken, then
        # vacuumed away. Replaying that on the standby conflicts with every older snapshot there.
        if fired:
            return
        fired.append(True)
        with primary.connect() as source:
            source.execute("DELETE FROM churn")
            source.execute("VACUUM churn")
        wait_for_replay(primary, conflict_prone)  # replay passes it only after cancelling the archive

    with conflict_prone.connect() as conn, pytest.raises(ArchiveError) as caught:
        assert conn.info.parameter_status("in_hot_standby") == "on"  # what the archiver's hint relies on
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), progress=remove_rows_the_snapshot_may_need,
                          progress_every=0)
    err = caught.value
    assert fired and err.retryable, str(err)
    assert "conflict with recovery" in str(err) and "hot_standby_feedback = on" in str(err), str(err)
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
    # the cause and the hint, on the real driver exception (archive.py raises ... from None, keeping it as context)
    found = classify(err.__context__)
    if "recovery conflict" not in found.cause:
        # The backend was blocked sending rows to the (busy) client when the conflict came: the replica
        # cannot send an error mid-message and just ends the session. Only a lost connection is seen,
        # and the archiver, knowing its source is a standby, names the likely conflict and the hint.
        assert found.cause.startswith("the database connection was lost"), found
        return
    assert found.retryable
    if fmt == "parquet":
        # ADBC's Arrow stream raises a bare OSError (ArrowInvalid from 1.8; no SQLSTATE, decided by the server's words); a conflict
        # that cancels the reader's session before its stream starts comes as ADBC's own error, with 40001
        assert (isinstance(err.__context__, OSError | pa.ArrowException) and found.sqlstate is None) or found.sqlstate == "40001", \
            repr(err.__context__)
    else:
        assert found.sqlstate == "40001"
    hinted = str(wrap(err.__context__, spec.name, DAY.isoformat()))
    assert "hot_standby_feedback = on" in hinted and "max_standby_streaming_delay" in hinted, hinted
