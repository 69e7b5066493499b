"""Hunt 9 (or): a hostile review of c661ba5..f0f0ceb (the JSONL restore's staged and block paths, naming the
refused column, the pending-detach filter by bounds, another_period, the proof of an object decoding too long)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.helpers import decompress, download, read_jsonl

DAY = dt.date(2024, 3, 10)


def test_a_refused_jsonl_value_is_named_by_its_own_column_not_another_column_of_the_same_type(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A table has two columns of the same enum, ``before`` and ``after`` (a status change). The user restores a
    JSONL day into an existing table whose enum lacks the label ``'gone'`` (dropped since). The day's first row has
    ``after = 'gone'``; its second has ``before = 'gone'``. The INSERT stops at the first row on ``after``:
    'invalid input value for enum ...: "gone"'. What happens: the error names ``column before``: the probe of the
    refused page (restore._name_refused_column) tries each column alone in order and takes the first whose probe
    gives the same *message* -- ``before``'s probe fails on the second row with the very same text (same type,
    same label). What should happen: the column named is the one whose value the load refused, ``after`` (or none
    at all, rather than a wrong one)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.st AS ENUM ('new', 'gone')").format(s))
    conn.execute(sql.SQL("CREATE TYPE {}.st2 AS ENUM ('new')").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, before {}.st, after {}.st)").format(s, s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'new', 'gone'), (2, %s, 'gone', 'new')").format(s),
                 (DAY, DAY))
    conn.execute(sql.SQL("CREATE TABLE {}.bad (id int, at date, before {}.st2, after {}.st2)").format(s, s, s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    lines = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert [r["after"] for r in lines][:1] == ["gone"]  # (the load meets the first row's ``after`` first)
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.bad", temp_dir=temp_dir)
    message = str(refused.value)
    assert "column before" not in message, message
