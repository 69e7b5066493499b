"""Hunting the restore and compare paths as a hostile user and environment would: manifests at the wrong
key, a restoring process killed mid-way, targets that drifted since the day was archived."""

from __future__ import annotations

import datetime as dt
import re
import json
import os
import signal
import subprocess
import sys

import pytest
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.locks import table_day_lock
from archive_pipeline.core.plan import compare_days
from archive_pipeline_tests.helpers import range_partitioned_events
from archive_pipeline.core.restore import ArchiveCorruptError, FingerprintMismatchError, RestoreError, restore_day

DAY = dt.date(2024, 3, 10)
NEXT = dt.date(2024, 3, 11)


def _events(conn, schema: str, fmt: str = "csv") -> TableSpec:
    table = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, n numeric, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 1.5, 'abcd'), "
                         "(2, '2024-03-10 02:00+00', 1.234, 'xy'), (3, '2024-03-10 03:00+00', NULL, NULL), "
                         "(4, '2024-03-11 01:00+00', 2, 'next day')").format(table))
    return TableSpec(name=f"{schema}.events", day_column="at", start_date=DAY, format=fmt, compression="zstd",
                     partitioning={"mode": "column"})


def _count(conn, schema: str, name: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]


def test_a_manifest_copied_to_another_days_key_is_refused_by_restore_and_compare(conn, schema, store, temp_dir,
                                                                                 s3_client, bucket):
    """A manifest is sealed (its own SHA-256) but says nothing of where it lies: one copied from
    2024-03-10's key to 2024-03-11's (a hand "repair" of a missing day) is intact. Was: restoring
    2024-03-11 restored 2024-03-10's rows (into the original table too, under 2024-03-10's lock),
    "proven" by that manifest's fingerprint, and compare compared 2024-03-11's source with them. Now both
    say the manifest is another day's and restore nothing."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    day_key = keys.manifest_key(keys.table_day_key(spec, spec.period(DAY), store.prefix))
    next_key = keys.manifest_key(keys.table_day_key(spec, spec.period(NEXT), store.prefix))
    s3_client.copy_object(Bucket=bucket, Key=next_key, CopySource={"Bucket": bucket, "Key": day_key})
    for into, target in (("new", f"{schema}.restored"), ("original", None)):
        with pytest.raises(RestoreError) as caught:
            restore_day(conn, store, spec, NEXT, into=into, target=target, temp_dir=temp_dir)
        assert "it is the manifest of table" in str(caught.value) and "for 2024-03-10, not of" in str(caught.value)
        assert caught.value.day == "2024-03-11"
    assert _count(conn, schema, "events") == 4
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None
    (found,) = compare_days(conn, spec, store, [NEXT])
    assert found.result == "unreadable" and "for 2024-03-10, not of" in found.note


_CHILD = """
import datetime as dt, json, os, signal, sys
import boto3, psycopg
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
args = json.loads(sys.argv[1])
client = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
seen = {"n": 0}
def kill(**_):
    seen["n"] += 1
    if seen["n"] == args["kill_at_get"]:
        os.kill(os.getpid(), signal.SIGKILL)
client.meta.events.register("after-call.s3.GetObject", kill)
with psycopg.connect(args["dsn"], autocommit=True, application_name=args["name"]) as conn:
    restore_day(conn, S3Store(client, args["bucket"], prefix="archive", part_size=MIN_PART_SIZE),
                TableSpec(**args["spec"]), dt.date.fromisoformat(args["day"]), into="existing",
                target=args["target"], temp_dir=args["temp_dir"])
