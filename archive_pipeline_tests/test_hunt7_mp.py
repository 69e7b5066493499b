"""Hunt 7 (mp): configuration at the edges, as a user writes it."""

from __future__ import annotations

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import ConfigError, TableSpec, load_config


def _write(tmp_path, text: str):
    path = tmp_path / "archive_tables.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("zone_name", ["Europe", "America/Argentina", "Etc"])
def test_a_timezone_naming_a_region_folder_is_a_config_error(tmp_path, zone_name):
    """A user writes `timezone: Europe` (the city forgotten) or `America/Argentina` (a folder of zones,
    the city forgotten). The load crashes with a bare IsADirectoryError quoting tzdata's path inside the
    virtualenv; it should be a ConfigError naming the file, the table and the setting 'timezone', like
    any other unknown zone ('Europe/' and 'Etc/Unknown' are refused so)."""
    path = _write(tmp_path, f"tables:\n  - name: public.events\n    day_column: created_at\n"
                            f"    start_date: 2024-01-01\n    timezone: {zone_name}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "public.events" in message and "timezone" in message


def test_a_very_long_timezone_is_a_config_error(tmp_path):
    """A timezone value of 300 characters (a pasted paragraph, a templating mistake) crashes the load
    with a bare OSError "File name too long" quoting tzdata's path; it should be refused as an unknown
    time zone naming the file, the table and the setting, as a 255-character one is."""
    path = _write(tmp_path, f"tables:\n  - name: public.events\n    day_column: created_at\n"
                            f"    start_date: 2024-01-01\n    timezone: {'A' * 300}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "public.events" in message and "timezone" in message


@pytest.mark.parametrize("typo", ["day column", "'day_column '", "dáy_column"])
def test_a_mistyped_setting_with_a_space_or_accent_gets_the_nearest_name(tmp_path, typo):
    """A user writes `day column:` (a space for the underscore), `'day_column ':` (a trailing space inside
    quotes) or `dáy_column:` (a dead key). The load says "a setting of 10 characters: unknown setting (not
    shown: is this the YAML file of the tables?)", with no nearest valid name, and suggests the file is the
    wrong one. A typo of a known setting should get the nearest valid name ('day_column'), as `day-column`
    and `Day_Column` do (the key itself need not be quoted)."""
    path = _write(tmp_path, f"tables:\n  - name: public.events\n    {typo}: created_at\n"
                            "    start_date: 2024-01-01\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "public.events" in message and "did you mean 'day_column'" in message, message


def _exception_chain(error: BaseException | None) -> list[BaseException]:
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


@pytest.mark.parametrize("typo", ["tabels", "schedul", "asset_key_prefx"])
def test_a_mistyped_component_attribute_gets_the_nearest_name(tmp_path, monkeypatch, typo):
    """A user writes the component's inline settings in defs.yaml (README: "Both forms are validated by the
    same code and fail the load with the same messages as the file") and mistypes a section: `tabels:`.
    In archive_tables.yaml that is "setting 'tabels': unknown setting; did you mean 'tables'?"; in the
    component's attributes the load fails with pydantic's bare "Extra inputs are not permitted" for
    ArchiveTablesComponentModel, no nearest valid name. It should name the setting and suggest the nearest
    valid one as the file does."""
    from dagster import load_from_defs_folder

    from archive_pipeline_tests.test_deploy import _make_project

    monkeypatch.setenv("ARCHIVE_PG_DSN", "host=127.0.0.1 port=1 dbname=x")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
    sections = {"tables": "tables:\n    - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n",
                "schedule": "schedule: {hour: 2}\n", "asset_key_prefix": "asset_key_prefix: [eu]\n"}
    right = {"tabels": "tables", "schedul": "schedule", "asset_key_prefx": "asset_key_prefix"}[typo]
    attributes = "".join(f"  {text.replace(right + ':', typo + ':', 1) if name == right else text}"
                         for name, text in sections.items())
    _make_project(tmp_path, "type: archive_pipeline.defs.component.ArchiveTablesComponent\nattributes:\n"
                            + attributes)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception) as info:
        load_from_defs_folder(path_within_project=tmp_path)
    text = "\n".join(str(e) for e in _exception_chain(info.value))
    assert typo in text and f"did you mean '{right}'" in text, text


@pytest.mark.parametrize("before,after", [("Europe/Kiev", "Europe/Kyiv"), ("UTC", "Etc/UTC"),
                                          ("Asia/Calcutta", "Asia/Kolkata")])
def test_renaming_a_zone_to_its_canonical_name_keeps_the_archived_days(conn, schema, store, before, after):
    """A table archived with `timezone: Europe/Kiev` is later written with the zone's current IANA name,
    `Europe/Kyiv` (tzdata 2022b renamed it; Kiev is a link to it, the very same rules), or `UTC` as
    `Etc/UTC`. Re-running an archived day with unchanged rows now fails with ForeignArchiveError: "holds the
    daily period 2024-03-10 in Europe/Kiev, and the table is now configured as daily in Europe/Kyiv: another
    period with the same key, not this one's rows; set overwrite" — but it is the same period and the same
    rows. The change should be handled (the period compared by its instants, not the zone's spelling): the
    day is found identical and skipped."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-10 13:00+00')").format(table))
    first = archive_partition(conn, TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                                              timezone=before), "2024-03-10", store)
    assert first.rows == 2 and not first.skipped
    again = archive_partition(conn, TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                                              timezone=after), "2024-03-10", store)
    assert again.skipped and again.rows == 2


@pytest.mark.parametrize("given", ["settings", "path"])
def test_the_factory_given_the_settings_or_the_file_path_says_what_it_takes(tmp_path, given):
    """A Python user calls the factory with what they have at hand: `build_definitions({"tables": [...]})`
    (the settings dict the README shows parse_config taking) or `build_definitions("archive_tables.yaml")`.
    The factory fails with a bare `AttributeError: 'dict' object has no attribute 'origin'` (with resources
    given: '... no attribute 'tables''; 'str' for the path), from deep inside; an empty dict is taken as "no
    config" and ./archive_tables.yaml is read instead. It should either take them (parse/load them) or refuse with a message that says what it
    takes: an ArchiveConfig from load_config(path) or parse_config(dict)."""
    from dagster_aws.s3 import S3Resource

    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource

    settings = {"tables": [{"name": "public.events", "day_column": "created_at", "start_date": "2024-01-01"}]}
    path = _write(tmp_path, "tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n")
    resources = {"postgres": PostgresResource(dsn="postgresql://nobody@127.0.0.1:1/x"),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(), bucket="b")}
    try:
        defs = build_definitions(settings if given == "settings" else str(path), resources, check_source=False)
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        assert not isinstance(exc, AttributeError) and ("parse_config" in text or "load_config" in text), (
            f"{type(exc).__name__}: {text}")
    else:
        assert [key.path for key in defs.resolve_asset_graph().get_all_asset_keys()
                if key.path[0] == "archive"] == [["archive", "public", "events"]]


@pytest.mark.parametrize("padding", ["\n", " "])
def test_a_config_variable_with_white_space_around_it_finds_the_file(tmp_path, monkeypatch, padding):
    """A deployment sets ARCHIVE_PIPELINE_CONFIG from a mounted file or a templated manifest, and the value
    ends in a newline (or starts with a space). Every other variable is read without the white space around
    it (ARCHIVE_PG_DSN, ARCHIVE_S3_*: "a value mounted from a file ends in a newline"), but this one fails the
    load with "archive configuration /path/tables.yaml\\n not found ($ARCHIVE_PIPELINE_CONFIG names it ...)",
    naming a file that exists, the white space invisible in the message. It should load the file (or at
    least say that the variable's value holds white space)."""
    path = _write(tmp_path, "tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n")
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", f"{path}{padding}" if padding == "\n" else f"{padding}{path}")
    try:
        config = load_config()
    except ConfigError as exc:
        assert "white space" in str(exc) or "whitespace" in str(exc), str(exc)
    else:
        assert [spec.name for spec in config.tables] == ["public.events"]


def test_a_component_key_template_with_double_braces_does_not_lose_the_prefix_silently():
    """In a component's defs.yaml, where Dagster users write templates as `{{ ... }}`, a user writes the
    inline key_template `"{{ prefix }}/{schema}.{table}/{date}.{ext}"`. Dagster renders the attributes as
    Jinja first, `prefix` is no name in its scope and becomes the empty string, and the table loads with
    key_template '/{schema}.{table}/{date}.{ext}': every archive is written outside ARCHIVE_S3_PREFIX, at
    the bucket's root, and nothing says so. The same line in archive_tables.yaml is taken as written. The
    value should not be dropped silently: the load should refuse it (naming key_template / the unknown name
    'prefix') or keep it as written."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    attributes = ("tables:\n  - name: public.events\n    day_column: created_at\n    start_date: 2024-01-01\n"
                  '    key_template: "{{ prefix }}/{schema}.{table}/{date}.{ext}"\n')
    try:
        component = ArchiveTablesComponent.resolve_from_yaml(attributes)
        template = component.archive_config().tables[0].key_template
    except Exception as exc:  # noqa: BLE001 - refused: it must say what
        assert "prefix" in str(exc), f"{type(exc).__name__}: {exc}"
    else:
        assert "prefix" in template, template


def test_a_changed_day_column_is_named_when_an_archived_day_is_refused(conn, schema, store):
    """A user archives a table by `day_column: created_at`, then edits the YAML to `day_column: updated_at`
    (the column they meant) and re-runs an archived day. The run is refused as "changed since it was
    archived ...: it has 1 rows now, the archive holds 2 (rows arrived or were deleted late)": blaming late
    rows in the database for what is a change of the table's configuration (the manifest records
    day_column 'created_at'). The refusal should say that the day_column changed (created_at → updated_at),
    so the user knows the archive holds other rows by design and what overwrite would replace."""
    from archive_pipeline.core.errors import ArchiveError

    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, updated_at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00', '2024-03-10 13:00+00'), "
                         "(2, '2024-03-10 12:00+00', '2024-03-12 09:00+00')").format(table))
    archive_partition(conn, TableSpec(name=f"{schema}.ev", day_column="created_at", start_date="2024-01-01"),
                      "2024-03-10", store)
    with pytest.raises(ArchiveError) as info:
        archive_partition(conn, TableSpec(name=f"{schema}.ev", day_column="updated_at", start_date="2024-01-01"),
                          "2024-03-10", store)
    message = str(info.value)
    assert "day_column" in message and "created_at" in message and "updated_at" in message, message


@pytest.mark.parametrize("region", ["eu_west_1", "eu-west-1.", "-eu-west-1"])
def test_a_region_botocore_refuses_fails_the_load_as_on_the_command_line(tmp_path, monkeypatch, region):
    """ARCHIVE_S3_REGION=eu_west_1 (underscores for hyphens). The command line refuses it before anything runs:
    "$ARCHIVE_S3_REGION 'eu_west_1' is not a region name: set it to the store's region ...". The code
    location loads it without a word (only white space and control characters are checked), and then every
    run, check and retention step fails building the S3 client (botocore's InvalidRegionError). The load
    should fail naming the variable, as a bucket name botocore refuses does."""
    from archive_pipeline.definitions import build_definitions

    path = _write(tmp_path, "tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n")
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(path))
    monkeypatch.setenv("ARCHIVE_PG_DSN", "host=127.0.0.1 port=1 dbname=x")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
    monkeypatch.setenv("ARCHIVE_S3_REGION", region)
    with pytest.raises(ConfigError) as info:
        build_definitions(check_source=False)
    assert "ARCHIVE_S3_REGION" in str(info.value)


@pytest.mark.parametrize("variable", ["ARCHIVE_PG_DSN", "ARCHIVE_PG_PRIMARY_DSN"])
@pytest.mark.parametrize("dsn", ["postgresql://archiver:s3cr3t@127.0.0.1:54x32/db",
                                 "host=127.0.0.1 dbname=db user=archiver pasword=s3cr3t"])
def test_a_connection_string_libpq_cannot_parse_fails_the_load(tmp_path, monkeypatch, variable, dsn):
    """The DSN variable holds a connection string libpq cannot even parse (a mistyped port, a misspelled
    key such as `pasword=`). The command line refuses it before anything runs ("$ARCHIVE_PG_DSN is not a
    valid connection string: ..."). The code location loads: ARCHIVE_PG_DSN with a warning that it "could not
    reach the source database ... runs will fail until it is reachable" (no wait fixes a malformed string),
    ARCHIVE_PG_PRIMARY_DSN without a word, its first removal or deep check failing. The load should fail
    with a ConfigError naming the variable (and not the password)."""
    from archive_pipeline.definitions import build_definitions

    path = _write(tmp_path, "tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n")
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(path))
    monkeypatch.setenv("ARCHIVE_PG_DSN", "host=127.0.0.1 port=1 dbname=x connect_timeout=1")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
    monkeypatch.setenv(variable, dsn)
    with pytest.raises(ConfigError) as info:
        build_definitions()
    assert variable in str(info.value) and "s3cr3t" not in str(info.value)


@pytest.mark.parametrize("setting,value,nearest", [
    ("key_template", '"{prefix}/{schema}.{tabel}/{date}.{ext}"', "table"),
    ("key_template", '"{prefix}/{schema}.{table}/{dat}.{ext}"', "date"),
    ("timezone", "Europe/Berln", "Europe/Berlin"),
    ("timezone", "America/New York", "America/New_York"),
])
def test_a_misspelled_placeholder_or_zone_gets_the_nearest_valid_name(tmp_path, setting, value, nearest):
    """A user mistypes a key_template placeholder (`{tabel}`, `{dat}`) or a zone (`Europe/Berln`, `America/New
    York`). The load is refused naming the table and setting, but with no nearest valid name: "uses unknown
    field(s) ['tabel']; allowed: [...eleven names...]", "unknown time zone 'Europe/Berln'; use an IANA name such
    as 'UTC' or 'Europe/Berlin'". The promise for a typo is the nearest valid name, as an unknown setting gets
    ("did you mean 'day_column'?"): here 'table', 'date', 'Europe/Berlin', 'America/New_York'."""
    path = _write(tmp_path, f"tables:\n  - name: public.events\n    day_column: created_at\n"
                            f"    start_date: 2024-01-01\n    {setting}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert setting in message and "did you mean" in message and repr(nearest) in message.split("did you mean")[1], \
        message


def test_the_same_table_listed_twice_is_called_a_duplicate_not_a_name_clash(tmp_path):
    """A user lists public.events twice (a copy-paste, or a second entry meant to archive it as parquet too).
    The load is refused with "tables 'public.events' and 'public.events' map to the same asset name
    'public/events' (Dagster names keep lower-case letters, digits and '_'); rename one of them in the
    database, or archive it from a second code location": advice for two different tables whose names
    meet, telling the user to rename a production table. It should say the table is listed twice (entries
    1 and 2) and to keep one entry."""
    path = _write(tmp_path, "tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n"
                            "  - {name: public.events, day_column: created_at, start_date: 2024-01-01, "
                            "format: parquet}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "twice" in message and "rename one of them in the database" not in message, message
