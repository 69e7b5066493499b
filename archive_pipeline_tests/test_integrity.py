"""Green means exact: an archive is never stale, someone else's, or half replaced (issue: integrity)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import subprocess
import sys
import urllib.request

import psycopg
import pytest
import zstandard
from psycopg import sql

from archive_pipeline.core import fingerprint
from archive_pipeline.core.archive import ForeignArchiveError, LateRowsError, archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.local.local_stack import wait_for_replay
from archive_pipeline.core.manifest import decode_manifest, encode_manifest
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import decompress, download, forge_object

D = dt.date(2024, 3, 10)


@pytest.fixture
def table(conn, schema) -> TableSpec:
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, body text)").format(
        sql.Identifier(schema, "t")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00', md5(g::text) "
                         "FROM generate_series(1, 200) g").format(sql.Identifier(schema, "t")))
    return TableSpec(name=f"{schema}.t", day_column="at", start_date="2024-03-01")


def stored_keys(s3_client, bucket) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_two_tables_rendering_one_key_never_skip_onto_each_other(conn, schema, table, store, s3_client, bucket):
    """Config validation refuses this; the core refuses it too (a manifest knows its table)."""
    shared = "{prefix}/{date}.{ext}"
    first = archive_partition(conn, table.model_copy(update={"key_template": shared}), D, store)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "u"), sql.Identifier(schema, "t")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(sql.Identifier(schema, "u"),
                                                                    sql.Identifier(schema, "t")))
    other = TableSpec(name=f"{schema}.u", day_column="at", start_date="2024-03-01", key_template=shared)
    for overwrite in (False, True):
        with pytest.raises(ForeignArchiveError, match=f"manifest of table '{schema}.t'.*not of '{schema}.u'") as err:
            archive_partition(conn, other, D, store, overwrite=overwrite)
        assert err.value.retryable is False
    assert hashlib.md5(download(s3_client, bucket, first.key)).hexdigest() == first.md5  # untouched


def test_a_column_whose_type_changed_is_named_as_such(conn, schema, table, store):
    """Same names, another type (text -> varchar(40) prints the same values differently nowhere, yet
    the archive's recorded types no longer describe the source): refused, naming the column and both
    types, with an added column named too."""
    archive_partition(conn, table, D, store)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN body TYPE varchar(40)").format(sql.Identifier(schema, "t")))
    conn.execute(sql.SQL("UPDATE {} SET body = 'x' WHERE id = 1").format(sql.Identifier(schema, "t")))
    with pytest.raises(LateRowsError, match=r"column types changed: body text → character varying\(40\)"):
        archive_partition(conn, table, D, store)
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN extra int").format(sql.Identifier(schema, "t")))
    with pytest.raises(LateRowsError, match=r"its columns changed from .* \(types: body text → character varying"):
        archive_partition(conn, table, D, store)


def test_insert_plus_delete_is_never_skipped(conn, schema, table, store, s3_client, bucket):
    first = archive_partition(conn, table, D, store)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 7").format(sql.Identifier(schema, "t")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1000, '2024-03-10 13:00+00', 'late')").format(
        sql.Identifier(schema, "t")))
    with pytest.raises(LateRowsError, match="content changed with the same 200 rows") as err:
        archive_partition(conn, table, D, store)
    assert err.value.retryable is False
    conn.execute(sql.SQL("UPDATE {} SET body = 'edited' WHERE id = 8").format(sql.Identifier(schema, "t")))
    with pytest.raises(LateRowsError):
        archive_partition(conn, table, D, store)
    again = archive_partition(conn, table, D, store, overwrite=True)
    assert (again.generation, again.rows) == (2, 200) and again.fingerprint != first.fingerprint
    assert stored_keys(s3_client, bucket) == sorted([again.key, again.manifest_key])
    now = fingerprint.compute(conn, sql.Identifier(schema, "t"), again.columns)
    assert again.fingerprint == str(now)
    assert archive_partition(conn, table, D, store).skipped


def test_a_manifest_damaged_at_rest_means_archive_again(conn, table, store, s3_client, bucket):
    first = archive_partition(conn, table, D, store)
    raw = bytearray(download(s3_client, bucket, first.manifest_key))
    at = raw.index(b'"rows": ') + len(b'"rows": ')
    raw[at] = ord("9")  # still valid JSON, a different row count: only the checksum can tell
    s3_client.put_object(Bucket=bucket, Key=first.manifest_key, Body=bytes(raw))
    again = archive_partition(conn, table, D, store)
    assert not again.skipped and again.rows == 200
    manifest = decode_manifest(download(s3_client, bucket, again.manifest_key))
    assert manifest["rows"] == 200 and manifest["object"]["key"] == again.key
    assert archive_partition(conn, table, D, store).skipped


def test_manifest_records_identity_definition_and_fingerprint(conn, schema, table, store, s3_client, bucket):
    result = archive_partition(conn, table, D, store)
    manifest = decode_manifest(download(s3_client, bucket, result.manifest_key))
    assert manifest["table"] == table.name and manifest["day"] == "2024-03-10"
    assert manifest["source"]["database"] == "postgres"
    assert manifest["fingerprint"] == result.fingerprint and manifest["fingerprint"].startswith("row-hash-sum-v6:200:")
    assert manifest["table_definition"]["primary_key"] == ["id"]
    assert [(c["name"], c["type"], c["not_null"]) for c in manifest["table_definition"]["columns"]] == [
        ("id", "integer", True), ("at", "timestamp with time zone", True), ("body", "text", False)]
    assert all("exact" in c and "encoding" in c for c in manifest["columns"])


KILL_POINTS = [
    ("before-call", "CreateMultipartUpload", 1),
    ("after-call", "UploadPart", 1),
    ("before-call", "CompleteMultipartUpload", 1),
    ("after-call", "CompleteMultipartUpload", 1),
    ("before-call", "PutObject", 1),
    ("after-call", "PutObject", 1),
    ("before-call", "DeleteObject", 1),
]


def test_a_re_archive_killed_at_any_step_leaves_one_whole_archive(pg, s3, conn, schema, big, store, s3_client,
                                                                  bucket, tmp_path):
    """SIGKILL between any two requests of an overwrite: the manifest always names a whole object whose
    content is the old day or the new one, never a mix; a clean run afterwards leaves nothing stray."""
    spec = {"name": big.name, "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    first = archive_partition(conn, big, D, store)
    known = {first.fingerprint}
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    for n, point in enumerate(KILL_POINTS):
        conn.execute(sql.SQL("UPDATE {} SET body = %s WHERE id = 1").format(sql.Identifier(schema, "big")),
                     (f"edit {n}",))
        known.add(str(fingerprint.compute(conn, sql.Identifier(schema, "big"), first.columns)))
        _killed_child(pg, s3, bucket, spec, True, temp, point)
        manifest = decode_manifest(download(s3_client, bucket, first.manifest_key))
        body = download(s3_client, bucket, manifest["object"]["key"])
        assert hashlib.md5(body).hexdigest() == manifest["object"]["md5"], point
        assert len(body) == manifest["object"]["bytes"] and body.count(b"\n") == manifest["rows"], point
        assert manifest["fingerprint"] in known, point
        assert list(temp.iterdir()) == [], f"temp file left after SIGKILL at {point}"
    final = archive_partition(conn, big, D, store, overwrite=True)
    assert stored_keys(s3_client, bucket) == sorted([final.key, final.manifest_key])
    assert _open_uploads(s3_client, bucket) == []
    assert final.fingerprint == str(fingerprint.compute(conn, sql.Identifier(schema, "big"), first.columns))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_deep_verification_proves_then_names_the_first_difference(conn, schema, table, store, fmt):
    spec = table.model_copy(update={"format": fmt})
    archive_partition(conn, spec, D, store)
    assert deep_verify(conn, store, spec, D) == []
    conn.execute(sql.SQL("UPDATE {} SET body = 'changed in the source' WHERE id = 42").format(
        sql.Identifier(schema, "t")))
    problems = deep_verify(conn, store, spec, D)
    assert any("the source's rows for 2024-03-10 are not the archive's: the same 200 rows" in p for p in problems)
    assert any(p.startswith("first difference: ") and ("changed in the source" in p or "42" in p) for p in problems)


def test_a_csv_proof_reads_as_their_type_the_fields_whose_text_is_not_hashed_as_is(conn, schema, store):
    """CSV archives are proven from their fields as text; types whose ``::text`` is not their output
    (through domains too) are read as their type first, so an exact archive proves and a changed
    source is still found."""
    conn.execute(sql.SQL("CREATE DOMAIN {s}.flag AS boolean; CREATE DOMAIN {s}.flag2 AS {s}.flag; "
                         "CREATE TYPE {s}.pair AS (ok boolean, n name)").format(s=sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, f {s}.flag2, c \"char\", n name, p char(3), "
                         "net cidr, bs boolean[], pr {s}.pair, m money)").format(
        sql.Identifier(schema, "odd"), s=sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10', true, 'x', 'näme', 'a', '10.1.0.0/16', "
                         "'{{t,NULL,f}}', '(t,n)', 1.5), (2, '2024-03-10', false, NULL, '', '', '::/0', '{{}}', "
                         "'(,)', -0.01), (3, '2024-03-10', NULL, '', NULL, NULL, NULL, NULL, NULL, NULL)").format(
        sql.Identifier(schema, "odd")))
    spec = TableSpec(name=f"{schema}.odd", day_column="at", start_date="2024-03-01", format="csv")
    archive_partition(conn, spec, D, store)
    assert deep_verify(conn, store, spec, D) == []
    conn.execute(sql.SQL("UPDATE {} SET f = true WHERE id = 2").format(sql.Identifier(schema, "odd")))
    problems = deep_verify(conn, store, spec, D)
    assert any(p.startswith("first difference: ") and "(2," in p for p in problems), problems


def test_deep_verification_catches_an_archive_that_decodes_but_holds_other_rows(conn, schema, table, store,
                                                                                 s3_client, bucket):
    """A consistent forgery (object and manifest digests updated together, the decompressed size kept: one that
    expands past the manifest's ``uncompressed_bytes`` is refused before it is read) still fails on the fingerprint."""
    result = archive_partition(conn, table, D, store)
    body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(download(s3_client, bucket, result.key))).read()
    forged = zstandard.ZstdCompressor().compress(body.replace(b'"id":42,', b'"id":-2,', 1))
    forge_object(s3_client, bucket, result.key, result.manifest_key, forged)
    problems = deep_verify(conn, store, table, D)
    assert any("the archive's rows are not the ones recorded" in p for p in problems)
    assert any("first difference: the source has a row the archive lacks: (42," in p
               or "first difference: the archive has a row the source lacks: (-2," in p for p in problems)


def test_deep_verification_of_a_missing_or_damaged_object(conn, table, store, s3_client, bucket):
    result = archive_partition(conn, table, D, store)
    s3_client.put_object(Bucket=bucket, Key=result.key, Body=b"not the archive")
    problems = deep_verify(conn, store, table, D)
    assert any("is damaged: the store holds 15 bytes, expected" in p for p in problems), problems
    s3_client.delete_object(Bucket=bucket, Key=result.manifest_key)
    assert deep_verify(conn, store, table, D) == [
        f"{table.name} 2024-03-10 has no archive at {store.uri(result.manifest_key[:-len('.manifest.json')])}"]


def _whole_archive(s3_client, bucket, manifest_key: str) -> dict:
    """The manifest at ``manifest_key``, after checking it names a whole object (size, MD5, row count)."""
    manifest = decode_manifest(download(s3_client, bucket, manifest_key))
    body = download(s3_client, bucket, manifest["object"]["key"])
    assert hashlib.md5(body).hexdigest() == manifest["object"]["md5"]
    assert len(body) == manifest["object"]["bytes"]
    assert decompress(body, manifest["compression"]).count(b"\n") == manifest["rows"]
    return manifest


@pytest.fixture
def big(conn, schema) -> TableSpec:
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(sql.Identifier(schema, "big")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10', repeat(md5(g::text), 6) "
                         "FROM generate_series(1, 30000) g").format(sql.Identifier(schema, "big")))
    return TableSpec(name=f"{schema}.big", day_column="at", start_date="2024-03-01", compression="none")


