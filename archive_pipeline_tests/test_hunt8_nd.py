"""Hunt 8 (nd): upgrades and mixed versions. Archives, manifests and locks of the version at d5e3cd4 (the start of
the previous session, extracted by helpers.previous_version_code) meet today's code, in a subprocess."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import psycopg
from psycopg import sql

from archive_pipeline_tests.helpers import previous_version_code

OLD = "d5e3cd4"
DAY = dt.date(2024, 3, 10)

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
out = []
with psycopg.connect(args["dsn"], autocommit=True) as conn:
    for op, day in args["ops"]:
        day = dt.date.fromisoformat(day)
        if op == "archive":
            r = archive_partition(conn, spec, day, store, temp_dir=args["tmp"])
            out.append(getattr(r, "status", None) or str(r))
        elif op == "overwrite":
            r = archive_partition(conn, spec, day, store, temp_dir=args["tmp"], overwrite=True)
            out.append(getattr(r, "status", None) or str(r))
        elif op.startswith("restore_new:"):
            from archive_pipeline.core.restore import restore_day
            r = restore_day(conn, store, spec, day, into="new", target=op.split(":", 1)[1], temp_dir=args["tmp"])
            out.append([r.rows, r.fingerprint_checked])
        elif op.startswith("py:"):
            exec(op[3:])
print(json.dumps(out, default=str))
"""


def run_old(pg, s3, bucket, spec: dict, ops, tmp, commit=OLD, dsn=None) -> subprocess.CompletedProcess:
    """Run ``ops`` [(op, day)] with the code of ``commit`` in a subprocess; its outcome, whatever it is."""
    env = {**os.environ, "PYTHONPATH": previous_version_code(commit)}
    args = {"dsn": dsn or pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "spec": spec,
            "ops": [(o, (d or DAY).isoformat()) for o, d in ops], "tmp": str(tmp)}
    return subprocess.run([sys.executable, "-c", _OLD_SCRIPT, json.dumps(args, default=str)], env=env,
                          capture_output=True, text=True, timeout=120, cwd="/tmp")


def _colliding_names(conn, schema: str) -> tuple[str, str]:
    """Two table names whose legacy lock keys (hashtext of ``archive_pipeline:<name>``) are the same."""
    prefix = f"archive_pipeline:{schema}.nd_"
    a, b = conn.execute(
        "SELECT min(g), max(g) FROM generate_series(1, 400000) g GROUP BY pg_catalog.hashtext(%s || g) "
        "HAVING count(*) > 1 LIMIT 1", (prefix,)).fetchone()
    return f"{schema}.nd_{a}", f"{schema}.nd_{b}"


def test_old_run_gets_into_a_day_a_new_run_holds_after_a_colliding_tables_run_ends(
        pg, s3, conn, schema, bucket, store, temp_dir):
    """A rolling upgrade: runs of today's version and of the previous one (legacy lock only: hashtext of the
    name, the day's number) go on at once. Today's run of table X, day D holds its 64-bit key and the legacy
    key, which table Y's name shares (hashtext is 32 bits). Today's run of Y, day D starts: its 64-bit key is
    free, the legacy key is held by a run of this version, so it goes on WITHOUT the legacy key (locks.py
    ``took_legacy`` False). X's run ends and lets the legacy key go. Now a run of the previous version of Y, day D
    starts (a Dagster retry still on the old image): it takes the legacy key, which nobody holds any more, and
    archives Y's day while today's run of Y's day is still working on it: two runs write one table-day at once,
    what the lock exists to prevent (README: "a run of the previous version still going during an upgrade keeps
    this one out of its day"). The old run should be refused ("is being archived ... by another run")."""
    from archive_pipeline.core.locks import table_day_lock

    x, y = _colliding_names(conn, schema)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(sql.Identifier(*y.split("."))))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s FROM generate_series(1, 10) g").format(
        sql.Identifier(*y.split("."))), (DAY,))
    with pg.connect() as conn_x, pg.connect() as conn_y:
        conn_x.autocommit = conn_y.autocommit = True
        with table_day_lock(conn_y, y, DAY):  # today's run of Y, D, while today's run of X, D ...
            pass  # (just checking the setup: Y alone gets both keys)
        with table_day_lock(conn_x, x, DAY):
            y_lock = table_day_lock(conn_y, y, DAY)
            y_lock.__enter__()  # today's run of Y, day D: under way
        try:  # ... X's run has ended; Y's is still working on its day
            done = run_old(pg, s3, bucket, {"name": y, "day_column": "at", "start_date": DAY.isoformat(),
                                            "format": "csv"}, [("archive", DAY)], temp_dir)
            wrote = [o["Key"] for o in store.list_keys("")] if hasattr(store, "list_keys") else []
        finally:
            y_lock.__exit__(None, None, None)
    assert done.returncode != 0 and "being archived" in done.stderr, (
        f"the previous version archived {y} {DAY} while today's run held the day, writing {wrote}")


