"""Hunt 7 (mj): real PostgreSQL faults during the round-trip operations (restore, compare, verify --deep,
removal, prune, list with the source).

Each fault is real: a backend terminated from another session once pg_stat_activity shows it at a given
statement (made to wait there by a lock another session holds, so the moment is certain).
"""

from __future__ import annotations

import json
import threading
import time

import psycopg
from psycopg import sql

from archive_pipeline_tests.test_cli import ROWS, cli, cli_json, days, edit_config, setup  # noqa: F401 - fixtures


def _terminate_when_waiting(pg, pattern: str, timeout: float = 30.0) -> threading.Event:
    """Start a watcher (its own session) that terminates the first backend it sees waiting on a lock while
    running a query LIKE ``pattern``; the event is set once it did."""
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout
        with pg.connect() as watcher:
            while time.monotonic() < deadline:
                if watcher.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event_type = "
                                   "'Lock' AND query LIKE %s AND pid <> pg_backend_pid()", (pattern,)).fetchone():
                    done.set()
                    return
                time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    return done


def test_prune_that_loses_the_database_exits_3_and_does_not_go_on_with_a_closed_connection(pg, conn, setup, days):
    """A user runs `archive-pipeline prune` over two due days (retention: drop). While the first day's removal
    waits for its ACCESS EXCLUSIVE lock (a report query holds the partition), a DBA's watchdog terminates the
    prune's backend. What happens: prune goes on to the second day on the connection it just lost, reports
    that day "failed: the database connection was lost (... the connection is closed)" as if its removal had
    been tried, and exits 1 ("a check found differences, or a day failed"). What should happen (README, Exit
    codes: 3 "the database ... cannot be reached"; `restore`, `verify`, `compare` and `list` end the command
    on a lost connection with exit 3, retryable): prune ends with exit 3, retryable, naming the day it was
    removing, and leaves the second day alone (not reported as a failed removal). Nothing is removed either
    way: a second prune removes both days."""
    env, spec = setup
    schema = spec.name.split(".")[0]
    edit_config(env, {"retention": {"keep_days": 1, "action": "drop"}})
    first, second = days[0].isoformat(), days[1].isoformat()
    cli_json(env, "archive", "--from", first, "--to", second)
    reader = psycopg.connect(pg.dsn)  # a report's open transaction holds the first day's partition
    try:
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, f"events_{days[0]:%Y%m%d}")))
        killed = _terminate_when_waiting(pg, "LOCK TABLE%ACCESS EXCLUSIVE%")
        done = cli(env, "prune", "--from", first, "--to", second, "--json")
        assert killed.is_set(), done.stdout + done.stderr
    finally:
        reader.close()
    answer = json.loads(done.stdout)
    # nothing was removed
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))).fetchone()[0] \
        == 3 * ROWS
    assert done.returncode == 3 and answer.get("retryable") is True, (done.returncode, done.stdout, done.stderr)
    assert first in done.stdout and second not in [d.get("day") for d in answer.get("days", [])
                                                   if d.get("status") == "failed"], done.stdout
    again = cli_json(env, "prune", "--from", first, "--to", second)
    assert [d["status"] for d in again["days"]] == ["removed", "removed"], again


def _read_only_owner(pg, conn, schema: str, days_: list) -> tuple[str, str]:
    """A password role owning the sample table and its partitions, whose sessions are read-only by default
    (ALTER ROLE ... SET default_transaction_read_only = on: a DBA's safety net for a reporting role); its DSN."""
    role = f"ro_{schema}"
    dsn = pg.create_password_role(role, "mj-read-only")
    conn.execute(sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    for name in ["events", *(f"events_{d:%Y%m%d}" for d in days_)]:
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(schema, name), sql.Identifier(role)))
    conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(role)))
    return role, dsn


def test_a_restore_on_a_read_only_role_exits_2_as_a_configuration_error(pg, conn, setup, days):
    """A user runs `archive-pipeline restore --day D --into new --target s.back` with ARCHIVE_PG_DSN of a role
    whose sessions are read-only by default (default_transaction_read_only = on). The restore is refused at once,
    not retryable, and its message names the setting to change (ALTER ROLE ... RESET
    default_transaction_read_only). What happens: exit 1 ("a check found differences, or a day failed"). What
    should happen (README, Exit codes: 2 "usage or configuration error (the message names the setting or
    variable)"; a restore refused for a missing grant, a permission denied, already exits 2): exit 2.
    Cause: cli.restore decides exit 2 by errors.CONFIGURATION_CAUSES, which lacks the read-only session's
    cause (_READ_ONLY)."""
    env, spec = setup
    schema = spec.name.split(".")[0]
    day = days[0].isoformat()
    cli_json(env, "archive", "--day", day)
    _role, dsn = _read_only_owner(pg, conn, schema, days)
    done = cli(dict(env, ARCHIVE_PG_DSN=dsn), "restore", "--day", day, "--into", "new", "--target", f"{schema}.back",
               "--json")
    answer = json.loads(done.stdout)
    assert answer["retryable"] is False and "default_transaction_read_only" in answer["error"], answer
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.back",)).fetchone()[0] is None
    assert done.returncode == 2 and answer["exit_code"] == 2, (done.returncode, answer)


