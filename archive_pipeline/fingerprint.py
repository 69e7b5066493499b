"""A content fingerprint of a set of rows, computed by PostgreSQL: what proves an archive equals its source.

The fingerprint is the row count plus the sum, over rows, of a 64-bit hash of each row. A sum is
order-independent (the archive's row order does not matter) and, unlike XOR, counts duplicate rows.
Each row's hash XORs one hash per column, each seeded with the column's position so that values
swapped between columns change it, and with a distinct constant for NULL.

Per-column hashes use PostgreSQL's own extended (64-bit) hash functions where a type's hash is
exact, i.e. two values hash alike only if they print alike: integers, text (under the "C"
collation, so nondeterministic collations cannot fold case or accents), uuid, timestamps, time,
boolean, and ``numeric`` (its hash combined with its display scale, so 1.0 and 1.00 differ).
Every other type hashes its text output, which is exact where the type's hash is not:
``float8`` 0 vs -0, ``interval`` '1 day' vs '24 hours', array lower
bounds, ``jsonb`` 1.0 vs 1.00, enums (whose hash depends on label OIDs, different in another
database). Text output depends on session settings, so the fingerprint is always computed under
:data:`CANONICAL_SETTINGS`; the same query over rows restored into a table of the same column
types gives the same fingerprint exactly when the rows are the same multiset.

Measured on the 1,000,000-row benchmark day: see bench/run.py (``fingerprint`` line).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

ALGORITHM = "row-hash-sum-v1"

# Output of every type is fixed by these, whatever the server's or role's defaults.
CANONICAL_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}

# Types whose extended hash function distinguishes exactly what their text output distinguishes.
_NATIVE_HASH = {
    "int2": "hashint2extended({c}, {seed})",
    "int4": "hashint4extended({c}, {seed})",
    "int8": "hashint8extended({c}, {seed})",
    "text": 'hashtextextended({c} COLLATE "C", {seed})',
    "varchar": 'hashtextextended({c}::text COLLATE "C", {seed})',
    "uuid": "uuid_hash_extended({c}, {seed})",
    # equal numerics with equal display scale print alike (1.0 vs 1.00 differ in scale; NaN has none)
    "numeric": "(hash_numeric_extended({c}, {seed}) # hashint4extended(coalesce(scale({c}), -1), {seed}))",
    "timestamp": "timestamp_hash_extended({c}, {seed})",
    "timestamptz": "timestamp_hash_extended({c} AT TIME ZONE 'UTC', {seed})",
    "time": "time_hash_extended({c}, {seed})",
    "bool": "hashint4extended({c}::int4, {seed})",
}
_TEXT_HASH = 'hashtextextended({c}::text COLLATE "C", {seed})'
_cursor_names = itertools.count()
_GROUP = 32  # XOR the column hashes in groups, so a 1,600-column row does not make a 1,600-deep expression


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


def column_hash(column: ColumnLike, position: int, qualifier: str | None = None) -> sql.Composable:
    """The hash expression of one column; NULL hashes to a constant of its own per column."""
    ident = sql.Identifier(qualifier, column.name) if qualifier else sql.Identifier(column.name)
    seed = position + 1
    template = _TEXT_HASH if column.is_array or column.is_enum else _NATIVE_HASH.get(column.base_type, _TEXT_HASH)
    expression = sql.SQL(template).format(c=ident, seed=sql.Literal(seed))
    return sql.SQL("coalesce({}, {})").format(expression, sql.Literal(-seed * 0x9E3779B97F4A7C15 % (1 << 63)))


def row_hash(columns: Sequence[ColumnLike], qualifier: str | None = None) -> sql.Composable:
    """One 64-bit hash per row: the XOR of its columns' hashes, grouped to keep the expression shallow."""
    terms: list[sql.Composable] = [column_hash(c, i, qualifier) for i, c in enumerate(columns)]
    if not terms:
        return sql.SQL("0::int8")
    while len(terms) > 1:
        terms = [sql.SQL("(") + sql.SQL(" # ").join(terms[i:i + _GROUP]) + sql.SQL(")")
                 for i in range(0, len(terms), _GROUP)]
    return terms[0]


def fingerprint_query(relation: sql.Composable, columns: Sequence[ColumnLike],
                      where: sql.Composable | None = None) -> sql.Composed:
    return sql.SQL("SELECT count(*), coalesce(sum({h}), 0)::text FROM {rel} WHERE {where}").format(
        h=row_hash(columns), rel=relation, where=where if where is not None else sql.SQL("TRUE"))


@contextlib.contextmanager
def canonical_settings(conn: psycopg.Connection) -> Iterator[None]:
    """Run the block with :data:`CANONICAL_SETTINGS` in force, inside the caller's transaction if
    there is one (they then last until it ends), else in one of our own."""
    in_transaction = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    with contextlib.nullcontext() if in_transaction else conn.transaction():
        for name, value in CANONICAL_SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        yield


def compute(conn: psycopg.Connection, relation: sql.Composable, columns: Sequence[ColumnLike],
            where: sql.Composable | None = None) -> Fingerprint:
    """The fingerprint of the rows of ``relation`` matching ``where``, in the caller's snapshot."""
    with canonical_settings(conn):
        rows, hash_sum = conn.execute(fingerprint_query(relation, columns, where)).fetchone()
    return Fingerprint(rows=rows, hash_sum=hash_sum)


def row_hashes(conn: psycopg.Connection, relation: sql.Composable, columns: Sequence[ColumnLike],
               where: sql.Composable | None = None, batch: int = 10_000) -> Iterable[int]:
    """Every row's hash in ascending order (a server-side cursor, flat memory): two such streams merge
    to find the rows that differ between an archive and its source (see :func:`first_difference`).
    Give each stream its own connection: two open streams on one would interleave transactions."""
    query = sql.SQL("SELECT {h} AS h FROM {rel} WHERE {where} ORDER BY 1").format(
        h=row_hash(columns), rel=relation, where=where if where is not None else sql.SQL("TRUE"))
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
