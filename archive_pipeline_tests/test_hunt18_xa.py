"""Hunt 18 (xa): the source changes meanwhile (a column retyped, rows written, between the archive, its proof,
its removal and its restore)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def _spec(schema: str, name: str, **extra):
    table = {"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv",
             "compression": "gzip", **extra}
    return parse_config({"tables": [table]}).tables[0]


def test_retention_removes_a_day_whose_float_column_was_retyped_since_and_restore_then_refuses_it(
        conn, schema, store, temp_dir):
    """Scenario: ``ev (id int, at date, x double precision)`` holds x = 0.1 .. 0.5 on 2024-03-10; the day is
    archived (CSV). Then a migration retypes the column (``ALTER TABLE ev ALTER COLUMN x TYPE real``): every value
    now prints as before (real 0.1 prints ``0.1``) but is another number (real 0.1 is 0.100000001490116..., not
    double 0.1). Then the day's retention removal runs (action delete).

    Now: ``remove_day`` proves the day and deletes its 5 rows: deep verification and the removal's re-check in
    ``lifecycle._recheck_and_remove`` hash the source's text (``fingerprint.as_archived`` maps only integers and
    uuids to their archived type, ``shape_changes`` looks only inside composites), so the fingerprints are equal. Afterwards ``restore_day(into='original')`` refuses the day before loading anything, as the README says a
    binary floating-point value read into a column of another float type "may print the same and still differ".
    So the source's rows are gone while the archive holds other values (0.1 as double, not 0.1 as real), and the
    one way back into the table is refused: removal and restore disagree on whether the day is the archive's.

    Should: the removal's proof and its re-check (and compare / list --check-source) treat a numeric / real /
    double column whose type is another of these since the day was archived as a change (the same rule
    ``_refuse_approximation`` applies to a restore), refusing the removal with "archive the day again (overwrite),
    then remove it", never deleting rows whose values the archive does not hold."""
    before, retyped = "double precision", "real"
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, x {before})")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, g / 10.0 FROM generate_series(1, 5) g", (DAY,))
    spec = _spec(schema, "ev", retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"ALTER TABLE {schema}.ev ALTER COLUMN x TYPE {retyped}")
    kept = conn.execute(f"SELECT x::text, x::float8::text FROM {schema}.ev ORDER BY id").fetchall()
    assert kept[0][0] == "0.1" and kept[0][1] != "0.1", kept  # prints as archived, is another number
    try:
        removal = remove_day(conn, spec, spec.period(DAY), store)
    except ArchiveError:
        return  # refused: the day stays, as it should
    # removed: then the archive must at least go back where it came from
    try:
        restored = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    except ArchiveError as exc:
        pytest.fail(f"removed {removal.rows} rows of a day whose column x was retyped {retyped} since it was "
                    f"archived, and restore into the original table now refuses it: {exc}")
    assert restored.rows == 5


def test_a_float_retype_since_the_archive_is_a_change_to_compare_and_a_re_run_and_overwrite_then_removes(
        conn, schema, store, temp_dir):
    """The other side of the removal's refusal above: the same retype (double precision to real) is a change of the
    day for compare (source_changed) and for a re-run of the archive (not skipped onto an archive that no longer
    restores into the table), and the remedy they name works: archive again with overwrite, then the removal
    proves and removes the day, and the archive restores into the original table."""
    from archive_pipeline.core.verify import load_manifest, source_changed

    def manifest():
        return load_manifest(store, archived.key)

    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, x double precision[], "
                 "y double precision)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, ARRAY[g / 10.0], g / 10.0 FROM generate_series(1, 5) g",
                 (DAY,))
    spec = _spec(schema, "ev", retention={"keep_days": 1, "action": "delete"})
    archived = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert source_changed(conn, spec, DAY, manifest()) is None
    conn.execute(f"ALTER TABLE {schema}.ev ALTER COLUMN x TYPE real[]")
    said = source_changed(conn, spec, DAY, manifest())
    assert said and "x: real[] now, double precision[] when archived" in said, said
    with pytest.raises(ArchiveError, match=r"column types changed: x double precision\[\] → real\[\]"):
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
    assert source_changed(conn, spec, DAY, manifest()) is None
    assert remove_day(conn, spec, spec.period(DAY), store).rows == 5
    assert restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir).rows == 5
