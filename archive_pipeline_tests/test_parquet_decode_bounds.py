"""A Parquet object that decodes to far more than it weighs (dictionary pages whose few values repeat over
many rows) is read in bounded memory and refused past the bytes its manifest records, whatever the column's
shape: a list of strings spread over many row groups each under the reader's slice, a binary column in one
row group (see ``readers.parquet_csv_chunks``; the restore's own test is test_hunt11_qs's gigabyte object)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archive_pipeline.core.formats import readers


def _repeated(value: str | bytes, rows: int, kind: pa.DataType) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array([value], kind))


def _list_bomb(path, groups: int = 20, rows: int = 50, per_row: int = 8) -> None:
    """``groups`` row groups of ``rows`` rows, each row a list of ``per_row`` times one 64 KiB string:
    25 MiB decoded per row group (under the reader's 32 MiB slice), 500 MiB in all, from a few KB."""
    schema = pa.schema([("id", pa.int32()), ("tags", pa.list_(pa.string()))])
    with pq.ParquetWriter(path, schema, compression="zstd", dictionary_pagesize_limit=1 << 30) as writer:
        for group in range(groups):
            offsets = pa.array(range(0, rows * per_row + 1, per_row), pa.int32())
            tags = pa.ListArray.from_arrays(offsets, _repeated("x" * (64 << 10), rows * per_row, pa.string())
                                            .dictionary_decode())
            writer.write_table(pa.table({"id": pa.array(range(rows), pa.int32()), "tags": tags}, schema=schema))


def test_a_list_column_that_decodes_past_the_manifest_over_many_row_groups_is_refused(tmp_path):
    path = tmp_path / "lists.parquet"
    _list_bomb(path)
    assert path.stat().st_size < 200_000 and pq.ParquetFile(path).metadata.num_row_groups == 20
    handed = 0
    with pytest.raises(readers.ArchiveDecodeError, match="damaged or was altered"):
        for chunk in readers.parquet_csv_chunks(path, ["id", "tags"], limit=30 << 20):
            handed += len(memoryview(chunk))
    assert handed < 64 << 20  # refused at the second row group, not after 500 MiB


def test_a_binary_column_of_one_repeated_value_is_read_in_bounded_memory(tmp_path):
    """No manifest bound (an older manifest records none): 2,000 rows of one 128 KiB bytea in one row group
    come out whole (512 MiB of hex) with never more than a slice's worth decoded."""
    path = tmp_path / "binary.parquet"
    rows = 2000
    table = pa.table({"id": pa.array(range(rows), pa.int32()),
                      "payload": _repeated(b"\x01" * (128 << 10), rows, pa.binary())})
    pq.write_table(table, path, compression="zstd", store_schema=False, dictionary_pagesize_limit=1 << 30,
                   row_group_size=rows)
    del table
    assert path.stat().st_size < 100_000
    base, peak, text = pa.total_allocated_bytes(), 0, 0
    for chunk in readers.parquet_csv_chunks(path, ["id", "payload"]):
        peak = max(peak, pa.total_allocated_bytes() - base)
        text += len(memoryview(chunk))
    assert text > rows * (256 << 10)
    assert peak < 200 << 20, peak  # whole, the batch alone is 256 MiB and its hex 512 MiB more


def test_a_dictionary_encoded_extension_column_is_refused(tmp_path):
    """Arrow reads a json or uuid column (an extension type) densely whatever is asked: the archiver never
    dictionary-encodes one, so one that is is refused before anything is decoded."""
    path = tmp_path / "json.parquet"
    table = pa.table({"js": pa.ExtensionArray.from_storage(pa.json_(pa.string()), pa.array(['{"a": 1}'] * 10))})
    pq.write_table(table, path, use_dictionary=True)
    with pytest.raises(readers.ArchiveDecodeError, match="damaged or was altered"):
        list(readers.parquet_csv_chunks(path, ["js"]))
