"""Hunt 25 (cz): objects written by older versions of this archiver's formatters, read by today's restore, verify
--deep and compare."""

from __future__ import annotations

import datetime as dt
import json

from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.helpers import download, forge_object
from archive_pipeline_tests.test_hunt17_wk import _reseal

DAY = dt.date(2024, 3, 10)


def _archived(conn, schema: str, store, ddl: str, values: str, fmt: str = "jsonl") -> tuple[TableSpec, str]:
    """``<schema>.ev`` (``ddl``'s columns, day column ``at``) holding the rows of ``values`` (SQL), DAY archived
    uncompressed as ``fmt``; (spec, manifest key)."""
    conn.execute(sql.SQL("CREATE TABLE {}.ev ({})").format(sql.Identifier(schema), sql.SQL(ddl)))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES " + values).format(sql.Identifier(schema)))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format=fmt, compression="none")
    archive_partition(conn, spec, DAY, store)
    return spec, manifest_key(render_key(spec, DAY, store.prefix))


def _as_v1_release(s3_client, bucket: str, mkey: str, body: bytes) -> None:
    """The day's object replaced by ``body`` (what the v1-fingerprint release, ba1e6db..c2d0a97, wrote) and its
    manifest sealed as that release's: fingerprint row-hash-sum-v1, no uncompressed_bytes."""
    manifest = json.loads(download(s3_client, bucket, mkey))
    forge_object(s3_client, bucket, manifest["object"]["key"], mkey, body)
    _reseal(s3_client, bucket, mkey, lambda m: (m.pop("uncompressed_bytes", None), m.update(
        fingerprint="row-hash-sum-v1:" + m["fingerprint"].split(":", 1)[1],
        archiver={"name": "archive_pipeline", "version": "0.1.0"})))


def test_a_v1_jsonl_archive_of_a_jsonb_array_restores_its_string_elements_as_other_json_values(
        conn, schema, store, s3_client, bucket):
    """Scenario: a day of a table with a jsonb[] column archived as JSONL by the release that wrote
    ``row-hash-sum-v1`` fingerprints (ba1e6db..c2d0a97: JSONL was plain ``row_to_json`` of the row, so a jsonb[] went
    out as a JSON array of the elements' JSON: ``["1", "true", null]`` for the jsonb strings "1" and "true" and an
    SQL NULL element). The day is restored by today's release (its manifest's fingerprint cannot be computed any
    more, so the restore checks the row count only).

    Now: restore._jsonl_pieces reads every array column whose JSON value starts with ``[`` (not ``[[``) and holds no
    backslash by turning the brackets into braces and calling the array type's input (``{"1","true",null}``::jsonb[]):
    array_in unquotes each element and jsonb_in parses the bare text, so the jsonb *strings* "1" and "true" come back
    as the jsonb *number* 1 and *boolean* true. The count matches, the restore is green, the values are changed
    silently. (json_populate_record, which the fast path claims to equal, reads them back as the strings.)

    Should: the fast path is taken only for arrays whose element type's text is what array_in hands its input
    unchanged (not json/jsonb, composites, ranges ...); others take json_populate_record's path, which reads an
    element's JSON text as that JSON value. Fix idea: _jsonl_pieces checks the target's element type (typelem's
    typname not in json/jsonb, typtype not 'c') before taking the bracket-to-brace path."""
    spec, mkey = _archived(conn, schema, store, "id int PRIMARY KEY, at date, tags jsonb[]",
                           """(1, '2024-03-10', ARRAY['"1"'::jsonb, '"true"'::jsonb])""")
    # the v1 release's bytes: row_to_json of the row, as its JsonLines wrote them
    body = b"".join(line.encode() + b"\n" for (line,) in conn.execute(sql.SQL(
        "SELECT row_to_json(r.*)::text FROM (SELECT id, at, tags FROM {}.ev ORDER BY id) r").format(
        sql.Identifier(schema))).fetchall())
    assert b'["1", "true"]' in body or b'["1","true"]' in body, body
    _as_v1_release(s3_client, bucket, mkey, body)
    result = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back")
    restored = conn.execute(sql.SQL("SELECT pg_catalog.array_to_json(tags)::text, "
                                    "(SELECT pg_catalog.array_agg(pg_catalog.jsonb_typeof(e)) FROM "
                                    "pg_catalog.unnest(tags) e)::text FROM {}.back").format(
        sql.Identifier(schema))).fetchall()
    assert restored == [('["1","true"]', "{string,string}")], (restored, result.check)
