"""Hunt 5 (kh): the physical layout of a partitioned source table differing from what the archiver assumes
(multi-level partitioning, inheritance, DEFAULT partitions, day tables that are partitions). Each test asserts
the correct behaviour and fails on the current code because of a bug. Real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def _count(conn, schema: str, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]


def _naming_day_table(conn, schema: str, layout: str) -> None:
    """``log`` and its day table ``log_20240310`` (10 rows), a child of ``log``: by INHERITS (a legacy
    one-table-per-day layout), or a declarative partition of it named by the day."""
    s = sql.Identifier(schema)
    if layout == "inherits":
        conn.execute(sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL)").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 () INHERITS ({}.log)").format(s, s))
    else:
        conn.execute(sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 PARTITION OF {}.log FOR VALUES FROM ('2024-03-10 00:00+00') "
                             "TO ('2024-03-11 00:00+00')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g"
                         ).format(s))


def _naming_spec(schema: str, action: str) -> TableSpec:
    return TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                     retention={"keep_days": 1, "action": action})


def test_naming_mode_detach_of_a_day_table_that_is_a_declarative_partition_is_refused_only_after_the_proof(
        conn, schema, store):
    """A naming-mode table whose day tables are declarative partitions of the parent (``log_20240310 PARTITION OF
    log``, named by the day; README: naming mode is "legacy one-table-per-day (inheritance or not)"), with
    retention action ``detach``. The user runs the removal's dry run: it says it would detach log_20240310. The
    real removal then proves the archive and fails on PostgreSQL's "cannot change inheritance of a partition"
    (42809), wrapped as "the server rejected the archiver's SQL ... report it": detach in naming mode is done
    with ``ALTER TABLE ... NO INHERIT``, which PostgreSQL refuses for a partition. Should: either detach it
    (``ALTER TABLE log DETACH PARTITION log_20240310``), or refuse up front (the dry run too, before the proof)
    with a RemovalRefused naming the partition and what to do; never a dry run promising what the run fails on."""
    _naming_day_table(conn, schema, "partition")
    spec = _naming_spec(schema, "detach")
    archive_partition(conn, spec, DAY, store)
    try:
        planned = remove_day(conn, spec, DAY, store, dry_run=True)
    except RemovalRefused:
        return  # refused up front, as the dry run should when the run would be refused
    assert planned.relation == f"{schema}.log_20240310"
    try:
        removal = remove_day(conn, spec, DAY, store)
    except ArchiveError as exc:
        pytest.fail(f"the dry run said it would detach {planned.relation}; the removal failed: "
                    f"{type(exc).__name__}: {exc}")
    assert removal.rows == 10 and _count(conn, schema, "log") == 0 and _count(conn, schema, "log_20240310") == 10


@pytest.mark.parametrize("layout", ["inherits", "partition"])
def test_naming_mode_restore_into_original_after_drop_puts_the_day_table_back_under_its_parent(
        conn, schema, store, layout):
    """A naming-mode table whose day table ``log_20240310`` is a child of ``log`` (INHERITS, the legacy layout; or
    a declarative partition of it), so the application reads every day through ``log``. Retention (``drop``)
    proves and drops the day's table; later the user restores the day with ``restore --into original`` ("back
    where it came from"). Was: the day table is created again from the manifest's definition as a table of its
    own, inheriting from nothing (and attached to nothing): the restore reports 10 rows restored into
    log_20240310, yet ``SELECT ... FROM log`` finds none of them; the day is not back where it was. Should: the
    re-created day table is a child of ``log`` again (INHERIT / ATTACH PARTITION, as the restore already does for
    a declarative day's dropped partition), so the day's rows read through ``log`` as before the removal."""
    _naming_day_table(conn, schema, layout)
    spec = _naming_spec(schema, "drop")
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    assert _count(conn, schema, "log") == 0
    result = restore_day(conn, store, spec, DAY, into="original")
    assert result.rows == 10 and _count(conn, schema, "log_20240310") == 10
    assert _count(conn, schema, "log") == 10, (
        f"restored into {result.target}, but {schema}.log reads none of the day's rows: the re-created day table "
        "is no longer its child")


def test_restore_into_original_of_a_dropped_day_whose_late_rows_sit_in_the_default_partition_names_them(
        conn, schema, store):
    """A declarative table with a DEFAULT partition (README: DEFAULT partitions add no days), retention action
    ``drop``. The day is archived and its partition dropped; then a late row of the day arrives and lands in
    the DEFAULT partition. The user restores the day with ``restore --into original``. PostgreSQL refuses to
    re-create the day's partition ("updated partition constraint for default partition ... would be violated by
    some row"). Was: a RestoreError whose cause is "a value breaks a constraint (a CHECK, NOT NULL, unique key or
    domain constraint, perhaps added since the day was archived)" and whose remedy is "load into a table without
    that constraint ... or relax the constraint": no archived value breaks anything, and there is no constraint
    to relax; the cause is the DEFAULT partition holding rows of the day (rows in no archive). Should: the error
    says that the DEFAULT partition (named) holds rows of the day, so the day's partition cannot be created
    again, and what to do with them (archive them with overwrite, or move/delete them) before restoring."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_0310 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00')").format(s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_default PARTITION OF {}.ev DEFAULT").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (99, '2024-03-10 05:00+00')").format(s))
    with pytest.raises(ArchiveError) as raised:
        restore_day(conn, store, spec, DAY, into="original")
    exc = raised.value
    told = f"{exc.cause} / {exc.remedy}"
    assert "relax the constraint" not in told and "ev_default" in told and "default partition" in told.lower(), (
        f"cause / remedy: {told}")
    assert _count(conn, schema, "ev") == 1  # nothing restored, the late row kept


