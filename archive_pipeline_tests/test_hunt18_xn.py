"""Hunt 18 (xn): configuration drift after archiving (format, compression, key_template, prefix, zone, day_column,
granularity, start_date, strict, retention changed in the YAML after days were archived, then every command run)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core import plan
from archive_pipeline.core.archive import LateRowsError, archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def _spec(schema: str, **extra):
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(),
             "retention": {"keep_days": 1, "action": "delete"}, **extra}
    return parse_config({"tables": [table]}).tables[0]


def _reverted_format_after_removal(conn, schema, store, temp_dir):
    """jsonl/zstd archive of 5 rows, 3 late rows, overwrite as csv/gzip (8 rows), removal of the day proven against
    the csv archive; then the table's format set back to jsonl/zstd. Returns (jsonl spec, csv key)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, note text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'early' FROM generate_series(1, 5) g", (DAY,))
    as_jsonl = _spec(schema)
    as_csv = _spec(schema, format="csv", compression="gzip")
    assert archive_partition(conn, as_jsonl, DAY, store, temp_dir=temp_dir).rows == 5
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'late' FROM generate_series(6, 8) g", (DAY,))
    newest = archive_partition(conn, as_csv, DAY, store, temp_dir=temp_dir, overwrite=True)
    assert newest.rows == 8
    removal = remove_day(conn, as_csv, as_csv.period(DAY), store, temp_dir=temp_dir)
    assert removal.rows == 8 and conn.execute(f"SELECT count(*) FROM {schema}.ev").fetchone()[0] == 0
    return as_jsonl, newest.key


