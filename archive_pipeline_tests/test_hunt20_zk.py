"""Hunt 20 (zk): two commands on the same table-day at the same time, from different processes, databases or
servers, whose table-day locks do not exclude each other (an advisory lock is its database's own: a staging copy in
another database, a hot standby and its primary), writing to the same bucket; forced into one interleaving by the
fault proxy's ``hold`` and pg_terminate_backend (never a sleep).

What held up (probed, no test here): a second run on another database that lists the first one's uncommitted object
picks the next generation (``_generation`` counts listed generations), so only a run that listed before the first
one's PUT shares its key; an overwrite's object lost to another server's tidying is caught after the commit
(``_refuse_lost_object``); compare, list --check-source and the Dagster checks re-read a manifest replaced meanwhile
(``_again_where_replaced``, ``_archived_again``); restores through a view, a partition or an inheritance child take the
tree's lock (``_tree_root``). A removal run on another database of the same cluster (the same rows) is refused
since session 40 (``refuse_other_cluster`` compares the database too: test_hunt25_cl.py).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_race_hunt import in_thread, proxied

DAY = dt.date(2024, 3, 10)
_numbers = itertools.count()


def _table(conn: psycopg.Connection, schema: str, name: str = "ev", rows: int = 50, text: str = "'row ' || g") -> None:
    """``<schema>.<name>``: ``rows`` rows on DAY, the same in every database it is created in (same values, same
    physical order: the same archive bytes, as a hot standby and its primary give)."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, v text)").format(
        sql.Identifier(schema, name)))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 01:00+00'::timestamptz + g * interval '1 second', "
                         + text + " FROM generate_series(1, {}) g").format(sql.Identifier(schema, name),
                                                                           sql.Literal(rows)))


def _spec(schema: str, name: str = "ev", **extra):
    return parse_config({"tables": [{"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat(),
                                     **extra}]}).tables[0]


@pytest.fixture
def other_db(pg, conn):
    """A second database of the same cluster (a staging copy): its advisory locks are its own, so no table-day lock
    excludes a run there from one on the first database."""
    name = f"zk_{os.getpid()}_{next(_numbers)}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _connect_to(pg, database: str) -> psycopg.Connection:
    return psycopg.connect(pg.dsn_for("postgres", database=database), autocommit=True)


