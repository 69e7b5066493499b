"""Hunt 24 (bq): a review of the last session's fixes (refused writes in the store, a 501 to one condition, SIGHUP in
the CLI, error classification, restore conflicts, the hand-emptied day's archive, the refused first commit)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import RestoreConflictError, restore_day

DAY = dt.date(2024, 3, 10)


def test_a_conflict_through_a_view_renaming_its_columns_advises_a_restore_into_the_base_table_that_cannot_work(
        conn, schema, store, temp_dir):
    """Scenario: ev's day (id, at, v) is restored --into existing through ``ev_view``, an automatically updatable
    view that renames its base table's columns (SELECT ident AS id, at, body AS v FROM copy); copy already holds
    row 3. The user follows the conflict's advice and restores into the base table with on_conflict='skip'.

    Now: restore._unique_violation (53133ef) finds the refusing key in the view's base table (_view_base) and
    returns a RestoreConflictError "... already exist in ev_view, in its base table copy ...; Restore into copy
    with on_conflict='skip' to add only the missing rows" whatever the view maps: the advised restore into copy
    fails at once with 'column "id" does not exist' (the archive's columns are the view's names, not copy's), so
    the only remedy offered for the conflict is one that cannot work (and the error carries no remedy at all).

    Should: advise the base table only where the view passes its columns through under the archive's names (the
    view's columns are the base table's, same names, no expression); otherwise point at what can work (restore
    into a new table and merge by hand, or remove the conflicting rows from the base table), as a remedy."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, v text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'v' || g FROM generate_series(1, 5) g", (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"CREATE TABLE {schema}.copy (ident int PRIMARY KEY, at date NOT NULL, body text)")
    conn.execute(f"INSERT INTO {schema}.copy VALUES (3, '2024-03-11', 'moved')")
    conn.execute(f"CREATE VIEW {schema}.ev_view AS SELECT ident AS id, at, body AS v FROM {schema}.copy")
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.ev_view", temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert isinstance(caught.value, RestoreConflictError), said
    assert conn.execute(f"SELECT ident FROM {schema}.copy").fetchall() == [(3,)], said
    advised = f"Restore into {schema}.copy with on_conflict='skip'"
    if advised in said:  # the advice given must work: follow it
        try:
            restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.copy", temp_dir=temp_dir,
                        on_conflict="skip")
        except ArchiveError as exc:
            pytest.fail(f"the conflict advised {advised!r} ({said}), which fails: {exc}")
        assert conn.execute(f"SELECT count(*) FROM {schema}.copy").fetchone()[0] == 5
