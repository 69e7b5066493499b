"""Hunt 5 (kd): S3 bucket features and key/prefix shapes a real deployment has."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify, verify_archive
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt4_uu import _keys, _small_table

DAY = dt.date(2024, 3, 10)


def _to_glacier(s3_client, bucket, key):
    """What a bucket lifecycle rule (Transition to GLACIER after N days) does to an object: same bytes, same ETag,
    another storage class; a GET is then refused with 403 InvalidObjectState until the object is restored."""
    s3_client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key}, StorageClass="GLACIER",
                          MetadataDirective="COPY")


@pytest.mark.parametrize("doing", ["deep_verify", "restore", "rerun_with_the_manifest_moved_too"])
def test_an_archive_moved_to_glacier_is_not_called_an_access_refusal(doing, conn, schema, store, s3_client, bucket,
                                                                     temp_dir):
    """A user keeps archives cheap with a bucket lifecycle rule that moves objects to GLACIER after 30 days (the
    usual setup for an archive bucket). Later they run ``verify --deep`` (or the removal's proof), or ``restore``,
    on such a day. S3 refuses the GET with 403 ``InvalidObjectState`` ("not valid for the object's storage
    class"), and the archiver reports it (the same for a rule that also moved the manifest: every re-run of the
    day, and every light verify, then fails so) as "the object store refused access", not retryable, with the remedy
    "grant s3:PutObject, s3:GetObject, s3:DeleteObject, ... to these credentials": the user goes hunting for a
    missing permission the credentials already have. Expected: the error says the object is in an archive
    storage class (GLACIER) and must be restored (RestoreObject, then wait) before it can be read, naming table
    and day; not an access refusal. (``errors._s3_code`` maps every 403 to ``_S3_ACCESS``; InvalidObjectState
    has no entry of its own.)"""
    spec = _small_table(conn, schema)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _to_glacier(s3_client, bucket, result.key)
    assert verify_archive(store, result.key, {}) == []  # intact: HEAD still answers
    with pytest.raises(ArchiveError) as caught:
        if doing == "rerun_with_the_manifest_moved_too":
            _to_glacier(s3_client, bucket, result.manifest_key)
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        elif doing == "deep_verify":
            deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
        else:
            restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    exc = caught.value
    assert exc.table == spec.name and exc.day == DAY.isoformat()
    cause, remedy = (exc.cause or "").lower(), (exc.remedy or "").lower()
    assert "refused access" not in cause and "grant" not in remedy, (exc.cause, exc.remedy)
    assert "storage class" in cause or "glacier" in cause, exc.cause
    assert "restore" in remedy, exc.remedy


def test_a_listing_refused_for_want_of_s3_listbucket_names_that_permission(conn, schema, s3, bucket, s3_client,
                                                                           temp_dir):
    """A least-privilege deployment grants the archiver's credentials what its errors ask for: "grant s3:PutObject,
    s3:GetObject, s3:DeleteObject, s3:ListBucketMultipartUploads and s3:AbortMultipartUpload on the bucket" (the
    README lists no permissions, so that remedy is the user's only guide). Every run first lists the day's keys
    (ListObjectsV2), which needs s3:ListBucket, so every archive fails with AccessDenied on the listing, and the
    error's remedy again names the five permissions already granted, never s3:ListBucket (which is also what makes
    S3 answer 404 rather than 403 for a missing manifest, and what the command line's HeadBucket needs). Expected:
    the remedy of a refused ListObjectsV2 names s3:ListBucket (ideally the one permission the refused operation
    needs). (``errors._S3_ACCESS``'s remedy; ``store._wrap`` does not say which permission the operation needs.)"""
    import re

    spec = _small_table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", query="list-type", action="error", status=403, code="AccessDenied", times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    exc = caught.value
    assert exc.table == spec.name and exc.day == DAY.isoformat() and not exc.retryable
    assert "ListObjectsV2" in str(exc)
    assert re.search(r"s3:ListBucket(?![A-Za-z])", exc.remedy or ""), exc.remedy
    assert _keys(s3_client, bucket) == []




@pytest.mark.parametrize(("code", "status"), [("KMS.DisabledException", 400), ("KMS.NotFoundException", 400),
                                              ("KMS.AccessDeniedException", 403)])
def test_a_write_refused_by_the_buckets_kms_key_says_so(code, status, conn, schema, s3, bucket, s3_client, temp_dir):
    """A bucket with default encryption SSE-KMS (the usual compliance setup) whose KMS key was disabled, deleted,
    or whose key policy does not let the archiver's role use it. S3 refuses the archive's PutObject with
    ``KMS.DisabledException`` / ``KMS.NotFoundException`` (400) or ``KMS.AccessDeniedException``. The archiver knows
    these codes (``errors._S3_ACCESS_CODES``) but reports them as "the object store refused access", remedy "grant
    s3:PutObject, s3:GetObject, s3:DeleteObject, s3:ListBucketMultipartUploads and s3:AbortMultipartUpload on the
    bucket to these credentials": S3 permissions the role already has, and nothing about the key. Expected: the
    cause or remedy names the bucket's KMS key (enable it, or allow kms:GenerateDataKey / kms:Decrypt to the
    role), with table and day named and nothing left in the bucket. (``errors._s3_code`` maps the KMS codes to
    ``_S3_ACCESS``, whose remedy is about S3 permissions only.)"""
    spec = _small_table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.csv$", action="error", status=status, code=code, times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    exc = caught.value
    assert exc.table == spec.name and exc.day == DAY.isoformat() and not exc.retryable
    assert "kms" in f"{exc.cause} {exc.remedy}".lower(), (exc.cause, exc.remedy)
    assert _keys(s3_client, bucket) == []


def test_a_bucket_check_refused_for_want_of_s3_listbucket_names_that_permission(s3, bucket, monkeypatch):
    """The command line (and the code location's store) first asks for the bucket (HeadBucket). A least-privilege
    role that has every object permission but not s3:ListBucket (HeadBucket's permission; the archiver's own
    remedy for a refused request does not name it either) gets 403, and the load fails with "bucket ... refuses
    these credentials ...: check $ARCHIVE_S3_BUCKET and the S3 credentials": the user checks credentials that are
    right. Expected: the error says the bucket refused HeadBucket and names s3:ListBucket as the permission to
    grant. (``environment.store_from_env``: ``{403: "refuses these credentials"}``.)"""
    import re

    from archive_pipeline.core.environment import store_from_env

    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="HEAD", path=rf"^/{bucket}/?$", action="error", status=403, code="AccessDenied",
                        times=None))
        monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        with pytest.raises(Exception) as caught:
            store_from_env()
    assert re.search(r"s3:ListBucket(?![A-Za-z])", f"{caught.value} {getattr(caught.value, 'remedy', '')}"), \
        str(caught.value)


