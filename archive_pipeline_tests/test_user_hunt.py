"""A new user's hunt (README against the product): each test states what the README says and fails
on the behaviour found instead."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import ConfigError, load_config, parse_config
from archive_pipeline.core.restore import restore_day
from archive_pipeline.local.local_stack import create_sample_events, free_port
from archive_pipeline_tests.conftest import utc_today

ROOT = Path(__file__).resolve().parents[1]


def _days(n: int = 3) -> list[dt.date]:
    today = utc_today()
    return [today - dt.timedelta(days=k) for k in range(n, 0, -1)]


def _cli_env(pg, s3, bucket, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing")
    return env


def _table(schema: str, first: dt.date) -> dict:
    return {"name": f"{schema}.events", "day_column": "created_at", "start_date": first.isoformat(),
            "partitioning": {"mode": "declarative"}}


# --- README "Backfills": "From the command line ... dagster job backfill" ----------------------------

def test_restore_into_original_with_skip_leaves_existing_rows_alone(conn, schema, store, temp_dir):
    """README: `"skip"`: ... `INSERT … ON CONFLICT DO NOTHING` leaves existing rows alone; `inserted`
    says how many were added; `restore_day(conn, store, spec, day, into="original", on_conflict="skip")
    # back where it came from`. On a table without a primary key or unique constraint (the demo's
    public.events) ON CONFLICT never fires: every row is inserted a second time, the fingerprint check
    rolls back, and the error blames the archive ("does not hold the rows it was proven to hold
    (altered after it was written)") instead of saying skip needs a unique key."""
    day = _days(1)[0]
    create_sample_events(conn, [day], 50, schema=schema)
    spec = parse_config({"tables": [_table(schema, day)]}).tables[0]
    archive_partition(conn, spec, day, store, temp_dir=str(temp_dir))
    try:
        result = restore_day(conn, store, spec, day, into="original", on_conflict="skip")
    except Exception as exc:  # noqa: BLE001
        message = str(exc)
        assert "altered after it was written" not in message and re.search(r"unique|primary key", message), message
    else:
        assert result.inserted == 0
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))).fetchone()[0]
        assert count == 50


def test_intact_check_links_the_object_the_manifest_names_after_an_overwrite(conn, schema, store, temp_dir):
    """README: "Readers always follow object.key of the manifest", and a re-archive writes a new
    generation (`.g2.`) and deletes the previous one. The archive_intact verdict (Execute on the check,
    latest_archive_intact, deep_check runs) puts `archive: s3://.../<day>.jsonl.zst` in its metadata,
    the first generation's key, which no longer exists after an overwrite."""
    from archive_pipeline.defs.assets import recorded
    from archive_pipeline.defs.checks import verify_result
    day = _days(1)[0]
    create_sample_events(conn, [day], 50, schema=schema)
    spec = parse_config({"tables": [_table(schema, day)]}).tables[0]
    archive_partition(conn, spec, day, store, temp_dir=str(temp_dir))
    conn.execute(sql.SQL("UPDATE {} SET amount = 1 WHERE id = (SELECT min(id) FROM {})").format(
        sql.Identifier(schema, "events"), sql.Identifier(schema, "events")))
    second = archive_partition(conn, spec, day, store, temp_dir=str(temp_dir), overwrite=True)
    assert ".g2." in second.key
    verdict = verify_result(store, spec, day, recorded(second), deep=False)
    assert verdict.passed, verdict.problems
    assert verdict.metadata["archive"] == store.uri(second.key), verdict.metadata


def test_readme_documents_every_archive_environment_variable_the_code_reads():
    """README: "Connection settings come only from the environment" and lists them in a table.
    definitions.py also reads ARCHIVE_PG_PRIMARY_DSN (the primary for retention when ARCHIVE_PG_DSN is a
    replica; docs/dagster.production.yaml lists it), which the README never mentions."""
    code = "\n".join(p.read_text() for p in (ROOT / "archive_pipeline").rglob("*.py"))
    used = set(re.findall(r"\"(ARCHIVE_[A-Z0-9_]+)\"", code))
    readme = (ROOT / "README.md").read_text()
    missing = sorted(v for v in used if v not in readme)
    assert not missing, missing


def test_cli_table_that_does_not_exist_is_a_configuration_error_exit_2(pg, s3, bucket, schema, tmp_path):
    """README: exit 2 "usage or configuration error (the message names the setting or variable)"; 1 is
    "a check or comparison found differences, or a day failed". A configured table that does not exist
    (the message says: check the table's name in the YAML configuration) exits 1."""
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.nope", "day_column": "created_at",
                                                  "start_date": _days(1)[0].isoformat()}]}))
    done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "list", "--json"],
                          env=_cli_env(pg, s3, bucket, config), cwd=ROOT, capture_output=True, text=True, timeout=60)
    payload = json.loads(done.stdout)
    assert "does not exist" in payload["error"]
    assert done.returncode == 2, (done.returncode, payload)


