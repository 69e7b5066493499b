"""Rows with a bytea value too big for one COPY message (#11 §5, formats/big_values.py).

The threshold and the slice size are made tiny here, so that every edge of the path is reached with
small rows: values at, just above and far above the threshold, slices that do not divide the value,
two big values in one row, NULL and empty values beside them, a domain over bytea, fields that
CSV must quote next to a big value, a partitioned table, and parallel streams. What must hold: the
object holds exactly the lines the plain COPY writes (as a multiset: big rows come last), it reads
back through deep verification (the archived rows' fingerprint equals the manifest's and the
source's), and a relation without ctid (a view) keeps the plain path.
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import tempfile
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.formats import big_values
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import assert_nothing_left, decompress, download

DAY = dt.date(2024, 3, 10)
THRESHOLD = 64
SLICE = 10

# (id, b, d, note): sizes of b and d around the threshold; note needs CSV quoting and JSON escaping
_ROWS = [
    (1, None, None, "null, null"),
    (2, 0, 0, 'empty "quoted"'),
    (3, THRESHOLD, THRESHOLD, "at the threshold"),
    (4, THRESHOLD + 1, None, "just above,\nwith a line break"),
    (5, 1000, 3 * SLICE, "far above, a slice-sized neighbour"),
    (6, 205, 777, "two big values"),
    (7, 5, 5000, "big in the domain only"),
    (8, 3 * SLICE, 3 * SLICE + 1, "small, slices apart"),
]


@pytest.fixture
def tiny_threshold(monkeypatch):
    monkeypatch.setattr(big_values, "BIG_BYTES", THRESHOLD)
    monkeypatch.setattr(big_values, "SLICE_BYTES", SLICE)


def _value(size: int | None, seed: int) -> sql.Composable:
    if size is None:
        return sql.NULL
    # every byte value, in an order that differs per seed (a shifted slice would not go unnoticed)
    return sql.SQL("(SELECT coalesce(string_agg(set_byte('\\x00'::bytea, 0, (i * 7 + {s}) % 256), ''::bytea "
                   "ORDER BY i), ''::bytea) FROM generate_series(1, {n}) AS i)").format(s=sql.Literal(seed),
                                                                                       n=sql.Literal(size))


def _create(conn, schema: str, partitioned: bool = False) -> str:
    conn.execute(sql.SQL("CREATE DOMAIN {}.blob AS bytea").format(sql.Identifier(schema)))
    parent = sql.Identifier(schema, "blobs")
    columns = sql.SQL("(at date, id int, b bytea, d {}.blob, note text, tags bytea[])").format(sql.Identifier(schema))
    if partitioned:
        conn.execute(sql.SQL("CREATE TABLE {} {} PARTITION BY RANGE (at)").format(parent, columns))
        for child, start in (("blobs_day", DAY), ("blobs_before", DAY - dt.timedelta(days=1))):
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(schema, child), parent, sql.Literal(start), sql.Literal(start + dt.timedelta(days=1))))
    else:
        conn.execute(sql.SQL("CREATE TABLE {} {}").format(parent, columns))
    for row_id, b, d, note in _ROWS:
        conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, {}, {}, {}, {}, ARRAY['\\x01'::bytea, NULL])").format(
            parent, sql.Literal(DAY), sql.Literal(row_id), _value(b, row_id), _value(d, 100 + row_id),
            sql.Literal(note)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, 99, NULL, NULL, 'another day', NULL)").format(
        parent, sql.Literal(DAY - dt.timedelta(days=1))))
    return f"{schema}.blobs"


def _archive(conn, s3_client, bucket, name: str, fmt: str, prefix: str, temp_dir, streams: int = 1):
    spec = TableSpec(name=name, day_column="at", start_date="2024-01-01", format=fmt, compression="zstd",
                     parallel_streams=streams)
    store = S3Store(s3_client, bucket, prefix=prefix)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    body = download(s3_client, bucket, result.key)
    body = body if fmt == "parquet" else decompress(body, "zstd")
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []
    return result, body


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("partitioned", [False, True], ids=["table", "partitioned"])
def test_big_values_are_written_as_the_copy_writes_them(conn, schema, s3_client, bucket, temp_dir, monkeypatch,
                                                       fmt, partitioned):
    name = _create(conn, schema, partitioned)
    plain, plain_body = _archive(conn, s3_client, bucket, name, fmt, "plain", temp_dir)
    monkeypatch.setattr(big_values, "BIG_BYTES", THRESHOLD)
    monkeypatch.setattr(big_values, "SLICE_BYTES", SLICE)
    split, split_body = _archive(conn, s3_client, bucket, name, fmt, "split", temp_dir)
    assert split.rows == plain.rows == len(_ROWS)
    assert split.fingerprint == plain.fingerprint
    assert split.uncompressed_bytes == plain.uncompressed_bytes == len(plain_body)
    assert sorted(_records(split_body, fmt)) == sorted(_records(plain_body, fmt))
    assert split_body != plain_body  # the rows with big values came last: the split path was taken
    assert list(temp_dir.iterdir()) == []


def _records(body: bytes, fmt: str) -> list[bytes]:
    """The object's rows as bytes, split where a row ends (CSV rows may hold a quoted line break)."""
    if fmt == "jsonl":
        return body.splitlines()
    rows, current, quoted = [], bytearray(), False
    for byte in body:
        current.append(byte)
        if byte == ord('"'):
            quoted = not quoted
        elif byte == ord("\n") and not quoted:
            rows.append(bytes(current))
            current = bytearray()
    assert not current
    return rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_parallel_streams_split_their_own_big_rows(conn, schema, s3_client, bucket, temp_dir, tiny_threshold, fmt):
    name = _create(conn, schema)
    conn.execute(sql.SQL("ALTER TABLE {} SET (fillfactor = 10)").format(sql.Identifier(schema, "blobs")))
    conn.execute(sql.SQL("INSERT INTO {t} SELECT {d}, 1000 + g, NULL, NULL, repeat('x', 500), NULL "
                         "FROM generate_series(1, 400) g").format(t=sql.Identifier(schema, "blobs"),
                                                                 d=sql.Literal(DAY)))
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "blobs")))
    one, one_body = _archive(conn, s3_client, bucket, name, fmt, "one", temp_dir)
    four, four_body = _archive(conn, s3_client, bucket, name, fmt, "four", temp_dir, streams=4)
    assert four.rows == one.rows == len(_ROWS) + 400
    assert four.fingerprint == one.fingerprint
    assert sorted(_records(four_body, fmt)) == sorted(_records(one_body, fmt))


