"""Read-path fault hunt: deep verification, restore, compare/list, retention removal and the CLI over
them, with faults injected on the S3 side (fault proxy) and on the PostgreSQL side (terminated
sessions, timeouts). Each test asserts the correct behaviour and fails on the current code because of
a bug."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import run_check_evaluations

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
DAY = DAYS[0]
OBJECT_GET = r"/2024-03-10(\.g\d+)?\.jsonl\.zst$"
MANIFEST = r"/2024-03-10\.jsonl\.zst\.manifest\.json$"


# --- a proxy that can also alter response headers and cut bodies ------------------------------------

class _HeaderHandler(fault_proxy._Handler):
    """The fault proxy's handler, plus ``proxy.header_faults``: dicts with ``method``, ``path`` (regex),
    ``times``, ``skip`` and ``action``: ``("set_header", name, value)``, ``("flip_header", name)`` (XOR the middle
    character of its value), ``("truncate", n)`` (send only the first n bytes of the body, with a
    Content-Length that says so), ``("replace_body", old, new)`` (one occurrence)."""

    def _handle(self) -> None:
        proxy = self.server.proxy
        path = fault_proxy.urllib.parse.unquote(fault_proxy.urllib.parse.urlsplit(self.path).path)
        self._hfault = None
        with proxy._lock:
            for fault in proxy.header_faults:
                if fault["method"] == self.command and re.search(fault["path"], path) and fault["times"] > 0:
                    if fault["skip"] > 0:
                        fault["skip"] -= 1
                        continue
                    fault["times"] -= 1
                    fault["hits"] = fault.get("hits", 0) + 1
                    self._hfault = fault
                    break
        super()._handle()

    def _answer(self, status, headers, payload, method, rate=None):
        fault = self._hfault
        if fault is not None and 200 <= status < 300:
            action = fault["action"]
            if action[0] == "set_header":
                headers = [(k, action[2] if k.lower() == action[1].lower() else v) for k, v in headers]
            elif action[0] == "flip_header":
                changed = []
                for k, v in headers:
                    if k.lower() == action[1].lower():
                        middle = len(v) // 2
                        v = v[:middle] + chr(ord(v[middle]) ^ 0x01) + v[middle + 1:]
                    changed.append((k, v))
                headers = changed
            elif action[0] == "truncate":
                payload = payload[:action[1]]
            elif action[0] == "replace_body":
                payload = payload.replace(action[1], action[2], 1)
        super()._answer(status, headers, payload, method, rate)


class HeaderProxy(FaultProxy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_faults: list[dict] = []

    def start(self) -> HeaderProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _HeaderHandler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="header-proxy", daemon=True)
        self._thread.start()
        return self

    def add_header_fault(self, method: str, path: str, action: tuple, times: int = 1, skip: int = 0) -> dict:
        fault = {"method": method, "path": path, "action": action, "times": times, "skip": skip}
        with self._lock:
            self.header_faults.append(fault)
        return fault


# --- fixtures ----------------------------------------------------------------------------------------

from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: E402,F401 - the same two days


def _store(client, bucket) -> S3Store:
    return S3Store(client, bucket, prefix="archive", part_size=MIN_PART_SIZE)


def _day_rows(conn, schema: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= '2024-03-10+00' AND "
                                "created_at < '2024-03-11+00'").format(sql.Identifier(schema, "events"))).fetchone()[0]


def _exists(conn, qualified: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,)).fetchone()[0]


# =====================================================================================================
# S3 side: deep verification and restore
# =====================================================================================================

def test_deep_verification_whose_object_get_is_answered_200_with_an_error_body_is_no_verdict(
        s3, conn, events, store, bucket):
    """The store (or a gateway) answers the object's GET with 200 and an S3 <Error> document: the bytes
    are not the object, so nothing is proven either way. Now: a returned problem "is damaged: the store
    holds 2xx bytes, expected N" (a failed proof: retention refuses the day, people are alarmed)."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="GET", path=OBJECT_GET, action="error_200", code="InternalError", times=None))
        faulty = _store(proxy.client(max_attempts=1), bucket)
        with pytest.raises(ArchiveError) as caught:
            problems = deep_verify(conn, faulty, spec, DAY)
            pytest.fail(f"a download answered with an error document was taken for a proof: {problems}")
        assert fault.hits >= 1
    assert caught.value.retryable and "damaged" not in str(caught.value)
    assert deep_verify(conn, store, spec, DAY) == []  # the archive was fine all along


