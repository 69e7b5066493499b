"""Hunt 23 (bd): regressions and new holes in recent fixes (a second review of the last ~45 product commits: the
fix's sibling paths, its other caller, the CLI beside the Dagster layer, values at the edge of their type)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os

from archive_pipeline.core.store import S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt17_wf import _env, cli

DAY = dt.date(2024, 3, 10)


def _table(schema: str, name: str = "t", **extra) -> dict:
    return {"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat(), **extra}


def _copy_onto_itself_in_parts(s3_client, bucket: str, key: str) -> str:
    """What a storage-class change or ``aws s3 cp`` above its multipart threshold does: the same bytes stored again
    through a multipart copy (one part), whose ETag is ``<md5 of the part md5s>-1``, not the object's MD5."""
    head = s3_client.head_object(Bucket=bucket, Key=key)
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=head["ContentType"],
                                               Metadata=head.get("Metadata", {}))["UploadId"]
    part = s3_client.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1,
                                      CopySource={"Bucket": bucket, "Key": key})
    s3_client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]})
    after = s3_client.head_object(Bucket=bucket, Key=key)
    assert after["ContentLength"] == head["ContentLength"] and after["ETag"].strip('"').endswith("-1"), after
    return after["ETag"]


def test_cli_archive_of_a_hand_emptied_day_calls_an_intact_archive_copied_in_parts_lost(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Scenario: a column-mode table; day D (3 rows) archived with `archive --day D` (one small PUT). The bucket's
    objects are later copied onto themselves in parts (a storage-class change, `aws s3 cp` above its multipart
    threshold): the same bytes, the same size, an ETag `<...>-1`. Then D's rows are deleted by hand, and the cron's
    `archive --day D` runs.

    Now: commit 2c6a59c made cli._absent_days check such a day's object with verify's *light* check
    (cli._archive_lost -> verify_archive, one HEAD): the recorded size under another ETag is reported as "ETag:
    stored ..., manifest ... (object replaced?)", and the day fails, exit 1, saying its archive "does not hold
    them ... the rows are in neither place now" and to restore the object from the bucket's versions. The archive
    holds exactly the 3 rows. The Dagster layer's sibling check (assets._refuse_damaged, for a removed day) knows
    this case and lets the download's digests decide.

    Should: no-data, exit 0, with the note that the archive (3 rows) is kept, as for any intact archive: a recorded
    size under another ETag is no proof of damage; fix idea: in _archive_lost, where the HEAD shows the recorded
    size under another ETag, decide by the download's digests (verify_archive(..., deep=True) or the
    _download_problems path _refuse_damaged uses) before calling the rows lost."""
    conn.execute(f"CREATE TABLE {schema}.t (id int, at date)")
    conn.execute(f"INSERT INTO {schema}.t SELECT g, %s FROM generate_series(1, 3) g", (DAY,))
    env = _env(pg, s3, bucket, tmp_path, [_table(schema)])
    first = cli(env, "archive", "--day", DAY.isoformat())
    assert first.returncode == 0, first.stdout + first.stderr
    [key] = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]
             if DAY.isoformat() in o["Key"] and not o["Key"].endswith(".json") and "/_" not in o["Key"]]
    _copy_onto_itself_in_parts(s3_client, bucket, key)
    conn.execute(f"DELETE FROM {schema}.t WHERE at = %s", (DAY,))
    done = cli(env, "archive", "--day", DAY.isoformat(), "--json")
    said = json.loads(done.stdout)["days"]
    assert done.returncode == 0 and [d["status"] for d in said] == ["no-data"], (
        f"exit {done.returncode}: {json.dumps(said)[:900]}")


def test_single_put_answered_with_a_date_at_the_end_of_the_calendar_escapes_as_overflow_and_leaves_its_object(
        s3, bucket, temp_dir):
    """Scenario: a small object written through the store's API (``store.begin(key, fresh=True)``, the default
    ``stale_uploads=True``, then ``finish``), as every small day is. The PutObject lands; the answer's Date header
    is `Fri, 31 Dec 9999 23:59:59 GMT` (a store or gateway with a broken clock: a value at the edge of its type).

    Now: commits 4dee108/02ed2e0 made S3Upload._put_single bound the stale-upload cleanup by
    ``_server_time(answer) + timedelta(seconds=1)``; _server_time guards only the parse (TypeError, ValueError),
    and the addition, outside abort_stale_uploads_quietly's guard, raises OverflowError ("date value out of
    range"). finish() aborts (nothing to abort on this path) and re-raises: a bare OverflowError, no ArchiveError
    (no table, day, cause, classification), and the object just published stays at the key, named by no manifest.

    Should: the cleanup is a best effort (its own failures are logged, never raised); a Date that cannot bound it
    falls back to our clock (or the cleanup is skipped), and the write succeeds; fix idea: compute
    initiated_before inside the guarded call, or catch OverflowError in _server_time's caller."""
    key = "archive/t/2024-03-10.csv"
    body = b"id,at\n1,2024-03-10\n"
    path = temp_dir / "day.csv"
    path.write_bytes(body)
    fd = os.open(path, os.O_RDONLY)
    with FaultProxy(s3.endpoint_url) as proxy:
        client = proxy.client(max_attempts=1)
        store = S3Store(client, bucket, prefix="archive")
        proxy.add(Fault(method="PUT", path=r"2024-03-10\.csv$", action="set_header",
                        header=("Date", "Fri, 31 Dec 9999 23:59:59 GMT")))
        try:
            upload = store.begin(key, content_type="text/csv", metadata={"table": "t", "day": "2024-03-10"},
                                 fresh=True)
            try:
                stored = upload.finish(fd, len(body), hashlib.md5(body).hexdigest())
            except OverflowError as exc:
                left = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
                raise AssertionError(f"finish() raised {exc!r}; left in the bucket: {left}") from exc
        finally:
            os.close(fd)
    assert stored.key == key and stored.size == len(body)


