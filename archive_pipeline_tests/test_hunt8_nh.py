"""Hunt 8 (nh): adversarial review of the newest changes (expression-keyed day filters, store, verify)."""

from __future__ import annotations

import datetime as dt

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec

DAY = dt.date(2024, 3, 10)

# A POSIX time zone PostgreSQL accepts wherever it takes a zone name: standard time UTC+0, and "summer time"
# 100 hours ahead from the second Sunday of March to the first Sunday of November (local 02:00): its clock
# goes back 100 hours at the end of it (2024-10-29 22:00 UTC)
ZONE = "AAA+0BBB-100,M3.2.0,M11.1.0"


def test_a_key_whose_zone_goes_back_more_than_26_hours_keeps_the_day_s_rows(conn, schema, store, temp_dir):
    """A user partitions ev by RANGE (timezone('<a POSIX zone>', at)), an immutable key PostgreSQL accepts
    (timezone is whitelisted), with a DEFAULT partition, and archives 2024-10-30 (100 rows). The day's filter
    now also bounds the key between its values at the day's bounds widened by 26 hours, assuming the key never
    goes back by more than 26 hours as the column goes forward; this zone's clock goes back 100 hours on
    2024-10-29, so key(start - 26 h) lies after every key of the day and the filter selects none of its rows:
    the archive goes green with 0 rows while the table holds 100 of the day. The day's rows should all be
    archived (bound the key only where its functions are known to go back no more than the slack, or not at all
    for a zone that is not a real one, or check the key's monotonicity otherwise)."""
    s = f'"{schema}"'
    conn.execute(f"CREATE TABLE {s}.ev (id int, at timestamptz, v text) PARTITION BY RANGE (timezone('{ZONE}', at))")
    conn.execute(f"CREATE TABLE {s}.ev_default PARTITION OF {s}.ev DEFAULT")
    conn.execute(f"INSERT INTO {s}.ev SELECT g, '2024-10-30 00:00+00'::timestamptz + g * interval '10 minutes', 'x' "
                 "FROM generate_series(0, 99) g")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01", timezone="UTC",
                     partitioning={"mode": "declarative"}, format="csv")
    result = archive_partition(conn, spec, dt.date(2024, 10, 30), store, temp_dir=temp_dir)
    assert result.rows == 100


def test_a_removal_of_an_archive_copied_onto_itself_to_change_its_storage_class_is_not_refused(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day big enough to be uploaded in parts (ETag ``<md5 of md5s>-2``) is archived; an operator then moves the
    object to another storage class the usual way, a copy onto itself (the console's "Edit storage class", S3
    Batch Operations): same bytes, and a single-part copy's ETag is the object's MD5, the manifest's
    ``object.md5``. compare and verify accept that (``manifest.stored_object_problems``: "copied"), and the
    removal's proof passes; but the new check made once the pending mark is written
    (``lifecycle._require_proven_object``) compares the stored ETag with the recorded multipart ETag only, so
    retention refuses the day with "its proven archive ... is replaced (an archive run of the day on another
    server ...?)", retryable, and every retry fails the same way: the day is never removed, and the user is
    sent looking for another server. Should: an ETag equal to the recorded MD5 with the recorded size is the
    proven object, and the day's rows are removed."""
    from archive_pipeline.core.lifecycle import remove_day

    s = schema
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date, v text)")
    conn.execute(f"INSERT INTO {s}.ev SELECT g, '{DAY}', md5(g::text) || md5((g + 1)::text) "
                 "FROM generate_series(1, 70000) g")
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY, compression="none",
                     retention={"keep_days": 30, "action": "delete"})
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.parts >= 2, result.parts
    s3_client.copy_object(Bucket=bucket, Key=result.key, CopySource={"Bucket": bucket, "Key": result.key},
                          StorageClass="STANDARD_IA")
    assert s3_client.head_object(Bucket=bucket, Key=result.key)["ETag"].strip('"') == result.md5
    removal = remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert removal.rows == 70000
    assert conn.execute(f"SELECT count(*) FROM {s}.ev").fetchone()[0] == 0
