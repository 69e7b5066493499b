"""Throughput of a date-range backfill launched the way the UI launches it (GraphQL
launchPartitionBackfill against `dagster dev`: webserver + daemon + run queue), one run per
table-day. Prints numbers; asserts nothing.

    .venv/bin/python bench/backfill.py [--days 30] [--tables 3] [--rows 2000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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


def graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                     data=json.dumps({"query": query, "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--tables", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000, help="rows per table-day")
    args = parser.parse_args()

    from archive_pipeline.local.local_stack import create_sample_events, free_port, local_stack

    first = dt.date(2024, 1, 1)
    days = [first + dt.timedelta(days=i) for i in range(args.days)]
    with local_stack() as (pg, s3), tempfile.TemporaryDirectory() as tmp:
        s3.client().create_bucket(Bucket="backfill")
        with pg.connect() as conn:
            for t in range(args.tables):
                conn.execute(f"CREATE SCHEMA s{t}")
                create_sample_events(conn, days, args.rows, schema=f"s{t}")
        config = Path(tmp) / "tables.yaml"
        config.write_text(json.dumps({"tables": [
            {"name": f"s{t}.events", "day_column": "created_at", "start_date": first.isoformat(),
             "partitioning": {"mode": "declarative"}} for t in range(args.tables)]}))
        shutil.copy(REPO / "dagster.yaml", Path(tmp) / "dagster.yaml")
        env = {**os.environ, "ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn,
               "ARCHIVE_S3_BUCKET": "backfill", "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "DAGSTER_HOME": tmp,
               "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                                   "-p", str(port)], cwd=REPO, env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.5)
            params = {"partitionsByAssets": [
                {"assetKey": {"path": ["archive", f"s{t}", "events"]},
                 "partitions": {"range": {"start": days[0].isoformat(), "end": days[-1].isoformat()}}}
                for t in range(args.tables)]}
            started = time.time()
            backfill = graphql(port, LAUNCH, {"params": params})["launchPartitionBackfill"]["backfillId"]
            total = args.days * args.tables
            while True:  # the backfill is over when the daemon marks it so and no run is left going
                data = graphql(port, RUNS, {"id": backfill})
                runs = data["runsOrError"]["results"]
                finished = all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
                if runs and finished and data["partitionBackfillOrError"]["status"] != "REQUESTED":
                    break
                time.sleep(2)
            elapsed = max(r["endTime"] for r in runs) - started
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        ok = sum(r["status"] == "SUCCESS" for r in runs)
        first_start = min(r["startTime"] for r in runs)
        per_run = sorted(r["endTime"] - r["startTime"] for r in runs)
        assets_per_run = sorted(len(r["assetSelection"] or []) for r in runs)[len(runs) // 2]
        busy = elapsed - (first_start - started)
        print(f"{args.tables} tables x {args.days} days = {total} table-days in {len(runs)} runs "
              f"({assets_per_run} asset(s) per run: Dagster runs the tables of one day together when they share "
              f"a partitions definition), {ok} succeeded")
        print(f"launch to last run finished: {elapsed:.0f} s; first run started {first_start - started:.0f} s after "
              f"launch (daemon tick); then {total / busy:.2f} table-days/s")
        print(f"run duration (process start to end): median {per_run[len(per_run) // 2]:.1f} s, max {per_run[-1]:.1f} s")
        print(f"extrapolated: 365 days x {args.tables} tables ~ {365 * args.tables / (total / busy) / 60:.0f} min "
              "on this 2-core machine (small days: dominated by per-run process start)")


if __name__ == "__main__":
    main()
