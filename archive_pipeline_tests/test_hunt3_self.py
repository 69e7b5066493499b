"""My own hunt of the eighteenth session: discovery while a migration holds the table."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import existing_days
from archive_pipeline_tests.helpers import run_check_evaluations

DAY = dt.date(2024, 3, 1)
DAYS = [DAY + dt.timedelta(days=i) for i in range(12)]


def _declarative(conn, schema: str) -> TableSpec:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    for day in DAYS:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"d{day:%Y%m%d}"), s, sql.Literal(f"{day} 00:00+00"),
            sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, {})").format(s, sql.Literal(f"{day} 12:00+00")))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                     partitioning={"mode": "declarative"})


def test_a_locked_parent_costs_one_lock_timeout_not_one_per_day(pg, conn, schema):
    """A migration (ALTER TABLE on the parent) holds the table while the sensor ticks over a year of days:
    each day's row probe waited the whole lock_timeout, one after the other, so a tick over 365 days with
    lock_timeout 5 s took half an hour (Dagster gives a tick 60 s). Once the table itself is found locked,
    the other days are reported unprobed with the same error, without waiting again."""
    spec = _declarative(conn, schema)
    with pg.connect() as migration:
        migration.execute("BEGIN")
        migration.execute(sql.SQL("LOCK TABLE {}.ev IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema)))
        conn.execute("SET lock_timeout = 500")
        try:
            failed: dict = {}
            assert existing_days(conn, spec, DAYS, failed=failed) == []
            assert sorted(failed) == DAYS
            assert {type(e).__name__ for e in failed.values()} == {"LockNotAvailable"}
            assert len({id(e) for e in failed.values()}) == 1  # one probe waited; the others were not tried
        finally:
            conn.execute("RESET lock_timeout")
            migration.execute("ROLLBACK")
    assert existing_days(conn, spec, DAYS) == DAYS  # the lock gone, every day is found again


def test_a_locked_partition_holds_back_only_its_own_day(pg, conn, schema):
    """VACUUM FULL (or ALTER) of one day's partition locks only that child: the other days are still probed
    and found, and only the locked one is reported unprobed."""
    spec = _declarative(conn, schema)
    locked = DAYS[4]
    with pg.connect() as vacuum:
        vacuum.execute("BEGIN")
        vacuum.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(schema, f"d{locked:%Y%m%d}")))
        conn.execute("SET lock_timeout = 300")
        try:
            failed: dict = {}
            assert existing_days(conn, spec, DAYS, failed=failed) == [d for d in DAYS if d != locked]
            assert list(failed) == [locked]
        finally:
            conn.execute("RESET lock_timeout")
            vacuum.execute("ROLLBACK")


def test_rows_that_arrive_after_retention_removed_a_day_turn_source_unchanged_red(conn, schema, archive_env):
    """Retention dropped a day's partition after proving its archive; later an upstream job back-dates rows
    into the table (they land in the DEFAULT partition). The sensor never requests the day again (it is
    materialized), a run of it refuses (the day is removed), and source_unchanged skipped every removed day
    as "not compared": green, while those rows sit in no archive. It must name the day and the late rows,
    and the overwrite it offers must archive them."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.environment import store_from_env
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    days = [DAY, DAY + dt.timedelta(days=1)]
    create_sample_events(conn, days, rows_per_day=5, schema=schema)
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.events_default PARTITION OF {}.events DEFAULT").format(s, s))
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
             "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": "drop"}}
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, "tables": [table]})
    defs = build_definitions(config)
    check_op = f"archive__{schema}__events_source_unchanged"
    with instance_for_test() as instance:
        job = defs.resolve_job_def(f"Archive_{schema}_events")
        for day in days:
            assert job.execute_in_process(instance=instance, partition_key=day.isoformat()).success
        assert remove_day(conn, config.tables[0], DAY, store_from_env(check=False)).rows == 5
        conn.execute(sql.SQL("INSERT INTO {}.events (id, created_at, user_id, event_type) VALUES (99, {}, 1, 'late')")
                     .format(s, sql.Literal(f"{DAY} 08:00+00")))

        def verdict():
            run = defs.resolve_job_def("verify_archives").execute_in_process(
                instance=instance, raise_on_error=False, run_config={"ops": {check_op: {"config": {"days": 2}}}})
            [evaluation] = [e for e in run_check_evaluations(instance, run.run_id) if e.check_name == "source_unchanged"]
            return evaluation

        evaluation = verdict()
        assert not evaluation.passed, evaluation.description
        assert DAY.isoformat() in evaluation.metadata["changed_days"].value
        assert "1 row of the day is in the source again" in evaluation.description and \
            "overwrite" in evaluation.description
        rerun = job.execute_in_process(instance=instance, partition_key=DAY.isoformat(),
                                       run_config={"ops": {f"archive__{schema}__events": {"config": {
                                           "overwrite": True}}}}, raise_on_error=False)
        assert rerun.success, [e.message for e in rerun.all_events if e.event_type_value == "STEP_FAILURE"]
        assert verdict().passed


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_an_unreadable_xml_or_circle_inside_a_composite_or_array_is_refused_naming_the_way_there(
        fmt, conn, schema, store, temp_dir):
    """The values xml's and circle's inputs refuse (a control character built by xmlelement(), a negative
    radius) were refused only as the column itself or its array's elements; inside a composite's field (or an
    array of composites) the day was archived green and recorded exact, and no restore could succeed. Refused
    now wherever they sit, naming the column and the way to the value; a day of good values still round-trips."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.errors import UnsupportedTypeError
    from archive_pipeline.core.keys import table_day_key
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline_tests.helpers import assert_nothing_left

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.shape AS (label text, c circle, doc xml)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.t (id int, at date, s {}.shape, ss {}.shape[])").format(s, s, s))
    good = sql.SQL("ROW('a', circle(point '(1,2)', 3), xmlelement(name a, 'x'))::{}.shape").format(s)
    conn.execute(sql.SQL("INSERT INTO {}.t VALUES (1, {}, {}, ARRAY[{}])").format(s, sql.Literal(DAY), good, good))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format=fmt)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back")
    assert result.rows == restored.rows == 1 and restored.fingerprint_checked

    bad_circle = sql.SQL("ROW('b', circle(point '(0,0)', -1), NULL)::{}.shape").format(s)
    bad_xml = sql.SQL("ROW('c', NULL, xmlelement(name a, E'\\x01'))::{}.shape").format(s)
    for column, value, what in (("s", bad_circle, "negative radius"), ("ss", bad_xml, "XML 1.0 forbids")):
        conn.execute(sql.SQL("DELETE FROM {}.t").format(s))
        row = {"s": sql.SQL("{}, NULL").format(value), "ss": sql.SQL("NULL, ARRAY[{}]").format(value)}[column]
        conn.execute(sql.SQL("INSERT INTO {}.t VALUES (2, {}, {})").format(s, sql.Literal(DAY), row))
        other = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format=fmt,
                          key_template="{prefix}/" + column + "/{schema}.{table}/{date}.{ext}")
        with pytest.raises(UnsupportedTypeError) as refused:
            archive_partition(conn, other, DAY, store, temp_dir=temp_dir)
        message = str(refused.value)
        assert f"column {column!r}" in message and what in message and "field" in message, message
        assert (refused.value.table, refused.value.day) == (other.name, DAY.isoformat())
        assert_nothing_left(store, table_day_key(other, DAY, store.prefix), temp_dir)
