"""Hunt 3 (q): hostile configuration at the edge of each option's type, through the YAML file, the Dagster
definitions and the command line: key templates with format specs, NUL and lone surrogates, keys over S3's
1024 bytes, ARCHIVE_S3_* variables with a trailing newline or a '..' part, time zones PostgreSQL refuses.

Each either works exactly (the archive round-trips, the keys are what the README says) or is refused at load
with a message naming the setting (and the table); never a crash, a run retried for a typo, or a key that does
not read back as written.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
import yaml
from click.testing import CliRunner, Result
from dagster import instance_for_test
from psycopg import sql

from archive_pipeline.cli import main
from archive_pipeline.core.config import ConfigError, load_config, parse_config
from archive_pipeline.core.keys import MANIFEST_SUFFIX, table_day_key
from archive_pipeline.definitions import build_definitions

DAY = dt.date(2024, 3, 10)
S3_MAX_KEY_BYTES = 1024  # AWS S3 refuses a longer key (KeyTooLongError); moto does not check it


def _events(conn, schema: str, name: str = "ev") -> None:
    """``<schema>.<name> (id int, at timestamptz, note text)``, 20 rows on DAY (UTC)."""
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', "
                         "md5(g::text) FROM generate_series(1, 20) g").format(table))


def _config(schema: str, **table):
    return parse_config({"retry": {"max_retries": 0, "delay_seconds": 0},
                         "tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
                                     **table}]}, "tables.yaml")


def _run_day(defs, schema: str):
    with instance_for_test() as instance:
        return defs.resolve_job_def(f"Archive_{schema}_ev").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)


def _failures(result) -> str:
    """Every step failure's message and the messages of its causes (a retry policy's own error comes first)."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        while error is not None:
            messages.append(error.message.strip())
            error = error.cause
    return " | ".join(messages)


def _keys(s3_client, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _unsafe_parts(key: str) -> list[str]:
    """What would not read back as written: a '.' or '..' part between slashes, a control character."""
    return [p for p in key.split("/") if p in (".", "..")] + re.findall(r"[\x00-\x1f\x7f-\x9f]", key)


def _cli_env(pg, s3, bucket: str, tmp_path, schema: str, **extra: str) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.ev", "day_column": "at",
                                                  "start_date": "2024-03-01"}]}))
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250",
            "ARCHIVE_S3_ACCESS_KEY_ID": "testing", "ARCHIVE_S3_SECRET_ACCESS_KEY": "testing", **extra}


def _cli(env: dict[str, str], *args: str) -> Result:
    done = CliRunner(env=env).invoke(main, list(args))
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done


# --- ARCHIVE_S3_PREFIX ------------------------------------------------------------------------------

HOSTILE_PREFIXES = [
    pytest.param("archive\n", id="trailing-newline"),  # a value mounted from a file (as the bucket's and DSN's)
    pytest.param("archive/../other", id="dot-dot-part"),
    pytest.param("arch\tive", id="tab"),
]


@pytest.mark.parametrize("prefix", HOSTILE_PREFIXES)
def test_a_hostile_s3_prefix_is_refused_at_load_or_cleaned_never_written_into_keys(
        prefix, conn, schema, archive_env, monkeypatch, s3_client):
    """A deployment sets ARCHIVE_S3_PREFIX from a mounted file (`archive\\n`), or with a '..' part or a tab. The
    README refuses a key with a '.'/'..' part or a control character at load (a table named so, a template
    rendering one), and strips the trailing newline of ARCHIVE_PG_DSN and ARCHIVE_S3_BUCKET. The prefix got
    neither: the location loaded, and with `archive\\n` every run failed with moto's bare "404 Not Found" on its
    PutObject ("to fix: read the error code in the message"); `archive/../other` and `arch\\tive` were written
    into every key silently (`archive/../other/<schema>.ev/...`, which MinIO refuses and `aws s3 sync` resolves
    onto another folder)."""
    _events(conn, schema)
    monkeypatch.setenv("ARCHIVE_S3_PREFIX", prefix)
    try:
        defs = build_definitions(_config(schema))
    except ConfigError as refused:
        assert "ARCHIVE_S3_PREFIX" in str(refused), str(refused)
        return
    result = _run_day(defs, schema)
    assert result.success, _failures(result)
    keys = _keys(s3_client, archive_env)
    assert keys and not [k for k in keys if _unsafe_parts(k)], keys


