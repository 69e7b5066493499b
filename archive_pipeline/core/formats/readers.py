"""Readers of the archive formats: turn a local archive file back into what PostgreSQL's input
functions read, in bounded batches, without a Python object per row or value.

- CSV is PostgreSQL's own ``COPY ... (FORMAT csv)`` output under a header line: the header is checked here
  against the spellings a release wrote, and the rows go back through ``COPY FROM`` byte for byte
  (:func:`csv_rows`).
- JSONL is one ``row_to_json`` object per line and JSON text never holds a raw newline or control
  character, so the lines go into a one-column table by ``COPY ... (FORMAT csv)`` with a delimiter and
  quote no JSON text holds (:func:`decompressed_chunks`, see ``restore._staged_lines``); PostgreSQL's
  ``json_to_record`` then applies each column's own input function to the value's text (a string for
  the types the writer spells as their own text:
  array literals, composites, ranges), exact for what the writer produces. Two things JSONL cannot
  carry (white space around a json value, line breaks inside one) come back without it, and the
  restore's fingerprint check refuses them.
- Parquet batches are turned into PostgreSQL's text input, column by column, in Arrow compute
  (:func:`parquet_csv_chunks`), and written as CSV for ``COPY FROM``. Values are spelled the way
  PostgreSQL's input functions read them exactly, whatever the year or sign: dates and timestamps
  in Arrow's ISO form for years 1..9999 and as Julian day numbers outside them
  (``J1705428 12:30:00.000001``: ``J`` input covers 4714 BC to 294276 AD), the ±infinity sentinels
  as ``infinity``, intervals as ISO 8601 with PostgreSQL's three fields kept apart, binary as
  ``\\x`` hex, uuid as its 8-4-4-4-12 text, lists as array literals with every element quoted but numbers and
  booleans (bare).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

READ_BYTES = 1 << 20  # decompressed bytes per read
PARQUET_BATCH_ROWS = 16_384  # rows per Arrow batch read from a row group
BIG_LIST_BYTES = 16 << 20  # a list column's elements this big are turned into text with the system allocator
BIG_ROW_BYTES = 1 << 20  # a row's text this long skips Arrow's CSV writer (two whole copies of it)

_CODECS = {"zstd": "zstd", "gzip": "gzip", "lz4": "lz4"}
_UNIX_EPOCH_JULIAN_DAY = 2_440_588  # Julian day number of 1970-01-01
_DAY_MICROS = 86_400_000_000
# parquet.py writes ±infinity as the type's largest/smallest value (DuckDB's encoding)
_DATE_INFINITY = 2**31 - 1
_TIMESTAMP_INFINITY = 2**63 - 1
_CSV_OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="needed")


class ArchiveDecodeError(ValueError):
    """The file does not decode as the format and codec its manifest names."""


def open_decompressed(path: str | os.PathLike, compression: str) -> pa.NativeFile:
    """The archive's bytes as written by the formatter (Parquet compresses inside the file)."""
    if compression not in _CODECS and compression not in ("none", "snappy"):
        raise ArchiveDecodeError(f"unknown compression {compression!r}")
    raw = pa.OSFile(os.fspath(path), "rb")
    return pa.CompressedInputStream(raw, _CODECS[compression]) if compression in _CODECS else raw


JSON_BATCH_BYTES = 1 << 20  # JSON text per INSERT (4 MB: the set function's rows spill past work_mem; measured slower)


def decompression_limit(manifest: dict) -> int | None:
    """What a text object may decompress to: its manifest's ``uncompressed_bytes`` (a few KB of zstd can expand to
    GBs: one that does is not the archive, refused before it is held in memory or loaded). 0 is a limit too (a
    manifest saying so of an object that has bytes, edited or damaged, does not lift it); None where the manifest
    records none (an older version's)."""
    recorded = manifest.get("uncompressed_bytes")
    return recorded if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 0 else None


