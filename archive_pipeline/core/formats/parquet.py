"""Parquet through Arrow, with no Python object per row or value.

adbc-driver-postgresql reads the day with binary COPY straight into typed Arrow record batches (in
C++, on a second connection that imports the archive transaction's snapshot), and pyarrow writes
each batch as a row group as soon as it arrives. Python only adjusts whole columns where ADBC's
mapping would lose meaning, and every value is either exact or refused:

- ``numeric`` is read as PostgreSQL's exact text; declared ``numeric(p,s)`` with 0 <= s <= p <= 76
  becomes an Arrow/Parquet decimal (NaN/±Infinity refused), anything else (and money) stays text;
- ``date``/``timestamp[tz]`` ``±infinity`` are written as DuckDB does (the largest/smallest value
  of the type: int32/int64 max and -max), because ADBC's epoch shift wraps them around; a
  timestamp after 294247-01-10 04:00:54.775806 (Arrow's end, whose last microsecond is +infinity's
  encoding) wraps too and is refused; ``time '24:00'`` (Arrow reads it as 00:00) is refused;
- ``interval`` becomes ``struct<months int32, days int32, microseconds int64>``, PostgreSQL's own
  three fields (Parquet cannot store Arrow's month_day_nano type); one whose time part overflows
  ADBC's nanoseconds is refused;
- arrays of the types above become lists (numeric, money and enum elements as exact text); a
  multi-dimensional array or one with a lower bound other than 1 cannot be a list faithfully and
  is refused; arrays of other types are their whole literal, bounds and all;
- other types (ranges, network, geometric, timetz, composite, enum) are written as the type's
  output (a composite with a NULL field included).

Per-row refusals detected in SQL travel in one int flag column (the query's last), so a table of
any width stays within PostgreSQL's 1,664 select-list entries; the refused value itself is read as
NULL so that ADBC cannot fail on it first.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from archive_pipeline import __version__
from archive_pipeline.core import fingerprint
from archive_pipeline.core.errors import ArchiveError, UnsupportedTypeError, snapshot_gone
from archive_pipeline.core.formats.big_values import holding_big_values
from archive_pipeline.core.formats.common import REFUSALS as COPY_REFUSALS
from archive_pipeline.core.formats.common import (
    READ_AHEAD_BYTES,
    ByteSink,
    Extraction,
    WriteStats,
    inside_refusals,
    day_query,
    element_texts,
    encoding,
    explain_value_failure,
    failing_columns,
    is_value_failure,
    output_text,
    refuse_inexact,
    refusal_remedy,
    refused_column,
    xml_text,
)
from archive_pipeline.core.session_settings import act_as, apply_settings, pinned_options, switched_role, \
    unpinned_defaults, watch_client_through
from archive_pipeline.core.streams import Spool, StreamGroup, spools
from archive_pipeline.core.source import Column, SourceTable, lock_day, prefetch, same_members

# Types ADBC maps to an Arrow type that keeps their meaning.
_NATIVE = {"int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "bpchar", "name", "date",
           "timestamp", "timestamptz", "time", "interval", "uuid", "json", "jsonb", "bytea"}
_NATIVE_IN_ARRAYS = _NATIVE - {"interval"}

# ±infinity after ADBC adds the 1970->2000 epoch shift (10,957 days / 946,684,800 s) with wraparound.
_DATE_WRAPPED = {-2147472692: 2**31 - 1, -2147472691: -(2**31 - 1)}
_TIMESTAMP_WRAPPED = {-9222425352054775809: 2**63 - 1, -9222425352054775808: -(2**63 - 1)}
# PostgreSQL's earliest timestamp (4714-11-24 BC) in Unix microseconds: anything below it that is not
# a wrapped infinity is a timestamp after 294247-01-10 (Arrow's end) that wrapped around.
_TIMESTAMP_MIN = -211813488000000000 + 946684800000000
_TIME_END = 86_400_000_000  # time '24:00:00' is legal in PostgreSQL; Arrow's time64 wraps it to 00:00
INTERVAL_TYPE = pa.struct([("months", pa.int32()), ("days", pa.int32()), ("microseconds", pa.int64())])
# ADBC reads an interval's time as nanoseconds (int64): microseconds beyond this overflow (ADBC fails).
_INTERVAL_MAX = sql.SQL("interval '9223372036.854775 seconds'")
_REFUSE_FLAG = "__archive_pipeline_refuse"
BATCH_BYTES = 4 << 20
# A batch this big holds a big row. While the session that read it is open (more rows may follow),
# the batch and what follows go to a spool file and are written once the session is closed:
# ADBC keeps buffers as big as the largest row (libpq's and its own, 2.2x the row measured) for as
# long as the session is open, and the writer needs 2.5x the row more (#11 §5).
HOLD_BYTES = READ_AHEAD_BYTES
# The later parallel streams' spools (Arrow IPC): LZ4 halved them on the bench day at no measurable
# cost, against 4x the object's size uncompressed. A held big batch (stream 0) is spooled as it is:
# compressing it would hold a compressed copy of the big row in memory as well.
SPOOL_COMPRESSION = "lz4"

# Value-level refusals: reason -> what is wrong with the value.
REFUSALS = {
    "array_shape": "holds a multi-dimensional array or one whose lower bound is not 1, which a Parquet list "
                   "cannot hold faithfully",
    "interval_range": "holds an interval whose time part exceeds ±2^63 nanoseconds (about 292 years), more "
                      "than Arrow's interval can hold",
    "timestamp_range": "holds a timestamp after 294247-01-10 04:00:54.775806 UTC, beyond Arrow's "
                       "timestamp[us] (the last one is the encoding of +infinity)",
    "time_24": "holds time '24:00:00', which Arrow's time64 reads back as 00:00:00",
    "decimal_special": "holds NaN or Infinity, which a Parquet decimal cannot hold",
    "reg_ambiguous": COPY_REFUSALS["reg_ambiguous"],
    "xml_rewritten": COPY_REFUSALS["xml_rewritten"],
}
_REASON_CODES = {"array_shape": 0, "interval_range": 1, "reg_ambiguous": 2, "xml_rewritten": 3}


def _listed_as_text(col: Column) -> bool:
    """Arrays read as list<string> of each element's exact text (printed element by element)."""
    return col.is_array and not col.nested and (col.base_type in ("numeric", "money") or col.is_enum)


