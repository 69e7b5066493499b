"""Using archive_pipeline from another Dagster project (factory, Component) and deploying it (Docker
image entry command, production instance settings, the demo's process handling)."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetKey,
    Definitions,
    DagsterInstance,
    asset,
    in_process_executor,
    instance_for_test,
    load_from_defs_folder,
    materialize,
    multiprocess_executor,
)
from psycopg import sql

from archive_pipeline.component import ArchiveTablesComponent
from archive_pipeline.config import ConfigError, parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local_stack import create_sample_events, free_port

REPO = Path(__file__).resolve().parents[1]
PYTHON_BIN = Path(sys.executable).parent
_project_numbers = itertools.count()


def _tables(schema: str) -> dict:
    return {"retry": {"max_retries": 0},
            "tables": [{"name": f"{schema}.events", "day_column": "created_at", "start_date": "2024-03-01",
                        "partitioning": {"mode": "declarative"}},
                       {"name": f"{schema}.orders", "day_column": "placed", "start_date": "2024-03-05",
                        "format": "csv"}]}


def _summary(defs: Definitions) -> dict[str, list[str]]:
    """Everything a code location shows, by name."""
    repo = defs.get_repository_def()
    return {
        "assets": sorted(key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()),
        "checks": sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in repo.asset_graph.asset_check_keys),
        "jobs": sorted(job.name for job in repo.get_all_jobs() if not job.name.startswith("__")),
        "schedules": sorted(s.name for s in repo.schedule_defs),
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "resources": sorted(repo.get_top_level_resources()),
    }


@pytest.fixture
def archive_env(monkeypatch, pg, s3, bucket):
    monkeypatch.setenv("ARCHIVE_PG_DSN", pg.dsn)
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.delenv("ARCHIVE_S3_PREFIX", raising=False)
    monkeypatch.delenv("ARCHIVE_PIPELINE_CONFIG", raising=False)
    return bucket


@pytest.fixture
def two_tables(conn, schema):
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=50, schema=schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.orders AS SELECT id, created_at::date AS placed FROM {s}.events").format(
        s=sql.Identifier(schema)))
    return _tables(schema)


# --- The factory, from another project ------------------------------------------------------------

def test_importing_the_factory_and_component_reads_no_configuration(tmp_path):
    """Another project imports us without our YAML file or environment; nothing is built at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "DAGSTER_"))}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", "import archive_pipeline.definitions, archive_pipeline.component"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_factory_merges_into_another_projects_definitions(archive_env, two_tables, schema, s3_client):
    """The README's example: Definitions.merge with a project that has its own asset and executor."""

    @asset
    def other_teams_asset() -> int:
        return 42

    host = Definitions(assets=[other_teams_asset], executor=multiprocess_executor)
    merged = Definitions.merge(host, build_definitions(parse_config(two_tables), executor=None))
    Definitions.validate_loadable(merged)
    summary = _summary(merged)
    assert summary["assets"] == sorted(["other_teams_asset", f"archive/{schema}/events", f"archive/{schema}/orders"])
    assert summary["jobs"] == [f"archive_{schema}_events", f"archive_{schema}_orders", "verify_archives"]
    repo = merged.get_repository_def()
    # The host keeps its executor for its own jobs; the archive jobs stay in-process.
    assert repo.get_implicit_global_asset_job_def().executor_def is multiprocess_executor
    assert merged.resolve_job_def(f"archive_{schema}_events").executor_def is in_process_executor
    with instance_for_test() as instance:
        assert materialize([other_teams_asset], instance=instance).success
        result = merged.resolve_job_def(f"archive_{schema}_events").execute_in_process(
            partition_key="2024-03-10", instance=instance)
        assert result.success
    key = f"{schema}.events/2024/03/2024-03-10.jsonl.zst"
    assert s3_client.head_object(Bucket=archive_env, Key=key)["ContentLength"] > 0
    # Without executor=None, the archive's in-process executor and the host's would collide.
    with pytest.raises(Exception, match="executor"):
        Definitions.merge(host, build_definitions(parse_config(two_tables)))


# --- The Component, in a dg-style project -----------------------------------------------------------

