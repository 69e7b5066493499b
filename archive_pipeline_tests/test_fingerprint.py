"""The content fingerprint: equal exactly for equal multisets of rows, on real PostgreSQL."""

from __future__ import annotations

import pytest
from psycopg import sql

from archive_pipeline.core import fingerprint
from archive_pipeline.core.source import describe_table

_algorithm = [fingerprint.ALGORITHM]


@pytest.fixture(autouse=True, params=fingerprint.ALGORITHMS)
def algorithm(request) -> str:
    """Every property holds for each algorithm this version computes: v3 for new archives, v2 to
    prove and compare the archives written before it."""
    _algorithm[0] = request.param
    yield request.param
    _algorithm[0] = fingerprint.ALGORITHM


def compute(*args, **kwargs) -> fingerprint.Fingerprint:
    return fingerprint.compute(*args, algorithm=_algorithm[0], **kwargs)


def row_hashes(*args, **kwargs):
    return fingerprint.row_hashes(*args, algorithm=_algorithm[0], **kwargs)


def row_hash(columns):
    return fingerprint.row_hash(columns, algorithm=_algorithm[0])


# (type, value, a value that compares equal or hashes alike in PostgreSQL but prints differently)
NEAR_TWINS = [
    ("numeric", "1.0", "1.00"),
    ("float8", "0", "-0"),
    ("interval", "1 day", "24 hours"),
    ("int4[]", "[0:2]={1,2,3}", "{1,2,3}"),
    ("jsonb", '{"a": 1.0}', '{"a": 1.00}'),
    ("json", '{"a":1}', '{"a": 1}'),
    ("text", "a", "A"),
    ("timestamptz", "2024-03-10 00:00:00+00", "2024-03-10 00:00:00.000001+00"),
    ("bytea", "\\x00", "\\x0000"),
    ("date", "infinity", "-infinity"),
    ("bool", "true", "false"),
    ("char(3)", "a", "b"),
    ("time", "24:00:00", "00:00:00"),
    ("inet", "10.0.0.1/32", "10.0.0.1/8"),
    ("xml", '<?xml version="1.0"?><a/>', "<a/>"),  # the output drops the declaration, the stored text keeps it
]


def make(conn, schema: str, name: str, typ: str, values: list[str | None]):
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (v {})").format(table, sql.SQL(typ)))
    for value in values:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(table), (value,))
    return table, describe_table(conn, f"{schema}.{name}", None).columns


@pytest.mark.parametrize(("typ", "one", "twin"), NEAR_TWINS, ids=[t[0] for t in NEAR_TWINS])
def test_values_that_print_differently_fingerprint_differently(conn, schema, typ, one, twin):
    a, cols = make(conn, schema, "a", typ, [one, None])
    b, _ = make(conn, schema, "b", typ, [twin, None])
    c, _ = make(conn, schema, "c", typ, [None, one])  # same multiset as a, other order
    fa, fb, fc = (compute(conn, t, cols) for t in (a, b, c))
    assert fa.rows == fb.rows == 2
    assert fa != fb
    assert fa == fc


def test_trailing_blanks_of_an_unbounded_bpchar_count(conn, schema, algorithm):
    """'ab' and 'ab   ' are different values of an unbounded bpchar (they print and measure
    differently); ``::text`` strips the blanks, so v3 hashes the output. v2 hashed ``::text``:
    archives it proves cannot tell them apart (documented)."""
    a, cols = make(conn, schema, "a", "bpchar", ["ab", "x"])
    b, _ = make(conn, schema, "b", "bpchar", ["ab   ", "x"])
    assert (compute(conn, a, cols) != compute(conn, b, cols)) is (algorithm != fingerprint.V2)


