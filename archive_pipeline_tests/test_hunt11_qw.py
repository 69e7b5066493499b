"""Hunt 11 (qw): an auditor's view — can anything call a wrong archive good? The bucket altered with s3_client
directly (a careless tool, a bad sync, a partial restore, an insider) and every verdict asked."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json

import zstandard
from psycopg import sql

from archive_pipeline.core import fingerprint
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.manifest import decode_manifest, encode_manifest
from archive_pipeline.core.verify import deep_verify, source_fingerprint
from archive_pipeline_tests.helpers import download

DAY = dt.date(2024, 3, 10)


def _reseal(s3_client, bucket, key, manifest_key, body, **fields):
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    manifest = decode_manifest(download(s3_client, bucket, manifest_key))
    head = s3_client.head_object(Bucket=bucket, Key=key)
    manifest["object"].update(bytes=len(body), md5=hashlib.md5(body).hexdigest(),
                              sha256=hashlib.sha256(body).hexdigest(), etag=head["ETag"].strip('"'))
    manifest.update(fields)
    manifest.pop("manifest_sha256", None)
    s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=encode_manifest(manifest))


def test_a_v5_archive_resealed_as_v2_is_proven_and_its_source_removed_though_its_rows_differ(
        conn, schema, store, s3_client, bucket):
    """An archive written now records row-hash-sum-v5. Someone with write access to the bucket alone replaces
    its object with rows whose unbounded bpchar values lost their trailing blanks ('x  ' -> 'x'), and reseals
    the manifest: digests of the new object and the fingerprint downgraded to row-hash-sum-v2 (which the README
    says cannot tell an unbounded bpchar's trailing blanks apart) of the source's own rows. Now the removal's
    proof computes v2 on both sides, finds them equal, and DELETEs the day's rows from PostgreSQL: the only
    copy left is an archive whose values are not the source's ('x' where the row held 'x  ').
    Expected: a proof before deletion never rests on a weaker algorithm than this version writes — the loaded
    archive and the source are both in PostgreSQL and can be compared by v5 whatever the manifest records
    (compare loaded-vs-manifest by the manifest's algorithm, loaded-vs-source by the strongest), or a manifest
    whose archiver version writes v5 yet records v2 is refused as altered. Either way the rows stay."""
    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, code bpchar)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00', 'x' || repeat(' ', g % 3) "
                         "FROM generate_series(1, 6) g").format(t))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date="2024-03-01",
                     retention={"keep_days": 1, "action": "delete"})
    result = archive_partition(conn, spec, DAY, store)
    body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(download(s3_client, bucket, result.key))).read()
    lines = [json.loads(line) for line in body.splitlines()]
    assert any(r["code"] != "x" for r in lines)  # (the premise: trailing blanks archived)
    altered = b"".join(json.dumps({**r, "code": r["code"].rstrip()}).encode() + b"\n" for r in lines)
    weak = str(source_fingerprint(conn, spec, DAY, fingerprint.V2))
    _reseal(s3_client, bucket, result.key, result.manifest_key, zstandard.ZstdCompressor().compress(altered),
            fingerprint=weak, uncompressed_bytes=len(altered))
    problems = deep_verify(conn, store, spec, DAY)
    try:
        remove_day(conn, spec, DAY, store, removed_by="test")
    except Exception as exc:  # noqa: BLE001 - a refusal is the right answer
        print("refused:", exc)
    left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0]
    assert left == 6, f"the source's rows were removed on the strength of an archive without their blanks ({problems})"


def _other_days_archive_at(s3_client, bucket, src, dst):
    """Copy ``src`` (an ArchiveResult) archive's object and manifest onto ``dst``'s keys, the manifest saying it is
    ``dst``'s day (table, day, period, object key and uri): a restore from backup that put the wrong file back."""
    body = download(s3_client, bucket, src.key)
    s3_client.put_object(Bucket=bucket, Key=dst.key, Body=body)
    theirs = decode_manifest(download(s3_client, bucket, src.manifest_key))
    ours = decode_manifest(download(s3_client, bucket, dst.manifest_key))
    head = s3_client.head_object(Bucket=bucket, Key=dst.key)
    forged = {**theirs, **{k: ours[k] for k in ("day", "table") if k in ours},
              **{k: ours[k] for k in ("period", "removed") if k in ours}}
    forged["object"] = {**theirs["object"], "key": ours["object"]["key"], "uri": ours["object"]["uri"],
                        "etag": head["ETag"].strip('"')}
    forged.pop("manifest_sha256", None)
    s3_client.put_object(Bucket=bucket, Key=dst.manifest_key, Body=encode_manifest(forged))


def _two_days(conn, schema):
    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 hour', "
                         "md5(g::text) FROM generate_series(1, 40) g").format(t))
    return t, TableSpec(name=f"{schema}.t", day_column="at", start_date="2024-03-01",
                        retention={"keep_days": 1, "action": "delete"})