def decompressed_chunks(path: str | os.PathLike, compression: str, limit: int | None = None) -> Iterator[pa.Buffer]:
    """The decompressed bytes in chunks of about :data:`READ_BYTES`; :class:`ArchiveDecodeError` past ``limit``
    bytes (what the manifest records: an object that expands to more is not the archive)."""
    total = 0
    with open_decompressed(path, compression) as stream:
        while chunk := stream.read_buffer(READ_BYTES):
            total += chunk.size
            if limit is not None and total > limit:
                raise ArchiveDecodeError(f"the object decompresses to more than the {limit:,} bytes its manifest "
                                         "records: it is damaged or was altered")
            yield chunk


def csv_rows(path: str | os.PathLike, compression: str, headers: tuple[bytes, ...], limit: int | None = None
             ) -> Iterator[pa.Buffer | memoryview]:
    """The CSV object's bytes after its header line, which must be one of ``headers`` (every spelling of the
    manifest's columns a release wrote: ``formats.csv.header_lines``), else :class:`ArchiveDecodeError`. Only the
    leading bytes are looked at, once: the rows follow as they are decompressed, no extra pass over them."""
    chunks, head, longest = decompressed_chunks(path, compression, limit), bytearray(), max(map(len, headers))
    for chunk in chunks:  # (a header longer than a chunk: 1,600 quoted names)
        head += memoryview(chunk)
        if len(head) >= longest:
            break
    line = next((h for h in headers if head.startswith(h)), None)
    if line is None:
        first = bytes(head[:head.find(b"\n") + 1 or longest])
        raise ArchiveDecodeError(f"its first line {first[:300]!r}{' ...' if len(first) > 300 else ''} is not the "
                                 "header of the manifest's columns as any release wrote it: the object is damaged "
                                 "or was altered")
    if len(head) > len(line):
        yield memoryview(head)[len(line):]
    yield from chunks


def jsonl_arrays(path: str | os.PathLike, compression: str, batch_bytes: int = JSON_BATCH_BYTES,
                 limit: int | None = None) -> Iterator[bytes]:
    """Blocks of whole JSONL lines, each as the UTF-8 text of one JSON array of the lines' objects (for a restore
    whose role may not create the temporary table the lines are staged in, see ``restore._staged_lines``).

    A JSON text holds no raw newline (row_to_json escapes it), so replacing the newlines between
    whole lines by commas is exact; one bytes operation per block, none per row.
    """
    pending = bytearray()
    for chunk in decompressed_chunks(path, compression, limit):
        pending += memoryview(chunk)
        if len(pending) >= batch_bytes:
            cut = pending.rfind(b"\n")
            if cut >= 0:
                yield _as_array(pending[:cut])
                del pending[:cut + 1]
    if pending.strip():
        yield _as_array(pending)


_NEWLINE_TO_COMMA = bytes.maketrans(b"\n", b",")


def _as_array(lines: bytearray) -> bytes:
    return b"[" + bytes(lines).strip(b"\n").translate(_NEWLINE_TO_COMMA) + b"]"


# --- Parquet -> PostgreSQL text ------------------------------------------------------------------

def _lpad(values: pa.Array, width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(values, pa.string()), width=width, padding="0")


def _join(*parts: pa.Array | str, pool: pa.MemoryPool | None = None) -> pa.Array:
    """Concatenate strings element-wise (a null part makes the result null)."""
    large = any(not isinstance(p, str) and pa.types.is_large_string(p.type) for p in parts)
    kind = pa.large_string() if large else pa.string()
    items = [pa.scalar(p, kind) if isinstance(p, str) else pc.cast(p, kind, memory_pool=pool) for p in parts]
    return pc.binary_join_element_wise(*items, pa.scalar("", kind), memory_pool=pool)


def _floor_divmod(values: pa.Array, divisor: int) -> tuple[pa.Array, pa.Array]:
    """Floor division and a non-negative remainder (Arrow's integer divide truncates)."""
    remainder = pc.modulo(values, divisor)
    remainder = pc.if_else(pc.less(remainder, 0), pc.add(remainder, divisor), remainder)
    return pc.divide(pc.subtract(values, remainder), divisor), remainder


