"""Hunt 7 (mk): faults of the local host the archiver runs on (a full or size-limited temp directory, the
clock skewed against the store), seen through the command line in a subprocess, with real PostgreSQL and
moto's S3 over HTTP (through the fault proxy where the store must answer a fault)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
from psycopg import sql

from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import tiny_tmpfs
from archive_pipeline_tests.test_hunt_cli import DAYS, ROOT, make_env, write_config

DAY = DAYS[0].isoformat()


def _cli(env: dict[str, str], *args: str, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive_pipeline.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, preexec_fn=preexec_fn)


def _day_table(pg, s3, bucket, conn, schema, tmp_path, rows: int = 20000) -> dict[str, str]:
    """``<schema>.ev`` with ``rows`` rows on DAY (about 2.4 MB as uncompressed JSONL), configured for the CLI."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(
        sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 second', "
                         "md5(g::text) || md5((g + 1)::text) FROM generate_series(1, %s) g").format(
        sql.Identifier(schema, "ev")), (f"{DAY} 00:00+00", rows))
    return make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY, "compression": "none"}]))


def _nothing_in_the_bucket(s3_client, bucket: str) -> None:
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_archive_into_a_full_tmpdir_names_the_directory_and_tmpdir(pg, s3, bucket, conn, schema, tmp_path,
                                                                     s3_client):
    """An operator runs `TMPDIR=/scratch archive-pipeline archive --day D` (or a cron line whose $TMPDIR is a small
    volume), and the volume fills up while the day is staged. The day fails, rightly not retried, but the message
    says only "no space left for the temp file ... free space in the temp directory or point the store's temp_dir
    at a volume": it names neither the directory that is full nor TMPDIR, the only setting the command line has (it
    has no temp_dir; "the store's temp_dir" is the Dagster resource's). `restore` and `verify --download` in the
    same state name the directory and TMPDIR ("free space in /scratch, or ... TMPDIR for the default"); the README
    promises it for a full temp dir ("naming the directory and `temp_dir` / `TMPDIR`") and every message's
    "to fix" should say what to change. (`errors._DISK_FULL_LOCAL` is generic; the archive path's `wrap` of the
    sink's OSError never adds the directory, unlike `store._local_write_error` / `restore._local_error`.)"""
    env = _day_table(pg, s3, bucket, conn, schema, tmp_path)
    with tiny_tmpfs(tmp_path / "tiny", "64k") as tiny:
        env["TMPDIR"] = str(tiny)
        done = _cli(env, "archive", "--day", DAY, "--json")
    [day] = json.loads(done.stdout)["days"]
    assert (done.returncode, day["status"], day["retryable"]) == (1, "failed", False), done.stdout
    assert "No space left" in day["message"], day["message"]
    _nothing_in_the_bucket(s3_client, bucket)
    assert str(tiny) in day["message"], day["message"]
    assert "TMPDIR" in day["message"], day["message"]
