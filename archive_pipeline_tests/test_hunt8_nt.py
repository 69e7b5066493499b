"""Hunt 8 (nt): adversarial review of the newest product commits (expression-key bounds, the ranged archive's
final message naming --overwrite commands, verify's remedy for a removed day whose type is gone)."""

from __future__ import annotations

from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config


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
