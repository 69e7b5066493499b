"""JSON Lines: ``row_to_json`` of each row, through ``COPY ... (FORMAT csv)`` with control bytes as quote
and delimiter (JSON text never holds raw control bytes, so CSV mode passes it through byte for byte)."""

from __future__ import annotations

import json

from psycopg import sql
from psycopg._encodings import pg2pyenc  # (psycopg's own table of PostgreSQL encodings)

from archive_pipeline.core.errors import UnsupportedTypeError
from archive_pipeline.core.formats.common import (
    REFUSALS,
    CopyFormat,
    day_query,
    element_texts,
    encoding,
    output_text,
    raise_in_sql,
    refuse_ambiguous_names,
    refusal_remedy,
    refused_column,
    sqlstate_of,
    xml_text,
)
from archive_pipeline.core.source import Column, SourceTable

# Scalars whose row_to_json form json_populate_record reads back to the identical value.
_JSON_NATIVE = {"int2", "int4", "int8", "float4", "float8", "numeric", "money", "bool", "text", "varchar",
                "bpchar", "name", "date", "timestamp", "timestamptz", "time", "timetz", "interval", "uuid",
                "bytea"}


def _json_native(col: Column) -> bool:
    """Whether row_to_json writes the column's values (an enum's as their labels' texts, see :func:`_labels`) as
    json_populate_record reads them back: not an array of arrays (through a domain), which row_to_json would
    write as nested JSON arrays, and not through a cast to json of its type the snapshot saw."""
    return (col.base_type in _JSON_NATIVE or col.is_enum) and not col.json_cast and not col.nested


def _labels(col: Column, ident: sql.Composable) -> sql.Composable:
    """An enum column (or an array of one) as its labels' texts by enum's output function, which row_to_json writes
    as the same JSON strings it writes for the enum's values, but without looking up a cast of the enum to json:
    row_to_json calls one of a user's type that the catalog holds as the COPY runs, though created after the
    snapshot described the table (and dropped again before any check could see it)."""
    return element_texts(ident) if col.is_array else output_text(ident)


# A json value's text with every escaped backslash (``\\``) taken out: each backslash left starts a real
# escape, so ``\u`` in it is a real \u escape (``"\\ud800"`` is a backslash and the letters ud800).
_REAL_ESCAPES = r"pg_catalog.regexp_replace({c}::text, '\\\\', '', 'g')"
# ... and with every valid surrogate pair (a high \uD800-\uDBFF right before a low \uDC00-\uDFFF) taken out
# too: any surrogate escape left is unpaired, which json_populate_record (any de-escaping JSON parse)
# refuses, though the json type stores it.
_UNPAIRED_SURROGATE = ("pg_catalog.regexp_replace(" + _REAL_ESCAPES + r", "
                       r"'\\u[dD][89abAB][0-9a-fA-F]{{2}}\\u[dD][c-fC-F][0-9a-fA-F]{{2}}', '', 'g') "
                       r"~ '\\u[dD][89a-fA-F][0-9a-fA-F]{{2}}'")


# ... and holding a \u escape of a character beyond ASCII (\u0080 and up: ~* so any case of hex digits)
_BEYOND_ASCII = r"'\\u(00[89a-f][0-9a-f]|0[1-9a-f][0-9a-f]{{2}}|[1-9a-f][0-9a-f]{{3}})'"
# The database's encoding unknown (a table not described by this version): beyond LATIN1's 256 characters in
# LATIN1, else beyond ASCII
_BEYOND_ASCII_ESCAPE = ("CASE WHEN pg_catalog.current_setting('server_encoding') = 'LATIN1' THEN " + _REAL_ESCAPES
                        + r" ~ '\\u(0[1-9a-fA-F][0-9a-fA-F]{{2}}|[1-9a-fA-F][0-9a-fA-F]{{3}})' ELSE " + _REAL_ESCAPES
                        + " ~* " + _BEYOND_ASCII + " END")


def _repertoire_escapes(encoding: str) -> str | None:
    r"""The hex digits of every \u escape beyond ASCII that a database of the single-byte ``encoding`` holds
    a character for, as a regular expression's alternatives grouped by their first three digits
    ("00a[0-9a-f]|20a[c]|..."), or None for an encoding without a single-byte table here (UTF8 has every
    character; SQL_ASCII converts none; a multibyte one has too many to list). Python's codecs come from the
    same Unicode mapping tables as PostgreSQL's conversions (a byte neither maps, such as WIN1252's 0x81,
    has no character in either)."""
    if encoding not in _SINGLE_BYTE:
        return None
    codec = pg2pyenc(encoding.encode())
    kept: dict[str, list[str]] = {}
    for byte in range(0x80, 0x100):
        try:
            char = bytes([byte]).decode(codec)
        except UnicodeDecodeError:
            continue
        if len(char) == 1 and ord(char) >= 0x80:
            digits = f"{ord(char):04x}"
            kept.setdefault(digits[:3], []).append(digits[3])
    return "|".join(f"{head}[{''.join(sorted(tails))}]" for head, tails in sorted(kept.items())) or None


