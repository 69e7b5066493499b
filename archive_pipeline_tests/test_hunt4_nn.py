"""Hunt 4 (nn): users' objects (operators, functions, casts, types, triggers) that change what the
archiver's SQL means. Each test asserts the correct behaviour and fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.test_hunt4_gg import encoded_db  # noqa: F401 - a fixture: databases in other encodings

DAY = dt.date(2024, 3, 10)


def test_a_users_operator_on_the_day_columns_domain_does_not_choose_the_days_rows(pg, conn, schema, store, temp_dir):
    """A user's day column is a domain over date (``CREATE DOMAIN bday AS date``), and the user gave the
    domain a ``>=`` of its own (``CREATE OPERATOR >= (LEFTARG = bday, RIGHTARG = date, ...)``, here one
    that also takes the day before). The archiving role's path is the default one (pg_catalog first,
    then the table's schema). The day's filter ``at >= '2024-03-10'::date AND at < ...`` finds that
    operator as an exact match for (bday, date) and uses it instead of PostgreSQL's date >= date, so the
    archive of 2024-03-10 is green with the 5 rows of 2024-03-09 in it (15 rows; the day has 10), which
    the proof, compare and removal (same filter) then agree with. The day's rows must be chosen by
    PostgreSQL's own comparison of dates (``OPERATOR(pg_catalog.>=)``), whatever the user defined on
    the domain."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE DOMAIN {s}.bday AS date").format(s=s))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at {s}.bday, note text)").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' FROM generate_series(1, 10) g").format(s), (DAY,))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'o' FROM generate_series(11, 15) g").format(s),
                 (DAY - dt.timedelta(days=1),))
    conn.execute(sql.SQL("CREATE FUNCTION {s}.on_or_after(d {s}.bday, x date) RETURNS bool LANGUAGE sql IMMUTABLE "
                         "AS 'SELECT $1::date >= $2 - 1'").format(s=s))
    conn.execute(sql.SQL("CREATE OPERATOR {s}.>= (LEFTARG = {s}.bday, RIGHTARG = date, FUNCTION = {s}.on_or_after)"
                         ).format(s=s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY - dt.timedelta(days=5), format="csv")
    with psycopg.connect(pg.dsn, options=f"-c search_path={schema},public", autocommit=True) as archiving:
        result = archive_partition(archiving, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 10, f"the archive of {DAY} holds {result.rows} rows; the day has 10"


@pytest.fixture
def oracle_path(conn, schema):
    """A schema like orafce's ``oracle``: a type of its own named ``date`` (a domain over timestamp(0),
    Oracle's DATE), for roles whose search_path puts it before pg_catalog (as orafce's users do, so that
    ``date`` means Oracle's date in their SQL). Yields the connection options of such a role's session."""
    ora = f"{schema}_ora"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(ora)))
    conn.execute(sql.SQL("CREATE DOMAIN {}.date AS pg_catalog.timestamp(0)").format(sql.Identifier(ora)))
    yield f"-c search_path={ora},pg_catalog,{schema}"
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(ora)))


