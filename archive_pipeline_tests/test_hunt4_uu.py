"""Hunt 4 (uu): S3 faults on every write path, with the store's conditional writes (If-None-Match / If-Match)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify, verify_archive
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

DAY = dt.date(2024, 3, 10)


def _small_table(conn, schema, rows=50):
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, md5(g::text) FROM generate_series(1, %s) g").format(table),
                 (DAY, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")


def _keys(s3_client, bucket):
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


LOST_ANSWERS = {"reset_after": dict(action="reset_after"), "500_after": dict(action="error", forward=True),
                "error_200_after": dict(action="error_200", forward=True)}


@pytest.mark.parametrize("lost", sorted(LOST_ANSWERS))
def test_a_data_put_whose_answer_was_lost_is_not_taken_for_another_runs_object(lost, conn, schema, s3, bucket,
                                                                            s3_client, temp_dir):
    """A user archives a small day (one PutObject, sent with If-None-Match: *) through a client that retries, as
    every deployed client does. The store stores the object, then the connection is reset before its answer.
    botocore sends the PUT again, and the store answers 412: the key now holds the object the first attempt
    wrote, our own bytes. The run fails with KeyTakenError "written by another run meanwhile" (false: no other
    run exists), leaves its own object behind unnamed, and the retry archives the day as generation 2 and keeps
    the first copy for ever under ``kept`` ("the manifest before this one was missing"), doubling the day's
    storage. The same for a 5xx or a 200 with an <Error> body sent after the store acted. Expected: a 412 after
    botocore retried a conditional write is checked against the key (HEAD: our MD5 and size) and taken as our
    write landing, so the run succeeds with one object and its manifest
    (``_put_single`` only does that check for its own loop's attempt > 1, not for botocore's RetryAttempts)."""
    spec = _small_table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"2024-03-10\.csv$", **LOST_ANSWERS[lost]))
        store = S3Store(proxy.client(max_attempts=3), bucket, part_size=MIN_PART_SIZE)
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    plain = S3Store(s3_client, bucket, part_size=MIN_PART_SIZE)
    assert deep_verify(conn, plain, spec, DAY, temp_dir=temp_dir) == []
    assert _keys(s3_client, bucket) == sorted([result.key, result.manifest_key])


def test_a_late_landing_overwrite_manifest_does_not_replace_a_later_runs_commit(conn, schema, s3, bucket, s3_client,
                                                                             temp_dir):
    """A user re-archives a changed day (overwrite). Its manifest PUT is slow: the first attempt is still on its
    way when the client's read timeout fires, botocore sends it again, that copy lands, the run commits
    generation 2 and deletes generation 1. The day changes again and the next run commits generation 3 and
    deletes generation 2. Then the first, slow attempt of the earlier run reaches the store: it is an
    unconditional PutObject, so it replaces the newer commit with a manifest naming generation 2, which no
    longer exists. The archive is broken (verify: "object ... g2 is missing"), and generation 3, committed by
    another run, is no longer named by any manifest. The README promises that a manifest that lands late never
    names a missing object, and no run overwrites what another run committed. Expected: a re-archive's
    manifest replaces only the manifest it decided on (If-Match its ETag, as a first manifest is written with
    If-None-Match), so the late copy is refused (412) and the store keeps generation 3 and its manifest
    (``_Archiving._commit`` -> ``_put_manifest`` sends no condition when ``existing.raw`` is not None)."""
    spec = _small_table(conn, schema).model_copy(update={"overwrite": True})
    ev = sql.Identifier(schema, "ev")
    plain = S3Store(s3_client, bucket, part_size=MIN_PART_SIZE)
    archive_partition(conn, spec, DAY, plain, temp_dir=temp_dir)
    conn.execute(sql.SQL("UPDATE {} SET v = 'two' WHERE id = 3").format(ev))
    with FaultProxy(s3.endpoint_url) as proxy:
        slow = proxy.add(Fault(method="PUT", path=r"manifest\.json$", action="hold", hold_timeout=30))
        store = S3Store(proxy.client(max_attempts=3, read_timeout=1), bucket, part_size=MIN_PART_SIZE)
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        conn.execute(sql.SQL("UPDATE {} SET v = 'three' WHERE id = 3").format(ev))
        third = archive_partition(conn, spec, DAY, plain, temp_dir=temp_dir)
        slow.gate.set()  # the slow first attempt of the earlier run reaches the store now
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proxy.requests(method="PUT", path=r"manifest\.json$")[0].status is None:
            time.sleep(0.05)
    assert verify_archive(plain, third.key.replace(".g3.", "."), {}, deep=False) == []
    assert deep_verify(conn, plain, spec, DAY, temp_dir=temp_dir) == []
    assert _keys(s3_client, bucket) == sorted([third.key, third.manifest_key])


def test_a_removals_late_pending_mark_does_not_replace_its_done_mark(conn, schema, s3, bucket, s3_client, temp_dir):
    """A user removes an archived day (retention: delete). The pending mark's PUT is slow: its first attempt is
    still on its way when the read timeout fires, botocore's second attempt lands, the rows are deleted, the
    COMMIT succeeds and the "done" mark is written; remove_day reports the day removed. Then the first attempt
    reaches the store: an unconditional PutObject of the pending manifest, which replaces the done mark. The
    manifest now says "pending" for a removal that finished and was reported so (status, checks and the next
    runs see an unfinished removal). The README says the removal writes its pending mark only over the very
    manifest it proved. Expected: the pending mark is written conditionally (If-Match the proven manifest's
    ETag), so the late copy is refused and the manifest stays "done" (``lifecycle._remove``:
    ``store.put_bytes(mkey, pending, ...)`` without a condition; the GET comparison before it cannot stop a copy
    of the same write that lands later)."""
    import json

    plain_spec = _small_table(conn, schema)
    spec = TableSpec(name=plain_spec.name, day_column="at", start_date=DAY, format="csv", compression="none",
                     retention={"keep_days": 1, "action": "delete"})
    plain = S3Store(s3_client, bucket, part_size=MIN_PART_SIZE)
    archived = archive_partition(conn, spec, DAY, plain, temp_dir=temp_dir)
    with FaultProxy(s3.endpoint_url) as proxy:
        slow = proxy.add(Fault(method="PUT", path=r"manifest\.json$", action="hold", hold_timeout=30))
        store = S3Store(proxy.client(max_attempts=3, read_timeout=1), bucket, part_size=MIN_PART_SIZE)
        removal = remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
        assert removal.rows == 50 and not removal.dry_run
        slow.gate.set()  # the slow first attempt of the pending mark reaches the store now
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proxy.requests(method="PUT", path=r"manifest\.json$")[0].status is None:
            time.sleep(0.05)
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=archived.manifest_key)["Body"].read())
    assert manifest["removed"]["state"] == "done", manifest["removed"]