@pytest.mark.parametrize("fault", ["manifest GET answers 404", "listing damaged in the manifest's name"])
def test_a_manifest_the_store_fails_to_show_is_never_taken_for_none(s3, conn, schema, table, store, bucket,
                                                                    s3_client, fault):
    """A transient 404 on a listed manifest, or one flipped byte in the LIST answer, must not pass for
    "no manifest": the next generation would replace the manifest without the checks that refuse a
    changed day (or another table's archive)."""
    first = archive_partition(conn, table, D, store)
    before = stored_keys(s3_client, bucket)
    conn.execute(sql.SQL("UPDATE {} SET body = 'late edit' WHERE id = 1").format(sql.Identifier(schema, "t")))
    with FaultProxy(s3.endpoint_url) as proxy:
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        if fault == "manifest GET answers 404":
            proxy.add(Fault(method="GET", path=r"\.manifest\.json$", action="error", status=404, code="NoSuchKey"))
            with pytest.raises(ArchiveError) as caught:
                archive_partition(conn, table, D, flaky)
            assert caught.value.retryable and "the store answered inconsistently" in str(caught.value)
        else:
            prefix = first.key.rsplit(".", 2)[0]
            listing = urllib.request.urlopen(f"{s3.endpoint_url}/{bucket}?list-type=2&prefix={prefix}").read()
            proxy.add(Fault(method="GET", query="list-type=2", action="flip_response_byte",
                            offset=listing.index(b".manifest.json") + 1))
            with pytest.raises(LateRowsError):  # the changed day is refused as without the fault
                archive_partition(conn, table, D, flaky)
            assert proxy.requests("GET", query="list-type=2")[0].fault == "flip_response_byte"
    assert stored_keys(s3_client, bucket) == before
    assert decode_manifest(download(s3_client, bucket, first.manifest_key))["fingerprint"] == first.fingerprint
    with pytest.raises(LateRowsError):
        archive_partition(conn, table, D, store)