def _expression(col: Column) -> sql.Composable:
    expr = _read_expression(col)
    refusals = _refusal_conditions(col)
    if not refusals:
        return expr
    # ADBC itself fails on some of these values (a lower bound other than 0 or 1, an interval beyond
    # its nanoseconds) before the flag column could be seen: read them as NULL, the flag refuses the day.
    return sql.SQL("CASE WHEN {} THEN NULL ELSE {} END").format(
        sql.SQL(" OR ").join(condition for condition, _ in refusals), expr)


def _read_expression(col: Column) -> sql.Composable:
    ident = sql.Identifier(col.name)
    if col.base_type == "xml":
        return xml_text(col)  # the stored text, XML declaration and all (xml's output drops or rewrites it)
    if col.nested:  # an array of arrays (through a domain): its whole literal, as any type without an encoding
        return output_text(ident)
    if col.base_type == "money":  # as numeric, printed by numeric's output (never a DBA's numeric-to-text cast)
        return _printed_elements(ident, "::pg_catalog.numeric") if col.is_array else \
            output_text(sql.SQL("{}::pg_catalog.numeric").format(ident))
    native = _NATIVE_IN_ARRAYS if col.is_array else _NATIVE
    if col.base_type in native:
        return ident
    if col.base_type == "numeric" or col.is_enum:
        # numeric_out / enum_out, element by element for an array (list<string>): by the output function, never
        # ``::text``, which would call a cast to text of the type (an owner's or a DBA's) that the catalog has as
        # the query runs, one created while the day is read included (see element_texts)
        return output_text(ident) if not col.is_array else element_texts(ident)
    # everything else, arrays of it included, as the type's output (an array as its whole literal,
    # bounds and all; a text[] cast would apply text casts that differ from the output, e.g. inet's)
    return output_text(ident)


def _printed_elements(array: sql.Composable, cast: str = "") -> sql.Composed:
    """An array as the list of its elements' texts by their output function (``cast`` applied to each first),
    NULL elements kept: what ``::text[]`` gives unless a cast to text replaces the output function."""
    return sql.SQL("CASE WHEN {c} IS NOT NULL THEN ARRAY(SELECT CASE WHEN e IS NOT NULL THEN pg_catalog.concat(e{cast}) "
                   "END FROM pg_catalog.unnest({c}) WITH ORDINALITY AS u(e, i) ORDER BY i) END").format(
        c=array, cast=sql.SQL(cast))


def _refusal_conditions(col: Column) -> list[tuple[sql.Composable, str]]:
    """The per-row conditions (with their reasons) under which ``col``'s value cannot be archived exactly in
    Parquet."""
    ident = sql.Identifier(col.name)
    if col.is_array and ((col.base_type in _NATIVE_IN_ARRAYS and not col.nested) or _listed_as_text(col)):
        # a list has neither bounds nor dimensions: ADBC would silently flatten such an array
        return [(sql.SQL("pg_catalog.array_ndims({c}) > 1 OR pg_catalog.array_lower({c}, 1) <> 1").format(c=ident),
                 "array_shape")]
    if col.base_type == "interval" and not col.is_array:
        return [(sql.SQL("({c} - pg_catalog.date_trunc('day', {c})) NOT BETWEEN -{m} AND {m}").format(c=ident, m=_INTERVAL_MAX),
                 "interval_range")]
    return inside_refusals(col)


def refusal_flag(table: SourceTable) -> sql.Composable | None:
    """One int column for all per-row refusals: ``4 * column index + reason`` of the row's first refused
    value, NULL when the row is fine. One target entry whatever the width of the table, so a table of
    1,600 columns stays within PostgreSQL's 1,664 target entries."""
    cases = []
    for i, col in enumerate(table.columns):
        for condition, reason in _refusal_conditions(col):
            cases.append(sql.SQL("CASE WHEN {} THEN {} END").format(
                condition, sql.Literal(4 * i + _REASON_CODES[reason])))
    if not cases:
        return None
    return sql.SQL("COALESCE({})").format(sql.SQL(", ").join(cases)) if len(cases) > 1 else cases[0]


MAX_TARGET_ENTRIES = 1664  # PostgreSQL's limit on a query's select list


def arrow_query(table: SourceTable, where: sql.Composable) -> sql.Composed:
    items = [sql.SQL("{} AS {}").format(_expression(c), sql.Identifier(c.name)) for c in table.columns]
    flag = refusal_flag(table)
    if flag is not None:
        if len(items) + 1 > MAX_TARGET_ENTRIES:  # only a view can be this wide (tables stop at 1,600)
            raise UnsupportedTypeError(
                f"{table.qualified} has {len(items)} columns; Parquet needs one more in its query and PostgreSQL "
                f"allows {MAX_TARGET_ENTRIES}; archive it as jsonl or csv", table=table.qualified, retryable=False)
        items.append(sql.SQL("{} AS {}").format(flag, sql.Identifier(_REFUSE_FLAG)))
    return day_query(table, where, sql.SQL(", ").join(items))