def test_a_restore_refused_by_a_read_only_role_names_that_role_in_its_remedy(pg, conn, setup, days, store):
    """The same refusal through the API (restore_day on a connection of the read-only role). Its remedy says
    `ALTER ROLE <role> RESET default_transaction_read_only`, the placeholder left in, though the connection's
    user is known (README, Retries and errors: "the role is named where the connection's user is known"; the
    removal and the proof refused on the same role say `ALTER ROLE ro_... RESET ...`). Should: the role's name
    in the statement. Cause: restore_archive's error path builds its remedy from classify() without filling in
    conn.info.user (errors.wrap does that for the others)."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.restore import RestoreError, restore_day

    _env, spec = setup
    schema = spec.name.split(".")[0]
    archive_partition(conn, spec, days[0], store)
    role, dsn = _read_only_owner(pg, conn, schema, days)
    with psycopg.connect(dsn, autocommit=True) as restoring:
        try:
            restore_day(restoring, store, spec, days[0], into="new", target=f"{schema}.back")
        except RestoreError as exc:
            err = exc
        else:
            raise AssertionError("a read-only session restored a day")
    assert not err.retryable and "default_transaction_read_only" in str(err), str(err)
    assert "<role>" not in str(err) and f"ALTER ROLE {role} RESET default_transaction_read_only" in str(err), str(err)


def test_a_lock_timeout_inside_the_targets_audit_trigger_is_told_as_a_lock_timeout_not_a_refusing_trigger(
        pg, conn, schema, store, temp_dir):
    """A user restores a day into an existing table (into="existing") that has an ordinary audit trigger (AFTER
    INSERT: one row per insert into an audit table). Meanwhile a maintenance job holds the audit table (here: an
    open transaction that ran LOCK TABLE audit), and the restoring session has lock_timeout = 200ms, so the
    trigger's INSERT gives up: SQLSTATE 55P03, a transient fault (README, Retries and errors: lock_timeout is
    retried). What happens: the RestoreError says "<target>'s trigger audit_rows on INSERT refused the rows" with
    the remedy "restore into a new table (into='new'), or disable it for the restore (ALTER TABLE ... DISABLE
    TRIGGER)": a wrong cause and a remedy that loses the audit rows, for a lock a retry gets. Should: the cause is
    the lock_timeout (another session holds a conflicting lock), retryable, with its remedy (find the blocker, or
    raise lock_timeout); nothing restored; run again once the lock is gone, it succeeds. Cause:
    restore._raising_hooks blames the target's triggers for any psycopg.Error raised inside a function, whatever its
    SQLSTATE (restore_archive's except Exception branch)."""
    import datetime as dt

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import RestoreError, restore_day

    day = dt.date(2024, 3, 10)
    events, target, audit = (sql.Identifier(schema, n) for n in ("ev", "tgt", "audit"))
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, note text)").format(events))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10'::timestamptz + g * interval '1 minute', 'n' || g "
                         "FROM generate_series(1, 200) g").format(events))
    spec = TableSpec(name=f"{schema}.ev", day_column="created_at", start_date=day, format="csv", compression="zstd")
    archive_partition(conn, spec, day, store, temp_dir=str(temp_dir))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(target, events))
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, at timestamptz DEFAULT now())").format(audit))
    conn.execute(sql.SQL("CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "INSERT INTO {a} (id) VALUES (NEW.id); RETURN NULL; END $$").format(
        f=sql.Identifier(schema, "audit_row"), a=audit))
    conn.execute(sql.SQL("CREATE TRIGGER audit_rows AFTER INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
        target, sql.Identifier(schema, "audit_row")))
    holder = psycopg.connect(pg.dsn)  # the maintenance job's open transaction
    try:
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(audit))
        with pg.connect() as restoring:
            restoring.execute("SET lock_timeout = '200ms'")
            try:
                restore_day(restoring, store, spec, day, into="existing", target=f"{schema}.tgt",
                            temp_dir=str(temp_dir))
            except RestoreError as exc:
                err = exc
            else:
                raise AssertionError("restored through a locked audit table")
    finally:
        holder.close()
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0] == 0
    assert err.retryable and (err.table, err.day) == (spec.name, day.isoformat()), str(err)
    assert "lock_timeout" in (err.cause or "") and "DISABLE TRIGGER" not in str(err), str(err)
    with pg.connect() as again:
        assert restore_day(again, store, spec, day, into="existing", target=f"{schema}.tgt",
                           temp_dir=str(temp_dir)).rows == 200