def _killed_child(pg, s3, bucket, spec: dict, overwrite: bool, temp, point) -> None:
    args = {"dsn": pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "spec": spec, "day": "2024-03-10",
            "overwrite": overwrite, "temp_dir": str(temp), "kill": list(point)}
    child = subprocess.run([sys.executable, "-m", "archive_pipeline_tests.archive_child", json.dumps(args)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, f"kill point {point} was not reached: {child.stdout}{child.stderr}"
    # Its session ends once the server notices the socket closed, which on a loaded machine may come after the next
    # run asks for the day's lock: ended here (and waited for), as the server would end it.
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity "
                      "WHERE application_name = 'archive_child'")


def _open_uploads(s3_client, bucket) -> list[str]:
    return [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


@pytest.mark.parametrize(("overwrite", "point", "then"), [
    (True, ("after-call", "UploadPart", 1), "skip"),  # a stale upload of the next generation
    (True, ("after-call", "CompleteMultipartUpload", 1), "skip"),  # a whole uncommitted generation
    (True, ("after-call", "CompleteMultipartUpload", 1), "change"),  # ... and the day changed meanwhile
    (False, ("after-call", "UploadPart", 1), "empty"),  # a first archive's upload; the day then emptied
    (False, ("after-call", "UploadPart", 1), "small"),  # ... the day then shrank to one PUT's size
])
def test_what_a_killed_run_left_is_removed_by_the_next_run(pg, s3, conn, schema, big, store, bucket, s3_client,
                                                           tmp_path, overwrite, point, then):
    """Whatever path the next run takes (a skip, a refusal, an empty day), it leaves the day with
    exactly what its manifest names: no open multipart upload, no uncommitted generation."""
    spec = {"name": big.name, "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    if overwrite:
        first = archive_partition(conn, big, D, store)
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, overwrite, temp, point)
    left = stored_keys(s3_client, bucket)
    # something was left: an open upload, or a whole generation; either way with its upload marker
    assert _open_uploads(s3_client, bucket) or len(left) == 4
    assert [k for k in left if k.endswith(".uploading")]
    table = sql.Identifier(schema, "big")
    if then == "skip":
        assert archive_partition(conn, big, D, store).skipped
        assert stored_keys(s3_client, bucket) == sorted([first.key, first.manifest_key])
    elif then == "change":
        conn.execute(sql.SQL("UPDATE {} SET body = 'late' WHERE id = 7").format(table))
        with pytest.raises(LateRowsError):
            archive_partition(conn, big, D, store)
        assert stored_keys(s3_client, bucket) == sorted([first.key, first.manifest_key])
    elif then == "small":  # written by one PUT, which lists no uploads: the marker the killed run left says to
        conn.execute(sql.SQL("DELETE FROM {} WHERE id > 10").format(table))
        result = archive_partition(conn, big, D, store)
        assert result.rows == 10 and result.parts == 1
        assert stored_keys(s3_client, bucket) == sorted([result.key, result.manifest_key])
    else:
        conn.execute(sql.SQL("DELETE FROM {}").format(table))
        result = archive_partition(conn, big, D, store)
        assert result.empty and stored_keys(s3_client, bucket) == [result.manifest_key]
    assert _open_uploads(s3_client, bucket) == []
    assert list(temp.iterdir()) == []


def test_a_retired_generation_whose_delete_failed_goes_at_the_next_run(s3, conn, schema, table, store, bucket,
                                                                       s3_client):
    first = archive_partition(conn, table, D, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="DELETE", action="error", status=503, code="SlowDown", times=None))
        second = archive_partition(conn, table, D, S3Store(proxy.client(max_attempts=1), bucket, prefix="archive"),
                                   overwrite=True)
    assert first.key in stored_keys(s3_client, bucket)  # the overwrite succeeded; its old object stayed
    assert first.key in decode_manifest(download(s3_client, bucket, second.manifest_key))["superseded"]
    assert archive_partition(conn, table, D, store).skipped
    assert stored_keys(s3_client, bucket) == sorted([second.key, second.manifest_key])


def test_a_manifest_corrupted_on_the_way_is_caught_and_never_leaves_the_day_stuck(s3, conn, table, bucket, s3_client):
    with FaultProxy(s3.endpoint_url) as proxy:
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        once = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="flip_request_byte", times=1))
        first = archive_partition(conn, table, D, store)
        assert once.hits == 1  # the damaged PUT was caught and the manifest written again
        assert _whole_archive(s3_client, bucket, first.manifest_key)["fingerprint"] == first.fingerprint
        proxy.clear()
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="flip_request_byte", times=None))
        with pytest.raises(ArchiveError) as err:
            archive_partition(conn, table, D, store, overwrite=True)
        assert err.value.retryable is True
        proxy.clear()
        # whatever the failed run left, the next one ends with one whole, provable archive
        again = archive_partition(conn, table, D, store)
        manifest = _whole_archive(s3_client, bucket, again.manifest_key)
        assert manifest["fingerprint"] == first.fingerprint
        assert deep_verify(conn, store, table, D) == []
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# Every request a multipart re-archive makes, failing for good: (method, path regex, query substring).
REQUESTS = [
    ("POST", None, "uploads"), ("PUT", None, "partNumber="), ("POST", None, "uploadId="),
    ("HEAD", r"\.g\d+\.jsonl$", None), ("PUT", r"\.manifest\.json$", None), ("DELETE", r"\.jsonl$", None),
    ("GET", r"\.manifest\.json$", None),
]