def _clock(micros: pa.Array) -> pa.Array:
    """``HH:MM:SS.ffffff`` of non-negative microseconds within a day (24:00:00 included)."""
    hours = pc.divide(micros, 3_600_000_000)
    rest = pc.subtract(micros, pc.multiply(hours, 3_600_000_000))
    minutes = pc.divide(rest, 60_000_000)
    rest = pc.subtract(rest, pc.multiply(minutes, 60_000_000))
    seconds = pc.divide(rest, 1_000_000)
    fraction = pc.subtract(rest, pc.multiply(seconds, 1_000_000))
    return _join(_lpad(hours, 2), ":", _lpad(minutes, 2), ":", _lpad(seconds, 2), ".", _lpad(fraction, 6))


def _with_infinity(ints: pa.Array, limit: int, text: pa.Array) -> pa.Array:
    """``text``, except where ``ints`` holds the ±infinity sentinel (±limit)."""
    text = pc.if_else(pc.equal(ints, limit), pa.scalar("infinity"), text)
    return pc.if_else(pc.equal(ints, -limit), pa.scalar("-infinity"), text)


# Arrow's own formatting (one fast kernel) is PostgreSQL's ISO input for years 0001..9999; other
# values (BC, beyond 9999, the ±infinity sentinels) take the Julian-day spelling instead.
_ISO_DAYS = (-719_162, 2_932_896)  # 0001-01-01 and 9999-12-31, days since 1970-01-01
_ISO_MICROS = (_ISO_DAYS[0] * _DAY_MICROS, (_ISO_DAYS[1] + 1) * _DAY_MICROS - 1)


def _outside(values: pa.Array, bounds: tuple[int, int]) -> pa.Array:
    return pc.or_(pc.less(values, bounds[0]), pc.greater(values, bounds[1]))


def _date_text(array: pa.Array) -> pa.Array:
    days = pc.cast(array.view(pa.int32()), pa.int64())
    text = pc.cast(array, pa.string())  # 2024-03-10
    outside = _outside(days, _ISO_DAYS)
    if pc.any(outside).as_py():
        finite = pc.if_else(pc.equal(pc.abs(days), _DATE_INFINITY), 0, days)
        julian = _join("J", pc.cast(pc.add(finite, _UNIX_EPOCH_JULIAN_DAY), pa.string()))
        text = _with_infinity(days, _DATE_INFINITY, pc.if_else(outside, julian, text))
    return text


_UNIT_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}


def _timestamp_text(array: pa.Array) -> pa.Array:
    unit = array.type.unit
    raw = array.view(pa.int64())
    if unit == "ns":  # not written by the archiver; exact only to the microsecond, as PostgreSQL is
        micros = pc.divide(raw, 1000)
    else:
        micros = pc.multiply(raw, _UNIT_MICROS[unit])
    zone = "+00" if array.type.tz is not None else ""
    # 2024-03-10 01:02:03.456789(+00): formatted as a naive timestamp, the values being UTC
    text = pc.cast(micros.view(pa.timestamp("us")), pa.string())
    if zone:
        text = _join(text, zone)
    outside = _outside(micros, _ISO_MICROS)
    if pc.any(outside).as_py():
        infinite = pc.or_(pc.equal(raw, _TIMESTAMP_INFINITY), pc.equal(raw, -_TIMESTAMP_INFINITY))
        days, clock = _floor_divmod(pc.if_else(infinite, 0, micros), _DAY_MICROS)
        julian = _join("J", pc.cast(pc.add(days, _UNIX_EPOCH_JULIAN_DAY), pa.string()), " ", _clock(clock), zone)
        text = _with_infinity(raw, _TIMESTAMP_INFINITY, pc.if_else(outside, julian, text))
    return text


