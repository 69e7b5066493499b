"""Hunt 11 (qk): a review of the session's fresh fixes (names printed verbatim, read_relations, the removal's
locked-relation checks, the tidy before the done mark, between_days, TargetError, _widen_own)."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
import yaml
from click.testing import CliRunner
from psycopg import sql

from archive_pipeline.cli import main
from archive_pipeline_tests.test_letgo import standby  # noqa: F401 - fixture: a hot standby of pg

DAY = dt.date(2024, 3, 10)


def _cli(env: dict[str, str], *args: str):
    done = CliRunner(env=env).invoke(main, list(args))
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done


def _env(pg, s3, bucket, config) -> dict[str, str]:
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250"}


def test_json_output_gives_a_table_name_and_its_key_as_they_are_not_reworded(pg, s3, bucket, conn, schema,
                                                                                tmp_path):
    """A table named ``imports (overwrite)`` (PostgreSQL takes any text as a quoted name), archived, then listed
    with ``--json``. The fix of hunt 11 qb prints names and keys verbatim in the tables and lines of the text
    output (``_verbatim``), but ``Run.emit`` still passes the whole JSON text through ``_for_the_cli``, the
    rewording of core messages: ``list --json`` and ``archive --json`` give ``"table": "<schema>.imports
    (--overwrite)"`` and a ``"key"`` ending ``imports (--overwrite)/2024-03-10.jsonl...``: a table that does not
    exist and an S3 key that does not exist, to a script that reads the JSON precisely to use them. What should
    happen: the JSON's names and keys are the configuration's and the store's, byte for byte (only messages may be
    reworded). Fix idea: reword the message fields (message, error, remedy, note, problems) before json.dumps,
    not the dumped text."""
    name = "imports (overwrite)"
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00')").format(table))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.{name}", "day_column": "at",
                                                  "start_date": DAY.isoformat()}]}), encoding="utf-8")
    env = _env(pg, s3, bucket, config)
    archived = _cli(env, "archive", "--day", DAY.isoformat(), "--json")
    assert archived.exit_code == 0, archived.stdout + archived.stderr
    listed = _cli(env, "list", "--json")
    assert listed.exit_code == 0, listed.stdout + listed.stderr
    for done in (archived, listed):
        day = json.loads(done.stdout)["days"][0]
        assert day["table"] == f"{schema}.{name}", day
        assert name in day["key"] and "(--overwrite)" not in day["key"], day


def test_view_operators_function_replaced_during_the_read_is_archived_green(pg, conn, schema, store, temp_dir):
    """A day of a view that labels its rows with a user operator (``SELECT id, at, v ### 0 AS v FROM t``, the
    operator ``###`` implemented by the user's SQL function ``label(int, int)``) is archived; after the run took its
    snapshot and fingerprinted the day, before its COPY, a deploy runs CREATE OR REPLACE FUNCTION label(...) with
    a new body. The fix of hunt 11 qi (source.read_relations / same_read_relations) records the functions the
    view's query calls through pg_depend: the view's rule depends on the operator (pg_operator), not on its
    function, so the function is not recorded, its change is not seen, and the archive is published green with a
    fingerprint that is not its object's rows (deep verification then calls the archive altered). The same holds
    for an aggregate's transition function and a cast's function. What should happen: fail, retryable, naming
    table and day, publishing nothing — as the same function called by name now does. Fix idea: in
    _VIEW_FUNCTIONS, follow pg_operator (oprcode), pg_aggregate (aggtransfn/aggfinalfn/...) and pg_cast
    (castfunc) references of the rules to their functions too."""
    from archive_pipeline.core import archive as archive_mod
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.verify import deep_verify

    t, v, f = (sql.Identifier(schema, n) for n in ("t", "v", "label"))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v int)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00'::timestamptz + g * interval '1 s', g "
                         "FROM generate_series(1, 200) g").format(t))
    conn.execute(sql.SQL("CREATE FUNCTION {}(int, int) RETURNS text LANGUAGE sql IMMUTABLE "
                         "AS $$ SELECT 'old ' || $1 $$").format(f))
    conn.execute(sql.SQL("CREATE OPERATOR {}.### (LEFTARG = int, RIGHTARG = int, FUNCTION = {})").format(
        sql.Identifier(schema), f))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, at, v OPERATOR({}.###) 0 AS v FROM {}").format(
        v, sql.Identifier(schema), t))
    spec = TableSpec(name=f"{schema}.v", day_column="at", start_date=DAY, format="jsonl")
    real = archive_mod.write_day

    def replaced_then_read(*args, **kwargs):
        with pg.connect() as other:
            other.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}(int, int) RETURNS text LANGUAGE sql IMMUTABLE "
                                  "AS $$ SELECT 'new ' || $1 $$").format(f))
        return real(*args, **kwargs)

    archive_mod.write_day = replaced_then_read
    try:
        with pytest.raises(ArchiveError) as caught:
            result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
            problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
            raise AssertionError(f"published green ({result.rows} rows, {result.key}); its deep verification "
                                 f"now says: {problems}")
    finally:
        archive_mod.write_day = real
    assert "2024-03-10" in str(caught.value)


def test_range_restore_into_a_target_whose_schema_is_missing_names_a_rest_that_leaves_the_first_day_out(
        pg, s3, bucket, conn, schema, tmp_path):
    """``restore --from 2024-03-10 --to 2024-03-12 --into new --target <schema>_gone.back`` where the schema
    ``<schema>_gone`` does not exist (a typo, or not created yet). The first day fails (InvalidSchemaName), as
    every day would, for the target's sake and nothing of the day's own. The fix of hunt 11 qa (restore.TargetError,
    ``_the_rest(inclusive=...)``) covers a target that is missing or already there, but this refusal is a plain
    RestoreError, so the command still answers "then: run ... restore --table T --from 2024-03-11 --to 2024-03-12
    --into new --target ..._gone.back to restore the rest of T (2024-03-11, 2024-03-12, without 2024-03-10)": a
    user who creates the schema and pastes it never gets 2024-03-10 back, though nothing was wrong with that day.
    What should happen: like a missing target (nothing restored yet, the target's fault): no "then" that leaves the
    day out — the remedy is to create the schema and run the same command again (or a "then" from 2024-03-10).
    Fix idea: raise TargetError (or treat InvalidSchemaName of a target not 'original' as one) in restore_archive's
    classification, or check the target's schema in _resolve_target."""
    t = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 01:00+00'::timestamptz + g * interval '1 day' "
                         "- interval '1 day' FROM generate_series(1, 3) g").format(t))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.ev", "day_column": "at",
                                                  "start_date": DAY.isoformat()}]}), encoding="utf-8")
    env = _env(pg, s3, bucket, config)
    archived = _cli(env, "archive", "--from", "2024-03-10", "--to", "2024-03-12")
    assert archived.exit_code == 0, archived.stdout + archived.stderr
    restored = _cli(env, "restore", "--from", "2024-03-10", "--to", "2024-03-12", "--into", "new",
                    "--target", f"{schema}_gone.back")
    said = restored.stdout + restored.stderr
    assert restored.exit_code != 0, said
    assert "without 2024-03-10" not in said and "--from 2024-03-11" not in said, said


