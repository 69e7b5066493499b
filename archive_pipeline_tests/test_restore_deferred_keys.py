"""An archived row already in the target is a conflict, on every load path and through a simple view.

The day-column path fires deferred constraints through restore._fire_deferred (test_hunt9_oc); a naming-mode
day (no day column) restored into a table holding other days is proven by the rows the INSERT added
(_insert_fingerprinted, _added_through_view for a view), each of which fires the deferred constraints itself
before its proof: there a deferred unique violation must come out the same way. Through an automatically
updatable view the key that refuses is its base table's: that is the target's own row, not "a table an INSERT
trigger writes" (there is no trigger) with the remedy to disable triggers."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import RestoreConflictError, restore_day

DAY = dt.date(2024, 3, 10)


def _naming_day(conn, schema: str) -> TableSpec:
    conn.execute(f"CREATE TABLE {schema}.log (id int, note text)")
    conn.execute(f"CREATE TABLE {schema}.log_20240310 () INHERITS ({schema}.log)")
    conn.execute(f"INSERT INTO {schema}.log_20240310 SELECT g, 'note ' || g FROM generate_series(1, 3) g")
    return TableSpec(name=f"{schema}.log", start_date=DAY, format="csv", compression="none",
                     partitioning={"mode": "naming", "pattern": "log_%Y%m%d"})


@pytest.mark.parametrize("through", ["table", "view"])
@pytest.mark.parametrize("on_conflict", ["fail", "skip"])
def test_a_deferred_key_finding_an_archived_row_is_a_conflict_without_a_day_column(
        conn, schema, store, temp_dir, through, on_conflict):
    """Row 2 of the archived day is already in the target (moved there since), whose primary key is DEFERRABLE
    INITIALLY DEFERRED. The restore must fail as a RestoreConflictError naming the key, change nothing, and never
    suggest relaxing the key (that doubles row 2)."""
    spec = _naming_day(conn, schema)
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
    conn.execute(f"CREATE TABLE {schema}.store (id int, note text, PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED)")
    conn.execute(f"INSERT INTO {schema}.store VALUES (2, 'moved'), (100, 'an older day')")
    target = f"{schema}.store"
    if through == "view":
        conn.execute(f"CREATE VIEW {schema}.all_logs AS SELECT * FROM {schema}.store")
        target = f"{schema}.all_logs"
    before = conn.execute(f"SELECT * FROM {schema}.store ORDER BY id").fetchall()
    with pytest.raises(ArchiveError) as caught:
        result = restore_day(conn, store, spec, DAY, into="existing", target=target, temp_dir=temp_dir,
                             on_conflict=on_conflict)
        pytest.fail(f"restored: {result.check}")
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert conn.execute(f"SELECT * FROM {schema}.store ORDER BY id").fetchall() == before, said
    if on_conflict == "skip":
        # skip needs a key ON CONFLICT can use: not a deferrable one, not through a view; refused before the load
        assert caught.value.table == spec.name and str(caught.value.day) == str(DAY), said
        assert "nothing was restored" in said, said
        return
    assert isinstance(caught.value, RestoreConflictError), said
    assert "(id)=(2)" in said, said
    assert "relax" not in said, said


def test_an_archived_row_already_in_a_simple_views_base_table_is_a_conflict(conn, schema, store, temp_dir):
    """The day-column path, an immediate key: ev's day restored --into existing through ``ev_view`` (SELECT * FROM
    copy), copy holding row 3 already. The refusal is the conflict it is, not a trigger's."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, v text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'v' || g FROM generate_series(1, 5) g", (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"CREATE TABLE {schema}.copy (id int PRIMARY KEY, at date NOT NULL, v text)")
    conn.execute(f"INSERT INTO {schema}.copy VALUES (3, '2024-03-11', 'moved')")
    conn.execute(f"CREATE VIEW {schema}.ev_view AS SELECT * FROM {schema}.copy")
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.ev_view", temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert conn.execute(f"SELECT id FROM {schema}.copy").fetchall() == [(3,)], said
    assert isinstance(caught.value, RestoreConflictError) and "(id)=(3)" in said, said
    assert "trigger" not in said, said
    assert f"Restore into {schema}.copy with on_conflict='skip'" in said, said
