"""Hunt 24 (bm): days and plans line by line (core/periods.py, core/plan.py, core/parallel.py): day boundaries in every
zone and granularity, the calendar's edges, the plan when the table's partitions do not match days, parallel ranges.

What held up (probed, not kept as tests): periods.py over every IANA zone for 2023-2024 (daily and monthly periods tile
time without gap or overlap, every key parses back to its own period, no key twice; hourly periods around every
whole-hour offset change of 2024 are one hour long, tile their days and parse back); a 30-minute DST zone
(Australia/Lord_Howe) is refused for hourly tables at load. parallel.py's ctid ranges ([0,b1) ... [bn,inf)) and time
slices (first and last open, ANDed with the day's filter) cover each tuple exactly once by construction, whatever the
relation's size, dead tuples or concurrent inserts (the ranges only balance the streams)."""

from __future__ import annotations

import json

from psycopg import sql

from archive_pipeline_tests.helpers import range_partitioned_events
from archive_pipeline_tests.test_hunt17_wf import _env, cli
from archive_pipeline_tests.test_mends import _interrupted_detach


def test_cli_archive_calls_a_day_whose_partition_is_pending_detach_no_data_and_exits_0(pg, s3, bucket, conn, schema,
                                                                                       tmp_path):
    """Scenario: a declarative UTC daily table ev (RANGE on at, one partition a day: d09, d10), 5 rows on 2024-03-10
    in d10, not archived yet. An operator's ``ALTER TABLE ev DETACH PARTITION d10 CONCURRENTLY`` is interrupted (a
    long transaction, a cancel): d10 is left pending detach, its 5 rows still in PostgreSQL, in no table of their own
    yet. The cron runs ``archive-pipeline archive --day 2024-03-10``.

    Now: the command line decides the day from plan.present_days -> discovery.existing_days: the catalog
    (_CHILDREN_QUERY reads pg_inherits without looking at inhdetachpending) says d10 holds the day, the probe through
    the parent finds no row (the parent no longer reads a partition pending detach), so the day is "no-data" ("no
    data for this day in PostgreSQL"), exit 0; ``--dry-run`` plans "no-data" too, and the sensor never asks for the
    day. The archiver itself (archive_partition, the Dagster asset) refuses exactly this day: "d10 is pending detach
    from ev ... DETACH PARTITION ... FINALIZE" (retryable; see test_mends). Once FINALIZE runs, d10 is a table of its
    own that nothing ever archives. The sibling read paths say the same untruth of an archived day in that state:
    ``compare`` calls it "not-in-source ... no removal of it was recorded (dropped or deleted by hand?): ... restore
    --into original puts it back", ``list --check-source`` "no longer in the source".

    Should: the day is not "no-data" while its partition is pending detach: refused or not-checked (retryable), exit
    non-zero, naming the partition, its state and the FINALIZE that ends it, as the archiver says; fix idea: in
    present_days (or catalog_days), read inhdetachpending with the children and report a day held by a pending
    partition as unknown (source.pending_detach_error) instead of probing the parent for it."""
    range_partitioned_events(conn, schema, [("d09", "2024-03-09", "2024-03-10"), ("d10", "2024-03-10", "2024-03-11")])
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 12:00+00'::timestamptz + g * interval '1 day' "
                         "FROM generate_series(-1, 0) g, generate_series(1, 5)").format(sql.Identifier(schema)))
    env = _env(pg, s3, bucket, tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
                                           "partitioning": {"mode": "declarative"}}])
    _interrupted_detach(pg, conn, f"{schema}.ev", f"{schema}.d10")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.d10").format(sql.Identifier(schema))).fetchone()[0] == 5
    done = cli(env, "archive", "--day", "2024-03-10", "--json")
    said = json.loads(done.stdout)["days"]
    assert done.returncode != 0 and [d["status"] for d in said] != ["no-data"], (
        f"exit {done.returncode}: {json.dumps(said)[:900]}")
    assert "pending detach" in json.dumps(said), json.dumps(said)[:900]