def parquet_encodings(table: SourceTable) -> dict[str, dict]:
    """How each column is stored, known before reading (all exact: what is not is refused per value)."""
    out = {}
    for col in table.columns:
        base, arr = col.base_type, col.is_array
        if col.nested and base != "xml":  # an array of arrays: its literal (see _read_expression)
            enc = encoding("string: PostgreSQL array literal")
        elif _listed_as_text(col):
            enc = encoding("list<string> (each element's exact text; multi-dimensional or lower bound other "
                           "than 1: refused)", note="money as numeric; 2 fraction digits (lc_monetary C)"
                           if base == "money" else "")
        elif base == "money":
            enc = encoding("string: numeric digits of the amount",
                           note="money as numeric; 2 fraction digits (lc_monetary C)")
        elif base == "xml":
            enc = encoding("string: PostgreSQL array literal of the xml texts as stored" if arr
                           else "string: the xml text as stored", note="read back with xml's input")
        elif arr and base not in _NATIVE_IN_ARRAYS:
            enc = encoding("string: PostgreSQL array literal")
        elif arr:
            enc = encoding(f"list<{_native_description(base)}> (NULL elements kept; multi-dimensional or "
                           "lower bound other than 1: refused)")
        elif base == "numeric":
            t = arrow_type(col, pa.string())
            enc = encoding(f"{t}" if pa.types.is_decimal(t) else "string: exact numeric digits",
                           note="NaN/±Infinity refused" if pa.types.is_decimal(t) else "")
        elif base in _NATIVE:
            enc = encoding(_native_description(base))
        elif col.is_enum:
            enc = encoding("string: enum label")
        else:
            enc = encoding("string: the type's output", note="read back with the type's input function")
        out[col.name] = enc
    return out


def _native_description(base: str) -> str:
    return {"int2": "int16", "int4": "int32", "int8": "int64", "float4": "float32 (NaN, ±inf, -0 kept)",
            "float8": "float64 (NaN, ±inf, -0 kept)", "bool": "bool", "bytea": "binary", "uuid": "arrow.uuid",
            "json": "arrow.json string (json text as stored)", "jsonb": "arrow.json string (jsonb's text)",
            "date": "date32 (±infinity as ±2147483647 days)",
            "timestamp": "timestamp[us] (±infinity as ±(2^63-1); after 294247-01-10: refused)",
            "timestamptz": "timestamp[us, UTC] (±infinity as ±(2^63-1); after 294247-01-10: refused)",
            "time": "time64[us] (24:00:00: refused)",
            "interval": "struct<months int32, days int32, microseconds int64>",
            }.get(base, "string")


def arrow_type(col: Column, read_type: pa.DataType) -> pa.DataType:
    """The archive's Arrow type of ``col``, given the type ADBC reads it as.

    A Parquet decimal needs 0 <= scale <= precision; PostgreSQL 15 also allows a negative scale
    (numeric(5,-2)) or one above the precision (numeric(3,5)): those stay exact text.
    """
    if col.base_type == "numeric" and not col.is_array and col.precision and 0 <= (col.scale or 0) <= col.precision:
        if col.precision <= 38:
            return pa.decimal128(col.precision, col.scale or 0)
        if col.precision <= 76:
            return pa.decimal256(col.precision, col.scale or 0)
    if col.base_type == "interval" and not col.is_array:
        return INTERVAL_TYPE
    canonical = _CANONICAL.get(col.base_type) if not col.nested else None
    if canonical is not None:  # the same archive whichever version of the driver read it (see _canonical)
        return pa.list_(canonical) if pa.types.is_list(read_type) else canonical
    return read_type


# uuid, json and jsonb are archived as Arrow's canonical extension types. adbc-driver-postgresql 1.9+
# reads them so; 1.8 (pinned: see pyproject.toml) reads a uuid as an opaque 16-byte binary and json as a
# plain string. Either way the archive has one schema.
_CANONICAL = {"uuid": pa.uuid(), "json": pa.json_(pa.string()), "jsonb": pa.json_(pa.string())}


def _canonical(array: pa.Array, target: pa.ExtensionType) -> pa.Array:
    """``array`` (a value array as either driver version reads it) as ``target``'s extension array."""
    if isinstance(array.type, pa.BaseExtensionType):
        if array.type == target:
            return array
        array = array.storage
    if array.type != target.storage_type:
        array = pc.cast(array, target.storage_type)  # uuid: binary of 16 bytes each (else ArrowInvalid)
    return pa.ExtensionArray.from_storage(target, array)


def _on_values(array: pa.Array, fix) -> pa.Array:
    """Apply ``fix`` to a column's values, or to a list column's elements (same offsets and NULLs)."""
    if pa.types.is_list(array.type):
        values = array.values
        fixed = fix(values)
        if fixed is values:
            return array
        list_type = array.type if fixed.type == values.type else pa.list_(fixed.type)
        return pa.ListArray.from_arrays(array.offsets, fixed, type=list_type,
                                        mask=array.is_null() if array.null_count else None)
    return fix(array)


def _fix_infinity(array: pa.Array, storage: pa.DataType, wrapped: dict[int, int]) -> pa.Array:
    ints = array.view(storage)
    low = pc.min(ints).as_py()
    if low is None or low > max(wrapped):
        return array  # no ±infinity in this batch: nothing to do
    for old, new in wrapped.items():
        ints = pc.if_else(pc.equal(ints, old), pa.scalar(new, storage), ints)
    return ints.view(array.type)


