"""Hunt 7 (mr): hourly and monthly tables in zones with clock changes, through the command line's selections,
archive, list, compare, prune and restore. Each test asserts what the README promises and fails today."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner
from psycopg import sql

from archive_pipeline.cli import main

APIA = "Pacific/Apia"


def cli(*args: str) -> tuple[int, dict]:
    """The command line in process (click's runner), ``--json``: (exit code, answer)."""
    done = CliRunner().invoke(main, [*args, "--json"])
    return done.exit_code, json.loads(done.stdout)


def configure(tmp_path, monkeypatch, *tables: dict) -> None:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": list(tables)}))
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(config))


def test_a_day_apia_skipped_is_refused_for_an_hourly_table_not_read_as_the_next_day(conn, schema, archive_env,
                                                                                     tmp_path, monkeypatch):
    """An hourly ``Pacific/Apia`` table (the zone skipped 2011-12-30 entirely: 29th 23:59:59 -10:00 was followed
    by 31st 00:00 +14:00). A user runs ``archive --day 2011-12-30``. The command archives the 24 hours of
    2011-12-31 and exits 0, as if the day asked for had been done: ``periods.span`` reads the day that does not
    exist as the next one. For a daily table the same command is refused ("there is no day 2011-12-30 in
    Pacific/Apia (its clocks skipped it; the next day is 2011-12-31)", ``cli._require_existing_day``), but that
    check returns early for any granularity but daily. README: the selection is the table's periods that
    overlap the day named; no hour overlaps a day that never was, so it must be refused (exit 2) and nothing
    archived."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id serial, at timestamptz NOT NULL)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev (at) SELECT x FROM generate_series('2011-12-30 10:00+00'::timestamptz, "
                         "'2011-12-31 09:59+00', '17 min') x").format(s))  # Apia's 2011-12-31, 00:00..23:59 +14
    configure(tmp_path, monkeypatch, {"name": f"{schema}.ev", "day_column": "at", "granularity": "hourly",
                                      "timezone": APIA, "start_date": "2011-12-29"})
    code, answer = cli("archive", "--day", "2011-12-30")
    assert code == 2, answer
    assert "2011-12-30" in answer["error"], answer
    code, listed = cli("list")
    assert code == 0 and {d["state"] for d in listed["days"]} == {"missing"}, listed