# PostgreSQL's multibyte server encodings other than UTF8
_MULTIBYTE = frozenset({"EUC_JP", "EUC_CN", "EUC_KR", "EUC_TW", "EUC_JIS_2004", "MULE_INTERNAL"})
# PostgreSQL's single-byte server encodings (SQL_ASCII apart), each with a Python codec (psycopg's table)
_SINGLE_BYTE = frozenset({*(f"LATIN{n}" for n in range(1, 11)), *(f"WIN{n}" for n in range(1250, 1259)),
                          "WIN866", "WIN874", "KOI8R", "KOI8U", "ISO_8859_5", "ISO_8859_6", "ISO_8859_7",
                          "ISO_8859_8"})


def _escape_beyond_encoding(encoding: str | None) -> str | None:
    r"""SQL (a template over ``{c}``) true when a json value holds a real \u escape of a character the
    database's ``encoding`` lacks; None in UTF8, which has them all. Every JSON parse there (restore's
    json_populate_record) turns such an escape into that encoding, and fails on the whole line without it."""
    if encoding is None:
        return "pg_catalog.current_setting('server_encoding') <> 'UTF8' AND " + _BEYOND_ASCII_ESCAPE
    if encoding == "UTF8":
        return None
    if encoding in _MULTIBYTE:
        # too many characters to list: the value's escapes alone (in order, so a surrogate pair stays one) are
        # de-escaped as the restore's parse will, which converts each into the database's encoding and fails
        # (22P05, naming the value) where it lacks one. Only the escapes: a parse of the whole value would also
        # read its numbers, and fail on one beyond numeric's range (legal JSON) for another reason.
        return (_REAL_ESCAPES + " ~* " + _BEYOND_ASCII + " AND (SELECT ('\"' || pg_catalog.string_agg(m.e[1], '' "
                "ORDER BY m.n) || '\"')::pg_catalog.json #>> '{{}}' FROM pg_catalog.regexp_matches(" + _REAL_ESCAPES
                + r", '(\\u[0-9a-fA-F]{{4}})', 'g') WITH ORDINALITY AS m(e, n)) IS NULL")
    kept = _repertoire_escapes(encoding)
    text = _REAL_ESCAPES if kept is None else f"pg_catalog.regexp_replace({_REAL_ESCAPES}, '\\\\u({kept})', '', 'gi')"
    return text + " ~* " + _BEYOND_ASCII