@pytest.mark.parametrize(("method", "path", "query"), REQUESTS, ids=[f"{m} {p or q}" for m, p, q in REQUESTS])
def test_a_re_archive_whose_request_fails_keeps_one_whole_archive(s3, conn, schema, big, bucket, s3_client,
                                                                  method, path, query):
    direct = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    first = archive_partition(conn, big, D, direct)
    conn.execute(sql.SQL("UPDATE {} SET body = 'edited' WHERE id = 1").format(sql.Identifier(schema, "big")))
    edited = str(fingerprint.compute(conn, sql.Identifier(schema, "big"), first.columns))
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method=method, path=path, query=query, action="error", status=503, times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        try:
            archive_partition(conn, big, D, store, overwrite=True)
        except ArchiveError as exc:
            assert exc.retryable is True and big.name in str(exc) and "2024-03-10" in str(exc)
        assert fault.hits >= 1
    manifest = _whole_archive(s3_client, bucket, first.manifest_key)
    assert manifest["fingerprint"] in (first.fingerprint, edited)
    final = archive_partition(conn, big, D, direct, overwrite=True)
    assert final.fingerprint == edited
    assert stored_keys(s3_client, bucket) == sorted([final.key, final.manifest_key])
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.fixture(scope="module")
def replica(pg):
    from archive_pipeline.local.local_stack import start_replica

    server = start_replica(pg)
    yield server
    server.stop()


