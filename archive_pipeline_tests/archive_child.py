"""Archive one day in a child process that SIGKILLs itself at a chosen S3 request.

Used by the crash tests: ``python -m archive_pipeline_tests.archive_child '<json>'`` with
``dsn``, ``endpoint``, ``bucket``, ``spec`` (TableSpec fields), ``day``, ``overwrite``, ``temp_dir``
and ``kill`` = [event, operation, nth]: e.g. ["after-call", "CompleteMultipartUpload", 1] kills
the process right after the store answered the first CompleteMultipartUpload. botocore's event
hooks are the test's instrument, not the archiver's: the archiver runs unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys

import boto3
import psycopg

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store


def killing_client(args: dict):
    """A boto3 S3 client for ``args["endpoint"]`` that SIGKILLs this process at ``args["kill"]``
    ([event, operation, nth]: e.g. the nth "after-call" of "PutObject"), if given."""
    client = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    event, operation, nth = args.get("kill") or (None, None, 0)
    seen = {"n": 0}

    def kill(**_: object) -> None:
        seen["n"] += 1
        if seen["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    if event:
        client.meta.events.register(f"{event}.s3.{operation}", kill)
    return client


def main(args: dict) -> None:
    store = S3Store(killing_client(args), args["bucket"], prefix="archive", part_size=MIN_PART_SIZE, max_concurrency=2)
    with psycopg.connect(args["dsn"], autocommit=True, application_name="archive_child") as conn:
        result = archive_partition(conn, TableSpec(**args["spec"]), dt.date.fromisoformat(args["day"]), store,
                                   temp_dir=args.get("temp_dir"), overwrite=args.get("overwrite", False))
    print(json.dumps({"key": result.key, "fingerprint": result.fingerprint, "generation": result.generation}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
