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
from archive_pipeline_tests.helpers import run_check_evaluations

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


def test_delete_by_a_role_granted_select_column_by_column_is_refused_before_the_proof_or_works(
        pg, conn, schema, role, store, temp_dir):
    """A user's removing role has DELETE on the table and SELECT granted on every one of its columns
    (``GRANT SELECT (id, at, note)``), not on the table: archiving and deep verification work (README:
    such a role is read with the plain COPY). ``check_removable`` and the dry run say the day would be
    deleted. The real removal then proves the archive, writes the pending mark, and fails with
    "permission denied for table ev": its batched DELETE selects ``tableoid, ctid``, system columns a
    column grant does not cover. README: every action refuses a role that may not carry it out, the dry
    run alike, before the proof. Either the DELETE must work for this role (it may DELETE and read every
    column) or ``check_removable`` must refuse it up front, naming the grant."""
    from archive_pipeline.core.lifecycle import RemovalRefused, check_removable, remove_day

    s, r = sql.Identifier(schema), sql.Identifier(role)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00'::timestamptz + g * interval '1 min', "
                         "'n' FROM generate_series(1, 10) g").format(s))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT (id, at, note) ON {s}.ev TO {r}; "
                         "GRANT DELETE ON {s}.ev TO {r}").format(s=s, r=r))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                     retention={"keep_days": 1, "action": "delete"})
    with psycopg.connect(pg.dsn_for(role), autocommit=True) as removing:
        assert archive_partition(removing, spec, DAY, store, temp_dir=temp_dir).rows == 10
        try:
            check_removable(removing, spec, DAY)
        except RemovalRefused:
            return  # refused up front, before any proof: fine
        removal = remove_day(removing, spec, DAY, store, temp_dir=temp_dir)  # raised "permission denied for table ev"
    assert removal.rows == 10
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.ev").format(s)).fetchone()[0] == 0


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_restore_into_a_table_under_row_level_security_says_so(pg, conn, schema, role, store, temp_dir, fmt):
    """A user restores an archived day into the original table (``--into original``) as a role that is
    not the table's owner; the table has row-level security enabled (a policy letting the role see and
    insert every row). PostgreSQL refuses the CSV/Parquet load ("COPY FROM not supported with row-level
    security"), and the restore reports it as "the server rejected the archiver's SQL ... check the table
    definition; if it looks right, report it with this message": an internal bug, to be reported. It
    should name row-level security on the target as the cause and say what to do (restore as the
    table's owner or a BYPASSRLS role, or into a new table), as the JSONL restore and the archive do."""
    from archive_pipeline.core.restore import RestoreError, restore_day

    s, r = sql.Identifier(schema), sql.Identifier(role)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, tenant text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'a' FROM generate_series(1, 10) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))  # the day lost from the source: restore it
    conn.execute(sql.SQL("ALTER TABLE {s}.ev ENABLE ROW LEVEL SECURITY; "
                         "CREATE POLICY everyone ON {s}.ev USING (true) WITH CHECK (true); "
                         "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT, INSERT ON {s}.ev TO {r}").format(s=s, r=r))
    with psycopg.connect(pg.dsn_for(role), autocommit=True) as restoring:
        with pytest.raises(RestoreError) as caught:
            restore_day(restoring, store, spec, DAY, into="original", temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert "report it" not in said and "rejected the archiver's SQL" not in said, said
    assert "row-level security" in str(caught.value), said


def test_a_users_hashtextextended_on_the_path_does_not_replace_the_fingerprint_of_a_wide_table(
        pg, conn, schema, store, temp_dir):
    """A table of more than 64 columns (the fingerprint hashes it in chains of 64, then joins the chains
    with ``hashtextextended(concat_ws(',', ...), 0)``), archived by a role whose search_path lists a schema
    holding a function ``hashtextextended(text, integer)`` (here one returning 0; a security-definer
    helper of that name would do the same). The literal 0 is an integer, so that function is an exact
    match and wins over PostgreSQL's ``hashtextextended(text, bigint)`` wherever it sits on the path,
    even after pg_catalog (README: "every function ... the archiver's queries use resolves to
    PostgreSQL's own first"). Every row then hashes to 0: the day's fingerprint is its row count. A value
    updated after archiving is not seen: deep verification proves the archive, ``compare`` says equal,
    and retention deletes the updated row, whose new value is in no archive. The proof must see the change."""
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
    from archive_pipeline.core.plan import compare_days

    s = sql.Identifier(schema)
    columns = ", ".join(f"c{i} int" for i in range(70))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, " + columns + ")").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev (id, at, c0) SELECT g, %s, g FROM generate_series(1, 10) g").format(s),
                 (DAY,))
    conn.execute(sql.SQL("CREATE FUNCTION {}.hashtextextended(text, integer) RETURNS bigint LANGUAGE sql "
                         "IMMUTABLE AS 'SELECT 0::bigint'").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                     retention={"keep_days": 1, "action": "delete"})
    with psycopg.connect(pg.dsn, options=f"-c search_path={schema},public", autocommit=True) as archiving:
        archive_partition(archiving, spec, DAY, store, temp_dir=temp_dir)
        archiving.execute(sql.SQL("UPDATE {}.ev SET c0 = -c0 WHERE id = 3").format(s))  # after the archive
        problems = deep_verify(archiving, store, spec, DAY, temp_dir=temp_dir)
        comparison = compare_days(archiving, spec, store, [DAY])[0]
        try:
            remove_day(archiving, spec, DAY, store, temp_dir=temp_dir)
        except RemovalRefused:
            pass
    left = conn.execute(sql.SQL("SELECT count(*) FROM {}.ev WHERE c0 = -3").format(s)).fetchone()[0]
    assert problems and comparison.result == "differs" and left == 1, (
        f"deep verification: {problems}, compare: {comparison.result} ({comparison.source_fingerprint}); "
        f"the updated row {'is still there' if left else 'was deleted, its new value in no archive'}")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_users_cast_to_text_does_not_blind_the_proof(conn, schema, store, temp_dir, fmt):
    """A user's composite type ``pair (a int, b text)`` has a cast to text of its own (``CREATE CAST
    (pair AS text) WITH FUNCTION pair_text(pair)``, a display form that shows only ``a``). The archive
    writes each value by the type's output function, ``(3,x)``; the content fingerprint hashes
    ``p::text``, which calls the user's cast, so it hashes ``3`` alone. After archiving, a row's ``b`` is
    updated: deep verification proves the archive equal to the source and ``compare`` says equal, so
    retention would delete the updated row, whose new value is in no archive. The fingerprint must hash
    what PostgreSQL's output function prints, never a user's cast."""
    from archive_pipeline.core.plan import compare_days

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {s}.pair AS (a int, b text); "
                         "CREATE FUNCTION {s}.pair_text({s}.pair) RETURNS text LANGUAGE sql IMMUTABLE "
                         "AS 'SELECT ($1).a::text'; "
                         "CREATE CAST ({s}.pair AS text) WITH FUNCTION {s}.pair_text({s}.pair)").format(s=s))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, p {s}.pair)").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {s}.ev SELECT g, %s, ('(' || g || ',x)')::{s}.pair "
                         "FROM generate_series(1, 10) g").format(s=s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.commit()
    conn.execute(sql.SQL("UPDATE {}.ev SET p = '(3,CHANGED)' WHERE id = 3").format(s))  # after the archive
    conn.commit()
    problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    comparison = compare_days(conn, spec, store, [DAY])[0]
    assert problems and comparison.result == "differs", (problems, comparison.result)


def test_proof_refused_for_lack_of_usage_on_a_type_names_the_type_not_select(
        pg, conn, schema, types_schema, role, store, temp_dir):
    """A user's enum ``types.mood`` has its USAGE revoked from PUBLIC (``REVOKE USAGE ON TYPE``); the
    proving role may SELECT the table and create temporary tables. The JSONL archive succeeds, and deep
    verification (and so the retention removal) fails with "permission denied for type types.mood" and
    the remedy "GRANT SELECT ON <table> TO <role> (and USAGE on its schema), and TEMPORARY on the
    database": grants the role already has. The remedy should name what is missing: USAGE on the type."""
    s, ts, r = sql.Identifier(schema), sql.Identifier(types_schema), sql.Identifier(role)
    conn.execute(sql.SQL("CREATE TYPE {t}.mood AS ENUM ('sad', 'ok', 'happy'); GRANT USAGE ON SCHEMA {t} TO PUBLIC; "
                         "REVOKE USAGE ON TYPE {t}.mood FROM PUBLIC").format(t=ts))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, m {t}.mood)").format(s=s, t=ts))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'ok' FROM generate_series(1, 10) g").format(s), (DAY,))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.ev TO {r}").format(s=s, r=r))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl")
    with psycopg.connect(pg.dsn_for(role), autocommit=True) as proving:
        assert archive_partition(proving, spec, DAY, store, temp_dir=temp_dir).rows == 10
        with pytest.raises(ArchiveError) as caught:
            deep_verify(proving, store, spec, DAY, temp_dir=temp_dir)
    remedy = caught.value.remedy or ""
    assert "USAGE ON TYPE" in remedy.upper() or f"{types_schema}.mood" in remedy, f"{caught.value} / remedy: {remedy}"


