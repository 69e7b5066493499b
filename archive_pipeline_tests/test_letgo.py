"""Hunt: the let-the-source-go path (restore, deep verification, compare, removal) under hostile
names, zones, target tables and faults."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.lifecycle import _write_manifest, remove_day, settle_pending_removal
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline_tests.test_exactness import COLUMNS as EDGE_COLUMNS
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.helpers import run_check_evaluations, run_cli

DAY = dt.date(2024, 3, 10)


def _zone_table(conn, schema: str, name: str, zone: str) -> None:
    """A table partitioned by local days of ``zone`` (timestamptz bounds), one row a minute for 3 days."""
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, note text) PARTITION BY RANGE (at)"
                         ).format(table))

    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), ZoneInfo(zone))

    for d in (DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"{name} {d:%Y%m%d}"), table, sql.Literal(midnight(d)),
            sql.Literal(midnight(d + dt.timedelta(days=1)))))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {} + g * interval '1 minute', 'n' || g "
                         "FROM generate_series(0, 3 * 1440 - 1) g").format(
        table, sql.Literal(midnight(DAY - dt.timedelta(days=1)))))


@pytest.mark.parametrize("action", ["drop", "detach", "delete"])
def test_a_day_of_a_zone_s_partitions_removed_and_restored_under_a_foreign_session_zone(conn, schema, store, action):
    name = "Evénts Täble"
    _zone_table(conn, schema, name, "Europe/Berlin")
    conn.execute("SET TimeZone = 'America/New_York'")
    conn.execute("SET DateStyle = 'SQL, DMY'")
    conn.execute("SET IntervalStyle = 'sql_standard'")
    spec = TableSpec(name=f"{schema}.{name}", day_column="at", start_date=DAY - dt.timedelta(days=1),
                     timezone="Europe/Berlin", partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": action})
    result = archive_partition(conn, spec, DAY, store)
    assert result.rows == 1440
    assert deep_verify(conn, store, spec, DAY) == []
    removal = remove_day(conn, spec, DAY, store)
    assert removal.rows == 1440
    if action == "detach":
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, f"{name} {DAY:%Y%m%d}")))
    r = restore_day(conn, store, spec, DAY, into="original")
    assert r.rows == 1440 and r.fingerprint_checked
    [c] = compare_days(conn, spec, store, [DAY])
    assert c.result == "equal", c
    assert deep_verify(conn, store, spec, DAY) == []


HOSTILE = {"TimeZone": "Pacific/Chatham", "DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard",
           "extra_float_digits": "-15", "bytea_output": "escape", "lc_monetary": "C", "xmloption": "document"}


@pytest.fixture
def edge_table(conn, schema):
    conn.execute(sql.SQL("SET search_path = {}, public").format(sql.Identifier(schema)))
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'hap,py \"q\"', '')")
    conn.execute("CREATE TYPE pair AS (x int, y text)")
    conn.execute("CREATE TYPE wrap AS (p pair, arr int[], j jsonb)")
    conn.execute("CREATE DOMAIN intarr AS int[]")
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                              for n, (t, _, _) in EDGE_COLUMNS.items())
    conn.execute(sql.SQL("CREATE TABLE edge (id int, at date, {})").format(cols))
    for row in range(5):
        values = sql.SQL(", ").join(sql.SQL(v[1][row]) for v in EDGE_COLUMNS.values())
        conn.execute(sql.SQL("INSERT INTO edge VALUES ({}, {}, {})").format(sql.Literal(row + 1), sql.Literal(DAY),
                                                                            values))
    for fmt in ("jsonl", "csv", "parquet"):
        keep = [n for n, (_, _, refused) in EDGE_COLUMNS.items() if fmt not in refused and (fmt, n) != ("jsonl", "j")]
        conn.execute(sql.SQL("CREATE TABLE {} AS SELECT id, at, {} FROM edge").format(
            sql.Identifier(f"ok_{fmt}"), sql.SQL(", ").join(map(sql.Identifier, keep))))
    return schema


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_edge_values_prove_restore_and_compare_under_hostile_session_settings(fmt, conn, edge_table, store):
    schema = edge_table
    spec = TableSpec(name=f"{schema}.ok_{fmt}", day_column="at", start_date=DAY, format=fmt,
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store)
    for name, value in HOSTILE.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    assert deep_verify(conn, store, spec, DAY) == []
    r = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back_{fmt}")
    assert r.rows == 5
    [c] = compare_days(conn, spec, store, [DAY])
    assert c.result == "equal", c
    assert remove_day(conn, spec, DAY, store).rows == 5
    r = restore_day(conn, store, spec, DAY, into="original")
    assert r.rows == 5
    [c] = compare_days(conn, spec, store, [DAY])
    assert c.result == "equal", c


def test_jsonl_arrays_of_fixed_length_chars_and_bits_restore_and_prove_whole(conn, schema, store):
    """JSONL restores a one-dimensional array through its array type's input; that type was spelt
    without modifier as format_type(oid, NULL) prints it, "character[]" and "bit[]", which mean
    character(1)[] and bit(1)[]: every element was cut to one character or bit (the fingerprint then
    refused the restore and failed the proof of a correct archive)."""
    table = sql.Identifier(schema, "fixed")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, c char(3)[], b bit(3)[], v varchar(4)[])").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s, '{{101,011}}', '{{abcd}}'), (2, %s, '{{x}}', '{{000}}', "
                         "'{{}}')").format(table), (DAY, '{abc," b ",NULL}', DAY))
    spec = TableSpec(name=f"{schema}.fixed", day_column="at", start_date=DAY, format="jsonl")
    archive_partition(conn, spec, DAY, store)
    assert deep_verify(conn, store, spec, DAY) == []
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back")
    assert restored.rows == 2 and restored.fingerprint_checked
    texts = sql.SQL("SELECT id, c::text, b::text, v::text FROM {} ORDER BY id")
    assert conn.execute(texts.format(sql.Identifier(schema, "back"))).fetchall() == [
        (1, '{abc," b ",NULL}', "{101,011}", "{abcd}"), (2, '{"x  "}', "{000}", "{}")]


def test_a_naming_mode_day_table_detached_by_a_removal_is_already_removed_not_refused_at_every_run(conn, schema,
                                                                                                     store):
    """Naming mode, action detach: the day table keeps its rows and its name (detach only ends its
    inheritance), so the source still shows the day; the next removal of it (every `prune`) proved the
    day again, wrote a pending mark and was refused ('inherits from no table: use drop'), for good."""
    log, day_table = sql.Identifier(schema, "log"), sql.Identifier(schema, "log_20240310")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(day_table))
    spec = TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                     retention={"keep_days": 1, "action": "detach"})
    archived = archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(log)).fetchone()[0] == 0
    done = load_manifest(store, archived.key)
    for dry_run in (True, False):
        again = remove_day(conn, spec, DAY, store, dry_run=dry_run)
        assert again.already_removed and again.rows == 10, dry_run
    assert load_manifest(store, archived.key) == done  # no pending mark written and taken back
    # a mark of such a removal that names no transaction is settled as the removal it was
    pending = {k: v for k, v in done.items() if k != "manifest_sha256"}
    pending["removed"] = {k: v for k, v in done["removed"].items() if k != "xid"} | {"state": "pending"}
    _write_manifest(store, manifest_key(archived.key), pending)
    assert settle_pending_removal(conn, spec, DAY, store).outcome == "completed"
    # attached again, its rows are the parent's again: removed (detached) again after a new proof
    conn.execute(sql.SQL("ALTER TABLE {} INHERIT {}").format(day_table, log))
    assert not remove_day(conn, spec, DAY, store).already_removed
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(log)).fetchone()[0] == 0


@pytest.mark.parametrize("mode", ["column", "naming"])
def test_delete_never_takes_rows_of_an_inheriting_table_whose_own_columns_the_archive_lacks(conn, schema, store,
                                                                                           mode):
    """A table another inherits from (``CREATE TABLE special (extra text) INHERITS (events)``): the
    archive of the day holds the child's rows with the parent's columns only (SELECT * FROM the table),
    and DELETE FROM the table deletes the child's rows too, their own columns with them, which no
    archive holds: retention's delete must refuse, naming the table, and delete nothing."""
    from archive_pipeline.core.lifecycle import RemovalRefused

    name = "ev" if mode == "column" else "ev_20240310"
    parent, child = sql.Identifier(schema, name), sql.Identifier(schema, "special")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(parent))
    conn.execute(sql.SQL("CREATE TABLE {} (extra text) INHERITS ({})").format(child, parent))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(parent), (DAY,))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, %s, 'kept nowhere else')").format(child), (DAY,))
    naming = {"partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}} if mode == "naming" else {}
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY,
                     retention={"keep_days": 1, "action": "delete"}, **naming)
    assert archive_partition(conn, spec, DAY, store).rows == 2
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused, match=rf"{schema}\.special \(columns extra\)"):
            remove_day(conn, spec, DAY, store, dry_run=dry_run)
    assert conn.execute(sql.SQL("SELECT extra FROM {}").format(child)).fetchall() == [("kept nowhere else",)]
    # without rows of the day in such a table, the day is removed
    conn.execute(sql.SQL("UPDATE {} SET at = at + 1").format(child))
    archive_partition(conn, spec, DAY, store, overwrite=True)
    assert remove_day(conn, spec, DAY, store).rows == 1
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(child)).fetchone()[0] == 1


