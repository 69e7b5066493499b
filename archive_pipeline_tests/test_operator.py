"""The Dagster side as an operator meets it: loading the location (tags, names, configuration and its
messages), the component, the sensor, the schedule, checks and pools, through Dagster's own APIs."""

from __future__ import annotations

import datetime as dt

from dagster import AssetKey

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions


def _config(*tables: dict, **top) -> object:
    return parse_config({**top, "tables": [{"day_column": "at", "start_date": "2024-01-01", **t} for t in tables]})


def test_a_table_with_retention_and_a_non_ascii_or_spaced_name_loads():
    """The removal asset's tag was the table name with only '"' removed, so a table with a space or an
    accent in its name and retention failed the whole load (Dagster: "Invalid tag value"), although the
    archive asset itself loads. Its run tag is now the whole name, as the archive job's is."""
    names = ["Ventes Été.événements", "public.日本語", "public.a'b"]
    config = _config(*({"name": n, "retention": {"keep_days": 30, "action": "delete"}} for n in names))
    repo = build_definitions(config, resources={}, check_source=False).get_repository_def()
    for spec in config.tables:
        archive_key, removal_key = AssetKey(["archive", *spec.asset_path]), AssetKey(["source_removed", *spec.asset_path])
        assert repo.asset_graph.get(removal_key).tags["archive/table"] == repo.asset_graph.get(archive_key).tags[
            "archive/table"]
        label = "_".join(spec.asset_path)
        assert repo.get_job(f"remove_{label}").tags["archive/table"] == spec.name
        assert repo.get_job(f"Archive_{label}").tags["archive/table"] == spec.name
