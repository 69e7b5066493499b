"""Hunt 11 (qk): a review of the session's fresh fixes (names printed verbatim, read_relations, the removal's
locked-relation checks, the tidy before the done mark, between_days, TargetError, _widen_own)."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
import yaml
from click.testing import CliRunner
from psycopg import sql

from archive_pipeline.cli import main

DAY = dt.date(2024, 3, 10)


def _cli(env: dict[str, str], *args: str):
    done = CliRunner(env=env).invoke(main, list(args))
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done


def _env(pg, s3, bucket, config) -> dict[str, str]:
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250"}


def test_json_output_gives_a_table_name_and_its_key_as_they_are_not_reworded(pg, s3, bucket, conn, schema,
                                                                                tmp_path):
    """A table named ``imports (overwrite)`` (PostgreSQL takes any text as a quoted name), archived, then listed
    with ``--json``. The fix of hunt 11 qb prints names and keys verbatim in the tables and lines of the text
    output (``_verbatim``), but ``Run.emit`` still passes the whole JSON text through ``_for_the_cli``, the
    rewording of core messages: ``list --json`` and ``archive --json`` give ``"table": "<schema>.imports
    (--overwrite)"`` and a ``"key"`` ending ``imports (--overwrite)/2024-03-10.jsonl...``: a table that does not
    exist and an S3 key that does not exist, to a script that reads the JSON precisely to use them. What should
    happen: the JSON's names and keys are the configuration's and the store's, byte for byte (only messages may be
    reworded). Fix idea: reword the message fields (message, error, remedy, note, problems) before json.dumps,
    not the dumped text."""
    name = "imports (overwrite)"
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00')").format(table))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.{name}", "day_column": "at",
                                                  "start_date": DAY.isoformat()}]}), encoding="utf-8")
    env = _env(pg, s3, bucket, config)
    archived = _cli(env, "archive", "--day", DAY.isoformat(), "--json")
    assert archived.exit_code == 0, archived.stdout + archived.stderr
    listed = _cli(env, "list", "--json")
    assert listed.exit_code == 0, listed.stdout + listed.stderr
    for done in (archived, listed):
        day = json.loads(done.stdout)["days"][0]
        assert day["table"] == f"{schema}.{name}", day
        assert name in day["key"] and "(--overwrite)" not in day["key"], day
