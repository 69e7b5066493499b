"""The code location as a user loads it: three tables, one per discovery mode, through the CLI
validator and a real dagster-webserver queried over GraphQL."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from archive_pipeline.local.local_stack import create_sample_events, free_port, stop_process_group, wait_until_serving

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def three_tables(conn, schema, tmp_path, pg, s3, bucket):
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.events (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.events_d1 PARTITION OF {}.events "
                         "FOR VALUES FROM ('2024-03-10 00:00+00') TO ('2024-03-11 00:00+00')").format(s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.legacy_20240310 (id int)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.orders (id int, placed date)").format(s))
    config = tmp_path / "tables.yaml"
    config.write_text(json.dumps({"tables": [
        {"name": f"{schema}.events", "day_column": "at", "start_date": "2024-03-01",
         "partitioning": {"mode": "declarative"}},
        {"name": f"{schema}.legacy", "start_date": "2024-03-01",
         "partitioning": {"mode": "naming", "pattern": "legacy_%Y%m%d"}},
        {"name": f"{schema}.orders", "day_column": "placed", "start_date": "2024-03-01", "format": "parquet"},
    ]}))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn,
            "ARCHIVE_S3_BUCKET": bucket, "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "DAGSTER_HOME": str(home)}


def test_definitions_validate_with_three_modes(three_tables):
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=REPO, env=three_tables, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful for code location archive_pipeline" in out.stdout + out.stderr
    # The only warning allowed is the CLI's note that this command has a successor (dg check defs).
    warnings = [line for line in (out.stdout + out.stderr).splitlines()
                if "Warning" in line and "definitions_validate_command" not in line]
    assert warnings == []


QUERY = """
{
  assetNodes {
    assetKey { path }
    isPartitioned
    partitionDefinition { type description }
    jobNames
    assetChecksOrError { ... on AssetChecks { checks { name jobNames blocking canExecuteIndividually
                                                       partitionDefinition { type } } } }
  }
  workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError {
    __typename
    ... on PythonError { message }
    ... on RepositoryLocation { repositories { name schedules { name cronSchedule } sensors { name }
                                               jobs { name } } }
  } } } }
}
"""


@contextlib.contextmanager
def dagster_server(args: list[str], env: dict[str, str]) -> Iterator[int]:
    """Run `python -m <args> -w workspace.yaml` on a free port until the block ends; yields the port."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", *args, "-w", "workspace.yaml", "-h", "127.0.0.1",
                               "-p", str(port)], cwd=REPO, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/server_info", server, 120, args[0])
        yield port
    finally:
        stop_process_group(server)


# `dagster-daemon run` as it is, but with the backfill daemon polling every 3 s instead of Dagster's fixed
# 30 s (a module constant it reads when its loop starts): a backfill launched while it runs is picked up
# in seconds, not half a minute later. Nothing else about the daemon changes.
_DAEMON = ("import runpy, sys, dagster._daemon.controller as controller; "
           "controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 3; sys.argv[0] = 'dagster-daemon'; "
           "runpy.run_module('dagster._daemon', run_name='__main__')")


@contextlib.contextmanager
def dagster_daemon(env: dict[str, str], log: Path) -> Iterator[None]:
    """`dagster-daemon run -w workspace.yaml` until the block ends, its output in ``log``."""
    with open(log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-c", _DAEMON, "run", "-w", "workspace.yaml"], cwd=REPO,
                                  env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        stop_process_group(daemon)


def _wait_until(what: str, probe, timeout: float):
    """``probe()`` once it is truthy; polled every 0.25 s (a daemon tick is seconds)."""
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.25)
    return result


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_webserver_shows_assets_partitions_schedules_sensor_and_checks(three_tables, schema):
    with dagster_server(["dagster_webserver"], three_tables) as port:
        data = _graphql(port, QUERY)["data"]
    [location] = data["workspaceOrError"]["locationEntries"]
    assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation", location
    [repo] = location["locationOrLoadError"]["repositories"]
    assets = {"/".join(a["assetKey"]["path"]): a for a in data["assetNodes"]}
    assert set(assets) == {f"archive/{schema}/events", f"archive/{schema}/legacy", f"archive/{schema}/orders"}
    for node in assets.values():
        assert node["isPartitioned"] and node["partitionDefinition"]["type"] == "TIME_WINDOW"
        assert "2024-03-01" in node["partitionDefinition"]["description"]
        checks = {c["name"]: c for c in node["assetChecksOrError"]["checks"]}
        assert set(checks) == {"archive_intact", "latest_archive_intact", "source_unchanged"}
        # archive_intact is per day; the on-demand checks are in no archive job, only where asked for.
        assert checks["archive_intact"]["partitionDefinition"]["type"] == "TIME_WINDOW"
        table = node["assetKey"]["path"][-1]
        for name, check in checks.items():
            assert f"Archive_{schema}_{table}" not in check["jobNames"], (name, check["jobNames"])
        assert "verify_archives" in checks["latest_archive_intact"]["jobNames"]
        # The asset's Materialize button, as Dagster 1.13's UI decides it (getCommonJob and
        # getAssetCheckHandleInputs in LaunchAssetExecutionButton.tsx): the first of the asset's jobs,
        # with the checks that are in that job or cannot run without the asset. That is the table's
        # job and no check, so a run that fails from that button cannot turn a check red.
        ui_job = node["jobNames"][0]
        assert ui_job == f"Archive_{schema}_{table}", node["jobNames"]
        assert "__ASSET_JOB" in node["jobNames"]
        assert [name for name, check in checks.items()
                if check["canExecuteIndividually"] == "REQUIRES_MATERIALIZATION" or ui_job in check["jobNames"]] == []
    # Several tables selected together (the same partitions): the first job they all share is the shared
    # job, which has no check either.
    nodes = list(assets.values())
    common = [job for job in nodes[0]["jobNames"] if all(job in n["jobNames"] for n in nodes)]
    assert common[0] == "Archives_daily_2024_03_01_UTC", common
    assert not any(common[0] in c["jobNames"] for n in nodes for c in n["assetChecksOrError"]["checks"])
    assert {s["name"] for s in repo["schedules"]} == {f"archive_{schema}_{t}_daily" for t in ("events", "legacy", "orders")}
    assert {s["cronSchedule"] for s in repo["schedules"]} == {"0 1 * * *"}
    assert [s["name"] for s in repo["sensors"]] == ["archive_new_days"]
    assert "verify_archives" in {j["name"] for j in repo["jobs"]}


