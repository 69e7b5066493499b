"""Hunt 11 (qf): values at the edges of their types, in databases whose encoding is not UTF-8, through
every reader of an archive (restore into new/existing, compare, verify --deep, the fingerprint)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import RestoreError, restore_day
from archive_pipeline_tests.test_namehunt import encoded_databases  # noqa: F401 (a fixture)

DAY = dt.date(2024, 3, 10)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_name_value_too_long_in_utf8_is_refused_naming_the_column_not_blamed_on_the_archive(
        fmt, encoded_databases, conn, schema, store, temp_dir):  # noqa: F811
    """A LATIN1 database's table has a ``name`` column holding 40 ``é`` (40 bytes there, a valid name); its day
    is archived (green, deep-verified) and restored into a UTF-8 database, which the README says works ("a day
    archived from a LATIN1 database proves in a UTF-8 one"). There the same value is 80 bytes, and ``name``'s
    input silently cuts it to 63 bytes (31 ``é``). What happens now, in every format: the restore loads the cut
    value, its fingerprint differs, and it is refused with FingerprintMismatchError "… The archive does not hold
    the rows it was proven to hold (altered after it was written), or the target already held other rows of the
    day", no remedy: it blames a sound archive and names neither the column nor the cause. What should happen:
    refused (a RestoreError) naming the column ``nm``, that its value is longer than 63 bytes in this database's
    encoding (a ``name`` holds at most 63), and the remedy (restore into a database whose encoding holds it,
    e.g. LATIN1, or into a table whose column is text), before anything is created.
    Fix idea: for a name column (or a domain/array over name) of an archive whose manifest's encoding differs
    from the target's, check ``octet_length(convert_to(v, <target encoding>)) > 63`` in the stage before the
    insert, as _require_column_names does for identifiers."""
    with psycopg.connect(encoded_databases["LATIN1"], autocommit=True) as latin:
        latin.execute("DROP TABLE IF EXISTS ev")
        latin.execute("CREATE TABLE ev (id int, at date, nm name)")
        latin.execute("INSERT INTO ev VALUES (1, %s, repeat('é', 40)), (2, %s, 'short')", (DAY, DAY))
        spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format=fmt)
        archive_partition(latin, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(RestoreError) as refused:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    said = f"{refused.value} {refused.value.remedy}"
    assert "'nm'" in said and "63" in said, said
    assert "altered after it was written" not in said, said
    assert conn.execute("SELECT pg_catalog.to_regclass(%s)", (f"{schema}.back",)).fetchone()[0] is None


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_tsvector_lexeme_over_its_byte_limit_in_utf8_is_not_called_a_1gb_value_to_archive_as_parquet(
        fmt, encoded_databases, conn, schema, store, temp_dir):  # noqa: F811
    """A LATIN1 database's ``tsvector`` column holds a lexeme of 1,500 ``é`` (1,500 bytes there, under tsvector's
    2,046-byte limit for a word); the day is archived in csv or parquet, green. Restored into a UTF-8 database
    (which the README says works for a LATIN1 day) the lexeme is 3,000 bytes and tsvector's input refuses it
    (54000 "word is too long"). What happens now: RestoreError "a value, row or query exceeds a PostgreSQL limit
    (e.g. a value over 1 GB as text or JSON) … to fix: a retry cannot help: archive this table as parquet (binary
    COPY, no 1 GB text value) or csv (no per-row JSON), or shorten/split the oversized values": the cause is not a
    1 GB value, the archive already is parquet/csv, and re-archiving in any format cannot help (the source may even
    be gone after retention). What should happen: the refusal names the column ``v`` and says the value does not
    fit this database's encoding (its byte length grew from LATIN1 to UTF8), with the remedy that works: restore
    into a database whose encoding is LATIN1.
    Fix idea: at restore, classify 54000 against the manifest's source encoding: when it differs from the
    target's, probe the columns (as the archive side does) and name the encoding, not the format."""
    with psycopg.connect(encoded_databases["LATIN1"], autocommit=True) as latin:
        latin.execute("DROP TABLE IF EXISTS ev")
        latin.execute("CREATE TABLE ev (id int, at date, v tsvector)")
        latin.execute("INSERT INTO ev VALUES (1, %s, repeat('é', 1500)::tsvector), (2, %s, 'a b')", (DAY, DAY))
        spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format=fmt)
        archive_partition(latin, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(RestoreError) as refused:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    said = f"{refused.value} {refused.value.remedy}"
    assert "archive this table as" not in said and "1 GB" not in said, said
    assert "'v'" in said and "LATIN1" in said, said


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_char_n_value_restored_into_sql_ascii_is_not_blamed_on_the_archive(
        fmt, encoded_databases, conn, schema, store, temp_dir):  # noqa: F811
    """A UTF-8 database's ``char(3)`` column holds ``'é'`` (stored padded to three characters: ``'é  '``); the day
    is archived, green. Restored into a SQL_ASCII database (which the README says works: its text is UTF-8
    bytes), char(3)'s input counts bytes as characters there: ``é`` is two, so it pads to ``'é '`` (one blank) and
    the restored value differs. What happens now, in every format: FingerprintMismatchError "… The archive does
    not hold the rows it was proven to hold (altered after it was written), or the target already held other
    rows of the day", no remedy — it blames a sound archive. The same restore of a ``varchar(3)`` value ``'ééé'``
    is already explained ("The database's encoding, SQL_ASCII, counts a character(n) or varchar(n) value's
    length in bytes, not characters …; to fix: restore into a database whose encoding is UTF8, or into a table
    whose column is text"); a char(n) value short enough to be padded gets no such explanation. What should
    happen: the same RestoreError naming the column ``v``, the SQL_ASCII byte counting and that remedy.
    Fix idea: when the target's encoding is SQL_ASCII and a char(n) column (or a domain/array of one) holds
    characters beyond ASCII, refuse before loading (or explain the mismatch) as for the varchar overflow."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, v char(3))").format(sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'é'), (2, %s, 'ab')").format(sql.Identifier(schema, "ev")),
                 (DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(encoded_databases["SQL_ASCII"], autocommit=True) as target:
        target.execute("DROP TABLE IF EXISTS back")
        with pytest.raises(RestoreError) as refused:
            restore_day(target, store, spec, DAY, into="new", target="public.back", temp_dir=temp_dir)
    said = f"{refused.value} {refused.value.remedy}"
    assert "altered after it was written" not in said, said
    assert "SQL_ASCII" in said and "text" in str(refused.value.remedy), said


@pytest.mark.parametrize("column", ["v char(3)[]", "v code"])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_sql_ascii_days_char_n_array_or_domain_restored_into_utf8_is_explained_as_a_plain_char_n_is(
        fmt, column, encoded_databases, conn, schema, store, temp_dir):  # noqa: F811
    """A SQL_ASCII database (its text UTF-8 bytes) has a ``char(3)[]`` column, or one of a domain ``code`` over
    ``char(3)``, holding ``é``: SQL_ASCII counted its two bytes as two characters and padded it with one blank.
    The day is archived, green, and restored into a UTF-8 database, where char(3)'s input pads to three
    characters. A plain ``char(3)`` column is explained (``_byte_padded``: "Column(s) 'v' are character(n), and
    hold characters beyond ASCII: the SQL_ASCII database the day was archived from pads such a value to n bytes
    …; to fix: restore into a SQL_ASCII database, or into a table whose column is text"). What happens now: for the
    array, ``_byte_padded`` (its type name starts with ``character(``) runs ``octet_length`` on the array and the
    restore crashes with "the server rejected the archiver's SQL (UndefinedFunction: function
    pg_catalog.octet_length(character[]) does not exist) … report it with this message"; for the domain (its type
    name is ``code``) it is not looked at, and the refusal is FingerprintMismatchError "… The archive does not hold
    the rows it was proven to hold (altered after it was written) …", no remedy. What should happen: the same explanation naming ``v``, and its remedy.
    Fix idea: in _byte_padded, find char(n) through domains and arrays (the column's base type and typmod, as
    the archive side walks types), and test the elements (``unnest``) of an array."""
    with psycopg.connect(encoded_databases["SQL_ASCII"], autocommit=True, client_encoding="utf8") as source:
        source.execute("DROP TABLE IF EXISTS ev; DROP DOMAIN IF EXISTS code; CREATE DOMAIN code AS char(3)")
        source.execute(f"CREATE TABLE ev (id int, at date, {column})")
        value = "{é}" if "[]" in column else "é"
        source.execute("INSERT INTO ev VALUES (1, %s, %s), (2, %s, NULL)", (DAY, value, DAY))
        spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format=fmt)
        archive_partition(source, spec, DAY, store, temp_dir=temp_dir)
    conn.execute("DROP DOMAIN IF EXISTS public.code CASCADE")
    conn.execute("CREATE DOMAIN public.code AS char(3)")
    try:
        with pytest.raises(RestoreError) as refused:
            restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    finally:
        conn.execute("DROP DOMAIN IF EXISTS public.code CASCADE")
    said = f"{refused.value} {refused.value.remedy}"
    assert "altered after it was written" not in said, said
    assert "'v'" in said and "SQL_ASCII" in said, said


@pytest.fixture
def win1252_database(pg):
    """A WIN1252 database (a single-byte encoding with bytes it leaves undefined, e.g. 0x81)."""
    with pg.connect() as admin:
        admin.autocommit = True
        name = f"qf_win1252_{admin.info.backend_pid}"
        admin.execute(sql.SQL("CREATE DATABASE {} ENCODING 'WIN1252' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
            sql.Identifier(name)))
        try:
            yield pg.dsn_for("postgres", database=name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_an_untranslatable_byte_in_a_win1252_database_is_not_given_a_sql_ascii_recipe_that_fails_there(
        win1252_database, store, temp_dir):
    """A WIN1252 database's text holds the byte 0x81, which WIN1252 leaves undefined (a client in WIN1252 wrote it;
    the server stores any non-zero byte of a single-byte encoding). The day cannot be sent as UTF-8, and is
    refused, rightly, naming the column (22P05). What happens now: the message's remedy is written for a SQL_ASCII
    database: "Fix the value in the source (in a SQL_ASCII database, which stores any bytes, convert it from the
    encoding it was written in, e.g. from LATIN1: convert_from(convert(convert_to(value, 'SQL_ASCII'), 'LATIN1',
    'UTF8'), 'SQL_ASCII')), then archive the day again" — in this WIN1252 database that statement runs but keeps
    the 0x81 byte (and adds an ``Â`` before it: it reads the value as LATIN1 and stores UTF-8 bytes as WIN1252),
    so the day is refused again, now with a mangled value. What should happen: the remedy fits the database (WIN1252, a byte
    it leaves undefined), and any SQL it offers works there (e.g. replace the byte: ``convert_from(pg_catalog.replace(convert_to(v, 'SQL_ASCII')…``
    or ``translate(v, E'\\x81', '')``), so that after it the day archives.
    Fix idea: in the 22P05/22021 probe's message, branch on the server encoding: SQL_ASCII gets today's recipe,
    a single-byte encoding gets "the byte 0x.. is undefined in <enc>; replace it" with a statement tested there."""
    import re

    from archive_pipeline.core.errors import UnsupportedTypeError

    with psycopg.connect(win1252_database, autocommit=True) as c:
        c.execute("CREATE TABLE ev (id int, at date, v text)")
        c.execute("SET client_encoding = 'WIN1252'")
        c.execute(b"INSERT INTO ev VALUES (1, '2024-03-10', 'x\x81y'), (2, '2024-03-10', 'fine')")
        c.execute("RESET client_encoding")
        spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="csv")
        with pytest.raises(UnsupportedTypeError) as refused:
            archive_partition(c, spec, DAY, store, temp_dir=temp_dir)
        said = f"{refused.value} {getattr(refused.value, 'remedy', '') or ''}"
        assert "'v'" in said, said
        recipe = re.search(r"(convert_from\(.*\))\), then archive", said)
        if recipe:  # whatever SQL the message offers must work in this database
            try:
                c.execute(sql.SQL("UPDATE ev SET v = {}").format(sql.SQL(recipe.group(1).replace("value", "v"))))
            except psycopg.Error as exc:
                pytest.fail(f"the remedy's SQL fails in this WIN1252 database ({exc!r}): {said}")
            try:
                assert archive_partition(c, spec, DAY, store, temp_dir=temp_dir).rows == 2
            except UnsupportedTypeError as again:
                pytest.fail(f"after the remedy's SQL the day is refused again: {again}")
