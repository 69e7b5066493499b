"""Hunt 7 (ms): a process killed (SIGKILL) between two steps of a writing operation (a first archive's upload and
its manifest, a removal's COMMIT and its "done" mark, ...), and what the store, the source, the same command run
again and the commands that report on the day then say."""

from __future__ import annotations

import json
import re

from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline_tests.test_hunt3_o import DAYS, _archived, cli, gone, killing_cli, make_env, write_config
from archive_pipeline_tests.test_integrity import D, _killed_child, _open_uploads, big, stored_keys  # noqa: F401


def test_a_first_archive_killed_after_its_object_completed_leaves_no_copy_kept_for_ever(
        pg, s3, conn, schema, big, store, bucket, s3_client, tmp_path):
    """A user archives a day for the first time and the process is SIGKILLed right after the store answered
    CompleteMultipartUpload (the object whole, its manifest not yet written). The same command again archives the
    day as generation 2 and keeps the killed run's object under ``kept`` ("the manifest before this one was
    missing") — byte for byte the object it just wrote itself (same size and ETag) — and every later run carries
    that entry on (``_retire`` copies ``kept``; ``_tidy`` never deletes what ``kept`` names), so the day's storage
    stays doubled for good. The README: "What a killed run leaves in the store is removed by the next run of the
    day, whatever that run does". Expected: the re-run leaves the day with exactly its object and its manifest (a
    stored generation identical to the one just committed is no only copy of anything)."""
    spec = {"name": big.name, "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, False, temp, ("after-call", "CompleteMultipartUpload", 1))
    left = [k for k in stored_keys(s3_client, bucket) if not k.endswith(".uploading")]
    assert len(left) == 1 and not left[0].endswith(".manifest.json"), left  # a whole object, no manifest
    stray = s3_client.head_object(Bucket=bucket, Key=left[0])
    result = archive_partition(conn, big, D, store)
    assert not result.skipped and result.rows == 30000
    ours = s3_client.head_object(Bucket=bucket, Key=result.key)
    assert (ours["ETag"], ours["ContentLength"]) == (stray["ETag"], stray["ContentLength"])  # the same bytes
    assert _open_uploads(s3_client, bucket) == []
    assert stored_keys(s3_client, bucket) == sorted([result.key, result.manifest_key])


def test_list_after_a_naming_mode_detach_killed_after_its_commit_does_not_call_the_detach_unfinished(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Naming mode (one table per day, inheriting from the configured table), retention ``detach``. `prune --day
    D` is SIGKILLed after the removing transaction committed (D's table no longer inherits from the configured
    table: queries through it no longer see D's rows) and before the "done" mark was written. The user runs
    `list --day D` to see where things stand: it says "detach begun at … not finished (marked pending): the
    source still shows the day" — but the detach is finished (`prune --dry-run` says "already removed"; for the
    same kill in declarative mode `list` says "detached from the source at … (pending)"), and the day table
    still showing is just what a detach leaves. Expected: `list` says the day was detached (the mark pending),
    not that the detach did not finish."""
    for n, day in enumerate(DAYS):
        conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(sql.Identifier(schema, f"ev_{day:%Y%m%d}")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT %s * 1000 + g, md5(g::text) FROM generate_series(1, 40) g").format(
            sql.Identifier(schema, f"ev_{day:%Y%m%d}")), (n,))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(sql.Identifier(schema, "ev")))
    for day in DAYS:
        conn.execute(sql.SQL("ALTER TABLE {} INHERIT {}").format(sql.Identifier(schema, f"ev_{day:%Y%m%d}"),
                                                                 sql.Identifier(schema, "ev")))
    table = {"name": f"{schema}.ev", "start_date": DAYS[0].isoformat(),
             "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"},
             "retention": {"keep_days": 1, "action": "detach"}}
    spec, store = _archived(conn, [table], s3_client, bucket)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    key = render_key(spec, DAYS[1], "archive")
    day = ["--day", DAYS[1].isoformat()]
    # the second PutObject of the manifest is the "done" mark, sent once the removal committed
    killing_cli(env, ["before-call", "PutObject", 2, re.escape(key) + r"\.manifest\.json$"], "prune", *day)
    gone(conn)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE id BETWEEN 1000 AND 1999").format(
        sql.Identifier(schema, "ev"))).fetchone()[0] == 0  # detached: the configured table no longer shows D
    dry = cli(env, "prune", "--dry-run", "--json", *day)
    assert json.loads(dry.stdout)["days"][0]["status"] == "already removed", dry.stdout
    listed = cli(env, "list", "--json", *day)
    assert listed.returncode == 0, listed.stderr
    note = json.loads(listed.stdout)["days"][0].get("note") or ""
    assert "not finished" not in note, note
    assert "detached" in note, note


def test_a_restore_killed_during_a_long_statement_does_not_keep_the_day_locked_after_it(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """After `prune` dropped day D, a user runs `restore --day D --into original`; the process is SIGKILLed (OOM
    killer, a CI timeout) while its session runs a long statement (here a slow INSERT trigger stands in for any:
    the check's fingerprint of a big day, an INSERT from the staging table). PostgreSQL notices the dead client
    only when the statement ends (the sessions set no ``client_connection_check_interval``; no statement_timeout by
    default), so the killed run's backend goes on: it keeps the table-day lock and the re-created partition's
    locks, and the same command run again is refused ("… is being archived, removed or restored by another run
    right now"), though no run exists any more, for as long as that statement takes. Expected: the session of a
    killed run ends within a few seconds (PostgreSQL 14+: ``client_connection_check_interval``), and the same
    command again restores the day."""
    import signal
    import subprocess
    import sys
    import time

    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.test_hunt3_o import ROOT

    create_sample_events(conn, DAYS, rows_per_day=30, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": "drop"}}
    _archived(conn, [table], s3_client, bucket)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    day = ["--day", DAYS[1].isoformat()]
    assert cli(env, "prune", *day).returncode == 0
    events, flag = sql.Identifier(schema, "events"), sql.Identifier(schema, "slow_flag")
    conn.execute(sql.SQL("CREATE TABLE {} (on_ boolean)").format(flag))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (true)").format(flag))
    conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF EXISTS (SELECT FROM {}) "
                         "THEN PERFORM pg_sleep(25); END IF; RETURN NEW; END $$").format(
        sql.Identifier(schema, "slow"), flag))
    conn.execute(sql.SQL("CREATE TRIGGER slow BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
        events, sql.Identifier(schema, "slow")))
    args = ["restore", *day, "--into", "original"]
    child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", *args], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'archive_pipeline_cli' "
                               "AND wait_event = 'PgSleep'").fetchone()[0]:
            assert child.poll() is None and time.monotonic() < deadline
            conn.execute("SELECT pg_stat_clear_snapshot()")
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        conn.execute(sql.SQL("DELETE FROM {}").format(flag))  # the next run's INSERT is not slowed down
        deadline = time.monotonic() + 5  # a few seconds for the server to see the client gone
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'archive_pipeline_cli'"
                           ).fetchone()[0] and time.monotonic() < deadline:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            time.sleep(0.1)
        again = cli(env, *args)
        assert again.returncode == 0, again.stdout + again.stderr
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(events)).fetchone()[0] == 90
    finally:
        if child.poll() is None:
            child.kill()
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                     "'archive_pipeline_cli' AND pid <> pg_backend_pid()")
