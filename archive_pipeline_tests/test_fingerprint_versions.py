"""Archives written with the previous fingerprint algorithm (row-hash-sum-v2) stay provable.

New archives record row-hash-sum-v3; everything that compares with a manifest computes the
algorithm the manifest records. A v2 archive is made here exactly as the previous version wrote
it: the same object, its manifest carrying the v2 fingerprint of the same rows (resealed). Then:
an unchanged day is skipped, a changed one refused, deep verification proves it (and names the
first difference once the source changes), status and compare agree, a restore checks it, a
removal re-checks it, and an overwrite writes v3.
"""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core import fingerprint
from archive_pipeline.core.archive import LateRowsError, archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.manifest import decode_manifest, encode_manifest
from archive_pipeline.core.plan import compare_days, day_statuses
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify, source_fingerprint
from archive_pipeline.local.local_stack import create_sample_events

DAY = dt.date(2024, 3, 10)


@pytest.fixture
def events(conn, schema) -> str:
    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], rows_per_day=300, schema=schema)
    return schema


def _spec(schema: str, fmt: str = "jsonl", **extra) -> TableSpec:
    return TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY, format=fmt,
                     partitioning={"mode": "declarative"}, **extra)


def _archive_as_v2(conn, spec: TableSpec, store, s3_client, bucket: str, algorithm: str = fingerprint.V2) -> str:
    """Archive the day, then give its manifest the fingerprint of an older algorithm (v2 unless said), as the
    version that wrote it did."""
    result = archive_partition(conn, spec, DAY, store)
    assert result.fingerprint.startswith(fingerprint.ALGORITHM + ":")
    v2 = str(source_fingerprint(conn, spec, DAY, algorithm))
    assert v2 != result.fingerprint
    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=result.manifest_key)["Body"].read())
    manifest["fingerprint"] = v2
    manifest.pop("manifest_sha256")
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))
    return v2


@pytest.mark.parametrize("algorithm", [fingerprint.V2, fingerprint.V5])
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_v2_archive_is_skipped_proven_compared_and_restored(conn, schema, events, store, s3_client, bucket,
                                                             temp_dir, fmt, algorithm):
    """(And a v5 one: v6 hashes integers, booleans and uuids by value, v5 by their text.)"""
    spec = _spec(events, fmt)
    v2 = _archive_as_v2(conn, spec, store, s3_client, bucket, algorithm)
    again = archive_partition(conn, spec, DAY, store)
    assert again.skipped and again.fingerprint == v2
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []
    [status] = day_statuses(conn, spec, store, [DAY], check_source=True)
    assert status.state == "archived", status
    [compared] = compare_days(conn, spec, store, [DAY])
    assert compared.source_fingerprint == compared.archive_fingerprint == v2, compared
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.restored_{fmt}_{algorithm[-2:]}",
                           temp_dir=str(temp_dir))
    assert restored.fingerprint_checked and v2 in restored.check, restored.check


def test_a_changed_v2_day_is_refused_named_and_overwritten_as_v3(conn, schema, events, store, s3_client, bucket,
                                                                temp_dir):
    spec = _spec(events)
    v2 = _archive_as_v2(conn, spec, store, s3_client, bucket)
    conn.execute(sql.SQL("UPDATE {} SET user_id = -user_id WHERE id = 7").format(sql.Identifier(schema, "events")))
    with pytest.raises(LateRowsError, match="changed since it was archived"):
        archive_partition(conn, spec, DAY, store)
    problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    assert problems[0].startswith(f"the source's rows for {DAY} are not the archive's"), problems
    assert problems[1].startswith("first difference: the ") and "lacks: (7," in problems[1], problems  # row 7
    [status] = day_statuses(conn, spec, store, [DAY], check_source=True)
    assert status.state == "changed", status
    replaced = archive_partition(conn, spec, DAY, store, overwrite=True)
    assert replaced.fingerprint.startswith(fingerprint.ALGORITHM + ":") and replaced.fingerprint != v2
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


def test_a_v2_day_is_removed_after_its_own_proof(conn, schema, events, store, s3_client, bucket):
    spec = _spec(events, retention={"keep_days": 30, "action": "detach"})
    _archive_as_v2(conn, spec, store, s3_client, bucket)
    done = remove_day(conn, spec, DAY, store, removed_by="test")
    assert done.rows == 300 and not done.dry_run
