"""Cancelling mid-way: Ctrl-C (SIGINT) and SIGTERM of the command line, and a Dagster run terminated, while
a day uploads or is proven. Afterwards: the process ends promptly and says it was cancelled, nothing
half-written at the day's key, no open multipart upload, no temp file, the table-day lock released and no
session of ours left in PostgreSQL, and the next run archives the day exactly. Then the pieces a cancel goes
through: parallel streams, the read-ahead thread, a query waiting for a lock."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterExecutionInterruptedError, DagsterRunStatus, RunsFilter, instance_for_test
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.locks import lock_key
from archive_pipeline.core.source import prefetch
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.streams import StreamGroup
from archive_pipeline.core.verify import deep_verify
from archive_pipeline.definitions import build_definitions
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import download

ROOT = Path(__file__).resolve().parents[1]
DAY = dt.date(2024, 3, 10)
OURS = ("archive_pipeline_cli", "archive_pipeline")  # application_name of the CLI's and the code location's sessions


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3.endpoint_url) as running:
        yield running


def wide_day(conn, schema: str, rows: int = 1000, width: int = 9600) -> None:
    """``<schema>.ev`` with ``rows`` rows of ``width`` bytes on DAY: ~10 MB of JSON (two parts of the command
    line's 8 MiB) that PostgreSQL reads in a blink."""
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, pad text)").format(
        sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s::timestamptz + g * interval '1 second', "
                         "repeat(md5(g::text), %s) FROM generate_series(1, %s) g").format(sql.Identifier(schema)),
                 (f"{DAY} 00:00+00", width // 32, rows))


@pytest.fixture
def setup(pg, conn, schema, bucket, proxy, tmp_path):
    """A wide day, its table in a config file, and the command line's environment (S3 through the proxy)."""
    wide_day(conn, schema)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "jsonl",
             "compression": "none", "retention": {"keep_days": 30, "action": "delete"}}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=proxy.url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200",
               TMPDIR=str(temp))
    return env, parse_config({"tables": [table]}).tables[0], temp


def cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    # a real process (Popen), never helpers.run_cli: the tests cancel and signal the command while it runs
    return subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cancelled_when_held(proxy: FaultProxy, child: subprocess.Popen, conn, signals: list[int], **match: str
                        ) -> tuple[int, str]:
    """Send ``signals`` to ``child`` once the proxy holds the first request that ``match``es (while the CLI's
    session is there to see), let the request go once the child has ended; its exit status and stderr."""
    # (generous bounds: under a loaded machine the child's start and its clean-up take long; what matters is that it
    # ends while the request is still held, not how fast)
    held = proxy.add(Fault(**match, action="hold", times=1, hold_timeout=240))
    try:
        assert proxy.wait_held(1, timeout=90), child.poll()
        assert our_sessions(conn), "the check for sessions left behind would see ours"
        for signum in signals:
            child.send_signal(signum)
        out, err = child.communicate(timeout=180)  # ends before the held request is let go (240 s): it does not wait for it
    finally:
        held.gate.set()
        child.kill()
    return child.returncode, err


def our_sessions(conn) -> list[tuple]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT state, left(query, 40) FROM pg_stat_activity WHERE application_name = ANY(%s)",
                        (list(OURS),)).fetchall()


def assert_left_clean(conn, s3_client, bucket: str, spec, temp: Path, keys: dict[str, bytes]) -> None:
    """After a cancelled run: the bucket holds exactly ``keys`` with the same bytes, no multipart upload is
    open, the temp dir is empty, the table-day lock is free and no session of ours is left."""
    stored = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert stored == set(keys)
    assert all(download(s3_client, bucket, key) == body for key, body in keys.items())
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(temp.iterdir()) == []
    deadline = time.monotonic() + 10
    while our_sessions(conn) and time.monotonic() < deadline:  # a closed socket ends its backend at once
        time.sleep(0.05)
    assert our_sessions(conn) == []
    assert conn.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAY)).fetchone()[0]
    conn.execute("SELECT pg_advisory_unlock(%s)", lock_key(spec.name, DAY))


