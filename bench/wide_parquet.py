"""Reading a wide Parquet day of text columns: the archiver's own files (dictionary-encoded text) against the
same values written plain, through the reader restore and deep verification use (readers.parquet_csv_chunks).

Not a test: a ratio of two reads measured in the same run (best of interleaved rounds), against the limit the
thirteenth hunt set (1.6: "the archiver's own files read about as fast as the same values written plain"). It
was a timed assertion in archive_pipeline_tests/test_hunt14_tg.py, which a loaded machine failed.

    python bench/wide_parquet.py                 # 1,500 columns x 20 row groups x 200 rows, 3 rounds
    python bench/wide_parquet.py --columns 500 --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from archive_pipeline.core.formats import readers  # noqa: E402

LIMIT = 1.6


def write_twins(folder: Path, columns: int, groups: int, rows: int) -> tuple[list[str], dict[bool, Path]]:
    """The same values written dictionary-encoded (as the archiver writes text) and plain."""
    names = [f"c{i}" for i in range(columns)]
    schema = pa.schema([(name, pa.string()) for name in names])
    paths = {}
    for dictionary in (True, False):
        paths[dictionary] = folder / f"wide_{dictionary}.parquet"
        with pq.ParquetWriter(paths[dictionary], schema, compression="zstd",
                              use_dictionary=names if dictionary else False) as writer:
            for group in range(groups):
                column = pc.cast(pa.array(range(group * rows, (group + 1) * rows)), pa.string())
                writer.write_table(pa.table([column] * len(names), schema=schema))
    return names, paths


def read_seconds(path: Path, names: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    handed = sum(len(memoryview(chunk)) for chunk in readers.parquet_csv_chunks(path, names))
    return time.perf_counter() - started, handed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, default=1500)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        names, paths = write_twins(Path(folder), args.columns, args.groups, args.rows)
        best = {True: float("inf"), False: float("inf")}
        for _ in range(args.rounds):
            handed = {}
            for dictionary in (True, False):
                seconds, handed[dictionary] = read_seconds(paths[dictionary], names)
                best[dictionary] = min(best[dictionary], seconds)
            assert handed[True] == handed[False], handed
    ratio = best[True] / best[False]
    print(f"wide Parquet read, {args.columns} text columns x {args.groups} row groups x {args.rows} rows "
          f"(best of {args.rounds}):")
    print(f"  dictionary-encoded (as archived) {best[True]:.2f} s, plain {best[False]:.2f} s: "
          f"{ratio:.2f}x ({ratio / LIMIT:.2f} of the {LIMIT}x limit)")


if __name__ == "__main__":
    main()
