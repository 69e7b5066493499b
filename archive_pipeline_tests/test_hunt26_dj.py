"""Hunt 26 (dj): a line-by-line review of the previous session's fix commits to the core (9fdbfc4..27b1bf2), looking
for the same bug a fix closed still alive on a sibling path."""

from __future__ import annotations

import datetime as dt
import json

from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config

DAY = dt.date(2024, 3, 10)


def test_verify_deep_after_a_column_was_added_calls_the_intact_archive_damaged_and_sends_to_a_backup(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: a table ev (id, at date, v text) with 2 rows on 2024-03-10, archived as JSONL. A migration then
    adds a column (ALTER TABLE ev ADD COLUMN note text), as schemas do. The user runs
    `verify --deep --day 2024-03-10 --json` and reads the day's remedy.

    Now: the proof loads the archive and finds its rows exactly the ones recorded (verify._compare: loaded ==
    recorded, no problem), then the source's side raises ColumnsChangedError ("the source's columns are now [...],
    the archive's [...]"; verify.archived_order), which _compare appends as a plain str
    (``return [*problems, str(exc)]``). Since 3ff817d the remedy follows each problem's kind, and a plain str that
    does not start with "the source's rows for" is verify.problem_kind's DAMAGE: cli._verify_remedy answers "... (a
    new generation; the damaged one is kept where it may hold rows); if the source no longer holds it, restore the
    object or its manifest from a backup of the bucket", and the Dagster check says "NOT intact" (source_side_only is
    False). The archive is intact; nothing needs a backup. 8889899 gave the same source-side verdict of an EMPTY
    archive (its _source_changed, ColumnsChangedError's text included) kind SOURCE; the non-empty archive's path
    through _compare was left as damage.

    Should: a source whose columns changed since the day was archived is the source's problem, not damage: the
    remedy is the ColumnsChangedError's own (archive the day again with overwrite if the new columns are right),
    never "the damaged one" nor a restore from a backup. Fix idea: in verify._compare (and _difference), append
    ``Problem(str(exc), SOURCE, exc.remedy)`` for a ColumnsChangedError (NOT_CHECKED where it is retryable: the
    columns changed while being compared), so problem_kind, source_side_only and both layers' remedies see it."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, v text)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, 'a'), (2, %s, 'b')", (DAY, DAY))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    assert cli(env, "archive", "--day", str(DAY)).returncode == 0
    conn.execute(f"ALTER TABLE {schema}.ev ADD COLUMN note text")
    done = cli(env, "verify", "--deep", "--day", str(DAY), "--json")
    day = json.loads(done.stdout)["days"][0]
    assert done.returncode == 1 and "columns are now" in day["problems"][0], done.stdout
    assert "damaged" not in day["remedy"] and "backup" not in day["remedy"], day["remedy"]
    assert "--overwrite" in day["remedy"], day["remedy"]



def test_verify_deep_whose_source_columns_change_during_the_proof_gives_a_verdict_of_damage_not_not_checked(
        pg, s3, bucket, conn, schema, tmp_path, monkeypatch):
    """Scenario: the same table ev, 2 rows on 2024-03-10, archived as JSONL. While `verify --deep --day 2024-03-10`
    is proving the day, a migration commits ALTER TABLE ev ADD COLUMN note text, between the proof's description of
    the source's columns and its fingerprint of them (injected at verify.archived_order, which runs right after the
    description: the ALTER comes from another session and commits; nothing is locked yet).

    Now: verify._columns_unchanged sees the columns changed during the comparison and raises ColumnsChangedError
    with retryable=True ("the source's columns changed while it was being compared ...; to fix: compare again"):
    no verdict either way. verify._compare turns it into a plain str problem (``return [*problems, str(exc)]``),
    which verify.problem_kind calls DAMAGE, so the day FAILS with cli._verify_remedy's damaged archive's remedy ("the
    damaged one is kept ...; restore the object or its manifest from a backup of the bucket"). A passing race is
    reported as a damaged archive; the same retryable failure anywhere else in the proof is "not checked
    (retryable)" with "verify the day again".

    Should: the day is not checked (retryable): its remedy says to verify it again (the cause's own: compare again,
    archive with overwrite if the new columns are right), never that the archive is damaged. Fix idea: in
    verify._compare, re-raise a retryable ColumnsChangedError (deep_verify_of's callers make it NOT_CHECKED, as for
    any retryable error), or append it as ``Problem(str(exc), NOT_CHECKED, exc.remedy)``."""
    import psycopg

    from archive_pipeline.core import verify

    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, v text)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, 'a'), (2, %s, 'b')", (DAY, DAY))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    assert cli(env, "archive", "--day", str(DAY)).returncode == 0
    original, altered = verify.archived_order, []

    def migrated_meanwhile(*args, **kwargs):
        if not altered:  # the migration commits once, after the proof described the columns
            altered.append(True)
            with psycopg.connect(pg.dsn, autocommit=True) as other:
                other.execute("SET lock_timeout = '5s'")  # (a failure, never a hang, if anything held the table)
                other.execute(f"ALTER TABLE {schema}.ev ADD COLUMN note text")
        return original(*args, **kwargs)

    monkeypatch.setattr(verify, "archived_order", migrated_meanwhile)
    done = cli(env, "verify", "--deep", "--day", str(DAY), "--json")
    day = json.loads(done.stdout)["days"][0]
    assert altered and done.returncode == 1 and "while it was being compared" in day["problems"][0], done.stdout
    assert "damaged" not in day["remedy"] and "backup" not in day["remedy"], day["remedy"]
    assert "verify" in day["remedy"], day["remedy"]


def test_verify_deep_names_a_malformed_csv_row_by_its_line_in_an_object_whose_header_spans_two_lines(
        conn, schema, bucket, store, s3_client, temp_dir):
    """Scenario: a table ev (id int, at date, "two<LF>lines" text), 3 rows on 2024-03-10, archived as CSV: the
    column name holding a line feed is quoted across two lines of the header (formats.csv.header_lines). Someone
    who may write to the bucket splits the third row's last field in two (a consistent forgery: the manifest's digests
    updated). `verify --deep` then names the row COPY refused by its line in the object.

    Now (d02a2a4): COPY counts the lines after the header, which restore reads itself, and verify._load added 1 for
    it: "line 4 of the object", where the row is on line 5 (the header is two lines).

    Should: the line the row is on in the object (5): COPY's line plus as many lines as the header holds."""
    from psycopg import sql

    from archive_pipeline.core import keys
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.verify import deep_verify
    from archive_pipeline_tests.helpers import download, forge_object

    conn.execute(sql.SQL('CREATE TABLE {} (id int, at date, "two\nlines" text)').format(sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, 'v' || g FROM generate_series(1, 3) g").format(
        sql.Identifier(schema, "ev")), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=str(DAY), format="csv", compression="none")
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 3
    key = keys.table_day_key(spec, spec.period(DAY), "archive")
    body = download(s3_client, bucket, key)
    assert body.startswith(b'id,at,"two\nlines"\n') and body.endswith(b"v3\n"), body
    forge_object(s3_client, bucket, key, keys.manifest_key(key), body[:-3] + b",3\n")  # (its size kept)
    problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    assert len(problems) == 1 and "line 5 of the object" in problems[0], problems
