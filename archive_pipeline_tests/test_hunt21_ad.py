"""Hunt 21 (ad): a code review of reading a day out of PostgreSQL (core/source.py, plan.py, parallel.py,
streams.py, sink.py): what the catalog says of the columns against what the rows hold, and the sessions opened
beside the caller's (parallel streams, the Parquet reader) against the caller's own session.

What held up (read, and probed where it looked thin; no test here): the day's filter and its expression-key bounds
(casts, date_trunc, AT TIME ZONE with the 26 h slack; a 3-argument date_trunc by a zone is monotone, so its unslacked
bounds still hold every row), NULL and infinite day values (in no day, as documented); ctid ranges (page 0 to an open
end, every tuple id once, over each relation the day reads) and time slices (open at both ends, so with the day's
filter they cover it exactly whatever the cut; a zero-length first occurrence of a repeated hour stays empty),
probed with a timestamptz day in Asia/Kolkata, a timestamp(0) day in America/New_York and a domain over timestamptz,
each at three slices, deep-verified; the spools and the archive file (nameless, closed however the group ends), the
stream group's cancel and interrupt handling, the CSV header written once; hold_day's checks against the relation
cache; a materialized view never populated (refused, permanent, naming table and day and PostgreSQL's REFRESH hint).
"""

from __future__ import annotations

import datetime as dt
import re

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.test_hunt10_pj import loopback  # noqa: F401 - the fixture

DAY = dt.date(2024, 3, 10)


def _noinherit_member(conn, schema: str) -> tuple[str, str]:
    """``<schema>_lg``, a LOGIN role NOINHERIT, member of ``<schema>_rd`` (no login): privileges come with SET ROLE
    only (a common least-privilege setup); (login role, role to switch to)."""
    lg, rd = f"{schema}_lg", f"{schema}_rd"
    conn.execute(sql.SQL("CREATE ROLE {rd}; CREATE ROLE {lg} LOGIN NOINHERIT; GRANT {rd} TO {lg}").format(
        rd=sql.Identifier(rd), lg=sql.Identifier(lg)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(rd)))
    return lg, rd


