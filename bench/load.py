"""The scale of the code location: 100 tables x 3 years of daily partitions. Times loading the code
location (in process, and `dagster definitions validate` in a new process), one tick of the
`archive_new_days` sensor, and the partition status of one asset served by the webserver's GraphQL
(the call behind the UI's partition bar), with a year of that asset's days materialized.
Goals: load < 10 s, sensor tick < 5 s (Dagster's own limit is 60 s), partition status < 2 s.
Prints numbers; asserts nothing.

    .venv/bin/python bench/load.py [--tables 100] [--days 1095] [--runs 3]

Some tables are discovered from the catalog (``--declarative`` of them with a child per day, default 1,
and one by naming pattern with a table per day); the others are plain tables whose days the sensor probes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STATUS = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  assetPartitionStatuses { __typename ... on TimePartitionStatuses { ranges { status startKey endKey } } } } } }"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _declarative_names(declarative: int) -> list[str]:
    return ["events", *(f"events_{k:03d}" for k in range(1, declarative))]


def _setup(conn, tables: int, days: list[dt.date], declarative: int) -> None:
    from psycopg import sql

    conn.execute("CREATE SCHEMA bench")
    for name in _declarative_names(declarative):  # a child per day, created in one round trip per table
        conn.execute(sql.SQL("CREATE TABLE bench.{} (id int, at timestamptz) PARTITION BY RANGE (at)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("; ").join(
            sql.SQL("CREATE TABLE bench.{} PARTITION OF bench.{} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(f"{name}_{day:%Y%m%d}"), sql.Identifier(name), sql.Literal(f"{day} 00:00+00"),
                sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")) for day in days))
    conn.execute(sql.SQL("; ").join(sql.SQL("CREATE TABLE bench.{} (id int)").format(
        sql.Identifier(f"legacy_{day:%Y%m%d}")) for day in days))
    for t in range(tables - 1 - declarative):
        table = sql.Identifier("bench", f"plain_{t:03d}")
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
        fill = sql.SQL("INSERT INTO {} SELECT g, %s::date + (g %% %s) FROM generate_series(1, %s) g").format(table)
        conn.execute(fill, (days[0], len(days), 2 * len(days)))
        conn.execute(sql.SQL("CREATE INDEX ON {} (at)").format(table))
    conn.execute("ANALYZE")


def _tables(tables: int, start: dt.date, declarative: int) -> dict:
    first = start.isoformat()
    return {"tables": [
        *({"name": f"bench.{name}", "day_column": "at", "start_date": first, "partitioning": {"mode": "declarative"}}
          for name in _declarative_names(declarative)),
        {"name": "bench.legacy", "start_date": first, "partitioning": {"mode": "naming", "pattern": "legacy_%Y%m%d"}},
        *({"name": f"bench.plain_{t:03d}", "day_column": "at", "start_date": first}
          for t in range(tables - 1 - declarative)),
    ]}


def _materialize_year(instance, key, days: list[dt.date]) -> None:
    """A year of days of ``key`` recorded as materialized, as runless events (no archiving needed)."""
    from dagster import AssetMaterialization

    for day in days:
        instance.report_runless_asset_event(AssetMaterialization(asset_key=key, partition=day.isoformat(),
                                                                 metadata={"rows": 1}))


def _webserver_status(env: dict, key: list[str], runs: int) -> list[float]:
    from archive_pipeline.local.local_stack import free_port, stop_process_group, wait_until_serving

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1",
                               "-p", str(port)], cwd=REPO, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/server_info", server, 300, "the webserver")
        body = json.dumps({"query": STATUS, "variables": {"key": {"path": key}}}).encode()
        times, ranges = [], None
        for _ in range(runs + 1):  # the first one also waits for the code location to load
            request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                             headers={"Content-Type": "application/json"})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=300) as response:
                data = json.loads(response.read())
            times.append(time.perf_counter() - started)
            ranges = data["data"]["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
        print(f"partition status served by GraphQL: {ranges}")
        return times[1:]
    finally:
        stop_process_group(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=100)
    parser.add_argument("--days", type=int, default=3 * 365)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--declarative", type=int, default=1,
                        help="how many of the tables are declaratively partitioned, with a child per day (each "
                             "is checked at load: its children read and their bounds checked; ~5 s to create)")
    args = parser.parse_args()
    if not 1 <= args.declarative <= args.tables - 1:
        parser.error("--declarative must be between 1 and --tables - 1")

    from dagster import AssetKey, DagsterInstance, build_sensor_context

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.defs.resources import PostgresResource
    from archive_pipeline.local.local_stack import local_stack

    today = dt.datetime.now(dt.UTC).date()
    days = [today - dt.timedelta(days=args.days - i) for i in range(args.days)]
    tables = _tables(args.tables, days[0], args.declarative)
    with local_stack() as (pg, s3), tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with pg.connect() as conn:
            _setup(conn, args.tables, days, args.declarative)
        print(f"{args.tables} tables x {args.days:,} days ({args.declarative} declarative with a child per day) created "
              f"in {time.perf_counter() - started:.0f} s")
        config_file = Path(tmp) / "tables.yaml"
        config_file.write_text(json.dumps(tables))
        env = {**os.environ, "ARCHIVE_PIPELINE_CONFIG": str(config_file), "ARCHIVE_PG_DSN": pg.dsn,
               "ARCHIVE_S3_BUCKET": "bench", "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "DAGSTER_HOME": tmp,
               "PYTHONPATH": str(REPO)}
        (Path(tmp) / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
        os.environ.update(env)

        from archive_pipeline.definitions import build_definitions

        from dagster._core.remote_representation.external_data import RepositorySnap

        loads, snaps, validates, validate_cpu, ticks = [], [], [], [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            defs = build_definitions(parse_config(tables))
            repo = defs.get_repository_def()
            repo.get_all_jobs()
            loads.append(time.perf_counter() - started)
            started = time.perf_counter()
            RepositorySnap.from_def(repo)  # what a code server computes and sends to the webserver at load
            snaps.append(time.perf_counter() - started)
            started, cpu = time.perf_counter(), _children_cpu()
            subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                           cwd=REPO, env=env, check=True, capture_output=True)
            validates.append(time.perf_counter() - started)
            validate_cpu.append(_children_cpu() - cpu)
        sensor = repo.get_sensor_def("archive_new_days")
        key = AssetKey(["archive", "bench", "events"])
        instance = DagsterInstance.get()  # the webserver's instance (DAGSTER_HOME)
        started = time.perf_counter()
        _materialize_year(instance, key, days[-365:])
        print(f"365 materializations of {key.to_user_string()} recorded in {time.perf_counter() - started:.0f} s")
        requested = 0
        for _ in range(args.runs + 1):  # the first tick of a loaded location, then the ones after it
            context = build_sensor_context(instance=instance, repository_def=repo,
                                           resources={"postgres": PostgresResource(dsn=pg.dsn)})
            started = time.perf_counter()
            result = sensor.evaluate_tick(context)
            ticks.append(time.perf_counter() - started)
            requested = len(result.run_requests)
        statuses = _webserver_status(env, key.path, args.runs)
        partitions = sum(len(a.partitions_def.get_partition_keys()) for a in defs.assets if a.partitions_def)
        first_tick = ticks.pop(0)  # reads every table's children; later ticks reuse what did not change
        load, snap, validate, tick, status = (statistics.median(x) for x in (loads, snaps, validates, ticks, statuses))
        print(f"{len(defs.assets)} assets, {partitions:,} partitions in the code location; medians of {args.runs}:")
        print(f"  build + resolve Definitions (in process, incl. catalog checks): {load:6.2f} s "
              f"({load / 10:.2f} of the 10 s goal)")
        print(f"  + the repository snapshot a code server sends (jobs' config schemas): {snap:6.2f} s "
              f"(load in all {load + snap:.2f} s, {(load + snap) / 10:.2f} of the 10 s goal)")
        print(f"  `dagster definitions validate` (new process, imports included): {validate:6.2f} s "
              f"({validate / 10:.2f} of the 10 s goal); its CPU (user + sys, the loaded machine's wall aside): "
              f"{statistics.median(validate_cpu):.2f} s")
        print(f"  first sensor tick after the load ({requested} run requests, capped by max_runs_per_tick): "
              f"{first_tick:6.2f} s ({first_tick / 5:.2f} of the 5 s goal)")
        print(f"  one sensor tick after it (nothing changed in the catalog): {tick:6.2f} s "
              f"({tick / 5:.2f} of the 5 s goal)")
        print(f"  partition status of one asset via the webserver's GraphQL: {status:6.2f} s "
              f"({status / 2:.2f} of the 2 s goal)")


if __name__ == "__main__":
    main()
