"""Hunt 11 qh: configuration and time at their edges (zones, granularities, the calendar's ends, YAML).
Each test asserts the right behaviour and fails on the code as it was when written."""

from __future__ import annotations

from psycopg import sql

from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config


def test_day_in_the_year_1_of_a_zone_east_of_utc_is_not_called_a_reversed_range(pg, s3, bucket, conn, schema,
                                                                                 tmp_path):
    """``archive-pipeline list --day 0001-01-01`` (or ``archive``/``compare``) on a daily Europe/Berlin table: the
    day's bounds in Berlin (LMT +00:53) fall before Python's first instant, both ends are clamped to the same
    edge (plan._bound's OverflowError branch), and the command exits 2 with "--from 0001-01-01 is after --to
    0001-01-01 (in Europe/Berlin ...)": the user gave no --from or --to, and one day is never after itself. The
    same day on a UTC table says what is true: no period of the table in the selection (before start_date).
    Expected: no false "after" claim; the message names the table's start_date (as for any day before it).
    Fix idea: in reversed_range, compare the clamped bounds only when neither overflowed (or treat equal
    clamped edges as "before start_date")."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(sql.Identifier(schema, "ev")))
    config = write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-01-01",
                                      "timezone": "Europe/Berlin"}])
    result = cli(make_env(pg, s3.endpoint_url, bucket, config), "list", "--day", "0001-01-01")
    said = result.stdout + result.stderr
    assert "is after --to" not in said, said
    assert "2024-01-01" in said, said  # the start_date the day lies before


def test_a_component_attribute_naming_an_unset_environment_variable_is_refused_not_rendered_as_none(monkeypatch):
    """A defs.yaml of ArchiveTablesComponent writes ``key_template: "{{ env.ARCHIVE_KEY_ROOT }}/{prefix}/{schema}.
    {table}/{date}.{ext}"`` (Dagster's env templating, which the component renders since hunt 7), and the code
    location starts where ARCHIVE_KEY_ROOT is not set (a forgotten line of the deployment's env file). What
    happens: Dagster's ``env`` gives None, Jinja renders it as the text "None", and the configuration loads with
    the key template ``None/{prefix}/...``: every archive of the table is written under ``None/archive/...``,
    outside ARCHIVE_S3_PREFIX, silently (a table ``name: "{{ env.ARCHIVE_SCHEMA }}.events"`` likewise becomes
    ``None.events``, and its runs fail "table does not exist"). Expected: the load fails with a ConfigError naming
    the table, the setting and the environment variable that is not set. Fix idea: in _resolved_tables, refuse
    an ``env.X`` / ``env('X')`` whose variable is unset (or render with jinja2.StrictUndefined semantics)."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    monkeypatch.delenv("ARCHIVE_KEY_ROOT", raising=False)
    attributes = ('tables:\n  - name: public.events\n    day_column: created_at\n    start_date: 2024-01-01\n'
                  '    key_template: "{{ env.ARCHIVE_KEY_ROOT }}/{prefix}/{schema}.{table}/{date}.{ext}"\n'
                  "check_source: false\n")
    templates = None
    try:
        component = ArchiveTablesComponent.resolve_from_yaml(attributes)
        templates = [spec.key_template for spec in component.archive_config().tables]
    except Exception as exc:  # noqa: BLE001 - refused at load (Dagster may wrap it): it must name the variable
        assert "ARCHIVE_KEY_ROOT" in str(exc), exc
        return
    raise AssertionError(f"loaded with the key template(s) {templates}: an unset variable rendered as text")


def test_a_deeply_nested_yaml_value_fails_the_load_as_a_config_error_naming_the_file(tmp_path):
    """A table list whose one value is nested 600 levels deep (``retention: [[[[...]]]]``: a generated file gone
    wrong, a hostile one) is loaded. What happens: PyYAML's composer recurses once per level, and load_config
    dies with a bare RecursionError ("maximum recursion depth exceeded"), naming neither the file nor the
    setting; the CLI and the code location's load show a Python crash. (300 levels load and are refused properly
    as a setting of the wrong type.) Expected: a ConfigError naming the file, as for any other YAML it cannot
    read. Fix idea: catch RecursionError beside yaml.YAMLError in load_config (and compose_yaml) and say the
    file nests too deeply."""
    import pytest

    from archive_pipeline.core.config import ConfigError, load_config

    depth = 600
    path = tmp_path / "tables.yaml"
    path.write_text("tables:\n  - name: public.ev\n    day_column: at\n    start_date: 2024-01-01\n"
                    f"    retention: {'[' * depth}{']' * depth}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(path) in str(refused.value), refused.value


def test_a_setting_key_yaml_reads_as_a_boolean_is_named_as_written_not_as_1(tmp_path):
    """A table entry holds a key YAML 1.1 reads as a boolean (``on: true``, ``yes: ...``, ``off: ...``; e.g. a
    block pasted from a CI file, or a setting meant as ``running: on`` written one level too far out). What
    happens: the load fails with "table 'public.ev', setting '1': Keys should be strings": the file holds no
    setting '1', and the message says neither what was written (``on``) nor why it is not a string, nor on
    which line; the user looks for a '1' that is not there. (A value that YAML reads as a boolean is named as
    written, with the line and the fix: ``day_column: off`` "reads as the boolean False ... quote it".)
    Expected: the key named as written (``on``), with its line, saying YAML 1.1 reads it as a boolean.
    Fix idea: in _misleading_settings, report a plain key node tagged bool/int/float/null like _not_text does
    for values."""
    import pytest

    from archive_pipeline.core.config import ConfigError, load_config

    path = tmp_path / "tables.yaml"
    path.write_text("tables:\n  - name: public.ev\n    day_column: at\n    start_date: 2024-01-01\n    on: true\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert "'1'" not in message, message
    assert "'on'" in message or "on:" in message, message


def test_a_prefix_of_one_slash_is_not_refused_for_a_double_slash_it_does_not_hold():
    """ARCHIVE_S3_PREFIX is set to ``/`` (meaning "the bucket's root", as a path would). What happens: the load
    fails "$ARCHIVE_S3_PREFIX '/' cannot begin the archives' keys: it holds an empty part between two slashes
    ('//') ...": the value holds no '//', and keys rendered under it are the keys without a prefix (render and
    S3Store strip the slashes around a prefix); meanwhile ``archive//``, which does hold a '//', is accepted
    (its trailing slashes are stripped). prefix_problem splits ``'/'.strip('/')``, the empty string, and finds an
    empty part. Expected: ``/`` accepted as no prefix (the keys are those of an unset ARCHIVE_S3_PREFIX), or
    refused with a message that is true of it (e.g. "a prefix of only slashes: unset it for the bucket's root"),
    never a '//' it does not hold. Fix idea: in prefix_problem, return None (or a message of its own) when
    ``prefix.strip('/')`` is empty."""
    from archive_pipeline.core.config import ConfigError
    from archive_pipeline.core.environment import check_s3_settings

    try:
        check_s3_settings({"ARCHIVE_S3_PREFIX": "/", "ARCHIVE_S3_BUCKET": "archive"})
    except ConfigError as exc:
        assert "'//'" not in str(exc) and "between two slashes" not in str(exc), exc
