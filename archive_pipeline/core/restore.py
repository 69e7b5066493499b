"""The read path: an archive back into PostgreSQL, exactly, and proven so by its fingerprint.

:func:`load_into` streams a local archive file of any format and codec the project writes into an
existing table (``COPY ... FROM STDIN``, or ``json_populate_recordset`` for JSONL) in flat memory;
the deep verification loads an archive into a temporary table with it and compares fingerprints.
:func:`restore_day` is the whole trip for one day: manifest -> verified download -> a new table,
an existing one, or the original table (re-creating a dropped partition) -> fingerprint compared
in the same transaction, which is rolled back if the restored rows are not the archived day.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.types.json import Json

from archive_pipeline.core import fingerprint as fp
from archive_pipeline.core import keys
from archive_pipeline.core.formats import readers
from archive_pipeline.core.formats.common import OTHER_FORMATS, READ_AHEAD_BYTES
from archive_pipeline.core.formats.csv import header_lines
from archive_pipeline.core.config import MAX_IDENTIFIER_BYTES as MAX_NAME_BYTES, TableSpec
from archive_pipeline.core.discovery import child_ranges, pending_detach_partitions
from archive_pipeline.core.errors import (SETTING_MISFITS, TABLE_MISSING, ArchiveError, SessionSettingError, SourceError,
                                          classify, named, note_cancelled, refused_grant, refused_kind, remedy_for,
                                          sql_name, with_roles)
from archive_pipeline.core.listing import listed_absent
from archive_pipeline.core.locks import require_autocommit, table_day_lock
from archive_pipeline.core.manifest import (ManifestError, Whose, another_period, archived_encoding,
                                             decoded_manifest, day_archive, inexact_groups, owned, source_identity)
from archive_pipeline.core.memory import bound_allocator
from archive_pipeline.core.periods import Period, manifest_period
from archive_pipeline.core.sink import open_nameless
from archive_pipeline.core.source import (NUMBER_TYPES, Column, PrintedNames, RowWait, acting_role, altered_composites,
                                          column_names, descends_from,
                                          day_filter, describe_relation, inner_types, lookalike_hint,
                                          lookalike_relations, missing_character, pending_detach_error, prefetch,
                                          printed_names_changed,
                                          relation_name, relation_printed_names, relation_shapes, row_waited,
                                          shape_changes, stored_name_problem)
from archive_pipeline.core.session_settings import CATALOG_FIRST, apply_settings, speaks_utf8, without_user_triggers, \
    writing_as_origin
from archive_pipeline.core.sqltext import CatalogText, with_params
from archive_pipeline.core.store import DownloadError, LocalFileError, S3Store, temp_file_refused

_names = itertools.count()


log = logging.getLogger(__name__)

class RestoreError(ArchiveError):
    """A restore could not be done as asked; nothing of it was committed."""


class TargetError(RestoreError):
    """The target refuses every day alike (missing, already there, not a table): nothing of the day's own, so
    what restores the rest of a range once it is mended starts at the day it stopped at, not after it."""

    EVERY_DAY = True


class CommitUnansweredError(RestoreError):
    """A day's COMMIT got no answer (:func:`_commit_unanswered`): it may have happened. Told by its class, so that a
    range stopped at it, whatever day of the range it was, is followed by the command for the rest of the range and
    not by the same range again, which would load that day a second time into a target that cannot tell its days
    (the connection lost is that day's: the command for the rest connects again)."""


class TypeMissingError(RestoreError):
    """A column's recorded type does not exist in the database the rows are to be loaded into."""

    def __init__(self, message: str, type_text: str, where: str, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.type_text, self.where = type_text, where


class ArchiveMissingError(RestoreError):
    """The object a manifest names is not in the store (or no longer: replaced by an overwrite meanwhile)."""


class ArchiveCorruptError(RestoreError):
    """The downloaded object is not the one its manifest describes (size or MD5), or does not decode."""


class FingerprintMismatchError(RestoreError):
    """The restored rows are not the archived day's rows; the restore was rolled back."""


class RestoreConflictError(RestoreError):
    """Restored rows collide with rows already in the target (primary key or unique constraint)."""


# a reg* value is archived by name ("public.lookup", "int4", "f(integer)"): it reads back only while what it
# names exists, and its input fails with the error of a name that does not exist
_NAME_GONE = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedObject, psycopg.errors.UndefinedFunction,
              psycopg.errors.InvalidSchemaName)
_REG_TYPE = re.compile(r"(?:pg_catalog\.)?(reg(?:class|type|proc|procedure|oper|operator|namespace|role|config|"
                       r"dictionary|collation))(?:\[\])*")


def gone_by_name(exc: BaseException, manifest: dict, *, besides: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The archived columns of a reg* type, (name, type), when ``exc`` is the error of a name that does not
    exist (none of ``besides``: the target's own names): a value of theirs names an object dropped or renamed
    since the day was archived. Empty otherwise."""
    if not isinstance(exc, _NAME_GONE):
        return []
    named = re.findall(r'"([^"]*)"', str(exc).splitlines()[0] if str(exc) else "")
    if any(name in besides for name in named):
        return []
    found = []
    for column in manifest.get("columns") or []:
        typed = _REG_TYPE.fullmatch(str(column.get("base_type") or column.get("pg_type") or ""))
        if isinstance(column, dict) and typed:
            found.append((str(column.get("name")), typed[1]))
    return found


def name_gone_cause(columns: list[tuple[str, str]], exc: BaseException) -> str:
    said = ", ".join(f"{name!r} ({kind})" for name, kind in columns)
    return (f"an archived value of column(s) {said} names an object that does not exist in this database (dropped or "
            f"renamed since the day was archived: a reg* value is archived by its name): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def manifest_columns(manifest: dict) -> list[str]:
    return [c["name"] for c in manifest["columns"]]


def _column_list(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


# Read the archive as it was written: UTF-8 bytes (the archiver's client_encoding), money as
# numeric text, which money's input reads right only in the "C" monetary locale (elsewhere the
# decimal point may be a comma), and xml as its stored text, a document or a fragment (xmloption
# document would refuse fragments such as '' or 'text', which an xml column may hold), and an
# array literal's unquoted NULL as NULL (with array_nulls off, a role's setting, it is the string
# "NULL" in a text[] and an error in any other array).
# PostgreSQL's functions first on the path (then the session's, for what the target's triggers and defaults
# call): the JSONL load's substr, strpos, json_to_recordset ... resolved through a role's path, where an
# Oracle-compatibility schema's substr returned NULL for '' and empty arrays came back NULL.
_INPUT_SETTINGS = {"client_encoding": "UTF8", "lc_monetary": "C", "xmloption": "content", "array_nulls": "on",
                   "search_path": CATALOG_FIRST}


@contextlib.contextmanager
def _input_settings(conn: psycopg.Connection) -> Iterator[None]:
    """:data:`_INPUT_SETTINGS` for the load only; the previous values are put back afterwards (money's
    text output, and so a fingerprint, depends on lc_monetary)."""
    names = list(_INPUT_SETTINGS)
    previous = conn.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        sql.SQL("pg_catalog.current_setting({})").format(sql.Literal(n)) for n in names))).fetchone()
    apply_settings(conn.execute, _INPUT_SETTINGS)
    try:
        yield
    finally:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            apply_settings(conn.execute, dict(zip(names, previous, strict=True)))


def _copy(conn: psycopg.Connection, statement: sql.Composable, chunks: Iterator[pa.Buffer | bytes | memoryview],
          depth: int = 2, max_bytes: int | None = None) -> int:
    """Feed ``chunks`` to ``COPY ... FROM STDIN``; a reader thread decodes the next chunk meanwhile
    (at most ``depth`` wait in memory; with ``max_bytes``, none is decoded while that much is in
    flight, so a big value is not in memory along with the next batch)."""
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            for chunk in prefetch(chunks, depth=depth, max_bytes=max_bytes, size=len):
                copy.write(memoryview(chunk))
        return cur.rowcount


# The third column is the type without a modifier, as format_type spells it when told the modifier is -1:
# "bpchar[]" and '"bit"[]', where a bare "character" or "bit" would mean character(1) or bit(1) and a cast
# to it would cut every element to one character or bit.
_TARGET_COLUMNS = sql.SQL("""
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), pg_catalog.format_type(a.atttypid, -1),
       CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace THEN t.typname::text
            ELSE t.typnamespace::regnamespace::text || '.' || t.typname END,  -- a user's jsonb is not jsonb
       t.typcategory, a.attidentity,
       -- an array whose JSON array text is its literal once its brackets are braces: elements of a base type
       -- (their JSON is a number, a boolean or their text as a string), never json's own values ("1" is not 1)
       -- nor a composite's object
       COALESCE(e.typtype IN ('b', 'e', 'r', 'm')
                AND e.oid NOT IN ('pg_catalog.json'::pg_catalog.regtype, 'pg_catalog.jsonb'::pg_catalog.regtype),
                false)
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
     LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typlen = -1
WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
""")

# The target's columns that PostgreSQL fills itself: generated columns (no value can be written to them,
# by COPY or INSERT) and GENERATED ALWAYS identity columns (an INSERT needs OVERRIDING SYSTEM VALUE).
_COMPUTED_COLUMNS = sql.SQL("""
SELECT a.attname, a.attgenerated <> '', a.attidentity = 'a'
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
  AND (a.attgenerated <> '' OR a.attidentity = 'a')
""")


def _computed_columns(conn: psycopg.Connection, target: sql.Composable,
                      columns: Iterable[str]) -> tuple[list[str], bool]:
    """(``columns`` the target generates itself, whether any of ``columns`` is GENERATED ALWAYS AS IDENTITY)."""
    wanted = set(columns)
    found = [(name, generated, identity) for name, generated, identity
             in conn.execute(_COMPUTED_COLUMNS, (target.as_string(conn),)).fetchall() if name in wanted]
    return [n for n, generated, _ in found if generated], any(identity for _, _, identity in found)


def _overriding(always_identity: bool) -> sql.Composable:
    """An INSERT writes archived values into GENERATED ALWAYS identity columns only when it says so."""
    return sql.SQL(" OVERRIDING SYSTEM VALUE") if always_identity else sql.SQL("")


def _name_refused_column(conn: psycopg.Connection, target: sql.Composable, columns: list[str],
                         lines: sql.Composable | None, block: bytes | None, exc: psycopg.DataError) -> None:
    """See :func:`_told_refused_column`; whatever goes wrong telling it leaves the load's own error as it is."""
    try:
        with conn.transaction():
            _told_refused_column(conn, target, columns, lines, block, exc)
    except psycopg.Error:
        return


def _told_refused_column(conn: psycopg.Connection, target: sql.Composable, columns: list[str],
                         lines: sql.Composable | None, block: bytes | None, exc: psycopg.DataError) -> None:
    """Add to ``exc`` the column whose value the target's type refused: json_to_record's errors name no
    column (COPY's do), so a JSONL restore refused by an enum label renamed since archiving said only
    'invalid input value for enum ... "pending"'. Each column's reading of the staged ``lines`` (or of the
    ``block``) is tried alone, once they are known to be JSON at all (else the object does not decode: no
    column is to blame)."""
    params = () if lines is not None else (Json(block, dumps=_as_is),)
    # every line a JSON object, as every line the writer writes is (else the object does not decode)
    json_check = sql.SQL("SELECT pg_catalog.count(*) FROM {} s WHERE s.line IS NOT NULL AND "
                         "pg_catalog.json_typeof(s.line::json) <> 'object'").format(lines) if lines is not None else \
        sql.SQL("SELECT pg_catalog.count(*) FROM pg_catalog.json_array_elements(%s) e "
                "WHERE pg_catalog.json_typeof(e) <> 'object'")
    try:
        with conn.transaction():
            others = conn.execute(with_params(json_check, conn) if params else json_check, params or None,
                                  prepare=False).fetchone()[0]
    except psycopg.DataError:
        others = 1
    except psycopg.Error:
        return
    if others:
        exc.not_json = True
        return
    _, pieces = _jsonl_pieces(conn, target, columns)
    if lines is not None:  # the page of the first line refused, found by halving: the day is read about twice,
        lines = _refused_page(conn, lines, pieces)  # not once per column, and only that line's columns are tried
        if lines is None:
            return
    else:  # the block's first line refused, alone: two columns of one type are told apart by which refuses it
        block = _refused_element(conn, block, pieces) or block
        params = (Json(block, dumps=_as_is),)
    said = exc.diag.message_primary
    for name, definition, value in pieces:
        probe = sql.SQL("SELECT pg_catalog.count({v}) FROM {f}").format(v=value, f=_jsonl_from(lines, definition))
        try:
            with conn.transaction():
                conn.execute(with_params(probe, conn) if params else probe, params or None, prepare=False)
        except psycopg.DataError as refused:
            if refused.diag.message_primary == said:  # the column of the value the load refused, not another's
                exc.refused_column = name
                return
        except psycopg.Error:
            return


def _first_refused(first: int, last: int, refused: Callable[[int, int], bool]) -> int:
    """The first index of [first, last) whose one-wide range is ``refused``, the whole range being refused: by
    halving (the refusal is the load's first, so it lies in the first refused half)."""
    while last - first > 1:
        middle = (first + last) // 2
        first, last = (first, middle) if refused(first, middle) else (middle, last)
    return first


def _refused_element(conn: psycopg.Connection, block: bytes, pieces: list) -> bytes | None:
    """The block's first line the load refuses, as a block of that one line, found by halving its elements; None
    if none is refused (the refusal was not a value's)."""
    definitions = sql.SQL(", ").join(d for _, d, _ in pieces)
    values = sql.SQL(", ").join(v for _, _, v in pieces)
    param = (Json(block, dumps=_as_is),)
    count = conn.execute("SELECT pg_catalog.json_array_length(%s)", param, prepare=False).fetchone()[0]

    def elements(first: int, last: int) -> sql.Composable:
        return sql.SQL("(SELECT t.e::text AS line FROM pg_catalog.json_array_elements(%s) WITH ORDINALITY AS t(e, n) "
                       "WHERE t.n >= {} AND t.n < {})").format(sql.Literal(first), sql.Literal(last))

    def refused(first: int, last: int) -> bool:
        probe = sql.SQL("SELECT pg_catalog.count(ROW({v})) FROM {f}").format(
            v=values, f=_jsonl_from(elements(first, last), definitions))
        try:
            with conn.transaction():
                conn.execute(with_params(probe, conn), param, prepare=False)
        except psycopg.DataError:
            return True
        return False

    if count < 1 or not refused(1, count + 1):
        return None
    first = _first_refused(1, count + 1, refused)
    line = conn.execute("SELECT (pg_catalog.json_array_elements(%s))::text LIMIT 1 OFFSET %s", (*param, first - 1),
                        prepare=False).fetchone()[0]
    return b"[" + line.encode() + b"]"


def _refused_page(conn: psycopg.Connection, lines: sql.Identifier, pieces: list) -> sql.Composable | None:
    """The first staged line the load refuses (as a relation to read from): its heap page found by halving the
    pages (PostgreSQL's TID range scans read only the half asked), then the line in it; None if none is refused.
    One line, so two columns of one type are told apart by which of them refuses it."""
    definitions = sql.SQL(", ").join(d for _, d, _ in pieces)
    values = sql.SQL(", ").join(v for _, _, v in pieces)
    pages = conn.execute(sql.SQL("SELECT pg_catalog.pg_relation_size({}::pg_catalog.regclass) / "
                                 "pg_catalog.current_setting('block_size')::int").format(
        sql.Literal(lines.as_string(conn)))).fetchone()[0]

    def within(first: int, last: int) -> sql.Composable:
        return sql.SQL("(SELECT * FROM {} WHERE ctid >= {}::tid AND ctid < {}::tid)").format(
            lines, sql.Literal(f"({first},0)"), sql.Literal(f"({last},0)"))

    def refused(first: int, last: int) -> bool:
        probe = sql.SQL("SELECT pg_catalog.count(ROW({v})) FROM {f}").format(
            v=values, f=_jsonl_from(within(first, last), definitions))
        try:
            with conn.transaction():
                conn.execute(probe)
        except psycopg.DataError:
            return True
        return False

    pages = max(int(pages), 1)
    if not refused(0, pages):
        return None
    first = _first_refused(0, pages, refused)
    last = first + 1
    for (ctid,) in conn.execute(sql.SQL("SELECT ctid::text FROM {} WHERE ctid >= {}::tid AND ctid < {}::tid "
                                        "ORDER BY ctid").format(lines, sql.Literal(f"({first},0)"),
                                                                sql.Literal(f"({last},0)"))).fetchall():
        line = sql.SQL("(SELECT * FROM {} WHERE ctid = {}::tid)").format(lines, sql.Literal(ctid))
        probe = sql.SQL("SELECT pg_catalog.count(ROW({v})) FROM {f}").format(v=values, f=_jsonl_from(line, definitions))
        try:
            with conn.transaction():
                conn.execute(probe)
        except psycopg.DataError:
            return line
    return within(first, last)


def _as_is(data: bytes) -> bytes:
    return data


def _jsonl_from(lines: sql.Composable | None, definitions: sql.Composable) -> sql.Composable:
    """The rows a JSONL load reads: the staged ``lines``, each by json_to_record, or (None) one block of lines as a
    JSON array parameter, by json_to_recordset (the same reading of each value)."""
    if lines is None:
        return sql.SQL("pg_catalog.json_to_recordset(%s) AS x({})").format(definitions)
    return sql.SQL("{} s CROSS JOIN LATERAL pg_catalog.json_to_record(s.line::json) AS x({}) "
                   "WHERE s.line IS NOT NULL").format(lines, definitions)


def _jsonl_insert(conn: psycopg.Connection, target: sql.Composable, columns: list[str],
                  lines: sql.Identifier | None) -> sql.Composable:
    """``INSERT INTO target (columns) SELECT ... FROM lines s, json_to_record(s.line::json) AS x(<the target's
    columns>)``: the archive's lines, staged by COPY (see :func:`_staged_lines`), each read as its row; or, with
    ``lines`` None, ``... FROM json_to_recordset(%s)`` of one block of them (see :func:`_jsonl_from`).

    json_to_record reads each value as json_populate_record does (the column type's input
    function on the value's text), except for the two kinds of column where that path is slow (measured:
    together 40% of the server's time on the sample events table) and a cheaper one is exactly equal:

    - ``jsonb``: read as ``json`` (the value's text, no conversion) and cast, which is the same jsonb_in
      on the same text (a top-level string: the same string).
    - arrays written as a JSON array: a one-dimensional JSON array without a backslash is, between its
      brackets, a valid array literal of the same elements (strings double-quoted with nothing to
      unescape; numbers, true/false and null bare; an unquoted null is NULL), so ``{...}`` goes
      through the array type's own input. Any other value (nested, escapes, a PostgreSQL array literal
      written as a string) takes populate's path for that column of that row, as a record of that one
      column (``json_populate_record(NULL::<target>, ...)`` would also read every other column as NULL,
      which a domain refusing NULL refuses).

    Archived values go into GENERATED ALWAYS identity columns as they are (``OVERRIDING SYSTEM VALUE``),
    as COPY writes them.
    """
    always_identity, pieces = _jsonl_pieces(conn, target, columns)
    definitions, values = [d for _, d, _ in pieces], [v for _, _, v in pieces]
    return sql.SQL("INSERT INTO {t} ({c}){o} SELECT {v} FROM {f}").format(
        t=target, c=_column_list(columns), o=_overriding(always_identity), v=sql.SQL(", ").join(values),
        f=_jsonl_from(lines, sql.SQL(", ").join(definitions)))


def _load_jsonl(conn: psycopg.Connection, path: str | os.PathLike, compression: str, limit: int | None,
                target: sql.Composable, columns: list[str]) -> int:
    """A JSONL archive into ``target``: its lines staged in a temporary table (flat memory whatever the longest
    line); where the role may not create one (TEMPORARY revoked from PUBLIC, a common hardening), in blocks of
    lines sent as JSON arrays, which hold a line in memory a few times over, as before the staging."""
    lines = _staged_lines(conn, path, compression, limit)
    if lines is not None:
        try:
            with conn.transaction():
                return conn.execute(_jsonl_insert(conn, target, columns, lines)).rowcount
        except psycopg.DataError as exc:
            _name_refused_column(conn, target, columns, lines, None, exc)
            raise
    statement = with_params(_jsonl_insert(conn, target, columns, None), conn)
    rows = 0
    for block in prefetch(readers.jsonl_arrays(path, compression, limit=limit), depth=1):
        # sent as it is, typed json: no decode, no re-encode (PostgreSQL validates it)
        try:
            with conn.transaction():
                rows += conn.execute(statement, (Json(block, dumps=_as_is),), prepare=False).rowcount
        except psycopg.DataError as exc:
            _name_refused_column(conn, target, columns, None, block, exc)
            raise
    return rows


def _staged_lines(conn: psycopg.Connection, path: str | os.PathLike, compression: str, limit: int | None
                  ) -> sql.Identifier | None:
    """A temporary table of the archive's JSONL lines (one text column), filled by one COPY of the decompressed
    bytes as they come: nothing of the day is held in memory here, whatever its longest line (a 16 MiB text of
    control characters is a 96 MiB line, which the JSON blocks held five times over). CSV with a delimiter and a
    quote character that a JSON text never holds raw (every control character is escaped in JSON) reads each
    line as it is, backslashes and quotes and all; no line of a JSON object is COPY's end marker. Dropped at
    COMMIT, in pg_temp by name (a table of the same name elsewhere on the path is never found first). None where
    the role may not create it (no TEMPORARY, an event trigger refusing its DDL): the lines go in blocks then."""
    lines = sql.Identifier("pg_temp", f"archive_restore_lines_{os.getpid()}_{next(_names)}")
    if not conn.execute("SELECT pg_catalog.has_database_privilege(pg_catalog.current_database(), "
                        "'TEMPORARY')").fetchone()[0]:
        return None
    try:
        with conn.transaction():  # (a savepoint: an event trigger refusing a role's DDL refuses it too)
            conn.execute(sql.SQL("CREATE TEMP TABLE {} (line text) ON COMMIT DROP").format(lines))
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.RaiseException,
            psycopg.errors.ReadOnlySqlTransaction):
        return None
    _copy(conn, sql.SQL("COPY {} (line) FROM STDIN (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')").format(lines),
          readers.decompressed_chunks(path, compression, limit))
    return lines


def _jsonl_pieces(conn: psycopg.Connection, target: sql.Composable, columns: list[str]
                  ) -> tuple[bool, list[tuple[str, sql.Composable, sql.Composable]]]:
    """(whether the target has a GENERATED ALWAYS identity column among ``columns``, and per column: its
    name, its definition in json_to_recordset's record, and the value read from it; see :func:`_jsonl_insert`)."""
    found = {name: rest for name, *rest in conn.execute(_TARGET_COLUMNS, (target.as_string(conn),)).fetchall()}
    always_identity = any(found[name][4] == "a" for name in columns if name in found)
    definitions, values = [], []
    for name in columns:
        ident = sql.Identifier(name)
        if name not in found:  # the INSERT below names it and fails with PostgreSQL's own message
            definitions.append(sql.SQL("{} text").format(ident))
            values.append(sql.SQL("x.{}").format(ident))
            continue
        declared, bare, typname, category, _, plain_elements = found[name]
        # types printed by format_type from the target's own catalog, not text from the archive
        if typname == "jsonb":
            definitions.append(sql.SQL("{} json").format(ident))
            values.append(sql.SQL("x.{}::jsonb").format(ident))
        elif category == "A" and plain_elements:
            definitions.append(sql.SQL("{} json").format(ident))
            values.append(sql.SQL(
                "CASE WHEN pg_catalog.left(x.{c}::text, 1) = '[' AND pg_catalog.left(x.{c}::text, 2) <> '[[' "
                "AND pg_catalog.strpos(x.{c}::text, E'\\\\') = 0 "
                "THEN ('{{' || pg_catalog.substr(x.{c}::text, 2, pg_catalog.length(x.{c}::text) - 2) || '}}')::{bare} "
                "ELSE (SELECT r.{c} FROM pg_catalog.json_to_record(pg_catalog.json_build_object({n}, x.{c})) "
                "AS r({c} {declared})) END"
            ).format(c=ident, bare=CatalogText(bare), declared=CatalogText(declared), n=sql.Literal(name)))
        else:
            definitions.append(sql.SQL("{} {}").format(ident, CatalogText(declared)))
            values.append(sql.SQL("x.{}").format(ident))
    return always_identity, list(zip(columns, definitions, values, strict=True))


@speaks_utf8(writes=True)
def load_into(conn: psycopg.Connection, archive_path: str | os.PathLike, manifest: dict,
              target: sql.Composable) -> int:
    """Load the rows of the local archive file ``archive_path`` (described by ``manifest``) into the
    existing table ``target`` and return how many were loaded.

    ``target`` must have the manifest's columns (by name) with the manifest's types; other columns
    get their defaults. Every value comes back as PostgreSQL had it, for every type of the README's
    type table (see :mod:`archive_pipeline.core.formats.readers` for how each format is read). Runs in the
    caller's transaction if there is one (as a savepoint), else in its own; memory stays flat.
    """
    bound_allocator()
    fmt, compression = manifest["format"], manifest["compression"]
    columns = manifest_columns(manifest)
    # a text object never decompresses to more than its manifest records: one that does (a few KB of zstd can
    # expand to GBs) is not the archive, and is refused before it is held in memory
    limit = readers.decompression_limit(manifest)
    cols = _column_list(columns)
    try:
        with conn.transaction(), _input_settings(conn):
            if fmt == "csv":  # the header checked by csv_rows (HEADER MATCH misread an older release's)
                statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(target, cols)
                return _copy(conn, statement, readers.csv_rows(archive_path, compression, header_lines(columns),
                                                               limit))
            if fmt == "parquet":
                statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(target, cols)
                return _copy(conn, statement, readers.parquet_csv_chunks(archive_path, columns), depth=1,
                             max_bytes=READ_AHEAD_BYTES)
            if fmt == "jsonl":
                return _load_jsonl(conn, archive_path, compression, limit, target, columns)
            raise readers.ArchiveDecodeError(f"unknown format {fmt!r}")
    except (readers.ArchiveDecodeError, pa.ArrowException, OSError, psycopg.DataError) as exc:
        # DataError (SQLSTATE class 22) covers a bad CSV/header line, invalid JSON, a value its type rejects
        if isinstance(exc, pa.ArrowMemoryError):
            raise  # (out of memory: classified as such, not as a damaged object)
        said = str(exc) if len(str(exc)) <= 600 else f"{str(exc)[:600]} ... ({len(str(exc)):,} characters)"
        if getattr(exc, "not_json", False):
            said = f"its lines are not JSON ({said}): the object is damaged or was altered"
        elif isinstance(exc, pa.ArrowException) and fmt == "parquet":  # (its bytes are the manifest's: both altered)
            said = f"{said}: the Parquet object does not decode, so it is damaged or was altered"
        raise ArchiveCorruptError(
            f"the archive of {manifest.get('table')} for {manifest.get('day')} ({fmt}/{compression}, "
            f"{(manifest.get('object') or {}).get('key')}) does not load into {target.as_string(conn)}: "
            f"{type(exc).__name__}: {said}; check that the table has the manifest's column types, and the object "
            "against its manifest (MD5)", table=manifest.get("table"), day=manifest.get("day"),
            retryable=False) from exc


# --- restore: manifest -> verified download -> target -> fingerprint, in one transaction ---------------

Into = Literal["new", "existing", "original"]
OnConflict = Literal["fail", "skip"]


@dataclass(frozen=True)
class RestoreResult:
    """What one day's restore did."""

    table: str  # the archived table
    day: str
    target: str  # where the rows went (schema.table)
    rows: int  # rows in the archive, all loaded
    inserted: int  # rows added to the target (fewer than ``rows`` when on_conflict="skip" skipped some)
    seconds: float
    fingerprint_checked: bool  # the restored rows' fingerprint equals the manifest's
    fingerprint: str | None  # the fingerprint proven equal, if any
    check: str  # what was checked, in words
    created: tuple[str, ...] = ()  # relations the restore created (a new table, a re-created partition)


@dataclass(frozen=True)
class RangeRestore:
    """A date range's restore: one result per archived day; days without an archive are listed."""

    results: tuple[RestoreResult, ...]
    missing: tuple[dt.date, ...]

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.results)


