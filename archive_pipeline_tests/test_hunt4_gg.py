"""Hunt 4 (gg): databases in other encodings (SQL_ASCII, LATIN1, EUC_JP) as sources, restore targets and
scratch databases. Each test is what a user would do; it fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import ArchiveCorruptError, restore_day
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


@pytest.fixture
def encoded_db(pg, conn):
    """A factory of fresh databases in a given encoding (autocommit connections, UTF8 client); dropped afterwards."""
    made: list[tuple[str, psycopg.Connection]] = []

    def make(encoding: str) -> psycopg.Connection:
        name = f"hunt4_gg_{encoding.lower()}_{conn.info.backend_pid}_{len(made)}"
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
            sql.Identifier(name), sql.Literal(encoding)))
        db = psycopg.connect(pg.dsn_for("postgres", database=name), autocommit=True, client_encoding="UTF8")
        made.append((name, db))
        return db

    yield make
    for name, db in made:
        db.close()
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _utf8_day(conn, schema: str, column_type: str, value: str, store, temp_dir) -> TableSpec:
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (at date, v {})").format(table, sql.SQL(column_type)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s), (%s, 'plain')").format(table), (DAY, value, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 2
    return spec


def test_deep_verification_in_a_latin1_scratch_database_does_not_call_an_intact_archive_corrupt(
        encoded_db, conn, schema, store, temp_dir):
    """A user proves a day of a UTF-8 database (a value '日') with ``deep_verify(..., scratch_conn=...)`` pointing at
    a writable LATIN1 database (README: the scratch database only needs the same column types; "the fingerprint is
    the same on any server, whatever its encoding"). LATIN1 has no '日', so the rows cannot load there. What
    happens: ``ArchiveCorruptError`` ("the archive ... does not load ... check ... the object against its manifest
    (MD5)"): the intact archive is reported corrupt, and so is every retention removal proven that way, which invites
    deleting or overwriting a good archive. What should happen: an error (or problem) that names the scratch
    database's encoding, LATIN1, lacking the character as the cause (as restore does for the same failure), not a
    corrupt archive. Cause: verify._load calls restore.load_into, whose DataError handler (restore.py ~l.278) turns every
    UntranslatableCharacter into ArchiveCorruptError; only restore's own path (_load/_drift_explained) tells it apart."""
    spec = _utf8_day(conn, schema, "text", "日", store, temp_dir)
    latin1 = encoded_db("LATIN1")
    try:
        problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir, scratch_conn=latin1)
    except ArchiveError as exc:
        assert not isinstance(exc, ArchiveCorruptError), exc
        assert "LATIN1" in str(exc) and "MD5" not in str(exc), exc
    else:
        assert problems and any("LATIN1" in p for p in problems), problems


def test_a_restore_into_a_sql_ascii_database_names_its_byte_counted_lengths_not_an_enum(
        encoded_db, conn, schema, store, temp_dir):
    """A user restores a day of a UTF-8 database whose ``varchar(5)`` holds '日本語テキ' (5 characters) into a
    SQL_ASCII database (a legacy server). SQL_ASCII counts a varchar's length in bytes (15 here), so the value
    does not fit, and the restore is refused: right. What happens: the message blames the target's type ("an enum
    lacking one of the archived labels, a type changed since the day was archived") and the remedy says to ALTER
    TYPE ... ADD VALUE. What should happen: the refusal names the column and the cause, the database's encoding
    SQL_ASCII (which counts lengths in bytes), with a remedy that works (restore into a UTF8 database, or a wider
    column). Cause: restore._load's DataError branch gives every refused value without a recorded type drift the
    enum/changed-type explanation; only UntranslatableCharacter is told apart (StringDataRightTruncation is not)."""
    spec = _utf8_day(conn, schema, "varchar(5)", "日本語テキ", store, temp_dir)
    legacy = encoded_db("SQL_ASCII")
    with pytest.raises(ArchiveError) as refused:
        restore_day(legacy, store, spec, DAY, into="new", target="public.back", temp_dir=temp_dir)
    message, remedy = str(refused.value), str(getattr(refused.value, "remedy", ""))
    assert "SQL_ASCII" in message and "enum" not in message and "ALTER TYPE" not in remedy, (message, remedy)


def test_a_restore_from_a_sql_ascii_database_does_not_blame_the_archive_for_char_padding(
        encoded_db, conn, schema, store, temp_dir):
    """A user archives a day of a SQL_ASCII database whose ``char(12)`` holds 'é日' (valid UTF-8; README: SQL_ASCII
    works, and v4 there is the UTF-8 hash) and restores it into a UTF-8 database. SQL_ASCII padded the value to 12
    *bytes* ('é日' + 7 blanks), UTF-8 pads it to 12 characters (+ 10 blanks), so the restored value differs. What
    happens: the restore is rolled back with "The archive does not hold the rows it was proven to hold (altered
    after it was written)": an intact archive is called tampered with, and nothing names the column or the cause.
    What should happen: the day is refused (or restored) naming the column 'v' and the cause (char(n) lengths
    counted in bytes in the SQL_ASCII source), not an altered archive. Cause: restore's fingerprint check
    (restore._check, FingerprintMismatchError) has only the altered-archive explanation when no column
    is recorded as inexact; the archive does not flag char(n) of a SQL_ASCII source."""
    legacy = encoded_db("SQL_ASCII")
    legacy.execute("CREATE TABLE ev (at date, v char(12))")
    legacy.execute("INSERT INTO ev VALUES (%s, %s), (%s, 'plain')", (DAY, "é日", DAY))
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="csv")
    archive_partition(legacy, spec, DAY, store, temp_dir=temp_dir)
    try:
        restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    except ArchiveError as exc:
        message = str(exc)
        assert "altered after it was written" not in message and "'v'" in message, message
    else:
        assert restored.fingerprint_checked


