"""Hunt 9, class "the README taken literally" for what changed on 2026-12-05: each new or changed sentence
done as a user would do it (the command line as a subprocess, the core API, Dagster in process), checking that
what happens is what the sentence says."""

from __future__ import annotations

import pytest
import zstandard

from archive_pipeline_tests.test_hunt_cli import DAYS, cli, make_env, small_table, write_config


@pytest.fixture
def table_env(pg, s3, bucket, conn, schema, tmp_path):
    """A table ``<schema>.ev`` with 50 rows on each of DAYS and a command-line environment; returns a function
    giving the environment for the table with extra settings."""
    small_table(conn, schema)

    def env(**settings):
        return make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
            {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat(), **settings}]))
    return env


def test_zstd_levels_20_to_22_keep_level_19s_window_as_the_readme_says(table_env, s3_client, bucket):
    """The README's codec table: zstd "20..22 with level 19's window, ~40 MB of tables". A user sets
    ``compression_level: 22`` for the smallest archive. The archive's frame has a 4 MiB window
    (``window_log`` capped at 22 in compression.py), half of level 19's 8 MiB: data repeating at 4-8 MiB
    apart compresses to twice the size at level 22 as at level 19 (measured: 10 MiB of a 5 MiB block twice,
    2.6 MB at 19, 5.3 MB at 22). Levels 20..22 should keep at least level 19's window, as documented."""
    windows = {}
    for level in (19, 22):
        env = table_env(compression="zstd", compression_level=level)
        done = cli(env, "archive", "--day", DAYS[0].isoformat(), "--overwrite")
        assert done.returncode == 0, done.stderr
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"].endswith(".zst")]
        assert len(keys) == 1, keys
        head = s3_client.get_object(Bucket=bucket, Key=keys[0], Range="bytes=0-31")["Body"].read()
        windows[level] = zstandard.get_frame_parameters(head).window_size
    assert windows[22] >= windows[19], windows


@pytest.mark.parametrize("written", ["no", "2024.10"])
def test_a_component_asset_key_prefix_of_one_word_yaml_misreads_is_named_as_written(tmp_path, monkeypatch, written):
    """The README: a text setting YAML 1.1 reads as a boolean or a number (``asset_key_prefix: [eu, no]``) is
    "named as written, with the quotes to add", and the component's inline attributes are "validated by the
    same code and fail the load with the same messages as the file". ``asset_key_prefix`` is "a list, or one
    string split at '/'": in the file, ``asset_key_prefix: no`` is named with the quotes to add. In a
    component's defs.yaml, loaded by Dagster's ``load_from_defs_folder``, the same one-word prefix fails with
    pydantic's "Input should be a valid string [input_value=False]" / "valid list" (the inline attribute's type
    lets booleans and numbers through only as items of a list). It should be named as written and say to quote
    it."""
    from dagster import load_from_defs_folder

    from archive_pipeline_tests.test_deploy import _make_project
    from archive_pipeline_tests.test_hunt7_mp import _exception_chain

    monkeypatch.setenv("ARCHIVE_PG_DSN", "host=127.0.0.1 port=1 dbname=x connect_timeout=1")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
    _make_project(tmp_path, "type: archive_pipeline.defs.component.ArchiveTablesComponent\nattributes:\n"
                            f"  asset_key_prefix: {written}\n"
                            "  tables:\n    - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception) as info:
        load_from_defs_folder(path_within_project=tmp_path)
    text = "\n".join(str(e) for e in _exception_chain(info.value))
    assert "asset_key_prefix" in text and f"'{written}'" in text and "quote" in text.lower(), text


def test_verify_deep_names_a_day_column_change_not_rows_changed_or_damage(pg, s3, bucket, conn, schema, tmp_path):
    """The README: "A zone, granularity or day_column changed since a day was archived is named as that by
    compare, list --check-source, verify, restore, a removal and source_unchanged, never as rows changed in the
    source". A user archives a day by ``day_column: at``, then sets ``day_column: at2`` (another timestamp of
    the same rows). ``compare``, ``list --check-source`` and ``prune`` name the day_column change; ``verify
    --deep`` says "the source's rows for 2024-03-10 are not the archive's: 19 rows against 50" and advises
    archiving again or restoring the object "from a backup of the bucket": rows changed, or a damaged archive.
    It should name the day_column change (verify.py checks only ``another_period``, not
    ``manifest.layout_change``)."""
    small_table(conn, schema)
    conn.execute(f'ALTER TABLE "{schema}".ev ADD COLUMN at2 timestamptz')
    conn.execute(f"UPDATE \"{schema}\".ev SET at2 = at + interval '23 hours 40 minutes'")
    base = {"name": f"{schema}.ev", "start_date": DAYS[0].isoformat()}
    day = DAYS[0].isoformat()
    done = cli(make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**base, "day_column": "at"}])),
               "archive", "--day", day)
    assert done.returncode == 0, done.stderr
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**base, "day_column": "at2"}]))
    compared = cli(env, "compare", "--day", day)
    assert "day_column" in compared.stdout, compared.stdout  # (as the README says)
    done = cli(env, "verify", "--day", day, "--deep")
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "day_column" in said, said
    assert "backup" not in said, said


