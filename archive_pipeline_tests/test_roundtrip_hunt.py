"""Round-trip hunt: restore / compare / verify / prune / CLI with hostile inputs and faults.
Each test asserts the correct behaviour and fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import fingerprint
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day, restore_days
from archive_pipeline.core.source import describe_table

DAY = dt.date(2024, 3, 10)


def _fp(conn, qualified):
    t = describe_table(conn, qualified, None)
    return fingerprint.compute(conn, t.identifier, t.columns)


def test_naming_mode_range_restores_into_one_new_table(conn, schema, store, temp_dir):
    """Two day tables of a naming-mode table (no day_column) restored with --from/--to into one new table:
    the second day goes into the table the first created, and must be checked as that day's rows only."""
    for i in range(2):
        day = DAY + dt.timedelta(days=i)
        t = sql.Identifier(schema, f"clicks_{day:%Y%m%d}")
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, url text)").format(t))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, '/p/' || g FROM generate_series({}, {}) g").format(
            t, sql.Literal(i * 100 + 1), sql.Literal(i * 100 + 10)))
    spec = TableSpec(name=f"{schema}.clicks", start_date=DAY, format="csv", compression="gzip",
                     partitioning={"mode": "naming", "pattern": "clicks_%Y%m%d"})
    for i in range(2):
        archive_partition(conn, spec, DAY + dt.timedelta(days=i), store, temp_dir=temp_dir)
    restored = restore_days(conn, store, spec, DAY, DAY + dt.timedelta(days=1), into="new",
                            target=f"{schema}.clicks_back", temp_dir=temp_dir)
    assert [r.rows for r in restored.results] == [10, 10]
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(schema, "clicks_back"))).fetchone()[0] == 20


def test_prune_dry_run_says_what_the_real_run_does_with_foreign_keys(conn, schema, store):
    """A delete the real run refuses (foreign keys reference the table) must not be listed by the dry run
    as 'would remove'."""
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date)").format(sql.Identifier(schema, "parent")))
    conn.execute(sql.SQL("CREATE TABLE {} (pid int REFERENCES {} ON DELETE CASCADE)").format(
        sql.Identifier(schema, "child"), sql.Identifier(schema, "parent")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10')").format(sql.Identifier(schema, "parent")))
    spec = TableSpec(name=f"{schema}.parent", day_column="at", start_date=DAY,
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store)
    with pytest.raises(RemovalRefused, match="foreign keys"):
        remove_day(conn, spec, DAY, store)
    with pytest.raises(RemovalRefused, match="foreign keys"):
        remove_day(conn, spec, DAY, store, dry_run=True)


def test_prune_dry_run_says_what_the_real_run_does_for_a_lone_naming_table(conn, schema, store):
    """Naming mode, action detach, a day table that inherits from nothing: the real run refuses ('use
    retention action drop'); the dry run must not promise to detach it."""
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(schema, "log_20240310")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(sql.Identifier(schema, "log_20240310")))
    spec = TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                     retention={"keep_days": 1, "action": "detach"})
    archive_partition(conn, spec, DAY, store)
    with pytest.raises(RemovalRefused, match="inherits from no table"):
        remove_day(conn, spec, DAY, store)
    with pytest.raises(RemovalRefused, match="inherits from no table"):
        remove_day(conn, spec, DAY, store, dry_run=True)


# --- command line -------------------------------------------------------------------------------------

from archive_pipeline_tests.test_cli import ROWS, cli, cli_json, days, edit_config, setup  # noqa: E402,F401 - fixtures


def _with_retention(env, action="drop", keep_days=1):
    edit_config(env, {"retention": {"keep_days": keep_days, "action": action}})


def test_verify_deep_of_a_pruned_day_is_not_a_failure(setup, conn, days):
    """After prune removed a proven day, `verify --deep` of that day must not report the intact archive
    as FAILED because the source (on purpose) no longer has the rows."""
    env, spec = setup
    _with_retention(env)
    day = days[0].isoformat()
    cli_json(env, "archive", "--day", day)
    pruned = cli_json(env, "prune", "--day", day)
    assert [d["status"] for d in pruned["days"]] == ["removed"]
    checked = cli_json(env, "verify", "--deep", "--day", day, code=0)
    assert checked["ok"] is True, checked


def test_compare_sees_rows_of_an_archived_day_in_the_default_partition(conn, schema, store):
    """The day's own partition was dropped (e.g. by retention) and a late row of that day landed in the
    DEFAULT partition: the source holds a row the archive lacks, so compare must not call the day
    'not-in-source' (which is not a difference and exits 0)."""
    from archive_pipeline.core import plan
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(conn, schema, [("ev_20240310", "2024-03-10", "2024-03-11"),
                                            ("ev_20240311", "2024-03-11", "2024-03-12")])
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
        sql.Identifier(schema, "ev_default"), sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00' FROM generate_series(1, 20) g").format(
        sql.Identifier(schema, "ev")))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": "declarative"})
    archive_partition(conn, spec, DAY, store)
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "ev_20240310")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (999, '2024-03-10 13:00+00')").format(sql.Identifier(schema, "ev")))
    [c] = plan.compare_days(conn, spec, store, [DAY])
    assert c.differs, c


