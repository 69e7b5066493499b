"""Using archive_pipeline from another Dagster project (factory, Component) and deploying it (Docker
image entry command, production instance settings, the demo's process handling)."""

from __future__ import annotations

import contextlib
import dataclasses
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

from archive_pipeline.defs.component import ArchiveTablesComponent
from archive_pipeline.core.config import ConfigError, parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events, free_port, stop_process_group
from archive_pipeline_tests.conftest import utc_today

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
    out = subprocess.run([sys.executable, "-c", "import archive_pipeline.definitions, archive_pipeline.defs.component"],
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
    assert summary["jobs"] == [f"Archive_{schema}_events", f"Archive_{schema}_orders", "verify_archives"]
    repo = merged.get_repository_def()
    # The host keeps its executor for its own jobs; the archive jobs stay in-process.
    assert repo.get_implicit_global_asset_job_def().executor_def is multiprocess_executor
    assert merged.resolve_job_def(f"Archive_{schema}_events").executor_def is in_process_executor
    with instance_for_test() as instance:
        assert materialize([other_teams_asset], instance=instance).success
        result = merged.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key="2024-03-10", instance=instance)
        assert result.success
    key = f"{schema}.events/2024/03/2024-03-10.jsonl.zst"
    assert s3_client.head_object(Bucket=archive_env, Key=key)["ContentLength"] > 0
    # Without executor=None, the archive's in-process executor and the host's would collide.
    with pytest.raises(Exception, match="executor"):
        Definitions.merge(host, build_definitions(parse_config(two_tables)))


