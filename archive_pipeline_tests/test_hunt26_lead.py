"""Hunt 26 (lead): what the lead found while merging the session's hunts."""

from __future__ import annotations

import pytest
import yaml
from psycopg import sql

from archive_pipeline_tests.test_cli import cli
from archive_pipeline_tests.test_hunt10_px import _env


def test_compare_of_a_day_before_start_date_says_why_once(pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: ``archive-pipeline compare --day 2024-03-01`` for a table whose start_date is 2024-03-10.

    Before: compare asked for the table's days twice (once to compare them, once more for its "nothing was
    compared" line), and ``Run.days`` printed its note each time: "no daily period of the table in the selection"
    twice on stderr.

    Should: the note once per table, the exit code 1 (nothing compared is never a pass)."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(sql.Identifier(schema, "t")))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [dict(name=f"{schema}.t", day_column="at",
                                                      start_date="2024-03-10")]}))
    done = cli(_env(pg, s3, bucket, config), "compare", "--day", "2024-03-01")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("no daily period of the table in the selection") == 1, done.stderr


def test_a_json_values_surrounding_blanks_are_said_to_be_lost_in_jsonl(conn, schema, store, temp_dir):
    """Scenario: a json column holding ``'  {"a": 1}  '`` (blanks around the value, which json keeps) archived as
    JSONL and restored.

    Before: the restore was refused (the value comes back as ``{"a": 1}``, so the fingerprint differs) blaming the
    column's inexact encoding, whose note named line breaks and top-level strings only: not what changed here.

    Should: the note (in the manifest and in the refusal) says blanks around the value are not kept."""
    import datetime as dt
    import json

    import pytest

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import FingerprintMismatchError, restore_day

    day = dt.date(2024, 3, 10)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, doc json)").format(sql.Identifier(schema, "j")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, '  {{\"a\": 1}}  ')").format(sql.Identifier(schema, "j")),
                 (day,))
    spec = TableSpec(name=f"{schema}.j", day_column="at", start_date="2024-03-01", format="jsonl")
    done = archive_partition(conn, spec, day, store, temp_dir=str(temp_dir))
    manifest = json.loads(store.client.get_object(Bucket=store.bucket, Key=done.manifest_key)["Body"].read())
    doc = next(c for c in manifest["columns"] if c["name"] == "doc")
    assert doc["exact"] is False and "blanks before and after the value are not kept" in doc["note"], doc
    with pytest.raises(FingerprintMismatchError) as refused:
        restore_day(conn, store, spec, day, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    assert "blanks before and after the value are not kept" in str(refused.value), refused.value


@pytest.mark.parametrize("layout", ["partition", "inheritance"])
def test_a_naming_day_restored_into_a_new_table_is_not_hung_under_the_source(conn, schema, store, temp_dir, layout):
    """Scenario: naming mode (``pattern: ev_%Y%m%d``) where the day tables are partitions of ``ev`` (or inherit
    from it); the day is archived, still in the source, and the user restores it into a new table to look at it:
    ``restore_day(..., into="new", target="<schema>.copy")``.

    Before: ``restore._create`` put every table it created under the tables the manifest records as the day
    table's parents: the new table was made to inherit from ``ev`` (the source's parent then held the day's rows
    twice: 20 rows for 10) or attached as its partition (refused as overlapping the day's own partition, with the
    advice to restore into a new table, which is what the user did).

    Should: a new table is the user's own: created alone, in the archived column order; the source unchanged."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline_tests.test_hunt26_dy import DAY, _spec

    s = sql.Identifier(schema)
    partitioned = sql.SQL(" PARTITION BY RANGE (at)") if layout == "partition" else sql.SQL("")
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz, v text){}").format(s, partitioned))
    if layout == "partition":
        conn.execute(sql.SQL("CREATE TABLE {}.ev_20240310 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                             "TO ('2024-03-11 00:00+00')").format(s, s))
    else:
        conn.execute(sql.SQL("CREATE TABLE {}.ev_20240310 () INHERITS ({}.ev)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev_20240310 (id, at, v) SELECT g, '2024-03-10 12:00+00', 'v' || g "
                         "FROM generate_series(1, 10) g").format(s))
    spec = _spec(schema, partitioning={"mode": "naming", "pattern": "ev_%Y%m%d"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 10
    done = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.copy", temp_dir=str(temp_dir))
    assert done.inserted == 10 and done.fingerprint_checked, done
    assert conn.execute("SELECT count(*) FROM pg_catalog.pg_inherits WHERE inhrelid = %s::regclass",
                        (f"{schema}.copy",)).fetchone() == (0,)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.ev").format(s)).fetchone() == (10,)


def test_the_dry_run_of_a_day_the_database_is_still_writing_says_the_run_refuses_it(conn, schema, store):
    """Scenario: ``archive --dry-run`` of a Los Angeles day that the database's clock says is not over (the host's
    clock runs ahead of the server's, or a caller passes the day).

    Before: the dry run planned "archive" for a day the run itself refuses (archive._refuse_unended, hunt26 dp):
    the README's promise that the dry run decides with the archiver's own rule did not hold.

    Should: ``refuse``, saying it is not over yet by the database's clock."""
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.plan import plan_archive

    zone = "America/Los_Angeles"
    table = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL DEFAULT now())").format(table))
    conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (1)").format(table))
    today = conn.execute("SELECT ((now() + interval '2 minutes') AT TIME ZONE %s)::date", (zone,)).fetchone()[0]
    spec = TableSpec(name=f"{schema}.t", day_column="at", timezone=zone, start_date=today.replace(day=1))
    [planned] = plan_archive(conn, spec, store, [today], overwrite=False)
    assert planned.action == "refuse" and "not over yet by the database's clock" in planned.reason, planned