def _drop_roles(conn, *roles: str) -> None:
    for role in roles:
        conn.execute(sql.SQL("DROP OWNED BY {r}; DROP ROLE {r}").format(r=sql.Identifier(role)))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_not_null_column_of_a_foreign_partition_holding_a_null_is_archived_as_not_null(
        fmt, conn, schema, store, temp_dir, loopback):  # noqa: F811 - the fixture
    """Scenario: ``pt (id int, at date, v text NOT NULL) PARTITION BY RANGE (at)``, whose 2024-03-10 partition is a
    postgres_fdw foreign table (a sharded layout) over a remote table that holds ``(1, day, NULL)`` and
    ``(2, day, 'x')``: PostgreSQL does not enforce a foreign table's NOT NULL on the remote rows (its documentation
    says so), and ``SELECT * FROM pt`` returns the NULL. The day is archived (declarative), then restored into a
    new table.

    Now: source._COLUMNS_QUERY trusts ``attnotnull`` for a partitioned table ("a partitioned table's holds for its
    partitions") and for inheritance children that all have it set -- a foreign partition or child has it set, and
    keeps nothing out. So Column.not_null is True: Parquet makes ``v`` a non-nullable field and the day fails as
    "an unexpected error (ArrowInvalid: Column 'v' is declared non-nullable but contains nulls); not retried ...
    to fix: read the message"; JSONL archives it green (deep verification passes) and records ``v`` as not_null in
    table_definition, so ``restore --into new`` fails with NotNullViolation and the remedy "load into a table
    without that constraint (a new table, ...)", which is what it did. The hunt17 wa fix of the same trap covered
    NOT NULL set ONLY on an inheritance parent, not a foreign member.

    Should: the day archives exactly and restores into a new table in every format (a column is recorded NOT NULL,
    and Parquet's field non-nullable, only where every relation the read covers enforces it: no foreign table
    among them), or is refused up front by a typed error naming table, day, column ``v`` and the cause. Fix idea:
    in _COLUMNS_QUERY, count a foreign table (the configured one, a partition or an inheritance child at any depth)
    as not keeping NULLs out."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.far_src (id int, at date, v text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.far_src VALUES (1, %s, NULL), (2, %s, 'x')").format(s), (DAY, DAY))
    conn.execute(sql.SQL("CREATE TABLE {}.pt (id int, at date, v text NOT NULL) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE FOREIGN TABLE {}.pt_20240310 PARTITION OF {}.pt FOR VALUES FROM ({}) TO ({}) "
                         "SERVER {} OPTIONS (schema_name {}, table_name 'far_src')").format(
        s, s, sql.Literal(DAY.isoformat()), sql.Literal((DAY + dt.timedelta(days=1)).isoformat()), loopback,
        sql.Literal(schema)))
    # (the NULL as a read of the table returns it; a "WHERE v IS NULL" would be excluded by the declared NOT NULL)
    assert conn.execute(sql.SQL("SELECT array_agg(v ORDER BY id) FROM {}.pt").format(s)).fetchone()[0] == [None, "x"]
    spec = TableSpec(name=f"{schema}.pt", day_column="at", start_date="2024-03-01", format=fmt,
                     partitioning={"mode": "declarative"})
    try:
        archived = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        said = f"{exc} {exc.remedy or ''}"
        assert "unexpected error" not in said and "ArrowInvalid" not in said, said
        assert "'v'" in said and DAY.isoformat() in said, said
        return
    assert archived.rows == 2
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.pt_back", temp_dir=temp_dir)
    assert (restored.rows, restored.fingerprint_checked) == (2, True)


@pytest.mark.parametrize(("fmt", "streams"), [("csv", 2), ("parquet", 1)])
def test_sessions_opened_beside_the_callers_ignore_its_set_role(fmt, streams, pg, conn, schema, store, temp_dir):
    """Scenario: a caller's connection logs in as ``lg`` (NOINHERIT, member of ``rd``) and runs ``SET ROLE rd``;
    ``rd`` may read the table, ``lg`` itself may not. The same connection archives the day as CSV with one stream
    (green, 500 rows), as CSV with ``parallel_streams: 2`` (ctid ranges over ~20 pages), and as Parquet.

    Now: every session the archive opens beside the caller's logs in afresh from its connection string
    (parallel.dsn_of / open_snapshot_sessions for the text streams and a fingerprint alongside,
    Parquet._open_reader for the ADBC reader), as the login role, and the caller's current role is not carried
    over (only its search_path is, by session_settings.resolved). Those sessions are ``lg`` without ``rd``'s
    privileges: the day fails, not retried, with "permission denied (... permission denied for schema ...) ...
    to fix: GRANT SELECT ON <schema>.ev TO <schema>_lg (and GRANT USAGE ON SCHEMA)", while one text stream on the
    same connection archives it. A user who switches the table to Parquet, or raises parallel_streams, loses the
    table, and is told to grant privileges to a role that must not hold them.

    Should: every session of the day reads as the caller's current role, so the format and the number of streams
    change nothing of what may be read (or, if that cannot be, the day reads with the caller's own session and one
    stream, saying why). Fix idea: where ``current_user`` differs from ``session_user``, open the other sessions with
    ``SET ROLE`` to it (in dsn_of's options, ``-c role=...``, or a SET after connecting), as the search path is
    carried."""
    s = sql.Identifier(schema)
    lg, rd = _noinherit_member(conn, schema)
    try:
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date) WITH (fillfactor = 10)").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s FROM generate_series(1, 500) g").format(s), (DAY,))
        conn.execute(sql.SQL("GRANT SELECT ON {}.ev TO {}").format(s, sql.Identifier(rd)))
        one = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="csv")
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format=fmt,
                         parallel_streams=streams, key_template="{prefix}/{schema}.{table}/other/{date}.{ext}")
        with psycopg.connect(pg.dsn_for(lg), autocommit=True) as caller:
            caller.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(rd)))
            assert archive_partition(caller, one, DAY, store, temp_dir=temp_dir).rows == 500  # (the premise)
            try:
                result = archive_partition(caller, spec, DAY, store, temp_dir=temp_dir)
            except ArchiveError as exc:
                pytest.fail(f"{fmt}, {streams} stream(s): {exc} / remedy: {exc.remedy}")
        assert result.rows == 500
        if streams > 1:
            assert result.streams.startswith(f"{streams} stream(s)"), result.streams
    finally:
        _drop_roles(conn, lg, rd)


def test_a_select_refused_under_set_role_names_the_login_role_and_its_grant_changes_nothing(
        pg, conn, schema, store, temp_dir):
    """Scenario: the caller's connection logs in as ``lg`` (NOINHERIT, member of ``rd``) and runs ``SET ROLE rd``
    (the role the archive is meant to read as); neither may read ``ev`` yet. The archive of 2024-03-10 is refused;
    the DBA runs the GRANT the refusal names and archives again.

    Now: source.describe_relation checks ``has_table_privilege`` for the current role (``rd``) but words the
    refusal and its remedy with ``conn.info.user``, the login role: "role '<schema>_lg' may not SELECT from ...;
    to fix: GRANT SELECT ON <schema>.ev TO <schema>_lg". That GRANT gives ``lg`` a privilege the archive never
    uses (it reads as ``rd``), and the second run is refused with the very same message: the remedy loops.

    Should: the refusal names the role whose privileges were checked (``current_user``, here ``rd``), so running
    its GRANT lets the next archive read the day. Fix idea: read ``current_user`` in describe_relation (and in
    source.wrapped's ``user=`` for the remedies errors.wrap builds) instead of ``conn.info.user``."""
    s = sql.Identifier(schema)
    lg, rd = _noinherit_member(conn, schema)
    try:
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s FROM generate_series(1, 5) g").format(s), (DAY,))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="csv")
        with psycopg.connect(pg.dsn_for(lg), autocommit=True) as caller:
            caller.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(rd)))
            with pytest.raises(ArchiveError) as refused:
                archive_partition(caller, spec, DAY, store, temp_dir=temp_dir)
            grant = re.search(r"GRANT SELECT ON \S+ TO \S+", refused.value.remedy or "")
            assert grant, f"{refused.value} / remedy: {refused.value.remedy}"
            conn.execute(grant.group(0))  # as the table's owner, as the remedy says
            try:
                result = archive_partition(caller, spec, DAY, store, temp_dir=temp_dir)
            except ArchiveError as exc:
                pytest.fail(f"after {grant.group(0)!r} (the first refusal's remedy), refused again: {exc}")
        assert result.rows == 5
    finally:
        _drop_roles(conn, lg, rd)


