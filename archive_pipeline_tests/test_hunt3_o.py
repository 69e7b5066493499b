"""Hunt 3 (o): a process killed (SIGKILL) between two steps of an overwrite, a restore, a removal, a deep
verification or a ranged run: the store, the database and the temp dir must be left whole (the old state or
the new), locks released, and a clean re-run must give an exact result."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]


def make_env(pg, endpoint: str, bucket: str, config: Path, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=endpoint,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200",
               TMPDIR=str(tmp), **extra)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 60, process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    return run_cli(args, env, cwd=ROOT, timeout=timeout, process=process or None)


def write_config(tmp_path: Path, tables: list[dict]) -> Path:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}, allow_unicode=True))
    return config


def killed_at(proxy: FaultProxy, fault: Fault, env: dict[str, str], *args: str) -> None:
    """Run the CLI with ``args`` and SIGKILL it while the store holds the request ``fault`` matches (the held
    request is never forwarded: the fault stays closed until the proxy stops, after the process is gone)."""
    proxy.add(fault)
    child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", *args], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proxy.wait_held(1, timeout=60), child.communicate(timeout=5)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL


# The names the archiver's sessions go by: the command line's, the Dagster resources' (and an older spelling)
ARCHIVER_APPLICATIONS = ["archive_pipeline_cli", "archive_pipeline", "archive-pipeline"]


def gone(conn, application: str | None = None) -> None:
    """Wait until the killed client's backends have ended (they notice the closed socket)."""
    import time
    names = [application] if application else ARCHIVER_APPLICATIONS
    deadline = time.monotonic() + 30
    while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s) AND pid <> "
                       "pg_backend_pid() AND datname = current_database()", (names,)).fetchone()[0]:
        assert time.monotonic() < deadline, conn.execute("SELECT pid, state, query FROM pg_stat_activity WHERE "
                                                         "application_name = ANY(%s)", (names,)).fetchall()
        time.sleep(0.05)
        conn.execute("SELECT pg_stat_clear_snapshot()")


def small_table(conn, schema: str, name: str = "ev", days=DAYS, rows: int = 50, key: bool = True) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id int {}, at timestamptz NOT NULL, note text)").format(
        sql.Identifier(schema, name), sql.SQL("PRIMARY KEY" if key else "")))
    for n, day in enumerate(days):
        conn.execute(sql.SQL("INSERT INTO {} SELECT %s * 1000 + g, %s::timestamptz + g * interval '1 minute', "
                             "md5(g::text) FROM generate_series(1, %s) g").format(sql.Identifier(schema, name)),
                     (n, f"{day} 00:00+00", rows))


def rows_of(conn, schema: str, name: str) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT id, at, note FROM {} ORDER BY id").format(
        sql.Identifier(schema, name))).fetchall()


