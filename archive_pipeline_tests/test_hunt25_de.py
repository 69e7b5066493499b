"""Hunt 25 (de): CSV and Parquet objects written by older versions of this archiver's formatters, read by today's
restore, verify --deep and compare."""

from __future__ import annotations

import datetime as dt
import json

from psycopg import sql

from archive_pipeline.core import fingerprint
from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.source import describe_table
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import download, forge_object
from archive_pipeline_tests.test_hunt17_wk import _reseal

DAY = dt.date(2024, 3, 10)


def _as_release(conn, spec: TableSpec, s3_client, bucket: str, mkey: str, body: bytes, algorithm: str,
                version: str) -> None:
    """The day's object replaced by ``body`` (what an older release wrote) and its manifest sealed as that release's:
    the source day's fingerprint by ``algorithm`` (the one it recorded), its archiver version."""
    table = describe_table(conn, spec.name, spec.day_column)
    with conn.transaction():
        where = sql.SQL("{} = {}").format(sql.Identifier(spec.day_column), sql.Literal(DAY))
        found = fingerprint.compute(conn, table.identifier, table.columns, where, algorithm)
    manifest = json.loads(download(s3_client, bucket, mkey))
    forge_object(s3_client, bucket, manifest["object"]["key"], mkey, body)
    _reseal(s3_client, bucket, mkey, lambda m: (m.pop("uncompressed_bytes", None), m.update(
        fingerprint=f"{algorithm}:{found.rows}:{found.hash_sum}",
        archiver={"name": "archive_pipeline", "version": version})))



def _old_header(conn, schema: str, store, s3_client, bucket: str, ddl: str, values: str, day_column: str,
                old_header: bytes) -> TableSpec:
    """``<schema>.ev`` (``ddl``) archived as CSV by today's release, then its object's header line replaced by
    ``old_header`` (what ``csv.writer(lineterminator="\\n")`` wrote before a62bf11) and its manifest sealed as that
    release's (fingerprint row-hash-sum-v3, the one it recorded)."""
    conn.execute(sql.SQL("CREATE TABLE {}.ev ({})").format(sql.Identifier(schema), sql.SQL(ddl)))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES " + values).format(sql.Identifier(schema)))
    spec = TableSpec(name=f"{schema}.ev", day_column=day_column, start_date="2024-03-01", format="csv",
                     compression="none")
    archive_partition(conn, spec, DAY, store)
    mkey = manifest_key(render_key(spec, DAY, store.prefix))
    body = download(s3_client, bucket, json.loads(download(s3_client, bucket, mkey))["object"]["key"])
    rest = body.split(b"\n", 1)[1]
    _as_release(conn, spec, s3_client, bucket, mkey, old_header + b"\n" + rest, fingerprint.V3, "0.1.0")
    return spec


def test_a_csv_archive_whose_old_header_left_a_lone_cr_bare_is_refused_as_damaged(conn, schema, store, s3_client,
                                                                                 bucket):
    """Scenario: a day of a table with a column whose name holds a carriage return ("a<CR>b", as a hostile or
    careless DDL makes it) archived as CSV by a release before a62bf11 (fingerprint row-hash-sum-v2/v3): its header
    line was written by Python's csv.writer(lineterminator="\\n"), which leaves a lone CR unquoted
    (``id,at,a<CR>b``); the rows below it are PostgreSQL's own COPY csv output, exact. Today's release restores the
    day.

    Now: load_into reads the object by ``COPY ... (FORMAT csv, HEADER MATCH)``: PostgreSQL takes the bare CR for the
    end of the header line, finds field 3 "a" where it expects "a<CR>b" (BadCopyFileFormat), and restore raises
    ArchiveCorruptError "does not load into ...; check ... the object against its manifest (MD5)": an intact archive
    of an older release, whose object matches its manifest, is refused as damaged, and no release can restore it.

    Should: the header an older release wrote is read as that release wrote it: the restore knows the manifest's
    column names and their order, so it can check the first line against csv.writer's spelling of them (or skip
    exactly the bytes of that spelling) and COPY the rows without HEADER. Fix idea: in load_into, for csv, compare
    the object's leading bytes with header_field's line and with csv.writer's line of manifest_columns; strip the
    one that matches and COPY without HEADER; refuse only a header that is neither."""
    spec = _old_header(conn, schema, store, s3_client, bucket, 'id int PRIMARY KEY, at date, "a\rb" text',
                       "(1, '2024-03-10', 'x'), (2, '2024-03-10', NULL)", "at", b"id,at,a\rb")
    result = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back")
    assert result.rows == 2 and result.fingerprint_checked, result


def test_verify_deep_of_a_csv_archive_whose_old_header_is_the_end_of_data_marker_blames_the_databases_types(
        conn, schema, store, s3_client, bucket):
    """Scenario: a table whose only column is its day column, named ``\\.`` (one of the names a62bf11 began to
    quote), archived as CSV by a release before a62bf11: csv.writer wrote the header bare, so the object's first
    line is ``\\.``, PostgreSQL's end-of-data marker; the rows are exact. The user runs verify --deep of the day
    on today's release.

    Now: load_into's COPY ... HEADER MATCH fails with BadCopyFileFormat (SQLSTATE 22P04: 'column name mismatch in
    header line field 1: got null value ("")'), a psycopg.DataError, and verify._load takes every DataError that
    is not a built-in field's for "a value the types of database 'postgres' refuse ... (no verdict on the
    archive)", with the remedy "prove the day in a database whose types are as they were ... or make this one's
    types hold the value (ALTER TYPE ... ADD VALUE, the collation)": no type refused anything; the user is sent to
    alter types or find another database, and the day is never proven.

    Should: a failure of the CSV file's structure (22P04 bad_copy_file_format: the header, an unterminated quote,
    a field count) is not a type's refusal: the old header is read as its release wrote it (see the test above)
    and the day proven; a header that truly does not match is reported as the archive's, not the database's.
    Fix idea: verify._load sends 22P04 (psycopg.errors.BadCopyFileFormat) to the archive's verdict, not to the
    types-refuse branch, and load_into reads the pre-a62bf11 header."""
    spec = _old_header(conn, schema, store, s3_client, bucket, '"\\." date',
                       "('2024-03-10'), ('2024-03-10')", "\\.", b"\\.")
    problems = deep_verify(conn, store, spec, DAY)
    assert problems == [], problems