def test_delete_of_a_day_whose_partition_lives_in_a_schema_the_role_may_not_use(
        pg, conn, schema, role, store, temp_dir):
    """A user keeps a declarative table's partitions in a schema of their own (``parts.d10``) and gives
    the removing role SELECT and DELETE on the parent and USAGE on the parent's schema only: PostgreSQL
    reads and deletes a partition's rows through its parent without USAGE on the partition's schema, and
    archiving and deep verification work. Retention ``delete`` is refused before the proof with
    "permission denied for schema parts", and the remedy asks for "GRANT SELECT, DELETE ON ev", which the
    role has, never naming that schema: the removal's own catalog checks cast the partitions' names to
    regclass, which needs USAGE on their schema. The removal must work (its DELETE is allowed) or its
    remedy must name the missing USAGE on the partition's schema."""
    from archive_pipeline.core.lifecycle import remove_day

    s, r, parts = sql.Identifier(schema), sql.Identifier(role), sql.Identifier(f"{schema}_parts")
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(parts))
    try:
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.d10 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                             "TO ('2024-03-11 00:00+00')").format(parts, s))
        conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00'::timestamptz + g * interval '1 min' "
                             "FROM generate_series(1, 10) g").format(s))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT, DELETE ON {s}.ev TO {r}").format(s=s, r=r))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                         retention={"keep_days": 1, "action": "delete"})
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as removing:
            assert archive_partition(removing, spec, DAY, store, temp_dir=temp_dir).rows == 10
            assert deep_verify(removing, store, spec, DAY, temp_dir=temp_dir) == []
            try:
                removal = remove_day(removing, spec, DAY, store, temp_dir=temp_dir)
            except ArchiveError as exc:
                remedy = exc.remedy or ""
                assert "USAGE" in remedy and f"{schema}_parts" in remedy, f"{exc} / remedy: {remedy}"
                return
        assert removal.rows == 10
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(parts))


