"""Hunt 11 (qb): hostile identifiers end to end — names with line feeds, tabs, bidi controls, NFC/NFD twins,
driven through the command line's output, restore's column mapping and the messages that name them."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

import psycopg
import pytest
import yaml
from click.testing import CliRunner
from psycopg import sql

from archive_pipeline.cli import main
from archive_pipeline_tests.test_namehunt import encoded_databases  # noqa: F401 (a fixture)

DAY = dt.date(2024, 3, 10)


def _cli(env: dict[str, str], *args: str):
    done = CliRunner(env=env).invoke(main, list(args))
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done


def _env(pg, s3, bucket, config) -> dict[str, str]:
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250"}


def _one_row_tables(conn, names: list[tuple[str, str]]) -> list[dict]:
    """A schema and a one-row table for each (schema, table); their entries, keyed by the table alone (the
    schema's name is then in no key: the load refuses a control character only in a key)."""
    entries = []
    for schema_name, table_name in names:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
        table = sql.Identifier(schema_name, table_name)
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00')").format(table))
        entries.append({"name": f"{schema_name}.{table_name}", "day_column": "at", "start_date": DAY.isoformat(),
                        "key_template": "{prefix}/{table}/{date}.{ext}"})
    return entries


def test_a_schema_named_with_a_line_feed_or_a_tab_is_printed_escaped_by_list_and_archive(
        pg, s3, bucket, conn, schema, tmp_path):
    """A schema whose name holds a line feed (``ops<LF>live``) or a tab, archived with a key_template that leaves
    the schema out of the key (so the load accepts it: it refuses control characters only in keys). What happens
    now: ``archive``, ``list`` and ``verify`` print the name raw: the table's cell breaks into two lines
    (``t1`` / ``live.ev0``, read as a name wrapped at a space: ``t1 live.ev0``, which is no table), and
    ``list``'s summary line is split in two, its second half ``live.ev0: 1 archived`` naming a table that does not
    exist. The README promises "Names and values from the database are printed with their control characters
    escaped" (the CLI's ``_CONTROL`` leaves out LF and TAB, for its own multi-line messages). What should happen:
    the name shows as ``t1\\nlive.ev0`` / ``t1\\tlive.ev1``, as the usage error already spells it.
    Fix idea: escape control characters in names (table cells, the name in summary lines) before they are
    joined into multi-line text, or escape LF/TAB in every table cell."""
    lf, tab = f"{schema}\nlive", f"{schema}\tlive"
    entries = _one_row_tables(conn, [(lf, "ev0"), (tab, "ev1")])
    try:
        config = tmp_path / "tables.yaml"
        config.write_text(yaml.safe_dump({"tables": entries}, allow_unicode=True), encoding="utf-8")
        env = _env(pg, s3, bucket, config)
        for args in (("archive", "--day", DAY.isoformat()), ("list",), ("verify",)):
            shown = _cli(env, *args)
            assert shown.exit_code == 0, shown.stdout + shown.stderr
            assert f"{schema}\\nlive.ev0" in shown.stdout and f"{schema}\\tlive.ev1" in shown.stdout, \
                (args, shown.stdout)
            assert not re.search(r"^live\.ev0", shown.stdout, re.M), (args, shown.stdout)  # no half of a name
            assert "\t" not in shown.stdout, (args, repr(shown.stdout))
    finally:
        for name in (lf, tab):
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def test_a_name_with_a_bidi_override_does_not_reverse_the_rest_of_its_row(pg, s3, bucket, conn, schema, tmp_path):
    """A schema whose name holds U+202E RIGHT-TO-LEFT OVERRIDE (``t1<RLO>live``; pasted from RTL text, or
    planted). What happens now: ``list`` prints it raw, and a terminal then renders the rest of the line right to
    left: the row reads ``… 1ve.evil  01-30-4202  devihcra  1 …`` — the day, the state, the row count and the key
    shown reversed (``2024-03-10`` as ``01-30-4202``), and the name itself looks like another one. The CLI
    escapes C0/C1 controls for exactly this reason (a name must not change how the terminal shows the output);
    the Unicode bidi controls (U+202A..U+202E, U+2066..U+2069, U+200E/U+200F, U+061C) do the same and are left raw.
    What should happen: shown escaped (``\\u202e``) as a control character is; ``--json`` keeps the name exact.
    Fix idea: add the bidi format characters to the CLI's ``_CONTROL``."""
    rlo = f"{schema}\u202elive"
    entries = _one_row_tables(conn, [(rlo, "ev1")])
    try:
        config = tmp_path / "tables.yaml"
        config.write_text(yaml.safe_dump({"tables": entries}, allow_unicode=True), encoding="utf-8")
        env = _env(pg, s3, bucket, config)
        assert _cli(env, "archive", "--day", DAY.isoformat()).exit_code == 0
        for args in (("list",), ("verify",)):
            shown = _cli(env, *args)
            assert shown.exit_code == 0, shown.stdout + shown.stderr
            assert "\u202e" not in shown.stdout, (args, ascii(shown.stdout))
            assert f"{schema}\\u202elive.ev1" in shown.stdout, (args, ascii(shown.stdout))
        as_json = _cli(env, "list", "--json")
        assert "\u202e" in as_json.stdout or "\\u202e" in as_json.stdout  # exact there
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(rlo)))