def test_restore_whose_object_get_is_answered_200_with_an_error_body_is_not_a_damaged_archive(
        s3, conn, events, store, bucket, temp_dir):
    """Same fault on restore: now ArchiveCorruptError, not retryable, "is damaged ... restore it from a
    replica"; should be a retryable RestoreError saying the download failed."""
    from archive_pipeline.core.restore import ArchiveCorruptError, RestoreError, restore_day

    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=OBJECT_GET, action="error_200", code="InternalError", times=None))
        faulty = _store(proxy.client(max_attempts=1), bucket)
        with pytest.raises(RestoreError) as caught:
            restore_day(conn, faulty, spec, DAY, into="new", target=f"{events}.back", temp_dir=temp_dir)
    error = caught.value
    assert list(temp_dir.iterdir()) == [] and not _exists(conn, f"{events}.back")
    assert not isinstance(error, ArchiveCorruptError), str(error)
    assert error.retryable and "damaged" not in str(error)


def test_deep_verification_whose_object_body_arrives_cut_short_is_no_verdict(s3, conn, events, store, bucket):
    """A middlebox cuts the object's body and sends a Content-Length matching what it sends (or a
    Content-Length header altered on the way): an incomplete download, proving nothing. Now: the
    Content-Length alone is taken as the stored size, and the archive is declared damaged."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with HeaderProxy(s3.endpoint_url) as proxy:
        fault = proxy.add_header_fault("GET", OBJECT_GET, ("truncate", 100), times=10)
        faulty = _store(proxy.client(max_attempts=1), bucket)
        with pytest.raises(ArchiveError) as caught:
            problems = deep_verify(conn, faulty, spec, DAY)
            pytest.fail(f"a body cut short on the way was taken for a damaged archive: {problems}")
        assert fault["hits"] >= 1
    assert caught.value.retryable and "damaged" not in str(caught.value)
    assert deep_verify(conn, store, spec, DAY) == []


# =====================================================================================================
# PostgreSQL side: deep verification and restore
# =====================================================================================================

def _terminate_at_first_block(monkeypatch, pg, pid_of):
    """Make the archive's reader terminate the backend ``pid_of()`` (from another session) before it hands
    over its first block (of the JSONL lines staged by COPY): the load's statement then meets a dead session."""
    from archive_pipeline.core.formats import readers

    original = readers.decompressed_chunks
    done = []

    def reader(*args, **kwargs):
        for block in original(*args, **kwargs):
            if not done:
                with pg.connect() as killer:
                    killer.execute("SELECT pg_terminate_backend(%s, 30000)", (pid_of(),))
                done.append(True)
            yield block

    monkeypatch.setattr(readers, "decompressed_chunks", reader)
    return done


