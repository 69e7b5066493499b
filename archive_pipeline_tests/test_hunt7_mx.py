"""Hunt 7 (mx): regressions and holes in the latest product changes (d259b19..f39bb20)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def _spec(schema: str, table: str, fmt: str) -> TableSpec:
    return TableSpec(name=f"{schema}.{table}", day_column="at", start_date=DAY, format=fmt, compression="zstd")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("was, now, value", [("numeric(10,2)", "numeric(10,0)", "12.34"),
                                             ("timestamptz(6)", "timestamptz(0)", "2024-03-10 01:00:00.25+00")],
                         ids=["numeric-scale", "timestamptz-precision"])
def test_a_restore_after_a_nested_fields_typmod_changed_names_the_type_not_an_altered_archive(
        fmt, was, now, value, conn, schema, store, temp_dir):
    """A column ``m`` holds an array of composite ``leaf`` whose field ``v`` is ``numeric(10,2)`` (or
    ``timestamptz(6)``); the day is archived and the table dropped (retention), then ``ALTER TYPE leaf ALTER
    ATTRIBUTE v TYPE numeric(10,0)`` (or ``timestamptz(0)``; the same as restoring into another database whose
    ``leaf`` is declared so). A restore into a new table rounds 12.34 to 12, its fingerprint check rolls it back,
    and the error says "The archive does not hold the rows it was proven to hold (altered after it was
    written)". 58e11ce records each composite's shape to name exactly this kind of change ("a type inside its
    columns is not the one the day was archived with"), but the shape keeps a node's type without its modifier
    (``format_type(oid, NULL)``), so a field's scale, length or precision changed is invisible to it. (The same
    change at the top level is named: a column's recorded pg_type holds its modifier.) Expected: refused before
    loading, naming column m's field v and that its type changed since the day was archived, not the archive."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TYPE {s}.leaf AS (t text, v {was})")
    conn.execute(f"CREATE TABLE {s}.n (id int, at date, m {s}.leaf[])")
    conn.execute(f"INSERT INTO {s}.n VALUES (1, %s, ARRAY[ROW('abc', %s)::{s}.leaf])", (DAY, value))
    spec = _spec(schema, "n", fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"DROP TABLE {s}.n")
    conn.execute(f"ALTER TYPE {s}.leaf ALTER ATTRIBUTE v TYPE {now}")
    with pytest.raises(ArchiveError) as failure:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.n_back", temp_dir=temp_dir)
    message = str(failure.value)
    assert "altered after it was written" not in message, message
    assert "field v" in message, message


