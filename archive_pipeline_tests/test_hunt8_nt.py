"""Hunt 8 (nt): adversarial review of the newest product commits (expression-key bounds, the ranged archive's
final message naming --overwrite commands, verify's remedy for a removed day whose type is gone)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core import archive as archive_module
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.helpers import decompress, download, read_csv, read_jsonl
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config

DAY = dt.date(2024, 3, 10)


def test_a_range_archive_refusing_a_day_archived_in_another_format_names_its_overwrite_not_the_same_command(
        pg, s3, bucket, conn, schema, tmp_path):
    """ev is archived as csv with a key_template without {ext} (``{prefix}/{schema}.{table}/{date}``); the user then
    configures the table as jsonl. The nightly `archive --from 2024-03-10 --to 2024-03-12` archives 03-11 and 03-12
    and refuses 03-10: "... holds this day archived as csv/zstd, and the table is now configured as jsonl/zstd; add --
    overwrite to replace it". It ends: "1 day(s) failed; fix what the messages say and run the same command again
    (archived days are skipped)" -- the same command fails the same day again, forever, and adding --overwrite to
    it re-archives 03-11 and 03-12 as new generations. 122f6d7 names `archive --table t --day D --overwrite` for a
    day refused as changed (needs_overwrite), but only for LateRowsError and a removed day's DayRemovedError, not
    for the other refusals whose only remedy is overwrite (ForeignArchiveError "set overwrite to replace it": a
    format/codec changed, the key holding another period, another source database; a strict table's inexact
    archive). Should: the summary names `archive --table <t> --day 2024-03-10 --overwrite` (needs_overwrite)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, v text)")
    for n, day in enumerate(("2024-03-10", "2024-03-11", "2024-03-12")):
        conn.execute(f"INSERT INTO {schema}.ev SELECT %s * 1000 + g, %s::timestamptz + g * interval '1 minute', 'v' "
                     "FROM generate_series(1, 20) g", (n, f"{day} 00:00+00"))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-10",
             "key_template": "{prefix}/{schema}.{table}/{date}"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**table, "format": "csv"}]))
    assert cli(env, "archive", "--day", "2024-03-10").returncode == 0
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**table, "format": "jsonl"}]))
    done = cli(env, "archive", "--from", "2024-03-10", "--to", "2024-03-12")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "add --overwrite to replace it" in done.stdout, done.stdout  # (the premise)
    assert "--day 2024-03-10 --overwrite" in done.stderr, done.stderr



@pytest.mark.parametrize("fmt,change", [("csv", "ADD COLUMN z int"), ("jsonl", "ADD COLUMN z int"),
                                        ("csv", "DROP COLUMN b")])
def test_a_column_of_another_tables_row_type_altered_while_the_day_is_read_is_not_archived_green(
        fmt, change, pg, conn, schema, store, s3_client, bucket, temp_dir, monkeypatch):
    """ev has a column ``c`` whose type is the row type of another TABLE, ``pt (a int, b text)`` (PostgreSQL
    allows any table's row type as a column type). While a run of ev's day is between its fingerprint and its COPY,
    a migration in another session commits ``ALTER TABLE pt ADD COLUMN z int``: it locks pt only, which the day's
    read never locks, so it does not wait (PostgreSQL allows it: no rewrite). The composite's output reads the row
    type as committed: the fingerprint and the recorded shape are ``(1,q)`` / (a, b), the object holds ``(1,q,)``.
    The run publishes that day green. Cause: 439da81's re-check (source._SIGNATURE_QUERY, ``r.relkind = 'c'``)
    looks at free-standing composite types only, assuming a table's row type changes only by an ALTER TABLE that
    waits for the day's read -- true of ev's own row type, not of another table's used as a column type. Should:
    fail the day, retryable, naming the type that changed (as for ALTER TYPE ... ADD ATTRIBUTE)."""
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="none")
    conn.execute(f"CREATE TABLE {schema}.pt (a int, b text)")
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamp, c {schema}.pt)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s::timestamp + g * interval '1 hour', ROW(g, 'q')::{schema}.pt "
                 "FROM generate_series(1, 3) g", (f"{DAY}",))
    real = archive_module.refuse_unrestorable

    def migrate_then(table):  # called after the fingerprint, before the day's rows are read
        with pg.connect() as other:
            other.execute("SET lock_timeout = '2s'")
            other.execute(f"ALTER TABLE {schema}.pt {change}")
        return real(table)

    monkeypatch.setattr(archive_module, "refuse_unrestorable", migrate_then)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert exc.retryable and "pt" in str(exc), str(exc)
        return
    body = decompress(download(s3_client, bucket, result.key), "none")
    rows = read_jsonl(body) if fmt == "jsonl" else read_csv(body)
    pytest.fail(f"archived green with values {[r['c'] for r in rows]} under a fingerprint and shape of (a, b) "
                f"and values (1,q), (2,q), (3,q)")