def test_a_view_keeps_the_plain_copy(conn, schema, s3_client, bucket, temp_dir, tiny_threshold):
    """A view's rows have no ctid to be found again by: its big values go through COPY whole."""
    _create(conn, schema)
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
        sql.Identifier(schema, "blobs_view"), sql.Identifier(schema, "blobs")))
    result, body = _archive(conn, s3_client, bucket, f"{schema}.blobs_view", "csv", "view", temp_dir)
    assert result.rows == len(_ROWS)
    ids = [int(r.split(b",", 2)[1]) for r in _records(body.split(b"\n", 1)[1], "csv")]
    assert ids == sorted(ids)  # in the table's order: nothing came after the others


def _codecs(body: bytes) -> dict[str, set[str]]:
    meta = pq.ParquetFile(io.BytesIO(body)).metadata
    codecs: dict[str, set[str]] = {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            column = meta.row_group(g).column(c)
            codecs.setdefault(column.path_in_schema, set()).add(column.compression)
    return codecs


def test_parquet_writes_a_column_holding_big_values_uncompressed(conn, schema, s3_client, bucket, temp_dir, monkeypatch):
    """Arrow's writer holds a page plain, compressed and concatenated: a column holding a value over the
    threshold is written without a codec in that day's file, every other leaf with the table's."""
    name = _create(conn, schema)
    _, plain = _archive(conn, s3_client, bucket, name, "parquet", "plain", temp_dir)
    assert set().union(*_codecs(plain).values()) == {"ZSTD"}
    monkeypatch.setattr(big_values, "BIG_BYTES", 1000)  # only d (5000 bytes in row 7) holds a bigger value
    result, body = _archive(conn, s3_client, bucket, name, "parquet", "split", temp_dir)
    codecs = _codecs(body)
    assert codecs.pop("d") == {"UNCOMPRESSED"}
    assert set(codecs) == {"at", "id", "b", "note", "tags.list.element"}
    assert set().union(*codecs.values()) == {"ZSTD"}
    assert result.rows == len(_ROWS)
    assert pq.read_table(io.BytesIO(body)).equals(pq.read_table(io.BytesIO(plain)))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_session_lost_between_slices_is_retried_and_leaves_nothing(pg, conn, schema, s3_client, bucket, temp_dir,
                                                                    tiny_threshold, monkeypatch, fmt):
    """The slices are read in the read's transaction: losing it there fails the day as a lost session
    does anywhere else (retried), with no object, manifest, upload or temp file left."""
    name = _create(conn, schema)
    write_value = big_values._write_value
    calls = []

    def terminated_on_the_second(reader, *args):
        calls.append(1)
        if len(calls) == 2:
            with pg.connect() as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 30000)", (reader.info.backend_pid,))
        return write_value(reader, *args)

    monkeypatch.setattr(big_values, "_write_value", terminated_on_the_second)
    spec = TableSpec(name=name, day_column="at", start_date="2024-01-01", format=fmt, compression="zstd")
    store = S3Store(s3_client, bucket, prefix="lost")
    with psycopg.connect(pg.dsn, autocommit=True) as archiving, pytest.raises(ArchiveError) as failed:
        archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
    assert failed.value.retryable, failed.value
    assert f"{name} for {DAY}" in str(failed.value) and "terminated" in str(failed.value)
    assert len(calls) == 2
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)


