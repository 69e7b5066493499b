"""Hunt 17 (wn): naming mode (legacy one table per day) end to end: discovery by pattern, removal of day tables,
restore into the original table, and what the other commands say of day tables that changed."""

from __future__ import annotations

import datetime as dt
import unicodedata

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.discovery import existing_days, naming_days
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import compare_days
from archive_pipeline_tests.test_namehunt import encoded_databases  # noqa: F401 (a fixture)

D1, D2 = dt.date(2024, 3, 9), dt.date(2024, 3, 10)


def _spec(schema: str, pattern: str = "events_%Y%m%d", **extra):
    table = {"name": f"{schema}.events", "start_date": "2024-03-01", "format": "csv", "compression": "none",
             "partitioning": {"mode": "naming", "pattern": pattern}, **extra}
    return parse_config({"tables": [table]}).tables[0]


def _day_table(conn, schema: str, name: str, rows: list[tuple[int, str]]) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(sql.Identifier(schema, name)))
    for row in rows:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(schema, name)), row)


def test_a_day_table_that_is_a_materialized_view_is_archived_by_hand_but_never_found_by_discovery(
        conn, schema, store, temp_dir):
    """A legacy table whose older day tables were consolidated into one history table and replaced by
    materialized views of the same names (events_20240310 AS SELECT ... FROM history): the day's relation holds
    rows, and ``archive --day 2024-03-10`` archives them (source_table describes views and materialized views).
    But discovery (``naming_days``: relkind IN ('r', 'p', 'f')) leaves such a day out, so the sensor, the schedule,
    a ranged ``archive --from/--to`` and ``list`` call it a day without data and never archive it, while the README
    says a naming-mode day "is a day with data once it holds a row". One path archives it, the others quietly skip
    it.

    Should: be consistent: discovery finds a day whose pattern-named relation (view or materialized view) holds
    rows, or the day is refused everywhere with a typed error naming the relation, its kind and the remedy
    (configure the table the view reads). Fix idea: list relkind 'v' and 'm' in naming_days / _refuse_other_case
    as source_table accepts them (removal already refuses views by name)."""
    _day_table(conn, schema, "events_20240309", [(1, "2024-03-09 10:00Z")])
    _day_table(conn, schema, "history", [(2, "2024-03-10 10:00Z")])
    conn.execute(sql.SQL("CREATE MATERIALIZED VIEW {} AS SELECT * FROM {}").format(
        sql.Identifier(schema, "events_20240310"), sql.Identifier(schema, "history")))
    spec = _spec(schema)
    found = existing_days(conn, spec, [D1, D2])
    if spec.period(D2) not in found:  # not discovered: then it must not be archivable by hand either
        with pytest.raises(ArchiveError, match="events_20240310"):
            archive_partition(conn, spec, D2, store, temp_dir=temp_dir)
    else:
        assert spec.period(D2) in naming_days(conn, spec)


def test_a_naming_pattern_in_another_unicode_normal_form_than_the_catalogs_tables_is_named_not_a_quiet_no_data(
        conn, schema, store, temp_dir):
    """The day tables are named ``événements_YYYYMMDD`` in NFC (as psql typed them); the YAML's pattern was written
    on a system that stores decomposed accents (NFD: 'e' + U+0301). The two print the same, but PostgreSQL compares
    names byte for byte: ``naming_days`` finds nothing and returns [] (``_refuse_other_case`` only folds case), so
    the sensor finds "0 of them with data" for ever; an explicit ``archive --day`` says the day has no table,
    naming the NFD spelling only, and its remedy ("check the name ... whether the table was renamed or dropped")
    never mentions the table that is there. The configured table's own name gets this hint ("differs only in
    case or Unicode normal form"); the pattern does not.

    Should: as for a pattern the catalog spells in another case, refuse with a SourceError naming the catalog's
    spelling (the NFC table) and the pattern to set (or find the table: names read in one normal form). Fix idea: in _refuse_other_case, compare NFC-normalized
    (and case-folded) names, and suggest the pattern spelled as the catalog does."""
    nfc, nfd = (unicodedata.normalize(form, "événements_") for form in ("NFC", "NFD"))
    _day_table(conn, schema, nfc + "20240310", [(1, "2024-03-10 10:00Z")])
    spec = _spec(schema, nfd + "%Y%m%d")
    try:
        found = naming_days(conn, spec)
    except ArchiveError as exc:  # refused, naming the table the catalog has
        assert nfc + "20240310" in str(exc)
    else:  # or the pattern read in the catalog's normal form: the day is found
        assert found == [spec.period(D2)]


