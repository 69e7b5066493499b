"""Hunt 7 (mk): faults of the local host the archiver runs on (a full or size-limited temp directory, the
clock skewed against the store), seen through the command line in a subprocess, with real PostgreSQL and
moto's S3 over HTTP (through the fault proxy where the store must answer a fault)."""

from __future__ import annotations

import json
import resource
import subprocess

import pytest
from psycopg import sql

from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import run_cli, tiny_tmpfs
from archive_pipeline_tests.test_hunt_cli import DAYS, ROOT, make_env, write_config

DAY = DAYS[0].isoformat()


def _cli(env: dict[str, str], *args: str, preexec_fn=None) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call), except with a
    # preexec_fn (the file size rlimit of the test below): that is a real child process's own, so one is started
    return run_cli(args, env, cwd=ROOT, timeout=60, preexec_fn=preexec_fn, process=preexec_fn is not None or None)


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


def test_a_clock_skewed_against_the_store_is_not_reported_as_a_missing_grant(pg, s3, bucket, conn, schema,
                                                                             tmp_path, s3_client):
    """A VM whose clock drifted 20 minutes (NTP stopped) runs `archive-pipeline archive --day D`: the store refuses
    every request with 403 RequestTimeTooSkewed. The first request is the bucket check (HeadBucket), whose answer
    has no body, so the command says "bucket ... refused HeadBucket (403): grant s3:ListBucket on the bucket to these
    credentials ..., and check $ARCHIVE_S3_BUCKET and the S3 credentials" (exit 2): the operator goes off to
    change an IAM policy that is fine, and nothing mentions the clock. The README lists clock skew as "a 403 that
    no permission fixes", and the same fault on a later request (a manifest PUT, a GET) is reported right:
    "this machine's clock is too far off the store's ...; to fix: synchronise the clock (NTP)". A 403 to the
    bucket check should be told apart from a refused grant before blaming one (a request whose answer carries the
    error code, such as a one-key listing, or the response's Date header against the local clock).
    (`environment.store_from_env`, the ClientError branch of the head_bucket check.)"""
    env = _day_table(pg, s3, bucket, conn, schema, tmp_path, rows=100)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(action="error", status=403, code="RequestTimeTooSkewed", times=None))  # every request
        env["ARCHIVE_S3_ENDPOINT_URL"] = proxy.url
        done = _cli(env, "archive", "--day", DAY, "--json")
    answer = json.loads(done.stdout)
    assert answer["ok"] is False and answer["retryable"] is False, done.stdout
    _nothing_in_the_bucket(s3_client, bucket)
    assert "clock" in answer["error"], answer["error"]
    assert "grant" not in answer["error"], answer["error"]


@pytest.mark.parametrize("command", [["archive"], ["restore", "--into", "new", "--target", "{schema}.restored"]],
                         ids=["archive", "restore"])
def test_a_temp_file_over_the_file_size_limit_is_a_named_local_fault_not_an_unexpected_error(
        pg, s3, bucket, conn, schema, tmp_path, s3_client, command):
    """The archiver runs under a file-size limit (`ulimit -f` in a cron wrapper, systemd's LimitFSIZE=, or a temp
    dir on a file system with a maximum file size such as FAT32's 4 GiB): writing the staged archive (or restore's
    download) past it fails with EFBIG, "[Errno 27] File too large". The day fails with "an unexpected error
    (OSError: [Errno 27] File too large); ... to fix: read the message; it is not retried because nothing says a
    retry would help": the generic verdict for a cause nobody recognised, naming neither the temp directory nor
    the limit. It is a local fault of the host like a full disk (not retryable, never the store's or the
    archive's): the message should say the temp file outgrew the file-size limit and name the temp directory
    (here $TMPDIR) and what to change (raise the limit, or a temp dir on a volume that allows the day's object).
    (`errors._classify_os` knows ENOSPC/EDQUOT, EROFS/EACCES/EPERM, ENOENT/ENOTDIR and EIO only; EFBIG falls
    through to `_UNKNOWN`.)"""
    env = _day_table(pg, s3, bucket, conn, schema, tmp_path)
    if command != ["archive"]:
        assert _cli(env, "archive", "--day", DAY).returncode == 0
    temp = tmp_path / "scratch"
    temp.mkdir()
    env["TMPDIR"] = str(temp)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = _cli(env, *[part.format(schema=schema) for part in command], "--day", DAY, "--json",
                preexec_fn=limited)
    answer = json.loads(done.stdout)
    message = answer["days"][0]["message"] if command == ["archive"] else answer["error"]
    assert done.returncode == 1 and "File too large" in message, done.stdout
    assert "unexpected error" not in message, message
    assert str(temp) in message, message
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None
