"""SQL text for statements that also pass parameters.

psycopg reads every ``%`` of a statement sent with parameters as a placeholder, inside quoted names and
literals too (upstream psycopg/psycopg2#825, unchanged in psycopg 3): a column named ``%s`` or a table
named ``Sales 100%`` broke every statement that named it and bound a value ("positional and named
placeholders cannot be mixed", "the query has 2 placeholders but 1 parameters were passed").
"""

from __future__ import annotations

from psycopg import sql
from psycopg.abc import AdaptContext


class CatalogText(sql.SQL):
    """SQL text the catalog spelled, such as a type as ``format_type`` prints it (``"mood %s"[]``): put
    into a statement as it is, like :class:`~psycopg.sql.SQL`, but never a placeholder, so
    :func:`with_params` doubles its ``%`` as it does a name's."""


def with_params(query: sql.Composable, context: AdaptContext) -> bytes:
    """``query`` as the text of a statement executed with parameters: each ``%`` inside a name, a
    literal or a :class:`CatalogText` doubled, so only the statement's own placeholders (``%s`` in its
    SQL text, or a :class:`~psycopg.sql.Placeholder`) take a parameter."""
    if isinstance(query, sql.Composed):
        return b"".join(with_params(part, context) for part in query)
    text = query.as_bytes(context)
    own = isinstance(query, sql.SQL | sql.Placeholder) and not isinstance(query, CatalogText)
    return text if own else text.replace(b"%", b"%%")