class _HashingWriter:
    """An unbuffered file that hashes (MD5) and counts what is written to it: a write that fails (a full
    temp directory) fails in ``write``, inside the download, not later when a buffer is flushed."""

    def __init__(self, file) -> None:
        self.file, self.size, self._md5 = file, 0, hashlib.md5()

    def write(self, data) -> int:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += self.file.write(view[written:])
        self._md5.update(view)
        self.size += written
        return written

    def fileno(self) -> int:
        return self.file.fileno()

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()


def _fetch(store: S3Store, obj: dict, sink: _HashingWriter) -> bool:
    """Stream the object into ``sink``; False if it does not exist. The store refuses a stored size
    other than the manifest's before any byte arrives, tells corruption in transit (retryable) from
    an object damaged in the store (not retryable), and checks the MD5 against the manifest's."""
    return store.download_to(obj["key"], sink, expected_md5=obj["md5"], expected_size=obj["bytes"],
                             content_encoding=obj.get("content_encoding")) is not None


def _second_download_told(again: DownloadError, first_md5: str, second_md5: str, uri: str) -> DownloadError:
    """What a multipart object's second complete download with a wrong MD5 (``damaged`` None: whole, the
    manifest's size, another MD5), after a first alike, says. The same digest twice is what the store holds:
    damaged, and no retry can fix it (verify's deep check gives the same verdict). Two different digests are
    the way's fault: retryable."""
    if second_md5 == first_md5:
        return DownloadError(f"{uri} is damaged: two complete downloads agree on MD5 {second_md5}, not the "
                             "manifest's; restore it from a replica or backup, or archive the day again",
                             damaged=True, retryable=False, cause="the stored object is damaged")
    return DownloadError(f"{again.message} (two downloads gave two different wrong digests: the bytes were corrupted "
                         "on the way, not in the store)", damaged=False, retryable=True, remedy="retried "
                         "automatically; if it persists, check the network path to the store",
                         cause="corrupted in transit")


@contextlib.contextmanager
def downloaded(store: S3Store, manifest: dict, temp_dir: str | os.PathLike | None = None) -> Iterator[str]:
    """The manifest's data object in a private temp file, after checking its size and MD5 against
    the manifest: a damaged object is refused before a single row is loaded. Removed afterwards."""
    obj = manifest["object"]
    table, day = manifest.get("table"), manifest.get("day")
    try:  # nameless (see sink.py): gone with the process however it ends, SIGKILL included
        fd, path, name = open_nameless(temp_dir, ".archive")
    except OSError as exc:
        raise temp_file_refused(exc, table, day, temp_dir, "restoring", "the download") from exc
    try:
        with os.fdopen(fd, "wb", buffering=0, closefd=False) as file:
            sink = _HashingWriter(file)
            try:
                try:
                    found = _fetch(store, obj, sink)
                except DownloadError as exc:
                    if exc.damaged is not None:
                        raise
                    # a multipart object's ETag is no MD5, so a wrong MD5 may be the way, not the store:
                    # downloaded again, the same wrong MD5 says the stored object is damaged
                    first_md5 = sink.md5
                    file.seek(0)
                    file.truncate()
                    sink = _HashingWriter(file)
                    try:
                        found = _fetch(store, obj, sink)
                    except DownloadError as again:
                        if again.damaged is None:
                            raise _second_download_told(again, first_md5, sink.md5, store.uri(obj["key"])) from again
                        raise
            except DownloadError as exc:
                if exc.damaged is not False:  # bytes that differ from the manifest's: damaged (or, None, perhaps)
                    raise ArchiveCorruptError(f"the archive of {table} for {day}: {exc}; nothing was loaded",
                                              table=table, day=day, retryable=exc.retryable, cause=exc.cause) from exc
                # a request that failed (throttled, refused, dropped) or bytes corrupted on the way: not the archive
                raise RestoreError(f"the archive of {table} for {day} could not be downloaded: {exc.message}; "
                                   "nothing was loaded", table=table, day=day, retryable=exc.retryable,
                                   remedy=exc.remedy, cause=exc.cause) from exc
            except LocalFileError as exc:
                raise LocalFileError(f"restoring {table} for {day}: {exc.message}; nothing was loaded", table=table,
                                     day=day, retryable=False, remedy=exc.remedy, cause=exc.cause,
                                     directory=exc.directory) from exc
        if not found:
            raise ArchiveMissingError(f"the archive of {table} for {day} is missing: {store.uri(obj['key'])} does not exist "
                               "although its manifest does; restore from a replica or backup of the bucket",
                               table=table, day=day)
        if sink.size != obj["bytes"] or sink.md5 != obj["md5"]:
            raise ArchiveCorruptError(
                f"the archive of {table} for {day} ({store.uri(obj['key'])}) is damaged: {sink.size:,} bytes with "
                f"MD5 {sink.md5}, its manifest records {obj['bytes']:,} bytes with MD5 {obj['md5']}; nothing was "
                "loaded. Restore the object from a replica or backup of the bucket (or archive the day again if "
                "the source still has it)", table=table, day=day)
        yield os.fspath(path)
    finally:
        os.close(fd)
        if name is not None:
            name.unlink(missing_ok=True)


def find_manifest(store: S3Store, spec: TableSpec, day: Period | dt.date | str,
                  listed: list[str] | None = None, *, identity: Whose = None) -> dict | None:
    """The manifest of ``spec``'s current archive of ``day``, or None if there is none: the one at its rendered
    key or one under the table's other formats and codecs (one listing), whichever is the day's now (see
    manifest.day_archive): an archive written under another format (a removed day's only copy, say) is still the
    day's, its manifest says how to read it, and one at the rendered key a format change back left behind is a
    superseded one, without the rows archived since. ``listed``: a range's listing (listing.listed_absent's), in
    place of the day's own. A manifest either listing shows that reads as absent is no "no archive" (a restore
    reported the day missing while ``list`` showed it archived): the retryable inconsistency is raised, see
    manifest.day_archive. ``identity``: the database restored into, this deployment's (another database's archive
    under another format's key is not the day's: see manifest.day_archive)."""
    day = spec.period(day)
    key = keys.table_day_key(spec, day, store.prefix)
    try:
        key, manifest = day_archive(store, spec, day, key, decoded_manifest(store, keys.manifest_key(key)), listed,
                                    identity=identity)
        if manifest is None:
            return None
        owned(manifest, spec.name, day.isoformat(), key=key)
    except ArchiveError as exc:
        raise RestoreError(f"reading the manifest of {spec.name} for {day} failed: {exc.message}; nothing was restored",
                           table=spec.name, day=day.isoformat(), retryable=exc.retryable, remedy=exc.remedy,
                           cause=exc.cause) from exc
    except ManifestError as exc:  # (``exc.key``: one under another format's key that may be the day's current)
        raise RestoreError(f"the manifest {store.uri(keys.manifest_key(exc.key or key))} of {spec.name} for {day} "
                           f"cannot be trusted ({exc.message}); nothing was restored", table=spec.name,
                           day=day.isoformat(),
                           remedy=exc.remedy or "restore it from a replica or backup of the bucket, or archive the "
                                                "day again if the source still has it") from None
    if (other := another_period(manifest, day)) is not None:  # (daily to monthly: the month's first day's archive)
        raise RestoreError(f"{spec.name} {day}: {other}; nothing was restored", table=spec.name, day=day.isoformat(),
                           retryable=False, remedy=f"configure the table as it was archived "
                                                   f"({manifest.get('granularity') or 'daily'} in "
                                                   f"{manifest.get('timezone') or 'UTC'}) to restore that period")
    return manifest


class Relation(NamedTuple):
    """A table as its two parts, never split again once known: a partition may live in a schema whose name
    holds a dot, and ``"old.data".events`` split at its first dot is another relation. Shown as
    :func:`~archive_pipeline.core.source.relation_name` writes it."""

    schema: str
    name: str

    def __str__(self) -> str:
        return relation_name(self.schema, self.name)

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @classmethod
    def configured(cls, qualified: str) -> Relation:
        """A configured name, ``schema.table`` split at its first dot (a configured schema holds none)."""
        schema, _, name = qualified.partition(".")
        return cls(schema, name)


_QUOTED = r'"((?:[^"]|"")+)"'  # one SQL-quoted identifier, "" standing for "


def _unquoted(text: str) -> str:
    """``text`` as SQL reads it when all of it is one double-quoted identifier, else as it is."""
    match = re.fullmatch(_QUOTED, text, re.S)
    return match[1].replace('""', '"') if match else text


def parse_relation(qualified: str) -> Relation | None:
    """A table named to restore into: ``schema.table`` split at its first dot, as configured names are, each
    part as the catalog spells it; either part may be written in SQL's double quotes instead, as psql would
    take it (``"old.data".events`` names a schema holding a dot, ``public."Events"`` the same as
    ``public.Events``). None if it names no schema and table."""
    quoted = re.fullmatch(_QUOTED + r"\.(.*)", qualified, re.S)
    if quoted:
        schema, rest = quoted[1].replace('""', '"'), quoted[2]
    else:
        schema, dot, rest = qualified.partition(".")
        if not dot:
            return None
    relation = Relation(schema, _unquoted(rest))
    return relation if relation.schema and relation.name else None


def name_problem(qualified: str) -> str | None:
    """Why ``qualified`` cannot name a table to restore into, or None: it must be ``schema.table`` (see
    :func:`parse_relation`), not a temporary table, and each part no longer than PostgreSQL's 63 bytes in
    any encoding (a longer one was created cut short, and the result named a table that does not exist);
    :func:`encoding_problem` checks the bytes in the database's own encoding."""
    relation = parse_relation(qualified)
    if relation is None:
        return f"{qualified!r} is not a schema-qualified table name ('schema.table')"
    if re.fullmatch(r"pg_(toast_)?temp(_\d+)?", relation.schema):
        return (f"{qualified!r} is a temporary table, which PostgreSQL drops when the restoring session ends: restore "
                "into a table of a permanent schema")
    if (stray := _stray_quoted_part(qualified)) is not None:  # (a quoted name with more after its closing quote)
        return (f"{qualified!r} has {stray!r} where a name in SQL's double quotes was to stand alone: write the name "
                "in quotes with nothing before or after them (a blank inside the quotes is part of the name)")
    blank = next((part for part in _unquoted_parts(qualified) if part != part.strip()), None)
    if blank is not None:  # (a target pasted with a blank: a table named "events_back " looks like events_back)
        return (f"{qualified!r} has white space around {blank.strip()!r}, which would be part of the table's name: "
                "write the name without it, or in SQL's double quotes if the blank is meant "
                f"({sql_name(blank, qualified=False)})")
    for part in relation:
        if len(part) > MAX_NAME_BYTES:  # at least a byte a character, whatever the encoding
            return (f"{part!r} is {len(part)} characters long and PostgreSQL keeps {MAX_NAME_BYTES} bytes of a name "
                    f"(it would be {part[:MAX_NAME_BYTES]!r} or shorter): choose a shorter name")
    return None


def _unquoted_parts(qualified: str) -> list[str]:
    """The parts of ``qualified`` written without SQL's double quotes, as written (see :func:`parse_relation`)."""
    quoted = re.fullmatch(_QUOTED + r"\.(.*)", qualified, re.S)
    schema, rest = (None, quoted[2]) if quoted else qualified.partition(".")[::2]
    return [part for part in (schema, rest) if part is not None and not part.startswith('"')]


def _stray_quoted_part(qualified: str) -> str | None:
    """The part of ``qualified`` that starts with a double quote but is not one quoted name alone (``"Events" ``: a
    blank after the closing quote), which parse_relation would take as written, quotes and all; else None."""
    quoted = re.fullmatch(_QUOTED + r"\.(.*)", qualified, re.S)
    parts = [quoted[2]] if quoted else list(qualified.partition(".")[::2])
    return next((part for part in parts if part.startswith('"') and not re.fullmatch(_QUOTED, part, re.S)), None)


def _target(conn: psycopg.Connection, qualified: str) -> Relation:
    """The table ``qualified`` names, once this database can hold its name as it is."""
    problem = name_problem(qualified)
    relation = parse_relation(qualified)
    if problem is None:
        problem = encoding_problem(conn, relation)
    if problem:
        raise RestoreError(problem, retryable=False, cause="the target's name cannot be a table's in this database",
                           remedy="name a target of at most 63 bytes in the database's encoding, of characters it has")
    return relation


def _require_column_names(conn: psycopg.Connection, manifest: dict) -> None:
    """Refuse, before anything is downloaded, an archive with a column this database cannot name: archived from
    a UTF-8 database, a column ``日本`` has no name in a LATIN1 one (the load failed with "unexpected error", or
    said to fix the offending rows)."""
    for name in manifest_columns(manifest):
        missing = missing_character(conn, name)
        if missing:
            raise RestoreError(
                f"restoring {manifest['table']} for {manifest['day']}: the archived column {name!r} cannot be a column "
                f"of this database: {missing}; nothing was restored", table=manifest["table"], day=manifest["day"],
                retryable=False, cause="an archived name has a character the database's encoding lacks",
                remedy="restore into a database whose encoding holds every archived name and value (UTF8)")
        too_long = stored_name_problem(conn, name)  # (longer than PostgreSQL keeps: a LATIN1 name's 'Ü' is 2 bytes here)
        if too_long:
            raise RestoreError(
                f"restoring {manifest['table']} for {manifest['day']}: the archived column {too_long}, so it cannot be "
                "a column of this database as it is (two such names cut short could even meet); nothing was restored",
                table=manifest["table"], day=manifest["day"], retryable=False,
                cause="an archived name is longer than this database's encoding lets a name be",
                remedy="restore into a database whose encoding is the source's "
                       f"({(manifest.get('source') or {}).get('encoding') or 'as archived'}), where the name is short "
                       "enough")


def encoding_problem(conn: psycopg.Connection, relation: Relation) -> str | None:
    """Why this database cannot hold ``relation``'s name as it is, or None (see
    :func:`~archive_pipeline.core.source.stored_name_problem`)."""
    problem = next(filter(None, (stored_name_problem(conn, part) for part in relation)), None)
    return f"the target {relation}: {problem}" if problem else None


# A table a restore creates records, in its comment, the days restored into it (in each day's transaction),
# so the same command run again after it was killed resumes: the days listed are "already restored", the
# others load into it, and none is loaded twice (a table without a day column cannot tell its days apart).
_RESTORE_MARK = "archive_pipeline: rows of {table} restored here for"


def _marked_days(conn: psycopg.Connection, relation: Relation | None, table: str) -> set[str] | None:
    """The days the restore mark of ``relation`` lists for ``table``, or None: no such table, or no mark of
    ours (a table the user made). Read under a transaction-level advisory lock of the target, which every
    restore into a new or existing target takes first: two restores into one target (two ranges at once)
    create it once and never lose each other's days from the mark. (An advisory lock needs no privilege on
    the table, as LOCK TABLE would.)"""
    if relation is None:
        return None
    conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(%s, 0))",
                 (f"archive_pipeline restore into {relation}",))
    return _listed_days(conn, relation, table)


def _unsure_after_another(conn: psycopg.Connection, exc: ArchiveError, manifest: dict, into: Into,
                          relation: Relation | None, original: set[Relation]) -> None:
    """Another restore of the day into the same table of the user's is running: where nothing tells the day's
    rows apart there (no day column, no restore mark), a retry could not tell whether that one loaded the day
    and would load it twice: not retryable, and the remedy says to look first."""
    if into != "existing" or relation is None or relation in original or manifest.get("day_column") or \
            _listed_days(conn, relation, manifest.get("table") or "") is not None:
        return
    exc.retryable = False
    exc.remedy = (f"another restore into {relation} is running; {relation} has no day column, so running this again "
                  f"cannot tell whether that one loaded {manifest.get('day')}: look at {relation} once it has ended, "
                  "and run this again only if it did not (or restore into a new table, into='new', which keeps "
                  "track of its days)")


def _another_restore_into(exc: ArchiveError, table: str, manifest: dict, root: Relation | None) -> ArchiveError:
    """The table-day lock of a restore into ``root`` held by another run, said of the archived table and day."""
    day = manifest.get("day")
    holder = str(exc).split(" right now", 1)[1] if " right now" in str(exc) else ""
    return ArchiveError(f"{table} {day}: another restore of the day into {root} is running right now{holder}",
                        table=table, day=day, retryable=True, cause="another restore holds the target's day",
                        remedy=f"wait for that restore to end, then run this again (it finds the day restored into "
                               f"{root} if that one committed)")


def _tree_root(conn: psycopg.Connection, relation: Relation | None) -> Relation | None:
    """The table at the top of ``relation``'s partition or inheritance tree (itself if none), through the views
    it is a simple view of (an updatable view writes into its base table): the rows of a restore into a
    partition or a view land in the table too, so two restores of one day, one naming the table and one its
    partition or a view of it, must take one lock (else each proves only its own uncommitted rows, and both
    load the day)."""
    if relation is None:
        return None
    relation = _view_base(conn, relation)
    found = conn.execute(
        "WITH RECURSIVE up(oid, depth) AS (SELECT pg_catalog.to_regclass(%s)::oid, 0 "
        "UNION ALL SELECT i.inhparent, up.depth + 1 "
        "FROM up JOIN pg_catalog.pg_inherits i ON i.inhrelid = up.oid WHERE up.depth < 100) "
        "SELECT n.nspname, c.relname FROM up JOIN pg_catalog.pg_class c ON c.oid = up.oid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhrelid = up.oid) ORDER BY up.oid LIMIT 1",
        (relation.identifier.as_string(conn),)).fetchone()
    return Relation(*found) if found else relation


def _view_base(conn: psycopg.Connection, relation: Relation) -> Relation:
    """The one table a (chain of) view(s) reads, where ``relation`` is a view reading exactly one relation
    (what an automatically updatable view is); else ``relation`` itself."""
    for _ in range(100):  # (a chain of views, never a cycle: PostgreSQL refuses one)
        found = conn.execute(
            "SELECT pg_catalog.array_agg(DISTINCT d.refobjid) FROM pg_catalog.pg_class v "
            "JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid "
            "JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid "
            "AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> v.oid "
            "JOIN pg_catalog.pg_class t ON t.oid = d.refobjid AND t.relkind IN ('r', 'p', 'v', 'f') "
            "WHERE v.oid = pg_catalog.to_regclass(%s) AND v.relkind = 'v'",
            (relation.identifier.as_string(conn),)).fetchone()
        if not found or not found[0] or len(found[0]) != 1:
            return relation
        named = conn.execute("SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                             "ON n.oid = c.relnamespace WHERE c.oid = %s", (found[0][0],)).fetchone()
        relation = Relation(*named)
    return relation


def _owns(conn: psycopg.Connection, relation: Relation) -> bool:
    """Whether the restoring role may write the table's comment (it owns the table, or is a member of its owner)."""
    found = conn.execute(
        "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", relation).fetchone()
    return bool(found and found[0])


def _refuse_unmarkable(conn: psycopg.Connection, manifest: dict, relation: Relation) -> None:
    """A marked table the restoring role does not own: the mark (a comment, the owner's to write) cannot list the
    day, so a run of the same command again (a range resumed after a kill) finds it unlisted. Where the day's rows
    are told by a day column and the archive's fingerprint, that run finds them there (already restored); else it
    would load the day twice, so the day is refused before anything is loaded."""
    if manifest.get("day_column") and fp.recorded_algorithm(manifest.get("fingerprint")) is not None:
        return
    owner, role, superuser = conn.execute(  # (the role SET ROLE made current)
        "SELECT pg_catalog.pg_get_userbyid(c.relowner), CURRENT_USER, coalesce((SELECT r.rolsuper FROM "
        "pg_catalog.pg_roles r WHERE r.oid = c.relowner), false) FROM pg_catalog.pg_class c WHERE c.oid = "
        "%s::pg_catalog.regclass", (relation.identifier.as_string(conn),)).fetchone()
    owner, role = sql_name(owner, qualified=False), sql_name(role, qualified=False)
    uncomputable = fp.why_uncomputable(manifest.get("fingerprint"))
    lacks = ("the archive has no day column to tell its rows by" if not manifest.get("day_column") else
             uncomputable[0] if uncomputable else "the manifest has no fingerprint this version computes")
    # (never advise granting a superuser's role: restoring as it is the owner's own choice to make)
    member = "" if superuser else f" (or a member of it: GRANT {owner} TO {role})"
    raise TargetError(
        f"{relation} carries the restore mark of {manifest['table']} (the days restored into it), which only its "
        f"owner, {owner}, may write, not {role}: the day would be loaded without being listed, and, "
        f"as {lacks}, a run of the same command again could not tell it was restored and would load it twice; "
        "nothing was restored", table=manifest["table"], day=manifest["day"], retryable=False,
        cause="the restoring role may not write the target's restore mark",
        remedy=f"restore as {owner}{member}, or into a new table of your own (into='new')")


def _listed_days(conn: psycopg.Connection, relation: Relation | None, table: str) -> set[str] | None:
    """The days the restore mark of ``relation`` lists for ``table`` as it reads now, without a lock."""
    if relation is None:
        return None
    found = conn.execute(
        "SELECT pg_catalog.obj_description(c.oid, 'pg_class') FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        relation).fetchone()
    text, prefix = (found[0] if found else None), _RESTORE_MARK.format(table=table)
    return set(text[len(prefix):].split()) if text and text.startswith(prefix + " ") else None


def _still_restored(conn: psycopg.Connection, relation: Relation, manifest: dict, listed: set[str] | None) -> bool:
    """Whether the mark lists the day and the target still holds its rows: the archive's, by count and
    fingerprint (or, for a table without a day column, any rows at all): a day whose rows were deleted or
    changed since, or archived again since, is no reason to load nothing (loaded again, it is checked as any
    day is)."""
    if listed is None or manifest.get("day") not in listed:
        return False
    where = _day_where(conn, relation, manifest, whole=False)
    if where is None:
        return conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(relation.identifier)).fetchone()[0]
    # (a version 1 manifest has no fingerprint: with the mark, its count is all there is)
    return _holds_archived_rows(conn, relation, manifest, where, count_will_do=True)


def _holds_archived_rows(conn: psycopg.Connection, relation: Relation, manifest: dict, where: sql.Composable | None,
                         *, count_will_do: bool = False) -> bool:
    """Whether the rows of ``relation`` matching ``where`` (all of them for None) are the archive's: as many,
    and with its fingerprint (a day archived again since, with corrected rows, is not the one restored)."""
    held = conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {} WHERE {}").format(
        relation.identifier, where if where is not None else sql.SQL("TRUE"))).fetchone()[0]
    if held != int(manifest.get("rows") or 0) or held == 0:
        return False
    # a target of narrower types (real for double precision) or changed composites prints rounded or swapped
    # values as the archive's: refused as a load into it is, never "already restored"
    _refuse_approximation(conn, manifest, relation)
    recorded = manifest.get("fingerprint")
    if fp.recorded_algorithm(recorded) is None:
        return count_will_do
    columns = _hashed_columns(conn, relation, manifest)
    return str(fp.compute(conn, relation.identifier, columns, where, fp.algorithm_for(recorded))) == recorded


def _loaded_before(conn: psycopg.Connection, relation: Relation, manifest: dict, whole: bool) -> bool:
    """Into the original table or one of the user's: whether its day already holds exactly the archived rows,
    i.e. an earlier run of the same restore committed this day (a range restore killed on a later day, then run
    again, loaded it twice, failed its check and stopped there for ever). Needs a day column, or the day's own
    table (naming mode), to tell the day's rows apart; and a fingerprint."""
    if not whole and not manifest.get("day_column"):
        return False
    try:
        with conn.transaction():  # (a savepoint: what fails here is said by the load's own checks after it)
            return _holds_archived_rows(conn, relation, manifest, _day_where(conn, relation, manifest, whole))
    except (ArchiveError, psycopg.errors.UndefinedColumn, psycopg.errors.DatatypeMismatch):
        return False  # a target without the day column or an archived column (or of another type): not the day


def _already_restored(relation: Relation, manifest: dict, started: float, *, proven: bool = False) -> RestoreResult:
    """A day found restored: listed by the target's restore mark, or ``proven`` (its rows there carry the
    archive's fingerprint)."""
    table, day = manifest.get("table"), manifest.get("day")
    why = f"{relation} holds exactly its archived rows" if proven else f"{relation}'s restore mark lists {day}"
    return RestoreResult(table=table, day=day, target=str(relation), rows=int(manifest["rows"]), inserted=0,
                         seconds=time.perf_counter() - started, fingerprint_checked=proven,
                         fingerprint=manifest.get("fingerprint") if proven else None, check=f"already restored: {why}")


def _mark_restored(conn: psycopg.Connection, relation: Relation, table: str, days: set[str]) -> None:
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
        relation.identifier, sql.Literal(f"{_RESTORE_MARK.format(table=table)} {' '.join(sorted(days))}")))


def _exists(conn: psycopg.Connection, relation: Relation) -> bool:
    return conn.execute(
        "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s", relation).fetchone() is not None


_TABLE_KINDS = frozenset("rpf")  # what rows are restored into: a table, a partitioned table, a foreign table
_KIND_WORDS = {"r": "a table", "p": "a partitioned table", "f": "a foreign table", "v": "a view",
               "m": "a materialized view", "S": "a sequence", "i": "an index", "I": "a partitioned index",
               "c": "a composite type", "t": "a type (an enum, a domain or another)"}


def _kind(conn: psycopg.Connection, relation: Relation) -> str | None:
    """What ``relation``'s name is in its schema: a relation's relkind, ``t`` for a type that is no relation's
    row type (an enum, a domain: they share the namespace of tables' row types), or None (free)."""
    found = conn.execute(
        "SELECT c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s UNION ALL "
        "SELECT 't' FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = %s AND t.typname = %s AND t.typrelid = 0 "
        "AND NOT EXISTS (SELECT FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)",  # (an array type is moved aside)
        (*relation, *relation)).fetchone()
    return found[0] if found else None


def _is_partition(conn: psycopg.Connection, relation: Relation) -> bool:
    return bool(conn.execute(
        "SELECT c.relispartition FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s", relation).fetchone()[0])


def _partition(definition: dict,
               conn: psycopg.Connection | None = None) -> tuple[Relation, Relation, str | None] | None:
    """The day's partition a manifest records: (parent, child, bound), or None. The child's schema and name
    are recorded apart since a schema may hold a dot; older manifests have only ``child``, "schema.name"
    (read as :func:`_older_child` says with ``conn``, else split at its first dot)."""
    partition = definition.get("partition") or {}
    if not partition.get("child"):
        return None
    if not isinstance(partition.get("parent"), str) or not partition["parent"] or (
            partition.get("child_name") and not isinstance(partition.get("child_schema"), str)):
        raise RestoreError(f"the manifest records the day's partition {partition.get('child')!r} without its parent "
                           "table and schema (the manifest was edited?); nothing was restored", retryable=False,
                           cause="the manifest's partition record is incomplete",
                           remedy="restore into a table you name (into='new' or 'existing')")
    if partition.get("child_name"):
        child = Relation(partition["child_schema"], partition["child_name"])
    else:
        child = _older_child(conn, partition["child"]) if conn else Relation.configured(partition["child"])
    return Relation.configured(partition["parent"]), child, partition.get("bound")


def _recorded_partition(manifest: dict,
                        conn: psycopg.Connection | None = None) -> tuple[Relation, Relation, str | None] | None:
    """The day's partition (see :func:`_partition`): the one its removal dropped or detached, as its mark records
    it, else the one it was archived from. The table may have been laid out anew in between (a week's partition
    split into days, a day moved out of the DEFAULT partition): the removed one is the one to put back."""
    dropped = _removed_partition(manifest)
    if dropped.get("child"):
        return _partition({"partition": dropped}, conn)
    return _partition(table_definition(manifest), conn)


