"""Hunt 4, za: adversarial review of the latest product fixes (restore's unique violations, raising hooks...)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.helpers import previous_version_code

DAY = dt.date(2024, 3, 10)


def test_a_unique_violation_in_the_partition_the_restore_recreated_is_not_blamed_on_a_trigger(conn, schema, store,
                                                                                                temp_dir):
    """A user archives a day of ev (partitioned by day, one child a day) and drops the day's partition. Later a
    unique index on (at, note) is added to ev; the day's archived rows have two equal notes. The user restores
    the day into='original': the restore re-creates the day's partition, and the load is refused by the index.
    What happens: the violation is told after the rollback, when the re-created partition no longer exists;
    ``_TREE`` does not hold it, so the error says "a row an INSERT trigger of ev writes into table
    <schema>.ev_20240310 was refused" -- ev has no trigger at all, and the remedy says to disable triggers.
    Expected: the archived rows collide among themselves under the target's constraint (the partition is the
    target's own, one the restore created)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, note text) PARTITION BY RANGE (at); "
                         "CREATE TABLE {s}.ev_20240310 PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-10') "
                         "TO ('2024-03-11'); "
                         "CREATE TABLE {s}.ev_20240311 PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-11') "
                         "TO ('2024-03-12')").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'same'), (2, %s, 'same'), (3, %s, 'other')").format(s),
                 (DAY, DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                     partitioning={"mode": "declarative"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
    conn.execute(sql.SQL("DROP TABLE {}.ev_20240310").format(s))
    conn.execute(sql.SQL("CREATE UNIQUE INDEX ev_note ON {}.ev (at, note)").format(s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    text = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "trigger" not in text.lower(), text
    assert "among themselves" in text, text


def _plain_day(conn, schema: str, store, temp_dir) -> TableSpec:
    """ev (plain), ten rows of DAY archived, then deleted (the mistake a restore repairs)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' FROM generate_series(1, 10) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))
    return spec


def test_a_raising_trigger_of_the_days_partition_is_named(conn, schema, store, temp_dir):
    """A user's day partition ev_20240310 (of ev, partitioned by day) got a BEFORE INSERT trigger ``guard`` that
    raises ("frozen partition"). The user restores the day into='original'. What happens: ``_raising_hooks``
    now looks up only the triggers whose tgrelid is the target ev itself, so the partition's trigger -- the one
    that refused every row -- is not named (before, the target's INSERT hooks, its partitions' included, were).
    Expected: the error names trigger guard as the likely cause, with the remedy to disable it."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, note text) PARTITION BY RANGE (at); "
                         "CREATE TABLE {s}.ev_20240310 PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-10') "
                         "TO ('2024-03-11')").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' FROM generate_series(1, 10) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                     partitioning={"mode": "declarative"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))
    conn.execute(sql.SQL("CREATE FUNCTION {s}.guard() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN RAISE EXCEPTION 'frozen partition'; END $$; "
                         "CREATE TRIGGER guard BEFORE INSERT ON {s}.ev_20240310 FOR EACH ROW "
                         "EXECUTE FUNCTION {s}.guard()").format(s=s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    text = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "trigger guard" in text, text


def test_a_raising_trigger_whose_function_name_is_quoted_with_a_space_is_named(conn, schema, store, temp_dir):
    """A user's ev has a BEFORE INSERT trigger ``guard`` running function "guard rows"() (a quoted name, as
    some tools generate), which raises. The user restores a day into='original'. What happens: the error's
    context reads ``PL/pgSQL function <schema>."guard rows"() line 1 at RAISE``; ``_raising_hooks`` parses
    function names with ``function ([^\\s(]+)\\(``, which cannot match a quoted name holding a space: no
    function found, so no trigger is named (before the change, any function in the context named the target's
    triggers). Expected: trigger guard named as the cause."""
    s = sql.Identifier(schema)
    spec = _plain_day(conn, schema, store, temp_dir)
    conn.execute(sql.SQL("CREATE FUNCTION {s}.\"guard rows\"() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN RAISE EXCEPTION 'no inserts'; END $$; "
                         "CREATE TRIGGER guard BEFORE INSERT ON {s}.ev FOR EACH ROW "
                         "EXECUTE FUNCTION {s}.\"guard rows\"()").format(s=s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    text = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "trigger guard" in text, text


def test_a_check_constraints_function_is_not_blamed_on_a_trigger_whose_function_has_its_name(conn, schema, store,
                                                                                             temp_dir):
    """A user's ev has a CHECK constraint calling ``<schema>_rules.valid(note)``, a function that raises on a
    note it refuses, and an AFTER INSERT trigger ``audit`` running ``<schema>.valid()`` -- another function in
    another schema, merely of the same name -- which does nothing wrong. The archived notes are refused by the
    CHECK's function. What happens: ``_raising_hooks`` compares function names without their schema
    (``p.proname = ANY(...)`` after ``rpartition('.')``), so the error says ev's trigger audit refused the rows
    and tells to disable it, which changes nothing. Expected: no trigger blamed (the function that raised is
    not a trigger's)."""
    s, r = sql.Identifier(schema), sql.Identifier(f"{schema}_rules")
    spec = _plain_day(conn, schema, store, temp_dir)
    conn.execute(sql.SQL("CREATE SCHEMA {r}; "
                         "CREATE FUNCTION {r}.valid(t text) RETURNS boolean LANGUAGE plpgsql AS "
                         "$$ BEGIN IF t = 'n' THEN RAISE EXCEPTION 'note n is retired'; END IF; RETURN true; END $$; "
                         "ALTER TABLE {s}.ev ADD CONSTRAINT ev_note CHECK ({r}.valid(note)) NOT VALID; "
                         "CREATE FUNCTION {s}.valid() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN RETURN NULL; END $$; "
                         "CREATE TRIGGER audit AFTER INSERT ON {s}.ev FOR EACH ROW "
                         "EXECUTE FUNCTION {s}.valid()").format(s=s, r=r))
    try:
        with pytest.raises(ArchiveError) as caught:
            restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(r))
    text = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "trigger audit" not in text, text


_OLD_ARCHIVE = r"""
import datetime as dt, json, sys
import boto3, psycopg
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import S3Store, MIN_PART_SIZE
args = json.loads(sys.argv[1])
client = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
store = S3Store(client, args["bucket"], prefix="archive", part_size=MIN_PART_SIZE)
with psycopg.connect(args["dsn"], autocommit=True) as conn:
    archive_partition(conn, TableSpec(**args["spec"]), dt.date.fromisoformat(args["day"]), store,
                      temp_dir=args["tmp"])
"""


def test_an_altered_older_archive_restored_into_its_own_database_is_not_blamed_on_the_encoding(
        pg, s3, s3_client, conn, schema, bucket, store, temp_dir):
    """A user archived a day with the previous version (a v4 manifest with no ``source.encoding``), in a UTF8
    database. The object and its digests were later rewritten (one row's note changed). The user restores the
    day (into='new') into that very database -- the manifest's source database, same system identifier.
    What happens: since the latest fix every fingerprint mismatch of a manifest without ``source.encoding``
    is told as "the manifest (written by an older version) does not record its source database's encoding:
    where that was a multibyte encoding ... the fingerprint cannot be computed again here; else ...", with the
    remedy "restore into a database of the archived one's encoding" -- though the restore runs in the archived
    database itself, whose encoding is therefore known (verify's ``_archived_encoding`` knows it by the same
    name and system identifier). Before the fix a UTF8 target got the plain verdict. Expected: the archive is
    said to be altered, with no hint of another encoding and no remedy to find another database."""
    import json
    import os
    import subprocess
    import sys

    import zstandard

    from archive_pipeline_tests.helpers import decompress, download, forge_object

    s = sql.Identifier(schema)
    assert conn.info.parameter_status("server_encoding") == "UTF8"
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' || g FROM generate_series(1, 10) g").format(s), (DAY,))
    args = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv"}
    done = subprocess.run([sys.executable, "-c", _OLD_ARCHIVE, json.dumps(
        {"dsn": pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "spec": args,
         "day": DAY.isoformat(), "tmp": str(temp_dir)})], env={**os.environ, "PYTHONPATH": previous_version_code()},
        capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert done.returncode == 0, done.stderr[-3000:]
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    manifest_key = next(k for k in keys if k.endswith(".manifest.json"))
    manifest = json.loads(download(s3_client, bucket, manifest_key))
    assert not manifest["source"].get("encoding") and manifest["fingerprint"].startswith("row-hash-sum-v4")
    key = next(k for k in keys if k.startswith(manifest_key.removesuffix(".manifest.json")) and k != manifest_key)
    body = decompress(download(s3_client, bucket, key), manifest["compression"]).replace(b"n7", b"n8")
    forge_object(s3_client, bucket, key, manifest_key, zstandard.ZstdCompressor().compress(body))
    spec = TableSpec(**args)
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    text = f"{caught.value} remedy: {getattr(caught.value, 'remedy', '')}"
    assert "encoding" not in text, text


def test_a_unique_violation_in_the_new_table_the_restore_created_is_not_blamed_on_a_trigger(conn, schema, store,
                                                                                             temp_dir):
    """A user archives a day of an inheritance parent ev (PRIMARY KEY (id)) whose child ev_old, as inheritance
    allows, holds a row with an id the parent holds too: the day's archive has id 1 twice and its manifest
    records the parent's primary key. The user restores the day into='new' (target back). The new table gets
    that primary key and the load is refused. What happens: the violation is told after the rollback, when
    back -- created by the restore itself -- no longer exists, so ``_TREE`` is empty and the error says "a row
    an INSERT trigger of back writes into table <schema>.back was refused ... disable the target's triggers":
    a brand-new table without any trigger. Expected: the archived rows collide among themselves under the new
    table's key (and no word of a trigger).
    Changed (hunt17 wa): an inheritance parent's primary key is its own rows' alone, so the manifest no longer
    records it (test_hunt17_wa: restore --into new of such a day must succeed); the new table has no key, and the
    restore takes the 3 rows. Should it still fail, no word of a trigger."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int PRIMARY KEY, at date, note text); "
                         "CREATE TABLE {s}.ev_old () INHERITS ({s}.ev)").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'a'), (2, %s, 'b')").format(s), (DAY, DAY))
    conn.execute(sql.SQL("INSERT INTO {}.ev_old VALUES (1, %s, 'c')").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
    try:
        restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    except ArchiveError as exc:
        text = f"{exc} {getattr(exc, 'remedy', '')}"
        assert "trigger" not in text.lower(), text
        pytest.fail(f"an inheritance parent's per-table key was re-created on the new table: {text}")
    assert (restored.rows, restored.fingerprint_checked) == (3, True)


def test_verify_does_not_tell_to_verify_again_a_day_whose_manifest_read_was_refused_for_good(pg, s3, bucket, conn,
                                                                                               schema, store,
                                                                                               tmp_path):
    """An operator runs `archive-pipeline verify --day D --json` with store credentials that may not read the
    manifests (403 AccessDenied). The day's problem rightly says "not checked (not retryable): ... the object store
    refused access ...; not retried: a retry cannot fix this; to fix: grant ... s3:GetObject ...". The day's
    remedy, though (``cli._verify_remedy``: every problem starting "not checked" alike), is "verify the day again
    once the store answers ...: it was not checked" -- the store did answer, and verifying again will be refused
    again, forever. Expected: a non-retryable read failure's remedy is the read error's own (the grant), not to
    wait and verify again."""
    import json as _json
    import subprocess
    import sys

    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.test_hunt_cli import ROOT, make_env, small_table
    from archive_pipeline_tests.test_hunt4_ww import write_config

    small_table(conn, schema, "a", [DAY])
    config = write_config(tmp_path, [{"name": f"{schema}.a", "day_column": "at", "start_date": DAY.isoformat()}])
    assert archive_partition(conn, TableSpec(name=f"{schema}.a", day_column="at", start_date=DAY), DAY, store).rows
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=r"\.manifest\.json$", action="error", status=403,
                        code="AccessDenied", times=None))
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "verify", "--day", DAY.isoformat(),
                               "--json"], env=make_env(pg, proxy.url, bucket, config), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    day = _json.loads(done.stdout)["days"][0]
    assert "not checked (not retryable)" in day["problems"][0], day
    remedy = day.get("remedy", "")
    assert "once the store answers" not in remedy, day
    assert "GetObject" in remedy or "grant" in remedy.lower(), day
