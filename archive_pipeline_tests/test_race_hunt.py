"""Races on one table-day: two operations, each with its own connections, forced into one interleaving
by the fault proxy's ``hold`` (a request kept until the test lets it go), PostgreSQL locks taken by
the test, or a hook at the exact point where another run's work lands. Each test fails on a bug."""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_cli import days, edit_config, setup  # noqa: F401 - fixtures
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - the same two days
from archive_pipeline_tests.helpers import run_check_evaluations

DAY = dt.date(2024, 3, 10)
DAYS = [DAY, dt.date(2024, 3, 11)]


def data_key(schema: str, day: dt.date = DAY) -> str:
    return f"archive/{schema}.events/{day:%Y/%m}/{day.isoformat()}.jsonl.zst"


def proxied(proxy: FaultProxy, bucket: str) -> S3Store:
    return S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)


def in_thread(fn) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def day_rows(conn, schema: str, table: str = "events") -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= '2024-03-10+00' AND created_at < "
                                "'2024-03-11+00'").format(sql.Identifier(schema, table))).fetchone()[0]


def table_exists(conn, schema: str, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, name).as_string(conn),)
                        ).fetchone()[0]


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# ------------------------------------------------------------------------------------------------
# Deep verification / restore racing a re-archive (overwrite) of the same day


def test_deep_verification_racing_an_overwrite_is_no_verdict_of_a_missing_archive(pg, conn, events, store, s3,
                                                                                  bucket):
    """deep_verify reads the manifest (generation 1), then downloads its object. An overwrite of the
    day commits generation 2 and retires generation 1 meanwhile. The archive of the day is whole at
    every moment, yet the proof returns "object ... is missing" as a proven problem (what the CLI's
    verify --deep, the deep check and the retention proof report as a failed archive)."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as other:
        held = proxy.add(Fault(method="GET", path=r"/2024-03-10\.jsonl\.zst$", action="hold", times=1))
        thread, outcome = in_thread(lambda: deep_verify(conn, proxied(proxy, bucket), spec, DAY))
        try:
            assert proxy.wait_held(1), outcome
            again = archive_partition(other, spec, DAY, store, overwrite=True)  # another run, its own session
            assert again.generation == 2 and not again.skipped
        finally:
            held.gate.set()
            thread.join(60)
    assert deep_verify(conn, store, spec, DAY) == []  # the day's archive is whole and proven
    problems = outcome.get("result")
    # Now: ['object s3://.../2024-03-10.jsonl.zst is missing'], a proven failure of a good archive.
    # Should: prove the archive the manifest names now, or raise a retryable "replaced meanwhile" (no verdict).
    assert not (isinstance(problems, list) and any("missing" in p for p in problems)), problems


def test_restore_racing_an_overwrite_does_not_call_the_archive_missing(pg, conn, events, store, s3, bucket):
    """restore_day reads the manifest and downloads generation 1 before it takes the table-day lock;
    an overwrite commits generation 2 and deletes generation 1 meanwhile. The restore then fails,
    not retryable, saying the archive is missing and should be restored from a backup of the bucket,
    although the day's archive is whole (a retry would restore it)."""
    from archive_pipeline.core.restore import restore_day

    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as other:
        held = proxy.add(Fault(method="GET", path=r"/2024-03-10\.jsonl\.zst$", action="hold", times=1))
        thread, outcome = in_thread(lambda: restore_day(conn, proxied(proxy, bucket), spec, DAY,
                                                        into="original", on_conflict="skip"))
        try:
            assert proxy.wait_held(1), outcome
            assert archive_partition(other, spec, DAY, store, overwrite=True).generation == 2
        finally:
            held.gate.set()
            thread.join(60)
    error = outcome.get("error")
    # Before: RestoreError "... is missing: ... does not exist although its manifest does; restore from a
    # replica or backup of the bucket", retryable=False. Now the archive the store names now is restored
    # (here its rows are still in the source, which has no key to skip them by: rolled back as a mismatch).
    assert error is None or ("missing" not in str(error) and "backup" not in str(error)), repr(error)


# ------------------------------------------------------------------------------------------------
# The retention asset's proof, made outside the table-day lock, racing another removal of the day


