"""Hunt 3 (w): the geometry of writes and reads at their edges — objects exactly at, under and over the part
size, a final part of one byte, the store's part size and concurrency at their limits, parallel streams over a
relation of dead tuples, and the temp directory: missing, not a directory, or one the user moved elsewhere.

Each test asserts the correct behaviour: the object is exact (downloaded and compared), the manifest's sizes and
parts are right, errors are clear and typed, and nothing is left behind."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile

import pytest
from dagster import instance_for_test
from dagster_aws.s3 import S3Resource
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec, parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.sink import temp_archive_file
from archive_pipeline.core.store import MIN_PART_SIZE, MiB, S3Store
from archive_pipeline.core.verify import deep_verify
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import ArchiveS3Resource, ArchiveStoreResource, PostgresResource
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import download, tiny_tmpfs, run_check_evaluations

DAY = dt.date(2024, 3, 10)
GiB = 1 << 30


def _spec(schema: str, fmt: str = "csv", compression: str = "none", **kw) -> TableSpec:
    return TableSpec(name=f"{schema}.t", day_column="d", start_date="2024-03-01", format=fmt,
                     compression=compression, **kw)


def _nothing_left(s3_client, bucket: str, temp_dir) -> None:
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
                if o["Key"].endswith(".uploading")]
    assert list(temp_dir.iterdir()) == []


# --- guards: objects at the part size's edges are exact ---------------------------------------------------------

@pytest.mark.parametrize("size", [MIN_PART_SIZE - 1, MIN_PART_SIZE, MIN_PART_SIZE + 1, 2 * MIN_PART_SIZE,
                                  2 * MIN_PART_SIZE + 1])
def test_an_object_at_the_part_size_edges_is_exact_and_its_manifest_right(conn, schema, s3_client, bucket, temp_dir,
                                                                          size):
    """A CSV day without compression whose object is exactly the part size, one byte under or over it, exactly two
    parts, or two parts and a final part of one byte (max_concurrency 1): the object is byte for byte the rows,
    the manifest records its size, MD5 and part count, and nothing is left behind. (Passes: guards the edges.)"""
    overhead = len("d,v\n2024-03-10,\n")
    conn.execute(sql.SQL("CREATE TABLE {}.t (d date NOT NULL, v text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.t VALUES ('2024-03-10', repeat('a', %s))").format(sql.Identifier(schema)),
                 (size - overhead,))
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE, max_concurrency=1)
    spec = _spec(schema)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    body = download(s3_client, bucket, result.key)
    manifest = json.loads(download(s3_client, bucket, manifest_key(render_key(spec, DAY, "archive"))))
    assert body == b"d,v\n2024-03-10," + b"a" * (size - overhead) + b"\n"
    assert len(body) == size == result.bytes == manifest["object"]["bytes"]
    assert manifest["object"]["md5"] == hashlib.md5(body).hexdigest()
    assert manifest["object"]["parts"] == -(-size // MIN_PART_SIZE)
    _nothing_left(s3_client, bucket, temp_dir)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("reinserted", [0, 3])
def test_four_streams_over_dead_tuples_with_stale_statistics(conn, schema, s3_client, bucket, temp_dir, fmt,
                                                             reinserted):
    """60,000 rows of the day analyzed, then all deleted (no vacuum) and 0 or 3 re-inserted, read with
    parallel_streams 4: 4 ctid ranges over 500+ pages, three of them (or all) without a live row, the fingerprint
    taken alongside because the statistics still promise 60,000 rows. The day is archived as empty or with exactly
    its 3 rows, proven, and nothing is left. (Passes: guards the geometry of empty streams.)"""
    table = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, d date, v text) WITH (autovacuum_enabled = false)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, md5(g::text) FROM generate_series(1, 60000) g").format(table),
                 (DAY,))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    conn.execute(sql.SQL("DELETE FROM {}").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, md5(g::text) FROM generate_series(1, %s) g").format(table),
                 (DAY, reinserted))
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    spec = _spec(schema, fmt, "zstd", parallel_streams=4)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == reinserted and result.empty == (reinserted == 0)
    assert result.streams.startswith("4 stream(s)"), result.streams
    assert deep_verify(conn, store, spec, DAY) == []
    _nothing_left(s3_client, bucket, temp_dir)


# --- bugs ---------------------------------------------------------------------------------------------------------

def test_a_deep_check_downloads_into_the_store_resources_temp_dir(pg, s3, conn, schema, bucket, tmp_path,
                                                                   monkeypatch):
    """A user whose system temp dir is small sets the archive_store resource's temp_dir to a large volume, as the
    README says ("set ArchiveStoreResource.temp_dir to a volume"), and turns on deep_check for the table. The
    archive itself is staged in temp_dir and succeeds, but the check that follows in the same step downloads the
    whole object into the *system* temp dir (verify_archive(deep=True) and deep_verify are called without
    temp_dir), which is full: the step fails, and its message tells the user to set the resource's temp_dir, which
    they did. Correct: the deep check uses the resource's temp_dir and passes."""
    table = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, d date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, md5(g::text) || md5((g + 1)::text) "
                         "FROM generate_series(1, 20000) g").format(table), (DAY,))  # ~470 KiB compressed
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, "tables": [
        {"name": f"{schema}.t", "day_column": "d", "start_date": "2024-03-01", "deep_check": True}]})
    large = tmp_path / "large"
    large.mkdir()
    resources = {"postgres": PostgresResource(dsn=pg.dsn),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url=s3.endpoint_url,
                                                                     region_name="us-east-1"),
                                                       bucket=bucket, temp_dir=str(large))}
    job = build_definitions(config, resources=resources).resolve_job_def(f"Archive_{schema}_t")
    (tmp_path / "instance").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "instance")) as instance, \
            tiny_tmpfs(tmp_path / "small", "64k") as small:
        monkeypatch.setattr(tempfile, "tempdir", str(small))  # the system temp dir: small and full
        try:
            run = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        finally:
            monkeypatch.setattr(tempfile, "tempdir", None)
        assert list(small.iterdir()) == []
    failures = [str(e.step_failure_data.error) for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
    assert run.success, failures
    assert [e.passed for e in run_check_evaluations(instance, run.run_id)] == [True]
    assert list(large.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_temp_dir_that_is_no_directory_is_a_clear_local_error(conn, schema, s3_client, bucket, tmp_path, kind):
    """A user sets the archive_store resource's temp_dir to a path that does not exist (a volume not mounted, a
    typo) or to a file. The run fails, not retried, but as "an unexpected error" whose remedy is "read the
    message" (FileNotFoundError / NotADirectoryError fall through errors._classify_os), where a read-only or
    unwritable temp dir says "the temp directory is not writable; fix temp_dir's permissions or choose another
    temp_dir". Correct: a local error whose cause names the temp directory and whose remedy names temp_dir."""
    conn.execute(sql.SQL("CREATE TABLE {}.t (d date, v text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.t SELECT '2024-03-10', md5(g::text) FROM generate_series(1, 30) g").format(
        sql.Identifier(schema)))
    path = tmp_path / "scratch"
    if kind == "a file":
        path.write_text("")
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    with pytest.raises(ArchiveError) as caught:
        archive_partition(conn, _spec(schema, "jsonl", "zstd"), DAY, store, temp_dir=str(path))
    error = caught.value
    assert (error.table, error.day, error.retryable) == (f"{schema}.t", "2024-03-10", False)
    assert str(path) in str(error)
    assert error.cause != "an unexpected error" and "temp director" in error.cause, error.cause
    assert "temp_dir" in error.remedy, error.remedy
    assert s3_client.list_objects_v2(Bucket=bucket).get("Contents", []) == []


@pytest.mark.parametrize("part_size_mb", [5, 8, 13])
def test_every_part_but_the_last_is_the_same_size_as_cloudflare_r2_requires(part_size_mb):
    """README (Production notes): "Part size (default 8 MiB) x 10,000 parts bounds one day's object at 80 GB ...
    Parts are all the same size except the last, as Cloudflare R2 requires" (R2 is a named target). The store the
    code location builds (ArchiveStoreResource.store(), no way to ask for equal_parts) plans *growing* parts: past
    1,000 parts (8,000 MiB at the default) each part is 1/1000 of what was sent, so a 9 GiB day at 8 MiB parts is
    sent as 8 MiB parts, then 9 MiB, 10 MiB ... parts, which R2 refuses ("All non-trailing parts must have the
    same length"). Correct: equal parts but the last, for any day up to part size x 10,000, once the resource is
    asked for them (equal_parts: true, as the README now says R2 needs; the default grows parts past 1,000)."""
    store = ArchiveStoreResource(s3=S3Resource(region_name="us-east-1"), bucket="b",
                                 part_size_mb=part_size_mb, equal_parts=True).store()
    part = part_size_mb * MiB
    for total in (1001 * part + 1, 5000 * part + 7, 10_000 * part):
        sizes = store.plan().sizes(total)
        assert sum(sizes) == total and len(sizes) <= 10_000
        assert set(sizes[:-1]) == {part}, (total, sorted(set(sizes))[:5])


def test_max_concurrency_parts_in_flight_have_connections_to_match(s3, bucket, temp_dir, caplog):
    """A user raises the archive_store resource's max_concurrency to 16 (allowed up to 64: "parts uploaded at
    once"). The S3 client it uses keeps botocore's pool of 10 connections, so with 16 parts in flight six
    connections are opened beyond the pool and thrown away when their part is done (urllib3: "Connection pool is
    full, discarding connection", one per part past the 10th: a new TCP/TLS connection per part, and a warning in
    the run's log). Correct: the client's pool holds max_concurrency connections, no warning."""
    with FaultProxy(s3.endpoint_url) as proxy:
        held = proxy.add(Fault(method="PUT", query="partNumber=", action="hold", times=None, hold_timeout=60))
        store = ArchiveStoreResource(s3=ArchiveS3Resource(endpoint_url=proxy.url, region_name="us-east-1"),
                                     bucket=bucket, part_size_mb=5, max_concurrency=16).store()
        data = hashlib.sha256(b"w").digest() * (16 * MIN_PART_SIZE // 32)
        caplog.set_level(logging.WARNING, logger="urllib3")
        with temp_archive_file(temp_dir) as sink:
            upload = store.begin("k.csv", content_type="text/csv")
            try:
                sink.on_grow = lambda size: upload.grow(sink.fd, size)
                sink.write(data)
                assert proxy.wait_held(16, timeout=60)  # 16 parts in flight at once, as configured
                held.gate.set()
                stored = upload.finish(sink.fd, sink.size, sink.md5)
            except BaseException:
                upload.abort()
                raise
        assert stored.parts == 16 and stored.size == len(data)
    discarded = [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]
    assert discarded == [], discarded
