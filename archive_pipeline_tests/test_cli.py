"""The command line, run as a subprocess against real PostgreSQL and moto's S3 server over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from archive_pipeline.core.archive import render_key
from archive_pipeline.core.config import parse_config
from archive_pipeline.local.local_stack import create_sample_events, free_port
from archive_pipeline.core.manifest import manifest_key
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
ROWS = 300
PREFIX = "cli"


@pytest.fixture
def days() -> list[dt.date]:
    today = utc_today()
    return [today - dt.timedelta(days=n) for n in (3, 2, 1)]


@pytest.fixture
def setup(pg, conn, schema, s3, bucket, tmp_path, days):
    """Three sample days in a declaratively partitioned table, a config file and the environment."""
    create_sample_events(conn, days, ROWS, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": days[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "format": "jsonl", "compression": "zstd"}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX=PREFIX, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    spec = parse_config({"tables": [table]}).tables[0]
    return env, spec


def cli(env: dict[str, str], *args: str, timeout: float = 60, process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    return run_cli(args, env, cwd=ROOT, timeout=timeout, process=process or None)


def cli_json(env: dict[str, str], *args: str, code: int = 0) -> dict:
    done = cli(env, *args, "--json")
    assert done.returncode == code, done.stderr + done.stdout
    return json.loads(done.stdout)


def edit_config(env: dict[str, str], table: dict | None = None, **sections) -> None:
    """Change the test's YAML file: settings of its one table, and whole top-level sections."""
    config = Path(env["ARCHIVE_PIPELINE_CONFIG"])
    raw = yaml.safe_load(config.read_text())
    raw["tables"][0].update(table or {})
    raw.update(sections)
    config.write_text(yaml.safe_dump(raw))


def bucket_keys(s3_client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_dry_run_writes_nothing_then_archive_list_and_skip(setup, conn, s3_client, bucket, days):
    env, spec = setup
    keys = [render_key(spec, d, PREFIX) for d in days]

    plan = cli_json(env, "archive", "--dry-run")
    assert [(p["day"], p["key"], p["action"]) for p in plan["days"]] == [(d.isoformat(), k, "archive")
                                                                          for d, k in zip(days, keys)]
    # ANALYZE ran after the fill, so the catalog's estimate is the exact count
    assert {(p["estimated_rows"], p["estimate_method"]) for p in plan["days"]} == {(ROWS, "catalog")}
    assert all(p["estimated_bytes"] > 0 for p in plan["days"])
    assert bucket_keys(s3_client, bucket) == []
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    done = cli_json(env, "archive", "--day", days[0].isoformat())
    [day] = done["days"]
    assert (day["status"], day["rows"], day["key"]) == ("archived", ROWS, keys[0])
    head = s3_client.head_object(Bucket=bucket, Key=keys[0])
    assert head["ContentLength"] == day["bytes"]
    assert bucket_keys(s3_client, bucket) == sorted([keys[0], manifest_key(keys[0])])

    before = bucket_keys(s3_client, bucket)
    plan = cli_json(env, "archive", "--dry-run", "--from", days[0].isoformat())
    assert [p["action"] for p in plan["days"]] == ["skip", "archive", "archive"]
    assert bucket_keys(s3_client, bucket) == before

    listed = cli_json(env, "list")
    assert [(d["day"], d["state"], d["rows"]) for d in listed["days"]] == [
        (days[0].isoformat(), "archived", ROWS), (days[1].isoformat(), "missing", None),
        (days[2].isoformat(), "missing", None)]
    assert listed["days"][0]["bytes"] == head["ContentLength"]
    assert listed["summary"] == {spec.name: {"archived": 1, "missing": 2, "empty": 0, "changed": 0, "unreadable": 0,
                                             "not-checked": 0}}

    done = cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[2].isoformat())
    assert [d["status"] for d in done["days"]] == ["skipped", "archived", "archived"]
    assert bucket_keys(s3_client, bucket) == sorted(keys + [manifest_key(k) for k in keys])

    human = cli(env, "list")
    assert human.returncode == 0, human.stderr
    assert "3 archived" in human.stdout and keys[2] in human.stdout


