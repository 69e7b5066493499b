"""Hunt 7 (mp): configuration at the edges, as a user writes it."""

from __future__ import annotations

import pytest

from archive_pipeline.core.config import ConfigError, load_config


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