def test_deep_verification_on_a_hot_standby_uses_a_scratch_database(pg, replica, schema, table, store):
    wait_for_replay(pg, replica)
    with replica.connect() as standby, pg.connect() as scratch:
        result = archive_partition(standby, table, D, store)  # archiving reads the standby
        assert result.rows == 200
        with pytest.raises(ArchiveError, match="hot standby allows no temporary tables"):
            deep_verify(standby, store, table, D)
        assert deep_verify(standby, store, table, D, scratch_conn=scratch) == []


def test_a_run_that_lost_its_table_day_lock_publishes_nothing(conn, table, store, s3_client, bucket):
    """Parquet reads on a second connection, so the first one is free mid-stream: let it give up the
    lock (as a pooler in transaction mode or a dead session would), and nothing may be published."""
    spec = table.model_copy(update={"format": "parquet"})
    released = []

    def give_up_the_lock(rows: int, size: int) -> None:
        if not released:
            released.append(conn.execute("SELECT pg_advisory_unlock_all()"))

    with pytest.raises(ArchiveError, match="no longer holds the table-day lock") as err:
        archive_partition(conn, spec, D, store, progress=give_up_the_lock, progress_every=0)
    assert released and err.value.retryable is True
    assert stored_keys(s3_client, bucket) == []


