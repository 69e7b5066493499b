"""Hunt 16 (vb): the process interrupted, or a request failing, between two steps of an archive's commit; two runs
racing on one day."""

from __future__ import annotations

import pytest
from psycopg import sql

from archive_pipeline.core import archive as archive_module
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline_tests.test_hunt3_o import DAYS, small_table
from archive_pipeline_tests.test_integrity import _open_uploads, stored_keys

D = DAYS[0]


def _spec(schema: str, **extra):
    return parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": D.isoformat(),
                                     **extra}]}).tables[0]


def _late_row(conn, schema: str, n: int = 99999) -> None:
    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, '2024-03-10 05:00+00', 'late')").format(
        sql.Identifier(schema, "ev")), (n,))


def _manifest(s3_client, bucket, key: str) -> dict:
    import json
    return json.loads(s3_client.get_object(Bucket=bucket, Key=key + ".manifest.json")["Body"].read())


def test_an_interrupt_arriving_once_the_manifest_put_has_landed_is_swallowed_and_the_run_goes_on(
        conn, schema, store, s3_client, bucket, monkeypatch):
    """A day archived; late rows arrive; `archive --overwrite` (or a Dagster re-materialization, or a range/backfill
    run) is stopped by Ctrl-C / SIGTERM / a terminated run just as the manifest PUT of the new generation has been
    answered (the KeyboardInterrupt, or DagsterExecutionInterruptedError, is raised in put_bytes after the store
    stored the manifest). _put_manifest notes it ("committing") and re-raises, but _commit's `except BaseException`
    reads the manifest back, finds it is ours, logs "writing ... reported , but the manifest is in the store:
    committed" and carries on: the cancellation is swallowed, archive_partition returns a normal result, and a
    command archiving a range (or a Dagster step doing several days) goes on to its next days as if the user had
    never pressed Ctrl-C. README: 130/143 "cancelled: one line names what was interrupted ... cancelled after the
    day's commit, what it says is true of that". Expected: the interrupt propagates (the day is archived, the
    manifest names the new object, and the note says so: "tidying"/committed). Fix idea: in _commit, when the
    manifest read back is ours and `is_cancellation(exc)`, set _committed (retire the superseded quietly or leave
    it to the next run's tidy), note it as cancelled after the commit, and re-raise instead of logging."""
    small_table(conn, schema, rows=300)
    spec = _spec(schema)
    archive_partition(conn, spec, D, store)
    _late_row(conn, schema)
    real = store.put_bytes

    def put(key, data, *args, **kwargs):
        etag = real(key, data, *args, **kwargs)
        if key.endswith(".manifest.json"):
            raise KeyboardInterrupt  # Ctrl-C arriving as the store's answer to the manifest PUT comes in
        return etag

    monkeypatch.setattr(store, "put_bytes", put)
    outcome = "returned normally"
    try:
        archive_partition(conn, spec, D, store, overwrite=True)
    except KeyboardInterrupt as exc:
        outcome = f"interrupted ({getattr(exc, 'interrupted', None)})"
    manifest = _manifest(s3_client, bucket, archive_module.render_key(spec, D, "archive"))
    assert manifest["rows"] == 301  # the commit landed: the day is archived with the late row
    assert outcome.startswith("interrupted"), (
        f"Ctrl-C during the manifest PUT was swallowed: archive_partition {outcome}, so the command goes on")