def test_verify_over_two_tables_passes_one_whose_archive_is_not_there_at_all(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: two tables, `a` and `b`, each with 3 rows of day D. `a` is archived; `b` never was (its key_template
    was mistyped in the deployment, or it was added to the configuration and its first archive never ran). The
    monitoring job runs `verify` over the whole selection.

    Now: commit 36a51c9 made a verify that finds no day archived while PostgreSQL has rows of some days exit 1
    ("nothing was verified ... point ARCHIVE_S3_BUCKET and ARCHIVE_S3_PREFIX at the archive"), but only when the
    run as a whole found nothing (cli.verify: ``_nothing_verified(...) if not results``): one archived day of
    another table hides it. `verify` says "1 archived day(s) checked, 0 with problems", exit 0, and `b`, whose rows
    have no archive anywhere, passes the monitoring that runs it, the very case the fix was for.

    Should: the rule is per table: a chosen table of which no day of the selection is archived while PostgreSQL
    holds rows of it is no pass (exit 1, naming the table and where it looked), as for a run of that table alone
    (`verify --table b` exits 1); fix idea: call _nothing_verified for each table whose results are empty."""
    for name in ("a", "b"):
        conn.execute(f"CREATE TABLE {schema}.{name} (id int, at date)")
        conn.execute(f"INSERT INTO {schema}.{name} SELECT g, %s FROM generate_series(1, 3) g", (DAY,))
    env = _env(pg, s3, bucket, tmp_path, [_table(schema, "a"), _table(schema, "b")])
    assert cli(env, "archive", "--table", f"{schema}.a", "--day", DAY.isoformat()).returncode == 0
    alone = cli(env, "verify", "--table", f"{schema}.b")
    assert alone.returncode == 1, alone.stdout + alone.stderr  # the table alone: no pass
    both = cli(env, "verify")
    assert both.returncode == 1, (f"verify over both tables: exit {both.returncode}: "
                                  f"{(both.stdout + both.stderr).strip()[-600:]}")