@pytest.mark.parametrize("prefix", HOSTILE_PREFIXES)
def test_the_command_line_refuses_or_cleans_a_hostile_s3_prefix(prefix, pg, s3, bucket, conn, schema, s3_client,
                                                                 tmp_path):
    """The same ARCHIVE_S3_PREFIX values with `archive-pipeline archive --day`: with `archive\\n` the day failed
    (exit 1) with "(PutObject) failed: ... 404 ... not retried; to fix: read the error code in the message",
    naming no variable; the other two archived the day under a key with a '..' part or a tab (exit 0). A
    configuration error is exit 2 naming the variable (README, Command line)."""
    _events(conn, schema)
    done = _cli(_cli_env(pg, s3, bucket, tmp_path, schema, ARCHIVE_S3_PREFIX=prefix),
                "archive", "--day", DAY.isoformat())
    if done.exit_code == 2:
        assert "ARCHIVE_S3_PREFIX" in done.output, done.output
        return
    assert done.exit_code == 0, done.output
    keys = _keys(s3_client, bucket)
    assert keys and not [k for k in keys if _unsafe_parts(k)], keys


# --- ARCHIVE_S3_REGION / ARCHIVE_S3_ACCESS_KEY_ID with a trailing newline ----------------------------------

@pytest.mark.parametrize(("variable", "value"), [("ARCHIVE_S3_REGION", "us-east-1\n"),
                                                 ("ARCHIVE_S3_ACCESS_KEY_ID", "testing\n")])
def test_an_s3_setting_with_a_trailing_newline_is_not_a_transient_network_fault_on_every_run(
        variable, value, conn, schema, archive_env, monkeypatch, s3_client):
    """ARCHIVE_S3_REGION (or the access key id) mounted from a file ends in a newline. botocore's region check
    (a `$` regex) lets `us-east-1\\n` through, and the newline lands in the Authorization header: the location
    loaded, and every run failed with "the object store's response broke off or arrived incomplete
    (HTTPClientError: ... Invalid header value b'AWS4-HMAC-SHA256 Credential=testing/.../us-east-1\\n/s3/...');
    transient, retried": retried with backoff forever, naming the network instead of the variable. It must be
    stripped (as ARCHIVE_PG_DSN and ARCHIVE_S3_BUCKET are) or refused at load naming the variable."""
    _events(conn, schema)
    monkeypatch.setenv(variable, value)
    if variable == "ARCHIVE_S3_ACCESS_KEY_ID":
        monkeypatch.setenv("ARCHIVE_S3_SECRET_ACCESS_KEY", "testing")
    try:
        defs = build_definitions(_config(schema))
    except ConfigError as refused:
        assert variable in str(refused), str(refused)
        return
    result = _run_day(defs, schema)
    assert result.success, _failures(result)
    assert f"archive/{schema}.ev/2024/03/2024-03-10.jsonl.zst" in _keys(s3_client, archive_env)


@pytest.mark.parametrize(("variable", "value"), [("ARCHIVE_S3_REGION", "us-east-1\n"),
                                                 ("ARCHIVE_S3_ACCESS_KEY_ID", "testing\n")])
