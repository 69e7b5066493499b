"""Name hunt: qualified names that are not simple, through restore, compare, prune, list and the asset keys.

A configured table is ``schema.table`` split at its first dot (a configured schema cannot hold a dot), but a
declarative partition may live in any schema, one whose name holds a dot too; a LATIN1 database counts a
name's bytes in LATIN1; a Dagster asset key holds only ``[A-Za-z0-9_]``.
"""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
import yaml
from click.testing import CliRunner, Result
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import SourceError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.verify import load_manifest
from archive_pipeline.core.restore import RestoreError, restore_day
from archive_pipeline.core.source import describe_table

DAY = dt.date(2024, 3, 10)


def _cli(env: dict[str, str], *args: str) -> Result:
    """The command, in this process (a subprocess would cost seconds of imports)."""
    from archive_pipeline.cli import main

    done = CliRunner(env=env).invoke(main, list(args))
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done


def _count(conn, table: sql.Identifier) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


def _exists(conn, schema: str, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, name).as_string(conn),)
                        ).fetchone()[0]


@pytest.fixture
def dotted(conn, schema):
    """A schema whose name holds a dot, ``<schema> old.data``, and the schema its first dot would name,
    ``<schema> old`` (where a name split at its first dot lands)."""
    names = (f"{schema} old.data", f"{schema} old")
    for name in names:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield names[0]
    for name in names:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def _dotted_events(conn, schema: str, dotted: str, action: str = "drop") -> TableSpec:
    """``<schema>.ev`` partitioned by day, its 2024-03-10 partition in the schema ``dotted``, 20 rows."""
    ev = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
                 .format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') TO "
                         "('2024-03-11 00:00+00')").format(sql.Identifier(dotted, "ev_20240310"), ev))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min' "
                         "FROM generate_series(1, 20) g").format(ev))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop" if action == "by hand" else action})


@pytest.mark.parametrize("action", ["drop", "detach", "by hand"])
def test_a_partition_in_a_schema_whose_name_holds_a_dot_is_removed_and_restored_where_it_was(
        action, conn, schema, dotted, store, temp_dir):
    """``CREATE TABLE "old.data".ev_20240310 PARTITION OF public.ev``. Was: the manifest recorded the child as
    the string ``old.data.ev_20240310`` and every reader split it at its first dot: the removal (its dry run
    too) looked up ``old``.``data.ev_20240310`` and refused the day ("table ... does not exist"), and
    `restore --into original` after the partition was dropped re-created the wrong relation,
    ``"old"."data.ev_20240310"``, or failed where that schema did not exist."""
    spec = _dotted_events(conn, schema, dotted, action)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    shown = f'"{dotted}"."ev_20240310"'
    if action != "by hand":  # (a restore after the partition was dropped by hand, the removal aside)
        assert remove_day(conn, spec, DAY, store, dry_run=True).relation == shown
        assert remove_day(conn, spec, DAY, store).relation == shown
        assert _exists(conn, dotted, "ev_20240310") is (action == "detach")
    if action != "drop":
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(dotted, "ev_20240310")))

    back = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert back.fingerprint_checked and back.inserted == 20
    assert not _exists(conn, f"{schema} old", "data.ev_20240310")
    assert _count(conn, sql.Identifier(dotted, "ev_20240310")) == 20
    assert back.created == (shown,)
    partition = load_manifest(store, result.key)["table_definition"]["partition"]
    assert (partition["child_schema"], partition["child_name"]) == (dotted, "ev_20240310")
    assert partition["child"] == f"{dotted}.ev_20240310"  # as before, for readers that know no other field


