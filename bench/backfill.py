"""Backfills: the fixed cost of one small day, and a year of days launched the way the UI launches a
backfill (GraphQL launchPartitionBackfill against `dagster dev`: webserver + daemon + run queue).
Prints numbers; asserts nothing.

    .venv/bin/python bench/backfill.py                       # both parts
    .venv/bin/python bench/backfill.py --part fixed          # fixed cost of a small day only
    .venv/bin/python bench/backfill.py --part daemon --days 365 --tables 3 --rows 20000 --days-per-run 50

Fixed cost: days of 10 rows archived one after another, on one connection (a batched run) and on a
new connection per day (a run per day, as before batching), in core alone and through a ranged
Dagster run (the difference between a run of N days and a run of 1 day, divided by N - 1, so the
run's own start is not counted). New days and already archived (skipped) days are reported apart.
Medians of --repeat interleaved rounds.
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
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
RUNS = """query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
  ... on Runs { results { status startTime endTime assetSelection { path } } } }
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"""
FIRST = dt.date(2024, 1, 1)


def graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                     data=json.dumps({"query": query, "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]


def _table_config(tables: int, days_per_run: int) -> dict:
    return {"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": days_per_run}, "tables": [
        {"name": f"s{t}.events", "day_column": "created_at", "start_date": FIRST.isoformat(),
         "partitioning": {"mode": "declarative"}} for t in range(tables)]}


def _fill(pg, tables: int, days: list[dt.date], rows: int) -> float:
    """Create s0.events ... with ``rows`` rows a day, one table per thread (the machine's cores)."""
    from archive_pipeline.local.local_stack import create_sample_events

    def one(t: int) -> None:
        with pg.connect() as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS s{t}")
            create_sample_events(conn, days, rows, schema=f"s{t}")

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(t,)) for t in range(tables)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


# --- the fixed cost of a small day -------------------------------------------------------------------

def fixed_cost(days: int, repeat: int) -> None:
    from dagster import instance_for_test
    from dagster_aws.s3 import S3Resource

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource
    from archive_pipeline.local.local_stack import local_stack

    all_days = [FIRST + dt.timedelta(days=i) for i in range(days)]
    with local_stack() as (pg, s3):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "x")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "x")
        _fill(pg, 1, all_days, 10)
        config = parse_config(_table_config(1, days))
        spec = config.tables[0]
        client = s3.client()
        results: dict[str, list[float]] = {}

        def core(bucket: str, shared: bool) -> float:
            store = S3Store(client, bucket, prefix="a")
            started = time.perf_counter()
            if shared:
                with pg.connect() as conn:
                    for day in all_days:
                        archive_partition(conn, spec, day, store)
            else:
                for day in all_days:
                    with pg.connect() as conn:
                        archive_partition(conn, spec, day, store)
            return (time.perf_counter() - started) / len(all_days)

        def dagster_run(defs, instance, first: dt.date, last: dt.date) -> float:
            job = defs.resolve_job_def("Archive_s0_events")  # defs.assets.job_name
            tags = {"dagster/asset_partition_range_start": first.isoformat(),
                    "dagster/asset_partition_range_end": last.isoformat()}
            started = time.perf_counter()
            assert job.execute_in_process(instance=instance, tags=tags).success
            return time.perf_counter() - started

        def through_dagster(bucket: str) -> tuple[float, float]:
            resources = {"postgres": PostgresResource(dsn=pg.dsn), "archive_store": ArchiveStoreResource(
                s3=S3Resource(endpoint_url=s3.endpoint_url, region_name="us-east-1"), bucket=bucket)}
            defs = build_definitions(config, resources, check_source=False)
            with instance_for_test() as instance:
                dagster_run(defs, instance, all_days[0], all_days[0])  # warm: imports, instance tables
                one_new = dagster_run(defs, instance, all_days[1], all_days[1])
                many_new = dagster_run(defs, instance, all_days[2], all_days[-1])
                one_skip = dagster_run(defs, instance, all_days[1], all_days[1])
                many_skip = dagster_run(defs, instance, all_days[2], all_days[-1])
            n = len(all_days) - 3
            return (many_new - one_new) / n, (many_skip - one_skip) / n

        for round_ in range(repeat):
            for shared in (True, False):
                bucket = f"fixed-{round_}-{int(shared)}"
                client.create_bucket(Bucket=bucket)
                label = "one connection" if shared else "connection per day"
                results.setdefault(f"core, {label}, new day", []).append(core(bucket, shared))
                results.setdefault(f"core, {label}, skipped day", []).append(core(bucket, shared))
            bucket = f"fixed-{round_}-dagster"
            client.create_bucket(Bucket=bucket)
            new, skip = through_dagster(bucket)
            results.setdefault("ranged Dagster run, new day", []).append(new)
            results.setdefault("ranged Dagster run, skipped day", []).append(skip)
    print(f"fixed cost of a small day (10 rows), medians of {repeat} interleaved rounds of {days} days; "
          "goal < 50 ms:")
    for label, values in results.items():
        median = statistics.median(values) * 1000
        print(f"  {label:<45} {median:6.1f} ms   ({median / 50:.2f} of the 50 ms goal)")


