"""Hunt 24 (bi): the formats layer line by line (formats/common.py, parquet.py, jsonl.py, csv.py, big_values.py,
readers.py, fingerprint.py): values at the edge of their types, names that are not ASCII, and how a value failure
is explained."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError

DAY = dt.date(2024, 3, 10)


def test_a_view_whose_own_expression_fails_is_told_to_switch_to_a_format_that_fails_the_same_way(
        conn, schema, store, temp_dir):
    """Scenario: the archived relation is a view (``SELECT id, at, n::int AS n FROM base``) over a staging table whose
    text column holds one value that is not a number ('x'). A user archives the day as csv.

    Now: the COPY fails inside PostgreSQL with 22P02 (the view's own cast); CopyFormat._explain probes the columns,
    finds 'n', and formats.common.explain_value_failure's last branch says "column 'n' (integer) of s.v cannot be
    converted by PostgreSQL (SQLSTATE 22P02 ...) in csv; archive this table as parquet or jsonl, or fix the value".
    The user follows it: parquet fails with the same error and now recommends "jsonl or csv", jsonl recommends "csv or
    parquet": every format sends the user to the others, in a circle. The value is not one a format cannot convert
    (an int prints in every format): the relation's own expression raises while it is read, in any format (the same
    for 100 / (id - 2), division by zero, 22012).

    Should: a failure that the day's own query raises in every format (the probe of the plain column, with no
    format's expression around it, fails the same way) is named as the relation's expression failing on a row of the
    day (the view's or the generated value's), with the remedy to fix the row or the view, not to switch formats. Fix
    idea: in explain_value_failure, probe the culprit column as plain ``col`` (select_list of the relation): if that
    fails too, no format helps, so say so instead of OTHER_FORMATS."""
    base, view = sql.Identifier(schema, "base"), sql.Identifier(schema, "v")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, n text)").format(base))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, '5'), (2, %s, 'x')").format(base), (DAY, DAY))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, at, n::int AS n FROM {}").format(view, base))

    said = {}
    for fmt in ("csv", "parquet", "jsonl"):
        spec = TableSpec(name=f"{schema}.v", day_column="at", start_date=DAY, format=fmt)
        with pytest.raises(ArchiveError) as raised:
            archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
        said[fmt] = str(raised.value)
    # (the premise: every format fails on the same row, for the same reason)
    assert all("22P02" in message and "'n'" in message for message in said.values()), said
    # the remedy must not send the user to another format, each of which fails the same way
    assert not any("archive this table as" in message for message in said.values()), said
