"""Hunt 8 (nj): review of f26d341. The removal's recorded partition (``removed.partition``) and the restore into the original
table that re-creates it: what is in the bucket cannot be trusted (a sealed manifest is not signed)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.manifest import decode_manifest, encode_manifest
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)
NEXT = dt.date(2024, 3, 11)


def _spec(schema: str, **overrides) -> TableSpec:
    settings = dict(name=f"{schema}.ev", day_column="at", start_date=dt.date(2024, 3, 1),
                    partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    settings.update(overrides)
    return TableSpec(**settings)


def _table(conn, schema: str, days=(10, 11, 12), default: bool = False) -> None:
    conn.execute(f"SET search_path TO {schema}")
    conn.execute("CREATE TABLE ev (id int, at timestamptz, v text) PARTITION BY RANGE (at)")
    for d in days:
        conn.execute(f"CREATE TABLE ev_03{d} PARTITION OF ev FOR VALUES FROM ('2024-03-{d} 00:00+00') "
                     f"TO ('2024-03-{d + 1} 00:00+00')")
    if default:
        conn.execute("CREATE TABLE ev_default PARTITION OF ev DEFAULT")
    for d in days:
        conn.execute(f"INSERT INTO ev SELECT g + {d} * 100, '2024-03-{d} 00:00+00'::timestamptz + g * interval '1 hour',"
                     " 'x' FROM generate_series(0, 5) g")
    conn.execute("RESET search_path")


def _mkey(store, spec, day) -> str:
    return keys.manifest_key(keys.table_day_key(spec, spec.period(day), store.prefix))


def _edit(s3_client, bucket, key, change) -> dict:
    raw = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    manifest = {k: v for k, v in decode_manifest(raw).items() if k != "manifest_sha256"}
    change(manifest)
    s3_client.put_object(Bucket=bucket, Key=key, Body=encode_manifest(manifest))
    return manifest


def _layout(conn, schema: str) -> list[tuple]:
    return conn.execute(
        "SELECT c.relnamespace::regnamespace::text, c.relname, pg_get_expr(c.relpartbound, c.oid), "
        "i.inhparent::regclass::text FROM pg_class c "
        "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.relkind IN ('r', 'p') AND c.relispartition "
        "AND i.inhparent = %s::regclass ORDER BY 2", (f"{schema}.ev",)).fetchall()


def _dropped(conn, schema, store, temp_dir, days, default=False):
    _table(conn, schema, days=days, default=default)
    spec = _spec(schema)
    for d in days:
        day = dt.date(2024, 3, d)
        archive_partition(conn, spec, day, store, temp_dir=temp_dir)
        assert remove_day(conn, spec, day, store, temp_dir=str(temp_dir)).relation == f"{schema}.ev_03{d}"
    return spec


@pytest.mark.parametrize("bound", ["FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2025-01-01 00:00:00+00')",
                                   "DEFAULT"])
def test_restore_into_original_creates_no_partition_wider_than_the_day_from_a_resealed_removal_mark(
        conn, schema, store, s3_client, bucket, temp_dir, bound):
    """README: what is in the bucket cannot be trusted (a manifest is sealed, not signed). ``ev`` is partitioned
    by RANGE (at) a day a child; retention 'drop' proved 2024-03-10 and dropped ev_0310, its mark recording the
    partition (``removed.partition``, bound FROM ('2024-03-10') TO ('2024-03-11')). Someone with write access to
    the bucket edits the mark's bound to the whole year 2024 (or to DEFAULT) and reseals the manifest. The user runs ``restore
    --into original``. What happens: ev_0310 is created FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') and the
    restore reports success (with DEFAULT: ev_0310 becomes the table's DEFAULT partition): every row of 2024 inserted from now on lands in the "day's" partition, and the next
    removal of the day is refused (its partition holds other days). A retention removal only ever drops a
    partition that holds exactly the period (``lifecycle._target``: ``is_period``), so a recorded removed
    partition whose bound is not the day's is no partition the removal dropped. Should: refused before anything
    is created (or the day's own bound used), never a partition that lets rows of other days in.
    (Cause: ``restore._recorded_partition`` takes ``removed.partition`` as it is; nothing compares its bound with
    the manifest's period.)"""
    spec = _dropped(conn, schema, store, temp_dir, days=(10,))
    _edit(s3_client, bucket, _mkey(store, spec, DAY), lambda m: m["removed"]["partition"].update(bound=bound))
    try:
        restore_day(conn, store, spec, DAY, into="original")
    except ArchiveError:
        pass  # a refusal is fine
    assert all(bound == "FOR VALUES FROM ('2024-03-10 00:00:00+00') TO ('2024-03-11 00:00:00+00')"
               for _, _, bound, _ in _layout(conn, schema)), _layout(conn, schema)


def test_restore_into_original_does_not_create_another_days_partition_named_by_a_resealed_removal_mark(
        conn, schema, store, s3_client, bucket, temp_dir):
    """``ev`` partitioned by RANGE (at) a day a child, with a DEFAULT partition; retention 'drop' dropped ev_0310
    and ev_0311. 2024-03-10's manifest is edited (resealed) so that its removal mark's ``partition`` is the one
    of 2024-03-11's mark (ev_0311, FROM ('2024-03-11') TO ('2024-03-12')): a copy-paste between manifests, or a
    hostile edit. ``restore --into original`` of 2024-03-10: what happens: ev_0311 (the other day's partition) is
    created, empty, and 2024-03-10's rows go into the DEFAULT partition, where they keep PostgreSQL from ever
    creating ev_0310 again; the restore reports success. Should: a recorded partition whose bound does not cover
    exactly the manifest's day is refused (typed error naming table, day and the partition), nothing created.
    (Cause: ``restore._recorded_partition`` / ``_require_original`` check only ``removed.partition.parent``.)"""
    spec = _dropped(conn, schema, store, temp_dir, days=(10, 11), default=True)
    other = decode_manifest(s3_client.get_object(Bucket=bucket, Key=_mkey(store, spec, NEXT))["Body"].read())
    _edit(s3_client, bucket, _mkey(store, spec, DAY),
          lambda m: m["removed"].update(partition=other["removed"]["partition"]))
    try:
        restore_day(conn, store, spec, DAY, into="original")
    except ArchiveError:
        pass  # a refusal is fine
    assert [name for _, name, _, _ in _layout(conn, schema)] in (["ev_default"], ["ev_0310", "ev_default"]), \
        _layout(conn, schema)


def test_restore_refuses_a_removal_mark_partition_without_parent_with_a_clear_cause(
        conn, schema, store, s3_client, bucket, temp_dir):
    """2024-03-10 dropped by retention; its manifest's removal mark's ``partition`` lacks ``parent`` (a hand
    edit, resealed: the manifest passes every check of its shape). ``restore --into original``: what happens:
    "restoring ... failed: an unexpected error (KeyError: 'parent'); ... to fix: read the message". Should: a
    typed refusal that says the manifest's removal mark is malformed (its recorded partition has no parent),
    as other malformed manifest fields are said. (Cause: ``restore._recorded_partition`` -> ``_partition``
    indexes ``partition["parent"]``; ``_require_original`` skips a missing parent; ``manifest._consistency_problem``
    checks only that ``removed`` is an object.)"""
    spec = _dropped(conn, schema, store, temp_dir, days=(10,))
    _edit(s3_client, bucket, _mkey(store, spec, DAY), lambda m: m["removed"]["partition"].pop("parent"))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="original")
    assert "KeyError" not in str(caught.value) and "unexpected" not in str(caught.value), str(caught.value)
    assert "removed" in str(caught.value) or "parent" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("zone", ["utc", "europe/berlin"])
def test_a_key_shifted_by_a_lower_case_zone_name_still_bounds_the_days_scan(conn, schema, zone):
    """PostgreSQL reads zone names case-insensitively: ``PARTITION BY RANGE (((at AT TIME ZONE 'utc')::date))``
    is the same key as with 'UTC'. Since f26d341, ``source._key_expression`` accepts a zone literal only if it is
    spelled exactly as an IANA name (``_zone_names``: a case-sensitive set), so this key is "unknown": the day's
    filter no longer bounds the key, and one day's archive, probe, compare or removal plans, scans and locks every
    partition of the table (41 here, 5 with 'UTC'), the lock-table exhaustion 5cfcef0 fixed. Should: bounded as
    with 'UTC' / 'Europe/Berlin' (compare zone names as PostgreSQL does, case-insensitively)."""
    from archive_pipeline.core.discovery import source_table
    from archive_pipeline.core.source import day_filter

    s = f'"{schema}"'
    conn.execute(f"CREATE TABLE {s}.ev (id int, at timestamptz, v text) "
                 f"PARTITION BY RANGE (((at AT TIME ZONE '{zone}')::date))")
    for i in range(-20, 21):
        lo, hi = DAY + dt.timedelta(days=i), DAY + dt.timedelta(days=i + 1)
        conn.execute(f"CREATE TABLE {s}.ev_{i + 20} PARTITION OF {s}.ev FOR VALUES FROM ('{lo}') TO ('{hi}')")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01", timezone="UTC",
                     partitioning={"mode": "declarative"}, format="csv")
    period = spec.period(DAY)
    table = source_table(conn, spec, period)
    where = day_filter(table, period).as_string(conn)
    planned = " ".join(r[0] for r in conn.execute(f"EXPLAIN SELECT * FROM {s}.ev WHERE {where}").fetchall())
    assert planned.count("Scan on") <= 6, (table.key_expression, planned)