def _timestamps_in_range(array: pa.Array) -> bool:
    """False when a timestamp lies beyond Arrow's timestamp[us]: it wrapped around below PostgreSQL's
    first timestamp, or it is Arrow's last one, which stands for +infinity here."""
    bounds = pc.min_max(array.view(pa.int64()))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None:
        return True
    if high == 2**63 - 1:
        return False
    if low >= _TIMESTAMP_MIN:
        return True
    ints = array.view(pa.int64())
    wrapped = pc.and_(pc.less(ints, _TIMESTAMP_MIN),
                      pc.invert(pc.is_in(ints, pa.array(list(_TIMESTAMP_WRAPPED), pa.int64()))))
    return not pc.any(wrapped).as_py()


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

    def __init__(self, table: SourceTable, read_schema: pa.Schema, format_name: str = "parquet") -> None:
        self.table = table
        self.columns = list(table.columns)
        # the flag is the query's last column (by position: a table may have a column of the same name)
        self.flag = len(self.columns) if len(read_schema) > len(self.columns) else -1
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

    def refuse(self, i: int, reason: str) -> UnsupportedTypeError:
        col = self.columns[i]
        return UnsupportedTypeError(
            f"{refused_column(col, reason)} of {self.table.qualified} {REFUSALS[reason]}; "
            f"{refusal_remedy(reason, 'parquet')}", table=self.table.qualified, retryable=False)

    def convert(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.flag >= 0:
            flags = batch.column(self.flag)
            if flags.null_count < len(flags):
                code = pc.min(flags).as_py()
                reason = {v: k for k, v in _REASON_CODES.items()}[code % 4]
                raise self.refuse(code // 4, reason)
        return pa.RecordBatch.from_arrays([self._column(i, batch.column(i)) for i in range(len(self.columns))],
                                          schema=self.schema)

    def _column(self, i: int, array: pa.Array) -> pa.Array:
        col, target = self.columns[i], self.schema.field(i).type
        canonical = _CANONICAL.get(col.base_type) if not col.nested else None
        if canonical is not None:
            return _on_values(array, lambda a: _canonical(a, canonical))
        if isinstance(array.type, pa.BaseExtensionType) and array.type.extension_name == "arrow.opaque":
            array = array.storage
        value_type = array.type.value_type if pa.types.is_list(array.type) else array.type
        if pa.types.is_date32(value_type):
            return _on_values(array, lambda a: _fix_infinity(a, pa.int32(), _DATE_WRAPPED))
        if pa.types.is_timestamp(value_type):
            def fix(a: pa.Array) -> pa.Array:
                if not _timestamps_in_range(a):
                    raise self.refuse(i, "timestamp_range")
                return _fix_infinity(a, pa.int64(), _TIMESTAMP_WRAPPED)
            return _on_values(array, fix)
        if pa.types.is_time64(value_type):
            def check(a: pa.Array) -> pa.Array:
                high = pc.max(a.view(pa.int64())).as_py()
                if high is not None and high >= _TIME_END:
                    raise self.refuse(i, "time_24")
                return a
            return _on_values(array, check)
        if target == INTERVAL_TYPE:
            return _interval_struct(array)
        if pa.types.is_decimal(target):
            try:
                return pc.cast(array, target)
            except pa.ArrowInvalid:
                raise UnsupportedTypeError(
                    f"column {col.name!r} ({col.type_name}) of {self.table.qualified} {REFUSALS['decimal_special']}; "
                    "archive this table as jsonl or csv (or declare the column as unconstrained numeric, "
                    "archived as exact text)", table=self.table.qualified, retryable=False) from None
        return array


_DICTIONARY_TYPES = {"text", "varchar", "bpchar", "name"}


def dictionary_columns(columns: Sequence[Column]) -> list[str]:
    """Columns (Parquet column paths) that get dictionary encoding: enum labels and text, arrays too.

    Arrow's writer dictionary-encodes every column by default, and each ~4 MiB batch is its own row
    group, so a column of distinct values (ids, timestamps, uuids, amounts, json) is written as a
    dictionary as large as the values plus the indices: on the benchmark day that made the file
    25% bigger (31.5 against 25.1 MB with zstd) and cost ~0.2 s more CPU per 1M rows. Labels, which
    repeat, keep it (readers filter on their dictionaries); booleans are bit-packed anyway.
    """
    return [f"{c.name}.list.element" if c.is_array else c.name
            for c in columns if (c.is_enum or c.base_type in _DICTIONARY_TYPES) and not c.nested]


def _codecs(schema: pa.Schema, codec: str, level: int | None,
            uncompressed: set[str]) -> tuple[str | dict[str, str], int | dict[str, int] | None]:
    """The writer's ``compression`` and ``compression_level``: the file's, or per leaf column where a
    column holding big values is written without a codec (see :func:`big_values.holding_big_values`).
    Arrow's per-column settings are keyed by Parquet leaf paths ("tags.list.element"), a leaf left
    out gets no codec, and a level given to an uncompressed leaf is an error: so every leaf is named,
    as Arrow's own schema conversion names it, and the level only where there is a codec."""
    if not uncompressed or codec == "none":
        return codec, level
    empty = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_batches([], schema), empty)  # (an extension list type has no empty_table)
    leaves = [leaf.path for leaf in pq.ParquetFile(pa.BufferReader(empty.getvalue())).schema]
    compressed = [path for path in leaves if path not in uncompressed]
    return ({path: codec if path in compressed else "none" for path in leaves},
            None if level is None else {path: level for path in compressed})


def statistics_columns(schema: pa.Schema) -> list[str]:
    """Columns that get Parquet min/max statistics: fixed-width ones only.

    Statistics of a string or binary column copy its smallest and largest value several times
    while a row group is written: one 100 MiB value cost ~400 MB more RSS with them (#11 §5), and
    min/max of long texts prune little anyway.
    """
    def fixed(t: pa.DataType) -> bool:
        if isinstance(t, pa.BaseExtensionType):
            t = t.storage_type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return fixed(t.value_type)
        if pa.types.is_struct(t):
            return all(fixed(f.type) for f in t)
        return not (pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t)
                    or pa.types.is_large_binary(t))
    return [f.name for f in schema if fixed(f.type)]


