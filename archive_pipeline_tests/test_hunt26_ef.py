"""Hunt 26 (ef): a review of this session's later fixes, next to what each changed.

fix-dx's server-side-encryption settings (ARCHIVE_S3_SSE / ARCHIVE_S3_SSE_KMS_KEY_ID, the archive_store resource's
server_side_encryption / sse_kms_key_id): the store's refusals of what those settings send are still explained by
the words written before the settings existed. fix-dw's "a termination once the day's new archive is published is
recorded as that archive": the same termination one step earlier, while the run tidies after its commit, is not.

What held up (read, no test here): every object write carries the settings (data PUT, CreateMultipartUpload, upload
markers and manifests through put_bytes, the removal's pending/done marks and take-backs through put_bytes), the CLI's
store and the default resources read the same variables, reads send none (S3 refuses them on GET/HEAD)."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile

import pytest
from dagster import AssetRecordsFilter, DagsterRunStatus, instance_for_test

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import download
from archive_pipeline_tests.test_cancelhunt import (dagster_env, proxy,  # noqa: F401 - fixtures
                                                    terminated_when_held, wide_day)
from archive_pipeline_tests.test_hunt4_uu import _keys, _small_table
from archive_pipeline_tests.test_hunt5_kd import DAY


def _store_answers(monkeypatch, message: str) -> None:
    """The fault proxy's error documents carry ``message`` (the store's own words) instead of its placeholder."""
    monkeypatch.setattr(fault_proxy, "error_xml",
                        lambda code, _message="": (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}'
                                                   f"</Code><Message>{message}</Message><RequestId>EF</RequestId>"
                                                   "</Error>").encode())


def _cli_store(monkeypatch, bucket: str, endpoint: str, **settings: str):
    """The command line's store (environment.store_from_env) with ``settings`` as its environment has them."""
    from archive_pipeline.core.environment import store_from_env

    monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("ARCHIVE_S3_PREFIX", "archive")
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, os.environ.get(name) or value)
    return store_from_env()


# MinIO's answer (its ErrKMSNotConfigured: 501, code NotImplemented) to a write carrying x-amz-server-side-encryption
# on a deployment without a KMS configured, as most staging and docker-compose MinIOs are
_MINIO_NO_KMS = "Server side encryption specified but KMS is not configured"


def test_a_store_that_does_not_implement_the_configured_sse_is_not_told_to_change_checksum_settings(
        conn, schema, s3, bucket, s3_client, temp_dir, monkeypatch, caplog):
    """Scenario: production's environment sets ARCHIVE_S3_SSE=aws:kms (the README's answer to a bucket policy that
    denies unencrypted writes); the same settings are used against the staging MinIO, which has no KMS. MinIO
    refuses every write carrying x-amz-server-side-encryption with 501 NotImplemented "Server side encryption
    specified but KMS is not configured". The user archives a day with the command line.

    Now: the day's PutObject (sent with If-None-Match: *, a fresh key) answers 501 NotImplemented, which
    ``store._is_unimplemented`` takes for the store not implementing the *condition*: ``S3Store.unconditional_after``
    logs "the store does not implement If-None-Match on PutObject ...: writing without it from now on; two runs of
    one day on different servers can then race" (false: the condition was never the problem, and the store's
    conditional writes stay off for the rest of the command), and sends it again without the condition, which
    fails the same way. The error is classified by ``errors._classify_boto`` as ``_S3_UNSUPPORTED``, whose remedy
    reads "set AWS_REQUEST_CHECKSUM_CALCULATION=when_required and AWS_RESPONSE_CHECKSUM_VALIDATION=when_required,
    and check that it supports multipart uploads": settings that have nothing to do with it, and nothing names the
    ARCHIVE_S3_SSE the user set, which is the one thing to change. (Before fix-dx no such header was ever sent, so a
    NotImplemented on a PutObject was always about the conditions or the checksum headers.)

    Should: a write the store refuses as not implemented, while the store sends server-side-encryption headers and
    the store's answer speaks of encryption, says the store does not support that encryption and names the setting
    (ARCHIVE_S3_SSE / the resource's server_side_encryption: unset it, or configure the store's KMS), not checksum
    settings; and no false "does not implement If-None-Match" warning turns the conditions off.
    Fix idea: in ``errors._classify_boto`` recognise an answer about server-side encryption (its message: "server
    side encryption", "x-amz-server-side-encryption", "KMS is not configured") as its own classification whose
    remedy names errors.SSE_SETTINGS; in ``store._is_unimplemented`` do not read such an answer as the
    conditions' (or, in ``with_conditions``, turn them back on when the write without them fails the same way)."""
    _store_answers(monkeypatch, _MINIO_NO_KMS)
    spec = _small_table(conn, schema)
    caplog.set_level(logging.WARNING, logger="archive_pipeline")
    with FaultProxy(s3.endpoint_url) as proxy:
        store = _cli_store(monkeypatch, bucket, proxy.url, ARCHIVE_S3_SSE="aws:kms")
        proxy.add(Fault(method="PUT", action="error", status=501, code="NotImplemented", times=None))
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        assert proxy.requests(method="PUT"), "the premise: the day's write was refused"
    exc = caught.value
    assert exc.table == spec.name and exc.day == DAY.isoformat() and not exc.retryable
    told = f"{exc.cause} | {exc.remedy}"
    assert "ARCHIVE_S3_SSE" in told or "server_side_encryption" in told, (
        f"a store refusing the configured server-side encryption does not name the setting: cause {exc.cause!r}, "
        f"remedy {exc.remedy!r}")
    assert "AWS_REQUEST_CHECKSUM_CALCULATION" not in (exc.remedy or ""), exc.remedy
    false_alarms = [r.getMessage() for r in caplog.records if "does not implement If-None-Match" in r.getMessage()]
    assert not false_alarms, false_alarms
    assert _keys(s3_client, bucket) == []


