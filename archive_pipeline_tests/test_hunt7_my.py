"""Hunt 7 (my): regressions and holes in the newest product changes."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.plan import compare_days, day_statuses

DAY = dt.date(2024, 3, 10)


def test_a_range_finds_days_archived_under_a_former_format_named_in_the_file_name_before_its_first_dot(
        conn, schema, store, temp_dir):
    """A user names each object with its format in the file name (``key_template:
    {prefix}/{schema}.{table}/{date}-{format}.{ext}``), archives four days as jsonl, then switches the table to
    csv. The day alone is found under its former format's key (``list --day``/``compare --day``: archived,
    equal). What happens: over the four days (a range of more than three days is answered from one listing)
    every day is ``missing`` / ``not-archived``: the plan now renders the former formats' keys only where
    {format} or {ext} stands in a folder, taking a file name's {format} to share the day's prefix
    (``<dir>/<name up to its first dot>``), but here {format} comes before the first dot, so
    ``.../2024-03-10-jsonl`` is not ``.../2024-03-10-csv`` and the day's former archive is never looked at (before
    the change it was). What should happen: the range gives each day the answer the day alone gets."""
    days = [DAY + dt.timedelta(days=i) for i in range(4)]
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, date '2024-03-10' + g % 4 FROM generate_series(1, 20) g").format(table))
    entry = {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
             "key_template": "{prefix}/{schema}.{table}/{date}-{format}.{ext}"}
    before = parse_config({"tables": [entry | {"format": "jsonl"}]}).tables[0]
    for day in days:
        archive_partition(conn, before, day, store, temp_dir=str(temp_dir))
    now = parse_config({"tables": [entry | {"format": "csv"}]}).tables[0]
    assert [s.state for s in day_statuses(conn, now, store, days[:1])] == ["archived"]  # the day alone: found
    assert [c.result for c in compare_days(conn, now, store, days[:1])] == ["equal"]
    assert [s.state for s in day_statuses(conn, now, store, days)] == ["archived"] * 4
    assert [c.result for c in compare_days(conn, now, store, days)] == ["equal"] * 4


# --- a composite's typed field, archived by the version before shapes kept type modifiers ---------------------

BEFORE_TYPMODS = "f39bb200ed4f183d1445f9dfc1abe6217cbefb18"  # the last commit whose shapes recorded no typmod

_OLD_ARCHIVE = r"""
import datetime as dt, json, sys
import boto3, psycopg
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import S3Store, MIN_PART_SIZE
args = json.loads(sys.argv[1])
client = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
store = S3Store(client, args["bucket"], prefix="archive", part_size=MIN_PART_SIZE)
with psycopg.connect(args["dsn"], autocommit=True) as conn:
    archive_partition(conn, TableSpec(**args["spec"]), dt.date.fromisoformat(args["day"]), store,
                      temp_dir=args["tmp"])
"""


def _archive_with_the_version_before(pg, s3, bucket, spec: dict, day: dt.date, tmp) -> None:
    import json
    import os
    import subprocess
    import sys

    from archive_pipeline_tests.helpers import previous_version_code

    env = {**os.environ, "PYTHONPATH": previous_version_code(BEFORE_TYPMODS)}
    args = {"dsn": pg.dsn, "endpoint": s3.endpoint_url, "bucket": bucket, "spec": spec, "day": day.isoformat(),
            "tmp": str(tmp)}
    done = subprocess.run([sys.executable, "-c", _OLD_ARCHIVE, json.dumps(args, default=str)], env=env,
                          capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_day_archived_before_shapes_kept_type_modifiers_still_compares_and_restores(pg, s3, bucket, conn, schema,
                                                                                      store, temp_dir):
    """A user archived a table with a composite column whose fields carry type modifiers (``CREATE TYPE money2 AS
    (amount numeric(10,2), code varchar(3))``) with the version before this change, then upgrades. Nothing about
    the table changed. What happens: ``compare`` says equal, but deep verification (``verify --deep``) says the
    source's type changed ("column 'm': at field amount is numeric(10,2) now, numeric when archived") and
    ``restore`` refuses the day ("a type inside its columns is not the one the day was archived with"): the
    manifest's shape recorded ``format_type(oid, NULL)`` then and today's shapes are ``format_type(oid, typmod)``,
    so every such day archived before the upgrade reads as changed (a re-run after a late row likewise says "a type
    inside its columns changed (not its rows)"). What should happen: a shape recorded without
    type modifiers (by an older version) is compared without
    them, and the unchanged day is proven and restores."""
    from archive_pipeline.core.restore import restore_day

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.money2 AS (amount numeric(10,2), code varchar(3))").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, m {}.money2)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, date '2024-03-10', ROW(g * 1.5, 'EUR')::{}.money2 "
                         "FROM generate_series(1, 5) g").format(s, s))
    entry = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY, "format": "jsonl"}
    _archive_with_the_version_before(pg, s3, bucket, entry, DAY, temp_dir)
    spec = parse_config({"tables": [entry | {"start_date": "2024-03-01"}]}).tables[0]
    assert [c.result for c in compare_days(conn, spec, store, [DAY])] == ["equal"]
    from archive_pipeline.core.verify import deep_verify
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []
    result = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.ev_back")
    assert result.rows == 5
