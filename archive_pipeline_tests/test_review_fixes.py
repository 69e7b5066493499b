"""Review of the fourth session's fixes (856d8c8..): each test failed on the code before its fix."""

from __future__ import annotations

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec


def spec(**kw) -> TableSpec:
    return TableSpec(**{"name": "public.events", "day_column": "at", "start_date": "2024-01-01", **kw})


# ------------------------------------------------------------------------------------------------
# restore_archive takes the source's (table, day) lock for every mode


def test_restoring_a_day_into_a_new_table_is_not_refused_while_the_day_is_being_archived(pg, conn, schema, store):
    """A restore into a new table (or any table but the source) changes nothing the archive of the day
    reads or writes; since the lock was taken for every mode it fails while a run archives (or removes)
    the day: for a big day, for as long as that run takes."""
    import datetime as dt

    from archive_pipeline.core.locks import table_day_lock
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline.local.local_stack import create_sample_events

    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=20, schema=schema)
    table = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=day,
                      partitioning={"mode": "declarative"})
    archive_partition(conn, table, day, store)
    with pg.connect() as archiving:
        archiving.autocommit = True
        with table_day_lock(archiving, table.name, table.period(day)):  # a run archiving the day (overwrite)
            restored = restore_day(conn, store, table, day, into="new", target=f"{schema}.events_back")
    assert restored.rows == 20


# ------------------------------------------------------------------------------------------------
# row_security off: only in the archive's and the fingerprint's sessions


def test_a_day_row_security_hides_entirely_is_not_taken_for_a_day_without_rows(conn, schema, store):
    """Since ddbb6f4 a policy that hides rows from the archiving role fails the day instead of archiving
    the visible rows. But which days exist (existing_days: the sensor, plan, prune, list) is still asked
    with row_security on: in column mode a day whose rows the policy hides entirely is 'not in the
    source', so the sensor never requests it and nothing fails: the day is silently never archived."""
    import datetime as dt
    import os

    from archive_pipeline.core.discovery import existing_days
    from archive_pipeline.core.errors import ArchiveError

    role = f"r5_{os.getpid()}_{schema}"
    t = sql.Identifier(schema, "orders")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, tenant text, at date)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a', '2024-03-10'), (2, 'b', '2024-03-10')").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(t))
    conn.execute(sql.SQL("CREATE POLICY tenant ON {} USING (tenant = current_setting('app.tenant', true))").format(t))
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(t, sql.Identifier(role)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        table = TableSpec(name=f"{schema}.orders", day_column="at", start_date="2024-03-01")
        day = table.period(dt.date(2024, 3, 10))
        with pytest.raises(ArchiveError, match="row-level security"):  # the archive itself refuses, as intended
            archive_partition(conn, table, day, store)
        try:
            found = existing_days(conn, table, [day])
        except Exception as exc:  # noqa: BLE001 - refusing is right too
            assert "row-level security" in str(exc)
            return
        assert found == [day], "the day's rows are hidden, not absent"
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_compare_of_an_unarchived_day_the_role_may_not_read_raises_a_typed_error(conn, schema, store):
    """compare_days: a day the catalog shows (declarative) but the role may not SELECT from: the
    SourceError of its fingerprint sets current=None, and the 'not-archived' branch then reads
    current.rows: AttributeError (the CLI prints a traceback and exits 1, not the grant's remedy)."""
    import datetime as dt

    from archive_pipeline.core import plan
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.local.local_stack import create_sample_events

    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=5, schema=schema)
    table = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=day,
                      partitioning={"mode": "declarative"})
    conn.execute("SET ROLE pg_monitor")  # a role without SELECT on the table
    try:
        try:
            result = plan.compare_days(conn, table, store, [day])
        except ArchiveError:
            return
        assert [c.result for c in result] in (["unreadable"], ["not-archived"])
    finally:
        conn.execute("RESET ROLE")


# ------------------------------------------------------------------------------------------------
# Sensor: run keys of other instigators