def test_verify_deep_proves_a_removed_day_whose_archive_holds_the_next_days_rows(conn, schema, store, s3_client,
                                                                                 bucket):
    """Day D was archived, proven and removed from the source by retention (delete): its archive is all there is.
    Then a restore of the bucket from backup (or a careless copy) puts day D+1's object at D's key, with D+1's
    manifest edited to be D's (table, day, object key; sizes, MD5, SHA-256, rows and fingerprint all D+1's, so
    everything is consistent). `verify --deep` (deep_verify) now returns no problem: a removed day "is proven by
    its archive alone", i.e. the loaded rows against the manifest's own fingerprint, and every one of the 17 rows
    it calls D's archive is dated 2024-03-11. The 23 rows of 2024-03-10 exist nowhere, and the proof says ok.
    Expected: a problem (the archive's rows are not the day's: N rows have a day column outside 2024-03-10).
    Fix idea: where the proof has no source to compare with, also count the loaded rows whose day_column falls
    outside the manifest's period (day_filter over the temporary table); any is a failed proof."""
    t, spec = _two_days(conn, schema)
    d, e = DAY, DAY + dt.timedelta(days=1)
    ours, theirs = archive_partition(conn, spec, d, store), archive_partition(conn, spec, e, store)
    assert (ours.rows, theirs.rows) == (23, 17)
    remove_day(conn, spec, d, store, removed_by="test")
    _other_days_archive_at(s3_client, bucket, theirs, ours)
    problems = deep_verify(conn, store, spec, d)
    assert problems, "2024-03-10's archive holding only rows of 2024-03-11 is proven as 2024-03-10's"


def test_restore_of_a_removed_day_whose_archive_holds_the_next_days_rows_restores_them_as_the_day(
        conn, schema, store, s3_client, bucket):
    """As above: day D archived and removed; a bucket restore from backup put D+1's object (and its manifest,
    edited consistently to be D's) at D's key. `restore --day D --into new --target back` restores 17 rows, every
    one dated 2024-03-11, reports "fingerprint ... equals the manifest's" and commits: the user who recovers the
    lost day gets another day's rows under its name (and into original, where D+1 was removed too, they would go
    in beside D+1's own restore as duplicates).
    Expected: restore refuses (nothing created) naming the day and the cause: the archive's rows are not the
    day's (N rows whose day column falls outside 2024-03-10); the README promises a restore of exactly the
    day's rows. Fix idea: in the restore's check transaction, count the loaded rows outside the manifest's
    period (day_filter) where the manifest has a day_column, and roll back if any."""
    from archive_pipeline.core.restore import restore_day
    t, spec = _two_days(conn, schema)
    d, e = DAY, DAY + dt.timedelta(days=1)
    ours, theirs = archive_partition(conn, spec, d, store), archive_partition(conn, spec, e, store)
    remove_day(conn, spec, d, store, removed_by="test")
    _other_days_archive_at(s3_client, bucket, theirs, ours)
    try:
        restore_day(conn, store, spec, d, into="new", target=f"{schema}.back")
    except Exception as exc:  # noqa: BLE001 - a refusal is the right answer
        assert "2024-03-10" in str(exc), exc
    outside = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at >= '2024-03-11+00' OR at < '2024-03-10+00'")
                           .format(sql.Identifier(schema, "back"))).fetchone()[0] \
        if conn.execute("SELECT to_regclass(%s)", (f"{schema}.back",)).fetchone()[0] else 0
    assert outside == 0, f"{outside} rows of another day were restored as 2024-03-10's"


