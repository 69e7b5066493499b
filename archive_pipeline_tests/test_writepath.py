"""Hunt: the archive write path (source, formats, store) against hostile schemas, types and faults."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import decompress, download, read_csv

DAY = dt.date(2024, 3, 10)


def _shadowing_schema(conn: psycopg.Connection, schema: str) -> None:
    """A schema whose >= on dates is always true and whose hashtextextended is constant, put before
    pg_catalog on the session's path."""
    evil = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE FUNCTION {}.always(date, date) RETURNS bool LANGUAGE sql IMMUTABLE "
                         "AS 'SELECT true'").format(evil))
    conn.execute(sql.SQL("CREATE OPERATOR {}.>= (LEFTARG = date, RIGHTARG = date, FUNCTION = {}.always)")
                 .format(evil, evil))
    conn.execute(sql.SQL("CREATE FUNCTION {}.hashtextextended(text, bigint) RETURNS bigint LANGUAGE sql "
                         "IMMUTABLE AS 'SELECT 7::bigint'").format(evil))
    conn.execute(sql.SQL("SET search_path = {}, pg_catalog").format(evil))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_operators_shadowing_pg_catalog_on_the_path_are_not_called(fmt, conn, schema, store, temp_dir):
    """A role whose search_path lists a schema before pg_catalog: that schema's >= on dates (always true)
    must not pick the day's rows, nor its hashtextextended make every fingerprint alike."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, t text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'a'), (2, %s, 'b')").format(table),
                 (DAY, DAY - dt.timedelta(days=1)))
    _shadowing_schema(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY - dt.timedelta(days=5), format=fmt)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 1, f"archived {result.rows} rows for a day holding 1"
    conn.execute(sql.SQL("UPDATE {} SET t = 'changed' WHERE id = 1").format(table))
    with pytest.raises(ArchiveError, match="changed since it was archived"):
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_reg_types_round_trip_under_the_connections_path(fmt, pg, conn, schema, store, temp_dir):
    """regclass/regtype/regproc values name objects as the session's path shows them (the archive's path is
    pg_catalog first, then the session's: see session_settings); archived, proven, compared and restored
    through connections configured with that path (as a role's or a DSN's default is), they come back
    naming the same objects."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.target (x int)").format(s))
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('a')").format(s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.f() RETURNS int LANGUAGE sql AS 'SELECT 1'").format(s))
    table = sql.Identifier(schema, "refs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, c regclass, t regtype, p regproc, o oid, "
                         "cs regclass[], pp regprocedure, op regoperator, cf regconfig, ns regnamespace, "
                         "co regcollation)").format(table))
    options = sql.SQL("-c search_path={},public").format(s).as_string(conn)
    conn = psycopg.connect(psycopg.conninfo.make_conninfo(pg.dsn, options=options), autocommit=True)
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'target', 'mood', 'f', 42, '{{target,pg_class}}', 'f()', "
                         "'+(integer,integer)', 'english', {}, '\"C\"'), "
                         "(2, %s, 'pg_class', 'int4', 'now', 0, NULL, 'abs(integer)', '-(NONE,bigint)', 'simple', "
                         "'pg_catalog', 'default'), "
                         "(3, %s, NULL, NULL, NULL, NULL, '{{}}', NULL, NULL, NULL, NULL, NULL)")
                 .format(table, sql.Literal(schema)), (DAY, DAY, DAY))
    spec = TableSpec(name=f"{schema}.refs", day_column="at", start_date=DAY, format=fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert conn.execute("SHOW search_path").fetchone()[0] == f'"{schema}",public'  # the connection's, left as it was
    assert conn.execute(sql.SQL("SELECT c::text FROM {} WHERE id = 1").format(table)).fetchone()[0] == "target"
    assert deep_verify(conn, store, spec, DAY) == []
    assert compare_days(conn, spec, store, [DAY])[0].result == "equal"
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    same = conn.execute(sql.SQL("SELECT bool_and(a.c::oid IS NOT DISTINCT FROM b.c::oid AND a.t::oid IS NOT DISTINCT "
                                "FROM b.t::oid AND a.p::oid IS NOT DISTINCT FROM b.p::oid AND a.cs::oid[] IS NOT "
                                "DISTINCT FROM b.cs::oid[] AND a.pp::oid IS NOT DISTINCT FROM b.pp::oid AND a.op::oid "
                                "IS NOT DISTINCT FROM b.op::oid AND a.cf::oid IS NOT DISTINCT FROM b.cf::oid AND "
                                "a.ns::oid IS NOT DISTINCT FROM b.ns::oid AND a.co::oid IS NOT DISTINCT FROM b.co::oid), "
                                "count(*) FROM {} a JOIN {}.back b USING (id)").format(table, s)).fetchone()
    conn.close()
    assert same == (True, 3)


# column -> (type, values of rows 1..4 as SQL)
RARE = {
    "i8": ("bigint", ["-9223372036854775808", "9223372036854775807", "0", "NULL"]),
    "i2": ("smallint", ["-32768", "32767", "0", "NULL"]),
    "bt": ("bit(3)", ["B'101'", "B'000'", "NULL", "B'111'"]),
    "cidr": ("cidr", ["'10.0.0.0/8'", "'::/0'", "NULL", "'2001:db8::/32'"]),
    "mac": ("macaddr", ["'08:00:2b:01:02:03'", "NULL", "'ff:ff:ff:ff:ff:ff'", "'00:00:00:00:00:00'"]),
    "mac8": ("macaddr8", ["'08:00:2b:01:02:03:04:05'", "NULL", "'ff:ff:ff:ff:ff:ff:ff:ff'", "'00:00:00:00:00:00:00:00'"]),
    "tsq": ("tsquery", ["'a & !b'", "''", "NULL", "$$'x y':* | c$$"]),
    "dr": ("daterange", ["'[-infinity,infinity)'", "'empty'", "NULL", "'(,2024-01-01)'"]),
    "nr": ("numrange", ["'(-Infinity,Infinity)'", "'[NaN,NaN]'", "'empty'", "NULL"]),
    "tzr": ("tstzrange", ["'[-infinity,infinity]'", "'empty'", "NULL", "'(,)'"]),
    "imr": ("int4multirange", ["'{}'", "'{[1,3),[5,)}'", "NULL", "'{(,)}'"]),
    "dmr": ("datemultirange", ["'{[-infinity,2024-01-01),[2025-01-01,infinity]}'", "'{}'", "NULL", "'{empty}'"]),
    "bx": ("box", ["'(1,1),(0,0)'", "'(NaN,1),(-0,0)'", "NULL", "'(1e300,1e-300),(-1e300,0)'"]),
    "pg": ("polygon", ["'((0,0),(1,1),(1,0))'", "NULL", "'((0,0))'", "'((-0,NaN),(1,2))'"]),
    "ci": ("circle", ["'<(0,0),1>'", "NULL", "'<(1.5,-2.5),0>'", "'<(0,0),Infinity>'"]),
    "ln": ("line", ["'{1,-1,0}'", "NULL", "'{0,1,-0}'", "'{1,0,5}'"]),
    "ls": ("lseg", ["'[(0,0),(1,1)]'", "NULL", "'[(-0,0),(0,-0)]'", "'[(1,2),(3,4)]'"]),
    "pa": ("path", ["'[(0,0),(1,1)]'", "'((0,0),(1,1),(2,0))'", "NULL", "'[(1,2)]'"]),
    "lsn": ("pg_lsn", ["'0/0'", "'FFFFFFFF/FFFFFFFF'", "NULL", "'16/B374D848'"]),
    "o": ("oid", ["0", "4294967295", "NULL", "1"]),
    "xid8": ("xid8", ["'0'", "'18446744073709551615'", "NULL", "'7'"]),
    "snap": ("pg_snapshot", ["'10:20:10,14,15'", "NULL", "'1:1:'", "'3:3:'"]),
    "nm": ("name", ["'a'", "''", "NULL", "'ÿ ' || repeat('x', 60)"]),
    "ba": ("boolean[]", ["'{t,f,NULL}'", "'{}'", "NULL", "'{t}'"]),
    "f4a": ("real[]", ["'{NaN,-0,Infinity,1e-45}'", "'{}'", "NULL", "'{NULL}'"]),
    "i8a": ("bigint[]", ["'{-9223372036854775808,9223372036854775807,NULL}'", "'{}'", "NULL", "'{0}'"]),
    "ra": ("int4range[]", ["'{empty,\"(,)\",\"[1,2)\"}'", "'{}'", "NULL", "'{NULL}'"]),
    "cmp": ("holder", ["ROW(ARRAY['a', NULL]::feel[], '{[1,2)}')::holder", "ROW(NULL, NULL)::holder", "NULL",
                       "ROW('{}', '{}')::holder"]),
    "cmpa": ("holder[]", ["ARRAY[ROW(ARRAY['b c']::feel[], '{}')::holder, NULL]", "'{}'", "NULL",
                          "ARRAY[ROW(NULL, NULL)::holder]"]),
    "da": ("dints", ["'{1,NULL}'", "'{}'", "NULL", "'{2147483647}'"]),
    "fe": ("feel", ["'a'", "'b c'", "NULL", "'a'"]),
    "fea": ("feel[]", ["'{a,\"b c\",NULL}'", "'{}'", "NULL", "'{a}'"]),
}


def _rare_table(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL("SET search_path = {}, public").format(sql.Identifier(schema)))
    conn.execute("CREATE TYPE feel AS ENUM ('a', 'b c')")
    conn.execute("CREATE TYPE holder AS (feels feel[], r int4multirange)")
    conn.execute("CREATE DOMAIN dints AS int[] CHECK (cardinality(VALUE) < 5)")
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, (t, _) in RARE.items())
    conn.execute(sql.SQL("CREATE TABLE rare (id int, at date, {}, g int GENERATED ALWAYS AS (id * 2) STORED)")
                 .format(cols))
    for row in range(4):
        values = sql.SQL(", ").join(sql.SQL(v[row]) for _, v in RARE.values())
        conn.execute(sql.SQL("INSERT INTO rare (id, at, {}) VALUES ({}, {}, {})").format(
            sql.SQL(", ").join(map(sql.Identifier, RARE)), sql.Literal(row + 1), sql.Literal(DAY), values))