@pytest.fixture(scope="module")
def encoded_databases(pg):
    """A LATIN1 and a SQL_ASCII database (names are counted in bytes of the database's encoding)."""
    with pg.connect() as admin:
        names = {encoding: f"namehunt_{encoding.lower()}_{admin.info.backend_pid}" for encoding in ("LATIN1", "SQL_ASCII")}
        for encoding, name in names.items():
            admin.execute(sql.SQL("CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
                sql.Identifier(name), sql.Literal(encoding)))
        try:
            yield {encoding: pg.dsn_for("postgres", database=name) for encoding, name in names.items()}
        finally:
            for name in names.values():
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _archived_day(conn, store, temp_dir, schema: str = "public") -> TableSpec:
    """``<schema>.ev (at date, "ñ" text)`` with two rows of DAY, archived."""
    conn.execute(sql.SQL('CREATE TABLE {} (at date, "ñ" text)').format(sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', 'àÿ'), ('2024-03-10', NULL)").format(
        sql.Identifier(schema, "ev")))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    return spec


def test_names_are_counted_and_checked_in_the_databases_encoding(encoded_databases, conn, schema, store, temp_dir):
    """PostgreSQL keeps 63 bytes of a name in the database's encoding. Was: a restore target was counted in UTF-8
    bytes, so ``public.ÜÜÜ…`` (40 characters, 40 bytes in LATIN1) was refused as 80 bytes long, and a name LATIN1
    has no character for (``public.Ünï日本``) failed with "unexpected error" (a UnicodeEncodeError from psycopg);
    the configuration refused that table at load ("longer than PostgreSQL's 63 bytes"), so it could not be
    archived at all. Too long in UTF-8, a configured name is now refused where the database is known, saying so."""
    with psycopg.connect(encoded_databases["LATIN1"], autocommit=True) as latin:
        spec = _archived_day(latin, store, temp_dir)
        long_latin = "Ü" * 40
        assert restore_day(latin, store, spec, DAY, into="new", target=f"public.{long_latin}", temp_dir=temp_dir).rows == 2
        assert _count(latin, sql.Identifier("public", long_latin)) == 2
        with pytest.raises(RestoreError) as refused:
            restore_day(latin, store, spec, DAY, into="new", target="public.Ünï日本", temp_dir=temp_dir)
        assert "its encoding, LATIN1, has no '日'" in str(refused.value), refused.value
        assert (refused.value.table, refused.value.day, refused.value.retryable) == (spec.name, "2024-03-10", False)
        with pytest.raises(RestoreError, match="64 characters long and PostgreSQL keeps 63 bytes"):
            restore_day(latin, store, spec, DAY, into="new", target=f"public.{'Ü' * 64}", temp_dir=temp_dir)
        configured = TableSpec(name=f"public.{long_latin}", day_column="at", start_date=DAY)
        assert archive_partition(latin, configured, DAY, store, temp_dir=temp_dir).rows == 2
    with pytest.raises(SourceError, match=r"is 80 bytes long in UTF8, and PostgreSQL keeps 63 bytes of a name in the "
                                          r"database's encoding \(it is kept as 'é{31}'\)"):
        describe_table(conn, f"{schema}.{'é' * 40}", "at")


def test_non_ascii_table_names_get_readable_asset_keys_of_their_own_and_ascii_ones_keep_theirs():
    """Dagster keys hold only [A-Za-z0-9_]. Was: every letter outside ASCII became ``_``: ``public.日本`` had
    the key ``archive/public/_`` and a second such table (``public.中国``) was refused at load ("map to the same
    asset name"), as were ``public.événements`` beside ``public.evenements``, and ``public.événements`` was
    ``v_nements``; both had the asset tag ``public.__``. Now such a name is spelled in its nearest ASCII with a short hash of the name itself; a name
    that is ASCII keeps the key it had (existing deployments' history stays on it)."""
    from dagster import AssetKey

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.defs.assets import TABLE_TAG, asset_key
    from archive_pipeline.definitions import build_definitions

    names = ["public.日本", "public.中国", "public.événements", "public.evenements", "Ünï.Nasty Events", "public.Events"]
    config = parse_config({"tables": [{"name": n, "day_column": "at", "start_date": "2024-01-01"} for n in names]})
    keys = {spec.name: asset_key(spec).path for spec in config.tables}
    assert keys["public.evenements"] == ["archive", "public", "evenements"]  # ASCII: as it always was
    assert keys["public.Events"] == ["archive", "public", "events"]
    assert keys["public.événements"][:2] == ["archive", "public"]
    assert keys["public.événements"][2].startswith("evenements_")
    assert keys["Ünï.Nasty Events"][1].startswith("uni_") and keys["Ünï.Nasty Events"][2] == "nasty_events"
    assert len({tuple(k) for k in keys.values()}) == len(names)
    assert "_" not in [part for key in keys.values() for part in key]
    again = parse_config({"tables": [{"name": "public.日本", "day_column": "at", "start_date": "2024-01-01"}]})
    assert asset_key(again.tables[0]).path == keys["public.日本"]  # stable: the name's own, not its neighbours'
    defs = build_definitions(config, resources={}, check_source=False)
    graph = defs.resolve_asset_graph()
    assert {AssetKey(k) for k in keys.values()} <= set(graph.get_all_asset_keys())
    tags = {spec.name: graph.get(asset_key(spec)).tags[TABLE_TAG] for spec in config.tables}
    assert len(set(tags.values())) == len(names)  # the UI's filter by table: was "public.__" for both 日本 and 中国
    assert (tags["public.evenements"], tags["public.Events"]) == ("public.evenements", "public.Events")


