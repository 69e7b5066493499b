"""Hunting the restore and compare paths as a hostile user and environment would: manifests at the wrong
key, a restoring process killed mid-way, targets that drifted since the day was archived."""

from __future__ import annotations

import datetime as dt
import pytest
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import RestoreError, restore_day

DAY = dt.date(2024, 3, 10)
NEXT = dt.date(2024, 3, 11)


def _events(conn, schema: str, fmt: str = "csv") -> TableSpec:
    table = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, n numeric, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 1.5, 'abcd'), "
                         "(2, '2024-03-10 02:00+00', 1.234, 'xy'), (3, '2024-03-10 03:00+00', NULL, NULL), "
                         "(4, '2024-03-11 01:00+00', 2, 'next day')").format(table))
    return TableSpec(name=f"{schema}.events", day_column="at", start_date=DAY, format=fmt, compression="zstd",
                     partitioning={"mode": "column"})


def _count(conn, schema: str, name: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]


def test_a_manifest_copied_to_another_days_key_is_refused_by_restore_and_compare(conn, schema, store, temp_dir,
                                                                                 s3_client, bucket):
    """A manifest is sealed (its own SHA-256) but says nothing of where it lies: one copied from
    2024-03-10's key to 2024-03-11's (a hand "repair" of a missing day) is intact. Was: restoring
    2024-03-11 restored 2024-03-10's rows (into the original table too, under 2024-03-10's lock),
    "proven" by that manifest's fingerprint, and compare compared 2024-03-11's source with them. Now both
    say the manifest is another day's and restore nothing."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    day_key = keys.manifest_key(keys.table_day_key(spec, spec.period(DAY), store.prefix))
    next_key = keys.manifest_key(keys.table_day_key(spec, spec.period(NEXT), store.prefix))
    s3_client.copy_object(Bucket=bucket, Key=next_key, CopySource={"Bucket": bucket, "Key": day_key})
    for into, target in (("new", f"{schema}.restored"), ("original", None)):
        with pytest.raises(RestoreError) as caught:
            restore_day(conn, store, spec, NEXT, into=into, target=target, temp_dir=temp_dir)
        assert "it is the manifest of table" in str(caught.value) and "for 2024-03-10, not of" in str(caught.value)
        assert caught.value.day == "2024-03-11"
    assert _count(conn, schema, "events") == 4
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None
    (found,) = compare_days(conn, spec, store, [NEXT])
    assert found.result == "unreadable" and "for 2024-03-10, not of" in found.note
