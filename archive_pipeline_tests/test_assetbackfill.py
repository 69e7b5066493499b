"""Tables with different partitions materialized together from the asset graph: Dagster 1.13 runs them as
a pure asset backfill of its implicit ``__ASSET_JOB``, whose runs plan every check of the assets. Launched
with the GraphQL mutation the UI sends and submitted by the backfill daemon's own iteration, in process
(no webserver or daemon process to start: a few seconds)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, DagsterRunStatus, instance_for_test
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.test.utils import execute_dagster_graphql
from psycopg import sql

from archive_pipeline.local.local_stack import create_sample_events

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
LAUNCH = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }
"""
CHECK_STATUS = """
{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name
    partitionStatuses { ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } } } } } } } }
"""


@pytest.fixture
def workspace(conn, schema, tmp_path, archive_env, monkeypatch) -> Iterator[tuple[DagsterInstance, WorkspaceProcessContext]]:
    """events (from 2024-03-01) and orders (from 2024-03-05): no job holds both, as in the UI. Runs are
    launched in this process as the daemon submits them."""
    create_sample_events(conn, DAYS, rows_per_day=20, schema=schema)
    conn.execute(sql.SQL("CREATE TABLE {}.orders AS SELECT id, created_at::date AS placed FROM {}.events").format(
        sql.Identifier(schema), sql.Identifier(schema)))
    config = tmp_path / "tables.yaml"
    config.write_text(json.dumps({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": "2024-03-01",
         "partitioning": {"mode": "declarative"}},
        {"name": f"{schema}.orders", "day_column": "placed", "start_date": "2024-03-05", "format": "csv"}]}))
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(config))
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(
        executable_path=sys.executable, module_name="archive_pipeline.definitions", attribute="defs"),
        location_name="archive_pipeline")
    overrides = {"run_launcher": {"module": "dagster._core.launcher.sync_in_memory_run_launcher",
                                  "class": "SyncInMemoryRunLauncher"},
                 "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}}
    with instance_for_test(overrides=overrides) as instance:
        with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:
            yield instance, context


def _backfill(instance: DagsterInstance, context: WorkspaceProcessContext, schema: str) -> list:
    """The UI's backfill of both tables over DAYS, run to its end; its runs."""
    params = {"partitionsByAssets": [
        {"assetKey": {"path": ["archive", schema, table]},
         "partitions": {"range": {"start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat()}}}
        for table in ("events", "orders")]}
    launched = execute_dagster_graphql(context.create_request_context(), LAUNCH, {"params": params}).data
    backfill_id = launched["launchPartitionBackfill"]["backfillId"]
    for _ in range(5):  # the first iteration submits (and here runs) the runs, the next one sees them end
        list(execute_backfill_iteration(context, logging.getLogger("backfill")))
        if instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED:
            break
    assert instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED
    return [r for r in instance.get_runs() if r.tags.get("dagster/backfill") == backfill_id]


def _intact_days(context: WorkspaceProcessContext, table: str) -> list[tuple[str, str, str]]:
    """The archive_intact partition bar of ``table``, as the UI reads it."""
    nodes = execute_dagster_graphql(context.create_request_context(), CHECK_STATUS).data["assetNodes"]
    [node] = [n for n in nodes if n["assetKey"]["path"][-1] == table]
    [intact] = [c for c in node["assetChecksOrError"]["checks"] if c["name"] == "archive_intact"]
    return [(r["startKey"], r["endKey"], r["status"]) for r in intact["partitionStatuses"]["ranges"]]


def test_a_failed_pure_asset_backfill_leaves_the_days_integrity_check_as_it_was(conn, schema, workspace):
    """The pure asset backfill's runs plan archive_intact (and the on-demand checks) for their days. A run
    that failed before checking a day left its planned check unevaluated, which Dagster shows as
    "Execution failed" for that day: the archive of 2024-03-10, checked intact by the first backfill,
    turned red because a late row made the second one fail. The day now keeps its verdict, as after a
    failed run of the table's own job, and says this run did not check again."""
    instance, context = workspace
    first = _backfill(instance, context, schema)
    assert [r.status for r in first] == [DagsterRunStatus.SUCCESS] * 2
    whole = [(DAYS[0].isoformat(), DAYS[-1].isoformat(), "SUCCEEDED")]
    assert _intact_days(context, "events") == _intact_days(context, "orders") == whole
    conn.execute(sql.SQL("INSERT INTO {}.orders VALUES (999999, %s)").format(sql.Identifier(schema)), (DAYS[0],))

    second = _backfill(instance, context, schema)
    [failed] = [r for r in second if r.status == DagsterRunStatus.FAILURE]
    orders = AssetKey(["archive", schema, "orders"])
    # Why: Dagster's implicit job, with every check of the table planned in the run.
    assert failed.job_name == "__ASSET_JOB" and failed.asset_selection == {orders}
    assert AssetCheckKey(orders, "archive_intact") in failed.asset_check_selection
    assert _intact_days(context, "orders") == whole
    [record] = [r for r in instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(orders, "archive_intact"), limit=10) if r.run_id == failed.run_id and r.partition == "2024-03-10"]
    evaluation = record.evaluation
    earlier = next(r.run_id for r in first if r.asset_selection == {orders})
    assert evaluation.passed and "not checked again" in evaluation.description and earlier in evaluation.description
