"""Hunt 10 pk: a review of the hunt10 pi/ph/pj fixes (the removal's tidy, a restored day's pending removal, the day
column's base type, the foreign DELETE's ctid, refused grants), at their edges. Real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


def _events(conn, schema: str, rows: int = 50) -> sql.Identifier:
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', 'n' || g "
                         "FROM generate_series(1, {}) g").format(table, sql.Literal(DAY.isoformat()),
                                                                 sql.Literal(rows)))
    return table


def _count(conn, table: sql.Identifier) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


def test_a_removal_that_committed_and_marked_done_is_not_failed_by_the_tidy_after_it(conn, schema, store, s3_client):
    """A user's retention removal (`prune --day D`, action delete) proves D, deletes its rows, commits and marks the
    manifest "done". Then, new since the pi fix, it tidies the day's leftovers, and that starts with a LIST of the
    day's keys (leftovers.day_listing), outside of tidy_day's "a failure here is logged, never fatal". A LIST that
    fails then (the store briefly unreachable, a role without s3:ListBucket for that prefix...) makes remove_day
    raise: the run reports the day's removal failed though its rows are gone and its manifest says done. Should:
    the removal is reported done (the tidy's failure logged), as an archive run's tidy failure is."""
    from botocore.exceptions import EndpointConnectionError

    table = _events(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="created_at", start_date=DAY,
                     retention={"keep_days": 1, "action": "delete"})
    key = archive_partition(conn, spec, DAY, store).key
    state = {"manifest_puts": 0}

    def count_marks(params, **_) -> None:
        if params["Key"].endswith(".manifest.json"):
            state["manifest_puts"] += 1

    def store_gone_after_the_done_mark(**_) -> None:
        if state["manifest_puts"] >= 2:  # the pending mark, then the done mark
            raise EndpointConnectionError(endpoint_url="http://store")

    events = s3_client.meta.events
    events.register("before-parameter-build.s3.PutObject", count_marks)
    events.register("before-call.s3.ListObjectsV2", store_gone_after_the_done_mark)
    try:
        removal = remove_day(conn, spec, DAY, store, proven=True)
    finally:
        events.unregister("before-parameter-build.s3.PutObject", count_marks)
        events.unregister("before-call.s3.ListObjectsV2", store_gone_after_the_done_mark)
    assert removal.rows == 50
    assert _count(conn, table) == 0
    assert load_manifest(store, key)["removed"]["state"] == "done"