def test_a_standby_archive_meeting_a_long_removal_between_its_commit_and_done_mark_is_not_told_to_configure_the_primary(
        pg, standby, conn, schema, s3, bucket, store):  # noqa: F811
    """As hunt 11 qa's case (an archive run on the hot standby finds the day's pending mark while the removal on
    the primary has committed and is writing its "done" mark), but the removal took a while: its DELETE (retention
    action delete, in batches, of a big day; here its clock shifted 20 minutes back) began more than 10 minutes
    before its COMMIT. The fix (lifecycle._still_removing's "committed moments ago") measures "moments ago" from
    the mark's ``at``, which is when the removal BEGAN (written before the DELETE), not when it committed: so the
    run is told, not retryable, "settling the removal ... must run on the primary, and this connection is a hot
    standby: set ARCHIVE_PG_PRIMARY_DSN to the primary and run the removal of the day" - the advice the fix was
    made to stop giving while that very removal is finishing (a user following it starts a second removal).
    What should happen: retryable, "being removed / removed moments ago", as for a short removal. Fix idea: time
    the window from the commit (pg_xact_commit_timestamp where track_commit_timestamp is on, or the moment the
    standby replayed it), or from a time the removal records just before its COMMIT; or call any committed xid of
    a pending mark on a standby "finishing" and retryable."""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline_tests.test_race_hunt import in_thread, proxied
    import types

    class Earlier(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.now(tz) - dt.timedelta(minutes=20)

    create_sample_events(conn, [DAY], rows_per_day=100, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store)
    wait_for_replay(pg, standby)
    real_dt = lifecycle.dt
    with FaultProxy(s3.endpoint_url) as proxy, standby.connect() as replica, pg.connect() as removing:
        removing.autocommit = True
        held = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", skip=1, times=1))
        lifecycle.dt = types.SimpleNamespace(**{**{k: getattr(dt, k) for k in dir(dt) if not k.startswith("__")},
                                                "datetime": Earlier})  # the removal began 20 minutes ago
        thread, outcome = in_thread(lambda: remove_day(removing, spec, DAY, proxied(proxy, bucket)))
        try:
            assert proxy.wait_held(1), outcome
            lifecycle.dt = real_dt
            mark = load_manifest(store, f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst")["removed"]
            assert mark["state"] == "pending", mark
            wait_for_replay(pg, standby)  # the DELETE's commit replayed
            try:
                archive_partition(replica, spec, DAY, store)
            except ArchiveError as exc:
                error = exc
            else:
                error = None
        finally:
            lifecycle.dt = real_dt
            held.gate.set()
            thread.join(60)
    assert outcome.get("result") is not None and outcome["result"].rows == 100, outcome
    assert error is not None
    assert error.retryable and "ARCHIVE_PG_PRIMARY_DSN" not in str(error), (error.retryable, str(error))


def test_cli_archive_on_a_standby_of_a_day_whose_prune_died_after_its_commit_is_not_told_to_set_the_primary(
        pg, standby, conn, schema, s3, bucket, store, tmp_path):  # noqa: F811
    """The README's production setup: ARCHIVE_PG_DSN on a hot standby, ARCHIVE_PG_PRIMARY_DSN on the primary. A
    prune of 2024-03-10 died an hour ago after its COMMIT, before its "done" mark (the day is gone from the source, its manifest
    marked "pending"). The hunt 11 qc fix makes the CLI ``archive`` of a recent day gone from the source archive it
    anyway when its manifest holds a pending mark (_RECENT_ABSENT), "which settles the mark" — but the CLI archives
    on ``run.conn``, the standby, where settling is refused: before the fix that day was "no-data" (exit 0); now
    the daily ``archive --from ... --to ...`` fails it, exit 1, not retryable, with "settling the removal ... must
    run on the primary, and this connection is a hot standby: set ARCHIVE_PG_PRIMARY_DSN to the primary and run
    the removal of the day" - a setting that is set, to the primary the command has. What should happen: the
    command settles the mark through its primary connection (as prune does: run.primary), so the day ends
    "done" and the run exits 0; at the least it never tells the user to set what is set. (Within 10 minutes of
    the mark it is told instead that "a run on the primary ... is writing its done mark now" - a run that died.)
    Fix idea: in
    cli.archive, settle the pending days on run.primary (lifecycle.settle_pending_removal) instead of archiving
    them on the standby."""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay
    import types

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
             "retention": {"keep_days": 1, "action": "delete"}}
    spec = TableSpec(**table)
    archived = archive_partition(conn, spec, DAY, store)
    real = lifecycle._tidy_removed

    def killed(*args, **kwargs):  # past the COMMIT, before the "done" mark: the process dies here
        raise KeyboardInterrupt

    class Earlier(dt.datetime):  # the prune died an hour ago (last night's run)
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.now(tz) - dt.timedelta(hours=1)

    real_dt = lifecycle.dt
    lifecycle._tidy_removed = killed
    lifecycle.dt = types.SimpleNamespace(**{**{k: getattr(dt, k) for k in dir(dt) if not k.startswith("__")},
                                            "datetime": Earlier})
    try:
        with pytest.raises(KeyboardInterrupt):
            lifecycle.remove_day(conn, spec, DAY, store, removed_by="test")
    finally:
        lifecycle._tidy_removed = real
        lifecycle.dt = real_dt
    assert load_manifest(store, archived.key)["removed"]["state"] == "pending"
    wait_for_replay(pg, standby)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}), encoding="utf-8")
    env = {**_env(pg, s3, bucket, config), "ARCHIVE_PG_DSN": standby.dsn, "ARCHIVE_PG_PRIMARY_DSN": pg.dsn}
    run = _cli(env, "archive", "--day", DAY.isoformat())
    said = run.stdout + run.stderr
    assert "ARCHIVE_PG_PRIMARY_DSN" not in said, said
    assert run.exit_code == 0, said
    assert load_manifest(store, archived.key)["removed"]["state"] == "done", said


