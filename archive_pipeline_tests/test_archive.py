"""The core on real PostgreSQL and S3 over HTTP: round trips, empty days, multipart, failures."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import uuid
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError, UploadError
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.helpers import decompress, download, read_jsonl

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]


def events_spec(schema: str, **overrides) -> TableSpec:
    return TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAYS[0], **overrides)


@pytest.fixture
def events(conn: psycopg.Connection, schema: str) -> str:
    """The sample events table (declaratively partitioned by day) in the test's schema."""
    conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
    create_sample_events(conn, DAYS, rows_per_day=1500, schema=schema)
    conn.execute("RESET search_path")
    return schema


def db_rows(conn: psycopg.Connection, schema: str, day: dt.date) -> list[tuple]:
    conn.execute("SET TimeZone = 'UTC'")
    return conn.execute(
        sql.SQL("SELECT * FROM {}.events WHERE created_at >= %s AND created_at < %s ORDER BY id").format(
            sql.Identifier(schema)),
        (dt.datetime.combine(day, dt.time(), dt.UTC), dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)),
    ).fetchall()


def as_db_values(record: dict) -> tuple:
    """A JSONL record turned back into the Python values psycopg gives for the same row."""
    return (
        record["id"],
        dt.datetime.fromisoformat(record["created_at"]),
        record["user_id"],
        record["event_type"],
        None if record["amount"] is None else Decimal(str(record["amount"])),
        None if record["session_id"] is None else uuid.UUID(record["session_id"]),
        record["is_mobile"],
        record["tags"],
        record["payload"],
    )


def test_round_trip_of_every_day(conn, events, store, s3_client, bucket, temp_dir):
    spec = events_spec(events)
    for day in DAYS:
        result = archive_partition(conn, spec, day, store, temp_dir=temp_dir)
        body = download(s3_client, bucket, result.key)
        assert result.key == f"archive/{events}.events/2024/03/{day.isoformat()}.jsonl.zst"
        assert result.bytes == len(body)
        assert result.md5 == hashlib.md5(body).hexdigest()
        records = read_jsonl(decompress(body, "zstd"))
        assert result.uncompressed_bytes == len(decompress(body, "zstd"))
        expected = db_rows(conn, events, day)
        assert result.rows == len(expected) == 1500
        assert [as_db_values(r) for r in sorted(records, key=lambda r: r["id"])] == expected
        assert list(records[0]) == [c.name for c in result.columns]
    assert list(temp_dir.iterdir()) == []


def test_special_text_survives_json_lines(conn, events, store, s3_client, bucket):
    """The sample's notes hold a quote, a backslash, a newline and a non-ASCII letter."""
    result = archive_partition(conn, events_spec(events), DAYS[0], store)
    notes = [r["payload"]["note"] for r in read_jsonl(decompress(download(s3_client, bucket, result.key), "zstd"))]
    assert 'quote " back\\ nl\n ü' in notes


def test_day_without_rows_is_an_empty_manifest_and_no_object(conn, events, store, s3_client, bucket):
    day = dt.date(2024, 3, 9)
    result = archive_partition(conn, events_spec(events), day, store)
    assert (result.rows, result.empty, result.key) == (0, True, "")
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [f"archive/{events}.events/2024/03/2024-03-09.jsonl.zst.manifest.json"]
    manifest = json.loads(download(s3_client, bucket, keys[0]))
    assert (manifest["empty"], manifest["rows"], manifest["object"]) == (True, 0, None)
    assert manifest["fingerprint"] == "row-hash-sum-v6:0:0"
    again = archive_partition(conn, events_spec(events), day, store)
    assert again.skipped and again.empty


def test_day_larger_than_a_part_uploads_in_several_parts(conn, schema, store, s3_client, bucket):
    conn.execute(sql.SQL("CREATE TABLE {}.wide (id int, at date, body text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.wide SELECT g, '2024-03-10', repeat(md5(g::text), 8) "
                         "FROM generate_series(1, 60000) g").format(sql.Identifier(schema)))
    spec = TableSpec(name=f"{schema}.wide", day_column="at", start_date="2024-03-01", compression="none")
    result = archive_partition(conn, spec, dt.date(2024, 3, 10), store)
    assert result.parts >= 3
    records = read_jsonl(download(s3_client, bucket, result.key))
    assert len(records) == result.rows == 60000
    records.sort(key=lambda r: r["id"])
    assert records == [{"id": i, "at": "2024-03-10", "body": hashlib.md5(str(i).encode()).hexdigest() * 8}
                       for i in range(1, 60001)]


def test_nasty_identifiers_are_quoted(conn, schema, store, s3_client, bucket):
    table = sql.Identifier(schema, 'Nasty "Events"')
    conn.execute(sql.SQL('CREATE TABLE {} ("Created At" timestamp, "select" text, "x;DROP" int)').format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10 23:59:59.999999', 'a', 1), "
                         "('2024-03-11 00:00:00', 'b', 2)").format(table))
    spec = TableSpec(name=f'{schema}.Nasty "Events"', day_column="Created At", start_date="2024-03-01")
    result = archive_partition(conn, spec, dt.date(2024, 3, 10), store)
    assert read_jsonl(decompress(download(s3_client, bucket, result.key), "zstd")) == [
        {"Created At": "2024-03-10T23:59:59.999999", "select": "a", "x;DROP": 1}]
    assert result.key == f'archive/{schema}.Nasty "Events"/2024/03/2024-03-10.jsonl.zst'