def test_a_component_table_entry_written_with_dagsters_env_template_still_renders(monkeypatch):
    """A user's defs.yaml for ArchiveTablesComponent names a table with Dagster's env templating, as every
    component attribute may be written: ``tables: [{name: "{{ env.ARCHIVE_SCHEMA }}.events", ...}]`` with
    ARCHIVE_SCHEMA=sales. Up to d259b19 the entry rendered to ``sales.events``. Since 6afba88 ``tables`` is
    ``Resolver.passthrough`` (to keep a key_template's ``{{ prefix }}``), so the name is taken as the literal
    ``{{ env.ARCHIVE_SCHEMA }}.events``: the code location loads (without a DSN at load) a table named with
    braces, whose every run then fails "table does not exist"; the other attributes (source:, retry: ...)
    still render, so only the tables stopped. Expected: ``{{ env.X }}`` in a table entry renders as before
    (only a name Dagster's scope lacks, like ``prefix``, kept or refused)."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    monkeypatch.setenv("ARCHIVE_SCHEMA", "sales")
    attributes = ('tables:\n  - name: "{{ env.ARCHIVE_SCHEMA }}.events"\n    day_column: created_at\n'
                  "    start_date: 2024-01-01\ncheck_source: false\n")
    component = ArchiveTablesComponent.resolve_from_yaml(attributes)
    assert [spec.name for spec in component.archive_config().tables] == ["sales.events"]



def test_a_restore_refused_insert_on_a_table_named_like_its_schema_asks_for_insert_not_create(pg, conn, store,
                                                                                             temp_dir):
    """A role with USAGE on schema ``audit`` and SELECT (not INSERT) on ``audit.audit`` (a table named like its
    schema, as ``audit.audit`` or ``billing.billing`` often are) restores a day into the original table. The
    server refuses "permission denied for table audit". What happens: the remedy is "GRANT CREATE ON SCHEMA audit
    TO <role>": 8c4accf looks the grant up in the catalog (``restore._lacking_privilege``) and takes the first
    lacking privilege whose object's name appears as a word in the message, and the schema ``audit``, where the
    role may not create (as on every schema it does not own), matches the table's name. The user grants CREATE,
    runs again, and is refused the same way. Up to d259b19 the remedy was "GRANT INSERT, SELECT ON audit.audit".
    Expected: the remedy asks for INSERT (and SELECT) on the target, the privilege the refusal is about."""
    import psycopg
    from archive_pipeline_tests.test_hunt6_lw import PASSWORD

    name = f"mx_{conn.info.backend_pid}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    role = f"{name}_r"
    owner = psycopg.connect(pg.dsn_for("postgres", database=name), autocommit=True)
    try:
        owner.execute("CREATE SCHEMA audit")
        owner.execute("CREATE TABLE audit.audit (id int, at date, note text)")
        owner.execute("INSERT INTO audit.audit SELECT g, '2024-03-10', 'x' FROM generate_series(1, 5) g")
        spec = TableSpec(name="audit.audit", day_column="at", start_date=DAY, format="csv")
        archive_partition(owner, spec, DAY, store, temp_dir=str(temp_dir))
        pg.create_password_role(role, PASSWORD)
        owner.execute(sql.SQL("GRANT USAGE ON SCHEMA audit TO {}").format(sql.Identifier(role)))
        owner.execute(sql.SQL("GRANT SELECT ON audit.audit TO {}").format(sql.Identifier(role)))
        owner.execute("DELETE FROM audit.audit")
        with psycopg.connect(pg.dsn_for(role, PASSWORD, database=name), autocommit=True) as restoring:
            with pytest.raises(ArchiveError) as refused:
                restore_day(restoring, store, spec, DAY, into="original", temp_dir=str(temp_dir))
        remedy = refused.value.remedy or ""
        assert "GRANT INSERT" in remedy, f"{refused.value}\nremedy: {remedy}"
    finally:
        owner.close()
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("column, value", [("regclass", "{s}.orders"), ("regtype", "{s}.mood"),
                                           ("regprocedure", "{s}.price(integer)")])
def test_a_reg_column_archives_in_a_session_whose_quote_all_identifiers_is_on(column, value, conn, schema, store,
                                                                              temp_dir):
    """A table ``audit (id int, at date, r regclass)`` (or regtype, regprocedure) is archived by a session whose
    ``quote_all_identifiers`` is on (a role set up for pg_dump: ``ALTER ROLE ... SET quote_all_identifiers = on``;
    SNAPSHOT_SETTINGS pins it off for the read for this very reason). Nothing is renamed. What happens: every run
    fails, retryable, "a name a regclass value prints ... was changed while the day was read; nothing was
    published", and every retry fails the same way. Since 4cba851 ``source._catalog_names`` compares each object's
    printed output (``concat(oid::regclass)``); ``printed_names`` runs inside the read's snapshot (quoting off:
    ``t.orders``) and ``same_printed_names`` after it, in the session's own settings (quoting on:
    ``"t"."orders"``). Up to d259b19 catalog names and schemas were compared, which no setting changes.
    Expected: the day is archived (both prints taken under the same settings)."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TABLE {s}.orders (id int)")
    conn.execute(f"CREATE TYPE {s}.mood AS ENUM ('a')")
    conn.execute(f"CREATE FUNCTION {s}.price(a int) RETURNS int LANGUAGE sql AS 'SELECT a'")
    conn.execute(f"CREATE TABLE {s}.audit (id int, at date, r {column})")
    conn.execute(f"INSERT INTO {s}.audit VALUES (1, %s, %s)", (DAY, value.replace("{s}", s)))
    conn.execute("SET quote_all_identifiers = on")
    try:
        spec = _spec(schema, "audit", "csv")
        assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 1
    finally:
        conn.execute("RESET quote_all_identifiers")


def test_overwriting_a_day_archived_empty_after_its_rows_arrived_archives_them(conn, schema, store, temp_dir):
    """A day is archived while its table holds no row of it (an empty day: a manifest, no data object). Rows of
    that day arrive late; the re-run is rightly refused ("it has 1 rows now, the archive holds 0 ... set overwrite
    to archive the day again"), and the user sets overwrite as told. What happens: the run fails "an unexpected
    error (TypeError: 'int' object is not iterable); not retried: a retry cannot fix this", every time. 3141038
    made ``_Archiving._generation`` return ``max(existing.generation, *found) + 1``, where ``found`` (the day's
    data objects in the listing) is empty for a day archived empty: ``max`` of one int. Expected: the day is
    archived with its row (a new generation), as before 3141038."""
    conn.execute(f'CREATE TABLE "{schema}".ev (id int, at date)')
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY)
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 0
    conn.execute(f'INSERT INTO "{schema}".ev VALUES (1, %s)', (DAY,))
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), overwrite=True).rows == 1
