"""Hunt 26 (do): names at the edges (braces, percent signs, quotes, non-ASCII) through archive, restore, verify and
the Dagster layer."""

from __future__ import annotations

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.test_hunt17_wj import DAY, _spec


def test_a_domain_constraint_named_with_braces_fails_the_day_with_its_own_message_not_an_unexpected_error(
        conn, schema, store, temp_dir):
    """Scenario: a domain ``amount`` (int) whose CHECK was added later NOT VALID under a name holding braces,
    ``ALTER DOMAIN amount ADD CONSTRAINT "amount_{positive}" CHECK (VALUE > 0) NOT VALID`` (braces are legal in a
    quoted name; a team templating its constraint names, or writing ``{v2}`` into them, has such names), and a row
    of 2024-03-10 holding -5, which PostgreSQL kept. The user archives the day.

    Now: formats.common._refuse_broken_domain builds the refusal's detail as an f-string that embeds PostgreSQL's
    message (``value for domain ... violates check constraint "amount_{positive}"``) and then runs
    ``detail.format(domains=...)`` on it: the constraint's braces are read as a format field, ``KeyError:
    'positive'`` escapes, and the day fails as "an unexpected error (KeyError: 'positive')... to fix: read the
    message": no column, no cause, no remedy (a ``{}`` or a lone ``}`` in the name gives IndexError / ValueError).

    Should: the same refusal as for any other constraint name: an UnsupportedTypeError naming the column, the
    domain and the constraint, with the remedy (UPDATE the rows, VALIDATE CONSTRAINT, or archive a view). Fix idea:
    put the domains into ``detail`` when it is built (or escape the quoted message's braces) instead of calling
    ``str.format`` on text that holds PostgreSQL's words."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE DOMAIN {}.amount AS int").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, a {}.amount)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, -5), (2, %s, 3)").format(s), (DAY, DAY))
    conn.execute(sql.SQL('ALTER DOMAIN {}.amount ADD CONSTRAINT "amount_{{positive}}" CHECK (VALUE > 0) NOT VALID')
                 .format(s))
    try:
        archive_partition(conn, _spec(schema, "ev"), DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        message = str(exc)
    else:
        raise AssertionError("the day holding -5, which its domain's CHECK refuses, was archived")
    assert "unexpected error" not in message, message
    assert "'a'" in message and "amount_{positive}" in message, message