def test_the_command_line_names_an_s3_setting_with_a_trailing_newline_not_the_network(
        variable, value, pg, s3, bucket, conn, schema, tmp_path):
    """The same with the command line: `archive-pipeline archive` exited 3 ("cannot reach the object store
    (HTTPClientError: ... Invalid header value ...): check $ARCHIVE_S3_ENDPOINT_URL and the network",
    retryable) although the endpoint and network are fine and running it again never helps. Either the value
    is used without its newline (exit 0) or the error is a configuration error (exit 2) naming the variable."""
    _events(conn, schema)
    done = _cli(_cli_env(pg, s3, bucket, tmp_path, schema, **{variable: value}), "archive", "--day", DAY.isoformat())
    assert done.exit_code in (0, 2), done.output
    if done.exit_code == 2:
        assert variable in done.output, done.output


# --- key_template ----------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [
    pytest.param("{prefix}/{schema}.{table}/{date:%Y%m%d}.{ext}", id="strftime-spec"),
    pytest.param("{prefix}/{schema}.{table}/{date:{foo}}.{ext}", id="unknown-field-inside-spec"),
    pytest.param("{prefix}/{schema}.{table}/{date:{}}.{ext}", id="positional-field-inside-spec"),
])
def test_a_key_template_with_a_format_spec_is_refused_naming_the_table_and_the_setting(template, tmp_path):
    """A user writes `{date:%Y%m%d}` in key_template, as a naming pattern is written. The field check reads only
    the top level of the template: `{date:%Y%m%d}` was refused later by the key-collision check, as
    "(top level): Invalid format specifier '%Y%m%d' for object of type 'str'", naming neither the table nor the
    setting; a field inside the spec (`{date:{foo}}`, `{date:{}}`) crashed the load with a bare KeyError /
    IndexError (the command line: "unexpected error: KeyError: 'foo'; this is a bug", exit 1)."""
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": "public.events", "day_column": "created_at",
                                                  "start_date": "2024-01-01", "key_template": template}]}))
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert "table 'public.events', setting 'key_template'" in str(refused.value), str(refused.value)