def _stored(s3_client, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_a_first_archive_whose_object_another_databases_failed_run_withdrew_commits_a_manifest_of_no_object(
        pg, conn, schema, other_db, s3, s3_client, bucket):
    """Scenario: ``s.ev`` (50 rows on 2024-03-10) exists with the same rows in two databases whose runs no lock
    excludes (a staging copy, or a hot standby and its primary: the same rows in the same order, so the same
    archive bytes), both configured into one bucket and prefix, the day not archived yet. Run B (database 2) lists
    the day (nothing there), reads it and sends its PUT of generation 1 (held by the proxy). Run A (database 1) lists
    the day (nothing there either: B's PUT has not landed), reads it, PUTs generation 1 (``If-None-Match: *``,
    stored) and sends its first manifest (held). B's session then ends (pg_terminate_backend: a recovery conflict on
    a standby, a restart), and its PUT goes on.

    Now: B's PUT is refused (412), ``S3Upload._put_single`` finds the same bytes there (``store.holds``) and takes
    A's object for its own earlier try; ``require_lock_held`` then fails (the session is gone) and
    ``_Archiving.run`` withdraws "its" published object with ``_withdraw_unnamed``, which finds no manifest yet
    (A's is on its way) and deletes generation 1: A's object. A's manifest lands and A returns success: a green
    day whose manifest names an object that is not in the store (restore and verify --deep: missing). The
    post-commit HEAD that catches a lost object (``_refuse_lost_object``) runs for overwrites only
    (``existing.raw is not None``), never for a day's first archive.

    Should: the current archive is exactly one run's complete pair; a run that finds its write refused treats the
    key as taken by another run unless it can prove the object is its own (a run nonce in the key or the object's
    metadata; or a conditional delete), and a first archive checks after its commit, as an overwrite does, that its
    object is still there (else takes its manifest back, If-Match, and fails retryable)."""
    spec = _spec(schema)
    _table(conn, schema)
    with _connect_to(pg, other_db) as there:
        _table(there, schema)
    key = f"archive/{schema}.ev/2024/03/2024-03-10.jsonl.zst"
    with FaultProxy(s3.endpoint_url) as proxy_a, FaultProxy(s3.endpoint_url) as proxy_b, \
            pg.connect() as run_a, _connect_to(pg, other_db) as run_b:
        manifest_put = proxy_a.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
        data_put = proxy_b.add(Fault(method="PUT", path=r"\.jsonl\.zst$", action="hold", times=1))
        thread_b, outcome_b = in_thread(lambda: archive_partition(run_b, spec, DAY, proxied(proxy_b, bucket)))
        try:
            assert proxy_b.wait_held(1), outcome_b  # B found nothing archived and read the day; its PUT is on its way
            thread_a, outcome_a = in_thread(lambda: archive_partition(run_a, spec, DAY, proxied(proxy_a, bucket)))
            try:
                assert proxy_a.wait_held(1), outcome_a  # A's object is stored; its first manifest is on its way
                conn.execute("SELECT pg_terminate_backend(%s, 30000)", (run_b.info.backend_pid,))
                data_put.gate.set()
                thread_b.join(60)
                assert not thread_b.is_alive()
            finally:
                manifest_put.gate.set()
                thread_a.join(60)
        finally:
            data_put.gate.set()
            thread_b.join(60)
    # (the premise: B failed retryable, A reported success and its manifest is the day's)
    assert isinstance(outcome_b.get("error"), ArchiveError) and outcome_b["error"].retryable, outcome_b
    manifest = load_manifest(S3Store(s3_client, bucket, prefix="archive"), key)
    assert manifest is not None and manifest["rows"] == 50
    named = manifest["object"]["key"]
    # Now: A succeeded (green) and the bucket holds only the manifest: its object was deleted by B's withdrawal.
    assert "result" not in outcome_a or named in _stored(s3_client, bucket), (outcome_a, _stored(s3_client, bucket))


def test_a_run_on_another_database_aborts_the_live_multipart_upload_of_the_run_archiving_the_day(
        pg, conn, schema, other_db, s3, s3_client, bucket):
    """Scenario: ``s.big`` (~12 MiB of text on 2024-03-10, compression none: a multipart upload of 3 parts) exists
    in two databases whose runs no lock excludes (a staging copy, a hot standby and its primary), configured into
    one bucket and prefix. Run A (database 1) archives the day: it writes its upload marker
    (``…2024-03-10.jsonl.uploading``), creates the multipart upload and sends its first part (held by the proxy). Run B
    (database 2) archives the same day meanwhile.

    Now: B's ``_tidy`` (``leftovers.tidy_day``) sees A's marker at its own key and aborts every open upload there
    (``_abort_stale_uploads``), with no question whose it is: the marker names table, day and a process, not the
    database, and the "killed run's leftover" reasoning holds only for runs B's table-day lock excludes (for
    objects, ``tidy_day`` knows it: ``same_source`` leaves another database's alone). B then archives the day;
    A's live upload is gone, and A fails with "the object store is throttling or temporarily failing (5xx,
    SlowDown) ... lower the pool limit or the store's max_concurrency" (moto's answer to a part of an aborted
    upload; S3's NoSuchUpload is likewise read as a transient store fault): the run that was first loses, and its
    error names neither the other run nor the abort.

    Should: whatever the interleaving, the loser fails with an error naming the other party: a run leaves an upload
    whose marker names another source (record the database and system identifier in the marker, as manifests do)
    alone, and the later of the two is refused at its conditional Complete ("written by another run meanwhile"),
    or at least a part or Complete answered NoSuchUpload after another run's tidy is said as that."""
    spec = _spec(schema, "big", compression="none")
    big = "(SELECT string_agg(md5((g * 100 + i)::text), '') FROM generate_series(1, 12) i)"
    _table(conn, schema, "big", 32000, big)
    with _connect_to(pg, other_db) as there:
        _table(there, schema, "big", 32000, big)
    with FaultProxy(s3.endpoint_url) as proxy_a, pg.connect() as run_a, _connect_to(pg, other_db) as run_b:
        part = proxy_a.add(Fault(method="PUT", query="partNumber=", action="hold", times=1))
        thread_a, outcome_a = in_thread(lambda: archive_partition(run_a, spec, DAY, proxied(proxy_a, bucket)))
        try:
            assert proxy_a.wait_held(1), outcome_a  # A's marker is written, its upload created, its first part on its way
            assert any(k.endswith(".jsonl.uploading") for k in _stored(s3_client, bucket))
            b = archive_partition(run_b, spec, DAY, S3Store(s3_client, bucket, prefix="archive",
                                                              part_size=MIN_PART_SIZE))
            assert b.rows == 32000 and not b.skipped  # (the premise: B archived the day, A still uploading)
        finally:
            part.gate.set()
            thread_a.join(60)
    error = outcome_a.get("error")
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # (nothing left behind either way)
    # Now: A fails "uploading part N of s3://…/2024-03-10.jsonl (UploadPart) failed: the object store is throttling
    # or temporarily failing (5xx, SlowDown) … lower the pool limit or the store's max_concurrency".
    assert error is None or "another run" in str(error), repr(error)