def _texts(conn: psycopg.Connection, relation: sql.Composable, columns: list[str]) -> list[tuple]:
    exprs = sql.SQL(", ").join(sql.SQL("CASE WHEN {c} IS DISTINCT FROM NULL THEN concat({c}) END").format(
        c=sql.Identifier(c)) for c in columns)
    return conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY id").format(exprs, relation)).fetchall()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_rare_types_round_trip_exactly(fmt, conn, schema, store, temp_dir):
    """Types less travelled, at their edges: archived, proven and restored to the same text."""
    _rare_table(conn, schema)
    spec = TableSpec(name=f"{schema}.rare", day_column="at", start_date=DAY, format=fmt)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 4
    assert deep_verify(conn, store, spec, DAY) == []
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    names = ["id", "at", *RARE, "g"]
    assert _texts(conn, sql.Identifier(schema, "back"), names) == _texts(conn, sql.Identifier(schema, "rare"), names)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("change", [
    "ALTER TABLE {t} DROP COLUMN note",
    "ALTER TABLE {t} RENAME COLUMN note TO remark",
    "ALTER TABLE {t} RENAME COLUMN a TO tmp; ALTER TABLE {t} RENAME COLUMN b TO a; ALTER TABLE {t} RENAME COLUMN tmp TO b",
    "ALTER TABLE {t} RENAME TO renamed",
    "ALTER TABLE {t} ADD COLUMN late int",
    # a table swapped in under the name: its rows were committed after the snapshot, which cannot see them
    "CREATE TABLE {s}.fresh (LIKE {t}); INSERT INTO {s}.fresh SELECT * FROM {t}; ALTER TABLE {t} RENAME TO old; "
    "ALTER TABLE {s}.fresh RENAME TO ev",
])
def test_a_column_change_committed_right_after_the_snapshot_fails_retryable(change, fmt, pg, conn, schema, store,
                                                                          monkeypatch, s3_client, bucket):
    """A change of the table's columns (or name) that commits between the archive's snapshot and its
    first lock: the snapshot's catalog still shows the old columns, the query is planned on the new
    ones. The day is archived as the snapshot saw it, or fails retryable; never with values under
    another column's name."""
    from archive_pipeline.core import archive

    t = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, a int, b int, note text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 10, 20, 'x'), (2, %s, 30, 40, 'y')").format(t), (DAY, DAY))
    original = archive.source_table

    def change_commits_in_the_window(*args, **kwargs):
        with pg.connect() as other:
            other.execute(sql.SQL(change).format(t=t, s=sql.Identifier(schema)))
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "source_table", change_commits_in_the_window)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
    try:
        result = archive_partition(conn, spec, DAY, store)
    except ArchiveError as exc:
        assert exc.retryable, str(exc)
        assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
        return
    body = download(s3_client, bucket, result.key)
    if fmt == "csv":
        rows = read_csv(decompress(body, "zstd"))
        assert [(r["a"], r["b"]) for r in sorted(rows, key=lambda r: r["id"])] == [("10", "20"), ("30", "40")], rows
    else:
        import io
        import pyarrow.parquet as pq
        table = pq.read_table(io.BytesIO(body))
        assert (table.column("a").to_pylist(), table.column("b").to_pylist()) == ([10, 30], [20, 40])


