"""Hunt: names PostgreSQL allows when quoted, driven through everything a user touches.

Schema, table, partition child, day column and columns hold non-ASCII letters, NFC and NFD twins, emoji,
quotes, backslashes, dots, slashes, braces, leading digits, reserved words, case twins, names at 63 bytes,
the aliases the archiver's own SQL uses (``r``, ``x``, ``s``, ``t``, ``h``) and ``%`` (a placeholder to
psycopg in any statement that binds a value). Each either round-trips exactly or is refused at load,
naming the table and why.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata

import psycopg
import pytest
import yaml
from click.testing import CliRunner, Result
from psycopg import sql

from archive_pipeline.cli import main
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import ConfigError, parse_config
from archive_pipeline.core.errors import SourceError
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
from archive_pipeline.core.plan import compare_days, day_statuses
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.source import describe_table
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import FaultProxy
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)
TABLE = 'Év\'t "x" {table} 100% a/b\\c ß'
DAY_COLUMN = 'Créé "At" %s'
COLUMNS = ["Events", "events", unicodedata.normalize("NFC", "é"), unicodedata.normalize("NFD", "é"), "😀", "select",
           "1st", "{table}", "a.b", "a/b", "%s", "%(x)s", "% ", "back\\slash", "it's", 'q"q', "日本 語", "é" * 31 + "x",
           "__proto__", "r", "s", "t", "h", "u", "x", TABLE]


def _hostile_table(conn, schema: str, fmt: str) -> tuple[sql.Identifier, dict]:
    """A table partitioned by ``DAY_COLUMN`` whose primary key is the column ``%(x)s`` and the day, one child
    for DAY, 30 rows; and its configuration."""
    table = sql.Identifier(schema, TABLE)
    at = sql.Identifier(DAY_COLUMN)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, {} timestamptz, {}, PRIMARY KEY ({}, {})) PARTITION BY RANGE ({})")
                 .format(table, at, sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in COLUMNS),
                         sql.Identifier("%(x)s"), at, at))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10+00') TO ('2024-03-11+00')")
                 .format(sql.Identifier(schema, 'p 日本 "x" %Y 2024-03-10/..'), table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 05:00+00'::timestamptz + g * interval '1 min', {} "
                         "FROM generate_series(1, 30) g").format(
        table, sql.SQL(", ").join(sql.SQL("g || {}").format(sql.Literal(f" {i} '\"%s")) for i in range(len(COLUMNS)))))
    return table, {"name": f"{schema}.{TABLE}", "day_column": DAY_COLUMN, "start_date": "2024-03-01", "format": fmt,
                   "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": "delete"}}


@pytest.fixture
def proxied(s3, bucket):
    """The test's bucket through the fault proxy (no fault): keys travel through one more HTTP hop."""
    with FaultProxy(s3.endpoint_url) as proxy:
        yield proxy, S3Store(proxy.client(), bucket, prefix="archive", part_size=MIN_PART_SIZE)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_names_with_percent_quotes_and_non_ascii_round_trip_through_restore_verify_and_removal(
        fmt, conn, schema, proxied, s3_client, bucket, temp_dir):
    """Every step of a day's life on the hostile table, in each format. Was: a JSONL restore or deep
    verification of a table with a column named ``%s`` failed ("the query has 2 placeholders but 1 parameters
    were passed"; named ``%(x)s``: "positional and named placeholders cannot be mixed"), naming the first
    difference of a changed day failed so in every format, and ``on_conflict='skip'`` into a table whose name
    needs quotes failed with "invalid name syntax" (or, for ``Events``, looked at ``events``)."""
    odd_schema = f'{schema} Ünï "s" 日本 %s'
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(odd_schema)))
    try:
        table, entry = _hostile_table(conn, odd_schema, fmt)
        spec = parse_config({"tables": [entry]}).tables[0]
        proxy, store = proxied
        key = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).key
        assert key.startswith(f"archive/{odd_schema}.{TABLE}/2024/03/2024-03-10.")
        listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]  # moto, not the proxy
        assert sorted(listed) == [key, key + ".manifest.json"]
        assert proxy.requests(method="PUT", path=re.escape(f"/{bucket}/{key}") + "$")
        assert [c.result for c in compare_days(conn, spec, store, [DAY])] == ["equal"]
        assert [s.state for s in day_statuses(conn, spec, store, [DAY])] == ["archived"]

        conn.execute(sql.SQL("UPDATE {} SET {} = 'changed' WHERE id = 7").format(table, sql.Identifier("%s")))
        problems = deep_verify(conn, store, spec, DAY)
        assert any(p.startswith("first difference: ") and ": (7," in p for p in problems), problems
        conn.execute(sql.SQL("UPDATE {} SET {} = {} WHERE id = 7").format(
            table, sql.Identifier("%s"), sql.Literal(f"7 {COLUMNS.index('%s')} '\"%s")))

        back = restore_day(conn, store, spec, DAY, into="new", target=f"{odd_schema}.back 100% {fmt}",
                           temp_dir=temp_dir)
        assert back.fingerprint_checked and back.rows == 30
        again = restore_day(conn, store, spec, DAY, into="existing", target=spec.name, on_conflict="skip",
                            temp_dir=temp_dir)
        assert again.fingerprint_checked and again.inserted == 0
        assert remove_day(conn, spec, DAY, store).rows == 30  # after its deep verification passed
        assert restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir).inserted == 30
        assert [c.result for c in compare_days(conn, spec, store, [DAY])] == ["equal"]
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(odd_schema)))


