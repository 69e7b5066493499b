"""Hunt 14 (tg): the Parquet reader used by restore, deep verification and compare
(readers.parquet_csv_chunks since 1914059: dictionary-encoded string/binary columns read as dictionaries,
decoded bytes measured and bounded by the manifest's uncompressed_bytes), against archives the archiver
writes itself and against consistent forgeries of the object."""

from __future__ import annotations

import datetime as dt

import pytest

import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


def _parquet_spec(schema: str, table: str, **extra) -> TableSpec:
    return TableSpec(name=f"{schema}.{table}", day_column="at", start_date="2024-03-01", format="parquet",
                     compression="zstd", **extra)


def test_a_text_column_whose_name_holds_a_dot_restores_from_parquet(conn, schema, store, temp_dir):
    """A table has a text column named "label.en" (PostgreSQL allows any character in a quoted identifier;
    the README promises non-ASCII and quoted identifiers round-trip). Its Parquet archive is written fine:
    the archiver dictionary-encodes text columns, so the column chunk's path_in_schema is "label.en".
    readers._open_parquet then maps each dictionary-encoded leaf to its top-level column by
    ``leaf.split(".")[0]`` -> "label", and ``file.schema_arrow.field("label")`` raises
    KeyError("Column label does not exist in schema"): restore and verify --deep of EVERY such day fail with
    an untyped KeyError (not even an ArchiveError naming table and day), so the day can never be proven or
    let go. Where a column "label" exists as well (an int), the same split refuses the green archive as
    "dictionary-encoded ... damaged or was altered". Expected: the day restores and proves equal.
    Fix idea: map leaves to fields by column index (ParquetSchema.column(i).path is a dotted string; use the
    schema's tree / the Arrow schema's fields' leaf counts), never by splitting the dotted path."""
    table = sql.Identifier(schema, "lab")
    conn.execute(sql.SQL('CREATE TABLE {} (id int, at date, "label.en" text, "tags.x" text[])').format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, 'label ' || (g %% 5), ARRAY['t' || (g %% 3), NULL] "
                         "FROM generate_series(1, 50) g").format(table), (DAY,))
    spec = _parquet_spec(schema, "lab")
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 50
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []
    result = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    assert result.rows == 50
    differing = conn.execute(sql.SQL("SELECT count(*) FROM ((TABLE {} EXCEPT ALL TABLE {}) UNION ALL "
                                     "(TABLE {} EXCEPT ALL TABLE {})) d").format(
        table, sql.Identifier(schema, "back"), sql.Identifier(schema, "back"), table)).fetchone()[0]
    assert differing == 0


def _forge_parquet(s3_client, bucket: str, spec: TableSpec, table: pa.Table, **write) -> int:
    """Replace the day's archived object by ``table`` written as Parquet with ``write``'s options, the manifest's
    digests updated to match (a consistent forgery); the forged object's size."""
    from archive_pipeline_tests.helpers import forge_object

    key = keys.table_day_key(spec, spec.period(DAY), "archive")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **write)
    body = sink.getvalue().to_pybytes()
    forge_object(s3_client, bucket, key, keys.manifest_key(key), body)
    return len(body)


@pytest.mark.xfail(strict=True, reason="known, left open: bounding what a forged Parquet object decodes to needs its "
                   "page headers read before any page is decoded (pyarrow exposes no page headers); a version that "
                   "did (hunt-th) cost a Parquet restore 14%, and was not taken")