@pytest.mark.parametrize("mode", ["declarative", "column"])
@pytest.mark.parametrize("change", [
    "ALTER TABLE {t} DETACH PARTITION {day}",
    "ALTER TABLE {t} DETACH PARTITION {day}; ALTER TABLE {t} ATTACH PARTITION {day} "
    "FOR VALUES FROM ('2024-03-10 00:00+00') TO ('2024-03-11 00:00+00')",
])
def test_the_days_partition_detached_right_after_the_snapshot_is_not_archived_as_an_empty_day(
        change, mode, pg, conn, schema, store, monkeypatch, s3_client, bucket):
    """DETACH PARTITION keeps the partition's file: only its link to the parent goes, so the snapshot,
    which still sees the link, and the planner, which does not, disagree on where the day's rows are."""
    from archive_pipeline.core import archive
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(conn, schema, [("ev_20240310", "2024-03-10", "2024-03-11")])
    t = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00' FROM generate_series(1, 3) g").format(t))
    original = archive.source_table

    def detached_in_the_window(*args, **kwargs):
        with pg.connect() as other:
            other.execute(sql.SQL(change).format(t=t, day=sql.Identifier(schema, "ev_20240310")))
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "source_table", detached_in_the_window)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": mode})
    try:
        result = archive_partition(conn, spec, "2024-03-10", store)
    except ArchiveError as exc:
        assert exc.retryable, str(exc)
        assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
        return
    assert (result.rows, result.empty) == (3, False)


