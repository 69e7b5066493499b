"""Source removal refused up front for what PostgreSQL would refuse only after the whole proof: a day table or
partition that belongs to an extension (DROP), and a DELETE reaching a published partition without replica identity
that holds no row of the day. Real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline_tests.helpers import refused_everywhere

DAY = dt.date(2024, 3, 10)


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _count(conn, table: sql.Identifier) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


def _refused_everywhere(conn, spec, store, key: str, pattern: str) -> None:
    refused_everywhere(conn, spec, store, key, pattern, DAY)


@pytest.fixture
def extension(conn, schema) -> str:
    """A trivial extension created in the test's schema (its DROP SCHEMA ... CASCADE drops it, members and all)."""
    conn.execute(sql.SQL("CREATE EXTENSION tsm_system_rows SCHEMA {}").format(_ident(schema)))
    return "tsm_system_rows"


def _day_table(conn, schema: str, declarative: bool) -> tuple[TableSpec, sql.Identifier, sql.Identifier]:
    """10 rows on DAY in ``log_20240310``: a naming-mode day table inheriting from ``log``, or the day's partition
    of ``log`` partitioned by range of ``at``."""
    log, day_table = _ident(schema, "log"), _ident(schema, "log_20240310")
    if declarative:
        conn.execute(sql.SQL("CREATE TABLE {} (id serial, at timestamptz) PARTITION BY RANGE (at)").format(log))
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') "
                             "TO ('2024-03-11 00:00+00')").format(day_table, log))
    else:
        conn.execute(sql.SQL("CREATE TABLE {} (id serial, at timestamptz)").format(log))
        conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
    conn.execute(sql.SQL("INSERT INTO {} (at) SELECT '2024-03-10 00:00+00'::timestamptz + g * interval '1 min' "
                         "FROM generate_series(1, 10) g").format(day_table))
    partitioning = {"mode": "declarative"} if declarative else {"mode": "naming", "pattern": "log_%Y%m%d"}
    spec = TableSpec(name=f"{schema}.log", day_column="at" if declarative else None, start_date=DAY,
                     partitioning=partitioning, retention={"keep_days": 1, "action": "drop"})
    return spec, log, day_table


@pytest.mark.parametrize("declarative", [False, True])
def test_a_day_table_belonging_to_an_extension_is_refused_up_front(conn, schema, store, extension, declarative):
    """Action drop, ``ALTER EXTENSION ... ADD TABLE log_20240310`` (the naming-mode day table, or the day's
    partition). Was: the dry run said "would drop"; the real run, after the whole proof, failed with PostgreSQL's
    "cannot drop table ... because extension ... requires it". Now both refuse up front, naming the table, the day,
    the extension and the statement that takes it out; every row stays. Detach is not refused (PostgreSQL lets a
    member be detached); once out of the extension the day is dropped."""
    spec, log, day_table = _day_table(conn, schema, declarative)
    key = archive_partition(conn, spec, DAY, store).key
    conn.execute(sql.SQL("ALTER EXTENSION {} ADD TABLE {}").format(_ident(extension), day_table))
    _refused_everywhere(conn, spec, store, key, f"{schema}.log_20240310 .*belongs to extension {extension}.*to fix: "
                        f"take it out of the extension \\(ALTER EXTENSION {extension} DROP TABLE "
                        f"{schema}.log_20240310\\)")
    assert _count(conn, log) == 10
    detach = spec.model_copy(update={"retention": spec.retention.model_copy(update={"action": "detach"})})
    assert remove_day(conn, detach, DAY, store, dry_run=True).action == "detach"
    conn.execute(sql.SQL("ALTER EXTENSION {} DROP TABLE {}").format(_ident(extension), day_table))
    assert remove_day(conn, spec, DAY, store).rows == 10 and _count(conn, log) == 0


