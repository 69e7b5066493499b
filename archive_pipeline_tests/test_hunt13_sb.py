"""Hunt 13 (sb): what a Dagster operator sees and does (a UI that tells the truth at a glance)."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import AssetCheckKey, DagsterInstance, build_sensor_context, build_schedule_context, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, daily_partitions, job_name
from archive_pipeline.defs.resources import ArchiveS3Resource, ArchiveStoreResource, PostgresResource

DAY = dt.date(2024, 3, 10)


def _offline_resources() -> dict:
    """Resources that are never connected to (definitions built for their shape only)."""
    return {"postgres": PostgresResource(dsn="postgresql://u@localhost:1/x"),
            "archive_store": ArchiveStoreResource(s3=ArchiveS3Resource(), bucket="b")}


def test_the_removal_assets_of_two_schemas_tables_of_one_name_are_told_apart_in_the_asset_graph():
    """Scenario: ``public.events`` and ``sales.events`` both have ``retention``. The README (Configuration) says each
    table's asset is in the group ``archive_<schema>`` "so public.events and sales.events are told apart in the asset
    graph, whose nodes show only the key's last part".

    Now: their removal assets ``source_removed/public/events`` and ``source_removed/sales/events`` are both in the one
    group ``retention``, so the asset graph shows two nodes labelled ``events`` side by side in that group: an operator
    looking at a red/overdue "events" removal cannot tell at a glance which table's source is (not) being let go, and
    materializing "the" events node of the retention group may remove the wrong schema's day.

    Expected: within every group, no two assets share the label the graph shows (the key's last part). Fix idea:
    group the removal asset per schema (``retention_<schema>``), as the archive assets are (``archive_<schema>``)."""
    config = parse_config({"tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
         "retention": {"keep_days": 30, "action": "delete"}} for schema in ("public", "sales")]})
    graph = build_definitions(config, _offline_resources(), check_source=False).resolve_asset_graph()
    labels: dict[tuple[str, str], list[str]] = {}
    for key in graph.get_all_asset_keys():
        labels.setdefault((graph.get(key).group_name, key.path[-1]), []).append(key.to_user_string())
    clashing = {f"{group}/{label}": keys for (group, label), keys in labels.items() if len(keys) > 1}
    assert not clashing, f"nodes the asset graph labels alike in one group: {clashing}"
