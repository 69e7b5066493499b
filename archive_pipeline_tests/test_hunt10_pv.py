"""Review of the hunt-10 fixes (pv): the lost object's put-back and compare --rows's proof. Real PostgreSQL and
the real S3 over HTTP, faults by the fault proxy."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_hunt10_pe import DAYS, cli, make_env, small_table, write_config
from archive_pipeline_tests.test_race_hunt import in_thread

DAY = dt.date(2024, 3, 10)


def _listed(s3_client, bucket) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.parametrize("failing", ["GET", "PUT"])
def test_a_lost_object_s_failed_put_back_is_not_told_as_put_back(conn, schema, ev, s3, bucket, store, s3_client,  # noqa: F811
                                                                 temp_dir, failing):
    """A user re-archives 2024-03-10 (`archive --overwrite`); its generation-2 manifest is written, and its new
    object is then gone (a run of the day on another server tidied it away as a leftover): the run puts the
    previous manifest back and fails, retryable. The store answers that put-back's read-back of the manifest
    (GET) or its PUT with a 5xx. Now: the manifest still names the missing generation 2 (the day's archive has no
    object; the old generation 1 is no manifest's), yet the error says "...; the previous archive was put back"
    (for the failed GET not even a note: ``_stored_manifest`` turns the failure into None, and ``put_back`` then
    silently does nothing). Should: either the put-back is done (or its read retried), or the error says the
    previous archive was NOT put back and the day's manifest names a missing object."""
    first = archive_partition(conn, ev, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("UPDATE {} SET v = 'x' WHERE id = 1").format(sql.Identifier(schema, "ev")))
    with FaultProxy(s3.endpoint_url) as proxy:
        st = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        put = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
        thread, outcome = in_thread(lambda: archive_partition(conn, ev, DAY, st, temp_dir=temp_dir, overwrite=True))
        try:
            assert proxy.wait_held(1), outcome  # generation 2 stored, its manifest about to land
            s3_client.delete_object(Bucket=bucket, Key=first.key.replace(".jsonl", ".g2.jsonl"))  # the other run's tidy
            proxy.add(Fault(method=failing, path=r"\.manifest\.json$", action="error", times=None))
        finally:
            put.gate.set()
            thread.join(60)
    error = outcome.get("error")
    assert isinstance(error, ArchiveError), outcome
    named = load_manifest(store, first.key)["object"]["key"]
    if named in _listed(s3_client, bucket):
        return  # put back (or a stored object named): fine
    # Now: the manifest names the deleted generation 2, and the message says "the previous archive was put back".
    assert "was put back" not in error.message, (named, error.message, getattr(error, "__notes__", None))


def test_compare_rows_whose_proof_read_fails_says_not_checked_not_no_archive(pg, s3, bucket, conn, schema, store,
                                                                            tmp_path):
    """A day archived as jsonl; the table is now configured as csv (the README: the day is still found under its
    former format's key) and a row of the day changed. The user runs `compare --rows --day D --json`; the store
    answers 503 to the day's manifest from the proof's own read on. compare --rows's ``prove`` reads the manifest
    again with ``plan.lookup_manifests``, which turns that failure into a ``problem`` with ``archived`` None;
    ``prove`` drops the problem and calls ``deep_verify(manifest=None)``, which reads the key the configuration
    renders (the csv one, where nothing is): the day's "differences" say "... has no archive at ...csv.zst" -
    a false verdict on an archive that is there. Should: "not checked (retryable): reading manifest ... failed",
    as for any day whose manifest read failed."""
    small_table(conn, schema, days=DAYS[:1])
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}
    archive_partition(conn, parse_config({"tables": [table]}).tables[0], DAYS[0], store)
    conn.execute(sql.SQL("UPDATE {} SET note = 'changed' WHERE id = 1").format(sql.Identifier(schema, "ev")))
    config = write_config(tmp_path, [dict(table, format="csv")])
    with FaultProxy(s3.endpoint_url) as proxy:
        # the first 4 reads of the jsonl manifest (the comparison's) answer; prove's lookup and after: 503
        proxy.add(Fault(method="GET", path=r"\.jsonl\.zst\.manifest\.json$", action="error", status=503,
                        code="SlowDown", skip=4, times=None))
        done = cli(make_env(pg, proxy.url, bucket), "compare", "--rows", "--config", str(config), "--day",
                   DAYS[0].isoformat(), "--json")
    answer = json.loads(done.stdout)
    day = answer["days"][0]
    assert day["result"] == "differs", day
    said = " ".join(day.get("differences", []))
    assert "has no archive" not in said, said
    assert "not checked" in said, said