_OLD_RESTORE_PAUSED = r"""
import json, os, sys, time, boto3, psycopg
from archive_pipeline.core import restore
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import S3Store, MIN_PART_SIZE
a = json.loads(sys.argv[1])
client = boto3.client("s3", endpoint_url=a["endpoint"], region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
store = S3Store(client, a["bucket"], prefix="archive", part_size=MIN_PART_SIZE)
real = restore._marked_days
def paused(*args, **kwargs):  # inside the restore's transaction, its locks held: wait for the test to go on
    found = real(*args, **kwargs)
    open(a["reached"], "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(a["go"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found
restore._marked_days = paused
with psycopg.connect(a["dsn"], autocommit=True) as conn:
    r = restore.restore_day(conn, store, TableSpec(**a["spec"]), a["day"], into="existing", target=a["target"],
                            on_conflict="skip", temp_dir=a["tmp"])
    print(r.rows, r.inserted)
"""


def test_new_run_enters_a_day_an_old_restore_into_the_table_holds(pg, s3, conn, schema, bucket, store, temp_dir):
    """A rolling upgrade: with the previous version, a user restores a day of public table T into T itself
    (``restore --into existing --target T``: the archived table, so the restore takes the table-day lock of T, the
    legacy key, as archiving does). Inside its transaction that restore also holds a transaction-level advisory
    lock of the target (``_marked_days``: pg_advisory_xact_lock of one bigint key, objsubid 1 in pg_locks).
    Meanwhile today's version archives the same day again (overwrite; a removal goes the same way): its 64-bit key
    is free, the legacy key is held, and ``_LEGACY_HOLDER_IS_NEW`` (locks.py) takes any objsubid-1 advisory lock
    of the holder's session for "a run of this version of another table", so it goes on WITHOUT the legacy key,
    archiving the day while the old restore loads rows into it. It should be refused as held by another run."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.errors import ArchiveError

    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s FROM generate_series(1, 10) g", (DAY,))
    args = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv"}
    done = run_old(pg, s3, bucket, args, [("archive", DAY)], temp_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    reached, go = temp_dir.parent / "reached", temp_dir.parent / "go"
    env = {**os.environ, "PYTHONPATH": previous_version_code(OLD)}
    old = subprocess.Popen([sys.executable, "-c", _OLD_RESTORE_PAUSED, json.dumps({
        "dsn": pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "spec": args, "day": DAY.isoformat(),
        "target": f"{schema}.ev", "tmp": str(temp_dir), "reached": str(reached), "go": str(go)})],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/tmp")
    try:
        import time
        deadline = time.monotonic() + 60
        while not reached.exists() and old.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reached.exists(), old.communicate()[1][-2000:]
        from archive_pipeline.core.config import TableSpec
        held = conn.execute(  # the old restore holds the day's legacy key (and a transaction's advisory lock)
            "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted AND pid <> "
            "pg_catalog.pg_backend_pid() AND ((objsubid = 2 AND classid = pg_catalog.hashtext(%s)::oid AND objid = %s)"
            " OR objsubid = 1)", (f"archive_pipeline:{args['name']}", DAY.toordinal())).fetchone()[0]
        assert held == 2, held
        try:
            result = archive_partition(conn, TableSpec(**args), DAY, store, temp_dir=temp_dir, overwrite=True)
        except ArchiveError as exc:
            assert "another run" in str(exc), exc
        else:
            raise AssertionError(f"today's run archived {args['name']} {DAY} (generation {result.generation}) while "
                                 "the previous version's restore into the table held the day")
    finally:
        go.touch()
        out, err = old.communicate(timeout=60)


def test_old_archive_restored_into_a_composite_whose_fields_moved_is_not_proven_with_swapped_fields(
        pg, s3, conn, schema, bucket, store, temp_dir):
    """A user archived a day with the previous version; a column is of a composite type ``pair (a int, b int)``.
    Its manifest has no ``columns[].shape`` (recorded since). Later the type's fields were moved (``ALTER TYPE pair
    DROP ATTRIBUTE a, ADD ATTRIBUTE a int``: now ``(b, a)``). The user restores the day with today's code into a
    new table (``restore --into new``): a composite's text is positional, so the archived ``(1,101)`` (a=1, b=101)
    loads as b=1, a=101, and since the restored composite prints the same text the fingerprint "equals the
    manifest's": the restore reports success, proven, with every value in the other field. (With today's
    manifest the shape check refuses such a target.) Without a recorded shape it should not prove a restore whose
    composite may have changed: refuse it (or warn it cannot be checked) rather than report a swapped load as
    exact; the type's dropped attribute (pg_attribute.attisdropped) shows it was altered."""
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day

    conn.execute(f"CREATE TYPE {schema}.pair AS (a int, b int)")
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, p {schema}.pair)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, ROW(g, 100 + g)::{schema}.pair "
                 "FROM generate_series(1, 3) g", (DAY,))
    args = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv"}
    done = run_old(pg, s3, bucket, args, [("archive", DAY)], temp_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    conn.execute(f"ALTER TYPE {schema}.pair DROP ATTRIBUTE a, ADD ATTRIBUTE a int")
    try:
        restore_day(conn, store, TableSpec(**args), DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    except ArchiveError:
        return  # refused: nothing loaded into the wrong fields
    restored = conn.execute(f"SELECT id, (p).a, (p).b FROM {schema}.back ORDER BY id").fetchall()
    assert restored == [(g, g, 100 + g) for g in (1, 2, 3)], f"restored as proven, fields swapped: {restored}"
