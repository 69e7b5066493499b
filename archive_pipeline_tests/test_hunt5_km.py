"""Hunt 5 (km): what the README promises a user, tried as a user would (the command line with the README's
environment variables, the shipped deployment files), where it changed recently; and the remedies of this
session's new error messages, followed literally."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from psycopg import sql

from archive_pipeline_tests.test_hunt3_o import cli, make_env, small_table, write_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_production_run_launcher_passes_archive_s3_verify_etags_to_run_containers():
    """README, Production notes: "``ARCHIVE_S3_VERIFY_ETAGS=false`` sets it for the default resources and the
    command line alike", and "Every name in the Docker launcher's ``env_vars`` must be set in the daemon's
    environment ... the optional ``ARCHIVE_S3_*`` names are commented out for that reason". A user on an SSE-KMS
    bucket deploys with docs/dagster.production.yaml, sets ARCHIVE_S3_VERIFY_ETAGS=false beside the other
    ARCHIVE_S3_* variables, and uncomments the optional names the launcher block lists. The block lists every
    other ARCHIVE_* variable the code location reads, but not ARCHIVE_S3_VERIFY_ETAGS: the DockerRunLauncher does
    not copy it into the run containers, whose code location then builds ``default_resources()`` with
    ``verify_etags`` true, so every run fails on that bucket (ETags that are not MD5s) while the code server,
    the sensor and the command line work. Expected: the launcher's ``env_vars`` (commented, as an optional
    name) list ARCHIVE_S3_VERIFY_ETAGS too, as every variable ``core/environment.py`` reads. (docs/
    dagster.production.yaml, run-launcher block.)"""
    from archive_pipeline.core import environment

    text = (ROOT / "docs" / "dagster.production.yaml").read_text()
    block = re.search(r"# BEGIN run-launcher\n(.*?)# END run-launcher", text, flags=re.S).group(1)
    listed = set(re.findall(r"^\s*#?\s*- (ARCHIVE_\w+)", block, flags=re.M))
    read = {value for name, value in vars(environment).items() if name.endswith("_VAR") and
            isinstance(value, str) and value.startswith("ARCHIVE_")}
    assert "ARCHIVE_S3_VERIFY_ETAGS" in read
    assert read <= listed, f"not passed to run containers: {sorted(read - listed)}"


def test_the_expired_role_remedy_is_a_statement_that_runs_as_given(conn, schema, pg, s3, bucket, tmp_path):
    """New this session: a login refused as "password authentication failed" now adds "PostgreSQL says the same
    when the role's VALID UNTIL has passed (see pg_roles.rolvaliduntil; ALTER ROLE ... VALID UNTIL 'infinity' or
    a later date)". A DBA whose archiving role ``Archiver`` expired runs the command line, reads that remedy and
    runs it as given: ``ALTER ROLE ... VALID UNTIL 'infinity'`` is a syntax error, and with the role's name typed
    in as the message prints it (``as user 'Archiver t1_0'``: unquoted) it is a syntax error too, or another role
    (SQL folds ``Archiver`` to ``archiver``). The message knows the user (it names it), and every other remedy
    of the kind spells its statement with the names quoted (``GRANT ... TO "role"``, the ATTACH/INHERIT of a
    detached day). Expected: the remedy names the statement with the role quoted as an identifier, so running it
    as printed lets the same command run. (``errors._WRONG_PASSWORD``, built in ``describe_connect_error``.)"""
    small_table(conn, schema)
    role = f"Archiver {schema}"
    dsn = pg.create_password_role(role, "pw")
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema),
                                                                                 sql.Identifier(role)))
    conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL '2020-01-01'").format(sql.Identifier(role)))
    config = write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-10",
                                      "format": "csv", "compression": "none"}])

    class Source:  # make_env takes the DSN from a LocalPostgres
        pass

    source = Source()
    source.dsn = dsn
    env = make_env(source, s3.endpoint_url, bucket, config, tmp_path)
    refused = cli(env, "list", "--day", "2024-03-10")
    assert refused.returncode == 2 and "VALID UNTIL" in refused.stderr, refused.stderr
    statement = re.search(r"(ALTER ROLE .*? VALID UNTIL 'infinity')", refused.stderr).group(1)
    conn.execute(statement)  # as the message gives it
    done = cli(env, "list", "--day", "2024-03-10")
    assert done.returncode in (0, 1), done.stdout + done.stderr


def test_a_dropped_naming_mode_day_of_a_sub_partitioned_table_is_restored_back_under_its_parent(
        conn, schema, pg, s3, bucket, tmp_path):
    """README, Restoring a day: "a dropped day table (naming mode) is created from the definition and put back
    under the tables it inherited from or was a partition of (with its bound), as recorded at archive time".
    A user's legacy layout: ``events`` partitioned by month, each month (``month_202403``) partitioned by day
    into ``events_20240310`` ..., archived in naming mode (pattern ``events_%Y%m%d``) with ``retention: drop``.
    ``prune`` drops the day's table; later the user needs the day back and runs ``restore --into original --day
    2024-03-10``. It reports success ("created: ...events_20240310", the fingerprint equal), ``list`` says the
    day is "back in the source" and ``compare`` says equal, but the table was created on its own, under nothing:
    ``SELECT ... FROM events`` for that day finds no row. The manifest recorded the day table's parent
    (``month_202403``, with its bound), yet restore puts a table back only under the configured table itself
    (``restore._own_parents`` skips every recorded parent that is not ``events``), though ``month_202403`` is
    one of ``events``' own partitions. Expected: the re-created day table is a partition of ``month_202403``
    again (so the configured table holds the day's rows), or the restore refuses, naming the parent it cannot
    put the table back under; never a success that leaves the day outside the table."""
    s = schema
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, note text) PARTITION BY RANGE (at)")
                 .format(sql.Identifier(s, "events")))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-01 00:00+00') TO "
                         "('2024-04-01 00:00+00') PARTITION BY RANGE (at)").format(
        sql.Identifier(s, "month_202403"), sql.Identifier(s, "events")))
    for day in ("2024-03-10", "2024-03-11"):
        table = sql.Identifier(s, f"events_{day.replace('-', '')}")
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}::timestamptz) TO "
                             "({}::timestamptz + interval '1 day')").format(
            table, sql.Identifier(s, "month_202403"), sql.Literal(f"{day} 00:00+00"), sql.Literal(f"{day} 00:00+00")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', md5(g::text) "
                             "FROM generate_series(1, 50) g").format(table, sql.Literal(f"{day} 00:00+00")))
    config = write_config(tmp_path, [{"name": f"{s}.events", "day_column": "at", "start_date": "2024-03-10",
                                      "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"},
                                      "retention": {"keep_days": 30, "action": "drop"}}])
    env = make_env(pg, s3.endpoint_url, bucket, config, tmp_path)
    for args in (["archive", "--from", "2024-03-10", "--to", "2024-03-11"], ["prune", "--day", "2024-03-10"]):
        done = cli(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    assert conn.execute(sql.SQL("SELECT to_regclass({})").format(
        sql.Literal(f"{s}.events_20240310"))).fetchone()[0] is None  # dropped
    restored = cli(env, "restore", "--into", "original", "--day", "2024-03-10")
    parent = conn.execute("SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = %s::regclass",
                          (f"{s}.events_20240310",)).fetchone() if restored.returncode == 0 else None
    held = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at >= '2024-03-10 00:00+00' AND at < "
                                "'2024-03-11 00:00+00'").format(sql.Identifier(s, "events"))).fetchone()[0]
    assert restored.returncode != 0 or (parent == (f"{s}.month_202403",) and held == 50), (
        restored.stdout, parent, held)


def test_the_default_partition_remedy_followed_literally_brings_the_archived_rows_back(conn, schema, pg, s3, bucket,
                                                                                      tmp_path):
    """New this session: ``restore --into original`` of a dropped declarative day whose late rows now sit in the
    DEFAULT partition is refused with "to fix: look at those rows in the default partition (<name>): archive them
    first (archive the day again with overwrite, which reads them through the parent), or move or delete them,
    then restore again". A user follows the first way literally: ``archive --day D --overwrite`` (it archives the
    one late row, as generation 2, and keeps the dropped day's 50-row archive under ``kept``), then ``restore
    --into original --day D`` again. The restore now reads the new manifest (1 row), finds that row in the table
    and answers "already restored: ... holds exactly its archived rows", exit 0: the 50 rows the user wanted back
    are not in the table, and the command line offers no way to restore a ``kept`` archive. Expected: after the
    remedy as written, the day's archived rows are back in the table (with the late row), or the remedy does not
    send the user that way. (``restore._create_partition``'s CheckViolation remedy.)"""
    s = schema
    events = sql.Identifier(s, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, note text) PARTITION BY RANGE (at)")
                 .format(events))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(sql.Identifier(s, "ev_default"), events))
    for day in ("2024-03-10", "2024-03-11"):
        child = sql.Identifier(s, f"events_{day.replace('-', '')}")
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}::timestamptz) TO "
                             "({}::timestamptz + interval '1 day')").format(
            child, events, sql.Literal(f"{day} 00:00+00"), sql.Literal(f"{day} 00:00+00")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', md5(g::text) "
                             "FROM generate_series(1, 50) g").format(child, sql.Literal(f"{day} 00:00+00")))
    config = write_config(tmp_path, [{"name": f"{s}.events", "day_column": "at", "start_date": "2024-03-10",
                                      "partitioning": {"mode": "declarative"},
                                      "retention": {"keep_days": 30, "action": "drop"}}])
    env = make_env(pg, s3.endpoint_url, bucket, config, tmp_path)
    for args in (["archive", "--from", "2024-03-10", "--to", "2024-03-11"], ["prune", "--day", "2024-03-10"]):
        done = cli(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    conn.execute(sql.SQL("INSERT INTO {} VALUES (999, '2024-03-10 23:00+00', 'late')").format(events))
    refused = cli(env, "restore", "--into", "original", "--day", "2024-03-10")
    assert refused.returncode != 0, refused.stdout
    if "overwrite" not in refused.stderr:
        return  # the remedy no longer sends the user that way
    for args in (["archive", "--day", "2024-03-10", "--overwrite"],  # "archive them first ... with overwrite"
                 ["restore", "--into", "original", "--day", "2024-03-10"]):  # "then restore again"
        done = cli(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    back = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at >= '2024-03-10 00:00+00' AND at < "
                                "'2024-03-11 00:00+00'").format(events)).fetchone()[0]
    assert back == 51, (back, done.stdout)


