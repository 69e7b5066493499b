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