def test_sensor_still_requests_a_day_whose_only_run_was_the_schedules(pg, conn, schema, archive_env):
    """untried() leaves out every request whose run key has a run with that key, whoever launched it. The
    daemon only drops a run key this sensor (same name, same repository) used (dagster/_daemon/sensor.py
    fetch_existing_runs filters on SENSOR_NAME_TAG). The schedule requests a day with the same run key
    (f"{job}:{day}"): a day whose scheduled run failed used to be requested again by the sensor, the
    safety net; now it is left out forever ("already have a run")."""
    import datetime as dt
    import uuid

    from dagster import DagsterRun, DagsterRunStatus, build_schedule_context, build_sensor_context, instance_for_test

    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.resources import PostgresResource
    from archive_pipeline_tests.conftest import utc_today
    from archive_pipeline_tests.test_dagster_edges import _plain_table, _tables

    today = utc_today()
    day = today - dt.timedelta(days=1)
    _plain_table(conn, schema, "a", [day])
    defs = build_definitions(_tables(schema, ["a"], today - dt.timedelta(days=5)))
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    [schedule] = repo.schedule_defs
    with instance_for_test() as instance:
        scheduled = schedule.evaluate_tick(build_schedule_context(
            instance=instance, scheduled_execution_time=dt.datetime.combine(today, dt.time(1), dt.UTC),
            repository_def=repo))
        [request] = scheduled.run_requests
        instance.add_run(DagsterRun(job_name=request.job_name or schedule.job_name, run_id=str(uuid.uuid4()),
                                    status=DagsterRunStatus.FAILURE,
                                    tags={**request.tags, "dagster/run_key": request.run_key,
                                          "dagster/schedule_name": schedule.name}))
        tick = sensor.evaluate_tick(build_sensor_context(
            instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
    sensor_keys = [r.run_key for r in tick.run_requests]
    assert f"{schedule.job_name}:{day.isoformat()}" == request.run_key
    assert request.run_key in sensor_keys, (sensor_keys, tick.skip_message)


# ------------------------------------------------------------------------------------------------
# Name-for-name comparison: the archive's own skip check compares by position


def test_archive_and_compare_agree_on_a_table_rebuilt_with_another_column_order(conn, schema, store):
    """ddbb6f4 compares the source with an archive name for name in verify, compare, list and removal
    (columns_as_archived: the fingerprint over the source's columns in the archive's order), but
    _Archiving._keep compares the names *in order* and a fingerprint taken in the table's physical order.
    The same rows under the same names in another column order (a table or parent rebuilt, a partition
    attached from a table built differently in naming mode) are 'equal' for compare and a LateRowsError
    ('changed since it was archived: its columns changed from [...] to [...]') for the archive run.
    Now both call it a change (the archive would be written in another column order)."""
    import datetime as dt

    from archive_pipeline.core import plan

    t = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, amount int)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 5), (2, '2024-03-10 02:00+00', 7)").format(t))
    table = spec(name=f"{schema}.ev")
    day = dt.date(2024, 3, 10)
    archive_partition(conn, table, day, store)
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT at, amount, id FROM {}").format(sql.Identifier(schema, "ev2"), t))
    conn.execute(sql.SQL("DROP TABLE {}").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO ev").format(sql.Identifier(schema, "ev2")))
    [comparison] = plan.compare_days(conn, table, store, [day])
    assert comparison.result == "differs" and "reordered" in comparison.note, comparison  # both: a change
    from archive_pipeline.core.archive import LateRowsError
    with pytest.raises(LateRowsError, match="its columns changed"):
        archive_partition(conn, table, day, store)


# ------------------------------------------------------------------------------------------------
# CLI messages


def test_cli_messages_neither_garble_the_lock_remedy_nor_promise_retries():
    """_for_the_cli replaces 'retried automatically' wherever it occurs: the table-day lock's remedy
    '(a run with retries left is retried automatically)' becomes '(a run with retries left is run the
    command again (it tries once))'; and the many '...; the run will be retried' messages (store.py,
    archive.py) pass unchanged, so the CLI still promises a retry it does not make."""
    from archive_pipeline.cli import _for_the_cli
    from archive_pipeline.core.errors import ArchiveError

    busy = ArchiveError("public.t 2024-03-10 is being archived, removed or restored by another run right now",
                        retryable=True, cause="another run holds the table-day lock",
                        remedy="wait for that run to end, then run this again (a run with retries left is retried "
                               "automatically); one run per table-day at a time keeps the archive exact")
    assert "is run the command again" not in _for_the_cli(str(busy))
    damaged = ("listing s3://b/p/ gave an answer that cannot be read (x); the run will be retried; to fix: retried "
               "automatically; if it persists, check the network path to the store")
    assert "will be retried" not in _for_the_cli(damaged)


# ------------------------------------------------------------------------------------------------
# A manifest write that timed out, then was refused on boto's retry


def test_a_manifest_write_refused_only_on_retry_does_not_withdraw_the_object_it_may_still_name(
        pg, conn, schema, s3, bucket, store):
    """S3Store.refused() judges the last HTTP answer only. botocore retries a PUT itself: an attempt that
    timed out (and may still land) followed by a 4xx on the retry (400 RequestTimeout, which S3 sends
    to a slow client) reads as 'refused', so _undo_commit deletes the new object; the first attempt
    then lands, and the day's manifest names an object that is gone (the first archive of the day: no
    earlier archive either)."""
    import datetime as dt
    import threading

    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=20, schema=schema)
    table = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=day,
                      partitioning={"mode": "declarative"})
    gate = threading.Event()
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", gate=gate, times=1, hold_timeout=30))
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=400, code="RequestTimeout",
                        times=None))
        slow = S3Store(proxy.client(max_attempts=2, read_timeout=1), bucket, prefix="archive",
                       part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError):
            archive_partition(conn, table, day, slow)
        gate.set()  # the first attempt reaches the store after all
        deadline = __import__("time").monotonic() + 20
        while __import__("time").monotonic() < deadline and not any(
                r.fault == "hold" and r.status is not None for r in proxy.records):
            __import__("time").sleep(0.05)
    __import__("time").sleep(0.5)
    manifest = load_manifest(store, f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst")
    assert manifest is not None, "the held write did not land; the scenario did not happen"
    listed = {o["Key"] for o in store.client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert manifest["object"]["key"] in listed, "the manifest names an object that was withdrawn"


def test_a_naming_mode_range_restore_hashes_each_restored_row_a_bounded_number_of_times(conn, schema, store,
                                                                                        temp_dir, monkeypatch):
    """(From the review.) restore_days of a naming-mode table into one table fingerprinted the whole
    target before and after every day: day k hashed the k-1 days before it twice, so a range of N days
    hashed O(N^2) rows. Now each day's inserted rows are hashed once, from the INSERT's RETURNING."""
    import datetime as dt

    from archive_pipeline.core import fingerprint
    from archive_pipeline.core.restore import restore_days

    first, n, per_day = dt.date(2024, 3, 10), 8, 10
    for i in range(n):
        day = first + dt.timedelta(days=i)
        t = sql.Identifier(schema, f"clicks_{day:%Y%m%d}")
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, url text)").format(t))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, '/p/' || g FROM generate_series({}, {}) g").format(
            t, sql.Literal(i * per_day + 1), sql.Literal((i + 1) * per_day)))
    table = TableSpec(name=f"{schema}.clicks", start_date=first, partitioning={"mode": "naming",
                                                                                "pattern": "clicks_%Y%m%d"})
    for i in range(n):
        archive_partition(conn, table, first + dt.timedelta(days=i), store, temp_dir=temp_dir)
    from archive_pipeline.core import restore

    hashed = [0]

    def counting(original):  # every fingerprint the restore takes, whole tables and inserted rows alike
        def counted(*args, **kwargs):
            result = original(*args, **kwargs)
            hashed[0] += result.rows
            return result
        return counted

    monkeypatch.setattr(fingerprint, "compute", counting(fingerprint.compute))
    monkeypatch.setattr(restore, "_insert_fingerprinted", counting(restore._insert_fingerprinted))
    restored = restore_days(conn, store, table, first, first + dt.timedelta(days=n - 1), into="new",
                            target=f"{schema}.clicks_back", temp_dir=temp_dir)
    assert sum(r.rows for r in restored.results) == n * per_day
    assert hashed[0] <= 2 * n * per_day, f"{hashed[0]} rows hashed to restore {n * per_day}"


