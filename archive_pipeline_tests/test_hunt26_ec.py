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


# --- fix-ec: every command decides a retention-detached naming day through discovery.still_detached ---------------


def _detached_day(conn, schema: str, store, temp_dir):
    """The first test's scenario up to the removal: ``<schema>.ev_20240310`` detached by retention, its rows kept.
    The detached table is then trimmed (a row deleted), as a DBA may before dropping it: no longer the archive's
    rows, which no command may hold against the archive (the source has none of them)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamptz NOT NULL, v text)")
    for day in (DAY, DAY + dt.timedelta(days=1)):
        conn.execute(f"CREATE TABLE {schema}.ev_{day:%Y%m%d} () INHERITS ({schema}.ev)")
        _rows(conn, f"{schema}.ev_{day:%Y%m%d}", day)
    spec = _spec(schema, {"mode": "naming", "pattern": "ev_%Y%m%d"}, "detach")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    remove_day(conn, spec, spec.period(DAY), store, temp_dir=temp_dir)
    conn.execute(f"DELETE FROM {schema}.ev_{DAY:%Y%m%d} WHERE id = 1")
    return spec


def test_list_calls_a_detached_naming_day_removed_and_not_in_the_source(conn, schema, store, temp_dir):
    """list --check-source asks still_detached before fingerprinting, as compare does: the day is not in the source
    (it read the detached table as the source's, and would call the trimmed one "changed")."""
    spec = _detached_day(conn, schema, store, temp_dir)
    [listed] = day_statuses(conn, spec, store, [DAY], check_source=True)
    assert (listed.state, listed.in_source) == ("archived", False) and "detached" in listed.note, listed
    [compared] = compare_days(conn, spec, store, [DAY])
    assert compared.result == "not-in-source" and "detached" in compared.note, compared


def test_verify_deep_proves_a_detached_naming_day_by_its_archive_alone(conn, schema, store, temp_dir):
    """verify --deep proves a removed day by its archive alone: a detached day table is not the source, and its
    rows trimmed since are no problem of the archive's (it compared the archive with that table)."""
    from archive_pipeline.core.verify import deep_verify

    spec = _detached_day(conn, schema, store, temp_dir)
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []


def test_archive_refuses_a_detached_naming_day_as_removed_with_nothing_to_do(conn, schema, store, temp_dir):
    """An archive run (with overwrite or not) and its dry run decide a detached day as a removed day the source
    holds no row of: nothing to archive, the archive kept (it skipped onto it as identical, and with overwrite
    archived the detached table's rows over the removal's record)."""
    from archive_pipeline.core.archive import DayRemovedError
    from archive_pipeline.core.plan import plan_archive
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.core.keys import manifest_key, table_day_key

    spec = _spec(schema, {"mode": "naming", "pattern": "ev_%Y%m%d"}, "detach")
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamptz NOT NULL, v text)")
    conn.execute(f"CREATE TABLE {schema}.ev_{DAY:%Y%m%d} () INHERITS ({schema}.ev)")
    _rows(conn, f"{schema}.ev_{DAY:%Y%m%d}", DAY)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    remove_day(conn, spec, spec.period(DAY), store, temp_dir=temp_dir)
    key = table_day_key(spec, spec.period(DAY), store.prefix)
    before = load_manifest(store, key)
    for overwrite in (False, True):
        with pytest.raises(DayRemovedError) as refused:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=overwrite)
        said = str(refused.value)
        assert refused.value.nothing_to_do and "detached" in said and f"ev_{DAY:%Y%m%d}" in said, said
    assert load_manifest(store, key) == before, f"{manifest_key(key)} was replaced"
    [planned] = plan_archive(conn, spec, store, [DAY], overwrite=False)
    assert planned.action == "no-data" and "detached" in planned.reason, planned