def test_cli_restore_range_whose_session_is_terminated_between_two_days_restores_every_day(
        pg, s3, bucket, conn, schema, tmp_path, monkeypatch):
    """``restore --from 2024-03-10 --to 2024-03-12 --into new --target <schema>.back``; between the first and the
    second day the command's idle session is ended from outside (an idle-connection reaper's pg_terminate_backend,
    idle_session_timeout while the next day's object downloads, a server restart). The hunt 11 qd fix
    (cli.Run.between_days) checks the sessions before each day of archive, verify, compare and prune and replaces
    one the server ended, so the next day does not fail for its neighbour's idle session - but not restore's: the
    second day meets the dead session and the range stops, exit 3 "lost the database", 2024-03-11 and 03-12 not
    restored, for no fault of theirs. What should happen: as the other ranged commands, the session is replaced and
    all three days are restored (exit 0). Fix idea: call run.between_days() before each day of restore (the
    loop over iter_restore_days, with run.primary read per day)."""
    from archive_pipeline.core import restore as restore_module

    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 71) g").format(table))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [dict(name=f"{schema}.ev", day_column="at", start_date="2024-03-10",
                                                      format="csv")]}))
    env = _env(pg, s3, bucket, config)
    archived = _cli(env, "archive", "--from", "2024-03-10", "--to", "2024-03-12")
    assert archived.exit_code == 0, archived.stdout + archived.stderr
    real, done = restore_module._restore_current, []

    def then_terminated(session, *args, **kwargs):
        result = real(session, *args, **kwargs)
        done.append(result)
        if len(done) == 1:  # the first day restored: its session ended while idle, before the second day
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (session.info.backend_pid,))
        return result

    monkeypatch.setattr(restore_module, "_restore_current", then_terminated)
    restored = _cli(env, "restore", "--from", "2024-03-10", "--to", "2024-03-12", "--into", "new",
                    "--target", f"{schema}.back", "--json")
    said = restored.stdout + restored.stderr
    assert restored.exit_code == 0, said
    assert [d["rows"] for d in json.loads(restored.stdout)["days"]] == [24, 24, 24], said


