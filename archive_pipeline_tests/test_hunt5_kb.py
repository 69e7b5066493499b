"""Hunt 5 (kb): extreme sizes and shapes of data, and memory staying flat.

Peak memory is measured as the README's benchmarks measure it: in a fresh child process, the peak
RSS (VmHWM) above the RSS right after imports."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from psycopg import sql

DAY = dt.date(2024, 3, 10)
ROOT = Path(__file__).resolve().parents[1]

_CHILD = r'''
import datetime as dt, json, sys
from pathlib import Path

def mb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

import adbc_driver_postgresql.dbapi, boto3, psycopg, pyarrow.parquet  # import cost is not the operation's
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import deep_verify

a = json.loads(sys.argv[1])
client = boto3.client("s3", endpoint_url=a["endpoint"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
store = S3Store(client, a["bucket"], prefix="archive")
spec, day = TableSpec(**a["spec"]), dt.date.fromisoformat(a["day"])
with psycopg.connect(a["dsn"], autocommit=True) as conn:
    base = mb("VmRSS")
    if a["op"] == "archive":
        out = archive_partition(conn, spec, day, store, temp_dir=a["temp_dir"]).rows
    elif a["op"] == "verify":
        out = deep_verify(conn, store, spec, day, temp_dir=a["temp_dir"])
    else:
        out = restore_day(conn, store, spec, day, into="new", target=a["target"], temp_dir=a["temp_dir"]).rows
print(json.dumps({"out": out, "peak_mb": mb("VmHWM") - base}))
'''


def peak_mb(pg, s3, bucket, temp_dir, spec: dict, day: dt.date, op: str, **extra) -> tuple[object, float]:
    """Run ``op`` (archive, verify, restore) of ``day`` in a fresh process: its result and its peak RSS
    above imports, in MB."""
    args = dict(dsn=pg.dsn, endpoint=s3.endpoint_url, bucket=bucket, spec=spec, day=day.isoformat(), op=op,
                temp_dir=str(temp_dir), **extra)
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["out"], result["peak_mb"]


def test_parquet_memory_of_a_wide_table_does_not_grow_with_the_day(pg, s3, conn, schema, bucket, temp_dir):
    """A user archives a wide table (1,500 bigint columns, mostly NULL, as such tables are) in Parquet.
    Each ~4 MiB Arrow batch becomes its own row group, and with 1,500 columns a batch holds only ~700
    rows, so a day's file has a row group per ~700 rows, each carrying 1,500 column chunks of metadata
    that the writer keeps until the file is closed. The archiver's peak memory then grows with the
    day's row count: measured +65 MB for 5,000 rows, +117 MB for 20,000, +188 MB for 40,000 (and so
    several GB for a day of a million rows: an OOM kill). The README promises memory that does not
    grow with the day ("At most a few 4 MiB chunks (or 4 MiB Arrow batches) ... are in memory at
    once"; 200,000 -> 2,000,000 rows: 60 -> 63 MB in Parquet). Expected: a day four times as long
    peaks within a few MB of the shorter one (e.g. row groups cut by rows or bytes of the file, not
    one per Arrow batch, or the writer's metadata kept bounded)."""
    table = sql.Identifier(schema, "wide")
    columns = sql.SQL(", ").join(sql.SQL("{} int8").format(sql.Identifier(f"c{i}")) for i in range(1500))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, {})").format(table, columns))
    short, long = DAY - dt.timedelta(days=1), DAY
    for day, rows in ((short, 4000), (long, 16000)):
        conn.execute(sql.SQL("INSERT INTO {} (id, at, c0, c749, c1499) SELECT g, {}, g, g * 7, -g "
                             "FROM generate_series(1, {}) g").format(table, sql.Literal(day), sql.Literal(rows)))
    spec = dict(name=f"{schema}.wide", day_column="at", start_date="2024-03-01", format="parquet", compression="zstd")
    rows_short, peak_short = peak_mb(pg, s3, bucket, temp_dir, spec, short, "archive")
    rows_long, peak_long = peak_mb(pg, s3, bucket, temp_dir, spec, long, "archive")
    assert (rows_short, rows_long) == (4000, 16000)
    # (the bug grew +52 MB from 4,000 to 16,000 rows; the peak's own spread between runs on a 2-core machine, with
    # the longer day fingerprinted by a second session alongside, reached +21 MB at the last release's code, and
    # +32 MB in a loaded run of the whole suite (thirty-fourth session): 40 keeps the bug well above it)
    assert peak_long - peak_short < 40, (peak_short, peak_long)


def test_restoring_a_big_array_from_parquet_stays_within_the_memory_goal(pg, s3, conn, schema, bucket, temp_dir):
    """A user archives a day whose one row holds a bigint[] of 3,000,000 elements (~24 MB as Arrow
    list<int64>, ~40 MB as PostgreSQL text) in Parquet, then restores it (or deep-verifies it). The
    archive itself peaks at ~3x the value; CSV's restore at +11 MB and JSONL's at ~4x the text; but
    Parquet's restore peaks at ~9x the text (~15x the Arrow value; measured +597 MB for 5,000,000
    elements): readers.py's _list_text casts every element to large_string, quotes each one with a
    binary_join_element_wise, then binary_joins the list, each a full copy of millions of tiny strings
    with 8-byte offsets, all alive together, before the CSV writer copies them once more. Expected:
    within the README's goal for one big value, 3x the value + 100 MB (numbers need no quotes, and
    intermediates can be let go or built in slices)."""
    table = sql.Identifier(schema, "arr")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, v int8[])").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT 1, {}, (SELECT array_agg(i::int8 * 1000003) "
                         "FROM generate_series(1, 3000000) i)").format(table, sql.Literal(DAY)))
    text_mb = conn.execute(sql.SQL("SELECT length(v::text) FROM {}").format(table)).fetchone()[0] / 2**20
    spec = dict(name=f"{schema}.arr", day_column="at", start_date="2024-03-01", format="parquet", compression="zstd")
    assert peak_mb(pg, s3, bucket, temp_dir, spec, DAY, "archive")[0] == 1
    rows, peak = peak_mb(pg, s3, bucket, temp_dir, spec, DAY, "restore", target=f"{schema}.back")
    assert rows == 1
    assert peak < 3 * text_mb + 100, (text_mb, peak)


