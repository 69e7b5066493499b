"""Hunt 14 (ti): regressions and holes in the session's later fixes (ranged runs' retry wait, the CLI's lost
database between tables, removed days recorded by ranged runs, read-only sources, restore's new target)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import types

import yaml
from dagster import DagsterEventType, DagsterRunStatus, execute_job, instance_for_test, reconstructable
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.core.locks import lock_key
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs import assets as assets_module
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_cli import ROOT, cli
from archive_pipeline_tests.test_hunt10_px import _env

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(5)]
RANGE = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
         "dagster/asset_partition_range_end": DAYS[-1].isoformat()}


def _raw(schema, retry=1, delay=0, **table):
    return {"retry": {"max_retries": retry, "delay_seconds": delay}, "backfill": {"max_days_per_run": 10},
            "tables": [{"name": f"{schema}.events", "day_column": "created_at", "start_date": FIRST.isoformat(),
                        **table}]}


def _job_from_environment():
    """The archive job of the table configured in $TI_CONFIG (reconstructable: execute_job with run config)."""
    return build_definitions(parse_config(json.loads(os.environ["TI_CONFIG"]))).resolve_job_def(os.environ["TI_JOB"])


def _use(monkeypatch, raw, schema):
    monkeypatch.setenv("TI_CONFIG", json.dumps(raw))
    monkeypatch.setenv("TI_JOB", f"Archive_{schema}_events")
    return parse_config(raw).tables[0]


# --- the CLI with its database going down between two tables ------------------------------------------------------

DRIVER = r'''
"""The CLI with the source database reached through a TCP forwarder that goes down (listener closed, every
forwarded connection cut: a server crash or failover) right after cli.<function> returns for a given table."""
import os, socket, sys, threading
PG_PORT = int(os.environ["TI_PG_PORT"])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
live, down = [], threading.Event()

def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def accept():
    while not down.is_set():
        try:
            c, _ = listener.accept()
        except OSError:
            return
        if down.is_set():
            c.close()
            return
        u = socket.create_connection(("127.0.0.1", PG_PORT))
        live.extend([c, u])
        threading.Thread(target=pump, args=(c, u), daemon=True).start()
        threading.Thread(target=pump, args=(u, c), daemon=True).start()

threading.Thread(target=accept, daemon=True).start()

def cut():
    down.set()
    listener.close()
    for s in live:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

os.environ["ARCHIVE_PG_DSN"] = f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/postgres"
import archive_pipeline.cli as cli
name, table, nth = os.environ["TI_CUT_AFTER"].split("|")
calls, real = [0], getattr(cli, name)

def wrapped(run, spec, *args, **kwargs):
    out = real(run, spec, *args, **kwargs)
    if spec.name == table:
        calls[0] += 1
        if calls[0] == int(nth):
            cut()
    return out

setattr(cli, name, wrapped)
sys.argv = ["archive-pipeline", *sys.argv[1:]]
cli.main()
'''


def _drive(env, pg, tmp_path, cut_after: str, *args: str) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run([sys.executable, str(driver), *args], env=dict(env, TI_PG_PORT=str(pg.port),
                          TI_CUT_AFTER=cut_after, PYTHONPATH=str(ROOT)), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def _tables(conn, schema, tmp_path, names, days, **extra):
    tables = []
    for name in names:
        t = sql.Identifier(schema, name)
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(t))
        for i, day in enumerate(days):
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(t), (i, f"{day} 12:00+00"))
        tables.append(dict(name=f"{schema}.{name}", day_column="at", start_date=days[0].isoformat(), format="jsonl",
                           partitioning={"mode": "column"}, **extra))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}))
    return config


def test_archive_json_drops_the_first_tables_days_when_the_database_goes_down_between_two_tables(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: `archive-pipeline archive --from 2024-03-10 --to 2024-03-11 --json` over two tables `a` and `b`.
    Both of `a`'s days are archived and published; then, before `b` is started, the database goes down (a crash, a
    failover: the command's idle session is cut and a new connection is refused).

    Now: `_archive_tables` calls `run.between_days()` (which forgets the dead session) and then `run.conn` inside
    `plan.present_days(...)`: the reconnect raises `UnreachableError`, which is not `_DatabaseLost`, so it escapes
    `archive()` and main answers the error alone: `{"ok": false, "exit_code": 3, "error": "cannot connect to
    PostgreSQL ..."}` with no `days`; the human output has no table either. A script never learns that `a`'s two days
    were archived (their keys, rows, md5). da64681 made exactly this case (the database lost mid-range) list the days
    done with exit 3; only a loss noticed by a day's own work is handled, not one noticed between tables.

    Should: exit 3 with the error, and `days` listing a's 2024-03-10 and 2024-03-11 as archived (b's days not tried).
    Fix idea: in `_archive_tables`, turn an UnreachableError/ArchiveError from the reconnect (or `run.lost` after
    between_days) into `_DatabaseLost`, as a day's loss is; prune's loop the same."""
    days = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
    config = _tables(conn, schema, tmp_path, ["a", "b"], days)
    env = _env(pg, s3, bucket, config)
    done = _drive(env, pg, tmp_path, f"_archive_day|{schema}.a|2", "archive", "--from", "2024-03-10", "--to",
                  "2024-03-11", "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 3, done.stdout + done.stderr
    archived = {(d["table"], d["day"]) for d in answer.get("days", []) if d["status"] == "archived"}
    assert archived == {(f"{schema}.a", "2024-03-10"), (f"{schema}.a", "2024-03-11")}, answer


def test_prune_json_drops_the_days_it_removed_when_the_database_goes_down_between_two_tables(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: a nightly `archive-pipeline prune --json` over tables `a`, `b`, `c` (retention delete, keep_days 1),
    each with two archived days past the window. prune removes `a`'s two days (committed: the rows are gone from
    PostgreSQL); then, before `b`, the database goes down (a crash, a failover: the idle session cut, a new
    connection refused).

    Now: `_prune_table` calls `run.between_days()` (forgetting the dead session), then `run.conn` raises
    `UnreachableError`, which is neither an `ArchiveError` nor `_DatabaseLost`: it escapes `prune()` and the answer is
    the connect error alone (`{"ok": false, "exit_code": 3, "error": ...}`), without the two days prune DID remove
    from `a`. A script (or a person reading the output) is told nothing was done while rows were deleted. prune's own
    `_DatabaseLost` path (a loss during a day) lists the removed days beside the error; the README's --json is "one
    object: ok, days (one entry per table-day ...)".

    Should: exit 3 with the error and `days` listing a's two days as removed. Fix idea: treat a connect failure of
    the reconnect after between_days as `_DatabaseLost` (the days after it not tried)."""
    days = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
    config = _tables(conn, schema, tmp_path, ["a", "b", "c"], days, retention={"keep_days": 1, "action": "delete"})
    env = _env(pg, s3, bucket, config)
    done = cli(env, "archive", "--from", "2024-03-10", "--to", "2024-03-11")
    assert done.returncode == 0, done.stdout + done.stderr
    done = _drive(env, pg, tmp_path, f"_prune_table|{schema}.a|1", "prune", "--json")
    answer = json.loads(done.stdout)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "a"))).fetchone()[0] == 0
    assert done.returncode == 3, done.stdout + done.stderr
    removed = {(d["table"], d["day"]) for d in answer.get("days", []) if d["status"] == "removed"}
    assert removed == {(f"{schema}.a", "2024-03-10"), (f"{schema}.a", "2024-03-11")}, answer


# --- a ranged run's retry wait (4484caa) ------------------------------------------------------------------------


def test_a_ranged_run_with_retries_disabled_still_waits_out_the_backoff_for_a_retry_that_never_comes(
        conn, schema, archive_env, pg, monkeypatch):
    """Scenario: a ranged run of 2024-03-10..14 launched with Dagster's own switch for step retries off (run config
    ``execution: {config: {retries: {disabled: {}}}}``, the launchpad's way to fail fast); ``retry:`` in the YAML
    is max_retries 3, delay_seconds 3600. 2024-03-13 fails retryably (another session holds its table-day lock).

    Now: ``after_retry_wait`` only looks at the op's RetryPolicy and ``retry_number``, not at the step's retry mode:
    it logs "2024-03-13 to be tried again in ~3600 s (retry 1 of 3 ...)" and sleeps the whole hour inside the step,
    then raises RetryRequested, which Dagster (retries disabled) turns into "RetryRequested but retries are disabled":
    the run hangs an hour for a retry that never comes, and its log promises a retry that does not happen. Before
    4484caa the run failed at once (Dagster waits between attempts only when it does retry).

    Should: no wait (and no "to be tried again" line) when the step will not be retried; the run fails at once with
    the batch failure. Fix idea: in ``after_retry_wait`` return ``failure`` when
    ``context.get_step_execution_context().retry_mode.disabled``."""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    spec = _use(monkeypatch, _raw(schema, retry=3, delay=3600), schema)
    slept: list[float] = []
    monkeypatch.setattr(assets_module, "time", types.SimpleNamespace(sleep=slept.append))  # (the step's own wait)
    with pg.connect() as other, instance_for_test() as instance:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[3])).fetchone()[0]
        with execute_job(reconstructable(_job_from_environment), instance=instance, tags=RANGE, raise_on_error=False,
                         run_config={"execution": {"config": {"retries": {"disabled": {}}}}}) as result:
            run_id = result.run_id
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
        promised = [e.user_message for e in instance.all_logs(run_id) if "to be tried again" in (e.user_message or "")]
        retried = [e for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_RESTARTED)]
    assert not retried  # (the premise: Dagster retries nothing)
    assert not slept and not promised, (f"the step waited {sum(slept):.0f} s for a retry that retries: disabled "
                                        f"never makes: {promised}")


# --- removed days recorded by a ranged run (2d534bd, 7d5a10e) --------------------------------------------------


def test_a_removed_day_archived_by_the_cli_under_the_former_format_turns_failed_when_a_neighbour_fails(
        conn, schema, archive_env, store, temp_dir, pg):
    """Scenario: ``events`` (retention delete) is archived and pruned by the command line as jsonl: 2024-03-10 is
    removed from the source, its jsonl archive the day's only copy; Dagster's instance holds no record of it. The
    table is then switched to ``format: parquet`` (README: an archive under the former format stays the day's
    archive). A ranged run of 2024-03-10..12 meets 2024-03-10 (the core says, rightly, "removed ... after its archive
    ...2024-03-10.jsonl.zst (jsonl/zstd, the table's format and compression then) was proven": nothing to do) while
    2024-03-11 fails (another session holds its lock).

    Now: ``record_removed`` has no earlier materialization, so it reads the manifest at ``recorded_day_key(spec,
    day, store)``, the key the configuration renders NOW (``.parquet``), finds none and returns without recording:
    Dagster marks 2024-03-10 FAILED beside the day that really failed, while the step failure says "1 of 3 days
    failed (2024-03-11); the other 2 are archived and recorded as materialized". README (ranged runs): a removed
    day is "recorded again as materialized with state `removed` ..., so its partition stays materialized even when
    another day of the run fails".

    Should: 2024-03-10 MATERIALIZED (recorded with state removed from its jsonl manifest), 2024-03-11 FAILED,
    2024-03-12 MATERIALIZED. Fix idea: read the manifest the core found (the DayRemovedError could carry its key,
    or look under the other format/codec keys and former_keys as the core's ``_removed_elsewhere`` does)."""
    from dagster import AssetPartitionStatus, instance_for_test as fresh_instance

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.defs.assets import asset_key, daily_partitions, job_name

    days = DAYS[:3]
    create_sample_events(conn, days[:1], rows_per_day=3, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": FIRST.isoformat(),
             "retention": {"keep_days": 30, "action": "delete"}, "format": "jsonl"}
    spec = parse_config({"tables": [table]}).tables[0]
    archive_partition(conn, spec, days[0], store, temp_dir=temp_dir)  # (the command line's archive and prune)
    assert remove_day(conn, spec, days[0], store, temp_dir=temp_dir, removed_by="cli").rows == 3
    create_sample_events(conn, days[1:], rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10},
                           "tables": [{**table, "format": "parquet"}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with pg.connect() as other, fresh_instance() as instance:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, days[1])).fetchone()[0]
        result = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, raise_on_error=False,
                                                                         tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[2].isoformat()})
        assert not result.success  # (2024-03-11's lock: as it should)
        status = {day: found.value if found else None for day, found in instance.get_status_by_partition(
            asset_key(spec), [d.isoformat() for d in days], daily_partitions(spec)).items()}
    assert status == {days[0].isoformat(): AssetPartitionStatus.MATERIALIZED.value,
                      days[1].isoformat(): AssetPartitionStatus.FAILED.value,
                      days[2].isoformat(): AssetPartitionStatus.MATERIALIZED.value}, status


def test_a_ranged_run_terminated_while_it_waits_to_retry_says_why_the_day_it_leaves_failed(
        conn, schema, archive_env, pg, monkeypatch):
    """Scenario: a ranged run of 2024-03-10..14 (retry: max_retries 2); 2024-03-13 fails retryably (another session
    holds its table-day lock), the other days are archived, and the step waits out the retry's backoff inside
    itself (4484caa). The person clicks Terminate during that wait.

    Now: ``after_retry_wait`` words the step failure "<table> 2024-03-13: cancelled while waiting to retry: the run
    was terminated; it failed (its cause is above) and was waiting to be archived again ...", and passes
    ``cancelled_batch`` the failed days *except* that one, so the failure (the message a run-failure alert or the
    UI's failure panel shows) never says why 2024-03-13 failed: "above" is a log line elsewhere in the run, and no
    cause of the day is in the failure itself. Other days that failed before a termination keep their cause
    ("Failed earlier in this run (...)" with each cause). The promise: every failure names table, day and cause.

    Should: the step failure carries 2024-03-13's own cause (its lock held by another run) beside the cancellation.
    Fix idea: pass ``failed`` whole to ``cancelled_batch`` (or append the cut-off day's description) instead of
    dropping ``again[0]``."""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    raw = _raw(schema, retry=2, delay=30)
    spec = _use(monkeypatch, raw, schema)
    defs = build_definitions(parse_config(raw))
    with pg.connect() as other, instance_for_test() as instance:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[3])).fetchone()[0]

        def sleep(seconds: float) -> None:  # the UI's Terminate, arriving during the step's own retry wait
            [run] = instance.get_runs()
            instance.report_run_canceling(run)
            raise KeyboardInterrupt

        monkeypatch.setattr(assets_module, "time", types.SimpleNamespace(sleep=sleep))
        result = defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, tags=RANGE, raise_on_error=False)
        assert instance.get_run_by_id(result.run_id).status == DagsterRunStatus.CANCELED
        final = [e.dagster_event.step_failure_data for e in instance.all_logs(result.run_id)
                 if e.dagster_event and e.dagster_event.is_step_failure][-1]
        said = final.user_failure_data.description if final.user_failure_data else final.error.to_string()
    assert "waiting to retry" in said and DAYS[3].isoformat() in said  # (the premise: the wait was cut off)
    assert "another run right now" in said, f"the failure never says why {DAYS[3]} failed:\n{said}"


