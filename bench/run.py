"""Benchmark: archive one day of the sample events table in each format and compare, in the same
run, with PostgreSQL's own limits. Prints numbers and ratios; asserts nothing.

    make bench                      # 1,000,000 rows/day and a 10,000,000-row day, medians of 3
    make bench ARGS="--rows 200000 --big-rows 0 --runs 3"

Limits (each timed as a whole command; limits and archiver runs interleaved, medians of --runs):
  copy_csv   psql -c "COPY (<day>) TO STDOUT (FORMAT csv)"              > /dev/null
  copy_json  psql -c "COPY (SELECT row_to_json(t) FROM (<day>) t) TO STDOUT" > /dev/null
  copy_bin   psql -c "COPY (<day>) TO STDOUT (FORMAT binary)"           > /dev/null  (Parquet reads this)
  psql_zstd  psql -c "\\copy (<day>) TO STDOUT csv" | zstd -3 > file
Columns: tail = seconds after the last row was read (remaining parts, the store's CompleteMultipartUpload,
HEAD check, manifest); wait = the part of it spent waiting for parts still in flight; RSS+MB = peak RSS
above the RSS after imports; fprint = seconds PostgreSQL spent on the content fingerprint (a second
session computes it in the archive's snapshot while the rows are read); +fp = what the fingerprint adds
to the archive's wall time: the median wall of these runs against that of runs of the same day in the
same round with the fingerprint replaced by count(*); skip = a re-run that finds the archive identical
(the source's fingerprint now vs the manifest's; skip/wall: against archiving the day). Every run is a
first archive of the day (its own key prefix), as a daily run or a backfill is.
Archiver runs go through archive_partition (the code the Dagster asset runs): extract, format,
compress, MD5/SHA-256, multipart upload to the local S3 endpoint (moto, another process) and the
manifest, each in a fresh process so its peak RSS above its RSS after imports can be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import fill_day, postgres_cpu_seconds, proc_cpu_seconds, rss_mb, stop_cleanly_on_signals, time_command  # noqa: E402 - after the path is set

DAY_SMALL = dt.date(2024, 3, 10)
DAY_BIG = dt.date(2024, 3, 11)
BUCKET = "bench"


def child(args: argparse.Namespace) -> None:
    """One archive run in this fresh process; prints a JSON line."""
    import resource

    import adbc_driver_postgresql.dbapi  # noqa: F401 - import cost is not archiving cost
    import boto3
    import psycopg
    import pyarrow.parquet  # noqa: F401

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.store import S3Store

    if args.no_fingerprint:
        _switch_off_fingerprint()
    client = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    spec = TableSpec(name="public.events", day_column="created_at", start_date="2024-01-01",
                     format=args.format, compression="zstd", parallel_streams=int(args.streams))
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        postmaster = int(Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        # boto3 loads its service model on the first request (~0.3 s of CPU): once per process, not per day
        client.list_objects_v2(Bucket=BUCKET, MaxKeys=1)
        after_imports = rss_mb()
        cpu = _cpu_now(postmaster, args.moto_pid)
        prefix = f"bench-{uuid.uuid4().hex}"
        started = time.perf_counter()
        result = archive_partition(conn, spec, dt.date.fromisoformat(args.day), S3Store(client, BUCKET, prefix=prefix))
        wall = time.perf_counter() - started
        cpu = {k: v - cpu[k] for k, v in _cpu_now(postmaster, args.moto_pid).items()}
        # The re-run skip check: the source's fingerprint now against the manifest's, nothing uploaded.
        skip_started = time.perf_counter()
        skipped = archive_partition(conn, spec, dt.date.fromisoformat(args.day),
                                    S3Store(client, BUCKET, prefix=prefix))
        skip = time.perf_counter() - skip_started
        assert skipped.skipped
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    compressor = _compressor_alone(client, result.key, args.format)
    print(json.dumps({"rows": result.rows, "bytes": result.bytes, "raw": result.uncompressed_bytes, "wall": wall,
                      "extract": result.extract_seconds, "tail": result.duration_seconds - result.extract_seconds,
                      "wait": result.upload_wait_seconds, "complete": result.complete_seconds,
                      "rss_after_imports": after_imports, "peak_rss": peak, "parts": result.parts,
                      "fingerprint": result.fingerprint_seconds, "skip": skip, "cpu_archiver": cpu["archiver"],
                      "cpu_postgres": cpu["postgres"], "cpu_moto": cpu["moto"], "cpu_compressor": compressor}))


def _cpu_now(postmaster: int, moto_pid: int) -> dict[str, float]:
    """CPU seconds so far: this process (every thread), the PostgreSQL cluster, moto's server."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"archiver": usage.ru_utime + usage.ru_stime, "postgres": postgres_cpu_seconds(postmaster),
            "moto": proc_cpu_seconds(moto_pid, children=True)}