def killing_cli(env: dict[str, str], kill: list, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI in a process that SIGKILLs itself at ``kill`` = [event, operation, nth, key regex]: the nth
    ``event`` ("before-call", "after-call") of S3 ``operation`` whose Key matches (botocore's event hooks are the
    test's instrument; the CLI runs unchanged)."""
    done = subprocess.run([sys.executable, "-m", "archive_pipeline_tests.test_hunt3_o", *args],
                          env={**env, "HUNT3_O_KILL": json.dumps(kill)}, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == -signal.SIGKILL, f"kill point {kill} not reached: {done.stdout}{done.stderr}"
    return done


def _main_killing() -> None:
    import boto3

    event, operation, nth, pattern = json.loads(os.environ.pop("HUNT3_O_KILL"))
    real = boto3.session.Session.client  # (every client: the default session's and a session of its own)
    seen = {"n": 0, "key": ""}

    def client(self, *a, **k):
        made = real(self, *a, **k)

        def remember(params, **_):
            seen["key"] = params.get("Key", "")

        def kill(**_):
            if re.search(pattern, seen["key"]):
                seen["n"] += 1
                if seen["n"] == nth:
                    os.kill(os.getpid(), signal.SIGKILL)

        made.meta.events.register(f"before-parameter-build.s3.{operation}", remember)
        made.meta.events.register(f"{event}.s3.{operation}", kill)
        return made

    boto3.session.Session.client = client
    from archive_pipeline.cli import main

    sys.argv = ["archive-pipeline", *sys.argv[1:]]
    main()


def _archived(conn, tables: list[dict], s3_client, bucket: str, days=DAYS):
    specs = parse_config({"tables": tables}).tables
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    for spec in specs:
        for day in days:
            archive_partition(conn, spec, day, store)
    return specs[0], store


def _restore_again(env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess:
    """What a user does after a killed ``restore --into new`` of a range: the same command again. It must
    resume: the day already restored is said so and not loaded again, the others are loaded."""
    again = cli(env, *args)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "already restored" in again.stdout, again.stdout
    return again


def test_a_killed_range_restore_into_a_new_table_is_finished_exactly_by_running_it_again(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """A user runs `restore --from D1 --to D3 --into new --target T` and the process is SIGKILLed (OOM killer, a
    reboot, a CI timeout) while D2 downloads. T is left holding D1 only, looking like any finished restore, and
    nothing says which days it holds (the Ctrl-C path prints the command that restores the rest; SIGKILL prints
    nothing). Running the same command again is refused: "T already exists; restore into it with --into
    existing". Doing that fails on D1 at once (loaded a second time, its fingerprint is twice the rows; the
    message first blames the archive: "altered after it was written"), and the range stops there: no re-run
    gives T the three days. Expected: a re-run (the same command, or the one its message gives) ends with T
    holding exactly the source's rows of D1..D3."""
    small_table(conn, schema, key=False)
    spec, _ = _archived(conn, [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}],
                        s3_client, bucket)
    config = write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}])
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, config, tmp)
    args = ["restore", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat(), "--into", "new",
            "--target", f"{schema}.back"]
    killing_cli(env, ["after-call", "GetObject", 1, re.escape(render_key(spec, DAYS[1], "archive")) + "$"], *args)
    gone(conn)
    assert list(tmp.iterdir()) == []  # the download's temp file has no name
    assert len(rows_of(conn, schema, "back")) == 50  # D1 committed, D2 rolled back
    again = _restore_again(env, args)
    assert again.returncode == 0, again.stderr
    assert rows_of(conn, schema, "back") == rows_of(conn, schema, "ev")


