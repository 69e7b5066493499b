"""Hunt 25 (cw): a review of this session's fixes (the caller's-connection boundary, the manifest's composites table,
store metadata read case-blind and a store without user metadata, retired fingerprints, removals refusing another
database, list/compare object checks): each fix's new branch at its edge. Real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import re
import threading

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_race_hunt import in_thread

DAY = dt.date(2024, 3, 10)


def test_a_composite_field_named_with_a_trailing_blank_does_not_make_an_unchanged_day_changed(
        conn, schema, store, temp_dir):
    """Scenario: a column ``c`` of composite type ``t (a u, "a " int)``, ``u`` being ``(x int)``: two fields, one
    named ``a`` (a composite) and one named ``a `` (a trailing blank, a legal identifier). The day is archived, then
    the scheduled run archives it again without overwrite, compare checks it and restore restores it: nothing was
    changed in between.

    Now: manifest._folded (manifest_version 4's composites table) folds each composite's subtree by string prefix:
    the field ``a `` has the way ``.a `` and _below('.a ', '.a') is true (``'.a '.startswith('.a ')``), so it is
    folded into ``u``'s entry at the relative way '' (_relative), which _joined('.a', '') unfolds back as ``.a``: the
    decoded shape loses the node ``.a `` and records ``.a`` twice, the second an integer without fields. So the
    second archive run raises LateRowsError "changed since it was archived ... the composite u at field a has the
    fields (x) now, () when archived" (permanent: every scheduled run of the day fails), compare says 'differs',
    and restore refuses with "a type inside its columns is not the one the day was archived with".

    Should: folding and unfolding give back exactly the ways recorded (a way at a root's own text plus a blank is
    not below it unless a step follows: test ``way.startswith(root + ' ')`` and a non-empty relative way, or fold
    by the ShapeNode steps rather than their joined text); the rerun skips, compare says equal, restore restores."""
    t, u, table = (sql.Identifier(schema, n) for n in ("t", "u", "ev"))
    conn.execute(sql.SQL("CREATE TYPE {} AS (x int)").format(u))
    conn.execute(sql.SQL('CREATE TYPE {} AS (a {}, "a " int)').format(t, u))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, c {})").format(table, t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, ROW(ROW(5), 7))").format(table), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))

    said = []
    try:
        again = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
        if not again.skipped:
            said.append(f"the rerun archived the unchanged day again (generation {again.generation})")
    except ArchiveError as exc:
        said.append(f"the rerun failed: {exc}")
    compared = compare_days(conn, spec, store, [DAY])[0]
    if compared.result != "equal":
        said.append(f"compare: {compared.result}: {compared.note}")
    try:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back")
    except ArchiveError as exc:
        said.append(f"restore: {exc}")
    assert not said, said


def test_another_writers_object_at_a_fresh_key_is_not_blamed_on_a_store_that_keeps_metadata(
        conn, schema, ev, s3, s3_client, bucket, store, temp_dir):
    """Scenario: a day's first archive sends its data object in one PutObject (If-None-Match: *), its only try
    (nothing is lost or retried). Meanwhile another writer (another tool, a user's ``aws s3 cp``) puts an object
    without any x-amz-meta-* at that very key, so the store answers 412. The store keeps user metadata perfectly
    well (moto: every object this archiver wrote carries its writer, table and day).

    Now: _put_single -> held_after_refusal -> S3Store.holds finds the key's object without Metadata and raises the
    new UploadError (e658423): "carries no user metadata at all ... the store does not keep them, so whether it is
    this run's own write cannot be told; the object there was left as it is (it may be this run's)", permanent,
    remedy "use a store, or a store setting or gateway, that keeps S3 user metadata". This run made one try only,
    so the object cannot be its own, and the store is not at fault: the user is sent to replace a working store,
    while the key holds a foreign object.

    Should: the object is called another writer's (KeyTakenError, as before the fix: the key was taken meanwhile),
    naming it. Blame the store only where it is shown to drop metadata: this upload's request was sent more than
    once (a lost answer, as test_hunt25_cm's case), or an object this run wrote (its upload marker) comes back
    without the metadata it was sent with."""
    key = table_day_key(ev, DAY, store.prefix)
    with FaultProxy(s3.endpoint_url) as proxy:
        gate = threading.Event()
        proxy.add(Fault(method="PUT", path=re.escape(key) + "$", action="hold", gate=gate, times=1, hold_timeout=60))
        through = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        thread, outcome = in_thread(lambda: archive_partition(conn, ev, DAY, through, temp_dir=temp_dir))
        try:
            assert proxy.wait_held(1, timeout=60), outcome
            s3_client.put_object(Bucket=bucket, Key=key, Body=b"another writer's bytes")  # meanwhile, no metadata
        finally:
            gate.set()
            thread.join(60)
        puts = proxy.requests(method="PUT", path=re.escape(key) + "$")
    assert [r.status for r in puts] == [412], puts  # (premise: one try, refused for the other writer's object)
    error = outcome.get("error")
    assert isinstance(error, ArchiveError), outcome
    said = f"{error} {error.remedy}"
    assert "does not keep" not in said and "keeps S3 user metadata" not in said, said
    assert "may be this run's" not in said, said
