"""Hunt 24 (bx): S3 error classification and secrets across every command (archive, verify, restore, compare, list,
prune; command line and Dagster): botocore's exceptions and S3's error codes injected through the fault proxy or a
wrong setting, checked for their classification (retryable or permanent), for a message that names table, day,
operation and a remedy that works, and for secrets in messages, logs, metadata and --json."""

from __future__ import annotations

import datetime as dt
import json

from dagster import instance_for_test
from dagster_aws.s3 import S3Resource

from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_dagster import events_config, job_name
from archive_pipeline_tests.test_hunt17_wf import _env, _events, cli
from archive_pipeline_tests.test_hunt8_nb import DialectProxy

DAY = dt.date(2024, 3, 10)


def _failures(result) -> list:
    return [e for e in result.all_events if e.is_step_failure]


def test_a_dagster_run_whose_tls_handshake_fails_is_called_transient_and_retried(conn, schema, pg, s3, bucket):
    """Scenario: the archive_store resource's S3 endpoint is written ``https://`` for a store that speaks plain
    HTTP (the same as a MinIO whose self-signed certificate no CA bundle trusts): ``S3Resource(endpoint_url=
    "https://127.0.0.1:<moto's port>")``; a partition of the table is materialized (retry: max_retries 2).

    Now: the first request (the existing manifest's read) raises botocore's SSLError; store._wrap classifies it
    as _S3_TLS ("TLS validation of the object store failed", not retryable) and then ORs in
    _is_transport_error(exc), which is true because botocore's SSLError subclasses its ConnectionError: the
    UploadError/DownloadError says "TLS validation of the object store failed (...); transient, retried", its
    ``retryable`` is True, the step's Failure has allow_retries=True and metadata retryable=True, and Dagster runs
    the step again through the whole backoff, each time failing the same way. (The command line's HeadBucket
    check was fixed to call this a setting to fix (test_hunt18_xg); a Dagster run makes no such check.)

    Should: not retryable (the scheme or the CA bundle must change), its words agreeing with its classification,
    the step failing once. Fix idea: in _wrap, let _is_transport_error not override a classification that says
    otherwise (exclude botocore.exceptions.SSLError there, or OR it in only where found.where == "unknown")."""
    create_sample_events(conn, [DAY], 5, schema=schema)
    endpoint = f"https://127.0.0.1:{s3.port}"
    resources = {"postgres": PostgresResource(dsn=pg.dsn),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1",
                                                                     max_attempts=1), bucket=bucket)}
    defs = build_definitions(events_config(schema, DAY), resources, check_source=False)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
    failures = _failures(result)
    assert not result.success and failures
    said = str(failures[-1].event_specific_data.error)
    assert "SSL" in said or "TLS" in said, said
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    metadata = failures[-1].event_specific_data.user_failure_data.metadata
    assert (len(retries), metadata["retryable"].value) == (0, False), (len(retries), said)
    assert "transient" not in said, said


# nginx's own answer when a client's request body stalls past client_body_timeout (the same from an ALB, HAProxy...)
_NGINX_408 = (b"<html>\r\n<head><title>408 Request Time-out</title></head>\r\n<body>\r\n<center><h1>408 Request "
              b"Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def test_a_proxys_408_request_timeout_to_an_upload_is_called_permanent_with_no_remedy(pg, s3, bucket, conn, schema,
                                                                                       tmp_path):
    """Scenario: the store sits behind a reverse proxy (nginx in front of MinIO, an ALB) which, once, times out
    waiting for a slow upload's body and answers ``408 Request Time-out`` with its HTML page; the user runs
    ``archive-pipeline archive --day D --json`` (the same in a Dagster run: its Failure's allow_retries).

    Now: the day fails with ``"retryable": false``: "writing s3://.../D.jsonl.zst (PutObject) failed: the object
    store rejected the request (ClientError: An error occurred (408) ...: Request Timeout); not retried: a retry
    cannot fix this; to fix: read the error code in the message". errors._s3_code knows S3's own timeout
    (code RequestTimeout, a 400) as transient, but botocore names an error page it cannot parse by its status, code
    "408", which is in no list, below 500 and not 429, so it falls to _S3_REJECTED: permanent, with a remedy that
    says nothing (the "code" is the status). A Dagster run is not retried, and a wrapper reading --json gives up on
    a day that the next try archives.

    Should: a 408 is a timeout (HTTP's "Request Timeout"), transient like S3's RequestTimeout: retryable, its cause
    saying the request timed out and the remedy what to look at if it persists (the proxy's body timeout, the
    network). Fix idea: in _s3_code treat ``status == 408`` (and code "408") with _S3_RETRY_CODES."""
    days, table = _events(conn, schema, n_days=1)
    env = _env(pg, s3, bucket, tmp_path, [table])

    def upload_timed_out(handler, method, body):
        if method == "PUT":
            return 408, [("Content-Type", "text/html")], _NGINX_408
        return None

    with DialectProxy(s3.endpoint_url, before=[upload_timed_out]) as proxy:
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "archive", "--day", days[0].isoformat(), "--json")
    [day] = json.loads(done.stdout)["days"]
    assert day["status"] == "failed" and "408" in day["message"], day
    assert day["retryable"] is True, day["message"]
    assert "read the error code in the message" not in day["message"], day["message"]


def test_the_command_lines_bucket_check_answered_a_proxys_407_says_the_proxy_wants_credentials(pg, s3, bucket, conn,
                                                                                             schema, tmp_path):
    """Scenario: a forward proxy in front of the store asks for credentials (``407 Proxy Authentication
    Required``, its own page) when the command line checks the bucket (HeadBucket) before any day.

    Now (before the fix): environment.store_from_env had a table of its own for HeadBucket's statuses; a 407 was in
    none of it: "bucket '...' answered 407 ...: check $ARCHIVE_S3_BUCKET and the S3 credentials", retryable (exit
    3), so a wrapper retried a setting that only the proxy's credentials fix.

    Should: the core's status table (errors._S3_STATUSES) says what a status the bucket check does not know
    itself means: not retryable, the proxy's credentials to give."""
    days, table = _events(conn, schema, n_days=1)
    env = _env(pg, s3, bucket, tmp_path, [table])

    def proxy_wants_credentials(handler, method, body):
        if method == "HEAD":
            return 407, [("Content-Type", "text/html"), ("Proxy-Authenticate", 'Basic realm="proxy"')], \
                b"<html><body><h1>407 Proxy Authentication Required</h1></body></html>"
        return None

    with DialectProxy(s3.endpoint_url, before=[proxy_wants_credentials]) as proxy:
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "archive", "--day", days[0].isoformat())
    said = done.stdout + done.stderr
    assert done.returncode == 2, (done.returncode, said)  # a setting to fix, not "unreachable for now" (3)
    assert "407" in said and "proxy" in said.lower(), said
    assert "check $ARCHIVE_S3_BUCKET and the S3 credentials" not in said, said
