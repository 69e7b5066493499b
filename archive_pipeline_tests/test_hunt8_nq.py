"""Hunt 8 (nq): adversarial review of f01d213..176c233 (same_shapes after the day's read, same_members on a row-count
mismatch, the removal's type-change refusal, the restore's open-ended bound, NEEDS_OVERWRITE advice)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core import archive as archive_module
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.helpers import decompress, download, read_csv, read_jsonl

DAY = dt.date(2024, 3, 10)


def _table(conn, schema: str, b_type: str = "text") -> None:
    """ev(id int, at timestamp, c comp) with comp (a int, b <b_type>), three rows on DAY, b = 'q'."""
    conn.execute(f"CREATE TYPE {schema}.comp AS (a int, b {b_type})")
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamp, c {schema}.comp)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s::timestamp + g * interval '1 hour', "
                 f"ROW(g, 'q')::{schema}.comp FROM generate_series(1, 3) g", (f"{DAY}",))


@pytest.mark.parametrize("fmt,setup,change", [
    ("csv", "", "DROP ATTRIBUTE b, ADD ATTRIBUTE b text"),
    ("jsonl", "", "DROP ATTRIBUTE b, ADD ATTRIBUTE b text"),
    # b retyped from one enum to another (ALTER ATTRIBUTE ... TYPE is refused while a column uses the type)
    ("csv", "CREATE TYPE {s}.e1 AS ENUM ('q'); CREATE TYPE {s}.e2 AS ENUM ('q', 'r')",
     "DROP ATTRIBUTE b, ADD ATTRIBUTE b {s}.e2"),
])
def test_a_composite_field_dropped_and_added_again_while_the_day_is_read_is_not_archived_green(
        fmt, setup, change, pg, conn, schema, store, s3_client, bucket, temp_dir, monkeypatch):
    """A user archives a day of ``ev`` (a column ``c`` of composite type ``comp (a int, b text)``, b = 'q' in every
    row). While the run is between its fingerprint and its COPY, a migration in another session commits
    ``ALTER TYPE comp DROP ATTRIBUTE b, ADD ATTRIBUTE b text`` (the only way to retype a field of a composite a
    table uses: ALTER ATTRIBUTE ... TYPE is refused; here to the same type, or from enum e1 to enum e2). Every
    stored value loses b (it reads NULL under the new attribute): the fingerprint hashed ``(1,q)``, the COPY writes
    ``(1,)``. The new ``same_shapes`` check compares only the field names and a user type's kind ('a composite',
    'an enum'), which are the same before and after, so the run publishes green an archive whose rows are not the
    snapshot's (nor what its fingerprint describes). It should fail the day, retryable, naming the composite, as it
    does for ``ADD ATTRIBUTE`` or ``DROP ATTRIBUTE`` alone. (Cause: ``source.same_shapes`` compares ShapeNode
    ``[:3]`` — way, kind, field names — not the composite's attributes themselves: attnums/dropped attributes, or
    each field's type oid.)"""
    if setup:
        for statement in setup.format(s=schema).split("; "):
            conn.execute(statement)
    _table(conn, schema, f"{schema}.e1" if setup else "text")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="none")
    real = archive_module.refuse_unrestorable

    def migrate_then(table):  # called after the fingerprint, before the day's rows are read
        with pg.connect() as other:
            other.execute(f"ALTER TYPE {schema}.comp {change.format(s=schema)}")
        return real(table)

    monkeypatch.setattr(archive_module, "refuse_unrestorable", migrate_then)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert exc.retryable and "comp" in str(exc), str(exc)
        return
    body = decompress(download(s3_client, bucket, result.key), "none")
    rows = read_jsonl(body) if fmt == "jsonl" else read_csv(body)
    pytest.fail(f"archived green with values {[r['c'] for r in rows]} under a fingerprint of (1,q), (2,q), (3,q)")


def test_a_composite_column_archives_under_a_path_that_shadows_pg_catalogs_operators(conn, schema, store, temp_dir):
    """A role whose search_path lists a schema of its own before pg_catalog (``SET search_path = s, pg_catalog``),
    that schema holding an operator of its own with the signature of one of PostgreSQL's (here ``>`` on smallint and
    integer). The archive promises PostgreSQL's own operators are what its SQL resolves to on such a path (see
    session_settings, test_writepath), and a table without a composite column archives there. A table with one
    (``c comp``) now fails every run, "a composite type inside column(s) 'c' ... was altered (ALTER TYPE ...) while
    the day was read", retried for ever: nothing was altered. (Cause: ``source.same_shapes`` runs
    ``column_names``/``composite_shapes`` after the snapshot's transaction ended, under the session's own path, not
    the snapshot's pg_catalog-first one as ``same_printed_names`` sets; ``attnum > 0`` calls the user's ``>``.)"""
    _table(conn, schema)
    s = schema
    conn.execute(f"CREATE FUNCTION {s}.never(smallint, integer) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT false'")
    conn.execute(f"CREATE OPERATOR {s}.> (LEFTARG = smallint, RIGHTARG = integer, FUNCTION = {s}.never)")
    conn.execute(f'SET search_path = "{s}", pg_catalog')
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3


