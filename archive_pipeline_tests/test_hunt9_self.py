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


def test_a_range_restore_over_years_mostly_never_archived_asks_the_store_a_few_times_not_per_day(
        conn, schema, store, temp_dir):
    """``restore --from 2020-01-01 --to 2024-03-31`` of a table archived only on two days: each of the 1,552
    days without an archive cost a GET, a confirming HEAD and a listing (~0.12 s a day: minutes here, a quarter
    of an hour over 25 years). One listing per stretch of days tells them absent; the archived days are still
    restored and proven, and every other day is reported missing."""
    import datetime as dt

    from psycopg import sql

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import restore_days

    day = dt.date(2024, 3, 10)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date NOT NULL)").format(sql.Identifier(schema, "log")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {} + (g % 2) * 2 FROM generate_series(1, 10) g").format(
        sql.Identifier(schema, "log"), sql.Literal(day)))
    spec = TableSpec(name=f"{schema}.log", day_column="at", start_date=dt.date(2020, 1, 1), format="csv")
    for archived in (day, day + dt.timedelta(days=2)):
        archive_partition(conn, spec, archived, store, temp_dir=temp_dir)
    calls: list[str] = []
    store.client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    first, last = dt.date(2020, 1, 1), dt.date(2024, 3, 31)
    restored = restore_days(conn, store, spec, first, last, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert [r.rows for r in restored.results] == [5, 5] and all(r.fingerprint_checked for r in restored.results)
    assert len(restored.missing) == (last - first).days + 1 - 2
    assert len(calls) < 60, sorted(set(calls))  # 2 listings and the two days' own requests, not ~4,600
