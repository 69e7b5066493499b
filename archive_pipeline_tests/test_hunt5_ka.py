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
    SIGKILLed while D2 downloads (D1 committed). The README says of `restore --from/--to`: "the same command run
    again resumes". Expected: the same command again ends with the table holding exactly the archived rows of
    D1..D3 (D1 reported already restored or left alone, D2 and D3 loaded)."""
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
