"""Hunt 8 (na): regressions and holes in the previous session's product changes (d5e3cd4..f51a041)."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from types import SimpleNamespace

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_hunt4_gg import encoded_db  # noqa: F401 - a fixture: databases in other encodings

DAY = dt.date(2024, 3, 10)
PASSWORD = "pw-na-Hunt8"
_counter = itertools.count()


def test_a_json_value_with_a_big_number_and_an_escape_the_encoding_has_archives_in_euc_jp(encoded_db, store,
                                                                                          temp_dir):
    """An EUC_JP database holds ``json`` whose escape is of a character EUC_JP has (``"\\u3042"``, hiragana: what
    f51a041 archives, see test_hunt7_mq) next to a number jsonb cannot hold (``1e1000000``: the json type checks
    only its syntax, and json_populate_record reads it back into a json column as written). A user archives the
    day as JSONL. What happens: the day fails, not retried, with "column 'j' (json) ... cannot be converted by
    PostgreSQL (SQLSTATE 22003: value overflows numeric format) in jsonl; archive this table as csv or parquet,
    or fix the value": the multibyte test (``jsonl._escape_beyond_encoding``) parses the whole value as *jsonb*
    (``{c}::text::pg_catalog.jsonb IS NULL``) to have PostgreSQL convert its escapes, and jsonb also turns every
    number into numeric; ``refused_by_parse`` recognises only 22P05. The same day archives in UTF8, and in EUC_JP
    without the escape. What should happen: only the escapes are put to the test (a parse that keeps numbers as
    text, e.g. of the escapes alone); the day archives and restores as stored."""
    db = encoded_db("EUC_JP")
    value = '{"n": 1e1000000, "name": "\\u3042"}'
    db.execute("CREATE TABLE ev (id int, at date, j json)")
    db.execute("INSERT INTO ev VALUES (1, '2024-03-10', %s::json)", (value,))
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="jsonl")
    assert archive_partition(db, spec, DAY, store, temp_dir=str(temp_dir)).rows == 1
    restored = restore_day(db, store, spec, DAY, into="new", target="public.back", temp_dir=str(temp_dir))
    assert restored.rows == 1 and restored.fingerprint_checked
    assert db.execute("SELECT j::text FROM back").fetchone()[0] == value


@pytest.fixture
def app_db(pg, conn):
    """A database of its own whose schema is named after it (a common layout: database "shop", schema "shop"),
    with a declaratively partitioned events table of 50 rows on DAY there, and a login role granted USAGE on the
    schema and SELECT on the table (no CREATE on the schema)."""
    name = f"na_{os.getpid()}_{next(_counter)}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    owner = psycopg.connect(pg.dsn_for("postgres", database=name), autocommit=True)
    role = f"{name}_app"
    try:
        owner.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        create_sample_events(owner, [DAY], rows_per_day=50, schema=name)
        pg.create_password_role(role, PASSWORD)
        owner.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(name), sql.Identifier(role)))
        owner.execute(sql.SQL("GRANT SELECT ON {}.events TO {}").format(sql.Identifier(name), sql.Identifier(role)))
        yield SimpleNamespace(name=name, owner=owner, role=role, dsn=pg.dsn_for(role, PASSWORD, database=name))
    finally:
        owner.close()
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_a_restore_refused_temp_in_a_database_named_like_its_schema_names_temporary_not_create(app_db, store,
                                                                                              temp_dir):
    """The schema is named like its database (database ``na_…``, schema ``na_…``: a common layout). The DBA revoked
    TEMPORARY on the database from PUBLIC; the app role has INSERT and SELECT on an existing table and no CREATE on
    the schema (it needs none: the table exists). It restores a day into it with ``on_conflict='skip'``, which
    stages the rows in a temporary table, and is refused (right) with "permission denied to create temporary
    tables in database "na_…"". What happens: the remedy is "GRANT CREATE ON SCHEMA na_… TO the role", a
    privilege the restore does not need; the user grants it and the restore fails the same way. f51a041's
    ``restore._lacking_privilege`` lists every privilege the role lacks (the schema's CREATE ordered before the
    database's TEMPORARY) and takes the first whose object's *name* is a word of the message: the database's
    name is the schema's. Before f51a041 the remedy named TEMPORARY (the message's own kind; with schema ``s``
    it still does). What should happen: the remedy names GRANT TEMPORARY ON DATABASE (match the object's kind
    with its name)."""
    schema = app_db.name
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY, format="jsonl",
                     partitioning={"mode": "declarative"})
    app_db.owner.execute(sql.SQL("CREATE TABLE {}.target (LIKE {}.events INCLUDING ALL)").format(
        sql.Identifier(schema), sql.Identifier(schema)))
    app_db.owner.execute(sql.SQL("ALTER TABLE {}.target ADD PRIMARY KEY (id)").format(sql.Identifier(schema)))
    app_db.owner.execute(sql.SQL("GRANT SELECT, INSERT ON {}.target TO {}").format(sql.Identifier(schema),
                                                                                   sql.Identifier(app_db.role)))
    app_db.owner.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(app_db.name)))
    with psycopg.connect(app_db.owner.info.dsn, autocommit=True) as owning:
        archive_partition(owning, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(app_db.dsn, autocommit=True) as restoring:
        with pytest.raises(ArchiveError) as refused:
            restore_day(restoring, store, spec, DAY, into="existing", target=f"{schema}.target", on_conflict="skip",
                        temp_dir=temp_dir)
    remedy = refused.value.remedy or ""
    assert "TEMPORARY ON DATABASE" in remedy and "CREATE ON SCHEMA" not in remedy, (str(refused.value), remedy)