_TRANSIENT_WORDS = ("timeout", "terminat", "connection", "cancel", "server closed", "shutdown", "could not",
                    "serializ", "deadlock", "lock")


def _may_be_value_failure(exc: BaseException) -> bool:
    """An ADBC error that may be PostgreSQL failing on a value (its text has the server's ERROR but no
    SQLSTATE); worth one probe, unless it reads like a transient failure."""
    text = str(exc).lower()
    return ("error:" in text or "readrecord failed" in text) and not any(w in text for w in _TRANSIENT_WORDS)


def _fingerprint_here(cur, extraction: Extraction) -> None:
    """The day's fingerprint in the reader's own transaction (see ``Extraction.fingerprint_in_reader``), under
    the fingerprint's settings in a savepoint whose rollback restores the read's (postgres_fdw keeps its remote
    transaction, and so its snapshot, across a savepoint's rollback)."""
    conn, table = extraction.conn, extraction.table
    started = time.perf_counter()
    cur.execute("SAVEPOINT archive_fingerprint")
    apply_settings(lambda statement: cur.execute(statement.as_string(conn)), fingerprint.CANONICAL_SETTINGS)
    cur.execute(fingerprint.fingerprint_query(table.identifier, table.columns, extraction.where,
                                              encoding=fingerprint.server_encoding(conn)).as_string(conn))
    rows, hash_sum = cur.fetchone()
    cur.execute("ROLLBACK TO SAVEPOINT archive_fingerprint")
    extraction.fingerprint = fingerprint.Fingerprint(rows=int(rows), hash_sum=str(hash_sum))
    extraction.fingerprint_seconds = time.perf_counter() - started
    extraction.expected_rows = extraction.fingerprint.rows


def _adbc_connect(adbc, dsn: str, pinned: dict[str, str]):
    """ADBC's connection, with ``pinned`` (:func:`~archive_pipeline.core.session_settings.unpinned_defaults`)
    set from its start (libpq ``options``, after the DSN's own): ADBC reads every type's receive function by
    name when it connects, and a role with quote_all_identifiers on printed those names quoted (ADBC then knew
    no type: an interval column failed with ArrowInvalid); and it reads them in a transaction of the role's
    default isolation, which a serializable default made wait for a safe snapshot, or fail on a hot standby."""
    return adbc.connect(make_conninfo(dsn, options=pinned_options(dsn, pinned)), autocommit=True)


# Connection options of libpq 17 and 18 (psycopg's) that the libpq 16 inside adbc-driver-postgresql refuses
# ("invalid connection option"), with the values that change nothing at protocol 3.0, which libpq 16 speaks:
# left out for the Parquet reader. Another value asks for what libpq 16 cannot do: refused, naming it.
_NEWER_LIBPQ_OPTIONS = {"max_protocol_version": {"3.0", "latest"}, "min_protocol_version": {"3.0"},
                        "sslnegotiation": {"postgres"}, "sslkeylogfile": None, "oauth_issuer": set(),
                        "oauth_client_id": set(), "oauth_client_secret": set(), "oauth_scope": set()}


def _for_adbc_libpq(dsn: str, table: SourceTable) -> str:
    """``dsn`` without the options the Parquet reader's libpq 16 does not know (see _NEWER_LIBPQ_OPTIONS)."""
    params = conninfo_to_dict(dsn)
    for option, harmless in _NEWER_LIBPQ_OPTIONS.items():
        value = params.get(option)
        if value is None:
            continue
        if harmless is not None and str(value) not in harmless:
            raise UnsupportedTypeError(
                f"the connection option {option}={value} of ARCHIVE_PG_DSN asks for what the Parquet reader's libpq "
                f"(16, inside adbc-driver-postgresql) cannot do; remove it, or archive {table.qualified} as csv or "
                "jsonl", table=table.qualified, retryable=False)
        del params[option]
    return make_conninfo(**params)