def test_a_killed_range_restore_of_a_naming_mode_table_never_loads_a_day_twice(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """The same killed `restore --from D1 --to D3 --into new --target T`, for a naming-mode table (one table per
    day, no day_column). The re-run is refused ("T already exists; restore into it with --into existing"); doing
    as told exits 0, every day's check "equals the manifest's", and T now holds D1's rows twice (160 rows, 120
    distinct): a restore into an existing table checks only the rows it added, so a day already there is loaded
    again unnoticed. Expected: T ends with exactly the archived rows of D1..D3, each once (or the re-run refuses
    D1 as already restored)."""
    for n, day in enumerate(DAYS):
        day_table = sql.Identifier(schema, f"ev_{day:%Y%m%d}")
        conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(day_table))
        conn.execute(sql.SQL("INSERT INTO {} SELECT %s * 1000 + g, md5(g::text) FROM generate_series(1, 40) g").format(
            day_table), (n,))
    table = {"name": f"{schema}.ev", "start_date": DAYS[0].isoformat(),
             "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}}
    spec, _ = _archived(conn, [table], s3_client, bucket)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    args = ["restore", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat(), "--into", "new",
            "--target", f"{schema}.back"]
    killing_cli(env, ["after-call", "GetObject", 1, re.escape(render_key(spec, DAYS[1], "archive")) + "$"], *args)
    gone(conn)
    _restore_again(env, args)
    source = sorted(r for day in DAYS for r in conn.execute(sql.SQL("SELECT id, note FROM {}").format(
        sql.Identifier(schema, f"ev_{day:%Y%m%d}"))).fetchall())
    restored = conn.execute(sql.SQL("SELECT id, note FROM {} ORDER BY id, note").format(
        sql.Identifier(schema, "back"))).fetchall()
    assert len(restored) == len(source), f"{len(restored)} rows restored, {len(source)} archived"
    assert restored == source


@pytest.mark.parametrize("action", ["drop", "detach"])
def test_a_prune_killed_after_its_commit_is_completed_by_the_next_prune(pg, s3, bucket, conn, schema, s3_client,
                                                                       tmp_path, action):
    """`archive-pipeline prune` is SIGKILLed after a day's removal committed (its partition dropped or detached)
    and before the manifest's "done" mark was written: the manifest says "pending". Running `prune` again exits
    0 and does not mention the day (it skips days no longer in the source), and `archive` of the day says
    "no-data" without settling it either, so from the command line the mark stays "pending" for good (`list`
    shows "(pending)"), although the README says a re-run completes it. Expected: the next `prune` completes the
    mark ("done", with the row count) and reports the day."""
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS, rows_per_day=100, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": action}}
    spec, store = _archived(conn, [table], s3_client, bucket)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    key = render_key(spec, DAYS[1], "archive")
    day = ["--day", DAYS[1].isoformat()]
    # the second PutObject of the manifest is the "done" mark, sent once the removal committed
    killing_cli(env, ["before-call", "PutObject", 2, re.escape(key) + r"\.manifest\.json$"], "prune", *day)
    gone(conn)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events")) + sql.SQL(
        " WHERE created_at >= %s AND created_at < %s"), (DAYS[1], DAYS[2])).fetchone()[0] == 0
    assert load_manifest(store, key)["removed"]["state"] == "pending"
    again = cli(env, "prune", "--json", *day)
    assert again.returncode == 0, again.stderr
    assert load_manifest(store, key)["removed"]["state"] == "done", again.stdout
    assert load_manifest(store, key)["removed"]["rows"] == 100
    assert [d["day"] for d in json.loads(again.stdout)["days"]] == [DAYS[1].isoformat()]


def test_an_overwrite_of_a_range_killed_mid_day_leaves_whole_archives_and_a_re_run_is_exact(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """(Guard, passes.) `archive --overwrite --from D1 --to D3` SIGKILLed just before D2's manifest is written:
    every manifest names a whole object (D1 new, D2 and D3 old), no upload is open, the temp dir is empty, the
    table-day lock is released, and the same command again leaves exactly one object and manifest per day whose
    rows are the source's now."""
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline.core.verify import deep_verify, load_manifest

    small_table(conn, schema)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}
    spec, store = _archived(conn, [table], s3_client, bucket)
    old = {day: load_manifest(store, render_key(spec, day, "archive"))["fingerprint"] for day in DAYS}
    conn.execute(sql.SQL("UPDATE {} SET note = 'edited'").format(sql.Identifier(schema, "ev")))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    rng = ["--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat()]
    key = re.escape(render_key(spec, DAYS[1], "archive"))
    killing_cli(env, ["before-call", "PutObject", 1, key + r"\.manifest\.json$"], "archive", "--overwrite", *rng)
    gone(conn)
    assert list(tmp.iterdir()) == []
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    for day in DAYS:
        manifest = load_manifest(store, render_key(spec, day, "archive"))
        assert (manifest["fingerprint"] == old[day]) == (day != DAYS[0]), day
        assert store.head(manifest["object"]["key"])["ContentLength"] == manifest["object"]["bytes"]
    done = cli(env, "archive", "--overwrite", *rng)
    assert done.returncode == 0, done.stderr
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert len(keys) == 2 * len(DAYS), keys
    for day in DAYS:
        assert deep_verify(conn, store, spec, day) == []
        restore_day(conn, store, spec, day, into="new" if day == DAYS[0] else "existing", target=f"{schema}.back")
    assert rows_of(conn, schema, "back") == rows_of(conn, schema, "ev")


if __name__ == "__main__":
    _main_killing()