def test_restore_after_the_format_is_set_back_loads_the_stale_former_archive_and_loses_the_removed_rows(
        conn, schema, store, temp_dir):
    """Scenario: a day is archived as jsonl/zstd (5 rows); the table's format is changed to csv/gzip, 3 late rows
    arrive and the day is archived again with overwrite (8 rows, at ``…/2024-03-10.csv.gz``; the jsonl archive
    stays, as the README says); retention removes the day from the source, proven against the csv archive (its
    manifest marked ``removed: done``, 8 rows). Then the format change is rolled back (format: jsonl, compression:
    zstd, as it was) and ``restore --into original`` runs for the day, to get the removed rows back.

    Now: ``restore.find_manifest`` reads the manifest at the key the configuration renders, the old
    ``…/2024-03-10.jsonl.zst``, and looks under the other formats' keys (``under_another_format``) only when
    nothing is there. It restores that superseded first archive: 5 rows inserted, "fingerprint … equals the
    manifest's", exit 0, and the 3 late rows, whose only copy is the csv archive the removal was proven against,
    are silently not restored. The archive run of the same day knows better (``_removed_elsewhere`` looks at the
    other formats even when the key holds a manifest, and refuses naming the csv archive).

    Should: restore picks the day's latest archive across the formats' keys (the one a removal marked, or the
    latest ``archived_at``), as the archive run does, or refuses naming both archives and the remedy
    (configure the table as csv/gzip to restore that one). Fix idea: in ``find_manifest``, also consult
    ``under_another_format`` when a manifest is found, and prefer a removed or later one."""
    as_jsonl, csv_key = _reverted_format_after_removal(conn, schema, store, temp_dir)
    try:
        restored = restore_day(conn, store, as_jsonl, DAY, into="original", temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "csv" in str(exc), exc  # a refusal is fine if it names the archive that holds the removed rows
        return
    back = conn.execute(f"SELECT count(*) FROM {schema}.ev").fetchone()[0]
    assert restored.rows == 8 and back == 8, (
        f"restore put back {restored.rows} rows ({back} in the table) from the superseded jsonl archive; the removed "
        f"day had 8 rows, archived at {csv_key} (the archive its removal was proven against)")


def test_list_and_compare_after_the_format_is_set_back_call_a_removed_day_archived_and_deleted_by_hand(
        conn, schema, store, temp_dir):
    """Scenario: as above (jsonl archive of 5 rows, overwrite as csv/gzip with 8 rows, retention removes the day
    proven against the csv archive, format set back to jsonl/zstd); then ``list`` and ``compare`` run.

    Now: ``plan.lookup_manifests`` takes the manifest at the rendered key (the superseded jsonl one, 5 rows, no
    ``removed`` mark) and never looks under the other formats when one is there: ``list`` shows the day
    ``archived`` with 5 rows (not removed), and ``compare`` says ``not-in-source``: "no removal of it was recorded
    (dropped or deleted by hand?): its archive is its only copy; restore --into original puts it back" --
    advice which, followed, restores 5 of the 8 removed rows (previous test). The removal was recorded, on the
    newer csv archive.

    Should: both report the day as removed, naming the csv archive (8 rows) that holds it, and say that the jsonl
    archive at the configured key is an older one (format changed since). Fix idea: in ``lookup_manifests``
    also list the day's other-format keys when a manifest is found (the listing has them already) and prefer the
    one with a removal mark, or the latest."""
    as_jsonl, csv_key = _reverted_format_after_removal(conn, schema, store, temp_dir)
    status = plan.day_statuses(conn, as_jsonl, store, [DAY])[0].as_dict()
    compared = plan.compare_days(conn, as_jsonl, store, [DAY])[0].as_dict()
    problems = []
    # (list has no state "removed": a removed day is listed "archived", its note saying the removal, as at its own key)
    if "deleted from the source" not in status["note"] or status["rows"] != 8:
        problems.append(f"list: {status['state']}, {status['rows']} rows at {status['key']}")
    if "by hand" in compared["note"] or compared["archive_rows"] != 8:
        problems.append(f"compare: {compared['result']}, {compared['archive_rows']} archive rows: {compared['note']}")
    assert not problems, (f"the day removed with its 8 rows archived at {csv_key} is reported from the superseded "
                          f"jsonl archive: " + "; ".join(problems))


def test_an_archive_run_after_the_format_is_set_back_calls_a_day_archived_identically_changed(
        conn, schema, store, temp_dir):
    """Scenario: a day is archived as jsonl/zstd (5 rows); format changed to csv/gzip, 3 late rows arrive, the day
    is archived again with overwrite (8 rows, ``…/2024-03-10.csv.gz``), exactly the source's rows. The format
    change is rolled back (jsonl/zstd) and the day's archive run comes again (the schedule, a backfill, the
    sensor; no overwrite).

    Now: ``_Archiving.run`` compares the source only with the manifest at the rendered key, the superseded jsonl
    archive of 5 rows; ``_archived_elsewhere`` (the csv archive, which holds exactly these rows) is consulted only
    when nothing is at the key. The run fails with ``LateRowsError``: "changed since it was archived … set
    overwrite" -- a red partition for a day whose latest archive is identical to the source, and the advised
    overwrite writes a third copy of the day.

    Should: the run finds the day's latest archive across the formats' keys, sees it holds the source's rows and
    skips onto it (recording that archive), as it does when nothing is at the rendered key. Fix idea: in ``run``
    (and ``keeps_existing`` for --dry-run), when the rendered key's manifest differs from the source, look at
    ``_archived_elsewhere`` for a later archive that matches before refusing."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, note text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'early' FROM generate_series(1, 5) g", (DAY,))
    as_jsonl = _spec(schema)
    as_csv = _spec(schema, format="csv", compression="gzip")
    archive_partition(conn, as_jsonl, DAY, store, temp_dir=temp_dir)
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'late' FROM generate_series(6, 8) g", (DAY,))
    newest = archive_partition(conn, as_csv, DAY, store, temp_dir=temp_dir, overwrite=True)
    assert newest.rows == 8
    try:
        again = archive_partition(conn, as_jsonl, DAY, store, temp_dir=temp_dir)
    except LateRowsError as exc:
        pytest.fail(f"the day's latest archive {newest.key} holds exactly the source's 8 rows, yet the run after the "
                    f"format was set back refuses the day as changed: {exc}")
    assert again.rows == 8 and again.skipped, again


def test_a_day_removed_while_daily_is_archived_again_as_an_empty_hour_after_granularity_turns_hourly(
        conn, schema, store, temp_dir):
    """Scenario: a daily table (timestamptz day column, retention delete); 2024-03-10 holds 5 rows at 14:01..14:05
    UTC, is archived (``…/2024/03/2024-03-10.jsonl.zst``) and removed by retention (manifest ``removed: done``, 5
    rows, the source empty for the day). Then the table is configured ``granularity: hourly`` (its default template
    puts hours at ``…/2024/03/2024-03-10/2024-03-10T14.jsonl.zst``) and the hour 2024-03-10-14:00 is archived (a
    backfill of the new hourly partitions).

    Now: the run finds nothing at the hour's key and nothing under the hour's other formats, reads the now-empty
    source and publishes an empty archive of the hour: success, rows 0, a green partition. Nothing looks at the
    removal recorded for the day that contains the hour. The same holds for a monthly table (the month 2024-03 is
    archived empty and ``restore`` of it then "restores" 0 rows, exit 0). The README: "A removed day is never
    archived again from its now-empty source -- not by a backfill, the sensor, the schedule or overwrite".

    Should: the run refuses the hour (permanent), saying the day 2024-03-10 holding it was removed from the source
    after its daily archive (naming that key) was proven, and that restoring needs the table configured daily as
    it was. Fix idea: before archiving an empty (or any) period, look for a removal mark on the overlapping periods'
    keys under the table's other granularities' default templates (one listing of the day's folder) -- or record the
    granularity change at load time and refuse periods overlapping removed ones."""
    refuses_the_hour_of_a_removed_day(conn, schema, store, temp_dir)


def refuses_the_hour_of_a_removed_day(conn, schema: str, store, temp_dir, **table) -> None:
    """Archive and remove 2024-03-10 (5 rows at 14:01..14:05 UTC) of a daily table, configure it hourly (both with
    ``table``'s settings), and assert that archiving the hour 2024-03-10-14:00 is refused as removed."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, note text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, '2024-03-10 14:00+00'::timestamptz + g * interval '1 minute', "
                 "'x' FROM generate_series(1, 5) g")
    daily = _spec(schema, **table)
    archived = archive_partition(conn, daily, DAY, store, temp_dir=temp_dir)
    assert remove_day(conn, daily, daily.period(DAY), store, temp_dir=temp_dir).rows == 5
    hourly = _spec(schema, granularity="hourly", **table)
    try:
        result = archive_partition(conn, hourly, "2024-03-10-14:00", store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "remov" in str(exc).lower(), exc
        return
    pytest.fail(f"the hour 2024-03-10-14:00, whose 5 rows were removed from the source after {archived.key} was "
                f"proven, was archived again from the empty source: rows {result.rows}, empty {result.empty}, at "
                f"{result.manifest_key}")