@pytest.mark.parametrize(("name", "template", "says"), [
    ("s.x/../y", None, "with '..' as a whole part between slashes"),
    ("s.a/./b", None, "with '.' as a whole part between slashes"),
    ("s..", "{prefix}/{table}/{date}.{ext}", "with '.' as a whole part between slashes"),
    ("s.../x", "{prefix}/{schema}/{table}/{date}.{ext}", "with '..' as a whole part between slashes"),
    ("s.a\nb", None, "with the control character '\\n'"),
    ("s\x1b[2J.ev", None, "with the control character '\\x1b'"),
])
def test_a_table_whose_key_would_not_read_back_as_written_is_refused_at_load(name, template, says):
    """A table named ``x/../y`` rendered ``archive/s.x/../y/...``: a key that tools reading keys as paths
    (aws s3 sync, s3fs) resolve outside the table's folder, onto ``archive/y/...``, and MinIO refuses. One
    named with a line feed loaded, and every run failed with moto's bare "404 Not Found" on its PUT."""
    entry = {"name": name, "day_column": "at", "start_date": "2024-03-01"} | ({"key_template": template} if template
                                                                           else {})
    with pytest.raises(ConfigError) as refused:
        parse_config({"tables": [entry]}, "tables.yaml")
    assert f"table {name!r}: key_template renders" in str(refused.value) and says in str(refused.value)
    assert "rename the table" in str(refused.value)


def test_names_with_dots_slashes_and_braces_that_make_no_dot_part_still_load():
    names = ["s.a..b/..x", "s.{table}/{date}", "s.x/.y./z.", "s.1st/select"]
    config = parse_config({"tables": [{"name": n, "day_column": "at", "start_date": "2024-03-01"} for n in names]})
    assert [s.name for s in config.tables] == names


