"""Reading archives back the way a user would: download, decompress, parse."""

from __future__ import annotations

import csv
import gzip
import io
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.csv as pacsv
import zstandard


def decompress(body: bytes, compression: str) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read()
    if compression == "gzip":
        return gzip.decompress(body)
    if compression == "lz4":
        return pa.CompressedInputStream(pa.BufferReader(body), "lz4").read()
    return body


def download(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def read_jsonl(data: bytes) -> list[dict]:
    # Decimal keeps every digit of PostgreSQL's numerics, as jq 1.7 or any careful reader would.
    # Split on b"\n" only: str.splitlines() would also split inside strings holding U+2028.
    return [json.loads(line, parse_float=Decimal) for line in data.split(b"\n") if line]


def read_csv(data: bytes) -> list[dict[str, str | None]]:
    """Parse with pyarrow, keeping NULL (unquoted empty) apart from '' (quoted empty), every value text."""
    header = next(csv.reader(io.StringIO(data.decode().split("\n", 1)[0])))
    table = pacsv.read_csv(
        io.BytesIO(data),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                             null_values=[""], strings_can_be_null=True,
                                             quoted_strings_can_be_null=False),
    )
    return table.to_pylist()