def _time_text(array: pa.Array) -> pa.Array:
    unit = array.type.unit
    raw = pc.cast(array.view(pa.int64() if pa.types.is_time64(array.type) else pa.int32()), pa.int64())
    micros = pc.divide(raw, 1000) if unit == "ns" else pc.multiply(raw, _UNIT_MICROS[unit])
    return _clock(micros)


def _interval_text(array: pa.StructArray) -> pa.Array:
    """ISO 8601 with designators, PostgreSQL's three fields kept apart (months, days, time):
    ``P-14M3DT-4H-5M-6.000007S``. The time part is split into hours, minutes and seconds so every
    number PostgreSQL parses stays far below 2**53 (exact through its strtod)."""
    months, days, micros = (pc.cast(array.field(i), pa.int64()) for i in range(3))
    hours = pc.divide(micros, 3_600_000_000)  # truncating: every part keeps the sign of micros
    rest = pc.subtract(micros, pc.multiply(hours, 3_600_000_000))
    minutes = pc.divide(rest, 60_000_000)
    rest = pc.subtract(rest, pc.multiply(minutes, 60_000_000))
    seconds = pc.divide(rest, 1_000_000)
    fraction = pc.subtract(rest, pc.multiply(seconds, 1_000_000))
    sign = pc.if_else(pc.less(micros, 0), pa.scalar("-"), pa.scalar(""))
    text = _join("P", pc.cast(months, pa.string()), "M", pc.cast(days, pa.string()), "DT",
                 sign, pc.cast(pc.abs(hours), pa.string()), "H",
                 sign, pc.cast(pc.abs(minutes), pa.string()), "M",
                 sign, pc.cast(pc.abs(seconds), pa.string()), ".", _lpad(pc.abs(fraction), 6), "S")
    return pc.if_else(array.is_valid(), text, pa.scalar(None, pa.string()))


def _hex_text(array: pa.Array, prefix: str) -> pa.Array:
    """Lower-case hex of each binary value after ``prefix`` (one ``bytes.hex`` per batch, no per-value
    Python), e.g. ``\\x00ff`` for bytea input or 32 hex digits for uuid input."""
    if pa.types.is_fixed_size_binary(array.type):
        array = pc.cast(array, pa.binary())
    if pa.types.is_binary(array.type):
        array = pc.cast(array, pa.large_binary())
    n, offset = len(array), array.offset
    offsets = pa.Array.from_buffers(pa.int64(), n + 1, [None, array.buffers()[1]], offset=offset)
    start, end = offsets[0].as_py(), offsets[n].as_py()
    data = array.buffers()[2]
    hexed = memoryview(data)[start:end].hex().encode("ascii") if data is not None and end > start else b""
    doubled = pc.multiply(pc.subtract(offsets, start), 2)
    strings = pa.Array.from_buffers(pa.large_string(), n, [None, doubled.buffers()[1], pa.py_buffer(hexed)])
    text = _join(prefix, strings) if prefix else strings
    return pc.if_else(array.is_valid(), text, pa.scalar(None, pa.large_string()))


def _uuid_text(array: pa.Array) -> pa.Array:
    """Each uuid as PostgreSQL prints it (8-4-4-4-12 lower-case hex): 32 bare digits read back as the same uuid
    into a uuid column, but as themselves into a text one (a restore into an existing table whose column is
    text took them as they were, and the check rolled it back where a CSV or JSONL archive restored)."""
    hexed = _hex_text(array, "")
    parts = [pc.utf8_slice_codeunits(hexed, start, stop) for start, stop in ((0, 8), (8, 12), (12, 16), (16, 20),
                                                                             (20, 32))]
    return _join(parts[0], "-", parts[1], "-", parts[2], "-", parts[3], "-", parts[4])


def _list_pool(values: pa.Array) -> pa.MemoryPool:
    """Where a list column's text is built: the system allocator for a big one. Its intermediates
    grow a buffer at a time and are freed in turn; glibc (tuned by memory.py) grows a big buffer in
    place and hands it back to the OS when freed, where mimalloc copies it to grow it and keeps what
    was freed (a 3,000,000-element int8[]: +190 MB of RSS against +148 MB). Small lists, the common
    case, stay with the default pool."""
    return pa.system_memory_pool() if values.nbytes >= BIG_LIST_BYTES else pa.default_memory_pool()