# --- answers 200 with an S3 <Error> body after the store acted, on every write request -------------------------

def _upload(store, key: str, data: bytes, temp_dir) -> None:
    """Upload ``data`` as the archiver does (a temp file growing in 1 MiB writes, parts sent as it
    grows), aborting the upload if anything fails."""
    from archive_pipeline.core.sink import temp_archive_file

    with temp_archive_file(temp_dir, suffix=".jsonl.zst") as sink:
        up = store.begin(key, content_type="application/x-ndjson", metadata={"table": "s.t", "day": "2024-03-10"})
        try:
            sink.on_grow = lambda n: up.grow(sink.fd, n)
            for start in range(0, len(data), 1 << 20):
                sink.write(data[start:start + (1 << 20)])
            up.finish(sink.fd, sink.size, sink.md5)
        except BaseException:
            up.abort()
            raise


ERROR_200 = {  # request kind: (fault matcher, bytes to upload)
    "create": (dict(method="POST", query="uploads"), 5 * 1024 * 1024 + 5),
    "upload_part": (dict(method="PUT", query="partNumber=2"), 5 * 1024 * 1024 + 5),
    "complete": (dict(method="POST", query="uploadId="), 5 * 1024 * 1024 + 5),
    "put": (dict(method="PUT", path=r"\.jsonl\.zst$"), 200_000),
}