def _switch_off_fingerprint() -> None:
    """For the speed runs only: the content fingerprint becomes a plain count(*) of the day (the archiver
    needs the count), so its cost (reported apart, in the runs with it) does not hide the extraction's."""
    from psycopg import sql

    from archive_pipeline.core import archive, fingerprint

    def count_only(self, conn, table, where, algorithm=fingerprint.ALGORITHM,
                   columns=None) -> tuple[fingerprint.Fingerprint, float]:
        started = time.perf_counter()
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table.identifier, where))
        return fingerprint.Fingerprint(rows=rows.fetchone()[0], hash_sum="0"), time.perf_counter() - started

    archive._Archiving._timed_fingerprint = count_only
    archive.FINGERPRINT_ALONGSIDE_ROWS = float("inf")  # the count first, in the archive's own session


def _compressor_alone(client, key: str, fmt: str) -> float:
    """CPU of zstd-3 alone on the archive's own bytes: the decompressed text for JSONL/CSV; for
    Parquet the same file written uncompressed, then zstd-3 over it (an upper bound of its pages'
    compression, which Arrow does page by page)."""
    import io

    import pyarrow.parquet as pq
    import zstandard

    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    if fmt == "parquet":
        out = io.BytesIO()
        pq.write_table(pq.read_table(io.BytesIO(body)), out, compression="none")
        raw = out.getvalue()
    else:
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).read()
    del body
    started = time.process_time()
    zstandard.ZstdCompressor(level=3).compress(raw)
    return time.process_time() - started


def _limit_commands(pg_port: int, day: dt.date, workdir: Path) -> dict[str, str]:
    where = (f"created_at >= '{day} 00:00:00+00' AND created_at < '{day + dt.timedelta(days=1)} 00:00:00+00'")
    query = f"SELECT * FROM public.events WHERE {where}"
    psql = f"psql -X -q -h 127.0.0.1 -p {pg_port} -U postgres -d postgres"
    return {
        "copy_csv": f'{psql} -c "COPY ({query}) TO STDOUT (FORMAT csv)" > /dev/null',
        "copy_json": f'{psql} -c "COPY (SELECT row_to_json(t) FROM ({query}) t) TO STDOUT" > /dev/null',
        "copy_bin": f'{psql} -c "COPY ({query}) TO STDOUT (FORMAT binary)" > /dev/null',
        "psql_zstd": f'{psql} -c "\\copy ({query}) TO STDOUT csv" | zstd -q -3 -f -o {workdir / "pipe.csv.zst"}',
    }


def _archive_once(fmt: str, day: dt.date, dsn: str, endpoint: str, streams: int = 1, no_fingerprint: bool = False,
                  moto_pid: int = 0) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", "--format", fmt, "--day", day.isoformat(),
                          "--dsn", dsn, "--endpoint", endpoint, "--streams", str(streams), "--moto-pid", str(moto_pid)]
                         + (["--no-fingerprint"] if no_fingerprint else []), capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"archive run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(day: dt.date, variants: list[tuple[str, int]], runs: int, pg, s3, workdir: Path,
             no_fingerprint: bool = False) -> tuple[dict, dict]:
    """Limits and archiver runs interleaved round by round, so drift on the machine hits all alike.
    ``variants``: (format, parallel_streams) pairs."""
    commands = _limit_commands(pg.port, day, workdir)
    limit_times: dict[str, list[float]] = {name: [] for name in commands}
    runs_by_variant: dict[tuple[str, int], list[dict]] = {v: [] for v in variants}
    walls_without_fp: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    for _ in range(runs):
        for name, cmd in commands.items():
            limit_times[name].append(time_command(cmd))
        for fmt, streams in variants:
            runs_by_variant[(fmt, streams)].append(_archive_once(fmt, day, pg.dsn, s3.endpoint_url, streams,
                                                                 no_fingerprint, s3.process.pid))
            if not no_fingerprint:  # the same day without the fingerprint, in the same round: what it adds
                walls_without_fp[(fmt, streams)].append(
                    _archive_once(fmt, day, pg.dsn, s3.endpoint_url, streams, True, s3.process.pid)["wall"])
    limits = {name: statistics.median(times) for name, times in limit_times.items()}
    results = {}
    for variant, rs in runs_by_variant.items():
        median = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        median["rss_above_imports"] = statistics.median(r["peak_rss"] - r["rss_after_imports"] for r in rs)
        if walls_without_fp[variant]:
            median["wall_without_fp"] = statistics.median(walls_without_fp[variant])
        results[variant] = median
    return limits, results