def test_a_configured_name_that_differs_from_the_catalogs_in_case_or_normal_form_is_refused_naming_the_catalogs(
        conn, schema):
    """``public.events`` for ``Events``, or ``café`` typed on one system (NFC) for the catalog's ``café``
    copied from another (NFD), was refused as "does not exist" (or "has no column 'Créé'; columns are
    ['Créé']"): the message showed two names a reader cannot tell apart. It now names the catalog's
    spelling and how it differs; a schema whose name holds a dot is named as such."""
    nfc, nfd = (unicodedata.normalize(form, "café") for form in ("NFC", "NFD"))
    dotted = f"{schema}.d"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(dotted)))
    try:
        for table in ("Events", nfd, "in dotted"):
            conn.execute(sql.SQL("CREATE TABLE {} ({} date)").format(
                sql.Identifier(dotted if table == "in dotted" else schema, table), sql.Identifier(nfd)))
        for wanted, says in ((f"{schema}.events", f"the table '{schema}.Events', which differs from it only in case"),
                             (f"{schema}.{nfc}", f"the table '{schema}.{nfd}', which differs from it only in how its "
                                                 f"letters are encoded (Unicode NFC against NFD: {ascii(f'{schema}.{nfd}')}"),
                             (f"{dotted}.in dotted", f"the table 'in dotted' in the schema '{dotted}'")):
            with pytest.raises(SourceError) as refused:
                describe_table(conn, wanted, None)
            assert "does not exist" in str(refused.value) and says in str(refused.value), str(refused.value)
        with pytest.raises(SourceError) as refused:
            describe_table(conn, f"{schema}.Events", nfc)
        assert f"has no column {nfc!r}" in str(refused.value)
        assert "the catalog has the column" in str(refused.value) and ascii(nfd) in str(refused.value)
        with pytest.raises(SourceError) as refused:
            describe_table(conn, f"{schema}.nothing_like_it", None)
        assert "the catalog has" not in str(refused.value)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(dotted)))


def _cli(env: dict[str, str], *args: str) -> Result:
    """The command, in this process (a subprocess would cost seconds of imports): its exit code and output."""
    done = CliRunner(env=env).invoke(main, list(args))
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done


def test_the_command_line_escapes_control_characters_and_names_a_tables_other_spelling(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """PostgreSQL keeps any character but NUL in a name or a text value: `compare --rows` printed the first
    differing row `(2024-03-10,<ESC>[2J<BEL>)` as it is, and the terminal of whoever compared cleared its screen (rich
    drops BEL and CR, not ESC); it is shown escaped now, and `--json` escapes the C1 controls json leaves raw.
    And `--table s.café` typed as NFC for the configuration's NFD `s.café` (copied from a file name on macOS)
    said "table(s) ['s.café'] are not in the configuration; configured: ['s.café']"; it names the
    configuration's spelling now."""
    nfc, nfd = (unicodedata.normalize(form, f"{schema}.café") for form in ("NFC", "NFD"))
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (at date, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', {})").format(table, sql.Literal("\x1b[2J\x07\x9b")))
    entries = [{"name": n, "day_column": "at", "start_date": "2024-03-01"} for n in (f"{schema}.ev", nfd)]
    archive_partition(conn, parse_config({"tables": entries[:1]}).tables[0], DAY, store)
    conn.execute(sql.SQL("UPDATE {} SET note = note || 'x'").format(table))  # either side's row is named
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": entries}, allow_unicode=True), encoding="utf-8")
    env = {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
           "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250"}
    shown = _cli(env, "compare", "--rows", "--day", "2024-03-10", "--table", f"{schema}.ev")
    assert shown.exit_code == 1 and "first difference" in shown.stdout, shown.stdout
    assert "(2024-03-10,\\x1b[2J\\x07\\x9b" in shown.stdout, shown.stdout
    assert not any(c in shown.stdout for c in "\x1b\x07\x9b"), repr(shown.stdout)
    as_json = _cli(env, "compare", "--rows", "--json", "--day", "2024-03-10", "--table", f"{schema}.ev")
    assert not any(c in as_json.stdout for c in "\x1b\x07\x9b"), repr(as_json.stdout)  # json leaves C1 raw
    assert "\\u001b[2J\\u0007\\u009b" in as_json.stdout and json.loads(as_json.stdout), as_json.stdout  # exact

    refused = _cli(env, "list", "--table", nfc)
    assert refused.exit_code == 2, refused.stderr
    assert "the configuration has the table" in refused.stderr and ascii(nfd) in refused.stderr, refused.stderr


@pytest.mark.parametrize("role", ["App Remover.é {schema}", "user"])
def test_the_grant_a_refused_removal_names_works_pasted_as_it_is(role, conn, schema, store, temp_dir):
    """A delete refused for lack of the DELETE privilege said `to fix: GRANT DELETE ON s.Nasty Events TO App
    Remover.é`: the table and the role unquoted (and a role holding a dot would have been split like a table),
    which PostgreSQL refuses, as it refuses `TO user` for the role `user` (a key word). Pasted as it is, the
    remedy now grants it, and the removal goes through."""
    role, table = role.format(schema=schema), sql.Identifier(schema, "Nasty Events")
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("CREATE TABLE {} (at date)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10'), ('2024-03-10')").format(table))
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(role)))
        spec = parse_config({"tables": [{"name": f"{schema}.Nasty Events", "day_column": "at", "start_date": "2024-03-01",
                                         "retention": {"keep_days": 1, "action": "delete"}}]}).tables[0]
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        with pytest.raises(RemovalRefused) as refused:
            remove_day(conn, spec, DAY, store, dry_run=True)
        conn.execute("RESET ROLE")
        conn.execute(refused.value.remedy)  # as the user would paste it
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        assert remove_day(conn, spec, DAY, store, dry_run=True).rows == 2
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(sql.Identifier(role), sql.Identifier(role)))