def test_a_removed_days_record_names_the_archive_it_was_removed_with_not_an_older_generation(
        conn, schema, archive_env, store, temp_dir):
    """Scenario: ``events`` (retention delete). A Dagster run archives 2024-03-10 (generation 1, recorded with its
    md5 and key). A row of the day is corrected and the command line archives the day again with ``--overwrite``
    (generation 2, ``2024-03-10.g2.jsonl.zst``, other content), then ``prune`` proves generation 2 and removes the
    day: generation 2 is now the day's only copy. Later a ranged run of 2024-03-10..11 meets the removed day.

    Now: ``record_removed`` finds Dagster's earlier materialization (generation 1) and, the error being a
    DayRemovedError, repeats its metadata as is: the new record (state ``removed``, "its archive is kept") names
    generation 1's object key, md5 and ``dagster/uri``, and carries generation 1's ``archive_intact`` verdict ("object,
    size and manifest match what was recorded") as the check of this record. The UI thus points at an archive that is
    not the removed rows' copy (generation 2 holds the corrected rows that were removed); a person restoring from
    the record's link gets the old content or nothing. README: the record repeats "the archive's metadata".

    Should: the record describes the archive the day was removed with (its manifest: generation 2's key and md5).
    Fix idea: in ``record_removed``, build from the manifest (not ``before``) when the manifest's generation or object
    differs from the earlier materialization's, and carry no verdict about the older one."""
    import dagster as dg

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.keys import table_day_key
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.defs.assets import asset_key, job_name

    days = DAYS[:2]
    create_sample_events(conn, days[:1], rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": FIRST.isoformat(),
         "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    job = defs.resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=days[0].isoformat()).success
        conn.execute(f'UPDATE "{schema}".events SET amount = amount + 1')  # (a correction of the day)
        again = archive_partition(conn, spec, days[0], store, temp_dir=temp_dir, overwrite=True)  # (the CLI's)
        assert again.stored_key.endswith(".g2.jsonl.zst")
        assert remove_day(conn, spec, days[0], store, temp_dir=temp_dir, removed_by="cli").rows == 3
        manifest = load_manifest(store, table_day_key(spec, days[0], store.prefix))
        assert manifest["removed"] and manifest["object"]["key"] == again.stored_key
        create_sample_events(conn, days[1:], rows_per_day=3, schema=schema)
        assert job.execute_in_process(instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[1].isoformat()}).success
        latest = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=asset_key(spec), asset_partitions=[days[0].isoformat()]), limit=1).records[0]
        meta = {k: v.value for k, v in latest.asset_materialization.metadata.items()}
    assert meta["state"] == "removed"
    assert (meta.get("object_key"), meta.get("md5")) == (again.stored_key, manifest["object"]["md5"]), (
        f"the removed day's record names {meta.get('object_key')} (md5 {meta.get('md5')}, generation "
        f"{meta.get('generation')}), not the archive it was removed with, {again.stored_key}")