def test_restoring_a_big_text_value_from_parquet_stays_within_the_memory_goal(pg, s3, conn, schema, bucket,
                                                                              temp_dir):
    """A user archives a day whose one row holds an 80 MiB text value in Parquet, then restores it.
    Archiving stays within the README's goal for one big value (3x the value + 100 MB; measured
    3.6x), and so do CSV's restore (+10 MB) and JSONL's (~4x); but Parquet's restore peaks at
    ~5.2-5.6x the value (measured +415 MB for this one, +564 MB for 100 MiB of md5 hex):
    readers.parquet_csv_chunks keeps the row group's decompressed page and Arrow array, writes the
    whole batch as CSV into a BufferOutputStream (another copy) and hands it to the COPY while the
    prefetch thread may already hold the next batch. Expected: within 3x the value + 100 MB."""
    table = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT 1, {}, repeat(md5('x'), 2621440)").format(table, sql.Literal(DAY)))
    value_mb = 80
    spec = dict(name=f"{schema}.doc", day_column="at", start_date="2024-03-01", format="parquet", compression="zstd")
    assert peak_mb(pg, s3, bucket, temp_dir, spec, DAY, "archive")[0] == 1
    rows, peak = peak_mb(pg, s3, bucket, temp_dir, spec, DAY, "restore", target=f"{schema}.back")
    assert rows == 1
    assert peak < 3 * value_mb + 100, peak


def test_jsonl_memory_of_a_text_value_that_escaping_inflates_stays_within_the_goal(pg, s3, conn, schema,
                                                                                     bucket, temp_dir):
    """A user archives in JSONL a day whose one row holds a 32 MiB text value made of control
    characters (a binary-ish log blob stored as text: every byte below 0x20 is legal text).
    row_to_json escapes each one as \\u00XX, six bytes, so PostgreSQL sends one 192 MiB COPY
    message, which libpq holds twice (its input buffer and PQgetCopyData's copy) plus the archiver's
    chunk: measured +514 MB for 40 MiB (12.2x the value; CSV +114 MB, Parquet +136 MB for the same
    row). That is the trap the README describes for bytea's hex form (one message per row, held
    twice), which got a sliced path of its own, while escaped text has none. Expected: within the
    README's goal for one big value, 3x the value + 100 MB (or a clear refusal naming the column and
    suggesting CSV/Parquet, rather than an OOM kill for a larger value)."""
    table = sql.Identifier(schema, "logs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT 1, {}, repeat(chr(1), 32 << 20)").format(table, sql.Literal(DAY)))
    spec = dict(name=f"{schema}.logs", day_column="at", start_date="2024-03-01", format="jsonl", compression="zstd")
    rows, peak = peak_mb(pg, s3, bucket, temp_dir, spec, DAY, "archive")
    assert rows == 1
    assert peak < 3 * 32 + 100, peak
