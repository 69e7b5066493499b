"""Hunt: retention removals that delete rows no proven archive holds, refuse wrongly for ever, or leave the
manifest and the source inconsistent. Real PostgreSQL and S3 (moto over HTTP); no mocks of the database."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _count(conn, table: sql.Identifier, where: str = "TRUE") -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE ").format(table) + sql.SQL(where)).fetchone()[0]


def _events_with_side_table(conn, schema: str, side: str) -> TableSpec:
    """``ev`` (column mode, action delete): 20 rows on DAY; ``side``: 20 rows keyed by ev's ids, in no archive."""
    ev, other = _ident(schema, "ev"), _ident(schema, side)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, v text)").format(ev))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', 'r' || g "
                         "FROM generate_series(1, 20) g").format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} (event_id int, data text)").format(other))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'p' || g FROM generate_series(1, 20) g").format(other))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-09", partitioning={"mode": "column"},
                     retention={"keep_days": 1, "action": "delete"})


def test_an_instead_rule_on_delete_gets_the_day_marked_removed_while_every_row_stays(conn, schema, store):
    """``ev`` has ``ON DELETE DO INSTEAD DELETE FROM shadow WHERE event_id = OLD.id``. The removal's DELETE
    deletes no row of ``ev``, but PostgreSQL reports the INSTEAD query's row count (20), which equals the archived
    count, so the guard ``deleted != now.rows`` (meant for "a trigger, a rule or row security") passes. Was: the
    removal commits and the manifest says ``removed: done, rows 20`` while all 20 rows are still in ``ev``, and the
    20 rows of ``shadow`` (in no archive) are gone. Should: refused and rolled back (every row of both tables
    stays, no removal mark), or at least never marked done over a source that still holds the day."""
    spec = _events_with_side_table(conn, schema, "shadow")
    ev, shadow = _ident(schema, "ev"), _ident(schema, "shadow")
    conn.execute(sql.SQL("CREATE RULE redirect AS ON DELETE TO {} DO INSTEAD DELETE FROM {} "
                         "WHERE event_id = OLD.id").format(ev, shadow))
    key = archive_partition(conn, spec, DAY, store).key
    try:
        remove_day(conn, spec, DAY, store)
    except RemovalRefused:
        pass
    mark = (load_manifest(store, key) or {}).get("removed")
    left_in_ev = _count(conn, ev)
    assert not (mark and mark.get("state") == "done" and left_in_ev), (
        f"manifest says removed ({mark}) but ev still holds {left_in_ev} rows of the day")
    assert _count(conn, shadow) == 20, "rows of another table, in no archive, were deleted by the removal"


@pytest.mark.parametrize("how", ["trigger", "rule"])
def test_a_delete_cascading_by_trigger_or_rule_takes_rows_of_other_tables_no_archive_holds(conn, schema, store, how):
    """``payload`` rows belong to ``ev`` rows, cascaded by hand: an AFTER DELETE trigger (the usual way before
    PostgreSQL 12 allowed foreign keys to partitioned tables) or an ON DELETE DO ALSO rule deletes them. A foreign
    key ON DELETE CASCADE is refused by the removal ("deleting archived rows would reach rows of other tables"),
    but the same cascade by trigger or rule is not looked for, and the row count of the DELETE is unchanged. Was:
    the day is removed and the 20 payload rows, which no archive holds, are deleted with it. Should: refused like
    the foreign key (or only with an explicit opt-in), every payload row kept."""
    spec = _events_with_side_table(conn, schema, "payload")
    ev, payload = _ident(schema, "ev"), _ident(schema, "payload")
    if how == "trigger":
        conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                             "$$ BEGIN DELETE FROM {} WHERE event_id = OLD.id; RETURN OLD; END $$").format(
            _ident(schema, "cascade_payload"), payload))
        conn.execute(sql.SQL("CREATE TRIGGER cascade_payload AFTER DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
                             ).format(ev, _ident(schema, "cascade_payload")))
    else:
        conn.execute(sql.SQL("CREATE RULE cascade_payload AS ON DELETE TO {} DO ALSO DELETE FROM {} "
                             "WHERE event_id = OLD.id").format(ev, payload))
    archive_partition(conn, spec, DAY, store)
    try:
        remove_day(conn, spec, DAY, store)
    except RemovalRefused:
        pass
    assert _count(conn, payload) == 20, "the removal deleted payload rows that no archive holds"


