"""Hunt 26 (en): a line-by-line review of the last merges on integ (fix-ee's restore while the application writes,
fix-ef's cancellation and store wording, the lead's dry run of a period not over). Real PostgreSQL and S3 over HTTP.

Each test is a bug found: it fails now and passes once the product is fixed."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from psycopg import sql

from archive_pipeline.core import plan
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_hunt6_lu import server_speaking
from archive_pipeline_tests.test_hunt26_ee import DAY, _count, _events
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config


@pytest.fixture(scope="module", params=["ja", "fr"])
def speaking(request):
    """A server whose messages are Japanese, then one whose messages are French (lc_messages = 'ja_JP.UTF-8',
    'fr_FR.UTF-8': see test_hunt6_lu.server_speaking)."""
    with server_speaking(request.param) as server:
        yield request.param, server


def test_a_row_wait_on_a_japanese_or_french_server_is_still_told_as_a_table_lock_on_the_target(
        speaking, store, temp_dir):
    """Scenario: the source server's messages are Japanese (or French): lc_messages = 'ja_JP.UTF-8', what initdb
    gives a server installed in Japan. 2024-03-10 of ev (24 rows, ids 24..47) is archived and deleted; the user runs
    ``restore --day 2024-03-10 --into original`` (lock_timeout 1 s here) while the application, in an open
    transaction, has inserted a late row of the day whose key (24, 2024-03-10 00:00) is an archived row's. The
    restore's COPY waits for that transaction's row in ev_0310_pkey, and lock_timeout fires.

    Now: fix-ee's errors.waited_row, which "reads PostgreSQL's CONTEXT by its shape (any lc_messages)", only knows
    the shape of some translations: the regex _WAITED_ROW wants "(tid)" first and the quoted relation ending the
    line. Japanese prints the relation first ('リレーション"ev_0310_pkey"のインデックスタプル(0,1)の挿入中'),
    French writes the tuple id with a space ("l'enregistrement (0, 1) de l'index dans la relation « ev_0310_pkey »"),
    Korean without parentheses, Ukrainian with an apostrophe before the quote. No match, so restore._target_locked
    tells the row's wait as before fix-ee: "another session holds a conflicting lock on the target ... ALTER TABLE,
    TRUNCATE, VACUUM FULL ...", with a pg_locks query that shows no conflict; the row and ev_0310_pkey go unnamed.

    Should: the same words in every language, as on an English or German server: the restore waited for a row of
    the same key another session's open transaction wrote, in ev_0310_pkey, with the remedy to wait for that
    transaction. Fix idea: find the tuple id and the relation in the CONTEXT line in either order and with any
    spacing ("\\(\\s*\\d+\\s*,\\s*\\d+\\s*\\)" or none, the relation in any quotes), or better ask the server instead of
    its words: pg_blocking_pids / pg_locks of locktype 'transactionid' for the restore's backend while it waits,
    or the DETAIL/CONTEXT's relation name looked up in pg_class."""
    language, server = speaking
    with server.connect() as conn:
        schema = f"en_{language}_{conn.info.backend_pid}"
        s = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(s))
        try:
            spec = _events(conn, schema)
            assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 24
            conn.execute(sql.SQL("DELETE FROM {}.ev_0310").format(s))
            conn.execute("SET lock_timeout = '1s'")
            with server.connect() as application:
                application.autocommit = False
                application.execute(sql.SQL("INSERT INTO {}.ev VALUES (24, '2024-03-10 00:00+00', 'r24')").format(s))
                try:
                    with pytest.raises(ArchiveError) as caught:
                        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
                finally:
                    application.rollback()
            conn.execute("RESET lock_timeout")
            assert _count(conn, schema, "ev_0310") == 0  # (nothing written)
            error = caught.value
            context = getattr(error.__cause__, "diag", None)
            told = f"{error.cause} | {error.remedy}"
            assert "row" in str(error.cause) and "ev_0310_pkey" in told, (told, context and context.context)
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s))


def test_the_dry_run_of_a_day_without_rows_that_the_database_says_is_not_over_plans_refuse_where_the_run_says_no_data(
        pg, s3, bucket, conn, schema, tmp_path, monkeypatch):
    """Scenario: the host running the command line is a few minutes ahead of the database server (no NTP on one of
    them): just after midnight by the host's clock, the nightly job runs ``archive --day <yesterday> --dry-run``
    and then ``archive --day <yesterday>`` for a table that had no rows that day. By the database's clock that day
    is not over yet. (Here the host's clock is made to run past the end of the database's today by wrapping
    plan.select_days, the command line's "is it over" by the host's clock; the database's clock is real.)

    Now: the lead's last commit (65e3e94) made plan.plan_archive check periods.not_over for every day before
    plan_day, so a day the source has no rows of is planned ``refuse`` ("the day is not over yet by the database's
    clock ...; the run refuses it (retryable)"), and the dry run counts it among the refused. The run does not
    refuse it: cli._archive_table reports a day without rows ``no-data`` (exit 0) before any archiver call, as the
    README says: "A day the source has no rows of is `no-data` (nothing written)". Before 65e3e94 the dry run said
    ``no-data`` too. The dry run, which "decides with the archiver's own rule", no longer says what the run does.

    Should: the dry run plans what the run does for such a day: ``no-data`` (or both refuse it alike). Fix idea: in
    plan_archive, apply not_over only to days the run would pass to the archiver (``day in in_source``, i.e. after
    plan_day would plan archive/overwrite/skip), or make cli._archive_table refuse the same days."""
    today = utc_today()
    first = today - dt.timedelta(days=3)
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(table), (f"{first} 12:00+00",))
    config = write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": first.isoformat()}])
    env = make_env(pg, s3.endpoint_url, bucket, config)
    select_days = plan.select_days
    host_now = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0, 5), dt.UTC)  # the host's clock, ahead

    def on_the_hosts_clock(spec, first, last, today=None, now=None):
        return select_days(spec, first, last, today=today, now=now or host_now)

    monkeypatch.setattr(plan, "select_days", on_the_hosts_clock)
    planned = cli(env, "archive", "--day", today.isoformat(), "--dry-run", "--json")
    ran = cli(env, "archive", "--day", today.isoformat(), "--json")
    assert [d["status"] for d in json.loads(ran.stdout)["days"]] == ["no-data"], ran.stderr  # (the run: no-data)
    assert [d["action"] for d in json.loads(planned.stdout)["days"]] == ["no-data"], planned.stdout