def test_latest_archive_intact_passes_an_archive_rolled_back_to_an_older_generation(conn, schema, archive_env,
                                                                                     s3_client):
    """Day D was archived (generation 1), then a row changed and it was archived again with overwrite (generation
    2, `<key>.g2`, the materialization records its object and MD5). Then the bucket is partly restored from a
    backup taken before the overwrite: generation 1's manifest and object are put back at their keys. The
    `verify_archives` job's `latest_archive_intact` passes: the recorded object is no longer the manifest's,
    and `_archived_again` takes any other object the manifest names for "archived again since (generation 1,
    ...)" and checks it against its own manifest only. Nobody archived it again: the generation went backwards,
    and the day's archive now holds the rows as they were before the change.
    Expected: the check fails, naming the day and that the manifest now names an older generation (1) than the
    one recorded (2): rolled back, e.g. by a restore from backup; remedy: archive the day again (overwrite).
    Fix idea: in _archived_again, only a later generation (or a later archived_at) is "archived again since"."""
    from dagster import instance_for_test

    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.test_dagster import _check_results, events_config, job_name

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    defs = build_definitions(events_config(schema, DAY))
    job = defs.resolve_job_def(job_name(schema))
    key = f"archive/{schema}.events/2024/03/{DAY.isoformat()}.jsonl.zst"
    mkey = key + ".manifest.json"
    with instance_for_test() as instance:
        assert job.execute_in_process(partition_key=DAY.isoformat(), instance=instance).success
        backup = {k: download(s3_client, archive_env, k) for k in (key, mkey)}
        conn.execute(sql.SQL("UPDATE {} SET user_id = user_id + 1 WHERE id = (SELECT min(id) FROM {})").format(
            sql.Identifier(schema, "events"), sql.Identifier(schema, "events")))
        again = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, run_config={
            "ops": {f"archive__{schema}__events": {"config": {"overwrite": True}}}})
        [event] = again.get_asset_materialization_events()
        assert event.materialization.metadata["object_key"].value.endswith(".g2.jsonl.zst")  # (the premise)
        for k, body in backup.items():  # the partial restore from a backup taken before the overwrite
            s3_client.put_object(Bucket=archive_env, Key=k, Body=body)
        verdict = _check_results(defs.resolve_job_def("verify_archives").execute_in_process(
            instance=instance, raise_on_error=False))["latest_archive_intact"]
    assert not verdict.passed, verdict.description


def _multipart_day(conn, schema, store):
    """A day whose archive is stored in several parts (over the 5 MiB part size), its spec and result."""
    t = sql.Identifier(schema, "big")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, body text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00', md5(g || 'a') || md5(g || 'b') || "
                         "md5(g || 'c') || md5(g || 'd') || md5(g || 'e') || md5(g || 'f') || md5(g || 'g') || "
                         "md5(g || 'h') FROM generate_series(1, 60000) g").format(t))
    spec = TableSpec(name=f"{schema}.big", day_column="at", start_date="2024-03-01",
                     retention={"keep_days": 1, "action": "delete"})
    result = archive_partition(conn, spec, DAY, store)
    assert result.parts > 1, result  # (the premise: a multipart object, whose ETag is no MD5)
    return t, spec, result