def test_a_removal_or_restore_on_a_connection_outside_autocommit_is_refused_before_anything(pg, conn, schema, store):
    """On a connection not in autocommit mode, the first statement opens a transaction, and the
    removal's own transaction is only a savepoint in it: the 'done' mark was written while the detach or
    drop was not committed (and its ACCESS EXCLUSIVE locks held until the caller commits, if ever);
    rolled back, the manifest says removed while every row is in the source. Likewise a restore reported
    rows that the caller's rollback then took away. Both refuse such a connection up front."""
    import psycopg

    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=20, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})
    archived = archive_partition(conn, spec, DAY, store)
    with psycopg.connect(pg.dsn) as manual:
        with pytest.raises(ValueError, match="autocommit"):
            remove_day(manual, spec, DAY, store)
        with pytest.raises(ValueError, match="autocommit"):
            settle_pending_removal(manual, spec, DAY, store)
        with pytest.raises(ValueError, match="autocommit"):
            restore_day(manual, store, spec, DAY, into="new", target=f"{schema}.back")
        manual.rollback()
    assert "removed" not in load_manifest(store, archived.key)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))).fetchone()[0] == 20


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_domain_over_char_n_is_proven_with_its_trailing_blanks(fmt, conn, schema, store):
    """The CSV proof reads a domain column as the domain (its constraints as they are now) and hashed
    it as ``::text``, which strips a char(n)'s trailing blanks, while the source's side hashes char(n)
    by its output, blanks and all: every CSV archive of a table with such a column failed its proof
    (and so was never removed), though it was exact. Changed values are still told apart."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE DOMAIN {s}.code AS char(5) CHECK (VALUE <> 'bad'); "
                         "CREATE DOMAIN {s}.codes AS char(5)[]").format(s=s))
    table = sql.Identifier(schema, "coded")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, c {s}.code, ca {s}.code[], cs {s}.codes)").format(
        table, s=s))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'ab', ARRAY['x', NULL]::{s}.code[], '{{\"y \"}}'), "
                         "(2, %s, NULL, NULL, NULL), (3, %s, '', '{{}}', '{{}}')").format(table, s=s), (DAY,) * 3)
    spec = TableSpec(name=f"{schema}.coded", day_column="at", start_date=DAY, format=fmt)
    archive_partition(conn, spec, DAY, store)
    assert deep_verify(conn, store, spec, DAY) == []
    conn.execute(sql.SQL("UPDATE {} SET c = 'abc' WHERE id = 1").format(table))
    assert any(p.startswith("first difference: ") for p in deep_verify(conn, store, spec, DAY))


# ---- a removal or restore killed between two of its steps -------------------------------------------------

def _child(args: dict) -> None:
    """Run in a child process: remove or restore one day, SIGKILLing itself at the chosen S3 request
    (botocore's event hooks, the test's instrument) or right after the chosen SQL statement starts."""
    import psycopg

    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.archive_child import killing_client

    store = S3Store(killing_client(args), args["bucket"], prefix="archive", part_size=MIN_PART_SIZE)
    spec = TableSpec(**args["spec"])
    with psycopg.connect(args["dsn"], autocommit=True, application_name=args["name"]) as conn:
        if args["do"] == "remove":
            remove_day(conn, spec, dt.date.fromisoformat(args["day"]), store)
        else:
            restore_day(conn, store, spec, dt.date.fromisoformat(args["day"]), into=args["into"],
                        target=args.get("target"))


def _killed(pg, s3, bucket, conn, args: dict) -> None:
    name = f"letgo_child_{os.getpid()}"
    child = subprocess.run([sys.executable, "-m", "archive_pipeline_tests.test_letgo",
                            json.dumps({"dsn": pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "name": name,
                                        **args})], capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, f"kill point {args['kill']} was not reached: {child.stdout}{child.stderr}"
    # the killed client's backend ends its transaction (and lets its locks go) when it sees the socket close
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
    while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()[0]:
        conn.execute("SELECT pg_stat_clear_snapshot()")


REMOVAL_KILL_POINTS = {  # kill point: (rows left in the source, the manifest's removal state)
    ("after-call", "PutObject", 1): (200, "pending"),  # the pending mark written, the removal not committed
    ("before-call", "PutObject", 2): (0, "pending"),  # committed, not yet marked done
}


@pytest.mark.parametrize("action", ["drop", "delete"])
def test_a_removal_killed_between_two_steps_loses_nothing_and_is_completed(pg, s3, conn, schema, store, bucket,
                                                                           s3_client, action):
    """SIGKILL of the removing process between its steps (pending mark written; removal committed but not
    yet marked done): the day's rows are either all in the source or all gone with the manifest marked;
    the next removal finishes the job, and the archive restores the day into its table."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=200, schema=schema)
    spec = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
            "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": action}}
    table_spec = TableSpec(**spec)
    archived = archive_partition(conn, table_spec, DAY, store)
    count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))
    for point in REMOVAL_KILL_POINTS:
        _killed(pg, s3, bucket, conn, {"do": "remove", "spec": spec, "day": DAY.isoformat(), "kill": list(point)})
        rows = conn.execute(count).fetchone()[0]
        state = (load_manifest(store, archived.key).get("removed") or {}).get("state")
        assert (rows, state) == REMOVAL_KILL_POINTS[point], point
        removal = remove_day(conn, table_spec, DAY, store)
        assert removal.rows == 200 and conn.execute(count).fetchone()[0] == 0, point
        assert load_manifest(store, archived.key)["removed"]["state"] == "done", point
        assert deep_verify(conn, store, table_spec, DAY) == [], point
        restored = restore_day(conn, store, table_spec, DAY, into="original")
        assert restored.rows == 200 and conn.execute(count).fetchone()[0] == 200, point


