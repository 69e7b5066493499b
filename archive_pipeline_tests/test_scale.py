"""The location at scale (issue #14): what the sensor keeps between ticks must never hide a change.

The sensor keeps, while its code server keeps the definitions loaded, the candidate days of each
(granularity, zone, start) and the declarative tables' children until a catalog fingerprint changes;
it builds run requests only for the days it asks about; naming mode reads only the names that start
as its pattern's.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os

import pytest
from dagster import DagsterInstance, build_sensor_context, instance_for_test
from psycopg import sql

from archive_pipeline.core import discovery
from archive_pipeline.core.config import TableSpec, parse_config
from archive_pipeline.core.discovery import ChildrenMemo, existing_days, naming_days
from archive_pipeline.core.errors import SourceError
from archive_pipeline.core.plan import select_days
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline.defs.sensors import WantedRun, candidate_days, untried
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.helpers import range_partitioned_events

D = dt.date(2024, 3, 10)


def _days(first: dt.date, n: int) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range(n)]


def _attach(conn, schema: str, name: str, day: dt.date, days: int = 1) -> None:
    conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier(schema), sql.Identifier(name), sql.Identifier(schema), sql.Literal(f"{day} 00:00+00"),
        sql.Literal(f"{day + dt.timedelta(days=days)} 00:00+00")))
    _rows_on(conn, schema, [day + dt.timedelta(days=n) for n in range(days)])


def _rows_on(conn, schema: str, days: list) -> None:
    """A row at noon of each day: a day a child covers is found only once it holds a row."""
    for day in days:
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (0, {})").format(sql.Identifier(schema),
                                                                       sql.Literal(f"{day} 12:00+00")))


def _events(conn, schema: str, children: list[tuple[str, str, str]]) -> None:
    """:func:`range_partitioned_events` with a row on every day of every child."""
    range_partitioned_events(conn, schema, children)
    for _, lo, hi in children:
        first, after = dt.date.fromisoformat(lo), dt.date.fromisoformat(hi)
        _rows_on(conn, schema, [first + dt.timedelta(days=n) for n in range((after - first).days)])


def _declarative(schema: str) -> TableSpec:
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"})


@pytest.fixture
def counted(monkeypatch) -> list[str]:
    """The tables whose children were read from the catalog (printed and checked), in order."""
    reads: list[str] = []
    read = discovery.child_ranges

    def counting(conn, spec):
        reads.append(spec.name)
        return read(conn, spec)

    monkeypatch.setattr(discovery, "child_ranges", counting)
    return reads


def test_kept_children_are_read_again_whenever_the_catalog_changed(conn, schema, counted):
    """Unchanged, a table's children are not read again; a child attached for an old day, a bound changed
    (DETACH and ATTACH), a child dropped, the table re-created: each is seen by the next call."""
    _events(conn, schema, [("ev_a", "2024-03-10", "2024-03-11"),
                                            ("ev_b", "2024-03-11", "2024-03-12")])
    spec = _declarative(schema)
    memo, candidates = ChildrenMemo(), _days(dt.date(2024, 3, 1), 20)

    def found() -> list[dt.date]:
        return existing_days(conn, spec, candidates, memo)

    assert found() == [D, D + dt.timedelta(days=1)] and len(counted) == 1
    assert found() == [D, D + dt.timedelta(days=1)] and len(counted) == 1  # kept
    _attach(conn, schema, "ev_old", dt.date(2024, 3, 1))  # a new partition of the first day: any age
    assert found() == [dt.date(2024, 3, 1), D, D + dt.timedelta(days=1)] and len(counted) == 2
    conn.execute(sql.SQL("ALTER TABLE {}.ev DETACH PARTITION {}.ev_b").format(*[sql.Identifier(schema)] * 2))
    conn.execute(sql.SQL("UPDATE {}.ev_b SET at = '2024-03-15 12:00+00'").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("ALTER TABLE {}.ev ATTACH PARTITION {}.ev_b FOR VALUES FROM ('2024-03-15 00:00+00') "
                         "TO ('2024-03-16 00:00+00')").format(*[sql.Identifier(schema)] * 2))
    assert found() == [dt.date(2024, 3, 1), D, dt.date(2024, 3, 15)] and len(counted) == 3
    conn.execute(sql.SQL("DROP TABLE {}.ev_a").format(sql.Identifier(schema)))
    assert found() == [dt.date(2024, 3, 1), dt.date(2024, 3, 15)] and len(counted) == 4
    conn.execute(sql.SQL("DROP TABLE {}.ev").format(sql.Identifier(schema)))
    _events(conn, schema, [("ev_a", "2024-03-12", "2024-03-13")])
    assert found() == [dt.date(2024, 3, 12)] and len(counted) == 5
    assert found() == [dt.date(2024, 3, 12)] and len(counted) == 5


def test_kept_children_never_hide_a_refusal(conn, schema, counted):
    """A renamed partition key column, a dropped table: refused on every call, as without the memo, and
    nothing refused is kept; a child that straddles a day boundary is read again and holds both its days."""
    _events(conn, schema, [("ev_a", "2024-03-10", "2024-03-11")])
    spec = _declarative(schema)
    memo, candidates, s = ChildrenMemo(), _days(dt.date(2024, 3, 1), 20), sql.Identifier(schema)
    assert existing_days(conn, spec, candidates, memo) == [D]
    conn.execute(sql.SQL("CREATE TABLE {}.ev_half PARTITION OF {}.ev FOR VALUES FROM ('2024-03-12 12:00+00') "
                         "TO ('2024-03-13 12:00+00')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (0, '2024-03-12 18:00+00'), (0, '2024-03-13 06:00+00')").format(s))
    for _ in range(2):
        assert existing_days(conn, spec, candidates, memo) == [D, dt.date(2024, 3, 12), dt.date(2024, 3, 13)]
    conn.execute(sql.SQL("DROP TABLE {}.ev_half").format(s))
    assert existing_days(conn, spec, candidates, memo) == [D]
    conn.execute(sql.SQL("ALTER TABLE {}.ev RENAME COLUMN at TO at_renamed").format(s))
    with pytest.raises(SourceError, match="RANGE bounds on its day_column 'at'"):
        existing_days(conn, spec, candidates, memo)
    conn.execute(sql.SQL("DROP TABLE {}.ev").format(s))
    with pytest.raises(SourceError, match="does not exist"):
        existing_days(conn, spec, candidates, memo)


def test_the_sensor_sees_a_new_old_partition_on_its_next_tick(pg, conn, schema, archive_env, counted):
    """Two ticks of one loaded sensor (what the code server runs): the second reads no unchanged table's
    children again, still finds a partition created since for a day two weeks old, says what it inspected,
    and finds both days of a child that straddles them (noon to noon), and then that it is gone."""
    today, s = utc_today(), sql.Identifier(schema)
    _events(conn, schema, [("ev_a", str(today - dt.timedelta(days=2)), str(today))])
    start = today - dt.timedelta(days=30)
    config = parse_config({"tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": start.isoformat(),
         "partitioning": {"mode": "declarative"}}]})
    repo = build_definitions(config).get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    resources = {"postgres": PostgresResource(dsn=pg.dsn)}
    with instance_for_test() as instance:
        def tick():
            return sensor.evaluate_tick(build_sensor_context(instance=instance, resources=resources,
                                                             repository_def=repo))

        first = sorted(r.partition_key for r in tick().run_requests)
        assert first == [str(today - dt.timedelta(days=n)) for n in (2, 1)]
        reads = len(counted)
        tick()
        assert len(counted) == reads  # unchanged: kept
        old = today - dt.timedelta(days=14)
        _attach(conn, schema, "ev_old", old)
        assert sorted(r.partition_key for r in tick().run_requests) == sorted(
            str(d) for d in (old, today - dt.timedelta(days=2), today - dt.timedelta(days=1)))
        conn.execute(sql.SQL("CREATE TABLE {}.ev_half PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, s, sql.Literal(f"{today - dt.timedelta(days=10)} 12:00+00"),
            sql.Literal(f"{today - dt.timedelta(days=9)} 12:00+00")))
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (0, {}), (0, {})").format(
            s, sql.Literal(f"{today - dt.timedelta(days=10)} 18:00+00"),
            sql.Literal(f"{today - dt.timedelta(days=9)} 06:00+00")))
        assert sorted(r.partition_key for r in tick().run_requests) == sorted(
            str(d) for d in (old, today - dt.timedelta(days=10), today - dt.timedelta(days=9),
                             today - dt.timedelta(days=2), today - dt.timedelta(days=1)))
        conn.execute(sql.SQL("DROP TABLE {}.ev_half").format(s))
        assert len(tick().run_requests) == 3


def test_candidate_days_are_shared_by_tables_of_one_start_and_renewed_each_day():
    """Tables of the same granularity, zone and start share one list, equal to the selection itself; another
    start or zone gets its own; a new day drops the lists of the day before."""
    def spec(**fields) -> TableSpec:
        return TableSpec(**{"name": "a.b", "day_column": "at", "start_date": "2024-01-01",
                            "partitioning": {"mode": "declarative"}, **fields})

    memo: dict = {}
    today = dt.date(2024, 3, 10)
    first = candidate_days(spec(), today, 7, memo)
    assert first == select_days(spec(), dt.date(2024, 1, 1), None, today=today)
    assert candidate_days(spec(name="a.c"), today, 7, memo) is first
    berlin = candidate_days(spec(timezone="Europe/Berlin"), today, 7, memo)
    assert berlin is not first and berlin == select_days(spec(timezone="Europe/Berlin"), dt.date(2024, 1, 1), None,
                                                         today=today)
    column = candidate_days(spec(partitioning={"mode": "column"}), today, 7, memo)
    assert [p.key for p in column] == [str(d) for d in _days(dt.date(2024, 3, 3), 7)]
    assert len(memo) == 3
    later = candidate_days(spec(), today + dt.timedelta(days=1), 7, memo)
    assert later[-1].key == "2024-03-10" and len(memo) == 1


def test_run_requests_are_built_only_for_the_batches_looked_at(tmp_path):
    """A first tick finds every day of three years of each table; untried() takes what it asks about from
    an iterator and stops once the cap is filled, so the days behind it are never built."""
    built = itertools.count()

    def wanted():
        for n in range(100_000):
            next(built)
            yield WantedRun(f"job:{n}", "job", str(n), "a.b")

    with instance_for_test() as instance:
        assert isinstance(instance, DagsterInstance)
        chosen, tried = untried(instance, wanted(), 50)
    assert [w.partition_key for w in chosen] == [str(n) for n in range(50)] and tried == []
    assert next(built) <= 100  # one batch of max(cap, 100)


def test_naming_mode_reads_only_names_that_start_as_the_pattern(conn, schema):
    """The pattern's leading text filters in the catalog; a near miss is still refused by the pattern, a pattern
    that starts with a code reads every name, and LIKE's wildcards in the leading text are plain characters."""
    s = sql.Identifier(schema)
    for name in ("ev_20240310", "ev_20240311", "ev_2024031", "evx20240312", "20240313_ev", "a_b%_20240314",
                 "aXb%_20240315"):
        conn.execute(sql.SQL("CREATE TABLE {}.{} (id int)").format(s, sql.Identifier(name)))

    def found(pattern: str) -> list[str]:
        spec = TableSpec(name=f"{schema}.t", start_date="2024-03-01",
                         partitioning={"mode": "naming", "pattern": pattern})
        return [p.key for p in naming_days(conn, spec)]

    assert found("ev_%Y%m%d") == ["2024-03-10", "2024-03-11"]
    assert found("%Y%m%d_ev") == ["2024-03-13"]
    assert found("a_b%%_%Y%m%d") == ["2024-03-14"]