@pytest.mark.parametrize("kind", sorted(ERROR_200))
def test_a_write_answered_200_with_an_error_after_the_store_acted_is_retryable_and_leaves_nothing(
        s3, bucket, s3_client, temp_dir, kind):
    import hashlib

    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store, UploadError
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    key = "archive/s.t/2024/03/2024-03-10.jsonl.zst"
    match, size = ERROR_200[kind]
    data = (hashlib.sha256(b"x").digest() * (size // 32 + 1))[:size]
    with FaultProxy(s3.endpoint_url) as proxy:
        store = S3Store(proxy.client(max_attempts=1), bucket, part_size=MIN_PART_SIZE, max_concurrency=2)
        fault = proxy.add(Fault(**match, action="error_200", forward=True, times=None))
        with pytest.raises(UploadError) as failure:
            _upload(store, key, data, temp_dir)
    assert fault.hits >= 1
    assert failure.value.retryable, str(failure.value)
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])] == []
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(temp_dir.iterdir()) == []


@pytest.mark.parametrize("streams", [1, 2])
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_partition_with_its_own_column_order_and_dropped_columns(fmt, streams, conn, schema, store, temp_dir):
    """The day's partition was created on its own with another column order and a dropped column,
    then attached; the parent lost a column in the middle and gained one with a default later."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, junk text, at timestamptz NOT NULL, v text) "
                         "PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("ALTER TABLE {}.ev DROP COLUMN junk").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_0310 (gone int, v text, at timestamptz NOT NULL, id int)").format(s))
    conn.execute(sql.SQL("ALTER TABLE {}.ev_0310 DROP COLUMN gone").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev_0310 (v, at, id) SELECT 'v' || g, '2024-03-10 00:00+00'::timestamptz "
                         "+ g * interval '1 second', g FROM generate_series(0, 2999) g").format(s))
    conn.execute(sql.SQL("ALTER TABLE {}.ev ATTACH PARTITION {}.ev_0310 FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00')").format(s, s))
    conn.execute(sql.SQL("ALTER TABLE {}.ev ADD COLUMN late numeric DEFAULT 1.50").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev (id, at, v, late) VALUES (-1, '2024-03-10 23:59:59.999999+00', NULL, "
                         "NULL)").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, parallel_streams=streams,
                     partitioning={"mode": "declarative"})
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 3001 and [c.name for c in result.columns] == ["id", "at", "v", "late"]
    assert deep_verify(conn, store, spec, DAY) == []
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    names = ["id", "at", "v", "late"]
    assert _texts(conn, sql.Identifier(schema, "back"), names) == _texts(conn, sql.Identifier(schema, "ev"), names)


def test_a_csv_archive_whose_manifest_names_types_as_the_path_showed_them_still_proves(
        conn, schema, store, s3_client, bucket, temp_dir):
    """Archives written before the archive's search_path was pinned name a user's types as the
    session's path showed them ("pair", not "schema".pair). Deep verification, whose fingerprint now
    runs under the pinned path, must still read their composite and domain columns."""
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.pair AS (x int, y text)").format(s))
    conn.execute(sql.SQL("CREATE DOMAIN {}.small AS int CHECK (VALUE < 100)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, p {}.pair, d {}.small)").format(s, s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, '(1,a)', 5), (2, %s, NULL, NULL)").format(s), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest = decode_manifest(download(s3_client, bucket, result.manifest_key))
    unqualified = {f'{schema}.pair': "pair", f'{schema}.small': "small"}
    assert {c["pg_type"] for c in manifest["columns"]} >= set(unqualified), manifest["columns"]
    for column in manifest["columns"]:
        column["pg_type"] = unqualified.get(column["pg_type"], column["pg_type"])
    for column in manifest["table_definition"]["columns"]:
        column["type"] = unqualified.get(column["type"], column["type"])
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))
    conn.execute(sql.SQL("SET search_path = {}, public").format(s))
    assert deep_verify(conn, store, spec, DAY) == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_role_granted_select_on_every_column_but_not_the_table_archives_the_day(fmt, pg, conn, schema, store,
                                                                                 temp_dir):
    """Column privileges only: a role that may read every column reads every row's every value, so the
    day is archived (and one that may not read some column is told which)."""
    role = f"{schema}_cols"
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, secret text, v int)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 's', 10), (2, %s, NULL, 20)").format(table), (DAY, DAY))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT (id, at, v) ON {} TO {}").format(table, sql.Identifier(role)))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as reader:
            with pytest.raises(ArchiveError) as refused:
                archive_partition(reader, spec, DAY, store, temp_dir=temp_dir)
            assert "secret" in str(refused.value) and not refused.value.retryable, str(refused.value)
            conn.execute(sql.SQL("GRANT SELECT (secret) ON {} TO {}").format(table, sql.Identifier(role)))
            result = archive_partition(reader, spec, DAY, store, temp_dir=temp_dir)
            assert result.rows == 2 and [c.name for c in result.columns] == ["id", "at", "secret", "v"]
            assert deep_verify(conn, store, spec, DAY) == []
            # several streams split by ctid, a system column the column grants do not cover: one stream then
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, repeat('x', 200), g FROM generate_series(3, 2000) g")
                         .format(table), (DAY,))
            more = archive_partition(reader, spec.model_copy(update={"parallel_streams": 2}), DAY, store,
                                     temp_dir=temp_dir, overwrite=True)
            assert more.rows == 2000
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("streams", [1, 2])
@pytest.mark.parametrize("kind", ["timestamptz", "timestamp", "date"])
def test_the_days_edges_in_the_tables_zone(kind, streams, conn, schema, store, temp_dir):
    """Europe/Berlin's 2024-03-31 (23 hours): its first instant is in, the next day's first is not;
    ±infinity and NULL days are in no day. With an index on the day column several streams split the
    day by time."""
    t = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at {})").format(t, sql.SQL(kind)))
    conn.execute(sql.SQL("CREATE INDEX ON {} (at)").format(t))
    conn.execute("SET TimeZone = 'Europe/Berlin'")
    values = {"timestamptz": ["2024-03-31 00:00", "2024-03-31 23:59:59.999999", "2024-04-01 00:00",
                              "2024-03-30 23:59:59.999999", "2024-03-31 03:30"],
              "timestamp": ["2024-03-31 00:00", "2024-03-31 23:59:59.999999", "2024-04-01 00:00",
                            "2024-03-30 23:59:59.999999", "2024-03-31 02:30"],
              "date": ["2024-03-31", "2024-03-31", "2024-04-01", "2024-03-30", "2024-03-31"]}[kind]
    rows = [(i, v) for i, v in enumerate([*values, "infinity", "-infinity", None])]
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s::{})").format(t, sql.SQL(kind)), rows)
    conn.execute(sql.SQL("INSERT INTO {} SELECT 100 + g, %s::{} FROM generate_series(1, 3000) g").format(
        t, sql.SQL(kind)), ("2024-03-31 12:00" if kind != "date" else "2024-03-31",))
    conn.execute("RESET TimeZone")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="csv",
                     timezone="Europe/Berlin", parallel_streams=streams)
    result = archive_partition(conn, spec, "2024-03-31", store, temp_dir=temp_dir)
    assert result.rows == 3000 + 3
    assert deep_verify(conn, store, spec, "2024-03-31") == []


EXTENSION_TYPES = {  # extension: (column type, values of rows 1..3)
    "hstore": ("hstore", ["'a=>1, \"b c\"=>NULL'", "''", "NULL"]),
    "citext": ("citext", ["'MiXeD'", "''", "NULL"]),
    "ltree": ("ltree", ["'a.b.c'", "''", "NULL"]),
    "cube": ("cube", ["'(1,2),(3,4)'", "'(0)'", "NULL"]),
    "isn": ("isbn13", ["'978-0-393-04002-9'", "NULL", "NULL"]),
    "seg": ("seg", ["'1.5 .. 2'", "'<1'", "NULL"]),
}


@pytest.fixture(scope="module")
def extensions(pg):
    """The contrib extensions, installed once in public (where CREATE EXTENSION puts their operators)."""
    with pg.connect() as admin:
        for name in EXTENSION_TYPES:
            admin.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {} SCHEMA public").format(sql.Identifier(name)))
    return list(EXTENSION_TYPES)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_extension_types_whose_operators_live_outside_pg_catalog_round_trip(fmt, extensions, conn, schema, store,
                                                                           temp_dir):
    """hstore, citext, ltree, cube, isbn13, seg and arrays of them: their operators (=, ...) are in the
    schema the extension was created in, not pg_catalog."""
    columns = {f"{name}_v": kind for name, (kind, _) in EXTENSION_TYPES.items()}
    columns |= {f"{name}_a": f"{kind}[]" for name, (kind, _) in EXTENSION_TYPES.items()}
    table = sql.Identifier(schema, "ext")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, {})").format(table, sql.SQL(", ").join(
        sql.SQL("{} public.{}").format(sql.Identifier(n), sql.SQL(k)) for n, k in columns.items())))
    for row in range(3):
        values = [sql.SQL(v[row]) for _, v in EXTENSION_TYPES.values()]
        arrays = [sql.SQL("ARRAY[{}, NULL]::public.{}[]").format(sql.SQL(v[0]), sql.SQL(k)) if row == 0 else
                  sql.SQL("NULL") for k, v in EXTENSION_TYPES.values()]
        conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, {}, {})").format(
            table, sql.Literal(row + 1), sql.Literal(DAY), sql.SQL(", ").join(values + arrays)))
    spec = TableSpec(name=f"{schema}.ext", day_column="at", start_date=DAY, format=fmt)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 3
    assert deep_verify(conn, store, spec, DAY) == []
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    names = ["id", "at", *columns]
    assert _texts(conn, sql.Identifier(schema, "back"), names) == _texts(conn, table, names)


@pytest.mark.parametrize("offset", [None, -60, 120])
@pytest.mark.parametrize("kind", sorted(ERROR_200))
def test_a_write_whose_answer_is_corrupted_on_the_way_is_retryable_and_leaves_nothing(
        s3, bucket, s3_client, temp_dir, kind, offset):
    import hashlib

    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    key = "archive/s.t/2024/03/2024-03-10.jsonl.zst"
    match, size = ERROR_200[kind]
    data = (hashlib.sha256(b"x").digest() * (size // 32 + 1))[:size]
    with FaultProxy(s3.endpoint_url) as proxy:
        store = S3Store(proxy.client(max_attempts=1), bucket, part_size=MIN_PART_SIZE, max_concurrency=2)
        fault = proxy.add(Fault(**match, action="flip_response_byte", offset=offset, times=None))
        try:
            _upload(store, key, data, temp_dir)
        except ArchiveError as exc:
            assert exc.retryable, str(exc)
            assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])] == []
        else:  # the flipped byte did not matter (e.g. inside XML white space): the object is whole
            assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert fault.hits >= 1
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(temp_dir.iterdir()) == []


def test_jsonl_does_not_call_a_users_cast_to_json_of_an_enum(conn, schema, store, temp_dir):
    """row_to_json writes a value through its type's cast to json when one exists, and the owner of an
    enum may create one: the archive then held the cast's output, which no restore reads back."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('sad', 'happy')").format(s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.mood_json({}.mood) RETURNS json LANGUAGE sql IMMUTABLE "
                         "AS $$ SELECT json_build_object('m', $1::text) $$").format(s, s))
    conn.execute(sql.SQL("CREATE CAST ({}.mood AS json) WITH FUNCTION {}.mood_json({}.mood)").format(s, s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, m {}.mood, ms {}.mood[], o int[])").format(s, s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'sad', '{{happy,NULL}}', '[0:0]={{1}}'), "
                         "(2, %s, NULL, NULL, NULL)").format(s), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert deep_verify(conn, store, spec, DAY) == []
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    names = ["id", "at", "m", "ms", "o"]
    assert _texts(conn, sql.Identifier(schema, "back"), names) == _texts(conn, sql.Identifier(schema, "ev"), names)
    assert result.encodings["m"]["exact"] and result.encodings["ms"]["exact"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_no_format_writes_an_enum_through_a_users_cast_to_text(fmt, conn, schema, store, temp_dir):
    """The owner of an enum may create a cast from it to text; ``label::text`` then calls that function
    instead of the enum's output. The archive must hold the labels, which the restore reads back."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('sad', 'happy')").format(s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.shout({}.mood) RETURNS text LANGUAGE sql IMMUTABLE "
                         "AS $$ SELECT 'LOUD' $$").format(s, s))
    conn.execute(sql.SQL("CREATE CAST ({}.mood AS text) WITH FUNCTION {}.shout({}.mood)").format(s, s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, m {}.mood, ms {}.mood[])").format(s, s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'sad', '{{happy,NULL,sad}}'), (2, %s, NULL, '{{}}'), "
                         "(3, %s, 'happy', NULL)").format(s), (DAY, DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert deep_verify(conn, store, spec, DAY) == []
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    names = ["id", "at", "m", "ms"]
    assert _texts(conn, sql.Identifier(schema, "back"), names) == _texts(conn, sql.Identifier(schema, "ev"), names)


def test_which_days_exist_is_not_decided_by_a_users_operator(conn, schema):
    """Column mode probes each candidate day with >= and <: a user's >= on the path must not make every
    day look like it has rows (the sensor would launch runs for them)."""
    from archive_pipeline.core.discovery import existing_days

    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
    first = DAY - dt.timedelta(days=2)
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(table), (first,))
    _shadowing_schema(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY - dt.timedelta(days=5))
    days = [DAY - dt.timedelta(days=i) for i in range(3)]
    assert [d.isoformat() for d in existing_days(conn, spec, days)] == [first.isoformat()]
    assert conn.execute("SHOW search_path").fetchone()[0] == f"{schema}, pg_catalog"  # the caller's, put back


@pytest.fixture(scope="module")
def sql_ascii_dsn(pg) -> str:
    """A SQL_ASCII database (it stores any bytes, as legacy databases do) with a day holding a value
    that is not UTF-8 ('caf' and LATIN1's é) among valid ones."""
    with pg.connect() as admin:
        admin.autocommit = True
        admin.execute("CREATE DATABASE legacy_bytes ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                      "TEMPLATE template0")
    dsn = psycopg.conninfo.make_conninfo(pg.dsn, dbname="legacy_bytes")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE ev (id int, at date, note text, fine text)")
        c.execute("INSERT INTO ev VALUES (1, %s, 'plain', 'a'), "
                  "(2, %s, convert_from('\\x636166e9'::bytea, 'SQL_ASCII'), 'b')", (DAY, DAY))
    return dsn


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_value_that_is_not_utf8_names_its_column_and_a_remedy_that_works(fmt, sql_ascii_dsn, store, temp_dir):
    """Every format reads text as UTF-8, so PostgreSQL refuses to send such a value in all of them: the
    error names the column and says to fix the value, not to try another format that fails alike."""
    from archive_pipeline.core.errors import UnsupportedTypeError
    from archive_pipeline.core.archive import render_key
    from archive_pipeline_tests.helpers import assert_nothing_left

    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format=fmt)
    with psycopg.connect(sql_ascii_dsn, autocommit=True) as c, pytest.raises(UnsupportedTypeError) as caught:
        archive_partition(c, spec, DAY, store, temp_dir=str(temp_dir))
    message = str(caught.value)
    assert "column 'note' (text)" in message and "cannot be sent as UTF-8" in message, message
    assert "archive this table as" not in message and "SQL_ASCII" in message, message
    assert caught.value.retryable is False and DAY.isoformat() in message
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
