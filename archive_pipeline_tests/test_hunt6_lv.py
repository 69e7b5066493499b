"""Hunt 6 (lv): parallel extraction and batched backfill runs under hostile data and faults."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.parallel import plan_streams
from archive_pipeline.core.source import day_filter, describe_table, read_snapshot

DAY = dt.date(2024, 3, 10)


def _plan(conn, name, streams=4):
    described = describe_table(conn, name, "at")
    where = day_filter(described, DAY)
    with read_snapshot(conn):
        return plan_streams(conn, described, where, DAY, streams), where


def test_an_inheritance_parent_over_unindexed_children_is_split_by_its_childrens_pages(conn, schema):
    """A user archives an inheritance parent that holds no rows itself (the classic layout: children
    hold the rows), no index on the day column, at ``parallel_streams: 4``. What happens: ``plan_streams``
    cuts page ranges by the size of the parent alone (relkind 'r': only a declarative parent, 'p', looks
    at the relations the day's query scans, ``_largest_scanned``): 0 pages, so one stream reads the whole
    day and the day's ``streams`` metadata says "the relation has 0 page(s): nothing to split", though the
    day is 8,000 rows over ~2,000 pages of its children. Expected: as for a partitioned table, the
    relations the query reads decide the ranges (4 streams, none with more than about its share)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.par (id int, at timestamptz, body text); "
                         "CREATE TABLE {s}.k1 () INHERITS ({s}.par) WITH (fillfactor = 10); "
                         "CREATE TABLE {s}.k2 () INHERITS ({s}.par) WITH (fillfactor = 10)").format(s=s))
    for k in ("k1", "k2"):
        conn.execute(sql.SQL("INSERT INTO {}.{} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '10 s', "
                             "md5(g::text) FROM generate_series(1, 4000) g").format(s, sql.Identifier(k)))
    conn.execute(sql.SQL("ANALYZE {}.par").format(s))
    plan, where = _plan(conn, f"{schema}.par")
    shares = [conn.execute(sql.SQL("SELECT count(*) FROM {}.par WHERE ({}) AND ({})").format(s, where, c)).fetchone()[0]
              for c in plan.conditions]
    assert plan.streams == 4 and max(shares) <= 4000, (plan.reason, shares)


def test_a_parent_with_a_few_rows_of_its_own_over_an_indexed_history_child_is_read_in_time_slices(conn, schema):
    """A user archives an inheritance parent holding a few rows itself (20 of the day) over a child with
    two weeks of history (60,000 rows), every relation indexed on the timestamptz day column, at
    ``parallel_streams: 4``. What happens: ``_mostly_the_day`` (and then ``_index_reads_less``) compare the
    planner's estimate for the day over the whole tree (~2,900 rows) with the parent's *own* reltuples
    (20), so the history table counts as "mostly the day"; the plan falls to page ranges cut by the
    parent's size: one stream, "the relation has 1 page(s): nothing to split" (with a parent of a few
    more pages, ranges over the child's whole history with index scans off, each stream scanning history
    the index skips). Expected: the tree's rows decide, so the day is read in 4 time slices of the index."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.par (id int, at timestamptz, body text); CREATE INDEX ON {s}.par (at); "
                         "CREATE TABLE {s}.old () INHERITS ({s}.par); CREATE INDEX ON {s}.old (at)").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.par SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 h', "
                         "repeat('x', 200) FROM generate_series(1, 20) g").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.old SELECT g, '2024-02-25 00:00+00'::timestamptz + g * interval '30 s', "
                         "md5(g::text) FROM generate_series(1, 60000) g").format(s))
    conn.execute(sql.SQL("ANALYZE {}.par; ANALYZE {}.old").format(s, s))
    plan, where = _plan(conn, f"{schema}.par")
    assert plan.kind == "key" and plan.streams == 4, plan.reason


def test_a_ranged_run_terminated_while_a_day_is_recorded_does_not_say_that_day_was_not_published(
        conn, schema, archive_env, s3_client, monkeypatch):
    """A backfill's ranged run of 2024-03-10..13 is terminated from the UI right after 2024-03-10 was archived,
    while its materialization is stored (in a ranged run the day is recorded with ``context.log_event``, inside
    the asset's code). What happens: the interrupt surfaces in ``archive_one_day`` after the day's object and
    manifest are in the bucket and its materialization is recorded, and ``_archive_days`` reports it as the day
    cut off: "2024-03-10: cancelled while archiving: ... nothing of the day was published (an earlier archive
    of it stays as it was)", though the day is published and shows as materialized; its ``archive_intact``
    result is never recorded (a materialized day without its check: half recorded). Expected: a day whose
    materialization is recorded is either completed (its check result logged) or at least not described as
    unpublished; the run's message tells the truth about every day."""
    import os
    import signal

    from dagster import AssetCheckKey, DagsterRunStatus, RunsFilter, instance_for_test

    from archive_pipeline.defs.assets import asset_key
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.test_hunt2_n import (DAYS, RANGE, _config, _failures, _is_materialization_of, _job,
                                                     _on_event, _states)

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    job = _job(config, schema)
    with instance_for_test() as instance:
        fired: list = []

        def terminate(event) -> None:
            if not fired and _is_materialization_of(event, DAYS[0]):
                fired.append(event)
                [run] = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
                instance.report_run_canceling(run)
                os.kill(os.getpid(), signal.SIGINT)

        _on_event(instance, monkeypatch, terminate)
        result = job.execute_in_process(instance=instance, tags=RANGE, raise_on_error=False)
        assert fired
        assert instance.get_run_by_id(result.run_id).status == DagsterRunStatus.CANCELED
        assert sorted(_states(instance, result.run_id)) == [DAYS[0].isoformat()]  # recorded as materialized
        listed = s3_client.list_objects_v2(Bucket=archive_env, Prefix="archive/").get("Contents", [])
        assert any(DAYS[0].isoformat() in o["Key"] for o in listed)  # and published
        [message] = _failures(instance, result.run_id)
        checks = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(spec), "archive_intact"), limit=10)
        # now: no check result for the materialized day, and the message says nothing of it was published
        assert [c.partition for c in checks] == [DAYS[0].isoformat()], [(c.partition, c.status) for c in checks]
        said = f"{DAYS[0]}: cancelled while archiving"
        assert not (said in message and "nothing of the day was published" in message), message
