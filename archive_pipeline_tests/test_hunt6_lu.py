"""Hunt 6 (lu): database encodings, collations and locales through the whole round trip; in particular a
server whose messages are in another language (lc_messages): the error classification must go by SQLSTATE,
never by the English text of a message."""

from __future__ import annotations

import datetime as dt
import os

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline.local.local_stack import start_postgres
from archive_pipeline_tests.test_hunt4_gg import encoded_db  # noqa: F401 - a fixture: databases in other encodings

DAY = dt.date(2024, 3, 10)
FORMATS = ("jsonl", "csv", "parquet")


@pytest.fixture(scope="module")
def german():
    """A server whose messages are German (as one with lc_messages = 'de_DE.UTF-8'; only C locales exist on this
    machine, so the server's gettext is told the language by LANGUAGE, which it honours under C.UTF-8)."""
    before = os.environ.get("LANGUAGE")
    os.environ["LANGUAGE"] = "de"
    try:
        server = start_postgres()
    finally:
        if before is None:
            del os.environ["LANGUAGE"]
        else:
            os.environ["LANGUAGE"] = before
    try:
        with server.connect() as c:
            try:
                c.execute("SELECT * FROM no_such_table")
            except psycopg.errors.UndefinedTable as exc:
                assert "existiert nicht" in str(exc), exc  # the server speaks German
        yield server
    finally:
        server.stop()


@pytest.fixture
def de(german):
    with german.connect() as c:
        yield c


@pytest.fixture
def de_schema(de):
    name = f"lu_{os.getpid()}_{de.info.backend_pid}"
    de.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    de.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def _told(exc: BaseException) -> str:
    return f"{exc} / {getattr(exc, 'cause', '')} / {getattr(exc, 'remedy', '')}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_statement_timeout_on_a_german_server_is_called_a_statement_timeout(fmt, de, de_schema, store, temp_dir):
    """A user's server speaks German (lc_messages = 'de_DE.UTF-8'); the day's read takes longer than
    source.statement_timeout_ms. What happens: the failure (SQLSTATE 57014) is told as "the query was cancelled
    (pg_cancel_backend or a client cancel)", remedy "look for a job that cancels long queries": the statement
    timeout is known only by the English words "statement timeout" in the message. What should happen: the
    cause is the statement_timeout and the remedy says to raise source.statement_timeout_ms, as on an English
    server (the archiver set the timeout itself: it can tell a timeout from a cancel without reading the text)."""
    s = sql.Identifier(de_schema)
    de.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
    de.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10' FROM generate_series(1, 3) g").format(s))
    de.execute(sql.SQL("CREATE VIEW {}.slow AS SELECT id, at, pg_catalog.pg_sleep(0.3) IS NULL AS z "
                       "FROM {}.ev").format(s, s))
    spec = TableSpec(name=f"{de_schema}.slow", day_column="at", start_date=DAY, format=fmt, compression="zstd")
    with pytest.raises(ArchiveError) as raised:
        archive_partition(de, spec, DAY, store, temp_dir=temp_dir, session_settings={"statement_timeout": "100"})
    told = _told(raised.value)
    assert raised.value.retryable, told
    assert "statement_timeout" in f"{raised.value.cause} {raised.value.remedy}", told
    assert "pg_cancel_backend" not in told, told


def test_a_snapshot_gone_on_a_german_server_is_retried_not_refused_as_a_value(de, de_schema, store, temp_dir,
                                                                               monkeypatch):
    """Parquet with two streams on a German server; the snapshot's exporting session ends before the second
    stream's reader imports it (a role's idle_in_transaction_session_timeout while readers connect). PostgreSQL
    answers SQLSTATE 22023 "ungültiger Snapshot-Bezeichner". What happens: the day fails not retryable as a
    value error of class 22 (the snapshot is recognised only by the English words "invalid snapshot
    identifier"), so a transient failure stops the day for good. What should happen: as on an English server,
    retried with the snapshot remedy (the statement that failed is the archiver's own SET TRANSACTION SNAPSHOT:
    its 22023 means the snapshot, whatever the language)."""
    from archive_pipeline.core.formats import parquet

    s = sql.Identifier(de_schema)
    de.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, v text)").format(s))
    de.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10', 'x' || g FROM generate_series(1, 5000) g").format(s))
    de.execute(sql.SQL("ANALYZE {}.ev").format(s))
    spec = TableSpec(name=f"{de_schema}.ev", day_column="at", start_date=DAY, format="parquet", compression="zstd",
                     chunk_size=1000, parallel_streams=2)
    opened = parquet.Parquet._open_reader
    opened_readers: list[bool] = []

    def export_ends_before_the_second_reader(self, extraction):
        if opened_readers:  # the exporting transaction ends, as an idle timeout would end it
            extraction.conn.execute("COMMIT")
        opened_readers.append(True)
        return opened(self, extraction)

    monkeypatch.setattr(parquet.Parquet, "_open_reader", export_ends_before_the_second_reader)
    with pytest.raises(ArchiveError) as raised:
        archive_partition(de, spec, DAY, store, temp_dir=str(temp_dir), progress_every=0)
    assert len(opened_readers) == 2
    told = _told(raised.value)
    assert raised.value.retryable and type(raised.value).__name__ != "UnsupportedTypeError", told
    assert "snapshot was gone" in told, told


