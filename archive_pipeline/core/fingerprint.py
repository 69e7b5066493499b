"""A content fingerprint of a set of rows, computed by PostgreSQL: what proves an archive equals its source.

The fingerprint is the row count plus the sum, over rows, of a 64-bit hash of each row. A sum is
order-independent (the archive's row order does not matter) and, unlike XOR, counts duplicate rows.

``row-hash-sum-v6`` (new archives) is v5 except for integers (of every width alike) and uuids (and
domains over them, not arrays of them): each is hashed from its value by PostgreSQL's own hash of it, seeded with
the chain's link as every column is, instead of printing it and hashing the text. Their text forms are exact and
canonical (equal values print alike, unequal ones differently), so v6 tells the same rows apart as v5, at a
fraction of the cost of printing them (the benchmark day's fingerprint: 7-13% less, bench/RESULTS.md). ``hashint8extended`` folds the high half of an
int8 into the low half before hashing, which alone would make pairs of integers collide by construction: the high
half is also mixed into the seed (see :func:`_typed_link`). A column whose type is another than the archived
one's (retyped since, a restore's target, a CSV archive's text field) is hashed as the archived type
(:func:`as_archived`). Other types keep their text (a boolean's too: by value, true would hash as 1): a float's, numeric's,
timestamp's or interval's own hash cannot tell values apart that print differently (see below), and jsonb's hashes
its numbers without their sign.

``row-hash-sum-v5`` (archives written before v6) is v4 with a value of a type outside pg_catalog (a composite, an enum,
an extension's type, or an array of one) hashed as its output function prints it (``concat()``), not
through ``::text``: that type's owner may CREATE CAST it to text, and a lossy cast hid every change from
the proof. For every other type v5 is v4 value for value.

``row-hash-sum-v4`` (archives written before v5) is v3 over each text form's UTF-8 bytes, whatever the server's
encoding, so a day archived from a LATIN1 database proves in a UTF-8 one and the other way round. In a
UTF8 (or SQL_ASCII) database it is v3 itself, value for value; in a single-byte encoding each text is
converted to UTF-8 and hashed as those bytes (see :func:`_utf8_bytes`). A multibyte encoding other than
UTF-8 (EUC_*, MULE_INTERNAL) cannot hold arbitrary UTF-8 bytes in a text: there v4 hashes the server's
bytes, like v3, and its archives prove only in a database of the same encoding.

``row-hash-sum-v3`` (archives written before v4, still computed to prove them): a row's hash is a
chain over its columns in column order, each link one ``hashtextextended`` of the column's text form
seeded with the previous link (its whole 64 bits are mixed in), so no column's change can cancel
another's and swapped values change it.
A column's text form is its ``::text`` under :data:`CANONICAL_SETTINGS` (text itself under the
"C" collation, so a nondeterministic collation cannot fold case or accents; a bpchar its output
with trailing blanks, which ``::text`` strips; an array of xml its elements' stored texts, marked, where
xml's output rewrites one, see :func:`_xml_array_text`); a NULL is the empty
text with the lowest bit of the seed flipped, so it differs from an empty string. Nothing is
converted to text that the value does not print as, which makes it about a quarter cheaper than v2.

``row-hash-sum-v2`` (archives written before v3, still computed to prove and compare them): one
``hashtextextended`` over the columns' *pieces* joined by commas, a piece being an integer or
boolean as itself, a 64-bit hash of a text or uuid's bytes or of any other value's text output,
and ``N`` for NULL.

Types' own hash functions are not used by any of them, where they are weaker than their text:
``hashint8extended`` (and so timestamps and time) folds the high 32 bits into the low ones,
``hash_numeric_extended`` ignores the sign, and equality-based hashes cannot tell 1.0 from 1.00,
0 from -0, '1 day' from '24 hours', array bounds, or enum labels across databases. Text output
depends on session settings, so the fingerprint is always computed under
:data:`CANONICAL_SETTINGS`; the same query over rows restored into a table of the same column
types gives the same fingerprint exactly when the rows are the same multiset, up to the chance of
a 64-bit collision. A manifest records the algorithm with the value, and comparisons compute the
one recorded.

Measured on the 1,000,000-row benchmark day: see bench/run.py (``fprint`` and ``+fp`` columns).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from archive_pipeline.core.session_settings import CATALOG_FIRST, apply_settings
from archive_pipeline.core.source import rewritten_xml_inside, xml_array_text

ALGORITHM = "row-hash-sum-v6"
V5 = "row-hash-sum-v5"
V4 = "row-hash-sum-v4"
V3 = "row-hash-sum-v3"
V2 = "row-hash-sum-v2"
ALGORITHMS = (ALGORITHM, V5, V4, V3, V2)  # every algorithm this version computes: an archive recorded with one can be proven
# Algorithms earlier versions recorded and this one no longer computes (v1, an XOR of per-column hashes: ba1e6db until
# c2d0a97). Any other name outside ALGORITHMS is a newer version's: the remedy differs (archive again, or upgrade).
RETIRED = ("row-hash-sum-v1",)
CHAINED = (ALGORITHM, V5, V4, V3)  # the algorithms that hash each column in a chain (v2 joins pieces)
UTF8_HASHED = (ALGORITHM, V5, V4)  # the algorithms that hash every text as its UTF-8 bytes (see row_hash)
BY_OUTPUT = (ALGORITHM, V5)  # the algorithms that hash a user's type by its output function, never ::text
# Server encodings whose text is UTF-8 bytes already (SQL_ASCII: any bytes, and archived text must be UTF-8),
# and the multibyte ones other than UTF-8, whose text cannot hold arbitrary UTF-8 bytes (see row_hash).
_UTF8_ALREADY = frozenset({"UTF8", "SQL_ASCII"})
MULTIBYTE = frozenset({"EUC_JP", "EUC_CN", "EUC_KR", "EUC_TW", "EUC_JIS_2004", "MULE_INTERNAL"})

def encoding_mismatch(recorded: str | None, archived_in: str | None, here: str) -> str | None:
    """Why a fingerprint ``recorded`` in a database of encoding ``archived_in`` cannot be computed again
    in one of encoding ``here``, or None (it can, or the archive's encoding is not known): v4 hashes UTF-8
    bytes except in a multibyte encoding other than UTF-8, where it hashes that encoding's own bytes, as
    v3 and v2 always do outside UTF-8."""
    if not archived_in or archived_in == here:
        return None
    if algorithm_for(recorded) in UTF8_HASHED:
        if archived_in not in MULTIBYTE and here not in MULTIBYTE:
            return None
    elif archived_in in _UTF8_ALREADY and here in _UTF8_ALREADY:
        return None
    also = "" if archived_in in MULTIBYTE or archived_in == "UTF8" or here not in MULTIBYTE else " (or UTF8)"
    return (f"the day was archived from a database whose encoding is {archived_in}, and its fingerprint "
            f"({algorithm_for(recorded)}) hashes text of other encodings than UTF-8 as their own bytes where either "
            f"side is a multibyte one: computed in this {here} database it cannot match where a value has characters "
            f"beyond ASCII; prove or restore it in a database whose encoding is {archived_in}{also}")


# Output of every type is fixed by these, whatever the server's or role's defaults.
CANONICAL_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "xmloption": "content",  # input only: xml read back (deep verification's text copy) may be a fragment
    "array_nulls": "on",  # input only: an unquoted NULL in an array literal read back is a NULL element
    "row_security": "off",  # every row or an error: a fingerprint of the rows a policy lets through proves nothing
    # PostgreSQL's own hashtextextended, concat, # and casts, never a user's of the same name earlier on
    # the path; then the session's path, so reg* values print as in the session (see session_settings)
    "search_path": CATALOG_FIRST,
    "quote_all_identifiers": "off",  # reg* values and names print as the catalog spells them
    "jit": "off",  # (see source.SNAPSHOT_SETTINGS: the catalog walks around the proof paid for compiling)
}

# v2: each column becomes a short piece of text that differs exactly when the value prints differently:
# integers and booleans as themselves; text and uuid as a 64-bit hash of their bytes (a full hash,
# unlike hashint8extended, which folds the high half into the low one); every other type as a
# 64-bit hash of its text output (timestamps, numeric: their own hashes ignore the sign or fold).
_PIECES = {
    "int2": "{c}::pg_catalog.text",
    "int4": "{c}::pg_catalog.text",
    "int8": "{c}::pg_catalog.text",
    "bool": "{c}::pg_catalog.text",
    "text": 'pg_catalog.hashtextextended({c} COLLATE "C", 0::pg_catalog.int8)::pg_catalog.text',
    "varchar": 'pg_catalog.hashtextextended({c}::pg_catalog.text COLLATE "C", 0::pg_catalog.int8)::pg_catalog.text',
    "uuid": "pg_catalog.uuid_hash_extended({c}, 0::pg_catalog.int8)::pg_catalog.text",
}
_TEXT_PIECE = 'pg_catalog.hashtextextended({c}::pg_catalog.text COLLATE "C", 0::pg_catalog.int8)::pg_catalog.text'
_NULL_PIECE = "N"  # no piece is N: pieces are integers, true/false or hashes
_ARGS = 90  # concat_ws takes at most 100 arguments: join wide rows in groups
_CHAIN = 64  # v3 chains at most this many columns in one expression (the parser recurses on nesting)
_cursor_names = itertools.count()


class ColumnLike:  # documentation only: anything with these attributes works (source.Column does)
    name: str
    base_type: str
    is_array: bool
    is_enum: bool


@dataclass(frozen=True)
class Fingerprint:
    """Row count and the sum of the rows' 64-bit hashes (as exact decimal text)."""

    rows: int
    hash_sum: str
    algorithm: str = ALGORITHM

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.rows}:{self.hash_sum}"

    @classmethod
    def parse(cls, text: str) -> Fingerprint:
        algorithm, rows, hash_sum = text.rsplit(":", 2)
        return cls(rows=int(rows), hash_sum=hash_sum, algorithm=algorithm)


