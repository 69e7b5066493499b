"""Hunt 26 (dx): the bucket's permissions and features as real deployments have them (bucket policies, SSE,
versioning, object lock, expiring credentials, regions).

What held up (read or probed, no test here): path-style addressing is what botocore 1.44 picks for every custom
endpoint (MinIO, R2), so a docker-compose host name needs no DNS per bucket; versioned and object-lock buckets, a
role without s3:DeleteObject, ExpiredToken mid-upload, 301/307 answers and KMS refusals are covered by earlier hunts
(test_hunt20_ze, test_hunt23_bb, test_hunt5_kd, test_hunt10_pn, test_hunt16_ve)."""

from __future__ import annotations

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt4_uu import _keys, _small_table
from archive_pipeline_tests.test_hunt5_kd import DAY

# What AWS answers (403 AccessDenied) to a PutObject that a bucket policy's Deny statement refuses, e.g. the classic
# "DenyIncorrectEncryptionHeader" / "DenyUnEncryptedObjectUploads" statements that refuse a PUT without
# x-amz-server-side-encryption (or with another value than the policy names).
_EXPLICIT_DENY = ('User: arn:aws:sts::111122223333:assumed-role/archiver/i-0abc is not authorized to perform: '
                  's3:PutObject on resource: "arn:aws:s3:::{bucket}/archive/..." with an explicit deny in a '
                  'resource-based policy')


def test_a_put_refused_by_an_explicit_deny_in_the_bucket_policy_is_not_sent_to_grant_s3_putobject(
        conn, schema, s3, bucket, s3_client, temp_dir, monkeypatch):
    """Scenario: the archive bucket carries the bucket policy AWS's own documentation recommends for encrypted
    buckets: a Deny of s3:PutObject where ``s3:x-amz-server-side-encryption`` is not ``aws:kms`` (or is null). The
    archiver's role has s3:PutObject (and every permission the README lists). The archiver sends no
    server-side-encryption header (it has no setting for one), so AWS refuses every PutObject with 403
    AccessDenied, "... is not authorized to perform: s3:PutObject on resource: ... with an explicit deny in a
    resource-based policy".

    Now: ``store._wrap`` -> ``errors.for_operation`` maps every AccessDenied to ``_S3_ACCESS`` and replaces its
    remedy with ``permission_remedy('PutObject')``: "grant s3:PutObject on the bucket to these credentials". The
    role already has it, and no grant can lift an explicit deny (IAM evaluates Deny first): the operator adds the
    grant, runs again, and fails the same way, with nothing in the error pointing at the bucket policy or its
    encryption condition. The store's own words ("explicit deny in a resource-based policy") are only in the quoted
    botocore text; the cause and remedy contradict them.

    Should: an AccessDenied whose message says "explicit deny" is reported as a policy that denies the request
    (bucket policy, SCP or permissions boundary), with a remedy to change that policy or send what its conditions
    ask for (e.g. the server-side-encryption header), not to grant the permission; the day named, nothing stored.
    Fix idea: in ``errors._classify_boto`` (or ``for_operation``), recognise "explicit deny" in an AccessDenied
    message and give it its own classification (and, for the encryption case, a store setting for
    ``ServerSideEncryption`` / ``SSEKMSKeyId`` that ``S3Store.begin``/``put_bytes`` send)."""
    monkeypatch.setattr(fault_proxy, "error_xml",
                        lambda code, message="": (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                                                  f"<Message>{_EXPLICIT_DENY.format(bucket=bucket)}</Message>"
                                                  "<RequestId>DX</RequestId></Error>").encode())
    spec = _small_table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", action="error", status=403, code="AccessDenied", times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        assert proxy.requests(method="PUT"), "the premise: the archive's PutObject was refused"
    exc = caught.value
    assert exc.table == spec.name and exc.day == DAY.isoformat() and not exc.retryable
    told = f"{exc.cause} | {exc.remedy}".lower()
    assert "explicit" in told or "policy" in told, (
        f"an explicit deny by the bucket policy was reported as a missing grant: cause {exc.cause!r}, remedy "
        f"{exc.remedy!r}")
    assert not (exc.remedy or "").lower().startswith("grant s3:putobject"), exc.remedy
    assert _keys(s3_client, bucket) == []


def test_the_command_lines_bucket_check_with_expired_temporary_credentials_says_they_expired(s3, bucket, monkeypatch):
    """Scenario: the command line runs from a cron job with temporary credentials (``AWS_SESSION_TOKEN`` from an
    assumed role, exported by a wrapper script; or ``aws sso login`` hours ago). The token has expired. The
    command's first request, the bucket check (``store_from_env``: HeadBucket), is answered as AWS answers any
    request signed with an expired token: 400 ExpiredToken, which for a HEAD (no body) botocore reads as code
    "400", "Bad Request".

    Now: ``environment.store_from_env`` looks behind a 403 for its cause (``_refused_for_another_cause`` asks a
    one-key ListObjectsV2, whose answer carries the code: RequestTimeTooSkewed, InvalidAccessKeyId, "an expired
    token"), but not behind a 400, which is the status S3 gives ExpiredToken (and InvalidToken). The 400 falls
    through to ``classify`` -> ``_S3_BARE_STATUS``: "refused the request with a bare HTTP status ...: check that
    ARCHIVE_S3_ENDPOINT_URL is the store's S3 API ..., ARCHIVE_S3_BUCKET its bucket and ARCHIVE_S3_REGION its
    region", not retryable. Every setting it names is right; the one cause, expired credentials, is not named, and
    the same listing that the 403 path asks would have said it (ExpiredToken: ``errors._S3_TOKEN_EXPIRED``).

    Should: the bucket check says the store's temporary credentials expired (and to refresh them), as the core's
    classification of ExpiredToken does for every other request. Fix idea: in ``store_from_env``, ask
    ``_refused_for_another_cause`` (the one-key listing that carries the code) for a 400 without a region header of
    another region too, not only for a 403."""
    from archive_pipeline.core.environment import store_from_env

    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method=None, path=rf"^/{bucket}/?$", action="error", status=400, code="ExpiredToken",
                        times=None))
        monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        with pytest.raises(Exception) as caught:
            store_from_env()
        assert proxy.requests(method="HEAD"), "the premise: the bucket check was answered 400 ExpiredToken"
    told = f"{caught.value} {getattr(caught.value, 'remedy', '') or ''}".lower()
    assert "expired" in told or "token" in told, f"expired credentials at the bucket check were reported as: {told}"