def _removal_defs(schema: str, action: str = "drop"):
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions

    return build_definitions(parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": action}}]}))


def test_a_removal_run_racing_another_removal_records_no_failed_proof(pg, conn, events, store, archive_env,
                                                                       monkeypatch):
    """Two runs of source_removed for one day (the schedule and a manual launch). Run B reads the
    manifest (no removal mark) and proves it outside the table-day lock; run A removes the day right
    after B read the manifest. B then proves its stale manifest against the emptied source and records
    a FAILED blocking archive_proven check ("the archive has a row the source lacks") and a
    non-retryable failure saying the day "stays in the source", for a day correctly removed."""
    from dagster import instance_for_test

    from archive_pipeline.defs import retention_assets

    spec = spec_for(events, "drop")
    archive_partition(conn, spec, DAY, store)
    real_load = retention_assets.load_stored_manifest
    fired = []

    def load_then_other_run_removes(*args, **kwargs):
        manifest = real_load(*args, **kwargs)
        if not fired:  # run A, on its own session, lands right after run B read the manifest
            fired.append(True)
            with pg.connect() as other:
                assert remove_day(other, spec, DAY, store, removed_by="run A").rows == 300
        return manifest

    monkeypatch.setattr(retention_assets, "load_stored_manifest", load_then_other_run_removes)
    with instance_for_test() as instance:
        remove = _removal_defs(events).resolve_job_def(f"Remove_{events}_events")
        run_b = remove.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        run_b_checks = run_check_evaluations(instance, run_b.run_id)
    assert fired and not table_exists(conn, events, "events_20240310")
    assert load_manifest(store, data_key(events))["removed"]["state"] == "done"
    evaluations = run_b_checks
    # Now: run B fails; archive_proven recorded passed=False: "the source's rows for 2024-03-10 are not the
    # archive's: 0 rows against 300; first difference: the archive has a row the source lacks: ...".
    # Should: prove under the lock (or re-read the manifest there): "already removed", or no verdict.
    assert all(e.passed for e in evaluations), [e.description for e in evaluations]


# ------------------------------------------------------------------------------------------------
# A committed removal whose "done" mark was never written (the process died, the store failed)


def _leave_committed_pending(conn, events, store, s3, bucket, action: str) -> TableSpec:
    spec = spec_for(events, action)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        # the pending mark goes through; the "done" mark is refused (as if the process died after COMMIT)
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=503, skip=1, times=None))
        with pytest.raises(ArchiveError, match="committed in the source"):
            remove_day(conn, spec, DAY, proxied(proxy, bucket), removed_by="test")
    assert load_manifest(store, data_key(events))["removed"]["state"] == "pending"
    assert day_rows(conn, events) == 0
    return spec


@pytest.mark.parametrize("action", ["drop", "delete"])
def test_deep_verification_of_a_committed_removal_left_pending_is_not_a_mismatch(conn, events, store, s3, bucket,
                                                                                action):
    """verify --deep (deep_verify) of a day whose committed removal left its mark pending: the archive
    is whole and the removal happened, but the proof compares the archive with the emptied source and
    reports a mismatch naming an archived row as one "the source lacks". A "done" day is proven by its
    archive alone; a pending one whose transaction committed is the same day (or is settled first)."""
    spec = _leave_committed_pending(conn, events, store, s3, bucket, action)
    problems = deep_verify(conn, store, spec, DAY)
    # Now: ["the source's rows for 2024-03-10 are not the archive's: 0 rows against 300",
    #       "first difference: the archive has a row the source lacks: ..."]
    assert problems == [], problems


def test_compare_of_a_day_deleted_by_retention_is_not_a_difference(conn, events, store):
    """retention action delete on a declarative table empties the day's partition, which stays. compare
    then finds the (empty) partition, takes the day for present, and reports it as "differs" (0 rows
    against 300), exit 1, as if the source had changed, where a dropped day is "not-in-source" with
    "deleted from the source at ..."."""
    from archive_pipeline.core import plan

    spec = spec_for(events, "delete")
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 300
    [comparison] = plan.compare_days(conn, spec, store, [DAY])
    # Now: result "differs", source_rows 0, archive_rows 300, note "".
    assert not comparison.differs, (comparison.result, comparison.source_rows, comparison.archive_rows,
                                    comparison.note)


# ------------------------------------------------------------------------------------------------
# Two restores of one day into one table


def _block_commits(conn, schema: str, table: str, key: int) -> None:
    """A deferred constraint trigger on ``table``: a transaction that inserted into it waits at COMMIT for
    the advisory lock ``key`` (which the test holds), after everything it checked."""
    conn.execute(sql.SQL(
        "CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock({k}); "
        "RETURN NULL; END $$").format(fn=sql.Identifier(schema, "wait_at_commit"), k=sql.Literal(key)))
    conn.execute(sql.SQL(
        "CREATE CONSTRAINT TRIGGER wait_at_commit AFTER INSERT ON {t} DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION {fn}()").format(t=sql.Identifier(schema, table),
                                                         fn=sql.Identifier(schema, "wait_at_commit")))