def test_hourly_wall_clock_partitions_an_hour_whose_rows_span_the_spring_gap_child_is_refused_for_ever(
        conn, schema, store):
    """America/New_York, ``timestamp`` column, hourly partitions by wall clock as pg_partman makes them: 00-01,
    01-02, 02-03 (the skipped hour: the server reads both bounds as 07:00Z, a zero-width range) and 03-04. By the
    README, values in the skipped hour belong to the hour before it, so the archive of 2024-03-10-01:00 holds the
    01:30 and the 02:30 row (read through the parent). The removal (action drop) picks its target by the children
    overlapping the hour, which leaves the zero-width 02-03 child out: the dry run says it would drop
    ``ev_0100`` (2 rows) after the proof passes; the real run then fingerprints only ``ev_0100`` and refuses with
    "its rows changed since they were archived and proven (1 rows now, 2 archived); archive the day again
    (overwrite)". Nothing changed; an overwrite skips (same fingerprint) and the next removal refuses the same
    way, for ever, after a whole proof each time. Should: the dry run and the real run agree: refused up front
    naming the other partition holding rows of the hour (or both partitions removed)."""
    ev = _ident(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamp NOT NULL, v text) PARTITION BY RANGE (at)").format(ev))
    for h in range(4):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            _ident(schema, f"ev_{h:02d}00"), ev, sql.Literal(f"2024-03-10 {h:02d}:00"),
            sql.Literal(f"2024-03-10 {h + 1:02d}:00")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 00:30', 'a'), (2, '2024-03-10 01:30', 'b'), "
                         "(3, '2024-03-10 02:30', 'in the gap'), (4, '2024-03-10 03:30', 'c')").format(ev))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-10", granularity="hourly",
                     timezone="America/New_York", partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop"})
    hour = spec.period("2024-03-10-01:00")
    assert archive_partition(conn, spec, hour, store).rows == 2
    try:
        planned = remove_day(conn, spec, hour, store, dry_run=True)
    except RemovalRefused:
        return  # refused up front: fine
    assert planned.dry_run
    # the dry run said it would drop: the real run must do what it said, and leave no row of the hour behind
    for attempt in range(2):
        if attempt:  # the remedy the refusal gives
            archive_partition(conn, spec, hour, store, overwrite=True)
        try:
            removal = remove_day(conn, spec, hour, store)
            break
        except RemovalRefused as exc:
            refused = exc
    else:
        pytest.fail(f"dry run said 'would drop {planned.relation}', the real run refuses every time: {refused}")
    assert removal.rows == 2
    assert _count(conn, ev, "at >= '2024-03-10 01:00' AND at < '2024-03-10 03:00'") == 0


def test_a_day_restored_after_removal_then_edited_can_never_be_archived_or_removed_again(conn, schema, store):
    """Archive ``ev``'s day (20 rows), remove it (delete), restore it into the original table (the README: "A day
    restored into the original table after retention removed it is an ordinary source day again"), then edit
    one row, as one may edit any source day. An ordinary changed day is archived again with ``overwrite``. Was:
    the manifest keeps ``removed: done`` after the restore, so the overwrite is refused (DayRemovedError: "the
    source now has other rows ... Restore it from the archive"), and the removal is refused as not proven (the
    source differs from the archive): the day can be neither archived nor removed, for ever, and the edited
    row is in no archive. Should: the restored day archives again with overwrite (the source holds a day again,
    no only copy is replaced by an empty one), and then is removed again."""
    from archive_pipeline.core.restore import restore_day

    spec = _events_with_side_table(conn, schema, "unused")
    ev = _ident(schema, "ev")
    key = archive_partition(conn, spec, DAY, store).key
    assert remove_day(conn, spec, DAY, store).rows == 20 and _count(conn, ev) == 0
    assert restore_day(conn, store, spec, DAY, into="original").rows == 20
    conn.execute(sql.SQL("UPDATE {} SET v = 'edited' WHERE id = 7").format(ev))
    result = archive_partition(conn, spec, DAY, store, overwrite=True)
    assert result.rows == 20 and load_manifest(store, key).get("removed") is None
    assert remove_day(conn, spec, DAY, store).rows == 20 and _count(conn, ev) == 0