def _removed_partition(manifest: dict) -> dict:
    """The partition the day's removal recorded dropping or detaching (``removed.partition``), or {} where none."""
    removed = manifest.get("removed") if isinstance(manifest.get("removed"), dict) else {}
    return removed["partition"] if isinstance(removed.get("partition"), dict) else {}


def _older_child(conn: psycopg.Connection, child: str) -> Relation:
    """An older manifest's child, "schema.name" as one string: split at its first dot, as it always was, unless
    no schema of that name exists and one named up to a later dot does (a schema holding a dot). Where schemas
    exist for two readings it is refused: re-creating the other relation would put the day's rows elsewhere."""
    readings = [Relation(child[:i], child[i + 1:]) for i, c in enumerate(child) if c == "."]
    if len(readings) < 2:
        return Relation.configured(child)
    schemas = {name for (name,) in conn.execute("SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname = "
                                                "ANY(%s)", ([r.schema for r in readings],))}
    found = [r for r in readings if r.schema in schemas]
    if len(found) > 1:
        raise RestoreError(f"the manifest names the day's partition {child!r} in one string (written before "
                           "archive_pipeline recorded a partition's schema apart), which reads as "
                           f"{' or '.join(f'the table {r.name!r} of the schema {r.schema!r}' for r in found)}, and "
                           "schemas of both names exist",
                           retryable=False, remedy="re-create the partition by hand (CREATE TABLE ... PARTITION OF "
                                                   "... with its bound) and restore into the original table again")
    return found[0] if found else readings[0]


def table_definition(manifest: dict) -> dict:
    """The manifest's table definition; for a version 1 manifest, the one its columns imply."""
    definition = manifest.get("table_definition")
    if definition:
        return definition
    return {"columns": [{"name": c["name"], "type": c["pg_type"], "not_null": not c.get("nullable", True)}
                        for c in manifest["columns"]], "primary_key": None, "partition": None}


def checked_type_sql(conn: psycopg.Connection, type_text: str, where: str) -> sql.Composable:
    """A type name from a manifest (``format_type`` text such as ``numeric(12,2)``), as SQL for DDL,
    once PostgreSQL's own type-name parser accepts it as exactly one existing type (``to_regtype``):
    a manifest comes from the bucket and must not be able to put SQL into a CREATE TABLE."""
    try:
        with conn.transaction():
            found = conn.execute("SELECT pg_catalog.to_regtype(%s) IS NOT NULL", (type_text,)).fetchone()[0]
    except psycopg.errors.InsufficientPrivilege as exc:  # the name is fine; the role may not look into its schema
        denied = exc.diag.message_primary or str(exc)
        schema = re.fullmatch(r"permission denied for schema (.+)", denied)
        role = acting_role(conn)  # (whose privileges were checked: a SET ROLE's)
        grant = (sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema.group(1)),
                                                                 sql.Identifier(role)).as_string(conn)
                 if schema else f"GRANT USAGE on the schema of {type_text} TO {role}")
        raise SourceError(f"{where}: role {role!r} may not use the type {type_text!r} ({denied})",
                          retryable=False, cause="permission denied", remedy=grant) from None
    except (psycopg.errors.SyntaxError, psycopg.errors.InvalidTextRepresentation, psycopg.errors.InvalidName,
            psycopg.errors.NameTooLong, psycopg.errors.UndefinedObject, psycopg.errors.InvalidParameterValue,
            psycopg.errors.CharacterNotInRepertoire, psycopg.errors.UntranslatableCharacter) as exc:
        # what the type-name parser says of text that is no type name: the manifest's, damaged
        raise RestoreError(f"{where}: {type_text!r} is not a type name ({exc}); the manifest is damaged") from None
    except psycopg.Error as exc:  # the session's fate (terminated, a timeout, a lost connection), not the name's
        found_ = classify(exc, user=acting_role(conn), login=conn.info.user)
        raise RestoreError(f"{where}: checking the type name {type_text!r} failed: {found_.cause} "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                           retryable=found_.retryable, remedy=found_.remedy, cause=found_.cause) from exc
    if not found:
        raise TypeMissingError(f"{where}: type {type_text!r} does not exist in this database; create it (e.g. the "
                               "enum or composite type, or the extension providing it) and restore again",
                               type_text, where)
    return CatalogText(type_text)


def _widen_own(conn: psycopg.Connection, manifest: dict, relation: Relation) -> None:
    """Add to a table an earlier restore of this table created (``into='new'``: it carries the restore mark) the
    archived columns it lacks, nullable, of their recorded types, and let those the day lacks take NULL: the
    source gained, dropped or renamed them between the days a range restores, and the table made from the first
    day's definition refused every later day ("column does not exist", a NOT NULL), however often the range was
    restored again (and its primary key, over a column the day lacks; and a NOT NULL the source dropped since the
    first day, which refused the later day's NULLs). Only such a table: any other target is the user's."""
    oid = conn.execute("SELECT %s::pg_catalog.regclass::pg_catalog.oid", (relation.identifier.as_string(conn),)
                       ).fetchone()[0]
    have = set(column_names(conn, oid).values())
    definition, day_key = table_definition(manifest)["columns"], table_definition(manifest).get("primary_key") or []
    for column in definition:
        if column["name"] not in have:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                relation.identifier, sql.Identifier(column["name"]),
                checked_type_sql(conn, column["type"], f"column {column['name']!r}")))
    # a column the day lacks (dropped or renamed in the source since an earlier day), or has without the NOT NULL
    # an earlier day's definition gave it (dropped in the source since), takes NULL for its rows, as a table made
    # from the day's own definition would; a primary key over it (the first day's, `id` renamed `event_id` since)
    # cannot hold such rows: it goes, as the day's rows may have no value for it (and the days before keep theirs)
    nullable = (have - {column["name"] for column in definition}) | {
        column["name"] for column in definition
        if column["name"] in have and not column.get("not_null") and column["name"] not in day_key}
    for name, key in conn.execute(
            "SELECT c.conname, ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.conrelid "
            "AND a.attnum = ANY(c.conkey)) FROM pg_catalog.pg_constraint c WHERE c.conrelid = %s AND c.contype = 'p'",
            (oid,)).fetchall():
        if nullable.intersection(key):
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(relation.identifier, sql.Identifier(name)))
    for name in sorted(nullable):
        if conn.execute("SELECT attnotnull FROM pg_catalog.pg_attribute WHERE attrelid = %s AND attname = %s",
                        (oid, name)).fetchone()[0]:
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(
                relation.identifier, sql.Identifier(name)))
    # a column widened in the source between the days (integer to bigint, as ids near 2^31): widened here too,
    # every value the table holds reading back the same (fingerprint.widening: the one list, which the proof follows)
    now = {name: kind for name, kind, _, _ in conn.execute(_TARGET_TYPES, (relation.identifier.as_string(conn),))}
    for column in definition:
        if column["name"] in now and fp.widening(now[column["name"]], column["type"]) is not None:
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
                relation.identifier, sql.Identifier(column["name"]),
                checked_type_sql(conn, column["type"], f"column {column['name']!r}")))
    if Relation.configured(manifest.get("source_relation") or manifest["table"]) != \
            Relation.configured(manifest["table"]):
        # naming mode: each day's rows come from a table of its own, whose keys are its own (ids from 1 each day):
        # a key of the first day's table held across the days refused every later day's rows as already there
        for (name,) in conn.execute("SELECT conname FROM pg_catalog.pg_constraint WHERE conrelid = %s "
                                    "AND contype IN ('p', 'u')", (oid,)).fetchall():
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(relation.identifier,
                                                                             sql.Identifier(name)))


# A parent's columns as a table created on its own declares them to inherit from it or be attached to it (PostgreSQL
# asks the same type and collation, NOT NULL where the parent has it, a generated column generated alike), with the
# parent's defaults, as CREATE TABLE ... INHERITS or PARTITION OF copies them
_PARENT_COLUMNS = """
SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
       CASE WHEN a.attcollation <> t.typcollation THEN pg_catalog.format('%%I.%%I', n.nspname, co.collname) END,
       a.attnotnull, a.attgenerated::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# The parent's CHECK constraints a table must have to inherit from it or be attached to it ("missing constraint")
_PARENT_CHECKS = """
SELECT c.conname::text, pg_catalog.pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c
WHERE c.conrelid = %s::pg_catalog.regclass AND c.contype = 'c' AND NOT c.connoinherit
ORDER BY 1
"""

_GENERATED = {"s": "STORED", "v": "VIRTUAL"}


def _day_table_statement(conn: psycopg.Connection, target: Relation, definition: dict, parents: Sequence[Relation],
                         *, own_columns: bool) -> sql.Composable:
    """``CREATE TABLE target (...)`` with the archived columns in the archived order, the day table's as it was
    (a day table made on its own, ``(v, at, id)``, then attached to or inheriting from ``(id, at, v)``): PARTITION
    OF and INHERITS lay the columns out in the parents' order, and compare, verify --deep and the next removal then
    called the restored day's columns reordered, its archive stale. A column the parents have is declared as they
    have it (their type: one widened since; their NOT NULL, collation, default, generation), with their CHECK
    constraints, so the ATTACH or INHERIT that follows takes it; the parents' columns the archive lacks (added since)
    come last; an archived column no parent has is the day table's own (``own_columns``; a partition has none)."""
    described: dict[str, sql.Composable] = {}
    checks: dict[str, str] = {}
    for parent in parents:
        name = parent.identifier.as_string(conn)
        for column, kind, collation, not_null, generated, default in conn.execute(_PARENT_COLUMNS, (name,)):
            described.setdefault(column, sql.SQL(" ").join(filter(None, (
                sql.Identifier(column), sql.SQL(kind), collation and sql.SQL("COLLATE " + collation),
                not_null and sql.SQL("NOT NULL"),
                default and sql.SQL("GENERATED ALWAYS AS ({}) {}" if generated in _GENERATED else "DEFAULT {}").format(
                    sql.SQL(default), sql.SQL(_GENERATED.get(generated, "")))))))
        for constraint, text in conn.execute(_PARENT_CHECKS, (name,)):
            checks.setdefault(constraint, text)
    archived = [column["name"] for column in definition["columns"]]
    items = [described[column["name"]] if column["name"] in described else sql.SQL("{} {}{}").format(
        sql.Identifier(column["name"]), checked_type_sql(conn, column["type"], f"column {column['name']!r}"),
        sql.SQL(" NOT NULL") if column.get("not_null") else sql.SQL(""))
        for column in definition["columns"] if own_columns or column["name"] in described]
    items += [item for column, item in described.items() if column not in archived]
    items += [sql.SQL("CONSTRAINT {} {}").format(sql.Identifier(constraint), sql.SQL(text))
              for constraint, text in checks.items()]
    if own_columns and definition.get("primary_key"):
        items.append(sql.SQL("PRIMARY KEY ({})").format(_column_list(definition["primary_key"])))
    return sql.SQL("CREATE TABLE {} ({})").format(target.identifier, sql.SQL(", ").join(items))


def _create_table(conn: psycopg.Connection, target: Relation, definition: dict,
                  inherits: Sequence[Relation] = ()) -> None:
    """The day's table from the archived definition, then INHERIT each of ``inherits`` (see
    :func:`_day_table_statement`: in the archived column order, with the parents' columns and CHECKs)."""
    try:
        conn.execute(_day_table_statement(conn, target, definition, inherits, own_columns=True))
    except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation) as exc:
        # another session created the name since this restore looked (a concurrent restore of another day into
        # the same new table): the catalog's own unique index says so, not a value of the archive
        if isinstance(exc, psycopg.errors.UniqueViolation) and not (exc.diag.table_name or "").startswith("pg_"):
            raise
        raise TargetError(f"{target} already exists: another session created it while this restore ran (a "
                          "restore of another day into the same new table?); nothing was restored",
                          remedy="restore into it with into='existing' (the command line: --into existing), or "
                                 "choose a new name") from None
    for parent in inherits:
        conn.execute(_attach_statement(conn, target, {"schema": parent.schema, "name": parent.name}))


_RANGE_BOUND = re.compile(r"FOR VALUES FROM \((?P<lo>.*)\) TO \((?P<hi>.*)\)", re.S)
_LIST_BOUND = re.compile(r"FOR VALUES IN \((?P<items>.*)\)", re.S)
_BOUND_ITEM = re.compile(r"\s*(?:'(?P<s>(?:[^']|'')*)'|(?P<k>MINVALUE|MAXVALUE|NULL|TRUE|FALSE)"
                         r"|(?P<n>-?\d+(?:\.\d+)?))\s*(?:,|$)")


def _bound_items(text: str) -> sql.Composable:
    items, position = [], 0
    while position < len(text):
        match = _BOUND_ITEM.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(text)
        if match.group("s") is not None:
            items.append(sql.Literal(match.group("s").replace("''", "'")))
        else:
            items.append(sql.SQL(match.group("k") or match.group("n")))
        position = match.end()
    return sql.SQL(", ").join(items)


def partition_bound(bound: str) -> sql.Composable:
    """A partition bound as ``pg_get_expr`` printed it, re-built from its literals (never pasted)."""
    text = bound.strip()
    try:
        if text == "DEFAULT":
            return sql.SQL("DEFAULT")
        if match := _RANGE_BOUND.fullmatch(text):
            return sql.SQL("FOR VALUES FROM ({}) TO ({})").format(_bound_items(match["lo"]), _bound_items(match["hi"]))
        if match := _LIST_BOUND.fullmatch(text):
            return sql.SQL("FOR VALUES IN ({})").format(_bound_items(match["items"]))
    except ValueError:
        pass
    raise RestoreError(f"partition bound {bound!r} in the manifest is not a range, list or DEFAULT bound of literals; "
                       "re-create the partition by hand and restore into the original table again")


# Whether a view takes a restore's INSERT (and COPY) of the archived columns: through an enabled INSTEAD OF INSERT
# trigger (tgtype: 64 INSTEAD | 4 INSERT) or an unconditional DO INSTEAD rule on INSERT, which take whole rows
# whatever the view's query (SELECT DISTINCT, a join); else as an automatically updatable view whose archived columns
# are all updatable. (pg_relation_is_updatable and pg_column_is_updatable with include_triggers=false leave the
# triggers out, and pg_column_is_updatable asks for UPDATE too, which an INSERT-only trigger or rule does not give.)
_VIEW_TAKES_INSERT = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = %(v)s::pg_catalog.regclass
               AND NOT t.tgisinternal AND t.tgenabled <> 'D' AND t.tgtype::int & 68 = 68)
    OR EXISTS (SELECT FROM pg_catalog.pg_rewrite r WHERE r.ev_class = %(v)s::pg_catalog.regclass
               AND r.ev_type = '3' AND r.is_instead AND r.ev_enabled <> 'D' AND r.ev_qual::text = '<>')
    OR (pg_catalog.pg_relation_is_updatable(%(v)s::pg_catalog.regclass, false) & 8 = 8  -- (1 << CMD_INSERT)
        AND coalesce((SELECT pg_catalog.bool_and(
                                 pg_catalog.pg_column_is_updatable(%(v)s::pg_catalog.regclass, a.attnum, false))
                      FROM pg_catalog.pg_attribute a WHERE a.attrelid = %(v)s::pg_catalog.regclass
                      AND a.attname::text = ANY(%(c)s)), true))
"""


def _resolve_target(conn: psycopg.Connection, manifest: dict, into: Into,
                    target: Relation | None) -> tuple[Relation, list[Relation]]:
    """(the relation rows go into, the relations to create first, in order) — creation is done by the caller."""
    if into == "new":
        if target is None:
            raise TargetError("restoring into a new table needs its name (target='schema.table')")
        kind = _kind(conn, target)
        if kind in _TABLE_KINDS:
            raise TargetError(f"{target} already exists; restore into it with into='existing', or choose a new name")
        if kind is not None:  # a type shares a table's name (its row type): CREATE TABLE would be refused
            raise TargetError(f"{target} is the name of {_KIND_WORDS[kind]} of that schema, not a table: a new table "
                               "needs a name no table, view, index, sequence or type of the schema has",
                               remedy="choose another name for the new table (target='schema.other_name')")
        return target, [target]
    if into == "existing":
        kind = _kind(conn, target) if target is not None else None
        if kind is None:
            raise TargetError(f"table {str(target) if target else None!r} does not exist"
                               f"{_lookalike(conn, target) if target else ''}; create it or restore with into='new'",
                               cause=TABLE_MISSING)
        if kind not in _TABLE_KINDS and kind != "v":  # (an updatable view takes a JSONL restore's INSERT)
            raise TargetError(f"the target is not a table: {target} is {_KIND_WORDS[kind]}",
                               remedy="restore into a table, or into a new one (into='new')")
        if kind == "v" and not conn.execute(_VIEW_TAKES_INSERT, {"v": target.identifier.as_string(conn),
                                                                 "c": manifest_columns(manifest)}).fetchone()[0]:
            raise TargetError(f"the target is not a table: {target} is a view that takes no INSERT (not automatically "
                               "updatable, and no INSTEAD OF INSERT trigger or unconditional DO INSTEAD rule on "
                               "INSERT)",
                               remedy="restore into the view's base table, or into a new table (into='new')")
        if target == Relation.configured(manifest.get("source_relation") or manifest["table"]):
            _refuse_detached_partition(conn, manifest)  # the archived table itself: as into="original" is
        return target, []
    if into != "original":
        raise TargetError(f"into must be 'new', 'existing' or 'original', not {into!r}")
    relation = target or Relation.configured(manifest.get("source_relation") or manifest["table"])
    parent, child, bound = _refuse_detached_partition(conn, manifest)
    if child and bound and not _exists(conn, child):
        if not _exists(conn, parent):
            raise TargetError(f"the partitioned table {parent} does not exist; create it (or restore into a new "
                               "table) and restore again")
        return parent, [child]
    if not _exists(conn, relation):
        return relation, [relation]  # a dropped table (naming mode's day table): re-created from the definition
    _refuse_detached_day_table(conn, manifest, relation)
    return relation, []


def _refuse_detached_partition(conn: psycopg.Connection, manifest: dict) -> tuple:
    """(parent, child, bound) of the day's recorded partition, or Nones; refused where that partition exists but
    is detached (by retention's detach): it may still hold the day, and loading the day through the parent (into a
    DEFAULT partition, or a partition created again) would hold it twice and keep the ATTACH from ever working."""
    _refuse_pending_detach(conn, manifest)
    parent, child, bound = _recorded_partition(manifest, conn) or (None, None, None)
    if child and _exists(conn, child) and not _is_partition(conn, child):
        if (manifest.get("removed") or {}).get("action") == "drop":  # so the table under its name is another one
            raise RestoreError(
                f"{child}, the partition that held {manifest['day']}, was dropped by retention, and its name is now "
                f"another table's, which is not a partition of {parent}: restoring into the original table would "
                "create the day's partition under that name again. Rename that table, or restore the day into a "
                "new table (into='new')", table=manifest["table"], day=manifest["day"], retryable=False,
                remedy=f"rename {child} (ALTER TABLE ... RENAME TO ...), or restore with --into new --target "
                       "SCHEMA.TABLE (a table that does not exist yet)")
        attach = sql.SQL("ALTER TABLE {} ATTACH PARTITION {} ").format(  # quoted: a statement to paste as it is
            parent.identifier, child.identifier).as_string(conn) + str(bound)
        raise RestoreError(
            f"{child}, the partition that held {manifest['day']}, exists but is not attached to {parent} (detached by "
            f"retention?); it may still hold the day: attach it again ({attach}), or drop it and restore again")
    return parent, child, bound


def _refuse_pending_detach(conn: psycopg.Connection, manifest: dict) -> None:
    """Refuse, before anything is loaded, a day a partition pending detach may hold (a ``DETACH PARTITION ...
    CONCURRENTLY`` running or interrupted; the day's own or one under it): ``relispartition`` is still true, so the
    restore went on, the table's routing left the partition out, and the load failed as "the target has no
    partition for the day", with advice to create one (refused: the name is taken) or a DEFAULT partition (a second
    copy of the rows it still holds). Told as the archive, the removal and compare tell it, with the FINALIZE that
    ends it and the ATTACH that puts its rows back under the table. (A day without a day column is a naming-mode
    day table's: one pending detach is _refuse_detached_day_table's.)"""
    if not manifest.get("day_column"):
        return
    period = manifest_period(manifest)
    for relation, parent, _ in pending_detach_partitions(conn, _declarative_spec(manifest), [period]):
        bound = conn.execute("SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) FROM pg_catalog.pg_class c "
                             "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                             "AND c.relname = %s", relation).fetchone()
        attach = f"ALTER TABLE {parent} ATTACH PARTITION {sql.Identifier(*relation).as_string(conn)} " \
                 f"{bound[0] if bound and bound[0] else '<its bound>'}"
        pending = pending_detach_error(manifest["table"], relation, parent, then=(
            f"then attach it again, {attach}: it still holds its rows, those of {manifest['day']} among them; or drop "
            "it and restore the day again"))
        raise RestoreError(f"restoring {manifest['table']} for {manifest['day']} into its original table: "
                           f"{pending.message}; nothing was restored", table=manifest["table"], day=manifest["day"],
                           retryable=True, cause=pending.cause, remedy=pending.remedy)


def _refuse_detached_day_table(conn: psycopg.Connection, manifest: dict, relation: Relation) -> None:
    """Retention's ``detach`` of a naming-mode day table (``NO INHERIT``) leaves it whole: loading the day into
    it again doubled its rows and was rolled back, saying the archive "does not hold the rows it was proven to
    hold". It is refused as a detached partition is, with the statement that attaches it again."""
    configured = Relation.configured(manifest["table"])
    if relation == configured or conn.execute(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_inherits WHERE inhrelid = %s::pg_catalog.regclass)",
            (relation.identifier.as_string(conn),)).fetchone()[0]:
        return
    # Under none: detached from the parents it would be put back under (recorded, existing, of the configured
    # table and of the same kind now): by retention, as the manifest says, or by a detach that ran while this
    # restore downloaded (its mark written after the manifest was read). A manifest written before this version
    # records none: the configured table, for a detach it records. A parent gone or changed since is no reason.
    parents = [{"schema": above.schema, "name": above.name, "bound": bound}  # (a statement for the user to run)
               for above, bound in _own_parents(conn, manifest, relation, configured_only=False)]
    if not parents and not table_definition(manifest).get("parents") and _exists(conn, configured) and \
            (manifest.get("removed") or {}).get("action") == "detach":
        parents = [{"schema": configured.schema, "name": configured.name}]
    if not parents:
        return
    statements = "; ".join(_attach_statement(conn, relation, parent).as_string(conn) for parent in parents)
    under = ", ".join(str(Relation(p["schema"], p["name"])) for p in parents)
    if (manifest.get("removed") or {}).get("action") == "drop":  # dropped by retention: this one is made since
        rows = conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {}").format(relation.identifier)).fetchone()[0]
        raise RestoreError(
            f"{relation}, the name of the table that held {manifest['day']} (dropped by retention), is a table made "
            f"since that is not under {under}, holding {rows:,} row(s): restoring the day into the original table "
            "would put its rows into that table, which is none of the configured table's", table=manifest["table"],
            day=manifest["day"], retryable=False,
            remedy=f"if it is meant to hold the day, attach it ({statements}) and restore again (its rows, if any, "
                   "are then the day's); else rename or drop it and restore again, or restore into a new table "
                   "(into='new')")
    raise RestoreError(f"{relation}, the table that held {manifest['day']}, exists but no longer inherits from {under} "
                       f"(detached by retention); it still holds the day: attach it again ({statements}), or drop it "
                       "and restore again", table=manifest["table"], day=manifest["day"], retryable=False)


def _attach_statement(conn: psycopg.Connection, relation: Relation, parent: dict) -> sql.Composable:
    """The statement that puts ``relation`` back under ``parent`` (a manifest's ``parents`` entry): ATTACH
    PARTITION with its recorded bound (rebuilt from its literals), else INHERIT."""
    above = Relation(parent["schema"], parent["name"])
    if parent.get("bound"):
        return sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(above.identifier, relation.identifier,
                                                                      partition_bound(parent["bound"]))
    return sql.SQL("ALTER TABLE {} INHERIT {}").format(relation.identifier, above.identifier)


def _lookalike(conn: psycopg.Connection, target: Relation) -> str:
    """"; the catalog has the table <name>, which differs from it only in case" (or in Unicode normal form) for
    a target not found: spelled as the catalog spells it, not folded as SQL folds an unquoted name."""
    found = lookalike_relations(conn, f"{target.schema}.{target.name}")
    return lookalike_hint(str(target), [str(Relation(*relation)) for relation in found], "table")


def _create(conn: psycopg.Connection, manifest: dict, relation: Relation, *, original: bool) -> bool:
    """Create ``relation``; False if it is the day's partition and another partition of the parent covers
    its bound now (the partitions were laid out anew, say by month): the rows go there, by the parent. A
    naming-mode day table is created under the configured table where it was under it when archived (see
    :func:`_own_parents`): in its archived column order, then attached as its partition, or made to inherit from
    it (with the parent's columns and CHECKs, so one added since is no reason to fail: see
    :func:`_day_table_statement`). Only when restoring into the ``original`` table: a new table (into='new') is the
    user's own, never hung under the source's tables (made to inherit from the parent, its rows showed twice in
    the source; attached, it was refused as overlapping the day's own partition)."""
    definition = table_definition(manifest)
    if not original:
        _create_table(conn, relation, definition, inherits=[])
        return True
    partition = _recorded_partition(manifest, conn)
    if partition is not None and partition[1] == relation:
        created = _create_partition(conn, manifest, *partition, overlap_into_parent=True)
        if created:
            _refuse_created_bound(conn, manifest, partition[1])
        return created
    parents = _own_parents(conn, manifest, relation)
    if len(parents) == 1 and parents[0][1]:
        return _create_partition(conn, manifest, parents[0][0], relation, parents[0][1], overlap_into_parent=False,
                                 own_order=True)
    _refuse_hidden_columns(conn, manifest, relation, [parent for parent, _ in parents])
    _create_table(conn, relation, definition, inherits=[parent for parent, _ in parents])
    return True


def _refuse_hidden_columns(conn: psycopg.Connection, manifest: dict, relation: Relation,
                           parents: list[Relation]) -> None:
    """Refuse to put a day table back under ``parents`` that lack an archived column (renamed or dropped there
    since): the column would be the day table's own, its values out of sight where the application reads (the
    parent), the parent's column NULL for every row, and the day reported restored."""
    if not parents:
        return
    have = set()
    for parent in parents:
        oid = conn.execute("SELECT %s::pg_catalog.regclass::pg_catalog.oid", (parent.identifier.as_string(conn),)
                           ).fetchone()[0]
        have |= set(column_names(conn, oid).values())
    archived = [c["name"] for c in table_definition(manifest)["columns"]]
    recorded = {(str(p.get("schema")), str(p.get("name"))): p.get("columns")
                for p in table_definition(manifest).get("parents") or [] if isinstance(p, dict)}
    then = [recorded.get((parent.schema, parent.name)) for parent in parents]
    if then and all(isinstance(columns, list) for columns in then):  # the parents' columns when archived: exact
        inherited = {name for columns in then for name in columns}
        missing = [name for name in archived if name in inherited and name not in have]
        lost = bool(missing)
    else:  # (an older manifest) a rename: the parent has a column the archive lacks, and lacks one it has; not a
        # day table's column of its own, nor one the parent dropped on purpose, which stay the day table's as they were
        missing = [name for name in archived if name not in have]
        lost = bool(missing and have - set(archived))
    if lost:
        under = ", ".join(map(str, parents))
        raise RestoreError(
            f"restoring {manifest['table']} for {manifest['day']} into the original table: the day table {relation} "
            f"goes back under {under}, which has no column(s) {missing} the archive has (renamed or dropped since): "
            f"their values would not show through {under}; nothing was restored", table=manifest["table"],
            day=manifest["day"], retryable=False,
            remedy=f"give {under} the column(s) {missing} again (ALTER TABLE ... RENAME COLUMN back, or ADD COLUMN), "
                   "or restore into a new table (into='new')")


