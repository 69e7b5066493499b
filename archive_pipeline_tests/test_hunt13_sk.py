"""Hunt 13 (SK): review of the newest product commits (restore's key look-up, widening, on_conflict='skip'
on partition trees, CLI endpoint/session/dry-run changes, put-back statement)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import RestoreError, restore_day
from archive_pipeline_tests.test_cli import cli, days, setup  # noqa: F401 - fixtures

DAY = dt.date(2024, 3, 10)


def _count(conn, schema: str, name: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]


def test_a_char_n_key_the_target_still_holds_is_not_called_archived_rows_colliding_among_themselves(
        conn, schema, store, temp_dir):
    """The source table's primary key is a character(8) code ('ab', 'cd', 'ef': shorter than 8, so stored
    blank-padded). After 2024-03-10 was archived, two of its three rows were deleted by mistake; the user
    restores the day into the original table, where row 'ab' is still there.

    Now: the load hits the primary key on 'ab'; _unique_violation asks _holds_key whether the target holds
    that key, which compares ``code::text = 'ab      '`` (the detail's value is bpchar's blank-padded output,
    while char(n)::text strips the blanks): no match, so the error says "<table> held no row of that key,
    and the archived rows break its constraint events_pkey among themselves ..., a constraint the archived
    table did not have" with the remedy to drop the constraint. All false: the table holds that very row,
    and the archived table had that key.

    Should: say rows of the archive already exist in the table (the key is there), as before the look-up
    was added. Fix idea: look the key up by the column's own equality (``col = 'value'::coltype``, IS NULL
    for a NULLS NOT DISTINCT null), not by text; the same text comparison misses numeric 1.0 vs 1.00,
    float -0 vs 0 and a NULLS NOT DISTINCT key's "null"."""
    t = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (code character(8) PRIMARY KEY, at timestamptz NOT NULL, v text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('ab', '2024-03-10 01:00+00', 'x'), ('cd', '2024-03-10 02:00+00', 'y'), "
                         "('ef', '2024-03-10 03:00+00', 'z'), ('gh', '2024-03-11 01:00+00', 'next')").format(t))
    spec = TableSpec(name=f"{schema}.events", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE code IN ('cd', 'ef')").format(t))
    with pytest.raises(RestoreError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert _count(conn, schema, "events") == 2  # as it was
    said = f"{caught.value} {caught.value.remedy or ''}"
    assert "among themselves" not in said and "held no row" not in said, said
    assert "already exist" in said, said


def test_a_second_store_in_one_process_signs_with_the_credentials_of_the_environment_now(monkeypatch):
    """No ARCHIVE_S3_ACCESS_KEY_ID: the keys come from boto3's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
    AWS_SESSION_TOKEN, rotated by a sidecar, or a test runner's commands in one process). 48f8117 gave the S3
    client a boto3 session of its own for exactly this; 23d96f7 went back to ``boto3.client(...)`` (boto3's
    process-wide DEFAULT_SESSION) and made test_hunt12_ry reset that session instead.

    Now: the first store_from_env creates the default session, which resolves the chain's credentials once and
    keeps them: a second store built after the keys were rotated still signs with the first (expired) keys,
    every request refused until the process restarts.

    Should: each store built from the environment signs with the credentials the environment holds when it is
    built. Fix idea: ``boto3.session.Session().client(...)`` again (as 48f8117 had it)."""
    import boto3

    from archive_pipeline.core.environment import store_from_env

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "ARCHIVE_S3_ACCESS_KEY_ID", "ARCHIVE_S3_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    env = {"ARCHIVE_S3_BUCKET": "sk-bucket", "ARCHIVE_S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFIRSTKEY0000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    first = store_from_env(env, check=False)
    assert first.client._request_signer._credentials.access_key == "AKIAFIRSTKEY0000000"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASECONDKEY000000")  # rotated
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "second-secret")
    second = store_from_env(env, check=False)
    assert second.client._request_signer._credentials.access_key == "AKIASECONDKEY000000"


def test_a_failover_with_one_host_read_only_and_the_other_down_is_not_called_a_target_session_attrs_mistake(pg):
    """An HA connection string as libpq documents it: ``host=a,b target_session_attrs=read-write``. During a
    failover the old primary is read-only (demoted, or default_transaction_read_only while it is fenced) and
    the new one does not accept connections yet: libpq answers 'connection to server at a failed: session is
    read-only' + 'connection to server at b failed: Connection refused'.

    Now: the new _SESSION_ATTRS pattern is matched before _CONNECT_FAILED, so the whole error is classified as
    "the server reached is not the kind the connection string's target_session_attrs asks for", not retryable,
    with the remedy to check target_session_attrs: the run fails at once instead of being retried, and the
    remedy sends the user to a setting that is right (before 23d96f7: connect failed, retryable).

    Should: a host that did not answer at all is the cause to report (retryable, as a refused connection is);
    the target_session_attrs cause only when every host answered and none was the kind asked for.
    Fix idea: match _SESSION_ATTRS only when no per-host line of libpq's message is a connect failure."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from archive_pipeline.core import errors

    params = conninfo_to_dict(pg.dsn)
    host = params.get("host") or "127.0.0.1"
    dsn = make_conninfo(**{**params, "host": f"{host},127.0.0.1", "port": f"{params.get('port', 5432)},9",
                           "target_session_attrs": "read-write", "connect_timeout": "5",
                           "options": "-c default_transaction_read_only=on"})
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(dsn).close()
    text = str(caught.value)
    assert "read-only" in text and "refused" in text.lower(), text  # (the premise: both hosts' failures)
    found = errors.classify(caught.value)
    assert found.retryable, (found.cause, found.remedy)
    assert "target_session_attrs" not in found.cause, found.cause


def test_archive_dry_run_does_not_plan_days_the_real_run_stops_before(setup, days, schema, s3_client, bucket):
    """Two configured tables, the FIRST missing from the database (dropped, or a typo), the second fine.
    23d96f7 made `archive --dry-run` plan the other tables "as the real run archives them".

    Now: the dry run plans the second table's day as `archive` ("1 day(s) to archive", its key and estimate),
    beside the first table's "not planned" error. The real `archive` with the same arguments raises the first
    table's error before anything was done (``if not results: raise``) and never reaches the second table:
    nothing archived, exit 2. The preview promises a write the command does not make (the README: `--dry-run`
    "decides with the archiver's own rule").

    Should: the dry run's plan and the real run agree: either the real run goes on to the other tables when
    the first cannot be read (as the dry run now assumes, and as it does when the failing table comes second),
    or the dry run says those tables would not be reached. Fix idea: archive's loop records the table's error
    (_table_failed) whatever its position, stopping with exit 2 at the end."""
    import json

    from pathlib import Path

    import yaml

    env, spec = setup
    config = Path(env["ARCHIVE_PIPELINE_CONFIG"])
    raw = yaml.safe_load(config.read_text())
    raw["tables"].insert(0, {**raw["tables"][0], "name": f"{schema}.gone", "partitioning": {"mode": "column"}})
    config.write_text(yaml.safe_dump(raw))
    day = days[0].isoformat()
    dry = cli(env, "archive", "--dry-run", "--day", day, "--json")
    planned = sorted((d["table"], d["day"]) for d in json.loads(dry.stdout).get("days", [])
                     if d.get("action") in ("archive", "overwrite"))
    real = cli(env, "archive", "--day", day, "--json")
    try:
        answer = json.loads(real.stdout)
    except ValueError:
        answer = {}
    archived = sorted((d["table"], d["day"]) for d in answer.get("days", []) if d.get("status") == "archived")
    assert planned == archived, (planned, archived, dry.stdout, real.stdout, real.stderr)


def test_skip_into_a_partitioned_table_whose_days_partition_has_no_key_is_refused_as_keyless(conn, schema, store,
                                                                                              temp_dir):
    """A table partitioned by day with keys declared per partition (9d0cbe4 counts those for on_conflict='skip'),
    but only on SOME partitions: the newer ones got PRIMARY KEY (id) when the application started declaring it,
    the day's older partition ev_0310 never did. The day lost three of its five rows; the user restores it into
    the original table with on_conflict='skip'.

    Now: _require_key finds a unique index anywhere in pg_partition_tree (ev_0311's) and lets the restore go on;
    the rows routed to ev_0310 have no arbiter, so all five are inserted again, the check counts 7 and rolls
    back with "the target already held 2 row(s) of the day ... delete the day's rows ... and restore again":
    skip's promise (add only the missing rows) silently does not apply, and the user is told to delete rows
    instead of being told the day's partition has no key (the refusal before 9d0cbe4).

    Should: refused up front as before, naming the partition the day goes to as having no primary key or unique
    constraint (remedy: add one to that partition, or restore into a new table). Fix idea: in _require_key,
    require a unique index (or exclusion constraint) on every leaf partition the day's rows can route to
    (at least the one holding the day), not on any relation of the tree."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int NOT NULL, at timestamptz NOT NULL, v text) "
                         "PARTITION BY RANGE (at)").format(s))
    for name, lo, hi in (("ev_0310", "2024-03-10", "2024-03-11"), ("ev_0311", "2024-03-11", "2024-03-12")):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(name), s, sql.Literal(f"{lo} 00:00+00"), sql.Literal(f"{hi} 00:00+00")))
    conn.execute(sql.SQL("ALTER TABLE {}.ev_0311 ADD PRIMARY KEY (id)").format(s))  # the newer partition only
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00'::timestamptz + g * interval '1 second', "
                         "'v' || g FROM generate_series(1, 5) g").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {}.ev WHERE id > 2").format(s))
    with pytest.raises(RestoreError) as caught:
        restore_day(conn, store, spec, DAY, into="original", on_conflict="skip", temp_dir=temp_dir)
    assert _count(conn, schema, "ev") == 2  # as it was
    said = f"{caught.value} {caught.value.remedy or ''}"
    assert "already held" not in said, said
    assert "primary key or unique" in said and "ev_0310" in said, said


