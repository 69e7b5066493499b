"""Hunt 23 (be): PostgreSQL-side limits and faults on the read-back commands (restore, compare, verify --deep,
prune): the lock table, temp_file_limit, the role's timeouts and read-only settings, missing privileges, a
shadowing search_path."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.lifecycle import remove_day

DAY = dt.date(2024, 3, 10)


def _archived(conn, schema, store, temp_dir, action: str = "delete") -> tuple[sql.Identifier, TableSpec, str]:
    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date NOT NULL, v text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, 'v' || g FROM generate_series(1, 50) g").format(t), (DAY,))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY.isoformat(), format="csv",
                     retention={"keep_days": 30, "action": action})
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    return t, spec, result.key


def test_a_removal_cancelled_by_statement_timeout_behind_a_lock_is_not_blamed_on_reading_the_day(
        pg, conn, schema, store, s3_client, bucket, temp_dir):
    """Scenario: a day of ``t`` is archived and due for retention (action delete). Its removal runs while another
    session holds ``LOCK TABLE t IN EXCLUSIVE MODE`` (a migration or a batch job: reads go on, writes wait), and the
    removal's session has a statement_timeout (1 s: source.statement_timeout_ms, which the command line's prune
    and the removal asset set, or the role's).

    Now: the proof reads the day fine; the removal's own statement (its LOCK/DELETE of the day's rows) waits for
    the lock until statement_timeout cancels it; lifecycle wraps the 57014 with errors.wrap(doing="removing"),
    which keeps the archive's wording: "statement_timeout: reading the day took longer than allowed ... a day that
    always takes longer will time out on every retry". A removal reads nothing of the day at that point: it waited
    behind another session's lock, which the message never mentions (restore_archive rewords the same case for a
    restore, hunt 14 ta; the removal, a second caller of the same classification, was left out).

    Should: the cause says what was cut short: removing the day, or waiting for a lock on the table that another
    session holds (statement_timeout counts the wait too), with the remedy to find the blocker (pg_blocking_pids);
    not "reading the day". Fix idea: in wrap(), word the statement_timeout cause by ``doing`` as is done for the
    idle timeout ("removing"), or reword it in remove_day as restore_archive does."""
    t, spec, key = _archived(conn, schema, store, temp_dir)
    with pg.connect() as other:
        other.autocommit = False
        other.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(t))  # (SELECT goes on; writes wait)
        conn.execute("SET statement_timeout = '1s'")
        try:
            with pytest.raises(ArchiveError) as caught:
                remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
        finally:
            other.rollback()
            conn.execute("RESET statement_timeout")
    said = str(caught.value)
    # nothing half done: every row is still there, and the pending mark was taken back
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0] == 50
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read())
    assert "removed" not in manifest, manifest.get("removed")
    assert caught.value.retryable and caught.value.table == spec.name and caught.value.day == DAY.isoformat(), said
    assert "reading the day" not in said and "lock" in (caught.value.cause or ""), said
