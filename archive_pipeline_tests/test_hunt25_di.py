"""Hunt 25 (di): restore's CSV header reading, day-column check, skip proof and JSONL array shortcut."""

from __future__ import annotations

import datetime as dt
import json

from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import download, forge_object
from archive_pipeline_tests.test_hunt17_wk import _reseal

DAY = dt.date(2024, 3, 10)


def _archived(conn, schema, store, s3_client, bucket, ddl, values, fmt="csv", compression="none"):
    conn.execute(sql.SQL("CREATE TABLE {}.ev ({})").format(sql.Identifier(schema), sql.SQL(ddl)))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES " + values).format(sql.Identifier(schema)))
    spec = TableSpec(name=f"{schema}.ev", day_column="d", start_date="2024-03-01", format=fmt,
                     compression=compression)
    archive_partition(conn, spec, DAY, store)
    mkey = manifest_key(render_key(spec, DAY, store.prefix))
    manifest = json.loads(download(s3_client, bucket, mkey))
    return spec, mkey, manifest


def test_verify_deep_names_the_damaged_csv_row_one_line_before_its_line_in_the_object(conn, schema, store, s3_client,
                                                                                      bucket):
    """Scenario: a CSV day of three rows ("id,d,v" header, then lines 2-4) whose object and manifest were altered
    together: the row on the object's line 3 ("2,2024-03-10,b") got an extra field; verify --deep reports it.

    Now: since restore reads the header itself (readers.csv_rows skips the header line and load_into COPYs the
    rest without HEADER), PostgreSQL's COPY counts from the first data row, so verify._load's problem quotes COPY's
    context "line 2: 2,2024-03-10,b,extra" (verify.py keeps "COPY's line" as it was when HEADER made it the
    object's line number): a user opening the object at line 2 finds the intact row 1, not the damaged one.

    Should: name the object's own line (line 3), as it did while COPY read the header: add the header's one line
    to COPY's line number (or say "data row 2") where the context is quoted."""
    spec, mkey, manifest = _archived(conn, schema, store, s3_client, bucket, "id int, d date, v text",
                                     "(1, '2024-03-10', 'a'), (2, '2024-03-10', 'b'), (3, '2024-03-10', 'c')")
    body = download(s3_client, bucket, manifest["object"]["key"])
    lines = body.split(b"\n")
    assert lines[2] == b"2,2024-03-10,b"
    lines[2] += b",extra"
    forged = b"\n".join(lines)
    forge_object(s3_client, bucket, manifest["object"]["key"], mkey, forged)
    _reseal(s3_client, bucket, mkey, lambda m: m.update(uncompressed_bytes=len(forged)))

    problems = deep_verify(conn, store, spec, DAY)

    assert len(problems) == 1 and "2,2024-03-10,b,extra" in problems[0], problems
    assert "line 2:" not in problems[0] and "line 3" in problems[0], problems[0]
