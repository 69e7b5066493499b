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
    code, listed = cli("list", "--from", "2011-12-29", "--to", "2012-01-01")  # (not every hour since 2011)
    assert code == 0 and {d["state"] for d in listed["days"]} == {"missing"}, listed


def test_a_monthly_naming_table_with_a_table_per_day_is_not_archived_as_its_first_days_table(
        conn, schema, archive_env, tmp_path, monkeypatch):
    """A legacy schema keeps one table per day (``ev_20240301``, ``ev_20240302``, ``ev_20240315``, two rows
    each). A user wants monthly archives and configures ``granularity: monthly``, naming mode, ``pattern:
    ev_%Y%m%d``. The configuration loads (the pattern has the ``%Y`` and ``%m`` a monthly table needs, and
    reads back), ``list`` shows March as missing, and ``archive --day 2024-03`` reports March ``archived``,
    exit 0, green, with 2 rows: the month's "table" is ``period.start.strftime(pattern)``, ``ev_20240301``,
    and the tables of the other 30 days are never read (nor ever listed as missing). Promise: a green
    partition holds exactly that period's rows. Either such a pattern (a code finer than the granularity) is
    refused at load naming the table and the pattern, or the month's archive holds all six rows."""
    s = sql.Identifier(schema)
    for day in ("20240301", "20240302", "20240315"):
        conn.execute(sql.SQL("CREATE TABLE {}.{} (id int, at timestamptz)").format(s, sql.Identifier(f"ev_{day}")))
        conn.execute(sql.SQL("INSERT INTO {}.{} VALUES (1, %s::date), (2, %s::date)").format(
            s, sql.Identifier(f"ev_{day}")), (day, day))
    configure(tmp_path, monkeypatch, {"name": f"{schema}.ev", "granularity": "monthly", "timezone": "Europe/Berlin",
                                      "start_date": "2024-03-01",
                                      "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}})
    code, answer = cli("archive", "--day", "2024-03")
    if code == 2:
        assert f"{schema}.ev" in answer["error"] and "pattern" in answer["error"], answer
    else:
        assert code == 0 and [d["rows"] for d in answer["days"]] == [6], answer
