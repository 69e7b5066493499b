"""Fixtures: one real PostgreSQL cluster and one moto S3 server (over HTTP) per test session;
each test gets its own schema and bucket so tests never see each other's data."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
import itertools
import os
import signal

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.local.local_stack import LocalPostgres, LocalS3, start_postgres, start_s3
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store

_counter = itertools.count()
_SHM = "/dev/shm"
_SHM_NEEDED = 4 << 30


def pytest_configure(config: pytest.Config) -> None:
    """Temp files on a large tmpfs where the machine has one and TMPDIR is not set: Dagster's SQLite instances
    (each event a run writes is a synced SQLite transaction: on a disk, half of a small run's time), pytest's tmp_path,
    the throwaway cluster and every subprocess's temp files (they inherit TMPDIR). The test processes of one run
    share the directory; the controlling process removes it at the end."""
    if os.environ.get("TMPDIR") or hasattr(config, "workerinput") or not os.path.isdir(_SHM):
        return
    usage = shutil.disk_usage(_SHM)
    if usage.free < _SHM_NEEDED or not os.access(_SHM, os.W_OK | os.X_OK):
        return
    chosen = tempfile.mkdtemp(prefix="archive-pipeline-tests-", dir=_SHM)
    os.chmod(chosen, 0o1777)  # (the cluster's directories are made in it for the postgres user)
    os.environ["TMPDIR"] = chosen
    tempfile.tempdir = chosen
    config.stash[_TMPFS_KEY] = chosen


_TMPFS_KEY = pytest.StashKey[str]()


def pytest_unconfigure(config: pytest.Config) -> None:
    chosen = config.stash.get(_TMPFS_KEY, None)
    if chosen is not None:
        shutil.rmtree(chosen, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> LocalPostgres:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3() -> LocalS3:
    server = start_s3()
    yield server
    server.stop()


@pytest.fixture
def conn(pg: LocalPostgres) -> psycopg.Connection:
    with pg.connect() as connection:
        yield connection


@pytest.fixture
def schema(conn: psycopg.Connection) -> str:
    """A fresh schema for the test's tables, dropped afterwards."""
    name = f"t{os.getpid()}_{next(_counter)}"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def s3_client(s3: LocalS3):
    return s3.client()


@pytest.fixture
def bucket(s3_client) -> str:
    name = f"archive-{os.getpid()}-{next(_counter)}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(s3_client, bucket: str) -> S3Store:
    return S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)


@pytest.fixture
def temp_dir(tmp_path):
    path = tmp_path / "archive-tmp"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _s3_environment(monkeypatch):
    # boto3 clients built by dagster-aws read credentials from the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def utc_today(margin: float = 300.0) -> dt.date:
    """Today in UTC, for tests whose days are counted back from today while the code under test (a
    subprocess, a Dagster run) reads the clock again: within ``margin`` seconds of midnight it waits
    for the new day first, so both see the same date (a test that ran across midnight disagreed)."""
    now = dt.datetime.now(dt.UTC)
    left = (dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC) - now).total_seconds()
    if left < margin:
        time.sleep(left + 1)
    return dt.datetime.now(dt.UTC).date()


@pytest.fixture
def archive_env(monkeypatch, pg, s3, bucket):
    """The environment a deployment provides: connection settings only, never in the YAML."""
    monkeypatch.setenv("ARCHIVE_PG_DSN", pg.dsn)
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("ARCHIVE_S3_PREFIX", "archive")
    return bucket


@pytest.fixture
def publication(conn, schema):
    """The name of a publication the test may create; dropped afterwards (publications outlive schemas)."""
    name = f"{schema}_pub"
    yield name
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Each test starts with Python's own SIGINT handler (KeyboardInterrupt): tests that interrupt the main
    thread on purpose (a run's termination) must not depend on what an earlier in-process Dagster run or
    command left installed."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
