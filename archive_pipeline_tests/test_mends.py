"""Mends of behaviour noticed and left in earlier sessions, each proven by a test that failed before."""
from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import FingerprintMismatchError, restore_day

DAY = dt.date(2024, 3, 10)


def _naming_day(conn, schema: str, store, temp_dir, fmt: str) -> TableSpec:
    day_table = sql.Identifier(schema, f"clicks_{DAY:%Y%m%d}")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, url text, tags text[])").format(day_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE '/p/' || g END, "
                         "ARRAY['a', NULL] FROM generate_series(1, 50) g").format(day_table))
    spec = TableSpec(name=f"{schema}.clicks", start_date=DAY, format=fmt, compression="zstd",
                     partitioning={"mode": "naming", "pattern": "clicks_%Y%m%d"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, url text, tags text[])").format(
        sql.Identifier(schema, "all_clicks")))
    return spec


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_skip_restore_of_a_naming_day_into_a_table_holding_some_of_its_rows(conn, schema, store, temp_dir, fmt):
    """A naming-mode day restored with on_conflict='skip' into a table that already holds some of the day's
    rows (and rows of other days): the missing rows are added and the restore is proven, not rolled back
    because the rows it added alone lack the skipped ones."""
    spec = _naming_day(conn, schema, store, temp_dir, fmt)
    target = sql.Identifier(schema, "all_clicks")
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE id <= 20").format(
        target, sql.Identifier(schema, f"clicks_{DAY:%Y%m%d}")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'other day', NULL FROM generate_series(1000, 1010) g").format(target))
    result = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.all_clicks",
                         on_conflict="skip", temp_dir=temp_dir)
    assert (result.rows, result.inserted, result.fingerprint_checked) == (50, 30, True)
    missing = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT * FROM {} EXCEPT ALL SELECT * FROM {}) d").format(
        sql.Identifier(schema, f"clicks_{DAY:%Y%m%d}"), target)).fetchone()[0]
    assert missing == 0
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0] == 61


def test_skip_restore_of_a_naming_day_refuses_an_existing_row_that_differs(conn, schema, store, temp_dir):
    """skip leaves a row whose key exists as it is; when that row is not the archived one, the target does
    not hold the day's rows, and the restore is rolled back saying so."""
    spec = _naming_day(conn, schema, store, temp_dir, "csv")
    target = sql.Identifier(schema, "all_clicks")
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3, '/changed', NULL)").format(target))
    with pytest.raises(FingerprintMismatchError, match="rolled back") as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.all_clicks",
                    on_conflict="skip", temp_dir=temp_dir)
    assert "1 archived row" in str(caught.value)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0] == 1


def test_a_database_error_while_checking_tables_at_load_warns_and_loads(conn, schema, pg, caplog):
    """The load's table check is a courtesy: a role's lock_timeout firing (a real one, while the check waits
    for a lock an application holds on the table) warns naming the table and cause, with no password, and
    lets the location load, as an unreachable database does; it does not escape raw. (The role's serializable
    deferrable default makes the check wait for nothing: our sessions pin read committed.)"""
    import logging

    import psycopg

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import check_tables_exist

    role = f"{schema}_checker"
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(
        sql.Identifier(schema, "t")))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-Zq81x'").format(sql.Identifier(role)))
    for setting, value in [("default_transaction_isolation", "serializable"), ("default_transaction_read_only", "on"),
                           ("default_transaction_deferrable", "on"), ("lock_timeout", "300")]:
        conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(sql.Identifier(role), sql.Identifier(setting),
                                                                  sql.Literal(value)))
    dsn = psycopg.conninfo.make_conninfo(pg.dsn, user=role, password="pw-Zq81x")
    config = parse_config({"tables": [{"name": f"{schema}.t", "day_column": "at", "start_date": DAY.isoformat(),
                                       "partitioning": {"mode": "declarative"}}]})
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}; GRANT SELECT ON {} TO {}").format(
        sql.Identifier(schema), sql.Identifier(role), sql.Identifier(schema, "t"), sql.Identifier(role)))
    with psycopg.connect(pg.dsn) as writer:
        writer.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        # the catalog the check reads a partitioned table's partitions from
        writer.execute("LOCK TABLE pg_catalog.pg_inherits IN ACCESS EXCLUSIVE MODE")
        with caplog.at_level(logging.WARNING, logger="archive_pipeline.definitions"):
            check_tables_exist(config, dsn)
        writer.rollback()
    [record] = caplog.records
    text = record.getMessage()
    assert f"{schema}.t" in text and config.origin in text and "lock_timeout" in text.lower()
    assert "pw-Zq81x" not in text
    conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(sql.Identifier(role), sql.Identifier(role)))


