"""Bad configuration fails at load with a message naming the table and the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from archive_pipeline.core.config import DEFAULT_KEY_TEMPLATE, ConfigError, load_config, parse_config

GOOD = {"name": "public.events", "day_column": "created_at", "start_date": "2024-01-01"}


def parse_table(**overrides):
    return parse_config({"tables": [{**GOOD, **overrides}]})


def test_defaults():
    spec = parse_table().tables[0]
    assert (spec.format, spec.compression, spec.chunk_size, spec.key_template) == (
        "jsonl", "zstd", 10_000, DEFAULT_KEY_TEMPLATE)
    assert (spec.schema_name, spec.table_name, spec.asset_path) == ("public", "events", ("public", "events"))
    odd = parse_table(name='Mixed "Case".Nasty Events').tables[0]
    assert odd.asset_path == ("mixed_case", "nasty_events")


@pytest.mark.parametrize(("overrides", "setting", "words"), [
    ({"chunk_sise": 5}, "chunk_sise", "unknown setting"),
    ({"chunk_size": 99}, "chunk_size", "greater than or equal to 100"),
    ({"chunk_size": 1_000_001}, "chunk_size", "less than or equal to 1000000"),
    ({"format": "xml"}, "format", "'jsonl', 'csv' or 'parquet'"),
    ({"compression": "brotli"}, "compression", "'zstd', 'gzip', 'lz4', 'snappy' or 'none'"),
    ({"compression": "snappy"}, "compression", "only for parquet"),
    ({"key_template": "{prefix}/{tabel}/{date}.{ext}"}, "key_template", "unknown field(s) ['tabel']"),
    ({"key_template": "{prefix}/{table}.{ext}"}, "key_template", "must contain {date}"),
    ({"key_template": "{prefix/{date}"}, "key_template", "not a valid template"),
    ({"start_date": "2024-13-01"}, "start_date", "valid date"),
])
def test_bad_setting_names_table_and_setting(overrides, setting, words):
    with pytest.raises(ConfigError) as failure:
        parse_table(**overrides)
    message = str(failure.value)
    assert f"table 'public.events', setting '{setting}'" in message
    assert words in message


def test_unqualified_name_and_missing_required():
    with pytest.raises(ConfigError, match="must be schema-qualified"):
        parse_table(name="events")
    with pytest.raises(ConfigError, match=r"table 'public.events': day_column is required for partitioning mode"):
        parse_config({"tables": [{"name": "public.events", "start_date": "2024-01-01"}]})


@pytest.mark.parametrize(("partitioning", "words"), [
    ({"mode": "naming"}, "needs a pattern"),
    ({"mode": "naming", "pattern": "events_%Y%m"}, "must contain %Y, %m and %d"),
    ({"mode": "column", "pattern": "events_%Y%m%d"}, "only for mode 'naming'"),
    ({"mode": "hash"}, "'column', 'declarative' or 'naming'"),
])
def test_bad_partitioning(partitioning, words):
    with pytest.raises(ConfigError, match="table 'public.events', setting 'partitioning") as failure:
        parse_table(partitioning=partitioning)
    assert words in str(failure.value)


def test_naming_mode_needs_no_day_column():
    spec = parse_config({"tables": [{"name": "legacy.events", "start_date": "2024-01-01",
                                     "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"}}]}).tables[0]
    assert spec.day_column is None and spec.child_table(__import__("datetime").date(2024, 3, 9)) == "events_20240309"


def test_two_tables_on_one_asset_name_are_rejected():
    with pytest.raises(ConfigError, match="same asset name"):
        parse_config({"tables": [GOOD, {**GOOD, "name": "public.Events"}]})


def test_load_config_from_env(tmp_path, monkeypatch):
    path = tmp_path / "tables.yaml"
    path.write_text("tables:\n  - name: app.orders\n    day_column: placed_at\n    start_date: 2023-05-01\n")
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(path))
    assert load_config().tables[0].name == "app.orders"
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        load_config()
    path.write_text("tables: [\n")
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(path))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config()


def test_shipped_config_is_valid():
    assert load_config(Path(__file__).resolve().parents[1] / "archive_tables.yaml").tables


@pytest.mark.parametrize(("first", "second", "words"), [
    # No {schema}/{table}: every day of one table is the same day of the other.
    ({"name": "public.events", "key_template": "{prefix}/{date}.{ext}"},
     {"name": "sales.orders", "key_template": "{prefix}/{date}.{ext}"}, "'public.events' (2023-12-31) and 'sales.orders'"),
    # Same table name in two schemas with a template that drops the schema.
    ({"name": "a.events", "key_template": "{prefix}/{table}/{date}.{ext}"},
     {"name": "b.events", "key_template": "{prefix}/{table}/{date}.{ext}"}, "'a.events'"),
    # A literal path that spells out the other table's rendered path.
    ({"name": "public.events", "key_template": "{prefix}/{table}/{date}.{ext}"},
     {"name": "public.other", "key_template": "{prefix}/events/{date}.{ext}"}, "'public.other'"),
    # Day fields arranged differently: 2024-03-04 of one is 2024-04-03 of the other.
    ({"name": "public.events", "key_template": "{prefix}/x/{year}/{month}/{day}.{ext}"},
     {"name": "public.other", "key_template": "{prefix}/x/{year}/{day}/{month}.{ext}"}, "'public.other'"),
])
def test_two_tables_rendering_one_key_are_refused(first, second, words):
    with pytest.raises(ConfigError) as failure:
        parse_config({"tables": [{**GOOD, **first}, {**GOOD, **second}]})
    assert "render the same object key" in str(failure.value)
    assert words in str(failure.value)


def test_distinct_formats_or_schemas_do_not_collide():
    """Keys apart by the table's name or schema are accepted whatever the format (keys apart only by the format's
    extension are not: a change of format of one lands on the other's key; see test_hunt18_xh)."""
    parse_config({"tables": [{**GOOD, "key_template": "{prefix}/{table}/{date}.{ext}"},
                             {**GOOD, "name": "public.events2", "key_template": "{prefix}/{table}/{date}.{ext}"},
                             {**GOOD, "name": "x.events", "format": "csv",
                              "key_template": "{prefix}/{schema}.{table}/{date}.{ext}"}]})