def test_restore_into_original_of_a_trigger_routed_inheritance_table_puts_the_rows_back_in_their_child(
        conn, schema, store):
    """Classic (pre-declarative) partitioning: ``ev`` with a child per day (``ev_0310 (CHECK ...) INHERITS (ev)``)
    and a BEFORE INSERT trigger on ``ev`` that routes each row into its child and returns NULL; the table is
    configured in column mode (it is not declaratively partitioned), retention action ``delete``. The day is
    archived (read through ``ev``, the child's rows included) and removed. The user restores it with ``restore
    --into original``. Was: rolled back, "the load added 0 rows to ev, but the archive's manifest records 10 ...
    it has trigger route on INSERT, which may change, drop or redirect rows", though the trigger put every row
    into ``ev_0310``, exactly where it was, and the day's rows read through ``ev`` have the manifest's fingerprint
    (COPY counts the rows a BEFORE trigger redirects as not inserted). The remedy offered, disabling the trigger,
    would put the rows into ``ev`` itself, not their child. Should: the restore succeeds, proven by the day's
    fingerprint in ``ev`` (its children included, as the archive read it), the rows back in ``ev_0310``."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_0310 (CHECK (at >= '2024-03-10 00:00+00' AND at < '2024-03-11 00:00+00')) "
                         "INHERITS ({}.ev)").format(s, s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.route() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "INSERT INTO {}.ev_0310 VALUES (NEW.*); RETURN NULL; END $$").format(s, s))
    conn.execute(sql.SQL("CREATE TRIGGER route BEFORE INSERT ON {}.ev FOR EACH ROW EXECUTE FUNCTION {}.route()"
                         ).format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": "column"},
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    try:
        result = restore_day(conn, store, spec, DAY, into="original")
    except ArchiveError as exc:
        pytest.fail(f"restore into the original refused: {exc}")
    assert result.rows == 10 and result.fingerprint_checked
    held = conn.execute(sql.SQL("SELECT tableoid::regclass::text, count(*) FROM {}.ev GROUP BY 1").format(s)).fetchall()
    assert held == [(f"{schema}.ev_0310", 10)]


def test_restore_into_original_of_a_dropped_partition_whose_schema_is_gone_says_to_create_the_schema(
        conn, schema, store):
    """A declarative table whose day partitions live in another schema than the parent (``old.ev_0310 PARTITION
    OF app.ev``; README: "the partition may live in another schema than its parent"), retention action
    ``drop``. The day is archived and its partition dropped; once the old schema is empty the DBA drops it. Later
    the user restores the day with ``restore --into original``, which re-creates the day's partition where it
    was. Was: a RestoreError whose remedy is "check the table name and day_column in archive_tables.yaml against
    the database": the configuration is right (the parent exists, the column too); what is missing is the
    partition's schema. Should: the error names the missing schema of the day's partition and says to create it
    (CREATE SCHEMA) or restore into a new table."""
    s, old = sql.Identifier(schema), sql.Identifier(f"{schema}_old")
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(old))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_0310 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00')").format(old, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    conn.execute(sql.SQL("DROP SCHEMA {}").format(old))
    with pytest.raises(ArchiveError) as raised:
        restore_day(conn, store, spec, DAY, into="original")
    remedy = raised.value.remedy or ""
    assert "archive_tables.yaml" not in remedy and "CREATE SCHEMA" in remedy and f"{schema}_old" in remedy, (
        f"remedy: {remedy}")
