"""Hunt 26 (dm): the process killed (SIGKILL) between two steps, then the user runs the day again."""

from __future__ import annotations

import hashlib
import json
import os

import yaml
from psycopg import sql

from archive_pipeline.core.archive import _Archiving, archive_partition
from archive_pipeline.core.keys import manifest_key
from archive_pipeline_tests.helpers import download, run_cli
from archive_pipeline_tests.test_integrity import D, _killed_child, _open_uploads, big, stored_keys  # noqa: F401


def _cli_env(pg, s3, bucket, tmp_path, table: dict) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn, ARCHIVE_S3_BUCKET=bucket,
               ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    return env


def test_a_first_archive_killed_after_its_object_completed_keeps_a_copy_for_ever_when_rerun_with_other_parts(
        pg, s3, conn, schema, big, bucket, s3_client, tmp_path):
    """**Scenario:** the code location's store is set to another part size than the command line's 8 MiB (the
    README: "raise `part_size_mb` for larger days"; here 5 MiB, as archive_child uploads). A first archive of a
    day is SIGKILLed right after the store answered CompleteMultipartUpload (the object whole, no manifest yet).
    The user then runs `archive-pipeline archive --day 2024-03-10`, which archives the very same rows (byte for
    byte the same object) in other parts.

    **Now:** the re-run writes generation 2 and keeps the killed run's object for good under ``kept`` ("the
    manifest before this one was missing"): ``_Archiving._retire`` (archive.py) recognises the killed run's copy
    as "the same bytes" only by ``_same_bytes``, which compares the listed ETag with the new object's, and a
    multipart ETag depends on the part layout, not only on the bytes (an MD5 of the parts' MD5s). Every later
    run carries the ``kept`` entry on and no tidying deletes it (checked by hand: a skip, then an `--overwrite`
    to g3, both leave it): the day's storage stays doubled, the same leftover
    test_hunt7_ms fixed only for a re-run that happens to cut the same parts.

    **Should:** the re-run leaves the day with exactly its object and its manifest (a stored generation holding
    the new object's very bytes is no only copy of anything, whatever parts it was uploaded in). Fix idea: where
    the listed size equals the new object's but the ETag does not, tell the bytes apart by content (download the
    candidate and compare its MD5/SHA-256 with the new object's, or record the bytes' digests in the upload
    marker the killed run left beside it) before keeping it."""
    spec = {"name": big.name, "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    env = _cli_env(pg, s3, bucket, tmp_path, spec)
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, False, temp, ("after-call", "CompleteMultipartUpload", 1))
    stray = [k for k in stored_keys(s3_client, bucket) if not k.endswith(".uploading")]
    assert len(stray) == 1 and not stray[0].endswith(".manifest.json"), stray  # a whole object, no manifest
    killed = hashlib.md5(download(s3_client, bucket, stray[0])).digest()  # (read now: the re-run retires it)

    done = run_cli(["archive", "--day", D.isoformat(), "--json"], env, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    day = json.loads(done.stdout)["days"][0]
    assert (day["status"], day["rows"]) == ("archived", 30000), day
    if day["key"] != stray[0]:  # (the killed run's copy holds the very bytes just archived: same size and MD5)
        ours = download(s3_client, bucket, day["key"])
        assert killed == hashlib.md5(ours).digest()
    assert _open_uploads(s3_client, bucket) == []
    assert stored_keys(s3_client, bucket) == sorted([day["key"], manifest_key(stray[0])])


def test_a_killed_run_copy_of_the_same_size_but_other_bytes_is_still_kept(
        pg, s3, conn, schema, big, store, bucket, s3_client, tmp_path):
    """The other side of the content comparison: a killed first archive's whole object, then one row changed to
    text of the same length, so the re-run's object has the killed one's size (and another part layout) but not its
    bytes. That copy may be the only one of the row as it was: kept, named in the manifest, never deleted."""
    spec = {"name": big.name, "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, False, temp, ("after-call", "CompleteMultipartUpload", 1))
    stray = [k for k in stored_keys(s3_client, bucket) if not k.endswith(".uploading")]
    assert len(stray) == 1, stray
    conn.execute(sql.SQL("UPDATE {} SET body = upper(body) WHERE id = 1").format(sql.Identifier(schema, "big")))
    result = archive_partition(conn, big, D, store)
    assert s3_client.head_object(Bucket=bucket, Key=stray[0])["ContentLength"] == result.bytes  # same size
    manifest = json.loads(download(s3_client, bucket, result.manifest_key))
    assert [entry["key"] for entry in manifest["kept"]] == stray, manifest["kept"]
    assert stored_keys(s3_client, bucket) == sorted([stray[0], result.key, result.manifest_key])


def test_a_copy_an_earlier_run_kept_for_want_of_a_manifest_is_retired_once_a_later_run_proves_it_the_same(
        pg, s3, conn, schema, big, store, bucket, s3_client, tmp_path, monkeypatch):
    """A day left doubled before the content comparison existed (the killed run's object of the very same bytes
    under ``kept``: "the manifest before this one was missing"): the next archive of the day (an overwrite) proves
    it holds its own bytes and retires it with the generation it replaces, rather than carry it on for ever."""
    spec = {"name": big.name, "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, False, temp, ("after-call", "CompleteMultipartUpload", 1))
    stray = [k for k in stored_keys(s3_client, bucket) if not k.endswith(".uploading")]
    with monkeypatch.context() as patched:  # (as runs before the comparison did for a copy in other parts)
        patched.setattr(_Archiving, "_same_bytes", lambda *_: False)
        second = archive_partition(conn, big, D, store)
    assert [e["key"] for e in json.loads(download(s3_client, bucket, second.manifest_key))["kept"]] == stray
    third = archive_partition(conn, big, D, store, overwrite=True)
    assert not json.loads(download(s3_client, bucket, third.manifest_key))["kept"]
    assert stored_keys(s3_client, bucket) == sorted([third.key, third.manifest_key])