def test_a_restore_killed_while_loading_leaves_nothing_and_runs_again(pg, s3, conn, schema, store, bucket):
    """SIGKILL of a restore into the original table while it loads (the day's dropped partition already
    re-created in its transaction): no partition, no row and no temporary table is left, the table-day
    lock goes with the session, and the restore then runs again whole."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    spec = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
            "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": "drop"}}
    table_spec = TableSpec(**spec)
    archive_partition(conn, table_spec, DAY, store)
    remove_day(conn, table_spec, DAY, store)
    events = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "IF NEW.id = 1 THEN PERFORM pg_sleep(60); END IF; RETURN NEW; END $$").format(
        sql.Identifier(schema, "slow")))
    conn.execute(sql.SQL("CREATE TRIGGER slow BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
        events, sql.Identifier(schema, "slow")))
    name = f"letgo_restore_{os.getpid()}"
    child = subprocess.Popen([sys.executable, "-m", "archive_pipeline_tests.test_letgo", json.dumps(
        {"dsn": pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "name": name, "do": "restore",
         "into": "original", "spec": spec, "day": DAY.isoformat()})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                               "AND wait_event = 'PgSleep'", (name,)).fetchone()[0]:
            assert child.poll() is None, child.communicate()
            conn.execute("SELECT pg_stat_clear_snapshot()")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stdout.close()
        child.stderr.close()
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
    while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()[0]:
        conn.execute("SELECT pg_stat_clear_snapshot()")
    assert conn.execute("SELECT to_regclass(%s)", (f'"{schema}".events_20240310',)).fetchone()[0] is None
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(events)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'archive_restore_stage%%' "
                        "OR relname LIKE 'archive_pipeline_verify%%'").fetchone()[0] == 0
    conn.execute(sql.SQL("DROP TRIGGER slow ON {}").format(events))
    assert restore_day(conn, store, table_spec, DAY, into="original").rows == 50
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(events)).fetchone()[0] == 50


# ---- the command line with ARCHIVE_PG_DSN on a hot standby ---------------------------------------------------

@pytest.fixture(scope="module")
def standby(pg):
    from archive_pipeline.local.local_stack import start_replica

    server = start_replica(pg)
    yield server
    server.stop()


def _cli(env: dict[str, str], *args: str, code: int = 0, process: bool = False) -> dict:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    done = run_cli([*args, "--json"], env, timeout=120, process=process or None)
    assert done.returncode == code, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_the_command_line_on_a_standby_proves_compares_prunes_and_restores_through_the_primary(
        pg, standby, conn, schema, s3, bucket, store, tmp_path):
    """ARCHIVE_PG_DSN on a hot standby (the README's setup for sparing the primary) with
    ARCHIVE_PG_PRIMARY_DSN naming the primary: the command line read only ARCHIVE_PG_DSN, so verify
    --deep and compare --rows could not load the archive anywhere ("not checked", naming a scratch
    database it has no setting for), prune refused every day ("configure the primary's connection")
    and restore failed on the read-only standby."""
    import yaml

    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay

    day = utc_today() - dt.timedelta(days=3)
    create_sample_events(conn, [day], rows_per_day=100, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(),
             "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": "drop"}}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    spec = TableSpec(**table)
    archived = archive_partition(conn, spec, day, store)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=standby.dsn, ARCHIVE_PG_PRIMARY_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing")
    wait_for_replay(pg, standby)
    when = ("--day", day.isoformat())
    verified = _cli(env, "verify", "--deep", *when)
    assert [(d["ok"], d["checked"]) for d in verified["days"]] == [(True, "deep")], verified
    events = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("UPDATE {} SET user_id = -1 WHERE id = (SELECT min(id) FROM {})").format(events, events))
    wait_for_replay(pg, standby)
    compared = _cli(env, "compare", "--rows", *when, code=1)["days"][0]
    assert compared["result"] == "differs"
    assert any(line.startswith("first difference: ") for line in compared["differences"]), compared
    conn.execute(sql.SQL("UPDATE {} SET user_id = 0 WHERE user_id = -1").format(events))
    assert deep_verify(conn, store, spec, day) != []  # the sample's user_id was not 0: the day stays changed
    archive_partition(conn, spec, day, store, overwrite=True)
    wait_for_replay(pg, standby)
    pruned = _cli(env, "prune", *when)
    assert [(d["status"], d["rows"]) for d in pruned["days"]] == [("removed", 100)], pruned
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(events)).fetchone()[0] == 0
    restored = _cli(env, "restore", "--into", "original", *when)
    assert [d["rows"] for d in restored["days"]] == [100], restored
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(events)).fetchone()[0] == 100
    assert load_manifest(store, archived.key)["removed"]["state"] == "done"


def test_a_deep_checked_table_archived_from_a_standby_is_proven_through_the_primary(pg, standby, conn, schema,
                                                                                     archive_env, monkeypatch):
    """deep_check: true on a table whose archive runs read a hot standby (ARCHIVE_PG_DSN), with the
    primary in ARCHIVE_PG_PRIMARY_DSN: the blocking deep check loaded the archive into a temporary table
    on the standby, which allows none, so every run failed 'not verified' after archiving. The check
    loads it on the primary, as the removal's proof does, and fails only on a real difference."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay

    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], rows_per_day=50, schema=schema)
    wait_for_replay(pg, standby)
    monkeypatch.setenv("ARCHIVE_PG_DSN", standby.dsn)
    monkeypatch.setenv("ARCHIVE_PG_PRIMARY_DSN", pg.dsn)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "partitioning": {"mode": "declarative"}, "deep_check": True}]})
    defs = build_definitions(config, check_source=False)
    with instance_for_test() as instance:
        job = defs.resolve_job_def(f"Archive_{schema}_events")
        done = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        assert done.success, [e.message for e in done.all_events if e.is_failure]
        [evaluation] = run_check_evaluations(instance, done.run_id)
        assert evaluation.passed and "content proven" in evaluation.description, evaluation.description