def test_a_removal_waiting_for_an_application_row_of_the_day_is_told_as_a_table_lock(pg, conn, schema, store,
                                                                                      temp_dir):
    """Scenario: ev is partitioned by day, retention ``delete``; 2024-03-10 (24 rows, in ev_0310) is archived. The
    user runs ``prune`` (lock_timeout 1 s here; the command line sets source.lock_timeout_ms) while the application,
    in an open transaction, has updated one row of that day (a late correction; or a child table's insert holding
    FOR KEY SHARE on the row it references, or a SELECT ... FOR UPDATE). The removal's DELETE waits for that
    transaction's row, and lock_timeout fires.

    Now: fix-ee taught the restore to tell a row's wait (errors.waited_row, restore._row_locked) from a table's lock;
    the removal, the sibling that deletes the same rows, still words every LockNotAvailable with errors._LOCK_TIMEOUT:
    "lock_timeout: another session holds a conflicting lock on the table (ALTER TABLE, TRUNCATE, VACUUM FULL,
    REINDEX, LOCK ...)", though PostgreSQL's CONTEXT says 'while deleting tuple (0,7) in relation "ev_0310"' and no
    table lock conflicts: the operator looks for a DDL that does not exist, and the application transaction holding
    a row of a day about to be removed (which the next prune deletes under it) goes unnamed.

    Should: the removal's error says it waited for a row of ev_0310 that another session's open transaction holds
    (updated, deleted or locked), naming the relation, and to let that transaction end (pg_blocking_pids) before
    removing again; nothing removed. Fix idea: in lifecycle.remove_day's psycopg.Error branch (or source.wrapped for
    every step), use errors.waited_row as restore._target_locked does, with the removal's words."""
    s = sql.Identifier(schema)
    _events(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"}, format="csv",
                     retention={"keep_days": 30, "action": "delete"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 24
    conn.execute("SET lock_timeout = '1s'")
    with pg.connect() as application:
        application.autocommit = False
        # (a row locked, not updated: an UPDATE's ROW EXCLUSIVE makes the removal wait at its LOCK TABLE ... SHARE ROW
        # EXCLUSIVE, a table's lock, before any DELETE; FOR UPDATE's ROW SHARE does not, and the DELETE waits for the row)
        application.execute(sql.SQL("SELECT FROM {}.ev WHERE id = 30 FOR UPDATE").format(s))
        try:
            with pytest.raises(ArchiveError) as caught:
                remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
        finally:
            application.rollback()
    conn.execute("RESET lock_timeout")
    assert _count(conn, schema, "ev_0310") == 24  # (nothing removed)
    error = caught.value
    told = f"{error.cause} | {error.remedy}"
    assert "ALTER TABLE, TRUNCATE" not in str(error.cause), told
    assert "row" in str(error.cause) and "ev_0310" in told, told


@pytest.mark.parametrize("line", [
    'while deleting tuple (0,7) in relation "ev_0310"',  # English, and Italian, Russian, Swedish, Ukrainian's quotes
    "beim Löschen von Tupel (0,7) in Relation »ev_0310«",
    "mientras se borraba la tupla (0,7) en la relación «ev_0310»",
    "lors de l'insertion de l'enregistrement (0, 7) de l'index dans la relation « ev_0310 »",
    'リレーション"ev_0310"のタプル(0,7)の削除中',
    '当删除关系"ev_0310"的元组(0, 7)时',
    '0,7 튜플(해당 릴레이션 "ev_0310")을 삭제하는 중에 발생',
    'при вставці кортежу індексу (0,7) в зв\'язку "ev_0310"',
])
def test_a_rows_wait_is_read_from_the_context_in_every_language_postgresql_translates_it_to(line):
    """The class of the Japanese/French test above without a server: each translation's shape of XactLockTableWait's
    CONTEXT line (PostgreSQL 15's catalogs) gives the same tuple id and relation; COPY's line after it is not read,
    nor a first line whose tuple id is inside its quotes (a statement's text)."""
    from archive_pipeline.core.errors import waited_row

    class Failed(Exception):
        def __init__(self, context):
            super().__init__("lock timeout")
            self.diag = type("Diag", (), {"context": context})()

    assert waited_row(Failed(f"{line}\nCOPY ev, line 1")) == ("0,7", "ev_0310")
    assert waited_row(Failed('SQL statement "DELETE FROM t WHERE (a, b) = (0,7)"\nCOPY ev, line 1')) is None
    assert waited_row(Failed(f'COPY ev, line 1\n{line}')) is None