def test_deep_verification_under_set_role_fingerprints_the_source_as_the_callers_role(pg, conn, schema, store,
                                                                                    temp_dir):
    """Scenario: as in the SET ROLE tests above, the caller logs in as ``lg`` (NOINHERIT) and switches to ``rd``,
    the only role that may read ``ev``; the day is archived, then proven by deep verification on the same
    connection (scratch tables in the caller's own session, so the source's fingerprint is taken in a second one).

    Now (before the fix): verify's _SourceFingerprint opened that session from the connection string as ``lg``,
    without the caller's SET ROLE: the proof failed on "permission denied" for a day every other step reads.

    Should: the second session acts as the caller's role (session_settings.act_as), and the day is proven."""
    from archive_pipeline.core.verify import deep_verify

    s = sql.Identifier(schema)
    lg, rd = _noinherit_member(conn, schema)
    try:
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s FROM generate_series(1, 50) g").format(s), (DAY,))
        conn.execute(sql.SQL("GRANT SELECT ON {}.ev TO {}").format(s, sql.Identifier(rd)))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl")
        with psycopg.connect(pg.dsn_for(lg), autocommit=True) as caller:
            caller.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(rd)))
            assert archive_partition(caller, spec, DAY, store, temp_dir=temp_dir).rows == 50
            assert deep_verify(caller, store, spec, DAY, temp_dir=temp_dir) == []
    finally:
        _drop_roles(conn, lg, rd)