def test_a_sequence_or_subpartition_of_the_day_partition_in_an_extension_is_refused_up_front(conn, schema, store,
                                                                                               extension):
    """Action drop, declarative: the day's partition is itself partitioned, and its sub-partition belongs to an
    extension; then (naming mode) a sequence the day table owns does. DROP TABLE drops them with it, and PostgreSQL
    refused that after the whole proof. Now refused up front, naming each statement that takes them out."""
    log, day_table, sub = _ident(schema, "log"), _ident(schema, "log_20240310"), _ident(schema, "log_20240310_a")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(log))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00') PARTITION BY RANGE (at)").format(day_table, log))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00')").format(sub, day_table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 05:00+00')").format(log))
    spec = TableSpec(name=f"{schema}.log", day_column="at", start_date=DAY, partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop"})
    key = archive_partition(conn, spec, DAY, store).key
    conn.execute(sql.SQL("ALTER EXTENSION {} ADD TABLE {}").format(_ident(extension), sub))
    _refused_everywhere(conn, spec, store, key, f"belongs to extension {extension}.*ALTER EXTENSION {extension} DROP "
                        f"TABLE {schema}.log_20240310_a\\)")
    conn.execute(sql.SQL("ALTER EXTENSION {} DROP TABLE {}").format(_ident(extension), sub))
    seq = _ident(schema, "log_20240310_seq")
    conn.execute(sql.SQL("CREATE SEQUENCE {} OWNED BY {}.id").format(seq, sub))
    conn.execute(sql.SQL("ALTER EXTENSION {} ADD SEQUENCE {}").format(_ident(extension), seq))
    _refused_everywhere(conn, spec, store, key, f"ALTER EXTENSION {extension} DROP SEQUENCE {schema}.log_20240310_seq")
    conn.execute(sql.SQL("ALTER EXTENSION {} DROP SEQUENCE {}").format(_ident(extension), seq))
    assert remove_day(conn, spec, DAY, store).rows == 1 and _count(conn, log) == 0


def test_column_mode_delete_reaching_a_published_partition_without_the_days_rows_is_refused_up_front(
        conn, schema, store, publication):
    """Column mode on a partitioned table, action delete: ``ev_a`` (03-09 to 03-10 12:00, REPLICA IDENTITY FULL)
    holds the day's rows; ``ev_b`` (03-10 12:00 to 03-12, no replica identity) overlaps the day but holds only a row
    of 03-11; the publication publishes the table's deletes. PostgreSQL does not prune ``ev_b`` (its bounds overlap
    the day) and refuses the DELETE though it holds none of the day's rows. Was: taken as pruned, the dry run said
    "would delete" and the real run failed after the whole proof with PostgreSQL's "cannot delete from table
    ev_b ... does not have a replica identity". Now both refuse up front, naming ev_b and the publication; with
    REPLICA IDENTITY FULL on ev_b the day is removed (``ev_c``, pruned, does not stand in the way)."""
    ev = _ident(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(ev))
    for name, lo, hi in (("ev_a", "2024-03-09 00:00", "2024-03-10 12:00"), ("ev_b", "2024-03-10 12:00", "2024-03-12"),
                         ("ev_c", "2024-03-12", "2024-03-13")):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            _ident(schema, name), ev, sql.Literal(f"{lo}+00"), sql.Literal(f"{hi}+00")))
    conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(_ident(schema, "ev_a")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min' "
                         "FROM generate_series(1, 20) g").format(ev))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (99, '2024-03-11 05:00+00')").format(ev))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-09",
                     retention={"keep_days": 1, "action": "delete"})
    key = archive_partition(conn, spec, DAY, store).key
    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(_ident(publication), ev))
    _refused_everywhere(conn, spec, store, key, f"{schema}.ev_b has no replica identity, and publication "
                        f"{publication} publishes its deletes")
    assert _count(conn, ev) == 21
    conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(_ident(schema, "ev_b")))
    assert remove_day(conn, spec, DAY, store).rows == 20 and _count(conn, ev) == 1


def test_delete_a_publications_row_filter_or_column_list_forbids_is_refused_up_front(conn, schema, store,
                                                                                    publication):
    """Action delete on a table with a primary key (its replica identity) whose deletes a publication publishes
    with a row filter on another column, then with a column list without the key. Was: the dry run said "would
    delete"; the real run, after the whole proof, failed with PostgreSQL's "cannot delete from table ..." (column
    used in the publication WHERE expression / column list not covering the replica identity). Now both refuse up
    front, with PostgreSQL's own reason, the table, the day and the remedy; with the key in the list, removed."""
    t, pub = _ident(schema, "t"), _ident(publication)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz, v int)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', g "
                         "FROM generate_series(1, 5) g").format(t))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, retention={"keep_days": 1,
                     "action": "delete"})
    key = archive_partition(conn, spec, DAY, store).key
    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WHERE (v > 0)").format(pub, t))
    _refused_everywhere(conn, spec, store, key, "refuses to delete its rows \\(cannot delete from table \"t\" Column "
                        "used in the publication WHERE expression is not part of the replica identity.*to fix: ")
    conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {} (at, v)").format(pub, t))
    _refused_everywhere(conn, spec, store, key, "Column list used by the publication does not cover the replica "
                        "identity")
    assert _count(conn, t) == 5
    conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {} (id, at)").format(pub, t))
    assert remove_day(conn, spec, DAY, store).rows == 5 and _count(conn, t) == 0
