"""Hunt 10 (pw): restore of ranges that mix archived, empty, removed, never archived and damaged days."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
import yaml
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_cli import ROOT, cli, cli_json

PREFIX = "cli"


@pytest.fixture
def week(pg, conn, schema, s3, bucket, tmp_path):
    days = [utc_today() - dt.timedelta(days=n) for n in range(8, 1, -1)]
    create_sample_events(conn, days, 50, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": days[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "format": "jsonl", "compression": "zstd"}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX=PREFIX, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    spec = parse_config({"tables": [table]}).tables[0]
    return env, spec, days


def _json(done):
    return json.loads(done.stdout)


def test_a_range_restore_stopped_by_a_damaged_manifest_names_the_days_after_it_and_how_to_restore_them(
        week, conn, s3_client, bucket):
    """A user recovers a week: `restore --from D0 --to D6 --into new --target T --json`. D0..D3 are archived,
    D4's manifest is damaged (not JSON), D5 and D6 are archived. The restore commits D0..D3, stops at D4 (as
    documented) and exits 1 with the error "the manifest ... of D4 cannot be trusted ...; to fix: restore it from
    a replica or backup of the bucket, or archive the day again ...; the days listed above stay restored".
    D5 and D6 are in the archive but were never tried, and nothing says so: not the JSON answer (only the
    committed days and the missing ones), not the message, whose remedy is about D4 alone. Running the same
    command again stops at D4 again, forever (not retryable), so the user cannot learn from the answer that the
    rest of the week is still to be restored, nor how. A cancelled range restore names the command that
    restores the rest; a failed one must too: the answer should name D5 and D6 as not restored and give the
    command for them (`restore ... --from D5 --to D6 --into existing --target T`)."""
    env, spec, days = week
    a = cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[6].isoformat())
    assert [d["status"] for d in a["days"]] == ["archived"] * 7, a
    key = next(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]
               if days[4].isoformat() in o["Key"] and o["Key"].endswith(".manifest.json"))
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"{not json")
    target = f"{spec.schema_name}.back"
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[6].isoformat(), "--into", "new",
               "--target", target, "--json")
    answer = _json(done)
    assert done.returncode == 1 and answer["retryable"] is False, done.stdout + done.stderr
    assert [d["day"] for d in answer["days"]] == [d.isoformat() for d in days[:4]], answer
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.schema_name, "back"))
                        ).fetchone()[0] == 4 * 50  # committed per day
    said = done.stdout + done.stderr
    assert days[5].isoformat() in said and days[6].isoformat() in said, said  # the days never tried are named
    assert f"--from {days[5].isoformat()}" in answer["error"], answer["error"]  # and the command for them


def test_a_range_restored_into_a_new_table_across_a_column_added_to_the_source_is_not_refused_by_its_own_table(
        pg, conn, schema, s3, bucket, tmp_path):
    """A plain table (column mode) gained a column mid-month (`ALTER TABLE ev ADD COLUMN added int NOT NULL
    DEFAULT 5`): D0 and D1 were archived before, D2 and D3 after, so their manifests' table definitions
    differ. Retention deleted the rows; the user recovers the range as the README says:
    `restore --from D0 --to D4 --into new --target T`. The first day creates T from D0's definition (no
    `added`), D1 loads, then D2 fails: "column "added" of relation "back" does not exist ... to fix: ... add the
    one named, or restore into a new table (--into new)" (exit 2, as a configuration error). That remedy is the
    command that just failed: run again (T carries the restore mark) it resumes at D2 and fails the same way;
    with another --target it fails at the same day again. A table the restore created itself from the manifests
    must take each day's archived columns (a column added since the first day comes in as a nullable column
    of its recorded type), so the range restores: every day's rows equal its archive, D4 (never archived)
    named as missing, exit 1 for that only."""
    days = [utc_today() - dt.timedelta(days=n) for n in range(6, 1, -1)]
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(s))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": days[0].isoformat()}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX=PREFIX, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")

    def fill(i: int) -> None:
        conn.execute(sql.SQL("INSERT INTO {}.ev (id, at, note) SELECT g, %s::timestamptz + g * interval '1 minute', "
                             "'n' || g FROM generate_series(%s::int, %s::int) g").format(s),
                     (days[i].isoformat(), i * 100, i * 100 + 4))

    fill(0), fill(1)
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    conn.execute(sql.SQL("ALTER TABLE {}.ev ADD COLUMN added int NOT NULL DEFAULT 5").format(s))
    fill(2), fill(3)
    cli_json(env, "archive", "--from", days[2].isoformat(), "--to", days[3].isoformat())
    before = conn.execute(sql.SQL("SELECT id, at, note, CASE WHEN id >= 200 THEN added END FROM {}.ev ORDER BY id"
                                  ).format(s)).fetchall()
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))  # retention (delete) removed the month

    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[4].isoformat(), "--into", "new",
               "--target", f"{schema}.back", "--json")
    answer = _json(done)
    assert "error" not in answer, answer.get("error")
    assert done.returncode == 1 and [m["day"] for m in answer["missing"]] == [days[4].isoformat()], answer
    assert [d["day"] for d in answer["days"]] == [d.isoformat() for d in days[:4]], answer
    back = conn.execute(sql.SQL("SELECT id, at, note, added FROM {}.back ORDER BY id").format(s)).fetchall()
    assert back == before  # each row once, as archived (the days before the column without it)