def test_retention_delete_of_a_configured_view_is_refused_up_front_or_works(conn, schema, store, temp_dir):
    """A user archives a view over a table (``CREATE VIEW ev WITH (security_barrier) AS SELECT * FROM
    base WHERE tenant = 'a'``, auto-updatable; views are archivable) and sets ``retention: delete`` on it.
    Archive and deep verification pass, ``check_removable`` and the dry run say the day would be
    deleted. The real removal proves the archive, writes the pending mark, then fails with "the table,
    column or schema does not exist (any more) (column "tableoid" does not exist); to fix: check the table
    name and day_column in archive_tables.yaml": the name and column are right. README: what a removal
    would refuse is refused before the proof, the dry run alike, naming the cause. Either the DELETE
    through the view works (it removes exactly the archived rows) or the view is refused up front."""
    from archive_pipeline.core.lifecycle import RemovalRefused, check_removable, remove_day

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.base (id int, at date, tenant text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.base SELECT g, %s, CASE WHEN g %% 2 = 0 THEN 'a' ELSE 'b' END "
                         "FROM generate_series(1, 10) g").format(s), (DAY,))
    conn.execute(sql.SQL("CREATE VIEW {s}.ev WITH (security_barrier) AS SELECT * FROM {s}.base WHERE tenant = 'a'")
                 .format(s=s))
    conn.commit()
    conn.autocommit = True
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                     retention={"keep_days": 1, "action": "delete"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 5
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []
    try:
        check_removable(conn, spec, DAY)
    except RemovalRefused:
        return  # refused before any proof: fine
    removal = remove_day(conn, spec, DAY, store, temp_dir=temp_dir)  # failed: column "tableoid" does not exist
    assert removal.rows == 5
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.base").format(s)).fetchone()[0] == 5  # tenant b's stay


def test_a_view_whose_owner_lost_select_on_its_table_is_not_blamed_on_the_archiving_role(
        pg, conn, schema, role, store, temp_dir):
    """A user archives a view ``ev`` over ``base``; the view belongs to another role ``vo``, whose SELECT on
    ``base`` is missing (revoked, or never granted). The archiving role has SELECT on the view and USAGE on
    the schema. PostgreSQL
    refuses "permission denied for table base" (it checks ``base`` as the view's owner), and the archive
    says "to fix: GRANT SELECT ON ev TO <archiving role>", which the role already has: nothing in the
    remedy points at the view's owner or ``base``. The remedy should name the refused table ``base`` (and
    that the view's owner needs SELECT on it), not repeat a grant the role holds."""
    s, r = sql.Identifier(schema), sql.Identifier(role)
    owner = sql.Identifier(f"{schema}_vo")
    conn.execute(sql.SQL("CREATE ROLE {}").format(owner))
    try:
        conn.execute(sql.SQL("CREATE TABLE {}.base (id int, at date)").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.base SELECT g, %s FROM generate_series(1, 10) g").format(s), (DAY,))
        conn.execute(sql.SQL("CREATE VIEW {s}.ev AS SELECT * FROM {s}.base; ALTER VIEW {s}.ev OWNER TO {o}; "
                             "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.ev TO {r}").format(s=s, o=owner, r=r))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as archiving:
            with pytest.raises(ArchiveError) as caught:
                archive_partition(archiving, spec, DAY, store, temp_dir=temp_dir)
        remedy = caught.value.remedy or ""
        assert "base" in remedy and f"GRANT SELECT ON {schema}.ev TO {role}" not in remedy, \
            f"{caught.value} / remedy: {remedy}"
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(owner))
        conn.execute(sql.SQL("DROP ROLE {}").format(owner))


def test_drop_by_a_noinherit_member_of_the_owner_is_not_told_to_grant_what_it_has(pg, conn, schema, store):
    """A user's removing role is a member of the table owner's role but NOINHERIT (``CREATE ROLE r LOGIN
    NOINHERIT; GRANT owner TO r``: a common setup where privileges come only with SET ROLE). Retention
    ``drop`` is refused before the proof, which is right, but says "the role r is not a member of owner;
    to fix: ... GRANT owner TO r": r is a member, and that GRANT exists already, so the remedy changes
    nothing. It should say the membership does not inherit the owner's privileges (ALTER ROLE r INHERIT,
    or remove as the owner)."""
    from archive_pipeline.core.lifecycle import RemovalRefused, check_removable

    s = sql.Identifier(schema)
    removing, owner = f"{schema}_r", f"{schema}_o"
    r, o = sql.Identifier(removing), sql.Identifier(owner)
    conn.execute(sql.SQL("CREATE ROLE {o}; CREATE ROLE {r} LOGIN NOINHERIT; GRANT {o} TO {r}").format(o=o, r=r))
    try:
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.d10 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                             "TO ('2024-03-11 00:00+00')").format(s, s))
        conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g").format(s))
        conn.execute(sql.SQL("ALTER TABLE {s}.ev OWNER TO {o}; ALTER TABLE {s}.d10 OWNER TO {o}; "
                             "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.ev, {s}.d10 TO {r}")
                     .format(s=s, o=o, r=r))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                         partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})
        with psycopg.connect(pg.dsn_for(removing), autocommit=True) as c:
            with pytest.raises(RemovalRefused) as caught:
                check_removable(c, spec, DAY)
        said = f"{caught.value} / remedy: {caught.value.remedy}"
        assert "is not a member" not in said and f"GRANT {owner} TO {removing}" not in said, said
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {o}, {r} CASCADE; DROP ROLE {r}; DROP ROLE {o}").format(o=o, r=r))