def test_changed_days_found_refused_overwritten_and_verified(setup, conn, s3_client, bucket, days):
    env, spec = setup
    cli_json(env, "archive")
    events = sql.Identifier(spec.schema_name, "events")
    # the middle day: one value updated (same row count); the last day: one late row
    conn.execute(sql.SQL("UPDATE {} SET amount = 0.01 WHERE id = 7 AND created_at >= %s AND created_at < %s").format(
        events), (days[1], days[2]))
    conn.execute(sql.SQL("INSERT INTO {} SELECT id + 1000000, created_at, user_id, event_type, amount, session_id, "
                         "is_mobile, tags, payload FROM {} WHERE created_at >= %s LIMIT 1").format(events, events),
                 (days[2],))

    listed = cli_json(env, "list", "--check-source", code=1)
    assert [d["state"] for d in listed["days"]] == ["archived", "changed", "changed"]
    assert [d["source_rows"] for d in listed["days"]] == [ROWS, ROWS, ROWS + 1]

    compared = cli_json(env, "compare", "--rows", code=1)
    assert [(c["result"], c["source_rows"], c["archive_rows"]) for c in compared["days"]] == [
        ("equal", ROWS, ROWS), ("differs", ROWS, ROWS), ("differs", ROWS + 1, ROWS)]
    assert compared["days"][1]["note"] == "same row count, different content"
    # the updated row, named by the deep verification's first difference
    [first] = [line for line in compared["days"][1]["differences"] if line.startswith("first difference")]
    assert "lacks: (7," in first  # the source's new version or the archive's old one, whichever hashes lower
    assert "differences" not in compared["days"][0]

    deep = cli_json(env, "verify", "--deep", code=1)
    assert [d["ok"] for d in deep["days"]] == [True, False, False]
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key(render_key(spec, days[0], PREFIX)))[
        "Body"].read())
    assert compared["days"][0]["source_fingerprint"] == compared["days"][0]["archive_fingerprint"] == \
        manifest["fingerprint"]

    before = bucket_keys(s3_client, bucket)
    plan = cli_json(env, "archive", "--dry-run")
    assert [p["action"] for p in plan["days"]] == ["skip", "refuse", "refuse"]
    assert "same 300 rows" in plan["days"][1]["reason"] and "301 rows now" in plan["days"][2]["reason"]
    assert bucket_keys(s3_client, bucket) == before

    done = cli(env, "archive", "--day", days[1].isoformat())
    assert done.returncode == 1
    assert "changed since it was archived" in done.stdout and "overwrite" in done.stdout

    again = cli_json(env, "archive", "--from", days[1].isoformat(), "--overwrite")
    assert [(d["status"], d["rows"]) for d in again["days"]] == [("archived", ROWS), ("archived", ROWS + 1)]
    assert all(".g2." in d["key"] for d in again["days"])  # a re-archive is a new generation
    assert cli_json(env, "compare")["ok"] is True
    checked = cli_json(env, "verify")
    assert [(d["key"], d["ok"]) for d in checked["days"][1:]] == [(d["key"], True) for d in again["days"]]
    planned = cli_json(env, "archive", "--dry-run", "--from", days[1].isoformat())  # the stored object's key
    assert [(p["action"], p["key"]) for p in planned["days"]] == [("skip", d["key"]) for d in again["days"]]

    # an object replaced behind the manifest's back
    s3_client.put_object(Bucket=bucket, Key=again["days"][1]["key"], Body=b"not the archive")
    checked = cli_json(env, "verify", code=1)
    assert [d["ok"] for d in checked["days"]] == [True, True, False]
    assert any("size" in p for p in checked["days"][2]["problems"])