"""


@pytest.mark.parametrize("stage", ["download", "insert"])
def test_a_restore_killed_mid_way_leaves_no_temp_file_and_no_rows(pg, s3, conn, schema, store, bucket, temp_dir,
                                                                 stage):
    """SIGKILL of the restoring process while the object downloads (just after the store answered its GET)
    or while the load waits on the target: afterwards the target holds none of the day's rows, the temp
    directory is empty, and a retry restores the day. Was: the download's temp file (mkstemp, removed in a
    ``finally``) stayed behind in the temp directory, one per killed restore, as large as the archive."""
    spec = _events(conn, schema, "parquet")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "target"),
                                                           sql.Identifier(schema, "events")))
    name = f"restorehunt-{os.getpid()}-{stage}"
    args = {"dsn": pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "day": DAY.isoformat(), "name": name,
            "spec": {"name": spec.name, "day_column": "at", "start_date": DAY.isoformat(), "format": "parquet",
                     "compression": "zstd", "partitioning": {"mode": "column"}},
            "target": f"{schema}.target", "temp_dir": str(temp_dir),
            "kill_at_get": 2 if stage == "download" else 0}  # the manifest's GET, then the object's
    child_command = [sys.executable, "-c", _CHILD, json.dumps(args)]
    if stage == "download":
        child = subprocess.run(child_command, capture_output=True, text=True, timeout=120)
        assert child.returncode == -signal.SIGKILL, child.stderr
    else:
        with pg.connect() as locker:
            locker.execute("BEGIN")
            locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "target")))
            child = subprocess.Popen(child_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                for _ in range(200_000):  # bounded: a child that never waits fails the test below
                    conn.execute("SELECT pg_stat_clear_snapshot()")
                    if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                    "AND wait_event_type = 'Lock'", (name,)).fetchone()[0] or child.poll() is not None:
                        break
                assert child.poll() is None, child.communicate()
                child.kill()
                child.communicate()
            finally:
                if child.poll() is None:
                    child.kill()
            locker.execute("ROLLBACK")
        for _ in range(200_000):  # the killed client's backend ends once it finds its socket closed
            conn.execute("SELECT pg_stat_clear_snapshot()")
            if not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                (name,)).fetchone()[0]:
                break
    assert os.listdir(temp_dir) == []
    assert _count(conn, schema, "target") == 0
    result = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.target", temp_dir=temp_dir)
    assert (result.rows, result.fingerprint_checked) == (3, True)
    assert os.listdir(temp_dir) == []


_COLUMNS = "id int, at timestamptz, n numeric, v text"
DRIFTS = {  # the target's definition (statements split at ' ;; ') -> (what the error must say, the error's type)
    "numeric(5,2) rounds": ("CREATE TABLE {t} (id int, at timestamptz, n numeric(5,2), v text)",
                            "n: numeric(5,2) here, numeric when archived", FingerprintMismatchError),
    "char(8) pads": ("CREATE TABLE {t} (id int, at timestamptz, n numeric, v char(8))",
                     "v: character(8) here, text when archived", FingerprintMismatchError),
    "timestamp drops the zone": ("CREATE TABLE {t} (id int, at timestamp, n numeric, v text)",
                                 "at: timestamp without time zone here, timestamp with time zone when archived",
                                 FingerprintMismatchError),
    "varchar(3) refuses": ("CREATE TABLE {t} (id int, at timestamptz, n numeric, v varchar(3))",
                           "v: character varying(3) here, text when archived", RestoreError),
    "an enum lacks a label": ("CREATE TYPE {s}.word AS ENUM ('abcd') ;; CREATE TABLE {t} (id int, at timestamptz, "
                              "n numeric, v {s}.word)", "text when archived", RestoreError),
    "a trigger drops a row": (
        f"CREATE TABLE {{t}} ({_COLUMNS}) ;; CREATE FUNCTION {{s}}.drop_two() RETURNS trigger LANGUAGE plpgsql AS "
        "'BEGIN IF NEW.id = 2 THEN RETURN NULL; END IF; RETURN NEW; END' ;; CREATE TRIGGER drop_two BEFORE INSERT "
        "ON {t} FOR EACH ROW EXECUTE FUNCTION {s}.drop_two()", "the load added 2 rows to", FingerprintMismatchError),
    "a trigger changes a value": (
        f"CREATE TABLE {{t}} ({_COLUMNS}) ;; CREATE FUNCTION {{s}}.upper() RETURNS trigger LANGUAGE plpgsql AS "
        "'BEGIN NEW.v := upper(NEW.v); RETURN NEW; END' ;; CREATE TRIGGER shout BEFORE INSERT ON {t} FOR EACH ROW "
        "EXECUTE FUNCTION {s}.upper()", "it has trigger shout on INSERT", FingerprintMismatchError),
    "a partition's trigger drops a row": (
        f"CREATE TABLE {{t}} ({_COLUMNS}) PARTITION BY RANGE (at) ;; CREATE TABLE {{s}}.march PARTITION OF {{t}} "
        "FOR VALUES FROM ('2024-03-01') TO ('2024-04-01') ;; CREATE FUNCTION {s}.drop_two() RETURNS trigger LANGUAGE "
        "plpgsql AS 'BEGIN IF NEW.id = 2 THEN RETURN NULL; END IF; RETURN NEW; END' ;; CREATE TRIGGER drop_two "
        "BEFORE INSERT ON {s}.march FOR EACH ROW EXECUTE FUNCTION {s}.drop_two()", "it has trigger drop_two on INSERT",
        FingerprintMismatchError),
    "a rule swallows INSERTs": (f"CREATE TABLE {{t}} ({_COLUMNS}) ;; CREATE RULE swallow AS ON INSERT TO {{t}} "
                                "DO INSTEAD NOTHING", "it has rule swallow on INSERT", FingerprintMismatchError),
    "the day's partition is missing": (
        f"CREATE TABLE {{t}} ({_COLUMNS}) PARTITION BY RANGE (at) ;; CREATE TABLE {{s}}.january PARTITION OF {{t}} "
        "FOR VALUES FROM ('2024-01-01') TO ('2024-02-01')", "create the target's partition for the day", RestoreError),
    "a foreign key": (f"CREATE TABLE {{s}}.parent (id int PRIMARY KEY) ;; INSERT INTO {{s}}.parent VALUES (1), (2) ;; "
                      f"CREATE TABLE {{t}} ({_COLUMNS}, FOREIGN KEY (id) REFERENCES {{s}}.parent)",
                      "restore the referenced rows first", RestoreError),
    "a view": (f"CREATE TABLE {{s}}.base ({_COLUMNS}) ;; CREATE VIEW {{t}} AS SELECT * FROM {{s}}.base",
               "the target is not a table", RestoreError),
}


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_a_target_that_drifted_since_the_day_was_archived_is_named_as_the_cause(conn, schema, store, temp_dir, drift):
    """A target whose column types are not the archived ones, or whose triggers or rules change or drop rows,
    rounds, pads, shifts, refuses or loses archived values: the restore is refused or rolled back (never
    committed changed), and says which columns, triggers or rules and what to do. Was: a value the target's
    type refuses was an ArchiveCorruptError ("check the object against its manifest (MD5)", which it had
    just matched) with no remedy; a changed value blamed the archive ("altered after it was written"); rows a
    trigger or rule dropped were "the archive holds 2 rows" (it holds 3); a missing partition's remedy was
    "relax the constraint", a foreign key's too; a view's was "report it"."""
    fmt = "jsonl" if "rule" in drift else "csv"  # (COPY fires no rules: JSONL's INSERT does)
    spec = _events(conn, schema, fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    ddl, said, kind = DRIFTS[drift]
    names = {"t": sql.Identifier(schema, "target").as_string(conn), "s": sql.Identifier(schema).as_string(conn)}
    for statement in ddl.split(" ;; "):
        conn.execute(statement.format(**names))
    with pytest.raises(RestoreError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.target", temp_dir=temp_dir)
    error = caught.value
    assert type(error) is kind and not isinstance(error, ArchiveCorruptError)
    assert said in str(error) and error.remedy and (error.table, error.day) == (spec.name, "2024-03-10")
    assert "holds 2 rows" not in str(error)
    assert _count(conn, schema, "target") == 0


def test_a_widened_type_restores_exactly(conn, schema, store, temp_dir):
    """int -> bigint, numeric -> numeric with no limit, text -> varchar without a length: every archived value
    reads back as it printed, so the restore is proven and committed."""
    spec = _events(conn, schema, "parquet")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("CREATE TABLE {} (v varchar, id bigint, n numeric, at timestamptz, extra int DEFAULT 1)")
                 .format(sql.Identifier(schema, "target")))
    result = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.target", temp_dir=temp_dir)
    assert (result.rows, result.fingerprint_checked) == (3, True)
    assert conn.execute(sql.SQL("SELECT id, n::text, v FROM {} ORDER BY id").format(
        sql.Identifier(schema, "target"))).fetchall() == [(1, "1.5", "abcd"), (2, "1.234", "xy"), (3, None, None)]


@pytest.mark.parametrize("into", ["new", "original"])
def test_an_enum_that_lost_a_label_since_the_day_was_archived_is_named_as_the_cause(conn, schema, store, temp_dir,
                                                                                   into):
    """The archived type by name, but not as it was: the enum was re-created without a label an archived row
    holds (another database, or the type re-made). The day is refused, and the error says the type refuses an
    archived value and what to do. Was: ArchiveCorruptError ("check ... the object against its manifest
    (MD5)", which it had just matched), with no remedy."""
    names = {"s": sql.Identifier(schema).as_string(conn)}
    conn.execute("CREATE TYPE {s}.color AS ENUM ('red', 'green')".format(**names))
    conn.execute("CREATE TABLE {s}.paint (id int, at timestamptz, c {s}.color)".format(**names))
    conn.execute("INSERT INTO {s}.paint VALUES (1, '2024-03-10 01:00+00', 'red'), "
                 "(2, '2024-03-10 02:00+00', 'green')".format(**names))
    spec = TableSpec(name=f"{schema}.paint", day_column="at", start_date=DAY, format="jsonl", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute("DROP TABLE {s}.paint".format(**names))
    conn.execute("DROP TYPE {s}.color".format(**names))
    conn.execute("CREATE TYPE {s}.color AS ENUM ('red')".format(**names))
    if into == "original":
        conn.execute("CREATE TABLE {s}.paint (id int, at timestamptz, c {s}.color)".format(**names))
    target = f"{schema}.restored" if into == "new" else None
    with pytest.raises(RestoreError) as caught:
        restore_day(conn, store, spec, DAY, into=into, target=target, temp_dir=temp_dir)
    error = caught.value
    assert not isinstance(error, ArchiveCorruptError)
    assert 'invalid input value for enum' in str(error) and "an enum lacking one of the archived labels" in str(error)
    assert "ALTER TYPE ... ADD VALUE" in error.remedy and (error.table, error.day) == (spec.name, "2024-03-10")
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None


@pytest.mark.parametrize("target", ["pg_temp.restored", "pg_temp_3.restored"])
def test_a_temporary_target_is_refused_by_name(conn, schema, store, temp_dir, target):
    """pg_temp is the restoring session's own schema: a day restored there is gone when the session ends.
    Was: the table was created there and the restore failed at its check with "table 'pg_temp.r' does not
    exist ... check the table's name in the YAML configuration"; now the name is refused up front (the CLI's
    --target uses the same check), saying why."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(RestoreError, match="is a temporary table, which PostgreSQL drops when the restoring session"):
        restore_day(conn, store, spec, DAY, into="new", target=target, temp_dir=temp_dir)


def test_a_day_whose_partition_was_replaced_by_a_wider_one_restores_into_it(conn, schema, store, temp_dir):
    """The day's partition was dropped and the table's partitions laid out anew (one per month): the day's
    recorded bound now overlaps the month's partition. Restoring into the original table loads the day
    through the parent into that partition, proven as ever. Was: "partition ... would overlap partition
    ...", reported as "the server rejected the archiver's SQL ... report it", and nothing restored."""
    s = sql.Identifier(schema)
    range_partitioned_events(conn, schema, [("ev_20240310", "2024-03-10", "2024-03-11")])
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 01:00+00'), (2, '2024-03-10 23:00+00')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": "declarative"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DROP TABLE {}.ev_20240310").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_202403 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-01 00:00+00') "
                         "TO ('2024-04-01 00:00+00')").format(s, s))
    result = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert (result.rows, result.fingerprint_checked, result.created) == (2, True, ())
    assert conn.execute(sql.SQL("SELECT tableoid::regclass::text, id FROM {}.ev ORDER BY id").format(s)).fetchall() == [
        (f"{schema}.ev_202403", 1), (f"{schema}.ev_202403", 2)]