def _waiting_on(conn, key: int) -> int:
    return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                        (key,)).fetchone()[0]


def test_two_restores_of_one_day_into_one_table_do_not_both_load_it(pg, conn, events, store):
    """Two restores of 2024-03-10 into the same existing table (no key, so nothing conflicts). Each
    loads the day and checks "the day's rows in the target equal the manifest's" in its own
    transaction, so neither sees the other's rows; both succeeded and the table held the day twice.
    The same two restores one after the other: the second is refused (the target already held rows of
    the day). Now the second meets the day's lock. (With on_conflict skip a keyless target is refused
    up front.)"""
    from archive_pipeline.core.restore import restore_day

    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(events, "copy"),
                                                             sql.Identifier(events, "events")))
    key = 4242
    _block_commits(conn, events, "copy", key)
    with pg.connect() as holder, pg.connect() as first, pg.connect() as second:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        target = f"{events}.copy"
        t1, o1 = in_thread(lambda: restore_day(first, store, spec, DAY, into="existing", target=target,
                                               on_conflict="fail"))
        assert wait_until(lambda: _waiting_on(conn, key) == 1), o1
        t2, o2 = in_thread(lambda: restore_day(second, store, spec, DAY, into="existing", target=target,
                                               on_conflict="fail"))
        assert wait_until(lambda: _waiting_on(conn, key) == 2 or not t2.is_alive()), o2
        holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
        t1.join(60)
        t2.join(60)
    succeeded = [o["result"] for o in (o1, o2) if "result" in o]
    rows = day_rows(conn, events, "copy")
    # Now: both succeed (inserted 300 each, "fingerprint ... equals the manifest's") and the table holds 600.
    assert rows == 300, (rows, [(r.inserted, r.check) for r in succeeded], [o.get("error") for o in (o1, o2)])


# ------------------------------------------------------------------------------------------------
# What a run that meets the table-day lock says; a dry run of a day already removed


def test_a_dagster_run_that_meets_the_table_day_lock_says_what_to_do_about_it(pg, conn, events, archive_env):
    """Another session holds the (table, day) lock (a run archiving or removing the day). The archive
    run fails (retries exhausted) with "... right now; retrying later" and the remedy of an unreachable
    database or store: "Once the database or the store is reachable again, re-execute the run". Nothing
    was unreachable; the day was busy (and no retry is left)."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.locks import lock_key
    from archive_pipeline.definitions import build_definitions

    defs = build_definitions(parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{events}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
        "partitioning": {"mode": "declarative"}}]}))
    with pg.connect() as holder, instance_for_test() as instance:
        holder.execute("SELECT pg_advisory_lock(%s)", lock_key(f"{events}.events", DAY))
        run = defs.resolve_job_def(f"Archive_{events}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
    assert not run.success
    [failure] = [e.step_failure_data.user_failure_data for e in run.all_events if e.is_step_failure]
    text = failure.description
    assert "being archived, removed or restored by another run" in text and "held by PostgreSQL backend" in text
    # Now: "What to do: This looked transient and was retried (...). Once the database or the store is reachable
    # again, re-execute the run ..." Should: say another run holds the day, and to re-execute once it has ended.
    assert "reachable" not in text, text


def test_prune_dry_run_of_a_day_already_deleted_does_not_say_would_remove(setup, conn, days):
    """retention delete (declarative): the day's partition stays, empty. `prune --dry-run` then lists the
    day as "would remove" 300 rows, where `prune` itself says "already removed"."""
    from archive_pipeline_tests.test_cli import cli_json

    env, spec = setup
    edit_config(env, {"retention": {"keep_days": 1, "action": "delete"}})
    day = days[0].isoformat()
    cli_json(env, "archive", "--day", day)
    assert [d["status"] for d in cli_json(env, "prune", "--day", day)["days"]] == ["removed"]
    assert [d["status"] for d in cli_json(env, "prune", "--day", day)["days"]] == ["already removed"]
    dry = cli_json(env, "prune", "--dry-run", "--day", day)
    # Now: [("would remove", 300)] for rows that are gone.
    assert [(d["status"], d["rows"]) for d in dry["days"]] != [("would remove", 300)], dry["days"]