@pytest.mark.parametrize("escape", [pytest.param("\\0", id="NUL"), pytest.param("\\udc80", id="lone-surrogate")])
def test_a_key_template_with_a_nul_or_a_lone_surrogate_is_refused_at_load(escape, tmp_path):
    """YAML's double-quoted escapes give a template a NUL (`\\0`) or a lone surrogate (`\\udc80`). The load
    refuses every other control character in a key (README: S3 lists keys in XML, which cannot carry them), but
    skipped NUL because the collision check uses it as its placeholder for the prefix: the key
    `archive/<table>/2024-03-10\\x00.jsonl.zst` was written. A lone surrogate loaded too, and every run failed
    with "unexpected error: UnicodeEncodeError: 'utf-8' codec can't encode character '\\udc80' ...; this is a
    bug in archive_pipeline"."""
    config = tmp_path / "tables.yaml"
    config.write_text("tables:\n  - name: public.events\n    day_column: created_at\n    start_date: 2024-01-01\n"
                      f'    key_template: "{{prefix}}/{{schema}}.{{table}}/{{date}}{escape}.{{ext}}"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert "table 'public.events'" in str(refused.value) and "key_template" in str(refused.value), str(refused.value)


def _long_template(data_key_bytes: int) -> str:
    """A daily template whose data keys are ``data_key_bytes`` long with ARCHIVE_S3_PREFIX=archive."""
    spec = parse_config({"tables": [{"name": "public.events", "day_column": "created_at",
                                     "start_date": "2024-01-01", "key_template": "{prefix}/{schema}.{table}/x/"
                                     "{date}.{ext}"}]}).tables[0]
    pad = data_key_bytes - len(table_day_key(spec, DAY, prefix="archive").encode()) + 1
    return "{prefix}/{schema}.{table}/" + "x" * pad + "/{date}.{ext}"


@pytest.mark.parametrize("data_key_bytes", [
    pytest.param(1100, id="data-key-over-1024"),
    pytest.param(S3_MAX_KEY_BYTES - len(MANIFEST_SUFFIX) + 2, id="only-the-manifest-key-over-1024"),
])
def test_a_key_template_whose_keys_exceed_s3s_1024_bytes_is_refused_at_load(data_key_bytes, archive_env):
    """S3 refuses an object key longer than 1024 bytes (UTF-8). A long literal in key_template (or a long
    ARCHIVE_S3_PREFIX) loaded: every run on AWS would read the whole day and then fail its upload; with a data
    key just under the limit, the data object is written and its manifest (the key + '.manifest.json', 14 bytes
    more) is refused, so the day is left half written. The load knows the template and the prefix: it must
    refuse, naming the table and key_template."""
    template = _long_template(data_key_bytes)
    spec_entry = {"name": "public.events", "day_column": "created_at", "start_date": "2024-01-01",
                  "key_template": template}
    with pytest.raises(ConfigError) as refused:
        build_definitions(parse_config({"tables": [spec_entry]}, "tables.yaml"), check_source=False)
    assert "public.events" in str(refused.value) and "key_template" in str(refused.value), str(refused.value)


# --- timezone ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("zone", ["right/Europe/Berlin", "right/UTC"])
def test_a_leap_second_zone_postgresql_refuses_is_refused_at_load_naming_the_timezone(zone, conn, schema,
                                                                                    archive_env):
    """`timezone: right/Europe/Berlin` (a file of the system's zoneinfo, found by Python's zoneinfo) loaded. For a
    declarative table the load only warned "a value in the day cannot be read or converted (data exception)
    (InvalidParameterValue: time zone "right/Europe/Berlin" appears to use leap seconds ...); to fix: fix the
    offending rows", and every run failed the same way ("fix the offending rows, or archive the table in a
    format that keeps the value as text"): PostgreSQL refuses leap-second zones for TimeZone, which declarative
    discovery sets. The zone must be refused at load, naming the table and the setting 'timezone'."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(table))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00')").format(sql.Identifier(schema, "ev_p"), table))
    with pytest.raises(ConfigError) as refused:
        build_definitions(_config(schema, timezone=zone, partitioning={"mode": "declarative"}))
    assert f"{schema}.ev" in str(refused.value) and "timezone" in str(refused.value), str(refused.value)


# --- ARCHIVE_PG_PRIMARY_DSN set but blank ---------------------------------------------------------------

@pytest.mark.parametrize("blank", [pytest.param("\n", id="newline"), pytest.param(" ", id="space")])
def test_a_blank_primary_dsn_is_unset_as_in_the_command_line_not_libpqs_default_database(blank, conn, schema,
                                                                                        archive_env, monkeypatch):
    """ARCHIVE_PG_PRIMARY_DSN comes from a secret that is empty in this environment (a mounted file holding only
    a newline). The command line reads a blank value as unset (the primary is then ARCHIVE_PG_DSN). The code
    location took it as a DSN, stripped it to "" and connected with libpq's defaults (the local socket,
    database and user named after the OS user, or whatever PGHOST/PGDATABASE say): every removal failed with
    "cannot connect to PostgreSQL at localhost (socket):5432, database 'root' as user 'root' ...; retried
    automatically", naming no variable. Either the load refuses naming the variable, or the removal runs on
    ARCHIVE_PG_DSN as the command line's would."""
    _events(conn, schema)
    monkeypatch.setenv("ARCHIVE_PG_PRIMARY_DSN", blank)
    config = _config(schema, retention={"keep_days": 1, "action": "delete"})
    try:
        defs = build_definitions(config)
    except ConfigError as refused:
        assert "ARCHIVE_PG_PRIMARY_DSN" in str(refused), str(refused)
        return
    with instance_for_test() as instance:
        archived = defs.resolve_job_def(f"Archive_{schema}_ev").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        assert archived.success, _failures(archived)
        removed = defs.resolve_job_def(f"Remove_{schema}_ev").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
    assert removed.success, _failures(removed)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ev"))).fetchone()[0] == 0