def test_insert_plus_delete_keeps_count_but_changes_fingerprint(conn, schema):
    table, cols = make(conn, schema, "t", "int8", ["1", "2", "3"])
    before = compute(conn, table, cols)
    conn.execute(sql.SQL("DELETE FROM {} WHERE v = 2").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (4)").format(table))
    after = compute(conn, table, cols)
    assert before.rows == after.rows == 3
    assert before != after


def test_duplicates_count_and_columns_do_not_swap(conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {} (a int4, b int4)").format(sql.Identifier(schema, "w")))
    table = sql.Identifier(schema, "w")
    cols = describe_table(conn, f"{schema}.w", None).columns
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 2), (1, 2)").format(table))
    twice = compute(conn, table, cols)
    conn.execute(sql.SQL("DELETE FROM {}").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 2)").format(table))
    once = compute(conn, table, cols)
    conn.execute(sql.SQL("UPDATE {} SET a = 2, b = 1").format(table))
    swapped = compute(conn, table, cols)
    assert len({str(twice), str(once), str(swapped)}) == 3
    assert fingerprint.Fingerprint.parse(str(once)) == once
    assert once.algorithm == _algorithm[0] and fingerprint.recorded_algorithm(str(once)) == _algorithm[0]


def test_independent_of_session_settings(conn, schema):
    table, cols = make(conn, schema, "s", "timestamptz[]", ["{2024-03-10 12:00:00+00}"])
    first = compute(conn, table, cols)
    conn.execute("SET TimeZone = 'America/New_York'")
    conn.execute("SET DateStyle = 'German'")
    assert compute(conn, table, cols) == first


def test_wide_table_and_row_diff(conn, schema, pg):
    cols_sql = sql.SQL(", ").join(sql.SQL("{} int4").format(sql.Identifier(f"c{i}")) for i in range(1200))
    table = sql.Identifier(schema, "wide")
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, cols_sql))
    conn.execute(sql.SQL("INSERT INTO {} (c0) SELECT g FROM generate_series(1, 50) g").format(table))
    cols = describe_table(conn, f"{schema}.wide", None).columns
    assert compute(conn, table, cols).rows == 50
    other = sql.Identifier(schema, "wide2")
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(other, table))
    assert compute(conn, other, cols) == compute(conn, table, cols)
    with pg.connect() as second:
        assert fingerprint.first_difference(row_hashes(conn, table, cols),
                                            row_hashes(second, other, cols)) is None
        conn.execute(sql.SQL("UPDATE {} SET c7 = 1 WHERE c0 = 17").format(other))
        found = fingerprint.first_difference(row_hashes(conn, table, cols),
                                             row_hashes(second, other, cols))
    changed = {side: conn.execute(sql.SQL("SELECT {} FROM {} WHERE c0 = 17").format(
        row_hash(cols), t)).fetchone()[0] for side, t in (("left", table), ("right", other))}
    assert found in changed.items()


# Changes that a type's own hash function cannot see (found in review): hashint8extended folds the
# high half into the low one, hash_numeric_extended ignores the sign, NaN and ±Infinity share a scale.
FOLDED = [
    ("int8", "1", "4294967296"),
    ("int8", "0", "-4294967296"),  # hashint8extended folds a negative's high half inverted
    ("int8", "-2", "-4294967297"),
    ("int8", "-9223372036854775808", "9223372036854775807"),
    ("int8", "4294967297", "0"),  # folds to 0 with a high half of 1: the seed's NULL bit must stay apart
    ("int8", "5", "5"),  # control: equal values must fingerprint alike (checked below)
    ("timestamptz", "2024-03-10 00:00:00+00", "2024-03-10 01:11:34.967297+00"),
    ("numeric", "10.00", "-10.00"),
    ("numeric", "NaN", "Infinity"),
    ("numeric", "Infinity", "-Infinity"),
    ("time", "00:00:00", "01:11:34.967297"),
]


@pytest.mark.parametrize(("typ", "one", "other"), FOLDED, ids=[f"{t}:{a}/{b}" for t, a, b in FOLDED])
def test_changes_that_type_hashes_fold_away_are_seen(conn, schema, typ, one, other):
    a, cols = make(conn, schema, "a", typ, [one])
    b, _ = make(conn, schema, "b", typ, [other])
    assert (compute(conn, a, cols) == compute(conn, b, cols)) is (one == other)


def test_a_value_swapped_between_rows_changes_it(conn, schema):
    table = sql.Identifier(schema, "s2")
    conn.execute(sql.SQL("CREATE TABLE {} (a int8, b int8)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, g * 7 FROM generate_series(1, 200) g").format(table))
    cols = describe_table(conn, f"{schema}.s2", None).columns
    before = compute(conn, table, cols)
    # 200 swaps of column b between row pairs: every row changes, the columns' multisets do not
    conn.execute(sql.SQL("UPDATE {t} SET b = CASE WHEN a % 2 = 1 THEN (a + 1) * 7 ELSE (a - 1) * 7 END").format(
        t=table))
    assert compute(conn, table, cols) != before


def test_the_algorithms_differ_and_a_recorded_one_is_computed_again(conn, schema, algorithm):
    """A manifest records its algorithm: what compares with it computes that one; an unknown or
    missing one is not computable (the archive is then archived again rather than compared)."""
    table, cols = make(conn, schema, "r", "text", ["a", "", None])
    v2, v3 = (fingerprint.compute(conn, table, cols, algorithm=a) for a in (fingerprint.V2, fingerprint.ALGORITHM))
    assert v2.rows == v3.rows == 3 and v2.hash_sum != v3.hash_sum
    assert fingerprint.algorithm_for(str(v2)) == fingerprint.V2
    assert fingerprint.algorithm_for(str(v3)) == fingerprint.ALGORITHM
    for unknown in (None, "", "row-hash-sum-v1:3:12", "row-hash-sum-v9:3:12", "garbage"):
        assert fingerprint.recorded_algorithm(unknown) is None
        assert fingerprint.algorithm_for(unknown) == fingerprint.ALGORITHM


