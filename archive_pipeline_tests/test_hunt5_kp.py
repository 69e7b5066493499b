"""Hunt 5 (kp): regressions and holes in the last hour's product fixes (restore's naming-mode day table created
under the configured table, the restore mark on a user's table, ...). Each test asserts the correct behaviour
and fails on the current code because of a bug. Real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def _count(conn, schema: str, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]


def _naming_spec(schema: str, action: str = "drop") -> TableSpec:
    return TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                     retention={"keep_days": 1, "action": action})


def _inherited_log(conn, schema: str, parent_columns: str = "id int, at timestamptz NOT NULL") -> None:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.log (" + parent_columns + ")").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 () INHERITS ({}.log)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 (id, at) SELECT g, '2024-03-10 01:00+00' "
                         "FROM generate_series(1, 10) g").format(s))


def test_naming_restore_into_original_run_again_after_the_parent_was_dropped(conn, schema, store):
    """A naming-mode table ``log`` whose day tables inherit from it; retention ``drop`` proves and drops
    ``log_20240310``; later ``log`` itself is dropped (the table retired). The user restores the day into the
    original: the day table is re-created on its own (``restore._own_parents`` leaves out the gone parent) and
    loaded, fine. The same command run again (a range restore re-run after a kill, as README says is safe):
    refused, "log_20240310 ... exists but no longer inherits from log ... attach it again (ALTER TABLE ...
    INHERIT log)", a statement that cannot work since ``log`` is gone. Should: "already restored" (the table
    holds exactly the archived rows), as before this version. (``_refuse_detached_day_table`` now refuses any
    naming day table with recorded ``parents`` that is under none of them, even one the restore itself created
    alone because the parent is gone.)"""
    _inherited_log(conn, schema)
    spec = _naming_spec(schema)
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "log")))
    first = restore_day(conn, store, spec, DAY, into="original")
    assert first.rows == 10 and _count(conn, schema, "log_20240310") == 10
    try:
        again = restore_day(conn, store, spec, DAY, into="original")
    except ArchiveError as exc:
        pytest.fail(f"the same restore run again is refused: {exc} / {exc.remedy}")
    assert again.inserted == 0 and _count(conn, schema, "log_20240310") == 10


def test_restore_into_new_still_refuses_a_users_table_after_restoring_into_it_as_existing(conn, schema, store):
    """A naming-mode table (no day column). The user restores day 2024-03-10 into their own table ``mine``
    (``into="existing"``; created by hand, no day column, no comment): new in this version, the restore writes
    its restore mark on ``mine`` ("archive_pipeline: rows of ... restored here for 2024-03-10"). Later the user
    restores 2024-03-11 with ``into="new" --target mine`` by mistake (meaning a fresh table). Was: loaded into
    ``mine`` as if it were a table an earlier restore created (the mark read as ours: ``into`` switched to
    "existing"). README: "A table the restore did not create is refused by `new`". Should: refused, "mine
    already exists", nothing loaded."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL)").format(s))
    for day in ("20240310", "20240311"):
        conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({}.log)").format(sql.Identifier(schema, f"log_{day}"), s))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz FROM generate_series(1, 3) g").format(
            sql.Identifier(schema, f"log_{day}")), (f"{day} 01:00+00",))
    spec = _naming_spec(schema)
    archive_partition(conn, spec, DAY, store)
    archive_partition(conn, spec, DAY + dt.timedelta(days=1), store)
    conn.execute(sql.SQL("CREATE TABLE {}.mine (id int, at timestamptz)").format(s))
    assert restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.mine").rows == 3
    with pytest.raises(ArchiveError, match="already exists"):
        restore_day(conn, store, spec, DAY + dt.timedelta(days=1), into="new", target=f"{schema}.mine")
    assert _count(conn, schema, "mine") == 3



@pytest.mark.parametrize("was", ["inherits_now_partitioned", "partition_now_inherits"])
def test_naming_restore_into_original_after_the_parent_changed_from_inheritance_to_partitioning_or_back(
        conn, schema, store, was):
    """A naming-mode table ``log`` whose day tables were children of it by INHERITS (or declarative partitions);
    retention ``drop`` proves and drops ``log_20240310``. Since then the user migrated ``log`` to declarative
    partitioning (``PARTITION BY RANGE (at)``; or back from it to plain inheritance), keeping naming mode.
    ``restore --into original`` of the day: was, ``restore._create`` puts the table back under ``log`` as the
    manifest's ``parents`` recorded it (``INHERITS (log)``, or ``PARTITION OF log`` with the recorded bound),
    which PostgreSQL refuses: "cannot inherit from partitioned table" reported as "the target is not a table
    ... restore into a table (into='new' creates one)", or '"log" is not partitioned' as "the server rejected
    the archiver's SQL ... report it". Should: the day restored (its table created on its own, as for a parent
    gone or another table's, and logged), or a refusal saying that ``log`` is laid out otherwise now and what
    to do; not an internal error nor "the target is not a table"."""
    s = sql.Identifier(schema)
    partitioned = sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(s)
    plain = sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL)").format(s)
    if was == "inherits_now_partitioned":
        conn.execute(plain)
        conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 () INHERITS ({}.log)").format(s, s))
    else:
        conn.execute(partitioned)
        conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 PARTITION OF {}.log FOR VALUES FROM "
                             "('2024-03-10 00:00+00') TO ('2024-03-11 00:00+00')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g"
                         ).format(s))
    spec = _naming_spec(schema)
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    conn.execute(sql.SQL("DROP TABLE {}.log").format(s))
    conn.execute(partitioned if was == "inherits_now_partitioned" else plain)
    try:
        result = restore_day(conn, store, spec, DAY, into="original")
    except ArchiveError as exc:
        assert "report it" not in (exc.remedy or "") and not (exc.cause or "").startswith("the target is not a table"), \
            f"{exc} / cause={exc.cause} / remedy={exc.remedy}"
        return
    assert result.rows == 10 and _count(conn, schema, "log_20240310") == 10