def test_the_command_line_names_no_setting_it_does_not_have():
    """A store answering 503 (slow down) or a full database: the core's remedy names Dagster's pool limit
    and the store resource's max_concurrency; the command line has neither, so it says what its user can do."""
    from archive_pipeline.cli import _for_the_cli
    from archive_pipeline.core import errors

    from botocore.exceptions import ClientError

    throttled = errors.classify(ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate"},
                                             "ResponseMetadata": {"HTTPStatusCode": 503}}, "UploadPart"), table="t")
    assert "max_concurrency" in throttled.remedy
    for remedy in (throttled.remedy, "to fix: lower the pool limit or the store's max_concurrency"):
        text = _for_the_cli(remedy)
        assert "max_concurrency" not in text and "pool limit or" not in text, text
    assert _for_the_cli("lower the pool limit in dagster.yaml (x)") == (
        "run fewer commands at once (and lower Dagster's pool limit in dagster.yaml) (x)")


def test_a_generic_database_error_says_to_do_again_what_failed():
    """The catch-all remedy said "archive again" also when a restore, a removal or a proof failed."""
    import psycopg

    from archive_pipeline.core import errors

    exc = psycopg.errors.ObjectNotInPrerequisiteState("something PostgreSQL refused")
    assert errors.wrap(exc, "t", "2024-03-10").remedy.endswith("archive again")
    for doing, verb in (("restoring", "restore again"), ("removing", "remove the day again"), ("proving", "prove again")):
        remedy = errors.wrap(exc, "t", "2024-03-10", doing=doing).remedy
        assert remedy.endswith(verb) and "archive again" not in remedy, (doing, remedy)