def test_retention_asset_is_overdue_like_the_archive_asset(archive_env, two_tables, schema):
    """The removal asset's freshness deadline is its schedule's hour:30 plus freshness_hours, as the archive
    asset's is its schedule's hour:minute plus freshness_hours."""
    config = {**two_tables, "schedule": {"hour": 2, "minute": 15, "freshness_hours": 4}}
    config["tables"][0]["retention"] = {"keep_days": 30, "action": "drop"}
    repo = build_definitions(parse_config(config)).get_repository_def()
    graph = repo.asset_graph
    archive = graph.get(AssetKey(["archive", schema, "events"])).freshness_policy
    removal = graph.get(AssetKey(["source_removed", schema, "events"])).freshness_policy
    assert (archive.deadline_cron, archive.lower_bound_delta) == ("15 6 * * *", dt.timedelta(hours=6, minutes=15))
    assert (removal.deadline_cron, removal.lower_bound_delta) == ("30 6 * * *", dt.timedelta(hours=6, minutes=30))
    assert removal.timezone == "UTC"
    schedule = repo.get_schedule_def(f"remove_{schema}_events_daily")
    assert schedule.cron_schedule == "30 2 * * *"  # the time the deadline is counted from


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
    return yaml.safe_dump({"type": "archive_pipeline.defs.component.ArchiveTablesComponent", "attributes": attributes},
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
    assert from_component.resolve_job_def(f"Archive_{schema}_events").executor_def is in_process_executor


def test_component_runs_an_archive(two_tables, archive_env, tmp_path, monkeypatch, s3_client, schema):
    _make_project(tmp_path, _component_yaml(two_tables))
    monkeypatch.syspath_prepend(str(tmp_path))
    defs = load_from_defs_folder(path_within_project=tmp_path)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(f"Archive_{schema}_orders").execute_in_process(
            partition_key="2024-03-10", instance=instance)
    assert result.success
    assert s3_client.head_object(Bucket=archive_env, Key=f"{schema}.orders/2024/03/2024-03-10.csv.zst")


def test_component_scaffold_writes_a_loadable_defs_yaml(tmp_path, monkeypatch, conn, schema, archive_env):
    """What `dg scaffold defs archive_pipeline.defs.component.ArchiveTablesComponent archive` writes loads."""
    from dagster.components import ScaffoldRequest
    from dagster.components.scaffold.scaffold import NoParams, get_scaffolder

    _make_project(tmp_path, _component_yaml({"config_path": "unused.yaml"}))
    [target] = (tmp_path).glob("host_project_*/defs/archive")
    (target / "defs.yaml").unlink()
    get_scaffolder(ArchiveTablesComponent).scaffold(ScaffoldRequest(
        type_name="archive_pipeline.defs.component.ArchiveTablesComponent", target_path=target,
        scaffold_format="yaml", project_root=tmp_path, params=NoParams()))
    assert yaml.safe_load((target / "defs.yaml").read_text()) == {
        "type": "archive_pipeline.defs.component.ArchiveTablesComponent",
        "attributes": {"config_path": "archive_tables.yaml"}}
    starter = yaml.safe_load((target / "archive_tables.yaml").read_text())
    parse_config(starter)  # valid as written; point it at a table of this test's database to load it
    starter["tables"][0]["name"] = f"{schema}.events"
    create_sample_events(conn, [], rows_per_day=0, schema=schema)
    (target / "archive_tables.yaml").write_text(yaml.safe_dump(starter))
    monkeypatch.syspath_prepend(str(tmp_path))
    defs = load_from_defs_folder(path_within_project=tmp_path)
    assert _summary(defs)["assets"] == [f"archive/{schema}/events"]


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


def _readme_block(language: str, first_line: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    [block] = [b for b in blocks if b.startswith(first_line)]
    return block


def test_readme_examples_load_in_dagster_cli(tmp_path, two_tables, archive_env, schema):
    """The README's two examples as written: the factory merged into a project's Definitions, and the
    component's defs.yaml in a dg-style project; each loaded by `dagster asset list` in a fresh process."""
    tables_yaml = yaml.safe_dump(two_tables)
    package = _make_project(tmp_path, _readme_block("yaml", "# my_project/defs/archive/defs.yaml"),
                            {"archive_tables.yaml": tables_yaml})
    (tmp_path / "archive_tables.yaml").write_text(tables_yaml)
    (tmp_path / "with_factory.py").write_text(_readme_block("python", "import dagster as dg"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    archive_assets = [f"archive/{schema}/events", f"archive/{schema}/orders"]
    for target, own_asset in ((["-m", f"{package}.definitions"], "other_teams_asset"),
                              (["-f", "with_factory.py"], "daily_report")):
        out = subprocess.run([sys.executable, "-m", "dagster", "asset", "list", *target],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert sorted(out.stdout.split()) == sorted([own_asset, *archive_assets])


# --- Deploying: the image's entry command, the production instance ------------------------------------

def _dockerfile() -> tuple[list[str], list[str]]:
    """(instructions, CMD as a list) of the Dockerfile, line continuations joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    [cmd] = [json.loads(line[4:]) for line in instructions if line.startswith("CMD ")]
    return instructions, cmd


def test_dockerfile_builds_a_code_server_with_nothing_secret_baked_in():
    instructions, cmd = _dockerfile()
    assert instructions[0] == "FROM python:3.11-slim"
    assert "RUN pip install ." in instructions
    assert cmd[:5] == ["dagster", "code-server", "start", "-m", "archive_pipeline.definitions"]
    assert cmd[cmd.index("-h") + 1] == "0.0.0.0"
    baked = [line for line in instructions if line.startswith(("ENV ", "ARG "))]
    assert not [line for line in baked if re.search(r"ARCHIVE_|DAGSTER_PG|PASSWORD|SECRET|AWS_|DSN", line)], baked
    # Only the files the image needs reach the build context: never .venv, .dagster_home, .git, tests.
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and not [p for p in ignore if p.startswith("!.")]  # deny all, then allow
    copied = {part for line in instructions if line.startswith("COPY ") for part in line.split()[1:-1]}
    assert copied <= {"pyproject.toml", "README.md", "archive_pipeline", "archive_tables.yaml"}
    assert {f"!{name}" for name in copied} <= {p.rstrip("/") for p in ignore}


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        stop_process_group(process)


def _wait_for(what: str, probe, process: subprocess.Popen, log: Path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
            if result:
                return result
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} not up (exit {process.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert "errors" not in answer, answer
    return answer["data"]


LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
RUN_STATUS = 'query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }'
INSTANCE = """
{ instance { runQueuingSupported runLauncher { name }
             daemonHealth { allDaemonStatuses { daemonType required healthy } } } }
"""


def _instance_yaml_as_tested() -> tuple[str, dict]:
    """docs/dagster.production.yaml with its run-launcher block cut out (no Docker daemon here: Dagster's
    default launcher takes its place) and monitoring made quick enough for a test."""
    text = (REPO / "docs" / "dagster.production.yaml").read_text()
    text, cut = re.subn(r"# BEGIN run-launcher\n.*?# END run-launcher\n", "", text, flags=re.S)
    assert cut == 1
    settings = yaml.safe_load(text)
    assert settings["run_monitoring"]["free_slots_after_run_end_seconds"] > 0  # as shipped
    text = re.sub(r"free_slots_after_run_end_seconds: \d+", "free_slots_after_run_end_seconds: 1", text)
    text = re.sub(r"poll_interval_seconds: \d+", "poll_interval_seconds: 1", text)
    return text, settings


def test_production_instance_queues_runs_and_frees_pool_slots(conn, schema, pg, s3, bucket, s3_client, tmp_path,
                                                              monkeypatch):
    """The image's CMD as the code server, docs/workspace.production.yaml pointing at it, and the webserver
    and daemon on docs/dagster.production.yaml (PostgreSQL storage, S3 run logs, queued run coordinator,
    pools, run monitoring): a run launched through GraphQL is queued, dequeued by the daemon and succeeds
    with its logs in the bucket; a pool slot left behind by a finished run is given back."""
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=100, schema=schema)
    database = f"dagster_{schema}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    config = tmp_path / "tables.yaml"
    config.write_text(json.dumps({"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                              "start_date": "2024-03-01", "partitioning": {"mode": "declarative"}}]}))
    home = tmp_path / "home"
    home.mkdir()
    instance_yaml, shipped = _instance_yaml_as_tested()
    (home / "dagster.yaml").write_text(instance_yaml)
    code_port, web_port = free_port(), free_port()
    workspace = yaml.safe_load((REPO / "docs" / "workspace.production.yaml").read_text())
    [location] = workspace["load_from"]
    location["grpc_server"].update(host="127.0.0.1", port=code_port)
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    env = {**os.environ, "DAGSTER_HOME": str(home), "ARCHIVE_PIPELINE_CONFIG": str(config),
           "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket, "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url,
           "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "unused", "DAGSTER_PG_HOST": "127.0.0.1",
           "DAGSTER_PG_DB": database, "DAGSTER_PG_PORT": str(pg.port),
           "DAGSTER_COMPUTE_LOGS_BUCKET": bucket, "AWS_ENDPOINT_URL_S3": s3.endpoint_url}
    _, cmd = _dockerfile()
    cmd = [str(PYTHON_BIN / cmd[0]), *cmd[1:]]
    cmd[cmd.index("-h") + 1], cmd[cmd.index("-p") + 1] = "127.0.0.1", str(code_port)
    health = [str(PYTHON_BIN / "dagster"), "api", "grpc-health-check", "-p", str(code_port)]
    job = f"Archive_{schema}_events"
    try:
        with (_process(cmd, env, REPO, tmp_path / "code.log") as code_server,
              _process([str(PYTHON_BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, tmp_path,
                       tmp_path / "daemon.log"),
              _process([str(PYTHON_BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p",
                        str(web_port)], env, tmp_path, tmp_path / "web.log") as webserver):
            _wait_for("code server", lambda: subprocess.run(health, env=env, capture_output=True).returncode == 0,
                      code_server, tmp_path / "code.log")
            _wait_for("webserver", lambda: urllib.request.urlopen(f"http://127.0.0.1:{web_port}/server_info",
                                                                  timeout=2), webserver, tmp_path / "web.log")
            params = {"selector": {"repositoryLocationName": "archive_pipeline", "repositoryName": "__repository__",
                                   "jobName": job},
                      "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "2024-03-10"}]}}
            def launch() -> dict | None:
                # The webserver may have loaded the workspace while the code server was still starting: the job
                # shows up once it reloads the location (a launch until then finds no job and creates no run).
                answer = _graphql(web_port, LAUNCH_RUN, {"params": params})["launchRun"]
                return None if answer["__typename"] == "PipelineNotFoundError" else answer

            launched = _wait_for("the job in the webserver", launch, webserver, tmp_path / "web.log", timeout=60)
            assert launched["__typename"] == "LaunchRunSuccess", launched
            assert launched["run"]["status"] == "QUEUED"  # the coordinator queues; only the daemon launches
            run_id = launched["run"]["runId"]
            status = _wait_for("the run", lambda: _finished(web_port, run_id), webserver, tmp_path / "daemon.log",
                               timeout=180)
            assert status == "SUCCESS", (tmp_path / "daemon.log").read_text()[-3000:]

            instance = _graphql(web_port, INSTANCE)["instance"]
            assert instance["runQueuingSupported"] and instance["runLauncher"]["name"] == "DefaultRunLauncher"
            daemons = {d["daemonType"]: d for d in instance["daemonHealth"]["allDaemonStatuses"]}
            for daemon in ("QUEUED_RUN_COORDINATOR", "MONITORING", "SCHEDULER", "SENSOR", "BACKFILL"):
                assert daemons[daemon]["required"], daemon

            # A run that crashes or is cancelled holding a pool slot leaves it claimed; the monitoring
            # daemon gives it back free_slots_after_run_end_seconds after the run ended.
            for name in ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB",
                         "DAGSTER_PG_PORT", "DAGSTER_COMPUTE_LOGS_BUCKET"):
                monkeypatch.setenv(name, env[name])
            with DagsterInstance.from_config(str(home)) as dagster_instance:
                assert type(dagster_instance.run_storage).__name__ == "PostgresRunStorage"
                assert dagster_instance.get_concurrency_config().pool_config.default_pool_limit == \
                    shipped["concurrency"]["pools"]["default_limit"]
                storage = dagster_instance.event_log_storage
                storage.claim_concurrency_slot("archive_source", run_id, "left_behind")
                assert run_id in storage.get_concurrency_info("archive_source").active_run_ids
                _wait_for("slot freed", lambda: run_id not in storage.get_concurrency_info("archive_source")
                          .active_run_ids, webserver, tmp_path / "daemon.log", timeout=180)
    finally:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    assert s3_client.head_object(Bucket=bucket, Key=f"{schema}.events/2024/03/2024-03-10.jsonl.zst")
    # The run's stdout/stderr went to the bucket through the S3 compute log manager.
    logs = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="dagster-compute-logs/")["Contents"]]
    assert any(run_id in key and key.endswith(".err") for key in logs), logs


def _finished(port: int, run_id: str) -> str | None:
    status = _graphql(port, RUN_STATUS, {"id": run_id})["runOrError"]["status"]
    return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None


# --- The demo: `make demo UI=1` stops cleanly, and the README's backfill command works beside it ---------

def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _services(root: int) -> set[int]:
    """The demo's PostgreSQL postmaster and moto server among the descendants of ``root``."""
    found = set()
    for pid in _descendants(root):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"/postgres") and b"-D" in argv or b"moto.server" in argv:
                found.add(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_demo(tmp_path: Path, *, background: bool, days: int = 1) -> tuple[subprocess.Popen, int, Path, Path]:
    """`make demo UI=1` with this test run's Python environment, as a job of its own process group, the
    way a shell with job control starts one: in the foreground (Ctrl-C signals the whole group), or in the
    background (`make demo UI=1 &`: SIGINT ignored; `kill %1` sends SIGTERM to the whole group)."""
    port, home, log = free_port(), tmp_path / "home", tmp_path / "demo.log"
    cmd = ["make", "--no-print-directory", "demo", "UI=1", f"VENV={sys.prefix}", "INSTALL=0",
           f"ARGS=--days {days} --rows 200 --port {port} --home {home}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in [n for n in env if n.startswith(("ARCHIVE_", "DAGSTER_"))]:
        del env[name]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None)
    _wait_for("the demo's UI", lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2),
              process, log, timeout=180)
    return process, port, home, log


def _readme_second_shell_commands() -> str:
    """The README's block for a second shell beside the demo (Two commands)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    [block] = [b for b in blocks if b.startswith(". .dagster_home/env.sh")]
    return block


def _assert_stops(process: subprocess.Popen, log: Path, send) -> None:
    started = _descendants(process.pid)
    assert len(started) >= 6, started  # demo, PostgreSQL, moto, dagster dev, its webserver and daemon
    send()
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        for pid in _descendants(process.pid):  # the demo prints every thread's stack on SIGUSR1
            with contextlib.suppress(OSError):
                if b"archive_pipeline.local.demo" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGUSR1)
        time.sleep(2)
        raise AssertionError(f"make demo did not stop:\n{log.read_text()[-6000:]}") from None
    deadline = time.monotonic() + 30
    while [pid for pid in started if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
            for pid in started if _alive(pid)}
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"left running: {left}\n{log.read_text()[-3000:]}"


PARTITION_KEYS = """
{ assetNodeOrError(assetKey: {path: ["archive", "public", "events"]}) { ... on AssetNode { partitionKeys } } }
"""


@dataclasses.dataclass
class BackgroundDemo:
    process: subprocess.Popen
    port: int
    home: Path
    log: Path
    backfill: subprocess.CompletedProcess
    today: dt.date  # the day the demo started on (its days and the backfill's are counted back from it)


@pytest.fixture(scope="module")
def background_demo(tmp_path_factory) -> Iterator[BackgroundDemo]:
    """`make demo UI=1 &` with three days, and the README's backfill command submitted from a fresh shell
    beside it. Module-scoped: the Ctrl-C test runs while this demo's daemon picks the backfill up (its
    backfill iterations are 30 s apart) and runs it, instead of each test waiting on its own."""
    tmp_path = tmp_path_factory.mktemp("background_demo")
    # The demo, the backfill command and the tests' expectations each read the clock, minutes apart on a loaded
    # machine: no midnight within ten minutes of the start, so all of them count back from the same day.
    today = utc_today(margin=600)
    process, port, home, log = _start_demo(tmp_path, background=True, days=3)
    try:
        # The README's commands pasted into a fresh shell in the project directory (the demo's instance
        # directory is elsewhere in this test, hence the one substitution).
        commands = _readme_second_shell_commands().replace(". .dagster_home/env.sh", f". {home}/env.sh")
        fresh = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
        backfill = subprocess.run(["bash", "--noprofile", "--norc", "-e", "-c", commands], cwd=REPO, env=fresh,
                                  capture_output=True, text=True, timeout=180)
        yield BackgroundDemo(process, port, home, log, backfill, today)
    finally:
        if process.poll() is None:  # the test that stops it did not get that far
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                for pid in _descendants(process.pid) | {process.pid}:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def test_demo_stops_on_ctrl_c(tmp_path, background_demo):
    """A demo in the foreground stops on Ctrl-C, and only it: the demo running beside it (other port,
    other instance directory) keeps running with all its services."""
    services = _services(background_demo.process.pid)  # its PostgreSQL and S3 servers (runs come and go)
    assert len(services) == 2, services
    process, _, _, log = _start_demo(tmp_path, background=False)
    _assert_stops(process, log, lambda: os.killpg(process.pid, signal.SIGINT))  # what a terminal's Ctrl-C does
    assert background_demo.process.poll() is None and all(_alive(pid) for pid in services), \
        background_demo.log.read_text()[-3000:]
    with urllib.request.urlopen(f"http://127.0.0.1:{background_demo.port}/server_info", timeout=10) as answer:
        assert answer.status == 200


def test_demo_in_the_background_stops_on_sigterm_and_readme_backfill_works_beside_it(background_demo):
    process, port, log, backfill = background_demo.process, background_demo.port, background_demo.log, \
        background_demo.backfill
    try:
        assert backfill.returncode == 0, backfill.stdout + backfill.stderr
        runs_query = "{ runsOrError { ... on Runs { results { status tags { key value } } } } }"

        today = background_demo.today
        expected = [(today - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1)]

        def days_of(run):  # a run of one day, or of a range (backfill.max_days_per_run)
            tags = {t["key"]: t["value"] for t in run["tags"]}
            if "dagster/partition" in tags:
                return [tags["dagster/partition"]]
            first = dt.date.fromisoformat(tags["dagster/asset_partition_range_start"])
            last = dt.date.fromisoformat(tags["dagster/asset_partition_range_end"])
            return [(first + dt.timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]

        def backfill_runs_done():
            runs = _graphql(port, runs_query)["runsOrError"]["results"]
            mine = [r for r in runs if any(t["key"] == "dagster/backfill" for t in r["tags"])]
            done = [r for r in mine if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            return sorted(d for r in done for d in days_of(r)) == expected and done

        runs = _wait_for("the backfill's runs", backfill_runs_done, process, log, timeout=240)
        assert [r["status"] for r in runs] == ["SUCCESS"] * len(runs)
        # The demo's partitions start at its first day of data: no grey "missing" days before it in the UI.
        keys = _graphql(port, PARTITION_KEYS)["assetNodeOrError"]["partitionKeys"]
        assert keys == [(today - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1)]
    finally:
        # `kill %1`: SIGTERM to make and the demo at once, and make passes its own on to the demo too.
        _assert_stops(process, log, lambda: os.killpg(process.pid, signal.SIGTERM))
    output = log.read_text()
    assert "archived partitions of asset archive/public/events" in output
    # Nothing alarming on start or stop (dagster dev's own INFO lines only).
    alarming = [line for line in output.splitlines() if re.search(r"warning|error|traceback", line, re.I)]
    assert alarming == [], alarming