def test_bad_configuration_exits_2_naming_the_setting(setup, tmp_path):
    env, spec = setup
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tables": [{"name": spec.name, "day_column": "created_at",
                                               "start_date": "2024-01-01", "chunk_size": 5}]}))
    done = cli({**env, "ARCHIVE_PIPELINE_CONFIG": str(bad)}, "list")
    assert done.returncode == 2
    assert "chunk_size" in done.stderr and spec.name in done.stderr

    done = cli(env, "list", "--table", "public.nope")
    assert done.returncode == 2 and "public.nope" in done.stderr

    done = cli({k: v for k, v in env.items() if k != "ARCHIVE_S3_BUCKET"}, "list", "--json")
    assert done.returncode == 2 and "ARCHIVE_S3_BUCKET" in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 2

    # libpq echoes a malformed URI whole, password included
    done = cli({**env, "ARCHIVE_PG_DSN": "postgresql://archiver:s3cr3t-Pa55word@[::1/db"}, "list")
    assert done.returncode == 2 and "ARCHIVE_PG_DSN" in done.stderr
    assert "s3cr3t" not in done.stderr + done.stdout

    today = utc_today().isoformat()
    done = cli(env, "archive", "--day", today)
    assert done.returncode == 2 and "today" in done.stderr


def test_usage_errors_under_json_are_a_json_error_on_stdout(setup):
    """A script reads stdout: a malformed day, an unknown table or a missing --target is the same JSON
    error object as any other failure (exit 2, not retryable), and the usage text still goes to stderr."""
    env, _ = setup
    for args, named in ((("list", "--day", "2024-13-01"), "2024-13-01"), (("list", "--table", "public.nope"), "public.nope"),
                        (("restore", "--day", "2024-03-10", "--into", "existing"), "--target"),
                        (("archive", "--day", "2024-03-10", "--from", "2024-03-09"), "--day")):
        answer = cli_json(env, *args, code=2)
        assert answer["ok"] is False and answer["exit_code"] == 2 and answer["retryable"] is False, answer
        assert named in answer["error"], answer
    done = cli(env, "list", "--day", "notaday")  # without --json: Click's usage text only, nothing on stdout
    assert done.returncode == 2 and done.stdout == "" and "Usage:" in done.stderr


def test_unreachable_source_or_store_exits_3_without_secrets(setup):
    env, _ = setup
    secret = "s3cr3t-Pa55word"
    port = free_port()  # nothing listens there
    for dsn in (f"postgresql://archiver:{secret}@127.0.0.1:{port}/db",
                f"host=127.0.0.1 port={port} user=archiver password={secret} connect_timeout=2"):
        done = cli({**env, "ARCHIVE_PG_DSN": dsn}, "list")
        assert done.returncode == 3, done.stderr
        assert "ARCHIVE_PG_DSN" in done.stderr
        assert secret not in done.stderr + done.stdout

    done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}, "verify")
    assert done.returncode == 3, done.stderr
    assert "ARCHIVE_S3_ENDPOINT_URL" in done.stderr


def test_a_refused_login_exits_2_and_says_it_is_not_retryable(setup, pg, schema):
    """A wrong password is a setting to fix, not an outage: exit 2, ``retryable: false`` in --json,
    host and user named, the password nowhere; a server that is down stays exit 3, retryable."""
    env, _ = setup
    secret = "cl1 s3cret's"
    role = f"cli_{os.getpid()}_{schema}"
    dsn = pg.create_password_role(role, secret)
    wrong = psycopg.conninfo.make_conninfo(dsn, password=secret + "x")
    refused = cli_json({**env, "ARCHIVE_PG_DSN": wrong}, "list", code=2)
    assert refused["retryable"] is False and "wrong password" in refused["error"], refused
    assert f"user {role!r}" in refused["error"] and "ARCHIVE_PG_DSN" in refused["error"]
    down = cli_json({**env, "ARCHIVE_PG_DSN": f"host=127.0.0.1 port={free_port()} user=x connect_timeout=2"},
                    "list", code=3)
    assert down["retryable"] is True
    for answer in (refused, down):
        assert secret not in json.dumps(answer)


