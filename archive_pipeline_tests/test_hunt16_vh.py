"""Hunt 16 (vh): the removal ("let go") and what it may reach beyond the day: foreign keys, dependents,
partition trees, inheritance, deferred checks; the dry run against the real run."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import RemovalRefused, check_removable, remove_day

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]


def _ident(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def _count(conn, schema: str, name: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_ident(schema, name))).fetchone()[0]


def _declarative(conn, schema: str) -> None:
    """events partitioned by range (created_at), one partition per day of DAYS, 50 rows in each."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, note text, PRIMARY KEY (id, created_at)) "
                         "PARTITION BY RANGE (created_at)").format(_ident(schema, "events")))
    for day in DAYS:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            _ident(schema, f"events_{day:%Y%m%d}"), _ident(schema, "events"), sql.Literal(f"{day} 00:00+00"),
            sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', 'n' "
                             "FROM generate_series(1, 50) g").format(_ident(schema, "events"),
                                                                     sql.Literal(f"{day} 00:00+00")))


def _spec(schema: str, action: str, mode: str = "declarative", **retention) -> TableSpec:
    partitioning = {"mode": "naming", "pattern": "events_%Y%m%d"} if mode == "naming" else {"mode": mode}
    return TableSpec(name=f"{schema}.events", start_date=DAYS[0], partitioning=partitioning,
                     day_column=None if mode == "naming" else "created_at",
                     retention={"keep_days": 1, "action": action, **retention})


def test_a_drop_refuses_up_front_a_partition_a_function_body_depends_on(conn, schema, store):
    """Declarative mode, retention action 'drop'. A SQL-standard function body (PostgreSQL 14+, BEGIN ATOMIC)
    reads the day's partition directly: `CREATE FUNCTION n() ... BEGIN ATOMIC SELECT count(*) FROM
    events_20240310; END`, which records a dependency that keeps DROP TABLE from dropping it (a row-security
    policy of another table reading it does the same). lifecycle._DEPENDENTS asks only for views/rules, foreign
    keys, inheriting tables, row-type and sequence uses, so: check_removable returns the partition, the dry run
    says it would drop it, and the real run proves the whole day (download, load, fingerprint), writes the
    pending mark, and then DROP TABLE fails: a bare SourceError "the database reported an error
    (DependentObjectsStillExist ...) to fix: read the message". README: drop refuses "a drop of a table that
    views, ... depend on ... (the dry run too)", "all these refusals come before the proof ... so a day that
    cannot be removed costs no download". Expected: check_removable (and so the dry run) raises RemovalRefused
    naming the function, with the remedy to drop or re-point it or use 'detach'.
    Fix idea: in _DEPENDENTS, take every normal (deptype 'n') pg_depend entry on the relation (pg_describe_object)
    whose object does not go with the table (its own constraints, defaults, indexes, triggers, policies,
    rules), rather than a list of known kinds."""
    _declarative(conn, schema)
    conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM {}; END")
                 .format(_ident(schema, "day_count"), _ident(schema, "events_20240310")))
    spec = _spec(schema, "drop")
    archive_partition(conn, spec, DAYS[0], store)
    with pytest.raises(RemovalRefused) as refused:
        check_removable(conn, spec, DAYS[0])
    assert "day_count" in str(refused.value), refused.value
    assert _count(conn, schema, "events_20240310") == 50