def _quoted_elements(values: pa.Array, pool: pa.MemoryPool) -> pa.Array:
    """Array-literal elements: every value double-quoted with ``\\`` and ``"`` escaped; NULL bare.
    Each step rebinds ``text`` so only two copies of the elements are alive at a time."""
    text = pc.cast(pg_text(values), pa.large_string(), memory_pool=pool)
    if pc.any(pc.or_(pc.match_substring(text, "\\"), pc.match_substring(text, '"'))).as_py():
        text = pc.replace_substring_regex(text, r'([\\"])', r"\\\1", memory_pool=pool)  # only when needed
    text = _join('"', text, '"', pool=pool)
    return pc.coalesce(text, pa.scalar("NULL", pa.large_string()), memory_pool=pool)


def _element_text(values: pa.Array, pool: pa.MemoryPool) -> pa.Array:
    """A list's elements as array-literal items. Numbers and booleans go bare: their text (digits,
    sign, point, exponent, nan, inf, true, false) holds nothing array input treats specially, and
    quoting them cost a copy and two bytes per element (a 3,000,000-element int8[] peaked at ~9x its
    text); everything else is quoted."""
    kind = values.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
            or pa.types.is_boolean(kind)):
        return _quoted_elements(values, pool)
    text = pc.cast(values, pa.large_string(), memory_pool=pool)  # large: may pass 2 GiB of text
    if not text.null_count:
        return text
    return pc.coalesce(text, pa.scalar("NULL", pa.large_string()), memory_pool=pool)


def _own_values(array: pa.ListArray | pa.LargeListArray) -> tuple[pa.Array, pa.Array]:
    """A (sliced) list array's own elements and its offsets into them: ``values`` is the whole child array,
    whatever the slice (a run of rows between big ones turned every row's elements into text again)."""
    offsets = array.offsets
    first, last = offsets[0].as_py(), offsets[len(array)].as_py()
    return array.values.slice(first, last - first), pc.subtract(offsets, offsets[0])


def _list_text(array: pa.ListArray | pa.LargeListArray) -> pa.Array:
    """A PostgreSQL array literal per list: ``{"a",NULL,"c,d"}``, ``{1,NULL,3}``; an empty list is
    ``{}``. Each intermediate is let go as soon as the next is built (two alive at the peak)."""
    values, offsets = _own_values(array)
    pool = _list_pool(values)
    elements = _element_text(values, pool)
    del values
    lists = type(array).from_arrays(offsets, elements, mask=array.is_null())
    del elements
    joined = pc.binary_join(lists, pa.scalar(",", pa.large_string()), memory_pool=pool)
    del lists
    return _join("{", joined, "}", pool=pool)


def pg_text(array: pa.Array) -> pa.Array:
    """PostgreSQL's text input of each value of an archive's Arrow column (NULL stays null)."""
    kind = array.type
    if isinstance(kind, pa.BaseExtensionType):
        if kind.extension_name == "arrow.uuid":
            return _uuid_text(array.storage)
        return pg_text(array.storage)  # arrow.json, arrow.opaque: the type's own text
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array
    if pa.types.is_dictionary(kind):  # not written by the archiver; other writers may
        return pg_text(array.dictionary_decode())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _hex_text(array, "\\x")
    if pa.types.is_fixed_size_binary(kind):
        return _hex_text(array, "")
    if pa.types.is_date32(kind):
        return _date_text(array)
    if pa.types.is_timestamp(kind):
        return _timestamp_text(array)
    if pa.types.is_time(kind):
        return _time_text(array)
    if pa.types.is_struct(kind) and [f.name for f in kind] == ["months", "days", "microseconds"]:
        return _interval_text(array)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _list_text(array)
    if (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
            or pa.types.is_boolean(kind) or pa.types.is_null(kind)):
        # floats: shortest round-trip digits, "nan"/"inf"/"-inf" (float8in reads them); decimals may
        # come out as 1E-7, which numeric input reads and the column's (p,s) rescales exactly
        return pc.cast(array, pa.string())
    raise ArchiveDecodeError(f"Arrow type {kind} is not one the archiver writes")


