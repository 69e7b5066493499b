"""Hunt 22 (ap): suspicions left unconfirmed by the last session's reviews (store conditions and ETags, upload
listings by prefix, verify over nothing, a pending removal mark, the no-data plan of a lost archive, ranged Dagster
retries, the role a remedy names under SET ROLE).

Held up (probed, not kept as tests): a day whose object is damaged and whose source still holds its rows is
planned "overwrite" by the dry run, and the real run (without --overwrite) does write a new generation: the label
is honest. Upload listings by a key prefix (``<key>.csv`` also lists ``<key>.csv.gz``): every abort filters by the
exact key (settle_stale_uploads) or a full match of the day's generation patterns (abort_stale_uploads_under);
another key's upload only keeps the marker for the next run. A weak ``W/"..."`` ETag: etag_text compares by its
opaque value (right), though etag_in marks the store as answering unquoted ETags; moto (and S3) take an If-Match
with or without quotes, so no wrong answer follows here. Read, not turned into a test: a 400 naming a conditional
header turns conditions off for the store object (store.unconditional_after) and writes unconditionally; harmful
only with a concurrent writer and a store that answers a condition's conflict as a 400, which no store named in the
code does. A ranged Dagster run with retries off: failure() words the cause with Retries.words and Retries.final
drops allow_retries; the ``retryable`` metadata keeps saying the cause was transient, as documented.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.test_cli import cli, days, setup  # noqa: F401 - fixtures
from archive_pipeline_tests.test_hunt21_ad import _drop_roles, _noinherit_member

DAY = dt.date(2024, 3, 10)


def test_verify_of_a_mistyped_prefix_holding_nothing_exits_0_while_list_calls_every_day_missing(setup, days):
    """Scenario: the command line archives the table's three days (prefix ``cli``). The operator's cron job then
    runs ``verify`` with a mistyped ARCHIVE_S3_PREFIX (``clix``: a new environment file, a copy-paste slip), under
    which nothing is archived; the source still holds all three days.

    Now: verify (cli.py) skips every day whose lookup finds no manifest (``archived is None: continue``), and its
    "nothing was verified" refusal fires only with a --day or a range (``nothing = not results and bool(run.first
    or run.last)``): it prints "0 archived day(s) checked, 0 with problems" and exits 0 (``{"ok": true}``), while
    ``list`` with the same settings says "3 missing". A green verify over nothing: the monitoring that runs it never
    learns that the archive it checks is not there.

    Should: a verify that checked no archived day at all, while the selection holds days the source has rows of
    (list's "missing"), is not a pass: exit 1 with "nothing was verified: no day in the selection is archived
    (N day(s) with rows in PostgreSQL are missing; see `list`)", as --day D already does."""
    env, _ = setup
    assert cli(env, "archive").returncode == 0
    mistyped = dict(env, ARCHIVE_S3_PREFIX=env["ARCHIVE_S3_PREFIX"] + "x")
    listed = cli(mistyped, "list")
    assert "3 missing" in listed.stdout, listed.stdout + listed.stderr  # (the premise)
    verified = cli(mistyped, "verify")
    assert verified.returncode != 0, (f"verify exited 0 over nothing archived: {verified.stdout.strip()!r}; "
                                      f"list says: {listed.stdout.strip().splitlines()[-1]!r}")


def test_archive_says_a_day_emptied_at_the_source_keeps_its_archive_when_the_archive_object_is_lost(
        setup, days, conn, s3_client, bucket):
    """Scenario: the command line archives three days (300 rows each). The first day's data object is then lost
    from the bucket (a lifecycle rule, a mistaken delete; its manifest stays) and the day's rows are deleted from
    the source (the owner trusts the archive). ``archive`` runs again (the cron job), then ``restore`` as told.

    Now: the dry run and the run plan the day "no-data" (plan._plan_day: not in_source), and cli._dropped_by_hand
    words it from the manifest alone: "no data for this day in PostgreSQL, but its archive holds 300 rows ... the
    archive is kept as it is (`archive-pipeline restore ... --into original` puts the rows back ...)", exit 0. The
    archive holds nothing: its object is missing (verify says so), so the 300 rows exist nowhere, and the restore
    it advises cannot work. The one run that looks at the day says all is well.

    Should: a no-data day whose archive records rows has its object checked (a HEAD, as verify's light check does)
    before it is called kept; a missing or damaged object makes the day a failure (exit 1) naming the object and
    that the rows are now in neither place (restore the object from the bucket's versions or a replica)."""
    env, spec = setup
    assert cli(env, "archive").returncode == 0
    key = keys.table_day_key(spec, spec.period(days[0]), env["ARCHIVE_S3_PREFIX"])
    s3_client.delete_object(Bucket=bucket, Key=key)
    conn.execute(sql.SQL("DELETE FROM {} WHERE created_at >= %s AND created_at < %s").format(
        sql.Identifier(*spec.name.split("."))), (days[0], days[1]))
    done = cli(env, "archive", "--json")
    answer = json.loads(done.stdout)
    said = next(d for d in answer["days"] if d["day"] == days[0].isoformat())
    told = json.dumps(said)
    assert done.returncode != 0 and "missing" in told, (
        f"archive exited {done.returncode} and said of the day whose archive object is lost: {told}")


def test_a_read_only_login_role_under_set_role_is_told_to_reset_the_acting_roles_setting(pg, conn, schema, store,
                                                                                        temp_dir):
    """Scenario: the caller logs in as ``lg`` (NOINHERIT, member of ``rd``) and runs ``SET ROLE rd``, as in
    hunt21_ad/ai; a DBA set ``ALTER ROLE lg SET default_transaction_read_only = on`` (a reporting login). The day is
    archived (a read), then restored into a new table: refused as a read-only session. The DBA runs the statement
    the remedy names and the restore is run again on a new session.

    Now: restore classifies the error with ``user=acting_role(conn)`` (current_user, ``rd``), and errors.classify
    fills every ``<role>`` of the remedy with it: "ALTER ROLE <schema>_rd RESET default_transaction_read_only". A
    role's settings are applied at login, for the login role (session_user); SET ROLE applies none of them, so the
    statement changes nothing and the second restore is refused with the very same message. The same wrong role is
    named by every login-time remedy (CONNECTION LIMIT, VALID UNTIL, LOGIN, ALTER ROLE ... SET statement_timeout /
    idle_session_timeout / max_stack_depth).

    Should: GRANT remedies name the acting role (what PostgreSQL checks privileges of), ALTER ROLE ... SET / RESET,
    CONNECTION LIMIT, VALID UNTIL and LOGIN remedies the login role (session_user, conn.info.user). Fix idea: two
    placeholders in errors.py (``<role>`` for privileges, ``<login role>`` for the rest), filled separately."""
    s = sql.Identifier(schema)
    lg, rd = _noinherit_member(conn, schema)
    try:
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s FROM generate_series(1, 5) g").format(s), (DAY,))
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON {}.ev TO {}").format(s, sql.Identifier(rd)))
        conn.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA {} TO {}").format(s, sql.Identifier(rd)))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="csv")
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(lg)))

        def restored_as_rd():
            with psycopg.connect(pg.dsn_for(lg), autocommit=True) as caller:
                caller.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(rd)))
                if not restored:
                    assert archive_partition(caller, spec, DAY, store, temp_dir=temp_dir).rows == 5
                return restore_day(caller, store, spec, DAY, into="new", target=f"{schema}.ev_back",
                                   temp_dir=temp_dir)

        restored: list = []
        with pytest.raises(ArchiveError) as refused:
            restored_as_rd()
        restored.append(True)
        remedy = refused.value.remedy or ""
        assert "RESET default_transaction_read_only" in remedy, remedy  # (the premise: the refusal's remedy)
        statement = re.search(r"ALTER ROLE \S+ RESET default_transaction_read_only", remedy).group(0)
        conn.execute(statement)  # as the DBA, as the remedy says
        try:
            result = restored_as_rd()
        except ArchiveError as exc:
            pytest.fail(f"after {statement!r} (the first refusal's remedy), refused again: {exc}")
        assert result.rows == 5
    finally:
        _drop_roles(conn, lg, rd)
