"""Hunt 10 (pq): a review of the hunt10 pk/pm/pn fixes: regressions and holes at their edges."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.plan import compare_days, day_statuses
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_hunt8_nb import DialectProxy, _xml_error

DAY = dt.date(2024, 3, 10)


def malformed_credential(handler, method, body):
    """S3's answer to a request whose access key holds a '/' (a secret key pasted into the access key's place):
    the credential scope cannot be parsed. Nothing about the region; no x-amz-bucket-region."""
    return _xml_error(400, "AuthorizationHeaderMalformed", "The authorization header is malformed; the Credential is "
                      "mal-formed; expecting &quot;&lt;YOUR-AKID&gt;/YYYYMMDD/REGION/SERVICE/aws4_request&quot;.")


def test_a_malformed_credential_is_not_told_as_a_bucket_in_another_region(conn, schema, ev, s3, bucket, temp_dir):
    """A user sets ARCHIVE_S3_ACCESS_KEY_ID to a value holding a '/' (the secret key pasted in its place); S3
    answers every request 400 AuthorizationHeaderMalformed "the Credential is mal-formed; expecting
    <YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request" (the region is right, and the answer names none). Before
    the pn fix the day failed as "the object store rejected the credentials: check ARCHIVE_S3_ACCESS_KEY_ID /
    ARCHIVE_S3_SECRET_ACCESS_KEY (and the region)". Now it fails as "the bucket is in another region ... set
    ARCHIVE_S3_REGION to the bucket's region (the store's answer names it ...)": the answer names no region, the
    region is right, and the credentials are never mentioned. Should: only an AuthorizationHeaderMalformed that
    says the region is wrong (or names the expected region) is the region's; any other is the credentials'.
    (`errors._s3_code`: every AuthorizationHeaderMalformed is _S3_REGION, ahead of _S3_KEY_CODES.)"""
    with DialectProxy(s3.endpoint_url, before=[malformed_credential]) as proxy:
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, ev, DAY, store, temp_dir=temp_dir)
    error = caught.value
    said = f"{error.cause} {error.remedy}"
    assert "ACCESS_KEY" in (error.remedy or ""), said
    assert "another region" not in (error.cause or ""), said


def refuse_checksum_mode(handler, method, body):
    """A store (B2-like) that refuses the x-amz-checksum-mode header botocore (>= 1.36, response checksum
    validation when_supported, its default) adds to every GetObject/HeadObject."""
    if handler.headers.get("x-amz-checksum-mode") is not None:
        return _xml_error(400, "InvalidArgument", "Unsupported header 'x-amz-checksum-mode' received for this API "
                                                  "call.")
    return None


def test_a_refused_checksum_mode_header_on_a_read_is_not_told_as_a_store_without_get_object(conn, schema, ev, s3,
                                                                                             bucket, temp_dir):
    """A user archives to a store that refuses botocore's x-amz-checksum-mode header (added to every GetObject
    and HeadObject by the default AWS_RESPONSE_CHECKSUM_VALIDATION=when_supported): 400 InvalidArgument
    "Unsupported header 'x-amz-checksum-mode' received for this API call." A re-run of an archived day
    reads its manifest (GetObject) and fails. Before the pn fix: "the object store does not implement a request or header the
    archiver sent: ... set AWS_REQUEST_CHECKSUM_CALCULATION=when_required and
    AWS_RESPONSE_CHECKSUM_VALIDATION=when_required" (the fix). Now: "the object store does not implement
    GetObject: the archiver needs GetObject (S3's API): use a store or gateway that implements it": the store
    implements GetObject; the user is sent to replace a store one setting fixes. Should: a refused checksum
    header keeps the checksum settings' remedy whatever the operation (GetObject and HeadObject carry
    x-amz-checksum-mode). (`errors.for_operation`: _CHECKSUMMED lists only the uploads' operations.)"""
    with DialectProxy(s3.endpoint_url) as plain:  # (the day archived once: its re-run reads the manifest)
        archive_partition(conn, ev, DAY, S3Store(plain.client(max_attempts=1), bucket, prefix="archive"),
                          temp_dir=temp_dir)
    with DialectProxy(s3.endpoint_url, before=[refuse_checksum_mode]) as proxy:
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, ev, DAY, store, temp_dir=temp_dir)
    error = caught.value
    said = f"{error} {error.cause} {error.remedy}"
    assert "x-amz-checksum-mode" in said  # (the premise: the store refused the header)
    assert "AWS_RESPONSE_CHECKSUM_VALIDATION" in (error.remedy or ""), said


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (502, "BadGateway"), (504, "GatewayTimeout")])
def test_a_failing_bucket_check_is_not_blamed_on_the_bucket_name_and_credentials(s3, bucket, monkeypatch, status,
                                                                                 code):
    """As test_hunt10_pn's throttled bucket check, whose "should" was every 5xx/429: the store (or a load balancer
    in front of it) answers the command line's bucket check (HeadBucket) 500 InternalError / 502 / 504 past
    botocore's retries. The load fails, retryable, with "bucket '...' answered 500 at ...: check
    $ARCHIVE_S3_BUCKET and the S3 credentials", while every other request so answered says "the object store is
    throttling or temporarily failing (5xx, SlowDown) ... retried automatically". Should: a 5xx is the store's
    momentary failure, retried, not the bucket name's or the credentials'. (`environment.store_from_env`: only
    429 and 503 are told apart.)"""
    from archive_pipeline.core.environment import store_from_env

    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="HEAD", path=rf"^/{bucket}/?$", action="error", status=status, code=code, times=None))
        monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        with pytest.raises(Exception) as caught:
            store_from_env()
    error = caught.value
    said = f"{error} {getattr(error, 'remedy', '') or ''}"
    assert getattr(error, "retryable", None) is True, repr(error)
    assert "credentials" not in said and "ARCHIVE_S3_BUCKET" not in said, said