_KEY = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_a_refusal_of_the_configured_kms_key_names_that_key_and_its_setting_not_the_buckets_key(
        conn, schema, s3, bucket, s3_client, temp_dir, monkeypatch):
    """Scenario: the user sets ARCHIVE_S3_SSE=aws:kms and ARCHIVE_S3_SSE_KMS_KEY_ID to a key of their own (the README:
    "for aws:kms the key's id or ARN (default: the bucket's key ...)"), but copies the ARN of a key from another
    account or region (or one since scheduled for deletion). AWS refuses the PutObject with 400
    KMS.NotFoundException "Invalid keyId '<the ARN>'". The bucket's own default key is fine.

    Now: ``errors._classify_boto`` maps KMS.NotFoundException to ``_S3_KMS``, written before a key could be chosen:
    cause "the bucket's KMS key refused the request (disabled, deleted, or not usable by these credentials)",
    remedy "enable the bucket's KMS key, or allow kms:GenerateDataKey and kms:Decrypt on it to these credentials".
    The operator inspects the bucket's default key, finds it enabled and granted, and nothing in the cause or
    remedy points at ARCHIVE_S3_SSE_KMS_KEY_ID, the key that was actually refused.

    Should: where the store sends a key of its own (SSEKMSKeyId), a KMS refusal names that key (or its setting,
    ARCHIVE_S3_SSE_KMS_KEY_ID / the resource's sse_kms_key_id) as the one refused, and the remedy says to fix that
    setting or the key's policy; "the bucket's KMS key" only where no key is configured.
    Fix idea: in ``store._wrap`` (or ``S3Store``'s write paths) replace ``_S3_KMS``'s "the bucket's KMS key" with
    the configured key and name its setting when ``self.encryption`` carries SSEKMSKeyId."""
    _store_answers(monkeypatch, f"Invalid keyId '{_KEY}'")
    spec = _small_table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        store = _cli_store(monkeypatch, bucket, proxy.url, ARCHIVE_S3_SSE="aws:kms", ARCHIVE_S3_SSE_KMS_KEY_ID=_KEY)
        proxy.add(Fault(method="PUT", action="error", status=400, code="KMS.NotFoundException", times=None))
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        assert proxy.requests(method="PUT"), "the premise: the day's write was refused"
    exc = caught.value
    assert exc.table == spec.name and exc.day == DAY.isoformat() and not exc.retryable
    told = f"{exc.cause} | {exc.remedy}"
    assert "KMS" in told, f"the premise: a KMS refusal ({told!r})"
    assert "ARCHIVE_S3_SSE_KMS_KEY_ID" in told or "sse_kms_key_id" in told or _KEY in told, (
        f"the configured KMS key's refusal is blamed on the bucket's key: cause {exc.cause!r}, remedy "
        f"{exc.remedy!r}")
    assert _keys(s3_client, bucket) == []