# --- a download that fails proves nothing: it raises, it is never a "problem" (found by a fault hunt) ------

OBJECT_GET = r"/2024-03-10(\.g\d+)?\.jsonl\.zst$"


@pytest.mark.parametrize(("fault", "retryable"), [
    (Fault(method="GET", path=OBJECT_GET, action="error", status=503, code="ServiceUnavailable", times=None), True),
    (Fault(method="GET", path=OBJECT_GET, action="flip_response_byte", times=None), True),
    (Fault(method="GET", path=OBJECT_GET, action="reset_after", times=None), True),
    (Fault(method="GET", path=OBJECT_GET, action="error", status=403, code="AccessDenied", times=None), False),
], ids=["503", "byte flipped in transit", "connection reset", "AccessDenied"])
def test_deep_verification_raises_when_the_download_fails(s3, conn, schema, table, store, bucket, fault, retryable):
    archive_partition(conn, table, D, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(fault)
        faulty = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        with pytest.raises(ArchiveError) as caught:
            deep_verify(conn, faulty, table, D)
        assert fault.hits >= 1
    error = caught.value
    assert (error.table, error.day, error.retryable) == (table.name, "2024-03-10", retryable)
    assert table.name in str(error) and "2024-03-10" in str(error) and "nothing was proven" in str(error)
    assert "damaged" not in str(error)
    assert deep_verify(conn, store, table, D) == []  # the archive itself was fine all along


def _multipart_put(s3_client, bucket: str, key: str, body: bytes) -> str:
    """``body`` stored as a one-part multipart upload: its ETag is no MD5, so no read can be checked
    against it."""
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = s3_client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=body)["ETag"]
    return s3_client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"ETag": etag, "PartNumber": 1}]})["ETag"].strip('"')