@pytest.mark.parametrize(("typ", "values"), [
    ("int8", ["0", "4294967297", "-4294967296", "1", "2", "-1"]),
    ("int2", ["0", "1", "-1", "-32768", "32767"]),
    ("bool", ["false", "true"]),
    ("uuid", ["00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000001"]),
])
def test_null_and_every_value_of_a_type_hashed_by_value_differ_in_every_position(conn, schema, typ, values):
    """v6 hashes integers, booleans and uuids by value, a NULL as the zero value with the seed's lowest bit
    flipped: a NULL differs from every value, zero above all, in the first, a middle and the last column."""
    table = sql.Identifier(schema, "tv")
    conn.execute(sql.SQL("CREATE TABLE {} (a {t}, b {t}, c {t})").format(table, t=sql.SQL(typ)))
    cols = describe_table(conn, f"{schema}.tv", None).columns
    seen = {}
    for position in range(3):
        for value in [None, *values]:
            row = [values[0]] * 3
            row[position] = value
            conn.execute(sql.SQL("DELETE FROM {}").format(table))
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(table), row)
            seen.setdefault(str(compute(conn, table, cols)), set()).add(tuple(row))
    assert all(len(rows) == 1 for rows in seen.values()), [rows for rows in seen.values() if len(rows) > 1]


def test_integers_of_every_width_and_their_domains_hash_alike(conn, schema, algorithm):
    """An integer's text is the same at every width (and through a domain): so is its hash, in v6 as in v5, so
    a column widened from integer to bigint since the day was archived is not taken for changed rows."""
    conn.execute(sql.SQL("CREATE DOMAIN {} AS int4 CHECK (VALUE > -100)").format(sql.Identifier(schema, "small")))
    fingerprints = set()
    for number, typ in enumerate(("int2", "int4", "int8", sql.Identifier(schema, "small").as_string(conn))):
        table, cols = make(conn, schema, f"w{number}", typ, ["7", None, "-3"])
        fingerprints.add(compute(conn, table, cols).hash_sum)
    assert len(fingerprints) == 1, fingerprints


def test_null_and_empty_text_differ_in_every_position(conn, schema, algorithm):
    table = sql.Identifier(schema, "ne")
    conn.execute(sql.SQL("CREATE TABLE {} (a text, b text, c varchar)").format(table))
    cols = describe_table(conn, f"{schema}.ne", None).columns
    seen = set()
    for row in [("", "", ""), (None, "", ""), ("", None, ""), ("", "", None), (None, None, None), ("N", "", "")]:
        conn.execute(sql.SQL("DELETE FROM {}").format(table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(table), row)
        seen.add(str(compute(conn, table, cols)))
    assert len(seen) == 6


@pytest.mark.parametrize(("typ", "archived", "now", "equal"), [
    ("numeric", ["5", "-9223372036854775808", "9223372036854775807", None, "0"],
     ["5", "-9223372036854775808", "9223372036854775807", None, "0"], True),
    ("numeric", ["5"], ["5.0"], False),  # prints otherwise: not the archived integer
    ("numeric", ["0"], [None], False),
    ("text", ["5", "-7"], ["5", "-7"], True),
    ("text", ["5"], ["+5"], False),
    ("text", ["5"], ["05"], False),
    ("text", ["9223372036854775807"], ["9223372036854775808"], False),  # beyond int8: never equal, never an error
    ("bool", ["1"], ["true"], False),
])
def test_a_column_retyped_since_it_was_archived_hashes_as_archived_where_values_read_back(
        conn, schema, typ, archived, now, equal):
    """v6 hashes integers by value: a column of another type now (integer to numeric or text, as v5 compared by text)
    is hashed as the archived integer where its text is an integer's canonical text, else as no integer at all."""
    a, cols = make(conn, schema, "was", "int8", archived)
    b, now_cols = make(conn, schema, "now", typ, now)
    hashed = fingerprint.as_archived(conn, now_cols, [{"name": "v", "pg_type": "bigint"}], fingerprint.ALGORITHM)
    assert hashed[0].hash_as == "int8"
    v6 = fingerprint.ALGORITHM  # (as_archived is v6's: v5 and older hash every column by its text)
    assert (fingerprint.compute(conn, a, cols, algorithm=v6) == fingerprint.compute(conn, b, hashed, algorithm=v6)) \
        is equal
