"""Hunt 21 (ab): a code review of archive_pipeline/core/lifecycle.py and archive_pipeline/defs/retention_assets.py --
the removal of a source day after its archive is proven ('let go'): a source removed without an exact proof (another
table sharing the day's relation), and states a later command misreads.

Held up (read and probed, not kept as tests): a naming-mode ``delete`` of a day table that also inherits from a
second parent (the rows leave that parent too, but ``restore --into original`` refills the existing day table, so
they come back there); a rows-0 archive whose dropped partition was created again empty (the asset and the core
agree: removed again, as documented); the Dagster asset's ``proven`` manifest hash (the in-transaction re-check and
``_require_proven_object`` still run); ``_tidy_removed`` keeps the proven object and ``kept`` and touches only the
generations of the day's own key.
"""

from __future__ import annotations

import datetime as dt

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def test_naming_drop_of_a_day_table_with_a_second_parent_loses_that_tables_rows_for_good(conn, schema, store,
                                                                                        temp_dir):
    """Scenario: a naming-mode table ``<schema>.log`` (pattern ``log_%Y%m%d``, retention ``drop``) whose day table
    ``log_20240310`` inherits from ``log`` and ALSO from ``audit_all`` (``CREATE TABLE log_20240310 () INHERITS
    (log, audit_all)``: a second roll-up parent, as legacy inheritance schemes have), 10 rows. The day is archived,
    then removed (``remove_day``, what ``prune`` and the ``source_removed`` asset run); then, to undo it, restored
    with ``restore --into original``.

    Now: ``_refuse_unremovable``/``_refuse_dependents`` (lifecycle.py) refuse a drop only for what depends ON the day
    table (views, foreign keys, tables inheriting FROM it...), never for the other tables it inherits from itself:
    ``_parents`` is asked only for ``detach``. The proof and the in-transaction re-check hash the day table, which
    equals the archive, and ``DROP TABLE log_20240310`` runs: ``audit_all`` loses the day's 10 rows, silently (the
    dry run said only "would drop"). The restore re-creates ``log_20240310`` inheriting from ``log`` alone (the
    archive records no other parent), so ``audit_all`` stays 10 rows short for good: the round trip is not exact,
    and rows of a table nobody configured for retention are gone.

    Should: a drop (and a detach: it NO INHERITs every parent) of a day table that also inherits from a table other
    than the configured one is refused before the proof, naming that parent (``ALTER TABLE ... NO INHERIT
    audit_all`` first, or use ``delete``), like a table inheriting from it is; or the manifest records the parents
    and the restore re-creates them all. Fix idea: in ``_refuse_unremovable``, for naming mode, refuse when
    ``_parent_rows(target)`` names a parent other than the configured table."""
    def run(statement: str):
        return conn.execute(statement.replace("S.", f'"{schema}".'))

    run("CREATE TABLE S.log (id int, note text)")
    run("CREATE TABLE S.audit_all (id int, note text)")
    run("CREATE TABLE S.log_20240310 () INHERITS (S.log, S.audit_all)")
    run("INSERT INTO S.log_20240310 SELECT g, 'x' FROM generate_series(1, 10) g")
    spec = TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                     retention={"keep_days": 1, "action": "drop"})
    assert archive_partition(conn, spec, DAY, store).rows == 10
    try:
        removal = remove_day(conn, spec, DAY, store, removed_by="test")
    except RemovalRefused as exc:  # the fix: refused, naming the other parent; nothing removed
        assert "audit_all" in str(exc), exc
        assert run("SELECT count(*) FROM S.audit_all").fetchone()[0] == 10
        return
    assert removal.rows == 10
    lost_now = run("SELECT count(*) FROM S.audit_all").fetchone()[0]
    restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    after_restore = run("SELECT count(*) FROM S.audit_all").fetchone()[0]
    assert after_restore == 10, (
        f"the removal of {spec.name} {DAY} (drop) took the day's rows out of {schema}.audit_all, another table the "
        f"day table inherits from (audit_all held {lost_now} of 10 rows after it), and restore --into original did "
        f"not put them back there ({after_restore} of 10): the removal must refuse a day table with another parent")