def test_a_target_in_sql_quotes_names_a_schema_whose_name_holds_a_dot(conn, schema, dotted, store, temp_dir):
    """`restore --target '"old.data".back'`: was split at its first dot into the schema ``"old`` (quote and all)
    and the table ``data".back``, and failed ("schema does not exist"); a relation shown in that quoted form (a
    result's target, a removal's relation) could not be named back. Each part may now be SQL-quoted, as psql
    reads it; an unquoted part stays as the catalog spells it."""
    spec = _dotted_events(conn, schema, dotted)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    back = restore_day(conn, store, spec, DAY, into="new", target=f'"{dotted}".back', temp_dir=temp_dir)
    assert (back.target, back.created, back.rows) == (f'"{dotted}"."back"', (f'"{dotted}"."back"',), 20)
    assert _count(conn, sql.Identifier(dotted, "back")) == 20
    again = restore_day(conn, store, spec, DAY, into="existing", target=back.target, on_conflict="skip",
                        temp_dir=temp_dir)
    assert (again.target, again.inserted) == (back.target, 0)
    mixed = restore_day(conn, store, spec, DAY, into="new", target=f'{schema}."Back ""2"""', temp_dir=temp_dir)
    assert mixed.target == f'{schema}.Back "2"' and _count(conn, sql.Identifier(schema, 'Back "2"')) == 20


def test_the_finalize_a_pending_detach_names_is_the_partition_in_a_schema_holding_a_dot():
    """An interrupted DETACH ... CONCURRENTLY of a partition in the schema ``old.data``: the remedy said
    ``DETACH PARTITION "old".data.ev_1 FINALIZE`` (the name split at its first dot), which names another table."""
    from archive_pipeline.core.source import pending_detach_error

    error = pending_detach_error("public.ev", ("old.data", "Ev 1"), "public.ev")
    assert 'ALTER TABLE public.ev DETACH PARTITION "old.data"."Ev 1" FINALIZE' in error.remedy, error.remedy
    assert error.message.startswith('"old.data"."Ev 1" is pending detach from public.ev'), error.message


