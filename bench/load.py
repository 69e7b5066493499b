"""How long loading the code location and one sensor tick take with 3 tables x 1,000 days each
(one table per discovery mode). Prints numbers; asserts nothing.

    .venv/bin/python bench/load.py [--days 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _setup(conn, days: list[dt.date]) -> None:
    from psycopg import sql

    conn.execute("CREATE SCHEMA bench")
    conn.execute("CREATE TABLE bench.events (id int, at timestamptz) PARTITION BY RANGE (at)")
    conn.execute("CREATE TABLE bench.plain (id int, at date)")
    for day in days:
        nxt = day + dt.timedelta(days=1)
        conn.execute(sql.SQL("CREATE TABLE bench.{} PARTITION OF bench.events FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(f"events_{day:%Y%m%d}"), sql.Literal(f"{day} 00:00+00"), sql.Literal(f"{nxt} 00:00+00")))
        conn.execute(sql.SQL("CREATE TABLE bench.{} (id int)").format(sql.Identifier(f"legacy_{day:%Y%m%d}")))
    conn.execute("INSERT INTO bench.plain SELECT g, %s::date + (g %% %s) FROM generate_series(1, %s) g",
                 (days[0], len(days), 20 * len(days)))
    conn.execute("CREATE INDEX ON bench.plain (at)")
    conn.execute("ANALYZE bench.plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from dagster import build_sensor_context, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.local.local_stack import local_stack
    from archive_pipeline.defs.resources import PostgresResource

    today = dt.datetime.now(dt.UTC).date()
    days = [today - dt.timedelta(days=args.days - i) for i in range(args.days)]
    tables = {"tables": [
        {"name": "bench.events", "day_column": "at", "start_date": days[0].isoformat(),
         "partitioning": {"mode": "declarative"}},
        {"name": "bench.legacy", "start_date": days[0].isoformat(),
         "partitioning": {"mode": "naming", "pattern": "legacy_%Y%m%d"}},
        {"name": "bench.plain", "day_column": "at", "start_date": days[0].isoformat()},
    ]}
    with local_stack() as (pg, s3), tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with pg.connect() as conn:
            _setup(conn, days)
        print(f"3 tables x {args.days:,} days created in {time.perf_counter() - started:.0f} s")
        config_file = Path(tmp) / "tables.yaml"
        config_file.write_text(json.dumps(tables))
        env = {**os.environ, "ARCHIVE_PIPELINE_CONFIG": str(config_file), "ARCHIVE_PG_DSN": pg.dsn,
               "ARCHIVE_S3_BUCKET": "bench", "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "DAGSTER_HOME": tmp}
        (Path(tmp) / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
        os.environ.update(env)

        from archive_pipeline.definitions import build_definitions

        loads, validates, ticks = [], [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            defs = build_definitions(parse_config(tables))
            repo = defs.get_repository_def()
            repo.get_all_jobs()
            loads.append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                           cwd=REPO, env=env, check=True, capture_output=True)
            validates.append(time.perf_counter() - started)
        sensor = repo.get_sensor_def("archive_new_days")
        requested = 0
        with instance_for_test() as instance:
            for _ in range(args.runs):
                context = build_sensor_context(instance=instance, repository_def=repo,
                                               resources={"postgres": PostgresResource(dsn=pg.dsn)})
                started = time.perf_counter()
                result = sensor.evaluate_tick(context)
                ticks.append(time.perf_counter() - started)
                requested = len(result.run_requests)
        partitions = sum(len(a.partitions_def.get_partition_keys()) for a in defs.assets)
        print(f"partitions in the code location: {partitions:,}")
        print(f"build + resolve Definitions (in process, incl. catalog checks): median {statistics.median(loads):.2f} s")
        print(f"`dagster definitions validate` (new process, imports included):  median {statistics.median(validates):.2f} s")
        print(f"one sensor tick (nothing archived yet, {requested} run requests, capped): "
              f"median {statistics.median(ticks):.2f} s")


if __name__ == "__main__":
    main()