def _big_day(conn, schema: str, rows: int = 120_000) -> None:
    """One day of ~8 MB as uncompressed CSV: more than one 5 MiB part, so the object is a multipart upload."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(
        sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '100 milliseconds', "
                         "md5(g::text) || md5((g + 1)::text) FROM generate_series(1, %s) g").format(
        sql.Identifier(schema, "ev")), (f"{D} 00:00+00", rows))


def test_an_interrupt_while_a_completed_multipart_object_is_checked_leaves_it_published_and_kept_for_ever(
        conn, schema, store, s3_client, bucket, monkeypatch):
    """A day too big for one part (multipart upload) is archived for the first time. CompleteMultipartUpload has been
    answered 200 (the object is whole and visible at D.csv) and S3Upload._checked asks the store for its size
    (head_after_write, a HEAD retried for up to ~3 s on a lagging store) when Ctrl-C / SIGTERM / a Dagster
    termination arrives. _checked deletes the object on an Exception from that HEAD, but a BaseException goes
    straight to finish()'s abort, which only aborts the (already completed) multipart upload: the whole object stays,
    `published` is still None in _Archiving.run, and the interruption says "archiving ...: nothing of the day was
    published" -- false. Worse, the next run (rows changed meanwhile: a late row) finds an object and no manifest and
    records it for ever as `kept: the manifest before this one was missing` (it never was), so no run or tidy ever
    deletes it. Expected: an interruption after the Complete withdraws the object it knows it published (as the
    Exception path does), leaving the bucket as it was; the note then is true. Fix idea: in finish()/abort, on a
    BaseException after _complete returned, delete_quietly(self.key) (or hand the key back, e.g. set
    `self.completed_key`, so _Archiving.run's handler treats it as `published`)."""
    _big_day(conn, schema)
    spec = _spec(schema, format="csv", compression="none")

    def head_after_write(key):
        raise KeyboardInterrupt  # Ctrl-C arriving while the completed object's HEAD waits for the store

    monkeypatch.setattr(store, "head_after_write", head_after_write)
    with pytest.raises(KeyboardInterrupt) as caught:
        archive_partition(conn, spec, D, store)
    assert "nothing of the day was published" in _leaves(caught.value)
    left = stored_keys(s3_client, bucket)
    assert _open_uploads(s3_client, bucket) == []
    assert left == [], f"the interrupted first archive left {left}, a whole object no manifest names"


def _leaves(exc: BaseException) -> str:
    from archive_pipeline.core.errors import CANCELLED_LEAVES
    return CANCELLED_LEAVES[exc.interrupted.split(" ")[0]]


def test_a_head_failing_after_the_commit_fails_the_day_that_is_archived_without_saying_so(
        conn, schema, s3, s3_client, bucket):
    """A day archived; late rows arrive; `archive --overwrite` uploads generation g2 and writes its manifest (the
    commit point: the day's manifest now names g2). _commit then asks _refuse_lost_object for g2's HEAD (the check
    against a run on another server tidying it away) and that HEAD answers 503 (the store throttling for a moment).
    Now the DownloadError escapes _commit after the commit: the day is reported FAILED ("checking ...g2 (HeadObject)
    failed ... transient, retried"; the command line reports the day failed, Dagster fails the step), the
    superseded g1 is not deleted, and nothing in the error says the day's new archive was committed -- a user
    reading it believes the late rows are not archived. Compare a cancellation at the same point, noted "tidying:
    the day is archived". Expected: the commit stands and the run succeeds (an object whose HEAD cannot be asked
    is not known to be lost: log it, leave the superseded object to the next run's tidy), or at the least the
    error says the day is archived and its manifest names g2. Fix idea: in _refuse_lost_object treat a HEAD that
    raises like a present object (log a warning), as the rest of the post-commit steps are quiet."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    small_table(conn, schema, rows=300)
    spec = _spec(schema)
    archive_partition(conn, spec, D, S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE))
    _late_row(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="HEAD", path=r"\.g2\.jsonl\.zst$", action="error", status=503,
                        code="ServiceUnavailable", times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        try:
            result = archive_partition(conn, spec, D, store, overwrite=True)
            said = None
        except ArchiveError as exc:
            result, said = None, " ".join([exc.message, *getattr(exc, "__notes__", [])])
    manifest = _manifest(s3_client, bucket, archive_module.render_key(spec, D, "archive"))
    assert manifest["object"]["key"].endswith(".g2.jsonl.zst") and manifest["rows"] == 301  # committed
    assert result is not None or "archived" in said or "committed" in said, (
        f"the day's new archive is committed, but the run failed saying only: {said}")


def test_an_interrupt_while_a_failed_manifest_put_is_read_back_says_nothing_was_published_over_a_commit(
        conn, schema, s3, s3_client, bucket, monkeypatch):
    """A day archived; late rows arrive; `archive --overwrite` uploads g2 and writes its manifest: the store stores
    it but answers 500 (every attempt: a gateway losing the answers), so _put_manifest raises and _commit reads the
    manifest back to learn whether it committed. Ctrl-C / SIGTERM / a Dagster termination arrives during that GET.
    The interrupt leaves _commit's handler unnoted, and archive_partition labels it "archiving": the command line
    says "... was cancelled by Ctrl-C: nothing of the day was published (an earlier archive of it stays as it
    was)". False: the day's manifest in the bucket is the new one, naming g2 with the late row (the earlier archive
    did not stay as it was). Expected: an interrupt arriving after a manifest PUT whose outcome is unknown is noted
    as "committing" ("its manifest ... may still land: the day is then archived ...; the next run finds which"),
    as one arriving during the PUT itself is. Fix idea: in _commit's `except` around the PUT, note_cancelled(...,
    "committing") for a cancellation raised by the read-back or the undo (or note it before `_stored_manifest`)."""
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    small_table(conn, schema, rows=300)
    spec = _spec(schema)
    archive_partition(conn, spec, D, S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE))
    _late_row(conn, schema)
    real = archive_module._get_manifest_bytes

    def get(*args, **kwargs):
        import sys
        if sys._getframe(1).f_code.co_name == "_stored_manifest":
            raise KeyboardInterrupt  # Ctrl-C arriving while the manifest is read back after its PUT failed
        return real(*args, **kwargs)

    monkeypatch.setattr(archive_module, "_get_manifest_bytes", get)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=500, forward=True, times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(KeyboardInterrupt) as caught:
            archive_partition(conn, spec, D, store, overwrite=True)
    manifest = _manifest(s3_client, bucket, archive_module.render_key(spec, D, "archive"))
    assert manifest["rows"] == 301 and manifest["object"]["key"].endswith(".g2.jsonl.zst")  # the commit landed
    leaves = _leaves(caught.value)
    assert "nothing of the day was published" not in leaves, (
        f"interrupted {caught.value.interrupted!r} says {leaves!r}, but the day's manifest names the new g2")


def test_an_interrupt_while_the_committed_object_is_found_missing_says_the_day_is_archived(
        conn, schema, store, s3_client, bucket, monkeypatch):
    """A day archived; late rows arrive; `archive --overwrite` runs on the primary while a run of the same day on a
    hot standby (the table-day lock is each server's own: the case _refuse_lost_object exists for) tidies the
    primary's g2 away as a generation no manifest names, just as the primary's manifest PUT lands. The primary's
    _refuse_lost_object finds g2 missing and waits 1 s (time.sleep) to ask again; Ctrl-C / SIGTERM / a Dagster
    termination arrives in that second. The interruption is noted "tidying": "the day is archived (its new manifest
    is in the bucket); what the run was tidying after it ... is left for the next run". False: the day's manifest
    names g2, which is gone -- the day has no restorable archive until a next run re-archives it (it does: the
    manifest's missing object makes it archive again). Expected: while the commit is still being checked the note
    says so (e.g. "committing": its manifest is in the bucket but its object is being checked; the next run of the
    day finds which), never "the day is archived" over a manifest naming a missing object. Fix idea: set
    `_committed` only after _refuse_lost_object returns (note "committing" until then), or note the cancellation
    in _refuse_lost_object itself."""
    small_table(conn, schema, rows=300)
    spec = _spec(schema)
    archive_partition(conn, spec, D, store)
    _late_row(conn, schema)
    real = store.put_bytes

    def put(key, data, *args, **kwargs):
        etag = real(key, data, *args, **kwargs)
        if key.endswith(".manifest.json"):  # the standby's run tidied g2 away meanwhile
            for listed in s3_client.list_objects_v2(Bucket=bucket)["Contents"]:
                if ".g2." in listed["Key"]:
                    s3_client.delete_object(Bucket=bucket, Key=listed["Key"])
        return etag

    class _Time:  # archive's clock; its 1 s wait before asking for the object again is where Ctrl-C arrives
        perf_counter = staticmethod(__import__("time").perf_counter)

        @staticmethod
        def sleep(seconds):
            raise KeyboardInterrupt

    monkeypatch.setattr(store, "put_bytes", put)
    monkeypatch.setattr(archive_module, "time", _Time)
    with pytest.raises(KeyboardInterrupt) as caught:
        archive_partition(conn, spec, D, store, overwrite=True)
    manifest = _manifest(s3_client, bucket, archive_module.render_key(spec, D, "archive"))
    missing = manifest["object"]["key"] not in stored_keys(s3_client, bucket)
    assert not (missing and "the day is archived" in _leaves(caught.value)), (
        f"noted {caught.value.interrupted!r}: {_leaves(caught.value)!r}, but the day's manifest names "
        f"{manifest['object']['key']}, which is not in the bucket")
