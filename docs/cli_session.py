"""The README's "Real output" of the command line, produced again: ``python docs/cli_session.py``.

Starts the local stack (PostgreSQL, moto's S3 server), creates a declaratively partitioned
``public.events`` with 20,000 rows on each of three days before yesterday and one empty day
partition, and runs ``archive-pipeline`` as a user would: archive, update a row of an archived day,
then ``archive --dry-run``, ``list --check-source``, ``compare --rows`` and ``restore``. Prints the
session (commands and their output) for the README.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from archive_pipeline.local.local_stack import create_sample_events, local_stack

BIN = Path(sys.executable).parent


def main() -> None:
    today = dt.datetime.now(dt.UTC).date()
    empty, *full = [today - dt.timedelta(days=n) for n in (5, 4, 3)]
    missing = today - dt.timedelta(days=2)
    with local_stack() as (pg, s3), tempfile.TemporaryDirectory() as tmp:
        s3.client().create_bucket(Bucket="archive")
        with pg.connect() as conn:
            create_sample_events(conn, [*full, missing], 20_000)
            conn.execute(f"CREATE TABLE public.events_{empty:%Y%m%d} PARTITION OF public.events "
                         f"FOR VALUES FROM ('{empty}') TO ('{empty + dt.timedelta(days=1)}')")
        config = Path(tmp) / "tables.yaml"
        config.write_text(json.dumps({"tables": [{"name": "public.events", "day_column": "created_at",
                                                   "start_date": str(empty),
                                                   "partitioning": {"mode": "declarative"}}]}))
        env = {**os.environ, "ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn,
               "ARCHIVE_S3_BUCKET": "archive", "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url,
               "ARCHIVE_S3_PREFIX": "archive", "ARCHIVE_S3_ACCESS_KEY_ID": "demo",
               "ARCHIVE_S3_SECRET_ACCESS_KEY": "demo", "COLUMNS": "200"}

        def run(*args: str) -> None:
            print("$ archive-pipeline " + " ".join(args))
            out = subprocess.run([str(BIN / "archive-pipeline"), *args], env=env, cwd=tmp,
                                 capture_output=True, text=True)
            sys.stdout.write(out.stdout + out.stderr)
            sys.stdout.flush()

        run("archive", "--from", str(empty), "--to", str(full[-1]))
        changed = full[-1]
        update = (f"UPDATE events SET amount = 1 WHERE id = 7 AND created_at >= '{changed}' "
                  f"AND created_at < '{changed + dt.timedelta(days=1)}'")
        print("psql> " + update)
        with pg.connect() as conn:
            conn.execute(update)
        run("archive", "--from", str(empty), "--to", str(missing), "--dry-run")
        run("list", "--from", str(empty), "--to", str(missing), "--check-source")
        run("compare", "--rows", "--day", str(changed))
        run("restore", "--day", str(full[0]), "--into", "new", "--target", "public.events_restored")


if __name__ == "__main__":
    main()