@pytest.mark.parametrize(("archived", "target", "value"), [
    ("double precision", "real", "0.1"),
    ("real", "double precision", "0.1"),
    ("numeric", "double precision", "0.1"),
    ("double precision[]", "real[]", "{0.1,2.5}"),
    ("double precision", "numeric", None),  # numeric holds the float's shortest decimal: restored, proven
])
def test_numbers_read_into_another_binary_floating_point_type_are_refused(conn, schema, store, temp_dir, archived,
                                                                          target, value):
    """0.1 archived as double precision, read into a real column, becomes real's 0.1, which prints "0.1" too
    and so has the archived fingerprint, but is not the archived value (0.1::real = 0.1::float8 is false).
    Was: restored and "proven" (all three directions between numeric, real and double precision). Now such a
    target is refused before loading, naming the column and the remedy."""
    names = {"s": sql.Identifier(schema).as_string(conn)}
    conn.execute(f"CREATE TABLE {{s}}.nums (id int, at timestamptz, x {archived})".format(**names))
    conn.execute("INSERT INTO {s}.nums VALUES (1, '2024-03-10 01:00+00', %s)".format(**names), (value or "0.1",))
    spec = TableSpec(name=f"{schema}.nums", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"CREATE TABLE {{s}}.target (id int, at timestamptz, x {target})".format(**names))
    if value is None:
        result = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.target", temp_dir=temp_dir)
        assert result.fingerprint_checked and _count(conn, schema, "target") == 1
        return
    with pytest.raises(RestoreError, match=f"x: {re.escape(target)} here, {re.escape(archived)} when archived would "
                                           "hold the nearest binary floating-point value") as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.target", temp_dir=temp_dir)
    assert "into='new'" in caught.value.remedy
    assert _count(conn, schema, "target") == 0


