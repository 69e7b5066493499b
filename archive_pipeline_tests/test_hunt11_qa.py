"""Hunt 11 (qa): review of the hunt-10 fixes (leftovers, lost objects, standby settling, manifest shape, range
restores' suggestions): real PostgreSQL, the real S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import json

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_cli import cli
from archive_pipeline_tests.test_hunt10_pw import week  # noqa: F401 - fixture: 7 days of 50 rows, CLI env
from archive_pipeline_tests.test_letgo import standby  # noqa: F401 - fixture: a hot standby of pg

DAY = dt.date(2024, 3, 10)


def test_a_range_restore_into_a_missing_target_does_not_tell_the_user_to_skip_its_first_day(
        week, conn):  # noqa: F811
    """`restore --from D0 --to D6 --into existing --target s.nope --json`, where s.nope does not exist (a typo,
    or the table not created yet). The first day fails, not retryable: "... s.nope does not exist ...; to fix:
    create it or restore into a new table". Since the hunt-10 fix for ranges stopped by a damaged day, every
    non-retryable failure of a day is taken for that day's own, and the message goes on: "then: run
    archive-pipeline restore --table T --from D1 --to D6 --into existing --target s.nope to restore the rest of
    T (D1, ..., without D0)". Nothing about D0 failed: the target is missing for every day. A user who creates
    the table and runs the suggested command never restores D0 (and the suggested command alone fails the same
    way until then). Expected: a failure that is not the day's (the target's, a configuration cause) names no
    command that leaves the day out; the same command, once the target exists, restores the whole range.
    Fix idea: append _the_rest only for a failure of the day's own archive (not CONFIGURATION_CAUSES / target)."""
    env, spec, days = week
    done = cli(env, "archive", "--from", days[0].isoformat(), "--to", days[6].isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    target = f"{spec.schema_name}.nope"
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[6].isoformat(), "--into", "existing",
               "--target", target, "--json")
    answer = json.loads(done.stdout)
    assert done.returncode != 0 and answer["days"] == [], done.stdout + done.stderr
    # Now: "...; then: run archive-pipeline restore --table ... --from D1 --to D6 --into existing --target
    # s.nope to restore the rest of ... (D1, ..., without D0)"
    assert f"without {days[0].isoformat()}" not in answer["error"], answer["error"]
    assert f"--from {days[1].isoformat()}" not in answer["error"], answer["error"]


def test_an_archive_run_on_the_standby_meeting_a_removal_between_its_commit_and_its_done_mark_is_told_to_wait(
        pg, standby, conn, schema, s3, bucket, store):  # noqa: F811
    """The README's production setup: ARCHIVE_PG_DSN on a hot standby, ARCHIVE_PG_PRIMARY_DSN on the primary,
    where the removal (prune, source_removed) of 2024-03-10 runs: its pending mark is written, its DROP has
    committed, and its "done" mark is on its way to the store (a PUT taking a moment). An archive run of the day on
    the standby (a re-run, a backfill) finds the pending mark and settles it on its own connection; the hunt-10 fix
    (``lifecycle._still_removing``) tells a removal still running only while its transaction is "in progress", so
    here (txid_status "committed", replayed) it fails NOT retryable: "settling the removal ... must run on the
    primary, and this connection is a hot standby: set ARCHIVE_PG_PRIMARY_DSN to the primary and run the removal
    of the day" - the primary is configured and that very removal is finishing right now; a user who follows the
    advice starts a second removal of the day. Expected (as for the transaction still open): a retryable error
    saying the day is being removed (its mark written moments ago, its transaction committed: the done mark is on
    its way), never the advice to configure what is configured. Fix idea: in _still_removing, a committed
    transaction of a mark minutes old is a removal finishing too (retryable), as for "in the future"."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay
    from archive_pipeline_tests.test_race_hunt import in_thread, proxied

    create_sample_events(conn, [DAY], rows_per_day=100, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    wait_for_replay(pg, standby)
    with FaultProxy(s3.endpoint_url) as proxy, standby.connect() as replica, pg.connect() as removing:
        removing.autocommit = True
        # the removal's second manifest PUT: its "done" mark, after its COMMIT
        held = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", skip=1, times=1))
        thread, outcome = in_thread(lambda: remove_day(removing, spec, DAY, proxied(proxy, bucket)))
        try:
            assert proxy.wait_held(1), outcome
            assert load_manifest(store, f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
                                 )["removed"]["state"] == "pending"
            wait_for_replay(pg, standby)  # the DROP's commit replayed
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
    # Now: RemovalRefused, retryable=False, "settling the removal ... must run on the primary, and this connection
    # is a hot standby: set ARCHIVE_PG_PRIMARY_DSN to the primary and run the removal of the day ..."
    assert error.retryable and "ARCHIVE_PG_PRIMARY_DSN" not in str(error), (error.retryable, str(error))