def _own_parents(conn: psycopg.Connection, manifest: dict, relation: Relation, *,
                 configured_only: bool = True) -> list[tuple[Relation, str | None]]:
    """The tables a naming-mode day table was under when archived (``parents``, with a partition's bound) that
    it is put back under: the configured table and the tables under it (partitions, inheritance children: see
    source.descends_from), if it exists (a manifest is sealed, not signed: one edited to name another table must not
    hang the day's rows under it)."""
    configured = Relation.configured(manifest["table"])
    own = []
    for parent in table_definition(manifest).get("parents") or []:
        above = Relation(str(parent.get("schema", "")), str(parent.get("name", "")))
        if not _exists(conn, above) or (configured_only and above != configured and not (
                _exists(conn, configured) and descends_from(conn, above.identifier.as_string(conn),
                                                         configured.identifier.as_string(conn)))):
            log.info("%s %s: %s was under %s when archived; restored without it", manifest.get("table"),
                     manifest.get("day"), relation, above)
            continue
        partitioned = _is_partitioned(conn, above)
        if partitioned != bool(parent.get("bound")):  # the parent changed its kind since: nothing to put it back as
            log.info("%s %s: %s is %s a partitioned table now; %s restored on its own", manifest.get("table"),
                     manifest.get("day"), above, "" if partitioned else "not", relation)
            continue
        own.append((above, parent.get("bound") or None))
    return own


def _is_partitioned(conn: psycopg.Connection, relation: Relation) -> bool:
    return conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_partitioned_table "
                        "WHERE partrelid = %s::pg_catalog.regclass)", (relation.identifier.as_string(conn),)).fetchone()[0]


def _created_under(conn: psycopg.Connection, manifest: dict, created: Sequence[Relation]) -> Relation | None:
    """The table a partition this restore created (and rolled back) was created under, or None."""
    definition = table_definition(manifest)
    partition = _recorded_partition(manifest, conn)
    if partition is not None and partition[1] in created:
        return partition[0]
    bounded = [p for p in definition.get("parents") or [] if p.get("bound")]
    return Relation(bounded[0]["schema"], bounded[0]["name"]) if bounded and created else None


def _declarative_spec(manifest: dict) -> TableSpec:
    """The archived table as a declarative table's configuration, for discovery to read its partitions' bounds as
    it reads every child's (a restore has the manifest, not the configuration)."""
    period = manifest_period(manifest)
    return TableSpec(name=manifest["table"], day_column=manifest.get("day_column"), start_date=period.start.date(),
                     granularity=period.granularity, timezone=manifest.get("timezone") or "UTC",
                     partitioning={"mode": "declarative"})


def _refuse_created_bound(conn: psycopg.Connection, manifest: dict, child: Relation) -> None:
    """Refuse (the restore rolls back) a re-created day partition whose bound, read back as discovery reads every
    child's, does not hold the day, or, for the one a removal recorded (which removed only a partition of exactly
    the day), is not exactly the day: a manifest is sealed, not signed, and a bound edited wider (a year, DEFAULT)
    would route other days' rows into it from then on."""
    period = manifest_period(manifest)
    spec = _declarative_spec(manifest)
    found = [c for c in child_ranges(conn, spec) if c.relation(spec) == (child.schema, child.name)]
    exact = bool(_removed_partition(manifest).get("child"))
    if found and (found[0].is_period(period) if exact else found[0].overlaps(period)):  # (overlaps: open ends too)
        return
    bound = found[0].bound if found else "not a range"
    raise RestoreError(
        f"restoring {manifest['table']} for {manifest['day']} into its original table: the partition {child} its "
        f"manifest records would be created with the bound {bound!r}, which is not "
        f"{'exactly ' if exact else ''}the day's (the manifest was edited?); nothing was restored",
        table=manifest["table"], day=manifest["day"], retryable=False,
        cause="the manifest's partition bound is not the day's",
        remedy="create the day's partition by hand and restore into the original table again, or restore into a "
               "table you name (into='new')")


def _create_partition(conn: psycopg.Connection, manifest: dict, parent: Relation, child: Relation, bound: str | None,
                      *, overlap_into_parent: bool, own_order: bool = False) -> bool:
    """``CREATE TABLE child PARTITION OF parent <bound>`` (``own_order``: created in the archived column order, then
    ``ATTACH PARTITION``); False where another partition covers the bound now and the rows may go there through the
    parent (``overlap_into_parent``), else a refusal saying so."""
    table, day = manifest.get("table"), manifest.get("day")
    try:
        with conn.transaction():
            if own_order:  # a naming-mode day table: its own column order, then attached (see _day_table_statement)
                conn.execute(_day_table_statement(conn, child, table_definition(manifest), [parent], own_columns=False))
                conn.execute(_attach_statement(conn, child, {"schema": parent.schema, "name": parent.name,
                                                             "bound": bound}))
            else:
                conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(
                    child.identifier, parent.identifier, partition_bound(bound)))
    except psycopg.errors.CheckViolation as exc:
        # "updated partition constraint for default partition ... would be violated": rows of the day (late
        # ones, in no archive) sit in the DEFAULT partition, which PostgreSQL will not let the new one take
        raise RestoreError(
            f"restoring {table} for {day} into its original table: its partition {child} cannot be created again "
            f"({exc.diag.message_primary}): the default partition holds rows of the day that no archive has (late "
            "rows written after the partition was removed); nothing was restored", table=table, day=day,
            retryable=False, cause="the default partition holds rows of the day",
            remedy=_late_rows_aside(f"the default partition ({_default_partition(conn, parent)})",
                                    "the parent (they go into the re-created partition)")) from None
    except psycopg.errors.DuplicateTable as exc:  # created meanwhile: by a restore of another day of it, say
        if _is_partition(conn, child):  # (then the rows go in through the parent, as into any partition there)
            log.info("%s %s: %s was created meanwhile; restoring into %s", table, day, child, parent)
            return False
        raise RestoreError(
            f"restoring {table} for {day} into its original table: its partition {child} cannot be created again: "
            f"{exc.diag.message_primary} (created by another session meanwhile); nothing was restored", table=table,
            day=day, retryable=True, cause="a table of the partition's name was created meanwhile",
            remedy="restore again: the day is loaded into the table there if it is the day's partition") from None
    except psycopg.errors.InvalidSchemaName as exc:
        raise RestoreError(
            f"restoring {table} for {day} into its original table: its partition {child} cannot be created again: "
            f"{exc.diag.message_primary}; nothing was restored", table=table, day=day, retryable=False,
            cause="the schema the day's partition lived in is gone",
            remedy=f"create the schema again (CREATE SCHEMA {sql_name(child.schema, qualified=False)}) and restore "
                   "again, or restore into a new table (into='new')") from None
    except psycopg.errors.InvalidObjectDefinition as exc:
        # (42P17 here: the bound, recorded from this very table, overlaps another partition's: "would overlap" in
        # English, and whatever words the server's lc_messages give it)
        if not overlap_into_parent:
            raise RestoreError(
                f"restoring {table} for {day} into its original table: its day table {child} cannot be created again "
                f"as a partition of {parent} ({exc.diag.message_primary}): another partition covers the day now; "
                "nothing was restored", table=table, day=day, retryable=False,
                cause="another partition of the table covers the day now",
                remedy="restore into a new table (into='new') and move the rows where they belong now") from None
        log.info("%s %s: %s; restoring into %s", table, day, exc.diag.message_primary, parent)
        return False
    return True


def _late_rows_aside(held_in: str, back_through: str) -> str:
    """What to do about late rows of a removed day where the restore would put the archive's: set them aside and
    put them back after. (Archiving the day again with overwrite would archive them alone, keep the archive's
    rows only as an earlier generation, and the restore would then find the day already restored.)"""
    return (f"move those rows out of {held_in} into a table of your own (INSERT ... SELECT, then DELETE them there), "
            f"restore again, then insert them back through {back_through}; or restore into a new table "
            "(into='new')")


def _held_before(extra: int) -> str:
    """Why a restore that loaded every archived row counts ``extra`` rows more: the target held rows of the day,
    which may be the archive's own (a day partly deleted, or partly restored) or rows it lacks (written later)."""
    return (f"the target already held {extra:,} row(s) of the day before the restore: rows the archive holds too (the "
            "day partly deleted since it was archived, or partly restored), or rows written after it was archived or "
            "removed; the restore was rolled back")


class _HeldBefore(NamedTuple):
    """The rows of the day a target with INSERT triggers or rules held before the load, and those hooks: with them,
    rows of the day beyond the archive's after the load may be the hooks' own (a history trigger inserting into the
    table itself), not rows that were there before."""

    rows: int
    hooks: list[str]


def _insert_hooks(conn: psycopg.Connection, relation: Relation) -> list[str]:
    """The target's enabled INSERT triggers (its partitions' too) and rules, as "trigger t" / "rule r"."""
    return [name for (name,) in conn.execute(_INSERT_HOOKS, {"t": relation.identifier.as_string(conn)})]


def _held_if_hooked(conn: psycopg.Connection, manifest: dict, relation: Relation, whole: bool,
                    hooks: list[str]) -> _HeldBefore | None:
    """A :class:`_HeldBefore` where the target has INSERT triggers or rules (``hooks``) and the day's rows are told
    by a day column, or are the whole target (a naming-mode day table); None elsewhere (no hook to add or drop
    rows: rows beyond the archive's were there before; counted only then, as it reads the day's rows once more).
    The count also tells what a trigger that left rows out (a dedupe guard) really added."""
    if (not whole and not manifest.get("day_column")) or not hooks:
        return None
    try:
        with conn.transaction():  # (a savepoint: a target without the day column, or of another type, is the load's
            where = _day_where(conn, relation, manifest, whole)  # and the check's to tell, as without hooks)
            held = conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {}{}").format(
                relation.identifier, sql.SQL("") if where is None else sql.SQL(" WHERE {}").format(where))).fetchone()
    except (ArchiveError, psycopg.DataError, psycopg.errors.UndefinedColumn, psycopg.errors.DatatypeMismatch):
        return None
    return _HeldBefore(int(held[0]), hooks)


def _hooks_note(relation: Relation, hooks: list[str]) -> str:
    """What a restore that committed says of the target's INSERT triggers and rules: they ran as the rows went in,
    and the check reads only the restored rows, so whatever they wrote elsewhere (an AFTER trigger rewriting other
    days' rows, an audit table) committed with the day unchecked: the user is told to look."""
    if not hooks:
        return ""
    one = len(hooks) == 1
    rule = " (a rule applies to an INSERT, not to COPY)" if any(h.startswith("rule ") for h in hooks) else ""
    return (f"; {relation}'s {', '.join(hooks)} on INSERT {'was' if one else 'were'} in force as the rows went "
            f"in{rule}: what {'it' if one else 'they'} wrote beyond the restored rows is not checked")


# The rows of the day (``{day}``) in the target this transaction did not write: by their xmin, made a full transaction
# id against the next one to be assigned (every visible row's is within 2^32 of it), whose status is "in progress"
# only for this transaction's own (its savepoints' too): another's uncommitted rows are not visible. Frozen or older
# rows than the commit log keeps have no status (NULL): not this transaction's either.
_NOT_WRITTEN_HERE = """
SELECT pg_catalog.count(*) FROM {t} r,
    (SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()) AS next) n
WHERE {day} AND pg_catalog.txid_status(n.next - pg_catalog.mod(
    pg_catalog.mod(n.next, 4294967296) - r.xmin::pg_catalog.text::bigint + 4294967296, 4294967296))
    IS DISTINCT FROM 'in progress'
"""


def _not_written_here(conn: psycopg.Connection, manifest: dict, relation: Relation, whole: bool) -> int | None:
    """How many of the day's rows in the target this transaction did not write (held before it, or committed by
    another session while it ran), or None where that cannot be told (a view, a foreign table: no xmin)."""
    try:
        with conn.transaction():  # (a savepoint: the restore goes on, told as before, where it fails)
            where = _day_where(conn, relation, manifest, whole)
            return int(conn.execute(sql.SQL(_NOT_WRITTEN_HERE).format(
                t=relation.identifier, day=where if where is not None else sql.SQL("TRUE"))).fetchone()[0])
    except (ArchiveError, psycopg.Error):
        return None


def _extra_rows(conn: psycopg.Connection, manifest: dict, relation: Relation, whole: bool, extra: int,
                before: _HeldBefore | None) -> tuple[str, str]:
    """(why a restore that loaded every archived row counts ``extra`` rows of the day more, the remedy): rows held
    before the restore, rows another session committed while it ran (the application writing the day: told apart
    from the hooks' by their xmin, :func:`_not_written_here`), or, beyond those, rows the target's INSERT triggers
    or rules added as the archived ones went in (an empty target's, say: nothing there to delete). Every row beyond
    the count taken before the load was put on the hooks: a harmless trigger was blamed for the application's row,
    with advice to disable it on a table the application writes to."""
    if before is None or before.rows >= extra:
        return _held_before(extra), _held_remedy(relation)
    others = _not_written_here(conn, manifest, relation, whole)
    meanwhile = min(max(others - before.rows, 0), extra - before.rows) if others is not None else 0
    added = extra - before.rows - meanwhile
    held = f"held {before.rows:,} row(s) of the day before the restore" if before.rows else \
        "held no row of the day before the restore"
    committed = (f", and {meanwhile:,} row(s) of the day were committed by another session while the restore ran (the "
                 "application writing the day)") if meanwhile else ""
    if not added:  # every row beyond the archive's is another session's: none was the hooks'
        return (f"{relation} {held}{committed}: rows the archive lacks, not its own; the restore was rolled back",
                _held_remedy(relation))
    hooks = ", ".join(before.hooks)
    said = (f"{relation} {held}{committed}, so {added:,} row(s) of the day were added as the archived rows went in: "
            f"by its {hooks} on INSERT, the likely cause (a history or audit trigger inserting into the table itself, "
            "a rule's DO ALSO INSERT); the restore was rolled back")
    remedy = (f"disable {'it' if len(before.hooks) == 1 else 'them'} for the restore (ALTER TABLE ... DISABLE "
              "TRIGGER / DISABLE RULE) and restore again, or restore into a new table (into='new')")
    return said, remedy + (f"; and, for the rows held before: {_held_remedy(relation)}" if before.rows or meanwhile
                           else "")


def _held_remedy(relation: Relation) -> str:
    """What to do about rows of the day a target held before the restore, whichever they are (see _held_before)."""
    return (f"if those rows are the archive's (the day partly there), delete the day's rows from {relation} and "
            f"restore again, or restore into a new table (into='new') and add the rows {relation} lacks (INSERT ... "
            f"SELECT ... EXCEPT ALL SELECT the day's rows of {relation}); if they are rows the archive lacks (written "
            f"later), move them out of {relation} into a table of your own, restore again, then add them back")


def _default_partition(conn: psycopg.Connection, parent: Relation) -> str:
    """The name of ``parent``'s DEFAULT partition (or "its default partition" where none is found)."""
    found = conn.execute("SELECT t.partdefid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_partitioned_table t "
                         "WHERE t.partrelid = %s::pg_catalog.regclass AND t.partdefid <> 0",
                         (parent.identifier.as_string(conn),)).fetchone()
    return found[0] if found else "its default partition"


def _hashed_columns(conn: psycopg.Connection, relation: Relation, manifest: dict,
                    created: bool = False) -> list[Column]:
    """The target's columns of the archive's names, in its order, each hashed as archived where its type is another
    (see fingerprint.as_archived: an integer restored into numeric is the archived integer when it reads back so).
    Where the day's rows in it hold only archived values, a column whose type now is a widening of the archived one
    (fingerprint.widening) is hashed as the archived values it holds widened: in a table a restore of this table
    made (its restore mark), which _widen_own widened since the day was archived (numeric(8,2) widened to
    numeric(10,4) rewrote a restored 12.50 as 12.5000, char(3) to char(6) 'ab ' as 'ab    ', and the day restored
    before, found with other text, was loaded again by a run of the same command and refused as held twice); and,
    ``created``, where the day's rows are in a table (or partition) this restore created, which took the parent's
    types as widened since (a removed day put back into its table: 5 loaded into numeric(12,2) is 5.00, and was
    refused as an altered archive). Never in a table that held rows before: there the values' text is theirs."""
    own = created or _listed_days(conn, relation, manifest.get("table") or "") is not None
    return fp.as_archived(conn, _columns_of(conn, relation, manifest_columns(manifest)), manifest["columns"],
                          fp.algorithm_for(manifest.get("fingerprint")), widened=own)


def _columns_of(conn: psycopg.Connection, relation: Relation, names: list[str]) -> list[Column]:
    by_name = {c.name: c for c in describe_relation(conn, *relation, None).columns}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise RestoreError(f"{relation} has no column(s) {missing}; the archive has columns {names}")
    return [by_name[n] for n in names]


def _day_where(conn: psycopg.Connection, relation: Relation, manifest: dict, whole: bool) -> sql.Composable | None:
    if whole or not manifest.get("day_column"):
        return None
    try:
        described = describe_relation(conn, *relation, manifest["day_column"])
    except SourceError as exc:
        if exc.cause != SETTING_MISFITS:
            raise
        # the target's day column, not the configuration's: the archived table's is right
        raise RestoreError(f"{relation} cannot hold the day's rows as archived: {exc.message}; the archive's day "
                           f"column {manifest['day_column']!r} is a {_archived_type(manifest)}",
                           remedy=f"restore into a table whose column {manifest['day_column']!r} has the archived type "
                                  "(a date, timestamp or timestamptz), or into a new table (into='new')") from None
    return day_filter(described, manifest_period(manifest))


# the day column's type, as a manifest records it (base_type, or format_type text) or the catalog resolves it
_DAY_TYPES = {"date": "date", "timestamp": "timestamp", "timestamp without time zone": "timestamp",
              "timestamptz": "timestamptz", "timestamp with time zone": "timestamptz"}


def _day_type(conn: psycopg.Connection, manifest: dict) -> str | None:
    """``date``, ``timestamp`` or ``timestamptz``: the archived day column's type through its domains, from the
    manifest's base_type, else its pg_type looked up in this database (a version 1 manifest records no base_type,
    and a domain over date or a timestamp(3) is no name of the three); None where neither tells."""
    column = manifest.get("day_column")
    entry = next((c for c in manifest.get("columns", []) if c.get("name") == column), None)
    if entry is None:
        return None
    kind = _DAY_TYPES.get(str(entry.get("base_type"))) or _DAY_TYPES.get(str(entry.get("pg_type")))
    return kind or _DAY_TYPES.get(fp.recorded_bases(conn, [entry])[0] or "")


def rows_outside_period(conn: psycopg.Connection, relation: sql.Composable, manifest: dict) -> int:
    """How many rows of ``relation`` (the archive's rows, loaded) have a day column value outside the manifest's
    period, or none: another day's archive put in this one's place with its manifest resealed holds them, and a
    proof by the archive alone (a removed day's) or a restore into a new table took them for the day's. 0 where
    the manifest names no day column; refused where the day column's type cannot be told (a 0 would pass another
    day's rows unchecked)."""
    if not manifest.get("day_column"):
        return 0
    kind, period = _day_type(conn, manifest), manifest_period(manifest)
    if kind is None:
        raise ArchiveError(
            f"{manifest.get('table')} for {manifest.get('day')}: the archived rows cannot be checked to be the "
            f"day's: the manifest's day column {manifest['day_column']!r} is a {_archived_type(manifest)}, which "
            "this database does not resolve to a date, timestamp or timestamptz", table=manifest.get("table"),
            day=manifest.get("day"), retryable=False,
            remedy="create the day column's type (its domain) in this database as it was archived, or archive the "
                   "day again (overwrite) if the source still holds it")
    if kind == "timestamptz":
        cast, bounds = "timestamptz", (period.utc_start, period.utc_end)
    elif kind == "timestamp":  # wall-clock bounds, as the archive selected them
        cast, bounds = "timestamp", period.wall_bounds
    else:
        cast, bounds = "date", (period.start.date(), period.end.date())
    column = manifest["day_column"]
    value = sql.SQL("{}::pg_catalog.{}").format(sql.Identifier(column), sql.SQL(cast))
    query = sql.SQL("SELECT pg_catalog.count(*) FROM {} WHERE ({v} >= %s AND {v} < %s) IS NOT TRUE").format(
        relation, v=value)
    with conn.transaction():  # (a savepoint: a value that does not read as its type is the proof's to tell)
        return int(conn.execute(with_params(query, conn), bounds).fetchone()[0])  # (a name may hold a '%')


def _archived_type(manifest: dict) -> str:
    """The archived day column's type as the manifest records it (its ``pg_type``, with the base type of a domain;
    or "date, timestamp or timestamptz" where it records none)."""
    for column in manifest.get("columns", []):
        if column.get("name") == manifest.get("day_column") and column.get("pg_type"):
            base = column.get("base_type")
            return str(column["pg_type"]) + (f" (over {base})" if base and base != column["pg_type"] else "")
    return "date, timestamp or timestamptz"


def _load(conn: psycopg.Connection, path: str | None, manifest: dict, relation: Relation, on_conflict: OnConflict, *,
          fingerprint_added: bool = False) -> tuple[int, int, fp.Fingerprint | None]:
    """(rows loaded from the archive, rows inserted into ``relation``, with ``fingerprint_added`` the
    fingerprint of the rows inserted as the target stored them, taken from the INSERT's RETURNING).

    Straight into ``relation``, or, with ``on_conflict="skip"`` or where the target generates some of
    the archived columns itself (``GENERATED ALWAYS AS (...)``: neither COPY nor INSERT may write them),
    through a temporary table of every archived column, from which an INSERT writes the others; the
    generated values are then the target's, and the fingerprint check that follows proves them equal
    to the archived ones (or rolls the restore back). An empty day (no object: ``path`` None) loads nothing,
    and with ``fingerprint_added`` the rows it added are none, whose fingerprint is the empty one (else the
    check read the whole target instead, its other days' rows, and called an intact empty archive altered)."""
    if path is None:
        return 0, 0, _no_rows(manifest) if fingerprint_added else None
    if on_conflict not in ("fail", "skip"):
        raise RestoreError(f"on_conflict must be 'fail' or 'skip', not {on_conflict!r}")
    target = relation.identifier
    names = manifest_columns(manifest)
    generated, always_identity = _computed_columns(conn, target, names)
    try:
        if on_conflict == "fail" and not generated and not fingerprint_added:
            rows = load_into(conn, path, manifest, target)  # COPY writes identity columns; JSONL's INSERT overrides
            return rows, rows, None
        # in pg_temp by name (last on the path: a table of the same name elsewhere would be found first); dropped
        # at COMMIT, so no DROP TABLE that an event trigger guarding against drops would refuse
        stage = sql.Identifier("pg_temp", f"archive_restore_stage_{os.getpid()}_{next(_names)}")
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            stage, _column_list(names), target))
        without_user_triggers(conn, stage)
        rows = load_into(conn, path, manifest, stage)
        written = _column_list([n for n in names if n not in generated])
        insert = sql.SQL("INSERT INTO {} ({c}){o} SELECT {c} FROM {}{d}").format(
            target, stage, c=written, o=_overriding(always_identity),
            d=sql.SQL(" ON CONFLICT DO NOTHING" if on_conflict == "skip" else ""))
        added = None
        # skip with no fingerprint to compare the kept rows with (a version 1 manifest's, a newer algorithm's):
        # the archived rows are in the stage, so each is proven in the target as archived (else a row edited since
        # and skipped, its key taken, passed the row count as restored)
        contained = fingerprint_added or fp.recorded_algorithm(manifest.get("fingerprint")) is None
        try:
            with conn.transaction():  # (a savepoint: its failure is looked into below, in this transaction)
                if contained and on_conflict == "skip":
                    inserted, proven = _insert_contained(conn, insert, stage, manifest, relation)
                    added = proven if fingerprint_added else None  # (else the check counts the day's rows)
                elif fingerprint_added:
                    added = _insert_fingerprinted(conn, insert, manifest, relation)
                    inserted = added.rows
                else:
                    inserted = conn.execute(insert).rowcount
        except psycopg.DataError as exc:  # every archived value went into the stage: the target's own doing
            if _kind(conn, relation) == "f":  # (a foreign table's remote columns refuse what its local ones took)
                raise
            raise _own_expression_refused(conn, manifest, relation, exc) from exc
        return rows, inserted, added
    except ArchiveCorruptError as exc:  # the object matched its manifest's MD5: perhaps the target refused it
        if getattr(exc.__cause__, "not_json", False):  # the object's lines are no JSON objects: not the target's doing
            raise
        drift, remedy = _drift_explained(conn, manifest, relation)
        refused = isinstance(exc.__cause__, psycopg.DataError) and \
            not isinstance(exc.__cause__, psycopg.errors.BadCopyFileFormat)  # a value its type's input rejects
        if not drift and not refused:
            raise
        if not drift and _kind(conn, relation) != "f" and _loads_into_bare_columns(conn, path, manifest, target):
            raise _own_expression_refused(conn, manifest, relation, exc.__cause__) from exc
        if not drift and isinstance(exc.__cause__, psycopg.errors.StringDataRightTruncation):
            encoding = conn.info.parameter_status("server_encoding")
            if encoding == "SQL_ASCII":
                drift = (". The database's encoding, SQL_ASCII, counts a character(n) or varchar(n) value's length in "
                         "bytes, not characters: an archived value with characters beyond ASCII takes more bytes")
                remedy = "restore into a database whose encoding is UTF8, or into a table whose column is text"
            else:
                drift = f". A value is longer than {relation}'s column allows"
                remedy = "restore into a table whose column is wide enough, or text"
        elif not drift and isinstance(exc.__cause__, psycopg.errors.UntranslatableCharacter):
            encoding = conn.info.parameter_status("server_encoding")
            drift = (f". The database's encoding, {encoding}, has no such character: the value was archived from a "
                     "database whose encoding has it")
            remedy = "restore into a database whose encoding holds every archived value (UTF8)"
        elif not drift:  # the archived type by name, but not as it was: an enum without a label, say
            drift = (f". The object matches its manifest (size and MD5), so unless both were replaced the value is "
                     f"as archived, and a type of {relation} as this database defines it refuses it (an enum lacking "
                     "one of the archived labels, a type changed since the day was archived)")
            remedy = ("make the type named accept the archived values (for an enum: ALTER TYPE ... ADD VALUE), or "
                      "restore into a table whose column has the type's base type or text")
        column = getattr(exc.__cause__, "refused_column", None)  # COPY names it in its own message
        where = f", column {column}" if column else ""
        raise RestoreError(f"restoring {manifest['table']} for {manifest['day']}: the archived rows do not load into "
                           f"{relation} ({type(exc.__cause__).__name__}{where}: {_bounded(exc.__cause__)}); nothing "
                           f"was restored{drift}",
                           table=manifest["table"], day=manifest["day"], remedy=remedy) from exc
    except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation) as exc:
        raise _UniqueViolation(exc, relation, manifest) from None


def _no_rows(manifest: dict) -> fp.Fingerprint:
    """The fingerprint of no rows, in the algorithm of ``manifest``'s (what an empty day's archive records)."""
    return fp.Fingerprint(rows=0, hash_sum="0", algorithm=fp.algorithm_for(manifest.get("fingerprint")))


def _bounded(exc: BaseException | None, most: int = 600) -> str:
    """An error's text as a message quotes it: PostgreSQL's DETAIL and CONTEXT quote a value whole (a 2 MB line)."""
    text = str(exc)
    return text if len(text) <= most else f"{text[:most]} ... ({len(text):,} characters)"


def _fire_deferred(conn: psycopg.Connection, manifest: dict, relation: Relation) -> None:
    """The target's deferred constraints and constraint triggers, run now rather than at COMMIT: a deferred
    trigger rewriting the rows ran after the proof, and a deferrable key finding a row already there
    failed at COMMIT as a constraint "to relax", not as the conflict it is."""
    try:
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
    except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation) as exc:
        raise _UniqueViolation(exc, relation, manifest) from None