def recorded_algorithm(recorded: str | None) -> str | None:
    """The algorithm of a recorded fingerprint if this version can compute it (else None: an older
    manifest, or none at all)."""
    if not isinstance(recorded, str):  # (a damaged manifest's, read loosely for its removal mark)
        return None
    algorithm = recorded.rsplit(":", 2)[0]
    return algorithm if algorithm in ALGORITHMS and recorded and recorded.count(":") == 2 else None


def why_uncomputable(recorded: str | None) -> tuple[str, str] | None:
    """(why a recorded fingerprint cannot be computed by this version, what to do), or None where it can. The one
    place that tells an older version's archive from a newer one's, as their remedies are opposite: none recorded (a
    manifest of version 1) or a :data:`RETIRED` algorithm is an older archive_pipeline's (archive the day again, so
    the manifest records one this version computes; upgrading finds nothing newer), any other a newer one's
    (upgrade: archiving it again with this version would replace a newer version's archive)."""
    if recorded_algorithm(recorded) is not None:
        return None
    if not recorded:
        return ("the manifest records no fingerprint (version 1, written by an older archive_pipeline)",
                "archive the day again (overwrite)")
    algorithm = str(recorded).rsplit(":", 2)[0][:60]
    if algorithm in RETIRED:
        return (f"its fingerprint ({algorithm}) is of an older archive_pipeline's algorithm, which this version "
                "no longer computes", "archive the day again (overwrite) to record a fingerprint this version "
                "computes, or use the older archive_pipeline")
    return (f"its fingerprint ({algorithm}) is of an algorithm this version cannot compute (written by a newer "
            "archive_pipeline)", "upgrade archive_pipeline")


def algorithm_for(recorded: str | None) -> str:
    """What to compute to compare with ``recorded``: its own algorithm, or the current one."""
    return recorded_algorithm(recorded) or ALGORITHM