def test_whether_a_naming_day_has_data_does_not_depend_on_the_first_day_tables_column_type(conn, schema, store,
                                                                                            temp_dir):
    """A legacy table in America/New_York whose day tables were created by a script that changed over time: the
    older ones have ``at timestamp`` (wall-clock), the newer ones ``at timestamptz``. ``existing_days`` (the
    sensor's and the ranged run's discovery) builds the day filter of EVERY day table from the first period's table
    (``_day_table_shape``: "day tables share their columns"), so the timestamptz table of 2024-03-10 is probed
    with wall-clock ``timestamp`` bounds, cast to instants in the session's zone (UTC here): its row at 21:00 New
    York time (01:00 UTC the next day) falls outside, and the day is called "no data" when asked about together
    with 2024-03-09 (as the sensor asks about every day since start_date), but "with data" when asked about alone;
    ``archive_partition`` archives its 1 row. The sensor never requests the day, and ``compare`` over both days
    calls it "not-in-source ... no removal of it was recorded (dropped or deleted by hand?): its archive is its
    only copy; restore --into original puts it back" while its row is right there.

    Should: a day with data is so whichever other days are asked about: each day table probed with its own day
    column's type (describe each, or cast the bounds per table). Fix idea: group the periods by their table's
    column shape (one catalog query for all day tables' day column types) and build each filter from its own."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamp)").format(sql.Identifier(schema, "events_20240309")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-09 12:00')").format(
        sql.Identifier(schema, "events_20240309")))
    _day_table(conn, schema, "events_20240310", [(2, "2024-03-10 21:00-04")])
    spec = _spec(schema, day_column="at", timezone="America/New_York")
    conn.execute("SET TimeZone = 'UTC'")
    assert existing_days(conn, spec, [D2]) == [spec.period(D2)]
    assert archive_partition(conn, spec, D2, store, temp_dir=temp_dir).rows == 1
    archive_partition(conn, spec, D1, store, temp_dir=temp_dir)
    assert existing_days(conn, spec, [D1, D2]) == [spec.period(D1), spec.period(D2)]
    assert [c.result for c in compare_days(conn, spec, store, [D1, D2])] == ["equal", "equal"]


def test_a_naming_pattern_of_a_latin1_database_is_not_refused_for_its_utf8_length(encoded_databases, store,  # noqa: F811
                                                                                   temp_dir):
    """A legacy LATIN1 database names its day tables ``éééé…é_20240310`` (30 ``é`` + ``_YYYYMMDD``: 39 characters,
    39 bytes there, a name PostgreSQL holds whole). The configuration ``pattern: éé…é_%Y%m%d`` is refused at load:
    ``too_long`` counts the names' bytes in UTF-8 (69) and says "makes names longer than PostgreSQL's 63 bytes ...
    PostgreSQL would cut them", which it would not in this database. The README says names are counted in the
    database's encoding and "the configuration refuses more than 63 characters at load (too long in any
    encoding)", and a configured table name of the same 30 ``é`` loads; the day tables of such a database cannot be
    archived at all.

    Should: the pattern loads (at load, refuse only names of more than 63 characters, as for table names; a name
    too long in the database's own encoding is found when discovery or the archive looks for it), and the day is
    discovered and archived from the LATIN1 database. Fix idea: too_long counts characters, as _identifier does;
    naming_days/source_table check the bytes in the database's encoding (stored_name_problem)."""
    stem = "é" * 30 + "_"
    spec = _spec("public", stem + "%Y%m%d")  # (refused here now: 69 bytes in UTF-8)
    with psycopg.connect(encoded_databases["LATIN1"], autocommit=True) as latin:
        latin.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(
            sql.Identifier("public", stem + "20240310")))
        latin.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 10:00Z')").format(
            sql.Identifier("public", stem + "20240310")))
        assert naming_days(latin, spec) == [spec.period(D2)]
        assert archive_partition(latin, spec, D2, store, temp_dir=temp_dir).rows == 1


