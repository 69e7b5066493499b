"""Which writer produces a table's archive: JSONL and CSV (formats.py, through COPY) or Parquet
(parquet.py, through ADBC and Arrow). A module of its own so that the formats' shared types in
formats.py are imported by parquet.py, and nothing imports back up."""

from __future__ import annotations

from archive_pipeline.formats import Csv, Format, JsonLines
from archive_pipeline.parquet import Parquet


def get_format(name: str, compression: str = "zstd", level: int | None = None) -> Format:
    if name == "jsonl":
        return JsonLines()
    if name == "csv":
        return Csv()
    if name == "parquet":
        return Parquet(compression=compression, level=level)
    raise ValueError(f"unknown format {name!r}; choose jsonl, csv or parquet")