def _ident(column: ColumnLike, qualifier: str | None) -> sql.Identifier:
    return sql.Identifier(qualifier, column.name) if qualifier else sql.Identifier(column.name)


def column_text(column: ColumnLike, qualifier: str | None = None, algorithm: str = ALGORITHM) -> sql.Composable:
    """A column's text form as v3 hashes it (also what a probe evaluates to find a value PostgreSQL
    cannot convert). A column with a ``parse_as`` type is a text column holding that type's input
    (deep verification's text copy of a CSV archive): its value is read as that type first. An array of
    xml is its printed form, or its elements' stored texts where xml's output rewrites one (see
    :func:`_xml_array_text`). A :class:`Widened` column is the archived value it holds widened."""
    if isinstance(column, Widened):
        return column.text(qualifier)
    text = _printed_text(column, qualifier, algorithm)
    if column.base_type == "xml" and column.is_array:
        parse_as = _parse_as(column, algorithm)
        ident = _ident(column, qualifier)
        return _xml_array_text(ident if parse_as is None else sql.SQL("({}::{})").format(ident, parse_as), text,
                               getattr(column, "arrays", 1))
    return text


def _printed_text(column: ColumnLike, qualifier: str | None, algorithm: str) -> sql.Composable:
    """A column's text form as its type prints it (:func:`column_text` but for an xml array's declarations)."""
    ident = _ident(column, qualifier)
    parse_as = _parse_as(column, algorithm)
    if parse_as is not None:
        if column.base_type == "bpchar" and not column.is_array:  # a domain over char(n): blanks and all, below
            return sql.SQL("pg_catalog.concat({}::{})").format(ident, parse_as)
        if getattr(column, "user_type", False) and algorithm in BY_OUTPUT:  # by its output, as the source's side
            return sql.SQL("pg_catalog.concat(({}::{}))").format(ident, parse_as)
        if getattr(column, "user_text_cast", False) and not getattr(column, "user_type", False):  # (see below)
            return sql.SQL("pg_catalog.concat(({}::{}))").format(ident, parse_as)
        return sql.SQL("({}::{})::pg_catalog.text").format(ident, parse_as)
    if column.base_type == "text" and not column.is_array:
        return ident
    if column.base_type == "bpchar" and not column.is_array:
        # ::text strips trailing blanks: 'ab' and 'ab   ' of an unbounded bpchar would hash alike.
        # concat() prints the value with its output function, blanks and all.
        return sql.SQL("pg_catalog.concat({})").format(ident)
    if algorithm in BY_OUTPUT and ("." in column.base_type or getattr(column, "is_enum", False)):
        # A type of the user's (a composite, an enum, an extension's; or an array of one): its owner may
        # CREATE CAST from it to text, which ::text would run instead of the type's output (a lossy one hid
        # every change of a field from the proof). concat() prints with the output function, as COPY does.
        return sql.SQL("pg_catalog.concat({}{})").format(ident, _rewritten_xml_mark(column, ident))
    if getattr(column, "user_text_cast", False) and "." not in column.base_type:
        # A built-in type a user gave a cast to text (CREATE CAST (timestamptz AS text) WITH FUNCTION ...: a
        # compatibility cast to whole seconds hid every sub-second change): printed by its output function, which
        # is what ::text ran before there was such a cast (an I/O conversion), so every algorithm's value stays
        return sql.SQL("pg_catalog.concat({})").format(ident)
    return sql.SQL("{}::pg_catalog.text").format(ident)


def _rewritten_xml_mark(column: ColumnLike, ident: sql.Composable) -> sql.Composable:
    """For a composite column with an xml field (at any depth), a text added to its printed form where such a
    field's stored text is not what xml's output prints (an XML declaration it drops): the output alone would
    hash a changed declaration as unchanged. No archive holds such a value (every format refuses it), so an
    archived day and its source hash alike exactly when neither has one; nothing for any other column."""
    rewritten = rewritten_xml_inside(column, ident)
    if rewritten is None:
        return sql.SQL("")
    return sql.SQL(", CASE WHEN {} THEN ' (an xml field whose output rewrites its text)' END").format(rewritten)


def _xml_array_text(value: sql.Composable, printed: sql.Composable, arrays: int = 1) -> sql.Composable:
    """An array of xml (through domains, at any depth of arrays: ``value``) as every format archives it, its
    elements' stored texts (formats.common.xml_text), where xml's output rewrites one of them (an XML declaration
    it drops, or a leading line break): ``printed`` alone (its ``::text``, each element by its output) would
    hash a changed declaration as unchanged. That literal, with a mark no printed array ends with, replaces
    ``printed`` only there: an array whose elements print as stored keeps the text (and hash) it always had.
    Both literals are printed by array_out, never through a user's cast of an array to text. ``arrays``: how many
    arrays deep the xml is (an array of a domain over xml[]: 2, see source.xml_array_text)."""
    stored = xml_array_text(value, arrays)
    return sql.SQL('CASE WHEN {stored} COLLATE "C" <> pg_catalog.concat({v}) THEN pg_catalog.concat({stored}, '
                   "' (xml stored as written, not as its output prints it)') ELSE {printed} END").format(
        stored=stored, v=value, printed=printed)


def _parse_as(column: ColumnLike, algorithm: str) -> sql.Composable | None:
    """The type a text column is read as before it is hashed (deep verification's text copy of a CSV archive), by
    ``algorithm``: an integer or uuid field only by v6, which hashes it by value (older ones hash it as it is)."""
    if getattr(column, "parsed_by_v6_only", False) and algorithm != ALGORITHM:
        return None
    return getattr(column, "parse_as", None)