def jsonl_column(col: Column, index: int, db_encoding: str | None = None) -> tuple[sql.Composable, dict]:
    """(expression fed to row_to_json, encoding) of one column in JSONL, in a database of ``db_encoding``."""
    ident = sql.Identifier(col.name)
    if col.base_type == "xml":
        # the stored text: xml's output drops or rewrites an XML declaration (see xml_text)
        return (sql.SQL("pg_catalog.to_json({})").format(xml_text(col)),
                encoding("string: PostgreSQL array literal of the xml texts as stored" if col.is_array
                         else "string: the xml text as stored", note="read back with xml's input"))
    if col.is_array:
        if not _json_native(col):
            # json elements: JSON null and SQL NULL would both be null; composites and unknown types may
            # hold any of the above. PostgreSQL's own array literal is exact and json_populate_record
            # reads it back.
            return (refuse_ambiguous_names(col, index, sql.SQL("pg_catalog.to_json({})").format(output_text(ident))),
                    encoding("string: PostgreSQL array literal", note="read back with the array type's input"))
        # As row_to_json writes it; a row holding an array whose lower bound is not 1 (which row_to_json
        # would drop) is written again with that array as its literal (see JsonLines.copy_statement).
        value = sql.SQL("{}::{}").format(ident, sql.SQL(col.cast_name("numeric"))) if col.base_type == "money" \
            else _labels(col, ident) if col.is_enum else ident
        element = json_type(col.base_type if not col.is_enum else "enum")
        return value, encoding(f"array of {element} (nested when multi-dimensional; the PostgreSQL array "
                               "literal as a string when a lower bound is not 1)")
    if col.base_type == "money":
        return (sql.SQL("{}::numeric").format(ident),
                encoding("number (money as numeric)",
                         note="digits of the amount, without currency symbol; 2 fraction digits (lc_monetary C)"))
    if col.base_type == "jsonb":
        refuse = raise_in_sql(index, "json_null", ident)
        # jsonb's null is a few bytes: the size test (no detoasting) spares big documents a second
        # decompression
        return (sql.SQL("CASE WHEN pg_catalog.pg_column_size({c}) < 64 AND pg_catalog.jsonb_typeof({c}) = 'null' "
                        "THEN CASE WHEN {r} IS NULL THEN {c} END "
                        "ELSE {c} END").format(c=ident, r=refuse),
                encoding("embedded JSON (jsonb's text)", note="the JSON value null is refused: read back "
                         "with json_populate_record it would be SQL NULL"))
    if col.base_type == "json":
        refuse = raise_in_sql(index, "json_null", ident)
        # json keeps its input text. A raw CR or LF can only be whitespace between tokens (JSON forbids
        # them inside strings); it would split the line, so it becomes a space. Everything else (key
        # order, duplicate keys, number spelling) is kept as written.
        nul = raise_in_sql(index, "json_nul", ident)
        surrogate = raise_in_sql(index, "json_surrogate", ident)
        beyond = raise_in_sql(index, "json_escape_encoding", ident)
        beyond_test = _escape_beyond_encoding(db_encoding)
        # \u0000 and unpaired surrogate escapes: one search for \u in every value (LIKE: a byte loop, faster
        # than strpos for a needle this short); only a value holding one is searched further, and the
        # backslash-exact test runs only on a suspect. The inner CASE raises (the refusal) or is false,
        # so the outer one goes on to the line breaks.
        escapes = sql.SQL(
            "{c}::text COLLATE \"C\" LIKE '%\\\\u%' AND CASE "
            "WHEN pg_catalog.strpos({c}::text, '\\u0000') > 0 "
            "AND pg_catalog.strpos(" + _REAL_ESCAPES + ", '\\u0000') > 0 "
            "THEN {n} IS NULL "
            "WHEN (pg_catalog.strpos({c}::text, '\\ud') > 0 OR pg_catalog.strpos({c}::text, '\\uD') > 0) "
            "AND " + _UNPAIRED_SURROGATE
            + " THEN {s} IS NULL "
            # outside UTF8, every JSON parse turns such an escape into the database's encoding (and a restore's
            # of the whole line fails where it has no such character; SQL_ASCII converts none)
            + ("" if beyond_test is None else "WHEN " + beyond_test + " THEN {b} IS NULL ")
            + "ELSE false END").format(c=ident, n=nul, s=surrogate, b=beyond)
        return (sql.SQL("CASE WHEN pg_catalog.json_typeof({c}) = 'null' THEN CASE WHEN {r} IS NULL THEN {c} END "
                        "WHEN {e} THEN NULL "
                        "WHEN pg_catalog.strpos({c}::text, E'\\n') > 0 OR pg_catalog.strpos({c}::text, E'\\r') > 0 "
                        "THEN pg_catalog.translate({c}::text, E'\\r\\n', '  ')::json ELSE {c} END").format(
                    c=ident, r=refuse, e=escapes),
                encoding("embedded JSON (the json text as stored)", exact=False,
                         note="line breaks between JSON tokens become spaces (a JSONL line cannot hold them), "
                              "blanks before and after the value are not kept, "
                              "and json_populate_record re-escapes a top-level string; the JSON value null, "
                              "\\u0000, an unpaired UTF-16 surrogate escape (\\ud800), and in a database whose encoding is "
                              "not UTF8 an escape of a character that encoding lacks, are refused"))
    if _json_native(col):
        return (_labels(col, ident) if col.is_enum else ident), encoding(json_type(col.base_type if not col.is_enum
                                                                                    else "enum"))
    return (refuse_ambiguous_names(col, index, sql.SQL("pg_catalog.to_json({})").format(output_text(ident))),
            encoding("string: the type's output", note="read back with the type's input function"))


def json_type(base_type: str) -> str:
    """How row_to_json encodes a PostgreSQL scalar (see the README's type table)."""
    if base_type in ("int2", "int4", "int8"):
        return "number"
    if base_type in ("float4", "float8", "numeric"):
        return 'number ("NaN", "Infinity", "-Infinity" as strings)'
    if base_type == "money":
        return "number (money as numeric)"
    if base_type == "bool":
        return "boolean"
    if base_type == "bytea":
        return 'string "\\x<hex>"'
    if base_type in ("json", "jsonb"):
        return "embedded JSON"
    return "string"



