"""Letting the source go: what PostgreSQL or the store would refuse only after the proof (a day table that others
inherit from, a DELETE a publication forbids), a pending mark the store did not keep, and the source changing
or the day sitting at an edge between proof and removal. Real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _count(conn, table: sql.Identifier) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


def _naming_spec(schema: str, action: str) -> TableSpec:
    return TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                     retention={"keep_days": 1, "action": action})


def _refused_everywhere(conn, spec, store, key: str, pattern: str) -> None:
    """The dry run and the real run refuse alike, naming table and day; no mark is left behind."""
    before = store.get_verified_bytes(f"{key}.manifest.json")
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused, match=pattern) as caught:
            remove_day(conn, spec, DAY, store, dry_run=dry_run)
        assert (caught.value.table, caught.value.day) == (spec.name, DAY.isoformat()), dry_run
    assert store.get_verified_bytes(f"{key}.manifest.json") == before


# ---- 1. what keeps a naming-mode day table from being dropped ------------------------------------------

def test_a_day_table_others_inherit_from_or_use_the_row_type_of_is_refused_up_front(conn, schema, store):
    """Naming mode, action drop: ``log_20240310`` has a table inheriting from it (``log_20240310_late``), and a
    function takes its row type. Was: the dry run said "would drop"; the real run, after the whole proof, failed
    with PostgreSQL's "cannot drop table ... because other objects depend on it". Now both refuse up front, naming
    the table, the day, each dependent and the remedy; every row stays."""
    log, day_table, late = _ident(schema, "log"), _ident(schema, "log_20240310"), _ident(schema, "log_20240310_late")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, log))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(late, day_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(day_table))
    spec = _naming_spec(schema, "drop")
    key = archive_partition(conn, spec, DAY, store).key
    _refused_everywhere(conn, spec, store, key, f"{schema}.log_20240310 cannot be dropped while other objects depend "
                        f"on it \\(table {schema}.log_20240310_late inheriting from it\\).*'detach'")
    conn.execute(sql.SQL("ALTER TABLE {} NO INHERIT {}").format(late, day_table))
    conn.execute(sql.SQL("CREATE FUNCTION {}(r {}) RETURNS int LANGUAGE sql AS 'SELECT r.id'").format(
        _ident(schema, "first_id"), day_table))
    _refused_everywhere(conn, spec, store, key, f"function {schema}.first_id\\({schema}.log_20240310\\)")
    conn.execute(sql.SQL("DROP FUNCTION {}").format(_ident(schema, "first_id")))
    seq, other = _ident(schema, "log_20240310_seq"), _ident(schema, "other")  # its own default is no dependent
    conn.execute(sql.SQL("CREATE SEQUENCE {} OWNED BY {}.id").format(seq, day_table))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER id SET DEFAULT nextval({})").format(day_table, sql.Literal(
        seq.as_string(conn))))
    conn.execute(sql.SQL("CREATE TABLE {} (n int DEFAULT nextval({}))").format(other, sql.Literal(seq.as_string(conn))))
    _refused_everywhere(conn, spec, store, key, f"default value for column n of table {schema}.other \\(its "
                        f"sequence {schema}.log_20240310_seq\\)\\)")
    assert _count(conn, log) == 10
    conn.execute(sql.SQL("DROP TABLE {}").format(other))
    assert remove_day(conn, spec, DAY, store).rows == 10 and _count(conn, log) == 0