def test_deep_verification_whose_session_is_terminated_while_loading_is_retryable_and_no_verdict(
        pg, conn, events, store, monkeypatch):
    """pg_terminate_backend of the verifying session while the archived rows load into the temporary
    table: the session died, nothing is wrong with the archive. Now: a non-retryable ArchiveError "the
    archive ... does not load back into its recorded column types: OperationalError: terminating
    connection" (verify._load wraps every psycopg.Error as the archive's fault), which the retention
    asset records as a FAILED archive_proven check instead of retrying."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    verifying = pg.connect()
    try:
        killed = _terminate_at_first_block(monkeypatch, pg, lambda: verifying.info.backend_pid)
        with pytest.raises(Exception) as caught:
            deep_verify(verifying, store, spec, DAY)
        assert killed
    finally:
        verifying.close()
    error = caught.value
    assert getattr(error, "retryable", None) is True, f"{type(error).__name__}: {error}"
    assert "does not load back into its recorded column types" not in str(error)


def test_removal_in_dagster_records_no_failed_proof_when_the_verifying_session_is_terminated(
        pg, conn, events, store, archive_env, monkeypatch):
    """The same fault in the retention asset: the run must fail retryably without recording a failed
    archive_proven check (a false proof failure alarms people and documents a damaged archive that is
    fine). Now: the check is recorded as failed and the run is not retried."""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline import definitions
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core import verify

    archive_partition(conn, spec_for(events), DAY, store)
    defs = definitions.build_definitions(parse_config({"retry": {"max_retries": 1, "delay_seconds": 0}, "tables": [{
        "name": f"{events}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]}))
    loading: list[int] = []
    original_load = verify._load

    def load(session, *args, **kwargs):  # remember which session loads the archived rows
        loading.append(session.info.backend_pid)
        return original_load(session, *args, **kwargs)

    monkeypatch.setattr(verify, "_load", load)
    killed = _terminate_at_first_block(monkeypatch, pg, lambda: loading[-1])
    with instance_for_test() as instance:
        remove = defs.resolve_job_def(f"Remove_{events}_events")
        run = remove.execute_in_process(partition_key="2024-03-10", instance=instance, raise_on_error=False)
        assert killed
        evaluations = run_check_evaluations(instance, run.run_id)
        retried = [e.dagster_event.event_type for e in instance.all_logs(run.run_id)
                   if e.dagster_event].count(DagsterEventType.STEP_UP_FOR_RETRY)
    assert [(e.passed, e.description) for e in evaluations if not e.passed] == [], "a failed proof was recorded"
    assert retried == 1  # retryable: the retry (its session not terminated) proves and removes the day
    assert run.success and not _exists(conn, f"{events}.events_20240310")


# =====================================================================================================
# The command line over faults of the store
# =====================================================================================================

from archive_pipeline_tests.test_cli import cli, cli_json, days, edit_config, setup  # noqa: E402,F401 - fixtures


def _json_answer(done) -> dict:
    try:
        return json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"no JSON answer (exit {done.returncode}); stderr: {done.stderr[-1500:]}")


@pytest.mark.parametrize(("status", "code", "retryable"), [(503, "ServiceUnavailable", True),
                                                           (403, "AccessDenied", False)])
def test_cli_verify_whose_head_fails_lists_the_day_not_checked(setup, s3, days, status, code, retryable):
    """`verify` (light: HEAD of the object) where the store fails or refuses the HEAD of one day: that day
    is 'not checked' (retryable or not), the other days are still checked, exit 1, a JSON answer. Now:
    verify_archive lets botocore's ClientError through (store.head re-raises it unwrapped), which is
    neither an ArchiveError nor a BotoCoreError, so the CLI dies with a traceback and no JSON."""
    env, spec = setup
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="HEAD", path=rf"/{days[0]}\.jsonl\.zst$", action="error", status=status, code=code,
                        times=None))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "verify", "--from", days[0].isoformat(), "--to",
                   days[1].isoformat(), "--json")
    answer = _json_answer(done)
    assert done.returncode == 1, (done.returncode, answer)
    assert [(d["day"], d["ok"]) for d in answer["days"]] == [(days[0].isoformat(), False), (days[1].isoformat(), True)]
    assert "not checked" in answer["days"][0]["problems"][0]
    assert ("not retryable" not in answer["days"][0]["problems"][0]) is retryable


def test_cli_list_whose_bucket_listing_fails_still_answers_from_each_days_manifest(setup, s3, days):
    """`list` over more than three days looks the manifests up with one bucket listing; the store answers
    503 to it (every attempt). It once let botocore's ClientError out (a traceback, exit 1, nothing on stdout),
    then exited 3. The listing only saves requests: each day's manifest is read on its own instead (one
    table's refused listing must not stop the others, hunt3 z5), and the answer is the true one."""
    env, spec = setup
    edit_config(env, {"start_date": (days[0] - dt.timedelta(days=3)).isoformat()})
    cli_json(env, "archive", "--day", days[0].isoformat())
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="GET", query="list-type", action="error", status=503, code="ServiceUnavailable",
                                times=None))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "list", "--json")
        assert fault.hits >= 1
    answer = _json_answer(done)
    assert "Traceback" not in done.stderr
    assert done.returncode == 0, (done.returncode, answer)
    assert [d["day"] for d in answer["days"] if d["state"] == "archived"] == [days[0].isoformat()], answer


@pytest.mark.parametrize("command", [("verify", "--download"), ("compare",)])
def test_cli_check_whose_manifest_get_fails_for_one_day_still_checks_the_others(setup, s3, days, command):
    """The store answers 503 to every GET of the first day's manifest: that day cannot be checked, the
    other days must still be checked and listed ('verify and compare check every day even when one
    cannot be checked'), exit 1. Now: the DownloadError from lookup_manifests ends the whole command
    (exit 1, one error, no day listed)."""
    env, spec = setup
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=rf"/{days[0]}\.jsonl\.zst\.manifest\.json$", action="error", status=503,
                        code="ServiceUnavailable", times=None))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, *command, "--from", days[0].isoformat(), "--to",
                   days[1].isoformat(), "--json")
    answer = _json_answer(done)
    assert done.returncode == 1, (done.returncode, answer)
    assert "days" in answer, answer
    listed = {d["day"]: d for d in answer["days"]}
    assert days[1].isoformat() in listed, answer


