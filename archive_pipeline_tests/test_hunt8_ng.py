"""Hunt 8 (ng): S3-compatible stores whose semantics differ silently (no error) from AWS's on the read, lifecycle and
concurrency paths: conditional writes accepted and ignored, If-Match compared case-sensitively against the store's
own ETag form. Each store is emulated by a proxy between boto3 and moto that rewrites requests and answers as that
store does. Real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import load_manifest, verify_archive
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy, error_xml
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_hunt7_mt import two_databases
from archive_pipeline_tests.test_race_hunt import in_thread

DAY = dt.date(2024, 3, 10)


# --- a proxy that speaks a store's dialect (after test_hunt8_nb's DialectProxy) ---------------------

class _DialectHandler(fault_proxy._Handler):
    def _forward(self, method: str, body: bytes):
        proxy = self.server.proxy
        for before in proxy.before:
            answer = before(self, method, body)
            if answer is not None:
                return answer
        status, headers, payload = super()._forward(method, body)
        for after in proxy.after:
            status, headers, payload = after(self, method, status, headers, payload)
        return status, headers, payload


class DialectProxy(FaultProxy):
    """A FaultProxy whose ``before`` hooks may answer a request themselves or change its headers, and whose
    ``after`` hooks rewrite forwarded answers. Faults (hold, ...) apply first, as in FaultProxy."""

    def __init__(self, target_url: str, *, before=(), after=()) -> None:
        super().__init__(target_url)
        self.before, self.after = list(before), list(after)

    def start(self) -> DialectProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _DialectHandler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self


def _xml_error(status: int, code: str, message: str):
    return status, [("Content-Type", "application/xml")], error_xml(code, message)


def ignore_conditions(handler, method, body):
    """A store that accepts If-None-Match / If-Match on a write and ignores them (older MinIO, Ceph RGW before
    conditional writes, many gateways): the write goes through whatever the key holds, answered 200."""
    for name in ("If-None-Match", "If-Match"):
        while name in handler.headers:
            del handler.headers[name]
    return None


def upper_etags(handler, method, status, headers, payload):
    """ETags in upper-case hex, in headers and listings alike."""
    headers = [(k, v.upper() if k.lower() == "etag" else v) for k, v in headers]
    payload = re.sub(rb"<ETag>([^<]*)</ETag>", lambda m: b"<ETag>" + m.group(1).upper() + b"</ETag>", payload)
    return status, headers, payload


def case_sensitive_if_match(handler, method, body):
    """The store compares If-Match byte for byte with its own (upper-case) ETag: a lower-case MD5 matches nothing."""
    value = handler.headers.get("If-Match")
    if value is None:
        return None
    if value != value.upper():
        return _xml_error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    handler.headers.replace_header("If-Match", value.lower())  # (moto's own form)
    return None


def _store(proxy, bucket: str) -> S3Store:
    return S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)


# --- If-Match compared case-sensitively --------------------------------------------------------------

def test_an_overwrite_on_a_store_with_upper_case_etags_is_not_refused_as_another_runs(conn, schema, ev, s3, bucket,
                                                                                     store, temp_dir):
    """A user's store answers its MD5 ETags in upper-case hex (archiving there works since test_hunt8_nb), and
    compares an If-Match header byte for byte with that form, as an opaque string (RFC 9110: strong comparison of
    the opaque tag). The user archives a day, then archives it again with ``overwrite`` (or a removal writes its
    pending mark). What happens: the manifest replacement is sent with ``If-Match: "<md5 in lower case>"``
    (``S3Store.etag_of`` computes it from the bytes), the store answers 412, and the run fails "... was written by
    another run meanwhile", retryable: every retry fails the same way, no other run exists, and the day can never
    be archived again (a removal is refused the same way, for ever). What should happen: the condition is the
    store's own ETag of the manifest (as its HEAD or PUT answered it), so the overwrite commits."""
    with DialectProxy(s3.endpoint_url, before=[case_sensitive_if_match], after=[upper_etags]) as proxy:
        upper = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        first = archive_partition(conn, ev, DAY, upper, temp_dir=temp_dir)
        again = archive_partition(conn, ev, DAY, upper, temp_dir=temp_dir, overwrite=True)
        assert again.generation == first.generation + 1
        assert verify_archive(upper, table_day_key(ev, DAY, store.prefix), {}, deep=True, temp_dir=temp_dir) == []


# --- conditional writes accepted and ignored ---------------------------------------------------------

def _events(schema: str) -> TableSpec:
    return TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"})