def test_non_ascii_names_in_a_latin1_database(pg, conn, store, temp_dir):
    """A LATIN1 database holds ``Ünï.événements`` too. Was: every archive there failed (the archiver's own
    type walk sent an arrow, which LATIN1 has not: UntranslatableCharacter), Parquet's ADBC session read the
    query's UTF-8 name as LATIN1 ("relation ... does not exist"), a removal failed with a UnicodeDecodeError
    reading its plan, and a configured name LATIN1 cannot hold escaped as a bare UnicodeEncodeError."""
    database = f"latin1_{conn.info.backend_pid}"
    conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
        sql.Identifier(database)))
    try:
        with psycopg.connect(pg.dsn_for("postgres", database=database), autocommit=True) as latin:
            latin.execute('CREATE SCHEMA "Ünï"; CREATE TABLE "Ünï"."événements %s" ("créé" date, "ñ" text)')
            latin.execute("""INSERT INTO "Ünï"."événements %s" VALUES ('2024-03-10', 'àÿ'), ('2024-03-10', NULL)""")
            for fmt in ("parquet", "jsonl"):
                spec = parse_config({"tables": [{"name": "Ünï.événements %s", "day_column": "créé", "format": fmt,
                                                 "start_date": "2024-03-01",
                                                 "retention": {"keep_days": 1, "action": "delete"}}]}).tables[0]
                assert archive_partition(latin, spec, DAY, store, temp_dir=temp_dir, overwrite=True).rows == 2
            assert restore_day(latin, store, spec, DAY, into="new", target="Ünï.back", temp_dir=temp_dir).rows == 2
            assert remove_day(latin, spec, DAY, store).rows == 2
            with pytest.raises(SourceError, match="cannot exist in this database: its encoding, LATIN1, has no '日'"):
                describe_table(latin, "Ünï.日本", None)
    finally:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))


def test_the_sample_events_fill_a_schema_with_percent_in_its_name(conn, schema):
    """`create_sample_events` (the demo's and the tests' table) bound the day and row count in a statement that
    named the schema: a schema named `Ünï 100%s` failed with "the query has 3 placeholders but 2 parameters"."""
    from archive_pipeline.local.local_stack import create_sample_events

    odd = f"{schema} Ünï 100%s"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(odd)))
    try:
        create_sample_events(conn, [DAY], 5, schema=odd)
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(odd, "events"))).fetchone()[0] == 5
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(odd)))
