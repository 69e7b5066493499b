"""The twenty-fourth session's own tests of what it changed beyond the hunts' findings."""

from __future__ import annotations

import shlex

from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config


def test_the_overwrite_commands_a_ranged_archive_suggests_carry_the_config_it_was_given(
        pg, s3, bucket, conn, schema, tmp_path):
    """A user runs ``archive --config /etc/x.yaml --from ... --to ...``; a day archived under another format
    fails as needing overwrite. The suggested command must carry the same ``--config``: without it,
    pasting it reads ./archive_tables.yaml (another table list, or none) and fails or archives elsewhere."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, v text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 minute', 'v' "
                 "FROM generate_series(1, 20) g")
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-10",
             "key_template": "{prefix}/{schema}.{table}/{date}"}
    csv_config = write_config(tmp_path, [{**table, "format": "csv"}])
    env = make_env(pg, s3.endpoint_url, bucket, csv_config)
    assert cli(env, "archive", "--day", "2024-03-10").returncode == 0
    other = tmp_path / "other dir"
    other.mkdir()
    config = write_config(other, [{**table, "format": "jsonl"}])
    env = make_env(pg, s3.endpoint_url, bucket, config)
    env.pop("ARCHIVE_PIPELINE_CONFIG", None)
    done = cli(env, "archive", "--config", str(config), "--from", "2024-03-10", "--to", "2024-03-10")
    assert done.returncode == 1, (done.stdout, done.stderr)
    suggested = f"archive --config {shlex.quote(str(config))} --table {schema}.ev --day 2024-03-10 --overwrite"
    assert suggested in done.stderr.replace("\n", ""), done.stderr
    again = cli(env, *shlex.split(suggested))  # pasted as it is, it works
    assert again.returncode == 0, (again.stdout, again.stderr)