def column_is_null(column: ColumnLike, qualifier: str | None = None, algorithm: str = ALGORITHM) -> sql.Composable:
    """The column's NULL test as v3 applies it: ``IS NULL`` of the value, which for a composite is also
    true when every field is NULL (a ``parse_as`` column is tested as its type)."""
    ident = _ident(column, qualifier)
    parse_as = _parse_as(column, algorithm)
    if parse_as is not None:
        return sql.SQL("({}::{}) IS NULL").format(ident, parse_as)
    return sql.SQL("{} IS NULL").format(ident)


def column_piece(column: ColumnLike, qualifier: str | None = None) -> sql.Composable:
    """v2: one column's piece of the row's text: a comma-free string that differs exactly when the
    value prints differently, and ``N`` for NULL."""
    ident = _ident(column, qualifier)
    template = _TEXT_PIECE if column.is_array or column.is_enum else _PIECES.get(column.base_type, _TEXT_PIECE)
    return sql.SQL("coalesce({}, {})").format(sql.SQL(template).format(c=ident), sql.Literal(_NULL_PIECE))


def server_encoding(conn: psycopg.Connection) -> str:
    """The database's encoding, which v4 needs to hash every text as UTF-8 bytes."""
    return conn.info.parameter_status("server_encoding") or "UTF8"


def row_hash(columns: Sequence[ColumnLike], qualifier: str | None = None,
             algorithm: str = ALGORITHM, encoding: str = "UTF8") -> sql.Composable:
    """One 64-bit hash per row (see the module's docstring for each algorithm), for a database whose
    ``encoding`` is given (:func:`server_encoding`)."""
    if not columns:
        return sql.SQL("0::pg_catalog.int8")
    if algorithm == V2:
        return _v2_row_hash(columns, qualifier)
    if algorithm not in CHAINED:
        raise ValueError(f"unknown fingerprint algorithm {algorithm!r}")
    as_utf8 = algorithm in UTF8_HASHED and encoding not in _UTF8_ALREADY and encoding not in MULTIBYTE
    convert = encoding if as_utf8 else None
    chains = [_chain(columns[i:i + _CHAIN], qualifier, convert, algorithm) for i in range(0, len(columns), _CHAIN)]
    if len(chains) == 1:
        return chains[0]
    # (every function qualified and every argument typed exactly: a user's hashtextextended(text, integer)
    # anywhere on the path matched the literal 0 better than PostgreSQL's (text, int8), first on it or not)
    return sql.SQL("pg_catalog.hashtextextended(pg_catalog.concat_ws(',', {}), 0::pg_catalog.int8)").format(
        sql.SQL(", ").join(sql.SQL("pg_catalog.concat({})").format(chain) for chain in chains))


def _chain(columns: Sequence[ColumnLike], qualifier: str | None, convert: str | None = None,
           algorithm: str = ALGORITHM) -> sql.Composable:
    """v3, v4: each column's text hashed with the previous link as the seed; NULL flips the seed's low bit.
    ``convert`` (v4 in a database of that single-byte encoding): each text as its UTF-8 bytes first. A
    :class:`Widened` column's value that does not read back as archived flips the seed's highest bit."""
    link: sql.Composable = sql.SQL("0::pg_catalog.int8")
    for column in columns:
        if algorithm == ALGORITHM and (typed := _typed_link(column, qualifier, link)) is not None:
            link = typed
            continue
        text = column_text(column, qualifier, algorithm)
        if convert is not None:
            text = _utf8_bytes(text, convert)
        unread = sql.SQL("") if not isinstance(column, Widened) else sql.SQL(
            " OPERATOR(pg_catalog.#) ((NOT ({}))::pg_catalog.int4::pg_catalog.int8 OPERATOR(pg_catalog.<<) 63)"
        ).format(column.reads_back(qualifier))
        link = sql.SQL('pg_catalog.hashtextextended(coalesce({text}, \'\') COLLATE "C", '
                       '{link} OPERATOR(pg_catalog.#) ({is_null})::pg_catalog.int4::pg_catalog.int8{unread})'
                       ).format(text=text, link=link, is_null=column_is_null(column, qualifier, algorithm),
                                unread=unread)
    return link


