"""Hunt 11 (qa): review of the hunt-10 fixes (leftovers, lost objects, standby settling, manifest shape, range
restores' suggestions): real PostgreSQL, the real S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import json

from psycopg import sql

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


def test_a_range_restored_into_a_new_table_across_a_renamed_primary_key_column_is_not_refused(
        pg, conn, schema, s3, bucket, tmp_path):
    """A plain table `ev (id int PRIMARY KEY, at timestamptz NOT NULL, note text)` (column mode) whose key column
    was renamed mid-month (`ALTER TABLE ev RENAME id TO event_id`): D0, D1 archived before, D2, D3 after. The
    user recovers the range: `restore --from D0 --to D3 --into new --target T`. T is created from D0's definition,
    with its PRIMARY KEY (id). For D2 the hunt-10 fix (restore._widen_own) adds `event_id` and then drops NOT NULL
    on the column D2 lacks, `id`: PostgreSQL refuses (`column "id" is in a primary key`), so D2 fails, not
    retryable, on every run again - the same dead end the fix was for (a renamed column), now for the most
    commonly renamed column of all. Expected: the restore's own table takes every day of the range (a key
    column the day lacks cannot stay the table's key: the restore-created table's primary key is dropped, or
    widened to the columns both days have). Fix idea: in _widen_own, drop the restore-created table's PRIMARY
    KEY constraint when it holds a column the day lacks (before DROP NOT NULL)."""
    from archive_pipeline_tests.test_hunt10_px import _env
    from archive_pipeline_tests.conftest import utc_today
    from archive_pipeline_tests.test_cli import cli_json
    import yaml

    days = [utc_today() - dt.timedelta(days=n) for n in range(6, 2, -1)]
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(s))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.ev", "day_column": "at",
                                                  "start_date": days[0].isoformat()}]}))
    env = _env(pg, s3, bucket, config)

    def fill(i: int, key: str) -> None:
        conn.execute(sql.SQL("INSERT INTO {}.ev ({}, at, note) SELECT g, %s::timestamptz + g * interval '1 minute', "
                             "'n' || g FROM generate_series(%s::int, %s::int) g").format(s, sql.Identifier(key)),
                     (days[i].isoformat(), i * 100, i * 100 + 4))

    fill(0, "id"), fill(1, "id")
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    conn.execute(sql.SQL("ALTER TABLE {}.ev RENAME id TO event_id").format(s))
    fill(2, "event_id"), fill(3, "event_id")
    cli_json(env, "archive", "--from", days[2].isoformat(), "--to", days[3].isoformat())
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[3].isoformat(), "--into", "new",
               "--target", f"{schema}.back", "--json")
    answer = json.loads(done.stdout)
    # Now: D0, D1 restored; D2 fails: 'column "id" is in a primary key' (not retryable), every run again
    assert done.returncode == 0 and "error" not in answer, answer.get("error")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.back").format(s)).fetchone()[0] == 20
