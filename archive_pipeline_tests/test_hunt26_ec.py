"""Hunt 26 (ec): the round trip a user relies on before letting the source go: archive, prove, remove, see the day
reported as removed, restore it into its original table, see an ordinary source day again, remove and restore again,
per retention action, partition mode and layout change."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.plan import compare_days, day_statuses
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def _spec(schema: str, partitioning: dict, action: str):
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01", "format": "jsonl",
             "compression": "none", "partitioning": partitioning,
             "retention": {"keep_days": 1, "action": action}}
    return parse_config({"tables": [table]}).tables[0]


def _rows(conn, relation: str, day: dt.date) -> None:
    conn.execute(f"INSERT INTO {relation} SELECT g, %s::timestamptz + g * interval '1 minute', 'x' || g "
                 "FROM generate_series(1, 50) g", (f"{day} 00:00+00",))


def test_compare_calls_a_naming_mode_day_detached_by_retention_equal_while_list_and_prune_call_it_removed(
        conn, schema, store, temp_dir):
    """Scenario: legacy one-table-per-day ``<schema>.ev`` (naming mode, pattern ``ev_%Y%m%d``, day tables
    ``INHERITS (ev)``), retention ``{keep_days: 1, action: detach}``. 2024-03-10 is archived, proven and removed:
    the removal runs ``ALTER TABLE ev_20240310 NO INHERIT ev``, so ``SELECT ... FROM ev`` no longer shows the day (the
    day table keeps its name and rows, as the README says). The user then runs ``compare --day 2024-03-10`` (and
    ``list --check-source``) to see what the source holds before dropping the detached tables.

    Now: ``list`` says the day is removed ("detached from the source at ..."), ``prune`` says "already removed",
    the retention asset and ``source_unchanged`` treat it as removed (``lifecycle.still_detached``), but ``compare``
    reports the day ``equal`` with an empty note, exactly as for a day still in the table: ``plan._compare_days``
    fingerprints the day table by its name and never asks ``still_detached`` (only ``plan._removed_yet_present``,
    used by ``list``, does). A declarative day detached the same way is ``not-in-source`` with "detached from the
    source at ...". The user is told the day is in the source, equal to its archive, when the table the
    application reads has none of its rows.

    Should: compare reports a naming-mode day that retention detached (and that is still detached) as removed, as
    list does: ``not-in-source`` (or at least a note) naming the detach and when, so that list, compare and prune
    agree. Fix idea: in ``plan._compare_days``, before fingerprinting, route a day whose manifest's removal is a
    detach and ``still_detached(conn, spec, day, manifest)`` to ``_absent`` (its note is ``archived.removed``)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamptz NOT NULL, v text)")
    for day in (DAY, DAY + dt.timedelta(days=1)):
        conn.execute(f"CREATE TABLE {schema}.ev_{day:%Y%m%d} () INHERITS ({schema}.ev)")
        _rows(conn, f"{schema}.ev_{day:%Y%m%d}", day)
    spec = _spec(schema, {"mode": "naming", "pattern": "ev_%Y%m%d"}, "detach")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    remove_day(conn, spec, spec.period(DAY), store, temp_dir=temp_dir)
    assert conn.execute(f"SELECT count(*) FROM {schema}.ev WHERE at >= %s AND at < %s",
                        (DAY, DAY + dt.timedelta(days=1))).fetchone()[0] == 0  # (premise: gone from the table)
    [listed] = day_statuses(conn, spec, store, [DAY], check_source=True)
    assert "detached" in listed.note, listed  # (premise: list says it is removed)
    [compared] = compare_days(conn, spec, store, [DAY])
    assert "detach" in compared.note, (
        f"compare says {compared.result!r} (note {compared.note!r}) of a day retention detached from {spec.name}, "
        f"which list reports as {listed.note!r}")


def test_a_removed_day_restored_after_its_table_gained_a_column_is_refused_as_other_rows_with_restore_advice(
        conn, schema, store, temp_dir):
    """Scenario: ``<schema>.ev`` is range-partitioned by day (declarative), retention ``{keep_days: 1, action:
    drop}``. 2024-03-10 (50 rows) is archived, proven and its partition dropped. Later a migration adds a column
    to the parent (``ALTER TABLE ev ADD COLUMN extra int``). The user needs the day back and does what the README
    says: ``restore --day 2024-03-10 --into original`` (the partition is re-created with the parent's columns,
    ``extra`` NULL; the fingerprint check passes: the day's 50 rows exactly). Then the archive run (the
    schedule, a backfill, ``archive --day``) meets the day.

    Now: the run fails with "... was removed from the source at ... and the source now has other rows (50);
    archiving them without overwrite would replace the only copy. Restore the archive if you need the removed rows
    back ...". ``archive._Archiving._keep``, removed branch: ``same`` is False because ``_same_rows`` also compares the
    column names, and the message then falls to ``f"the source now has other rows ({fp.rows:,})"``. The rows are
    the archive's rows, just restored; what changed is the table's columns, which compare, ``list --check-source``
    and the removal all name ("the source's columns are now ['id', 'at', 'v', 'extra'], the archive's ['id', 'at',
    'v']"). Its remedy (restore the archive) is what the user just did, and doing it again says "already
    restored".

    Should: the refusal names the cause as the other commands do: the table's columns changed since the day was
    archived (naming them), not "other rows", and does not advise the restore that already happened. Fix idea: in
    the removed branch of ``_keep``, where the fingerprint's rows are back but the column names differ, word
    ``now`` with the columns change (the live path's ``_change_message`` / ``ColumnsChangedError`` wording) and
    keep "other rows" for a fingerprint that differs."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)")
    for day in (DAY, DAY + dt.timedelta(days=1)):
        conn.execute(f"CREATE TABLE {schema}.ev_{day:%m%d} PARTITION OF {schema}.ev FOR VALUES FROM "
                     f"('{day} 00:00+00') TO ('{day + dt.timedelta(days=1)} 00:00+00')")
        _rows(conn, f"{schema}.ev", day)
    spec = _spec(schema, {"mode": "declarative"}, "drop")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    remove_day(conn, spec, spec.period(DAY), store, temp_dir=temp_dir)
    conn.execute(f"ALTER TABLE {schema}.ev ADD COLUMN extra int")
    restored = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert restored.rows == 50  # (premise: the day's rows exactly, proven)
    [compared] = compare_days(conn, spec, store, [DAY])
    assert "extra" in compared.note, compared  # (premise: compare names the column change)
    with pytest.raises(ArchiveError) as refused:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    said = str(refused.value)
    assert "other rows" not in said and "extra" in said, (
        f"the archive run calls the restored rows 'other rows' where compare names the added column "
        f"({compared.note!r}):\n{said}")