def test_restore_that_loses_the_database_exits_3_not_1(setup, conn, days):
    """The source connection dies in the middle of a restore (the server terminates the backend): exit 3
    ('the database cannot be reached'), retryable, like every other command; not 1 ('a day failed')."""
    env, spec = setup
    schema, day = spec.schema_name, days[1]
    cli_json(env, "archive", "--day", day.isoformat())
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "back"),
                                                              sql.Identifier(schema, "events")))
    conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); RETURN NEW; END $$").format(
        sql.Identifier(schema, "die")))
    conn.execute(sql.SQL("CREATE TRIGGER die BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
        sql.Identifier(schema, "back"), sql.Identifier(schema, "die")))
    done = cli(env, "restore", "--day", day.isoformat(), "--into", "existing", "--target", f"{schema}.back", "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 3 and answer["retryable"] is True, (done.returncode, answer)


def test_verify_download_goes_on_after_a_day_whose_download_fails(setup, s3, days):
    """The store answers 503 to every GET of the first day's object: that day proves nothing either way,
    but the other days must still be checked and reported ('the other days still run'), and the failure
    must be retryable."""
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    env, spec = setup
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=rf"/{days[0]}\.jsonl\.zst$", action="error", status=503, times=None))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "verify", "--download", "--from",
                   days[0].isoformat(), "--to", days[1].isoformat(), "--json")
    answer = json.loads(done.stdout)
    assert done.returncode in (1, 3) and "days" in answer, (done.returncode, answer)
    assert [d["day"] for d in answer["days"]] == [days[0].isoformat(), days[1].isoformat()], answer
    assert answer["days"][1]["ok"] is True


def test_prune_does_not_call_a_restored_day_already_removed(conn, schema, store):
    """A day dropped by retention and then restored into the original table holds its rows again: a
    later removal must not report it as 'already removed' while leaving every row in the source
    (it should remove it again once proven, or refuse saying why)."""
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(conn, schema, [("ev_20240310", "2024-03-10", "2024-03-11")])
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00' FROM generate_series(1, 20) g").format(
        sql.Identifier(schema, "ev")))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 20
    assert restore_day(conn, store, spec, DAY, into="original").rows == 20
    try:
        again = remove_day(conn, spec, DAY, store)
    except RemovalRefused:
        return  # refused, saying why: acceptable
    left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ev"))).fetchone()[0]
    assert not (again.already_removed and left), (again, left)


def test_restore_json_lists_the_days_it_committed_before_a_day_failed(setup, conn, days):
    """--from/--to: the first day is restored and committed, the second fails (its rows exist). The days
    before the failure 'stay restored' (README), so --json must say which ones, or a script re-running the
    range cannot know the first day is already in (and fails on it with on_conflict=fail)."""
    env, spec = setup
    schema = spec.schema_name
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    cli_json(env, "restore", "--day", days[1].isoformat(), "--into", "new", "--target", f"{schema}.back")
    # without its restore mark the table is the user's: a day of which it holds other rows fails (with the mark,
    # or holding exactly the archived rows, the day would be reported already restored)
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(sql.Identifier(schema, "back")))
    conn.execute(sql.SQL("DELETE FROM {} WHERE ctid = (SELECT min(ctid) FROM {})").format(
        sql.Identifier(schema, "back"), sql.Identifier(schema, "back")))
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[1].isoformat(), "--into", "existing",
               "--target", f"{schema}.back", "--json")
    answer = json.loads(done.stdout)
    restored = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "back"))).fetchone()[0]
    assert done.returncode == 1 and restored == 2 * ROWS - 1  # the first day committed, the second failed
    assert [d["day"] for d in answer.get("days", [])] == [days[0].isoformat()], answer


def test_prune_with_a_damaged_manifest_refuses_that_day_cleanly(setup, conn, s3_client, bucket, days):
    """A due day whose manifest is damaged in the store: prune must refuse that day with a message (exit 1)
    and still handle the other due days, not die with a Python traceback."""
    from archive_pipeline.core.archive import render_key
    from archive_pipeline.core.manifest import manifest_key

    env, spec = setup
    _with_retention(env)  # days[0] and days[1] are due
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[1].isoformat())
    mkey = manifest_key(render_key(spec, spec.period(days[0]), "cli"))
    body = s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read()
    s3_client.put_object(Bucket=bucket, Key=mkey, Body=body.replace(b'"rows": 300', b'"rows": 301'))
    done = cli(env, "prune", "--json")
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    answer = json.loads(done.stdout)
    assert done.returncode == 1
    assert [(d["day"], d["status"]) for d in answer["days"]] == [(days[0].isoformat(), "refused"),
                                                                 (days[1].isoformat(), "removed")], answer