def _group_batches(file: pq.ParquetFile, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The file's batches, one reader per row group (a single reader over the whole file keeps
    buffers of the row groups it has passed: measured +85 MB over a 1M-row file, against +25 MB row
    group by row group). A group's reader is closed before its last batch is handed on: it keeps the
    column chunk's decompressed page and dictionary until then (2x an 80 MiB text value, measured)."""
    for group in range(file.metadata.num_row_groups):
        left = file.metadata.row_group(group).num_rows
        reader = file.iter_batches(batch_size=batch_rows, row_groups=[group], use_threads=False)
        for batch in reader:
            left -= batch.num_rows
            if left <= 0:
                reader.close()  # its memory goes back to the OS with the caller's release_unused
            yield batch
            del batch  # not held while the next one is read


def _binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _deferred(array: pa.Array) -> bool:
    """A column turned into text only where needed: binary (bytea) and lists of it, whose text (``\\x`` and
    hex) is twice the value and more, built for a whole batch at once (a 48 MiB bytea peaked at 8x)."""
    kind = array.type
    return _binary(kind) or ((pa.types.is_list(kind) or pa.types.is_large_list(kind)) and _binary(kind.value_type))


def _text_sizes(array: pa.Array, deferred: bool) -> pa.Array:
    """Each row's text length in bytes, about (a deferred column's from its bytes: hex is twice them)."""
    if not deferred:
        return pc.fill_null(pc.cast(pc.binary_length(array), pa.int64()), 0)
    if _binary(array.type):
        return pc.multiply(pc.fill_null(pc.cast(pc.binary_length(array), pa.int64()), 0), 2)
    values, offsets = _own_values(array)
    elements = pc.fill_null(pc.cast(pc.binary_length(values), pa.int64()), 0)
    sums = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(elements)])
    bounds = pc.take(sums, offsets)
    return pc.multiply(pc.subtract(bounds.slice(1), bounds.slice(0, len(array))), 2)


def _big_rows(columns: list[pa.Array], deferred: list[bool]) -> list[int]:
    """The rows whose text reaches :data:`BIG_ROW_BYTES` (a few vectorized passes per batch)."""
    if sum(array.nbytes for array in columns) < BIG_ROW_BYTES // 2:
        return []
    sizes = None
    for array, later in zip(columns, deferred):
        size = _text_sizes(array, later)
        sizes = size if sizes is None else pc.add(sizes, size)
    return pc.indices_nonzero(pc.greater_equal(sizes, BIG_ROW_BYTES)).to_pylist()


def _csv(columns: list[pa.Array], deferred: list[bool], start: int, stop: int) -> pa.Buffer:
    """Rows ``start:stop`` as CSV through Arrow's writer: NULL an unquoted empty field, every string
    quoted (a quote doubled), so '' stays apart from NULL."""
    text = [pg_text(array.slice(start, stop - start)) if later else array.slice(start, stop - start)
            for array, later in zip(columns, deferred)]
    rows = pa.RecordBatch.from_arrays(text, names=[f"c{i}" for i in range(len(text))])
    out = pa.BufferOutputStream()
    pacsv.write_csv(rows, out, write_options=_CSV_OPTIONS)
    return out.getvalue()


def _value_bytes(array: pa.Array, row: int) -> memoryview:
    """The bytes of a string or binary value where the array holds them (no copy)."""
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    _, offsets, data = array.buffers()
    bounds = pa.Array.from_buffers(pa.int64() if large else pa.int32(), 2, [None, offsets],
                                   offset=array.offset + row).to_pylist()
    return memoryview(data)[bounds[0]:bounds[1]] if data is not None else memoryview(b"")