# v6: the built-in types whose value is its text form exactly (equal values print alike and unequal ones
# differently; integers of every width alike), hashed from the value by PostgreSQL's own hash of it, which costs
# a fraction of printing it (see the module's docstring). (Not boolean: hashed by value, true would be 1.)
TYPED_HASHED = {"int2": "int8", "int4": "int8", "int8": "int8", "uuid": "uuid"}
# A text that is the canonical text form of a value of the kind: what reads back as that value and prints as itself.
_CANONICAL = {"int8": "^(0|-?[1-9][0-9]{0,18})$", "uuid": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
_ZERO = {"int8": "0::pg_catalog.int8", "uuid": "'00000000-0000-0000-0000-000000000000'::pg_catalog.uuid"}


def own_kind(column: ColumnLike) -> str:
    """How v6 hashes a column of this type: by value as an integer ("int8") or uuid ("uuid"), or its text."""
    if column.is_array or getattr(column, "user_type", False):
        return "text"
    return TYPED_HASHED.get(column.base_type, "text")


def _typed_link(column: ColumnLike, qualifier: str | None, link: sql.Composable) -> sql.Composable | None:
    """v6: the chain's link for a column hashed by value (see :data:`TYPED_HASHED`), or None for one hashed by its
    text. NULL flips the seed's lowest bit, as in v3. hashint8extended folds the high half of an int8 into the low
    one before hashing, so the high half (sign-extended) also goes into the seed, shifted past that bit: two
    integers that fold alike differ in it.

    A column is hashed as its ``hash_as`` kind where it has one (the archived column's, where its type changed
    since: an integer column that is numeric now), else as its own. A value of another type (or a ``parse_as``
    text: a CSV archive's field) is hashed as that kind's value where its text is the kind's canonical text form
    (numeric 5 as the integer 5), else with the seed's highest bit flipped, which no value of the kind sets: it
    differs from every value of the kind (numeric 5.5, boolean true, a field '+5' or an upper-case uuid)."""
    wanted = getattr(column, "hash_as", None) or own_kind(column)
    if wanted == "text":
        return None
    parse_as = getattr(column, "parse_as", None)
    if wanted == own_kind(column) and parse_as is None:
        value: sql.Composable = _ident(column, qualifier)
        seed = sql.SQL("{link} OPERATOR(pg_catalog.#) ({is_null})::pg_catalog.int4::pg_catalog.int8").format(
            link=link, is_null=column_is_null(column, qualifier))
    elif parse_as is not None:
        # A CSV archive's field, read as its type (the archiver wrote its output: it reads back; a field that does
        # not is the archive's fault, told by the proof) and flagged where it is not that value's canonical text
        # (a field '+5' or an upper-case uuid is not what the archiver wrote). One cast per use: no regular
        # expression per value, which cost deep verification 25 times the hash.
        field = _ident(column, qualifier)
        value = sql.SQL("({}::{})::pg_catalog.{}").format(field, parse_as, sql.SQL(wanted))
        seed = sql.SQL("{link} OPERATOR(pg_catalog.#) ({field} IS NULL)::pg_catalog.int4::pg_catalog.int8 "
                       "OPERATOR(pg_catalog.#) ((({field}::{kind})::pg_catalog.text IS DISTINCT FROM {field})"
                       "::pg_catalog.int4::pg_catalog.int8 OPERATOR(pg_catalog.<<) 63)").format(
            link=link, field=field, kind=parse_as)
    else:
        # a column of another type than the archived one (retyped since, a restore's target): any text at all
        text = column_text(column, qualifier)
        is_null = column_is_null(column, qualifier)  # (concat() prints a char(n) NULL as '')
        seed = sql.SQL("{link} OPERATOR(pg_catalog.#) ({is_null})::pg_catalog.int4::pg_catalog.int8").format(
            link=link, is_null=is_null)
        # under "C": a column of a nondeterministic collation allows no regular expression
        guard = sql.SQL('(({}) COLLATE "C") OPERATOR(pg_catalog.~) {}').format(text, sql.Literal(_CANONICAL[wanted]))
        if wanted == "int8":  # (19 digits may be beyond int8: read as numeric first, which any such text is)
            guard = sql.SQL("CASE WHEN {} THEN {}::pg_catalog.numeric BETWEEN -9223372036854775808 AND "
                            "9223372036854775807 END").format(guard, text)
        value = sql.SQL("CASE WHEN {} THEN {}::pg_catalog.{} END").format(guard, text, sql.SQL(wanted))
        seed = sql.SQL("{} OPERATOR(pg_catalog.#) (({} IS NULL AND NOT ({}))::pg_catalog.int4::pg_catalog.int8 "
                       "OPERATOR(pg_catalog.<<) 63)").format(seed, value, is_null)
    if wanted == "int8":
        whole = sql.SQL("coalesce({}::pg_catalog.int8, 0::pg_catalog.int8)").format(value)
        return sql.SQL("pg_catalog.hashint8extended({v}, {seed} OPERATOR(pg_catalog.#) "
                       "(({v} OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.<<) 1))").format(v=whole, seed=seed)
    return sql.SQL("pg_catalog.uuid_hash_extended(coalesce({}::pg_catalog.uuid, {}), {})").format(
        value, sql.SQL(_ZERO["uuid"]), seed)


# Each recorded type's base type (through domains; with elements true, through arrays to their element type as
# well), resolved by name as a manifest records it (format_type)
_RECORDED_BASES = """
WITH RECURSIVE base(i, oid, depth) AS (
    SELECT u.i, pg_catalog.to_regtype(u.t)::pg_catalog.oid, 0
    FROM pg_catalog.unnest(%(names)s::text[]) WITH ORDINALITY AS u(t, i)
    UNION ALL
    SELECT base.i, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END, base.depth + 1
    FROM base JOIN pg_catalog.pg_type t ON t.oid = base.oid
    WHERE (t.typtype = 'd' OR (%(elements)s AND t.typcategory = 'A' AND t.typelem <> 0)) AND base.depth < 32)
SELECT DISTINCT ON (base.i) base.i::int, t.typname::text, t.typnamespace = 'pg_catalog'::pg_catalog.regnamespace
FROM base JOIN pg_catalog.pg_type t ON t.oid = base.oid ORDER BY base.i, base.depth DESC
"""


def recorded_bases(conn: psycopg.Connection, recorded: Sequence[dict], *, elements: bool = False) -> list[str | None]:
    """The base type (through domains; ``elements``: through arrays too, to the element's) of each of ``recorded``
    (a manifest's columns) in this database: a built-in type's name (``float8``, ``numeric``), "" for any other,
    None where the recorded type cannot be resolved here."""
    names = [c.get("pg_type") or "" for c in recorded]
    try:
        with conn.transaction():
            found = {i: (name if builtin else "") for i, name, builtin in
                     conn.execute(_RECORDED_BASES, {"names": names, "elements": elements})}
    except psycopg.Error:
        return [None] * len(names)
    return [found.get(i + 1) for i in range(len(names))]


# What a column archived as a key's type (its base type through domains, an array's element's) may be now and
# still read the archived values back exactly as the proof hashes the values there are now, in every format: an
# integer into a wider or narrower integer or a numeric (hashed by value), an integer or uuid into text (each format
# writes its canonical text, which v6 hashes as the archived kind), a text into another text type. Any other base
# type than the archived one is not: a value's text as a format wrote it is not its ``::text`` the proof hashed
# (an inet's '10.0.0.1' for '10.0.0.1/32', a boolean's 't' for 'true'), or it reads as another value that prints
# alike (a double's 0.1 read as a real). The same base type (a length, precision or domain changed) reads back.
_TEXTS = ("text", "varchar")
_READS_BACK = {**{integer: ("int2", "int4", "int8", "numeric", *_TEXTS) for integer in ("int2", "int4", "int8")},
               "uuid": _TEXTS, "text": _TEXTS, "varchar": _TEXTS, "bpchar": _TEXTS}


def _same_type(conn: psycopg.Connection, here: str, archived: str) -> bool:
    """Whether two type names (format_type's) name one type in this database (a user's type spelled with or
    without its schema); False where either does not resolve."""
    try:
        with conn.transaction():
            return bool(conn.execute("SELECT pg_catalog.to_regtype(%s) = pg_catalog.to_regtype(%s)",
                                     (here, archived)).fetchone()[0])
    except psycopg.Error:
        return False


def inexact_retypes(conn: psycopg.Connection, columns: Sequence, recorded: Sequence[dict]) -> list[str]:
    """The columns (``columns``, in the archive's order) whose type changed since ``recorded`` (the manifest's
    columns) archived them in a way a restore into them would not reproduce exactly (see :data:`_READS_BACK`), as
    "name: type now, type when archived". Equal fingerprints prove nothing there: the proof hashes the values there
    are now, a restore the archived ones read as the type there is now, and it refuses such a column (restore's
    ``_refuse_approximation``, or its fingerprint then differs). Through domains and arrays on both sides (an array
    stays an array); a recorded type this database cannot resolve is left to the proof."""
    if len(recorded) != len(columns) or all(c.type_name == entry.get("pg_type")
                                            for c, entry in zip(columns, recorded, strict=True)):
        return []  # (nothing retyped: no catalog read)
    changed = []
    for c, entry, then, whole in zip(columns, recorded, recorded_bases(conn, recorded, elements=True),
                                     recorded_bases(conn, recorded), strict=True):
        archived = entry.get("pg_type") or ""
        if then is None or c.type_name == archived:
            continue
        was_array = then != whole  # (through an array, the element's base is not the array type's own)
        if then == "" or "." in c.base_type:  # a type of the user's: read back only as itself
            exact = then == "" and "." in c.base_type and _same_type(conn, c.type_name, archived)
        else:
            exact = was_array == c.is_array and (then == c.base_type or c.base_type in _READS_BACK.get(then, ()))
        if not exact:
            changed.append(f"{c.name}: {c.type_name} now, {archived} when archived")
    return changed


def as_archived(conn: psycopg.Connection, columns: Sequence, recorded: Sequence[dict], algorithm: str,
                widened: bool = False) -> list:
    """``columns`` (the source's or a restore target's now, in the archive's order), each to be hashed by v6 as the
    column ``recorded`` (the manifest's columns) says it was archived: an integer column that is numeric or text now
    hashes its values as integers where they are, so a type changed since with every value kept (integer to numeric,
    as v5 saw it) compares equal, and a value that does not read back as archived differs. A recorded type this
    database cannot resolve leaves the column as it is, as does any ``algorithm`` but v6 (older ones hash every
    column by its text), and so are columns that are not the recorded ones by name and order (other rows than the
    archive's, whatever they hash as) or none of whose types changed (no catalog read). The one way every caller
    hashes a day to compare it with its archive: compare, deep verification, a removal, restore's proof, and an
    archive run deciding on the archive it finds.

    ``widened`` (a table a restore made, which follows the source's widenings between the days it holds by
    ALTER COLUMN ... TYPE: every one :func:`widening` lists): where a column's widening rewrote the text of the
    values already there (a numeric given more decimals, a char(n) made longer or a text type, a boolean array made
    a text one), it is hashed as the archived values it holds widened, by every chained algorithm: the day restored
    before the widening is still the archive's. Only there: anywhere else (a source's retype, a table of the
    user's) the values' text is what they are."""
    if algorithm not in CHAINED or not recorded or not all(isinstance(r, dict) for r in recorded) or \
            [getattr(c, "name", None) for c in columns] != [r.get("name") for r in recorded]:
        return list(columns)
    if all(getattr(c, "type_name", None) == r.get("pg_type") for c, r in zip(columns, recorded, strict=True)):
        return list(columns)
    if algorithm == ALGORITHM:
        bases = recorded_bases(conn, recorded)
        kinds = [None if base is None else TYPED_HASHED.get(base, "text") if base else "text" for base in bases]
        columns = [replace(c, hash_as=kind) if kind is not None and kind != own_kind(c) and hasattr(c, "hash_as")
                   else c for c, kind in zip(columns, kinds, strict=True)]
    if not widened:
        return list(columns)
    return [_widened_from(c, r.get("pg_type") or "") for c, r in zip(columns, recorded, strict=True)]


@dataclass(frozen=True)
class Widening:
    """A change of a column's type that restore follows in a table it made (``_widen_own``: ALTER COLUMN ... TYPE,
    every value the same) and how the proof hashes the values it holds as archived (see :func:`widening`, the one
    list of them). ``read_as`` (None: the widening keeps every value's text, nothing to read back) is the
    pg_catalog type that reads a value back as archived; ``type_now`` the type to widen it into again, to check it
    reads back by its text (None: by value, a numeric); ``texts`` the only texts an element may have for it to be
    read back at all (a boolean: a cast from text that refuses other texts, which would fail the whole query);
    ``by_cast`` prints the value read back by its cast to text, as the proof hashes the archived type (a boolean's
    'true'), not by its output ('t')."""

    read_as: str | None = None
    type_now: str | None = None
    texts: tuple[str, ...] = ()
    by_cast: bool = False

    def of_array(self) -> Widening:
        """The same widening of an array of the types (its elements' text rewritten alike)."""
        return replace(self, read_as=self.read_as and self.read_as + "[]",
                       type_now=self.type_now and self.type_now + "[]")


_KEPT = Widening()  # a widening that keeps every value's text (integer to bigint, varchar(10) to text)
_WHOLE = {"smallint": 5, "integer": 10, "bigint": 19}  # (the widest value of each, in decimal digits)
_TEXT_TYPES = {"text": "pg_catalog.text", "character varying": "pg_catalog.varchar"}
_NUMERIC = re.compile(r"numeric(?:\((\d+),(\d+)\))?")
_SIZED = re.compile(r"(character(?: varying)?)\((\d+)\)")
_BITS = re.compile(r"bit(?: varying)?\((\d+)\)")
_BOOLEAN_TEXTS = ("true", "false", "t", "f")  # (what ALTER ... TYPE text makes of one, and what a format writes)


def widening(was: str, now: str) -> Widening | None:
    """Whether a column of type ``was`` becomes ``now`` (format_type's names) by widening alone, every value the
    same, and if so how the proof reads its values back as ``was`` (None: not a widening). The one list restore
    follows (a column the source widened between the days a range restores) and the proof hashes: a wider integer;
    an integer into a numeric with room for its digits, a numeric with as many digits before and after the point
    or more (or unconstrained); a longer varchar or char, varchar or char(n) to text; bit(n) or varbit(n) to a
    varbit as long or unbounded; an integer, boolean or uuid to text (its values as their text); an array of one
    into an array of the other alike. Of these, ALTER rewrites the text of the values already there for a numeric
    given more decimals (12.50 as numeric(10,4) is 12.5000; an integer as numeric(12,2), 12 as 12.00), a char(n)
    ('ab ' as char(6) is 'ab    ', as text 'ab') and a boolean array ({t,f} as text[] is {true,false})."""
    if was.endswith("[]") and now.endswith("[]"):
        inner = widening(was[:-2], now[:-2])
        return inner and inner.of_array()
    if was in _WHOLE and now in _WHOLE:
        return _KEPT if _WHOLE[now] > _WHOLE[was] else None
    if now in _TEXT_TYPES and was == "boolean":
        return Widening("pg_catalog.bool", _TEXT_TYPES[now], _BOOLEAN_TEXTS, by_cast=True)
    if now in _TEXT_TYPES and was in ("uuid", *_WHOLE):
        return _KEPT  # (a column retyped text between the days: the earlier days' values as their text)
    return _numeric_widening(was, now) or _sized_widening(was, now)


def _numeric_widening(was: str, now: str) -> Widening | None:
    """:func:`widening` into a numeric: from an integer with room for its digits, or a numeric with room for every
    value's digits before and after the point; given more decimals, read back at the archived scale."""
    wide, narrow = _NUMERIC.fullmatch(now), _NUMERIC.fullmatch(was)
    if wide is None or (narrow is None and was not in _WHOLE) or was == now or (narrow and narrow[1] is None):
        return None
    whole, scale = (_WHOLE[was], 0) if narrow is None else (int(narrow[1]) - int(narrow[2]), int(narrow[2]))
    if wide[1] is None:
        return _KEPT  # (unconstrained: every value as it was)
    if int(wide[2]) < scale or int(wide[1]) - int(wide[2]) < whole:
        return None
    # (precision 1000, the most: a value of the type now, rounded to the archived scale, never overflows it)
    return Widening(f"pg_catalog.numeric(1000,{scale})") if int(wide[2]) > scale else _KEPT


def _sized_widening(was: str, now: str) -> Widening | None:
    """:func:`widening` of a char(n) or varchar(n) (into text, varchar or one as long: a char(n)'s padding widened
    or stripped, read back as char(n)) or of a bit string (into a varbit as long or unbounded)."""
    chars, longer = _SIZED.fullmatch(was), _SIZED.fullmatch(now)
    if chars and (now in _TEXT_TYPES or (longer and (chars[1], longer[1]) != ("character varying", "character")
                                         and int(longer[2]) >= int(chars[2]) and was != now)):
        if chars[1] == "character varying":
            return _KEPT
        into = _TEXT_TYPES.get(now) or f"pg_catalog.{'varchar' if longer[1] == 'character varying' else 'bpchar'}" \
                                       f"({longer[2]})"
        return Widening(f"pg_catalog.bpchar({chars[2]})", into)
    bits, more = _BITS.fullmatch(was), re.fullmatch(r"bit varying\((\d+)\)", now)
    if bits and (now == "bit varying" or (more and int(more[1]) >= int(bits[1]) and was != now)):
        return _KEPT
    return None


@dataclass(frozen=True)
class Widened:
    """A column whose values ALTER COLUMN ... TYPE widened from the archived type, rewriting their text (``how``:
    see :func:`widening`), hashed as the archived values it holds widened: each value read back as archived where
    it reads back exactly, else as its own text with the seed's highest bit flipped (:func:`_chain`; v6's typed
    hashing of a numeric once an integer flags its text itself), which no archived value's hash has: it differs
    from every one. Every other attribute is the column's."""

    column: Any
    how: Widening

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("column", "how"):  # (copy, pickle: not the column's)
            raise AttributeError(name)
        return getattr(self.column, name)

    def reads_back(self, qualifier: str | None) -> sql.Composable:
        """Whether the value read as archived gives it back exactly: a numeric's value, unrounded (NULL too); a
        char(n)'s or boolean's text as the widening made it (its padding widened or stripped; true for t) or as a
        load into the column writes it (the archived text itself: a text column keeps the blanks of 'ab ', t).
        A value a boolean cannot read is not tried: it does not read back."""
        x, a = _ident(self.column, qualifier), sql.SQL(self.how.read_as or "")
        if self.how.type_now is None:
            return sql.SQL("{x}::{a} IS NOT DISTINCT FROM {x}").format(x=x, a=a)
        back = sql.SQL('pg_catalog.concat(({x}::{a})::{now}) COLLATE "C" OPERATOR(pg_catalog.=) '
                       'pg_catalog.concat({x}) COLLATE "C" OR pg_catalog.concat({x}::{a}) COLLATE "C" '
                       'OPERATOR(pg_catalog.=) pg_catalog.concat({x}) COLLATE "C"').format(
            x=x, a=a, now=sql.SQL(self.how.type_now))
        if not self.how.texts:
            return back
        # (NULL elements and a NULL value pass: they read back as NULL)
        return sql.SQL('CASE WHEN NOT EXISTS (SELECT FROM pg_catalog.unnest({arr}) AS e(v) WHERE NOT '
                       '(e.v::pg_catalog.text COLLATE "C" OPERATOR(pg_catalog.=) ANY ({texts}::pg_catalog.text[]))) '
                       'THEN {back} ELSE FALSE END').format(
            arr=x if self.column.is_array else sql.SQL("ARRAY[{}]").format(x), back=back,
            texts=sql.Literal(list(self.how.texts)))

    def text(self, qualifier: str | None) -> sql.Composable:
        """The value's text as archived where it reads back, else its own (printed by the types' output)."""
        x = _ident(self.column, qualifier)
        printed = "({x}::{a})::pg_catalog.text" if self.how.by_cast else "pg_catalog.concat({x}::{a})"
        return sql.SQL("CASE WHEN {back} THEN " + printed + " ELSE pg_catalog.concat({x}) END").format(
            back=self.reads_back(qualifier), x=x, a=sql.SQL(self.how.read_as or ""))


def _widened_from(column: Any, archived: str) -> Any:
    """``column`` as a :class:`Widened` one, where its type now is a widening of ``archived`` that rewrote the text
    of the values it held (:func:`widening`); else as it is."""
    how = widening(archived, column.type_name)
    return column if how is None or how.read_as is None else Widened(column, how)


def _utf8_bytes(text: sql.Composable, encoding: str) -> sql.Composable:
    """``text`` of a database in a single-byte ``encoding`` as a text whose bytes are its UTF-8 bytes:
    converted to UTF-8, then taken back as the database's own encoding, which in a single-byte
    encoding checks no more than that no byte is zero (UTF-8 of a text has none). hashtextextended
    under the "C" collation then hashes exactly the bytes a UTF-8 database would."""
    return sql.SQL("pg_catalog.convert_from(pg_catalog.convert_to({}, 'UTF8'), {}::pg_catalog.name)").format(
        text, sql.Literal(encoding))


def _v2_row_hash(columns: Sequence[ColumnLike], qualifier: str | None) -> sql.Composable:
    """v2: one hash of the columns' pieces joined by commas (in column order)."""
    pieces: list[sql.Composable] = [column_piece(c, qualifier) for c in columns]
    while len(pieces) > _ARGS:
        pieces = [sql.SQL("pg_catalog.concat_ws(',', {})").format(sql.SQL(", ").join(pieces[i:i + _ARGS]))
                  for i in range(0, len(pieces), _ARGS)]
    return sql.SQL("pg_catalog.hashtextextended(pg_catalog.concat_ws(',', {}), 0::pg_catalog.int8)").format(
        sql.SQL(", ").join(pieces))


def hash_sum(row_hashes: sql.Composable) -> sql.Composed:
    """The sum of the rows' hashes as exact decimal text, printed by numeric's output function (``concat``),
    never through ``::text``, which would run a cast of numeric to text a DBA created (a display format)."""
    return sql.SQL("pg_catalog.concat(coalesce(pg_catalog.sum({}), 0::pg_catalog.numeric))").format(row_hashes)


def fingerprint_query(relation: sql.Composable, columns: Sequence[ColumnLike],
                      where: sql.Composable | None = None, algorithm: str = ALGORITHM,
                      encoding: str = "UTF8") -> sql.Composed:
    return sql.SQL("SELECT pg_catalog.count(*), {total} FROM {rel} WHERE {where}").format(
        total=hash_sum(row_hash(columns, algorithm=algorithm, encoding=encoding)), rel=relation,
        where=where if where is not None else sql.SQL("TRUE"))


@contextlib.contextmanager
def canonical_settings(conn: psycopg.Connection) -> Iterator[None]:
    """Run the block with :data:`CANONICAL_SETTINGS` in force, inside the caller's transaction if
    there is one (they then last until it ends), else in one of our own."""
    in_transaction = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    with contextlib.nullcontext() if in_transaction else conn.transaction():
        apply_settings(conn.execute, CANONICAL_SETTINGS)
        yield


def compute(conn: psycopg.Connection, relation: sql.Composable, columns: Sequence[ColumnLike],
            where: sql.Composable | None = None, algorithm: str = ALGORITHM) -> Fingerprint:
    """The fingerprint of the rows of ``relation`` matching ``where``, in the caller's snapshot."""
    with canonical_settings(conn):
        rows, hash_sum = conn.execute(fingerprint_query(relation, columns, where, algorithm,
                                                        server_encoding(conn))).fetchone()
    return Fingerprint(rows=rows, hash_sum=hash_sum, algorithm=algorithm)


def row_hashes(conn: psycopg.Connection, relation: sql.Composable, columns: Sequence[ColumnLike],
               where: sql.Composable | None = None, batch: int = 10_000,
               algorithm: str = ALGORITHM) -> Iterable[int]:
    """Every row's hash in ascending order (a server-side cursor, flat memory): two such streams merge
    to find the rows that differ between an archive and its source (see :func:`first_difference`).
    Give each stream its own connection: two open streams on one would interleave transactions."""
    query = sql.SQL("SELECT {h} AS h FROM {rel} WHERE {where} ORDER BY 1").format(
        h=row_hash(columns, algorithm=algorithm, encoding=server_encoding(conn)), rel=relation,
        where=where if where is not None else sql.SQL("TRUE"))
    name = f"archive_pipeline_row_hashes_{next(_cursor_names)}"
    with canonical_settings(conn), conn.cursor(name=name) as cur:
        cur.itersize = batch
        cur.execute(query)
        for (h,) in cur:
            yield h


def first_difference(left: Iterable[int], right: Iterable[int]) -> tuple[str, int] | None:
    """The first row hash present more often on one side than the other: ("left"|"right", hash)."""
    left_it, right_it = iter(left), iter(right)
    a, b = next(left_it, None), next(right_it, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a < b):
            return "left", a
        if a is None or b < a:
            return "right", b
        a, b = next(left_it, None), next(right_it, None)
    return None
