"""Two operations on one table-day at once (hunt 10, pr): each with its own sessions, real PostgreSQL and the
real S3 over HTTP, forced into one interleaving by the fault proxy's ``hold``."""

from __future__ import annotations

import datetime as dt

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_letgo import standby  # noqa: F401 - fixture: a hot standby of pg
from archive_pipeline_tests.test_race_hunt import in_thread, proxied

DAY = dt.date(2024, 3, 10)


def test_a_rerun_on_the_primary_does_not_delete_the_object_an_overwrite_from_the_standby_is_committing(
        pg, standby, conn, schema, s3, bucket, store, s3_client):  # noqa: F811
    """The README's production setup: ARCHIVE_PG_DSN on a hot standby, so archive runs read there, while
    another deployment (or the command line with ARCHIVE_PG_DSN on the primary) archives the same table too.
    The table-day lock is an advisory lock, the server's own: a run on the standby and one on the primary
    never exclude each other. A user re-archives 2024-03-10 from the standby (`archive --overwrite`); its
    generation-2 object is uploaded and its manifest is about to be written. Meanwhile an ordinary run of the
    day on the primary (the schedule, a backfill) starts: its tidy-up of "what killed runs of the day left"
    takes the standby's uploaded generation for a leftover (same system identifier and database name, so
    `same_source` says this lock excluded it) and deletes it; it then skips the day (identical archive).
    The overwrite then commits its manifest (the manifest did not change, so its If-Match holds) naming the
    deleted object, and retires generation 1: the day's manifest names an object that is not there, and no
    object holds the day's rows. Expected: the primary run leaves an object it cannot know is abandoned (a run
    on a standby is not excluded by the primary's lock), or the overwrite fails instead of committing a
    manifest naming a missing object; the day's archive stays whole and provable."""
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay

    create_sample_events(conn, [DAY], rows_per_day=100, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"})
    first = archive_partition(conn, spec, DAY, store)
    wait_for_replay(pg, standby)
    with FaultProxy(s3.endpoint_url) as proxy, standby.connect() as replica:
        held = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
        thread, outcome = in_thread(lambda: archive_partition(replica, spec, DAY, proxied(proxy, bucket),
                                                              overwrite=True))
        try:
            assert proxy.wait_held(1), outcome  # the standby's overwrite: its object stored, its manifest waits
            again = archive_partition(conn, spec, DAY, store)  # the primary's ordinary run of the day
            assert again.skipped, again
        finally:
            held.gate.set()
            thread.join(60)
    manifest = load_manifest(store, first.key)
    named = manifest["object"]["key"]
    listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    # Now: the overwrite succeeded (generation 2) and its manifest names an object the primary run deleted.
    assert named in listed, (outcome, named, sorted(listed))
    assert deep_verify(conn, store, spec, DAY) == []


def test_an_archive_run_on_the_standby_meeting_a_removal_in_progress_is_told_to_wait_not_to_configure_the_primary(
        pg, standby, conn, schema, s3, bucket, store):  # noqa: F811
    """The README's production setup: ARCHIVE_PG_DSN on a hot standby, ARCHIVE_PG_PRIMARY_DSN on the primary,
    where the removal (prune, source_removed) of 2024-03-10 is running: its pending mark is written and its
    transaction is open. An archive run of the same day (a re-run, a backfill) reads the standby, finds the
    pending mark and settles it on its own connection, the standby: it fails, NOT retryable, saying "settling
    the removal ... must run on the primary ...: set ARCHIVE_PG_PRIMARY_DSN to the primary and run the removal
    of the day", although the primary is configured and that very removal is running right now (its own table-day
    lock, the primary's, does not exclude a run on the standby). The same run on the primary is told, retryable,
    that the day is being removed by another run right now. Expected: a retryable error saying a removal of the
    day is in progress (or the mark settled on the primary), never the advice to configure what is configured
    and start a second removal of the day."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay

    create_sample_events(conn, [DAY], rows_per_day=100, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    wait_for_replay(pg, standby)
    with FaultProxy(s3.endpoint_url) as proxy, standby.connect() as replica, pg.connect() as removing:
        removing.autocommit = True
        # the removal's check of the proven object, after its pending mark, inside its open transaction
        held = proxy.add(Fault(method="HEAD", path=r"2024-03-10\.jsonl\.zst$", action="hold", times=1))
        thread, outcome = in_thread(lambda: remove_day(removing, spec, DAY, proxied(proxy, bucket)))
        try:
            assert proxy.wait_held(1), outcome
            assert load_manifest(store, f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
                                 )["removed"]["state"] == "pending"
            try:
                archive_partition(replica, spec, DAY, store)
            except ArchiveError as exc:
                error = exc
            else:
                error = None
        finally:
            held.gate.set()
            thread.join(60)
    assert outcome.get("result") is not None and outcome["result"].rows == 100, outcome  # the removal went on
    assert error is not None
    # Now: RemovalRefused, retryable=False, "... must run on the primary, and this connection is a hot standby:
    # set ARCHIVE_PG_PRIMARY_DSN to the primary and run the removal of the day ..."
    assert error.retryable and "ARCHIVE_PG_PRIMARY_DSN" not in str(error), (error.retryable, str(error))
