"""This session's own checks of its changes (hunt 5)."""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from archive_pipeline.core.parallel import dsn_of


def test_the_sessions_we_open_send_no_options_unless_the_role_needs_them(conn, schema, pg):
    """A pooler such as PgBouncer refuses the ``options`` startup parameter unless told to ignore it: the
    streams' and the fingerprint's sessions (dsn_of) and ADBC's send it only to pin a setting the role's own
    default would change (serializable by default), never for an ordinary role."""
    plain = conninfo_to_dict(dsn_of(conn))
    assert not plain.get("options"), plain
    role = f"{schema}_ser"
    dsn = pg.create_password_role(role, "pw-self")
    try:
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_isolation = 'serializable'").format(
            sql.Identifier(role)))
        with psycopg.connect(dsn, autocommit=True) as serializable:
            options = conninfo_to_dict(dsn_of(serializable)).get("options") or ""
            assert "default_transaction_isolation=read\\ committed" in options, options
            with psycopg.connect(dsn_of(serializable), autocommit=True) as opened:  # the pin works
                assert opened.execute("SHOW default_transaction_isolation").fetchone()[0] == "read committed"
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
