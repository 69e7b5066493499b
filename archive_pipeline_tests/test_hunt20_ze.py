"""Hunt 20 (ze): S3-compatible stores whose semantics differ from the happy path, across archive, skip, restore,
compare, verify, list, removal and prune: versioned buckets, cleanup the store forbids, conditional writes refused or
ignored, ETags that are not MD5s, odd listings (paginated, omitting or showing keys a GET denies), keys that need
encoding, credentials expiring mid-run, clock skew and redirects.

What held up (probed or read, no test here): a VERSIONED bucket (moto, put_bucket_versioning) is transparent to the
archiver: a manifest whose current version is a delete marker reads 404 by GET and HEAD and is not listed, so the day
is archived again as new, keeping the stored generation (``kept``) or retiring one of the same bytes, and a day whose
source is empty with objects but no manifest is refused naming "restore the manifest from a backup or versioning";
If-None-Match over a delete marker succeeds as on AWS; every PUT carries Content-MD5, as an Object Lock bucket with a
default retention requires. A bucket policy that denies DeleteObject: a multipart day is still archived (green), its
upload marker left with a warning naming it, and every later run of the day warns again; a failed run's withdrawals
are noted on its error. ExpiredToken on a later part, on the abort and on the marker's delete: the run fails,
retryable, the notes name the upload left, the marker stays, and the next run aborts it. Listings out of order,
repeated, short of their KeyCount, or truncated without a token are refused (covered by earlier hunts), and so are
clock skew and 301/307 answers (test_hunt7_mk, test_hunt10_pn, test_hunt16_ve)."""

from __future__ import annotations

import datetime as dt
import re
import threading
import urllib.parse

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_cli import cli, cli_json, days, edit_config, setup  # noqa: F401 - fixtures
from archive_pipeline_tests.test_integrity import D, _killed_child, _open_uploads, big, stored_keys  # noqa: F401
from archive_pipeline_tests.test_readpath_faults_hunt import _json_answer


# --- a MinIO-like store: ListMultipartUploads lists the uploads of the object named exactly by its prefix ---------

class _ExactKeyUploads(fault_proxy._Handler):
    """The fault proxy's handler, answering ListMultipartUploads as MinIO does (minio/minio#20989, "working as
    intended", and #11686): only the uploads of the object whose name is exactly the request's ``prefix``; a prefix
    that is no object's name lists none."""

    def _forward(self, method: str, body: bytes):
        status, headers, payload = super()._forward(method, body)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True)
        if method == "GET" and "uploads" in query and status == 200:
            prefix = (query.get("prefix") or [""])[0]

            def exact(match: re.Match) -> bytes:
                key = re.search(rb"<Key>(.*?)</Key>", match.group(0), re.S)
                return match.group(0) if key is not None and key.group(1).decode() == prefix else b""

            payload = re.sub(rb"<Upload>.*?</Upload>", exact, payload, flags=re.S)
        return status, headers, payload


class MinioLikeProxy(FaultProxy):
    def start(self) -> MinioLikeProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _ExactKeyUploads)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="minio-like-proxy", daemon=True)
        self._thread.start()
        return self


def test_a_killed_runs_upload_on_a_store_that_lists_uploads_by_exact_key_is_left_for_ever_and_its_marker_deleted(
        pg, s3, conn, schema, big, store, bucket, s3_client, tmp_path):
    """Scenario: a day of ~6 MB (two 5 MiB parts) is archived. An overwrite of it (``archive --overwrite``, or a
    table with ``overwrite: true``) is killed (SIGKILL) right after its first part was stored: a multipart upload of
    the next generation (``<day>.g2.jsonl``) is left open, announced by its marker ``<day>.g2.jsonl.uploading``.
    The store is MinIO (named by the README as a supported store), whose ListMultipartUploads answers only the
    uploads of the object named exactly by its ``prefix`` (by design: minio/minio#20989). The next run of the day,
    without overwrite, skips it (the rows are unchanged).

    Now: the skip's tidying (core/leftovers.py ``tidy_day`` -> ``_abort_stale_uploads``) lists the uploads under the
    day's prefix (``S3Store.abort_stale_uploads_under(keys.day_prefix(...))``, ``…/2024-03-10``), which is no object's
    name: MinIO lists nothing, ``settled`` is 0 == 0, and the marker is deleted. The killed run's upload stays open
    for ever (its parts billed, a lifecycle rule being only "recommended"), and with its marker gone no later run
    ever looks for it again (the README: "What a killed run leaves in the store is removed by the next run of the
    day, whatever that run does (skip, ...)"). The day's removal tidies through the same function. The upload
    listings made by the upload itself ask by the exact key and work on MinIO.

    Should: no open upload is left, or at least the marker stays while its upload is not found. Fix idea: a marker
    names its upload's key exactly (``<key>.uploading``): list and abort the uploads of each marker's key with that
    key as the prefix (``S3Store.settle_stale_uploads(marker[:-len('.uploading')])``), which every store answers,
    instead of one listing under the day's prefix."""
    spec = {"name": big.name, "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    first = archive_partition(conn, big, D, store)
    assert first.parts >= 2
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, True, temp, ("after-call", "UploadPart", 1))
    left = _open_uploads(s3_client, bucket)
    assert left and all(".g2." in key for key in left), left  # the premise: the killed overwrite's upload
    assert any(key.endswith(".g2.jsonl.uploading") for key in stored_keys(s3_client, bucket))
    with MinioLikeProxy(s3.endpoint_url) as proxy:
        minio = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        assert minio.client.list_multipart_uploads(Bucket=bucket, Prefix=left[0])["Uploads"]  # by its exact name
        assert archive_partition(conn, big, D, minio).skipped
        assert proxy.requests(method="GET", query="uploads"), "the skip looked for the killed run's uploads"
    still_open = _open_uploads(s3_client, bucket)
    markers = [key for key in stored_keys(s3_client, bucket) if key.endswith(".uploading")]
    assert still_open == [], (
        f"the skip left the killed run's upload open {still_open} and {'kept' if markers else 'deleted'} its marker "
        f"{markers}: no later run looks for it")


