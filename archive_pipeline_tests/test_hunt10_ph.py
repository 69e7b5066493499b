"""Hunt 10 (ph): a review of today's fixes (renames during proofs and restores, pending removals committing during
checks, manifest shape checks, a date day column's zone change, the dry run's algorithm, CLI suggestions, Dagster
descriptions, Parquet's snapshot). Real PostgreSQL and moto S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.plan import compare_days

DAY = dt.date(2024, 3, 10)


def test_a_zone_change_of_a_table_whose_day_column_is_a_domain_over_date_refuses_the_removal(conn, schema, store):
    """A table's day_column is a domain over ``date`` (``CREATE DOMAIN bday AS date``), archived in UTC; the user
    then sets ``timezone: Europe/Berlin``. For a date the zone changes nothing about a day's rows (the day filter
    reads the column's base type: source._bound_values), and ``compare`` calls the day equal. Retention then removes
    the day: refused, "its archive holds the daily period 2024-03-10 in UTC ... another period with the same key".
    A plain ``date`` column's day is removed since today's fix. Should: removed alike. Cause:
    manifest._dated_by_calendar compares the manifest's pg_type with "date", and a domain's pg_type is its own
    name (its base type is not recorded, or not consulted)."""
    conn.execute(sql.SQL("CREATE DOMAIN {} AS date").format(sql.Identifier(schema, "bday")))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at {} NOT NULL)").format(sql.Identifier(schema, "t"),
                                                                           sql.Identifier(schema, "bday")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10'), (2, '2024-03-11')").format(
        sql.Identifier(schema, "t")))
    table = dict(name=f"{schema}.t", day_column="at", start_date=dt.date(2024, 3, 9), format="jsonl",
                 partitioning={"mode": "column"}, retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, TableSpec(**table), DAY, store)
    berlin = TableSpec(**table, timezone="Europe/Berlin")
    [compared] = compare_days(conn, berlin, store, [DAY])
    assert compared.result == "equal", compared  # (the premise: the same rows, by fingerprint)
    removal = remove_day(conn, berlin, DAY, store)
    assert removal.rows == 1


def test_a_from_hour_of_tomorrow_is_not_blamed_on_start_date(pg, s3, bucket, conn, schema, tmp_path):
    """On an hourly UTC table a user runs `archive-pipeline archive --from <tomorrow>-03:00` (a slip of the date;
    in UTC that hour has not begun). It is refused (exit 2), but stderr says "s.ev: no hourly period of the table
    in the selection (its first day, start_date, is 2024-03-10)": the user looks at start_date, years before the
    date given. Today's fix (cli._not_over) refuses only hours of a day after tomorrow (in a zone 14 hours ahead
    tomorrow's may be over) and leaves the rest to plan.not_ended, which with no --to takes now as the selection's
    end, finds nothing between a start after now and now, and answers False, so Run.days blames start_date (the
    cause test_hunt10_pe named). Should: says the hour has not ended yet / is after today, never start_date."""
    from archive_pipeline_tests.test_hunt10_pe import _hourly, cli, make_env

    config = _hourly(conn, schema, tmp_path)
    env = make_env(pg, s3.endpoint_url, bucket)
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    done = cli(env, "archive", "--config", str(config), "--from", f"{tomorrow}-03:00")
    assert done.returncode == 2, done.stderr
    assert "start_date" not in done.stderr.split("Usage:")[0], done.stderr


def test_list_check_source_while_a_naming_mode_drop_commits_is_no_unexpected_error(pg, conn, schema, store,
                                                                                   monkeypatch):
    """A naming-mode table (one table per day, ``ev_%Y%m%d``) with retention action ``drop``. A user runs ``list
    --check-source`` (plan.day_statuses) while retention removes an archived day: its pending mark is written, its
    DROP TABLE not yet run. ``list`` reads the pending mark, asks again whether the source has the day (it has),
    and the DROP commits just before the day is fingerprinted. What happens: the listing fails with SourceError
    "no table for 2024-03-10 of s.ev: table 's.ev_20240310' does not exist ...; to fix: check the table's name in
    the YAML configuration": nothing is wrong with the configuration. Today's fix for this very race (a pending
    removal committing before the fingerprint, plan._day_statuses: ``archived.removed and current.rows == 0``)
    covers a DELETE only; for a drop, source_fingerprint raises NO_PERIOD_TABLE, which _day_statuses does not
    catch (only ColumnsChangedError and psycopg.Error), where ``compare`` (plan.compare_days) does for a removed
    day. Should: the day is listed as removed (dropped), as when the drop committed a moment earlier."""
    import threading

    from archive_pipeline.core import keys, lifecycle, plan
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline_tests.test_race_hunt import wait_until

    day_table = sql.Identifier(schema, f"ev_{DAY:%Y%m%d}")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(day_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(1, 5) g").format(day_table))
    spec = TableSpec(name=f"{schema}.ev", start_date=DAY, partitioning={"mode": "naming", "pattern": "ev_%Y%m%d"},
                     retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    go_commit, committed, go_done = threading.Event(), threading.Event(), threading.Event()
    recheck, marked_by_us, probed = lifecycle._recheck_and_remove, lifecycle._marked_by_us, plan.present_days
    calls = []

    def held_before_drop(*args, **kwargs):  # (the DROP's lock would hold list's reads until it commits)
        assert go_commit.wait(30)
        return recheck(*args, **kwargs)

    def held_before_done(*args, **kwargs):
        committed.set()
        assert go_done.wait(30)
        return marked_by_us(*args, **kwargs)

    def commit_after_the_second_probe(*args, **kwargs):  # (the first is _found's, the second asks again)
        out = probed(*args, **kwargs)
        calls.append(out)
        if len(calls) == 2:
            go_commit.set()
            assert committed.wait(30), outcome
        return out

    monkeypatch.setattr(lifecycle, "_recheck_and_remove", held_before_drop)
    monkeypatch.setattr(lifecycle, "_marked_by_us", held_before_done)
    outcome: dict = {}

    def remove() -> None:
        with pg.connect() as removing:
            try:
                outcome["result"] = lifecycle.remove_day(removing, spec, DAY, store)
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc

    remover = threading.Thread(target=remove, daemon=True)
    remover.start()
    try:
        key = keys.table_day_key(spec, spec.period(DAY), store.prefix)
        assert wait_until(lambda: (load_manifest(store, key) or {}).get("removed") is not None or "error" in outcome)
        monkeypatch.setattr(plan, "present_days", commit_after_the_second_probe)
        [status] = plan.day_statuses(conn, spec, store, [DAY], check_source=True)
    finally:
        go_commit.set()
        go_done.set()
        remover.join(60)
    assert "error" not in outcome, outcome  # the removal itself went through
    assert status.state != "changed", status


def test_the_command_a_deep_verify_not_checked_suggests_proves_the_day_again(pg, s3, conn, schema, bucket, tmp_path,
                                                                            monkeypatch):
    """A user runs `archive-pipeline verify --deep --day 2024-03-10` on a table with an enum column while a
    migration renames one of its labels: the proof gives no verdict (today's verify._renamed_meanwhile: retryable,
    "prove the day again"), and the CLI's remedy says "verify the day again (archive-pipeline verify --config ...
    --table s.ev --day 2024-03-10) once the database and store answer". Pasted (as today's change made suggestions
    whole commands to paste), that command has no --deep: it checks only the object's size and ETag and answers
    "ok", while the day's rows were never proven against the source. Cause: cli._verify_remedy -> Run.suggest
    ('verify', table, day) never passes the options the failed check ran with (--deep, --download). Should: the
    suggested command verifies the way the one that failed did (with --deep)."""
    import json
    import shlex

    from click.testing import CliRunner

    from archive_pipeline.cli import main
    from archive_pipeline_tests.test_hunt10_pc import _after_load, _enum_table
    from archive_pipeline_tests.test_hunt9_oh import _cli_env

    _enum_table(conn, schema)
    env = _cli_env(pg, s3, bucket, tmp_path, schema, "jsonl")
    archived = CliRunner(env=env).invoke(main, ["archive", "--day", DAY.isoformat()])
    assert archived.exit_code == 0, archived.output
    other = _after_load(pg, monkeypatch, f'ALTER TYPE "{schema}".mood RENAME VALUE \'ok\' TO \'fine\'')
    try:
        done = CliRunner(env=env).invoke(main, ["verify", "--deep", "--day", DAY.isoformat(), "--json"])
    finally:
        other.close()
    [day] = json.loads(done.stdout)["days"]
    assert not day["ok"] and "not checked (retryable)" in day["problems"][0], day  # (the premise)
    suggested = re.search(r"\((archive-pipeline verify [^)]*)\)", day["remedy"])
    assert suggested, day["remedy"]
    assert "--deep" in shlex.split(suggested[1]), day["remedy"]