def test_an_overwrite_terminated_while_it_tidies_after_its_commit_is_recorded_as_the_archive_in_the_bucket(
        conn, schema, pg, bucket, proxy, s3_client, dagster_env, monkeypatch):
    """Scenario: ``<schema>.ev`` (overwrite: true, as the README offers for a table whose days keep changing) has
    2024-03-10 archived by a run (generation 1, recorded, archive_intact green). A later run of the day archives it
    again: generation 2's object and manifest are committed, and the run goes on to delete generation 1's object
    (``_Archiving._commit``'s loop over ``superseded``: ``store.delete_quietly``). The person clicks Terminate while
    that DELETE is on its way (held by the proxy here; a slow store or a day with several superseded objects makes
    the window real).

    Now: the interrupt leaves ``archive_partition`` noted "tidying" and passes straight through
    ``assets.archive_one_day`` (its outer ``except Exception`` does not see it; fix-dw's handler covers only the
    verification *after* ``archive_partition`` returned) to ``_archive_days``, which fails the step "cancelled while
    tidying: the day is archived (its new manifest is in the bucket)". Nothing is recorded: Dagster's latest record
    of the day still names generation 1's object (the DELETE in flight removes it; otherwise the next run's tidy
    does), with its green archive_intact, and generation 2, the archive the bucket holds, is recorded nowhere. This
    is the state fix-dw removed for a termination one step later (while the new archive is checked).

    Should: a termination once the day's new manifest is committed records the day as the archive in the bucket
    (not verified), as fix-dw does for one that lands while it is checked, then ends the run as cancelled.
    Fix idea: in ``archive_one_day``, catch the interrupt around ``archive_partition`` too, and where its note says
    the day was committed ("tidying"; the core's ``_committed``), carry the committed ``ArchiveResult`` on the
    exception (or have the core return it and re-raise after) so the day is recorded "not verified" before
    ``cut_off`` is raised."""
    wide_day(conn, schema, rows=20, width=64)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "jsonl",
             "compression": "none"}
    config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "tables": [table]})
    spec = config.tables[0]
    first = render_key(spec, DAY, "archive")  # generation 1's object
    with instance_for_test() as instance:
        monkeypatch.setattr(tempfile, "tempdir", str(dagster_env))  # (the archive's temp files, as test_cancelhunt)
        job = build_definitions(config).resolve_job_def(f"Archive_{schema}_ev")
        assert job.execute_in_process(partition_key=DAY.isoformat(), instance=instance).success
        again = build_definitions(parse_config({"retry": {"max_retries": 2, "delay_seconds": 0},
                                                "tables": [{**table, "overwrite": True}]}))
        status, failures = terminated_when_held(instance, again.resolve_job_def(f"Archive_{schema}_ev"), proxy,
                                                method="DELETE", path=re.escape(first) + "$")
        [record] = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset_key(spec), asset_partitions=[DAY.isoformat()]), limit=1).records
    assert status == DagsterRunStatus.CANCELED, failures
    assert proxy.requests(method="DELETE", path=re.escape(first) + "$"), "the premise: cut off deleting generation 1"
    manifest = json.loads(download(s3_client, bucket, manifest_key(first)))
    assert manifest.get("generation") == 2, manifest.get("generation")  # committed: the fact
    in_bucket = manifest["object"]["key"]
    recorded = record.asset_materialization.metadata["object_key"].value
    assert recorded == in_bucket, (
        f"terminated after its commit, the run left the day recorded as {recorded} (generation 1, being deleted), "
        f"while the bucket's archive of the day is {in_bucket}, recorded nowhere; its failure:\n{failures}")


# --- the fixes' class (fix-ef)


