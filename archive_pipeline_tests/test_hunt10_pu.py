"""Hunt 10 (pu): the README's promises taken literally (a date day column through a zone change, UNLOGGED tables
on a standby, days after today refused, a removal tidying its day's leftovers, list --check-source naming a layout
change, verify's word on a layout change). Real PostgreSQL and moto S3 over HTTP, the CLI as a subprocess."""

from __future__ import annotations

import json

from psycopg import sql

from archive_pipeline_tests.test_hunt10_pe import cli, make_env, write_config


def test_verify_deep_gives_no_verdict_on_a_zone_change_and_never_calls_the_archive_damaged(pg, s3, bucket, conn,
                                                                                          schema, tmp_path):
    """A daily table (timestamptz day column) archived in UTC; the user then sets ``timezone: Europe/Berlin`` and
    runs ``archive-pipeline verify --deep --json`` (or plain ``verify``). README (a zone, granularity or day_column
    change): "is named as that by compare, list --check-source, verify (--deep: no verdict, archive the day again
    with overwrite)". A day_column change gets exactly that: "not checked (not retryable) ... no verdict on the
    archive", remedy "archive the day again with overwrite ...". A zone change does not: the day is a verdict
    ("ok": false, checked "deep", listed as a problem of the archive), and its remedy is the one for a damaged
    archive: "... (a new generation; the damaged one is kept where it may hold rows); if the source no longer holds
    it, restore the object or its manifest from a backup of the bucket (its versions, a replica) before anything
    else" -- sending the user to restore an intact object from backups. Cause: verify.verify_archive turns
    manifest.another_period into a plain problem before deep_verify's _refuse_layout_change (which says "not
    checked") is reached, and cli._verify_remedy gives every problem not "not checked" the damage remedy. Should:
    no verdict ("not checked", as for a day_column change), the remedy archiving again with overwrite (or
    configuring the table as it was), never the damaged archive's backup advice."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL)").format(sql.Identifier(schema, "t")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00')").format(sql.Identifier(schema, "t")))
    table = dict(name=f"{schema}.t", day_column="at", start_date="2024-03-10", format="jsonl",
                 partitioning={"mode": "column"})
    env = make_env(pg, s3.endpoint_url, bucket)
    archived = cli(env, "archive", "--config", str(write_config(tmp_path, [table])), "--day", "2024-03-10", "--json")
    assert archived.returncode == 0, archived.stderr
    config = write_config(tmp_path, [dict(table, timezone="Europe/Berlin")])

    deep = cli(env, "verify", "--deep", "--config", str(config), "--day", "2024-03-10", "--json")
    [day] = json.loads(deep.stdout)["days"]
    assert "Europe/Berlin" in day["problems"][0], day  # (the premise: the change is named)
    assert day["problems"][0].startswith("not checked"), day  # README: --deep gives no verdict
    assert "backup" not in day["remedy"] and "damaged" not in day["remedy"], day["remedy"]

    light = cli(env, "verify", "--config", str(config), "--day", "2024-03-10", "--json")
    [day] = json.loads(light.stdout)["days"]
    assert "backup" not in day.get("remedy", "") and "damaged" not in day.get("remedy", ""), day