def test_a_utf8_archive_restored_into_an_euc_jp_database_is_not_called_altered(
        encoded_db, conn, schema, store, temp_dir):
    """A user restores a day of a UTF-8 database holding '日本' into an EUC_JP database, which has both characters
    (README: only a value with a character the target's encoding lacks rolls the day back). What happens: rolled
    back with "The archive does not hold the rows it was proven to hold (altered after it was written)". What
    should happen: the day restores and proves, or is refused saying the cause: in an EUC_JP database the
    fingerprint hashes EUC_JP bytes, so a UTF-8 archive cannot be proven there (restore into a UTF8 database).
    Cause: fingerprint.row_hash hashes a _MULTIBYTE database's own bytes; restore compares with the manifest's
    UTF-8 hash and explains any mismatch as alteration (restore._check)."""
    spec = _utf8_day(conn, schema, "text", "日本", store, temp_dir)
    euc = encoded_db("EUC_JP")
    try:
        restored = restore_day(euc, store, spec, DAY, into="new", target="public.back", temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "EUC_JP" in str(exc) and "altered after it was written" not in str(exc), exc
    else:
        assert restored.fingerprint_checked and restored.rows == 2


def test_an_euc_jp_archive_restored_into_a_utf8_database_names_the_encoding(encoded_db, conn, schema, store,
                                                                              temp_dir):
    """A user archives a day of an EUC_JP database ('日本語') and restores it into a UTF-8 database (the README's
    usual remedy for encoding trouble). README (Versions) says such an archive proves only in an EUC_JP database.
    What happens: the restore is rolled back saying the archive was "altered after it was written" (in JSONL it
    blames an inexact json column instead). What should happen: the refusal says the cause: the day was archived
    from an EUC_JP database and proves only in a database of that encoding. Cause: the manifest does not record the
    source's encoding (manifest.py), so restore's FingerprintMismatchError can only guess alteration."""
    euc = encoded_db("EUC_JP")
    euc.execute("CREATE TABLE ev (at date, v text)")
    euc.execute("INSERT INTO ev VALUES (%s, %s), (%s, 'plain')", (DAY, "日本語", DAY))
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="csv")
    archive_partition(euc, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert "EUC_JP" in str(refused.value) and "altered after it was written" not in str(refused.value), refused.value


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_sql_ascii_column_name_that_is_not_utf8_is_named_as_the_cause(fmt, encoded_db, store, temp_dir):
    """A legacy SQL_ASCII database whose table was created by a LATIN1 client: a column ``café`` is stored as the
    bytes ``caf\\xe9`` (not UTF-8); every value of the day is plain ASCII. A user archives the table. What happens:
    ``SourceError`` "a value in the day cannot be read or converted (data exception) (CharacterNotInRepertoire ...
    0xe9)", with the remedy "fix the offending rows, or archive the table in a format that keeps the value as text
    (jsonl/csv)": no value is at fault, the column is not named, and the suggested formats fail the same way. What
    should happen (README: a value that is not UTF-8 is refused naming its column and a remedy that works; names are
    read as UTF-8): a typed error saying a *name* of the table (its column) is not valid UTF-8 and must be renamed
    (ALTER TABLE ... RENAME COLUMN), with no format switch offered. Cause: the catalog read (source.describe_relation's
    column query, source.py ~l.435) fails with 22021 before any value is read, and errors.wrap classifies it as
    _DATA (errors.py); formats.common.explain_value_failure's UTF-8 remedy is only reached for values."""
    legacy = encoded_db("SQL_ASCII")
    with psycopg.connect(legacy.info.dsn, password=legacy.info.password, autocommit=True,
                         client_encoding="SQL_ASCII") as raw:  # as the LATIN1 client that made the table
        raw.execute(b"CREATE TABLE ev (at date, \"caf\xe9\" text)")
        raw.execute(b"INSERT INTO ev VALUES ('2024-03-10', 'plain ascii')")
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format=fmt)
    with pytest.raises(ArchiveError) as refused:
        archive_partition(legacy, spec, DAY, store, temp_dir=temp_dir)
    message, remedy = str(refused.value), str(getattr(refused.value, "remedy", ""))
    assert "a value in the day" not in message and "jsonl/csv" not in remedy, (message, remedy)
    assert "name" in message and "UTF-8" in message, message


