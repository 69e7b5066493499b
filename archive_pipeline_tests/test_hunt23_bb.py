"""Hunt 23 (bb): versioned buckets, object lock, delete markers and foreign objects in the bucket.

What held up (probed, no test here): an Object Lock bucket with a default retention (GOVERNANCE and COMPLIANCE, moto)
and a bucket whose versioning was suspended after the first archive: archive, an overwrite after a late row (a new
generation, the old one retired by a delete marker), light verify and a removal all go green and exact (every PUT and
part carries Content-MD5, and no request names a VersionId, so the lock never refuses a delete: it only adds a delete
marker). A plain versioned bucket is covered by test_hunt20_ze. What does not hold: a foreign object (written by
someone else, none of our metadata) at one of the day's generation keys is deleted, by an archive run and by a
removal, without asking whose it is."""

from __future__ import annotations

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.keys import generation_key
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.verify import verify_archive
from archive_pipeline_tests.test_hunt20_zj import DAY, _events

FOREIGN = b"id;note\n1;someone else's export, not an archive of ours\n"


def _keys(s3_client, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_a_foreign_object_put_over_an_archived_days_object_is_deleted_by_the_next_archive_run(
        conn, schema, store, s3_client, bucket, temp_dir):
    """Scenario: 2024-03-10 of ``ev`` is archived (generation 1 at ``.../2024-03-10.jsonl.zst``). Someone else's
    file is then put at that very key by another tool (a plain PutObject: none of our ``table``/``day``/``writer``
    metadata, other bytes, other size); ``verify`` says so itself: "ETag: stored ..., manifest ... (object
    replaced?)". The source is unchanged and the table's archive run comes again (schedule, sensor, backfill).

    Now: the run finds the day's object "damaged" and archives the day again as generation 2 (fine), and
    archive._retire puts the previous manifest's object key into ``superseded`` because the new archive has as many
    rows; after the commit, _commit deletes every superseded key that matches the generation pattern
    (``store.delete_quietly(key)``) without looking at what is stored there now. The foreign object, which the
    run itself had just told apart from the recorded one by its ETag and size, is deleted: on an unversioned bucket
    it is gone for good, and the run is green with nothing said about it.

    Should: only the object the previous manifest recorded is retired; an object at a retired key whose HEAD does
    not match the record (ETag/size, or no ``table``/``day`` metadata naming this table-day) is not ours and is
    left alone (kept and listed under ``kept``, with a warning naming it). Fix idea: in _commit, HEAD each
    superseded key and delete only where it matches the manifest that retired it (or use DeleteObject with
    If-Match of the recorded ETag, which S3 and moto support)."""
    spec = _events(conn, schema)
    first = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    s3_client.put_object(Bucket=bucket, Key=first.key, Body=FOREIGN)  # another tool's object, no metadata of ours
    assert any("object replaced?" in p for p in verify_archive(store, first.key, {}))

    again = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert again.rows == 5 and again.key == generation_key(first.key, 2)
    assert first.key in _keys(s3_client, bucket), (
        f"the foreign object at {first.key} was deleted by the archive run "
        f"(the bucket holds {_keys(s3_client, bucket)})")
    assert s3_client.get_object(Bucket=bucket, Key=first.key)["Body"].read() == FOREIGN


def test_a_removal_deletes_a_foreign_object_at_a_generation_key_of_the_day(conn, schema, store, s3_client, bucket,
                                                                           temp_dir):
    """Scenario: ``ev`` with ``retention: {keep_days: 30, action: delete}``; 2024-03-10 archived (generation 1).
    An object that is not ours sits at the day's generation-2 key ``.../2024-03-10.g2.jsonl.zst`` (put there by
    another tool or by hand: a plain PutObject, none of our metadata). ``prune`` (remove_day) of the day runs.

    Now: the removal proves the archive and deletes the rows (fine), then lifecycle._tidy_removed calls
    leftovers.tidy_day, which takes every listed key matching the day's generation pattern that the manifest does
    not name for "a generation no manifest names" (a killed run's uncommitted object) and deletes it
    (``store.delete_quietly``) without a HEAD: the foreign object is deleted, logged only at INFO as "removed ...,
    a generation no manifest names". A skip-only archive run of the day does the same (archive._tidy).

    Should: a leftover is deleted only where it is known to be ours: every object our runs write carries ``table``
    and ``day`` metadata (and a fresh key's ``writer``), so an object without them, or naming another table-day, is
    not a killed run's generation; it is left alone with a warning naming it (as tidy_day already does for another
    database's or table's). Fix idea: in tidy_day, HEAD each stray generation and delete only one whose metadata
    names the owner's table-day."""
    spec = _events(conn, schema, retention={"keep_days": 30, "action": "delete"})
    first = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    foreign = generation_key(first.key, 2)
    s3_client.put_object(Bucket=bucket, Key=foreign, Body=FOREIGN)

    removal = remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert removal.rows == 5 and not removal.dry_run
    assert foreign in _keys(s3_client, bucket), (
        f"the removal deleted the foreign object {foreign} (the bucket holds {_keys(s3_client, bucket)})")