@pytest.fixture
def readable_dir():
    """A directory the server's own user can read (pytest's tmp_path is under a root-only one)."""
    path = Path(tempfile.mkdtemp(prefix="archive-fdw-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _foreign_child(conn, schema: str, parent: sql.Identifier, directory) -> None:
    """A child of ``parent`` that is a file_fdw table (a CSV file of two rows with big values of the same
    size, and a small one): a ctid means nothing there (every row's is the same)."""
    data = directory / "far.csv"
    data.write_text("".join(f"{DAY},{n},\\x{byte * 200}\n" for n, byte in ((11, "aa"), (12, "bb"))) + f"{DAY},13,\\x01\n")
    data.chmod(0o644)
    conn.execute("CREATE EXTENSION IF NOT EXISTS file_fdw")
    server = sql.Identifier(f"{schema}_files")
    conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER file_fdw").format(server))
    conn.execute(sql.SQL("CREATE FOREIGN TABLE {} () INHERITS ({}) SERVER {} OPTIONS (filename {}, format 'csv')"
                         ).format(sql.Identifier(schema, "far"), parent, server, sql.Literal(str(data))))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_rows_of_a_foreign_child_keep_the_plain_copy(conn, schema, s3_client, bucket, temp_dir, readable_dir,
                                                     monkeypatch, fmt):
    """Rows are found again by tableoid and ctid only where those mean something: a foreign child's
    rows with big values go through the COPY whole, the parent's own are split (was: the foreign
    rows' lookup by ctid matched all of them, and a green archive held rows twice and markers)."""
    parent = sql.Identifier(schema, "mixed")
    conn.execute(sql.SQL("CREATE TABLE {} (at date, id int, b bytea)").format(parent))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ({d}, 1, {v}), ({d}, 2, '\\x02')").format(
        parent, d=sql.Literal(DAY), v=_value(300, 3)))
    _foreign_child(conn, schema, parent, readable_dir)
    plain, plain_body = _archive(conn, s3_client, bucket, f"{schema}.mixed", fmt, "plain", temp_dir)
    monkeypatch.setattr(big_values, "BIG_BYTES", THRESHOLD)
    monkeypatch.setattr(big_values, "SLICE_BYTES", SLICE)
    split, split_body = _archive(conn, s3_client, bucket, f"{schema}.mixed", fmt, "split", temp_dir)
    assert split.rows == plain.rows == 5
    assert sorted(_records(split_body, fmt)) == sorted(_records(plain_body, fmt))
    assert _records(split_body, fmt)[-1] != _records(plain_body, fmt)[-1]  # the parent's big row came last