def test_compare_and_deep_verification_work_on_a_plain_connection_to_a_sql_ascii_database(encoded_db, pg, store,
                                                                                            temp_dir):
    """A user of the Python API opens ``psycopg.connect(dsn)`` to a legacy SQL_ASCII database (whose sessions start
    in client_encoding SQL_ASCII unless told otherwise) and archives, compares and deep-verifies a day of plain ASCII
    rows. ``archive_partition`` works on that connection; what happens next: ``compare_days`` says "unreadable"
    ('invalid value for parameter "TimeZone": "b'Etc/UTC'"', called "a value in the day cannot be read" with the
    remedy to switch to jsonl/csv) and ``deep_verify`` raises SourceError ('invalid value for parameter
    "statement_timeout": "b'0'"'). The README says this failure (a session in SQL_ASCII gets text back as bytes, and a
    setting read and set back became "b'...'") was fixed. What should happen: compare says "equal" and deep
    verification proves the day, as archiving on the same connection does. Cause: settings read with
    pg_catalog.current_setting come back as bytes on a SQL_ASCII session and are set back as str(bytes):
    discovery.pinned_settings's ``before`` (TimeZone, via plan.compare_days/day_statuses) and verify._limits_of
    (statement_timeout, handed to the second session); archiving switches the session to UTF8 first
    (source.SNAPSHOT_SETTINGS' client_encoding), these paths do not."""
    legacy = encoded_db("SQL_ASCII")
    legacy.execute("CREATE TABLE ev (at date, v text)")
    legacy.execute("INSERT INTO ev VALUES ('2024-03-10', 'plain'), ('2024-03-10', 'ascii')")
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="csv")
    with psycopg.connect(pg.dsn_for("postgres", database=legacy.info.dbname), autocommit=True) as plain:
        assert plain.info.parameter_status("client_encoding") == "SQL_ASCII"
        assert archive_partition(plain, spec, DAY, store, temp_dir=temp_dir).rows == 2
        compared = compare_days(plain, spec, store, [DAY])
        assert [c.result for c in compared] == ["equal"], compared
        assert deep_verify(plain, store, spec, DAY, temp_dir=temp_dir) == []


def test_restore_and_removal_work_on_a_plain_connection_to_a_sql_ascii_database(encoded_db, pg, store, temp_dir):
    """Same setting as above (``psycopg.connect(dsn)`` to a SQL_ASCII database, so the session is in client_encoding
    SQL_ASCII and psycopg returns text as bytes), the day archived on it. What happens: ``restore_day`` is refused
    with 'invalid value for parameter "client_encoding": "b'SQL_ASCII'"', explained as "a type of public.back ...
    refuses it (an enum lacking one of the archived labels ...)"; ``remove_day`` (retention's delete) fails with a
    bare ``TypeError: normalize() argument 2 must be str, not bytes`` (not even an ArchiveError naming table and
    day), and ``deep_verify(..., scratch_conn=<that connection>)`` with ``TypeError: SQL identifier parts must be
    strings, got b'pg_temp_5'``. What should happen: the restore and the removal work, as archiving does on the same
    connection. Cause: the restore's load reads the session's settings (client_encoding among them, see
    restore._INPUT_SETTINGS) and sets them back as str(bytes); the removal's name lookup (source.py ~l.295,
    unicodedata.normalize on a catalog name) and verify's temp-schema name take catalog text as str; none of these
    paths switch the session to UTF8 first, as archiving does."""
    legacy = encoded_db("SQL_ASCII")
    legacy.execute("CREATE TABLE ev (at date, v text)")
    legacy.execute("INSERT INTO ev VALUES ('2024-03-10', 'plain'), ('2024-03-10', 'ascii')")
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="csv",
                     retention={"keep_days": 1, "action": "delete"})
    with psycopg.connect(pg.dsn_for("postgres", database=legacy.info.dbname), autocommit=True) as plain:
        assert plain.info.parameter_status("client_encoding") == "SQL_ASCII"
        assert archive_partition(plain, spec, DAY, store, temp_dir=temp_dir).rows == 2
        restored = restore_day(plain, store, spec, DAY, into="new", target="public.back", temp_dir=temp_dir)
        assert restored.fingerprint_checked and restored.rows == 2
        assert remove_day(plain, spec, DAY, store, temp_dir=temp_dir).rows == 2