def test_a_users_to_json_on_the_path_does_not_write_the_jsonl_archive(pg, conn, schema, store, temp_dir,
                                                                        s3_client, bucket):
    """A JSONL table has an array column with a lower bound other than 1 (``'[0:1]={1,2}'``) and a
    two-dimensional ``int[]`` column; the archiving role's path lists a schema holding a function
    ``to_json(integer[])`` (a helper of the application's). For such rows the archiver writes each array
    with ``to_json(<column>)``, unqualified: the user's function is an exact match and wins over
    PostgreSQL's ``to_json(anyelement)`` wherever it sits on the path, so the archive holds its output
    ("hijacked") instead of ``[[1,2],[3,4]]``, and the archive is green. (Deep verification then fails to
    load it.) The archive must hold the values PostgreSQL's own functions print, or fail."""
    from archive_pipeline_tests.helpers import decompress, download

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, a int[], b int[])").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, '[0:1]={{1,2}}', '{{{{1,2}},{{3,4}}}}' "
                         "FROM generate_series(1, 3) g").format(s), (DAY,))
    conn.execute(sql.SQL("CREATE FUNCTION {s}.to_json(integer[]) RETURNS json LANGUAGE sql "
                         "AS $$SELECT '\"hijacked\"'::json$$").format(s=s))
    conn.commit()
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl")
    with psycopg.connect(pg.dsn, options=f"-c search_path={schema},public", autocommit=True) as archiving:
        try:
            result = archive_partition(archiving, spec, DAY, store, temp_dir=temp_dir)
        except ArchiveError:
            return  # refused: nothing wrong published
    body = decompress(download(s3_client, bucket, result.key), "zstd")
    assert b"hijacked" not in body and b"[[1,2],[3,4]]" in body, body[:200]


