"""Hunt 15 (uh): "nothing the README says is false" -- retention / removal, verify, compare, list and what a green
(or red) answer means, tried as a user would (the command line as real subprocesses, and the core API)."""

from __future__ import annotations

import datetime as dt
import json

import yaml

from archive_pipeline_tests.test_cli import cli
from archive_pipeline_tests.test_hunt10_px import _env

DAY = dt.date(2024, 3, 10)


def _json_table(pg, s3, bucket, conn, schema, tmp_path):
    """A column-mode table archived as JSONL (the default format) with a json value holding a raw line break between
    its tokens: the README's type table says JSONL keeps such a json "not exact" (the line break becomes a space)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, j json)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, '{DAY} 01:00+00', %s), (2, '{DAY} 02:00+00', '[1]')",
                 ('{"a":\n 1}',))
    table = dict(name=f"{schema}.ev", day_column="at", start_date=DAY.isoformat(), format="jsonl",
                 partitioning={"mode": "column"}, retention={"keep_days": 1, "action": "delete"})
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    return _env(pg, s3, bucket, config)


def test_verify_deep_remedy_for_an_inexact_json_column_is_an_overwrite_that_reproduces_the_same_failure(
        pg, s3, bucket, conn, schema, tmp_path):
    """README (Command line): "`verify` says what to do about each failed day"; (What "archived" guarantees): "The
    manifest records per column how it was encoded and whether that is exact ... A restore whose fingerprint
    differs names the columns the manifest records as not exact, the likely cause."

    Scenario: a table (format jsonl, not strict) whose json column ``j`` holds ``{"a":\\n 1}``, which the type table
    documents as not exact in JSONL. ``archive`` succeeds (the manifest records ``j`` as exact: false);
    ``verify --deep --day`` fails the day.

    Now: the problems say "the archive's rows are not the ones recorded" (read: the archive is damaged), without a
    word about ``j`` being recorded as not exact, and the remedy says to archive the day again with ``--overwrite``
    ("a new generation; the damaged one is kept"). Followed literally, that overwrite writes generation 2 with the
    same lossy encoding, and ``verify --deep`` fails the day again exactly as before (and ``prune`` refuses the day
    for ever with the same "not proven" words): the remedy cannot work.

    Expected: as restore does (restore._inexact_explained), the verdict names the column(s) the manifest records as
    not exact (``j``) as the likely cause, and the remedy says to archive the table in a format that keeps them
    (csv or parquet, strict: true) with --overwrite, not to repeat the same overwrite. Fix idea: deep_verify (and
    the CLI's _verify_remedy) use _inexact_explained when the loaded rows' fingerprint differs from the manifest's."""
    env = _json_table(pg, s3, bucket, conn, schema, tmp_path)
    assert cli(env, "archive", "--day", DAY.isoformat()).returncode == 0
    first = cli(env, "verify", "--deep", "--day", DAY.isoformat(), "--json")
    assert first.returncode == 1, first.stdout + first.stderr  # (the premise: the proof fails)
    remedy = json.loads(first.stdout)["days"][0]["remedy"]
    # the remedy, followed literally
    assert cli(env, "archive", "--day", DAY.isoformat(), "--overwrite").returncode == 0
    again = cli(env, "verify", "--deep", "--day", DAY.isoformat(), "--json")
    day = json.loads(again.stdout)["days"][0]
    said = " ".join(day["problems"]) + " " + day.get("remedy", "")
    assert again.returncode == 0 or ("'j'" in said and "exact" in said and ("csv" in said or "parquet" in said)), (
        f"remedy given: {remedy}\nafter following it, verify --deep still says: {said}")