class Parquet:
    name = "parquet"
    extension = "parquet"
    content_type = "application/vnd.apache.parquet"
    compresses_internally = True
    reads_in_own_session = True  # ADBC's connection, which imports the archive's snapshot
    text_escapes: tuple[tuple[str, int], ...] = ()  # (a string is stored as its bytes)

    def __init__(self, compression: str = "zstd", level: int | None = None) -> None:
        self.compression = compression
        self.level = level

    @staticmethod
    def row_overhead(table: SourceTable) -> int:
        """Nothing beyond the row's text: dictionaries, run lengths and bit packing write most columns in fewer
        bytes than their text (the estimate's margin covers plain small integers)."""
        return 0

    def _open_reader(self, extraction: Extraction):
        """A second connection, acting as the archive's session's role (see ``session_settings.switched_role``), in
        the archive transaction's snapshot (imported, the day's locks taken, the read's settings set), its query not
        started yet (see :meth:`_start_reader`): returns the connection and its cursor."""
        import adbc_driver_postgresql.dbapi as adbc

        info = extraction.conn.info
        # UTF-8, as ADBC sends the query: in a LATIN1 database the session's default encoding read the query's
        # 'événements' as 'Ã©vÃ©nements', a table that does not exist
        secret = {"password": info.password} if info.password else {}
        dsn = make_conninfo(_for_adbc_libpq(info.dsn, extraction.table), client_encoding="UTF8", **secret)
        pinned = unpinned_defaults(extraction.conn)
        switched = switched_role(extraction.conn)  # (a SET ROLE of the caller's: this session takes it over)
        conn = _connect_unless_stopped(lambda: _adbc_connect(adbc, dsn, pinned))
        cur = conn.cursor()
        try:
            act_as(lambda statement: cur.execute(statement.as_string(extraction.conn)), switched)
            # Smaller batches than ADBC's 16 MiB default keep the peak memory well under 100 MB (measured
            # in bench/) at the same speed; each batch becomes one row group.
            cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
            # killed mid-read, the server notices and ends the session, as it does a text stream's
            watch_client_through(cur.execute, info.server_version)
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            literal = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(extraction.snapshot.snapshot_id))
            try:
                cur.execute(literal.as_string(extraction.conn))
            except Exception as exc:  # noqa: BLE001 - ADBC's error types: decided by the SQLSTATE it carries
                gone = snapshot_gone(exc)
                if gone is exc:
                    raise
                raise gone from None
            lock_day(cur.execute, extraction.table, extraction.where, extraction.conn)
            apply_settings(lambda statement: cur.execute(statement.as_string(extraction.conn)), extraction.settings)
            return conn, cur
        except BaseException:
            # close now: left to the garbage collector, a failed reader's connection outlives the run
            cur.close()
            conn.close()
            raise

    @staticmethod
    def _start_reader(cur, extraction: Extraction):
        """The reader's query (after the day's fingerprint, where it is taken in the reader: see
        ``Extraction.fingerprint_in_reader``), in the snapshot its session imported; its batch reader."""
        if extraction.fingerprint_in_reader:
            _fingerprint_here(cur, extraction)
        cur.execute(arrow_query(extraction.table, extraction.where).as_string(extraction.conn))
        return cur.fetch_record_batch()  # ADBC read the first rows in execute: a value failure can surface already

    def _open_readers(self, extraction: Extraction, parts: list[Extraction], readers: _Readers) -> None:
        """Every stream's reader, its query started. The coordinator lets its snapshot go as soon as every reader
        has imported it and taken the day's locks, before any query is started: ADBC's execute returns once the
        first rows have come, which a range whose first pages hold other days' rows makes a long wait, and the
        coordinator sat idle in its transaction for the sum of those waits (idle_in_transaction_session_timeout
        ended it, and the day failed at every attempt). The queries start together, each in a thread of its own;
        the readers are opened one after the other in one (each asks the coordinator's session for its settings,
        which one thread at a time may use): see :func:`_off_the_main_thread`."""
        stop = threading.Event()  # the wait interrupted: open no more readers

        def import_all() -> None:
            _opening_stopped.set(stop)  # (this thread's context: a connect under way is abandoned on stop)
            for i, part in enumerate(parts):  # a connect, an import, a lock wait of IMPORT_LOCK_WAIT_MS at most
                if stop.is_set():
                    return
                readers.opened(i, *self._open_reader(part))

        _off_the_main_thread([import_all], [stop.set])
        if extraction.expected_rows is not None or extraction.fingerprint_in_reader:
            # The readers planned the day in sessions of their own, after the day's locks, and the first stops
            # at the fingerprint's count (_until_expected): a partition attached meanwhile (ATTACH takes no lock
            # they wait for) was read in place of the day's last rows, the count agreeing. Asked in the
            # snapshot, before it is let go, so its own session does not sit idle in it for the whole read. (A
            # fingerprint taken in the reader is taken after that: no session alongside asks it after the read.)
            same_members(extraction.conn, extraction.table, extraction.where)
        extraction.snapshot.release()

        def started(i: int) -> Callable[[], None]:
            return lambda: readers.started(i, self._start_reader(readers.cursors[i], parts[i]))

        _off_the_main_thread([started(i) for i in range(len(parts))], readers.cancels())

    def encodings(self, table: SourceTable) -> dict[str, dict]:
        """Per column {"encoding", "exact", "note"}, known before anything is read."""
        return parquet_encodings(table)

    def write(self, extraction: Extraction, out: ByteSink) -> WriteStats:
        return self.write_streams(extraction, [extraction], out)

    def write_streams(self, extraction: Extraction, parts: list[Extraction], out: ByteSink,
                      temp_dir: str | None = None) -> WriteStats:
        """The day as one Parquet file from one or more streams (``parts``, each a range of the day in
        the snapshot of ``extraction``): row groups in stream order, whatever order they are read in."""
        table = extraction.table
        encodings = self.encodings(table)
        if extraction.strict:
            refuse_inexact(self.name, table, encodings)
        try:
            return self._write(extraction, parts, out, encodings, temp_dir)
        except ArchiveError:  # ours, typed already (a refusal, a snapshot gone before a reader imported it)
            raise
        except Exception as exc:
            if not (is_value_failure(exc) or _may_be_value_failure(exc)):
                raise
            # PostgreSQL failed on a value while ADBC read it (ADBC's errors carry no SQLSTATE): find the
            # column, and PostgreSQL's own error, with the archive's connection (its snapshot was handed to
            # ADBC and released, so the probe runs in a transaction of its own).
            probes = [_expression(c) for c in table.columns]
            conn = extraction.conn
            idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with conn.transaction() if idle else contextlib.nullcontext():
                culprits, failure = failing_columns(conn, table, extraction.where, probes)
            if failure is None and not is_value_failure(exc):
                raise
            raise explain_value_failure(self.name, table, failure or exc, culprits) from None

    def _write(self, extraction: Extraction, parts: list[Extraction], out: ByteSink, encodings: dict[str, dict],
               temp_dir: str | None) -> WriteStats:
        # in the coordinator's snapshot, which it lets go once every reader holds it and the day's locks
        uncompressed = {c.name for c in holding_big_values(extraction.conn, extraction.table, extraction.where)}
        readers = _Readers(len(parts))
        try:
            self._open_readers(extraction, parts, readers)
            converter = _Converter(extraction.table, readers.streams[0].schema)
            stats = WriteStats(output_types={f.name: str(f.type) for f in converter.schema}, encodings=encodings)
            codec = "none" if self.compression == "none" else self.compression
            compression, level = _codecs(converter.schema, codec, self.level, uncompressed)
            group = StreamGroup(readers.cancels())
            with spools(len(parts), temp_dir) as spooled, _native(out) as (target, absorb), \
                    pq.ParquetWriter(target, converter.schema, compression=compression, compression_level=level,
                                     store_schema=True, write_statistics=statistics_columns(converter.schema),
                                     use_dictionary=dictionary_columns(converter.columns)) as writer:
                groups = _RowGroups(writer, absorb, row_group_bytes(converter.schema))
                write = groups.add

                def first() -> None:  # stream 0: straight into the writer, in this thread
                    held = None  # from a big batch on while the session is open: into spooled[0]
                    batches = _until_expected(readers, 0, extraction.expected_rows if len(parts) == 1 else None)
                    for batch in prefetch(batches, depth=2, max_bytes=READ_AHEAD_BYTES, size=lambda b: b.nbytes,
                                          cancel=readers.cancels()[0]):
                        converted = converter.convert(batch)
                        stats.rows += converted.num_rows
                        stats.bytes += converted.nbytes
                        if held is None and converted.nbytes >= HOLD_BYTES and readers.is_open(0):
                            held = _ipc_spool(spooled[0], converter.schema)
                        if held is None:
                            write(converted)
                        else:
                            held.write_batch(converted)
                        parts[0].report(stats)
                        del batch, converted  # before the next one is read: a big batch must not be held twice
                    group.finished(0)
                    readers.close(0)
                    if held is not None:
                        held.close()
                        _write_spooled(spooled[0], write)

                group.run([first, *(_spooling(i, readers, converter, spooled[i], group, parts[i])
                                     for i in range(1, len(parts)))])
                for spool in spooled[1:]:  # later streams' row groups, in stream order
                    rows, nbytes = _write_spooled(spool, write)
                    stats.rows += rows
                    stats.bytes += nbytes
                groups.flush()
            return stats
        finally:
            readers.close_all()