def _hooked_store(s3, bucket: str, operation: str, nth: int, action) -> "S3Store":
    """A store whose ``nth`` ``operation`` request first runs ``action`` (what another process does at
    that moment); botocore's event hooks are the test's instrument, the removal runs unchanged."""
    import boto3

    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store

    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    seen = {"n": 0}

    def hook(**_: object) -> None:
        seen["n"] += 1
        if seen["n"] == nth:
            action()

    client.meta.events.register(f"before-call.s3.{operation}", hook)
    return S3Store(client, bucket, prefix="archive", part_size=MIN_PART_SIZE)


def test_an_archive_replaced_from_a_standby_during_a_removal_is_never_overwritten(pg, standby, conn, schema, s3,
                                                                                  bucket, store, s3_client):
    """The table-day lock excludes archive runs only on the server it is taken on: with ARCHIVE_PG_DSN on
    a standby, an overwrite of the day there can commit while the removal runs on the primary, retiring
    (deleting) the proven object. The removal wrote its pending mark from the proven manifest over the
    new one, dropped the day and marked done a manifest naming the deleted object: the day's rows were
    nowhere. It now refuses (retryable) when the manifest changed since the proof, and the next run
    proves and removes the new archive."""
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay

    create_sample_events(conn, [DAY], rows_per_day=100, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})
    first = archive_partition(conn, spec, DAY, store)
    proven = load_manifest(store, first.key)
    wait_for_replay(pg, standby)
    with standby.connect() as replica:
        def overwrite_from_the_standby() -> None:
            archive_partition(replica, spec, DAY, store, overwrite=True)

        # GetObject 1: the manifest read under the lock; 2: read again just before the pending mark
        hooked = _hooked_store(s3, bucket, "GetObject", 2, overwrite_from_the_standby)
        from archive_pipeline.core.lifecycle import RemovalRefused

        with pytest.raises(RemovalRefused, match="replaced since it was proven") as refused:
            remove_day(conn, spec, DAY, hooked, proven=proven["manifest_sha256"])
        assert refused.value.retryable
    count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))
    assert conn.execute(count).fetchone()[0] == 100
    replaced = load_manifest(store, first.key)
    assert replaced["object"]["key"] != first.key and "removed" not in replaced
    assert remove_day(conn, spec, DAY, store).rows == 100 and conn.execute(count).fetchone()[0] == 0
    assert restore_day(conn, store, spec, DAY, into="original").rows == 100