def test_restore_into_a_new_table_and_a_dropped_partition(setup, conn, days):
    env, spec = setup
    schema, day = spec.schema_name, days[1]
    cli_json(env, "archive", "--day", day.isoformat())

    done = cli_json(env, "restore", "--day", day.isoformat(), "--into", "new", "--target", f"{schema}.restored")
    [result] = done["days"]
    assert (result["target"], result["rows"], result["fingerprint_checked"]) == (f"{schema}.restored", ROWS, True)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "restored"))).fetchone()[0] \
        == ROWS

    # the same command again: the table's restore mark lists the day, which is not loaded twice
    again = cli(env, "restore", "--day", day.isoformat(), "--into", "new", "--target", f"{schema}.restored")
    assert again.returncode == 0 and "already restored" in again.stdout, again.stdout + again.stderr
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "restored"))).fetchone()[0] \
        == ROWS
    # a table the restore did not create is refused as before, as a usage error (exit 2: hunt18 xg)
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(schema, "mine")))
    again = cli(env, "restore", "--day", day.isoformat(), "--into", "new", "--target", f"{schema}.mine")
    assert again.returncode == 2 and "already exists" in again.stderr

    child = sql.Identifier(schema, f"events_{day:%Y%m%d}")
    conn.execute(sql.SQL("DROP TABLE {}").format(child))
    done = cli_json(env, "restore", "--day", day.isoformat(), "--into", "original")
    assert done["days"][0]["created"] == [f"{schema}.events_{day:%Y%m%d}"]
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(child)).fetchone()[0] == ROWS
    assert cli_json(env, "compare", "--day", day.isoformat())["days"][0]["result"] == "equal"

    missing = cli_json(env, "restore", "--day", days[2].isoformat(), "--into", "original", code=1)
    assert missing["missing"] == [{"table": spec.name, "day": days[2].isoformat()}]

    done = cli(env, "restore", "--into", "original")
    assert done.returncode == 2 and "--day" in done.stderr


def test_prune_removes_only_proven_days(setup, conn, s3_client, bucket, days):
    env, spec = setup
    edit_config(env, {"retention": {"keep_days": 1, "action": "drop"}})  # days[0] and days[1] are due
    cli_json(env, "archive", "--day", days[0].isoformat())
    children = [f"{spec.schema_name}.events_{d:%Y%m%d}" for d in days]

    def exists(name: str) -> bool:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    before = {k: s3_client.get_object(Bucket=bucket, Key=k)["ETag"] for k in bucket_keys(s3_client, bucket)}
    plan = cli_json(env, "prune", "--dry-run", code=1)
    assert [(d["day"], d["status"]) for d in plan["days"]] == [(days[0].isoformat(), "would remove"),
                                                               (days[1].isoformat(), "refused")]
    assert "no archive" in plan["days"][1]["message"]
    assert all(exists(c) for c in children)
    assert {k: s3_client.get_object(Bucket=bucket, Key=k)["ETag"] for k in bucket_keys(s3_client, bucket)} == before

    done = cli_json(env, "prune", "--day", days[0].isoformat())
    assert [(d["status"], d["relation"], d["rows"]) for d in done["days"]] == [("removed", children[0], ROWS)]
    assert [exists(c) for c in children] == [False, True, True]
    listed = cli_json(env, "list", "--day", days[0].isoformat())
    assert [(d["state"], d["in_source"], d["rows"]) for d in listed["days"]] == [("archived", False, ROWS)]
    assert listed["days"][0]["note"].startswith("dropped from the source at ")


