"""Hunt 3 (u): S3 faults on every read and metadata path (restore, deep verification, compare, list, verify,
prune and its manifest reads, the retention asset's proof), injected between the client and moto with the
fault proxy. Each test asserts the correct behaviour; a failing one is a bug."""

from __future__ import annotations

import datetime as dt
import re
import threading

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - two days of 300 rows
from archive_pipeline_tests.test_cli import cli, cli_json, days, edit_config, setup  # noqa: F401 - fixtures
from archive_pipeline_tests.test_readpath_faults_hunt import _exists, _json_answer

DAY = dt.date(2024, 3, 10)
OBJECT = r"/2024-03-10(\.g\d+)?\.jsonl\.zst$"
MANIFEST = r"/2024-03-10\.jsonl\.zst\.manifest\.json$"


class _BodyHandler(fault_proxy._Handler):
    """The fault proxy's handler, plus ``proxy.rewrites``: (method, path regex, query substring, function of the
    answer's body and headers, returning both) applied to the body of each 2xx answer that matches (its Content-Length then says so)."""

    def _handle(self) -> None:
        split = fault_proxy.urllib.parse.urlsplit(self.path)
        self._where = (self.command, fault_proxy.urllib.parse.unquote(split.path), split.query)
        super()._handle()

    def _answer(self, status, headers, payload, method, rate=None):
        proxy = self.server.proxy
        if 200 <= status < 300:
            for want, path, query, change in proxy.rewrites:
                if (want == self._where[0] and re.search(path, self._where[1]) and query in self._where[2]):
                    payload, headers = change(payload, headers)
                    proxy.rewritten += 1
                    break
        super()._answer(status, headers, payload, method, rate)


class BodyProxy(FaultProxy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rewrites: list = []
        self.rewritten = 0

    def start(self) -> BodyProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _BodyHandler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="body-proxy", daemon=True)
        self._thread.start()
        return self


def _store(client, bucket: str, **kwargs) -> S3Store:
    return S3Store(client, bucket, prefix="archive", part_size=MIN_PART_SIZE, **kwargs)


def _names_day(error: BaseException, table: str) -> None:
    text = str(error)
    assert table in text and "2024-03-10" in text, text
    assert "testing" not in text  # the test credentials





# =====================================================================================================
# verify_etags: false (SSE-KMS, gateways): a manifest GET damaged once on the way
# =====================================================================================================

@pytest.mark.parametrize("step", ["restore", "prove", "remove"])
def test_a_manifest_read_damaged_once_on_the_way_is_no_verdict_without_md5_etags(
        s3, conn, events, bucket, temp_dir, step):
    """A store whose ETags are not MD5s (SSE-KMS: the README's case for `verify_etags: false`) and that keeps
    no flexible checksum (many S3-compatible stores and gateways): one byte of one manifest GET is flipped on
    the way. Nothing is wrong in the bucket; reading the manifest again gives it whole. Now the one damaged
    read is taken for a damaged manifest, for good: restore raises a non-retryable RestoreError "cannot be
    trusted ... restore it from a replica or backup", deep verification returns the failed proof "manifest
    ... unreadable" (the retention asset records archive_proven failed, archive_intact fails), and the
    removal is refused, not retryable, "archive the day again (overwrite)" -- for an intact archive."""
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline.core.verify import deep_verify

    spec = spec_for(events)
    with FaultProxy(s3.endpoint_url) as proxy:
        kms = _store(proxy.client(max_attempts=1), bucket, verify_etags=False)  # no CRC32 stored with the objects
        archive_partition(conn, spec, DAY, kms)
        fault = proxy.add(Fault(method="GET", path=MANIFEST, action="flip_response_byte", times=1))
        try:
            if step == "restore":
                assert restore_day(conn, kms, spec, DAY, into="new", target=f"{events}.back",
                                   temp_dir=temp_dir).rows == 300
            elif step == "prove":
                assert deep_verify(conn, kms, spec, DAY) == [], "one damaged read was taken for a failed proof"
            else:
                assert remove_day(conn, spec, DAY, kms, removed_by="test").rows == 300
        except ArchiveError as exc:  # or: nothing proven, retried
            assert exc.retryable and not isinstance(exc, RemovalRefused), f"{type(exc).__name__}: {exc}"
            assert "cannot be trusted" not in str(exc) and "replica" not in str(exc), str(exc)
            _names_day(exc, spec.name)
        assert fault.hits == 1
    assert list(temp_dir.iterdir()) == []


