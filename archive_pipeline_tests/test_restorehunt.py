"""Hunting the restore and compare paths as a hostile user and environment would: manifests at the wrong
key, a restoring process killed mid-way, targets that drifted since the day was archived."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys

import pytest
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import RestoreError, restore_day

DAY = dt.date(2024, 3, 10)
NEXT = dt.date(2024, 3, 11)


def _events(conn, schema: str, fmt: str = "csv") -> TableSpec:
    table = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, n numeric, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 1.5, 'abcd'), "
                         "(2, '2024-03-10 02:00+00', 1.234, 'xy'), (3, '2024-03-10 03:00+00', NULL, NULL), "
                         "(4, '2024-03-11 01:00+00', 2, 'next day')").format(table))
    return TableSpec(name=f"{schema}.events", day_column="at", start_date=DAY, format=fmt, compression="zstd",
                     partitioning={"mode": "column"})


def _count(conn, schema: str, name: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]


def test_a_manifest_copied_to_another_days_key_is_refused_by_restore_and_compare(conn, schema, store, temp_dir,
                                                                                 s3_client, bucket):
    """A manifest is sealed (its own SHA-256) but says nothing of where it lies: one copied from
    2024-03-10's key to 2024-03-11's (a hand "repair" of a missing day) is intact. Was: restoring
    2024-03-11 restored 2024-03-10's rows (into the original table too, under 2024-03-10's lock),
    "proven" by that manifest's fingerprint, and compare compared 2024-03-11's source with them. Now both
    say the manifest is another day's and restore nothing."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    day_key = keys.manifest_key(keys.table_day_key(spec, spec.period(DAY), store.prefix))
    next_key = keys.manifest_key(keys.table_day_key(spec, spec.period(NEXT), store.prefix))
    s3_client.copy_object(Bucket=bucket, Key=next_key, CopySource={"Bucket": bucket, "Key": day_key})
    for into, target in (("new", f"{schema}.restored"), ("original", None)):
        with pytest.raises(RestoreError) as caught:
            restore_day(conn, store, spec, NEXT, into=into, target=target, temp_dir=temp_dir)
        assert "it is the manifest of table" in str(caught.value) and "for 2024-03-10, not of" in str(caught.value)
        assert caught.value.day == "2024-03-11"
    assert _count(conn, schema, "events") == 4
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None
    (found,) = compare_days(conn, spec, store, [NEXT])
    assert found.result == "unreadable" and "for 2024-03-10, not of" in found.note


_CHILD = """
import datetime as dt, json, os, signal, sys
import boto3, psycopg
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
args = json.loads(sys.argv[1])
client = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
seen = {"n": 0}
def kill(**_):
    seen["n"] += 1
    if seen["n"] == args["kill_at_get"]:
        os.kill(os.getpid(), signal.SIGKILL)
client.meta.events.register("after-call.s3.GetObject", kill)
with psycopg.connect(args["dsn"], autocommit=True, application_name=args["name"]) as conn:
    restore_day(conn, S3Store(client, args["bucket"], prefix="archive", part_size=MIN_PART_SIZE),
                TableSpec(**args["spec"]), dt.date.fromisoformat(args["day"]), into="existing",
                target=args["target"], temp_dir=args["temp_dir"])
"""


@pytest.mark.parametrize("stage", ["download", "insert"])
def test_a_restore_killed_mid_way_leaves_no_temp_file_and_no_rows(pg, s3, conn, schema, store, bucket, temp_dir,
                                                                 stage):
    """SIGKILL of the restoring process while the object downloads (just after the store answered its GET)
    or while the load waits on the target: afterwards the target holds none of the day's rows, the temp
    directory is empty, and a retry restores the day. Was: the download's temp file (mkstemp, removed in a
    ``finally``) stayed behind in the temp directory, one per killed restore, as large as the archive."""
    spec = _events(conn, schema, "parquet")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "target"),
                                                           sql.Identifier(schema, "events")))
    name = f"restorehunt-{os.getpid()}-{stage}"
    args = {"dsn": pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "day": DAY.isoformat(), "name": name,
            "spec": {"name": spec.name, "day_column": "at", "start_date": DAY.isoformat(), "format": "parquet",
                     "compression": "zstd", "partitioning": {"mode": "column"}},
            "target": f"{schema}.target", "temp_dir": str(temp_dir),
            "kill_at_get": 2 if stage == "download" else 0}  # the manifest's GET, then the object's
    child_command = [sys.executable, "-c", _CHILD, json.dumps(args)]
    if stage == "download":
        child = subprocess.run(child_command, capture_output=True, text=True, timeout=120)
        assert child.returncode == -signal.SIGKILL, child.stderr
    else:
        with pg.connect() as locker:
            locker.execute("BEGIN")
            locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "target")))
            child = subprocess.Popen(child_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                for _ in range(200_000):  # bounded: a child that never waits fails the test below
                    conn.execute("SELECT pg_stat_clear_snapshot()")
                    if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                    "AND wait_event_type = 'Lock'", (name,)).fetchone()[0] or child.poll() is not None:
                        break
                assert child.poll() is None, child.communicate()
                child.kill()
                child.communicate()
            finally:
                if child.poll() is None:
                    child.kill()
            locker.execute("ROLLBACK")
        for _ in range(200_000):  # the killed client's backend ends once it finds its socket closed
            conn.execute("SELECT pg_stat_clear_snapshot()")
            if not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                (name,)).fetchone()[0]:
                break
    assert os.listdir(temp_dir) == []
    assert _count(conn, schema, "target") == 0
    result = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.target", temp_dir=temp_dir)
    assert (result.rows, result.fingerprint_checked) == (3, True)
    assert os.listdir(temp_dir) == []