class _UniqueViolation(RestoreConflictError):
    """A unique or exclusion constraint refused the load; which rows it was, and so what to do, is told once
    the day's transaction is rolled back (:func:`_unique_violation`): asking before the load would lock every
    partition of the target, and a lock on another day's partition held up every restore."""

    def __init__(self, exc: psycopg.Error, relation: Relation, manifest: dict) -> None:
        self.detail = exc.diag.message_detail or str(exc)
        self.constraint, self.where = exc.diag.constraint_name, (exc.diag.schema_name, exc.diag.table_name)
        self.relation = relation
        super().__init__(f"rows of the archive of {manifest['table']} for {manifest['day']} already exist in "
                         f"{relation} ({self.detail}); nothing was restored", table=manifest["table"],
                         day=manifest["day"], remedy="use on_conflict='skip' to add only the missing rows, or "
                                                     "restore into a new table (into='new')")


def _unique_violation(conn: psycopg.Connection, exc: _UniqueViolation, manifest: dict,
                      created: Iterable[Relation] = ()) -> RestoreError:
    """``exc`` told as what it was: rows already in the target (as said; for a simple view, in the table it
    writes), the archived rows colliding among themselves in a target that held none, or a table one of the
    target's triggers writes."""
    relation, table, day = exc.relation, manifest["table"], manifest["day"]
    try:
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '2s'")  # (asked after the rollback: never wait long for it)
            base = _view_base(conn, relation)  # (a simple view writes its base table: its rows are the target's)
            tree = {tuple(r) for target in {relation, base} for r in conn.execute(
                _TREE, (target.identifier.as_string(conn),))}
            tree |= {(r.schema, r.name) for r in (relation, *created)}  # (what the rolled-back restore created too)
            if exc.where[1] and exc.where not in tree and (None, exc.where[1]) not in tree:
                hooks = [name for name in _insert_hooks(conn, relation) if name.startswith("trigger ")]
                return RestoreError(
                    f"restoring {table} for {day} into {relation}: a row {' or '.join(hooks) or 'an INSERT trigger'} "
                    f"of {relation} writes into table {'.'.join(filter(None, exc.where))} was refused by its "
                    f"constraint {exc.constraint} ({exc.detail}); nothing was restored", table=table, day=day,
                    remedy="restore into a new table (into='new'), or disable the target's triggers for the "
                           "restore (ALTER TABLE ... DISABLE TRIGGER) and restore again")
            # whether the relation that refused held rows before: one the restore created (a re-created partition,
            # a new table) held none, whatever the other partitions hold
            refusing = (exc.where[0] or relation.schema, exc.where[1]) if exc.where[1] else (relation.schema,
                                                                                                relation.name)
            created_here = refusing in {(r.schema, r.name) for r in created}
            held = not created_here and conn.execute(
                "SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (sql.Identifier(*refusing).as_string(conn),)
            ).fetchone()[0] and conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(
                sql.Identifier(*refusing))).fetchone()[0]
            if held:  # a table of other rows: whether it holds the refused key itself, or the archive's rows collide
                held = _holds_key(conn, refusing, exc)
            if held and base != relation:  # skip cannot go through a view (_skip_mode): through its base table,
                remedy = _through_base_remedy(conn, relation, base, manifest)  # where that is the same rows
    except psycopg.Error:
        return exc
    if held and base != relation:
        return RestoreConflictError(
            f"rows of the archive of {table} for {day} already exist in {relation}, in its base table {base} "
            f"({exc.detail}); nothing was restored", table=table, day=day, remedy=remedy)
    if held:
        return exc
    return RestoreError(
        f"restoring {table} for {day} into {relation}: {relation} held no row of that key, and the archived rows "
        f"break its "
        f"constraint {exc.constraint} among themselves ({_conflict(exc.detail)}), a constraint the archived table "
        "did not "
        "have; nothing was restored", table=table, day=day,
        remedy="restore into a new table (into='new'), created with the archived definition, or drop the constraint "
               "(ALTER TABLE ... DROP CONSTRAINT; DROP INDEX for a unique index made by CREATE UNIQUE INDEX)")


def _through_base_remedy(conn: psycopg.Connection, view: Relation, base: Relation, manifest: dict) -> str:
    """What to do about archived rows already in the base table of ``view``: a restore into ``base`` with skip
    only where it loads the same rows (the view passes every archived column through as ``base``'s own column of
    that name, :func:`_passed_through`); else a restore into ``base`` under the archive's names would fail (a
    renamed column) or put values into other columns (swapped ones), so what works is named instead."""
    if _passed_through(conn, view, manifest_columns(manifest)) == base:
        return (f"Restore into {base} with on_conflict='skip' to add only the missing rows ({view} passes the "
                f"archived columns through as {base}'s own), or restore into a new table (into='new')")
    return (f"restore into a new table (into='new') and add from it by hand, through {view}, the rows {base} "
            f"lacks, or delete the rows of the conflicting key from {base} and restore again (a restore into {base} "
            f"itself would not load the same rows: {view} does not show every archived column as {base}'s column "
            "of that name, or that could not be told)")


def _passed_through(conn: psycopg.Connection, view: Relation, names: list[str]) -> Relation | None:
    """The table that ``view`` (or a chain of views) shows the columns ``names`` of as they are: each a plain
    reference to that table's column of the same name. Told by PostgreSQL itself, from the origin (table and
    column) the protocol gives each column of the view's query, set only for a column that is a table's column,
    not an expression; a renamed, swapped or computed column, or what cannot be told (the query not to be
    run: a privilege, a lock), is None. The query is run with LIMIT 0, in a savepoint: no row is read."""
    try:
        with conn.transaction():
            oid = conn.execute("SELECT pg_catalog.to_regclass(%s)::oid", (view.identifier.as_string(conn),)
                               ).fetchone()[0]
            for _ in range(100):  # (a chain of views, never a cycle)
                row = conn.execute(
                    "SELECT c.relkind::text, n.nspname, c.relname, CASE c.relkind WHEN 'v' THEN "
                    "pg_catalog.pg_get_viewdef(c.oid) END FROM pg_catalog.pg_class c "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s", (oid,)).fetchone()
                if not row or row[0] != "v":
                    return Relation(row[1], row[2]) if row else None
                shown = conn.execute(sql.SQL("SELECT * FROM ({}) AS shown LIMIT 0").format(
                    sql.SQL(row[3].strip().removesuffix(";"))))
                origins = {column.name: (shown.pgresult.ftable(i), shown.pgresult.ftablecol(i))
                           for i, column in enumerate(shown.description)}
                tables = {origins.get(name, (0, 0))[0] for name in names}
                if len(tables) != 1 or 0 in tables:
                    return None
                oid = tables.pop()
                named = dict(conn.execute(
                    "SELECT attnum, attname::text FROM pg_catalog.pg_attribute WHERE attrelid = %s "
                    "AND attnum = ANY(%s) AND NOT attisdropped", (oid, [origins[name][1] for name in names])))
                if any(named.get(origins[name][1]) != name for name in names):
                    return None
    except psycopg.Error:
        return None
    return None


def _conflict(detail: str) -> str:
    """A violation's detail as archived rows conflicting among themselves: no "already exists" (no row was there)."""
    if detail.endswith(" already exists."):
        return detail.removesuffix(" already exists.") + " more than once"
    return detail.rstrip(".").replace("conflicts with existing key", "conflicts with the archived key")


def _holds_key(conn: psycopg.Connection, refusing: tuple[str, str], exc: _UniqueViolation) -> bool:
    """Whether ``refusing`` holds a row with the key the violation names ("Key (v)=(dup) already exists."), looked
    up by the refusing index's key columns (a plain CREATE UNIQUE INDEX has no constraint; a constraint has its
    index) with their own equality (a char(n) key as printed, blanks and all; numeric 1.0 as 1.00, as the index
    compares them), among the rows a partial index covers; True where that cannot be told (an expression index,
    values holding ", " in a key of several columns, a detail withheld): the target's rows are then taken to
    hold it, as before."""
    found = conn.execute(_REFUSING_INDEX, {"t": sql.Identifier(*refusing).as_string(conn),
                                          "n": exc.constraint or ""}).fetchall()
    if not found or any(name is None for name, *_ in found):  # (no such index, or an expression in its key)
        return True
    columns = [(name, quoted, kind) for name, quoted, kind, _, _ in found]
    nulls_equal, predicate = bool(found[0][3]), found[0][4]
    listed = ", ".join(quoted for _, quoted, _ in columns)
    head, tail = f"Key ({listed})=(", ") already exists."
    detail = exc.detail or ""
    existing = f") conflicts with existing key ({listed})=("  # an exclusion constraint's: the row it found
    if existing in detail and detail.endswith(")."):
        head, tail = detail[:detail.index(existing) + len(existing)], ")."
    if not detail.startswith(head) or not detail.endswith(tail):
        return True
    printed = detail[len(head):len(detail) - len(tail)]
    values = [printed] if len(columns) == 1 else printed.split(", ")
    if len(values) != len(columns):
        return True

    def matches(name: str, kind: str, value: str) -> sql.Composable:
        column = sql.Identifier(name)
        if kind in ("real", "double precision"):  # printed under this session's extra_float_digits: as printed
            same = sql.SQL("pg_catalog.concat({}) = {}").format(column, sql.Literal(value))
        else:  # (an exclusion constraint's key: the found row's values) by the type's own equality
            same = sql.SQL("{} = {}::{}").format(column, sql.Literal(value), sql.SQL(kind))
        if nulls_equal and value == "null":
            same = sql.SQL("({} OR {} IS NULL)").format(same, column)
        return same

    where = sql.SQL(" AND ").join([*(matches(name, kind, value)
                                     for (name, _, kind), value in zip(columns, values, strict=True)),
                                   *([sql.SQL("({})").format(sql.SQL(predicate))] if predicate else [])])
    try:
        with conn.transaction():
            return conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE {})").format(
                sql.Identifier(*refusing), where)).fetchone()[0]
    except psycopg.Error:  # a printed value its type does not read back (a NULLS NOT DISTINCT null): held
        return True


# The key columns of ``t``'s index named ``n`` (a violation names the index: a constraint's has the constraint's
# name), in the key's order: attname NULL for an expression; with whether it takes NULLs as equal (NULLS NOT
# DISTINCT, PostgreSQL 15: read as JSON, an older server's pg_index lacks the column) and a partial index's WHERE.
_REFUSING_INDEX = """
SELECT a.attname::text, pg_catalog.quote_ident(a.attname), pg_catalog.format_type(a.atttypid, a.atttypmod),
       coalesce((pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct')::bool, false),
       pg_catalog.pg_get_expr(i.indpred, i.indrelid)
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class x ON x.oid = i.indexrelid
CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum  -- (0: an expression)
WHERE i.indrelid = pg_catalog.to_regclass(%(t)s) AND x.relname = %(n)s AND k.n <= i.indnkeyatts
ORDER BY k.n
"""


# The target and every table below it (partitions, inheritance children), from pg_inherits: no lock taken.
_TREE = """
WITH RECURSIVE tree(oid) AS (
    SELECT pg_catalog.to_regclass(%s)::pg_catalog.oid
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
SELECT n.nspname::text, c.relname::text FROM tree
JOIN pg_catalog.pg_class c ON c.oid = tree.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
"""


def _insert_fingerprinted(conn: psycopg.Connection, insert: sql.Composable, manifest: dict,
                          relation: Relation) -> fp.Fingerprint:
    """Run ``insert`` and return the fingerprint of the rows it inserted, as the target stored them
    (its RETURNING; read back by ctid for a table, through the view for a view: :func:`_added_through_view`):
    where no day column tells a day's rows apart in the target (a naming-mode table restored into a table
    holding other days), these are exactly the restored rows, hashed once."""
    algorithm = fp.algorithm_for(manifest.get("fingerprint"))
    columns = _hashed_columns(conn, relation, manifest)
    if _kind(conn, relation) == "v":
        return _added_through_view(conn, insert, relation, columns, algorithm)
    total = fp.hash_sum(fp.row_hash(columns, "t", algorithm, fp.server_encoding(conn)))
    if _kind(conn, relation) not in ("r", "p"):  # (a foreign table's rows have no ctid to be read by)
        query = sql.SQL("WITH t AS ({insert} RETURNING {cols}) SELECT pg_catalog.count(*), {total} FROM t").format(
            insert=insert, cols=_column_list(manifest_columns(manifest)), total=total)
        with fp.canonical_settings(conn):
            rows, hash_sum = conn.execute(query).fetchone()
        return fp.Fingerprint(rows=rows, hash_sum=hash_sum, algorithm=algorithm)
    # The rows are read back by where the INSERT put them once it ended, its AFTER triggers fired: RETURNING shows
    # them before those ran, and a trigger rewriting each row was proven as the archive. A row a trigger updated
    # has a new ctid: not found, so the count differs and the restore is rolled back.
    at = sql.Identifier("pg_temp", f"archive_restore_rows_{os.getpid()}_{next(_names)}")
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (t oid, c tid) ON COMMIT DROP").format(at))
    conn.execute(sql.SQL("WITH ins AS ({insert} RETURNING tableoid, ctid) INSERT INTO {at} SELECT * FROM ins").format(
        insert=insert, at=at))
    conn.execute(sql.SQL("SET CONSTRAINTS ALL IMMEDIATE"))  # (deferred constraint triggers too: see _fire_deferred)
    query = sql.SQL("SELECT pg_catalog.count(*), {total} FROM {target} t JOIN {at} a "
                    "ON t.tableoid = a.t AND t.ctid = a.c").format(total=total, target=relation.identifier, at=at)
    with fp.canonical_settings(conn):
        rows, hash_sum = conn.execute(query).fetchone()
    return fp.Fingerprint(rows=rows, hash_sum=hash_sum, algorithm=algorithm)


def _added_through_view(conn: psycopg.Connection, insert: sql.Composable, relation: Relation,
                        columns: Sequence[Column], algorithm: str) -> fp.Fingerprint:
    """The fingerprint of the rows ``insert`` added to the view ``relation``, as the view shows them: the view's
    fingerprint after the insert minus the one before (a sum of row hashes: what remains is the added rows'). Its
    RETURNING cannot be it: through an INSTEAD OF trigger that is the row the trigger returned (the archived values,
    ``RETURN NEW``), not the row it wrote, and a view's rows have no ctid to be read back by. A trigger that rewrote
    the rows, wrote them where the view does not show them or changed other rows leaves a difference that is not
    the archive's, so the check rolls the restore back. Reads the whole view twice."""
    before = fp.compute(conn, relation.identifier, columns, algorithm=algorithm)
    conn.execute(insert)
    conn.execute(sql.SQL("SET CONSTRAINTS ALL IMMEDIATE"))  # (deferred constraint triggers too: see _fire_deferred)
    after = fp.compute(conn, relation.identifier, columns, algorithm=algorithm)
    return fp.Fingerprint(rows=after.rows - before.rows, hash_sum=str(int(after.hash_sum) - int(before.hash_sum)),
                          algorithm=algorithm)


def _insert_contained(conn: psycopg.Connection, insert: sql.Composable, stage: sql.Identifier, manifest: dict,
                      relation: Relation) -> tuple[int, fp.Fingerprint]:
    """Run ``insert`` (``ON CONFLICT DO NOTHING``) and return (rows inserted, the fingerprint of the archived
    rows as loaded into ``stage``), after proving the target holds each archived row as often as it should.

    Where no day column tells a day's rows apart (a naming-mode table restored into a table holding other
    days) and ``skip`` left the rows whose key existed alone, neither the rows added nor the target are
    the day: the proof is that the stage holds the archive (its fingerprint, compared by the caller) and
    that, counted by row hash, the target holds each archived row as many times as the archive or as it did
    before, whichever is more. The same proof, in the current algorithm on both sides, is all there is to tell
    kept rows from archived ones where the manifest records no fingerprint this version computes (version 1). Fewer: a skipped row whose key is there with other values. More: a row the
    arbiter could not tell from its copy already there (a NULL in a nullable unique key, a row outside a
    partial index's predicate) inserted again, which "at least once" passed, so a re-run doubled it."""
    algorithm = fp.algorithm_for(manifest.get("fingerprint"))
    columns = _hashed_columns(conn, relation, manifest)
    encoding = fp.server_encoding(conn)
    hashed_stage, hashed_target = (fp.row_hash(columns, "s", algorithm, encoding),
                                   fp.row_hash(columns, "t", algorithm, encoding))
    counted = sql.SQL("SELECT {ht} AS h, pg_catalog.count(*) AS n FROM {target} t "
                      "WHERE {ht} IN (SELECT {hs} FROM {stage} s) GROUP BY 1").format(
        hs=hashed_stage, ht=hashed_target, stage=stage, target=relation.identifier)
    held = sql.Identifier("pg_temp", f"archive_restore_held_{os.getpid()}_{next(_names)}")
    with fp.canonical_settings(conn):  # (the archived rows' copies there before the insert, by row hash)
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}").format(held, counted))
    inserted = conn.execute(insert).rowcount
    conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred triggers rewrite rows now, before the proof
    query = sql.SQL(
        "WITH s AS (SELECT {hs} AS h, pg_catalog.count(*) AS n FROM {stage} s GROUP BY 1), t AS ({counted}), "
        "c AS (SELECT s.n, coalesce(t.n, 0) AS now, GREATEST(s.n, coalesce(b.n, 0)) AS due "
        "FROM s LEFT JOIN t USING (h) LEFT JOIN {held} b USING (h)) "
        "SELECT coalesce(pg_catalog.sum(n - now) FILTER (WHERE n > now), 0), "
        "coalesce(pg_catalog.sum(now - due) FILTER (WHERE now > due), 0) FROM c").format(
        hs=hashed_stage, stage=stage, counted=counted, held=held)
    with fp.canonical_settings(conn):
        absent, again = conn.execute(query).fetchone()
    if absent:
        drift, remedy = _drift_explained(conn, manifest, relation)
        raise FingerprintMismatchError(
            f"restoring {manifest['table']} for {manifest['day']} into {relation} with on_conflict='skip': {absent:,} "
            f"archived row(s) are not in {relation} as archived: a row with the same key is there with other values, "
            f"and skip leaves it as it is; the restore was rolled back{drift}", table=manifest["table"],
            day=manifest["day"], remedy=remedy or "restore into a new table (into='new') and compare, or "
                                                  "delete the differing rows from the target first")
    if again:
        raise RestoreConflictError(
            f"restoring {manifest['table']} for {manifest['day']} into {relation} with on_conflict='skip': {again:,} "
            f"archived row(s) were inserted although {relation} held them already: its unique key(s) cannot tell "
            "those rows from their copies (a NULL in a nullable key column, NULLS DISTINCT; a row outside a partial "
            "index's predicate), so skip did not skip them; the restore was rolled back", table=manifest["table"],
            day=manifest["day"], retryable=False,
            cause=f"{relation}'s unique keys do not tell archived rows with a NULL key apart from their copies",
            remedy=f"the day is in {relation} already if this is a re-run (look for its rows there); else restore "
                   "into a new table (into='new') and add the rows the target lacks (INSERT ... SELECT ... EXCEPT "
                   "ALL), or give the target a key of NOT NULL columns (or UNIQUE NULLS NOT DISTINCT)")
    return inserted, fp.compute(conn, stage, columns, None, algorithm)


def _skip_mode(conn: psycopg.Connection, manifest: dict, relation: Relation, *, own: bool) -> OnConflict:
    """How ``on_conflict="skip"`` loads into ``relation``: ``skip`` leaves a row alone when its key exists
    (``ON CONFLICT DO NOTHING``): a target with no primary key, unique or exclusion constraint has nothing to
    tell existing rows by, so every row would be loaded again (and the check roll it back), and one with a
    deferrable such constraint makes PostgreSQL refuse the insert. Both are refused up front, saying so;
    except into a keyless table of the restore's ``own`` (created by it, now or by an earlier day: its mark
    lists the days restored), where skip has nothing to guard: a listed day is "already restored", a day not
    listed has no rows there to skip (or the check refuses it), so the day loads as with ``fail`` (refusing it
    told the user to restore into a new table, the very command run). A refusal is the target's, the same for
    every day (:class:`TargetError`): the rest of a range is not offered with the day left out."""
    regclass = relation.identifier.as_string(conn)  # quoted: to_regclass('s.Events') would look up s.events
    # the target and, of a partitioned one, its partitions: a key declared on each partition (one without the
    # partition key, which the parent cannot have) is an arbiter of ON CONFLICT for the rows routed to it
    tree = ("(SELECT pg_catalog.to_regclass(%s) UNION "
            "SELECT relid FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(%s)))")
    keyed = ("(EXISTS (SELECT 1 FROM pg_catalog.pg_index WHERE indrelid = {r} AND indisunique) OR "
             "EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = {r} AND contype = 'x'))")
    # keyed itself, or (partitioned without a key of its own) every leaf partition keyed: a day routed to a
    # keyless one would have every row inserted again
    has_key, keyless = conn.execute(
        f"SELECT {keyed.format(r='pg_catalog.to_regclass(%s)')}, ARRAY(SELECT t.relid::pg_catalog.regclass::text "
        f"FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(%s)) t WHERE t.isleaf AND t.level > 0 "
        f"AND NOT {keyed.format(r='t.relid')} ORDER BY 1)", (regclass,) * 3).fetchone()
    leaves = conn.execute("SELECT pg_catalog.count(*) FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(%s)) t "
                          "WHERE t.isleaf AND t.level > 0", (regclass,)).fetchone()[0]
    if not has_key and leaves and keyless:
        raise TargetError(
            f"restoring {manifest['table']} for {manifest['day']} with on_conflict='skip' needs a primary key or "
            f"unique constraint to tell existing rows by, and {relation} has none, nor do its partition(s) "
            f"{', '.join(keyless[:5])}{' ...' if len(keyless) > 5 else ''}: their rows would be inserted again; "
            "nothing was restored", table=manifest["table"], day=manifest["day"], retryable=False,
            remedy="add a primary key or unique constraint to those partitions, or restore into a new table "
                   "(into='new'), or with on_conflict='fail' into a table that lacks the day's rows")
    has_key = has_key or bool(leaves)
    deferred = [name for (name,) in conn.execute(
        f"SELECT DISTINCT conname FROM pg_catalog.pg_constraint WHERE conrelid IN {tree} "
        "AND contype IN ('u', 'p', 'x') AND condeferrable ORDER BY conname", (regclass,) * 2).fetchall()]
    if deferred:  # every unique index is an arbiter of ON CONFLICT DO NOTHING, and a deferrable one cannot be
        raise TargetError(
            f"restoring {manifest['table']} for {manifest['day']} with on_conflict='skip' into "
            f"{relation}: its deferrable constraint(s) {', '.join(deferred)} cannot tell existing rows by "
            "(PostgreSQL's ON CONFLICT does not support deferrable unique or exclusion constraints); nothing was "
            "restored", table=manifest["table"], day=manifest["day"], retryable=False,
            remedy="restore into a new table (into='new'), or with on_conflict='fail' into a table that "
                   "lacks the day's rows, or make the constraint NOT DEFERRABLE (ALTER TABLE ... ALTER CONSTRAINT)")
    if not has_key and _kind(conn, relation) == "v":  # (no key of its own to skip taken rows by)
        raise TargetError(
            f"restoring {manifest['table']} for {manifest['day']} with on_conflict='skip' needs the target's unique "
            f"keys to tell existing rows by, and {relation} is a view; nothing was restored", table=manifest["table"],
            day=manifest["day"], retryable=False,
            remedy="restore into the view's base table with on_conflict='skip', or with on_conflict='fail' into the "
                   "view")
    if not has_key and own:
        return "fail"
    if not has_key:
        raise TargetError(
            f"restoring {manifest['table']} for {manifest['day']} with on_conflict='skip' needs a "
            f"primary key or unique constraint on {relation} to tell existing rows by, and it has none: every row "
            "would be inserted again; nothing was restored", table=manifest["table"], day=manifest["day"],
            retryable=False, remedy="restore into a new table (into='new'), or with on_conflict='fail' "
                                    "into a table that lacks the day's rows, or add a primary key to the target")
    return "skip"


_TARGET_TYPES = sql.SQL("""
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid, a.atttypmod
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
""")

# INSERT triggers (its partitions' too: they fire on the rows routed to them) and rules of the target (enabled,
# the user's): what may change, drop or redirect rows
_INSERT_HOOKS = sql.SQL("""
SELECT DISTINCT 'trigger ' || pg_catalog.quote_ident(tgname) FROM pg_catalog.pg_trigger
WHERE (tgrelid = pg_catalog.to_regclass(%(t)s)
       OR tgrelid IN (SELECT relid FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(%(t)s))))
  AND NOT tgisinternal AND tgenabled <> 'D' AND tgtype::int & 4 <> 0
UNION
SELECT 'rule ' || pg_catalog.quote_ident(rulename) FROM pg_catalog.pg_rewrite
WHERE ev_class = pg_catalog.to_regclass(%(t)s) AND ev_type = '3' AND ev_enabled <> 'D'
ORDER BY 1
""")


def _target_drift(conn: psycopg.Connection, manifest: dict, relation: Relation,
                  hooks: bool = True) -> tuple[list[tuple[str, str, str]], list[str]]:
    """How ``relation`` differs from the archived table in ways that change or refuse archived values:
    (its columns whose type is not the archived one, as (name, type here, archived type), its INSERT
    triggers and rules). A restore that fails or is rolled back names these as the likely cause."""
    recorded = {c["name"]: c.get("pg_type") for c in manifest.get("columns", [])}
    found = {name: rest for name, *rest in conn.execute(_TARGET_TYPES, (relation.identifier.as_string(conn),))}
    types = []
    for name, archived in recorded.items():
        if name not in found or not archived or found[name][0] == archived:
            continue
        # the same type spelled otherwise (a user's type named with or without its schema, by search_path)
        same = False
        if "(" not in archived and found[name][2] == -1:
            with contextlib.suppress(psycopg.Error), conn.transaction():  # (text the type parser refuses: not same)
                same = conn.execute("SELECT pg_catalog.to_regtype(%s) = %s::oid",
                                    (archived, found[name][1])).fetchone()[0]
        if not same:
            types.append((name, found[name][0], archived))
    if not hooks:
        return types, []
    return types, _insert_hooks(conn, relation)


def _loads_into_bare_columns(conn: psycopg.Connection, path: str, manifest: dict, target: sql.Composable) -> bool:
    """Whether the archive loads into a temporary table of the target's column types alone (no constraint,
    default, generated column or trigger of the target's): then a value its load refused was refused by one
    of the target's own expressions, not by a column's type. Rolled back either way (a savepoint)."""
    probe = sql.Identifier("pg_temp", f"archive_restore_probe_{os.getpid()}_{next(_names)}")

    class _Loaded(Exception):
        pass

    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(
                probe, _column_list(manifest_columns(manifest)), target))
            load_into(conn, path, manifest, probe)
            raise _Loaded
    except _Loaded:
        return True
    except (ArchiveError, psycopg.Error):
        return False


# The target's own expressions a row meets on its way in: CHECK constraints, generated columns, defaults of the
# columns the archive lacks, expression indexes and partial indexes' predicates; of the target and, for a
# partitioned one, of its partitions (where the rows land).
_OWN_EXPRESSIONS = """
WITH tree AS (SELECT %(rel)s::pg_catalog.regclass AS relid  -- (a table in no partition tree: no row below)
              UNION SELECT t.relid FROM pg_catalog.pg_partition_tree(%(rel)s::pg_catalog.regclass) t
              UNION  -- (a view's: the tables it writes into)
              SELECT d.refobjid::pg_catalog.regclass FROM pg_catalog.pg_rewrite r
              JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
               AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
              WHERE r.ev_class = %(rel)s::pg_catalog.regclass AND d.refobjid <> r.ev_class)
SELECT 'the CHECK constraint ' || pg_catalog.quote_ident(c.conname)
       || CASE WHEN c.conrelid <> %(rel)s::pg_catalog.regclass THEN ' of ' || c.conrelid::pg_catalog.regclass::text
               ELSE '' END
FROM pg_catalog.pg_constraint c JOIN tree ON tree.relid = c.conrelid WHERE c.contype = 'c' AND c.conislocal
UNION ALL
SELECT 'the generated column ' || pg_catalog.quote_ident(a.attname) FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %(rel)s::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''
UNION ALL
SELECT 'the DEFAULT of column ' || pg_catalog.quote_ident(a.attname) FROM pg_catalog.pg_attrdef d
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE d.adrelid = %(rel)s::pg_catalog.regclass AND NOT a.attisdropped AND a.attgenerated = ''
  AND NOT a.attname::text = ANY(%(archived)s)
UNION ALL
SELECT CASE WHEN i.indexprs IS NOT NULL THEN 'the expression index ' ELSE 'the partial index ' END
       || i.indexrelid::pg_catalog.regclass::text
FROM pg_catalog.pg_index i JOIN tree ON tree.relid = i.indrelid
JOIN pg_catalog.pg_class r ON r.oid = i.indrelid AND r.relkind IN ('r', 'm')
WHERE i.indexprs IS NOT NULL OR i.indpred IS NOT NULL
"""


