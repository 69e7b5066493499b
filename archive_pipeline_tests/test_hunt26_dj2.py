"""Hunt 26 (dj2): the fix of dj made verify --deep call a source whose columns changed WHILE the day was being
compared (a retryable ColumnsChangedError: a migration committed mid-proof) "not checked (retryable)", no verdict
either way. compare and list --check-source fingerprint the source through the same verify.source_fingerprint and
still took that race for a verdict: the day "differs" / "changed"."""

from __future__ import annotations

import datetime as dt
import json

import psycopg

from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config

DAY = dt.date(2024, 3, 10)


def _table(conn, schema: str, pg, s3, bucket, tmp_path, *, archived: bool = True) -> dict:
    """ev (id, at date, v text) with 2 rows on DAY (archived as JSONL unless not ``archived``): the CLI's env."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, v text)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, 'a'), (2, %s, 'b')", (DAY, DAY))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    if archived:
        assert cli(env, "archive", "--day", str(DAY)).returncode == 0
    return env


def _migrated_meanwhile(monkeypatch, pg, schema: str) -> list:
    """A migration that commits ALTER TABLE ev ADD COLUMN note text from another session once, right after the
    comparison described the source's columns (at verify.archived_order, before the fingerprint): what is
    compared then sees them change while it compares. Returns the list that says whether it ran."""
    from archive_pipeline.core import verify

    original, altered = verify.archived_order, []

    def migrated(*args, **kwargs):
        if not altered:
            altered.append(True)
            with psycopg.connect(pg.dsn, autocommit=True) as other:
                other.execute("SET lock_timeout = '5s'")  # (a failure, never a hang, if anything held the table)
                other.execute(f"ALTER TABLE {schema}.ev ADD COLUMN note text")
        return original(*args, **kwargs)

    monkeypatch.setattr(verify, "archived_order", migrated)
    return altered


def test_compare_whose_source_columns_change_during_the_comparison_says_differs_not_not_checked(
        pg, s3, bucket, conn, schema, tmp_path, monkeypatch):
    """Scenario: a table ev (id, at date, v text) with 2 rows on 2024-03-10, archived as JSONL. While
    `compare --day 2024-03-10 --json` fingerprints the day, a migration commits ALTER TABLE ev ADD COLUMN note text
    from another session, between the comparison's description of the source's columns and its fingerprint
    (injected at verify.archived_order). The user runs compare again afterwards.

    Now: verify._columns_unchanged raises ColumnsChangedError with retryable=True ("the source's columns changed
    while it was being compared ...; to fix: compare again"), and plan._compare_days turns every
    ColumnsChangedError into a Comparison "differs": a race that proved nothing is reported as a difference between
    source and archive, which a script guarding an overwrite or a DROP reads as a verdict. verify --deep (fix dj,
    verify.source_columns_changed) calls the same cause "not checked (retryable)".

    Should: the day is "not-checked" with a note "not checked (retryable): ... while it was being compared ..."
    (exit 1, as for any day not checked); compared again, with the new column committed, it "differs" (the
    columns changed since the archive: a verdict)."""
    env = _table(conn, schema, pg, s3, bucket, tmp_path)
    altered = _migrated_meanwhile(monkeypatch, pg, schema)
    done = cli(env, "compare", "--day", str(DAY), "--json")
    [day] = json.loads(done.stdout)["days"]
    assert altered and done.returncode == 1, done
    assert day["result"] == "not-checked", day
    assert day["note"].startswith("not checked (retryable): ") and "while it was being compared" in day["note"], day
    again = cli(env, "compare", "--day", str(DAY), "--json")
    [day] = json.loads(again.stdout)["days"]
    assert again.returncode == 1 and day["result"] == "differs" and "columns are now" in day["note"], day


def test_compare_of_a_day_not_archived_whose_columns_change_during_the_comparison_does_not_crash(
        pg, s3, bucket, conn, schema, tmp_path, monkeypatch):
    """Scenario: the same table ev, 2 rows on 2024-03-10, never archived. While `compare --day 2024-03-10 --json`
    fingerprints the day, a migration commits ALTER TABLE ev ADD COLUMN note text (as above).

    Now: verify._columns_unchanged raises its retryable ColumnsChangedError even where no archive's columns were
    asked for, and plan._compare_days' handler reads ``archived.removed`` of an archive that is None: an
    AttributeError, and the command dies with "unexpected error" for a passing migration.

    Should: the day is "not-checked" ("not checked (retryable): ... while it was being compared ..."), exit 1, no
    crash."""
    env = _table(conn, schema, pg, s3, bucket, tmp_path, archived=False)
    altered = _migrated_meanwhile(monkeypatch, pg, schema)
    done = cli(env, "compare", "--day", str(DAY), "--json")
    answer = json.loads(done.stdout)
    assert altered and done.returncode == 1 and "days" in answer, answer
    [day] = answer["days"]
    assert day["result"] == "not-checked" and "while it was being compared" in day["note"], day


def test_list_check_source_whose_source_columns_change_during_the_check_says_changed_not_not_checked(
        pg, s3, bucket, conn, schema, tmp_path, monkeypatch):
    """Scenario: the same table ev, 2 rows on 2024-03-10, archived as JSONL. While `list --check-source --day
    2024-03-10 --json` fingerprints the day, a migration commits ALTER TABLE ev ADD COLUMN note text (as above).

    Now: plan._day_statuses turns every ColumnsChangedError into the state "changed" with the error's message as
    its note: the retryable one ("the source's columns changed while it was being compared") is listed as a
    changed day, a verdict, where nothing was known.

    Should: the day's state is "not-checked", its note "not checked (retryable): ... while it was being compared
    ..." (exit 1, as for any day that could not be checked), as verify --deep says of the same cause."""
    env = _table(conn, schema, pg, s3, bucket, tmp_path)
    altered = _migrated_meanwhile(monkeypatch, pg, schema)
    done = cli(env, "list", "--check-source", "--day", str(DAY), "--json")
    assert altered and done.returncode == 1, done
    [day] = [d for d in json.loads(done.stdout)["days"] if d["day"] == str(DAY)]
    assert day["state"] == "not-checked", day
    assert day["note"].startswith("not checked (retryable): ") and "while it was being compared" in day["note"], day