def test_restore_into_an_existing_table_whose_column_differs_only_in_normal_form_names_that_column(
        conn, schema, store, temp_dir):
    """A table with a column ``café`` spelled NFD (``e`` + U+0301, as macOS file names give it) is archived; the
    user restores the day into an existing table they created by hand, typing ``café`` (NFC). What happens now:
    ``RestoreError: ... the table, column or schema does not exist (any more) (UndefinedColumn: column "café" of
    relation "tgt" does not exist ...); to fix: ... add the one named``: the column it names looks exactly like
    the target's own, and ``ALTER TABLE tgt ADD COLUMN "café"`` typed by the user says it already exists. Missing
    tables and configured columns name such a lookalike (``_differs``: "differs from it only in how its letters
    are encoded (Unicode NFC against NFD: 'caf\\xe9' against 'cafe\\u0301')"); the restore's missing column does
    not. What should happen: the message names the target's column that differs only in normal form, with both
    spellings told apart (``ascii()``), so the user renames it. Fix idea: on UndefinedColumn, look the archived
    names up among the target's columns with source.lookalike_hint."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.restore import RestoreError, restore_day

    nfc, nfd = (unicodedata.normalize(form, "café") for form in ("NFC", "NFD"))
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz, {} text)").format(
        sql.Identifier(schema, "ev"), sql.Identifier(nfd)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 'x')").format(sql.Identifier(schema, "ev")))
    spec = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01"}]}).tables[0]
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz, {} text)").format(
        sql.Identifier(schema, "tgt"), sql.Identifier(nfc)))
    try:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.tgt", temp_dir=temp_dir)
    except RestoreError as exc:
        said = f"{exc} {exc.remedy}"
    else:
        raise AssertionError("restored into a table that lacks the archived column")
    assert ascii(nfd) in said and ascii(nfc) in said, said  # the two spellings told apart
    assert "NFC" in said or "normal form" in said, said


def test_a_table_name_is_printed_as_it_is_not_reworded_as_a_core_message(pg, s3, bucket, conn, schema, tmp_path):
    """Tables named ``imports (overwrite)`` and ``retrying later`` (PostgreSQL takes any text as a quoted name).
    What happens now: the command line passes every string it prints, table names and keys included, through
    ``_for_the_cli``, which rewords the core's Dagster phrasing for the command line: ``list`` and ``verify`` show
    the tables as ``imports (--overwrite)`` and ``try again later``, and the keys likewise, names that do not
    exist (pasted into ``--table`` they are refused). What should happen: names and keys are printed as they are;
    only the core's own messages are reworded. Fix idea: apply ``_for_the_cli`` to messages (errors, notes,
    remedies), not to cells and lines that hold names or keys."""
    entries = []
    for name in ("imports (overwrite)", "retrying later"):
        table = sql.Identifier(schema, name)
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00')").format(table))
        entries.append({"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat()})
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": entries}), encoding="utf-8")
    env = _env(pg, s3, bucket, config)
    assert _cli(env, "archive", "--day", DAY.isoformat()).exit_code == 0
    for args in (("list",), ("verify",)):
        shown = _cli(env, *args)
        assert shown.exit_code == 0, shown.stdout + shown.stderr
        assert f"{schema}.imports (overwrite)" in shown.stdout and "(--overwrite)" not in shown.stdout, shown.stdout
        assert f"{schema}.retrying later" in shown.stdout and "try again later" not in shown.stdout, shown.stdout


@pytest.mark.parametrize("columns", [["Ü" * 35 + "_a"], ["Ü" * 35 + "_a", "Ü" * 35 + "_b"]],
                         ids=["one-long-column", "two-that-meet-when-cut"])
def test_an_archived_column_name_longer_than_63_bytes_in_the_targets_encoding_is_refused_naming_it(
        columns, encoded_databases, conn, schema, store, temp_dir):  # noqa: F811
    """A LATIN1 database's table has a column ``ÜÜ…Ü_a`` (35 ``Ü``: 37 bytes there, a valid name); its day is
    restored into a UTF-8 database, where the same name is 72 bytes and PostgreSQL cuts it to 63 (31 ``Ü``).
    ``_require_column_names`` checks only that the target's encoding has every character, not the length.
    What happens now, ``into='new'``: with one such column the restore creates the table (the name cut short)
    and then refuses it: "t.back has no column(s) ['ÜÜ…_a']" — about a table it created itself, with no
    remedy; with two (``…_a``, ``…_b``) that meet when cut: "the server rejected the archiver's SQL
    (DuplicateColumn: column "ÜÜ…Ü" specified more than once) … report it with this message", a bug report for
    a name PostgreSQL cannot hold. The restore target's own name is counted in the database's encoding
    (README: "a name is checked in the database's own encoding before anything is done: PostgreSQL keeps 63 bytes
    of it there"); its archived columns are not. What should happen: refused before anything is downloaded or
    created, naming the column and that it is longer than 63 bytes in this database's encoding (the remedy:
    restore into a database whose encoding holds it, e.g. LATIN1), as a missing character already is.
    Fix idea: _require_column_names uses source.stored_name_problem (characters and bytes), not only
    missing_character."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.restore import RestoreError, restore_day

    with psycopg.connect(encoded_databases["LATIN1"], autocommit=True) as latin:
        latin.execute("DROP TABLE IF EXISTS ev")
        latin.execute(sql.SQL("CREATE TABLE ev (id int, at timestamptz, {})").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns)))
        latin.execute(sql.SQL("INSERT INTO ev VALUES (1, '2024-03-10 01:00+00', {})").format(
            sql.SQL(", ").join(sql.Literal(c[-1]) for c in columns)))
        spec = parse_config({"tables": [{"name": "public.ev", "day_column": "at", "start_date": "2024-03-01"}]}).tables[0]
        archive_partition(latin, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(RestoreError) as refused:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    said = f"{refused.value} {refused.value.remedy}"
    assert columns[0] in said and "63 bytes" in said, said
    assert "report it" not in said and "has no column" not in said, said
    assert conn.execute("SELECT pg_catalog.to_regclass(%s)", (f"{schema}.back",)).fetchone()[0] is None