# --- a backfill through the daemon -------------------------------------------------------------------

def _start_dagster(env: dict, port: int) -> subprocess.Popen:
    from archive_pipeline.local.local_stack import wait_until_serving

    server = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                               "-p", str(port)], cwd=REPO, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_serving(f"http://127.0.0.1:{port}/server_info", server, 180, "dagster dev")
    return server


def daemon_backfill(pg, s3, tmp: Path, tables: int, days: list[dt.date], days_per_run: int) -> dict:
    from archive_pipeline.local.local_stack import free_port, stop_process_group

    bucket = f"backfill-{days_per_run}-{len(days)}"
    s3.client().create_bucket(Bucket=bucket)
    home = tmp / f"home-{days_per_run}-{len(days)}"
    home.mkdir()
    config = home / "tables.yaml"
    config.write_text(json.dumps(_table_config(tables, days_per_run)))
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn,
           "ARCHIVE_S3_BUCKET": bucket, "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "DAGSTER_HOME": str(home),
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "PYTHONPATH": str(REPO)}
    port = free_port()
    server = _start_dagster(env, port)
    try:
        params = {"partitionsByAssets": [
            {"assetKey": {"path": ["archive", f"s{t}", "events"]},
             "partitions": {"range": {"start": days[0].isoformat(), "end": days[-1].isoformat()}}}
            for t in range(tables)]}
        started = time.time()
        backfill = graphql(port, LAUNCH, {"params": params})["launchPartitionBackfill"]["backfillId"]
        while True:  # the backfill is over when the daemon marks it so and no run is left going
            data = graphql(port, RUNS, {"id": backfill})
            runs = data["runsOrError"]["results"]
            finished = all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
            if runs and finished and data["partitionBackfillOrError"]["status"] != "REQUESTED":
                break
            time.sleep(2)
        elapsed = max(r["endTime"] for r in runs) - started
    finally:
        stop_process_group(server)
    total = len(days) * tables
    first_start = min(r["startTime"] for r in runs)
    per_run = sorted(r["endTime"] - r["startTime"] for r in runs)
    return {"days_per_run": days_per_run, "total": total, "runs": len(runs), "elapsed": elapsed,
            "ok": sum(r["status"] == "SUCCESS" for r in runs), "first_start": first_start - started,
            "rate": total / (elapsed - (first_start - started)), "median_run": per_run[len(per_run) // 2],
            "max_run": per_run[-1],
            "assets_per_run": sorted(len(r["assetSelection"] or []) for r in runs)[len(runs) // 2]}


def report(result: dict, tables: int, rows: int) -> None:
    r = result
    print(f"max_days_per_run {r['days_per_run']}: {r['total']} table-days of {rows:,} rows in {r['runs']} runs "
          f"({r['assets_per_run']} asset(s) per run), {r['ok']} succeeded; launch to last run finished "
          f"{r['elapsed']:.0f} s (first run started {r['first_start']:.0f} s after launch), then "
          f"{r['rate']:.2f} table-days/s; run duration median {r['median_run']:.1f} s, max {r['max_run']:.1f} s")
    year = 365 * tables / r["rate"] + r["first_start"]
    print(f"  -> {tables} tables x 365 days at this rate: {year / 60:.1f} min ({year / 240:.2f} of the 4-minute goal)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["fixed", "daemon", "both"], default="both")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--tables", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per table-day (the demo's day)")
    parser.add_argument("--days-per-run", type=int, default=50, help="backfill.max_days_per_run")
    parser.add_argument("--baseline-days", type=int, default=0,
                        help="also back up this many days with max_days_per_run 1 (one run per day), first")
    parser.add_argument("--fixed-days", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    if args.part in ("fixed", "both"):
        fixed_cost(args.fixed_days, args.repeat)
    if args.part == "fixed":
        return
    from archive_pipeline.local.local_stack import local_stack

    days = [FIRST + dt.timedelta(days=i) for i in range(args.days)]
    with local_stack() as (pg, s3), tempfile.TemporaryDirectory() as tmp:
        seconds = _fill(pg, args.tables, days, args.rows)
        print(f"{args.tables} tables x {args.days} days x {args.rows:,} rows created in {seconds:.0f} s")
        if args.baseline_days:
            report(daemon_backfill(pg, s3, Path(tmp), args.tables, days[:args.baseline_days], 1),
                   args.tables, args.rows)
        report(daemon_backfill(pg, s3, Path(tmp), args.tables, days, args.days_per_run), args.tables, args.rows)


if __name__ == "__main__":
    main()
