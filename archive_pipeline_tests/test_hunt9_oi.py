"""Hunt 9 (oi): resource limits and extreme shapes: a memory cap (RLIMIT_AS), the peak memory of a compression
level the configuration accepts, and a low file-descriptor limit (RLIMIT_NOFILE) with parallel_streams, each in a
subprocess, against real PostgreSQL and moto's S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import resource
import subprocess
import sys

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline_tests.test_hunt_cli import ROOT, make_env, write_config

DAY = dt.date(2024, 3, 10)

# One operation of the core in a fresh process, under an address-space cap set *relative to the process's size
# after its imports* (so the cap means the same on any machine), printing how it ended as one JSON line.
_DRIVER = r'''
import datetime as dt, json, resource, sys
import boto3, psycopg
import pyarrow, pyarrow.parquet, pyarrow.csv, pyarrow.compute, zstandard  # noqa: F401 (imported before the cap)
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError, classify
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import deep_verify

args = json.loads(sys.argv[1])
client = boto3.client("s3", endpoint_url=args["endpoint"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
store = S3Store(client, args["bucket"], prefix="archive", part_size=5 << 20)
conn = psycopg.connect(args["dsn"], autocommit=True)
spec = TableSpec(**args["spec"])
day = dt.date.fromisoformat(args["day"])


def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024


base_rss = status("VmRSS")
if args.get("headroom_mb") is not None:
    cap = status("VmSize") + (args["headroom_mb"] << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))
try:
    if args["op"] == "archive":
        result = archive_partition(conn, spec, day, store, temp_dir=args["temp"]).rows
    elif args["op"] == "deep":
        result = deep_verify(conn, store, spec, day, temp_dir=args["temp"])
    else:
        result = restore_day(conn, store, spec, day, into="new", target=args["target"], temp_dir=args["temp"]).rows
    out = {"ok": True, "result": repr(result)}
except BaseException as exc:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    out = {"ok": False, "type": type(exc).__name__, "typed": isinstance(exc, ArchiveError), "message": str(exc),
           "cause": classify(exc).cause}
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
out["peak_mb"] = (status("VmHWM") - base_rss) / (1 << 20)
print("@@" + json.dumps(out))
'''


def _run(tmp_path, pg, s3, bucket, op: str, spec: dict, *, headroom_mb: int | None = None,
         target: str | None = None) -> dict:
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    temp = tmp_path / "scratch"
    temp.mkdir(exist_ok=True)
    args = dict(endpoint=s3.endpoint_url, bucket=bucket, dsn=pg.dsn, spec=spec, day=DAY.isoformat(), op=op,
                headroom_mb=headroom_mb, temp=str(temp), target=target)
    done = subprocess.run([sys.executable, str(driver), json.dumps(args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("@@")]
    assert lines, f"the process died (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(lines[0][2:])


def _day(conn, schema: str, rows: int = 20000) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(
        sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '0.1 second', md5(g::text) "
                         "FROM generate_series(1, %s) g").format(sql.Identifier(schema, "ev")),
                 (f"{DAY} 00:00+00", rows))


def _spec(schema: str, **settings) -> dict:
    return dict(name=f"{schema}.ev", day_column="at", start_date=DAY.isoformat(), **settings)


def _nothing_in_the_bucket(s3_client, bucket: str) -> None:
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_zstd_level_22_keeps_the_archivers_memory_flat(pg, s3, bucket, conn, schema, tmp_path, fmt):
    """A user who wants the smallest objects sets `compression: zstd, compression_level: 22` on a CSV or JSONL
    table; the configuration accepts it (the README's range is -7..22) and says nothing of memory. Archiving a
    20,000-row day (a 0.4 MB object) then peaks at about +700 MB of resident memory above imports, and every
    parallel stream adds as much again (+2.8 GB with `parallel_streams: 4`, so 16 streams want ~11 GB), where the
    README promises flat memory: "at most a few 4 MiB chunks ... and max_concurrency parts are in memory at once"
    (measured +46..58 MB at one stream, 170..184 MB at four). python-zstandard's streaming compressor at level 22
    builds its full match tables (window 2^27, chain log 27, hash log 25) for a source of unknown size, and clears
    them at once. The archiver should bound that (cap the window/table logs for a streamed source, or pass the
    source size), or the configuration should refuse such a level (or say what it costs). Parquet at level 22 is
    fine (Arrow compresses page by page, each of known size). (`core/compression.py`, the zstd writer's
    `ZstdCompressor(level=...)`; `core/config.py`'s level range.)"""
    _day(conn, schema)
    try:
        spec = _spec(schema, format=fmt, compression="zstd", compression_level=22)
        TableSpec(**spec)
    except ValueError as exc:  # refused by the configuration, naming the setting: fine too
        assert "compression_level" in str(exc), exc
        return
    out = _run(tmp_path, pg, s3, bucket, "archive", spec)
    assert out["ok"], out
    assert out["peak_mb"] < 150, f"archiving a 20,000-row day at zstd level 22 peaked {out['peak_mb']:.0f} MB above imports"


def test_zstd_out_of_memory_is_the_out_of_memory_fault_not_an_unexpected_error(pg, s3, bucket, conn, schema, tmp_path,
                                                                                s3_client):
    """The archiver runs under a memory cap (a container limit, `ulimit -v`, systemd's MemoryMax with overcommit
    off) and zstd cannot get the memory for its compression context: python-zstandard raises
    `ZstdError: zstd compress error: Allocation error : not enough memory`. The day fails with "an unexpected error
    (ZstdError: ...); to fix: read the message; it is not retried because nothing says a retry would help", the
    verdict for a cause nobody recognised, where the same cap met in Python, in Arrow or at a thread start is
    "the archiving process ran out of memory ...; to fix: give the run more memory or lower chunk_size / the
    store's max_concurrency" (`errors._OUT_OF_MEMORY_LOCAL`). A zstd allocation failure is that same local fault
    and should say so (and, for a high `compression_level`, that the level costs memory). (`errors._classify_one`
    knows MemoryError and "can't start new thread" only; zstandard's ZstdError falls through to `_UNKNOWN`.)
    Here the cap leaves 24 MB above the process's size after its imports, which every stage of the archive
    fits in at level 3, and the table asks for level 22."""
    _day(conn, schema)
    out = _run(tmp_path, pg, s3, bucket, "archive", _spec(schema, format="csv", compression="zstd",
                                                            compression_level=22), headroom_mb=24)
    _nothing_in_the_bucket(s3_client, bucket)
    assert not out["ok"], out
    assert out["typed"], out
    assert "unexpected error" not in out["message"], out["message"]
    assert "memory" in out["cause"], out


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_deep_verification_under_a_memory_cap_fails_as_a_named_local_fault(pg, s3, bucket, conn, schema, tmp_path,
                                                                           store, fmt):
    """`archive-pipeline verify --deep` (or the removal's proof, or a `deep_check`) runs under a memory cap it
    cannot start its threads in (a small container, `ulimit -v`). `deep_verify` lets the bare
    `RuntimeError: can't start new thread` escape (with a Parquet archive and a little more room, a bare
    `pyarrow.lib.ArrowMemoryError: malloc of size ... failed`): not an ArchiveError, naming neither table nor day,
    so the command line prints "unexpected error: RuntimeError: can't start new thread; this is a bug in
    archive_pipeline: report it". The README: a deep verification that fails proves nothing and raises an
    ArchiveError naming table and day, a local fault as such (as restore does: "restoring ... failed: the
    archiving process could not start a thread (its limit of threads or of memory is reached) ...; to fix: give
    the run more memory ..."). (`verify.deep_verify` wraps psycopg errors and passes ArchiveErrors on; every other
    exception of `_prove`, the download's threads and the loader's Arrow, goes out as it was.)"""
    _day(conn, schema)
    spec = _spec(schema, format=fmt)
    archive_partition(conn, TableSpec(**spec), DAY, store, temp_dir=tmp_path)
    out = _run(tmp_path, pg, s3, bucket, "deep", spec, headroom_mb=8)
    assert not out["ok"], out
    assert out["typed"], out
    assert f"{schema}.ev" in out["message"] and DAY.isoformat() in out["message"], out["message"]


def test_restore_of_parquet_whose_arrow_thread_cannot_start_is_a_named_local_fault(pg, s3, bucket, conn, schema,
                                                                                   tmp_path, store):
    """`archive-pipeline restore` of a Parquet day under a memory cap (or a thread limit) where Arrow's reader
    cannot launch its worker thread: Arrow raises `ArrowException: Unknown error: Failed to launch worker
    thread: Resource temporarily unavailable`, and the restore fails with "an unexpected error (...); to fix:
    read the message", where Python's own "can't start new thread" in the same restore is "the archiving process
    could not start a thread (its limit of threads or of memory is reached) ...; to fix: give the run more memory
    or a higher thread limit". Arrow's words for the same fault should be classified the same way.
    (`errors._classify_one` looks for "can't start new thread" in a RuntimeError only.)"""
    _day(conn, schema)
    spec = _spec(schema, format="parquet")
    archive_partition(conn, TableSpec(**spec), DAY, store, temp_dir=tmp_path)
    out = _run(tmp_path, pg, s3, bucket, "restore", spec, headroom_mb=16, target=f"{schema}.back")
    assert not out["ok"], out
    assert "unexpected error" not in out["message"], out["message"]
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.back",)).fetchone()[0] is None


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_parallel_streams_over_the_open_file_limit_fail_as_a_named_local_fault(pg, s3, bucket, conn, schema,
                                                                                tmp_path, s3_client, fmt):
    """An operator sets `parallel_streams: 8` and runs `archive-pipeline archive --day D` under a low open-file
    limit (`ulimit -n`, a container's or systemd's LimitNOFILE=): the streams' sessions, spool files and the
    archive file need more descriptors than allowed, and the day fails with "an unexpected error (OSError:
    [Errno 24] Too many open files: '/tmp'); to fix: read the message; it is not retried because nothing says a
    retry would help". It is a local limit like a full temp dir or a file-size limit: the message should say the
    process ran out of file descriptors and what to change (raise the limit, or fewer parallel_streams), and
    the day should not be called unexpected. (`errors._classify_os` knows ENOSPC, EDQUOT, EROFS, EACCES, EPERM,
    ENOENT, ENOTDIR, EIO and EFBIG; EMFILE/ENFILE fall through to `_UNKNOWN`. The README also says a day
    "counts the sessions its role, its database and the server still allow" and reads with fewer streams; the
    descriptors it has left are never counted.)"""
    _day(conn, schema)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        _spec(schema, format=fmt, parallel_streams=8)]))

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "archive", "--day", DAY.isoformat(),
                           "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          preexec_fn=limited)
    [day] = json.loads(done.stdout)["days"]
    assert (done.returncode, day["status"]) == (1, "failed"), done.stdout
    _nothing_in_the_bucket(s3_client, bucket)
    assert "unexpected error" not in day["message"], day["message"]
    assert "open files" in day["message"] or "descriptor" in day["message"], day["message"]