def test_a_range_restore_follows_a_numeric_column_widened_between_the_days(conn, schema, store, temp_dir):
    """9d0cbe4: a restore's own table for a range follows a column widened in the source between the days
    (_widens: integer widths, a longer varchar, varchar to text). The source's amount numeric(8,2) was widened to
    numeric(12,2) after 2024-03-10 (ALTER COLUMN ... TYPE numeric(12,2): amounts reached a million), and
    2024-03-11 holds 1234567890.12. The user restores the two days as a range into a new table.

    Now: the table is created from the first day's definition (numeric(8,2)); _widens does not count a numeric
    of larger precision as a widening, so day 2 fails "the archived rows do not load into <schema>.back
    (NumericValueOutOfRange ...: numeric field overflow)" — the same migration as varchar(10) -> varchar(40),
    which is followed. (integer -> numeric, the retype 48f8117 calls equal, is not followed either.)

    Should: both days restored into the one table (3 rows), the column widened to numeric(12,2) as varchar's
    length is. Fix idea: _widens also accepts numeric(p,s) -> numeric(p',s') with p'-s' >= p-s and s' >= s,
    numeric(p,s) -> unconstrained numeric, and an integer type -> numeric."""
    from archive_pipeline.core.restore import restore_days

    t = sql.Identifier(schema, "pay")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, amount numeric(8,2))").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 12.50), (2, '2024-03-10 02:00+00', 99.99)"
                         ).format(t))
    spec = TableSpec(name=f"{schema}.pay", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN amount TYPE numeric(12,2)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3, '2024-03-11 01:00+00', 1234567890.12)").format(t))
    archive_partition(conn, spec, DAY + dt.timedelta(days=1), store, temp_dir=temp_dir)
    restore_days(conn, store, spec, DAY, DAY + dt.timedelta(days=1), into="new", target=f"{schema}.back",
                 temp_dir=temp_dir)
    assert _count(conn, schema, "back") == 3