def test_key_ending_like_a_manifest_is_refused():
    with pytest.raises(ConfigError, match="ends like a manifest"):
        parse_table(key_template="{prefix}/{schema}.{table}/{date}.manifest.json")


def test_key_ending_like_an_upload_marker_is_refused():
    """Another table's run of that day would take the object for its upload marker and delete it."""
    with pytest.raises(ConfigError, match="ends like an upload marker"):
        parse_config({"tables": [{**GOOD, "key_template": "{prefix}/shared/{date}.{ext}"},
                                 {**GOOD, "name": "public.b", "key_template": "{prefix}/shared/{date}.{ext}.uploading"}]})


@pytest.mark.parametrize(("overrides", "words"), [
    ({"compression": "zstd", "compression_level": 23}, "23 is out of range for zstd (-7..22)"),
    ({"compression": "zstd", "compression_level": -8}, "-8 is out of range for zstd (-7..22)"),
    ({"compression": "gzip", "compression_level": 10}, "10 is out of range for gzip (0..9)"),
    ({"compression": "lz4", "compression_level": 3}, "lz4 takes no level"),
    ({"compression": "none", "compression_level": 1}, "none takes no level"),
    ({"format": "parquet", "compression": "gzip", "compression_level": 0}, "out of range for gzip in parquet (1..9)"),
    ({"format": "parquet", "compression": "lz4", "compression_level": 13}, "lz4 in parquet (1..12)"),
    ({"format": "parquet", "compression": "snappy", "compression_level": 1}, "snappy in parquet takes no level"),
])
def test_compression_level_is_checked_per_codec(overrides, words):
    with pytest.raises(ConfigError) as failure:
        parse_table(**overrides)
    assert "table 'public.events', setting 'compression_level'" in str(failure.value)
    assert words in str(failure.value)


@pytest.mark.parametrize("overrides", [
    {"compression": "zstd", "compression_level": -7}, {"compression": "zstd", "compression_level": 22},
    {"compression": "gzip", "compression_level": 0}, {"format": "parquet", "compression": "lz4", "compression_level": 1},
])
def test_compression_levels_in_range_are_accepted(overrides):
    assert parse_table(**overrides).tables[0].compression_level == overrides["compression_level"]


@pytest.mark.parametrize(("raw", "words"), [
    ({"tables": [{**GOOD, "day_colum": "x"}]}, "table 'public.events', setting 'day_colum': unknown setting; "
                                               "did you mean 'day_column'?"),
    ({"tables": [{**GOOD, "partitioning": {"mdoe": "column"}}]}, "setting 'partitioning.mdoe': unknown setting; "
                                                                 "did you mean 'mode'?"),
    ({"retyr": {}, "tables": [GOOD]}, "setting 'retyr': unknown setting; did you mean 'retry'?"),
    ({"sensor": {"lookback": 3}, "tables": [GOOD]}, "did you mean 'lookback_days'?"),
    ({"tables": [{**GOOD, "zzz": 1}]}, "unknown setting; known settings: "),
])
def test_unknown_setting_suggests_the_nearest_name(raw, words):
    with pytest.raises(ConfigError) as failure:
        parse_config(raw)
    assert words in str(failure.value)


def test_impossible_date_in_the_yaml_file_names_file_table_and_setting(tmp_path):
    path = tmp_path / "tables.yaml"
    path.write_text("tables:\n  - name: public.events\n    day_column: created_at\n    start_date: 2024-13-01\n")
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    message = str(failure.value)
    assert str(path) in message and "table 'public.events', setting 'start_date'" in message
    assert "'2024-13-01'" in message and "YYYY-MM-DD" in message
    path.write_text("tables:\n  - name: public.events\n    day_column: created_at\n    start_date: 2024-02-29\n")
    assert str(load_config(path).tables[0].start_date) == "2024-02-29"  # real dates still parse


def test_tables_whose_job_names_collide_are_refused():
    with pytest.raises(ConfigError, match="would share the job name 'Archive_a_b_c'"):
        parse_config({"tables": [{**GOOD, "name": "a_b.c"}, {**GOOD, "name": "a.b_c"}]})


def test_deep_check_is_a_table_setting():
    assert parse_table(deep_check=True).tables[0].deep_check is True
    assert parse_table().tables[0].deep_check is False


def test_a_key_that_looks_like_another_keys_generation_is_refused():
    with pytest.raises(ConfigError, match="looks like a later generation"):
        parse_table(name="public.g2", key_template="{prefix}/{schema}/{date}.{table}.{ext}")