def test_naming_restore_into_original_of_day_tables_inheriting_from_a_parent_of_another_name(conn, schema, store):
    """A legacy naming-mode layout (README: "one-table-per-day (inheritance or not)"): configured as ``log`` with
    pattern ``log_%Y%m%d``, the day tables inherit from a table named ``base``; no table ``log`` exists. Archiving
    works; retention ``drop`` proves and drops ``log_20240310``; the user restores the day into the original.
    Was: the restore fails, "the table, column or schema does not exist (any more) (UndefinedTable: relation
    "...log" does not exist) ... check the table name and day_column in archive_tables.yaml", nothing restored
    (``restore._own_parents`` calls ``_partition_below(conn, base, log)``, whose
    ``pg_partition_tree('log'::regclass)`` fails when the configured table does not exist). Should: the day
    table re-created (on its own, or under ``base``) with its 10 rows."""
    _inherited_log(conn, schema)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO base").format(sql.Identifier(schema, "log")))
    spec = _naming_spec(schema)
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    try:
        result = restore_day(conn, store, spec, DAY, into="original")
    except ArchiveError as exc:
        pytest.fail(f"restore into the original failed: {exc} / {exc.remedy}")
    assert result.rows == 10 and _count(conn, schema, "log_20240310") == 10


def test_restore_into_an_existing_updatable_view_without_a_day_column_is_not_rolled_back_by_the_mark(
        conn, schema, store):
    """A naming-mode table (no day column). The user restores 2024-03-10 with ``into="existing"`` into
    ``mine``, an automatically updatable view over their table ``kept`` (the rows go through it into ``kept``),
    which worked in the previous version. Was (new in this version): after loading and checking the rows, the
    restore writes its restore mark on the target because it has no day column and no comment
    (``restore._uncommented``), with ``COMMENT ON TABLE`` on a view: "\\"mine\\" is not a table" rolls the whole
    day back, reported as "the target is not a table ... restore into a table". Should: the 3 rows restored
    (into ``kept``), the mark left out where the target is not a table (or written with the view's own COMMENT
    ON VIEW)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 3) g"
                         ).format(s))
    spec = TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"})
    archive_partition(conn, spec, DAY, store)
    conn.execute(sql.SQL("CREATE TABLE {}.kept (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("CREATE VIEW {}.mine AS SELECT * FROM {}.kept").format(s, s))
    try:
        result = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.mine")
    except ArchiveError as exc:
        pytest.fail(f"{exc} / {exc.remedy}")
    assert result.rows == 3 and _count(conn, schema, "kept") == 3


def test_restore_into_a_users_table_again_after_the_restored_rows_were_deleted_loads_them_again(conn, schema, store):
    """A naming-mode table (no day column). The user's own table ``mine`` (no day column, no comment) holds 5
    rows of their own. They restore 2024-03-10 (3 rows) into it with ``into="existing"``; new in this version the
    restore marks ``mine`` as holding that day. They find the rows wrong there and delete those 3 (their own 5
    stay), then run the same restore again. Was: "already restored: mine's restore mark lists 2024-03-10",
    nothing loaded (``restore._still_restored`` takes any row of a table without a day column for the day's,
    which holds for a table the restore created, not for the user's own that had rows before). README: "a
    listed day whose rows were deleted since ... loads again". Should: the 3 rows loaded again (8 in all)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 3) g"
                         ).format(s))
    spec = TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"})
    archive_partition(conn, spec, DAY, store)
    conn.execute(sql.SQL("CREATE TABLE {}.mine (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.mine SELECT g, '2020-01-01 00:00+00' FROM generate_series(100, 104) g"
                         ).format(s))
    assert restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.mine").inserted == 3
    conn.execute(sql.SQL("DELETE FROM {}.mine WHERE id < 100").format(s))
    again = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.mine")
    assert again.inserted == 3 and _count(conn, schema, "mine") == 8, again.check
