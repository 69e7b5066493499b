"""Peak memory of archiving one day whose only row holds one big value, per format.

    PYTHONPATH=$PWD python bench/big_value.py            # one 100 MiB text value
    PYTHONPATH=$PWD python bench/big_value.py --mib 200 --type bytea

Each format runs in a fresh process; it prints the peak RSS (``ru_maxrss``) above the RSS right
after imports, and that as a multiple of the value's size. The goal (#11 §5) is at most
3x the largest value + 100 MB in every format. Numbers, no assertions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import rss_mb  # noqa: E402 - after the path is set
DAY = dt.date(2024, 3, 10)
BUCKET = "big-value"


def child(args: argparse.Namespace) -> None:
    import resource

    import adbc_driver_postgresql.dbapi  # noqa: F401 - import cost is not archiving cost
    import boto3
    import psycopg
    import pyarrow.parquet  # noqa: F401

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.store import S3Store

    client = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    spec = TableSpec(name="public.big_value", day_column="at", start_date="2024-01-01", format=args.format,
                     compression=args.compression)
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        after_imports = rss_mb()
        result = archive_partition(conn, spec, DAY, S3Store(client, BUCKET, prefix="bench"), overwrite=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": result.rows, "bytes": result.bytes, "peak_above_imports_mb": peak - after_imports}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=100, help="size of the value in MiB")
    parser.add_argument("--type", default="text", choices=["text", "bytea"])
    parser.add_argument("--count", type=int, default=1, help="rows holding such a value (the largest is still one)")
    parser.add_argument("--small-rows", type=int, default=0,
                        help="small rows around the big ones (over 50,000: the day's row count is not known "
                             "before the read, its fingerprint is taken alongside)")
    parser.add_argument("--formats", default="csv,jsonl,parquet")
    parser.add_argument("--compression", default="zstd")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from archive_pipeline.local.local_stack import local_stack

    with local_stack() as (pg, s3):
        s3.client().create_bucket(Bucket=BUCKET)
        with pg.connect() as conn:
            # md5 hex text: incompressible enough to be realistic, and valid in any encoding
            value = ("(SELECT string_agg(md5(i::text), '') FROM generate_series(1, %s) AS i)"
                     if args.type == "text" else
                     # bytea built from bytea pieces: a hex text of a 600 MiB value would pass PostgreSQL's 1 GB limit
                     "(SELECT string_agg(decode(md5(i::text), 'hex'), ''::bytea) FROM generate_series(1, %s) AS i)")
            per_md5 = 32 if args.type == "text" else 16
            conn.execute(f"CREATE TABLE public.big_value (at date, id int, v {args.type})")
            half = args.small_rows // 2
            small = ("INSERT INTO public.big_value SELECT %s, g, "
                     + ("md5(g::text)" if args.type == "text" else "decode(md5(g::text), 'hex')")
                     + " FROM generate_series(%s::int, %s::int) g")
            conn.execute(small, (DAY, args.count + 1, args.count + half))
            for i in range(args.count):
                conn.execute(f"INSERT INTO public.big_value VALUES (%s, %s, {value})",
                             (DAY, i + 1, args.mib * (1 << 20) // per_md5))
            conn.execute(small, (DAY, args.count + half + 1, args.count + args.small_rows))
            conn.execute("ANALYZE public.big_value")
        size_mb = args.mib * (1 << 20) / 1e6
        print(f"{args.count} row(s), each one {args.mib} MiB {args.type} value ({size_mb:.0f} MB), "
              f"between {args.small_rows:,} small rows; "
              "peak RSS above imports, fresh process each")
        for fmt in args.formats.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", "--format", fmt, "--dsn", pg.dsn,
                                  "--compression", args.compression,
                                  "--endpoint", s3.endpoint_url], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"  {fmt:8} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'}")
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            peak = res["peak_above_imports_mb"]
            print(f"  {fmt:8} peak +{peak:7.1f} MB  = {peak / size_mb:4.2f}x the value   (object {res['bytes']:,} B)")


if __name__ == "__main__":
    main()