def _make_project(root: Path, defs_yaml: str, files: dict[str, str] | None = None) -> str:
    """A minimal dg-style project (pyproject [tool.dg], <package>/defs/archive/defs.yaml); returns the package."""
    package = f"host_project_{os.getpid()}_{next(_project_numbers)}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "{package}"
        version = "0.1.0"

        [tool.dg]
        directory_type = "project"

        [tool.dg.project]
        root_module = "{package}"
        """))
    component_dir = root / package / "defs" / "archive"
    component_dir.mkdir(parents=True)
    for init in (root / package, root / package / "defs"):
        (init / "__init__.py").write_text("")
    (component_dir / "defs.yaml").write_text(defs_yaml)
    for name, text in (files or {}).items():
        (component_dir / name).write_text(text)
    # The project's code location, the way `dg scaffold project` writes it, plus an asset of its own.
    (root / package / "definitions.py").write_text(textwrap.dedent("""\
        from pathlib import Path

        import dagster as dg


        @dg.asset
        def other_teams_asset() -> int:
            return 42


        @dg.definitions
        def defs() -> dg.Definitions:
            return dg.Definitions.merge(dg.Definitions(assets=[other_teams_asset]),
                                        dg.load_from_defs_folder(path_within_project=Path(__file__).parent))
        """))
    return package


def _component_yaml(attributes: dict) -> str:
    return yaml.safe_dump({"type": "archive_pipeline.component.ArchiveTablesComponent", "attributes": attributes},
                          sort_keys=False)


@pytest.mark.parametrize("form", ["config_path", "inline"])
def test_component_from_defs_yaml_yields_what_the_factory_yields(form, two_tables, archive_env, tmp_path,
                                                                 monkeypatch, schema):
    if form == "config_path":
        # The path is relative to the defs.yaml, as in dagster-sling's replication files.
        _make_project(tmp_path, _component_yaml({"config_path": "tables.yaml"}),
                                {"tables.yaml": yaml.safe_dump(two_tables)})
    else:
        _make_project(tmp_path, _component_yaml(two_tables))
    monkeypatch.syspath_prepend(str(tmp_path))
    from_component = load_from_defs_folder(path_within_project=tmp_path)
    Definitions.validate_loadable(from_component)
    from_factory = build_definitions(parse_config(two_tables))
    assert _summary(from_component) == _summary(from_factory)
    assert len(_summary(from_component)["assets"]) == 2 and len(_summary(from_component)["schedules"]) == 2
    assert from_component.executor is None  # the project's executor, whatever it is, stays in charge
    assert from_component.resolve_job_def(f"archive_{schema}_events").executor_def is in_process_executor


def test_component_runs_an_archive(two_tables, archive_env, tmp_path, monkeypatch, s3_client, schema):
    _make_project(tmp_path, _component_yaml(two_tables))
    monkeypatch.syspath_prepend(str(tmp_path))
    defs = load_from_defs_folder(path_within_project=tmp_path)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(f"archive_{schema}_orders").execute_in_process(
            partition_key="2024-03-10", instance=instance)
    assert result.success
    assert s3_client.head_object(Bucket=archive_env, Key=f"{schema}.orders/2024/03/2024-03-10.csv.zst")


def test_component_rejects_bad_attributes_as_the_file_does(tmp_path, monkeypatch, schema):
    bad = _tables(schema)
    bad["tables"][1]["chunk_size"] = 5
    with pytest.raises(ConfigError) as from_file:
        parse_config(bad)
    _make_project(tmp_path, _component_yaml(bad))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception) as from_component:
        load_from_defs_folder(path_within_project=tmp_path)
    expected = f"table '{schema}.orders', setting 'chunk_size'"
    assert expected in str(from_file.value)
    chain, error = [], from_component.value  # Dagster wraps it in a ComponentTreeException naming the defs.yaml
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert "defs.yaml (ArchiveTablesComponent) (error)" in str(chain[0])
    assert any(isinstance(e, ConfigError) and expected in str(e) for e in chain), chain

    with pytest.raises(ValueError, match="either config_path or inline"):
        ArchiveTablesComponent(config_path="tables.yaml", tables=[{"name": "a.b"}])
    with pytest.raises(ValueError, match="config_path .* or an inline tables list"):
        ArchiveTablesComponent()


def test_host_project_with_the_component_loads_in_dagster_cli(tmp_path, two_tables, archive_env):
    """`dagster definitions validate` and `dagster asset list` on the host project's code location."""
    package = _make_project(tmp_path, _component_yaml({"config_path": "tables.yaml"}),
                            {"tables.yaml": yaml.safe_dump(two_tables)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = subprocess.run([sys.executable, "-m", "dagster", "asset", "list", "-m", f"{package}.definitions"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    schema = two_tables["tables"][0]["name"].split(".")[0]
    assert sorted(out.stdout.split()) == sorted(["other_teams_asset", f"archive/{schema}/events",
                                                 f"archive/{schema}/orders"])