@pytest.mark.parametrize("migration", ["ALTER TABLE {t} RENAME COLUMN c TO c2", "ALTER TABLE {t} DROP COLUMN c"])
def test_a_column_migration_waiting_for_the_read_is_not_blamed_on_a_composite(migration, pg, conn, schema, store,
                                                                             temp_dir, monkeypatch):
    """A user archives a day of ``ev`` (a column ``c`` of composite type ``comp``). A migration,
    ``ALTER TABLE ev RENAME COLUMN c TO c2`` (or ``DROP COLUMN c``), is issued during the read: it waits for the
    read's lock and commits the moment the read's transaction ends. The day's rows were read consistently (as for
    a table without a composite column, whose run is green). The run instead fails: "a composite type inside
    column(s) 'c' of ev was altered (ALTER TYPE ... ADD, DROP or ALTER ATTRIBUTE) while the day was read ...
    alter types outside the table's archive runs": no type was altered. It should not fail the day over a change
    committed after the read (or, at least, not name a type alteration that never happened). (Cause:
    ``source.same_shapes`` looks the columns up by name after the snapshot ended, so a column renamed or dropped
    since reads as a composite whose shape is gone.)"""
    _table(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")
    real = archive_module.same_printed_names

    def migrated_then(*args):  # the read's transaction has ended: the waiting migration commits first
        with pg.connect() as other:
            other.execute(migration.format(t=f"{schema}.ev"))
        return real(*args)

    monkeypatch.setattr(archive_module, "same_printed_names", migrated_then)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "ALTER TYPE" not in str(exc) and "composite" not in str(exc), str(exc)
        return
    assert result.rows == 3


def test_a_removal_refused_for_a_type_change_and_deleted_rows_does_not_say_no_row_changed(pg, conn, schema, store,
                                                                                         temp_dir, monkeypatch):
    """Retention action 'delete' on ``ev`` (a composite column ``c``): the day (3 rows) is archived and its removal
    proves the archive. Between that proof and the removal's lock, a migration commits ``ALTER TYPE comp ADD
    ATTRIBUTE z int`` and an application deletes one of the day's rows. The re-check under the lock refuses (right),
    but says "a type inside its columns changed since the day was archived and proven (not its rows): ...": a row
    was deleted, and the refusal no longer says "2 rows now, 3 archived". It should not assert that no row changed
    when it cannot tell (a fingerprint that differs with a type changed says nothing about the rows): name the
    type change and still give the row counts, or word it as "(its rows may not have changed)". (Cause:
    ``lifecycle._recheck_and_remove`` raises the shape_changes refusal whenever a shape changed, before and instead
    of the rows' refusal, with "(not its rows)".)"""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    _table(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none",
                     retention={"keep_days": 30, "action": "delete"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
    real = lifecycle._require_proven_object

    def migrate_then(*args):  # after the proof, before the removal's lock
        with pg.connect() as other:
            other.execute(f"ALTER TYPE {schema}.comp ADD ATTRIBUTE z int")
            other.execute(f"DELETE FROM {schema}.ev WHERE id = 1")
        return real(*args)

    monkeypatch.setattr(lifecycle, "_require_proven_object", migrate_then)
    with pytest.raises(RemovalRefused) as refused:
        remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
    message = str(refused.value)
    assert conn.execute(f"SELECT count(*) FROM {schema}.ev").fetchone()[0] == 2
    assert "not its rows" not in message, message


def test_a_retried_backfill_does_not_advise_redoing_a_changed_day_failed_in_its_first_attempt(pg, conn, schema,
                                                                                              archive_env):
    """A backfill of 2024-03-10..12 (retry: max_retries 1). 2024-03-10 was archived before and a row of it was
    updated since (LateRowsError: only an overwrite ends it); another run holds 2024-03-11's lock (transient). The
    first attempt fails both (its failure rightly leaves 2024-03-10 out of 'Then:'); Dagster retries the step,
    which does not try 2024-03-10 again (failed for good) but names it from the first attempt's observation. The
    final failure then says "Then: re-execute this run ... or launch a backfill of the failed days ...; days
    already archived are not archived again": for 2024-03-10 that fails the same way for ever; this commit's
    NEEDS_OVERWRITE was meant to keep such a day out of 'Then:'. (Cause: ``defs/assets._failed_for_good`` rebuilds
    the earlier attempt's days as ``Failure``s without metadata, so ``_needs_overwrite`` (and ``_removed``) are
    False for them in ``batch_failure``.)"""
    from psycopg import sql

    from archive_pipeline.core.locks import lock_key
    from archive_pipeline_tests.test_hunt4_tt import _failures, _range
    from archive_pipeline.local.local_stack import create_sample_events
    from dagster import instance_for_test
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions

    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    create_sample_events(conn, days, rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 1, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat()}]})
    spec = config.tables[0]
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance, pg.connect() as other:
        assert job.execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        conn.execute(sql.SQL("UPDATE {} SET created_at = created_at + interval '1 second' WHERE created_at = "
                             "(SELECT min(created_at) FROM {} WHERE created_at >= %s AND created_at < %s)").format(
            sql.Identifier(schema, "events"), sql.Identifier(schema, "events")), (DAY, days[1]))
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, days[1])).fetchone()[0]
        result = job.execute_in_process(instance=instance, tags=_range(days[0], days[-1]), raise_on_error=False)
        failures = _failures(instance, result.run_id)
    message = failures[-1]
    assert "from the earlier attempt" in message and "changed since it was archived" in message, failures  # premise
    last = message.rsplit("Then:", 1)
    assert len(last) == 1 or ("the failed days" not in last[1] and DAY.isoformat() not in last[1]), last[-1]