def test_row_level_security_on_a_german_server_is_named(german, de, de_schema, store, temp_dir):
    """A table with FORCE ROW LEVEL SECURITY, archived by its owner (no BYPASSRLS) on a German server. PostgreSQL
    refuses the read (row_security is off in the archive's sessions) with SQLSTATE 42501 "Anfrage würde von
    der Policy für Sicherheit auf Zeilenebene für Tabelle ... beeinflusst werden". What happens: told as a missing
    privilege (GRANT SELECT ...), a grant the owner has: 42501 is read as row-level security only by the English
    words "row-level security". What should happen: the cause is row-level security and the remedy a role that
    bypasses it, as on an English server."""
    role = f"lu_owner_{de.info.backend_pid}"
    de.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        s = sql.Identifier(de_schema)
        de.execute(sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(s, sql.Identifier(role)))
        de.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
        de.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10')").format(s))
        de.execute(sql.SQL("ALTER TABLE {}.ev OWNER TO {}").format(s, sql.Identifier(role)))
        de.execute(sql.SQL("ALTER TABLE {}.ev ENABLE ROW LEVEL SECURITY").format(s))
        de.execute(sql.SQL("ALTER TABLE {}.ev FORCE ROW LEVEL SECURITY").format(s))
        de.execute(sql.SQL("CREATE POLICY p ON {}.ev USING (id > 0)").format(s))
        spec = TableSpec(name=f"{de_schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="zstd")
        with psycopg.connect(german.dsn_for(role), autocommit=True) as owner, pytest.raises(ArchiveError) as raised:
            archive_partition(owner, spec, DAY, store, temp_dir=str(temp_dir))
        told = _told(raised.value)
        assert "row-level security" in str(raised.value.cause), told
        assert "BYPASSRLS" in str(raised.value.remedy), told
    finally:
        de.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        de.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_restore_into_a_target_without_the_days_partition_on_a_german_server_says_so(de, de_schema, store,
                                                                                        temp_dir):
    """A user restores a day into an existing partitioned table that has no partition for the day, on a German
    server. PostgreSQL refuses (SQLSTATE 23514, "keine Partition von Relation ... für Zeile gefunden"). What
    happens: told as a generic constraint violation, since the missing partition is recognised only by the
    English words "no partition of relation". What should happen: as on an English server, the cause says the
    target has no partition for the day's rows and the remedy says to create it."""
    s = sql.Identifier(de_schema)
    de.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
    de.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10'), (2, '2024-03-10')").format(s))
    spec = TableSpec(name=f"{de_schema}.ev", day_column="at", start_date=DAY, format="csv", compression="zstd")
    archive_partition(de, spec, DAY, store, temp_dir=str(temp_dir))
    de.execute(sql.SQL("CREATE TABLE {}.target (id int, at date) PARTITION BY RANGE (at)").format(s))
    de.execute(sql.SQL("CREATE TABLE {}.target_apr PARTITION OF {}.target FOR VALUES FROM ('2024-04-01') "
                       "TO ('2024-05-01')").format(s, s))
    with pytest.raises(ArchiveError) as raised:
        restore_day(de, store, spec, DAY, into="existing", target=f"{de_schema}.target", temp_dir=str(temp_dir))
    told = _told(raised.value)
    assert "no partition for the rows" in str(raised.value.cause), told
    assert "PARTITION OF" in str(raised.value.remedy), told


def test_a_declarative_restore_whose_day_another_partition_covers_now_works_on_a_german_server(de, de_schema,
                                                                                                store, temp_dir):
    """Declarative partitioning, retention drop: the day's partition ``ev_20240310`` was archived and dropped;
    since then the partitions were laid out anew by month (``ev_202403`` covers March). The user restores the day
    into the original table. On an English server the rows go through the parent into ``ev_202403`` (README:
    another partition covering the day takes them). On a German server (SQLSTATE 42P17 "... würde sich mit
    Partition ... überlappen") the restore fails: restore._create_partition recognises the overlap only by the
    English words "would overlap" and re-raises anything else. What should happen: the same restore as on an
    English server; the rows end in ``ev_202403``."""
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(de, de_schema, [("ev_20240310", "2024-03-10", "2024-03-11")])
    s = sql.Identifier(de_schema)
    de.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-10 13:00+00')").format(s))
    spec = TableSpec(name=f"{de_schema}.ev", day_column="at", start_date="2024-01-01", format="csv",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    archive_partition(de, spec, DAY, store, temp_dir=str(temp_dir))
    remove_day(de, spec, DAY, store, temp_dir=str(temp_dir))
    de.execute(sql.SQL("CREATE TABLE {}.ev_202403 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-01 00:00+00') "
                       "TO ('2024-04-01 00:00+00')").format(s, s))
    restore_day(de, store, spec, DAY, into="original", temp_dir=str(temp_dir))
    assert de.execute(sql.SQL("SELECT count(*) FROM {}.ev_202403").format(s)).fetchone()[0] == 2


@pytest.fixture
def de_role(de, de_schema):
    """A login role (not a superuser) with USAGE on the test's schema; dropped afterwards."""
    role = f"lu_r_{de.info.backend_pid}"
    de.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    de.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(de_schema), sql.Identifier(role)))
    yield role
    de.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    de.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_restore_into_a_target_with_row_level_security_on_a_german_server_names_it(german, de, de_schema, de_role,
                                                                                    store, temp_dir):
    """A user restores a day into an existing table that has row-level security enabled, as a role its policies
    apply to (INSERT and SELECT granted), on a German server. PostgreSQL refuses the COPY (SQLSTATE 0A000,
    "COPY FROM wird nicht unterstützt mit Sicherheit auf Zeilenebene"). What happens: told as "the server
    rejected the archiver's SQL", an internal error to report, since the 0A000 is read as row-level security
    only by its English words. What should happen: as on an English server, the cause names the target's
    row-level security and the remedy a role that bypasses it (the statement that failed is the restore's COPY
    into the target, so its 0A000 can only be this)."""
    s = sql.Identifier(de_schema)
    de.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
    de.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10')").format(s))
    spec = TableSpec(name=f"{de_schema}.ev", day_column="at", start_date=DAY, format="csv", compression="zstd")
    archive_partition(de, spec, DAY, store, temp_dir=str(temp_dir))
    de.execute(sql.SQL("CREATE TABLE {}.target (id int, at date)").format(s))
    de.execute(sql.SQL("ALTER TABLE {}.target ENABLE ROW LEVEL SECURITY").format(s))
    de.execute(sql.SQL("CREATE POLICY p ON {}.target USING (true) WITH CHECK (true)").format(s))
    de.execute(sql.SQL("GRANT INSERT, SELECT ON {}.target TO {}").format(s, sql.Identifier(de_role)))
    with psycopg.connect(german.dsn_for(de_role), autocommit=True) as restorer, \
            pytest.raises(ArchiveError) as raised:
        restore_day(restorer, store, spec, DAY, into="existing", target=f"{de_schema}.target",
                    temp_dir=str(temp_dir))
    told = _told(raised.value)
    assert "row-level security" in str(raised.value.cause), told
    assert "rejected the archiver's SQL" not in told, told


