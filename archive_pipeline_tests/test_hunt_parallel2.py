"""Parallel hunt 2: ``parallel_streams`` over rows that are not in the exported snapshot.

A foreign child or partition (postgres_fdw) is read by each stream through a remote session of its
own: with N > 1 the ctid ranges apply to the remote table's tuple ids too, so its rows are spread over
N remote transactions, each with its own remote snapshot, none of them the coordinator's (which took
the fingerprint). A change committed on the remote side between two streams' remote snapshots lands
in the archive, while the manifest records the fingerprint of the rows before it: the object is not
the day the manifest describes. With one stream the fingerprint and the read share the coordinator's
transaction, and so one remote snapshot.
"""

from __future__ import annotations

import datetime as dt
import io

import pyarrow.parquet as pq
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import download, read_csv

DAY = dt.date(2024, 3, 10)
CHANGED_ID = 1400  # the remote table's last row: its tuple id is in the last ctid range (stream 3 of 4)


def _archived_body(body: bytes, fmt: str) -> list[str]:
    rows = pq.read_table(io.BytesIO(body)).to_pylist() if fmt == "parquet" else read_csv(body)
    return [row["body"] for row in rows if str(row["id"]) == str(CHANGED_ID)]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_foreign_child_is_read_in_one_snapshot_by_every_stream(pg, conn, schema, s3_client, bucket, temp_dir,
                                                                 monkeypatch, fmt):
    """A local parent (20 pages of the day) with a postgres_fdw child (a loopback table of 40 pages),
    archived with four ctid ranges. The last stream is held up on its last local row (pg_sleep injected
    into its range, as test_parallel does), and meanwhile one remote row is updated and committed. The
    fingerprint was taken first, in the coordinator's snapshot, so the manifest records the row as it
    was; the archive must hold that row (what one stream archives) — it held the updated one."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.mixed (id int, at date, body text) WITH (fillfactor = 10)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.mixed SELECT g, %s, md5(g::text) FROM generate_series(1, 200) g").format(s),
                 (DAY,))
    conn.execute(sql.SQL("CREATE TABLE {}.far_src (id int, at date, body text) WITH (fillfactor = 10)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.far_src SELECT g, %s, 'original' FROM generate_series(1001, %s) g").format(s),
                 (DAY, CHANGED_ID))
    server = sql.Identifier(f"{schema}_loop")
    conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS postgres_fdw SCHEMA {}").format(s))
    conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {}, port {}, dbname {})"
                         ).format(server, sql.Literal(conn.info.host), sql.Literal(str(conn.info.port)),
                                  sql.Literal(conn.info.dbname)))
    conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS (user {})").format(
        server, sql.Literal(conn.info.user)))
    conn.execute(sql.SQL("CREATE FOREIGN TABLE {}.far () INHERITS ({}.mixed) SERVER {} OPTIONS (schema_name {}, "
                         "table_name 'far_src')").format(s, s, server, sql.Literal(schema)))
    assert conn.execute(sql.SQL("SELECT (ctid::text::point)[0] FROM {}.far_src WHERE id = %s").format(s),
                        (CHANGED_ID,)).fetchone()[0] >= 20  # beyond the local parent's pages: the last range

    # Was: four ctid ranges, each stream reading the foreign child in a remote snapshot of its own; the last
    # stream, held up (pg_sleep), read a remote row updated and committed meanwhile, so the object held
    # 'changed' while the fingerprint (the coordinator's) recorded 'original'. Now the day is read by one
    # stream, and fingerprinted first on the session that reads it (one remote transaction for both).
    spec = TableSpec(name=f"{schema}.mixed", day_column="at", start_date="2024-03-01", format=fmt,
                     compression="none" if fmt == "csv" else "zstd", parallel_streams=4)
    store = S3Store(s3_client, bucket, prefix="four", part_size=MIN_PART_SIZE)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.streams.startswith("1 stream(s)") and "foreign table" in result.streams, result.streams
    assert result.rows == 600
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []
    assert _archived_body(download(s3_client, bucket, result.key), fmt) == ["original"]