def test_one_load_of_the_location_builds_the_definitions_once(tmp_path, monkeypatch):
    """Dagster 1.13 calls the location's ``defs`` twice per load (to find the targets, then to reconstruct
    the repository), and every table was checked in the catalog twice: the load took twice its time and
    `dagster definitions validate` printed each warning twice. A second call with the same table file and
    environment returns the first one's definitions; a changed file builds them again."""
    import subprocess
    import sys

    from archive_pipeline import definitions

    config = tmp_path / "tables.yaml"
    config.write_text("tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-03-10}\n")
    env = {**os.environ, "ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_S3_BUCKET": "bucket",
           "ARCHIVE_PG_DSN": "postgresql://archiver@127.0.0.1:1/app", "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m",
                          "archive_pipeline.definitions"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (out.stdout + out.stderr).count("could not reach the source database") == 1, out.stdout + out.stderr
    for name in ("ARCHIVE_PIPELINE_CONFIG", "ARCHIVE_S3_BUCKET", "ARCHIVE_PG_DSN"):
        monkeypatch.setenv(name, env[name])
    first = definitions.defs()
    assert definitions.defs() is first
    config.write_text(config.read_text().replace("2024-03-10", "2024-03-11"))
    assert definitions.defs() is not first


def test_the_first_tick_after_a_load_reuses_the_children_the_load_checked(pg, conn, schema, archive_env, counted):
    """The load reads and checks every declarative table's children; the sensor's first tick after it read
    them all again (3.8 s of its 5 s goal at 99 tables). They are now handed to the sensor: its first tick
    reads none while the catalog is as the load saw it, and reads a table again once it changed."""
    today = utc_today()
    _events(conn, schema, [("ev_a", str(today - dt.timedelta(days=2)), str(today))])
    config = parse_config({"tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": (today - dt.timedelta(days=30)).isoformat(),
         "partitioning": {"mode": "declarative"}}]})
    repo = build_definitions(config).get_repository_def()
    assert counted == [f"{schema}.ev"]  # the load's check
    sensor = repo.get_sensor_def("archive_new_days")
    with instance_for_test() as instance:
        def tick():
            return sensor.evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))

        assert sorted(r.partition_key for r in tick().run_requests) == [
            str(today - dt.timedelta(days=n)) for n in (2, 1)]
        assert counted == [f"{schema}.ev"]  # nothing read again
        _attach(conn, schema, "ev_old", today - dt.timedelta(days=14))
        assert len(tick().run_requests) == 3 and counted == [f"{schema}.ev"] * 2