class _Refusing:
    """A client whose every PutObject the store answers with ``error`` (an S3 error document's code and message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message, self.sent = status, code, message, []

    def put_object(self, **params):
        from botocore.exceptions import ClientError

        self.sent.append(params)
        raise ClientError({"Error": {"Code": self.code, "Message": self.message},
                           "ResponseMetadata": {"HTTPStatusCode": self.status}}, "PutObject")


def test_a_bare_501_to_an_encrypted_write_keeps_the_conditions_and_names_the_encryption_setting():
    """A store answering a write with SSE headers a bare 501 (no words about encryption): the conditions go back on
    once the write without them fails the same way (they were not what it does not implement), and the remedy names
    the encryption settings beside the checksum ones."""
    from archive_pipeline.core.store import S3Store

    client = _Refusing(501, "NotImplemented", "A header you provided implies functionality that is not implemented")
    store = S3Store(client, "b", server_side_encryption="AES256")
    with pytest.raises(ArchiveError) as caught:
        store.put_bytes("archive/k", b"x", "text/plain", fresh=True)
    assert [bool(p.get("IfNoneMatch")) for p in client.sent] == [True, False]
    assert store.conditional_writes, "a 501 that the write without its conditions met too turned them off"
    assert "ARCHIVE_S3_SSE" in caught.value.remedy, caught.value.remedy


def test_a_kms_refusal_without_a_configured_key_still_names_the_buckets_key():
    """ARCHIVE_S3_SSE=aws:kms without a key of its own: the bucket's key is the one refused, as before."""
    from archive_pipeline.core.store import S3Store

    store = S3Store(_Refusing(400, "KMS.DisabledException", "The key is disabled"), "b",
                    server_side_encryption="aws:kms")
    with pytest.raises(ArchiveError) as caught:
        store.put_bytes("archive/k", b"x", "text/plain")
    assert "the bucket's KMS key" in caught.value.cause, caught.value.cause


def test_an_invalid_token_on_a_listings_first_page_is_the_credentials():
    """InvalidToken on a later page is a refused page token (the same credentials were taken for the first page),
    retried; on the first page it is the credentials, as S3 means it."""
    from botocore.exceptions import ClientError

    from archive_pipeline.core.errors import classify
    from archive_pipeline.core.store import _pages

    refusal = ClientError({"Error": {"Code": "InvalidToken", "Message": "The provided token is malformed"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "ListObjectsV2")

    def pages(first_ok: bool):
        if first_ok:
            yield {"Contents": [], "IsTruncated": True, "NextContinuationToken": "t"}
        raise refusal

    with pytest.raises(ClientError) as first:
        list(_pages(pages(False), "listing s3://b/p", "NextContinuationToken"))
    assert "rejected the credentials" in classify(first.value).cause
    with pytest.raises(ArchiveError) as later:
        list(_pages(pages(True), "listing s3://b/p", "NextContinuationToken"))
    assert later.value.retryable and "token of its own listing" in str(later.value), str(later.value)


def test_a_classified_step_leaves_a_database_error_to_the_step_that_calls_it(pg, conn, schema):
    """discovery.still_detached (classified "comparing") called by a removal (which names its errors "removing", with
    its own words for its timeouts): the removal's step names the error; called on its own, its own step does."""
    import psycopg

    from archive_pipeline.core.discovery import still_detached
    from archive_pipeline.core.source import names_database_errors, wrapped
    from archive_pipeline_tests.test_hunt26_du import _naming_log, _terminate

    spec = _naming_log(conn, schema, retries=0).tables[0]
    manifest = {"removed": {"action": "detach"}}

    @names_database_errors
    def removing(session):
        try:
            return still_detached(session, spec, DAY, manifest)
        except psycopg.Error as exc:
            raise wrapped(exc, session, spec, DAY.isoformat(), doing="removing") from None

    for step, call in (("comparing", lambda s: still_detached(s, spec, DAY, manifest)), ("removing", removing)):
        with pg.connect() as doomed:
            _terminate(conn, doomed.info.backend_pid)
            with pytest.raises(ArchiveError) as caught:
                call(doomed)
        said = str(caught.value)
        assert said.startswith(f"{step} {spec.name} for {DAY.isoformat()} failed") and caught.value.retryable, said
