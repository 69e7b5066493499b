"""Hunt 4 (yy): archives written by the previous version (dcddb3a, extracted by helpers.previous_version_code) must still
work with today's code. Each test archives with the OLD code in a subprocess and operates with the new one."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest
from psycopg import sql

from archive_pipeline.core.config import TableSpec

from archive_pipeline_tests.helpers import previous_version_code  # noqa: E402 - the previous version, extracted
DAY = dt.date(2024, 3, 10)
DAY2 = dt.date(2024, 3, 11)

_OLD_SCRIPT = r"""
import datetime as dt, json, sys
import boto3, psycopg
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import S3Store, MIN_PART_SIZE
args = json.loads(sys.argv[1])
client = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
store = S3Store(client, args["bucket"], prefix="archive", part_size=MIN_PART_SIZE)
spec = TableSpec(**args["spec"])
with psycopg.connect(args["dsn"], autocommit=True) as conn:
    for op, day in args["ops"]:
        day = dt.date.fromisoformat(day)
        if op == "archive":
            archive_partition(conn, spec, day, store, temp_dir=args["tmp"])
        elif op == "overwrite":
            archive_partition(conn, spec, day, store, temp_dir=args["tmp"], overwrite=True)
        elif op == "remove":
            from archive_pipeline.core.lifecycle import remove_day
            remove_day(conn, spec, day, store, temp_dir=args["tmp"])
        elif op == "remove_dies_before_commit":
            import os
            from archive_pipeline.core import lifecycle
            real = lifecycle._recheck_and_remove
            def dying(*a, **k):
                real(*a, **k)
                os._exit(0)
            lifecycle._recheck_and_remove = dying
            lifecycle.remove_day(conn, spec, day, store, temp_dir=args["tmp"])
        elif op == "remove_dies_after_commit":
            import os
            from archive_pipeline.core import lifecycle
            lifecycle._marked_by_us = lambda *a, **k: os._exit(0)
            lifecycle.remove_day(conn, spec, day, store, temp_dir=args["tmp"])
        elif op.startswith("sql:"):
            conn.execute(op[4:])
"""


def old(pg, s3, bucket, spec: dict, ops, tmp, dsn=None):
    """Run ``ops`` [(op, day)] with the previous version's code."""
    env = {**os.environ, "PYTHONPATH": previous_version_code()}
    args = {"dsn": dsn or pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "spec": spec,
            "ops": [(o, d.isoformat() if d else "2000-01-01") for o, d in ops], "tmp": str(tmp)}
    done = subprocess.run([sys.executable, "-c", _OLD_SCRIPT, json.dumps(args, default=str)], env=env,
                          capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert done.returncode == 0, done.stderr[-3000:]
    import time

    import psycopg
    with psycopg.connect(dsn or pg.dsn, autocommit=True) as c:  # a killed run's backend lets go of its locks
        deadline = time.monotonic() + 30  # (5 s was not always enough for a loaded machine)
        while c.execute("SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory'").fetchone() \
                and time.monotonic() < deadline:
            time.sleep(0.05)


def spec_of(args):
    return TableSpec(**args)


@pytest.fixture
def encoded_db(pg, conn):
    import psycopg
    made = []

    def make(encoding):
        name = f"hunt4_yy_{encoding.lower()}_{conn.info.backend_pid}_{len(made)}"
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
            sql.Identifier(name), sql.Literal(encoding)))
        dsn = pg.dsn_for("postgres", database=name)
        db = psycopg.connect(dsn, autocommit=True, client_encoding="UTF8")
        made.append((name, db))
        return db, dsn

    yield make
    for name, db in made:
        db.close()
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _euc_jp_day(pg, s3, encoded_db, bucket, temp_dir):
    """A day of a table in an EUC_JP database, with a non-ASCII text, archived by the previous version."""
    db, dsn = encoded_db("EUC_JP")
    db.execute("CREATE TABLE public.ev (id int, at date, note text)")
    db.execute("INSERT INTO public.ev SELECT g, %s, 'é' || g FROM generate_series(1, 10) g", (DAY,))
    args = {"name": "public.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv"}
    old(pg, s3, bucket, args, [("archive", DAY)], temp_dir, dsn=dsn)
    return db, spec_of(args)


def test_old_euc_jp_archive_proven_in_a_utf8_scratch_database_is_not_called_altered(
        pg, s3, encoded_db, conn, bucket, store, temp_dir):
    """A user archived a day of a table in an EUC_JP database with the previous version (its manifest has no
    ``source.encoding``; row-hash-sum-v4 hashes EUC_JP text as its own bytes). With today's code they run
    deep verification with the recommended UTF8 scratch database (``scratch_conn``; ARCHIVE_PG_PRIMARY_DSN on
    the command line). Today's code knows a v4 fingerprint of a multibyte database cannot be recomputed in a
    UTF8 one and, for a manifest that records the encoding, says so with no verdict; for the old manifest it
    returns the verdict "the archive's rows are not the ones recorded" (and "the source's rows ... are not the
    archive's"): an intact archive is called altered, and the retention removal of the day is refused for it.
    The archived-in encoding is known here without the manifest's field: the proof's source connection is
    the very database the manifest names (same database, same system identifier), and it is EUC_JP. It should
    raise the no-verdict encoding error (or prove the day), never report the archive altered."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.verify import deep_verify

    db, spec = _euc_jp_day(pg, s3, encoded_db, bucket, temp_dir)
    conn.execute("CREATE TABLE public.ev (id int, at date, note text)")  # the scratch database's copy of the table
    try:
        try:
            problems = deep_verify(db, store, spec, DAY, scratch_conn=conn, temp_dir=temp_dir)
        except ArchiveError as exc:
            assert "encoding" in str(exc), exc
            return
    finally:
        conn.execute("DROP TABLE public.ev")
    assert not [p for p in problems if "not the ones recorded" in p or "not the archive's" in p], problems


def test_old_euc_jp_archive_restored_into_a_utf8_database_is_not_called_altered(
        pg, s3, encoded_db, conn, schema, bucket, store, temp_dir):
    """A user restores (into='new') a day the previous version archived from an EUC_JP database into a UTF8
    database (a restore host). The rows load, and their v4 fingerprint, computed over UTF-8 bytes here, cannot
    equal the one recorded over EUC_JP bytes. Today's code says so ("restore into a database of the archived
    encoding") for a manifest that records ``source.encoding``; for the old manifest (no such field) the
    refusal says "the archive does not hold the rows it was proven to hold (altered after it was written)",
    with no word of the encoding (that hint is given only when the target database is the multibyte one).
    It should name the encoding as the likely cause (the manifest's source database, or the v4 algorithm in a
    UTF8 target, makes it one), never call an intact archive altered."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day

    db, spec = _euc_jp_day(pg, s3, encoded_db, bucket, temp_dir)
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    said = str(caught.value)
    assert "encoding" in said and "altered" not in said, said