def row_group_bytes(schema: pa.Schema) -> int:
    """The Arrow bytes a row group gathers before it is written: one ADBC batch (``BATCH_BYTES``) for most
    tables, more for a wide one. Arrow's writer keeps every row group's metadata until the file is closed,
    ~1.2 MB per row group at 1,500 columns (~0.8 KB a column chunk, statistics or not): one row group per
    batch, ~700 rows there, made the archiver's memory grow with the day (+188 MB at 40,000 rows)."""
    return min(max(BATCH_BYTES, len(schema) * _BYTES_PER_COLUMN), _MAX_ROW_GROUP_BYTES)


_BYTES_PER_COLUMN = 16 << 10  # 1,500 columns: 24 MiB a row group, whose metadata is ~5% of it
_MAX_ROW_GROUP_BYTES = 32 << 20


class _RowGroups:
    """Converted batches gathered into row groups of at least ``target`` Arrow bytes (see
    :func:`row_group_bytes`); each group is written as one (its batches are not concatenated: the
    writer reads the columns' chunks in place)."""

    def __init__(self, writer: pq.ParquetWriter, absorb: Callable[[], None], target: int) -> None:
        self.writer, self.absorb, self.target = writer, absorb, target
        self.pending: list[pa.RecordBatch] = []
        self.size = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.nbytes >= HOLD_BYTES:  # a big batch is written alone, at once: never held beside others
            self.flush()
        self.pending.append(batch)
        self.size += batch.nbytes
        if self.size >= self.target or batch.nbytes >= HOLD_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        group, size = pa.Table.from_batches(self.pending), self.size
        self.pending, self.size = [], 0
        self.writer.write_table(group, row_group_size=max(group.num_rows, 1))
        del group
        self.absorb()
        if size >= HOLD_BYTES:  # else mimalloc keeps the big page's buffers for later
            pa.default_memory_pool().release_unused()


class _Readers:
    """The ADBC connections, cursors and batch readers of the streams, each closed once."""

    def __init__(self, count: int) -> None:
        self.conns: list = [None] * count
        self.cursors: list = [None] * count
        self.streams: list = [None] * count
        self._open = [False] * count

    def opened(self, i: int, conn, cur) -> None:
        """Stream ``i``'s session, in the snapshot."""
        self.conns[i], self.cursors[i] = conn, cur
        self._open[i] = True

    def started(self, i: int, reader) -> None:
        """Stream ``i``'s batch reader, its query started."""
        self.streams[i] = reader

    def cancels(self) -> list[Callable[[], None]]:
        return [functools.partial(self._cancel, i) for i in range(len(self._open))]

    def _cancel(self, i: int) -> None:
        if self._open[i]:
            self.cursors[i].adbc_cancel()

    def is_open(self, i: int) -> bool:
        return self._open[i]

    def close(self, i: int) -> None:
        """End stream ``i``'s read transaction and session now that its rows are read."""
        if self._open[i]:
            self._open[i] = False
            with contextlib.suppress(Exception):
                self.cursors[i].close()
            with contextlib.suppress(Exception):
                self.conns[i].close()

    def close_all(self) -> None:
        for i in range(len(self._open)):
            self.close(i)


# The open phase's stop (see Parquet._open_readers), for the connect of the reader its thread is opening
_opening_stopped: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("_opening_stopped",
                                                                                         default=None)
_CONNECT_POLL_SECONDS = 0.05


class _ConnectAbandoned(Exception):
    """A reader's connect given up on because the open phase was stopped (the group's failure, an interrupt, is
    what is raised: see :class:`StreamGroup`)."""