@pytest.mark.parametrize(("tail", "zone"), [("_%Y%m%d%z", "Europe/Berlin"), ("_%Y%m%d%Z", "UTC")])
def test_a_naming_pattern_with_the_zone_past_63_bytes_is_refused(tail, zone):
    """A user names day tables with the zone's offset or name (``<prefix>_%Y%m%d%z``: ``ev_20240310+0100``, which
    strptime reads back, so the pattern loads). The pk fix measures the pattern's names on every day of 2024, but
    on naive datetimes, where %z and %Z are empty, while every table name is rendered from the period's start in
    the table's zone (``TableSpec.child_table``), where they are 5 (``+0100``) or 3 (``UTC``) bytes. A pattern
    whose names are 63 bytes as checked loads, and every day's table is named 68 (``%z``) or 66 (``%Z``) bytes,
    which PostgreSQL cuts to 63: naming mode never finds a day table, every day looks absent. Should: the length is
    measured as the names are rendered (aware, in the table's zone), so the pattern is refused at load.
    (`config.Partitioning._pattern`: naive moments.)"""
    from archive_pipeline.core.config import ConfigError, parse_config

    naive = len(dt.datetime(2024, 3, 10, 23).strftime(tail))
    pattern = "e" * (63 - naive) + tail
    entry = {"name": "public.ev", "start_date": "2024-01-01", "timezone": zone,
             "partitioning": {"mode": "naming", "pattern": pattern}}
    try:
        spec = parse_config({"tables": [entry]}, "tables.yaml").tables[0]
    except ConfigError as exc:
        assert "63" in str(exc)
        return
    name = spec.child_table("2024-03-10")
    pytest.fail(f"pattern {pattern!r} loaded, and it names the day table {name!r} of {len(name.encode())} bytes")


def test_an_empty_archived_day_s_zone_change_is_named_by_compare_and_list_as_the_archive_run_refuses_it(
        conn, schema, store):
    """As test_hunt10_pm's zone change, for a day archived as empty (no rows in the UTC day, a manifest and no
    object). The user then sets the table's ``timezone: Europe/Berlin``; Berlin's day has no rows either. The next
    ``archive`` run of the day refuses it ("its archive holds the daily period 2024-03-10 in UTC, and the table is
    now configured as daily in Europe/Berlin: another period ..."), and so do the proof and the removal; yet
    ``compare`` says "equal: archived as empty; the source still has no rows" (exit 0) and ``list --check-source``
    "archived as empty; the source still has no rows", nothing about the zone: the pm fix names a layout change
    of an equal day only where the source has rows. Should: compare and list name the zone change for this day
    too (README: a zone change "is named as that by compare, list --check-source ..."). (`plan._absent` and the
    empty day's note in `plan._day_statuses` come before any layout_change.)"""
    from archive_pipeline_tests.test_hunt10_pm import _table

    table = _table(conn, schema, rows=0)
    archive_partition(conn, TableSpec(**table), DAY, store)
    berlin = TableSpec(**{**table, "timezone": "Europe/Berlin"})
    with pytest.raises(ArchiveError, match="another period"):  # (the premise: the next run refuses the day)
        archive_partition(conn, berlin, DAY, store)
    [compared] = compare_days(conn, berlin, store, [DAY])
    [listed] = day_statuses(conn, berlin, store, [DAY], check_source=True)
    assert "Europe/Berlin" in compared.note and "Europe/Berlin" in listed.note, (compared.note, listed.note)
