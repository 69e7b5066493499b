"""Hunt 20 (zc): hostile values in the full round trip, every format (jsonl, csv, parquet) and codec: archive ->
restore (into new, and into the source after deleting the day) -> compare -> deep verify, and strict mode."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import compare_days

DAY = dt.date(2024, 3, 10)
DECLARED = '<?xml version="1.0" encoding="UTF-8"?><doc/>'  # a declaration xml's output function drops


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_changed_xml_declaration_inside_an_xml_array_is_skipped_and_compared_as_unchanged(
        fmt, conn, schema, store, temp_dir):
    """Scenario: a table with an ``xml[]`` column; the day's row holds ``ARRAY['<?xml version="1.0"
    encoding="UTF-8"?><doc/>']``. The day is archived (every format keeps the element's stored text, declaration
    included: README "arrays of ... xml: the array literal (xml: of the stored texts)"). Then an UPDATE drops the
    declaration from the element (``ARRAY['<doc/>']``, another stored value: ``xs[1]::text`` differs). The day is
    archived again (no overwrite), and compared.

    Now: the re-run skips the day as identical and ``compare`` calls it ``equal`` (deep verification is green
    too, and a retention removal would prove the day and delete rows whose text the archive does not hold; a
    restore brings back the declaration the source no longer had). ``fingerprint.column_text`` hashes a
    built-in array as ``col::text``, which is array_out over each element's *output function*, and xml's output
    drops that declaration; hunt7 ma fixed the same blindness for an xml field of a composite
    (``_rewritten_xml_mark``) and a plain xml column is hashed by ``::text`` (its stored text), but a top-level
    ``xml[]`` (or an array of a domain over xml) was left out. The same blindness lets an archive whose element
    declarations were altered in the bucket pass deep verification.

    Should: a changed declaration is a change: the re-run fails "changed since it was archived" (or archives
    again with overwrite) and compare says ``differs``. Fix idea: hash an array of xml (through domains) by its
    elements' stored texts, e.g. ``col::text[]::text`` (xml -> text keeps the stored text) in a new fingerprint
    version, or add a mark where any element's ``::text`` differs from its output, as for composites."""
    table = sql.Identifier(schema, "docs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date NOT NULL, xs xml[])").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, ARRAY[%s::xml])").format(table), (DAY, DECLARED))
    spec = TableSpec(name=f"{schema}.docs", day_column="at", start_date=DAY, format=fmt,
                     compression={"jsonl": "lz4", "csv": "gzip", "parquet": "snappy"}[fmt])
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 1
    conn.execute(sql.SQL("UPDATE {} SET xs = ARRAY['<doc/>'::xml]").format(table))
    # (the premise: the stored value did change; PostgreSQL keeps an xml's declaration as written)
    assert conn.execute(sql.SQL("SELECT xs[1]::text FROM {}").format(table)).fetchone()[0] == "<doc/>"

    try:
        again = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        rerun = f"skipped as identical: {again.skipped}"
    except ArchiveError as exc:
        rerun = "refused" if "changed since it was archived" in str(exc) else f"other error: {exc}"
    compared = [c.result for c in compare_days(conn, spec, store, [DAY])]
    assert (rerun, compared) == ("refused", ["differs"])
