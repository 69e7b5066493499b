"""Hunt 20 (za): the process killed (SIGKILL) or one request failing (S3 through the fault proxy; PostgreSQL:
pg_terminate_backend, timeouts) between two steps of the round-trip commands: restore (original, new, existing,
each on_conflict mode, a range of days), the removal and its marks, prune, verify and compare.

What held up (probed or read, no test here): a removal whose COMMIT gets no answer keeps its pending mark and says
so (lifecycle._remove; the next removal settles it by txid_status); the proof's temporary table is dropped or goes
with the session; the restore's staging tables are ON COMMIT DROP; the download is a nameless temp file; the
table-day advisory lock is let go on every way out of a restore and a removal; a range restore into a table the
restore created resumes from its restore mark after a failure on any day; prune's notes reach its output."""

from __future__ import annotations

import re
import shlex
import threading

import psycopg
from psycopg import sql

from archive_pipeline.core.archive import render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt3_o import DAYS, _archived, cli, make_env, write_config
from archive_pipeline_tests.test_hunt15_uc import _naming_days


def _rows(conn, schema: str, name: str) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT id, note FROM {} ORDER BY id, note").format(
        sql.Identifier(schema, name))).fetchall()


def test_a_range_restore_into_a_table_without_day_column_failing_retryably_on_its_second_day_says_run_it_again(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Scenario: a naming-mode table (one table per day, no day column), three days archived; the user made an empty
    table T and runs `restore --from D1 --to D3 --into existing --target T`. D1 is committed; the store answers
    every GET of D2's object 503 SlowDown (a throttling store, the fault proxy). Then the store recovers and the
    user does what the command said.

    Now: the command exits 1, lists D1 as restored, and its error (retryable: true) ends "to fix: run the command
    again (it tries once) ...; the days listed above stay restored". cli.restore adds the command that restores the
    rest (_restore_then) only for a failure that is not retryable; a retryable one keeps the store's remedy. Run
    again as told, the same range loads D1 a second time into T: into `existing`, restore._loaded_before cannot
    tell a day's rows apart without a day column and the check looks only at the rows the load added, so the re-run
    exits 0 with every check green and T holds D1's 40 rows twice (160 rows, 120 distinct). For a non-retryable
    failure the same command prints "then: run ... --from D2 --to D3 ... to restore the rest" precisely because "the
    same command again would load the committed days a second time".

    Should: after committed days, a retryable failure also names what to run (the rest of the range from the failed
    day, inclusive), never the same command over the committed days; doing as told leaves T with each archived row
    once. Fix idea: in cli.restore, call _restore_then (inclusive of the failed day) for a retryable failure too
    whenever results holds days of that table, and word the error's remedy around it."""
    table = _naming_days(conn, schema)
    spec, _ = _archived(conn, [table], s3_client, bucket)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(sql.Identifier(schema, "back")))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = ["restore", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat(), "--into", "existing",
            "--target", f"{schema}.back"]
    with FaultProxy(s3.endpoint_url) as proxy:
        env = make_env(pg, proxy.url, bucket, write_config(tmp_path, [table]), tmp)
        proxy.add(Fault(method="GET", path=re.escape(render_key(spec, DAYS[1], "archive")) + "$", action="slow_down",
                        times=None))
        failed = cli(env, *args)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert len(_rows(conn, schema, "back")) == 40  # (the premise: D1 committed, D2 not)
    error = failed.stderr
    told = re.search(r"run (archive-pipeline restore .*?) to restore the rest", error)
    if told:  # the command the error names for the rest
        command = shlex.split(told.group(1))[1:]
    else:  # the error says to run the command again
        assert "run the command again" in error, error
        command = args
    again = cli(make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp), *command)
    restored = _rows(conn, schema, "back")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(restored) == 120 == len(set(restored)), (
        f"doing as the error said ({shlex.join(command)}) left {len(restored)} rows in the target, "
        f"{len(set(restored))} distinct, of 120 archived: {error}")


def test_a_restore_whose_commit_gets_no_answer_does_not_say_nothing_was_restored(pg, s3, bucket, conn, schema,
                                                                                   s3_client, store):
    """Scenario: a naming-mode day (no day column) restored into an existing table T of the user's with restore_day
    (what `restore --into existing` runs per day). The day's transaction is loaded and checked, and its COMMIT is
    durable, but the answer never reaches the client: the backend is terminated while it waits after the local
    commit (a synchronous standby that never answers, synchronous_standby_names set; pg_terminate_backend then, as
    a failover or a dropped network would lose the answer).

    Now: restore_archive's generic branch turns the lost connection into RestoreError "restoring ... failed: the
    database connection was lost ...; nothing was restored", retryable, with no note; T holds the day's 40 rows.
    A user (or a Dagster retry, or a script honouring retryable) restores the day again, and into a table without a
    day column that loads it twice (restore._loaded_before cannot tell). The removal guards this very step
    (lifecycle._remove: "the removal's COMMIT got no answer: it may have happened ...").

    Should: a connection lost once the COMMIT was sent is not "nothing was restored": the error says the COMMIT may
    have happened and how to tell (look at the target; into a new table, or a target with a day column, running it
    again finds the day restored), and is not retryable blindly into a target that cannot tell its days. Fix idea:
    note in restore_archive when the COMMIT is sent (as _remove's ``committing``) and word the error from it."""
    table = _naming_days(conn, schema)
    _archived(conn, [table], s3_client, bucket)
    spec = TableSpec(**table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(sql.Identifier(schema, "back")))
    name = f"za_commit_{schema}"
    outcome: dict = {}
    conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'za_nobody'")  # (the cluster's commits are async)
    conn.execute("SELECT pg_reload_conf()")
    try:
        with psycopg.connect(pg.dsn, autocommit=True, application_name=name,
                             options="-c synchronous_commit=on") as restoring:
            def run() -> None:
                try:
                    outcome["result"] = restore_day(restoring, store, spec, DAYS[0], into="existing",
                                                    target=f"{schema}.back")
                except BaseException as exc:  # noqa: BLE001 - judged below
                    outcome["error"] = exc

            worker = threading.Thread(target=run)
            worker.start()
            while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND "
                                   "wait_event = 'SyncRep'", (name,)).fetchone()[0]:
                assert worker.is_alive(), outcome  # (the COMMIT, committed locally, waits for the standby)
                conn.execute("SELECT pg_stat_clear_snapshot()")
            conn.execute("SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity WHERE application_name = %s",
                         (name,))
            worker.join(60)
            assert not worker.is_alive()
    finally:
        conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        conn.execute("SELECT pg_reload_conf()")
    assert len(_rows(conn, schema, "back")) == 40  # the day's transaction committed
    error = outcome.get("error")
    assert error is not None, outcome
    said = "; ".join([str(error), *map(str, getattr(error, "__notes__", ()))])
    assert "nothing was restored" not in said and "may have" in said, (
        f"the day's 40 rows are committed in {schema}.back, and the restore said (retryable="
        f"{getattr(error, 'retryable', None)}): {said}")