def test_a_row_near_the_text_limit_goes_through_the_plain_copy(conn, schema, s3_client, bucket, temp_dir,
                                                               tiny_threshold, monkeypatch):
    """A row whose text would reach PostgreSQL's 1 GB is COPYed whole, so PostgreSQL refuses it as before
    (no format could restore it; was: archived green, then unrestorable). With the limit lowered, the
    plain COPY of such rows succeeds: the same bytes."""
    name = _create(conn, schema)
    _, plain = _archive(conn, s3_client, bucket, name, "csv", "plain", temp_dir)
    monkeypatch.setattr(big_values, "TEXT_LIMIT", 1000)  # rows 5, 6 and 7 (hex 2,000, 410 + 1,554, 10,000), not 4
    calls = []
    one_row_text = big_values._one_row_text
    monkeypatch.setattr(big_values, "_one_row_text", lambda *a: calls.append(1) or one_row_text(*a))
    _, split = _archive(conn, s3_client, bucket, name, "csv", "near", temp_dir)
    assert sorted(_records(split, "csv")) == sorted(_records(plain, "csv"))
    assert len(calls) == 4 + 3  # four big rows marked, three of them then copied whole


def test_parquet_with_a_compression_level_and_a_big_value(conn, schema, s3_client, bucket, temp_dir, monkeypatch):
    """The level is given per leaf, to the compressed ones only (Arrow refuses a level for none)."""
    name = _create(conn, schema)
    monkeypatch.setattr(big_values, "BIG_BYTES", 1000)
    spec = TableSpec(name=name, day_column="at", start_date="2024-01-01", format="parquet", compression="zstd",
                     compression_level=9)
    store = S3Store(s3_client, bucket, prefix="level")
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    codecs = _codecs(download(s3_client, bucket, result.key))
    assert codecs.pop("d") == {"UNCOMPRESSED"} and set().union(*codecs.values()) == {"ZSTD"}
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


def test_big_rows_are_looked_up_in_the_day_s_partition_only(pg, conn, schema, s3_client, bucket, temp_dir,
                                                           tiny_threshold):
    """Another day's partition locked exclusively does not stop the day (the lookups keep the day's filter)."""
    name = _create(conn, schema, partitioned=True)
    with pg.connect() as holder:
        holder.execute("BEGIN")
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "blobs_before")))
        spec = TableSpec(name=name, day_column="at", start_date="2024-01-01", format="csv", compression="zstd")
        result = archive_partition(conn, spec, DAY, S3Store(s3_client, bucket, prefix="locked"),
                                   temp_dir=str(temp_dir), session_settings={"lock_timeout": "2000"})
        holder.execute("ROLLBACK")
    assert result.rows == len(_ROWS)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_role_with_column_privileges_only_keeps_the_plain_copy(pg, conn, schema, s3_client, bucket, temp_dir,
                                                                 tiny_threshold, fmt):
    """SELECT granted column by column reads every value but no tableoid or ctid: the day is archived
    by the plain COPY, big values and all (was: permission denied for the table, not retried)."""
    name = _create(conn, schema)
    role = f"{schema}_cols"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT (at, id, b, d, note, tags) ON {} TO {}").format(
            sql.Identifier(schema, "blobs"), sql.Identifier(role)))
        spec = TableSpec(name=name, day_column="at", start_date="2024-01-01", format=fmt, compression="zstd")
        store = S3Store(s3_client, bucket, prefix="cols")
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as reader:
            result = archive_partition(reader, spec, DAY, store, temp_dir=str(temp_dir))
        ids = [r.split(b",", 2)[1] if fmt == "csv" else r.split(b'"id":', 1)[1].split(b",", 1)[0]
               for r in _records(decompress(download(s3_client, bucket, result.key), "zstd"), fmt)[fmt == "csv":]]
        assert ids == [str(n).encode() for n, *_ in _ROWS]  # in the table's order: nothing split off
        assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# Every byte below 0x20 (each escaped by row_to_json, most as \u00XX), quotes, backslashes, DEL, U+2028,
# and characters of 2, 3 and 4 bytes (a 10-byte slice of the escaped string splits some of them).
_ESCAPED = "".join(chr(i) for i in range(1, 32)) + '"\\/\x7f\u2028é日本\U0001f600 plain'


def _text(size: int | None, seed: int) -> sql.Composable:
    """A text of ``size`` characters cycling through :data:`_ESCAPED` from an offset that differs per seed."""
    if size is None:
        return sql.NULL
    return sql.SQL("substring(repeat({t}, {n}), {s}, {n})").format(
        t=sql.Literal(_ESCAPED), n=sql.Literal(size), s=sql.Literal(seed % len(_ESCAPED) + 1))