def _own_expression_refused(conn: psycopg.Connection, manifest: dict, relation: Relation,
                            exc: BaseException) -> RestoreError:
    """The error for archived rows that the target's column types accept but one of its own expressions
    refused as they went in (a CHECK, a generated column, a default of a column the archive lacks, or a
    trigger): named, with what to do, instead of blaming a type or the archive's format."""
    with contextlib.suppress(psycopg.Error), conn.transaction():
        found = [row[0] for row in conn.execute(_OWN_EXPRESSIONS, {"rel": relation.identifier.as_string(conn),
                                                                   "archived": manifest_columns(manifest)})]
    hooks = _raising_hooks(conn, exc, relation)
    named_ = ", ".join([*(f"its {hook}" for hook in hooks), *found]) or "an expression of its own"
    which = "" if len(hooks) + len(found) == 1 else "one of "
    return RestoreError(f"restoring {manifest['table']} for {manifest['day']}: the archived rows do not load into "
                        f"{relation} ({type(exc).__name__}: {str(exc).splitlines()[0]}); nothing was restored. Its "
                        f"column types take every archived value, so the target's own expressions refused a row as "
                        f"it went in: {which}{named_}", table=manifest["table"], day=manifest["day"],
                        remedy="restore into a new table (into='new'), or change that expression of the target (or "
                               "disable it for the restore) and restore again")


def _drift_explained(conn: psycopg.Connection, manifest: dict, relation: Relation) -> tuple[str, str | None]:
    """(" <what of the target may have changed or refused the rows>", a remedy), or ("", None)."""
    with conn.transaction():  # (a savepoint: a failing catalog query here must not end the caller's transaction)
        types, hooks = _target_drift(conn, manifest, relation)
        retypable = bool(types) and _retypable(conn, manifest, relation)
    if not types and not hooks:
        return "", None
    said, mends = [], []
    if types:
        types = [f"{name}: {here} here, {archived} when archived" for name, here, archived in types]
        said.append(f"its column types are not the archived ones ({'; '.join(types)}): read as another type, a value "
                    "may be refused or changed (rounded, padded, cut, shifted in time)")
        if retypable:
            mends.append("give its columns the archived types")
    if hooks:
        said.append(f"it has {', '.join(hooks)} on INSERT, which may change, drop or redirect rows (COPY fires "
                    "triggers, not rules)")
        mends.append("disable them for the restore (ALTER TABLE ... DISABLE TRIGGER / DISABLE RULE)")
    return (f". {relation} differs from the table as archived: {'; '.join(said)}",
            "restore into a new table (into='new'), created with the archived types, and copy the rows "
            "on from there" + (f"; or {' and '.join(mends)}" if mends else ""))


def _retypable(conn: psycopg.Connection, manifest: dict, relation: Relation) -> bool:
    """Whether giving ``relation``'s columns the archived types is advice to give: never for the archived table
    itself, nor a table of a partition or inheritance tree (a partition's types are its parent's), whose other
    days' values the retype would round, cut or refuse; a table of the user's standing alone, it may be."""
    if _tree_root(conn, relation) == _tree_root(conn, Relation.configured(manifest.get("table") or "")):
        return False
    return not conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE %(rel)s::pg_catalog.regclass "
                            "IN (i.inhrelid, i.inhparent))",
                            {"rel": relation.identifier.as_string(conn)}).fetchone()[0]


_BINARY_FLOATS = ("real", "double precision")

# A type's base: through its domains and, for an array, to its element type (and the element's domains)
_BASE_TYPE = """
WITH RECURSIVE walk(oid, depth) AS (
    SELECT pg_catalog.to_regtype(%s)::oid, 0
    UNION ALL
    SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END, w.depth + 1
    FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
    WHERE (t.typtype = 'd' OR (t.typcategory = 'A' AND t.typelem <> 0)) AND w.depth < 32
)
SELECT pg_catalog.format_type(oid, NULL) FROM walk WHERE oid IS NOT NULL ORDER BY depth DESC LIMIT 1
"""


def _base_type(conn: psycopg.Connection, type_text: str) -> str:
    """The base type of a type spelled as ``format_type`` does (a domain over real: real; numeric(12,2)[]:
    numeric); the text without modifiers or brackets when this database does not know it."""
    plain = re.sub(r"\(.*?\)", "", type_text)
    with contextlib.suppress(psycopg.Error), conn.transaction():  # (text the type parser refuses: taken as is)
        found = conn.execute(_BASE_TYPE, (plain,)).fetchone()
        if found is not None:
            return found[0]
    return plain.removesuffix("[]")


def _nested_narrowing(conn: psycopg.Connection, manifest: dict, relation: Relation) -> list[str]:
    """The numbers inside a column's composite, range or array (the manifest's ``columns[].numbers``) that
    the target's type now holds as another binary float than archived: the type named the same (a
    composite, re-created or ALTER TYPE ... ALTER ATTRIBUTE since) reads 0.1 as another value."""
    recorded = {c["name"]: c["numbers"] for c in manifest.get("columns", []) if c.get("numbers")}
    if not recorded:
        return []
    oid = conn.execute("SELECT pg_catalog.to_regclass(%s)::oid", (relation.identifier.as_string(conn),)).fetchone()[0]
    if oid is None:
        return []
    names = column_names(conn, oid)

    def path(steps) -> tuple[str, ...]:
        return tuple(step for step in steps if step != "domain")

    here = {names[attnum]: {path(t.steps): t for t in found}
            for attnum, found in inner_types(conn, oid, NUMBER_TYPES).items() if attnum in names}
    changed = []
    for name, numbers in recorded.items():
        for number in numbers:
            now = here.get(name, {}).get(path(number["steps"]))
            # (as at the top: any other binary float than archived, the wider one too: real's 0.1 is not double's)
            if now is not None and now.type != number["type"] and now.type in ("float4", "float8"):
                changed.append(f"{name}: {now.route} here, {number['type']} there when archived")
    return changed


def _refuse_changed_shapes(conn: psycopg.Connection, manifest: dict, relation: Relation) -> None:
    """A target whose composites are not those the day was archived with (a field added, dropped, retyped, renamed
    or moved: see ``source.shape_changes``) is refused: a composite's text is positional, so the archived values
    would go into other fields, or fail to load and be blamed on the archive."""
    now = relation_shapes(conn, relation.identifier.as_string(conn))
    shapes = shape_changes(manifest.get("columns", []), now)
    if not shapes:
        _refuse_unrecorded_shapes(conn, manifest, relation, now)
    if shapes:
        raise RestoreError(
            f"restoring {manifest['table']} for {manifest['day']} into {relation}: a type inside its columns is not "
            f"the one the day was archived with: {'; '.join(shapes)}; nothing was restored", table=manifest["table"],
            day=manifest["day"], retryable=False,
            remedy="put the type back as it was archived (ALTER TYPE; the manifest's columns[].shape records it), or "
                   "restore in a database whose type is as archived, then convert the values on as you choose")


def _refuse_unrecorded_shapes(conn: psycopg.Connection, manifest: dict, relation: Relation,
                              now: dict[str, tuple]) -> None:
    """A manifest written before shapes were recorded cannot say whether a composite's fields moved since; where
    the target's composite has lost a field (the fields after it may have moved: ``DROP ATTRIBUTE a, ADD
    ATTRIBUTE a``), its positional text (in every format: JSONL too writes a composite as its text) could load
    into other fields and still print as archived, proven. Such a target is refused."""
    unrecorded = [c["name"] for c in manifest.get("columns", [])
                  if isinstance(c, dict) and not c.get("shape") and now.get(c.get("name"))]
    lost = altered_composites(conn, relation.identifier.as_string(conn)) if unrecorded else set()  # (one query)
    altered = [name for name in unrecorded if name in lost]
    if altered:
        raise RestoreError(
            f"restoring {manifest['table']} for {manifest['day']} into {relation}: its column(s) "
            f"{', '.join(repr(n) for n in altered)} hold a composite that has lost a field since it was created, so "
            "its fields may have moved, and the archive (written before archive_pipeline recorded composite shapes) "
            "does not say in which order it wrote them; a composite's text is positional, so its values could load "
            "into other fields and still print as archived. Nothing was restored", table=manifest["table"],
            day=manifest["day"], retryable=False,
            remedy="restore into a table (into='existing') whose composite type has the fields in the order they "
                   "had when the day was archived, created afresh (CREATE TYPE ... AS (...)), then convert on")


def _refuse_approximation(conn: psycopg.Connection, manifest: dict, relation: Relation) -> None:
    """A value archived as numeric, double precision or real, read into a column of another of these that is
    binary floating point, becomes the nearest value of that type, which may print as the archived text and
    still not be the archived value (0.1 as real is not 0.1 as double precision): the fingerprint, which
    compares text, would prove a restore that changed it. Such a target is refused before anything is loaded,
    and once more after the load (which rolls it back), in case the target was retyped meanwhile; so is one whose
    composites changed (:func:`_refuse_changed_shapes`)."""
    _refuse_changed_shapes(conn, manifest, relation)
    types, _ = _target_drift(conn, manifest, relation, hooks=False)
    changed = []
    for name, here, archived in types:
        # through domains and arrays on either side: a domain over real narrows as real does
        base_here, base_archived = (_base_type(conn, text) for text in (here, archived))
        if base_here != base_archived and base_here in _BINARY_FLOATS \
                and base_archived in (*_BINARY_FLOATS, "numeric"):
            changed.append(f"{name}: {here} here, {archived} when archived")
    changed += _nested_narrowing(conn, manifest, relation)
    if changed:
        raise RestoreError(
            f"restoring {manifest['table']} for {manifest['day']} into {relation}: its column(s) {'; '.join(changed)} "
            "would hold the nearest binary floating-point value of each archived number, which may print the same "
            "and still differ from it, so no fingerprint could prove the restore; nothing was restored",
            table=manifest["table"], day=manifest["day"], retryable=False,
            remedy=f"restore into a new table (into='new'), created with the archived types, and convert "
                   f"the values on from there as you choose; or give {relation}'s column(s) the archived types")


def _routed_by_trigger(conn: psycopg.Connection, manifest: dict, relation: Relation, whole: bool, copied: int,
                       added: fp.Fingerprint | None, before: _HeldBefore | None = None) -> tuple[str, int] | None:
    """Where COPY counted other than the archive's rows (``copied``): whether the day's rows in the target (its
    children included) still carry the archive's fingerprint, which a BEFORE INSERT trigger routing each row into a
    child table of the day (inheritance partitioning) gives while COPY counts none of them, and so does a dedupe
    trigger dropping the rows the day held already. (The check's words, the rows the target gained: the day's rows
    now less those held before, where counted), or None (the count's mismatch stands)."""
    recorded = manifest.get("fingerprint")
    if added is not None or fp.recorded_algorithm(recorded) is None:
        return None
    where = _day_where(conn, relation, manifest, whole)
    columns = _hashed_columns(conn, relation, manifest)
    now = fp.compute(conn, relation.identifier, columns, where, fp.algorithm_for(recorded))
    scope = relation if where is None else f"the rows of {manifest['day']} in {relation} and the tables under it"
    if str(now) != recorded:
        if now.rows > int(manifest["rows"]) and not whole:  # the trigger put every row in, beside rows the day had
            # already (a table this restore made, or the day's own, held none: there the object holds more rows)
            said, remedy = _extra_rows(conn, manifest, relation, whole, now.rows - int(manifest["rows"]), before)
            raise FingerprintMismatchError(
                f"restoring {manifest['table']} for {manifest['day']}: {scope} are {now.rows:,} rows with the "
                f"restored ones, {manifest['rows']:,} archived: {said}",
                table=manifest["table"], day=manifest["day"], retryable=False, remedy=remedy)
        return None
    held = before.rows if before is not None else 0
    gained = max(now.rows - held, 0)
    how = (f"{relation} held {held:,} of them before, so {gained:,} were added: a trigger of {relation} left out "
           "the rows already there" if held else f"a trigger of {relation} put the rows there")
    return (f"fingerprint {recorded} of {scope} equals the manifest's (COPY counted {copied:,} of the "
            f"{int(manifest['rows']):,} archived rows: {how})"), gained


# The sequences the default of column ``a`` (a pg_attribute row; ``ad`` its pg_attrdef row, LEFT JOINed) draws from:
# its own default's or, where it has neither a default nor an identity of its own, its domain's (the only one INSERT
# then uses: PostgreSQL takes no base domain's default, a domain over a domain copies it when made). By pg_depend for
# a sequence the expression names as a regclass, wherever in it (``nextval('ids')::int``, ``'A-' || nextval('ids')``),
# and by the deparsed text for one it names as text (``nextval('ids'::text)``, as dumps of old servers have it), for
# which PostgreSQL records no dependency and looks the name up at each INSERT: here by the search path, the name's
# shape checked first (to_regclass raises on some malformed names)
_DEFAULT_DRAWS_FROM = r"""
SELECT d.refobjid AS seq FROM pg_catalog.pg_depend d
WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND ((d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid)
       OR (ad.oid IS NULL AND a.attidentity = '' AND d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
           AND d.objid = a.atttypid))
UNION
SELECT pg_catalog.to_regclass(pg_catalog.replace(m[1], '''''', ''''))::pg_catalog.oid
FROM pg_catalog.regexp_matches(
    COALESCE(pg_catalog.pg_get_expr(ad.adbin, ad.adrelid),
             CASE WHEN a.attidentity = '' THEN (SELECT pg_catalog.pg_get_expr(ty.typdefaultbin, 0)
                                                FROM pg_catalog.pg_type ty WHERE ty.oid = a.atttypid) END),
    $re$nextval\(\('((?:[^']|'')+)'::[a-z ]+\)::regclass\)$re$, 'g') m
WHERE m[1] ~ $re$^("([^"]|"")+"|[^".\s]+)(\.("([^"]|"")+"|[^".\s]+))?\Z$re$"""

# The archived columns of the target that take their values from a sequence, with the sequence, its increment, and
# the domain and the ancestor it was found through (NULL where it was not): one they own (an identity column, ALWAYS
# or BY DEFAULT, or a serial's: pg_get_serial_sequence) or one their default draws from without owning it
# (``DEFAULT nextval('ids')``, a sequence shared by tables or OWNED BY another column, a domain's default:
# _DEFAULT_DRAWS_FROM), of the target or of a table it is a partition (at any depth) or an INHERITS child of, whose
# INSERTs route or show their rows beside the restored ones; each once, the nearest table's
_OWNED_SEQUENCES = f"""
WITH RECURSIVE up (rel, depth) AS (
    SELECT pg_catalog.to_regclass(%(t)s)::pg_catalog.oid, 0
    UNION ALL
    SELECT i.inhparent, up.depth + 1 FROM up JOIN pg_catalog.pg_inherits i ON i.inhrelid = up.rel)
SELECT col, nsp, rel, inc, domain, ancestor FROM (
    SELECT DISTINCT ON (ta.attnum, s.seq) ta.attnum, ta.attname::text AS col, n.nspname::text AS nsp,
           c.relname::text AS rel, q.seqincrement AS inc,
           CASE WHEN ad.oid IS NULL AND a.attidentity = '' THEN a.atttypid::pg_catalog.regtype::text END AS domain,
           CASE WHEN up.depth > 0 THEN up.rel::pg_catalog.regclass::text END AS ancestor
    FROM pg_catalog.pg_attribute ta
    CROSS JOIN up
    JOIN pg_catalog.pg_attribute a ON a.attrelid = up.rel AND a.attname = ta.attname AND NOT a.attisdropped
    LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    CROSS JOIN LATERAL (
        SELECT pg_catalog.pg_get_serial_sequence(a.attrelid::pg_catalog.regclass::text, a.attname::text)
               ::pg_catalog.regclass::pg_catalog.oid AS seq
        UNION {_DEFAULT_DRAWS_FROM}) s
    JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.seq
    JOIN pg_catalog.pg_class c ON c.oid = s.seq JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE ta.attrelid = pg_catalog.to_regclass(%(t)s) AND ta.attnum > 0 AND NOT ta.attisdropped
      AND (%(names)s::text[] IS NULL OR ta.attname::text = ANY (%(names)s::text[]))
    ORDER BY ta.attnum, s.seq, up.depth) found
ORDER BY attnum, nsp, rel
"""


def _advance_sequences(conn: psycopg.Connection, manifest: dict, relation: Relation, whole: bool) -> str:
    """Move each sequence the target's archived columns own (identity, serial) or their defaults draw from
    (``DEFAULT nextval('ids')``) past the values the restore wrote into them, where it is behind them: COPY and ``OVERRIDING SYSTEM VALUE`` write archived ids without taking
    them from the sequence, so a target whose sequence is fresh (a copy made with LIKE ... INCLUDING ALL) handed
    the application a restored id on its next INSERT. Only ever forward (a sequence ahead of the rows is left as
    it is), by ``setval``, as pg_restore's data does; in the day's transaction, after the check (setval itself is
    not undone by a rollback: a COMMIT that then fails leaves a gap in the sequence, which sequences have anyway).
    Through a view (simply updatable, or an INSTEAD OF trigger writing its table) the rows land in the table it
    reads (:func:`_view_base`), whose sequences are the ones behind: every column of it is looked at, since a
    trigger may write columns the view renames or does not show; a view over no single table is named as not
    checked. The edge is that of the day's rows (``whole``: of the whole target), the ones the restore wrote: the
    rows of other days were none of its, and asking the whole of a partitioned target opened every partition,
    waiting behind a lock another session held on another day's (the day committed with its sequence left behind).
    Returns the words the result's check ends with: what was advanced, or what could not be."""
    names: list[str] | None = manifest_columns(manifest)
    where: sql.Composable | None = None
    if _kind(conn, relation) == "v":
        base = _view_base(conn, relation)
        if base == relation or _kind(conn, base) not in ("r", "p"):
            return (f"; {relation} is a view over no single table, so the sequences of the table(s) it writes into "
                    "were not checked: if one is behind the restored values, its next value is a restored one "
                    "(SELECT setval('<sequence>', (SELECT max(<column>) FROM <table>)) as its owner)")
        relation, names = base, None  # (the whole base: the view's day column may be another of its columns)
    elif _kind(conn, relation) not in ("r", "p"):
        return ""
    else:
        where = _day_where(conn, relation, manifest, whole)
    target = relation.identifier.as_string(conn)
    try:
        with conn.transaction():
            owned = conn.execute(_OWNED_SEQUENCES, {"t": target, "names": names}).fetchall()
    except psycopg.Error as exc:
        return (f"; the sequences {relation}'s columns take their values from could not be looked up "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]}): if one is behind the restored values, its next "
                "value is a restored one (SELECT setval('<sequence>', (SELECT max(<column>) FROM "
                f"{relation})) as its owner)")
    said = []
    for column, nsp, name, increment, domain, ancestor in owned:
        sequence = Relation(nsp, name)
        through = _found_through(domain, ancestor, relation)
        edge = "max" if increment > 0 else "min"
        ahead = ">=" if increment > 0 else "<="  # (the value next handed out: last_value + increment once called)
        query = sql.SQL(
            "SELECT pg_catalog.setval(%(seq)s::pg_catalog.regclass, x.v, true) "
            "FROM (SELECT pg_catalog.{edge}({c})::bigint AS v FROM {t} WHERE {day}) x, {seq} s "
            "WHERE x.v::numeric {ahead} s.last_value::numeric + CASE WHEN s.is_called THEN %(inc)s ELSE 0 END").format(
            edge=sql.SQL(edge), c=sql.Identifier(column), t=relation.identifier, day=where or sql.SQL("TRUE"),
            seq=sequence.identifier, ahead=sql.SQL(ahead))
        try:
            with conn.transaction():
                # (with_params: a % in a name, "copy 100%", is not a placeholder)
                moved = conn.execute(with_params(query, conn),
                                     {"seq": sequence.identifier.as_string(conn), "inc": increment}).fetchone()
        except psycopg.Error as exc:
            said.append(f"the sequence {sequence} of column {column}{through} could not be checked or moved past the "
                        f"restored values ({type(exc).__name__}: {str(exc).splitlines()[0]}): if it is behind them, "
                        f"the next generated {column} is a restored one; as its owner: "
                        + _setval_statement(conn, sequence, column, edge, relation))
            continue
        if moved:
            said.append(f"the sequence {sequence} of column {column}{through} was behind the restored values and was "
                        f"advanced to {moved[0]}")
    return "".join(f"; {words}" for words in said)


def _setval_statement(conn: psycopg.Connection, sequence: Relation, column: str, edge: str, relation: Relation
                      ) -> str:
    """The ``setval`` a sequence's owner runs to move it past the restored values, with every name quoted as SQL
    needs it (a table "copy 100%", a column "Order Id"), so it runs as it is printed."""
    return sql.SQL("SELECT pg_catalog.setval({seq}, (SELECT pg_catalog.{edge}({c}) FROM {t}))").format(
        seq=sql.Literal(sequence.identifier.as_string(conn)), edge=sql.SQL(edge), c=sql.Identifier(column),
        t=relation.identifier).as_string(conn)


def _found_through(domain: str | None, ancestor: str | None, relation: Relation) -> str:
    """Where a column's sequence was found when neither its own identity nor its own default names it (its domain's
    default, a table the target is a partition or child of): so the result says why a sequence the target's
    definition does not show was moved, or is to be."""
    ways = ([f"the default of its domain {domain}"] if domain else []) + (
        [f"as a column of {ancestor}, which {relation} is a partition or child of"] if ancestor else [])
    return f" ({', '.join(ways)})" if ways else ""


def _renamed_meanwhile(conn: psycopg.Connection, manifest: dict, relation: Relation, names: PrintedNames) -> None:
    """Raise (retryable) if a name the restored values print was renamed while the restore ran (an enum label:
    ALTER TYPE ... RENAME VALUE takes no lock the restore holds; an object a reg* value names): the rows loaded
    before it print the new name, so the check found them not the archive's, which is no altered archive."""
    with conn.transaction():  # (a savepoint: the caller's error is what ends the transaction)
        changed = printed_names_changed(conn, names)
    if changed:
        raise RestoreError(f"{' and '.join(changed)} of {relation}'s column types was changed while the day was "
                           "restored, so the restored rows printed other names than the archive holds; the restore "
                           "was rolled back", table=manifest["table"], day=manifest["day"], retryable=True,
                           cause="a name the day's values print was renamed during the restore",
                           remedy="restore again (a retry names a label the archive holds that the type lacks now); "
                                  "rename enum labels and the objects reg* columns name outside restores")


def _check(conn: psycopg.Connection, manifest: dict, relation: Relation, whole: bool, rows: int,
           added: fp.Fingerprint | None = None, skipped: int = 0,
           before: _HeldBefore | None = None, created: bool = False) -> tuple[bool, str | None, str]:
    """Compare the restored rows with the manifest; raise (rolling back) if they differ. ``added``:
    the fingerprint of the rows the load inserted, when those are what is compared; ``before``: the day's rows a
    target with INSERT hooks held before the load (see :func:`_extra_rows`); ``created``: the day's rows are in a
    table this restore created (see :func:`_hashed_columns`)."""
    table, day = manifest["table"], manifest["day"]
    recorded = manifest.get("fingerprint")
    if rows != manifest["rows"]:
        drift, remedy = _drift_explained(conn, manifest, relation)
        said = (f"the load added {rows:,} rows to {relation}, but the archive's manifest records {manifest['rows']:,}"
                if drift else f"the archive of {table} for {day} holds {rows:,} rows but its manifest records "
                f"{manifest['rows']:,}: it was altered or damaged after it was written (its object and manifest no "
                "longer agree)")
        raise FingerprintMismatchError(f"restoring {table} for {day}: {said}; the restore was rolled back{drift}",
                                       table=table, day=day,
                                       remedy=remedy or "restore the object and its manifest from a backup of the "
                                                        "bucket, or archive the day again (overwrite) if the source "
                                                        "still holds it")
    # before the fingerprint's early return: the day column tells another day's rows without one (a version 1
    # manifest is unsealed: its object swapped for another day's, sizes and digests edited to match)
    if whole and manifest.get("day_column") and (outside := rows_outside_period(conn, relation.identifier, manifest)):
        # a table this restore made holds only the archive's rows: one of another period is not this day's archive
        raise FingerprintMismatchError(
            f"restoring {table} for {day}: {outside:,} of the archive's rows have a {manifest['day_column']} outside "
            f"{day}: it is not this day's archive (another day's put in its place, its manifest altered with it); the "
            "restore was rolled back", table=table, day=day, retryable=False,
            remedy="restore the day's object and manifest from a backup of the bucket (its versions, a replica), "
                   "or archive the day again (overwrite) if the source still holds it")
    if fp.recorded_algorithm(recorded) is None:
        return _count_checked(conn, manifest, relation, whole, rows, added, before)
    columns = _hashed_columns(conn, relation, manifest, created=created)
    where = _day_where(conn, relation, manifest, whole)
    if added is not None:
        actual, scope = added, f"the day's rows the restore loaded into {relation}"
    else:
        actual = fp.compute(conn, relation.identifier, columns, where, fp.algorithm_for(recorded))
        scope = relation if where is None else f"the rows of {day} in {relation}"
    if str(actual) != recorded:
        generated, _ = _computed_columns(conn, relation.identifier, manifest_columns(manifest))
        computed = (f", or {relation} computes its generated column(s) {generated} otherwise than when the day was "
                    "archived (restore into a new table to get the archived values)") if generated else ""
        drift, remedy = _drift_explained(conn, manifest, relation)
        lossy, lossy_remedy = _inexact_explained(manifest)
        here = conn.info.parameter_status("server_encoding") or ""
        if skipped and drift:  # rows not inserted, and the target has hooks or other types: those first
            raise FingerprintMismatchError(
                f"restoring {table} for {day}: {scope} have fingerprint {actual} but the archive's manifest records "
                f"{recorded}; the restore was rolled back. {skipped:,} archived row(s) were not inserted: dropped or "
                f"changed by what follows, or left out because a row of {relation} already had their key{drift}",
                table=table, day=day, remedy=remedy)
        if skipped:  # a cause the load counted, named before an altered archive
            raise FingerprintMismatchError(
                f"restoring {table} for {day}: {scope} have fingerprint {actual} but the archive's manifest records "
                f"{recorded}; the restore was rolled back. Skipping the rows whose key was taken left out "
                f"{skipped:,} archived row(s): where the rows holding those keys in {relation} have other values (a "
                "row of the day moved to another day or edited since, or archived rows that collide among "
                "themselves under a unique constraint of the target), that is the difference; else the target "
                "already held other rows of the day", table=table, day=day,
                remedy=f"find the rows of {relation} whose keys the archived rows have, or the day's rows the "
                       "archive lacks (compare --rows, or restore into a new table with into='new' and compare), "
                       "fix or remove them, and restore again")
        if added is None and where is not None and not skipped and actual.rows > int(manifest["rows"]):
            # every archived row went in, beside rows of the day the target held already (late rows of a removed
            # day, written after its removal), or rows the target's INSERT hooks added: not the archive
            said, remedy = _extra_rows(conn, manifest, relation, whole, actual.rows - int(manifest["rows"]),
                                        before)
            raise FingerprintMismatchError(
                f"restoring {table} for {day}: {scope} are {actual.rows:,} rows with the restored ones, "
                f"{manifest['rows']:,} archived: {said}", table=table, day=day, retryable=False, remedy=remedy)
        padded = _byte_padded(conn, manifest, relation, columns, where) or \
            _byte_limited(conn, manifest, relation, columns, where)
        if padded:  # the likely cause, found in the rows: not an altered archive
            raise FingerprintMismatchError(f"restoring {table} for {day}: {scope} have fingerprint {actual} but the "
                                           f"archive's manifest records {recorded}; the restore was rolled back. "
                                           f"{padded}", table=table, day=day,
                                           remedy=f"restore into a database of the archived encoding "
                                                  f"({(manifest.get('source') or {}).get('encoding')}), or into a "
                                                  "table whose column is text (into='existing')")
        known = archived_encoding(conn, manifest)  # the manifest's, or this database's where it is the source
        mismatch = fp.encoding_mismatch(recorded, known, here)
        if mismatch:  # the likely cause, from the manifest: not an altered archive
            raise FingerprintMismatchError(f"restoring {table} for {day}: {scope} have fingerprint {actual} but the "
                                           f"archive's manifest records {recorded}; the restore was rolled back: "
                                           f"{mismatch}", table=table, day=day,
                                           remedy="restore into a database of the archived encoding")
        if not known and fp.algorithm_for(recorded) != fp.V2:
            # an older version's manifest records no encoding: say that first, not that the archive was altered
            raise FingerprintMismatchError(
                f"restoring {table} for {day}: {scope} have fingerprint {actual} but the archive's manifest records "
                f"{recorded}; the restore was rolled back.{lossy} The manifest (written by an older version) does "
                "not record its source database's encoding: where that was a multibyte encoding other than UTF-8 "
                f"(EUC_JP, EUC_KR, ...) and this one is {here}, or the other way round, the fingerprint cannot be "
                "computed again here; else the target already held other rows of the day, or the archive does not "
                f"hold the rows it was proven to hold{computed}{drift}", table=table, day=day,
                remedy=remedy or lossy_remedy or "restore into a database of the archived one's encoding; if the "
                       "encodings are the same, compare the object with its manifest (verify --download)")
        if _kind(conn, relation) == "v":  # rows inserted through a view are not all it shows (a WHERE hides some)
            raise FingerprintMismatchError(
                f"restoring {table} for {day}: {scope} have fingerprint {actual} but the archive's manifest records "
                f"{recorded}; the restore was rolled back. {relation} is a view: it shows what its query selects, not "
                "every row inserted through it, so the rows loaded through it are not all read back by the check",
                table=table, day=day, remedy="restore into the view's base table, or into a new table (into='new')")
        raise FingerprintMismatchError(
            f"restoring {table} for {day}: {scope} have fingerprint {actual} but the archive's manifest records "
            f"{recorded}; the restore was rolled back.{lossy} {'Otherwise t' if lossy else 'T'}he archive does not "
            f"hold the rows it was proven to hold (altered after it was written), or the target already held other "
            f"rows of the day{computed}{drift}",
            table=table, day=day, remedy=remedy or lossy_remedy)
    return True, recorded, f"fingerprint {recorded} of {scope} equals the manifest's"


