"""Hunt 25 (cm): S3-compatible stores that are not AWS (ETag forms, LastModified forms, chunked GETs, HEAD 403 for a
missing key, listings that ignore encoding-type, conditions a store ignores, x-amz-meta-* headers dropped or
re-cased), each simulated by rewriting moto's answers in a proxy. Real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import verify_archive
from archive_pipeline_tests.fault_proxy import Fault
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_hunt8_nb import DialectProxy

DAY = dt.date(2024, 3, 10)


def canonical_meta_names(handler, method, status, headers, payload):
    """User metadata headers in Go's canonical form (``X-Amz-Meta-Writer``), as stores and gateways written in Go
    (net/http's CanonicalMIMEHeaderKey) send them; botocore keeps the case after the prefix (``Writer``)."""
    def canon(name: str) -> str:
        return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
    return status, [(canon(k) if k.lower().startswith("x-amz-meta-") else k, v) for k, v in headers], payload


def test_a_lost_answer_to_a_fresh_put_is_not_another_runs_object_where_metadata_names_are_recased(
        conn, schema, ev, s3, bucket, store, temp_dir):
    """Scenario: a user's store (a Go gateway in front of S3, SeaweedFS, ...) answers user metadata headers in
    canonical case, ``X-Amz-Meta-Writer`` for the ``x-amz-meta-writer`` the archiver sent (HTTP header names are
    case-insensitive). A day's first archive sends its data object in one fresh PutObject (If-None-Match: *); the
    store keeps it but the answer is lost (connection reset), and botocore sends the PUT again, which the store
    refuses 412 for the object the first try stored.

    Now: ``S3Upload._put_single`` asks ``held_after_refusal`` -> ``holds`` -> ``_written_by``, which looks up
    ``decode_metadata(head["Metadata"]).get("writer")``; botocore parsed the header as ``{"Writer": ...}`` (it strips
    only the prefix, keeping the rest's case), so the run's own object is "not ours": KeyTakenError / a refusal
    that blames another run writing the same day, and the object stays at the key (no manifest names it).

    Should: metadata keys compare case-insensitively (S3 itself lower-cases them), so the run finds its own object,
    publishes the manifest and the day verifies; a fix: look the writer (and table/day in leftovers) up in a
    lower-cased copy of the metadata."""
    key = table_day_key(ev, DAY, store.prefix)
    with DialectProxy(s3.endpoint_url, after=[canonical_meta_names]) as proxy:
        proxy.add(Fault(method="PUT", path=re.escape(key) + "$", action="reset_after", times=1))
        gateway = S3Store(proxy.client(max_attempts=3), bucket, prefix=store.prefix)
        result = archive_partition(conn, ev, DAY, gateway, temp_dir=temp_dir)
        puts = proxy.requests(method="PUT", path=re.escape(key) + "$")
        assert [r.status for r in puts][:2] == ["reset", 412], puts  # (premise: the lost answer, then the 412)
        assert result.rows == 20
        assert verify_archive(gateway, key, {}, deep=True, temp_dir=temp_dir) == []


def test_a_retired_generation_left_by_a_failed_delete_is_tidied_where_metadata_names_are_recased(
        conn, schema, ev, s3, bucket, store, temp_dir):
    """Scenario: the same store (user metadata answered as ``X-Amz-Meta-Table`` / ``X-Amz-Meta-Day``). A day is
    archived, gains a late row and is re-archived with overwrite: generation 2 is committed, and the delete of the
    retired generation 1 fails (a 500), which the README says the next run of the day deletes ("retired ones whose
    delete failed, each only once its HEAD shows it is ours: the table and day metadata every data object an
    archive run writes carries").

    Now: the next run's ``leftovers.tidy_day`` -> ``why_not_ours`` -> ``_not_ours`` reads
    ``decode_metadata(head["Metadata"])`` as ``{"Table": ..., "Day": ...}`` and looks up ``"table"``/``"day"``:
    (None, None), so our own retired generation is "another tool's object, or one put there by hand" and stays in
    the bucket for good (every later run logs that warning, and the storage is never given back).

    Should: metadata keys are case-insensitive (S3 lower-cases them), so the retired generation, which carries this
    table-day's metadata, is deleted by the next run; a fix: lower-case the keys in ``decode_metadata``."""
    from psycopg import sql

    key = table_day_key(ev, DAY, store.prefix)
    with DialectProxy(s3.endpoint_url, after=[canonical_meta_names]) as proxy:
        gateway = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        assert archive_partition(conn, ev, DAY, gateway, temp_dir=temp_dir).rows == 20
        conn.execute(sql.SQL("INSERT INTO {} VALUES (21, %s::timestamptz, 'late')").format(
            sql.Identifier(schema, "ev")), (f"{DAY} 12:00+00",))
        proxy.add(Fault(method="DELETE", path=re.escape(key) + "$", action="error", times=None))
        assert archive_partition(conn, ev, DAY, gateway, temp_dir=temp_dir, overwrite=True).rows == 21
        assert gateway.head(key) is not None  # (premise: the retired generation 1 stayed, its delete failed)
        proxy.clear()
        archive_partition(conn, ev, DAY, gateway, temp_dir=temp_dir, overwrite=True)
        assert gateway.head(key) is None, "the retired generation 1, ours, is still in the bucket"


def drop_meta(handler, method, status, headers, payload):
    """A store that does not keep user metadata: no ``x-amz-meta-*`` header in any answer."""
    return status, [(k, v) for k, v in headers if not k.lower().startswith("x-amz-meta-")], payload


def test_a_store_that_drops_user_metadata_is_named_not_another_run(conn, schema, ev, s3, bucket, store, temp_dir):
    """Scenario: a user's store keeps no user metadata (its HEAD answers no ``x-amz-meta-*`` header at all). A day's
    first archive sends its data object in one fresh PutObject (If-None-Match: *); the store keeps it, the answer is
    lost (a reset), botocore sends it again and the store answers 412 for the object the first try stored.

    Now: ``_put_single`` -> ``held_after_refusal`` -> ``_written_by`` finds no ``writer`` mark, and
    ``_refuse_taken`` raises KeyTakenError "was written by another run meanwhile ... archive each table from one
    database, and one server, only": the user is sent hunting for a second archiver that does not exist, while the
    object at the key carries none of the metadata (writer, table, day) every object an archive run writes carries,
    which shows it is the store that dropped it.

    Should: an object at a fresh key that carries no user metadata at all, on a store that was sent some, is not
    called another run's: the refusal names the store's behaviour (it does not keep x-amz-meta-* headers, so a
    retried write cannot be told for ours) instead of a concurrent run."""
    from archive_pipeline.core.errors import ArchiveError

    key = table_day_key(ev, DAY, store.prefix)
    with DialectProxy(s3.endpoint_url, after=[drop_meta]) as proxy:
        proxy.add(Fault(method="PUT", path=re.escape(key) + "$", action="reset_after", times=1))
        plain = S3Store(proxy.client(max_attempts=3), bucket, prefix=store.prefix)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, ev, DAY, plain, temp_dir=temp_dir)
        puts = proxy.requests(method="PUT", path=re.escape(key) + "$")
        assert [r.status for r in puts][:2] == ["reset", 412], puts  # (premise: the lost answer, then the 412)
    said = f"{caught.value} {caught.value.remedy}"
    assert "another run" not in said, said
    assert "metadata" in said, said
