"""Hunt 26 (ei): the sensor and the schedules over a configuration and a store that change between ticks: one
table's part of the store unreadable while the others' is fine, days archived by the command line in between,
tables, zones and start dates changed under runs and backfills already launched."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

from dagster import instance_for_test

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.definitions import build_definitions
from archive_pipeline_tests.test_hunt3_z5 import plain_table, tables_config
from archive_pipeline_tests.test_hunt16_vm import YESTERDAY, _sensor_run_failed, _tick


@contextlib.contextmanager
def two_tables_archived_after_failed_runs(conn, schema: str, store, temp_dir) -> Iterator[tuple]:
    """Tables ``a`` and ``b`` whose sensor runs of yesterday failed, each day then archived by the command line (the
    same core call): (the definitions, the Dagster instance) for a tick to record them."""
    plain_table(conn, schema, "a", [YESTERDAY])
    plain_table(conn, schema, "b", [YESTERDAY])
    config = tables_config(schema, ["a", "b"], YESTERDAY - dt.timedelta(days=2))
    for spec in config.tables:
        archive_partition(conn, spec, YESTERDAY, store, temp_dir=temp_dir)
    defs = build_definitions(config)
    with instance_for_test() as instance:
        for spec in config.tables:
            _sensor_run_failed(instance, spec, YESTERDAY.isoformat())
        yield defs, instance


def test_one_tables_unreadable_prefix_keeps_every_other_tables_command_line_archive_unrecorded(
        pg, conn, schema, archive_env, store, s3, temp_dir, monkeypatch):
    """Scenario: tables ``a`` and ``b``; the sensor's runs of yesterday failed for both (the store was down). The
    operator follows each tick's remedy and archives both days with the command line (here the same core call).
    Meanwhile a bucket policy changed for ``a``'s folder only: every request under ``archive/<schema>.a/`` answers
    403 AccessDenied, ``b``'s folder is readable as before. The next ticks run.

    Now: defs/outside.py ``archived_outside`` (lines 242-264) walks every table's tried days in one loop with no
    guard per table: the GET of ``a``'s manifest (``_taken`` -> ``lifecycle.archive_key``; with more days, ``a``'s
    listing in ``unarchived_days``) raises DownloadError (AccessDenied), and sensors.py ``_recorded_outside``
    (lines 418-429) catches it for the whole call ("could not look in the store for days archived outside Dagster
    ...; they stay listed"), dropping ``b``'s record that the very same tick could make. Every tick does the same
    for as long as ``a``'s folder is refused: ``b``'s archived day is never recorded and stays listed as failed with
    its remedy already followed, though nothing about ``b`` is wrong (the tick's own probes keep one table's problem
    from hiding the others' days; verify_archives does the same for this very fault, test_hunt3_z5).

    Should: ``b``'s day is recorded by the tick (materialized from its manifest); ``a``'s stays listed with the
    store's warning naming ``a``. Fix idea: in ``archived_outside`` catch STORE_ERRORS per table (its listing, marks
    and each day's ``_taken``/``_record``), leave that table's days in ``left`` with a warning naming the table, and go
    on with the next table."""
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    day = YESTERDAY.isoformat()
    with two_tables_archived_after_failed_runs(conn, schema, store, temp_dir) as (defs, instance):
        with FaultProxy(s3.endpoint_url) as proxy:
            denied = [proxy.add(Fault(path=rf"^/{archive_env}/archive/{schema}\.a/", action="error", status=403,
                                      code="AccessDenied", times=None)),
                      proxy.add(Fault(query=f"prefix=archive%2F{schema}.a", action="error", status=403,
                                      code="AccessDenied", times=None))]
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            result = _tick(defs, instance, pg)
            assert any(fault.hits for fault in denied), "the premise: the tick asked for a's folder and was refused"
    recorded = [(event.asset_key.path[-1], event.partition) for event in (result.asset_events or [])]
    assert ("b", day) in recorded, (
        f"b's day archived by the command line was not recorded because a's folder is unreadable: {recorded}; "
        f"{getattr(result, 'skip_message', None)}")
    assert ("a", day) not in recorded