# (id, t text, v varchar(2000), c char(300), d domain over text): sizes in characters around the threshold
_TEXT_ROWS = [
    (1, None, None, None, None),
    (2, 0, 0, 0, 0),
    (3, THRESHOLD // 4, THRESHOLD // 4, 3, 5),
    (4, THRESHOLD, 2, None, 1),
    (5, 1000, 3 * SLICE, 250, None),
    (6, 205, 777, 1, 20),
    (7, 5, None, 3, 1900),
    (8, 10, 11, None, 12),  # nothing big: after the big rows in the table, before them in the object
]


def _create_texts(conn, schema: str) -> str:
    conn.execute(sql.SQL("CREATE DOMAIN {}.memo AS text CHECK (VALUE <> 'x')").format(sql.Identifier(schema)))
    table = sql.Identifier(schema, "texts")
    conn.execute(sql.SQL("CREATE TABLE {} (at date, id int, t text, v varchar(2000), c char(300), d {}.memo, "
                         "b bytea, j jsonb, a text[])").format(table, sql.Identifier(schema)))
    for row_id, *sizes in _TEXT_ROWS:
        conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, {}, {}, {}, {}, {}, {}, {}, ARRAY[{}, NULL])").format(
            table, sql.Literal(DAY), sql.Literal(row_id), *(_text(n, row_id * 10 + i) for i, n in enumerate(sizes)),
            _value(300 if row_id == 6 else 3, row_id), sql.Literal('{"k": "\\u0001é"}'), sql.Literal(_ESCAPED)))
    conn.execute(sql.SQL("INSERT INTO {} (at, id, t) VALUES ({}, 99, {})").format(
        table, sql.Literal(DAY - dt.timedelta(days=1)), _text(500, 1)))
    return f"{schema}.texts"


def test_big_text_values_in_jsonl_are_written_as_the_copy_writes_them(conn, schema, s3_client, bucket, temp_dir,
                                                                      monkeypatch):
    """A text value whose JSON string escaping may inflate six times (control characters as \\u00XX) is
    read in slices too in JSONL: text, varchar, char (its padding kept) and a domain over text, beside a
    big bytea in the same row; the lines are row_to_json's own (compared with the plain COPY's), and
    the day restores to the same values."""
    name = _create_texts(conn, schema)
    plain, plain_body = _archive(conn, s3_client, bucket, name, "jsonl", "plain", temp_dir)
    monkeypatch.setattr(big_values, "BIG_BYTES", THRESHOLD)
    monkeypatch.setattr(big_values, "SLICE_BYTES", SLICE)
    written = []
    write_text = big_values._write_text
    monkeypatch.setattr(big_values, "_write_text", lambda conn, row, column, write: written.append(column.name)
                        or write_text(conn, row, column, write))
    split, split_body = _archive(conn, s3_client, bucket, name, "jsonl", "split", temp_dir)
    big = conn.execute(sql.SQL("SELECT {} FROM {} WHERE at = {}").format(
        sql.SQL(", ").join(sql.SQL("count(*) FILTER (WHERE octet_length({}) > {})").format(
            sql.Identifier(c), sql.Literal(THRESHOLD)) for c in "tvcd"),
        sql.Identifier(schema, "texts"), sql.Literal(DAY))).fetchone()
    assert [written.count(c) for c in "tvcd"] == list(big) and min(big) > 0, (written, big)
    assert split.rows == plain.rows == len(_TEXT_ROWS)
    assert split.fingerprint == plain.fingerprint
    assert split.uncompressed_bytes == plain.uncompressed_bytes == len(plain_body)
    assert sorted(_records(split_body, "jsonl")) == sorted(_records(plain_body, "jsonl"))
    assert split_body != plain_body  # the rows with big values came last: the split path was taken
    spec = TableSpec(name=name, day_column="at", start_date="2024-01-01", format="jsonl", compression="zstd")
    restored = restore_day(conn, S3Store(s3_client, bucket, prefix="split"), spec, DAY, into="new",
                           target=f"{schema}.texts_back", temp_dir=str(temp_dir))
    assert restored.rows == len(_TEXT_ROWS)
    source, back = sql.Identifier(schema, "texts"), sql.Identifier(schema, "texts_back")
    differ = conn.execute(sql.SQL("SELECT count(*) FROM ((SELECT * FROM {s} WHERE at = {d} EXCEPT ALL SELECT * FROM {b}) "
                                  "UNION ALL (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {s} WHERE at = {d})) AS x"
                                  ).format(s=source, b=back, d=sql.Literal(DAY))).fetchone()[0]
    assert differ == 0