# =====================================================================================================
# A bucket listing that repeats or drops keys
# =====================================================================================================

def _repeat_day(first: dt.date, second: dt.date):
    """Every entry of ``second`` in a listing replaced by a repeat of ``first``'s (same count, same sizes)."""
    def change(body: bytes, headers):
        return body.replace(f"/{second}.".encode(), f"/{first}.".encode()), headers
    return change


def _drop_day(day: dt.date):
    """Every entry of ``day`` left out of a listing; its KeyCount still counts them."""
    pattern = re.compile(rb"<Contents>(?:(?!</Contents>).)*?/" + re.escape(str(day).encode()) + rb"\..*?</Contents>",
                         re.S)

    def change(body: bytes, headers):
        return pattern.sub(b"", body), headers
    return change


@pytest.mark.parametrize("fault", ["repeat", "drop"])
def test_cli_verify_does_not_pass_over_an_archived_day_a_damaged_listing_hides(setup, s3, days, fault):
    """`archive-pipeline verify` over more than three days finds the manifests with one bucket listing. The
    listing comes back damaged: one day's entries replaced by a repeat of the day before's (keys out of
    order, one listed twice: no S3 answer is so), or left out while the answer's KeyCount still counts them.
    Either proves the answer is not the bucket's. Now the listing is trusted: the archived middle day is
    silently not checked, and verify says ok, exit 0, two days checked (`list` calls the day 'missing',
    `compare` 'not-archived'). It must check every archived day, or fail the command as retryable."""
    env, spec = setup
    edit_config(env, {"start_date": (days[0] - dt.timedelta(days=3)).isoformat()})
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[2].isoformat())
    with BodyProxy(s3.endpoint_url) as proxy:
        change = _repeat_day(days[0], days[1]) if fault == "repeat" else _drop_day(days[1])
        proxy.rewrites.append(("GET", r"^/[^/]+/?$", "list-type", change))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "verify", "--json")
        assert proxy.rewritten >= 1
    answer = _json_answer(done)
    if done.returncode == 0:
        assert [d["day"] for d in answer["days"]] == [d.isoformat() for d in days], \
            f"an archived day was passed over: {answer}"
    else:
        assert answer.get("retryable") is True, answer


# =====================================================================================================
# prune: the manifest reads of the days no longer in the source
# =====================================================================================================

def test_cli_prune_does_not_pass_over_a_pending_day_whose_manifest_cannot_be_read(setup, s3, days):
    """`prune` was cut short after a day's removal committed ('done' mark refused: the manifest stays
    'pending'). The next `prune` reads the manifests of the due days no longer in the source to complete
    such marks; the store answers 503 to that day's manifest GET (every attempt). Now prune passes over the
    day without a word: ok, exit 0, no day listed, the mark stays pending. It must list the day as failed
    (retryable, naming table and day) and exit 1, as it does for a day it could not remove."""
    env, spec = setup
    edit_config(env, {"retention": {"keep_days": 2, "action": "drop"}})  # days[0] is due
    cli_json(env, "archive", "--day", days[0].isoformat())
    manifest = rf"/{days[0]}\.jsonl\.zst\.manifest\.json$"
    with FaultProxy(s3.endpoint_url) as proxy:  # the removal commits, its 'done' mark is refused
        proxy.add(Fault(method="PUT", path=manifest, action="error", status=503, code="ServiceUnavailable", skip=1,
                        times=None))
        first = _json_answer(cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "prune", "--json"))
    assert [(d["day"], d["status"]) for d in first["days"]] == [(days[0].isoformat(), "failed")], first
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="GET", path=manifest, action="error", status=503, code="ServiceUnavailable",
                                times=None))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "prune", "--json")
        assert fault.hits >= 1
    answer = _json_answer(done)
    assert done.returncode == 1 and not answer["ok"], (done.returncode, answer)
    listed = {d["day"]: d for d in answer["days"]}
    assert days[0].isoformat() in listed and listed[days[0].isoformat()].get("retryable") is True, answer
    # the mark is still pending, and a prune that can read it completes it
    again = cli_json(env, "prune")
    assert [(d["day"], d["status"]) for d in again["days"]] == [(days[0].isoformat(), "removal completed")]


