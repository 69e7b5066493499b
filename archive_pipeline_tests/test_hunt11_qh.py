"""Hunt 11 qh: configuration and time at their edges (zones, granularities, the calendar's ends, YAML).
Each test asserts the right behaviour and fails on the code as it was when written."""

from __future__ import annotations

from psycopg import sql

from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config


def test_day_in_the_year_1_of_a_zone_east_of_utc_is_not_called_a_reversed_range(pg, s3, bucket, conn, schema,
                                                                                 tmp_path):
    """``archive-pipeline list --day 0001-01-01`` (or ``archive``/``compare``) on a daily Europe/Berlin table: the
    day's bounds in Berlin (LMT +00:53) fall before Python's first instant, both ends are clamped to the same
    edge (plan._bound's OverflowError branch), and the command exits 2 with "--from 0001-01-01 is after --to
    0001-01-01 (in Europe/Berlin ...)": the user gave no --from or --to, and one day is never after itself. The
    same day on a UTC table says what is true: no period of the table in the selection (before start_date).
    Expected: no false "after" claim; the message names the table's start_date (as for any day before it).
    Fix idea: in reversed_range, compare the clamped bounds only when neither overflowed (or treat equal
    clamped edges as "before start_date")."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(sql.Identifier(schema, "ev")))
    config = write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-01-01",
                                      "timezone": "Europe/Berlin"}])
    result = cli(make_env(pg, s3.endpoint_url, bucket, config), "list", "--day", "0001-01-01")
    said = result.stdout + result.stderr
    assert "is after --to" not in said, said
    assert "2024-01-01" in said, said  # the start_date the day lies before
