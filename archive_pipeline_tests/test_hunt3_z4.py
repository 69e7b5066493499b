"""Hunt z4: hourly and monthly tables in zones with DST, end to end (the command line's archive, list, verify
--deep, compare, prune and restore; the core removal). Each test asserts the correct behaviour; the guards at the
end pass and keep what works working: every period's archive holds exactly the rows of that period (checked
against the source with bounds written independently of the code under test), keys are as the README says."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from psycopg import sql

from archive_pipeline.cli import main
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline_tests.helpers import decompress, download, read_jsonl

BERLIN = "Europe/Berlin"
SAO_PAULO = "America/Sao_Paulo"


def cli(*args: str) -> tuple[int, dict]:
    """The command line in process (click's runner), ``--json``: (exit code, answer)."""
    done = CliRunner().invoke(main, [*args, "--json"])
    return done.exit_code, json.loads(done.stdout)


def configure(tmp_path, monkeypatch, *tables: dict) -> None:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": list(tables)}))
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(config))


def wall_clock_hours(conn, schema: str, first: str, hours: int) -> None:
    """``<schema>.ev (id, at timestamp, v)`` partitioned by range of ``at`` into one child per wall-clock hour
    from ``first`` (``ev_<ddhh>``, as pg_partman names them), a row every 7 minutes in each."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id serial, at timestamp NOT NULL, v text) PARTITION BY RANGE (at)")
                 .format(s))
    for n in range(hours):
        lo, hi = (conn.execute("SELECT %s::timestamp + %s * interval '1 hour'", (first, k)).fetchone()[0]
                  for k in (n, n + 1))
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"ev_{lo:%d%H}"), s, sql.Literal(lo), sql.Literal(hi)))
    conn.execute(sql.SQL("INSERT INTO {}.ev (at, v) SELECT x, 'row' FROM generate_series(%s::timestamp, "
                         "%s::timestamp + %s * interval '1 hour' - interval '1 second', '7 min') x").format(s),
                 (first, first, hours))


def count(conn, schema: str, where: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}.ev WHERE " + where).format(sql.Identifier(schema))).fetchone()[0]


# --- bugs ---------------------------------------------------------------------------------------------


def test_prune_over_a_fall_back_night_does_not_refuse_the_empty_first_occurrence(conn, schema, archive_env, tmp_path,
                                                                                  monkeypatch):
    """The same wall-clock hourly table: ``archive --day 2024-10-27`` archives 24 hours and reports the first
    2024-10-27-02:00 (+02:00) ``no-data`` (README: wall-clock values all go to the second 02:00, the first is
    empty), writing nothing for it. ``prune --day 2024-10-27-02:00`` then refuses it and exits 1: "has no archive
    at …T02.jsonl.zst; archive it first", a remedy that does nothing (``archive`` says "no data" again). prune
    takes a period as present when some partition's *instant* range overlaps it (``present_days(catalog=True)``:
    ``ev_2701`` runs to 02:00+01:00), and ``remove_day`` refuses a day without a manifest even when the source has
    no row of it. Every prune over a fall-back night (its default range: every due hour) exits 1, every year."""
    wall_clock_hours(conn, schema, "2024-10-27 00:00", 24)
    configure(tmp_path, monkeypatch, {"name": f"{schema}.ev", "day_column": "at", "granularity": "hourly",
                                      "timezone": BERLIN, "start_date": "2024-10-26",
                                      "partitioning": {"mode": "declarative"},
                                      "retention": {"keep_days": 1, "action": "drop"}})
    code, archived = cli("archive", "--day", "2024-10-27")
    assert code == 0, archived
    assert {d["day"]: d["status"] for d in archived["days"]}["2024-10-27-02:00"] == "no-data"
    code, pruned = cli("prune", "--day", "2024-10-27-02:00")
    assert code == 0 and pruned["ok"], pruned
    assert [d for d in pruned["days"] if d["status"] in ("refused", "failed")] == []


@pytest.mark.parametrize("command", [["list"], ["archive"], ["compare"]])
def test_an_hourly_table_on_a_date_column_is_a_configuration_error_naming_the_table(conn, schema, archive_env,
                                                                                    tmp_path, monkeypatch, command):
    """A user configures ``granularity: hourly`` for a table whose day column is a ``date`` and runs the command
    line over two tables. The code location refuses this at load ("table '<t>': setting 'granularity': hourly
    needs a timestamp or timestamptz day_column, and 'at' is a date"). The command line instead exits 1 (which
    means "differences found or a day failed") with "column 'at' is a date, which cannot hold hours; use
    granularity daily or monthly, or a timestamp column": no table, no setting, so with several tables the user
    cannot tell which one is wrong, and the other table's days are not listed either. README: a configuration
    error exits 2 with a message naming the table and the setting; every failure names its table."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ok (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10')").format(s))
    configure(tmp_path, monkeypatch,
              {"name": f"{schema}.ok", "day_column": "at", "start_date": "2024-03-10"},
              {"name": f"{schema}.ev", "day_column": "at", "granularity": "hourly", "timezone": BERLIN,
               "start_date": "2024-03-10"})
    code, answer = cli(*command, "--day", "2024-03-10")
    assert code == 2, answer
    assert f"{schema}.ev" in answer["error"] and "granularity" in answer["error"], answer