def test_a_restore_by_a_role_that_does_not_own_the_table_on_a_german_server_says_ownership(
        german, de, de_schema, de_role, store, temp_dir):
    """Declarative partitioning, retention drop; the day's partition was archived and dropped. A role that may
    INSERT into the table and CREATE in its schema, but does not own it, restores the day into the original
    table on a German server. PostgreSQL refuses the CREATE TABLE ... PARTITION OF (SQLSTATE 42501, "muss
    Eigentümer der Tabelle ev sein"). What happens: the remedy is "the restoring role needs INSERT and SELECT on
    the target ... and CREATE on its schema": grants the role has, since the refusal is read as ownership only
    by the English words "must be owner". What should happen: as on an English server, the remedy says that
    re-creating the day's partition takes ownership of the table (restore as its owner, or into='new')."""
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(de, de_schema, [("ev_20240310", "2024-03-10", "2024-03-11")])
    s = sql.Identifier(de_schema)
    de.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 12:00+00')").format(s))
    spec = TableSpec(name=f"{de_schema}.ev", day_column="at", start_date="2024-01-01", format="csv",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    archive_partition(de, spec, DAY, store, temp_dir=str(temp_dir))
    remove_day(de, spec, DAY, store, temp_dir=str(temp_dir))
    role = sql.Identifier(de_role)
    de.execute(sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(s, role))
    de.execute(sql.SQL("GRANT INSERT, SELECT ON {}.ev TO {}").format(s, role))
    with psycopg.connect(german.dsn_for(de_role), autocommit=True) as restorer, \
            pytest.raises(ArchiveError) as raised:
        restore_day(restorer, store, spec, DAY, into="original", temp_dir=str(temp_dir))
    told = _told(raised.value)
    assert "owner" in str(raised.value.remedy), told


def test_a_view_whose_owner_may_not_read_its_table_on_a_german_server_names_that_table(
        german, de, de_schema, de_role, store, temp_dir):
    """A view ``v`` over ``ev`` is archived by a role granted SELECT on the view; the view's owner lost SELECT on
    ``ev`` (a view reads with its owner's privileges). On a German server PostgreSQL refuses with SQLSTATE 42501
    "keine Berechtigung für Tabelle ev". What happens: the remedy is "GRANT SELECT ON <schema>.v TO <role>", a
    grant the role has: the table the view reads is found only in the English words "permission denied for
    table ev" (errors.refused_grant). What should happen: as on an English server, the remedy names ``ev`` and
    the view's owner; failing that, it must not ask for the grant the role already has."""
    s = sql.Identifier(de_schema)
    owner = f"{de_role}_o"
    de.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(owner)))
    try:
        de.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(s, sql.Identifier(owner)))
        de.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
        de.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10')").format(s))
        de.execute(sql.SQL("CREATE VIEW {}.v AS SELECT id, at FROM {}.ev").format(s, s))
        de.execute(sql.SQL("ALTER VIEW {}.v OWNER TO {}").format(s, sql.Identifier(owner)))
        de.execute(sql.SQL("GRANT SELECT ON {}.v TO {}").format(s, sql.Identifier(de_role)))
        spec = TableSpec(name=f"{de_schema}.v", day_column="at", start_date=DAY, format="jsonl", compression="zstd")
        with psycopg.connect(german.dsn_for(de_role), autocommit=True) as archiver, \
                pytest.raises(ArchiveError) as raised:
            archive_partition(archiver, spec, DAY, store, temp_dir=str(temp_dir))
        told = _told(raised.value)
        assert f"GRANT SELECT ON {de_schema}.v TO" not in str(raised.value.remedy), told
        assert "ev" in str(raised.value.remedy).replace(f"{de_schema}.v", ""), told
    finally:
        de.execute(sql.SQL("DROP VIEW IF EXISTS {}.v").format(s))
        de.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(owner)))
        de.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(owner)))