def test_prune_reports_a_removal_it_could_not_record_and_goes_on(setup, conn, s3, bucket, days):
    """The first due day's "done" mark cannot be written (the store refuses the PUT): that day is
    reported failed (its rows are gone, a re-run completes the mark), the next day is still removed,
    exit code 1."""
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    env, spec = setup
    edit_config(env, {"retention": {"keep_days": 1, "action": "drop"}})  # days[0] and days[1] are due
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    with FaultProxy(s3.endpoint_url) as proxy:
        # the first day's pending mark goes through, its "done" mark is refused; the second day's pass
        proxy.add(Fault(method="PUT", path=rf"/{days[0]}\.jsonl\.zst\.manifest\.json$", action="error",
                        status=503, skip=1, times=None))
        pruned = cli_json({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "prune", code=1)
    assert [(d["day"], d["status"]) for d in pruned["days"]] == [(days[0].isoformat(), "failed"),
                                                                 (days[1].isoformat(), "removed")]
    failed = pruned["days"][0]
    assert failed["retryable"] is True and "committed in the source" in failed["message"]
    gone = [conn.execute("SELECT to_regclass(%s) IS NULL", (f"{spec.schema_name}.events_{d:%Y%m%d}",)).fetchone()[0]
            for d in days]
    assert gone == [True, True, False]


def test_dry_run_estimates_from_the_catalog_or_by_counting(conn, schema, store):
    """In-process (plan.py is the core under the dry run): catalog where it knows, a count elsewhere."""
    from archive_pipeline.core import plan

    day = dt.date(2024, 3, 10)
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.plain (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.plain SELECT g, %s::timestamptz + g * interval '1 minute' "
                         "FROM generate_series(1, 50) g").format(s), (day,))
    day_table = sql.Identifier(schema, f"ev_{day:%Y%m%d}")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(day_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 30)").format(day_table))
    conn.execute(sql.SQL("ANALYZE {}").format(day_table))
    conn.execute(sql.SQL("CREATE TABLE {}.weekly (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.weekly_w10 PARTITION OF {}.weekly FOR VALUES FROM ('2024-03-04+00') "
                         "TO ('2024-03-11+00')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.weekly SELECT g, '2024-03-04+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 167) g").format(s))
    conn.execute(sql.SQL("ANALYZE {}.weekly_w10").format(s))
    specs = parse_config({"tables": [
        {"name": f"{schema}.plain", "day_column": "at", "start_date": "2024-03-01"},
        {"name": f"{schema}.ev", "start_date": "2024-03-01",
         "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}},
        {"name": f"{schema}.weekly", "day_column": "at", "start_date": "2024-03-01",
         "partitioning": {"mode": "declarative"}},
    ]}).tables
    estimates = [plan.estimate_day(conn, spec, day) for spec in specs]
    assert [(e.rows, e.method) for e in estimates] == [(50, "count"), (30, "catalog"), (24, "catalog")]
    assert all(e.bytes > 0 for e in estimates)
    planned = plan.plan_archive(conn, specs[0], store, [day, day + dt.timedelta(days=1)], overwrite=False)
    assert [(p.action, p.estimate and p.estimate.rows) for p in planned] == [("archive", 50), ("no-data", None)]


def test_the_command_line_does_not_import_dagster():
    code = ("import sys, archive_pipeline.cli, archive_pipeline.core.restore, archive_pipeline.core.lifecycle; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_aws')))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_manifests_found_by_one_listing(conn, schema, store, days):
    """In-process: over more than a few days, list reads the bucket once and GETs only archived days."""
    from archive_pipeline.core import plan
    from archive_pipeline.core.archive import archive_partition

    create_sample_events(conn, days, 50, schema=schema)
    spec = parse_config({"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": "2024-01-01", "partitioning": {"mode": "declarative"}}]}).tables[0]
    for day in days[:2]:
        archive_partition(conn, spec, day, store)
    span = plan.days_between(days[0] - dt.timedelta(days=5), days[-1])
    calls: list[str] = []
    store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    found = plan.lookup_manifests(store, spec, span)
    assert {d for d, f in found.items() if f.archived} == set(days[:2])
    assert all(found[d].archived.rows == 50 for d in days[:2])
    assert sorted(calls) == ["GetObject", "GetObject", "ListObjectsV2"]