def test_a_composite_field_renamed_between_the_removals_proof_and_its_lock_keeps_the_day(pg, conn, schema, store,
                                                                                         temp_dir, monkeypatch):
    """Retention action 'delete' on ``ev`` (a composite column ``c`` of ``comp (a int, b text)``, CSV). The day is
    archived and its removal proves the archive. Between that proof and the removal's lock, a migration commits
    ``ALTER TYPE comp RENAME ATTRIBUTE b TO b2``. The re-check under the lock compares only the fingerprint (a
    composite prints positionally: the same text) and deletes the day's rows. A restore of the day into the
    original table is then refused ("a type inside its columns is not the one the day was archived with ... (a,
    b2) now, (a, b) when archived"). Archiving calls this change "changed" (``_keep``), the proof refuses it, and
    this commit made the re-check name a type change: it should refuse the removal here too, rows kept. (Cause:
    ``lifecycle._recheck_and_remove`` asks ``shape_changes`` only when the fingerprint differs.)"""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    _table(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none",
                     retention={"keep_days": 30, "action": "delete"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
    real = lifecycle._require_proven_object

    def migrate_then(*args):  # after the proof, before the removal's lock
        with pg.connect() as other:
            other.execute(f"ALTER TYPE {schema}.comp RENAME ATTRIBUTE b TO b2")
        return real(*args)

    monkeypatch.setattr(lifecycle, "_require_proven_object", migrate_then)
    try:
        remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except RemovalRefused as refused:
        assert "comp" in str(refused), str(refused)
    assert conn.execute(f"SELECT count(*) FROM {schema}.ev").fetchone()[0] == 3, \
        "the day's rows were deleted under an archive that no longer restores into the table"


def test_a_backfill_over_a_removed_day_with_rows_back_does_not_advise_re_executing_it(conn, schema, archive_env,
                                                                                      s3_client):
    """Retention removed 2024-03-10 (delete) after its archive was proven; late rows for that day arrive in the
    source afterwards. A person backfills 2024-03-10..11: the day fails, "was removed from the source ... and the
    source now has other rows (…); archiving them without overwrite would replace the only copy ... to archive
    the rows there are now, set overwrite" (its remedy: archive the day again with overwrite). The run's failure
    still ends "Then: re-execute this run ... or launch a backfill of the failed days ...": that fails the same way
    for ever, the case this commit's NEEDS_OVERWRITE was made for. (Cause: ``defs/assets.failure`` sets
    NEEDS_OVERWRITE only for LateRowsError and TYPE_GONE, not a DayRemovedError whose remedy is
    ``_LATE_AFTER_REMOVAL``; it is not NOTHING_TO_DO either.)"""
    from psycopg import sql

    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.store import S3Store
    from archive_pipeline_tests.test_hunt4_tt import _failures, _range
    from archive_pipeline.local.local_stack import create_sample_events
    from dagster import instance_for_test
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions

    days = [DAY, DAY + dt.timedelta(days=1)]
    create_sample_events(conn, days, rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat(),
                                       "retention": {"keep_days": 1, "action": "delete"}}]})
    spec = config.tables[0]
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=_range(*days)).success
        remove_day(conn, spec, DAY, S3Store(s3_client, archive_env, prefix="archive"))
        create_sample_events(conn, [DAY], rows_per_day=2, schema=schema)  # late rows of the removed day
        result = job.execute_in_process(instance=instance, tags=_range(*days), raise_on_error=False)
        [message] = _failures(instance, result.run_id)
    assert "set overwrite" in message, message  # (the premise)
    last = message.rsplit("Then:", 1)
    assert len(last) == 1 or ("the failed days" not in last[1] and DAY.isoformat() not in last[1]), last[-1]
