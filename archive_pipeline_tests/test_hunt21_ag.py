"""Hunt 21 (ag): a code review of the formats (core/formats: jsonl, csv, parquet, common, big_values, readers) and
core/compression: how each value of each type is written and read back in each format and codec, the per-column
exactness record, the strict option, refusals, big values past COPY, the readers restore and deep verification use.

Held up (probed, no test here): round trips (archive, restore into new with its fingerprint check, value-by-value
comparison, deep verification) in jsonl, csv and parquet of bit(3), int4multirange and tstzmultirange (infinite
bound), numeric(5,5), numeric(38,38), numeric(38,0) at 38 nines, numeric(76,2), numeric(76,76), numeric(1000,500),
numeric 1e-16383 and 9e131071, real[]/float8[] at their denormal and largest values and -0, scalar real 1e-45, intervals
of mixed signs ('-0.5 sec', '1 mon -1 day', '-1 mon +1 day -0.000001 sec', '2147483647 mons -2147483648 days', the
largest time part Arrow holds), text with a lone CR, a lone backslash, "\\." alone on a line inside a value, "\\."
itself, daterange with infinite bounds and 4714 BC, int2vector/oidvector (empty too), "char" of byte 0x80 and of a
backslash, timestamp/timestamptz/date at year 1, 1 BC, 9999 and 10000 (the ISO/Julian switch of the Parquet reader),
pg_lsn, macaddr8, tsquery, a polygon of denormal coordinates, line, pg_snapshot, timestamptz[]/date[] across BC and
10000, time[], char(2)[], name[], bool[], int8[] at both ends, a jsonb string of escapes and 1e400, varchar(3)[];
Arrow's float32/float64 -> string cast (100,000 random finite values each read back to the same bits); pre-1970
timestamps with fractions through the Parquet reader; every codec's reader on an empty frame, concatenated frames
(with empty ones between: what parallel streams write), a truncated object and a trailing garbage byte (refused);
Python's single-byte codec tables against PostgreSQL's convert_from for every single-byte server encoding (the JSONL
json escape refusal), identical for all 27; the output/input round trip of values built by functions rather than
input (array_to_tsvector, setweight, ts_delete, jsonpath, tsquery operators, NaN points/boxes/circles, empty and
degenerate ranges, justify_interval, empty arrays and arrays of empty arrays, array_fill with negative bounds).
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pyarrow.parquet as pq
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.test_hunt20_zh import _drop_role, _role

DAY = dt.date(2024, 3, 10)


def test_a_parquet_archive_by_a_role_with_array_nulls_off_holds_the_string_null_for_a_null_element(
        conn, pg, schema, store, temp_dir, tmp_path):
    """Scenario: the DBA set ``array_nulls = off`` for the archiving role (ALTER ROLE ... SET, a legacy setting the
    README lists among those restore reads "whatever the session's"). The role archives a day as Parquet whose
    ``numeric[]`` and enum-array columns hold a NULL element ('{1.5,NULL}', '{sad,NULL}').

    Now: the run is green, every column recorded exact ("list<string> (each element's exact text ...)"), but the
    object's lists hold the four-letter string "NULL" where PostgreSQL has a NULL element. parquet._read_expression
    reads numeric and enum arrays through common.element_texts, ``(concat(array))::text[]``: array_out prints a NULL
    element as a bare NULL and array_in reads it back as NULL only under array_nulls on. The Parquet reader is ADBC's
    own session, opened as the role, and gets source.SNAPSHOT_SETTINGS (TimeZone, DateStyle, IntervalStyle, ...),
    which pin no array_nulls (the fingerprint's CANONICAL_SETTINGS and restore's _INPUT_SETTINGS do: only the
    archive's own read misses it). The content fingerprint (computed under array_nulls on) is the source's, so every
    later run skips onto this archive; deep verification then cannot load it ("invalid input value for enum ...:
    "NULL" ... prove the day in a database whose types are as they were": blaming the types), and a restore fails
    ("invalid input syntax for type numeric: "NULL""). The same holds for JSONL with ``parallel_streams`` (probed:
    a 3,000-row day read by 2 streams wrote ``"ma":["sad","NULL"]`` on every line): each stream's session gets the
    same settings, while a single-stream text read happens to be spared (its session applied the fingerprint's
    CANONICAL_SETTINGS earlier in the same transaction).

    Should: the archive holds a NULL element as null, whatever the role's array_nulls. Fix idea: add
    ``"array_nulls": "on"`` to source.SNAPSHOT_SETTINGS (every read session gets it), or build the element texts
    without parsing a literal (an ARRAY(SELECT ... FROM unnest(...) WITH ORDINALITY) as parquet._printed_elements
    does for money)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('sad', 'happy')").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, na numeric[], ma {}.mood[])").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, '{{1.5,NULL}}', '{{sad,NULL}}')").format(s), (DAY,))
    role, dsn = _role(conn, pg, schema, {"array_nulls": "off"}, owns=("ev",))
    try:
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="parquet")
        with psycopg.connect(dsn, autocommit=True) as as_role:
            result = archive_partition(as_role, spec, DAY, store, temp_dir=temp_dir)
        assert result.rows == 1 and all(e["exact"] for e in result.encodings.values())  # (green, all exact)
        path = tmp_path / "day.parquet"
        store.client.download_file(store.bucket, result.key, str(path))
        archived = pq.read_table(path).to_pylist()[0]
        assert archived["na"] == ["1.5", None] and archived["ma"] == ["sad", None], (
            f"the Parquet archive, green and recorded exact, holds {archived['na']!r} and {archived['ma']!r} for "
            "'{1.5,NULL}' and '{sad,NULL}' (the role's array_nulls off read the NULL element as the string NULL)")
        try:
            problems = deep_verify(conn, store, spec, DAY)
        except ArchiveError as exc:
            problems = [str(exc)]
        assert problems == [], f"deep verification of the green archive: {problems}"
    finally:
        _drop_role(conn, role)
