"""Hunt 5 (ka): a process killed (SIGKILL) between two steps of a writing operation, and what the same command
run again then does."""

from __future__ import annotations

import json
import re

from psycopg import sql

from archive_pipeline.core.archive import render_key
from archive_pipeline_tests.test_hunt3_o import (DAYS, _archived, cli, gone, killing_cli, make_env, rows_of,
                                                 write_config)


def test_a_killed_range_restore_into_the_original_table_is_finished_by_running_it_again(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """After `prune` removed D1..D3, a user runs `restore --from D1 --to D3 --into original` and the process is
    SIGKILLed while D2 downloads (D1 committed; SIGKILL prints nothing, unlike Ctrl-C, which names the command
    that restores the rest). The same command again loads D1 a second time, fails its check and stops the range
    there ("the archive does not hold the rows it was proven to hold (altered after it was written), or the target
    already held other rows of the day"): no re-run of the range ever
    brings back D2 and D3, and the message first blames the archive. The README says of `restore --from/--to`:
    "the same command run again resumes". Expected: the same command again ends with the table holding exactly
    the archived rows of D1..D3 (D1, whose rows the table holds exactly as archived, reported already restored;
    D2 and D3 loaded)."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS, rows_per_day=40, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": "drop"}}
    spec, _ = _archived(conn, [table], s3_client, bucket)
    before = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(schema, "events"))).fetchall()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    rng = ["--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat()]
    pruned = cli(env, "prune", *rng)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    args = ["restore", *rng, "--into", "original"]
    killing_cli(env, ["after-call", "GetObject", 1, re.escape(render_key(spec, DAYS[1], "archive")) + "$"], *args)
    gone(conn)
    again = cli(env, *args, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    after = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(schema, "events"))).fetchall()
    assert after == before


def test_a_prune_killed_before_its_commit_is_not_listed_as_a_day_dropped_and_restored(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """`prune --day D` (retention drop) is SIGKILLed right after the manifest's "pending" mark was written, before
    the removing transaction committed: the drop was rolled back, D's partition and rows are all still in the
    source, nothing was ever restored. The user then runs `list --day D` to see where things stand: it says
    "back in the source (restored after its drop at …)": a drop and a restore that never happened (killed after
    the COMMIT, the same `list` says "dropped from the source at … (pending)"). Expected: `list` does not claim
    the day was dropped and restored; it shows the removal as unfinished ("pending"), which the next run of the
    day settles."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS, rows_per_day=30, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": "drop"}}
    spec, _ = _archived(conn, [table], s3_client, bucket)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    key = render_key(spec, DAYS[1], "archive")
    day = ["--day", DAYS[1].isoformat()]
    # the first PutObject of the manifest is the "pending" mark, written inside the removing transaction
    killing_cli(env, ["after-call", "PutObject", 1, re.escape(key) + r"\.manifest\.json$"], "prune", *day)
    gone(conn)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events_20240311"))
                        ).fetchone()[0] == 30  # nothing was removed
    listed = cli(env, "list", "--json", *day)
    assert listed.returncode == 0, listed.stderr
    note = json.loads(listed.stdout)["days"][0].get("note") or ""
    assert "restored" not in note, note
    assert "pending" in note, note
