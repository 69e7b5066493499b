"""Hunt 21 (aj): a code review of core/archive.py and core/locks.py (one day's archive run: the lock, the
existing archive's reading and the skip / late rows / overwrite / removed decision, the publish sequence)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError

DAY = dt.date(2024, 3, 10)


def _day_of_rows(conn, schema: str, rows: int = 3) -> TableSpec:
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s FROM generate_series(1, %s) g").format(
        sql.Identifier(schema)), (DAY, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="csv",
                     compression="none")


def _manifest(s3_client, bucket: str, key: str) -> dict:
    return json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_damaged_object_of_a_day_emptied_since_is_refused_as_if_its_manifest_were_unreadable(
        conn, schema, store, s3_client, bucket, temp_dir):
    """Scenario: a day of 3 rows is archived; its data object is later damaged in the bucket (a truncated copy put
    over it: another size and ETag), and the day's rows are deleted from the source by hand (not by retention).
    The day is run again.

    Now: read_existing reads the manifest fine and sets ``problem`` to the object's size/ETag mismatch; the run
    then reaches _Archiving._generation, whose refusal of "stored data without a trustworthy manifest and an empty
    source" words every such case as "... has archived data (1 object(s)) but no readable manifest ... restore
    the manifest from a backup": the manifest is readable and intact; it is the object that is damaged. The
    operator is sent to restore the wrong file, and the error has no cause or remedy of its own.

    Should: name the real state: the manifest (readable) records N rows, its object is damaged (the problem
    read_existing found), the source is empty now; restore the object (its versions, a replica). Fix idea: in
    _generation, when ``existing.manifest`` is readable and ``existing.problem`` is set, word the refusal with
    ``existing.problem`` and the object's key (as _refuse_removed does for a removed day)."""
    spec = _day_of_rows(conn, schema)
    first = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert first.rows == 3 and first.key
    s3_client.put_object(Bucket=bucket, Key=first.key, Body=b"1,2024-03-10\n")  # damaged: another size and ETag
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(sql.Identifier(schema)))
    with pytest.raises(ArchiveError) as refused:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    message = str(refused.value)
    assert "no readable manifest" not in message and first.key in message, message


def test_a_day_whose_object_is_lost_and_whose_source_was_emptied_is_archived_green_as_an_empty_day(
        conn, schema, store, s3_client, bucket, temp_dir):
    """Scenario: a day of 3 rows is archived; its data object is then lost from the bucket (deleted by a lifecycle
    rule or by hand; the manifest stays), and the day's rows are deleted from the source, whose owner trusted the
    archive. The day is run again, without overwrite (the schedule, a backfill, the sensor).

    Now: read_existing gives the readable manifest with problem "object ... is missing"; _decided_by_fingerprint
    fingerprints first (0 rows); ``here`` is None (a problem), _refuse_removed only looks at removed days, and
    _generation's "stored data but no trustworthy manifest, and the source is empty" refusal counts only listed
    generations: the lost object is not listed, so nothing is found and the run publishes an *empty* day (a
    manifest with rows 0, generation 1 again) and returns green. The 3 archived rows, recorded by the manifest,
    are now described as a day that never had rows; the same run against an intact archive would have been
    refused as late rows (3 archived, 0 now) without overwrite.

    Should: an archive whose manifest records rows but whose object is lost, with the source now empty, is refused
    as the lost-manifest case is ("it may have been removed from the source after it was archived; nothing was
    written"), permanent, naming the missing object; never archived green as an empty day. Fix idea: in
    _generation (or before it), refuse when ``existing.manifest`` records rows, ``existing.problem`` is set and
    ``fp.rows == 0``, whatever the listing shows."""
    spec = _day_of_rows(conn, schema)
    first = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert first.rows == 3 and first.key
    s3_client.delete_object(Bucket=bucket, Key=first.key)
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(sql.Identifier(schema)))
    try:
        again = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError:
        return  # refused: as it should be
    manifest = _manifest(s3_client, bucket, first.manifest_key)
    pytest.fail(f"archived green as an empty day (rows {again.rows}, empty {again.empty}); the manifest now says "
                f"rows {manifest.get('rows')}, empty {manifest.get('empty')}, kept {manifest.get('kept')}")
