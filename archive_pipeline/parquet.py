"""Parquet through Arrow, with no Python object per row or value.

adbc-driver-postgresql reads the day with binary COPY straight into typed Arrow record batches (in
C++, on a second connection that imports the archive transaction's snapshot), and pyarrow writes
each batch as a row group as soon as it arrives. Python only adjusts whole columns where ADBC's
mapping would lose meaning:

- ``numeric`` is read as PostgreSQL's exact text; declared ``numeric(p,s)`` becomes an Arrow/Parquet
  decimal, unconstrained numeric (and money) stays text so no digit is lost;
- ``date``/``timestamp[tz]`` ``±infinity`` are written as DuckDB does (the largest/smallest value
  of the type: int32/int64 max and -max), because ADBC's epoch shift wraps them around;
- ``interval`` becomes ``struct<months int32, days int32, microseconds int64>``, PostgreSQL's own
  three fields (Parquet cannot store Arrow's month_day_nano type);
- arrays become lists; a multi-dimensional array or one with a lower bound other than 1 cannot be
  a flat list faithfully and fails the partition with a message naming the column;
- other types (ranges, network, geometric, timetz, composite, enum) are written as their text.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql
from psycopg.conninfo import make_conninfo

from archive_pipeline import __version__
from archive_pipeline.errors import UnsupportedTypeError
from archive_pipeline.formats import ByteSink, Extraction, WriteStats, day_query
from archive_pipeline.source import Column, SourceTable, prefetch

# Types ADBC maps to an Arrow type that keeps their meaning.
_NATIVE = {"int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "bpchar", "name", "date",
           "timestamp", "timestamptz", "time", "interval", "uuid", "json", "jsonb", "bytea"}
_NATIVE_IN_ARRAYS = _NATIVE - {"interval"}

# ±infinity after ADBC adds the 1970->2000 epoch shift (10,957 days / 946,684,800 s) with wraparound.
_DATE_WRAPPED = {-2147472692: 2**31 - 1, -2147472691: -(2**31 - 1)}
_TIMESTAMP_WRAPPED = {-9222425352054775809: 2**63 - 1, -9222425352054775808: -(2**63 - 1)}
INTERVAL_TYPE = pa.struct([("months", pa.int32()), ("days", pa.int32()), ("microseconds", pa.int64())])
_LOSSY_PREFIX = "__archive_lossy_array_"
BATCH_BYTES = 4 << 20


def _expression(col: Column) -> sql.Composable:
    ident = sql.Identifier(col.name)
    if col.base_type == "money":
        return sql.SQL("{}::{}::{}").format(ident, sql.SQL(col.cast_name("numeric")), sql.SQL(col.cast_name("text")))
    native = _NATIVE_IN_ARRAYS if col.is_array else _NATIVE
    if col.base_type in native:
        return ident
    if col.is_array or col.base_type == "numeric" or col.is_enum:
        return sql.SQL("{}::{}").format(ident, sql.SQL(col.cast_name("text")))
    # concat() applies the type's own output function; a ::text cast can differ (inet adds its mask)
    return sql.SQL("CASE WHEN {c} IS NOT NULL THEN concat({c}) END").format(c=ident)


def arrow_query(table: SourceTable, where: sql.Composable) -> sql.Composed:
    items = [sql.SQL("{} AS {}").format(_expression(c), sql.Identifier(c.name)) for c in table.columns]
    for i, col in enumerate(table.columns):
        if col.is_array:
            ident = sql.Identifier(col.name)
            items.append(sql.SQL("coalesce(array_ndims({c}) > 1 OR array_lower({c}, 1) <> 1, false) AS {f}").format(
                c=ident, f=sql.Identifier(f"{_LOSSY_PREFIX}{i}")))
    return day_query(table, where, sql.SQL(", ").join(items))


def arrow_type(col: Column, read_type: pa.DataType) -> pa.DataType:
    """The archive's Arrow type of ``col``, given the type ADBC reads it as."""
    if col.base_type == "numeric" and not col.is_array and col.precision and (col.scale or 0) >= 0:
        if col.precision <= 38:
            return pa.decimal128(col.precision, col.scale or 0)
        if col.precision <= 76:
            return pa.decimal256(col.precision, col.scale or 0)
    if col.base_type == "interval" and not col.is_array:
        return INTERVAL_TYPE
    return read_type


def _fix_infinity(array: pa.Array, storage: pa.DataType, wrapped: dict[int, int]) -> pa.Array:
    ints = array.view(storage)
    low = pc.min(ints).as_py()
    if low is None or low > max(wrapped):
        return array  # no ±infinity in this batch: nothing to do
    for old, new in wrapped.items():
        ints = pc.if_else(pc.equal(ints, old), pa.scalar(new, storage), ints)
    return ints.view(array.type)