def _print_table(rows_per_day: int, limits: dict[str, float], results: dict[tuple[str, int], dict]) -> None:
    limit_for = {"csv": ("copy_csv", limits["copy_csv"]), "jsonl": ("copy_json", limits["copy_json"]),
                 "parquet": ("copy_csv", limits["copy_csv"])}
    print(f"\n== one day of {rows_per_day:,} rows (medians) ==")
    for name, seconds in limits.items():
        print(f"  limit {name:<10} {seconds:6.2f} s  {rows_per_day / seconds:>12,.0f} rows/s")
    header = (f"  {'format':<8} {'N':>2} {'rows/s':>11} {'MB/s':>7} {'size MB':>8} {'wall s':>7} {'tail s':>7} "
              f"{'wait s':>6} {'RSS+MB':>7} {'vs limit':>16} {'vs psql|zstd':>13} {'vs COPY bin':>12} "
              f"{'fprint s':>8} {'+fp':>6} {'skip s':>7} {'skip/wall':>9}")
    print(header)
    for (fmt, streams), r in results.items():
        limit_name, limit_seconds = limit_for[fmt]
        print(f"  {fmt:<8} {streams:>2} {r['rows'] / r['wall']:>11,.0f} {r['raw'] / r['wall'] / 1e6:>7.1f} "
              f"{r['bytes'] / 1e6:>8.1f} {r['wall']:>7.2f} {r['tail']:>7.2f} {r['wait']:>6.2f} "
              f"{r['rss_above_imports']:>7.1f} "
              f"{limit_seconds / r['wall']:>6.2f}x {limit_name:<9} {limits['psql_zstd'] / r['wall']:>12.2f}x "
              f"{limits['copy_bin'] / r['wall']:>11.2f}x {r['fingerprint']:>8.2f} "
              f"{_added(r):>6} {r['skip']:>7.2f} {r['skip'] / r['wall']:>8.2f}x")
    per = 1e6 / rows_per_day
    print(f"\n  CPU seconds per 1,000,000 rows (archiver: getrusage of the archiving process, all threads; postgres: "
          f"every backend of the cluster; moto: the S3 server; zstd alone: zstd-3 over the same bytes, see run.py)")
    print(f"  {'format':<8} {'N':>2} {'archiver':>9} {'postgres':>9} {'moto':>6} {'zstd alone':>10} "
          f"{'archiver beyond zstd':>21}")
    for (fmt, streams), r in results.items():
        print(f"  {fmt:<8} {streams:>2} {r['cpu_archiver'] * per:>9.2f} {r['cpu_postgres'] * per:>9.2f} "
              f"{r['cpu_moto'] * per:>6.2f} {r['cpu_compressor'] * per:>10.2f} "
              f"{(r['cpu_archiver'] - r['cpu_compressor']) * per:>21.2f}")


def _added(r: dict) -> str:
    """What the fingerprint adds to the wall time (runs without it: see _measure), or "-" if not measured; to a
    tenth of a percent, so a result next to the 15% goal reads as over or under it."""
    return f"{r['wall'] / r['wall_without_fp'] - 1:+.1%}" if "wall_without_fp" in r else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the benchmark day")
    parser.add_argument("--big-rows", type=int, default=10_000_000, help="rows of the growth day (0: skip)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--formats", default="csv,jsonl,parquet")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--day", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--moto-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--streams", default="1", help="parallel_streams to measure, e.g. 1,2,4 (with --no-fingerprint)")
    parser.add_argument("--no-fingerprint", action="store_true",
                        help="replace the content fingerprint by count(*) (its cost is reported by the runs with it)")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not shutil.which("zstd") or not shutil.which("psql"):
        sys.exit("the benchmark needs the psql and zstd command-line tools (apt-get install postgresql-client zstd)")

    from archive_pipeline.local.local_stack import local_stack

    stop_cleanly_on_signals()

    formats = args.formats.split(",")
    streams = [int(n) for n in args.streams.split(",")]
    variants = [(fmt, n) for fmt in formats for n in streams]
    workdir = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    print(f"{os.cpu_count()} cores; generating sample data ...", flush=True)
    with local_stack() as (pg, s3):
        s3.client().create_bucket(Bucket=BUCKET)
        days = [(DAY_SMALL, args.rows)] + ([(DAY_BIG, args.big_rows)] if args.big_rows else [])
        with pg.connect() as conn:
            for day, rows in days:
                print(f"  {rows:,} rows for {day} in {fill_day(conn, day, rows):.0f} s", flush=True)
        summary = {}
        for day, rows in days:
            limits, results = _measure(day, variants, args.runs, pg, s3, workdir, args.no_fingerprint)
            _print_table(rows, limits, results)
            summary[rows] = results
        if len(days) == 2:
            small, big = summary[args.rows], summary[args.big_rows]
            print(f"\n== growth from {args.rows:,} to {args.big_rows:,} rows ==")
            for fmt in formats:
                s, b = small[(fmt, streams[0])], big[(fmt, streams[0])]
                print(f"  {fmt:<8} time x{b['wall'] / s['wall']:.1f} (rows x{args.big_rows / args.rows:.0f}), "
                      f"rows/s {s['rows'] / s['wall']:,.0f} -> {b['rows'] / b['wall']:,.0f}, "
                      f"RSS above imports {s['rss_above_imports']:.1f} -> {b['rss_above_imports']:.1f} MB "
                      f"({(b['rss_above_imports'] / s['rss_above_imports'] - 1) * 100:+.0f}%)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