# =====================================================================================================
# Retention removal
# =====================================================================================================

def test_a_done_mark_whose_put_answers_come_back_with_a_damaged_etag_never_deletes_the_manifest(
        s3, conn, events, store, bucket, s3_client):
    """After the removal's COMMIT the 'done' mark is PUT; the store stores it, but each answer's ETag
    header arrives altered (a proxy on the way). The store holds the right manifest, or at worst the
    pending one: the day's rows are gone and the manifest is the only way to its archive. Now:
    S3Store.put_bytes takes the ETag for a corrupted upload, re-sends three times, then DELETES the
    manifest key, and the error says the manifest 'stays marked pending'."""
    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAY, store)
    with HeaderProxy(s3.endpoint_url) as proxy:
        flips = proxy.add_header_fault("PUT", MANIFEST, ("flip_header", "ETag"), times=10, skip=1)
        with pytest.raises(ArchiveError) as caught:
            from archive_pipeline.core.lifecycle import remove_day
            remove_day(conn, spec, DAY, _store(proxy.client(max_attempts=1), bucket), removed_by="test")
        assert flips["hits"] >= 1
    assert not _exists(conn, f"{events}.events_20240310")  # the removal committed: the rows are gone
    assert type(caught.value).__name__ == "RemovalNotRecorded"
    manifest = load_manifest(store, result.key)
    assert manifest is not None, f"the manifest of a removed day was deleted; the error said: {caught.value}"
    assert manifest["removed"]["state"] in ("pending", "done")


def test_a_removal_whose_lock_times_out_names_table_day_and_is_retryable(pg, conn, events, store):
    """The removal's LOCK TABLE meets the session's lock_timeout (a long reader holds the day's
    partition): nothing removed, the pending mark taken back, and an ArchiveError naming table, day,
    cause and remedy, retryable. Now: the bare psycopg LockNotAvailable escapes remove_day (no table, no
    day, no remedy)."""
    from archive_pipeline.core.lifecycle import remove_day

    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAY, store)
    reader = pg.connect()
    removing = pg.connect()
    try:
        reader.execute("BEGIN")
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(events, "events_20240310")))
        removing.execute("SET lock_timeout = '200ms'")
        with pytest.raises(Exception) as caught:
            remove_day(removing, spec, DAY, store, proven=True)
    finally:
        reader.execute("ROLLBACK")
        reader.close()
        removing.close()
    assert _exists(conn, f"{events}.events_20240310") and _day_rows(conn, events) == 300
    assert "removed" not in load_manifest(store, result.key)
    error = caught.value
    assert isinstance(error, ArchiveError), f"{type(error).__name__}: {error}"
    assert error.retryable and (error.table, error.day) == (spec.name, "2024-03-10")


def test_cli_prune_whose_lock_times_out_on_one_day_goes_on_with_the_others(setup, pg, conn, days):
    """`prune` with a lock_timeout (here `source.lock_timeout_ms`, 300 ms; the default 30 s made this test
    wait 30 s) where a long reader holds the first due day's partition: that day is 'failed' (retryable,
    naming it), the next due day is still removed, exit 1. Was: the LockNotAvailable was taken for a lost
    database: exit 3, "lost the source database: canceling statement due to lock timeout", no table or
    day named, and the other days were not pruned."""
    env, spec = setup
    edit_config(env, {"retention": {"keep_days": 1, "action": "drop"}},  # days[0] and days[1] are due
                source={"lock_timeout_ms": 300})
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    reader = pg.connect()
    try:
        reader.execute("BEGIN")
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(spec.schema_name, f"events_{days[0]:%Y%m%d}")))
        done = cli(env, "prune", "--json")
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    answer = _json_answer(done)
    assert done.returncode == 1, (done.returncode, answer)
    assert [(d["day"], d["status"]) for d in answer["days"]] == [(days[0].isoformat(), "failed"),
                                                                (days[1].isoformat(), "removed")]
    assert answer["days"][0]["retryable"] is True


