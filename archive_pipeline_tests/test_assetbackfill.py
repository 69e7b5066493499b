"""Tables with different partitions materialized together from the asset graph: Dagster 1.13 runs them as
a pure asset backfill of its implicit ``__ASSET_JOB``, whose runs plan every check of the assets. Launched
with the GraphQL mutation the UI sends and submitted by the backfill daemon's own iteration, in process
(no webserver or daemon process to start: a few seconds). And the removal asset's *Materialize* button,
launched as the UI chooses its job and checks."""

from __future__ import annotations

import contextlib
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

from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
LAUNCH = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }
"""
CHECK_STATUS = """
{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name
    partitionStatuses { ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } } } } } } } }
"""


@contextlib.contextmanager
def _location(tmp_path, monkeypatch, config: dict) -> Iterator[tuple[DagsterInstance, WorkspaceProcessContext]]:
    """The code location as the webserver and the daemon load it, for ``config``; runs are launched in this
    process as the daemon submits them."""
    path = tmp_path / "tables.yaml"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(path))
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(
        executable_path=sys.executable, module_name="archive_pipeline.definitions", attribute="defs"),
        location_name="archive_pipeline")
    overrides = {"run_launcher": {"module": "dagster._core.launcher.sync_in_memory_run_launcher",
                                  "class": "SyncInMemoryRunLauncher"},
                 "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}}
    with instance_for_test(overrides=overrides) as instance:
        with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:
            yield instance, context


@pytest.fixture
def workspace(conn, schema, tmp_path, archive_env, monkeypatch
              ) -> Iterator[tuple[DagsterInstance, WorkspaceProcessContext]]:
    """events (from 2024-03-01) and orders (from 2024-03-05): no job holds both, as in the UI."""
    create_sample_events(conn, DAYS, rows_per_day=20, schema=schema)
    conn.execute(sql.SQL("CREATE TABLE {}.orders AS SELECT id, created_at::date AS placed FROM {}.events").format(
        sql.Identifier(schema), sql.Identifier(schema)))
    with _location(tmp_path, monkeypatch, {"retry": {"max_retries": 0}, "tables": [
            {"name": f"{schema}.events", "day_column": "created_at", "start_date": "2024-03-01",
             "partitioning": {"mode": "declarative"}},
            {"name": f"{schema}.orders", "day_column": "placed", "start_date": "2024-03-05", "format": "csv"}]}) as ws:
        yield ws


def _backfill(instance: DagsterInstance, context: WorkspaceProcessContext, schema: str, days: list = DAYS) -> list:
    """The UI's backfill of both tables over ``days``, run to its end; its runs."""
    params = {"partitionsByAssets": [
        {"assetKey": {"path": ["archive", schema, table]},
         "partitions": {"range": {"start": days[0].isoformat(), "end": days[-1].isoformat()}}}
        for table in ("events", "orders")]}
    launched = execute_dagster_graphql(context.create_request_context(), LAUNCH, {"params": params}).data
    backfill_id = launched["launchPartitionBackfill"]["backfillId"]
    for _ in range(5):  # the first iteration submits (and here runs) the runs, the next one sees them end
        list(execute_backfill_iteration(context, logging.getLogger("backfill")))
        if instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED:
            break
    assert instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED
    return [r for r in instance.get_runs() if r.tags.get("dagster/backfill") == backfill_id]


CHECK_EXECUTIONS = """
{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name
    executionForLatestMaterialization { runId status evaluation { success severity description } } } } } } }
"""


def _check_executions(context: WorkspaceProcessContext, table: str) -> dict[str, dict | None]:
    """Each check of ``table`` as the asset's checks tab shows it: its latest execution."""
    nodes = execute_dagster_graphql(context.create_request_context(), CHECK_EXECUTIONS).data["assetNodes"]
    [node] = [n for n in nodes if n["assetKey"]["path"][-1] == table]
    return {c["name"]: c["executionForLatestMaterialization"] for c in node["assetChecksOrError"]["checks"]}


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
    # The on-demand checks were planned too, and never ran: none has run yet, which each says as a warning.
    executions = _check_executions(context, "orders")
    for name in ("latest_archive_intact", "source_unchanged"):
        execution = executions[name]
        assert execution["runId"] == failed.run_id and execution["status"] == "FAILED", execution
        assert execution["evaluation"]["severity"] == "WARN", execution
        assert f"this run failed before running {name}, and no run has yet" in execution["evaluation"]["description"]

    # Once they ran (the late row makes source_unchanged fail), a failed run keeps their verdicts, red included.
    verify = build_definitions().resolve_job_def("verify_archives").execute_in_process(instance=instance,
                                                                                       raise_on_error=False)
    third = _backfill(instance, context, schema)
    [failed] = [r for r in third if r.status == DagsterRunStatus.FAILURE]
    executions = _check_executions(context, "orders")
    assert [executions[n]["status"] for n in ("latest_archive_intact", "source_unchanged")] == ["SUCCEEDED", "FAILED"]
    for name in ("latest_archive_intact", "source_unchanged"):
        execution = executions[name]
        assert execution["runId"] == failed.run_id and execution["evaluation"]["severity"] == "ERROR", execution
        assert f"this run failed before running {name}. The last check (run {verify.run_id})" in \
            execution["evaluation"]["description"]
    assert "1 of 2 archived days changed" in executions["source_unchanged"]["evaluation"]["description"]


