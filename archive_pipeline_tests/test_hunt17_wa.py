"""Hunt 17 (wa): unusual table shapes and column definitions (domains, generated / identity / dropped / added
columns, wide tables, odd column names, ranges, inheritance and partitions, zones), archived then restored and
deep-verified in every format."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError, UnsupportedTypeError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)
CODEC = {"jsonl": "zstd", "csv": "gzip", "parquet": "snappy"}


def _spec(schema: str, name: str, fmt: str, **extra):
    table = {"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat(), "format": fmt,
             "compression": CODEC[fmt], **extra}
    return parse_config({"tables": [table]}).tables[0]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_day_holding_a_value_its_domain_refuses_is_archived_green_and_can_never_be_proven(
        fmt, conn, schema, store, temp_dir):
    """Scenario: column ``n`` of a domain ``small`` (int); rows 500 and 5 on 2024-03-10; then
    ``ALTER DOMAIN small ADD CONSTRAINT lt100 CHECK (VALUE < 100) NOT VALID`` (PostgreSQL keeps the 500: NOT VALID
    checks new values only). Only then is the day archived (nothing changes after it).

    Now: the archive is green (2 rows), but no proof of it can ever succeed: deep verification loads the rows into a
    temporary table "of the recorded column types", i.e. the domain, and raises (JSONL / Parquet: "does not load
    back into its recorded column types: CheckViolation", no remedy; CSV: "a type or domain of the table changed
    since the day was archived ... put it back, or archive the day again (overwrite)", which is false: nothing
    changed, and an overwrite archives the same value again). So retention can never remove the day, and
    ``restore --into new`` fails too (its remedy says to load "into a new table", which it was doing).

    Should: as for the other values whose type's input refuses their own output (xml, circle, aclitem: "archived,
    such a day would be green, and no restore or proof of it could succeed"), either refuse the day at archive
    time with an UnsupportedTypeError naming table, day and column ``n`` (and the remedy: VALIDATE/fix the rows),
    or make the proof independent of the domain's current CHECKs (the README: domains are archived as their base
    type; load the proof's temporary table with the base types), so the exact archive is proven.
    Fix idea: deep verification's temp table uses the base type of each domain column (the fingerprint hashes the
    same text), or an EXISTS probe of ``NOT (n < 100)`` for domains having NOT VALID constraints."""
    s = sql.Identifier(schema)
    table = sql.Identifier(schema, "nv")
    conn.execute(sql.SQL("CREATE DOMAIN {}.small AS int").format(s))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, n {}.small)").format(table, s))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 500), (2, %s, 5)").format(table), (DAY, DAY))
    conn.execute(sql.SQL("ALTER DOMAIN {}.small ADD CONSTRAINT lt100 CHECK (VALUE < 100) NOT VALID").format(s))
    spec = _spec(schema, "nv", fmt)
    try:
        archived = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except UnsupportedTypeError as exc:  # refused up front: fine, if it says where
        assert "nv" in str(exc) and "2024-03-10" in str(exc) and "n" in str(exc), str(exc)
        return
    assert archived.rows == 2
    try:
        problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    except ArchiveError as exc:
        pytest.fail(f"a green, exact archive that no deep verification can prove: {exc}")
    assert problems == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_restore_into_new_of_an_inheritance_parent_whose_primary_key_is_per_table(fmt, conn, schema, store, temp_dir):
    """Scenario: a column-mode table ``inh (id int PRIMARY KEY, at date, v text)`` with an inheritance child
    ``inh_child (PRIMARY KEY (id)) INHERITS (inh)`` (the classic pre-partitioning layout: a primary key is per
    table, PostgreSQL does not make it unique across parent and children). Both hold id 1 on 2024-03-10. The day
    is archived (2 rows: ``SELECT FROM inh`` reads the child's rows too, as the README says) and deep-verifies.
    Then ``restore_day(into="new")``.

    Now: RestoreError: "the archived rows break its constraint inh_r_pkey among themselves (Key (id)=(1) more than
    once), a constraint the archived table did not have; ... to fix: restore into a new table (into='new'),
    created with the archived definition" -- the restore WAS into a new table created from the archived
    definition (whose ``primary_key`` it took from the parent alone), the archived table did have that key, and
    the remedy loops back to the command that failed. An exact, proven archive that ``into new`` cannot restore.

    Should: the exact archive restores into a new table (2 rows, fingerprint checked). Fix idea: record no
    primary key in ``table_definition`` (or do not create it on restore) when the archived relation has
    inheritance children (a key on a partitioned parent is global; one on an inheritance parent is not)."""
    table, child = sql.Identifier(schema, "inh"), sql.Identifier(schema, "inh_child")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, v text)").format(table))
    conn.execute(sql.SQL("CREATE TABLE {} (PRIMARY KEY (id)) INHERITS ({})").format(child, table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'parent')").format(table), (DAY,))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'child')").format(child), (DAY,))
    spec = _spec(schema, "inh", fmt)
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 2
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.inh_r", temp_dir=temp_dir)
    assert (restored.rows, restored.fingerprint_checked) == (2, True)
    assert conn.execute(sql.SQL("SELECT array_agg(v ORDER BY v) FROM {}").format(
        sql.Identifier(schema, "inh_r"))).fetchone()[0] == ["child", "parent"]


def test_retention_deletes_a_day_of_an_inheritance_parent_and_child_that_restore_into_original_cannot_put_back(
        conn, schema, store, temp_dir):
    """Scenario: column-mode ``inh (id int PRIMARY KEY, at date, v text)`` with an inheritance child ``inh_child
    (PRIMARY KEY (id)) INHERITS (inh)`` (no columns of its own, so retention's refusal of children "with columns of
    their own" does not apply); id 1 in each on 2024-03-10. Archived (2 rows), then ``remove_day`` with action
    ``delete``: proven, and ``DELETE FROM inh`` takes both rows. Later the day is needed back:
    ``restore_day(into="original")``.

    Now: the removal succeeds (rows=2), and the restore fails: it loads both archived rows into the parent ``inh``
    (the archive does not record that one lay in the child) and hits ``inh_pkey`` ("Key (id)=(1) more than once,
    a constraint the archived table did not have ... restore into a new table (into='new')", which fails the same
    way). The only copy of the day, proven before the delete, cannot be put back where it was.

    Should: a removal must leave a day that can be put back: either refuse to delete a day some of whose rows lie
    in an inheritance child (name the child; use naming mode or partitions, as for children with columns of their
    own), or restore each row into the relation it was archived from. Here: either ``remove_day`` refuses with an
    ArchiveError naming ``inh_child`` (and both rows stay), or the restore into original brings both rows back."""
    from archive_pipeline.core.lifecycle import remove_day

    table, child = sql.Identifier(schema, "inh"), sql.Identifier(schema, "inh_child")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, v text)").format(table))
    conn.execute(sql.SQL("CREATE TABLE {} (PRIMARY KEY (id)) INHERITS ({})").format(child, table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'parent')").format(table), (DAY,))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'child')").format(child), (DAY,))
    spec = _spec(schema, "inh", "csv", retention={"keep_days": 1, "action": "delete"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 2
    try:
        remove_day(conn, spec, spec.period(DAY), store)
    except ArchiveError as exc:  # refused: fine, if the rows stay and the child is named
        assert "inh_child" in str(exc), str(exc)
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0] == 2
        return
    restored = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert restored.rows == 2
    assert conn.execute(sql.SQL("SELECT array_agg(v ORDER BY v) FROM {}").format(table)).fetchone()[0] == [
        "child", "parent"]


def _not_null_only_on_the_parent(conn, schema: str) -> None:
    """``nn (id, at, v text)`` with an inheritance child ``nn_c`` holding a NULL ``v`` on 2024-03-10, then
    ``ALTER TABLE ONLY nn ALTER v SET NOT NULL`` (PostgreSQL 15 allows it for inheritance: the parent's attnotnull
    is true, the child keeps its NULL)."""
    parent, child = sql.Identifier(schema, "nn"), sql.Identifier(schema, "nn_c")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, v text)").format(parent))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(child, parent))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, NULL), (2, %s, 'x')").format(child), (DAY, DAY))
    conn.execute(sql.SQL("ALTER TABLE ONLY {} ALTER v SET NOT NULL").format(parent))


def test_parquet_archive_of_a_parent_whose_not_null_its_children_do_not_keep_fails_as_an_unexpected_error(
        conn, schema, store, temp_dir):
    """Scenario: see ``_not_null_only_on_the_parent``: the configured table ``nn`` is NOT NULL on ``v`` only for its
    own rows; ``SELECT FROM nn`` (what the archive reads, children included) returns a NULL ``v``. Archive
    2024-03-10 as Parquet.

    Now: ArchiveError "an unexpected error (ArrowInvalid: Column 'v' is declared non-nullable but contains nulls);
    not retried ...; to fix: read the message" -- the Parquet schema's field is made non-nullable from the
    parent's ``attnotnull``; the error is untyped, names no cause a user can act on and no remedy, while JSONL and
    CSV archive the same day exactly.

    Should: the day is archived exactly (a column is nullable in the file unless every relation the read covers
    enforces NOT NULL), or refused up front by a typed error naming table, day, column ``v`` and the cause (a child
    table holding NULLs under a NOT NULL set on the parent ONLY) with the remedy.
    Fix idea: derive Parquet's nullability (and table_definition's not_null) from attnotnull of the parent AND all
    its inheritance children (pg_inherits), or simply declare every field nullable."""
    _not_null_only_on_the_parent(conn, schema)
    spec = _spec(schema, "nn", "parquet")
    try:
        archived = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        said = f"{exc} {getattr(exc, 'remedy', '') or ''}"
        assert "unexpected error" not in said and "ArrowInvalid" not in said, said
        assert "nn_c" in said and "'v'" in said, said
        return
    assert archived.rows == 2
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_restore_into_new_of_a_parent_whose_not_null_its_children_do_not_keep(fmt, conn, schema, store, temp_dir):
    """Scenario: see ``_not_null_only_on_the_parent`` (NOT NULL on ``nn.v`` set ONLY on the inheritance parent; the
    child holds a NULL ``v``). 2024-03-10 is archived (2 rows, the NULL kept exactly) and deep-verifies; then
    ``restore_day(into="new")``.

    Now: RestoreError "a value breaks a constraint ... (NotNullViolation: null value in column "v" of relation
    "nn_r" ...) ... to fix: load into a table without that constraint (a new table, or ...)": the manifest's
    ``table_definition`` records ``v`` as ``not_null`` from the parent's attnotnull alone, so the new table refuses
    an archived value, and the remedy sends the user to the very command that failed. A proven, exact archive
    that no ``restore --into new`` can load.

    Should: the new table takes every archived row (2 rows, fingerprint checked). Fix idea: record ``not_null`` only
    where every relation the archive read (the parent and its inheritance children) has attnotnull, or leave NOT
    NULL off where an archived value is NULL."""
    _not_null_only_on_the_parent(conn, schema)
    spec = _spec(schema, "nn", fmt)
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 2
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.nn_r", temp_dir=temp_dir)
    assert (restored.rows, restored.fingerprint_checked) == (2, True)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_null_in_a_not_null_domain_column_is_archived_green_and_can_never_be_proven(
        fmt, conn, schema, store, temp_dir):
    """Scenario: ``CREATE DOMAIN nn AS text NOT NULL``; table ``dn (id, at, v nn)``; a row ``(1, day, NULL)`` put
    in by the way PostgreSQL's CREATE DOMAIN page documents (``INSERT ... VALUES (..., (SELECT v FROM dn WHERE
    false))``: a domain's NOT NULL is not checked for a scalar subquery's NULL), beside ``(2, day, 'x')``. No
    constraint is added NOT VALID (a fix probing NOT VALID CHECKs alone misses this). The day is archived.

    Now: green (2 rows) in every format, then deep verification raises "does not load back into its recorded
    column types: NotNullViolation: domain nn does not allow null values" (CSV: "a type or domain of the table
    changed since the day was archived ... archive the day again (overwrite)": nothing changed, and an overwrite
    stores the same NULL), and ``restore --into new`` fails with the remedy to load "into a new table".

    Should: either refused at archive time with a typed error naming table, day, column ``v`` and the cause (a NULL
    the column's domain refuses), or proven (the proof's temporary table of base types). Not a green archive that
    no proof, hence no removal and no restore, can ever accept."""
    s, table = sql.Identifier(schema), sql.Identifier(schema, "dn")
    conn.execute(sql.SQL("CREATE DOMAIN {}.nn AS text NOT NULL").format(s))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, v {}.nn)").format(table, s))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, %s, 'x')").format(table), (DAY,))
    conn.execute(sql.SQL("INSERT INTO {t} (id, at, v) VALUES (1, %s, (SELECT v FROM {t} WHERE false))").format(t=table),
                 (DAY,))
    spec = _spec(schema, "dn", fmt)
    try:
        archived = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except UnsupportedTypeError as exc:
        assert "dn" in str(exc) and "2024-03-10" in str(exc) and "'v'" in str(exc), str(exc)
        return
    assert archived.rows == 2
    try:
        problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    except ArchiveError as exc:
        pytest.fail(f"a green, exact archive that no deep verification can prove: {exc}")
    assert problems == []
