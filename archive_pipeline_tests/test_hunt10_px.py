"""Hunt 10 (px): a review of the last fixes (verify --deep's period, _the_rest, restore._widen_own)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex

import yaml
from psycopg import sql

from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_cli import ROOT, cli, cli_json
from archive_pipeline_tests.test_hunt10_pw import _json, week  # noqa: F401 (a fixture)

PREFIX = "cli"


def _env(pg, s3, bucket, config):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX=PREFIX, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    return env


def test_verify_deep_passes_a_removed_day_whose_zone_changed_that_plain_verify_refuses(pg, s3, bucket, conn, schema,
                                                                                      tmp_path):
    """A daily table archived in UTC; retention (delete) removed the day from the source (manifest `removed:
    done`). The user then sets `timezone: Europe/Berlin` and runs `verify --json`: the day is a problem, "an
    archive of another period" (the archive holds the UTC day's rows, not Berlin's). `verify --deep --json`, the
    stronger check, says the same day is ok (no problem, no remedy): since the last fix verify --deep calls
    verify_archive(period=None) leaving the period to the proof, but deep_verify's _refuse_layout_change returns
    early for a removed day, so nobody checks the period and the day is proven "by its archive alone". --deep
    must never pass what plain verify refuses: it should report the other period (or no verdict), not ok."""
    s = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(s))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-10 23:30+00')").format(s))
    table = dict(name=f"{schema}.t", day_column="at", start_date="2024-03-10", format="jsonl",
                 partitioning={"mode": "column"}, retention={"keep_days": 1, "action": "delete"})
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = _env(pg, s3, bucket, config)
    cli_json(env, "archive", "--day", "2024-03-10")
    pruned = cli(env, "prune", "--json")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(s)).fetchone()[0] == 0  # (the premise: removed)
    config.write_text(yaml.safe_dump({"tables": [dict(table, timezone="Europe/Berlin")]}))

    light = cli(env, "verify", "--day", "2024-03-10", "--json")
    [plain] = json.loads(light.stdout)["days"]
    assert plain["problems"], plain  # (the premise: plain verify names the other period)
    deep = cli(env, "verify", "--deep", "--day", "2024-03-10", "--json")
    [day] = json.loads(deep.stdout)["days"]
    assert day["problems"], day  # never ok where plain verify is not


def test_a_range_restore_into_new_whose_first_day_fails_for_good_names_a_command_that_restores_the_rest(
        week, conn):  # noqa: F811
    """A user recovers a week into a new table: `restore --from D0 --to D6 --into new --target T --json`; D0's
    manifest is damaged. The restore stops at D0 (nothing committed, T not created) and, since the last fix,
    says "then: run archive-pipeline restore --table X --from D1 --to D6 --into existing --target T to restore
    the rest". T does not exist: that command fails ("the target ... does not exist"), so the answer's remedy
    does not restore the rest. Where the run created nothing, the command should keep `--into new` (or
    otherwise be one that works): run as given, it restores D1..D6."""
    env, spec, days = week
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[6].isoformat())
    import boto3  # (the manifest of D0 made unreadable)
    s3c = boto3.client("s3", endpoint_url=env["ARCHIVE_S3_ENDPOINT_URL"], aws_access_key_id="testing",
                       aws_secret_access_key="testing", region_name="us-east-1")
    key = next(o["Key"] for o in s3c.list_objects_v2(Bucket=env["ARCHIVE_S3_BUCKET"])["Contents"]
               if days[0].isoformat() in o["Key"] and o["Key"].endswith(".manifest.json"))
    s3c.put_object(Bucket=env["ARCHIVE_S3_BUCKET"], Key=key, Body=b"{not json")
    target = f"{spec.schema_name}.back"
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[6].isoformat(), "--into", "new",
               "--target", target, "--json")
    error = _json(done)["error"]
    assert "then: run " in error, error
    suggested = shlex.split(error.split("then: run ", 1)[1].split(" to restore the rest", 1)[0])
    assert suggested[:2] == ["archive-pipeline", "restore"], suggested
    again = cli(env, *suggested[1:], "--json")
    assert again.returncode == 0, again.stdout + again.stderr


def _ev_range(pg, conn, schema, s3, bucket, tmp_path, change: str):
    """ev archived D0, D1; `change` applied to the source; D2, D3 archived; the rows deleted (retention)."""
    days = [utc_today() - dt.timedelta(days=n) for n in range(6, 2, -1)]
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, note text NOT NULL, "
                         "extra int)").format(s))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": days[0].isoformat()}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = _env(pg, s3, bucket, config)

    def fill(i: int) -> None:
        conn.execute(sql.SQL("INSERT INTO {}.ev (id, at) SELECT g, %s::timestamptz + g * interval '1 minute' "
                             "FROM generate_series(%s::int, %s::int) g").format(s) if i >= 2 else
                     sql.SQL("INSERT INTO {}.ev (id, at, note) SELECT g, %s::timestamptz + g * interval '1 minute', "
                             "'n' || g FROM generate_series(%s::int, %s::int) g").format(s),
                     (days[i].isoformat(), i * 100, i * 100 + 4))

    fill(0), fill(1)
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    conn.execute(sql.SQL(change).format(s))
    fill(2), fill(3)
    cli_json(env, "archive", "--from", days[2].isoformat(), "--to", days[3].isoformat())
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))
    return env, days


def test_a_range_restored_into_a_new_table_across_a_not_null_column_dropped_from_the_source_is_not_refused(
        pg, conn, schema, s3, bucket, tmp_path):
    """The mirror of the fixed case (a column added mid-range): the source DROPPED a NOT NULL column mid-month
    (`ALTER TABLE ev DROP COLUMN note`). D0, D1 were archived with it, D2, D3 without. The user recovers the
    range: `restore --from D0 --to D3 --into new --target T`. T is created from D0's definition (note text NOT
    NULL), D1 loads, D2 fails for good: `null value in column "note" ... violates not-null constraint`, and
    running it again (T carries the mark: resumed) fails at D2 the same way, forever. The restore's own table
    refuses a day of the range; as _widen_own takes later days' added columns, a column a later day lacks must
    not refuse it (its NOT NULL dropped on the table the restore created), so every day restores."""
    env, days = _ev_range(pg, conn, schema, s3, bucket, tmp_path, "ALTER TABLE {}.ev DROP COLUMN note")
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[3].isoformat(), "--into", "new",
               "--target", f"{schema}.back", "--json")
    answer = _json(done)
    assert done.returncode == 0 and "error" not in answer, answer.get("error")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.back").format(sql.Identifier(schema))).fetchone()[0] == 20


def test_a_range_restored_into_a_new_table_across_a_renamed_column_is_not_refused(
        pg, conn, schema, s3, bucket, tmp_path):
    """The source RENAMED a NOT NULL column mid-month (`ALTER TABLE ev RENAME note TO label`, then rows with a
    label). `restore --from D0 --to D3 --into new --target T`: T is created with `note NOT NULL`; for D2
    _widen_own adds `label` (nullable) but `note` stays NOT NULL, so D2 fails for good (not-null violation), on
    every run again. The restore's own table should take D2 (it holds D2's columns; the one D2 lacks no longer
    refuses it)."""
    env, days = _ev_range(pg, conn, schema, s3, bucket, tmp_path,
                          "ALTER TABLE {0}.ev RENAME note TO label; ALTER TABLE {0}.ev ALTER label SET DEFAULT 'x'")
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[3].isoformat(), "--into", "new",
               "--target", f"{schema}.back", "--json")
    answer = _json(done)
    assert done.returncode == 0 and "error" not in answer, answer.get("error")