def test_archive_json_drops_the_first_tables_days_when_the_session_is_ended_while_the_next_table_is_looked_at(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: `archive-pipeline archive --from 2024-03-10 --to 2024-03-11 --json` over tables `a` and `b`. `a`'s
    two days are archived and published. While the command looks for `b`'s days (``plan.present_days``: here it
    waits behind a migration's lock on `b`), the server ends its session (a failover, a restart, an operator's
    pg_terminate_backend).

    Now: ``plan.unread`` re-raises the psycopg OperationalError of a closed connection ("A lost connection is
    raised"), ``_archive_tables`` only turns a day's loss into ``_DatabaseLost``, so the error escapes ``archive()``
    and main answers `{"ok": false, "exit_code": 3, "error": "the source database failed (<schema>.b): ..."}` with no
    `days`: a's two archived days (keys, rows, md5) are not reported, exactly what da64681 meant to end for a
    database lost mid-range.

    Should: exit 3 with the error, and `days` listing a's 2024-03-10 and 2024-03-11 as archived. Fix idea: in
    `_archive_tables`, catch a psycopg.OperationalError / lost connection (``run.lost``) around present_days (and
    the pending-removal look) and raise ``_DatabaseLost``."""
    days = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
    config = _tables(conn, schema, tmp_path, ["a", "b"], days)
    env = _env(pg, s3, bucket, config)
    with pg.connect() as migration:
        migration.autocommit = False
        migration.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "b")))
        child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", "archive", "--from", "2024-03-10",
                                  "--to", "2024-03-11", "--json"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert end_cli_session_waiting_on_a_lock(conn, child, 30) == 1, child.poll()
        finally:
            migration.rollback()
        out, err = child.communicate(timeout=60)
    answer = json.loads(out)
    assert child.returncode == 3, out + err
    archived = {(d["table"], d["day"]) for d in answer.get("days", []) if d["status"] == "archived"}
    assert archived == {(f"{schema}.a", "2024-03-10"), (f"{schema}.a", "2024-03-11")}, answer


def end_cli_session_waiting_on_a_lock(conn, child, seconds: float) -> int:
    """End (pg_terminate_backend) the command line's session once it waits on a lock, polling while ``child`` (its
    process) runs, for at most ``seconds``: how many sessions were ended (1 where it waited). The polling decides
    nothing: the session is ended only once PostgreSQL shows it waiting."""
    deadline, ended = time.monotonic() + seconds, 0
    while not ended and time.monotonic() < deadline and child.poll() is None:
        ended = conn.execute("SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a "
                             "WHERE a.application_name = 'archive_pipeline_cli' AND a.wait_event_type = "
                             "'Lock'").fetchone()[0]
        time.sleep(0.05)
    return ended
