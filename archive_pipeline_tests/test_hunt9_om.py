"""Hunt 9 (om): periods (hours, months, days in zones with DST or odd offsets) through this session's changes."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline_tests.helpers import decompress, download, read_jsonl


def test_a_zone_shifted_expression_partition_pending_detach_is_not_left_out_of_the_local_day(
        pg, conn, schema, store, temp_dir, s3_client, bucket):
    """``ev (id, at timestamptz)`` is ``PARTITION BY RANGE (((at AT TIME ZONE 'UTC')::date))``, one partition per
    UTC date (p10, p11), and the table is configured ``timezone: Asia/Kathmandu`` (+05:45). The Kathmandu day
    2024-03-11 is [2024-03-10 18:15Z, 2024-03-11 18:15Z): its first 5 h 45 min of rows live in p10. An operator's
    ``DETACH PARTITION p10 CONCURRENTLY`` is interrupted: p10 is pending detach, so ``ev`` no longer reads its rows.
    The archive of 2024-03-11 then succeeds with only p11's rows (a green partition missing the day's first
    hours). Before the pending-detach filter it was refused ("p10 is pending detach ..."). Should: refused, as a
    partition holding rows of the day is pending detach (or archived with all of the day's rows). (Cause:
    hold_day's ``day_partitions`` come from ``day_children`` -> ``ChildRange.overlaps`` on the bounds read in the
    table's zone, without the slack an expression key's other zone needs (discovery.candidate_ranges widens them);
    p10 reads as [03-09 18:15Z, 03-10 18:15Z) and seems not to touch the day.)"""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline_tests.test_mends import _interrupted_detach

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) "
                         "PARTITION BY RANGE (((at AT TIME ZONE 'UTC')::date))").format(s))
    for d in (10, 11, 12):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"p{d}"), s, sql.Literal(f"2024-03-{d:02d}"), sql.Literal(f"2024-03-{d + 1:02d}")))
    # one row every hour at :30 UTC from 2024-03-10 00:30Z to 2024-03-12 23:30Z
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 71) g").format(s))
    expected = [r[0] for r in conn.execute(sql.SQL(
        "SELECT id FROM {}.ev WHERE at >= '2024-03-10 18:15+00' AND at < '2024-03-11 18:15+00' ORDER BY id").format(s))]
    assert len(expected) == 24
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="none", timezone="Asia/Kathmandu", partitioning={"mode": "declarative"})
    _interrupted_detach(pg, conn, f"{schema}.ev", f"{schema}.p10")
    try:
        result = archive_partition(conn, spec, dt.date(2024, 3, 11), store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "pending detach" in str(exc), str(exc)
        return
    rows = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert sorted(int(r["id"]) for r in rows) == expected, f"archived {result.rows} rows of 24 while p10 is pending"



def _events(conn, schema: str, instants: list[str]) -> None:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id serial PRIMARY KEY, at timestamptz NOT NULL)").format(s))
    for at in instants:
        conn.execute(sql.SQL("INSERT INTO {}.ev (at) VALUES (%s)").format(s), (at,))


def test_archive_after_a_zone_and_format_change_names_the_zone_not_rows_arrived_late(conn, schema, store, temp_dir):
    """A daily UTC table (the default key_template, with ``{ext}``) has 2024-03-10 archived as jsonl. The user
    changes the table to ``timezone: Europe/Berlin`` and ``format: csv`` at once; no row changes. Archiving 2024-03-10
    now refuses it as a LateRowsError "changed since it was archived ...: its content changed with the same 2 rows
    (rows updated, or inserted and deleted ...)" -- sending the operator to hunt an edit nobody made. With the format
    unchanged the same run names the zone change ("its archive holds the daily period 2024-03-10 in UTC, and the
    table is now configured as daily in Europe/Berlin: another period with the same key"). Should: the same naming
    of the zone change for the archive found under the former format. (Cause: archive._Archiving._archived_elsewhere
    hands the former format's manifest to ``_keep`` without ``another_period``, which only ``_refuse_foreign`` (the
    day's own key) asks.)"""
    from archive_pipeline.core.errors import ArchiveError

    _events(conn, schema, ["2024-03-10 12:00+00", "2024-03-10 23:30+00", "2024-03-09 23:30+00"])
    base = dict(name=f"{schema}.ev", day_column="at", start_date="2024-03-01")
    first = archive_partition(conn, TableSpec(**base, format="jsonl"), dt.date(2024, 3, 10), store, temp_dir=temp_dir)
    assert first.rows == 2
    # (the premise: with the format unchanged the zone change is named)
    try:
        archive_partition(conn, TableSpec(**base, format="jsonl", timezone="Europe/Berlin"), dt.date(2024, 3, 10),
                          store, temp_dir=temp_dir)
        raise AssertionError("the UTC day's archive was skipped onto as the Berlin day")
    except ArchiveError as exc:
        assert "Europe/Berlin" in str(exc) and "another period" in str(exc), str(exc)
    try:
        result = archive_partition(conn, TableSpec(**base, format="csv", timezone="Europe/Berlin"),
                                   dt.date(2024, 3, 10), store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "Europe/Berlin" in str(exc) and "another period" in str(exc), str(exc)
        return
    raise AssertionError(f"archived: {result}")


def test_a_removal_after_a_zone_change_names_the_zone_not_an_unproven_archive_of_changed_rows(
        conn, schema, store, temp_dir):
    """A daily UTC table with ``retention: {action: delete}`` has 2024-03-10 archived (rows at 12:00Z and 23:30Z).
    The user sets ``timezone: Europe/Berlin``; no row changes. The removal of 2024-03-10 (prune, or the removal
    asset) is refused "stays in the source: its archive is not proven: ..." with a row/fingerprint difference, as
    if rows had changed in PostgreSQL, while list/compare/verify name the cause: "its archive holds the daily
    period 2024-03-10 in UTC, and the table is now configured as daily in Europe/Berlin: another period with the
    same key". Should: the removal names the zone change too (archive the day again with overwrite), never rows
    changed. (Cause: lifecycle._remove_day proves with verify.deep_verify, which never asks
    manifest.another_period / layout_change.)"""
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    _events(conn, schema, ["2024-03-10 12:00+00", "2024-03-10 23:30+00", "2024-03-09 23:30+00"])
    base = dict(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, TableSpec(**base), dt.date(2024, 3, 10), store, temp_dir=temp_dir)
    berlin = TableSpec(**base, timezone="Europe/Berlin")
    for dry_run in (True, False):
        try:
            remove_day(conn, berlin, dt.date(2024, 3, 10), store, dry_run=dry_run, temp_dir=temp_dir)
        except RemovalRefused as exc:
            assert "Europe/Berlin" in str(exc) and "another period" in str(exc), str(exc)
            continue
        raise AssertionError("removed")


def test_restoring_a_month_after_a_daily_table_became_monthly_does_not_restore_its_first_day_as_the_month(
        conn, schema, store, temp_dir):
    """A daily UTC table with ``key_template: {prefix}/{schema}.{table}/{date}.{ext}`` has 2024-03-01 (23 rows) and
    2024-03-02 (24 rows) archived. The user switches it to ``granularity: monthly`` (the template is valid for
    months too; the month 2024-03's key is the day 2024-03-01's). ``restore --from 2024-03 --to 2024-03`` then
    reports the month 2024-03 restored, "fingerprint ... equals the manifest's", with 23 rows: only March 1st's
    archive, taken for the month; March 2nd's 24 archived rows are neither restored nor reported missing, and the
    granularity change is named nowhere (list, compare and verify name it: "its archive holds the daily period
    2024-03-01 in UTC, and the table is now configured as monthly ..."). Should: the restore names the archive as
    another period (refuses it, saying so), never restores one day as the month. (Cause: restore.find_manifest /
    iter_restore_days accept any manifest ``owned`` by the table and the key string, without
    manifest.another_period.)"""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_days

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id serial PRIMARY KEY, at timestamptz NOT NULL)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev (at) SELECT generate_series('2024-03-01 01:00+00'::timestamptz, "
                         "'2024-03-02 23:00+00', '1 hour')").format(s))
    base = dict(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                key_template="{prefix}/{schema}.{table}/{date}.{ext}")
    for d in (1, 2):
        archive_partition(conn, TableSpec(**base), dt.date(2024, 3, d), store, temp_dir=temp_dir)
    monthly = TableSpec(**base, granularity="monthly")
    march = monthly.period("2024-03")
    try:
        result = restore_days(conn, store, monthly, march, march, into="new", target=f"{schema}.back")
    except ArchiveError as exc:
        assert "daily" in str(exc) and "monthly" in str(exc), str(exc)
        return
    restored = conn.execute(sql.SQL("SELECT count(*) FROM {}.back").format(s)).fetchone()[0]
    assert restored == 47, f"the month restored as {restored} rows (its first day's archive): {result}"


def test_compare_and_list_after_a_zone_change_that_empties_the_local_day_name_the_zone_not_rows_gone(
        conn, schema, store, temp_dir):
    """A daily UTC table has 2024-03-10 archived: its rows are late in the UTC day (23:10Z, 23:40Z). The user sets
    ``timezone: Europe/Berlin``; no row changes (in Berlin those rows are 2024-03-11 00:10 and 00:40). ``compare``
    of 2024-03-10 says "not-in-source: archived; the source no longer has this day", and ``list --check-source``
    says "no longer in the source" -- as if the rows had been deleted from PostgreSQL -- where, when the Berlin day
    still had some rows, both name the change ("its archive holds the daily period 2024-03-10 in UTC, and the
    table is now configured as daily in Europe/Berlin: another period with the same key"). Should: the zone change
    is named here too, never "the source no longer has this day". (Cause: plan._compare_days -> _absent and
    plan._day_statuses's not-present branch never ask manifest.layout_change; only the "differs"/"changed" ones
    do.)"""
    from archive_pipeline.core.plan import compare_days, day_statuses

    _events(conn, schema, ["2024-03-10 23:10+00", "2024-03-10 23:40+00"])
    base = dict(name=f"{schema}.ev", day_column="at", start_date="2024-03-01")
    assert archive_partition(conn, TableSpec(**base), dt.date(2024, 3, 10), store, temp_dir=temp_dir).rows == 2
    berlin = TableSpec(**base, timezone="Europe/Berlin")
    day = berlin.period("2024-03-10")
    [compared] = compare_days(conn, berlin, store, [day])
    [listed] = day_statuses(conn, berlin, store, [day], check_source=True)
    problems = []
    if "Europe/Berlin" not in compared.note:
        problems.append(f"compare: {compared.result}: {compared.note}")
    if "Europe/Berlin" not in listed.note:
        problems.append(f"list --check-source: {listed.state}: {listed.note}")
    assert not problems, problems


def test_a_day_partition_of_another_day_pending_detach_inside_the_month_does_not_fail_every_day_of_the_month(
        pg, conn, schema, store, temp_dir, s3_client, bucket):
    """``ev`` is range-partitioned by month (``m03``), each month by day (``d01``, ``d10``, ``d11``), all on
    ``at``. An interrupted ``ALTER TABLE m03 DETACH PARTITION d01 CONCURRENTLY`` leaves d01 (2024-03-01, a day long
    dealt with) pending detach. Every other day of March then fails: archiving 2024-03-10 (24 rows, all in d10,
    untouched) is refused "d01 is pending detach from m03 ...", retried, on every run -- what the filter by the
    day's partitions was made to stop ("a partition of another day pending detach no longer fails every day"),
    still true one level down. Should: 2024-03-10 archived with exactly its 24 rows. (Cause: source.hold_day keeps
    a pending partition whose *parent* is one of the day's partitions (``_parent_of(...) in day_partitions``):
    m03 spans the whole month, so d01's pending detach counts against every day of it; its own range, which holds
    none of the day, is never asked.)"""
    from archive_pipeline_tests.test_mends import _interrupted_detach

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.m03 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-01 00:00+00') TO "
                         "('2024-04-01 00:00+00') PARTITION BY RANGE (at)").format(s, s))
    for d in (1, 10, 11):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.m03 FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"d{d:02d}"), s, sql.Literal(f"2024-03-{d:02d} 00:00+00"),
            sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 30) g").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (100, '2024-03-01 05:00+00')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="none", partitioning={"mode": "declarative"})
    _interrupted_detach(pg, conn, f"{schema}.m03", f"{schema}.d01")
    result = archive_partition(conn, spec, dt.date(2024, 3, 10), store, temp_dir=temp_dir)
    rows = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert result.rows == 24 and sorted(int(r["id"]) for r in rows) == list(range(24))