def test_a_parquet_object_of_plain_pages_that_decode_to_gigabytes_is_refused_within_bounded_memory(
        pg, s3, conn, schema, bucket, store, s3_client, tmp_path):
    """The hunt-11 bomb without its dictionary: someone who may write to the bucket replaces a Parquet day's
    object by a 150 KB file of the same columns whose text column is PLAIN-encoded (use_dictionary=False):
    8,000 rows of one 256 KiB value in one row group, ~1,000 data pages of ~1 MiB that zstd shrinks to almost
    nothing, and updates the manifest's digests (a consistent forgery; uncompressed_bytes stays the real day's
    few bytes). 1914059 measures only dictionary-encoded columns before decoding: a plain column is decoded
    by iter_batches(batch_size=16384) a whole batch at once (2 GB), and only then measured against the
    manifest. Measured: +500 MB of peak RSS for a 4,000-row file, and under a cap of 800 MB above imports
    this one ends as the out-of-memory fault ("give the run more memory", a remedy that feeds the bomb) or
    a refusal after gigabytes were decoded. The footer already says so before anything is decoded (the
    column chunk's total_uncompressed_size is 2 GB against a manifest that records a few hundred bytes).
    Expected: refused as damaged or altered (a typed ArchiveError naming table and day) within bounded
    memory. Fix idea: before reading a row group, refuse it when its column chunks' total_uncompressed_size
    (plus the bytes decoded so far) passes the manifest's uncompressed_bytes, and size batches (batch_size)
    from a row group's uncompressed bytes per row so no batch decodes past ~32 MiB."""
    from archive_pipeline_tests.test_hunt9_oi import _run

    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, note text)").format(sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'one')").format(sql.Identifier(schema, "ev")), (DAY,))
    spec = _parquet_spec(schema, "ev")
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(tmp_path)).rows == 1
    rows = 8000
    bomb = pa.table({"id": pa.array(range(rows), pa.int32()), "at": pa.array([DAY] * rows, pa.date32()),
                     "note": pa.array(["x" * (256 << 10)] * rows)})
    size = _forge_parquet(s3_client, bucket, spec, bomb, compression="zstd", use_dictionary=False,
                          row_group_size=rows)
    del bomb
    assert size < 400_000
    raw = dict(name=spec.name, day_column="at", start_date="2024-03-01", format="parquet", compression="zstd")
    out = _run(tmp_path, pg, s3, bucket, "restore", raw, headroom_mb=800, target=f"{schema}.back")
    assert not out["ok"], out
    assert out["typed"] and "memory" not in out["message"], out  # not "give the run more memory"
    assert "altered" in out["message"] or "damaged" in out["message"], out
    assert out["peak_mb"] < 300, out



def test_a_parquet_object_whose_dictionary_index_is_out_of_bounds_is_refused_as_altered(conn, schema, store,
                                                                                         s3_client, bucket,
                                                                                         temp_dir):
    """A Parquet day's object is replaced by one whose text column's dictionary holds 3 values while a data
    page's RLE run points at index 3 (one flipped byte: damage, or a forgery with the digests updated).
    Before 1914059 Arrow decoded the column densely and said ArrowInvalid("Index not in dictionary bounds"),
    which load_into turns into ArchiveCorruptError naming table and day. Now the column is read as a
    dictionary and readers._decoded_lengths measures it with ``pc.take(lengths, array.indices)``, which
    raises pyarrow.ArrowIndexError ("Index 3 out of bounds"): an IndexError, not ArrowInvalid, so it
    escapes load_into's net: restore (verify --deep and the removal's proof alike) ends as "failed: an
    unexpected error (ArrowIndexError: Index 3 out of bounds) ... to fix: read the message", not as the
    damaged or altered archive it is (no MD5 check to suggest, no cause). Expected: a typed ArchiveError naming table and day that
    says the object is damaged or was altered. Fix idea: validate the indices against the dictionary's
    length (pc.max(indices) < len(dictionary)) before taking, or catch pa.ArrowException (ArrowIndexError)
    where ArrowInvalid is caught."""
    import pytest

    from archive_pipeline.core.errors import ArchiveError

    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, 'c' FROM generate_series(1, 100) g").format(table), (DAY,))
    spec = _parquet_spec(schema, "ev")
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 100
    rows = 100
    forged = pa.table({"id": pa.array(range(rows), pa.int32()), "at": pa.array([DAY] * rows, pa.date32()),
                       "note": pa.array(["a", "b"] + ["c"] * (rows - 2))},
                      schema=pa.schema([pa.field("id", pa.int32(), False), pa.field("at", pa.date32(), False),
                                        pa.field("note", pa.string(), False)]))
    sink = pa.BufferOutputStream()
    pq.write_table(forged, sink, compression="none", use_dictionary=["note"])
    body = bytearray(sink.getvalue().to_pybytes())
    chunk = pq.ParquetFile(pa.BufferReader(bytes(body))).metadata.row_group(0).column(2)
    end = chunk.dictionary_page_offset + chunk.total_compressed_size
    assert body[end - 1] == 2  # the last RLE run's value: index 2 ("c") of a 3-value dictionary
    body[end - 1] = 3
    from archive_pipeline_tests.helpers import forge_object

    key = keys.table_day_key(spec, spec.period(DAY), "archive")
    forge_object(s3_client, bucket, key, keys.manifest_key(key), bytes(body))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    said = str(caught.value)
    assert str(DAY) in said and "ev" in said and ("altered" in said or "damaged" in said), said