def test_session_timeouts_are_set_by_pg_catalog_whatever_the_roles_search_path(conn, schema, pg):
    """The resource's (and the CLI's and sensor's) session timeouts go through pg_catalog.set_config in one
    statement: a role whose search_path puts a schema with its own set_config before pg_catalog gets the
    timeouts, not its function."""
    import psycopg

    from archive_pipeline.defs.resources import PostgresResource

    role = f"{schema}_pathrole"
    conn.execute(sql.SQL("CREATE FUNCTION {}.set_config(text, text, boolean) RETURNS text LANGUAGE sql "
                         "AS $$ SELECT 'shadowed' $$").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    conn.execute(sql.SQL("ALTER ROLE {} SET search_path = {}, pg_catalog").format(
        sql.Identifier(role), sql.Identifier(schema)))
    resource = PostgresResource(dsn=psycopg.conninfo.make_conninfo(pg.dsn, user=role, password="pw"),
                                lock_timeout_ms=1234, statement_timeout_ms=5678)
    with resource.connect() as session:
        assert session.execute("SHOW lock_timeout").fetchone()[0] == "1234ms"
        assert session.execute("SHOW statement_timeout").fetchone()[0] == "5678ms"
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("args", [
    ["restore", "--target", "s.kept", "--target", "s.other", "--into", "new"],
    ["restore", "--into=existing", "--into", "original"],
    ["list", "--config", "a.yaml", "--config=b.yaml"],
    ["restore", "--on-conflict", "skip", "--on-conflict", "fail"],
])
def test_an_option_taking_one_value_given_twice_is_a_usage_error(args):
    """Click keeps the last value of an option given twice, so `restore --target s.kept ... --target s.other`
    (a pasted line, an edited history entry) restored into s.other, exit 0. Now: exit 2 before anything."""
    from click.testing import CliRunner

    from archive_pipeline.cli import main

    done = CliRunner().invoke(main, [*args, "--json"])
    name = args[1].split("=")[0]
    assert done.exit_code == 2, done.output
    assert f"{name} is given 2 times" in done.output, done.output


def test_a_flag_or_a_repeatable_option_given_twice_is_still_accepted():
    from click.testing import CliRunner

    from archive_pipeline.cli import main

    done = CliRunner().invoke(main, ["list", "--json", "--json", "-t", "a.b", "--table", "c.d",
                                     "--config", "/nonexistent/tables.yaml"])
    assert "given 2 times" not in done.output, done.output


def _prefixed_config(schema: str, prefix: object):
    from archive_pipeline.core.config import parse_config
    return parse_config({"retry": {"max_retries": 0}, "asset_key_prefix": prefix,
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at", "start_date": "2024-03-10",
                                     "retention": {"action": "delete", "keep_days": 30}}]})


def test_asset_key_prefix_puts_every_asset_and_check_of_a_location_under_it(conn, schema, archive_env):
    """Two code locations archiving public.events from two databases into one Dagster deployment: without a
    prefix both define the asset archive/public/events and Dagster merges their partitions and checks. With
    asset_key_prefix each location's assets, checks and runs' materializations are its own."""
    from dagster import AssetKey, instance_for_test

    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events
    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    eu = build_definitions(_prefixed_config(schema, "eu"))
    us = build_definitions(_prefixed_config(schema, ["us", "west_2"]))
    keys = {name: {k for a in defs.resolve_asset_graph().asset_nodes for k in [a.key]}
            for name, defs in (("eu", eu), ("us", us))}
    assert keys["eu"] == {AssetKey(["eu", "archive", schema, "events"]), AssetKey(["eu", "source_removed", schema, "events"])}
    assert keys["us"] == {AssetKey(["us", "west_2", "archive", schema, "events"]),
                          AssetKey(["us", "west_2", "source_removed", schema, "events"])}
    checked = {c.asset_key for c in eu.resolve_asset_graph().asset_check_keys}
    assert checked <= keys["eu"] and checked
    with instance_for_test() as instance:
        result = eu.resolve_job_def(f"Archive_{schema}_events").execute_in_process(partition_key=DAY.isoformat(),
                                                                                   instance=instance)
        assert result.success
        [event] = result.get_asset_materialization_events()
        assert event.asset_key == AssetKey(["eu", "archive", schema, "events"])
        assert instance.get_materialized_partitions(event.asset_key) == {DAY.isoformat()}
        assert not instance.get_materialized_partitions(AssetKey(["us", "west_2", "archive", schema, "events"]))
        assert not instance.get_materialized_partitions(AssetKey(["archive", schema, "events"]))
        checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert checks and all(e.event_specific_data.asset_key == event.asset_key
                              for e in checks)


