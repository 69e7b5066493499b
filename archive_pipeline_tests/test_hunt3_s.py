"""Hunt 3 (s): the source changes meanwhile, on the paths other than a plain single-stream first archive:
parallel_streams, overwrite, deep verification, compare, list --check-source, restore into the original
table and retention's removal. Each change is made at a precise moment: another session holds a lock the
run is waiting for (seen in pg_locks), a fault proxy holds an S3 request, or a hook runs it between two steps.

What must hold after each: the archive (or proof, or removal) is exact for one consistent snapshot, or the
run fails with a typed error naming table and day, nothing half written. Each failing test is one bug."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline_tests.test_parallel import DAY, _spec, partitioned  # noqa: F401 - fixture: one 3,000-row day
from archive_pipeline_tests.test_race_hunt import in_thread, wait_until


def _waiting_for_a_lock(watcher, application_name: str) -> bool:
    watcher.execute("SELECT pg_stat_clear_snapshot()")
    return watcher.execute("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = %s "
                           "AND wait_event_type = 'Lock')", (application_name,)).fetchone()[0]


def _while_the_run_waits(pg, table: sql.Identifier, run, change) -> dict:
    """Run ``run(conn)`` on a session of its own while another session holds ACCESS EXCLUSIVE on ``table``
    (a migration in progress); once the run waits for that lock (its snapshot is taken), ``change(other)``
    runs in the migration's transaction, which then commits. Returns the run's outcome."""
    with pg.connect() as other, pg.connect() as watcher, pg.connect(application_name="hunt3_s_run") as running:
        other.autocommit = False
        other.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        thread, outcome = in_thread(lambda: run(running))
        try:
            assert wait_until(lambda: _waiting_for_a_lock(watcher, "hunt3_s_run")), outcome
            change(other)
        finally:
            other.commit()
            thread.join(60)
    assert not thread.is_alive()
    return outcome


def _nothing_published_or(outcome: dict, store, key: str) -> bool:
    """True if the run failed retryable, naming table and day, and left no object or manifest at ``key``."""
    error = outcome.get("error")
    if error is None:
        return False
    assert isinstance(error, ArchiveError) and error.retryable and error.table and error.day, repr(error)
    assert store.head(f"{key}.manifest.json") is None or load_manifest(store, key)["generation"] == 1
    return True


# ------------------------------------------------------------------------------------------------
# 1. A column dropped and added again under the same name while the archive waits for its first lock


@pytest.mark.parametrize("how", ["parallel_streams_2", "overwrite_parallel_streams_4"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_column_replaced_under_its_name_while_the_archive_waits_is_not_archived_under_the_old_type(
        pg, conn, schema, partitioned, store, temp_dir, fmt, how):
    """A migration replaces the last column ``flag boolean`` by ``flag text DEFAULT 'maybe'`` (DROP COLUMN,
    ADD COLUMN: no table rewrite) while an archive with parallel_streams (or an overwrite) waits for its
    first lock on the table, its snapshot already taken. The archive describes the columns in its snapshot
    (flag boolean), then checks after its locks only that the column *names* are unchanged
    (``source._same_relation``); the streams read the current column, text 'maybe'. The day is published
    green with a manifest that records flag as boolean over 3,000 values 'maybe': deep verification (and
    every restore) fails to load it back ("invalid input syntax for type boolean"), so the day can never
    be proven or restored as archived. Correct: the day fails, retryable, nothing published (as for a
    column renamed or dropped in that window), or the manifest records the type of what was read."""
    parent = sql.Identifier(schema, "ev")
    streams = 2 if how == "parallel_streams_2" else 4
    spec = _spec(partitioned, fmt, "zstd", streams, partitioning={"mode": "declarative"})
    key = table_day_key(spec, DAY, store.prefix)
    overwrite = how.startswith("overwrite")
    if overwrite:
        archive_partition(conn, _spec(partitioned, fmt, "zstd", 1, partitioning={"mode": "declarative"}), DAY, store,
                          temp_dir=str(temp_dir))

    def replace_column(other) -> None:
        other.execute(sql.SQL("ALTER TABLE {} DROP COLUMN flag").format(parent))
        other.execute(sql.SQL("ALTER TABLE {} ADD COLUMN flag text DEFAULT 'maybe'").format(parent))

    outcome = _while_the_run_waits(pg, parent, lambda running: archive_partition(
        running, spec, DAY, store, temp_dir=str(temp_dir), overwrite=overwrite), replace_column)
    if _nothing_published_or(outcome, store, key):
        return
    assert "result" in outcome, outcome
    manifest = load_manifest(store, key)
    recorded = {c["name"]: c["pg_type"] for c in manifest["columns"]}
    # Now: green, generation 1 (or 2), recorded {'flag': 'boolean', ...} over the values 'maybe';
    # deep_verify raises "does not load into ...: invalid input syntax for type boolean: "maybe"".
    # Should: fail retryable with nothing published, or record flag as text (what the streams read).
    assert recorded["flag"] == "text", recorded
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


# ------------------------------------------------------------------------------------------------
# 2. A partition attached (with rows of the day) while the archive waits for its first lock


def test_a_partition_attached_while_the_archive_waits_is_no_mix_of_two_moments(pg, conn, schema, store, temp_dir):
    """Column mode over a table partitioned by region (LIST): ``ev_eu`` holds the day's 300 rows, and a
    table ``ev_us`` with 5 rows of the day waits to be attached. A migration, in one transaction, deletes
    row 1 and attaches ``ev_us``, while an archive with parallel_streams: 2 waits for its first lock (its
    snapshot taken). PostgreSQL plans with the partitions as committed now (attachments are not MVCC), and
    the snapshot sees the attached table's rows (committed before it): the archive holds row 1 (deleted as
    of the migration) *and* ev_us's rows (not the table's before it): 305 rows, a day the table never had
    (300 before the migration, 304 after). ``source.hold_day`` fails the day for a partition *detached* in
    that window but not for one attached. Correct: the day fails, retryable, nothing published, or the
    archive holds the rows of one moment (compared row for row with EXCEPT ALL)."""
    ev, eu, us = (sql.Identifier(schema, n) for n in ("ev", "ev_eu", "ev_us"))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, region text) "
                         "PARTITION BY LIST (region)").format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES IN ('eu') WITH (fillfactor = 10)").format(eu, ev))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', 'eu' "
                         "FROM generate_series(1, 300) g").format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, region text)").format(us))
    conn.execute(sql.SQL("INSERT INTO {} SELECT 1000 + g, '2024-03-10 12:00+00', 'us' "
                         "FROM generate_series(1, 5) g").format(us))
    before = sql.Identifier(schema, "before_migration")
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(before, ev))
    spec = TableSpec(name=f"{schema}.ev", day_column="created_at", start_date="2024-03-01", format="csv",
                     compression="zstd", parallel_streams=2)
    key = table_day_key(spec, DAY, store.prefix)

    def delete_and_attach(other) -> None:
        other.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(ev))
        other.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ('us')").format(ev, us))

    outcome = _while_the_run_waits(pg, ev, lambda running: archive_partition(
        running, spec, DAY, store, temp_dir=str(temp_dir)), delete_and_attach)
    if _nothing_published_or(outcome, store, key):
        return
    assert "result" in outcome, outcome
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.archived", temp_dir=str(temp_dir))
    archived = sql.Identifier(schema, "archived")

    def differs(moment: sql.Identifier) -> int:
        return conn.execute(sql.SQL("SELECT (SELECT count(*) FROM (TABLE {a} EXCEPT ALL TABLE {m}) x) + "
                                    "(SELECT count(*) FROM (TABLE {m} EXCEPT ALL TABLE {a}) y)").format(
            a=archived, m=moment)).fetchone()[0]

    # Now: 305 rows archived, green; 1 row more than the table before the migration... and 5 more, 1 row more
    # than after it. Should: the archive equals the table before it or after it (or the day fails, retryable).
    assert differs(before) == 0 or differs(ev) == 0, (outcome["result"].rows, differs(before), differs(ev))
