"""Hunt 23 (bf): error classification and redaction (core/errors.py: classify(), the SQLSTATE and message tables,
wrap(), describe_connect_error(); and the callers' except clauses that feed them)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

import archive_pipeline.cli as cli
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.test_hunt6_lu import server_speaking
from archive_pipeline_tests.test_hunt6_lu import german  # noqa: F401 - a fixture: a server whose messages are German

DAY = dt.date(2024, 3, 10)


@pytest.fixture
def russian():
    """A server whose messages are Russian (as test_hunt6_lu's German one)."""
    with server_speaking("ru") as server:
        yield server


def _compare(server_dsn: str, table: str, s3, bucket: str, tmp_path, monkeypatch) -> tuple[int, dict]:
    """``archive-pipeline compare --day DAY --json`` of ``table`` against the database ``server_dsn``."""
    config = tmp_path / "tables.yaml"
    config.write_text(f"tables:\n  - name: {table}\n    day_column: at\n    start_date: 2024-03-01\n"
                      "    format: csv\n    compression: none\n")
    monkeypatch.setenv("ARCHIVE_PG_DSN", server_dsn)
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("ARCHIVE_S3_PREFIX", "archive")
    done = CliRunner().invoke(cli.main, ["compare", "--config", str(config), "--day", str(DAY), "--json"])
    return done.exit_code, json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])


def test_a_wrong_password_on_a_russian_server_is_called_unreachable_and_retried(russian, s3, bucket, tmp_path,
                                                                                monkeypatch):
    """Scenario: the source server's messages are Russian (lc_messages = 'ru_RU.UTF-8'); the archiving role's
    password was rotated, so ARCHIVE_PG_DSN holds the old one. ``archive-pipeline compare --day`` is run.

    Now: exit 3 (unreachable), ``"retryable": true``, "the database server could not be reached (refused,
    unreachable or timed out)", remedy "run the command again ... check that PostgreSQL runs and listens on the
    host and port" (in Dagster: PostgresResource.connect raises it retryable, and the RetryPolicy retries a wrong
    password through its whole backoff). A connect failure carries no SQLSTATE, so describe_connect_error ->
    classify -> _by_message reads the text; Russian spells the severity "ВАЖНО:", not "FATAL:", so
    _SERVER_MESSAGE finds no server message and every pattern is tried against the whole text, where libpq's own
    English wrapper, 'connection to server at "127.0.0.1", port N failed: ...', matches _CONNECT_FAILED's
    "connection to server at .* failed". Every refusal the server sends at login (wrong password, unknown role,
    NOLOGIN, no CONNECT, a role's connection limit) is so called "could not be reached". On an English server the
    same DSN exits 2, "wrong password".

    Should: a login the server answered and refused is never "could not be reached": libpq's wrapper says only
    that the attempt failed, and what follows its "failed: " is the server's answer. Fail at once (exit 2), saying
    the server refused the login and quoting its words. Fix idea: match _CONNECT_FAILED only on libpq's own
    reasons (refused, timeout, unreachable), never on the wrapper; treat text after 'port N failed: ' that is no
    libpq reason as a server refusal (any severity word)."""
    with russian.connect() as owner:
        owner.execute("CREATE TABLE public.ev (id int, at date)")
    russian.create_password_role("archiver", "rotated-Secret-1")
    code, answer = _compare(russian.dsn_for("archiver", "old-Secret-0"), "public.ev", s3, bucket, tmp_path,
                            monkeypatch)
    said = answer.get("error", "")
    assert "archiver" in said and "ВАЖНО" in said, answer  # the server answered, in Russian, for this role
    assert "could not be reached" not in said, answer
    assert code == 2 and answer.get("retryable") is False, answer


def test_a_roles_connection_limit_on_a_german_server_fails_for_good_instead_of_being_retried(german, s3, bucket,
                                                                                            tmp_path, monkeypatch):
    """Scenario: the source server's messages are German (lc_messages = 'de_DE.UTF-8'); the archiving role has
    CONNECTION LIMIT 1 and another of its sessions (another run, a reader) holds the one slot.
    ``archive-pipeline compare --day`` is run.

    Now: exit 2 (a setting to fix), ``"retryable": false``, "the database reported an error", remedy "read the
    message; fix the cause and archive again" (in Dagster: not retried at all). The server's "FATAL:  zu viele
    Verbindungen von Rolle »archiver_de«" carries no SQLSTATE at connect time; _by_message finds the FATAL and
    matches its words against the English patterns ("too many connections for role", "too many clients
    already", "the database system is starting up"), none matches, and the fallback _SERVER_UNKNOWN is
    permanent. On an English server the same run exits 3, retryable, "the role's CONNECTION LIMIT is reached"
    (the README's table: too many connections, a server starting up are retried). So a German server's transient
    refusals (a full server, a restart in progress, a role's limit) stop the day at once.

    Should: the same classification in every language: retryable, exit 3, naming the connection limit. Fix idea:
    a login refusal carries no SQLSTATE, so the English words are all there is: match the server's translated
    connect-time messages too (PostgreSQL ships its message catalogs, the postgres-<version>.mo files, beside the
    server: msgid -> msgstr for the language the answer is in), so the same few causes are found in every
    language; a FATAL still not recognised should at least say the server's language was not understood."""
    role = "archiver_de"
    with german.connect() as owner:
        owner.execute("DROP TABLE IF EXISTS public.ev")
        owner.execute("CREATE TABLE public.ev (id int, at date)")
        owner.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    dsn = german.create_password_role(role, "Secret-1", connection_limit=1)
    try:
        with psycopg.connect(dsn):  # the one slot the role may use, held elsewhere
            code, answer = _compare(dsn, "public.ev", s3, bucket, tmp_path, monkeypatch)
    finally:
        with german.connect() as owner:
            owner.execute("DROP TABLE public.ev")
            owner.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    said = answer.get("error", "")
    assert "Verbindungen" in said, answer  # the server answered in German
    assert code == 3 and answer.get("retryable") is True, answer
    assert "CONNECTION LIMIT" in said, answer


