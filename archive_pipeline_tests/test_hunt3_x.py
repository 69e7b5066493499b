"""Hunt 3 (x): the changes made today (67e7685..e49fe17): the restore mark, the prune's pending marks, the
listing checks, the membership check of hold_day, the xml/circle refusal, the sensor's days in flight."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests import test_hunt_cli as hunt_cli
from archive_pipeline_tests.test_cli import days, setup  # noqa: F401 - fixtures

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]


def small_table(conn, schema: str, name: str = "ev", days=DAYS, rows: int = 30) -> None:
    hunt_cli.small_table(conn, schema, name, days, rows)


def archived(conn, tables: list[dict], s3_client, bucket: str, days=DAYS):
    specs = parse_config({"tables": tables}).tables
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    for spec in specs:
        for day in days:
            archive_partition(conn, spec, day, store)
    return specs, store


def rows_of(conn, schema: str, name: str) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT id, at, note FROM {} ORDER BY id").format(
        sql.Identifier(schema, name))).fetchall()


@pytest.fixture
def role(pg, conn, schema):
    """A login role (no superuser, no ownership) the test grants what it needs; dropped afterwards."""
    name = f"{schema}_r"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-x'").format(sql.Identifier(name)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def connect_as(pg, role: str) -> psycopg.Connection:
    info = psycopg.conninfo.conninfo_to_dict(pg.dsn)
    info.update(user=role, password="pw-x")
    return psycopg.connect(psycopg.conninfo.make_conninfo(**info), autocommit=True)


# --- the restore mark ------------------------------------------------------------------------------------

def test_a_role_with_insert_and_select_restores_into_a_table_an_earlier_restore_created(
        pg, conn, schema, s3_client, bucket, role):
    """An admin restores D1 into a new table (`--into new --target restore.back`) and hands the rest to an
    operator's role, granted what the README and the restore's own remedy name for an existing target
    (USAGE on the schema, INSERT and SELECT on the table). The operator's `restore --day D2 --into existing
    --target restore.back` now fails: the table carries a restore mark, so the restore locks it IN SHARE UPDATE
    EXCLUSIVE MODE (which needs UPDATE, DELETE or TRUNCATE) and rewrites its COMMENT (which needs ownership);
    the message then tells the role to get INSERT and SELECT, which it has. Before the mark, the same restore
    worked. Expected: the day is restored (the mark left as it is, or updated only where the role may)."""
    from archive_pipeline.core.restore import restore_day

    small_table(conn, schema)
    specs, store = archived(conn, [{"name": f"{schema}.ev", "day_column": "at",
                                    "start_date": DAYS[0].isoformat()}], s3_client, bucket)
    target = f"{schema}.back"
    restore_day(conn, store, specs[0], DAYS[0], into="new", target=target)
    conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(sql.Identifier(schema, "back"),
                                                                    sql.Identifier(role)))
    with connect_as(pg, role) as operator:
        result = restore_day(operator, store, specs[0], DAYS[1], into="existing", target=target)
    assert result.inserted == 30
    assert len(rows_of(conn, schema, "back")) == 60


def test_two_restores_of_adjacent_ranges_into_one_new_table_at_once_both_load(
        pg, conn, schema, s3_client, bucket, monkeypatch):
    """Two operators split a big restore in two halves run at once into the same new table (`restore --from D1
    --to D1 --into new --target restore.back` and `--from D2 --to D3 ...`), as the restore mark invites: a
    table a restore created is resumed, not refused, by `--into new`. Neither table exists when both start, so
    each creates it in its first day's transaction; the second's CREATE TABLE waits for the first's and then
    fails with PostgreSQL's catalog duplicate key (pg_type_typname_nsp_index), reported as a constraint
    violation. Expected: the second waits for the first (the mark's SHARE UPDATE EXCLUSIVE lock is there for
    that) and loads its days into the table the first created, or fails retryable saying another restore
    created the table meanwhile."""
    from archive_pipeline.core import restore as restore_module
    from archive_pipeline.core.restore import RestoreError, restore_days

    small_table(conn, schema)
    specs, store = archived(conn, [{"name": f"{schema}.ev", "day_column": "at",
                                    "start_date": DAYS[0].isoformat()}], s3_client, bucket)
    target = f"{schema}.back"
    real = restore_module._mark_restored
    first_in, go_on = threading.Event(), threading.Event()

    def held(conn_, relation, table, days):  # the first restore's day, held just before its COMMIT
        if threading.current_thread().name == "first":
            first_in.set()
            go_on.wait(60)
        return real(conn_, relation, table, days)

    monkeypatch.setattr(restore_module, "_mark_restored", held)
    outcome: dict = {}

    def first() -> None:
        with pg.connect() as c:
            c.autocommit = True
            try:
                outcome["first"] = restore_days(c, store, specs[0], DAYS[0], DAYS[0], into="new", target=target)
            except BaseException as exc:  # noqa: BLE001
                outcome["first"] = exc

    thread = threading.Thread(target=first, name="first")
    thread.start()
    try:
        assert first_in.wait(60), outcome
        second_conn = pg.connect()
        second_conn.autocommit = True
        app = second_conn.info.backend_pid
        second: dict = {}

        def run_second() -> None:
            try:
                second["result"] = restore_days(second_conn, store, specs[0], DAYS[1], DAYS[2], into="new",
                                                target=target)
            except BaseException as exc:  # noqa: BLE001
                second["result"] = exc

        other = threading.Thread(target=run_second, name="second")
        other.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and other.is_alive() and not conn.execute(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (app,)).fetchone()[0]:
            time.sleep(0.05)
    finally:
        go_on.set()
        thread.join(60)
    other.join(60)
    second_conn.close()
    assert not isinstance(outcome["first"], BaseException), outcome["first"]
    result = second["result"]
    if isinstance(result, RestoreError):
        assert result.retryable, result
    else:
        assert not isinstance(result, BaseException), result
        assert rows_of(conn, schema, "back") == rows_of(conn, schema, "ev")


def test_a_listed_day_the_target_holds_only_part_of_is_not_reported_already_restored(
        pg, conn, schema, s3_client, bucket):
    """A user restores D1..D3 into a new table, then a cleanup deletes some of D1's rows there by mistake (say
    `DELETE ... WHERE note LIKE 'a%'`). To get them back the user runs the same restore command again, as the
    README says a listed day "whose rows were deleted since" loads again. D1 is reported `already restored`
    with its 30 rows, 0 inserted, and no check at all, while the table holds fewer of them: the mark is taken
    for the day's rows because one of them is left. Expected: a day the target no longer holds whole is not
    reported restored (loaded again, or refused naming the difference)."""
    from archive_pipeline.core.restore import restore_days

    small_table(conn, schema)
    specs, store = archived(conn, [{"name": f"{schema}.ev", "day_column": "at",
                                    "start_date": DAYS[0].isoformat()}], s3_client, bucket)
    target = f"{schema}.back"
    restore_days(conn, store, specs[0], DAYS[0], DAYS[-1], into="new", target=target)
    deleted = conn.execute(sql.SQL("DELETE FROM {} WHERE id < 10").format(sql.Identifier(schema, "back"))).rowcount
    assert deleted == 9
    try:
        again = restore_days(conn, store, specs[0], DAYS[0], DAYS[-1], into="new", target=target)
    except Exception as exc:  # noqa: BLE001 - refused, naming the day: acceptable
        assert DAYS[0].isoformat() in str(exc), exc
        return
    first = again.results[0]
    held = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at >= %s AND at < %s").format(
        sql.Identifier(schema, "back")), (DAYS[0], DAYS[1])).fetchone()[0]
    assert not (first.check.startswith("already restored") and held < first.rows), (first, held)


# --- prune: the listing of the days no longer in the source ----------------------------------------------

def test_cli_prune_whose_listing_of_removed_days_fails_still_removes_the_due_day_in_the_source(
        setup, s3, days, conn):
    """A table with retention whose first days have long been removed (here: ten due days without a
    partition, and one due day still in the source, archived). `prune` now lists the bucket for the manifests
    of the due days no longer in the source (to complete a pending mark). The store throttles that listing
    (503 SlowDown, every attempt). The whole command ends there: no day of any table is removed, not even the
    archived one still in the source, and the error names neither table nor day. Before, prune did not list:
    the due day was removed. Expected, as for a manifest that cannot be read ("said, not passed over"): the
    day in the source is removed, and the days whose marks could not be read are listed as failed,
    retryable (exit 1)."""
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.test_cli import cli, cli_json, edit_config

    env, spec = setup
    edit_config(env, {"start_date": (days[0] - dt.timedelta(days=10)).isoformat(),
                      "retention": {"keep_days": 2, "action": "drop"}})  # days[0] and the ten before are due
    cli_json(env, "archive", "--day", days[0].isoformat())
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="GET", path=r"^/[^/]+/?$", query="list-type", action="error", status=503,
                                code="SlowDown", times=None))
        # (every listing of the command is throttled and retried with backoff: about a minute in all)
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "prune", "--json", timeout=240)
        assert fault.hits >= 1
    left = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= %s AND created_at < %s").format(
        sql.Identifier(spec.schema_name, spec.table_name)), (days[0], days[1])).fetchone()[0]
    assert left == 0, f"the due day still in the source was not removed: {done.stdout}{done.stderr}"


# --- hold_day's membership check ----------------------------------------------------------------------

def test_a_temporary_inheritance_child_of_another_session_does_not_fail_every_archive(
        pg, conn, schema, s3_client, bucket):
    """An application session keeps a scratch table `CREATE TEMP TABLE scratch () INHERITS (app.ev)` open
    (a pattern for staging rows of the table's shape; its rows are that session's alone). PostgreSQL's planner
    never reads another session's temporary children, so the day's rows are the table's own, as before. The new
    membership check finds the temp table among the snapshot's inheritance children, not in the plan (with or
    without the day's filter), and fails the day as 'no longer its child (NO INHERIT)', retryable: every
    archive of the table fails, retried, as long as that session lives. Expected: the day is archived, exactly
    the table's rows."""
    small_table(conn, schema)
    spec = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at",
                                     "start_date": DAYS[0].isoformat()}]}).tables[0]
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    with pg.connect() as app:
        app.autocommit = True
        app.execute(sql.SQL("CREATE TEMP TABLE scratch () INHERITS ({})").format(sql.Identifier(schema, "ev")))
        app.execute("INSERT INTO scratch VALUES (99999, '2024-03-10 12:00+00', 'mine')")
        result = archive_partition(conn, spec, DAYS[0], store)
    assert result.rows == 30


# --- the ARCHIVE_S3_* variables, stripped -------------------------------------------------------------

@pytest.mark.parametrize("key_id,secret", [("AKIAEXAMPLE", "\n"), (" \n", "wJalrXUtnFEMI/K7MDENG")])
@pytest.mark.parametrize("surface", ["cli", "dagster"])
def test_an_s3_key_blank_once_stripped_is_refused_at_load_naming_both_variables(monkeypatch, surface, key_id, secret):
    """A deployment mounts the S3 keys from secret files, one of which is empty but for its newline. Today's
    change strips the white space around ARCHIVE_S3_* values, but the check that both keys are set (or
    neither) still reads them unstripped, so the pair passes it: with the secret blank the CLI then fails every
    command with "lost the object store (PartialCredentialsError): check $ARCHIVE_S3_ENDPOINT_URL and the
    network" (exit 3, the wrong variable), and the code location loads and fails each run; with the key id
    blank the secret is silently dropped and boto3's default chain (an instance role, AWS_* variables) signs
    instead, another identity writing the archives. Expected: a ConfigError at load naming the two variables,
    as for a key set without the other."""
    from archive_pipeline.core.config import ConfigError
    from archive_pipeline.core.environment import store_from_env

    env = {"ARCHIVE_S3_BUCKET": "archive", "ARCHIVE_S3_ENDPOINT_URL": "http://127.0.0.1:9",
           "ARCHIVE_S3_ACCESS_KEY_ID": key_id, "ARCHIVE_S3_SECRET_ACCESS_KEY": secret,
           "ARCHIVE_PG_DSN": "postgresql://archiver@127.0.0.1:9/app"}
    if surface == "cli":
        with pytest.raises(ConfigError, match="ARCHIVE_S3_SECRET_ACCESS_KEY"):
            store_from_env(env, check=False)
    else:
        from archive_pipeline.definitions import require_environment

        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match="ARCHIVE_S3_SECRET_ACCESS_KEY"):
            require_environment("tables.yaml")


@pytest.mark.parametrize("prefix", ["team//archive", "team///archive"])
def test_an_s3_prefix_with_an_empty_part_is_refused_at_load(prefix):
    """ARCHIVE_S3_PREFIX is built by a deployment script as "$BASE/$ENV" with BASE ending in a slash: it is
    `team//archive`. Today's prefix check refuses a '.' or '..' part (tools that read keys as paths resolve
    it, MinIO refuses the key) but passes an empty part, which the same tools collapse (s3fs, `aws s3 sync` to
    a directory and back gives `team/archive/...`, another key) and MinIO refuses the same way (an object
    name holding '//' is XMinioInvalidObjectName): every archive fails at its first upload, or its archives
    are not found where a copy put them. (S3Store strips only the slashes at the ends.) Expected: a
    ConfigError at load naming ARCHIVE_S3_PREFIX."""
    from archive_pipeline.core.config import ConfigError
    from archive_pipeline.core.environment import check_s3_settings

    with pytest.raises(ConfigError, match="ARCHIVE_S3_PREFIX"):
        check_s3_settings({"ARCHIVE_S3_PREFIX": prefix})
