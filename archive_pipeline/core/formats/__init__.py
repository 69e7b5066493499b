"""The output formats, one module each: JSONL and CSV (through COPY) or Parquet (through ADBC and
Arrow); their shared types live in ``common``, below all three, and ``readers`` reads archives back."""

from __future__ import annotations

from archive_pipeline.core.formats.common import Format
from archive_pipeline.core.formats.csv import Csv
from archive_pipeline.core.formats.jsonl import JsonLines
from archive_pipeline.core.formats.parquet import Parquet


def get_format(name: str, compression: str = "zstd", level: int | None = None) -> Format:
    if name == "jsonl":
        return JsonLines()
    if name == "csv":
        return Csv()
    if name == "parquet":
        return Parquet(compression=compression, level=level)
    raise ValueError(f"unknown format {name!r}; choose jsonl, csv or parquet")