def test_cli_prune_honours_the_configured_lock_timeout(setup, pg, conn, days):
    """`source.lock_timeout_ms` (here 300 ms) bounds how long a session waits for a lock. prune's removal
    takes ACCESS EXCLUSIVE on the parent table and the day's partition; behind a long reader of the
    partition it must give up after the configured wait (the day failed, retryable), not queue forever:
    while its ACCESS EXCLUSIVE request waits, every new query on the whole table queues behind it. Now:
    the CLI's session gets no lock_timeout (only archiving applies the source settings), so prune waits
    for as long as the reader runs (here: killed by the test after 8 s)."""
    import subprocess
    import sys
    from archive_pipeline_tests.test_cli import ROOT

    env, spec = setup
    edit_config(env, {"retention": {"keep_days": 2, "action": "drop"}}, source={"lock_timeout_ms": 300})  # days[0] due
    cli_json(env, "archive", "--day", days[0].isoformat())
    reader = pg.connect()
    try:
        reader.execute("BEGIN")
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(spec.schema_name, f"events_{days[0]:%Y%m%d}")))
        try:
            done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "prune", "--json"], env=env,
                                  cwd=ROOT, capture_output=True, text=True, timeout=90)
        except subprocess.TimeoutExpired:  # the reader holds the lock until then: a wait for it never ends
            pytest.fail("prune waited 90 s for a lock although source.lock_timeout_ms is 300")
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    answer = _json_answer(done)
    assert [(d["day"], d["status"]) for d in answer.get("days", [])] == [(days[0].isoformat(), "failed")], answer


def _pending_committed_removal(conn, events, store, s3, bucket):
    """Archive DAY and remove it (drop) with the 'done' mark refused by the store: the removal is
    committed, the manifest stays pending."""
    from archive_pipeline.core.lifecycle import remove_day

    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=MANIFEST, action="error", status=503, skip=1, times=None))
        with pytest.raises(ArchiveError):
            remove_day(conn, spec, DAY, _store(proxy.client(max_attempts=1), bucket))
    assert load_manifest(store, result.key)["removed"]["state"] == "pending"
    return spec, result


@pytest.mark.parametrize("header", ["ETag", "Content-Length"])
def test_settling_a_committed_removal_is_not_refused_for_good_by_one_damaged_head_answer(
        s3, conn, events, store, bucket, header):
    """The next removal run settles a committed removal left pending: it checks the archive (object,
    digests, rows: a full download). One HEAD answer whose ETag or Content-Length header was altered on
    the way is no proof the archive broke. Now: verify_archive(deep=True) stops at the HEAD's headers
    and _settle raises a non-retryable RemovalNotRecorded "its archive no longer checks out ... restore
    the archive's object from a replica or backup" (the retention asset records a failed
    archive_proven for the same answer), although the object is intact."""
    from archive_pipeline.core.lifecycle import remove_day

    spec, result = _pending_committed_removal(conn, events, store, s3, bucket)
    with HeaderProxy(s3.endpoint_url) as proxy:
        flips = proxy.add_header_fault("HEAD", OBJECT_GET, ("flip_header", header), times=1)
        try:
            done = remove_day(conn, spec, DAY, _store(proxy.client(max_attempts=1), bucket))
        except ArchiveError as exc:
            assert exc.retryable, f"not retryable: {exc}"
        else:
            assert done.completed
        assert flips["hits"] == 1
    assert remove_day(conn, spec, DAY, store).rows == 300  # the archive was intact all along


def test_restore_of_a_multipart_object_corrupted_once_on_the_way_is_not_a_damaged_archive(
        s3, conn, events, store, bucket, s3_client, temp_dir):
    """A multipart object (its ETag is no MD5) whose one download gets a byte flipped on the way: the
    restore cannot tell transit from damage from one download; like deep verification it must download
    again (and then restore), or at least fail as a retryable download error, not ArchiveCorruptError.
    Now: ArchiveCorruptError ("the archive of ... does not match ...") on the first bad download."""
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.core.restore import ArchiveCorruptError, restore_day
    from archive_pipeline_tests.helpers import download

    spec = spec_for(events)
    result = archive_partition(conn, spec, DAY, store)
    body = download(s3_client, bucket, result.key)
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=result.key)["UploadId"]
    part = s3_client.upload_part(Bucket=bucket, Key=result.key, UploadId=upload, PartNumber=1, Body=body)["ETag"]
    etag = s3_client.complete_multipart_upload(Bucket=bucket, Key=result.key, UploadId=upload, MultipartUpload={
        "Parts": [{"ETag": part, "PartNumber": 1}]})["ETag"].strip('"')
    manifest = decode_manifest(download(s3_client, bucket, result.manifest_key))
    manifest["object"]["etag"] = etag
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))
    with FaultProxy(s3.endpoint_url) as proxy:
        flip = proxy.add(Fault(method="GET", path=OBJECT_GET, action="flip_response_byte", times=1))
        faulty = _store(proxy.client(max_attempts=1), bucket)
        try:
            restored = restore_day(conn, faulty, spec, DAY, into="new", target=f"{events}.back", temp_dir=temp_dir)
        except ArchiveError as exc:
            assert not isinstance(exc, ArchiveCorruptError), str(exc)
            assert exc.retryable
        else:
            assert restored.rows == 300
        assert flip.hits == 1
    assert list(temp_dir.iterdir()) == []