@pytest.mark.parametrize("recorded", ["2048", 2048.0], ids=["a-string", "a-float"])
def test_a_manifests_uncompressed_bytes_of_another_type_is_refused_not_skipped(conn, schema, store, temp_dir,
                                                                               s3_client, bucket, recorded):
    """The README: "What the bucket says is checked before it is used, sealed or not ...: every field a reader
    uses must have its type, ... and a CSV or JSONL object that decompresses to more than the manifest's
    ``uncompressed_bytes`` is refused as altered before it is held." Someone who can write to the bucket replaces a
    day's JSONL object with a small zstd frame that expands to 8 MB of one line, reseals the manifest's digests,
    and writes its ``uncompressed_bytes`` as ``"2048"`` (or ``2048.0``). restore.load_into uses the field only
    when it is an int, so the manifest passes the shape check and the object's size is not bounded at all: the
    whole 8 MB line is decompressed and staged (held in memory, for a role without TEMPORARY) and the restore
    fails later on the JSON. The manifest should be refused for its field's type (or the object as decompressing
    to more than recorded), naming uncompressed_bytes."""
    import datetime as dt

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline_tests.helpers import forge_object
    from archive_pipeline_tests.test_hunt9_oh import _ev, _reseal, _zstd_of

    day = dt.date(2024, 3, 10)
    _ev(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=day, format="jsonl", compression="zstd")
    result = archive_partition(conn, spec, day, store, temp_dir=temp_dir)
    forge_object(s3_client, bucket, result.key, result.manifest_key, _zstd_of(b"x", 8 << 20))
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m.update(uncompressed_bytes=recorded))
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, day, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    message = str(refused.value)
    assert "uncompressed_bytes" in message or "decompresses to more than" in message, message[:300]


def test_a_jsonl_object_of_non_json_lines_within_its_recorded_size_is_named_damaged_briefly(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day's JSONL object is replaced by 2 MB of ``x`` and a newline, its manifest resealed to match, its
    ``uncompressed_bytes`` too (a consistent forgery, or a tool that rewrote the object). A user restores the day.
    The RestoreError's message is over 2,000,000 characters (PostgreSQL's DETAIL and CONTEXT quote the whole
    line) and blames the target's types: "a type of <target> as this database defines it refuses it (an enum
    lacking one of the archived labels ...); to fix: ... ALTER TYPE ... ADD VALUE". (test_hunt9_oh's test of this
    passes only because its forged object is refused earlier for decompressing past uncompressed_bytes.) It should
    be a message of sane length naming the object as not JSONL (damaged or altered)."""
    import datetime as dt

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline_tests.helpers import forge_object
    from archive_pipeline_tests.test_hunt9_oh import _ev, _reseal, _zstd_of

    day = dt.date(2024, 3, 10)
    _ev(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=day, format="jsonl", compression="zstd")
    result = archive_partition(conn, spec, day, store, temp_dir=temp_dir)
    forge_object(s3_client, bucket, result.key, result.manifest_key, _zstd_of(b"x", 2 << 20, b"\n"))
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m.update(uncompressed_bytes=(2 << 20) + 1))
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, day, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    message = str(refused.value)
    assert len(message) < 5000, f"{len(message):,} characters: {message[:300]} ... {message[-500:]}"
    assert "ALTER TYPE" not in message, message[-500:]


@pytest.mark.parametrize("value", ["when_required ", "when_required\r"], ids=["trailing-space", "crlf-env-file"])
def test_a_checksum_variable_the_load_passes_is_one_the_runs_can_use(monkeypatch, tmp_path, value):
    """The README: ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` for older stores; "another value
    (``when-required``) fails the load naming the variable". A user's env file has a trailing blank or CRLF line
    ends (``when_required\\r``). The load's check strips the value and passes it (environment._check_botocore_
    settings), but botocore does not strip: every run's store (store_from_env) fails with "an AWS checksum setting
    is not one botocore knows (... got when_required )". The load and the runs should agree: refused at load naming
    the variable, or used as the load read it."""
    from archive_pipeline.core.config import ConfigError, load_config
    from archive_pipeline.core.environment import store_from_env
    from archive_pipeline.definitions import build_definitions

    config = tmp_path / "tables.yaml"
    config.write_text("tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-03-10}\n")
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "ARCHIVE_S3_PREFIX", "ARCHIVE_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARCHIVE_PG_DSN", "host=127.0.0.1 port=1 dbname=x")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
    monkeypatch.setenv("ARCHIVE_S3_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("ARCHIVE_S3_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", value)
    try:
        build_definitions(load_config(config), check_source=False)
    except ConfigError as exc:
        assert "AWS_REQUEST_CHECKSUM_CALCULATION" in str(exc), str(exc)
        return
    store_from_env()  # loaded: then every run's store must be buildable from the same environment