def test_big_text_values_in_csv_keep_the_plain_copy(conn, schema, s3_client, bucket, temp_dir, tiny_threshold):
    """CSV's quoting at most doubles a text: only bytea values are split off there."""
    name = _create_texts(conn, schema)
    calls = []
    monkeypatch = pytest.MonkeyPatch()
    write_text = big_values._write_text
    monkeypatch.setattr(big_values, "_write_text", lambda *a: calls.append(1) or write_text(*a))
    try:
        result, body = _archive(conn, s3_client, bucket, name, "csv", "csv", temp_dir)
    finally:
        monkeypatch.undo()
    assert calls == [] and result.rows == len(_TEXT_ROWS)
    ids = [r.split(b",", 2)[1] for r in _records(body, "csv")[1:]]
    assert ids[-1] == b"6"  # the row with a big bytea came last, the others in the table's order


def test_a_row_whose_escaped_text_nears_the_text_limit_goes_through_the_plain_copy(conn, schema, s3_client, bucket,
                                                                                   temp_dir, tiny_threshold,
                                                                                   monkeypatch):
    """A text's JSON string is at most six times its bytes; where that bound reaches the limit its exact
    length is asked, and a row that would pass the limit is COPYed whole (PostgreSQL decides)."""
    name = _create_texts(conn, schema)
    _, plain = _archive(conn, s3_client, bucket, name, "jsonl", "plain", temp_dir)
    # the rows' lines: 2: 600 bytes, 3: 677, 4: 560, 5: 5,768, 6: 5,433, 7: 8,606 (8 and 1 hold no big value)
    monkeypatch.setattr(big_values, "TEXT_LIMIT", 5600)
    calls, texts = [], []
    one_row_text = big_values._one_row_text
    monkeypatch.setattr(big_values, "_one_row_text", lambda *a: calls.append(1) or one_row_text(*a))
    write_text = big_values._write_text
    monkeypatch.setattr(big_values, "_write_text", lambda *a: texts.append(a[2].name) or write_text(*a))
    _, split = _archive(conn, s3_client, bucket, name, "jsonl", "near", temp_dir)
    assert sorted(_records(split, "jsonl")) == sorted(_records(plain, "jsonl"))
    # rows 2 to 7 marked; 5, 6 and 7 bound over the limit, 5 and 7 over it, copied whole; 6 split
    assert len(calls) == 6 + 2, len(calls)
    assert sorted(texts) == sorted(["c", "c", "t", "t", "v", "c"]), texts


def test_a_session_lost_while_a_text_is_sliced_is_retried_and_leaves_nothing(pg, conn, schema, s3_client, bucket,
                                                                             temp_dir, tiny_threshold, monkeypatch):
    """Losing the read's session between a text's slices (read through a cursor) fails the day as
    elsewhere: retried, nothing left."""
    name = _create_texts(conn, schema)
    write_text = big_values._write_text
    calls = []

    def terminated_on_the_second(reader, row, column, write):
        calls.append(1)

        def write_then_terminate(piece):
            write(piece)
            if len(calls) == 2:
                with pg.connect() as admin:
                    admin.execute("SELECT pg_terminate_backend(%s, 30000)", (reader.info.backend_pid,))
        return write_text(reader, row, column, write_then_terminate)

    monkeypatch.setattr(big_values, "_write_text", terminated_on_the_second)
    spec = TableSpec(name=name, day_column="at", start_date="2024-01-01", format="jsonl", compression="zstd")
    store = S3Store(s3_client, bucket, prefix="lost")
    with psycopg.connect(pg.dsn, autocommit=True) as archiving, pytest.raises(ArchiveError) as failed:
        archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
    assert failed.value.retryable, failed.value
    assert "terminated" in str(failed.value)
    assert len(calls) == 2
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