def test_a_detachs_dry_run_refuses_a_day_whose_rows_a_foreign_key_to_the_table_references(conn, schema, store):
    """Declarative mode, retention action 'detach'. The table is self-referencing across days (a row of
    2024-03-11 names its parent row of 2024-03-10 through `FOREIGN KEY (pid, pat) REFERENCES events`; another
    table's key to events behaves the same). Now: check_removable returns the partition and the dry run says it
    would detach events_20240310; the real run then downloads and proves the whole day, writes the pending mark,
    and only the DETACH PARTITION finds the reference (RemovalRefused "other tables' rows reference rows of the
    day ..."). README: "The dry run refuses alike, and all these refusals come before the proof
    (lifecycle.check_removable ...) so a day that cannot be removed costs no download". Expected: check_removable
    (and the dry run) refuse the day, naming the foreign key, exactly as the real run does.
    Fix idea: in _refuse_unremovable for detach/drop, run PostgreSQL's own check up front: for each key whose
    confrelid is an ancestor of the partition (pg_partition_ancestors), EXISTS a referencing row (outside the
    partition's own self-references being detached with it is still a violation) matching a row of the partition;
    the drop's dependents check already refuses such keys wholesale."""
    t = lambda name: _ident(schema, name)  # noqa: E731
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, pid int, pat timestamptz, "
                         "PRIMARY KEY (id, created_at), FOREIGN KEY (pid, pat) REFERENCES {}) "
                         "PARTITION BY RANGE (created_at)").format(t("events"), t("events")))
    for day in DAYS:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            t(f"events_{day:%Y%m%d}"), t("events"), sql.Literal(f"{day} 00:00+00"),
            sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', NULL, NULL), "
                         "(2, '2024-03-11 01:00+00', 1, '2024-03-10 01:00+00')").format(t("events")))
    spec = _spec(schema, "detach")
    archive_partition(conn, spec, DAYS[0], store)
    with pytest.raises(RemovalRefused) as real:
        remove_day(conn, spec, DAYS[0], store)  # the real run refuses (after the proof)
    assert "reference" in str(real.value)
    with pytest.raises(RemovalRefused) as dry:
        remove_day(conn, spec, DAYS[0], store, dry_run=True)
    assert "foreign key" in str(dry.value).lower(), dry.value


@pytest.fixture
def role(conn, schema):
    """A LOGIN role that owns nothing yet."""
    name = f"{schema}_vh"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.mark.parametrize("action", ["detach", "drop"])
def test_a_naming_mode_detach_refuses_up_front_a_role_that_does_not_own_the_day_tables_partitioned_parent(
        pg, conn, schema, store, role, action):
    """Naming mode whose day tables are declarative partitions of events (README: supported, DETACH PARTITION),
    retention action 'detach'. The removing role owns the day table events_20240310 and may read events, but
    events (the partitioned parent) belongs to another role. README: "Every action refuses a role that may not
    carry it out (detach/drop: not a member of the owner of the day's table or partition, and of the parent for a
    partition ...) ... The dry run refuses alike, and all these refusals come before the proof". Now:
    lifecycle._refuse_unprivileged asks only about the day table in naming mode (needed = [target]), so
    check_removable returns events_20240310 and the dry run says it would detach it; the real run proves the day
    and then fails on the removal's LOCK TABLE ONLY events IN ACCESS EXCLUSIVE MODE: SourceError "permission denied
    for table events ... to fix: the role may not read table events, which <schema>.events reads (a view's, or a
    rule's): GRANT SELECT ON events ... TO the owner of the view" - there is no view, and SELECT is granted. Action
    'drop' alike (parametrized): the same lock fails after the proof, though the README names the parent's owner
    for a partition there too (PostgreSQL's own DROP of a partition would even need only the partition's owner).
    Expected: check_removable refuses (RemovalRefused, cause permission denied) naming events and its owner, as the
    declarative mode does for a partition's parent.
    Fix idea: in _refuse_unprivileged, for naming mode add the parents a day table is a partition of
    (_parent_rows with partition true) to ``needed`` for detach; for drop, lock the parent only as DROP would
    (or ask for the privilege LOCK needs)."""
    t = lambda name: _ident(schema, name)  # noqa: E731
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, note text) PARTITION BY RANGE (created_at)")
                 .format(t("events")))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') TO "
                         "('2024-03-11 00:00+00')").format(t("events_20240310"), t("events")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10'::timestamptz + g * interval '1 minute', 'n' "
                         "FROM generate_series(1, 50) g").format(t("events")))
    r = sql.Identifier(role)
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(t("events_20240310"), r))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), r))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(t("events"), r))
    spec = _spec(schema, action, mode="naming")
    archive_partition(conn, spec, DAYS[0], store)
    import psycopg

    with psycopg.connect(pg.dsn_for(role), autocommit=True) as removing:
        with pytest.raises(RemovalRefused) as refused:
            check_removable(removing, spec, DAYS[0])
    said = f"{refused.value} {refused.value.remedy or ''}"
    assert f"{schema}.events " in said or f"{schema}.events)" in said, said
    assert _count(conn, schema, "events_20240310") == 50


