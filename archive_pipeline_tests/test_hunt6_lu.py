"""Hunt 6 (lu): database encodings, collations and locales through the whole round trip; in particular a
server whose messages are in another language (lc_messages): the error classification must go by SQLSTATE,
never by the English text of a message."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def server_speaking(language: str):
    """A throwaway server whose messages are in ``language`` (as one with lc_messages = 'de_DE.UTF-8'; only C
    locales exist on this machine, so the server's gettext is told the language by LANGUAGE, which it honours
    under C.UTF-8)."""
    before = os.environ.get("LANGUAGE")
    os.environ["LANGUAGE"] = language
    try:
        server = start_postgres()
    finally:
        if before is None:
            del os.environ["LANGUAGE"]
        else:
            os.environ["LANGUAGE"] = before
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def german():
    """A server whose messages are German."""
    with server_speaking("de") as server:
        with server.connect() as c:
            try:
                c.execute("SELECT * FROM no_such_table")
            except psycopg.errors.UndefinedTable as exc:
                assert "existiert nicht" in str(exc), exc  # the server speaks German
        yield server


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


# Left (see the closing note): with lc_messages in another language, a row-level security refusal (42501, 0A000),
# an ownership refusal and a view owner's missing SELECT are classified by SQLSTATE but their remedies fall back
# to the generic ones: PostgreSQL gives no field but the message's words to tell them apart.