def test_a_removals_pending_mark_on_a_store_that_ignores_if_match_does_not_bring_back_a_retired_object(
        pg, conn, schema, s3, bucket):
    """The day 2024-03-10 of ``<schema>.events`` is archived from database A (300 rows, generation 1) to a store
    that accepts ``If-Match`` and ignores it. Retention (``drop``) removes the day on A: it proves the archive,
    reads the manifest again (unchanged) and sends its pending mark. Meanwhile a deployment on database B (a
    migration; no lock is shared) archives the day with ``overwrite``: it commits generation 2 (B's 350 rows) and, as
    the README says an overwrite does, deletes generation 1. The pending mark (the proven generation-1 manifest
    plus ``removed: pending``) then lands over B's manifest (AWS would refuse it, 412, and the removal would stop:
    "replaced since it was proven"); the removal re-checks A's rows against that manifest, drops the partition,
    commits, finds its own pending mark and marks it done. What happens: the removal succeeds; A's 300 rows are
    gone from the source, and the manifest (``removed: done``) names generation 1, which no longer exists: the
    rows exist nowhere (``verify``: the object is missing), and generation 2 is named by no manifest. What should
    happen: the removal never drops rows whose proven object is gone (check the object is still there, and the
    manifest still the pending mark it wrote, after the mark and before the DROP), and fails saying the archive
    was replaced."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.test_race_hunt import day_rows

    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    direct = S3Store(s3.client(), bucket, prefix="archive")
    key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
    with two_databases(pg, conn, schema, 300, 350) as other_db:
        assert archive_partition(conn, spec, DAY, direct).generation == 1
        with DialectProxy(s3.endpoint_url, before=[ignore_conditions]) as proxy, \
                pg.connect() as r_conn, pg.connect(dbname=other_db) as b_conn:
            mark = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
            thread, outcome = in_thread(lambda: remove_day(r_conn, spec, DAY, _store(proxy, bucket),
                                                           removed_by="prune"))
            try:
                assert proxy.wait_held(1), outcome  # proven, manifest read again; the pending mark waits
                b = archive_partition(b_conn, spec, DAY, direct, overwrite=True)  # B's generation 2; g1 retired
                assert b.generation == 2 and direct.head(key) is None, b
            finally:
                mark.gate.set()
                thread.join(60)
        left = day_rows(conn, schema)
    problems = verify_archive(direct, key, {})
    manifest = load_manifest(direct, key)
    # Now: the removal succeeds (300 rows dropped), the manifest is marked done and names the deleted generation 1:
    # ['object s3://.../2024-03-10.jsonl.zst is missing'].
    assert left == 300 or problems == [], (repr(outcome.get("error") or outcome.get("result")), left,
                                           manifest["object"]["key"], (manifest.get("removed") or {}).get("state"),
                                           problems)


# --- read-after-write lag ----------------------------------------------------------------------------

class HeadLagsAfterComplete:
    """A store whose HEAD of a key just completed by CompleteMultipartUpload answers 404 once (read-after-write lag
    of a new key: Ceph RGW multisite, eventually consistent gateways; AWS before December 2020 for a HEAD sent
    before the key existed)."""

    def __init__(self) -> None:
        self.completed: set[str] = set()
        self.lagged: list[str] = []

    def after(self, handler, method, status, headers, payload):
        path = handler.path.partition("?")[0]
        query = handler.path.partition("?")[2]
        if method == "POST" and "uploadId=" in query and status == 200:
            self.completed.add(path)
        elif method == "HEAD" and path in self.completed:
            self.completed.discard(path)
            self.lagged.append(path)
            return 404, [("Content-Type", "application/xml")], b""
        return status, headers, payload


def test_a_multipart_archive_on_a_store_whose_head_lags_its_complete_is_not_withdrawn(conn, schema, s3, bucket,
                                                                                      temp_dir):
    """A user archives a day big enough for a multipart upload (two parts) to a store with read-after-write lag:
    the first HEAD of a key right after its CompleteMultipartUpload answers 404, the next one finds it. The
    archiver HEADs a multipart object once, to compare its size. What happens: the one 404 is taken for "stored
    object has None bytes (HeadObject), expected 9055494; the run will be retried", and the object the store has
    just completed is deleted: every multipart day fails its attempt (a Dagster retry waits 30 s and re-reads
    and re-uploads the whole day, to fail the same way on such a store), with a message that blames sizes. The
    README says a HEAD that says 404 is asked once more before the object is called missing (restore, proofs,
    checks and removals alike); the upload's own HEAD is not. What should happen: the upload's size check asks
    once more on a 404 (as every other reader does), and the day archives."""
    from psycopg import sql

    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text)").format(
        sql.Identifier(schema, "big")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 ms', md5(g::text) || "
                         "md5((g + 1)::text) FROM generate_series(1, 75000) g").format(sql.Identifier(schema, "big")),
                 (f"{DAY} 00:00+00",))
    spec = TableSpec(name=f"{schema}.big", day_column="at", start_date="2024-03-01", partitioning={"mode": "column"},
                     compression="none")
    lag = HeadLagsAfterComplete()
    with DialectProxy(s3.endpoint_url, after=[lag.after]) as proxy:
        lagging = _store(proxy, bucket)
        try:
            result = archive_partition(conn, spec, DAY, lagging, temp_dir=temp_dir)
        finally:
            assert lag.lagged, "(premise: the store was asked right after a CompleteMultipartUpload)"
        assert result.parts >= 2 and result.rows == 75000
        assert verify_archive(lagging, table_day_key(spec, DAY, "archive"), {}, temp_dir=temp_dir) == []


# --- deletes that take a moment ----------------------------------------------------------------------

class LaggingDeletes:
    """A store whose DeleteObject answers 204 at once and removes the object a moment later (Ceph RGW with
    asynchronous garbage collection of multisite deletes, eventually consistent gateways): until ``settle``, a
    deleted key still holds its object (HEAD, GET and conditional writes see it)."""

    def __init__(self) -> None:
        self.pending: list[str] = []

    def before(self, handler, method, body):
        if method == "DELETE" and "uploadId=" not in handler.path:
            self.pending.append(handler.path)
            return 204, [], b""
        return None

    def settle(self, client, bucket: str) -> None:
        import urllib.parse

        for path in self.pending:
            key = urllib.parse.unquote(path.partition("?")[0]).removeprefix(f"/{bucket}/")
            client.delete_object(Bucket=bucket, Key=key)
        self.pending.clear()


@pytest.mark.parametrize("conditions", ["kept", "ignored"])
def test_an_overwrite_after_tidying_a_leftover_on_a_store_with_lagging_deletes_does_not_write_at_the_deleted_key(
        conn, schema, ev, s3, bucket, s3_client, temp_dir, conditions):
    """A day is archived (generation 1); a run killed after its upload left generation 2's object behind, which no
    manifest names. On a store whose deletes take a moment (204 at once, the object gone a little later), the user
    archives the day again with ``overwrite``. The run's tidying deletes the leftover ``.g2`` and then writes its
    new data at that very key (``_tidied``: "free to be written again"), with ``If-None-Match: *``; the store still
    holds the leftover and answers 412. What happens: the run fails "….g2.jsonl.zst was written by another run
    meanwhile ...; archive each table from one database, and one server, only": there is no other run, and the
    message sends the user hunting for one. On such a store that also ignores conditional writes (older Ceph RGW)
    the write goes through, the manifest commits naming ``.g2``, and then the leftover's delete takes effect and
    removes the new object: the run is green, ``verify`` says the object is missing, and generation 1 was retired
    as well, so the day has no archive at all. What should happen: the new data goes past every generation still
    listed or just deleted (a key deleted a moment ago is not free), so the overwrite archives the day and its
    archive survives the delete."""
    direct = S3Store(s3_client, bucket, prefix="archive")
    first = archive_partition(conn, ev, DAY, direct, temp_dir=temp_dir)
    key = table_day_key(ev, DAY, "archive")
    leftover = key.replace(".jsonl", ".g2.jsonl")
    s3_client.put_object(Bucket=bucket, Key=leftover, Body=b"a killed run's upload")
    lag = LaggingDeletes()
    hooks = [lag.before] + ([ignore_conditions] if conditions == "ignored" else [])
    with DialectProxy(s3.endpoint_url, before=hooks) as proxy:
        lagging = _store(proxy, bucket)
        try:
            again = archive_partition(conn, ev, DAY, lagging, temp_dir=temp_dir, overwrite=True)
        finally:
            lag.settle(s3_client, bucket)  # the deletes take effect
    assert again.generation > first.generation
    # Now: kept: KeyTakenError "...g2.jsonl.zst was written by another run meanwhile"; ignored: green, then
    # ['object s3://.../2024-03-10.g2.jsonl.zst is missing'].
    assert verify_archive(direct, key, {}, deep=True, temp_dir=temp_dir) == []