def test_removal_in_dagster_records_no_failed_proof_for_a_role_without_usage_on_the_types_schema(
        pg, conn, schema, types_schema, role, store, temp_dir, archive_env, monkeypatch):
    """Through Dagster: the code location connects as a role that may SELECT and DELETE the table but has
    no USAGE on the schema of its enum column's type. Materializing ``source_removed`` for an archived day
    records a FAILED ``archive_proven`` check, "the manifest is damaged": an integrity verdict against an
    intact archive (README: a privilege refused proves nothing either way; the run fails, and no failed
    integrity check is recorded). The run should fail naming the missing USAGE, with no check evaluation."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions

    s, ts, r = sql.Identifier(schema), sql.Identifier(types_schema), sql.Identifier(role)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('sad', 'ok', 'happy')").format(ts))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, m {t}.mood)").format(s=s, t=ts))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'ok' FROM generate_series(1, 10) g").format(s), (DAY,))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT, DELETE ON {s}.ev TO {r}").format(s=s, r=r))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv",
             "retention": {"keep_days": 1, "action": "delete"}}
    config = parse_config({"retry": {"max_retries": 0}, "tables": [table]})
    archive_partition(conn, config.tables[0], DAY, store, temp_dir=temp_dir)
    monkeypatch.setenv("ARCHIVE_PG_DSN", pg.dsn_for(role))
    defs = build_definitions(config)
    with instance_for_test() as instance:
        remove = defs.resolve_job_def(f"Remove_{schema}_ev")
        failed = remove.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        failed_checks = run_check_evaluations(instance, failed.run_id)
    assert not failed.success
    evaluations = failed_checks
    assert evaluations == [], [e.description for e in evaluations]
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.ev").format(s)).fetchone()[0] == 10