def _assert_nothing_left(s3_client, bucket, temp_dir):
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(temp_dir.iterdir()) == []


def test_missing_table_fails_clearly_and_leaves_nothing(conn, schema, store, s3_client, bucket, temp_dir):
    spec = TableSpec(name=f"{schema}.nope", day_column="created_at", start_date="2024-03-01")
    with pytest.raises(ArchiveError) as failure:
        archive_partition(conn, spec, dt.date(2024, 3, 10), store, temp_dir=temp_dir)
    assert f"{schema}.nope" in str(failure.value) and "does not exist" in str(failure.value)
    assert "to fix: check the table's name in the YAML configuration" in str(failure.value)
    assert failure.value.retryable is False
    _assert_nothing_left(s3_client, bucket, temp_dir)


def test_backend_terminated_mid_stream_leaves_nothing(pg, conn, schema, store, s3_client, bucket, temp_dir):
    conn.execute(sql.SQL("CREATE TABLE {}.big (id int, at timestamptz, body text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.big SELECT g, '2024-03-10 12:00+00', repeat(md5(g::text), 6) "
                         "FROM generate_series(1, 200000) g").format(sql.Identifier(schema)))
    spec = TableSpec(name=f"{schema}.big", day_column="at", start_date="2024-03-01", compression="none",
                     chunk_size=100)
    archiving = pg.connect()
    pid = archiving.info.backend_pid
    killed = threading.Event()

    def kill_after_first_part(rows: int, size: int) -> None:
        if size > 7 << 20 and not killed.is_set():
            killed.set()
            with pg.connect() as other:
                other.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))

    with pytest.raises(ArchiveError) as failure:
        archive_partition(archiving, spec, dt.date(2024, 3, 10), store, temp_dir=temp_dir,
                          progress=kill_after_first_part, progress_every=0)
    assert killed.is_set()
    assert failure.value.retryable is True
    assert spec.name in str(failure.value) and "2024-03-10" in str(failure.value)
    _assert_nothing_left(s3_client, bucket, temp_dir)


def test_part_corrupted_in_transit_is_caught_and_aborted(conn, events, store, s3_client, bucket, temp_dir):
    """moto does not check Content-MD5, so this shows our own ETag check catches the corruption."""

    def corrupt(request, **_):
        body = request.body.read() if hasattr(request.body, "read") else bytes(request.body)
        request.body = b"X" + body[1:]  # same length, different bytes: what a flaky proxy would do

    s3_client.meta.events.register("before-send.s3.PutObject", corrupt)
    with pytest.raises(ArchiveError) as failure:
        archive_partition(conn, events_spec(events), DAYS[0], store, temp_dir=temp_dir)
    assert isinstance(failure.value, UploadError) or isinstance(failure.value.__cause__, UploadError)
    _assert_nothing_left(s3_client, bucket, temp_dir)


def test_key_template_fields(events):
    spec = events_spec(events, key_template="{prefix}/{table}/dt={date}/part.{ext}", format="csv",
                       compression="gzip")
    assert render_key(spec, DAYS[0], "") == "events/dt=2024-03-10/part.csv.gz"


def test_errors_never_carry_the_password(pg, schema, store):
    """Even an error whose text holds the DSN comes out without the password."""
    secret_dsn = pg.dsn.replace("postgres@", "postgres:Sup3r-Secret@")  # trust auth ignores it
    spec = TableSpec(name=f"{schema}.nope", day_column="at", start_date="2024-03-01")

    class LeakyStore(type(store)):
        def begin(self, *args, **kwargs):
            raise RuntimeError(f"could not reach {secret_dsn}")

    leaky = LeakyStore(store.client, store.bucket)
    with psycopg.connect(secret_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {}.nope (at date)").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("INSERT INTO {}.nope VALUES ('2024-03-10')").format(sql.Identifier(schema)))
        with pytest.raises(ArchiveError) as failure:
            archive_partition(conn, spec, dt.date(2024, 3, 10), leaky)
    assert "Sup3r-Secret" not in str(failure.value) and "could not reach" in str(failure.value)
    assert failure.value.__cause__ is None  # the original (with the secret) is not chained into tracebacks


@pytest.mark.parametrize("codec", ["zstd", "gzip", "lz4", "none"])
def test_a_failed_runs_compressor_never_writes_after_its_temp_file_is_closed(codec):
    """Found in CI: a compressor left open by a failure flushed its trailer when garbage-collected,
    into whatever had reused the file descriptor by then (a database socket: 'invalid frontend
    message type'). The run now ends the compressor itself, and a closed sink refuses writes."""
    import gc

    from archive_pipeline.core.compression import get_codec
    from archive_pipeline.core.sink import temp_archive_file

    late: list[int] = []
    closed = [False]

    def failing_run() -> None:
        with pytest.raises(RuntimeError) as failure, temp_archive_file() as sink:
            write = sink.write
            sink.write = lambda data: late.append(len(data)) if closed[0] else write(data)
            with get_codec(codec).open(sink, None) as out:
                out.write(b"x" * 100_000)
                raise RuntimeError("boom")
        closed[0] = True  # the temp file is closed; its descriptor may be anyone's now
        del failure  # the traceback held the compressor

    failing_run()
    gc.collect()
    assert late == []
