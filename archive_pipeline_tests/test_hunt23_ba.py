"""Hunt 23 (ba): S3 faults during multipart-sized reads: restore, compare, list, verify --deep of big objects
(core/restore.py, core/verify.py, core/listing.py, core/store.py read path, core/streams.py).

What held up (swept through the fault proxy on the GET of a two-part CSV object, once, twice and every time, for
restore_day, deep_verify and compare_days; no test here): a byte flipped once (restore downloads again and restores;
deep verification refuses retryably, "no verdict"), a body cut short, a reset mid-body, a 500, a 503 SlowDown, a 200
with an S3 <Error> body (answered with its own Content-Length: "the GET answered 182 bytes where ... are stored",
retryable), a wrong Content-Length header, a missing ETag, another multipart-style ETag, a plain-MD5 ETag that is not
the bytes' ("came back corrupted", retryable), a 403 (permanent) and a 404 the HEADs contradict ("answered
inconsistently", retryable): each names table and day, is classified as the fault is, loads no row and leaves no
temp file in temp_dir. compare (without --rows) reads no object at all. No read path sends a ranged GET, so a stale
ETag on a ranged GET has nothing to hit."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import ArchiveCorruptError, restore_day
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import download

DAY = dt.date(2024, 3, 10)


def _big_day(conn, schema: str, rows: int = 90_000) -> TableSpec:
    """A day whose CSV (no compression, ~7 MiB) is over one 5 MiB part: stored as a two-part multipart object,
    whose ETag is no MD5."""
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, body text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, md5(g::text) || md5((g * 7)::text) "
                         "FROM generate_series(1, %s) g").format(sql.Identifier(schema)), (DAY, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="csv",
                     compression="none")


def _rot_in_place(s3_client, bucket: str, key: str, part_size: int) -> None:
    """The stored object replaced by the same bytes in the same parts, one bit of the second part flipped: bit rot
    in the store (what a replica restored from a damaged disk holds), same size, a multipart ETag again."""
    body = bytearray(download(s3_client, bucket, key))
    body[part_size + 1000] ^= 0x01
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=key, ContentType="text/csv")["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(body), part_size), start=1):
        answer = s3_client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                       Body=bytes(body[start:start + part_size]))
        parts.append({"ETag": answer["ETag"], "PartNumber": number})
    s3_client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})


def test_restore_of_a_multipart_object_damaged_in_the_store_is_called_retryable_though_two_downloads_agree(
        conn, schema, store, s3_client, bucket, temp_dir):
    """Scenario: a day archived as a two-part object (7 MiB of CSV, part size 5 MiB). Later one bit of the stored
    object rots (the same size, in the same two parts: a multipart ETag, no MD5). The operator restores the day
    into a new table; every GET answers the stored (damaged) bytes faithfully.

    Now: restore.downloaded gets DownloadError(damaged=None) from download_to (the MD5 is not the manifest's, and the
    multipart ETag cannot say whether the way or the store is at fault), downloads again as its own comment says
    ("downloaded again, the same wrong MD5 says the stored object is damaged"), gets the same wrong MD5, and then
    re-raises the second download's error as it is: damaged=None, retryable=True, "corrupted in transit or damaged
    in the store; if it repeats, the stored object is damaged" (it just did). ArchiveCorruptError is raised with
    retryable=True, so Dagster and the command line retry a restore that no retry can fix, and call it transient.
    Deep verification of the very same object (verify._stored_bytes_differ) gives the verdict "two complete
    downloads agree" (damaged), and a single-PUT object damaged alike is refused not retryable (test_restore's
    test_corrupted_archive_is_refused_before_loading).

    Should: two complete downloads with the same wrong MD5 are a damaged archive: ArchiveCorruptError, not
    retryable, saying "is damaged ... restore it from a replica or backup" (fix idea: in downloaded(), when the
    second download's ``damaged is None`` and ``sink.md5 == first_md5``, raise a DownloadError with damaged=True,
    retryable=False, as verify does)."""
    spec = _big_day(conn, schema)
    archived = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    _rot_in_place(s3_client, bucket, archived.key, store.part_size)
    problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    assert any("two complete downloads agree" in p for p in problems), problems  # verify: damaged, a verdict
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    error = caught.value
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.back",)).fetchone()[0] is None
    assert list(temp_dir.iterdir()) == []
    assert isinstance(error, ArchiveCorruptError), repr(error)
    assert error.table == spec.name and error.day == DAY.isoformat()
    assert not error.retryable, (f"a multipart object whose two downloads agree on the same wrong MD5 was called "
                                 f"retryable: {error}")