@pytest.mark.parametrize("encoding, value", [("LATIN1", '{"a": "\\u65e5"}'), ("WIN1252", '["\\u65e5"]'),
                                             ("SQL_ASCII", '{"a": "\\u00e9"}')])
def test_a_jsonl_day_of_json_with_a_unicode_escape_restores_into_its_own_database(encoding, value, encoded_db,
                                                                                  store, temp_dir):
    """A LATIN1 (or WIN1252, or SQL_ASCII) database holds a ``json`` value with a Unicode escape of a character
    the encoding lacks, ``{"a": "\\u65e5"}`` (json keeps its text: PostgreSQL accepts it in any encoding). The
    day is archived as JSONL: green, the escape kept in the object. What happens: the day can never be restored
    into its own database (nor deep-verified there): json_populate_recordset parses the escapes into the
    server's encoding and fails ("character with byte sequence 0xe6 0x97 0xa5 in encoding UTF8 has no
    equivalent in encoding LATIN1"), and the refusal says the value "was archived from a database whose encoding
    has it" -- this very database. What should happen: a green archive restores into the database it came
    from with the value exact (CSV and Parquet do), or the archive refuses the day up front naming the column,
    the encoding and a format that works."""
    db = encoded_db(encoding)
    db.execute("CREATE TABLE ev (id int, at date, j json)")
    db.execute("INSERT INTO ev VALUES (1, '2024-03-10', %s::json), (2, '2024-03-10', '[1]')", (value,))
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="jsonl", compression="zstd")
    try:
        archive_partition(db, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:  # a refusal up front is fine if it names the column and the encoding
        assert "column j" in str(exc) or "'j'" in str(exc), exc
        assert encoding in str(exc), exc
        return
    restored = restore_day(db, store, spec, DAY, into="new", target="public.back", temp_dir=str(temp_dir))
    assert restored.rows == 2 and restored.fingerprint_checked
    assert db.execute("SELECT j::text FROM back WHERE id = 1").fetchone()[0] == value