def _dated(conn, schema: str) -> None:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at pg_catalog.date, due pg_catalog.date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, %s, 'n' FROM generate_series(1, 10) g").format(s),
                 (DAY, DAY + dt.timedelta(days=30)))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_deep_verification_reads_the_archived_types_as_postgresqls_whatever_the_roles_path(
        pg, conn, schema, oracle_path, store, temp_dir, fmt):
    """A database with an Oracle-compatibility schema (orafce's ``oracle``) whose type ``date`` is Oracle's
    (date and time); the archiving role's search_path lists that schema before pg_catalog. The table's
    columns are PostgreSQL's ``date`` (``pg_catalog.date``), and the manifest records them as ``date``.
    Archiving works (its statements run with pg_catalog first). Deep verification by the same role, right
    after, reads the manifest's ``date`` through the role's path, loads the archived days as the other
    schema's ``date`` (``2024-03-10 00:00:00``) and reports the intact archive as "the archive's rows are
    not the ones recorded ... other content", and "the source's columns changed while it was being
    compared: ['id', 'at', 'due', 'note'] became ['id', 'at', 'due', 'note']": retention refuses the day
    forever and the operator is sent after a damaged archive that is not. The archived type names must
    be read as PostgreSQL's own (pg_catalog first, as every other statement of the proof)."""
    _dated(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY - dt.timedelta(days=5), format=fmt)
    with psycopg.connect(pg.dsn, options=oracle_path, autocommit=True) as role:
        assert archive_partition(role, spec, DAY, store, temp_dir=temp_dir).rows == 10
        problems = deep_verify(role, store, spec, DAY, temp_dir=temp_dir)
    assert problems == []


