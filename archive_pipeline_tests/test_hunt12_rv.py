"""Hunt 12 (rv): a review of the last fixes (environment secrets redacted everywhere, former keys tidied,
wall-clock expression keys, not-checked days, 404 deletes, Parquet readers)."""

from __future__ import annotations

import datetime as dt
import json
import os

import yaml
from psycopg import sql

from archive_pipeline_tests.test_cli import ROOT, cli

UTC = dt.UTC


def _env(pg, s3, bucket, config, secret="testing"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="cli", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="test", ARCHIVE_S3_SECRET_ACCESS_KEY=secret, COLUMNS="200")
    return env


def test_an_s3_secret_that_is_a_common_word_does_not_blank_table_names_in_messages(pg, s3, bucket, conn, schema,
                                                                                  tmp_path):
    """The S3 secret key is LocalStack's documented default, ``test`` (moto's is ``testing``), and the table
    is ``<schema>.test_results``, not created yet. Since redact hides the environment's S3 secrets
    (ARCHIVE_S3_SECRET_ACCESS_KEY, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) wherever they stand in any message,
    as substrings from 4 characters on, `archive --day` says the table "<schema>.***_results" does not exist,
    and its remedy names "***_results" too: no table named, nothing pasteable, and a reader who knows the
    configured table name reads the secret off the '***'. Our own words are mangled as well ("la***" for
    "latest"). Expected: the message names <schema>.test_results (the secret appears nowhere in it: there is
    nothing to hide). Fix idea: hide the environment's secrets only in text that came from outside (botocore's,
    http.client's messages), and only values long enough to be secrets (a real secret key is 40 characters),
    or only where no letter or digit adjoins them."""
    table = dict(name=f"{schema}.test_results", day_column="at", start_date="2024-03-10", format="jsonl",
                 partitioning={"mode": "column"})
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = _env(pg, s3, bucket, config, secret="test")
    done = cli(env, "archive", "--day", "2024-03-10")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output  # (the premise: the table is missing)
    assert "***" not in output and f"{schema}.test_results" in output, output