@pytest.mark.parametrize(("into", "target", "needed"), [("existing", "back", "INSERT"), ("new", "back2", "CREATE")])
def test_restore_refused_a_grant_names_the_grant_a_restore_needs(pg, conn, events, store, temp_dir, into, target,
                                                                 needed):
    """A role that may read but not write the target (existing: no INSERT; new: no CREATE on the
    schema): the restore fails at once, nothing restored, and the remedy names the privilege a restore
    needs. Now: the remedy is archiving's "GRANT SELECT ON <table> TO <role>", which the role already
    has, and which fixes nothing."""
    from archive_pipeline.core.restore import RestoreError, restore_day

    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(events, "back"),
                                                              sql.Identifier(events, "events")))
    role = f"{events}_reader"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'x'").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(events), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(events),
                                                                                     sql.Identifier(role)))
        with psycopg.connect(pg.dsn, user=role, password="x", autocommit=True) as restricted:
            with pytest.raises(RestoreError) as caught:
                restore_day(restricted, store, spec, DAY, into=into, target=f"{events}.{target}", temp_dir=temp_dir)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    error = caught.value
    assert not error.retryable and list(temp_dir.iterdir()) == []
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(events, "back"))).fetchone()[0] == 0
    assert "GRANT SELECT" not in (error.remedy or ""), str(error)
    assert needed in str(error), str(error)


def test_restore_whose_manifest_read_times_out_names_table_and_day(s3, conn, events, store, bucket, temp_dir):
    """The manifest's GET answers slower than the client's read timeout: a retryable RestoreError (the
    README: a download that fails is a retryable RestoreError) naming table and day. Now: restore_day
    lets the store's bare DownloadError through (error.table and error.day are None; the message names
    only the manifest's URI)."""
    from archive_pipeline.core.restore import RestoreError, restore_day

    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=MANIFEST, action="delay", delay=6, times=None))
        # read timeout 2 s: every other request (no retries) answers within it on a loaded machine too
        faulty = _store(proxy.client(max_attempts=1, read_timeout=2), bucket)
        with pytest.raises(ArchiveError) as caught:
            restore_day(conn, faulty, spec, DAY, into="new", target=f"{events}.back", temp_dir=temp_dir)
    error = caught.value
    assert error.retryable
    assert (error.table, error.day) == (spec.name, "2024-03-10") and isinstance(error, RestoreError), \
        f"{type(error).__name__} table={error.table} day={error.day}: {error}"


@pytest.mark.parametrize("command", ["compare", "verify"])
def test_cli_check_whose_bucket_listing_arrives_altered_does_not_lose_an_archived_day(setup, s3, days, command):
    """Over more than three days the manifests are found by one bucket listing, which nothing checks (no
    digest covers a ListObjectsV2 answer). One byte of one manifest's key altered on the way (here 'n'
    -> 'N'): the day is still archived. Now: the listing alone decides that the manifest is absent, so
    `compare` reports the archived, equal day as 'not-archived' (a difference, exit 1) and `verify`
    silently leaves it out (exit 0, one day fewer checked)."""
    env, spec = setup
    edit_config(env, {"start_date": (days[0] - dt.timedelta(days=3)).isoformat()})
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[2].isoformat())
    name = f"{days[1]}.jsonl.zst.manifest.json".encode()
    with HeaderProxy(s3.endpoint_url) as proxy:
        altered = proxy.add_header_fault("GET", r"^/[^/]+/?$", ("replace_body", name, name[:-1] + b"N"), times=10)
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, command, "--json")
        assert altered["hits"] >= 1
    answer = _json_answer(done)
    listed = {d["day"]: d for d in answer.get("days", [])}
    assert set(listed) == {d.isoformat() for d in days}, listed
    assert done.returncode == 0 and answer["ok"], answer