def _quoted_field(array: pa.Array, row: int) -> Iterator[bytes | memoryview]:
    """One value as a quoted CSV field, as Arrow's writer spells it: handed on as it is when it holds
    no quote, else escaped a slice at a time (never a whole copy of a big value)."""
    value = _value_bytes(array, row)
    if not pc.any(pc.match_substring(array.slice(row, 1), '"')).as_py():
        yield value
        return
    for start in range(0, len(value), READ_BYTES):
        yield bytes(value[start:start + READ_BYTES]).replace(b'"', b'""')


def _hex_pieces(value: memoryview) -> Iterator[bytes]:
    """A binary value's hex, a slice at a time (no quote or backslash to escape in it)."""
    for start in range(0, len(value), READ_BYTES // 2):
        yield value[start:start + READ_BYTES // 2].hex().encode("ascii")


def _binary_field(array: pa.Array, row: int) -> Iterator[bytes | memoryview]:
    """A deferred value's field content: ``\\x`` and hex for bytea; for a list of bytea the array literal
    ``{""\\\\x0a"",NULL}`` (each element quoted, its backslash escaped, the quotes doubled for CSV)."""
    if _binary(array.type):
        yield b"\\x"
        yield from _hex_pieces(_value_bytes(array, row))
        return
    values = array.slice(row, 1).flatten()
    yield b"{"
    for i in range(len(values)):
        yield b"," if i else b""
        if not values[i].is_valid:
            yield b"NULL"
            continue
        yield b'""\\\\x'
        yield from _hex_pieces(_value_bytes(values, i))
        yield b'""'
    yield b"}"


def _big_row_pieces(columns: list[pa.Array], deferred: list[bool], row: int) -> Iterator[bytes | memoryview]:
    """One row as CSV in pieces, big values by reference: Arrow's writer would copy the row into its
    own buffer and that into the output stream (2 more copies of an 80 MiB value, measured)."""
    head = b""
    for column, (array, later) in enumerate(zip(columns, deferred)):
        head += b"," if column else b""
        if array.slice(row, 1).null_count:
            continue
        yield head + b'"'
        yield from (_binary_field(array, row) if later else _quoted_field(array, row))
        head = b'"'
    yield head + b"\n"


def _csv_pieces(columns: list[pa.Array], deferred: list[bool]) -> Iterator[pa.Buffer | bytes | memoryview]:
    """A batch's rows as CSV: runs of ordinary rows through Arrow's writer, big rows in pieces."""
    start = 0
    for row in _big_rows(columns, deferred):
        if row > start:
            yield _csv(columns, deferred, start, row)
        yield from _big_row_pieces(columns, deferred, row)
        start = row + 1
    if start < len(columns[0]):
        yield _csv(columns, deferred, start, len(columns[0]))


def parquet_csv_chunks(path: str | os.PathLike, columns: list[str],
                       batch_rows: int = PARQUET_BATCH_ROWS) -> Iterator[pa.Buffer | bytes | memoryview]:
    """The Parquet file's rows as CSV (no header) for ``COPY ... FROM STDIN (FORMAT csv)``: NULL an
    unquoted empty field, every string quoted, so '' stays apart from NULL. A row's text may come in
    several pieces (a big value is handed on by reference); COPY does not care where chunks break."""
    file = pq.ParquetFile(os.fspath(path))
    names = file.schema_arrow.names
    if names != columns:
        raise ArchiveDecodeError(f"the Parquet file's columns {names} are not the manifest's {columns}")
    pool = pa.default_memory_pool()
    for batch in _group_batches(file, batch_rows):
        pool.release_unused()  # mimalloc keeps freed batches otherwise (measured: 69 -> 49 MB over 1M rows)
        deferred = [_deferred(batch.column(i)) for i in range(batch.num_columns)]
        columns = [batch.column(i) if later else pg_text(batch.column(i)) for i, later in enumerate(deferred)]
        del batch  # its values live on in ``columns`` only where they are needed
        yield from _csv_pieces(columns, deferred)
        del columns  # not held while the next batch is read