@pytest.mark.parametrize("prefix", ["eu-west", ["ok", "has space"], "a//b", [], ["x", 3]])
def test_an_asset_key_prefix_dagster_cannot_name_fails_the_load(schema, prefix):
    from archive_pipeline.core.config import ConfigError
    if prefix == []:
        assert _prefixed_config(schema, prefix).tables[0].key_prefix == ()  # empty: no prefix, as by default
        return
    with pytest.raises(ConfigError, match="asset_key_prefix") as caught:
        _prefixed_config(schema, prefix)
    assert "letters, digits and '_'" in str(caught.value)


@pytest.mark.parametrize("fault", ["lose", "flip_request_byte"])
def test_a_manifest_the_store_does_not_keep_is_never_reported_written(conn, schema, s3, bucket, store, temp_dir, fault):
    """``verify_etags: false`` (a store whose ETags are not MD5s): a manifest PUT answered 200 proved nothing, so an
    archive whose manifest the store lost (or damaged) was reported green with no archive in the store. Now every
    small write is read back there: written again when it did not arrive, and when it never does, the run fails
    retryable and publishes nothing."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.keys import table_day_key
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.helpers import assert_nothing_left

    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], rows_per_day=20, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY)
    with FaultProxy(s3.endpoint_url) as proxy:
        lax = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", verify_etags=False)
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action=fault, times=None))
        with pytest.raises(ArchiveError, match="did not read back as written") as caught:
            archive_partition(conn, spec, DAY, lax, temp_dir=temp_dir)
        assert caught.value.retryable
        proxy.clear()
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action=fault, times=1))
        result = archive_partition(conn, spec, DAY + dt.timedelta(days=1), lax, temp_dir=temp_dir)
    assert_nothing_left(store, table_day_key(spec, DAY, "archive"), temp_dir)
    assert load_manifest(store, result.key)["rows"] == 20


def _interrupted_detach(pg, conn, parent: str, child: str) -> None:
    """Leave ``child`` pending detach, as a DETACH PARTITION ... CONCURRENTLY cancelled while it waited for an
    older snapshot does (it commits the pending state first, then waits)."""
    import threading
    import time

    import psycopg

    holder, detacher = pg.connect(), pg.connect()
    holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    holder.execute(f"SELECT count(*) FROM {parent}")
    errors: list[Exception] = []

    def detach() -> None:
        try:
            detacher.execute(f"ALTER TABLE {parent} DETACH PARTITION {child} CONCURRENTLY")
        except psycopg.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=detach)
    thread.start()
    pending = "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = %s::regclass"
    deadline = time.monotonic() + 20
    while not conn.execute(pending, (child,)).fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    while not conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                           (detacher.info.backend_pid,)).fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    conn.execute("SELECT pg_cancel_backend(%s)", (detacher.info.backend_pid,))
    thread.join(20)
    holder.rollback()
    holder.close()
    detacher.close()
    assert errors and conn.execute(pending, (child,)).fetchone()[0]


def test_a_partition_left_pending_detach_is_named_with_its_remedy_by_archive_and_removal(pg, conn, schema, store,
                                                                                       temp_dir):
    """A DETACH PARTITION ... CONCURRENTLY interrupted leaves the day's partition pending detach: the parent no
    longer reads its rows, which are no table of their own yet. Was: the archive failed "changed just after this
    run took its snapshot ... retried automatically; if it recurs, run the table's DDL outside its archive runs",
    on every retry, and the removal "its archive is not proven ... 0 rows against 10". Now both name the partition,
    its state and the FINALIZE that ends it; nothing is published, nothing removed."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(conn, schema, [("d09", "2024-03-09", "2024-03-10"), ("d10", "2024-03-10", "2024-03-11")])
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 12:00+00'::timestamptz + g * interval '1 day' "
                         "FROM generate_series(-1, 0) g, generate_series(1, 5)").format(sql.Identifier(schema)))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop"})
    first = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _interrupted_detach(pg, conn, f"{schema}.ev", f"{schema}.d10")
    finalize = f"ALTER TABLE {schema}.ev DETACH PARTITION {schema}.d10 FINALIZE"
    for overwrite in (False, True):
        with pytest.raises(ArchiveError, match=f"{schema}.d10 is pending detach from {schema}.ev") as caught:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=overwrite)
        assert finalize in str(caught.value) and caught.value.retryable
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused, match=f"{schema}.d10 is pending detach") as caught:
            remove_day(conn, spec, DAY, store, dry_run=dry_run)
        assert finalize in str(caught.value)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.d10").format(sql.Identifier(schema))).fetchone()[0] == 5
    assert [k["Key"] for k in store.list_keys(f"archive/{schema}.ev/2024/03/2024-03-10")] == [
        first.key, f"{first.key}.manifest.json"]
    assert load_manifest(store, first.key)["rows"] == 5