def test_deep_verification_of_a_multipart_object_tells_transit_corruption_from_damage(s3, conn, table, store, bucket,
                                                                                       s3_client):
    """Without an MD5 ETag a wrong digest may be the network's or the object's: a second download tells."""
    result = archive_partition(conn, table, D, store)
    body = download(s3_client, bucket, result.key)
    etag = _multipart_put(s3_client, bucket, result.key, body)  # the same bytes, now with a multipart ETag
    manifest = decode_manifest(download(s3_client, bucket, result.manifest_key))
    manifest["object"]["etag"] = etag
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))
    assert deep_verify(conn, store, table, D) == []
    with FaultProxy(s3.endpoint_url) as proxy:  # one download corrupted on the way: not a verdict
        flip = proxy.add(Fault(method="GET", path=OBJECT_GET, action="flip_response_byte", times=1))
        with pytest.raises(ArchiveError, match="nothing was proven") as caught:
            deep_verify(conn, S3Store(proxy.client(max_attempts=1), bucket, prefix="archive"), table, D)
        assert caught.value.retryable and flip.hits == 1
        assert len(proxy.requests(method="GET", path=OBJECT_GET)) == 2  # the second download was clean
    damaged = bytearray(body)
    damaged[len(damaged) // 2] ^= 0x01
    _multipart_put(s3_client, bucket, result.key, bytes(damaged))  # damaged in the store, same size
    problems = deep_verify(conn, store, table, D)
    assert problems == [f"md5: recorded {result.md5}, stored object hashes to {hashlib.md5(damaged).hexdigest()} "
                        "(two complete downloads agree)"]


def test_deep_verification_with_a_full_temp_dir_is_a_local_error(conn, schema, store, tmp_path):
    from archive_pipeline_tests.helpers import tiny_tmpfs

    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(sql.Identifier(schema, "bulky")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10', repeat(md5(g::text), 10) "
                         "FROM generate_series(1, 2000) g").format(sql.Identifier(schema, "bulky")))
    spec = TableSpec(name=f"{schema}.bulky", day_column="at", start_date="2024-03-01", format="csv",
                     compression="none")
    assert archive_partition(conn, spec, D, store).bytes > 512 * 1024
    with tiny_tmpfs(tmp_path / "tiny") as tiny:
        with pytest.raises(ArchiveError) as caught:
            deep_verify(conn, store, spec, D, temp_dir=str(tiny))
        assert list(tiny.iterdir()) == []
    error = caught.value
    text = str(error)
    assert type(error).__name__ == "LocalFileError" and not error.retryable
    assert (error.table, error.day) == (spec.name, "2024-03-10")
    assert f"the temp directory {tiny} is full" in text and "temp_dir" in text and "nothing was proven" in text
    assert "bucket" not in text and "credentials" not in text and "damaged" not in text
    assert deep_verify(conn, store, spec, D) == []
