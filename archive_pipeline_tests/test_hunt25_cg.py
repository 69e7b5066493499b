"""Hunt 25 (cg): the source changing between and during the steps of each command (DDL and rows changed between an
archive and its verify / compare / prune / restore / re-run)."""

from __future__ import annotations

import datetime as dt

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core import keys
from archive_pipeline.core.verify import load_manifest, source_changed

DAY = dt.date(2024, 3, 10)


def _spec(schema: str, name: str, **extra):
    table = {"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat(), "format": "jsonl",
             "compression": "zstd", **extra}
    return parse_config({"tables": [table]}).tables[0]


def test_a_removed_day_restored_then_retyped_inet_to_text_is_skipped_green_by_a_rerun(conn, schema, store, temp_dir):
    """Scenario: ``ev (id int, at date, x inet)`` holds five rows of 2024-03-10 with x = '10.0.0.1'; the day is
    archived and removed by retention (action delete), then restored into its table (restore_day into='original':
    the rows are back). A migration then retypes x to text (``ALTER COLUMN x TYPE text``: the column now holds
    '10.0.0.1/32', the archive's JSONL '10.0.0.1'). The day is archived again (no overwrite).

    Now: the run is green, skipped onto the removed day's archive. ``_Archiving._keep`` returns True for a manifest
    marked removed as soon as ``_same_rows`` holds (fingerprint and names), before the checks that a live manifest
    gets (``shape_changes``, ``_inexact_retypes``): the inet's fingerprint is its ``::text``, the same as the text
    column's. compare (``verify.source_changed`` -> ``refuse_retype``) calls the same day changed ("a column's
    type changed ... would not read back"), and a live archive's re-run raises LateRowsError for the same retype.
    The green skip claims the archive holds the day's rows, and a restore of it into the table is refused.

    Should: a removed day whose rows are back is kept only where a live one would be: run the same shape and
    inexact-retype checks before ``if same: return True`` in the ``removed`` branch of ``_keep`` (raise
    LateRowsError / DayRemovedError naming the retype, as the live path's ``_change_message`` does)."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.restore import restore_day
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, x inet)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, '10.0.0.1' FROM generate_series(1, 5) g", (DAY,))
    spec = _spec(schema, "ev", retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    remove_day(conn, spec, spec.period(DAY), store)
    restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    conn.execute(f"ALTER TABLE {schema}.ev ALTER COLUMN x TYPE text")
    manifest = load_manifest(store, keys.table_day_key(spec, spec.period(DAY), store.prefix))
    changed = source_changed(conn, spec, DAY, manifest)
    assert changed, "compare calls the retyped day equal"
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError:
        return  # refused as changed: as compare says
    raise AssertionError(f"re-run green (skipped={result.skipped}, {result.rows} rows) while compare says: {changed}")