def _copy_onto_itself_in_other_parts(s3_client, bucket, key):
    """What `aws s3 cp s3://b/k s3://b/k --metadata-directive REPLACE --metadata reviewed=yes` (or a storage
    class change, a replication or a migration tool) does to an object over its multipart threshold: the very
    same bytes, copied in parts of its own size (here 6 MiB), so the ETag is another "<md5 of md5s>-N"."""
    head = s3_client.head_object(Bucket=bucket, Key=key)
    extra = {k: head[k] for k in ("ContentType", "ContentEncoding") if head.get(k)}
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=key, Metadata={"reviewed": "yes"}, **extra)
    size, step, parts = head["ContentLength"], 6 * 1024 * 1024, []
    for number, start in enumerate(range(0, size, step), 1):
        part = s3_client.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number,
                                          CopySource={"Bucket": bucket, "Key": key},
                                          CopySourceRange=f"bytes={start}-{min(start + step, size) - 1}")
        parts.append({"PartNumber": number, "ETag": part["CopyPartResult"]["ETag"]})
    s3_client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                        MultipartUpload={"Parts": parts})
    after = s3_client.head_object(Bucket=bucket, Key=key)
    assert after["ContentLength"] == size and after["ETag"] != head["ETag"], (head["ETag"], after["ETag"])


def test_a_multipart_archive_copied_onto_itself_in_other_parts_can_never_be_removed(conn, schema, store, s3_client,
                                                                                     bucket):
    """A day archived as a multipart object (ETag "<md5 of parts>-2"). An operator adds a metadata tag with
    `aws s3 cp s3://b/k s3://b/k --metadata-directive REPLACE` (or a migration tool copies the bucket): the CLI
    copies an object over its threshold in parts of its own size, so the bytes are the same and the ETag is
    another multipart ETag. The removal's proof downloads the object and proves it (size, MD5, SHA-256 and the
    rows' fingerprint all match), then `_require_proven_object` compares the HEAD's ETag with the manifest's and
    refuses: "its proven archive ... is replaced ...; run the removal again: it proves the archive as it is now"
    (retryable). Every run proves the whole day again and refuses again, for ever.
    Expected: the day is removed: an object the proof just downloaded and found to hold exactly the recorded
    bytes is the proven object. Fix idea: where the ETag differs but the size matches and neither ETag is an MD5,
    compare a checksum the proof saw (or the proven download's ETag/VersionId/LastModified) instead of the
    manifest's upload-time ETag; or record the proven HEAD's ETag in the proof and compare with that."""
    t, spec, result = _multipart_day(conn, schema, store)
    _copy_onto_itself_in_other_parts(s3_client, bucket, result.key)
    assert deep_verify(conn, store, spec, DAY) == []  # (the proof: the same bytes, the same rows)
    from archive_pipeline.core.lifecycle import RemovalRefused
    try:  # (as its remedy says: run the removal again; the second run refuses the same way)
        remove_day(conn, spec, DAY, store, removed_by="test")
    except RemovalRefused:
        remove_day(conn, spec, DAY, store, removed_by="test")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0] == 0


def test_verify_download_calls_a_multipart_archive_copied_onto_itself_in_other_parts_replaced(conn, schema, store,
                                                                                             s3_client, bucket):
    """The same harmless re-copy as above (same bytes, a multipart ETag of other part sizes). `verify --download`
    (verify_archive(deep=True)), which the README says "also checks MD5 and SHA-256", reports "ETag: stored ...,
    manifest ... (object replaced?)" and never downloads: the download that would settle it is skipped once the
    HEAD found a problem. `verify --deep` proves the same day (digests and rows). So the stronger light check
    calls a good archive bad for good, and a user is sent to re-archive or restore from backup for nothing.
    Expected: with --download, an ETag that differs where neither is an MD5 is settled by the download: the
    size, MD5 and SHA-256 of the bytes match the manifest's, so there is no problem (at most a note that the
    object was re-copied). Fix idea: in verify_archive, when deep, download whenever the only HEAD problem is
    the ETag and the size matches, and drop the ETag problem if the digests match."""
    from archive_pipeline.core.verify import verify_archive
    t, spec, result = _multipart_day(conn, schema, store)
    _copy_onto_itself_in_other_parts(s3_client, bucket, result.key)
    assert deep_verify(conn, store, spec, DAY) == []  # (verify --deep: proven)
    day_key = result.manifest_key[:-len(".manifest.json")]
    assert verify_archive(store, day_key, {}, deep=True, owner=(spec.name, DAY.isoformat())) == []