@pytest.mark.parametrize("into", ["existing", "original"])
def test_the_archived_table_named_as_an_existing_target_takes_the_archived_tables_lock(pg, conn, schema, store,
                                                                                      temp_dir, into):
    """into='existing' with the archived table itself as the target loads into the same rows as into='original',
    so it must take the same (table, day) lock: else it ran beside an archive, a removal or an 'original' restore
    of the day (two restores each check only their own uncommitted rows: both would commit the day). Was: it took
    the lock of 'restore into <target>' and restored while another run held the day."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE at < '2024-03-11'").format(sql.Identifier(schema, "events")))
    target = spec.name if into == "existing" else None
    with pg.connect() as other, table_day_lock(other, spec.name, spec.period(DAY)):
        with pytest.raises(ArchiveError, match="is being archived, removed or restored by another run"):
            restore_day(conn, store, spec, DAY, into=into, target=target, temp_dir=temp_dir)
    assert _count(conn, schema, "events") == 1
    result = restore_day(conn, store, spec, DAY, into=into, target=target, temp_dir=temp_dir)
    assert (result.rows, result.fingerprint_checked) == (3, True) and _count(conn, schema, "events") == 4


def test_a_skip_restore_of_a_naming_day_through_a_trigger_names_the_trigger(conn, schema, store, temp_dir):
    """A naming-mode day (no day column) restored with on_conflict='skip' into a table whose BEFORE INSERT trigger
    changes values: the rows it wrote are not the archived ones, and the rollback names the trigger (was: only
    "a row with the same key is there with other values", which no row was)."""
    names = {"s": sql.Identifier(schema).as_string(conn)}
    conn.execute("CREATE TABLE {s}.clicks_20240310 (id int PRIMARY KEY, url text)".format(**names))
    conn.execute("INSERT INTO {s}.clicks_20240310 VALUES (1, '/a'), (2, '/b')".format(**names))
    spec = TableSpec(name=f"{schema}.clicks", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "naming", "pattern": "clicks_%Y%m%d"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute("CREATE TABLE {s}.all_clicks (id int PRIMARY KEY, url text)".format(**names))
    conn.execute("CREATE FUNCTION {s}.shout() RETURNS trigger LANGUAGE plpgsql AS "
                 "'BEGIN NEW.url := upper(NEW.url); RETURN NEW; END'".format(**names))
    conn.execute("CREATE TRIGGER shout BEFORE INSERT ON {s}.all_clicks FOR EACH ROW EXECUTE FUNCTION {s}.shout()"
                 .format(**names))
    with pytest.raises(FingerprintMismatchError, match="it has trigger shout on INSERT") as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.all_clicks", on_conflict="skip",
                    temp_dir=temp_dir)
    assert "DISABLE TRIGGER" in caught.value.remedy
    assert _count(conn, schema, "all_clicks") == 0