def test_a_naming_pattern_that_names_the_day_tables_schema_is_refused_not_a_quiet_no_data(conn, schema):
    """The legacy day tables live in a schema of their own, ``<s>_days.events_YYYYMMDD``, and the YAML says
    ``name: <s>.events`` with ``pattern: <s>_days.events_%Y%m%d`` (the schema written into the pattern, as a user
    who reads "pattern: the day table's name" would). The pattern loads; discovery looks in the configured table's
    schema for names starting with ``<s>_days.events_`` and finds none: ``naming_days`` returns [] with no word,
    so the sensor reports "0 of them with data" for every day for ever. (An explicit ``archive --day`` says "no
    table ... table '<s>.<s>_days.events_20240310' does not exist", remedy "check the table's name in the YAML",
    never that a pattern is only a table name, nor that the day table it means is there.)

    Should: as for a pattern spelled in another case, refuse with a SourceError/ConfigError naming the pattern
    and saying that day tables are looked for in the table's own schema ('<s>'), the pattern being only the
    table's name; e.g. "configure the table as <s>_days.events with pattern events_%Y%m%d". Fix idea: where
    naming_days finds nothing and the pattern holds a '.', look the part before it up as a schema holding
    tables that the rest matches (or refuse a '.' in a pattern whose prefix before it is a schema's name)."""
    days = f"{schema}_days"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(days)))
    _day_table(conn, days, "events_20240310", [(1, "2024-03-10 10:00Z")])
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(sql.Identifier(schema, "events")))
    try:
        spec = _spec(schema, f"{days}.events_%Y%m%d")
        found = naming_days(conn, spec)
    except (ArchiveError, ValueError) as exc:
        assert days in str(exc) and "schema" in str(exc)
    else:
        pytest.fail(f"the day tables of {days} are quietly not found: {found}")


def test_a_naming_pattern_differing_in_the_case_of_a_non_ascii_letter_is_named_not_a_quiet_no_data(conn, schema):
    """``CREATE TABLE <s>.Événements_20240310 (...)``, unquoted: PostgreSQL folds only ASCII letters of an unquoted
    name in a UTF-8 database, so the catalog spells it ``Événements_20240310`` (the ``É`` kept). The YAML, written
    as a user expects SQL to fold names, says ``pattern: événements_%Y%m%d``. Nothing matches; the refusal made
    for exactly this (``_refuse_other_case``: "names no table ... whose day tables the catalog spells otherwise in
    case") compares ``lower(c.relname::text)``, which keeps relname's "C" collation and lowers ASCII only, so it
    never sees ``Événements_…``: ``naming_days`` returns [] without a word and the sensor finds no day for ever.
    The same with an ASCII letter (``Clicks_20240310`` against ``clicks_%Y%m%d``) is refused, naming the table.

    Should: refused the same way, naming ``Événements_20240310`` and the pattern to set. Fix idea: fold in Python
    (the names starting with the prefix case-insensitively: ``lower(relname COLLATE "default")`` / ILIKE under a
    Unicode collation, or compare ``str.casefold`` of each name of the schema)."""
    conn.execute(sql.SQL("CREATE TABLE {}.Événements_20240310 (id int, at timestamptz)").format(
        sql.Identifier(schema)))
    assert conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'{schema}."Événements_20240310"',)).fetchone()[0]
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 10:00Z')").format(
        sql.Identifier(schema, "Événements_20240310")))
    with pytest.raises(ArchiveError) as refused:
        naming_days(conn, _spec(schema, "événements_%Y%m%d"))
    assert "Événements_20240310" in str(refused.value)
