"""Hunt 16 (vf): the source changing (or standing in a way the removal does not see) while a round-trip
operation runs: removals (let go), their settling, prune, compare, restore."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]


def _count(conn, schema: str, name: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]


def _naming_partitions_referenced(conn, schema: str) -> None:
    """events partitioned by range (created_at), its day tables events_YYYYMMDD its partitions; another table,
    orders, references events through a foreign key ON DELETE CASCADE (allowed since PostgreSQL 12)."""
    ident = lambda name: sql.Identifier(schema, name)  # noqa: E731
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, note text, PRIMARY KEY (id, created_at)) "
                         "PARTITION BY RANGE (created_at)").format(ident("events")))
    for day in DAYS:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            ident(f"events_{day:%Y%m%d}"), ident("events"), sql.Literal(f"{day} 00:00+00"),
            sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', 'n' "
                             "FROM generate_series(1, 50) g").format(ident("events"), sql.Literal(f"{day} 00:00+00")))
    conn.execute(sql.SQL("CREATE TABLE {} (order_id int, event_id int, event_at timestamptz, FOREIGN KEY (event_id, "
                         "event_at) REFERENCES {} ON DELETE CASCADE)").format(ident("orders"), ident("events")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, g, {}::timestamptz + g * interval '1 minute' "
                         "FROM generate_series(1, 50) g").format(ident("orders"), sql.Literal(f"{DAYS[0]} 00:00+00")))


def test_a_delete_of_a_naming_mode_day_table_does_not_cascade_through_a_foreign_key_to_its_partitioned_parent(
        conn, schema, store):
    """Naming mode whose day tables are declarative partitions of the parent (README: supported, DETACH PARTITION
    where the day tables are partitions), retention action 'delete'. Another table, orders, has a foreign key
    REFERENCES events ... ON DELETE CASCADE (to the partitioned parent). The removal's foreign-key check
    (lifecycle._REFERENCING) walks from the day table down and skips constraints with conparentid <> 0; but the
    rows PostgreSQL keeps for a key referencing a partitioned table are exactly such clones, one per partition
    (confrelid = the day table, conparentid = the parent's key). So the check finds nothing, the DELETE FROM the
    day table runs, and the cascade silently deletes all 50 orders rows, which no archive holds; the removal
    reports success. Expected (README: "It refuses a day whose rows other tables' foreign keys reference"):
    RemovalRefused naming the key, and orders untouched.
    Fix idea: in _REFERENCING, also count keys whose confrelid is an ancestor of the table (pg_partition_ancestors)
    or keep clones whose parent key references a relation outside the tree."""
    _naming_partitions_referenced(conn, schema)
    spec = TableSpec(name=f"{schema}.events", start_date=DAYS[0],
                     partitioning={"mode": "naming", "pattern": "events_%Y%m%d"},
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAYS[0], store)
    try:
        remove_day(conn, spec, DAYS[0], store)
    except RemovalRefused as exc:
        assert "foreign key" in str(exc).lower(), exc
    assert _count(conn, schema, "orders") == 50, "the removal cascaded into orders, which no archive holds"


def test_a_drop_of_a_naming_mode_day_table_referenced_through_its_parent_is_refused_by_the_dry_run(
        conn, schema, store):
    """As above, retention action 'drop'. README: drop refuses "a drop of a table that ... other tables' foreign keys
    ... depend on ... (the dry run too)", and "all these refusals come before the proof ... so a day that cannot be
    removed costs no download". The dependents query (lifecycle._DEPENDENTS) skips foreign keys with conparentid
    <> 0, and the key orders has on events is, for the day table, exactly such a clone. Now: the dry run says it
    would drop events_20240310; the real run proves the day (a whole download and load) and then DROP TABLE fails
    with a bare SourceError "the database reported an error (DependentObjectsStillExist ...); to fix: read the
    message". Expected: RemovalRefused from the dry run (and check_removable) naming the foreign key of orders.
    Fix idea: in _DEPENDENTS, keep a clone (conparentid <> 0) whose root key references a relation outside the
    dropped tree (here: the parent events), naming the root key."""
    from archive_pipeline.core.lifecycle import check_removable

    _naming_partitions_referenced(conn, schema)
    spec = TableSpec(name=f"{schema}.events", start_date=DAYS[0],
                     partitioning={"mode": "naming", "pattern": "events_%Y%m%d"},
                     retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, spec, DAYS[0], store)
    with pytest.raises(RemovalRefused) as refused:
        check_removable(conn, spec, DAYS[0])
    assert "orders" in str(refused.value), refused.value
    with pytest.raises(RemovalRefused):
        remove_day(conn, spec, DAYS[0], store, dry_run=True)


def test_a_detach_of_a_naming_mode_day_table_referenced_through_its_parent_is_a_refusal_with_a_removals_remedy(
        conn, schema, store):
    """As above, retention action 'detach'. PostgreSQL's DETACH PARTITION refuses ("removing partition ... violates
    foreign key constraint ..."), which the declarative path turns into a RemovalRefused ("other tables' rows
    reference rows of the day ... Delete or re-point the referencing rows"); the naming-mode path does not catch
    it, and the user is told: SourceError "a value breaks a constraint (a CHECK, NOT NULL, unique key or domain
    constraint, perhaps added since the day was archived) ...; to fix: load into a table without that constraint
    (a new table, or a column of the domain's base type), or relax the constraint while the day is restored" —
    a restore's remedy for a removal, whose cause is a foreign key of another table. Expected: RemovalRefused
    naming the day and saying other tables' rows reference it, with a removal's remedy (no word of restoring).
    Fix idea: catch ForeignKeyViolation around the naming-mode DETACH PARTITION as the declarative one is."""
    _naming_partitions_referenced(conn, schema)
    spec = TableSpec(name=f"{schema}.events", start_date=DAYS[0],
                     partitioning={"mode": "naming", "pattern": "events_%Y%m%d"},
                     retention={"keep_days": 1, "action": "detach"})
    archive_partition(conn, spec, DAYS[0], store)
    with pytest.raises(ArchiveError) as raised:
        remove_day(conn, spec, DAYS[0], store)
    error = raised.value
    said = f"{error} {getattr(error, 'remedy', '')}"
    assert _count(conn, schema, "orders") == 50
    assert isinstance(error, RemovalRefused), f"{type(error).__name__}: {said}"
    assert "restored" not in said and "reference" in said, said


def _meanwhile(conn, monkeypatch, statement: sql.Composable) -> None:
    """Run ``statement`` on a second session right after the removal's pending mark is written and the proven
    object checked (lifecycle._require_proven_object), before the removal locks the day: "between two steps"."""
    import psycopg

    from archive_pipeline.core import lifecycle

    real = lifecycle._require_proven_object

    def between(*args, **kwargs):
        real(*args, **kwargs)
        with psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True) as other:
            other.execute(statement)

    monkeypatch.setattr(lifecycle, "_require_proven_object", between)


def test_a_day_partition_renamed_while_it_is_being_dropped_is_a_retryable_refusal_not_a_configuration_error(
        conn, schema, store, monkeypatch):
    """Declarative table, retention action 'drop'. While the removal runs (its pending mark written, the day not
    locked yet), a maintenance job renames the day's partition (ALTER TABLE events_20240310 RENAME TO ev_x; pg_partman
    and DBAs do). The removal's LOCK TABLE uses the name it described before the mark's PUT, and fails with
    UndefinedTable, which comes out as SourceError "the table, column or schema does not exist (any more) ...; not
    retried: a retry cannot fix this; to fix: check the table name and day_column in archive_tables.yaml against the
    database" — the configuration is right, and a retry (which describes the partition as it is now) would remove
    the day. The code already refuses a partition replaced meanwhile as retryable ("its partition changed while it
    was being removed ... run the removal again", _described_again). Expected: a retryable RemovalRefused saying the
    partition changed while the day was being removed, no word of the configuration; the pending mark taken back.
    Fix idea: lock the target by its OID (resolve it once, lock with the regclass, or catch UndefinedTable at the
    LOCK) and refuse as _described_again does."""
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS, rows_per_day=40, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAYS[0],
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    archive_partition(conn, spec, DAYS[0], store)
    _meanwhile(conn, monkeypatch, sql.SQL("ALTER TABLE {} RENAME TO ev_x").format(
        sql.Identifier(schema, "events_20240310")))
    with pytest.raises(ArchiveError) as raised:
        remove_day(conn, spec, DAYS[0], store)
    error = raised.value
    said = f"{type(error).__name__}: {error}"
    assert "removed" not in load_manifest(store, f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst")
    assert _count(conn, schema, "ev_x") == 40  # (the premise: nothing was removed)
    assert error.retryable, f"a retry removes the day, but the error says it cannot: {said}"
    assert "archive_tables.yaml" not in str(error) and "day_column" not in str(error), said


def test_a_column_dropped_while_a_day_is_being_removed_is_refused_with_a_remedy(conn, schema, store, monkeypatch):
    """Declarative table, retention action 'drop'. The day is proven; while the removal runs (its pending mark
    written, the day not locked yet) a migration drops a column of the table. The removal's re-check under the lock
    (_recheck_and_remove) turns the ColumnsChangedError into RemovalRefused(f"... stays in the source: {exc.message}")
    and loses its remedy: the user reads "the source's columns are now [...], the archive's [...] ..., so its rows are
    not the archive's" and no "to fix" (remedy None). The same change made before the removal started is refused
    with "to fix: archive the day again (overwrite) if the new columns are right". README: every failure names
    table, day, cause and remedy. Expected: the refusal carries a remedy (archive the day again with overwrite,
    then remove it). Fix idea: pass remedy=exc.remedy (or the overwrite remedy) in that RemovalRefused."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS, rows_per_day=40, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAYS[0],
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    archive_partition(conn, spec, DAYS[0], store)
    _meanwhile(conn, monkeypatch, sql.SQL("ALTER TABLE {} DROP COLUMN event_type").format(
        sql.Identifier(schema, "events")))
    with pytest.raises(RemovalRefused) as refused:
        remove_day(conn, spec, DAYS[0], store)
    error = refused.value
    assert "columns are now" in str(error), error  # (the premise: refused for the dropped column)
    assert error.remedy and "overwrite" in error.remedy, f"no remedy: {error} (remedy {error.remedy!r})"


def test_a_removal_on_a_primary_switched_to_read_only_names_default_transaction_read_only_as_its_remedy(
        conn, schema, store):
    """The primary is switched to read-only for a maintenance window (default_transaction_read_only = on for the
    database or role; here for the session) while the day is due. The removal passes its "not a hot standby" check
    (pg_is_in_recovery() is false), then its proof refuses: "deep verification ... reads the archive back into
    PostgreSQL, and a hot standby allows no temporary tables (nor does a read-only session); to fix: give it a
    writable database with the same column types to load them into (scratch_conn; the command line and the code
    location use the primary, ARCHIVE_PG_PRIMARY_DSN, when it is set)". The connection IS the primary: pointing
    ARCHIVE_PG_PRIMARY_DSN at it changes nothing, and scratch_conn is no option of prune. A restore in the same state
    says the right thing ("the database session is read-only ... with default_transaction_read_only off for its role
    and database (ALTER ROLE ... RESET default_transaction_read_only)"). Expected: the removal's refusal names
    default_transaction_read_only (the session is read-only, not a standby) and how to turn it off.
    Fix idea: in verify._prove, tell a read-only primary (pg_is_in_recovery() false, transaction_read_only on) apart
    from a standby and reuse errors._READ_ONLY's cause and remedy."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS, rows_per_day=40, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAYS[0],
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    archive_partition(conn, spec, DAYS[0], store)
    conn.execute("SET default_transaction_read_only = on")
    try:
        with pytest.raises(ArchiveError) as raised:
            remove_day(conn, spec, DAYS[0], store)
    finally:
        conn.execute("SET default_transaction_read_only = off")
    error = raised.value
    assert _count(conn, schema, "events_20240310") == 40
    said = f"{error} {error.remedy or ''}"
    assert "default_transaction_read_only" in said, said