def _connect_unless_stopped(connect: Callable[[], object]):
    """``connect()`` in a daemon thread of its own, waited for until it returns or the open phase is stopped. No
    cancel reaches a connect under way (libpq waits for the server's answer, up to the DSN's connect_timeout, which
    the reader's DSN takes from the archive's session, or for TCP to give up without one): stopped, the wait raises
    :class:`_ConnectAbandoned` at once, and the thread closes the connection itself once the connect returns, so an
    interrupt (a run's termination) is raised promptly and nothing is left open."""
    stop = _opening_stopped.get()
    if stop is None:
        return connect()
    lock, done, got = threading.Lock(), threading.Event(), {}

    def attempt() -> None:
        try:
            conn = connect()
        except BaseException as exc:  # noqa: BLE001 - raised in the waiting thread, unless abandoned
            got["error"] = exc
            conn = None
        with lock:
            if not got.get("abandoned"):
                got["conn"] = conn
                done.set()
                return
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    threading.Thread(target=attempt, name="archive-reader-connect", daemon=True).start()
    while not done.wait(_CONNECT_POLL_SECONDS):
        with lock:
            if stop.is_set() and not done.is_set():
                got["abandoned"] = True
                raise _ConnectAbandoned("the reader's connect was abandoned: the open phase was stopped")
    if "error" in got:
        raise got["error"]
    return got["conn"]


def _nothing() -> None:
    """The task (and cancel) of the group's stream 0, which runs in the waiting thread (see StreamGroup.run)."""


def _off_the_main_thread(tasks: Sequence[Callable[[], None]], cancels: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` (ADBC's blocking calls) each in a thread of its own while this thread waits,
    as :class:`StreamGroup` runs streams: the first failure cancels the others (``cancels``) and is raised once
    all have ended. In the main thread, adbc_driver_manager swaps in its own SIGINT handler for a blocking call,
    and a run's termination (Dagster's SIGINT, the CLI's Ctrl-C) only cancelled the query: the interrupt was
    gone, and the day failed as a retryable "query was cancelled" while the run went on. Here the interrupt
    reaches this thread's wait, cancels the calls and, once they have ended, is raised."""
    StreamGroup([_nothing, *cancels]).run([_nothing, *tasks])  # (the group's task 0 runs in the calling thread)


@contextlib.contextmanager
def _native(out: ByteSink) -> Iterator[tuple[object, Callable[[], None]]]:
    """Where the Parquet writer writes, and what to call after it wrote: a native Arrow file on
    ``out``'s own descriptor when ``out`` can absorb what is appended to it (our temp file), else
    ``out`` itself. A Python file object costs a copy of every write (pyarrow makes a bytes object of
    each page: 50 MB more for one 100 MiB value, #11 §5); the closing footer is absorbed on exit."""
    absorb = getattr(out, "absorb_appended", None)
    if absorb is None:
        yield out, lambda: None
        return
    native = pa.OSFile(os.dup(out.fd), mode="wb")  # shares out's offset; closes its own duplicate
    try:
        yield native, absorb
    finally:
        native.close()
    absorb()


def _ipc_spool(spool: Spool, schema: pa.Schema, compression: str | None = None) -> pa.ipc.RecordBatchStreamWriter:
    """An Arrow IPC stream into ``spool``, written natively (no Python copy of a big batch's buffers),
    its buffers compressed with ``compression`` if given."""
    return pa.ipc.new_stream(spool.attach(pa.OSFile(os.dup(spool.fd), mode="wb")), schema,
                             options=pa.ipc.IpcWriteOptions(compression=compression))


def _write_spooled(spool: Spool, write: Callable[[pa.RecordBatch], None]) -> tuple[int, int]:
    """Hand a spool's batches to ``write`` one at a time; returns their rows and Arrow bytes."""
    rows = nbytes = 0
    # read, not memory-mapped: mapped pages of a spool of millions of rows would count in the
    # process's RSS (934 MB above imports measured at 10M rows, N=2); read, one batch at a time is
    # in memory
    with pa.OSFile(str(spool.path), "rb") as source, pa.ipc.open_stream(source) as batches:
        for batch in batches:
            write(batch)
            rows += batch.num_rows
            nbytes += batch.nbytes
    spool.close()  # its rows are in the archive file: its disk space is free before the next spool's turn
    return rows, nbytes


def _until_expected(readers: _Readers, i: int, expected_rows: int | None) -> Iterator[pa.RecordBatch]:
    """Stream ``i``'s batches; once ``expected_rows`` have come, its session is closed *before* the last
    batch is handed on. Learning that the stream has ended means reading on, with libpq's input buffer
    (as big as the largest row) held while the batch is written: one 100 MiB value cost 100 MB more."""
    seen = 0
    for batch in readers.streams[i]:
        seen += batch.num_rows
        if expected_rows is not None and seen == expected_rows:
            readers.close(i)
            yield batch
            return
        yield batch
        del batch  # not held while the next one is read


def _spooling(i: int, readers: _Readers, converter: _Converter, spool: Spool, group: StreamGroup,
              part: Extraction):
    """Stream ``i`` > 0: its converted batches into an Arrow IPC spool (no encoding; buffers in
    SPOOL_COMPRESSION), which the one Parquet writer reads back in stream order."""
    def run() -> None:
        seen = WriteStats()
        with _ipc_spool(spool, converter.schema, SPOOL_COMPRESSION) as ipc:
            for batch in readers.streams[i]:
                converted = converter.convert(batch)
                ipc.write_batch(converted)
                seen.rows += converted.num_rows
                seen.bytes += converted.nbytes
                part.report(seen)
                del batch, converted
        group.finished(i)
        readers.close(i)
    return run