def test_archive_dry_run_of_a_day_whose_prune_died_after_its_commit_does_not_call_it_a_day_without_data(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """A prune of 2024-03-10 died after its COMMIT, before its "done" mark (the day gone from the source, its
    manifest "pending"). The hunt 11 qc fix makes ``archive`` of such a recent absent day archive it, which settles
    the mark (writes the manifest: "done") - but ``archive --dry-run``, "print the plan ... write nothing", still
    plans the day as ``no-data`` "no data for this day in PostgreSQL" (plan.plan_archive never looks at an absent
    day's manifest), and ``dry run, nothing written: 0 day(s) to archive``: the real run that follows writes that
    day's manifest and reports it, which the plan said it would not touch. What should happen: the plan shows the
    day as the run will treat it (its pending removal settled: not "no-data"). Fix idea: _archive_plan reads the
    same recent absent days' manifests (cli._pending_removals) and plans those days as "settle" with the reason
    "a removal not marked done (pending): the run completes its mark"."""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
             "retention": {"keep_days": 1, "action": "delete"}}
    spec = TableSpec(**table)
    archived = archive_partition(conn, spec, DAY, store)
    real = lifecycle._tidy_removed

    def killed(*args, **kwargs):  # past the COMMIT, before the "done" mark: the process dies here
        raise KeyboardInterrupt

    lifecycle._tidy_removed = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            lifecycle.remove_day(conn, spec, DAY, store, removed_by="test")
    finally:
        lifecycle._tidy_removed = real
    assert load_manifest(store, archived.key)["removed"]["state"] == "pending"
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}), encoding="utf-8")
    env = _env(pg, s3, bucket, config)
    planned = _cli(env, "archive", "--day", DAY.isoformat(), "--dry-run", "--json")
    assert load_manifest(store, archived.key)["removed"]["state"] == "pending"  # (the plan wrote nothing)
    ran = _cli(env, "archive", "--day", DAY.isoformat(), "--json")
    assert load_manifest(store, archived.key)["removed"]["state"] == "done", ran.stdout + ran.stderr
    plan_said = planned.stdout
    [day] = json.loads(plan_said)["days"]  # (the totals name every action, no-data among them, with its count)
    assert day["action"] != "no-data" and "no data for this day" not in plan_said, (plan_said, ran.stdout)


