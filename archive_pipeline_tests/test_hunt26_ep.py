"""Hunt 26 (ep): the table's schema evolving between the archive and the later commands (columns widened, narrowed,
retyped, renamed, dropped, added; enums, domains, composites, collations), through the re-run's skip decision,
compare, list --check-source, verify --deep, restore, the removal's proof and prune.

What held up (probed end to end, no test here): an empty day's archive after a column was added (declarative, the
empty partition still there: compare equal, list empty, verify --deep clean, the re-run skipped); a column renamed,
dropped or added NOT NULL DEFAULT (compare/verify/re-run call it a change, a removed day's restore names the missing
column); an enum gaining a label, a domain's CHECK tightened (validated), a column's collation changed (equal,
skipped); an enum label renamed (a change; a removed day's restore names the enum and ALTER TYPE ... ADD VALUE); a
composite gaining a field (named by compare, the re-run and restore); int to bigint and varchar(3) to text on the
parent of a removed day (restored into the original, equal after)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.test_hunt26_dy import _spec

DAY = dt.date(2024, 3, 10)
NEXT = DAY + dt.timedelta(days=1)


def _day_tables(conn, schema: str, layout: str, was: str) -> dict:
    """``ev (id int, at timestamptz, v <was>)`` with one table per day, 2024-03-10 and 2024-03-11, as ``layout``
    lays them out; the table's settings (retention drop) for ``_spec``."""
    s = sql.Identifier(schema)
    partitioned = sql.SQL("") if layout == "naming-inheritance" else sql.SQL(" PARTITION BY RANGE (at)")
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL, v {}){}").format(
        s, sql.SQL(was), partitioned))
    for day in (DAY, NEXT):
        child = sql.Identifier(schema, f"ev_{day:%Y%m%d}")
        if layout == "naming-inheritance":
            conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({}.ev)").format(child, s))
        else:
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
                child, s, sql.Literal(f"{day} 00:00+00"), sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
    if layout == "declarative":
        return {}
    return {"partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}}


@pytest.mark.parametrize("was, now, value, back", [
    ("integer", "numeric(12,2)", "5", Decimal("5.00")),          # amounts in whole units become amounts with cents
    ("numeric(8,2)", "numeric(12,4)", "12.50", Decimal("12.5000")),  # more digits before and after the point
])
@pytest.mark.parametrize("layout", ["naming-partition", "naming-inheritance", "declarative"])
def test_a_removed_day_does_not_restore_into_its_table_after_the_parent_widened_a_column(
        conn, schema, store, temp_dir, layout, was, now, value, back):
    """Scenario: ``ev (id, at, v integer)`` (or ``v numeric(8,2)``) with one table per day (naming mode
    ``ev_%Y%m%d``, the day tables partitions of ``ev`` or inheriting from it; or declarative partitions), retention
    ``drop``. 2024-03-10 is archived, proven and dropped. Months later the application widens the column on the
    parent, the usual migration (``ALTER TABLE ev ALTER COLUMN v TYPE numeric(12,2)``: amounts get cents; or
    numeric(8,2) to numeric(12,4)); PostgreSQL rewrites every remaining day's values (5 is 5.00, 12.50 is 12.5000).
    Then an auditor needs the removed day back where it was: ``restore --day 2024-03-10 --into original``.

    Now: restore (``_create``, restore.py line 1502) re-creates ``ev_20240310`` under the parent, which gives it the
    parent's types, numeric(12,2); COPY reads the archived 5 as 5.00, every value exactly the widened value. But the
    check (``_hashed_columns``, line 1824) hashes the widened column as the archived type only with ``widened=own``,
    true only for a table carrying a restore mark (``_listed_days``), never for the source's own table the restore
    just created: ``fingerprint._typed_link`` flags 5.00 as "not the integer's canonical text" (12.5000 is not
    12.50's text), the fingerprint differs and the restore is rolled back with FingerprintMismatchError, whose
    message first says "The archive does not hold the rows it was proven to hold (altered after it was written)"
    and then advises "give its columns the archived types", i.e. narrowing the live table back to integer or
    numeric(8,2), which would round every other day's values. The README (Restoring a day) promises the opposite for
    this very path: a dropped day table "is created from the definition and put back under the configured table ...
    (with its recorded bound; the parent's columns come with it, so one widened or added since is no obstacle)", and
    ``fingerprint.widening`` lists both changes as widenings that keep every value (the proof the restore's own
    tables get through ``Widened``). int to bigint and varchar(3) to text restore fine; the widenings that rewrite
    the values' text do not, so the removed day can never go back into its table.

    Should: the day is restored into ``ev``: its three rows back with the widened values (5.00 / 12.5000), proven
    by the fingerprint of the archived values as the widening wrote them. Fix idea: in ``_hashed_columns`` hash a
    column as ``Widened`` wherever its type now is a ``fingerprint.widening`` of the archived one and the restore
    loads into the original (at least where it created the day's table itself this transaction), not only in a
    table carrying a restore mark; and never advise narrowing a table that holds other days."""
    settings = _day_tables(conn, schema, layout, was)
    for n, day in enumerate((DAY, NEXT)):
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}, {} FROM generate_series(%s::int, %s::int) g").format(
            sql.Identifier(schema, f"ev_{day:%Y%m%d}"), sql.Literal(f"{day} 12:00+00"), sql.SQL(value)),
            (n * 10 + 1, n * 10 + 3))
    spec = _spec(schema, **settings)
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 3
    assert remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 3
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN v TYPE {}").format(sql.Identifier(schema, "ev"), sql.SQL(now)))
    try:
        restored = restore_day(conn, store, spec, DAY, into="original", temp_dir=str(temp_dir))
    except ArchiveError as exc:
        pytest.fail(f"the removed day cannot go back into its table after the parent's {was} became {now} (a "
                    f"widening, every archived value representable): {type(exc).__name__}: {exc}")
    assert restored.inserted == 3, restored
    rows = conn.execute(sql.SQL("SELECT v FROM {} WHERE at >= %s AND at < %s").format(
        sql.Identifier(schema, "ev")), (f"{DAY} 00:00+00", f"{NEXT} 00:00+00")).fetchall()
    assert [r[0] for r in rows] == [back] * 3 and [str(r[0]) for r in rows] == [str(back)] * 3, rows
