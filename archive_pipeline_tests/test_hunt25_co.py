"""Hunt 25 (co): the hard limits of S3 and PostgreSQL reached by names and sizes (keys, metadata, part counts,
manifest size, identifier lengths): a manifest past what readers accept, and equal parts sized from a row text
that the format's escapes outgrow."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.manifest import ManifestError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


def test_a_table_of_wide_composite_columns_is_archived_green_with_a_manifest_no_reader_accepts(
        conn, schema, store, s3_client, bucket, temp_dir):
    """Scenario: a table of 300 columns (names of ~55 bytes), each of one composite type ``wide`` with 300 text
    fields (names of 60 bytes: a denormalised event schema that embeds a record type per slot); one row on the day,
    its composites NULL. The day is archived, then archived again (the daily run, or a retry).

    Now: manifest.build_manifest records each column's ``shape`` (source.composite_shapes): every node of the
    column's type tree with the composite's field names, once per column, so the same 300 names are repeated 300
    times, plus one node per field; the manifest is ~18 MB. archive_partition writes it (put_bytes has no size
    limit) and returns a green result. But every reader fetches manifests through S3Store.get_verified_bytes, which
    answers an object over MAX_SMALL_OBJECT_BYTES (16 MiB) with an OVERSIZED stand-in, and decode_manifest refuses it
    ("larger than any manifest (16,777,216 bytes at most): not read"): load_manifest, list, verify, compare and
    restore all see a damaged manifest instead of the archive, and the next archive run does not recognise its own
    archive (not skipped: it writes generation 2, with an equally unreadable manifest, and so on every run).

    Should: the writer never commits a manifest larger than its readers accept: record a composite type's fields
    once (a ``types`` table in the manifest the columns' shapes refer to), or refuse the table before anything is
    uploaded, naming the table and the cause; at least the limit the reader applies must be checked where the
    manifest is encoded, so a green run always leaves an archive that list/verify/restore can read."""
    fields = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"{'f' * 56}{i:04d}")) for i in range(300))
    conn.execute(sql.SQL("CREATE TYPE {} AS ({})").format(sql.Identifier(schema, "wide"), fields))
    columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(f"slot_{'x' * 50}{i:04d}"),
                                                         sql.Identifier(schema, "wide")) for i in range(300))
    conn.execute(sql.SQL("CREATE TABLE {} (at date, {})").format(sql.Identifier(schema, "t"), columns))
    conn.execute(sql.SQL("INSERT INTO {} (at) VALUES (%s)").format(sql.Identifier(schema, "t")), (DAY,))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY)

    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 1 and not result.skipped  # green
    size = s3_client.head_object(Bucket=bucket, Key=result.manifest_key)["ContentLength"]
    try:
        manifest = load_manifest(store, result.key, (spec.name, DAY.isoformat()))
    except ManifestError as exc:
        pytest.fail(f"a green archive's manifest ({size:,} bytes) cannot be read back by list/verify/restore: {exc}")
    assert manifest is not None and manifest["rows"] == 1


class _FourPartStore(S3Store):
    """S3's 10,000-part limit scaled down to 4 parts (the class attribute meant for that, as test_hunt20_zl and
    test_hunt18_xi do): equal parts are sized for 4 x the estimate, as at full scale."""

    max_parts = 4


def test_equal_parts_sized_from_row_text_are_outgrown_by_jsonl_escapes_of_control_characters(
        conn, schema, s3_client, bucket, temp_dir):
    """Scenario: a store of equal parts (Cloudflare R2, ``equal_parts: true``), its part limit scaled down to 4
    parts; a table (id, at, payload text) whose payload holds control characters (2,000 x U+0001 a row: terminal
    captures, binary-ish text); analyzed; format jsonl, compression none; 3,000 rows on the day.

    Now: Archiver passes source.estimated_bytes as expected_size: rows x the width of the row's *text*
    (``octet_length(t::text)``: one byte per U+0001) plus JSONL's column names, x 1.25. JSON writes each U+0001 as
    ``\\u0001``, six bytes: the stream is ~6 x the estimate, past the 4 x plan_parts sizes equal parts for, and the
    upload fails permanently ("the stream passed … bytes, all that 4 equal parts of … bytes can hold") after
    uploading 4 x the estimate; every retry alike. At full scale the same day fails once it passes ~50 GB of
    escaped text, after uploading it. (test_hunt20_zl's names are counted now; the escapes are not.)

    Should: the estimate is in the bytes the format writes: size the sampled rows through the format's own
    writer (or count what JSON escapes: control characters x 6, quotes and backslashes x 2), so the day archives in
    equal parts of the right size."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, payload text)").format(sql.Identifier(schema, "t")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, pg_catalog.repeat(pg_catalog.chr(1), 2000) "
                         "FROM generate_series(1, 3000) g").format(sql.Identifier(schema, "t")), (DAY,))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "t")))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format="jsonl", compression="none")
    store = _FourPartStore(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE, equal_parts=True)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # (that part holds)
        pytest.fail(f"a jsonl day of escaped text outgrew the equal parts planned for 4 x its estimate: {exc}")
    assert result.rows == 3000