def test_a_dropped_naming_mode_day_restored_under_a_parent_whose_column_was_widened_since(conn, schema, pg, s3,
                                                                                          bucket, tmp_path):
    """README, Restoring a day: a dropped naming-mode day table "is created from the definition and put back under
    the tables it inherited from", and "A target column of another type than the archived one is loaded if every
    value reads back as archived (the fingerprint decides: ``int`` into ``bigint`` is restored ...)". A user's
    legacy layout: day tables ``events_YYYYMMDD`` INHERITS (``events``), naming mode, ``retention: drop``. After
    ``prune`` dropped 2024-03-10, the team widens ``events.quantity`` from ``int`` to ``bigint`` (a routine
    migration). ``restore --into original --day 2024-03-10`` then fails with "the server rejected the archiver's
    SQL (DatatypeMismatch: column "quantity" has a type conflict DETAIL: bigint versus integer) ...; to fix: check
    the table definition; if it looks right, report it with this message": the restore creates the day table
    with the archived ``integer`` column and ``INHERITS (events)``, which PostgreSQL refuses. The same layout with
    day tables that are partitions of ``events`` restores the day (the partition takes the parent's ``bigint``).
    Expected: the day is restored under ``events`` (an archived int reads back in a bigint column, as the README
    says), or at least a refusal that names the column and its changed type with a remedy, not an internal-error
    "report it". (``restore._create`` / ``_create_table`` with ``inherits``.)"""
    s = schema
    events = sql.Identifier(s, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, note text, quantity int)").format(events))
    for day in ("2024-03-10", "2024-03-11"):
        table = sql.Identifier(s, f"events_{day.replace('-', '')}")
        conn.execute(sql.SQL("CREATE TABLE {} (CHECK (at >= {}::timestamptz AND at < {}::timestamptz + interval "
                             "'1 day')) INHERITS ({})").format(table, sql.Literal(f"{day} 00:00+00"),
                                                               sql.Literal(f"{day} 00:00+00"), events))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', md5(g::text), g "
                             "FROM generate_series(1, 50) g").format(table, sql.Literal(f"{day} 00:00+00")))
    config = write_config(tmp_path, [{"name": f"{s}.events", "day_column": "at", "start_date": "2024-03-10",
                                      "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"},
                                      "retention": {"keep_days": 30, "action": "drop"}}])
    env = make_env(pg, s3.endpoint_url, bucket, config, tmp_path)
    for args in (["archive", "--from", "2024-03-10", "--to", "2024-03-11"], ["prune", "--day", "2024-03-10"]):
        done = cli(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN quantity TYPE bigint").format(events))
    restored = cli(env, "restore", "--into", "original", "--day", "2024-03-10")
    if restored.returncode == 0:
        held = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at >= '2024-03-10 00:00+00' AND at < "
                                    "'2024-03-11 00:00+00'").format(events)).fetchone()[0]
        assert held == 50, restored.stdout
    else:
        told = restored.stderr
        assert "report it" not in told and "quantity" in told and "bigint" in told, told


