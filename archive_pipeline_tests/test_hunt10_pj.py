"""Hunt 10 pj: names at their edges, everywhere a name travels (keys, Dagster, removal, restore, messages).
Real PostgreSQL and S3 (moto over HTTP); no mocks of the database."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import ConfigError, TableSpec, parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _count(conn, table: sql.Identifier) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


@pytest.mark.parametrize("code", ["%B", "%A"])
def test_a_naming_pattern_whose_names_pass_63_bytes_in_some_months_is_refused_at_load(code):
    """A user names day tables with the month's or weekday's name (``<prefix>_%B_%Y%m%d``, read back by strptime
    as the README allows any pattern that reads back). The load checks the names' length on 2024-12-31 only
    ("December", "Tuesday"), so a pattern that is exactly 63 bytes there loads, and September's (one letter longer)
    and Wednesday's (two) day tables are named 64 and 65 bytes: PostgreSQL cuts such a name to 63 when the table is
    created (``..._2024091``, one name for ten days), so the day table the pattern names for those days is never
    found (naming mode looks them up by the uncut name: the days look absent, and their rows go unarchived).
    Should: refused at load, naming the pattern and the 63 bytes (checked on the longest month and weekday names)."""
    fixed = len(dt.date(2024, 12, 31).strftime(f"_{code}_%Y%m%d"))
    pattern = "e" * (63 - fixed) + f"_{code}_%Y%m%d"
    assert len(dt.date(2024, 12, 31).strftime(pattern).encode()) == 63
    entry = {"name": "public.ev", "start_date": "2024-01-01", "partitioning": {"mode": "naming", "pattern": pattern}}
    try:
        spec = parse_config({"tables": [entry]}, "tables.yaml").tables[0]
    except ConfigError as exc:
        assert "63" in str(exc)
        return
    longest = max(len(spec.child_table(day).encode()) for day in ("2024-09-11", "2024-12-31"))
    pytest.fail(f"pattern {pattern!r} loaded, and it names a day table of {longest} bytes, which PostgreSQL cuts to 63")


@pytest.fixture
def loopback(conn, schema):
    """A postgres_fdw server pointing at this very database (skipped where the extension is not available)."""
    if not conn.execute("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'postgres_fdw')").fetchone()[0]:
        pytest.skip("postgres_fdw is not installed on this server")
    server = _ident(f"{schema}_loop")
    conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS postgres_fdw SCHEMA {}").format(_ident(schema)))
    conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {}, port {}, dbname {})"
                         ).format(server, sql.Literal(conn.info.host), sql.Literal(str(conn.info.port)),
                                  sql.Literal(conn.info.dbname)))
    conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS (user {})").format(
        server, sql.Literal(conn.info.user)))
    yield server
    conn.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(server))


def test_a_foreign_partition_whose_remote_table_name_holds_ctid_is_deleted_by_its_pushed_down_delete(
        conn, schema, store, loopback):
    """The day's partition of ``ev`` is a postgres_fdw foreign table over the remote table ``sales_by_productid``
    (the README sends foreign partitions to retention action ``delete``). postgres_fdw pushes the day's DELETE down
    whole (``DELETE FROM <schema>.sales_by_productid WHERE ...``), which is safe. Was: the removal decides whether
    the remote server deletes row by row by looking for the text ``ctid`` anywhere in the Remote SQL, and
    ``productid`` holds it: the day is refused ("cannot delete from on the remote server in one statement; row by
    row (by ctid) it would take rows of other days") though nothing goes by ctid. Should: the day's 20 rows are
    deleted (a name is no ctid)."""
    ev, remote = _ident(schema, "ev"), _ident(schema, "sales_by_productid")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text) PARTITION BY RANGE (at)").format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text)").format(remote))
    conn.execute(sql.SQL("CREATE FOREIGN TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') TO "
                         "('2024-03-11 00:00+00') SERVER {} OPTIONS (schema_name {}, table_name 'sales_by_productid')"
                         ).format(_ident(schema, "ev_20240310"), ev, loopback, sql.Literal(schema)))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', 'r' || g "
                         "FROM generate_series(1, 20) g").format(remote))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "delete"})
    key = archive_partition(conn, spec, DAY, store).key
    assert load_manifest(store, key)["rows"] == 20
    removal = remove_day(conn, spec, DAY, store)
    assert removal.rows == 20
    assert _count(conn, remote) == 0


@pytest.fixture
def role(conn, schema):
    """A LOGIN role that owns nothing (the archiving role of a deployment)."""
    name = f"{schema}_pj"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.mark.parametrize("base_name", ["Secret Data", "Events"])
def test_the_grant_named_for_a_table_a_view_reads_works_pasted_as_it_is(base_name, pg, conn, schema, role, store,
                                                                         temp_dir):
    """A user archives the view ``ev`` (security_invoker) over the table ``"Secret Data"`` (or ``"Events"``) and
    forgot the archiving role's SELECT on that table. The run fails, and its remedy says "GRANT SELECT ON Secret
    Data TO ... or to <role> for a view with security_invoker": the table's name as PostgreSQL's message prints it,
    unquoted and without its schema. Pasted, it is a syntax error, and ``GRANT SELECT ON Events`` grants on another
    table (``events``, folded to lower case) or none. Should: the statement names the table as SQL reads it back
    (``<schema>."Secret Data"``), as every other grant a remedy names does."""
    s, r, base = sql.Identifier(schema), sql.Identifier(role), sql.Identifier(schema, base_name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(base))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s FROM generate_series(1, 10) g").format(base), (DAY,))
    conn.execute(sql.SQL("CREATE VIEW {s}.ev WITH (security_invoker = true) AS SELECT * FROM {b}").format(s=s, b=base))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.ev TO {r}").format(s=s, r=r))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl")
    with psycopg.connect(pg.dsn_for(role), autocommit=True) as archiving:
        with pytest.raises(ArchiveError) as caught:
            archive_partition(archiving, spec, DAY, store, temp_dir=temp_dir)
    remedy = caught.value.remedy or ""
    assert f'GRANT SELECT ON {base_name} ' not in remedy and f'"{base_name}"' in remedy, remedy


def test_a_restore_refused_insert_on_a_target_whose_name_holds_tablespace_asks_for_insert(pg, conn, schema, role,
                                                                                         store, temp_dir):
    """A user restores a day into the existing table ``tablespace_usage`` (a DBA's monitoring table) as a role that
    may SELECT it but not INSERT into it. Was: the refusal "permission denied for table tablespace_usage" holds the
    word ``tablespace``, so it is taken for a refusal of the role's default tablespace, and the remedy says "the
    role may not read table tablespace_usage, which <table> reads (a view's, or a rule's): GRANT SELECT ON
    tablespace_usage TO the owner of the view": no view is involved and SELECT is there. The same refusal of a target
    named ``usage`` says "GRANT INSERT, SELECT ON <schema>.usage TO <role>". Should: that remedy, whatever the
    target's name holds."""
    s, r, target = sql.Identifier(schema), sql.Identifier(role), sql.Identifier(schema, "tablespace_usage")
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, {} FROM generate_series(1, 10) g").format(s, sql.Literal(DAY)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(target))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {t} TO {r}").format(s=s, r=r, t=target))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(pg.dsn_for(role), autocommit=True) as restoring:
        with pytest.raises(ArchiveError) as caught:
            restore_day(restoring, store, spec, DAY, into="existing", target=f"{schema}.tablespace_usage",
                        temp_dir=temp_dir)
    remedy = caught.value.remedy or ""
    assert "GRANT INSERT" in remedy and "view" not in remedy, remedy
    assert _count(conn, target) == 0