# --- a manifest the range's listing shows, whose GET and HEADs answer 404 ----------------------------------------

@pytest.mark.parametrize("command", ["verify", "list", "compare"])
def test_a_manifest_the_ranges_listing_shows_but_its_get_answers_404_is_called_missing_or_left_out(
        setup, s3, days, command):
    """Scenario: a range of six days, the last three archived (the command line's ``archive``). ``verify`` /
    ``list`` / ``compare`` of the range find the manifests with one bucket listing (more than three days:
    ``listing.listed_absent``), which shows the middle day's manifest and object. A caching gateway (or a lagging
    replica) in front of the store then answers that manifest's GET 404 NoSuchKey, and the two HEADs that follow
    (``S3Store._confirm_missing``) 404 too; every other request is answered as stored.

    Now: core/plan.py ``lookup_manifests`` calls ``verify.load_manifest``, which takes the 404 for "no manifest"
    (``get_verified_bytes`` -> None) without weighing the listing it made a moment before, which shows the manifest.
    ``verify`` then silently leaves the day out ("ok": true, exit 0, two days verified of three archived); ``list``
    reports it "missing"; ``compare`` reports "not-archived: the source has this day; no archive" (exit 1). The
    archive path refuses exactly this contradiction ("listed but reading it found nothing: the store answered
    inconsistently", retryable: archive.read_existing), and the README says a store contradicting itself is no
    verdict ("missing" fails checks for good and names a remedy that rewrites the archive).

    Should: a manifest the command's own listing shows but a GET calls absent is a contradiction: the day is
    "not checked (retryable)" (``verify`` exits non-zero or names it), never missing and never left out. Fix idea: in
    ``lookup_manifests``, when ``load_manifest`` returns None for a day whose manifest key is in ``in_order``, record
    ``ManifestLookup(key, None, "not checked (retryable): ... the store answered inconsistently")``, as
    ``read_existing`` does; or call ``S3Store.confirm_missing`` with the listing."""
    env, _ = setup
    edit_config(env, {"start_date": (days[0] - dt.timedelta(days=3)).isoformat()})
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[2].isoformat())
    victim = days[1].isoformat()
    manifest = rf"/{victim}\.jsonl\.zst\.manifest\.json$"
    with FaultProxy(s3.endpoint_url) as proxy:
        got = proxy.add(Fault(method="GET", path=manifest, action="error", status=404, code="NoSuchKey", times=1))
        headed = proxy.add(Fault(method="HEAD", path=manifest, action="error", status=404, code="NoSuchKey", times=2))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, command, "--json")
        assert got.hits == 1 and headed.hits == 2, "the faults were meant for this command's read of the manifest"
        listed = [r for r in proxy.requests(method="GET", query="list-type") if r.status == 200]
        assert listed, "the range was listed (the premise: the listing shows the manifest)"
    answer = _json_answer(done)
    by_day = {d["day"]: d for d in answer.get("days", [])}
    if command == "verify":
        assert victim in by_day, (f"verify left the archived day {victim} out and said ok={answer.get('ok')} "
                                  f"(exit {done.returncode}): {sorted(by_day)}")
        said = " ".join(by_day[victim].get("problems", []))
        assert by_day[victim].get("ok") or ("missing" not in said and "not checked" in said), said
    elif command == "list":
        assert by_day[victim]["state"] != "missing", by_day[victim]
    else:
        assert by_day[victim]["result"] != "not-archived", by_day[victim]