def test_a_restore_into_the_original_table_the_role_may_insert_into_but_not_read_is_a_restore_error(
        conn, schema, store, temp_dir):
    """9d0cbe4: "a target the role may insert into but not read is a RestoreError of the archived table": the
    SourceError the target's description raises is wrapped only when it names another table than the archived
    one (``exc.table not in (None, table)``). Restoring into the ORIGINAL table (into='original', the README's
    way to put a removed day back) with a role that has INSERT but not SELECT on it (a loader role).

    Now: the error escapes as a SourceError (as if the archive run's source were unreadable), not the
    RestoreError every other refusal of the restore is; callers catching RestoreError (the restore job, a
    script) miss it.

    Should: a RestoreError naming the table and the day, saying the target cannot be read (the grant to ask
    for). Fix idea: wrap every SourceError raised while describing the target, whichever table it names."""
    t = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 01:00+00'::timestamptz + g * interval '1 second', "
                         "'v' || g FROM generate_series(1, 5) g").format(t))
    spec = TableSpec(name=f"{schema}.events", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {}").format(t))
    role = f"r_{schema}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(t, sql.Identifier(role)))
        with psycopg.connect(conn.info.dsn, user=role, password="pw", autocommit=True) as restoring:
            with pytest.raises(Exception) as caught:
                restore_day(restoring, store, spec, DAY, into="original", temp_dir=temp_dir)
        assert _count(conn, schema, "events") == 0
        error = caught.value
        assert isinstance(error, RestoreError), f"{type(error).__name__}: {error}"
        assert (error.table, error.day) == (f"{schema}.events", "2024-03-10"), (error.table, error.day)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_archived_rows_overlapping_under_an_exclusion_constraint_added_since_are_not_called_already_there(
        conn, schema, store, temp_dir):
    """9d0cbe4 tells archived rows colliding among themselves under a constraint added since apart from rows
    already in the target, when the target holds other days, by looking the violated key up (_holds_key). A
    booking table: 2024-03-10 was archived with two overlapping slots ([1,5) and [3,8) of room 7's hours), the day
    removed since, and the table gained EXCLUDE USING gist (slot WITH &&) (its other day's slots do not overlap).
    The user restores 2024-03-10 into the original table.

    Now: PostgreSQL's detail for an exclusion violation is "Key (slot)=([3,8)) conflicts with existing key
    (slot)=([1,5))." which _holds_key's "already exists" pattern does not parse, so it answers True ("the target
    holds it") and the error is the generic "rows of the archive ... already exist in <table> ... Use
    on_conflict='skip' to add only the missing rows": false (no row of the table overlaps either slot), and skip
    (an exclusion constraint is an ON CONFLICT DO NOTHING arbiter) would drop one archived row and roll back.

    Should: say the archived rows break the constraint among themselves (a constraint the archived table did not
    have), remedy: restore into a new table or drop the constraint; no on_conflict='skip'. Fix idea: for an
    exclusion violation, look up whether the target holds a row conflicting with the detail's "existing key" (or
    test the archived rows against each other in the stage)."""
    t = sql.Identifier(schema, "booking")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, slot int4range)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', '[1,5)'), (2, '2024-03-10 02:00+00', "
                         "'[3,8)'), (3, '2024-03-11 01:00+00', '[20,30)')").format(t))
    spec = TableSpec(name=f"{schema}.booking", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE at < '2024-03-11 00:00+00'").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT booking_slot_excl EXCLUDE USING gist (slot WITH &&)").format(t))
    with pytest.raises(RestoreError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert _count(conn, schema, "booking") == 1  # as it was
    said = f"{caught.value} {caught.value.remedy or ''}"
    assert "already exist" not in said and "on_conflict='skip'" not in said, said
    assert "among themselves" in said, said