def test_restoring_one_big_text_value_from_parquet_holds_it_no_more_than_three_times(pg, s3, conn, schema, bucket,
                                                                                   temp_dir):
    """The README (Parquet restore, test_hunt5_kb.py, 2026-12-04): "one 80 MiB text value +249 MB (...
    reading it is most of that: pyarrow holds the decompressed dictionary page, the dictionary and the
    column, 3x the value)". Since 1914059 a text column (which the archiver dictionary-encodes) is read AS a
    dictionary and decoded by readers._dense (``dictionary_decode``), one more whole copy of the value while
    the dictionary is still alive: this restore measured +329 MB (with the reader of 1914059^ it passes
    this test, as the README says), the reader alone +331 MB in-process (old reader: +251), the
    same output; a text[] holding one 80 MiB element +420 MB (old: +339), past the README's goal of 3x the
    value + 100 MB. No bound is gained by it: the dictionary holds the value once and every row uses it
    once. Expected: the README's +249 MB (3x the value) still holds, within a margin. Fix idea: where a
    batch's indices are the dictionary's own positions in order (each value used once, as in a column of
    distinct values; check min/max/null count), use the dictionary itself instead of decoding a copy, or read
    as dictionaries only the row groups whose decoded size (the footer's num_values against the dictionary
    page) could exceed the slice."""
    from archive_pipeline_tests.test_hunt5_kb import peak_mb

    table = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT 1, {}, repeat(md5('x'), 2621440)").format(table, sql.Literal(DAY)))
    value_mb = 80
    spec = dict(name=f"{schema}.doc", day_column="at", start_date="2024-03-01", format="parquet", compression="zstd")
    assert peak_mb(pg, s3, bucket, temp_dir, spec, DAY, "archive")[0] == 1
    rows, peak = peak_mb(pg, s3, bucket, temp_dir, spec, DAY, "restore", target=f"{schema}.back")
    assert rows == 1
    assert peak < 3.4 * value_mb, peak  # README: +249 MB


def test_a_wide_parquet_day_of_text_columns_reads_the_same_dictionary_encoded_or_plain(tmp_path):
    """A 1,500-column table of text (the archiver dictionary-encodes every text column, and gathers a wide
    table's batches into row groups of a few hundred rows) is restored or deep-verified: the reader hands the same
    bytes for the file as the archiver writes it as for its twin written without dictionaries. (Its speed, once
    a timed assertion here that a loaded machine failed, is measured by bench/wide_parquet.py: the archiver's own
    files read within 1.6x of the same values written plain; 1914059's per-column measuring read them 3.1x
    slower.)"""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from wide_parquet import read_seconds, write_twins

    names, paths = write_twins(tmp_path, 300, 4, 200)
    handed = {dictionary: read_seconds(path, names)[1] for dictionary, path in paths.items()}
    assert handed[True] == handed[False] > 0, handed