@pytest.mark.parametrize(("command", "kind"), [("archive", "missing"), ("archive", "read-only"),
                                               ("verify --deep", "missing"), ("restore", "missing")])
def test_a_tmpdir_that_cannot_be_used_is_reported_not_silently_replaced_by_tmp(pg, s3, bucket, conn, schema,
                                                                               tmp_path, store, command, kind):
    """An operator points the command line's temp files at a big scratch volume (`TMPDIR=/scratch archive-pipeline
    archive ...`, as the README advises: "give the run containers disk for the largest day in `$TMPDIR`"), but
    the volume is not mounted (the directory is missing) or is mounted read-only. Every command still succeeds:
    Python's `tempfile.gettempdir()` quietly skips a TMPDIR it cannot write to and falls back to /tmp (then
    /var/tmp, then the working directory), so the whole day's object, restore's download and the deep check's
    copy are staged on the root disk (or a RAM tmpfs) the operator meant to keep free, and a day too big for it
    later fails naming /tmp, a directory nobody configured. The product reports a missing or unwritable
    `temp_dir` clearly ("the temp directory does not exist ... create it, or point temp_dir at a directory that
    exists"); the TMPDIR the README tells operators to set should be held to the same: used, or refused naming
    TMPDIR and the directory. (`sink.open_nameless`, `store`'s download and `archive.py` call
    `tempfile.gettempdir()` when no temp_dir is given, which never reports an unusable TMPDIR.)"""
    _day(conn, schema, 1000)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [_spec(schema, format="csv")]))
    if command != "archive":
        archive_partition(conn, TableSpec(**_spec(schema, format="csv")), DAY, store, temp_dir=tmp_path)
    scratch = tmp_path / "scratch-volume"
    mounted = False
    if kind == "read-only":
        scratch.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(scratch)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        mounted = True
    env["TMPDIR"] = str(scratch)
    extra = ["--into", "new", "--target", f"{schema}.back"] if command == "restore" else []
    try:
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", *command.split(), "--day",
                               DAY.isoformat(), *extra, "--json"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    finally:
        if mounted:
            subprocess.run(["umount", str(scratch)], check=True)
    assert done.returncode != 0, f"{command} succeeded with TMPDIR={scratch} ({kind}), staging elsewhere"
    assert str(scratch) in done.stdout and "TMPDIR" in done.stdout, done.stdout


