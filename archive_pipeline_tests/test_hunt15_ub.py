"""Hunt 15 (ub): identifiers and names at their edges, through every user-facing path."""

from __future__ import annotations

import json

import pytest


def _inline(name: str, day_column: str = "created_at") -> str:
    """A component's attributes (defs.yaml) with one inline table, its strings quoted as YAML strings."""
    return (f"tables:\n  - name: {json.dumps(name)}\n    day_column: {json.dumps(day_column)}\n"
            "    start_date: 2024-01-01\n")


def test_an_inline_table_whose_name_holds_a_jinja_comment_is_not_silently_another_table():
    """A component's defs.yaml lists inline the table ``public.events{#eu#}`` (PostgreSQL allows braces and
    ``#`` in a quoted name; the same entry in archive_tables.yaml loads as written). Dagster renders every
    inline string as a Jinja template, where ``{#eu#}`` is a comment: the table loads as ``public.events``,
    silently, so the code location archives (and retention removes days of) another table, whose archive then
    bears this table's asset. It should either take the name as written, as the table file does, or refuse the
    load naming the table and saying to use config_path (README: "Both forms are validated by the same code and
    fail the load with the same messages as the file").
    Fix idea: render only strings holding ``{{`` in _resolved_tables (or refuse ``{#``/``{%`` there)."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    name = "public.events{#eu#}"
    try:
        tables = ArchiveTablesComponent.resolve_from_yaml(_inline(name)).archive_config().tables
    except Exception as exc:  # noqa: BLE001 - refused: it must name the table as written
        assert name in str(exc), f"{type(exc).__name__}: {exc}"
    else:
        assert [t.name for t in tables] == [name]


@pytest.mark.parametrize(("name", "day_column"), [("2024.10", "created_at"), ("sales.q1", "1e3")])
def test_an_inline_quoted_name_that_reads_as_a_number_is_taken_as_written(name, day_column):
    """A component's defs.yaml lists inline, quoted as YAML strings (as the README says to write them), the
    table ``"2024.10"`` (schema 2024, table 10), or a table whose day column is named ``"1e3"``. The same entries
    in archive_tables.yaml load as written. Inline, Dagster's NativeTemplate renders every string and turns one
    that reads as a Python literal into a number: the load fails with "table 2024.1, setting 'name': Input
    should be a valid string" (the table misnamed, 2024.1 for 2024.10, and no fix: the quotes the user wrote
    are already there) or "setting 'day_column': Input should be a valid string". A quoted string should stay
    the string written (name 2024.10, day_column 1e3).
    Fix idea: in _resolved_tables keep a string that holds no template as it is (render only those with
    ``{{``), or render with jinja2's plain Template rather than the native one."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    table = ArchiveTablesComponent.resolve_from_yaml(_inline(name, day_column)).archive_config().tables[0]
    assert (table.name, table.day_column) == (name, day_column)


def test_a_view_named_with_a_dot_reading_a_table_its_owner_may_not_read_names_that_table(
        conn, schema, store, temp_dir, pg):
    """The configured table is a view whose name holds a dot, ``<schema>."ev.v2"`` (``name: <schema>.ev.v2``:
    the first dot splits), over the table ``v2``; the view's owner (the archiving role) may not read ``v2``, so
    PostgreSQL refuses with "permission denied for table v2". For a view named ``evv2`` the remedy is right:
    "the role may not read table v2, which ... reads (a view's ...): GRANT SELECT ON v2 ... TO the owner of the
    view". For ``ev.v2`` it is "GRANT SELECT ON <schema>."ev.v2" TO <role>": a grant the role already has, on
    the view, so the user is sent to fix the wrong relation. errors.refused_grant takes the configured name's
    table part with ``rpartition('.')`` ("v2" of "<schema>.ev.v2") and so mistakes v2 for the view itself.
    Expected: the same remedy as for ``evv2``, naming v2. Fix idea: split the configured name at its first dot
    (``partition``), as TableSpec does, for both the schema and the table part."""
    import datetime as dt

    import psycopg
    from psycopg import sql

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError

    role = f"{schema}_view_owner"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        base, view = sql.Identifier(schema, "v2"), sql.Identifier(schema, "ev.v2")
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(base))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 05:00+00')").format(base))
        conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(view, base))
        conn.execute(sql.SQL("ALTER VIEW {} OWNER TO {}").format(view, sql.Identifier(role)))
        spec = TableSpec(name=f"{schema}.ev.v2", day_column="at", start_date="2024-03-01")
        with psycopg.connect(pg.dsn, user=role, autocommit=True) as as_owner:
            with pytest.raises(ArchiveError) as info:
                archive_partition(as_owner, spec, dt.date(2024, 3, 10), store, temp_dir=str(temp_dir))
        message = str(info.value)
        assert "permission denied for table v2" in message, message
        assert "GRANT SELECT ON v2" in message, message  # the table the view reads, as for a view named evv2
        assert 'GRANT SELECT ON ' + sql.Identifier(schema, "ev.v2").as_string(conn) not in message, message
    finally:
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(schema, "ev.v2")))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