def _interval_struct(array: pa.Array) -> pa.Array:
    """Split Arrow's month_day_nano (int32, int32, int64 per value) into PostgreSQL's three fields."""
    data = array.buffers()[1]
    n, offset = len(array), array.offset
    as_int32 = pa.Array.from_buffers(pa.list_(pa.int32(), 4), n, [None],
                                     children=[pa.Array.from_buffers(pa.int32(), 4 * (n + offset), [None, data])],
                                     offset=offset)
    as_int64 = pa.Array.from_buffers(pa.list_(pa.int64(), 2), n, [None],
                                     children=[pa.Array.from_buffers(pa.int64(), 2 * (n + offset), [None, data])],
                                     offset=offset)
    micros = pc.divide(pc.list_element(as_int64, 1), pa.scalar(1000, pa.int64()))
    return pa.StructArray.from_arrays([pc.list_element(as_int32, 0), pc.list_element(as_int32, 1), micros],
                                      fields=list(INTERVAL_TYPE), mask=pc.is_null(array))


class _Converter:
    """Turns ADBC's record batches into the archive schema, column by column."""

    def __init__(self, table: SourceTable, read_schema: pa.Schema) -> None:
        self.table = table
        self.columns = list(table.columns)
        self.lossy = {i: read_schema.get_field_index(f"{_LOSSY_PREFIX}{i}") for i, c in enumerate(self.columns)
                      if c.is_array}
        fields = []
        for i, col in enumerate(self.columns):
            read = read_schema.field(i).type
            if isinstance(read, pa.BaseExtensionType) and read.extension_name == "arrow.opaque":
                read = read.storage_type
            fields.append(pa.field(col.name, arrow_type(col, read), nullable=not col.not_null,
                                   metadata={"PG_TYPE": col.type_name}))
        self.schema = pa.schema(fields, metadata={"archive_pipeline.version": __version__,
                                                  "archive_pipeline.source_table": table.qualified,
                                                  "archive_pipeline.pg_types": json.dumps(
                                                      {c.name: c.type_name for c in self.columns})})

    def convert(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        for i, flag in self.lossy.items():
            if pc.any(batch.column(flag)).as_py():
                col = self.columns[i]
                raise UnsupportedTypeError(
                    f"column {col.name!r} ({col.type_name}) of {self.table.qualified} holds a multi-dimensional "
                    "array or one whose lower bound is not 1, which a Parquet list cannot hold faithfully; "
                    "archive this table as jsonl or csv", table=self.table.qualified)
        return pa.RecordBatch.from_arrays([self._column(i, batch.column(i)) for i in range(len(self.columns))],
                                          schema=self.schema)

    def _column(self, i: int, array: pa.Array) -> pa.Array:
        col, target = self.columns[i], self.schema.field(i).type
        if isinstance(array.type, pa.BaseExtensionType) and array.type.extension_name == "arrow.opaque":
            array = array.storage
        if pa.types.is_date32(array.type):
            return _fix_infinity(array, pa.int32(), _DATE_WRAPPED)
        if pa.types.is_timestamp(array.type):
            return _fix_infinity(array, pa.int64(), _TIMESTAMP_WRAPPED)
        if target == INTERVAL_TYPE:
            return _interval_struct(array)
        if pa.types.is_decimal(target):
            try:
                return pc.cast(array, target)
            except pa.ArrowInvalid:
                raise UnsupportedTypeError(
                    f"column {col.name!r} ({col.type_name}) of {self.table.qualified} holds NaN or Infinity, which "
                    "a Parquet decimal cannot hold; archive this table as jsonl or csv (or declare the column as "
                    "unconstrained numeric, archived as exact text)", table=self.table.qualified) from None
        return array


class Parquet:
    name = "parquet"
    extension = "parquet"
    content_type = "application/vnd.apache.parquet"
    compresses_internally = True

    def __init__(self, compression: str = "zstd", level: int | None = None) -> None:
        self.compression = compression
        self.level = level

    def _open_reader(self, extraction: Extraction):
        """A second connection, in the archive transaction's snapshot, streaming Arrow batches."""
        import adbc_driver_postgresql.dbapi as adbc

        info = extraction.conn.info
        dsn = make_conninfo(info.dsn, password=info.password) if info.password else info.dsn
        conn = adbc.connect(dsn, autocommit=True)
        cur = conn.cursor()
        # Smaller batches than ADBC's 16 MiB default keep the peak memory well under 100 MB (measured
        # in bench/) at the same speed; each batch becomes one row group.
        cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        literal = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(extraction.snapshot.snapshot_id))
        cur.execute(literal.as_string(extraction.conn))
        for name, value in extraction.settings.items():
            setting = sql.SQL("SELECT set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
            cur.execute(setting.as_string(extraction.conn))
        cur.execute(arrow_query(extraction.table, extraction.where).as_string(extraction.conn))
        return conn, cur, cur.fetch_record_batch()

    def write(self, extraction: Extraction, out: ByteSink) -> WriteStats:
        conn, cur, reader = self._open_reader(extraction)
        try:
            converter = _Converter(extraction.table, reader.schema)
            stats = WriteStats(output_types={f.name: str(f.type) for f in converter.schema})
            codec = "none" if self.compression == "none" else self.compression
            with pq.ParquetWriter(out, converter.schema, compression=codec, compression_level=self.level,
                                  store_schema=True) as writer:
                for batch in prefetch(iter(reader), depth=2):
                    converted = converter.convert(batch)
                    writer.write_batch(converted)
                    stats.rows += converted.num_rows
                    stats.bytes += converted.nbytes
                    extraction.report(stats)
            return stats
        finally:
            cur.close()
            conn.close()