def test_one_day_of_tables_with_different_partitions_materialized_together_succeeds(workspace, schema):
    """One day selected (or the last day of a range that max_days_per_run leaves alone): the backfill's run
    of a one-day range archives the day and returns it as the step's output, so the archive_intact step
    of the run executes, with a partition range and no partition key. It failed with "archive_intact
    checks one day at a time and no day was chosen": every such run failed after archiving. It now
    records the verdict of each day of the range for that day."""
    instance, context = workspace
    runs = _backfill(instance, context, schema, DAYS[:1])
    assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS] * 2
    assert _intact_days(context, "orders") == [(DAYS[0].isoformat(), DAYS[0].isoformat(), "SUCCEEDED")]
    step = f"archive__{schema}__orders_archive_intact"
    [orders] = [r for r in runs if r.asset_selection == {AssetKey(["archive", schema, "orders"])}]
    [evaluation] = [e.dagster_event.asset_check_evaluation_data for e in instance.all_logs(orders.run_id)
                    if e.dagster_event and e.dagster_event.step_key == step
                    and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert (evaluation.partition, evaluation.passed) == (DAYS[0].isoformat(), True)


NODES = """{ assetNodes { assetKey { path } jobNames
    assetChecksOrError { ... on AssetChecks { checks { name jobNames } } } } }"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""


def test_the_removal_assets_materialize_button_runs_its_job_without_the_proof_check(conn, schema, tmp_path,
                                                                                  archive_env, monkeypatch):
    """The UI's *Materialize* on a source_removed asset runs the first job, in sorted order, that holds the
    asset, with the checks in that job (getCommonJob in Dagster 1.13's LaunchAssetExecutionButton). The
    removal job was ``remove_<schema>_<table>``, which sorts after ``__ASSET_JOB``: the button ran the
    implicit job with archive_proven planned, and a removal that failed before proving anything (here: the
    day is not due) showed the day's proof as "Execution failed", red like a failed proof, though the README
    promised a failed run, as from the removal job. The job now sorts first, like ``Archive_``."""
    day = utc_today() - dt.timedelta(days=1)  # within keep_days: refused before any proof
    create_sample_events(conn, [day], rows_per_day=5, schema=schema)
    with _location(tmp_path, monkeypatch, {"retry": {"max_retries": 0}, "tables": [
            {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(),
             "retention": {"keep_days": 30, "action": "delete"}}]}) as (instance, context):
        nodes = execute_dagster_graphql(context.create_request_context(), NODES).data["assetNodes"]
        [node] = [n for n in nodes if n["assetKey"]["path"][0] == "source_removed"]
        job = node["jobNames"][0]  # what the button launches, with the checks of that job
        checks = [c["name"] for c in node["assetChecksOrError"]["checks"] if not c["jobNames"] or job in c["jobNames"]]
        launched = execute_dagster_graphql(context.create_request_context(), LAUNCH_RUN, {"params": {
            "selector": {"repositoryLocationName": "archive_pipeline", "repositoryName": "__repository__",
                         "jobName": job, "assetSelection": [{"path": node["assetKey"]["path"]}],
                         "assetCheckSelection": [{"assetKey": {"path": node["assetKey"]["path"]}, "name": c}
                                                 for c in checks]},
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day.isoformat()}]}}}).data
        run = instance.get_run_by_id(launched["launchRun"]["run"]["runId"])
        assert run.status == DagsterRunStatus.FAILURE
        proven = AssetCheckKey(AssetKey(node["assetKey"]["path"]), "archive_proven")
        assert [(r.partition, r.status.value) for r in
                instance.event_log_storage.get_asset_check_execution_history(proven, limit=10)] == []
        assert (job, checks) == (f"Remove_{schema}_events", [])
