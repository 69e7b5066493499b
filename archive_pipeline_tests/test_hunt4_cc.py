"""Hunt 4 (cc): privileges and row visibility of the archiving, proving, restoring and removing roles.
Each test asserts the correct behaviour and fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


@pytest.fixture
def role(conn, schema):
    """A LOGIN role that owns nothing (the archiving/proving/removing role of a deployment)."""
    name = f"{schema}_cc"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def types_schema(conn, schema):
    """A second schema for the table's types (dropped afterwards)."""
    name = f"{schema}_types"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def test_proof_without_usage_on_the_types_schema_is_not_called_a_damaged_manifest(
        pg, conn, schema, types_schema, role, store, temp_dir):
    """A user archives a table whose enum column's type lives in another schema (``types.mood``); the
    archiving and proving role may SELECT the table but has no USAGE on the ``types`` schema (reading the
    column needs none). The archive succeeds. Deep verification (and so the retention removal, which
    runs it) then fails with "column 'm' of the manifest: 'types.mood' is not a type name (permission
    denied for schema types); the manifest is damaged", with no remedy: the manifest is intact, and an
    operator told it is damaged re-archives or restores the bucket for nothing. It should say the role
    lacks USAGE on the schema of the column's type and give the GRANT (as every other permission
    refusal does), never call the manifest damaged."""
    s, ts, r = sql.Identifier(schema), sql.Identifier(types_schema), sql.Identifier(role)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('sad', 'ok', 'happy')").format(ts))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, m {t}.mood)").format(s=s, t=ts))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'ok' FROM generate_series(1, 10) g").format(s), (DAY,))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.ev TO {r}").format(s=s, r=r))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    with psycopg.connect(pg.dsn_for(role), autocommit=True) as archiving:
        assert archive_partition(archiving, spec, DAY, store, temp_dir=temp_dir).rows == 10
        with pytest.raises(ArchiveError) as caught:
            deep_verify(archiving, store, spec, DAY, temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert "damaged" not in str(caught.value), said
    assert "USAGE" in (caught.value.remedy or "") and types_schema in (caught.value.remedy or ""), said