def test_the_command_line_can_read_an_sse_kms_bucket_the_code_location_writes(conn, schema, pg, s3, bucket, s3_client,
                                                                              temp_dir, tmp_path):
    """The README's case for ``verify_etags: false``: a bucket whose default encryption is SSE-KMS, where AWS answers
    every object with a 32-hex ETag that is not the MD5 of its bytes. The user sets the ``archive_store`` resource's
    ``verify_etags: false`` and the code location archives the day fine. Then they run the command line on the same
    bucket (``archive-pipeline verify --day``, as the README shows; ``restore``, ``compare`` alike): it builds its
    store from the environment (``environment.store_from_env``) with ``verify_etags`` always true and no variable to
    change it, so reading the day's manifest fails as "came back corrupted or as an error 3 times ... check the
    network path to the store": a false alarm, with a remedy that never mentions ETags or SSE-KMS, and no way to
    run the command at all. Expected: the command line can read such a bucket (a setting like the resource's, or
    telling non-MD5 ETags apart), or at least its error names verify_etags and how to turn it off for the command
    line."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    spec = _small_table(conn, schema)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": spec.name, "day_column": "at", "start_date": DAY.isoformat(),
                                                  "format": "csv", "compression": "none"}]}))
    from archive_pipeline.core.keys import manifest_key, table_day_key
    key = table_day_key(spec, DAY, "archive")
    with FaultProxy(s3.endpoint_url) as proxy:
        for n, path in enumerate((key, manifest_key(key))):  # what SSE-KMS does: a stable ETag that is no MD5
            kms_etag = hashlib.md5(f"kms-{n}".encode()).hexdigest()
            proxy.add(Fault(path=rf"{path}$", action="set_header", header=("ETag", f'"{kms_etag}"'), times=None))
        kms = S3Store(proxy.client(), bucket, prefix="archive", part_size=MIN_PART_SIZE, verify_etags=False)
        archive_partition(conn, spec, DAY, kms, temp_dir=temp_dir)  # the code location, verify_etags: false
        assert deep_verify(conn, kms, spec, DAY, temp_dir=temp_dir) == []
        root = Path(__file__).resolve().parents[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
        env.update(PYTHONPATH=str(root), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
                   ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=proxy.url,
                   ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "verify", "--day", DAY.isoformat()],
                              env=env, cwd=root, capture_output=True, text=True, timeout=60)
        out = done.stdout + done.stderr
        assert done.returncode == 0 or "verify_etags" in out.lower(), out
        for command in (["verify", "--day", DAY.isoformat()], ["verify", "--deep", "--day", DAY.isoformat()]):
            told = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", *command],
                                  env={**env, "ARCHIVE_S3_VERIFY_ETAGS": "false"}, cwd=root, capture_output=True,
                                  text=True, timeout=60)
            assert told.returncode == 0, told.stdout + told.stderr



@pytest.mark.parametrize("prefix", [pytest.param("p" * 1000, id="keys-over-1024-bytes"),
                                    pytest.param("team/../other", id="a-dot-dot-part")])
def test_the_archive_store_resources_own_prefix_is_checked_at_load_as_the_variables_is(prefix):
    """The README: "The store's knobs are fields of ArchiveStoreResource ...; to change them ... pass your own
    resources to build_definitions(config, resources)", and ArchiveStoreResource has a ``prefix`` field. The load
    refuses an ARCHIVE_S3_PREFIX under which a table's keys would pass S3's 1,024 bytes (a day's data object
    written and its manifest refused) or that holds a '..' part; with the user's own resources it checks the
    keys under an empty prefix instead (``check_keys_fit(config, ... if resources is None else "")``) and the
    resource's prefix not at all, so the code location loads and every run of every day fails on AWS
    (KeyTooLongError), or writes outside the prefix's folder. Expected: the load refuses the resource's prefix as
    it refuses the variable's, naming the table / the prefix. (``definitions.build_definitions``.)"""
    from dagster_aws.s3 import S3Resource

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.environment import ConfigError
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource

    config = parse_config({"tables": [{"name": "public.events", "day_column": "created_at",
                                       "start_date": "2024-01-01"}]}, "tables.yaml")
    resources = {"postgres": PostgresResource(dsn="postgresql://nobody@127.0.0.1:1/x"),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(), bucket="b", prefix=prefix)}
    with pytest.raises(ConfigError):
        build_definitions(config, resources, check_source=False)