def test_cli_cancelled_while_archiving_and_proving(setup, proxy, pg, conn, s3_client, bucket):
    """Ctrl-C waited 10 s for a stalled part and ended with "Aborted!" (exit 1, as for a failed day), and a second
    signal meanwhile left the day's multipart upload open; SIGTERM ended the command on the spot, leaving the
    upload open and saying nothing."""
    env, spec, temp = setup
    code, err = cancelled_when_held(proxy, cli(env, "archive", "--day", DAY.isoformat()), conn,
                                    [signal.SIGINT, signal.SIGTERM], method="PUT", query="partNumber=")
    assert code == 130, err
    assert err.strip().splitlines()[-1] == (
        f"error: archiving {spec.name} {DAY} was cancelled by Ctrl-C: nothing of the day was published (an earlier "
        "archive of it stays as it was); to fix: run the same command again to finish")
    assert_left_clean(conn, s3_client, bucket, spec, temp, {})

    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    with pg.connect() as archiving:
        assert archive_partition(archiving, spec, DAY, store).rows == 1000
    assert deep_verify(conn, store, spec, DAY) == []  # the next run's archive, loaded back, equals the source
    key = render_key(spec, DAY, "archive")
    archived = {k: download(s3_client, bucket, k) for k in (key, manifest_key(key))}

    code, err = cancelled_when_held(proxy, cli(env, "prune", "--day", DAY.isoformat(), "--json"), conn,
                                    [signal.SIGTERM], method="GET", path=re.escape(key) + "$")  # its proof's download
    assert code == 143, err
    assert err.strip().splitlines() == [
        f"error: proving {spec.name} {DAY} was cancelled by SIGTERM: nothing was changed; to fix: run the same "
        "command again to finish"]
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.ev").format(sql.Identifier(spec.schema_name))
                        ).fetchone()[0] == 1000
    assert_left_clean(conn, s3_client, bucket, spec, temp, archived)


@pytest.fixture
def dagster_env(pg, bucket, proxy, monkeypatch, tmp_path) -> Path:
    """The code location's environment with S3 through the proxy; a temp dir for its temp files."""
    for name, value in {"ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket, "ARCHIVE_S3_PREFIX": "archive",
                        "ARCHIVE_S3_ENDPOINT_URL": proxy.url}.items():
        monkeypatch.setenv(name, value)
    temp = tmp_path / "tmp"
    temp.mkdir()
    return temp


def terminated_when_held(instance, job, proxy: FaultProxy, partition: str | None = DAY.isoformat(), *,
                         tags: dict | None = None, **match: str) -> tuple[DagsterRunStatus, list[str]]:
    """Run ``job`` for ``partition`` (or a range, by ``tags``) and terminate it as the UI's Terminate does to an
    in-process step, once the
    proxy holds the first request that ``match``es: the run is marked CANCELING, then the run worker interrupted
    (SIGINT, raised in the step as DagsterExecutionInterruptedError). The run's status and its step failures."""
    held = proxy.add(Fault(**match, action="hold", times=1, hold_timeout=60))

    def terminate() -> None:
        if proxy.wait_held(1, timeout=60):
            [run] = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
            instance.report_run_canceling(run)
            os.kill(os.getpid(), signal.SIGINT)

    terminator = threading.Thread(target=terminate)
    terminator.start()
    try:
        result = job.execute_in_process(partition_key=partition, tags=tags, instance=instance, raise_on_error=False)
    finally:
        terminator.join(60)
        held.gate.set()
    failures = [e.dagster_event.step_failure_data.user_failure_data.description
                for e in instance.all_logs(result.run_id) if e.dagster_event and e.dagster_event.is_step_failure]
    return instance.get_run_by_id(result.run_id).status, failures