def test_every_command_works_in_a_sql_ascii_database(encoded_databases, s3, bucket, store, tmp_path, temp_dir):
    """A SQL_ASCII database stores a name's bytes as the session sends them, and psycopg hands a SQL_ASCII
    session's text back as bytes. Was: `list`, `archive`, `compare` and `prune` there failed for every table, ASCII
    names too ("invalid value for parameter TimeZone: b'Etc/UTC'": a setting read as bytes and set back), and a
    name outside ASCII could not be sent ("unexpected error", a UnicodeEncodeError). Our sessions speak UTF-8."""
    from archive_pipeline.defs.resources import PostgresResource

    dsn = encoded_databases["SQL_ASCII"]
    with psycopg.connect(dsn, autocommit=True, client_encoding="UTF8") as setup:
        setup.execute('CREATE SCHEMA "Ünï"')
        spec = _archived_day(setup, store, temp_dir, schema="Ünï")
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": spec.name, "day_column": "at", "start_date": "2024-03-01",
                                                  "retention": {"keep_days": 1, "action": "delete"}}]},
                                     allow_unicode=True), encoding="utf-8")
    env = {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": dsn, "ARCHIVE_S3_BUCKET": bucket,
           "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250"}
    day = ("--day", DAY.isoformat(), "--json")
    listed = json.loads(_cli(env, "list", *day).stdout)
    assert "error" not in listed and listed["days"][0]["state"] == "archived", listed
    assert json.loads(_cli(env, "compare", *day).stdout)["days"][0]["result"] == "equal"
    assert json.loads(_cli(env, "prune", *day).stdout)["days"][0]["rows"] == 2
    restored = json.loads(_cli(env, "restore", *day, "--into", "new", "--target", "Ünï.événements").stdout)
    assert restored["days"][0]["inserted"] == 2, restored
    with PostgresResource(dsn=dsn).connect() as conn:  # the code location's sessions too
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert _count(conn, sql.Identifier("Ünï", "événements")) == 2


