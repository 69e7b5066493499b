"""Hunt 9 (ot): a hostile review of the JSONL restore / verify layout-change / ancestor-bound / period-comparison
commits: legitimate work now refused or answered differently."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import decompress, download, read_jsonl
from archive_pipeline_tests.test_hunt8_na import app_db  # noqa: F401 - a fixture: a database and an app role

DAY = dt.date(2024, 3, 10)


def test_verify_deep_of_a_repeated_autumn_hour_after_a_zone_rename_gives_a_verdict(conn, schema, store):
    """An hourly table archived with ``timezone: Europe/Kiev`` is later written with the zone's current name
    ``Europe/Kyiv`` (the README: a zone renamed to another name of the same zone keeps the period). The user runs
    ``verify --deep`` of the first repeated hour of the autumn change, 2024-10-27-03:00. It now raises "its
    archive holds the hourly period ... in Europe/Kiev, and the table is now configured as hourly in Europe/Kyiv:
    another period ... (no verdict on the archive)": another_period compares the recorded bounds with the period's
    ZoneInfo datetimes by ``==``, which Python answers False across zones for a time whose offset depends on
    ``fold`` (PEP 495), although the instants are equal. It should prove the hour (same instants, same rows)."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-10-27 00:10+00'), (2, '2024-10-27 00:20+00')")
                 .format(table))
    spec = dict(name=f"{schema}.ev", day_column="at", start_date="2024-10-01", granularity="hourly")
    before = TableSpec(**spec, timezone="Europe/Kiev")
    done = archive_partition(conn, before, "2024-10-27-03:00", store)
    assert done.rows == 2 and not done.skipped
    assert deep_verify(conn, store, before, "2024-10-27-03:00") == []
    after = TableSpec(**spec, timezone="Europe/Kyiv")
    assert deep_verify(conn, store, after, "2024-10-27-03:00") == []


def test_a_refused_jsonl_value_is_named_by_its_own_column_for_a_role_without_temporary(app_db, store, temp_dir,
                                                                                      s3_client, bucket):
    """The DBA revoked TEMPORARY on the database from PUBLIC, so the app role's JSONL restore sends the lines in
    blocks (no staged table). The table has two columns of one enum, ``before`` and ``after``; the target's enum
    lacks the label ``'gone'``. The day's first row has ``after = 'gone'``, its second ``before = 'gone'``. The
    user restores the day into the target: the INSERT stops at the first row on ``after``. What happens: the error
    says ``column before``: for a block, restore._told_refused_column probes each column over the whole block and
    takes the first whose message is the load's -- ``before``'s probe fails on the second row with the very same
    text. The staged path finds the refused line first (a21265a: "two columns of one type told apart"); the block
    path does not. What should happen: ``after`` is named (or no column), never ``before``."""
    schema = app_db.name
    s = sql.Identifier(schema)
    owner = app_db.owner
    owner.execute(sql.SQL("CREATE TYPE {}.st AS ENUM ('new', 'gone')").format(s))
    owner.execute(sql.SQL("CREATE TYPE {}.st2 AS ENUM ('new')").format(s))
    owner.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, before {}.st, after {}.st)").format(s, s, s))
    owner.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'new', 'gone'), (2, %s, 'gone', 'new')").format(s),
                  (DAY, DAY))
    owner.execute(sql.SQL("CREATE TABLE {}.bad (id int, at date, before {}.st2, after {}.st2)").format(s, s, s))
    owner.execute(sql.SQL("GRANT SELECT, INSERT ON {}.bad TO {}").format(s, sql.Identifier(app_db.role)))
    owner.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(app_db.name)))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    result = archive_partition(owner, spec, DAY, store, temp_dir=temp_dir)
    lines = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert [r["after"] for r in lines] == ["gone", "new"]  # (the load meets the first row's ``after`` first)
    with psycopg.connect(app_db.dsn, autocommit=True) as restoring:
        with pytest.raises(ArchiveError) as refused:
            restore_day(restoring, store, spec, DAY, into="existing", target=f"{schema}.bad", temp_dir=temp_dir)
    message = str(refused.value)
    assert "gone" in message and "column before" not in message, message