def test_dagster_runs_terminated_while_archiving_and_proving(conn, schema, pg, bucket, proxy, s3_client,
                                                             dagster_env, monkeypatch):
    """Dagster retries an interrupted step that has a RetryPolicy: a terminated archive run archived the day all
    the same and ended SUCCESS, a terminated check ran again, and a terminated removal removed the day. Now the
    step fails as cancelled (no retry) and the run ends CANCELED."""
    wide_day(conn, schema)
    config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "jsonl",
         "compression": "none", "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        monkeypatch.setattr(tempfile, "tempdir", str(dagster_env))  # where the archive's temp files go (after the
        # instance made its own temp dir)
        status, failures = terminated_when_held(instance, defs.resolve_job_def(f"Archive_{schema}_ev"), proxy,
                                                method="PUT", query="partNumber=")
        assert status == DagsterRunStatus.CANCELED, failures
        assert failures == [f"{spec.name} {DAY}: cancelled while archiving: the run was terminated; nothing of the "
                            "day was published (an earlier archive of it stays as it was).\n\nWhat to do: launch "
                            f"partition {DAY} of Archive_{schema}_ev again when it should run."]
        assert_left_clean(conn, s3_client, bucket, spec, dagster_env, {})

        archive = defs.resolve_job_def(f"Archive_{schema}_ev")
        assert archive.execute_in_process(partition_key=DAY.isoformat(), instance=instance).success
        key = render_key(spec, DAY, "archive")
        archived = {k: download(s3_client, bucket, k) for k in (key, manifest_key(key))}
        status, failures = terminated_when_held(instance, defs.resolve_job_def("verify_archives"), proxy, None,
                                                method="HEAD", path=re.escape(key) + "$")
        assert status == DagsterRunStatus.CANCELED, failures
        assert failures == [f"{spec.name} {DAY}: cancelled while checking: the run was terminated; nothing was "
                            "changed.\n\nWhat to do: run the check again when it should run."]
        status, failures = terminated_when_held(instance, defs.resolve_job_def(f"Remove_{schema}_ev"), proxy,
                                                method="GET", path=re.escape(key) + "$")
        assert status == DagsterRunStatus.CANCELED, failures
        assert failures == [f"{spec.name} {DAY}: cancelled while proving: the run was terminated; nothing was "
                            f"changed.\n\nWhat to do: launch partition {DAY} of Remove_{schema}_ev again when it "
                            "should run."]  # the removal's proof, before anything was removed
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.ev").format(sql.Identifier(schema))).fetchone()[0] == 1000
    assert_left_clean(conn, s3_client, bucket, spec, dagster_env, archived)


def test_streams_interrupted_while_the_first_waits_for_the_others():
    """Stream 0 runs in the caller's thread; done before the others, it waits for them. An interrupt there
    (Ctrl-C, a terminated run) used to leave the other streams reading on their sessions while the archive's
    cleanup closed those sessions under them: now they are cancelled and waited for, and the interrupt raised."""
    first_done, cancelled = threading.Event(), threading.Event()
    group = StreamGroup([lambda: None, cancelled.set])

    def stream_1() -> None:
        first_done.wait(30)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C, the caller done with stream 0
        if not cancelled.wait(30):
            raise AssertionError("stream 1 was never cancelled")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            group.run([first_done.set, stream_1])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert cancelled.is_set()


def test_cli_names_the_day_a_check_was_cancelled_on(capsys):
    """verify and compare check day by day: Ctrl-C during one (a download, a fingerprint) names that day."""
    from archive_pipeline.cli import _cancelled, _day_checked

    def check() -> list[str]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        _day_checked(None, "s.ev", DAY, check)
    with pytest.raises(SystemExit) as exited:
        _cancelled(False, caught.value)
    assert exited.value.code == 130
    assert capsys.readouterr().err == (f"error: checking s.ev {DAY} was cancelled by Ctrl-C: nothing was changed; "
                                       "to fix: run the same command again to finish\n")