def _count_checked(conn: psycopg.Connection, manifest: dict, relation: Relation, whole: bool, rows: int,
                   added: fp.Fingerprint | None, before: _HeldBefore | None) -> tuple[bool, None, str]:
    """The check of a day whose manifest records no fingerprint this version computes (version 1, or a newer
    algorithm's): the day's rows in the target (by its day column, or the whole of a table that is the day's) must
    count the manifest's rows, as the fingerprint counts them. The rows the load added always do; a target that
    held the day already (the original table still holding it, a re-run into a copy) then held it twice, reported
    as recorded. Where no day column tells the day's rows apart (``added``), what the load added is all there is."""
    table, day, recorded = manifest["table"], manifest["day"], manifest.get("fingerprint")
    why = "its manifest (version 1) records no fingerprint" if not recorded else \
        f"its fingerprint {recorded!r} is none of {', '.join(fp.ALGORITHMS)}"
    if added is not None:
        return False, None, f"row count only ({rows:,} rows as recorded, those the load added to {relation}): {why}"
    where = _day_where(conn, relation, manifest, whole)
    scope = relation if where is None else f"the rows of {day} in {relation}"
    held = conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {} WHERE {}").format(
        relation.identifier, where if where is not None else sql.SQL("TRUE"))).fetchone()[0]
    if held > int(manifest["rows"]):
        said, remedy = _extra_rows(conn, manifest, relation, whole, held - int(manifest["rows"]), before)
    elif held < int(manifest["rows"]):
        said, remedy = (f"{int(manifest['rows']) - held:,} archived row(s) are not there as rows of {day}: the "
                        "archive holds rows of another day (another day's put in its place, its manifest altered "
                        f"with it), a trigger of {relation} changed or removed them as they went in, or (skip) a row "
                        "of another day there already had their key; the restore was rolled back"), (
            "restore into a new table (into='new') and look at its rows; if they are another day's, restore the "
            "day's object and manifest from a backup of the bucket")
    else:
        counted = relation if where is None else f"{relation} for {day}"
        return False, None, f"row count only ({held:,} rows as recorded, counted in {counted}): {why}"
    raise FingerprintMismatchError(
        f"restoring {table} for {day}: {scope} are {held:,} rows with the restored ones, {manifest['rows']:,} "
        f"archived (counted, as {why}): {said}", table=table, day=day, retryable=False, remedy=remedy)


def _byte_padded(conn: psycopg.Connection, manifest: dict, relation: Relation, columns: list[Column],
                 where: sql.Composable | None) -> str | None:
    """Why ``character(n)`` values of a day archived from a SQL_ASCII database do not come back as archived,
    or None: SQL_ASCII pads a value to n bytes, any other encoding to n characters, so a value with a
    character beyond ASCII comes back with other trailing blanks."""
    archived_in = (manifest.get("source") or {}).get("encoding")
    if archived_in != "SQL_ASCII" or conn.info.parameter_status("server_encoding") == "SQL_ASCII":
        return None
    padded = [c for c in columns if re.fullmatch(r"character\(\d+\)", c.type_name)]  # (arrays, domains: _byte_limited)
    found = [c.name for c in padded if conn.execute(sql.SQL(
        "SELECT EXISTS (SELECT FROM {} WHERE {} AND pg_catalog.octet_length({}) <> pg_catalog.char_length({}))").format(
            relation.identifier, where if where is not None else sql.SQL("true"), sql.Identifier(c.name),
            sql.Identifier(c.name))).fetchone()[0]]
    if not found:
        return None
    return (f"Column(s) {', '.join(map(repr, found))} are character(n), and hold characters beyond ASCII: the SQL_ASCII "
            "database the day was archived from pads such a value to n bytes, this one to n characters, so it "
            "does not come back with the archived trailing blanks")


_NAME_TYPE = re.compile(r"(?:pg_catalog\.)?name(?:\[\])*")
_CHAR_TYPE = re.compile(r"(?:pg_catalog\.)?(?:character|bpchar|char)(?:\(\d+\))?(?:\[\])*")


def _byte_limited(conn: psycopg.Connection, manifest: dict, relation: Relation, columns: Sequence[Column],
                  where: sql.Composable | None) -> str | None:
    """Why values of a day archived in a database of another encoding may not come back as archived, or None:
    a ``name`` keeps 63 bytes (a LATIN1 'é' is one, two in UTF-8: a longer value is cut), and where either
    database is SQL_ASCII a ``character(n)`` is padded to n bytes there, n characters elsewhere (through a domain
    or in an array too). Only where the restored rows hold such values (beyond ASCII; a name near 63 bytes): a
    type alone blamed a short name for what a trigger of the target did."""
    archived_in, here = (manifest.get("source") or {}).get("encoding"), conn.info.parameter_status("server_encoding")
    if not archived_in or archived_in == here:
        return None

    by_name = {c.name: c for c in columns}  # (the target's, through domains and arrays)
    beyond_ascii = "x::pg_catalog.text ~ '[^\\x01-\\x7F]'"

    def typed(pattern: re.Pattern[str], condition: str) -> list[str]:
        return [c["name"] for c in manifest.get("columns", [])
                if any(pattern.fullmatch(str(t or "")) for t in (c.get("pg_type"), c.get("base_type"),
                                                                   getattr(by_name.get(c["name"]), "base_type", None)))
                and _holds(conn, relation, where, by_name.get(c["name"]), c["name"], condition)]
    said = []
    if names := typed(_NAME_TYPE, f"pg_catalog.octet_length(x::pg_catalog.text) >= 61 AND {beyond_ascii}"):
        said.append(f"column(s) {', '.join(map(repr, names))} are of type name, which keeps 63 bytes of a value: one "
                    f"longer than that in {here} (its characters take more bytes here than in {archived_in}) is cut")
    if "SQL_ASCII" in (archived_in, here) and (padded := typed(_CHAR_TYPE, beyond_ascii)):
        said.append(f"column(s) {', '.join(map(repr, padded))} are character(n) (or hold it): SQL_ASCII pads a value "
                    "to n bytes, any other encoding to n characters, so one with characters beyond ASCII comes back "
                    "with other trailing blanks")
    if not said:
        return None
    return (f"The day was archived from a {archived_in} database and restored into a {here} one: "
            + "; ".join(said) + ".")


def _holds(conn: psycopg.Connection, relation: Relation, where: sql.Composable | None, column: Column | None,
           name: str, condition: str) -> bool:
    """Whether a restored row holds a value of column ``name`` (an element, for an array) meeting ``condition``
    on ``x``; False where it cannot be asked (a column the target names otherwise)."""
    rows = sql.SQL("SELECT r.{c} AS x FROM {rel} r WHERE {w}") if column is None or not column.is_array else \
        sql.SQL("SELECT u.x FROM {rel} r CROSS JOIN LATERAL pg_catalog.unnest(r.{c}) AS u(x) WHERE {w}")
    query = sql.SQL("SELECT EXISTS (SELECT FROM ({rows}) s WHERE {cond})").format(
        rows=rows.format(c=sql.Identifier(name), rel=relation.identifier,
                         w=where if where is not None else sql.SQL("true")), cond=sql.SQL(condition))
    try:
        with conn.transaction():
            return bool(conn.execute(query).fetchone()[0])
    except psycopg.Error:
        return False


def _inexact_explained(manifest: dict) -> tuple[str, str | None]:
    """(a sentence naming the columns the manifest records as not archived exactly, and the remedy), or
    ("", None): a value such an encoding changed (a json's line break in JSONL) is the likely cause of a
    fingerprint that differs, not an altered archive."""
    inexact = inexact_groups(manifest.get("columns", []))
    if not inexact:
        return "", None
    named = "; ".join(f"{names}: {encoding}, {note}" for names, encoding, note in inexact)
    fmt = manifest.get("format")
    return (f" The manifest records column(s) as not archived exactly in {fmt} ({named}): a value that encoding "
            "changed comes back changed, the likely cause.",
            f"such a value cannot be restored as it was from this archive; archive the table as "
            f"{OTHER_FORMATS.get(fmt, 'another format')} (with strict: true, which refuses any inexact encoding) "
            "to keep every value")


@contextlib.contextmanager
def _writable(conn: psycopg.Connection) -> Iterator[None]:
    """Let the block write even on a connection the archiver left READ ONLY (its snapshot setting
    stays on the connection); the caller's setting is put back afterwards."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if not (idle and conn.read_only):
        yield
        return
    conn.read_only = False
    try:
        yield
    finally:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.read_only = True


def _refuse_standby(conn: psycopg.Connection, table: str | None, day: str | None) -> None:
    """A restore writes: on a hot standby its first write failed with a guess between a standby and a read-only
    role, and advice for the role (RESET default_transaction_read_only) that changes nothing on a standby. Asked
    up front (as a removal asks), a standby is named as such: the DSNs swapped, or the primary's unset."""
    try:
        standby = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]
    except psycopg.Error:
        return  # (a lost session is told by the restore's first statement, as before)
    if standby:
        raise TargetError(f"restoring {table} for {day} must run on the primary, and this connection is a hot standby "
                          "(pg_is_in_recovery()), which takes no writes; nothing was restored", table=table, day=day,
                          retryable=False, cause="the restore's connection is a hot standby",
                          remedy="ARCHIVE_PG_PRIMARY_DSN (or, unset, ARCHIVE_PG_DSN) names a hot standby: set "
                                 "ARCHIVE_PG_PRIMARY_DSN to the primary (restores run there; ARCHIVE_PG_DSN may stay "
                                 "the standby), or pass a connection to the primary")


@speaks_utf8()
def restore_archive(conn: psycopg.Connection, store: S3Store, manifest: dict, *, into: Into = "new",
                    target: str | None = None, on_conflict: OnConflict = "fail",
                    temp_dir: str | os.PathLike | None = None) -> RestoreResult:
    """Restore the day ``manifest`` describes, all or nothing.

    ``into``: ``"new"`` creates ``target`` from the manifest's table definition (columns, types, NOT
    NULL, primary key); ``"existing"`` loads into ``target`` as it is; ``"original"`` loads into the
    archived table (``source_relation``), first re-creating and attaching the day's partition with its
    recorded bound if it was dropped (or the day's table in naming mode). ``on_conflict``: ``"fail"``
    (a row whose key exists aborts the restore) or ``"skip"`` (such rows are left as they are).

    The object is downloaded and checked (size, MD5) before anything is loaded. Loading and the check
    run in one transaction: the restored rows (the new table, or the day's rows in the target) must
    have the manifest's fingerprint, else the transaction is rolled back and
    :class:`FingerprintMismatchError` says both fingerprints. A version 1 manifest has no fingerprint:
    the row count is checked instead, and the result says so; the day column's values and (``skip``) the
    kept rows against the archived ones are checked as for any archive. ``conn`` must be in autocommit mode (the
    day is committed before its result is returned).
    """
    require_autocommit(conn, "restoring a day")
    started = time.perf_counter()
    table, day = manifest.get("table"), manifest.get("day")
    _refuse_standby(conn, table, day)
    to_create: list[Relation] = []
    finished: list[bool] = []  # the day's transaction committed: a cancellation after it leaves the day restored
    committing: list[bool] = []  # its COMMIT was sent: a connection lost from here may have lost only the answer
    marked: set[str] | None = None
    by_added = False
    relation: Relation | None = None
    try:
        relation = None if target is None else _target(conn, target)
        _require_column_names(conn, manifest)
        if into in ("new", "existing") and _still_restored(conn, relation, manifest,
                                                          _listed_days(conn, relation, table)):
            return _already_restored(relation, manifest, started)  # nothing to download
        with contextlib.ExitStack() as stack:
            stack.enter_context(writing_as_origin(conn, table, day, "restoring"))  # (before the download's cost)
            path = None if manifest.get("empty") or manifest.get("object") is None else \
                stack.enter_context(downloaded(store, manifest, temp_dir))
            # Into the archived table: never while the day is archived or removed. Into another table:
            # never twice at once into the same one (two restores of one day would each check only their
            # own uncommitted rows, and both load them), whatever runs on the source meanwhile.
            # The archived table, its day's partition or its day table named as a target are the original too.
            partition = _recorded_partition(manifest)
            original = {Relation.configured(name) for name in (table, manifest.get("source_relation")) if name} | \
                ({partition[1]} if partition else set())
            # (one lock per partition tree: a partition and its parent hold the same rows)
            root = _tree_root(conn, relation)
            lock_name = table if into == "original" or relation in original or (
                root is not None and root == _tree_root(conn, Relation.configured(table))) else f"restore into {root}"
            try:
                stack.enter_context(table_day_lock(conn, lock_name, manifest_period(manifest)))
            except ArchiveError as exc:
                if lock_name != table and exc.table == lock_name:  # the lock's own name is no table of anyone's
                    exc = _another_restore_into(exc, table, manifest, root)
                _unsure_after_another(conn, exc, manifest, into, relation, original)
                raise exc from None
            stack.enter_context(_writable(conn))
            with _committed(conn, finished, committing):  # (its transaction)
                # the manifest's type names read as the archive wrote them, under PostgreSQL's names first (a
                # role's path with an Oracle-compatibility "date" before pg_catalog created the wrong type)
                apply_settings(conn.execute, {"search_path": CATALOG_FIRST})
                marked = _marked_days(conn, relation, table) if into in ("new", "existing") else None
                if marked is not None:  # a target an earlier restore of this table created: resumed, not refused
                    if _still_restored(conn, relation, manifest, marked):
                        return _already_restored(relation, manifest, started)
                    into = "existing"
                relation, to_create = _resolve_target(conn, manifest, into, relation)
                if marked is not None and not to_create and _owns(conn, relation):
                    _widen_own(conn, manifest, relation)
                elif marked is not None and not to_create:
                    _refuse_unmarkable(conn, manifest, relation)
                original = into == "original"
                to_create = [name for name in to_create if _create(conn, manifest, name, original=original)]
                # the day is the whole target: a new table, or the day's own table (naming mode)
                whole = into == "new" or (into == "original" and not manifest.get("day_column"))
                if into != "new" and not to_create and _loaded_before(conn, relation, manifest, whole):
                    return _already_restored(relation, manifest, started, proven=True)
                _refuse_approximation(conn, manifest, relation)
                if on_conflict == "skip":  # (into the restore's own table without a key: loaded as with fail)
                    on_conflict = _skip_mode(conn, manifest, relation, own=into == "new" or marked is not None)
                by_added = not whole and not manifest.get("day_column")  # no day column to tell its rows by
                names = relation_printed_names(conn, relation.identifier)  # (see _renamed_meanwhile)
                hooks = _insert_hooks(conn, relation)
                before = _held_if_hooked(conn, manifest, relation, whole, hooks)
                try:
                    rows, inserted, added = _load(conn, path, manifest, relation, on_conflict,
                                                  fingerprint_added=by_added)
                except psycopg.errors.InsufficientPrivilege as exc:
                    exc.while_loading = True  # (see _policy_refused_row)
                    raise
                _fire_deferred(conn, manifest, relation)
                # Again, now that the load's lock keeps the target's types as they are: a column retyped while
                # the load waited for that lock got the archived numbers rounded, which the fingerprint cannot see.
                _refuse_approximation(conn, manifest, relation)
                routed = _routed_by_trigger(conn, manifest, relation, whole, rows, added, before) if \
                    rows != manifest["rows"] and on_conflict == "fail" else None
                if routed:  # every archived row is there, through a trigger COPY does not count
                    rows, (check, inserted) = int(manifest["rows"]), routed
                    checked, proven = True, manifest["fingerprint"]
                else:
                    try:
                        checked, proven, check = _check(conn, manifest, relation, whole=whole, rows=rows, added=added,
                                                        skipped=rows - inserted if on_conflict == "skip" else 0,
                                                        before=before, created=bool(to_create))
                    except FingerprintMismatchError:
                        _renamed_meanwhile(conn, manifest, relation, names)
                        raise
                check += _advance_sequences(conn, manifest, relation, whole) + _hooks_note(relation, hooks)
                if (into == "new" or marked is not None) and _owns(conn, relation):  # (a comment is the owner's)
                    _mark_restored(conn, relation, table, (marked or set()) | {day})
        return RestoreResult(table=table, day=day, target=str(relation), rows=rows, inserted=inserted,
                             seconds=time.perf_counter() - started, fingerprint_checked=checked, fingerprint=proven,
                             check=check, created=tuple(map(str, to_create)))
    except ArchiveError as exc:
        if isinstance(exc, _UniqueViolation):  # the day's transaction is rolled back: now it can be told
            exc = _unique_violation(conn, exc, manifest, to_create)
        elif isinstance(exc, SourceError) and not isinstance(exc, SessionSettingError) and table:
            # the target read as a source is (its columns, by the check): the restore's refusal, of the archived table
            said = exc.message if exc.message.startswith(f"restoring {table}") else \
                f"restoring {table} for {day} into {relation}: {exc.message}"
            exc = RestoreError(said, table=table, day=day, retryable=exc.retryable, cause=exc.cause,
                               remedy=exc.remedy, every_day=exc.every_day)
        if table and day:  # every refusal names the table and the day (a column's type, a target's name...)
            named(exc, table, day)
        exc.table, exc.day = exc.table or table, exc.day or day
        raise exc from exc.__cause__
    except Exception as exc:
        if committing and not (isinstance(exc, psycopg.Error) and exc.sqlstate and not conn.closed):
            # (a COMMIT the server answered with an error, a deferred trigger's, was rolled back: said below)
            raise _commit_unanswered(exc, manifest, relation, tellable=marked is not None or not by_added) from exc
        found = classify(exc)
        # whose the cause is: the target's, the role's (every day alike), or the day's archive's; None: its class's
        every_day: bool | None = None
        if found.cause.startswith("statement_timeout"):  # (the source's words say "reading the day": none is read)
            found = replace(found, cause="statement_timeout: restoring the day took longer than allowed (loading or "
                            "checking it, or waiting for a lock on the target that another session holds: the wait "
                            "counts too)",
                            remedy="retry; if another session holds a lock on the target (pg_blocking_pids(), "
                                   "pg_locks), wait until it ends; if the day itself takes longer, raise "
                                   "source.statement_timeout_ms (0 = no limit) in the archive config, which the "
                                   "command line's sessions take; elsewhere the role's (ALTER ROLE <login role> SET "
                                   "statement_timeout = ...)")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege) and "must be owner" in str(exc):
            found = replace(found, remedy="re-creating and attaching the day's partition (or table) takes ownership "
                            "of the table: restore as its owner (or GRANT the owner's role TO the restoring role), or "
                            "restore into a new table (into='new')")
        elif isinstance(exc, psycopg.errors.InsufficientPrivilege) and refused_kind(exc) == "tablespace" and \
                (refused := refused_grant(exc, table or "", acting_role(conn), login=conn.info.user)):
            found = replace(found, remedy=refused)  # (the role's default_tablespace: where its new tables go)
        elif isinstance(exc, psycopg.errors.InsufficientPrivilege) and "row-level security" not in str(exc):
            found = replace(found, remedy=_restore_grant(conn, exc, relation))
        elif isinstance(exc, psycopg.errors.InsufficientPrivilege) and _policy_refused_row(exc):
            every_day = True  # the target's policies for this role (told as the check's refusal below is)
            found = replace(found, cause=_insert_policies_refused(conn, relation),
                            remedy="restore as the table's owner (without FORCE ROW LEVEL SECURITY), a role with "
                                   "BYPASSRLS or a superuser, or let the policy's WITH CHECK pass the archived rows; "
                                   "or restore into a new table (into='new') and copy the rows on from there")
        elif isinstance(exc, psycopg.errors.InsufficientPrivilege):  # row security (the archive's words otherwise)
            every_day = True  # the target's policies for this role, whatever the day holds
            found = replace(found, cause=f"{relation} has row-level security whose policies apply to this role, so "
                            "the restored rows cannot all be seen to be proven (row_security is off in the check)",
                            remedy="restore as the table's owner (without FORCE ROW LEVEL SECURITY), a role with "
                                   "BYPASSRLS or a superuser; or restore into a new table (into='new') and copy the "
                                   "rows on from there")
        if isinstance(exc, psycopg.errors.WithCheckOptionViolation):
            found = replace(found, cause=f"{relation} is a view WITH CHECK OPTION, and archived rows are outside what "
                            "it shows, so it refused them",
                            remedy="restore into the view's base table, or into a new table (into='new')")
        gone = gone_by_name(exc, manifest, besides=tuple(filter(None, (*(relation or ()), *(
            Relation.configured(table) if table else ())))))
        if gone:  # a value's, not the target's nor the configuration's
            every_day = False
            found = replace(found, cause=name_gone_cause(gone, exc), retryable=False,
                            remedy="create the object the value names again (as it was named), or restore into a "
                                   "table whose column is text (into='existing'), which takes the name as it was "
                                   "archived")
        elif isinstance(exc, psycopg.errors.InvalidSchemaName) and into != "original":  # not the configuration's
            found = replace(found, remedy=f"create the schema of the target {target} first (CREATE SCHEMA), or "
                            "restore into a table of a schema that exists")
        if isinstance(exc, psycopg.errors.WrongObjectType):  # a view, a materialized view, a sequence ...
            found = replace(found, cause=f"the target is not a table ({str(exc).splitlines()[0]})",
                            remedy="restore into a table (into='new' creates one)")
        moved = _moved_by_trigger(conn, exc, relation, day)
        if moved:  # (before the bound is blamed: the row was routed by its day, then a trigger changed it)
            found = replace(found, cause=moved[0], remedy=moved[1], retryable=False)
        elif isinstance(exc, psycopg.errors.CheckViolation) and exc.diag.message_primary and (
                exc.diag.message_primary.startswith("no partition of relation")
                or (exc.diag.constraint_name is None and exc.diag.table_name is not None)):  # (any lc_messages)
            found = _outside_partitions(conn, exc, found, day)
        if isinstance(exc, psycopg.errors.LockNotAvailable) and relation is not None:
            found = _target_locked(conn, exc, found, relation)
        archived_in = (manifest.get("source") or {}).get("encoding")
        here = conn.info.parameter_status("server_encoding")
        columns_: list[str] = []
        if isinstance(exc, psycopg.errors.ProgramLimitExceeded) and archived_in and archived_in != here:
            # a limit PostgreSQL counts in bytes (a tsvector's word, a btree entry): the archived value is longer
            # in this database's encoding than in the one it was archived from, not a value of over 1 GB
            archived_names = sorted(manifest_columns(manifest), key=len, reverse=True)  # (one with a space: whole)
            in_context = [n for n in archived_names if f"column {n}:" in (exc.diag.context or "")][:1]
            columns_ = in_context or [c["name"] for c in manifest.get("columns", [])
                                      if re.fullmatch(r"(?:pg_catalog\.)?(?:tsvector|tsquery|name)(?:\[\])*",
                                                      str(c.get("base_type") or c.get("pg_type") or ""))]
        if isinstance(exc, psycopg.errors.ProgramLimitExceeded) and archived_in and archived_in != here and columns_:
            found = replace(found, cause=f"a value of column(s) {', '.join(map(repr, columns_)) or '?'} is over a "
                            f"limit PostgreSQL counts in bytes once in this database's encoding ({here}), where its "
                            f"characters take more bytes than in the {archived_in} database it was archived from "
                            f"({exc.diag.message_primary})", retryable=False,
                            remedy=f"restore into a database of the archived encoding ({archived_in})")
        if isinstance(exc, psycopg.errors.ForeignKeyViolation):
            found = replace(found, cause="an archived row references a row its foreign key's table lacks",
                            remedy="restore the referenced rows first (the referenced table's days), or restore into a "
                                   "new table (into='new'), which has no foreign keys")
        if isinstance(exc, psycopg.errors.UndefinedColumn):  # the target lacks an archived column
            every_day = False  # one the day's manifest names: a column dropped since is that day's alone
            above = _created_under(conn, manifest, to_create)
            where = f" to {above} (the day's partition, created under it, takes its columns)" if above else ""
            found = replace(found, cause=found.cause + _column_lookalike(conn, manifest, relation),
                            remedy="the target must have every column the archive has (the manifest's "
                            f"columns): add the one named{where}, or restore into a new table (into='new')")
        raising = [] if moved else _raising_triggers(conn, exc, relation)
        hooks = [hook for hook, _ in raising]
        if hooks and not any(sees_rows for _, sees_rows in raising):
            every_day = True  # statement triggers that see no row refuse every day's load alike: the target's
        if hooks:  # a trigger of the target refused the rows (RAISE EXCEPTION, or an error of its own)
            found = replace(found, cause=f"{relation}'s {', '.join(hooks)} on INSERT refused the rows",
                            remedy="restore into a new table (into='new'), or disable "
                                   f"{'it' if len(hooks) == 1 else 'them'} for the restore (ALTER TABLE ... DISABLE "
                                   "TRIGGER) and restore again")
        remedy = with_roles(remedy_for(found.remedy, "restoring"), acting_role(conn), conn.info.user) \
            .replace("<database>", sql_name(conn.info.dbname, qualified=False))
        # a target whose schema is missing refuses every day alike: the target's, not the day's
        kind = TargetError if isinstance(exc, psycopg.errors.InvalidSchemaName) and into != "original" and not gone \
            else RestoreError
        raise kind(f"restoring {table} for {day} failed: {found.cause} ({type(exc).__name__}: {exc}); nothing "
                   "was restored", table=table, day=day, retryable=found.retryable,
                   remedy=remedy, cause=found.cause, every_day=every_day) from exc
    except BaseException as exc:  # cancelled: after the commit (releasing the day's lock), the day is restored
        if finished and table and day:
            note_cancelled(exc, table, day, "finishing")
            if relation is not None and getattr(exc, "restored_into", None) is None:
                with contextlib.suppress(AttributeError, TypeError):  # where the day went, as a result names it
                    exc.restored_into = str(relation)  # type: ignore[attr-defined]
        raise