# =====================================================================================================
# restore of a range whose second day cannot be downloaded
# =====================================================================================================

def test_cli_restore_of_a_range_failing_on_a_later_day_says_how_to_restore_the_rest(setup, s3, days, conn):
    """`restore --from D1 --to D3 --into new --target T`: D1 is restored (T created, committed), then the
    store throttles D2's download (503 SlowDown, every attempt). Now the error says "retryable": true and
    "to fix: run the command again", but the same command now fails for good ("T already exists"), and
    with --into existing it would load D1 a second time. As for a cancelled range restore, the remedy must
    be the command that restores the rest. (Now T carries a restore mark and the same command resumes.)"""
    env, spec = setup
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[2].isoformat())
    target = f"{spec.schema_name}.back"
    args = ["restore", "--from", days[0].isoformat(), "--to", days[2].isoformat(), "--into", "new", "--target",
            target, "--json"]
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=rf"/{days[1]}\.jsonl\.zst$", action="slow_down", times=None))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, *args)
    answer = _json_answer(done)
    assert done.returncode == 1 and [d["day"] for d in answer["days"]] == [days[0].isoformat()], answer
    assert days[1].isoformat() in answer["error"] and spec.name in answer["error"]
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.schema_name, "back"))
                        ).fetchone()[0] == 300  # D1 stays restored
    # The remedy says to run the command again: T carries the restore mark, so the same command resumes (D1
    # "already restored", not loaded twice; D2 and D3 loaded) rather than failing "T already exists".
    assert "run the command again" in answer["error"].split("to fix:", 1)[-1], answer["error"]
    again = _json_answer(cli(env, *args))
    assert again["ok"], again
    assert [d["check"].startswith("already restored") for d in again["days"]] == [True, False, False], again
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.schema_name, "back"))).fetchone()
    assert rows[0] == 900  # each day once


# =====================================================================================================
# An object GET answered with another version of the object (the same size, that version's own ETag)
# =====================================================================================================

