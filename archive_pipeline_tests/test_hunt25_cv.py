"""Hunt 25 (cv): remedies that contradict their cause (the command line's and the Dagster layer's remedy chosen by
matching a problem's text, errors.py's classify tables).

What held up (probed, not kept as tests): verify's remedies for a newer version's manifest, an older fingerprint
algorithm, another table-day's manifest and another period's archive; the Dagster layer's source-only test
(checks.source_only, retention's source_side_only) looks at each problem's start, so a quoted row cannot steer it."""

from __future__ import annotations

import datetime as dt
import json

from psycopg import sql

from archive_pipeline_tests.helpers import range_partitioned_events
from archive_pipeline_tests.test_hunt17_wf import _env
from archive_pipeline_tests.test_hunt17_wf import cli as wf_cli
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config
from archive_pipeline_tests.test_mends import _interrupted_detach

DAY = dt.date(2024, 3, 10)


def test_verify_deep_advice_follows_a_late_rows_text_not_checked_and_says_verify_again(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: a table ev (id, at date, v text) with 2 rows on 2024-03-10, archived. A late row arrives for that
    day whose text column reads 'not checked' (a status column of a ticketing app, say). The user runs
    `verify --deep --day 2024-03-10`.

    Now: the proof finds the archive intact and the source differing ("the source's rows ... are not the archive's:
    3 rows against 2"; "first difference: the source has a row the archive lacks: (3,2024-03-10,"not checked")").
    cli._verify_remedy matches its cases against the problems joined into one text, the quoted row included, and
    the `"not checked" in problem` case comes before source_side_only: the remedy is "verify the day again ... once
    the database and store answer: it was not checked". The day was checked; verifying again finds the same, for
    ever. (Any row quoting "written by a newer archive_pipeline" gets "upgrade", "not archived exactly in" the
    format change, alike.) The Dagster layer, which tests each problem's start, says the source changed.

    Should: the remedy follows the problems' kinds, not text inside a quoted row: the source-side remedy (archive
    again with --overwrite for late rows, or put the lost rows back). Fix idea: match the cases on each problem's
    start (as source_side_only does; a "not checked" problem starts with it), never on the joined text."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, v text)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, 'a'), (2, %s, 'b')", (DAY, DAY))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    assert cli(env, "archive", "--day", str(DAY)).returncode == 0
    conn.execute(f"INSERT INTO {schema}.ev VALUES (3, %s, 'not checked')", (DAY,))
    done = cli(env, "verify", "--deep", "--day", str(DAY), "--json")
    day = json.loads(done.stdout)["days"][0]
    assert done.returncode == 1 and day["problems"][0].startswith("the source's rows"), done.stdout
    assert "it was not checked" not in day["remedy"], day["remedy"]
    assert "--overwrite" in day["remedy"], day["remedy"]


def test_verify_deep_of_a_day_whose_partition_is_pending_detach_advises_restoring_rows_still_in_postgresql(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: a declarative daily table ev (partitions d09, d10), 5 rows on 2024-03-10 in d10, archived. An
    operator's `ALTER TABLE ev DETACH PARTITION d10 CONCURRENTLY` is interrupted: d10 is pending detach, its 5 rows
    still in PostgreSQL. The user runs `verify --deep --day 2024-03-10`.

    Now: the deep proof reads the day through the parent, which no longer reads d10: "the source's rows for
    2024-03-10 are not the archive's: 0 rows against 5"; source_side_only holds, and cli._verify_remedy (via
    _put_back, the counted 0) advises "if rows were lost from the source, the archive is their only copy: restore
    them into the table (restore ... --into original)". The rows were never lost, and that restore fails ("no
    partition of relation ev found for row", then advising to create a partition that d10 still holds). `compare`
    of the same day says what it is: "not checked (retryable) ... d10 is pending detach ... to fix: ... DETACH
    PARTITION ... FINALIZE".

    Should: verify --deep says the day was not checked (a partition of the day pending detach), with the FINALIZE
    remedy, as compare and the archive run do; never a restore of rows PostgreSQL still holds. Fix idea: the deep
    proof's source read checks inhdetachpending (source.pending_detach_error) before it fingerprints the day."""
    range_partitioned_events(conn, schema, [("d09", "2024-03-09", "2024-03-10"), ("d10", "2024-03-10", "2024-03-11")])
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 12:00+00'::timestamptz + g * interval '1 day' "
                         "FROM generate_series(-1, 0) g, generate_series(1, 5)").format(sql.Identifier(schema)))
    env = _env(pg, s3, bucket, tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
                                           "partitioning": {"mode": "declarative"}}])
    assert wf_cli(env, "archive", "--day", str(DAY)).returncode == 0
    _interrupted_detach(pg, conn, f"{schema}.ev", f"{schema}.d10")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.d10").format(sql.Identifier(schema))).fetchone()[0] == 5
    done = wf_cli(env, "verify", "--deep", "--day", str(DAY), "--json")
    day = json.loads(done.stdout)["days"][0]
    said = json.dumps(day)
    assert done.returncode != 0, said
    assert "--into original" not in day.get("remedy", ""), said
    assert "pending detach" in said and "FINALIZE" in said, said