def test_a_delete_reaching_a_read_only_foreign_partition_is_refused_with_its_own_cause_not_a_publications(
        conn, schema, store):
    """Declarative mode, retention action 'delete' (the README's advice for foreign partitions). The day's
    partition is a postgres_fdw foreign table marked read-only (`OPTIONS (updatable 'false')`: a cold partition on
    another server, a common way to keep old days reachable). PostgreSQL refuses the DELETE ("foreign table
    events_20240310 does not allow deletes", SQLSTATE 55000); lifecycle._refuse_unpublishable catches every 55000
    from its EXPLAIN DELETE as a publication problem, so the user is told (check_removable, dry run and real run
    alike): cause "publication", to fix: "make the table's replica identity ... cover the columns the
    publication's row filter uses ... ALTER PUBLICATION ... SET TABLE; or stop publishing its deletes" - there is no
    publication, and following that remedy changes nothing. (A file_fdw child, which cannot delete at all, ends as
    a SourceError "the server rejected the archiver's SQL ... report it with this message", an archiver bug it is
    not.) Expected: RemovalRefused naming the foreign table and that its wrapper does not allow deletes, with a
    remedy about it (remove the day's rows on the remote server, or make the foreign table updatable), no word of
    publications or replica identity.
    Fix idea: in _refuse_unpublishable tell the publication errors (their message names a publication / replica
    identity) from others, or check pg_foreign_table options / the FDW's IsForeignRelUpdatable for the reached
    foreign tables first, with their own refusal."""
    if not conn.execute("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'postgres_fdw')").fetchone()[0]:
        pytest.skip("postgres_fdw is not installed on this server")
    t = lambda name: _ident(schema, name)  # noqa: E731
    server = sql.Identifier(f"{schema}_loop")
    conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS postgres_fdw SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {}, port {}, dbname {})")
                 .format(server, sql.Literal(conn.info.host), sql.Literal(str(conn.info.port)),
                         sql.Literal(conn.info.dbname)))
    conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS (user {})").format(
        server, sql.Literal(conn.info.user)))
    try:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, note text) PARTITION BY RANGE "
                             "(created_at)").format(t("events")))
        conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, note text)").format(t("cold_20240310")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10'::timestamptz + g * interval '1 minute', 'n' "
                             "FROM generate_series(1, 50) g").format(t("cold_20240310")))
        conn.execute(sql.SQL("CREATE FOREIGN TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') TO "
                             "('2024-03-11 00:00+00') SERVER {} OPTIONS (schema_name {}, table_name 'cold_20240310', "
                             "updatable 'false')").format(t("events_20240310"), t("events"), server,
                                                          sql.Literal(schema)))
        spec = _spec(schema, "delete")
        archive_partition(conn, spec, DAYS[0], store)
        with pytest.raises(RemovalRefused) as refused:
            check_removable(conn, spec, DAYS[0])
        error = refused.value
        said = f"{error} {error.remedy or ''}".lower()
        assert "events_20240310" in said, said
        assert "publication" not in said and "replica identity" not in said and error.cause != "publication", said
        assert _count(conn, schema, "cold_20240310") == 50
    finally:
        conn.execute(sql.SQL("DROP SERVER {} CASCADE").format(server))