def _older_version(body: bytes, headers):
    """The object's bytes with one byte changed, and the ETag (MD5) of those bytes: what a cache that kept an
    earlier version of the key answers, self-consistent, the same size."""
    import hashlib

    older = bytearray(body)
    older[len(older) // 2] ^= 0x01
    etag = f'"{hashlib.md5(bytes(older)).hexdigest()}"'
    return bytes(older), [(k, etag if k.lower() == "etag" else v) for k, v in headers]


@pytest.mark.parametrize("step", ["restore", "prove"])
def test_an_object_get_answered_with_another_version_is_not_a_damaged_archive(s3, conn, events, store, bucket,
                                                                              temp_dir, step):
    """A caching gateway answers the object's GET with an earlier version of the key: the same size, its
    bytes hashing to the ETag it sends. That ETag is neither the one the manifest recorded nor the one the
    object's own HEAD gives (the store holds the archived bytes). The size case is handled (a GET whose
    Content-Length the HEAD contradicts is "not the object", retryable); the MD5 case is not: the GET's ETag
    alone "vouches" for the stored bytes, and the intact archive is declared damaged for good --
    restore: ArchiveCorruptError "is damaged ... restore it from a replica or backup", not retryable;
    proof: a failed proof ("the stored object has MD5 ..."), so retention refuses the day and the check
    is red. It must be a retryable download error, no verdict."""
    from archive_pipeline.core.restore import ArchiveCorruptError, restore_day
    from archive_pipeline.core.verify import deep_verify

    spec = spec_for(events)
    with BodyProxy(s3.endpoint_url) as proxy:
        faulty = _store(proxy.client(max_attempts=1), bucket)  # a store that keeps no CRC32 of its own
        archive_partition(conn, spec, DAY, faulty)
        proxy.rewrites.append(("GET", OBJECT, "", _older_version))
        try:
            if step == "restore":
                assert restore_day(conn, faulty, spec, DAY, into="new", target=f"{events}.back",
                                   temp_dir=temp_dir).rows == 300
            else:
                assert deep_verify(conn, faulty, spec, DAY) == [], "another version's bytes were taken for a verdict"
        except ArchiveError as exc:
            assert not isinstance(exc, ArchiveCorruptError) and exc.retryable, f"{type(exc).__name__}: {exc}"
            assert "damaged" not in str(exc), str(exc)
            _names_day(exc, spec.name)
        assert proxy.rewritten >= 1
    assert list(temp_dir.iterdir()) == [] and not _exists(conn, f"{events}.back")
    assert deep_verify(conn, store, spec, DAY) == []  # the archive was intact all along



# =====================================================================================================
# compare: the object's HEAD
# =====================================================================================================

def _etag_altered_once():
    """The first answer's ETag altered (one damaged HEAD); later answers as they are."""
    done = []

    def change(body: bytes, headers):
        if done:
            return body, headers
        done.append(True)
        return body, [(k, '"0123456789abcdef0123456789abcdef"' if k.lower() == "etag" else v) for k, v in headers]
    return change


@pytest.mark.parametrize("fault", ["404-once", "etag-once", "503-always"])
def test_cli_compare_is_not_misled_or_stopped_by_one_days_head(setup, s3, days, fault):
    """`compare` over two archived, unchanged days checks each object with one HEAD. verify_archive (the
    `verify` command, the checks, the removal) asks a HEAD that says otherwise a second time, since a HEAD
    has no checksum and a 404 may be a moment of the store's inconsistency; compare does not:
    - one 404 of an object that is there: day 1 "differs: the archive's object is not as recorded: object
      ... is missing", exit 1;
    - one HEAD whose ETag was altered on the way: "differs ... (object replaced?)", exit 1;
    - the HEAD of day 1 failing (503, every attempt): the whole command ends (exit 3, no day listed, no
      table or day named but in the URI), where a day that cannot be checked is to be listed as such and
      the other days still compared."""
    env, spec = setup
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    obj = rf"/{days[0]}\.jsonl\.zst$"
    with BodyProxy(s3.endpoint_url) as proxy:
        if fault == "etag-once":
            proxy.rewrites.append(("HEAD", obj, "", _etag_altered_once()))
        elif fault == "404-once":
            proxy.add(Fault(method="HEAD", path=obj, action="error", status=404, code="NotFound", times=1))
        else:
            proxy.add(Fault(method="HEAD", path=obj, action="error", status=503, code="ServiceUnavailable",
                            times=None))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "compare", "--from", days[0].isoformat(), "--to",
                   days[1].isoformat(), "--json")
        proxy.rewrites.clear()
    answer = _json_answer(done)
    results = {d["day"]: d for d in answer.get("days", [])}
    assert results.get(days[1].isoformat(), {}).get("result") == "equal", answer
    if fault == "503-always":
        assert done.returncode == 1, (done.returncode, answer)
        first = results.get(days[0].isoformat(), {})
        assert first.get("result") == "not-checked" and "retryable" in first.get("note", ""), answer
    else:
        assert done.returncode == 0 and results[days[0].isoformat()]["result"] == "equal", answer