class JsonLines(CopyFormat):
    json_text = True  # a big text value's JSON string is read in slices (see big_values)
    # what PostgreSQL's JSON writes for a character of a value (escape_json), in bytes more than the text's one: a
    # control character six bytes (\u00XX), five of them with a short escape (\n) two, as '"' and '\\' (which a
    # row's text may already double: counted again, the estimate stays a bound): a day of terminal captures was
    # six times its text, past the 4 x its estimate that equal parts are sized for
    text_escapes = (("".join(map(chr, range(1, 32))).translate(str.maketrans("", "", "\b\f\n\r\t")), 5),
                    ("\b\f\n\r\t\"\\", 1))

    def __init__(self) -> None:
        super().__init__("jsonl", "jsonl", "application/x-ndjson")

    def _columns(self, table: SourceTable) -> list[tuple[sql.Composable, dict]]:
        return [jsonl_column(c, i, table.encoding) for i, c in enumerate(table.columns)]

    def encodings(self, table: SourceTable) -> dict[str, dict]:
        return {c.name: enc for c, (_, enc) in zip(table.columns, self._columns(table), strict=True)}

    def probes(self, table: SourceTable) -> list[sql.Composable]:
        return [sql.SQL("pg_catalog.to_json({})").format(expr) for expr, _ in self._columns(table)]

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        columns = sql.SQL(", ").join(sql.SQL("{} AS {}").format(expr, sql.Identifier(c.name))
                                     for c, (expr, _) in zip(table.columns, self._columns(table), strict=True))
        query = day_query(table, where, columns)
        return sql.SQL("COPY (SELECT {line} FROM ({query}) AS r) TO STDOUT "
                       "(FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')").format(line=self._line(table), query=query)

    @staticmethod
    def _line(table: SourceTable) -> sql.Composable:
        """row_to_json of the row; when one of its arrays has a lower bound other than 1, the row again
        with such arrays as their literal. Deciding per row, not per value, keeps the common row as
        cheap as plain row_to_json (two O(1) calls per array, no intermediate JSON per array)."""
        arrays = [c for c in table.columns if c.is_array and _json_native(c)]
        if not arrays:
            return sql.SQL("pg_catalog.row_to_json(r.*)")

        def ref(col: Column) -> sql.Composable:
            return sql.SQL("r.{}").format(sql.Identifier(col.name))

        plain = sql.SQL(" AND ").join(
            sql.SQL("coalesce(pg_catalog.array_lower({v}, 1), 1) = 1 AND coalesce(pg_catalog.array_ndims({v}), 1) = 1").format(v=ref(c))
            for c in arrays)
        again = sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(
                sql.SQL("CASE WHEN coalesce(pg_catalog.array_lower({v}, 1), 1) = 1 AND (coalesce(pg_catalog.array_ndims({v}), 1) = 1 "
                        "OR pg_catalog.array_dims({v}) !~ {re}) THEN pg_catalog.to_json({v}) "
                        "ELSE pg_catalog.to_json({t}) END").format(t=output_text(ref(c)),
                    v=ref(c), re=sql.Literal(r"\[(?!1:)")) if c in arrays else ref(c),
                sql.Identifier(c.name))
            for c in table.columns)
        return sql.SQL("CASE WHEN {plain} THEN pg_catalog.row_to_json(r.*) "
                       "ELSE (SELECT pg_catalog.row_to_json(x.*) FROM (SELECT {again}) AS x) END").format(
            plain=plain, again=again)

    @staticmethod
    def row_overhead(table: SourceTable) -> int:
        """The bytes a line adds to its row's text (what ``source.estimated_bytes`` measures), for sizing an upload
        up front: every column's name as a JSON string and its colon, in every line (a wide table of long names
        writes lines many times its rows' text), up to 4 bytes more per value (``null`` for a NULL the text leaves
        empty, the quotes of a string the text leaves bare), the braces and the newline."""
        return 3 + sum(len(json.dumps(c.name, ensure_ascii=False).encode()) + 1 + 4 for c in table.columns)

    def refused_by_parse(self, table: SourceTable, exc: BaseException, culprits: list[int] | None
                         ) -> UnsupportedTypeError | None:
        """A json value's \\u escape of a character a multibyte database's encoding lacks: its parse (see
        ``_escape_beyond_encoding``) fails 22P05, which is the json_escape_encoding refusal."""
        if sqlstate_of(exc) != "22P05" or table.encoding not in _MULTIBYTE or not culprits or len(culprits) != 1:
            return None
        col = table.columns[culprits[0]]
        if col.base_type != "json" or col.is_array:
            return None
        reason = "json_escape_encoding"
        return UnsupportedTypeError(
            f"{refused_column(col, reason)} of {table.qualified} {REFUSALS[reason].replace('{encoding}', table.encoding)} "
            f"in {self.name}; {refusal_remedy(reason, self.name)}", table=table.qualified, retryable=False)

    def output_type(self, col: Column) -> str:
        """The short form of the column's encoding: "number", "array of string", "embedded JSON", ..."""
        return jsonl_column(col, 0)[1]["encoding"].split(" (")[0]