def test_cli_unreachable_database_does_not_say_it_is_retried_automatically(pg, s3, bucket, conn, schema, tmp_path):
    """The CLI makes one attempt and exits 3, but its message says `to fix: retried automatically; if it
    persists, ...` (the Dagster run's remedy)."""
    days = _days(1)
    create_sample_events(conn, days, 10, schema=schema)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [_table(schema, days[0])]}))
    env = {**_cli_env(pg, s3, bucket, config), "ARCHIVE_PG_DSN": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"}
    done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "archive", "--day", days[0].isoformat()],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "retried automatically" not in done.stderr, done.stderr


def _run_in_a_terminal(args: list[str], env: dict[str, str], columns: int) -> str:
    """Run the CLI with stdout on a pseudo-terminal ``columns`` wide; return what it printed."""
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(args, env={**env, "COLUMNS": str(columns), "TERM": "dumb"}, cwd=ROOT,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", b"".join(chunks).decode("utf-8", "replace"))


def test_list_on_an_80_column_terminal_still_shows_the_day_and_its_state(pg, s3, bucket, conn, schema, store,
                                                                         tmp_path):
    """`archive-pipeline list` on a terminal sizes its table to the terminal and truncates every cell
    (no_wrap + ellipsis): at 80 columns the day reads `20…` and the state `…`, at 120 `2026-11…` and
    `archi…`, so a person cannot tell which day is archived, missing or changed."""
    days = _days(1)
    create_sample_events(conn, days, 10, schema=schema)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [_table(schema, days[0])]}))
    env = _cli_env(pg, s3, bucket, config)
    subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "archive", "--day", days[0].isoformat(), "--json"],
                   env=env, cwd=ROOT, capture_output=True, timeout=60, check=True)
    out = _run_in_a_terminal([sys.executable, "-m", "archive_pipeline.cli", "list", "--day", days[0].isoformat()],
                             env, 80)
    row = out.splitlines()[1]  # the day's row (the day also appears inside the key, and "archived" in the summary)
    assert re.search(rf"{days[0].isoformat()}\s+archived\b", row), out


def test_factory_load_error_names_the_file_it_was_given(archive_env, monkeypatch, conn, schema, tmp_path):
    """README: a mistake fails the load "with a message naming the file, the table and the setting", and
    the factory / component "validate exactly as the YAML file is validated (same messages)". With
    build_definitions(load_config("conf/tables.yaml")) and a table that does not exist, the message
    names ./archive_tables.yaml (config_path(): $ARCHIVE_PIPELINE_CONFIG or its default), a file that
    was never read."""
    from archive_pipeline.definitions import build_definitions
    monkeypatch.delenv("ARCHIVE_PIPELINE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "conf" / "tables.yaml"
    conf.parent.mkdir()
    conf.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.nope", "day_column": "created_at",
                                                "start_date": "2024-01-01"}]}))
    with pytest.raises(ConfigError) as failure:
        build_definitions(load_config(conf))
    message = str(failure.value)
    assert "archive_tables.yaml" not in message and str(conf) in message, message


def test_inline_component_config_load_error_does_not_name_archive_tables_yaml(archive_env, monkeypatch, schema,
                                                                               tmp_path):
    """The component's inline tables (README's defs.yaml example, uncommented): a table that does not
    exist is reported as `archive_tables.yaml: table '...'`, while an unknown setting in the same
    attributes is reported as `... in attributes of .../defs.yaml`."""
    from archive_pipeline.defs.component import ArchiveTablesComponent
    monkeypatch.delenv("ARCHIVE_PIPELINE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    component = ArchiveTablesComponent.model_validate(
        {"tables": [{"name": f"{schema}.nope", "day_column": "created_at", "start_date": "2024-01-01"}]})

    class _Ctx:
        path = tmp_path / "defs" / "archive"

    with pytest.raises(ConfigError) as failure:
        component.build_defs(_Ctx())
    assert "archive_tables.yaml" not in str(failure.value), str(failure.value)


def test_a_run_failure_names_where_the_configuration_came_from(archive_env, monkeypatch, conn, schema):
    """The run's "What to do" names the settings' real origin (the file given to load_config, or a
    component's attributes), not $ARCHIVE_PIPELINE_CONFIG's default, which was never read."""
    from dagster import instance_for_test

    from archive_pipeline.definitions import build_definitions

    monkeypatch.delenv("ARCHIVE_PIPELINE_CONFIG", raising=False)
    day = _days(1)[0]
    create_sample_events(conn, [day], 20, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [_table(schema, day)]}, "conf/tables.yaml")
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance:
        assert job.execute_in_process(partition_key=day.isoformat(), instance=instance).success
        conn.execute(sql.SQL("UPDATE {} SET amount = -1 WHERE id = 1").format(sql.Identifier(schema, "events")))
        run = job.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False)
    [failure] = [e.step_failure_data.user_failure_data for e in run.all_events if e.is_step_failure]
    assert "conf/tables.yaml" in failure.description and "archive_tables.yaml" not in failure.description, \
        failure.description
