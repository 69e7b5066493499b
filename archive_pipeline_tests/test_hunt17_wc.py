"""Hunt 17 (wc): configuration at its edges and day boundaries (the YAML file and the environment the README
documents, key templates, zones, midnights). Each test asserts the right behaviour and fails on the bug."""

from __future__ import annotations

import pytest

from archive_pipeline.core.config import ConfigError, load_config


def _table_with(tmp_path, setting: str) -> str:
    path = tmp_path / "tables.yaml"
    path.write_text("tables:\n  - name: public.events\n    day_column: created_at\n    start_date: 2024-01-01\n"
                    f"    {setting}\n")
    return str(path)


@pytest.mark.parametrize("template", ["{prefix}/{schema}.{table}/{date}.{ext}", "{period}"])
def test_an_unquoted_key_template_is_named_with_the_quotes_to_add(tmp_path, template):
    """A key template starts with ``{`` (the README's own default, ``{prefix}/{schema}.{table}/...``), and YAML reads
    a plain value starting with ``{`` as a flow mapping: written without the README's quotes,
    ``key_template: {prefix}/{schema}.{table}/{date}.{ext}`` fails the load with PyYAML's bare "is not valid YAML:
    while parsing a block mapping ... expected <block end>, but found '<scalar>' ... line 5, column 27" (no table, no
    setting, no remedy), and ``key_template: {period}`` (valid YAML: the mapping {period: null}) with "table
    'public.events', setting 'key_template': Input should be a valid string", which does not say why a template is
    not a string. The README: a mistake fails the load "with a message naming the file, the table and the setting",
    and a text setting YAML reads as something else is "named as written, with the quotes to add" (as done for
    ``day_column: off`` and ``name: 2024.10``). Should: both name table 'public.events', setting 'key_template'
    and say to quote the template (key_template: "{prefix}/..."). Fix idea: in _misleading_settings treat a flow
    mapping (node.flow_style) under a text setting like _not_text does; for the parse error, look at the line of
    problem_mark and, when it is `<setting>: {`, name the setting and the quotes."""
    path = _table_with(tmp_path, f"key_template: {template}")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value).replace(path, "<file>")  # (the test's folder is named after the test)
    assert "public.events" in message and "key_template" in message, message
    assert "quote" in message.lower(), message