@pytest.mark.parametrize(("op", "column", "value", "mib"), [
    ("restore", "text", "repeat(E'\\x01', 16 << 20)", 16),
    ("deep", "text", "repeat(E'\\x01', 16 << 20)", 16),
    ("restore", "bytea", "convert_to(repeat(md5('a'), 1 << 20), 'UTF8')", 32),
], ids=["restore-text", "deep-text", "restore-bytea"])
def test_reading_back_a_jsonl_value_that_json_inflates_stays_within_the_memory_goal(pg, s3, bucket, conn, schema,
                                                                                     tmp_path, store, op, column,
                                                                                     value, mib):
    """A user archives in JSONL a day whose one row holds a 16 MiB text of control characters (binary-ish data in
    a text column, a log with escape codes), or a 32 MiB bytea. Archiving them peaks at +58 MB / +82 MB above
    imports (the big-value path of hunt 5 kb), but restoring the day (`archive-pipeline restore`) or proving it
    (`verify --deep`, the removal's proof) peaks at about +395 MB for the text, 25x the value (+780 MB for 32 MiB,
    so ~2.4 GB for 100 MiB), and +267 MB for the bytea: row_to_json wrote each control character as a six-byte
    \\u00XX escape (a bytea as hex, twice its size), so the line is a 96 MiB (64 MiB) JSON text, and the reader
    holds several whole copies of it at once (the pending bytearray, `bytes(lines)`, `.strip()`, `.translate()`
    and the `b"[" + ... + b"]"` concatenation). The README's memory promise: "Memory is bounded by the largest
    value, not the day", with the goal for one big value of 3x the value + 100 MB (148 MB / 196 MB here), which a
    40 MiB md5 text meets (+171 MB) and CSV meets for all three (+14 MB). (`formats/readers.jsonl_arrays` /
    `_as_array`.)"""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v " + column + ")").format(
        sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 second', CASE WHEN g = 7 "
                         "THEN " + value + " END FROM generate_series(1, 1000) g").format(
        sql.Identifier(schema, "ev")), (f"{DAY} 00:00+00",))
    spec = _spec(schema, format="jsonl")
    archive_partition(conn, TableSpec(**spec), DAY, store, temp_dir=tmp_path)
    out = _run(tmp_path, pg, s3, bucket, op, spec, target=f"{schema}.back")
    assert out["ok"], out
    assert out["peak_mb"] < 3 * mib + 100, f"{op} of a {mib} MiB {column} peaked {out['peak_mb']:.0f} MB above imports"