def test_restore_into_a_new_table_creates_the_archived_types_whatever_the_roles_path(
        pg, conn, schema, oracle_path, store, temp_dir):
    """The same database and role as above (a schema with its own ``date`` type before pg_catalog on the
    role's path). A user restores an archived day into a new table (``--into new``): the restore creates
    it with the manifest's type names read through the role's path, so its ``date`` columns are the
    other schema's (date and time); the fingerprint check then fails and the restore is rolled back with
    "The archive does not hold the rows it was proven to hold (altered after it was written)", and the
    remedy "restore into a new table (into='new'), created with the archived types" — what the user just
    did. A new table must get the archived types (``pg_catalog.date``) and the restore must succeed."""
    from archive_pipeline.core.restore import restore_day

    _dated(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY - dt.timedelta(days=5), format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    with psycopg.connect(pg.dsn, options=oracle_path, autocommit=True) as role:
        result = restore_day(role, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert result.rows == 10
    types = conn.execute(sql.SQL("SELECT array_agg(atttypid::regtype::text ORDER BY attnum) FROM pg_attribute "
                                 "WHERE attrelid = %s::regclass AND attnum > 0"), (f"{schema}.back",)).fetchone()[0]
    assert types == ["integer", "date", "date", "text"]


def test_compare_of_an_unchanged_day_is_equal_whatever_the_roles_path(pg, conn, schema, oracle_path, store, temp_dir):
    """The same database and role as above (a schema with its own ``date`` type before pg_catalog on the
    role's path). A user runs ``compare`` (or ``list --check-source``) on a day archived and not touched
    since: it says "differs", noting "the source's columns changed while it was being compared: ['id',
    'at', 'due', 'note'] became ['id', 'at', 'due', 'note']". The table's description is read once under
    the role's path (the columns print as ``pg_catalog.date``) and again after the fingerprint set
    pg_catalog first in the same transaction (``date``), and the two spellings are taken for a change. An
    unchanged day must compare equal."""
    from archive_pipeline.core.plan import compare_days

    _dated(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY - dt.timedelta(days=5), format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    with psycopg.connect(pg.dsn, options=oracle_path, autocommit=True) as role:
        comparison = compare_days(role, spec, store, [DAY])[0]
    assert comparison.result == "equal", (comparison.result, comparison.note)


def test_a_users_convert_to_on_the_path_does_not_blind_the_proof_in_a_latin1_database(encoded_db, store, temp_dir):
    """A LATIN1 database (row-hash-sum-v4 hashes each text as its UTF-8 bytes there, through
    ``convert_from(convert_to(value, 'UTF8'), 'LATIN1')``) holds a function ``public.convert_to(text, text)``
    of the user's (any body; here one returning the same bytes for every text). The encoding names are
    unknown literals, and PostgreSQL prefers text for an unknown argument: the user's ``(text, text)``
    wins over PostgreSQL's ``convert_to(text, name)`` wherever it sits on the path, even after pg_catalog.
    Every text column then hashes alike: a note updated after archiving is not seen, deep verification
    proves the archive and ``compare`` says equal, so retention deletes the updated row, whose new value
    is in no archive. The fingerprint must call PostgreSQL's own conversion (qualified, with typed
    arguments) and see the change."""
    from archive_pipeline.core.plan import compare_days

    db = encoded_db("LATIN1")
    db.execute("CREATE TABLE public.ev (id int, at date, note text)")
    db.execute("INSERT INTO public.ev SELECT g, %s, 'n' || g FROM generate_series(1, 10) g", (DAY,))
    db.execute("CREATE FUNCTION public.convert_to(text, text) RETURNS bytea LANGUAGE sql IMMUTABLE "
               "AS $$ SELECT 'x'::bytea $$")
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(db, spec, DAY, store, temp_dir=temp_dir).rows == 10
    db.execute("UPDATE public.ev SET note = 'CHANGED' WHERE id = 3")  # after the archive
    problems = deep_verify(db, store, spec, DAY, temp_dir=temp_dir)
    comparison = compare_days(db, spec, store, [DAY])[0]
    assert problems and comparison.result == "differs", (problems, comparison.result)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_deep_verification_under_an_event_trigger_forcing_row_security_names_it(pg, conn, schema, store, temp_dir, fmt):
    """A database with an event trigger that puts every new table under row-level security
    (``ALTER TABLE ... ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY`` on ``ddl_command_end`` of CREATE TABLE, a
    "secure by default" guard). The table's owner (not a superuser) archives a day, then proves it:
    deep verification's temporary table comes under the event trigger too, its load is refused, and the
    proof says "the server rejected the archiver's SQL (COPY FROM not supported with row-level security);
    check the table definition; if it looks right, report it with this message": an internal bug to
    report, about a table the user never made. It should name the cause (row-level security forced on
    the proof's temporary table, by an event trigger of the database) and what to do (a scratch database
    without it, or excepting temporary tables), or prove without COPY."""
    s, role = sql.Identifier(schema), f"{schema}_owner"
    r = sql.Identifier(role)
    conn.execute(sql.SQL("CREATE ROLE {r} LOGIN; GRANT ALL ON SCHEMA {s} TO {r}").format(r=r, s=s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' || g FROM generate_series(1, 10) g").format(s), (DAY,))
    conn.execute(sql.SQL("ALTER TABLE {s}.ev OWNER TO {r}").format(s=s, r=r))
    conn.execute(sql.SQL("""CREATE FUNCTION {s}.secure_new_tables() RETURNS event_trigger LANGUAGE plpgsql AS $$
        DECLARE r record; BEGIN
        FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table' LOOP
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', r.object_identity);
        END LOOP; END $$""").format(s=s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
    try:
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as owner:
            assert archive_partition(owner, spec, DAY, store, temp_dir=temp_dir).rows == 10
            conn.execute(sql.SQL("CREATE EVENT TRIGGER secure_new_tables ON ddl_command_end "
                                 "WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION {s}.secure_new_tables()").format(s=s))
            try:
                problems = deep_verify(owner, store, spec, DAY, temp_dir=temp_dir)
            except ArchiveError as exc:
                said = f"{exc} / remedy: {exc.remedy}"
                assert "report it" not in said and "rejected the archiver's SQL" not in said, said
                assert "row-level security" in str(exc), said
            else:
                assert problems == [], problems
    finally:
        conn.execute("DROP EVENT TRIGGER IF EXISTS secure_new_tables")
        conn.execute(sql.SQL("DROP OWNED BY {r} CASCADE; DROP ROLE {r}").format(r=r))


def test_restore_skipping_existing_rows_runs_no_drop_table_under_a_drop_guard(conn, schema, store, temp_dir):
    """A production database guards against dropped tables with an event trigger (``ON ddl_command_start
    WHEN TAG IN ('DROP TABLE')`` raising "DROP TABLE is blocked in production"), a common safeguard. Half
    of an archived day's rows were deleted by mistake; the user restores the day into the original table
    with ``on_conflict='skip'`` (add the missing rows only). The restore loads the archive into a
    temporary stage table (``ON COMMIT DROP``), inserts from it, and then runs ``DROP TABLE`` on the stage
    itself: the guard refuses it and the whole restore fails ("the database reported an error
    (RaiseException: DROP TABLE is blocked in production ...)"): the user learns that a restore drops
    tables, and the rows cannot be restored without lifting the guard. The stage goes with the
    transaction anyway (ON COMMIT DROP fires no event trigger): the restore must add the 5 missing rows
    without running a DROP TABLE."""
    from archive_pipeline.core.restore import restore_day

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' FROM generate_series(1, 10) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    conn.execute(sql.SQL("DELETE FROM {}.ev WHERE id > 5").format(s))  # the mistake
    conn.execute(sql.SQL("CREATE FUNCTION {}.no_drops() RETURNS event_trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN RAISE EXCEPTION 'DROP TABLE is blocked in production'; END $$").format(s))
    conn.execute(sql.SQL("CREATE EVENT TRIGGER no_drops ON ddl_command_start WHEN TAG IN ('DROP TABLE') "
                         "EXECUTE FUNCTION {}.no_drops()").format(s))
    try:
        result = restore_day(conn, store, spec, DAY, into="original", on_conflict="skip", temp_dir=temp_dir)
    finally:
        conn.execute("DROP EVENT TRIGGER no_drops")
    assert result.inserted == 5
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.ev").format(s)).fetchone()[0] == 10


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_trigger_an_event_trigger_puts_on_new_tables_does_not_make_an_intact_archive_differ(
        conn, schema, store, temp_dir, fmt):
    """A database attaches an ``updated_at`` trigger to every new table that has such a column, from an event
    trigger (``ON ddl_command_end WHEN TAG IN ('CREATE TABLE')`` running ``CREATE TRIGGER touch BEFORE INSERT
    OR UPDATE ... SET NEW.updated_at := now()``), a common way to keep ``updated_at`` current. A day of a
    table with an ``updated_at`` column is archived; the archive is intact and the source unchanged. Deep
    verification loads the archive into a temporary table of its own, which the event trigger gives the
    trigger too, so every loaded ``updated_at`` becomes now(): the proof reports "the archive's rows are not
    the ones recorded ... other content" and "first difference: the source has a row the archive lacks" (a
    row that is in the archive as it is in the source). Retention refuses the day and the operator is sent
    after a damaged archive that is not. The proof's own table must load the archived values as they are
    (no user trigger on it), or the proof must name the trigger as the cause, never call the archive altered."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, note text, updated_at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n', '2024-03-10 05:00+00' FROM generate_series(1, 10) g"
                         ).format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    touch = sql.Identifier(schema, "touch").as_string(conn)
    conn.execute(sql.SQL("""
        CREATE FUNCTION {s}.touch() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
        CREATE FUNCTION {s}.attach_touch() RETURNS event_trigger LANGUAGE plpgsql AS $$
        DECLARE r record; BEGIN
        FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table' LOOP
            IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = r.objid AND attname = 'updated_at') THEN
                EXECUTE format('CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION """
                         + touch.replace("%", "%%") + """()', r.object_identity);
            END IF;
        END LOOP; END $$""").format(s=s))
    conn.execute(sql.SQL("CREATE EVENT TRIGGER attach_touch ON ddl_command_end WHEN TAG IN ('CREATE TABLE') "
                         "EXECUTE FUNCTION {}.attach_touch()").format(s))
    try:
        try:
            problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
        except ArchiveError as exc:
            assert "trigger" in str(exc) and "altered" not in str(exc), str(exc)
        else:
            assert problems == [], problems
    finally:
        conn.execute("DROP EVENT TRIGGER attach_touch")