def test_the_command_line_takes_sql_quoted_names_and_names_a_targets_other_spelling(
        pg, s3, bucket, conn, schema, store, temp_dir, tmp_path):
    """A PostgreSQL user writes ``"select"."from"`` for a table named with key words, and ``SELECT.back`` may mean
    ``select.back`` to them. Was: `--table '"s"."from"'` said the table is not in the configuration (configured:
    s.from), and `restore --into existing --target s.Back` said only "does not exist". `--table` reads SQL's
    quotes as `--target` does; a target not found names the table that differs from it only in case."""
    table = sql.Identifier(schema, "from")
    conn.execute(sql.SQL("CREATE TABLE {} (at date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', 'a')").format(table))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "back"), table))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.from", "day_column": "at",
                                                  "start_date": "2024-03-01"}]}), encoding="utf-8")
    env = {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
           "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250"}
    day = ("--day", DAY.isoformat(), "--json")
    archived = json.loads(_cli(env, "archive", "--table", f'"{schema}"."from"', *day).stdout)
    assert archived["days"][0]["table"] == f"{schema}.from", archived
    refused = json.loads(_cli(env, "restore", *day, "--into", "existing", "--target", f"{schema}.Back").stdout)
    assert f"the catalog has the table '{schema}.back', which differs from it only in case" in refused["error"], \
        refused


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_day_archived_from_utf8_restored_into_latin1_names_the_character_it_lacks(
        fmt, encoded_databases, conn, schema, store, temp_dir):
    """Restoring into another database is what a restore is for. Was: a column ``日本`` archived from a UTF-8
    database and restored into a LATIN1 one failed with "unexpected error (UnicodeEncodeError ...)", and a value
    ``値`` said the target's type refuses it ("an enum lacking one of the archived labels")."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL('CREATE TABLE {} (at date, "日本" text, v text)').format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', 'a', 'b')").format(table))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(encoded_databases["LATIN1"], autocommit=True) as latin:
        with pytest.raises(RestoreError) as refused:
            restore_day(latin, store, spec, DAY, into="new", target=f"public.{fmt}_names", temp_dir=temp_dir)
        assert "the archived column '日本' cannot be a column of this database: its encoding, LATIN1, has no '日'" \
            in str(refused.value) and "(UTF8)" in refused.value.remedy, refused.value
        conn.execute(sql.SQL('ALTER TABLE {} DROP COLUMN "日本"').format(table))
        conn.execute(sql.SQL("UPDATE {} SET v = '値'").format(table))
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
        with pytest.raises(RestoreError) as refused:
            restore_day(latin, store, spec, DAY, into="new", target=f"public.{fmt}_values", temp_dir=temp_dir)
        assert "The database's encoding, LATIN1, has no such character" in str(refused.value), refused.value
        assert "(UTF8)" in refused.value.remedy and "enum" not in str(refused.value), refused.value


def test_a_naming_pattern_for_table_names_with_a_percent_sign_says_how_to_write_it():
    """Day tables named ``Ev 20240310 %`` need the pattern ``Ev %Y%m%d %%`` (strftime's literal %). Was: the
    pattern ``Ev %Y%m%d %`` was refused with "'%' is a bad directive ...; use %Y, %m, %d, %H and plain text", which
    does not say how to write the table's own '%'; with ``%%`` every command worked."""
    from archive_pipeline.core.config import ConfigError, parse_config

    entry = {"name": "s.parent", "start_date": "2024-03-10", "partitioning": {"mode": "naming"}}
    with pytest.raises(ConfigError, match=r"\(%% for a table name's '%'\)"):
        parse_config({"tables": [{**entry, "partitioning": {"mode": "naming", "pattern": "Ev %Y%m%d %"}}]})
    spec = parse_config({"tables": [{**entry, "partitioning": {"mode": "naming", "pattern": "Ev %Y%m%d %%"}}]})
    assert spec.tables[0].child_table(DAY) == "Ev 20240310 %"


def test_a_day_table_detached_by_retention_is_not_restored_into_again_but_attached(conn, schema, store, temp_dir):
    """Naming mode, retention action ``detach`` (the day's table leaves its parent, NO INHERIT, and keeps its
    rows). Was: `restore --into original` loaded the day into that table again, doubling its rows, and the
    rollback said the archive "does not hold the rows it was proven to hold". Refused now as a detached
    partition is, with the statement that attaches it again, quoted as its name needs."""
    from archive_pipeline.core.plan import compare_days

    parent, day_table = sql.Identifier(schema, "Parent"), sql.Identifier(schema, 'Ev "20240310"')
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(parent))
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(day_table, parent))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'x' FROM generate_series(1, 5) g").format(day_table))
    spec = TableSpec(name=f"{schema}.Parent", start_date=DAY, partitioning={"mode": "naming", "pattern": 'Ev "%Y%m%d"'},
                     retention={"keep_days": 1, "action": "detach"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert remove_day(conn, spec, DAY, store).rows == 5
    with pytest.raises(RestoreError, match="no longer inherits from") as refused:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    conn.execute(refused.value.message.split("attach it again (")[1].split("), or drop it")[0])  # as pasted
    assert _count(conn, parent) == 5 and [c.result for c in compare_days(conn, spec, store, [DAY])] == ["equal"]


def test_an_older_manifest_naming_a_partition_in_a_dotted_schema_in_one_string_is_read_where_it_can_be(
        conn, schema, store, temp_dir):
    """A manifest written before the partition's schema and name were recorded apart has only ``child``,
    ``"<schema> old.data.ev_20240310"``. Was: read at its first dot, so `restore --into original` failed ("schema
    <schema> old does not exist"), or, where that schema existed, re-created the wrong relation. Now the reading
    whose schema exists is taken, and two that could be meant are refused naming both."""
    from archive_pipeline.core import keys
    from archive_pipeline.core.manifest import encode_manifest

    dotted = f"{schema} old.data"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(dotted)))
    try:
        spec = _dotted_events(conn, schema, dotted, "by hand")
        key = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).key
        manifest = load_manifest(store, key)
        for field in ("child_schema", "child_name"):
            del manifest["table_definition"]["partition"][field]
        store.put_bytes(keys.manifest_key(key), encode_manifest(manifest), "application/json")
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(dotted, "ev_20240310")))
        assert restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir).inserted == 20
        assert _count(conn, sql.Identifier(dotted, "ev_20240310")) == 20
        conn.execute(sql.SQL("DROP TABLE {}; CREATE SCHEMA {}").format(
            sql.Identifier(dotted, "ev_20240310"), sql.Identifier(f"{schema} old")))
        with pytest.raises(RestoreError, match=f"the table 'data.ev_20240310' of the schema '{schema} old' or the "
                                               f"table 'ev_20240310' of the schema '{dotted}', and schemas of both"):
            restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(dotted), sql.Identifier(f"{schema} old")))