def test_a_view_whose_functions_library_is_gone_is_retried_as_a_server_disk_error(pg, conn, schema, store,
                                                                                  temp_dir):
    """Scenario: a view archived by the day calls a C function of an extension whose shared library is no longer
    on the server (a package upgrade replaced postgis-3.so, or an extension's files were removed): PostgreSQL
    answers "could not access file ...postgis-3.so: No such file or directory", SQLSTATE 58P01 (undefined_file).
    (The library is a copy of contrib's cube.so in a temp dir, deleted after CREATE FUNCTION.)

    Now: the day fails "transient, retried": "the database server had an I/O or system error", remedy "retried
    automatically; if it persists, check the server log and its disks". classify -> _by_sqlstate has no entry for
    58P01 and falls to its class, ``"58": _SERVER_IO`` (retryable); Dagster then retries a missing library through
    the whole backoff (30, 60, 120 s) and the operator is sent to check disks.

    Should: not retried (no retry brings a library back), with a cause naming a file the server needs that is
    missing (an extension's library: reinstall the extension's package for this server version, or ALTER
    EXTENSION ... UPDATE). Fix idea: map 58P01 (undefined_file) and 58P02 (duplicate_file) to a permanent
    "a file the server needs is missing or in the way" cause; keep class 58's retry for 58030 (io_error) only."""
    s = sql.Identifier(schema)
    libdir = conn.execute("SELECT setting FROM pg_catalog.pg_config() WHERE name = 'PKGLIBDIR'").fetchone()[0]
    where = tempfile.mkdtemp(prefix="bf-lib-")
    try:
        os.chmod(where, 0o755)  # the server's user reads it
        library = os.path.join(where, "postgis-3.so")
        shutil.copy(os.path.join(libdir, "cube.so"), library)
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s FROM generate_series(1, 3) g").format(s), (DAY,))
        conn.execute(sql.SQL("CREATE FUNCTION {}.geo(int) RETURNS int LANGUAGE c STRICT AS {}, 'cube_dim'")
                     .format(s, sql.Literal(library)))
        conn.execute(sql.SQL("CREATE VIEW {}.v AS SELECT id, at, {}.geo(id) AS g FROM {}.ev").format(s, s, s))
    finally:
        shutil.rmtree(where)  # the library is gone
    spec = TableSpec(name=f"{schema}.v", day_column="at", start_date=DAY, format="csv", compression="none")
    with pg.connect() as fresh:  # a session that has not loaded the library yet (as every new run's)
        with pytest.raises(ArchiveError) as raised:
            archive_partition(fresh, spec, DAY, store, temp_dir=str(temp_dir))
    said = f"{raised.value} / {raised.value.cause}"
    assert "58P01" in said and "postgis-3.so" in said, said
    assert not raised.value.retryable, said
    assert "disks" not in said, said


def test_a_view_recursing_past_the_stack_depth_limit_is_blamed_on_an_integer_over_1_gb(conn, schema, store,
                                                                                       temp_dir):
    """Scenario: a view archived by the day calls a plpgsql function that recurses without end (a bug in the
    function, or a trigger/function pair calling each other); PostgreSQL stops it with "stack depth limit
    exceeded", SQLSTATE 54001.

    Now: the day fails with UnsupportedTypeError "column 'id' (integer) of s.v is larger than PostgreSQL can send
    in one piece (1 GB per value or row as text, SQLSTATE 54001: stack depth limit exceeded) in csv; archive this
    table as parquet (values are read in binary there)". The archive's except clause asks
    formats.common.is_value_failure, which takes every class-54 SQLSTATE for a value too big, probes the columns
    (every probe fails: the view evaluates the function whatever is selected) and explain_value_failure blames
    the first column as over 1 GB. errors.classify/wrap know 54001 with a function on the stack as "a function or
    trigger recursed ...; no value is at fault" (test_hunt4_self), but the archive never reaches them. The user
    switches the table to parquet, which fails the same way.

    Should: the recursion named as the cause (errors._STACK_DEPTH: the function the context names), no column
    blamed, no format advised. Fix idea: is_value_failure excludes 54001 whose context names a function or
    trigger (diag.context), leaving it to wrap(); or probe only for 54000 and the allocation failures."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s FROM generate_series(1, 3) g").format(s), (DAY,))
    conn.execute(sql.SQL("CREATE FUNCTION {}.depth(n int) RETURNS int LANGUAGE plpgsql AS "
                         "$$ BEGIN IF n > 0 THEN RETURN {}.depth(n + 1); END IF; RETURN n; END $$").format(s, s))
    conn.execute(sql.SQL("CREATE VIEW {}.v AS SELECT id, at, {}.depth(id) AS d FROM {}.ev").format(s, s, s))
    spec = TableSpec(name=f"{schema}.v", day_column="at", start_date=DAY, format="csv", compression="none")
    with pytest.raises(ArchiveError) as raised:
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    said = f"{raised.value} / {raised.value.cause} / {raised.value.remedy}"
    assert "54001" in said, said
    assert "1 GB" not in said and "parquet" not in said, said
    assert "recurs" in said, said