def test_a_removal_on_the_primary_during_an_overwrite_from_the_standby_is_never_overwritten(pg, standby, conn, schema,
                                                                                          store, s3_client, bucket):
    """The archive side of the race above: the standby's overwrite read the manifest before the primary's
    removal marked it, and its commit wrote over the 'done' mark, losing the record that the source no
    longer holds the rows (and with it the refusal to replace the only copy with an empty day). The run
    now reads the manifest again before its commit: changed, it fails retryable, replacing nothing."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.manifest import removal_state
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay

    create_sample_events(conn, [DAY], rows_per_day=3_000, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY, chunk_size=500,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "delete"})
    first = archive_partition(conn, spec, DAY, store)
    wait_for_replay(pg, standby)
    removals = []

    def remove_on_the_primary(rows: int, size: int) -> None:
        if not removals:
            removals.append(remove_day(conn, spec, DAY, store))

    with standby.connect() as replica, pytest.raises(ArchiveError, match="changed while this run archived") as caught:
        archive_partition(replica, spec, DAY, store, overwrite=True, progress=remove_on_the_primary, progress_every=0)
    assert caught.value.retryable and removals and removals[0].rows == 3_000
    manifest = load_manifest(store, first.key)
    assert removal_state(manifest) == "done" and manifest["object"]["key"] == first.key
    listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert sorted(listed) == sorted([first.key, manifest_key(first.key)])  # the new generation was withdrawn
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert deep_verify(conn, store, spec, DAY) == []  # the archive is still the removed rows' only, whole copy
    assert restore_day(conn, store, spec, DAY, into="original").rows == 3_000


@pytest.mark.parametrize("same_rows", [True, False])
def test_an_archive_replaced_after_the_pending_mark_is_marked_done_only_if_it_holds_the_removed_rows(
        conn, schema, s3, bucket, store, s3_client, same_rows):
    """The manifest replaced between the pending mark and the 'done' mark (an archive run on another
    server that read the day before the mark): the done mark went over it from the proven manifest. Now
    a replacement holding exactly the removed rows (same fingerprint) is marked done itself; any other
    is left as it is, and the removal says so (not retryable)."""
    from archive_pipeline.core.lifecycle import RemovalNotRecorded
    from archive_pipeline.core.manifest import encode_manifest
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=30, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "delete"})
    archived = archive_partition(conn, spec, DAY, store)
    proven = load_manifest(store, archived.key)
    other = {k: v for k, v in proven.items() if k != "manifest_sha256"} | {"archiver": {"name": "elsewhere"}}
    if not same_rows:
        other["fingerprint"] = other["fingerprint"].rsplit(":", 1)[0] + ":1"

    def replace() -> None:
        s3_client.put_object(Bucket=bucket, Key=manifest_key(archived.key), Body=encode_manifest(other))

    # GetObject 1: the manifest under the lock; 2: again before the pending mark; 3: after the COMMIT (the
    # mark's ETag is our MD5: it is not read back)
    hooked = _hooked_store(s3, bucket, "GetObject", 3, replace)
    if same_rows:
        assert remove_day(conn, spec, DAY, hooked, proven=proven["manifest_sha256"]).rows == 30
        now = load_manifest(store, archived.key)
        assert now["archiver"] == {"name": "elsewhere"} and now["removed"]["state"] == "done"
    else:
        with pytest.raises(RemovalNotRecorded, match="replaced meanwhile by one that does not hold those rows"):
            remove_day(conn, spec, DAY, hooked, proven=proven["manifest_sha256"])
        now = load_manifest(store, archived.key)
        assert now["archiver"] == {"name": "elsewhere"} and "removed" not in now


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