def _validate(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    return out.stdout + out.stderr


def test_definitions_validate_names_file_table_setting_and_variable(three_tables, tmp_path):
    """Bad configuration fails `dagster definitions validate` with our message, not a bare ValueError."""
    config = tmp_path / "bad.yaml"
    config.write_text("tables:\n  - name: public.events\n    day_column: created_at\n    start_date: 2024-13-01\n")
    output = _validate({**three_tables, "ARCHIVE_PIPELINE_CONFIG": str(config)})
    assert f"invalid archive configuration in {config}" in output
    assert "table 'public.events', setting 'start_date'" in output and "'2024-13-01'" in output
    env = {k: v for k, v in three_tables.items() if k != "ARCHIVE_S3_BUCKET"}
    output = _validate(env)
    assert "ARCHIVE_S3_BUCKET: the bucket the archives are written to" in output


LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""
CHECK_STATUS = """
{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name
    partitionStatuses { ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } } } } } } } }
"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""
RUN = """
query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }
"""
BACKFILL = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }
"""
RUNS = """
query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
  ... on Runs { results { status tags { key value } } } } }
"""


def test_backfill_of_a_date_range_launched_like_the_ui(conn, schema, tmp_path, pg, s3, bucket, s3_client):
    """The webserver and the daemon (what `dagster dev` runs) and the GraphQL mutation the UI sends for a date
    range."""
    days = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]
    create_sample_events(conn, days, rows_per_day=200, schema=schema)
    for table in ("orders", "shipments"):
        conn.execute(sql.SQL("CREATE TABLE {}.{} AS SELECT id, created_at::date AS placed FROM {}.events").format(
            sql.Identifier(schema), sql.Identifier(table), sql.Identifier(schema)))
    config = tmp_path / "tables.yaml"
    config.write_text(json.dumps({"tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": "2024-03-01",
         "partitioning": {"mode": "declarative"}},
        {"name": f"{schema}.orders", "day_column": "placed", "start_date": "2024-03-05", "format": "csv"},
        {"name": f"{schema}.shipments", "day_column": "placed", "start_date": "2024-03-01", "format": "parquet"}]}))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
           "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "DAGSTER_HOME": str(home)}
    # The webserver first, then the UI's mutation, then the daemon (what `dagster dev` runs side by side):
    # the daemon's first backfill iteration finds the backfill at once, where a daemon already running
    # would pick it up on its next iteration, up to 30 s later (Dagster's fixed backfill interval).
    with dagster_server(["dagster_webserver"], env) as port:
        params = {"partitionsByAssets": [
            {"assetKey": {"path": ["archive", schema, table]},
             "partitions": {"range": {"start": days[0].isoformat(), "end": days[-1].isoformat()}}}
            for table in ("events", "orders")]}
        launched = _graphql(port, LAUNCH, {"params": params})["data"]["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        with dagster_daemon(env, tmp_path / "daemon.log"):

            def both_finished():  # the daemon submits one run per table and range (backfill.max_days_per_run)
                runs = _graphql(port, RUNS, {"id": launched["backfillId"]})["data"]["runsOrError"]["results"]
                finished = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
                return runs if len(finished) == 2 else None

            runs = _wait_until("the backfill's two runs", both_finished, timeout=300)
            statuses = _graphql(port, CHECK_STATUS)["data"]["assetNodes"]
            # A late row, then the job's run for that day from the launchpad: the run fails, and the
            # day's integrity check stays what it was (a failed run is not a failed check).
            conn.execute(sql.SQL("INSERT INTO {}.events (id, created_at, user_id, event_type) "
                                 "VALUES (999999, %s, 1, 'late')").format(sql.Identifier(schema)),
                         (f"{days[0]} 10:00+00",))
            launched = _graphql(port, LAUNCH_RUN, {"params": {
                "selector": {"repositoryLocationName": "archive_pipeline", "repositoryName": "__repository__",
                             "jobName": f"Archive_{schema}_events"},
                "runConfigData": {},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": days[0].isoformat()}]}}})
            run_id = launched["data"]["launchRun"]["run"]["runId"]

            def late_run_finished():
                run = _graphql(port, RUN, {"id": run_id})["data"]["runOrError"]
                return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

            late = _wait_until("the late day's run", late_run_finished, timeout=180)
            after_failure = _graphql(port, CHECK_STATUS)["data"]["assetNodes"]
            # events and shipments share their partitions: the UI's Materialize of both launches this job
            # backfill of the shared job (see test_webserver_shows_...), ranged like the tables' own jobs.
            shared = _graphql(port, LAUNCH, {"params": {
                "selector": {"partitionSetName": "Archives_daily_2024_03_01_UTC_partition_set",
                             "repositorySelector": {"repositoryLocationName": "archive_pipeline",
                                                    "repositoryName": "__repository__"}},
                "assetSelection": [{"path": ["archive", schema, t]} for t in ("events", "shipments")],
                "partitionNames": [d.isoformat() for d in days[1:]], "fromFailure": False, "tags": []}}
                               )["data"]["launchPartitionBackfill"]
            assert shared["__typename"] == "LaunchBackfillSuccess", shared

            def shared_finished():
                backfill = _graphql(port, BACKFILL, {"id": shared["backfillId"]})["data"]["partitionBackfillOrError"]
                if backfill["status"] in ("REQUESTED", "CANCELING", "FAILING"):
                    return None
                runs = _graphql(port, RUNS, {"id": shared["backfillId"]})["data"]["runsOrError"]["results"]
                return (backfill, runs) if all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs) else None

            shared_backfill, shared_runs = _wait_until("the shared job's backfill", shared_finished, timeout=300)
            after_shared = _graphql(port, CHECK_STATUS)["data"]["assetNodes"]
    assert shared_backfill["status"] == "COMPLETED_SUCCESS", shared_backfill
    assert [r["status"] for r in shared_runs] == ["SUCCESS"]  # one ranged run for both tables and days
    assert {t["value"] for t in shared_runs[0]["tags"] if t["key"] == "dagster/asset_partition_range_end"} == {
        days[-1].isoformat()}
    [shipments] = [n for n in after_shared if n["assetKey"]["path"][-1] == "shipments"]
    [intact] = [c for c in shipments["assetChecksOrError"]["checks"] if c["name"] == "archive_intact"]
    assert [(r["startKey"], r["endKey"], r["status"]) for r in intact["partitionStatuses"]["ranges"]] == [
        (days[1].isoformat(), days[-1].isoformat(), "SUCCEEDED")]
    assert late["status"] == "FAILURE"
    assert {"key": "archive/table", "value": f"{schema}.events"} in late["tags"]
    assert after_failure == statuses
    assert [r["status"] for r in runs] == ["SUCCESS"] * 2
    ranges = [{t["key"]: t["value"] for t in r["tags"] if t["key"].startswith("dagster/asset_partition_range_")}
              for r in runs]
    assert ranges == [{"dagster/asset_partition_range_start": days[0].isoformat(),
                       "dagster/asset_partition_range_end": days[-1].isoformat()}] * 2
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    for day in days:
        assert f"{schema}.events/2024/03/{day}.jsonl.zst" in keys
        assert f"{schema}.orders/2024/03/{day}.csv.zst.manifest.json" in keys
    for day in days[1:]:
        assert f"{schema}.shipments/2024/03/{day}.parquet.manifest.json" in keys
    assert len(keys) == 16  # 2 tables x 3 days, and shipments' 2 days, x (object + manifest)
    # Each day's integrity check, as the UI's partition bar for the check reads it.
    for node in (n for n in statuses if n["assetKey"]["path"][-1] != "shipments"):
        checks = {c["name"]: c for c in node["assetChecksOrError"]["checks"]}
        ranges = checks["archive_intact"]["partitionStatuses"]["ranges"]
        assert [(r["startKey"], r["endKey"], r["status"]) for r in ranges] == [
            (days[0].isoformat(), days[-1].isoformat(), "SUCCEEDED")], node["assetKey"]
