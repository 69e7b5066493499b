"""The demo: everything on this machine, nothing to configure.

Starts a throwaway PostgreSQL (sample ``public.events``, one child partition per day for the last
few complete days), moto's S3 server on 127.0.0.1 and a SQLite Dagster instance in .dagster_home,
then runs the archive job for each day through Dagster and prints what landed in the bucket.
With ``--ui`` it leaves ``dagster dev`` running on the same services until Ctrl-C.
"""

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from archive_pipeline.local_stack import create_sample_events, local_stack

REPO = Path(__file__).resolve().parents[1]
BUCKET = "archive-demo"


def _print_table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for line in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(x).rjust(w) if isinstance(x, int) else str(x).ljust(w) for x, w in zip(line, widths, strict=True)))


def _run_dagster_dev(env: dict[str, str], port: int) -> None:
    """`dagster dev` in the foreground: Ctrl-C reaches it as it would in a terminal, and it shuts
    down its webserver, daemon and code server itself (SIGTERM is only the fallback)."""
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1",
           "-p", str(port)]
    process = subprocess.Popen(cmd, env=env, cwd=REPO)
    print(f"\nDagster UI: http://127.0.0.1:{port}  (Ctrl-C stops it and the demo services)")
    while process.poll() is None:
        try:
            process.wait()
        except KeyboardInterrupt:  # dagster dev got the same SIGINT; give it time to stop cleanly
            try:
                process.wait(timeout=30)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=3, help="complete days of sample data (default 3)")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per day (default 20,000)")
    parser.add_argument("--ui", action="store_true", help="leave `dagster dev` running afterwards")
    parser.add_argument("--port", type=int, default=3000, help="port of the Dagster UI with --ui")
    args = parser.parse_args(argv)

    home = REPO / ".dagster_home"
    shutil.rmtree(home, ignore_errors=True)  # the services are new each time; so is the history
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    today = dt.datetime.now(dt.UTC).date()
    days = [today - dt.timedelta(days=n) for n in range(args.days, 0, -1)]

    print(f"starting PostgreSQL and the S3 endpoint; {args.rows:,} sample rows for each of {days[0]}..{days[-1]}")
    with local_stack() as (pg, s3):
        with pg.connect() as conn:
            create_sample_events(conn, days, args.rows)
        s3.client().create_bucket(Bucket=BUCKET)
        env = {"ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": BUCKET, "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url,
               "ARCHIVE_S3_PREFIX": "archive", "ARCHIVE_S3_ACCESS_KEY_ID": "demo", "ARCHIVE_S3_SECRET_ACCESS_KEY": "demo",
               "ARCHIVE_PIPELINE_CONFIG": str(REPO / "archive_tables.yaml"), "DAGSTER_HOME": str(home)}
        os.environ.update(env)

        from dagster import DagsterInstance

        from archive_pipeline.definitions import build_definitions

        defs = build_definitions()
        job = defs.resolve_job_def("archive_public_events")
        rows = []
        with DagsterInstance.get() as instance:
            for day in days:
                started = time.perf_counter()
                result = job.execute_in_process(partition_key=day.isoformat(), instance=instance,
                                                run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}})
                [event] = result.get_asset_materialization_events()
                meta = {k: v.value for k, v in event.materialization.metadata.items()}
                rows.append((day.isoformat(), meta["object_key"], meta["dagster/row_count"], meta["compressed_bytes"],
                             meta["uncompressed_bytes"], meta["md5"], f"{time.perf_counter() - started:.2f}s"))
        print("\narchived partitions of asset archive/public/events (materialized through Dagster):")
        _print_table(rows, ("day", "key", "rows", "bytes", "raw bytes", "md5", "run"))
        listing = s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
        print(f"\nobjects in s3://{BUCKET} at {s3.endpoint_url}:")
        for obj in listing:
            print(f"  {obj['Key']}  {obj['Size']:,} bytes")
        if args.ui:
            _run_dagster_dev({**os.environ, **env}, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