def test_interrupted_while_waiting_for_a_lock_leaves_no_query_running(pg, conn, schema, store):
    """psycopg cancels the server's query only on KeyboardInterrupt: interrupted by anything else (a terminated
    Dagster run raises DagsterExecutionInterruptedError), the backend went on waiting for the table's lock (up
    to lock_timeout), then ran the day's read for nobody, holding the table-day lock all the while."""
    wide_day(conn, schema, rows=10, width=64)
    spec = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat()}]}
                        ).tables[0]
    name = f"cancelhunt_{os.getpid()}"

    def waiting() -> list:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = "
                            "'Lock'", (name,)).fetchall()

    def interrupt() -> None:
        deadline = time.monotonic() + 30
        while not waiting() and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def terminated(*_: object) -> None:
        raise DagsterExecutionInterruptedError()

    with pg.connect() as blocker, blocker.transaction(), pg.connect(application_name=name) as archiving:
        blocker.execute(sql.SQL("LOCK TABLE {}.ev IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema)))
        previous = signal.signal(signal.SIGINT, terminated)
        try:
            threading.Thread(target=interrupt).start()
            with pytest.raises(DagsterExecutionInterruptedError):
                archive_partition(archiving, spec, DAY, store)
        finally:
            signal.signal(signal.SIGINT, previous)
        deadline = time.monotonic() + 30  # the lock is still held: only a cancelled query is gone by then
        while waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting() == []
        # the interrupted session was closed: its backend lets the table-day lock go as it exits, a moment after
        deadline = time.monotonic() + 30
        while not (free := conn.execute("SELECT pg_try_advisory_lock(%s)",
                                        lock_key(spec.name, DAY)).fetchone()[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert free
        conn.execute("SELECT pg_advisory_unlock(%s)", lock_key(spec.name, DAY))


def test_a_read_stopped_early_cancels_the_query_it_waits_on():
    """The reader thread looks for a stop only between chunks. The next one may be long in coming (a slow link,
    a day's rows sparse in a long scan): Ctrl-C then waited for it. With a 1 MB/s link to the source, a Ctrl-C
    1 s into a 10 MB day returned after the whole day was read. Now the query is cancelled at once."""
    cancelled = threading.Event()

    def chunks():
        yield b"first"
        if not cancelled.wait(30):  # waiting for the server's next chunk, until the query is cancelled
            raise AssertionError("the query was never cancelled")
        raise RuntimeError("canceling statement due to user request")

    with pytest.raises(KeyboardInterrupt):
        for _ in prefetch(chunks(), cancel=cancelled.set):
            raise KeyboardInterrupt
    assert cancelled.is_set()


def test_cancelled_while_the_manifest_is_written(pg, conn, schema, proxy, s3_client, bucket):
    """A manifest PUT on its way when Ctrl-C came may still land (its bytes were sent). The cancelled run deleted
    the new object all the same: the manifest that landed then named an object that was gone."""
    wide_day(conn, schema, rows=10, width=64)
    spec = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat()}]}
                        ).tables[0]
    key = render_key(spec, DAY, "archive")
    held = proxy.add(Fault(method="PUT", path=re.escape(manifest_key(key)) + "$", action="hold", times=1,
                           hold_timeout=60))
    store = S3Store(proxy.client(), bucket, prefix="archive")

    def interrupt() -> None:
        if proxy.wait_held(1, timeout=30):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt).start()
        with pg.connect() as archiving, pytest.raises(KeyboardInterrupt) as caught:
            archive_partition(archiving, spec, DAY, store)
    finally:
        signal.signal(signal.SIGINT, previous)
        held.gate.set()
    deadline = time.monotonic() + 30
    while proxy.requests(method="PUT", path=re.escape(manifest_key(key)) + "$")[0].status is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert S3Store(s3_client, bucket, prefix="archive").head(manifest_key(key)) is not None  # it landed after all
    assert deep_verify(conn, S3Store(s3_client, bucket, prefix="archive"), spec, DAY) == []  # and its object is there
    assert caught.value.interrupted == f"committing {spec.name} {DAY}"