def test_a_restore_into_a_naming_mode_partition_whose_parent_lost_a_column_says_where_to_add_it(
        conn, schema, pg, s3, bucket, tmp_path):
    """New this session: a dropped naming-mode day table that was a partition of ``events`` is re-created as
    ``CREATE TABLE events_20240310 PARTITION OF events ...`` (README: "put back under the tables it ... was a
    partition of (with its bound)"), so it has the parent's columns now. The team dropped ``events.extra`` since.
    ``restore --into original --day 2024-03-10`` is refused: 'column "extra" of relation "events_20240310" does
    not exist ...; to fix: the target must have every column the archive has (the manifest's columns): add the one
    named, or restore into a new table'. The user does what it says, ``ALTER TABLE events_20240310 ADD COLUMN
    extra int``: "relation events_20240310 does not exist" (the restore rolled its creation back), and a partition
    cannot have a column its parent lacks anyway. Expected: the remedy names the table the column must be added
    to, the partitioned parent ``events`` (or the restore creates the day in a way that loads). (``restore``'s
    UndefinedColumn remedy, for a target it creates as a partition.)"""
    s = schema
    events = sql.Identifier(s, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, note text, extra int) PARTITION BY "
                         "RANGE (at)").format(events))
    for day in ("2024-03-10", "2024-03-11"):
        table = sql.Identifier(s, f"events_{day.replace('-', '')}")
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}::timestamptz) TO "
                             "({}::timestamptz + interval '1 day')").format(
            table, events, sql.Literal(f"{day} 00:00+00"), sql.Literal(f"{day} 00:00+00")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', md5(g::text), g "
                             "FROM generate_series(1, 50) g").format(table, sql.Literal(f"{day} 00:00+00")))
    config = write_config(tmp_path, [{"name": f"{s}.events", "day_column": "at", "start_date": "2024-03-10",
                                      "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"},
                                      "retention": {"keep_days": 30, "action": "drop"}}])
    env = make_env(pg, s3.endpoint_url, bucket, config, tmp_path)
    for args in (["archive", "--from", "2024-03-10", "--to", "2024-03-11"], ["prune", "--day", "2024-03-10"]):
        done = cli(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN extra").format(events))
    refused = cli(env, "restore", "--into", "original", "--day", "2024-03-10")
    if refused.returncode == 0:
        return  # restored after all: fine
    remedy = refused.stderr.partition("to fix:")[2]
    assert re.search(rf'(?:\b{s}\.|"{s}"\.)"?events\b(?!_)', remedy), refused.stderr


def test_a_refused_primary_login_tells_to_check_the_primary_dsn(conn, schema, pg, s3, bucket, tmp_path):
    """README, Configuration: ``ARCHIVE_PG_PRIMARY_DSN`` is the primary when ``ARCHIVE_PG_DSN`` is a hot standby,
    and the command line's ``restore`` and ``prune`` run there. A user sets both; the primary's DSN carries an old
    password. ``restore`` exits 2 with "cannot connect to PostgreSQL at ... as user ...: wrong password ...
    ($ARCHIVE_PG_PRIMARY_DSN); to fix: check the password in ARCHIVE_PG_DSN (and that the role's password was
    not rotated); PostgreSQL says the same when the role's VALID UNTIL has passed ...". The user follows the
    remedy: ARCHIVE_PG_DSN's password is right (``archive`` works with it), so nothing there to fix; the wrong one
    is in the variable the remedy does not name. Expected: the remedy names the variable whose login was refused,
    ARCHIVE_PG_PRIMARY_DSN (as the message already does in parentheses). (``errors._WRONG_PASSWORD``'s fixed
    ``_DSN`` in the remedy; ``environment._connect`` knows the variable.)"""
    small_table(conn, schema)
    role = f"primary_{schema}"
    right = pg.create_password_role(role, "pw-current-7")
    stale = pg.dsn_for(role, "pw-previous-3")
    conn.execute(sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema),
                                                                             sql.Identifier(role)))
    config = write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-10",
                                      "format": "csv", "compression": "none"}])
    env = make_env(pg, s3.endpoint_url, bucket, config, tmp_path, ARCHIVE_PG_PRIMARY_DSN=stale)
    env["ARCHIVE_PG_DSN"] = right
    archived = cli(env, "archive", "--day", "2024-03-10")
    assert archived.returncode == 0, archived.stdout + archived.stderr  # ARCHIVE_PG_DSN's password is right
    refused = cli(env, "restore", "--day", "2024-03-10", "--into", "new", "--target", f"{schema}.back")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    remedy = refused.stderr.partition("to fix:")[2]
    assert "ARCHIVE_PG_PRIMARY_DSN" in remedy, refused.stderr