# --- guards (pass) ------------------------------------------------------------------------------------


def test_guard_a_25_hour_day_end_to_end_through_the_command_line(conn, schema, archive_env, s3_client, tmp_path,
                                                                  monkeypatch):
    """Hourly Berlin table on ``timestamptz``, one partition per hour: ``archive --day 2024-10-27`` archives 25
    hours under distinct keys (the repeated hour ``…T02+0100``), each holding exactly the rows of its UTC hour;
    ``verify --deep`` and ``compare`` agree; ``prune`` drops the second 02:00's partition and ``restore --into
    original`` re-creates it with its bound and rows."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id serial, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)")
                 .format(s))
    for n in range(25):  # Berlin's 2024-10-27: the 25 UTC hours from 2024-10-26 22:00
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM "
                             "('2024-10-26 22:00+00'::timestamptz + {} * interval '1 hour') TO "
                             "('2024-10-26 22:00+00'::timestamptz + {} * interval '1 hour')").format(
            s, sql.Identifier(f"ev_{n:02d}"), s, sql.Literal(n), sql.Literal(n + 1)))
    conn.execute(sql.SQL("INSERT INTO {}.ev (at, v) SELECT x, 'row' FROM generate_series("
                         "'2024-10-26 22:00+00'::timestamptz, '2024-10-27 22:59:59+00', '7 min') x").format(s))
    configure(tmp_path, monkeypatch, {"name": f"{schema}.ev", "day_column": "at", "granularity": "hourly",
                                      "timezone": BERLIN, "start_date": "2024-10-26",
                                      "partitioning": {"mode": "declarative"},
                                      "retention": {"keep_days": 1, "action": "drop"}})
    code, archived = cli("archive", "--day", "2024-10-27")
    assert code == 0, archived
    days = archived["days"]
    assert len(days) == 25 and len({d["key"] for d in days}) == 25
    assert days[3]["day"] == "2024-10-27-02:00+0100"
    assert days[3]["key"] == f"archive/{schema}.ev/2024/10/2024-10-27/2024-10-27T02+0100.jsonl.zst"
    for n, d in enumerate(days):
        held = sorted(r["id"] for r in read_jsonl(decompress(download(s3_client, archive_env, d["key"]), "zstd")))
        source = [r[0] for r in conn.execute(sql.SQL(
            "SELECT id FROM {}.ev WHERE at >= '2024-10-26 22:00+00'::timestamptz + %s * interval '1 hour' "
            "AND at < '2024-10-26 22:00+00'::timestamptz + %s * interval '1 hour' ORDER BY id").format(s), (n, n + 1))]
        assert held == source and held, d["day"]
    assert cli("verify", "--deep", "--day", "2024-10-27-02:00+0100")[0] == 0
    code, compared = cli("compare", "--day", "2024-10-27")
    assert code == 0 and {d["result"] for d in compared["days"]} == {"equal"}
    bound = conn.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = %s::regclass",
                         (f"{schema}.ev_03",)).fetchone()[0]
    before = conn.execute(sql.SQL("SELECT array_agg((id, at, v) ORDER BY id) FROM {}.ev_03").format(s)).fetchone()[0]
    code, pruned = cli("prune", "--day", "2024-10-27-02:00+0100")
    assert code == 0 and [(d["status"], d["relation"]) for d in pruned["days"]] == [("removed", f"{schema}.ev_03")]
    code, restored = cli("restore", "--into", "original", "--day", "2024-10-27-02:00+0100")
    assert code == 0 and restored["days"][0]["created"] == [f"{schema}.ev_03"], restored
    assert conn.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = %s::regclass",
                        (f"{schema}.ev_03",)).fetchone()[0] == bound
    assert conn.execute(sql.SQL("SELECT array_agg((id, at, v) ORDER BY id) FROM {}.ev_03").format(s)).fetchone()[0] \
        == before


@pytest.mark.parametrize("column_type", ["timestamptz", "timestamp", "date"])
def test_guard_a_monthly_february_in_sao_paulo_end_to_end(conn, schema, archive_env, s3_client, tmp_path,
                                                          monkeypatch, column_type):
    """Monthly Sao Paulo table (DST ended 2019-02-17 at midnight: 23:00 of the 16th repeated), one partition per
    month bounded at local midnights: February 2019's archive holds exactly its rows (EXCEPT ALL both ways against
    the source with the month's bounds), is proven, dropped and restored into a re-created partition."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id serial, at " + column_type + " NOT NULL, v text) "
                         "PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(SAO_PAULO)))  # bounds and values: local time
    for month, lo, hi in (("01", "2019-01-01", "2019-02-01"), ("02", "2019-02-01", "2019-03-01"),
                          ("03", "2019-03-01", "2019-04-01")):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"ev_2019{month}"), s, sql.Literal(lo), sql.Literal(hi)))
    conn.execute(sql.SQL("INSERT INTO {}.ev (at, v) SELECT x, 'row' FROM generate_series('2019-01-01 00:00'::timestamp, "
                         "'2019-03-31 23:59', '97 min') x").format(s))
    month_rows = sql.SQL("SELECT id, at, v FROM {}.ev WHERE at >= '2019-02-01' AND at < '2019-03-01'").format(s)
    conn.execute("SET TimeZone = 'UTC'")
    configure(tmp_path, monkeypatch, {"name": f"{schema}.ev", "day_column": "at", "granularity": "monthly",
                                      "timezone": SAO_PAULO, "start_date": "2019-01-01", "format": "csv",
                                      "compression": "none", "partitioning": {"mode": "declarative"},
                                      "retention": {"keep_days": 1, "action": "drop"}})
    code, archived = cli("archive", "--from", "2019-02-16", "--to", "2019-02-17")  # days naming the month
    assert code == 0 and [(d["day"], d["key"]) for d in archived["days"]] == \
        [("2019-02-01", f"archive/{schema}.ev/2019/2019-02.csv")]
    conn.execute(sql.SQL("CREATE TABLE {}.feb (LIKE {}.ev)").format(s, s))
    with conn.cursor().copy(sql.SQL("COPY {}.feb FROM STDIN (FORMAT csv, HEADER)").format(s)) as copy:
        copy.write(download(s3_client, archive_env, archived["days"][0]["key"]))
    conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(SAO_PAULO)))
    for a, b in ((month_rows, sql.SQL("SELECT id, at, v FROM {}.feb").format(s)),
                 (sql.SQL("SELECT id, at, v FROM {}.feb").format(s), month_rows)):
        assert conn.execute(sql.SQL("SELECT count(*) FROM ({} EXCEPT ALL {}) d").format(a, b)).fetchone()[0] == 0
    rows = conn.execute(sql.SQL("SELECT count(*) FROM ({}) m").format(month_rows)).fetchone()[0]
    conn.execute("SET TimeZone = 'UTC'")
    assert archived["days"][0]["rows"] == rows > 0
    assert cli("verify", "--deep", "--day", "2019-02")[0] == 0
    code, pruned = cli("prune", "--day", "2019-02-01")
    assert code == 0 and [(d["status"], d["rows"]) for d in pruned["days"]] == [("removed", rows)]
    code, restored = cli("restore", "--into", "original", "--day", "2019-02")
    assert code == 0 and restored["days"][0]["created"] == [f"{schema}.ev_201902"], restored
    code, compared = cli("compare", "--rows", "--day", "2019-02")
    assert code == 0 and [d["result"] for d in compared["days"]] == ["equal"]
