"""Hunt 11, qg: the object store misbehaving in the read and list paths (through the fault proxy in front of
moto) and in the dialects of other S3-compatible stores. Each test fails on the current code because of a bug."""

from __future__ import annotations

import re

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.store import MIN_PART_SIZE, DownloadError, S3Store
from archive_pipeline.core.verify import verify_archive
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import FaultProxy
from archive_pipeline_tests.test_lifecycle import DAYS, spec_for


class _PartialHandler(fault_proxy._Handler):
    """Answers a GET whose path matches the server's ``partial`` pattern with 206 Partial Content: only the first
    ``partial_bytes`` of the object, a Content-Range that says so, and a Content-Length of what is sent (what a
    caching gateway that mishandles ranges does to a GET without a Range). The store keeps no checksums of its
    own (moto answers an x-amz-checksum-crc32 header, which most S3-compatible stores do not): dropped."""

    def _forward(self, method, body):
        status, headers, payload = super()._forward(method, body)
        pattern = getattr(self.server, "partial", None)
        path = fault_proxy.urllib.parse.unquote(fault_proxy.urllib.parse.urlsplit(self.path).path)
        if method == "GET" and status == 200 and pattern and re.search(pattern, path):
            sent = payload[:self.server.partial_bytes]
            headers = [(k, v) for k, v in headers if k.lower() != "content-range"
                       and not k.lower().startswith("x-amz-checksum")]
            headers.append(("Content-Range", f"bytes 0-{len(sent) - 1}/{len(payload)}"))
            return 206, headers, sent
        return status, headers, payload


class _PartialProxy(FaultProxy):
    def __init__(self, target_url: str, partial: str, partial_bytes: int) -> None:
        super().__init__(target_url)
        self._partial, self._partial_bytes = partial, partial_bytes

    def start(self) -> FaultProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _PartialHandler)
        self._server.proxy = self
        self._server.partial, self._server.partial_bytes = self._partial, self._partial_bytes
        self._thread = fault_proxy.threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                                    daemon=True)
        self._thread.start()
        return self


def test_a_206_partial_answer_to_a_whole_manifest_get_is_no_verdict_on_the_archive(conn, schema, s3, bucket, store):
    """A store without MD5 ETags (SSE-KMS: the documented ``verify_etags: false``) sits behind a caching gateway
    that answers a GET without a Range with ``206 Partial Content``: the first 100 bytes of the manifest,
    ``Content-Range: bytes 0-99/<size>`` and a Content-Length of 100; the store keeps no x-amz-checksum of
    its own (MinIO, Ceph and most S3-compatible stores answer none). The archive is intact.

    What happens: ``get_verified_bytes`` never looks at the status or the Content-Range, so the 100 bytes pass
    for the whole manifest; they do not decode, the second read gives the same 100 bytes, and
    ``decoded_manifest`` calls the manifest damaged: ``verify`` reports "manifest ... unreadable" for an intact
    archive (a verdict: the archive run would supersede it, the removal refuses it as untrusted).

    What should happen: an answer that says itself that it is partial (206, or a Content-Range whose total is
    larger than what came) is not the object: a retryable DownloadError ("the store's answer was not the
    object"), no verdict. Fix idea: in get_verified_bytes (and download_to) refuse a 206 / a ContentRange whose
    total differs from the bytes read, as the empty-body and error-document answers are refused."""
    create_sample_events(conn, DAYS, rows_per_day=50, schema=schema)
    spec = spec_for(schema, "drop")
    plain = S3Store(store.client, bucket, prefix="archive", part_size=MIN_PART_SIZE, verify_etags=False)
    archive_partition(conn, spec, DAYS[0], plain)
    key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
    expected = {"rows": 50}
    assert verify_archive(plain, key, expected) == []
    with _PartialProxy(s3.endpoint_url, r"\.manifest\.json$", 100) as proxy:
        behind = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE,
                         verify_etags=False)
        try:
            problems = verify_archive(behind, key, expected)
        except DownloadError as exc:
            assert exc.retryable
            return
    pytest.fail(f"a 206 answer of 100 bytes was taken for the whole manifest; verdict: {problems}")
