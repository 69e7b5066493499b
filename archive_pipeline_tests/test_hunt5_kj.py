"""Hunt 5 kj: regressions and holes in the big-value paths (JSONL big text past COPY, big bytea slices,
Parquet big rows at restore). Each test fails on the code as it is and passes once it is fixed."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.formats import big_values
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import decompress, download

DAY = dt.date(2024, 3, 10)
THRESHOLD = 64
SLICE = 10


@pytest.fixture
def tiny_threshold(monkeypatch):
    """Big values of a few bytes, as test_big_values does: every edge of the path with small rows."""
    monkeypatch.setattr(big_values, "BIG_BYTES", THRESHOLD)
    monkeypatch.setattr(big_values, "SLICE_BYTES", SLICE)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_big_bytea_in_a_table_whose_name_holds_a_percent_sign_is_archived(conn, schema, s3_client, bucket,
                                                                            temp_dir, tiny_threshold, fmt):
    """A user archives a table named ``events %s`` (names with ``%`` round-trip everywhere else:
    test_identhunt) whose day holds a bytea over 8 MiB. What happens: the day fails, not retried, with
    "an unexpected error (ProgrammingError: the query has 4 placeholders but 2 parameters were passed)":
    big_values._write_value executes its slice query with parameters, and the table's and column's
    names (their ``%s``) are read as placeholders. What should happen: the day is archived (the slices'
    query spelled with sqltext.with_params, as every other parameterized query over user names is),
    the same rows as with small values, deep verification green."""
    table = sql.Identifier(schema, "events %s")
    conn.execute(sql.SQL('CREATE TABLE {} (at date, id int, "payload %s" bytea, note text)').format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT {}, g, decode(repeat('ab', 100), 'hex'), 'n' || g "
                         "FROM generate_series(1, 3) g").format(table, sql.Literal(DAY)))
    spec = TableSpec(name=f"{schema}.events %s", day_column="at", start_date="2024-01-01", format=fmt,
                     compression="zstd")
    store = S3Store(s3_client, bucket, prefix="percent")
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 3
    body = decompress(download(s3_client, bucket, result.key), "zstd")
    assert body.count(b"ab" * 100) == 3
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


def test_a_big_text_in_jsonl_needs_no_server_temp_file_the_plain_copy_did_not_need(pg, conn, schema, s3_client,
                                                                                   bucket, temp_dir):
    """A DBA caps temporary files for the archiving role (ALTER ROLE ... SET temp_file_limit = '20MB',
    a common guard). A day whose one row holds a 9 MiB text of control characters is archived in
    JSONL. Before e4a43d2 the plain COPY wrote it (a 7 MiB value, which still takes that path,
    archives fine under the same cap). What happens now: the day fails, not retried, "temporary file
    size exceeds temp_file_limit (20480kB)": big_values._write_text's cursor query ends in
    ``ORDER BY g``, so PostgreSQL sorts every 8 MiB slice of the value's escaped JSON string (54 MiB
    here; 6x the text at most) before the first FETCH, spilling it all to a temporary file on the
    server (each big text value costs the server disk of its whole JSON string). What should happen:
    the slices come out in order without a sort (generate_series is already ordered), no temp file,
    and the day is archived as before."""
    table = sql.Identifier(schema, "logs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, {}, repeat(chr(1), 9 << 20)), (2, {}, repeat(chr(1), 7 << 20))"
                         ).format(table, sql.Literal(DAY), sql.Literal(DAY - dt.timedelta(days=1))))
    role = f"{schema}_capped"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER ROLE {} SET temp_file_limit = '20MB'").format(sql.Identifier(role)))
        store = S3Store(s3_client, bucket, prefix="capped")
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as reader:
            for day in (DAY - dt.timedelta(days=1), DAY):  # 7 MiB (plain COPY), then 9 MiB (sliced)
                spec = TableSpec(name=f"{schema}.logs", day_column="at", start_date="2024-01-01", format="jsonl",
                                 compression="zstd")
                assert archive_partition(reader, spec, day, store, temp_dir=str(temp_dir)).rows == 1
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