def _policy_refused_row(exc: psycopg.Error) -> bool:
    """Whether a row-level security refusal is a policy's WITH CHECK refusing an archived row as the load inserted
    it ("new row violates row-level security policy"), not the check's refusal to read rows a policy would hide
    ("query would be affected by row-level security policy": row_security is off there): told by where it was
    raised, the message's words being the server's lc_messages."""
    return bool(getattr(exc, "while_loading", False)) and "query would be affected" not in str(exc)


# The target's row-level security policies for INSERT (or ALL) that apply to the restoring role (PUBLIC's, 0, or a
# role it is a member of): those whose WITH CHECK an inserted row must pass
_INSERT_POLICIES = """
SELECT pg_catalog.quote_ident(p.polname) || CASE WHEN p.polpermissive THEN '' ELSE ' (restrictive)' END
FROM pg_catalog.pg_policy p
WHERE p.polrelid = pg_catalog.to_regclass(%s) AND p.polcmd IN ('a', '*')
  AND EXISTS (SELECT FROM pg_catalog.unnest(p.polroles) AS r(oid)
              WHERE CASE WHEN r.oid = 0 THEN true ELSE pg_catalog.pg_has_role(r.oid, 'MEMBER') END)
ORDER BY 1
"""


def _insert_policies_refused(conn: psycopg.Connection, relation: Relation | None) -> str:
    """The cause of an archived row refused by the target's row-level security as it was inserted, naming the
    policies for INSERT that apply to the role (where the catalog can be read)."""
    found: list[str] = []
    if relation is not None:
        with contextlib.suppress(psycopg.Error):
            found = [name for (name,) in conn.execute(_INSERT_POLICIES, (relation.identifier.as_string(conn),))]
    one = len(found) == 1
    which = (f"of its polic{'y' if one else 'ies'} for INSERT {', '.join(found)}, which appl{'ies' if one else 'y'} "
             "to this role," if found else "of its policies for INSERT (or ALL) that apply to this role")
    return (f"{relation}'s row-level security refused an archived row as it was inserted: the WITH CHECK {which} "
            "does not pass every archived row")


# A partition's parent and bound, by the schema and name an error's fields give
_PARTITION_OF = """
SELECT i.inhparent::pg_catalog.regclass::text, pg_catalog.pg_get_expr(c.relpartbound, c.oid)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid
WHERE n.nspname = %s AND c.relname = %s AND c.relispartition AND c.relkind <> 'p'
"""  # (a partitioned partition: "no partition of relation ...", it lacks one of its own; no bound excluded the day)


def _outside_partitions(conn: psycopg.Connection, exc: psycopg.errors.CheckViolation, found, day: str | None):
    """``found`` (a classified error) saying where a row of the day has no place: a partition the load wrote into
    directly (the target named as a partition, its bound another month's) violates its own partition constraint,
    and can take no partition of its own, so the remedy names its parent; else the target (a partitioned table)
    has no partition for the day, and the remedy is to create one."""
    partition = None
    if exc.diag.constraint_name is None and exc.diag.schema_name and exc.diag.table_name:
        with contextlib.suppress(psycopg.Error):
            partition = conn.execute(_PARTITION_OF, (exc.diag.schema_name, exc.diag.table_name)).fetchone()
    if partition is None:
        return replace(found, cause=f"the target has no partition for the rows of {day} ({exc.diag.message_primary})",
                       remedy="create the target's partition for the day (CREATE TABLE ... PARTITION OF ... FOR VALUES "
                              "FROM ... TO ...) or a DEFAULT partition, or restore into a new table (into='new')")
    name = Relation(exc.diag.schema_name, exc.diag.table_name)
    parent, bound = partition
    return replace(found, cause=f"{name} is a partition of {parent} whose bound ({bound}) does not include the rows "
                                f"of {day} ({exc.diag.message_primary})", retryable=False,
                   remedy=f"restore into {parent} (each row goes into its partition; create the day's partition of it "
                          f"first if it has none), or into the partition of {parent} whose bound holds {day}, or "
                          "into a new table (into='new')")


# The BEFORE ... FOR EACH ROW INSERT triggers of the target's partition tree (of ``p`` and its ancestors where
# given: the partition a row was routed to), each named once, on the highest table that has it (a parent's trigger
# is cloned to every partition)
_ROW_BEFORE_INSERT = """
SELECT DISTINCT ON (t.tgname) pg_catalog.quote_ident(t.tgname), t.tgrelid::pg_catalog.regclass::text
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_partition_tree(pg_catalog.to_regclass(%(t)s)) r ON r.relid = t.tgrelid
WHERE (%(p)s::text IS NULL OR t.tgrelid IN (
         SELECT relid FROM pg_catalog.pg_partition_ancestors(pg_catalog.to_regclass(%(p)s))))
  AND NOT t.tgisinternal AND t.tgenabled <> 'D' AND t.tgtype::int & 7 = 7  -- (ROW | BEFORE | INSERT)
ORDER BY t.tgname, r.level
"""


def _moved_by_trigger(conn: psycopg.Connection, exc: BaseException, relation: Relation | None,
                      day: str | None) -> tuple[str, str] | None:
    """(cause, remedy) where a row the load routed into the day's partition was then moved out of it by a BEFORE
    INSERT row trigger: PostgreSQL refuses that as "moving row to another partition during a BEFORE FOR EACH ROW
    trigger" (FeatureNotSupported: the trigger's parent's clone) or as the partition's own constraint violated (the
    trigger on the partition). Told as the archiver's SQL, or as a bound excluding the day, the trigger went
    unnamed. None where it was not that (a partition named as the target violates its constraint by its bound)."""
    feature = isinstance(exc, psycopg.errors.FeatureNotSupported)
    bound = isinstance(exc, psycopg.errors.CheckViolation) and exc.diag.constraint_name is None
    if relation is None or not (feature or bound):
        return None
    target = relation.identifier.as_string(conn)
    partition = sql.Identifier(exc.diag.schema_name, exc.diag.table_name).as_string(conn) if bound and \
        exc.diag.schema_name and exc.diag.table_name else None
    try:
        with conn.transaction():
            if bound and not (partition and conn.execute(  # a partition the load routed to: strictly below the target
                    "SELECT pg_catalog.to_regclass(%s) IN (SELECT relid FROM pg_catalog.pg_partition_tree("
                    "pg_catalog.to_regclass(%s)) WHERE level > 0)", (partition, target)).fetchone()[0]):
                return None
            found = conn.execute(_ROW_BEFORE_INSERT, {"t": target, "p": partition}).fetchall()
    except psycopg.Error:
        return None
    detail = exc.diag.message_detail or ""  # (names the trigger, quoted, in any lc_messages)
    named_ = [(n, on) for n, on in found if re.search(rf"\W{re.escape(n.strip(chr(34)))}\W", detail)]
    found = named_ or found
    if not found:
        return None
    triggers = ", ".join(f"trigger {name} of {on}" for name, on in found)
    one = len(found) == 1
    return (f"the BEFORE INSERT row {triggers} changed an archived row of {day} after it was routed to its partition "
            f"of {relation}, moving it out of that partition, which PostgreSQL refuses ({exc.diag.message_primary})",
            f"disable {'it' if one else 'them'} for the restore (ALTER TABLE ... DISABLE TRIGGER), restore again and "
            "enable it after, or restore into a new table (into='new')")


def _target_locked(conn: psycopg.Connection, exc: psycopg.Error, found, relation: Relation):
    """``found`` (a lock_timeout, classified as a source's) told as the target's: "the table" of a message about
    the archived table read as that table, where no lock was held, and the table waited for went unnamed. A wait
    for another session's row (:func:`_row_locked`) is told as such."""
    if (row := row_waited(conn, exc, relation.schema)) is not None:
        return _row_locked(conn, found, row)
    regclass = sql.Literal(relation.identifier.as_string(conn)).as_string(conn)
    return replace(found, cause=f"lock_timeout: another session holds a conflicting lock on the target {relation} "
                                "(or a partition of it, or a table its triggers write): ALTER TABLE, TRUNCATE, VACUUM "
                                "FULL, REINDEX, LOCK ...",
                   remedy=f"{found.remedy.split(';')[0]}; if it persists, find the session holding it (SELECT pid, "
                          f"mode FROM pg_catalog.pg_locks WHERE relation = {regclass}::pg_catalog.regclass, or "
                          "pg_blocking_pids() of the restoring session) and wait for it to end, or raise "
                          "source.lock_timeout_ms")


def _row_locked(conn: psycopg.Connection, found, row: RowWait):
    """``found`` (a lock_timeout) where the load waited for a row another session's open transaction holds, as
    PostgreSQL's CONTEXT names it (:func:`source.row_waited`): a row of the same key that transaction wrote (the
    wait is in a unique index of the target), or a row it locked (FOR UPDATE, an UPDATE or DELETE: one the
    archived rows' foreign key references). Told as a table's lock, the user looked in pg_locks for a DDL that
    did not exist, and the table of a referenced row went unnamed. The restore's own words for what
    :func:`errors.wrap` tells of every other step's row wait."""
    blocking = f"pg_blocking_pids({conn.info.backend_pid}) while the restore waits names its session"
    if row.index:
        return replace(found, cause=f"lock_timeout: the restore waited for a row of the same key as an archived row, "
                                    f"which another session's open transaction wrote and has not yet committed or "
                                    f"rolled back ({row})",
                       remedy=f"{found.remedy.split(';')[0]}; if it persists, wait for that transaction to end "
                              f"({blocking}) and restore again; if it committed a row of that key, restore with "
                              "on_conflict='skip', or move its row aside first")
    return replace(found, cause=f"lock_timeout: the restore waited for a row of {row.relation} (tuple ({row.tid})) "
                                "that another session's open transaction holds locked (SELECT ... FOR UPDATE, an "
                                "UPDATE or DELETE of it): a row the archived rows' foreign key references, or one a "
                                "trigger writes",
                   remedy=f"{found.remedy.split(';')[0]}; if it persists, wait for that transaction to end "
                          f"({blocking}) and restore again")


@contextlib.contextmanager
def _committed(conn: psycopg.Connection, finished: list[bool], committing: list[bool]) -> Iterator[None]:
    """``conn.transaction()``, noting in ``committing`` that its COMMIT is sent (its answer lost, it may have
    happened) and in ``finished`` that it committed. READ COMMITTED whatever the caller's connection runs its
    transactions as (a REPEATABLE READ or SERIALIZABLE default, the role's or the session's, or psycopg's
    ``isolation_level``): the checks that the day is not there already and that its rows are the archive's must see
    what other sessions committed up to each of them, not a snapshot taken before the load waited for its lock
    (an application's row of the day committed meanwhile went unseen, and the day committed beside it)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")  # (no statement has run in it yet)
        yield
        committing.append(True)
    finished.append(True)


def _commit_unanswered(exc: Exception, manifest: dict, relation: Relation | None, *,
                       tellable: bool) -> CommitUnansweredError:
    """The day's COMMIT got no answer (the connection lost while it was awaited: a failover, a dropped network, a
    synchronous standby that never answered): it may have happened, so "nothing was restored" would be wrong and a
    blind retry into a target that cannot tell the day's rows apart (``tellable`` False: no day column, no restore
    mark) would load them a second time. As a removal's COMMIT without an answer is said (lifecycle._remove)."""
    table, day = manifest.get("table"), manifest.get("day")
    cause = (f"the database connection was lost while the day's COMMIT was awaited ({type(exc).__name__}: "
             f"{str(exc).splitlines()[0]})")
    if tellable:
        remedy = (f"run the restore of the day again: it finds the day restored in {relation} if the COMMIT happened "
                  "(by its restore mark, or its rows there having the archive's fingerprint), and restores it if not")
    else:
        remedy = (f"look at {relation} first: it has no day column (nor a restore mark), so a restore of the day run "
                  f"again cannot tell whether this one committed and would load its {int(manifest.get('rows') or 0):,} "
                  f"archived rows a second time; restore the day again only if they are not there (or restore into "
                  f"a new table, into='new', which keeps track of its days)")
    return CommitUnansweredError(f"restoring {table} for {day} into {relation}: {cause}; the COMMIT may have "
                                 f"happened (the day's rows may be in {relation})", table=table, day=day,
                                 retryable=tellable, cause=cause, remedy=remedy, every_day=False)


def _column_lookalike(conn: psycopg.Connection, manifest: dict, relation: Relation | None) -> str:
    """" (the archive's column ..., which the target has spelled otherwise ...)" where the target lacks an archived
    column but has one a reader takes for it (case, Unicode NFC against NFD): "add the one named" was advice the
    user could not follow, both names looking the same."""
    try:
        oid = conn.execute("SELECT pg_catalog.to_regclass(%s)::pg_catalog.oid",
                           (relation.identifier.as_string(conn),)).fetchone()[0] if relation is not None else None
        have = list(column_names(conn, oid).values()) if oid is not None else []
    except psycopg.Error:
        return ""  # (a hint only)
    for name in manifest_columns(manifest):
        if name not in have:
            hint = lookalike_hint(name, have, "column", str(relation),
                                  advice=f"rename it to the archive's {ascii(name)} (ALTER TABLE ... RENAME COLUMN)")
            if hint:
                return f" (the archive's column {ascii(name)}{hint})"
    return ""


@speaks_utf8()
def restore_day(conn: psycopg.Connection, store: S3Store, spec: TableSpec, day: dt.date, **options) -> RestoreResult:
    """Restore ``day`` of the configured table ``spec`` (see :func:`restore_archive` for ``options``)."""
    manifest = find_manifest(store, spec, day, identity=functools.partial(source_identity, conn))
    if manifest is None:
        raise RestoreError(f"{spec.name} has no archive for {day} in {store.uri(store.prefix)}", table=spec.name,
                           day=day.isoformat(), remedy="check the day and the bucket and prefix (archive-pipeline list "
                                                       "shows the archived days); archive the day first")
    return _restore_current(conn, store, spec, day, manifest, **options)


def _restore_grant(conn: psycopg.Connection, exc: BaseException, relation: Relation | None) -> str:
    """The statement a refused restore asks for, names filled in: TEMPORARY on the database (the staging table of
    on_conflict="skip", a generated column's), CREATE on the schema (a new table, a re-created partition), or
    INSERT and SELECT on the target."""
    message = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc)
    role = sql_name(acting_role(conn), qualified=False)  # (whose privileges were checked: a SET ROLE's)
    lacking = _lacking_privilege(conn, message, relation)
    if lacking:
        return f"{lacking} TO {role}"
    temp = re.fullmatch(r"permission denied to create temporary tables in database \"?(.+?)\"?", message)
    if temp:
        return (f"GRANT TEMPORARY ON DATABASE {sql_name(temp.group(1), qualified=False)} TO {role} (the restore stages "
                "the day in a temporary table), or restore with on_conflict='fail' into a table without generated "
                "columns")
    sequence = re.fullmatch(r"permission denied for sequence (.+)", message)
    if sequence:  # a serial or identity column's sequence, which a row without that column takes a value from
        name = sql_name(f"{relation.schema}.{sequence.group(1)}") if relation is not None else sequence.group(1)
        return f"GRANT USAGE ON SEQUENCE {name} TO {role} (a column of the target takes its default from it)"
    schema = re.fullmatch(r"permission denied for schema (.+)", message)
    if schema:
        return (f"GRANT CREATE ON SCHEMA {sql_name(schema.group(1), qualified=False)} TO {role} (and USAGE, if it "
                "lacks that too), to create a new table or a partition there")
    target = str(relation) if relation is not None else "<target>"
    return f"GRANT INSERT, SELECT ON {target} TO {role} (the restoring role needs both on the target)"


# What a restore may be refused, as the catalog tells it in any lc_messages: (the name the refusal's message holds,
# the grant) of each sequence a target's column takes its default from that the role may not use, of the target's
# schema where the role may not create (a new table, a re-created partition), and of the database where the role
# may not create temporary tables (the staging table)
_LACKING = f"""
SELECT 0, NULL::text, 'GRANT INSERT, SELECT ON ' || %(target)s  -- the target's own first: no name to look for
WHERE pg_catalog.to_regclass(%(target)s) IS NOT NULL
  AND NOT (pg_catalog.has_table_privilege(pg_catalog.to_regclass(%(target)s), 'INSERT')
           AND pg_catalog.has_table_privilege(pg_catalog.to_regclass(%(target)s), 'SELECT'))
UNION ALL
SELECT 1, s.relname::text, 'GRANT USAGE ON SEQUENCE ' || pg_catalog.quote_ident(n.nspname) || '.'
       || pg_catalog.quote_ident(s.relname)
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
CROSS JOIN LATERAL ({_DEFAULT_DRAWS_FROM}) x
JOIN pg_catalog.pg_class s ON s.oid = x.seq AND s.relkind = 'S'
JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
WHERE a.attrelid = pg_catalog.to_regclass(%(target)s) AND a.attnum > 0 AND NOT a.attisdropped
  -- (the CASE: the planner may test rows of other kinds first)
  AND NOT CASE WHEN s.relkind = 'S' THEN pg_catalog.has_sequence_privilege(s.oid, 'USAGE') ELSE true END
UNION ALL
SELECT 2, n.nspname::text, 'GRANT CREATE ON SCHEMA ' || pg_catalog.quote_ident(n.nspname)
FROM pg_catalog.pg_namespace n
WHERE n.nspname = %(schema)s AND NOT pg_catalog.has_schema_privilege(n.oid, 'CREATE')
UNION ALL
SELECT 3, pg_catalog.current_database()::text, 'GRANT TEMPORARY ON DATABASE '
       || pg_catalog.quote_ident(pg_catalog.current_database())
WHERE NOT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'TEMPORARY')
ORDER BY 1
"""


def _lacking_privilege(conn: psycopg.Connection, message: str, relation: Relation | None) -> str | None:
    """The grant a refused restore needs, found in the catalog (which privilege the role lacks on an object the
    refusal's message names), not in the message's words: a server speaking German says "keine Berechtigung für
    Schema s". None where the catalog shows none of those lacking (then the target's own INSERT or SELECT)."""
    if relation is None:
        return None
    try:
        found = conn.execute(_LACKING, {"target": relation.identifier.as_string(conn),
                                        "schema": relation.schema}).fetchall()
    except psycopg.Error:
        return None
    named = []
    for rank, name, grant in found:  # the name as a word of the message: "... für Sequenz global_seq", "... schema s"
        if name is None:  # the target's INSERT or SELECT lacking: what any refusal of it needs first
            return grant
        if re.search(rf'(?<![\w"]){re.escape(name)}(?![\w"])|"{re.escape(name)}"', message):
            named.append((rank, grant))
    if len(named) > 1:  # one name for several objects (a schema named as its database): the message's kind decides
        kind = next((rank for rank, pattern in _REFUSED_KINDS if re.search(pattern, message)), None)
        role = sql_name(acting_role(conn), qualified=False)  # (the caller adds "TO <role>" after the last)
        return next((grant for rank, grant in named if rank == kind), f" TO {role}, or ".join(g for _, g in named))
    return named[0][1] if named else None


# The kind of object an English refusal names (the _LACKING rank), where one name is several objects' (another
# language's refusal then gets each grant the name may mean)
_REFUSED_KINDS = ((3, r"to create temporary tables in database"), (2, r"permission denied for schema"),
                  (1, r"permission denied for sequence"))


def _raising_hooks(conn: psycopg.Connection, exc: BaseException, relation: Relation | None) -> list[str]:
    """The target's INSERT triggers, where ``exc`` was raised inside a function (its context names one): the
    likely cause of a restore refused by something other than the archived values."""
    return [hook for hook, _ in _raising_triggers(conn, exc, relation)]


def _raising_triggers(conn: psycopg.Connection, exc: BaseException, relation: Relation | None
                      ) -> list[tuple[str, bool]]:
    """:func:`_raising_hooks`, each with whether it sees the rows (a row trigger, or a statement trigger with a
    transition table): one that does not refuses every day's load alike, whatever the rows."""
    context = getattr(getattr(exc, "diag", None), "context", None) or ""
    functions = [_function_name(m) for m in _CONTEXT_FUNCTION.finditer(context)]
    if relation is None or not isinstance(exc, psycopg.Error) or not functions or classify(exc).retryable:
        return []  # (a lock or statement timeout, a deadlock met inside a trigger: not the trigger's refusal)
    try:  # only the triggers (of the target or its partitions) that run one of those functions, by schema and name
        found = conn.execute(_RAISING_TRIGGERS, {"t": relation.identifier.as_string(conn),
                                                 "schemas": [s for s, _ in functions],
                                                 "names": [n for _, n in functions]}).fetchall()
    except psycopg.Error:
        return []
    return [(f"trigger {name}", sees_rows) for name, sees_rows in found]


# A function as PostgreSQL's error context names it ("PL/pgSQL function s_rules.valid(text) line 3 at RAISE",
# "function \"guard rows\"()"): qualified where it is not visible on the path, each part quoted as needed.
_IDENT = r'(?:"(?:[^"]|"")+"|[^\s."(]+)'
_CONTEXT_FUNCTION = re.compile(rf"function ({_IDENT})(?:\.({_IDENT}))?\(")


def _function_name(match: re.Match) -> tuple[str | None, str]:
    """(schema or None, name) of a context's function, unquoted."""
    def unquoted(part: str) -> str:
        return part[1:-1].replace('""', '"') if part.startswith('"') else part

    first, second = match.group(1), match.group(2)
    return (unquoted(first), unquoted(second)) if second else (None, unquoted(first))


_RAISING_TRIGGERS = """
SELECT pg_catalog.quote_ident(t.tgname), pg_catalog.bool_or((t.tgtype & 1) = 1 OR t.tgnewtable IS NOT NULL)
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN unnest(%(schemas)s::text[], %(names)s::text[]) AS f(s, r)  -- (ROWS FROM sugar: not a function to qualify)
  ON p.proname = f.r AND (n.nspname = f.s OR f.s IS NULL)  -- (a function compiled under a path of its own: no schema)
WHERE (t.tgrelid = pg_catalog.to_regclass(%(t)s)
       OR t.tgrelid IN (SELECT relid FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(%(t)s))))
  AND NOT t.tgisinternal AND t.tgenabled <> 'D'
GROUP BY 1 ORDER BY 1
"""


def _require_original(spec: TableSpec, day: Period | dt.date, manifest: dict) -> None:
    """Refuse a manifest whose recorded relations are not the configured table's own: the table itself, its
    day table (naming mode), and a partition of the table. A manifest is sealed, not signed: one edited to
    name another table of the database had the day's rows inserted there, "proven" and committed."""
    period = spec.period(day)
    own = {Relation.configured(spec.name)}
    if spec.partitioning.mode == "naming":
        own.add(Relation.configured(spec.day_relation(period)))
    named = manifest.get("source_relation") or manifest["table"]
    partition = (table_definition(manifest) or {}).get("partition") or {}
    dropped = _removed_partition(manifest)
    strays = [name for name in (named, partition.get("parent"), dropped.get("parent"))
              if name and Relation.configured(name) not in own]
    if strays:
        raise RestoreError(f"restoring {spec.name} for {period} into its original table: its manifest names "
                           f"{', '.join(map(repr, strays))}, which is not {spec.name} or its day's own table; nothing "
                           "was restored", table=spec.name, day=period.isoformat(), retryable=False,
                           remedy="restore into a table you name (into='new' or 'existing'), or archive the day again "
                                  "(overwrite) if the source holds it")


def _restore_configured(conn: psycopg.Connection, store: S3Store, spec: TableSpec, day: Period | dt.date,
                        manifest: dict, **options) -> RestoreResult:
    """:func:`restore_archive` of a manifest read for the configured table ``spec``: into the original table only
    once :func:`_require_original` finds it names that table's own relations, whichever manifest it is (the one
    read first, or the one that replaced it while the first was restored: the fallback loaded that one into
    whatever table it named)."""
    if options.get("into") == "original":
        _require_original(spec, day, manifest)
    return restore_archive(conn, store, manifest, **options)


def _restore_current(conn: psycopg.Connection, store: S3Store, spec: TableSpec, day: Period | dt.date,
                     manifest: dict, **options) -> RestoreResult:
    """Restore ``manifest``'s archive; if its object is gone because an overwrite replaced the archive
    meanwhile (the manifest and object were read before the day's lock), the current archive."""
    try:
        return _restore_configured(conn, store, spec, day, manifest, **options)
    except ArchiveMissingError:
        current = find_manifest(store, spec, day, identity=functools.partial(source_identity, conn))
        if current is None or current.get("manifest_sha256") == manifest.get("manifest_sha256"):
            raise
        log.info("%s %s: its archive was replaced while it was being restored; restoring the new one", spec.name, day)
        return _restore_configured(conn, store, spec, day, current, **options)
    except BaseException as exc:  # cancelled: the day's transaction is rolled back on the way out
        note_cancelled(exc, spec.name, spec.period(day).isoformat(), "restoring")
        raise


@speaks_utf8()
def restore_days(conn: psycopg.Connection, store: S3Store, spec: TableSpec, first: Period | dt.date,
                 last: Period | dt.date, *,
                 into: Into = "new", target: str | None = None, **options) -> RangeRestore:
    """Restore every archived day from ``first`` to ``last`` (inclusive), each in its own transaction,
    in date order. With ``into="new"`` the first day creates ``target`` and later days load into it.
    Stops at the first failure (earlier days stay restored; the error names the day)."""
    results, missing = [], []
    for done in iter_restore_days(conn, store, spec, first, last, into=into, target=target, **options):
        (results if isinstance(done, RestoreResult) else missing).append(done)
    return RangeRestore(tuple(results), tuple(missing))


_LISTED_DAYS = 1000  # days told absent by one listing: years never archived cost a few requests, not 3 a day


def _periods(first: Period, last: Period) -> Iterator[Period]:
    """``first`` to ``last``, inclusive, in order."""
    while first <= last:
        yield first
        first = first.next()


def iter_restore_days(conn: psycopg.Connection | Callable[[], psycopg.Connection], store: S3Store, spec: TableSpec,
                      first: Period | dt.date, last: Period | dt.date, *, into: Into = "new",
                      target: str | None = None, **options) -> Iterator[RestoreResult | Period]:
    """:func:`restore_days` one day at a time: each day's result as it commits, or the day itself when
    it has no archive, so a caller can say which days were restored before one failed. ``conn`` may be a
    callable, asked for the connection before each day (one that replaces a session the server ended while it
    sat idle between days)."""
    restored = False
    day, last = spec.period(first), spec.period(last)
    listed_to, unarchived, listed = None, set(), None
    while day <= last:
        if listed_to is None or day > listed_to:  # the next stretch's days without an archive, told by one listing
            stretch = list(itertools.islice(_periods(day, last), _LISTED_DAYS))
            listed_to, (unarchived, listed) = stretch[-1], listed_absent(store, spec, stretch)
        manifest = None if day in unarchived else find_manifest(
            store, spec, day, listed, identity=lambda: source_identity(conn() if callable(conn) else conn))
        if manifest is None:
            yield day
        else:
            mode = "existing" if into == "new" and restored else into
            try:
                done = _restore_current(conn() if callable(conn) else conn, store, spec, day, manifest, into=mode,
                                        target=target, **options)
            except BaseException as exc:  # (cancelled before the day's own steps: still this day's)
                note_cancelled(exc, spec.name, day.isoformat(), "restoring")
                raise
            yield done
            restored = True
        day = day.next()