def test_archive_that_settles_a_day_whose_prune_died_after_its_commit_does_not_fail_it(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """A prune of 2024-03-10 died after its COMMIT, before its "done" mark; the next daily ``archive --day
    2024-03-10`` (the hunt 11 qc fix: a recent absent day with a pending mark is archived, "which settles the
    mark") does complete the mark ("done") - and then reports the day ``failed``, exit 1, not retryable: "was
    removed from the source ... there is nothing to archive ... leave it out of archive runs and backfills (running
    it again fails the same way)". Running it again does not fail the same way: the mark is done now, so the day
    is "no-data", exit 0. A daily job turns red once, for a day the run itself just put right, with a message
    that is false. What should happen: the day reported as settled (status "settled" or "removed": "its pending
    removal mark completed"), not failed; exit 0. Fix idea: in cli.archive, for the pending days settle the mark
    (lifecycle.settle_pending_removal on run.primary) and report its outcome, instead of archive_partition, whose
    RemovedDay refusal is meant for a day someone asked to archive again."""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
             "retention": {"keep_days": 1, "action": "delete"}}
    spec = TableSpec(**table)
    archived = archive_partition(conn, spec, DAY, store)
    real = lifecycle._tidy_removed

    def killed(*args, **kwargs):  # past the COMMIT, before the "done" mark: the process dies here
        raise KeyboardInterrupt

    lifecycle._tidy_removed = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            lifecycle.remove_day(conn, spec, DAY, store, removed_by="test")
    finally:
        lifecycle._tidy_removed = real
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}), encoding="utf-8")
    env = _env(pg, s3, bucket, config)
    ran = _cli(env, "archive", "--day", DAY.isoformat(), "--json")
    said = ran.stdout + ran.stderr
    assert load_manifest(store, archived.key)["removed"]["state"] == "done", said
    assert [d["status"] for d in json.loads(ran.stdout)["days"]] != ["failed"], said
    assert ran.exit_code == 0, said
