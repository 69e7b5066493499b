"""Benchmark: restore one archived day of the sample events table from each format back into
PostgreSQL, next to PostgreSQL's own load limit measured in the same run. Prints numbers; asserts nothing.

    make bench                                            # after bench/run.py, with the same ARGS
    python bench/restore.py                               # 1,000,000-row day, medians of 3
    python bench/restore.py --rows 1000000 --runs 1
    python bench/restore.py --rows 1000000 --big-rows 10000000 --runs 1   # flat memory at 10x the rows

Each day is archived once per format (zstd; archive_partition, the code the asset runs). Then,
limits and restores interleaved round by round:
  copy_csv   psql -c "\\copy <table> FROM '<day>.csv' csv"           (the same rows as plain CSV)
  zstd_copy  zstd -dc <day>.csv.zst | psql -c "\\copy <table> FROM STDIN csv"
  restore    restore_archive(into="new") in a fresh process: verified download from the local S3
             endpoint (moto), decompress, decode, COPY/INSERT, fingerprint of the new table compared
             with the manifest's, commit. fp s = a second fingerprint of the restored table alone,
             to show its share. RSS+MB = peak RSS (VmHWM) above the RSS after imports.
  verify     deep_verify of the archived day in a fresh process (download, MD5/SHA-256, load into a
             temporary table, its fingerprint and the source's), against
  archive    archive_partition(overwrite) of the same day in a fresh process (what the asset runs):
             verify/archive < 1 means proving a day costs less than archiving it.
Every load goes into a fresh, index-free table (the limits' too); timings on a shared 2-core machine are noisy.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import fill_day, peak_mb, status_mb, stop_cleanly_on_signals, time_command  # noqa: E402 - after the path is set

DAY_SMALL = dt.date(2024, 3, 10)
DAY_BIG = dt.date(2024, 3, 11)
BUCKET = "bench"


def _spec(fmt: str):
    from archive_pipeline.core.config import TableSpec

    return TableSpec(name="public.events", day_column="created_at", start_date="2024-01-01", format=fmt,
                     compression="zstd")


def child_timed(args: argparse.Namespace) -> None:
    """One deep verification or one archive run in this fresh process; prints a JSON line."""
    import adbc_driver_postgresql.dbapi  # noqa: F401 - import cost is not the measured cost
    import boto3
    import psycopg
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.manifest import decode_manifest
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.core.verify import deep_verify

    client = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    store = S3Store(client, BUCKET, prefix="bench")
    manifest = json.loads(Path(args.manifest).read_text())
    spec, day = _spec(manifest["format"]), dt.date.fromisoformat(manifest["day"])
    with psycopg.connect(args.dsn, autocommit=True) as conn:  # as PostgresResource connects
        started = time.perf_counter()
        if args.child == "verify":
            problems = deep_verify(conn, store, spec, day, manifest=manifest, temp_dir=args.temp_dir)
            if problems:
                raise SystemExit(f"deep verification failed: {problems}")
        else:
            result = archive_partition(conn, spec, day, store, temp_dir=args.temp_dir, overwrite=True)
        wall = time.perf_counter() - started
        if args.child == "archive":  # the next round restores and verifies what is in the bucket now
            Path(args.manifest).write_text(json.dumps(decode_manifest(store.get_bytes(result.manifest_key))))
    print(json.dumps({"wall": wall}))


def child(args: argparse.Namespace) -> None:
    """One restore in this fresh process; prints a JSON line."""
    import boto3
    import psycopg
    import pyarrow.csv  # noqa: F401 - import cost is not restore cost
    import pyarrow.parquet  # noqa: F401
    from psycopg import sql

    from archive_pipeline.core import fingerprint
    from archive_pipeline.core.restore import restore_archive
    from archive_pipeline.core.source import describe_table
    from archive_pipeline.core.store import S3Store

    client = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    store = S3Store(client, BUCKET, prefix="bench")
    manifest = json.loads(Path(args.manifest).read_text())
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        after_imports = status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # peak from here on
        started = time.perf_counter()
        result = restore_archive(conn, store, manifest, into="new", target=args.target, temp_dir=args.temp_dir)
        wall = time.perf_counter() - started
        table = describe_table(conn, args.target, None)
        fp_started = time.perf_counter()
        fingerprint.compute(conn, table.identifier, table.columns)
        fp_seconds = time.perf_counter() - fp_started
        conn.execute(sql.SQL("DROP TABLE {}").format(table.identifier))
    peak = peak_mb()
    print(json.dumps({"rows": result.rows, "wall": wall, "fp": fp_seconds, "checked": result.fingerprint_checked,
                      "bytes": manifest["object"]["bytes"], "rss_after_imports": after_imports, "peak_rss": peak}))


def _psql(pg) -> str:
    return f"psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {pg.port} -U postgres -d postgres"


def _timed_once(mode: str, manifest_path: Path, pg, s3, workdir: Path) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--manifest", str(manifest_path),
                          "--dsn", pg.dsn, "--endpoint", s3.endpoint_url, "--temp-dir", str(workdir)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} of {manifest_path.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["wall"]


def _restore_once(manifest_path: Path, target: str, pg, s3, workdir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", "restore", "--manifest", str(manifest_path),
                          "--target", target,
                          "--dsn", pg.dsn, "--endpoint", s3.endpoint_url, "--temp-dir", str(workdir)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"restore of {manifest_path.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _prepare(day: dt.date, formats: list[str], pg, s3, workdir: Path) -> dict[str, Path]:
    """Archive the day in each format; export it as CSV (plain and zstd) for the limits."""
    import boto3  # noqa: F401

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.manifest import decode_manifest
    from archive_pipeline.core.store import S3Store

    store = S3Store(s3.client(), BUCKET, prefix="bench")
    manifests = {}
    with pg.connect() as conn:
        for fmt in formats:
            # (overwrite: each format's own archive of the day, not the one another format's run already wrote)
            result = archive_partition(conn, _spec(fmt), day, store, temp_dir=str(workdir), overwrite=True)
            path = workdir / f"{day}.{fmt}.manifest.json"
            path.write_text(json.dumps(decode_manifest(store.get_bytes(result.manifest_key))))
            manifests[fmt] = path
    where = f"created_at >= '{day} 00:00:00+00' AND created_at < '{day + dt.timedelta(days=1)} 00:00:00+00'"
    csv_path = workdir / f"{day}.csv"
    subprocess.run(["bash", "-o", "pipefail", "-c",
                    f'{_psql(pg)} -c "\\copy (SELECT * FROM public.events WHERE {where}) TO \'{csv_path}\' csv" '
                    f"&& zstd -q -3 -f {csv_path} -o {csv_path}.zst"], check=True)
    return manifests


def _measure(day: dt.date, formats: list[str], runs: int, pg, s3, workdir: Path) -> tuple[dict, dict]:
    manifests = _prepare(day, formats, pg, s3, workdir)
    csv_path = workdir / f"{day}.csv"
    create = f'{_psql(pg)} -c "DROP TABLE IF EXISTS limit_load; CREATE TABLE limit_load (LIKE public.events)"'
    limits = {
        "copy_csv": f'{_psql(pg)} -c "\\copy limit_load FROM \'{csv_path}\' csv"',
        "zstd_copy": f'zstd -q -dc {csv_path}.zst | {_psql(pg)} -c "\\copy limit_load FROM STDIN csv"',
    }
    limit_times: dict[str, list[float]] = {name: [] for name in limits}
    by_format: dict[str, list[dict]] = {fmt: [] for fmt in formats}
    for _ in range(runs):
        for name, cmd in limits.items():
            time_command(create)
            limit_times[name].append(time_command(cmd))
        time_command(f'{_psql(pg)} -c "DROP TABLE limit_load; CHECKPOINT"')
        for fmt in formats:
            by_format[fmt].append(_restore_once(manifests[fmt], f"public.restored_{fmt}", pg, s3, workdir))
            time_command(f'{_psql(pg)} -c "CHECKPOINT"')
            for mode in ("verify", "archive"):
                by_format[fmt][-1][mode] = _timed_once(mode, manifests[fmt], pg, s3, workdir)
                time_command(f'{_psql(pg)} -c "CHECKPOINT"')
    results = {}
    for fmt, rs in by_format.items():
        median = {k: statistics.median(r[k] for r in rs) for k in ("rows", "wall", "fp", "bytes", "verify", "archive")}
        median["verify_vs_archive"] = statistics.median(r["verify"] / r["archive"] for r in rs)
        median["checked"] = all(r["checked"] for r in rs)
        median["rss_above_imports"] = statistics.median(r["peak_rss"] - r["rss_after_imports"] for r in rs)
        results[fmt] = median
    return {k: statistics.median(v) for k, v in limit_times.items()}, results


def _print_table(rows: int, limits: dict[str, float], results: dict[str, dict]) -> None:
    print(f"\n== restore one day of {rows:,} rows (medians) ==")
    for name, seconds in limits.items():
        print(f"  limit {name:<10} {seconds:6.2f} s  {rows / seconds:>12,.0f} rows/s")
    print(f"  {'format':<8} {'rows/s':>10} {'object MB':>9} {'wall s':>7} {'fp s':>6} {'RSS+MB':>7} "
          f"{'vs copy_csv':>11} {'vs zstd_copy':>12} {'fingerprint':>11} {'verify s':>8} {'archive s':>9} "
          f"{'verify/archive':>14}")
    for fmt, r in results.items():
        print(f"  {fmt:<8} {r['rows'] / r['wall']:>10,.0f} {r['bytes'] / 1e6:>9.1f} {r['wall']:>7.2f} "
              f"{r['fp']:>6.2f} {r['rss_above_imports']:>7.1f} {limits['copy_csv'] / r['wall']:>10.2f}x "
              f"{limits['zstd_copy'] / r['wall']:>11.2f}x {'equal' if r['checked'] else 'NOT checked':>11} "
              f"{r['verify']:>8.2f} {r['archive']:>9.2f} {r['verify_vs_archive']:>13.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the benchmark day")
    parser.add_argument("--big-rows", type=int, default=0, help="rows of a second, bigger day (0: skip)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--formats", default="csv,jsonl,parquet")
    for hidden in ("--manifest", "--target", "--dsn", "--endpoint", "--temp-dir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["restore", "verify", "archive"], help=argparse.SUPPRESS)
    # `make bench ARGS=...` hands the same options to bench/run.py and to this script: the ones only
    # run.py knows are left to it
    args, _ = parser.parse_known_args()
    if args.child == "restore":
        child(args)
        return
    if args.child:
        child_timed(args)
        return
    if not shutil.which("zstd") or not shutil.which("psql"):
        sys.exit("the benchmark needs the psql and zstd command-line tools (apt-get install postgresql-client zstd)")

    from archive_pipeline.local.local_stack import local_stack

    stop_cleanly_on_signals()

    formats = args.formats.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="archive-bench-restore-"))
    print(f"{os.cpu_count()} cores; generating sample data ...", flush=True)
    try:
        with local_stack() as (pg, s3):
            s3.client().create_bucket(Bucket=BUCKET)
            days = [(DAY_SMALL, args.rows)] + ([(DAY_BIG, args.big_rows)] if args.big_rows else [])
            with pg.connect() as conn:
                for day, rows in days:
                    print(f"  {rows:,} rows for {day} in {fill_day(conn, day, rows):.0f} s", flush=True)
            summary = {}
            for day, rows in days:
                limits, results = _measure(day, formats, args.runs, pg, s3, workdir)
                _print_table(rows, limits, results)
                summary[rows] = results
            if len(days) == 2:
                small, big = summary[args.rows], summary[args.big_rows]
                print(f"\n== growth from {args.rows:,} to {args.big_rows:,} rows ==")
                for fmt in formats:
                    s, b = small[fmt], big[fmt]
                    print(f"  {fmt:<8} rows/s {s['rows'] / s['wall']:,.0f} -> {b['rows'] / b['wall']:,.0f}, "
                          f"RSS above imports {s['rss_above_imports']:.1f} -> {b['rss_above_imports']:.1f} MB")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
