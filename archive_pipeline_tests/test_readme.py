"""The README against the code: guards that fail when the two drift apart.

Each test reads a part of README.md (the settings block and its comments, the codec table, the limits,
the variables, the command line's table, sessions and JSON, the calls it writes out, the layout, the
metadata and manifest fields, the retry table, the instance files, the benchmark options) and compares
it with what the code defines. No database or store is started: the module runs in a few seconds.
(The README's Python and component examples are loaded by
test_deploy.py::test_readme_examples_load_in_dagster_cli.)
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import re
import shlex
from pathlib import Path

import botocore.exceptions as bx
import click
import psycopg.errors
import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from archive_pipeline import cli
from archive_pipeline.core import config as cfg
from archive_pipeline.core import plan
from archive_pipeline.core.errors import SessionSettingError, classify
from archive_pipeline.core.manifest import ArchiveResult
from archive_pipeline.core.periods import as_period
from archive_pipeline.defs.assets import RETRY_JITTER, materialization_metadata, retry_delay
from archive_pipeline.defs.resources import ArchiveStoreResource

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The text of the README's ``## title`` section, up to the next ``## ``."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _block(first_line: str) -> str:
    """The README's fenced block that starts with ``first_line``."""
    [block] = [b for b in re.findall(r"```[a-z]*\n(.*?)```", README, re.S) if b.startswith(first_line)]
    return block


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The rows (cells, stripped) of the Markdown table in ``text`` whose header starts with ``first_cell``."""
    lines = text[text.index(f"| {first_cell} "):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


# --- Configuration: the settings block and the codec table ----------------------------------------

SETTINGS = _block("source:")
# Settings whose value in the README's block is an example, not the default (the comment says so).
EXAMPLES = {"name", "day_column", "start_date", "compression_level", "partitioning", "retention"}


def _models() -> list[type[BaseModel]]:
    return [cfg.ArchiveConfig, cfg.SourceSettings, cfg.RetrySettings, cfg.ScheduleSettings, cfg.SensorSettings,
            cfg.BackfillSettings, cfg.TableSpec, cfg.Partitioning, cfg.Retention]


def test_the_settings_block_loads_and_names_every_setting(tmp_path):
    """The block is a valid configuration as written, and every setting of every model is in it (a
    setting added to config.py and not to the README fails here)."""
    path = tmp_path / "archive_tables.yaml"
    path.write_text(SETTINGS)
    loaded = cfg.load_config(path)
    assert [t.name for t in loaded.tables] == ["public.events"]
    missing = [f"{model.__name__}.{name}" for model in _models() for name in model.model_fields
               if not re.search(rf"\b{name}\b", SETTINGS)]
    assert not missing, f"settings missing from the README's settings block: {missing}"


def test_the_settings_block_shows_the_defaults(tmp_path):
    """Every value in the block is the model's default, except the examples its comments explain."""
    raw = yaml.safe_load(SETTINGS)
    path = tmp_path / "archive_tables.yaml"
    path.write_text(SETTINGS)
    loaded = cfg.load_config(path)
    wrong = []
    for section in ("source", "retry", "schedule", "sensor", "backfill"):
        model = getattr(loaded, section)
        default = type(model)()
        wrong += [f"{section}.{k}" for k in raw[section] if getattr(model, k) != getattr(default, k)]
    if loaded.asset_key_prefix != cfg.ArchiveConfig.model_fields["asset_key_prefix"].default:
        wrong.append("asset_key_prefix")
    spec = loaded.tables[0]
    for key in set(raw["tables"][0]) - EXAMPLES:
        field = cfg.TableSpec.model_fields[key]
        default = None if field.default is PydanticUndefined else field.default
        if getattr(spec, key) != default:
            wrong.append(f"tables[].{key}: README {getattr(spec, key)!r}, default {default!r}")
    assert not wrong, wrong


def test_the_comments_of_the_settings_block_give_the_allowed_values():
    """``# a | b | c`` comments list exactly the values the models accept."""
    line = {m.group(1): m.group(2) for m in re.finditer(r"^\s*(?:- )?(\w+):[^#\n]*#\s*(.*)$", SETTINGS, re.M)}
    choices = {"granularity": ["hourly", "daily", "monthly"], "format": ["jsonl", "csv", "parquet"]}
    for key, values in choices.items():
        assert line[key].split("(")[0].split() == " | ".join(values).split(), (key, line[key])
    assert cfg.TableSpec.model_fields["granularity"].annotation.__args__ == tuple(choices["granularity"])
    assert cfg.Format.__args__ == tuple(choices["format"])
    text, parquet = line["compression"].split("; parquet:")
    assert {c.strip() for c in text.split("|")} == set(cfg.TEXT_LEVELS)
    assert {c.strip() for c in parquet.split("|")} == set(cfg.PARQUET_LEVELS)
    modes = re.findall(r"(\w+)(?: \(default\))?", line["partitioning"].split("(+")[0])
    assert set(modes) == {"column", "declarative", "naming"}
    assert cfg.Partitioning().mode == "column" and "column (default)" in line["partitioning"]
    assert set(re.findall(r"\((\w+) \| (\w+) \| (\w+)[;)]", line["retention"])[0]) == {"detach", "drop", "delete"}
    batch_rows = int(re.search(r"batch_rows: (\d+)", line["retention"]).group(1))
    assert batch_rows == cfg.Retention.model_fields["batch_rows"].default
    assert f"(1..{cfg.MAX_PARALLEL_STREAMS} or auto" in line["parallel_streams"]
    retry = re.search(r"^retry:.*#(.*)$", SETTINGS, re.M).group(1)
    for backoff in cfg.RetrySettings.model_fields["backoff"].annotation.__args__:
        waits = [round(retry_delay(30, backoff, attempt, rand=lambda: 0.5)) for attempt in (1, 2, 3)]
        assert ", ".join(map(str, waits)) + " s" in retry, (backoff, waits, retry)
    assert f"±{RETRY_JITTER:.0%}" in retry and "linear" in retry
    chunk = cfg.TableSpec.model_fields["chunk_size"].metadata
    bounds = [getattr(m, a) for m in chunk for a in ("ge", "le") if getattr(m, a, None) is not None]
    assert f"({bounds[0]}..{bounds[1]:,})" in line["chunk_size"]
    assert set(line["key_template"].removeprefix("fields: ").split()) == cfg.KEY_FIELDS


def test_the_codec_table_is_the_levels_the_config_accepts():
    rows = _table_rows(_section("Configuration"), "codec")
    seen = set()
    for codecs, text, parquet in rows:
        for codec in (c.strip() for c in codecs.split(",")):
            seen.add(codec)
            for fmt, cell in (("jsonl", text), ("parquet", parquet)):
                levels = cfg.level_range(fmt, codec)
                expected = "no level (refused)" if levels is None else f"{levels[0]}..{levels[1]}"
                assert cell.startswith(expected), (codec, fmt, cell, levels)
    assert seen == set(cfg.PARQUET_LEVELS) | set(cfg.TEXT_LEVELS)


# --- Configuration: environment variables and the store's knobs ----------------------------------------

def test_the_variables_table_names_only_variables_the_code_reads():
    """The other direction of test_user_hunt's check: a variable the README documents is one the code reads."""
    rows = _table_rows(_section("Configuration"), "variable")
    documented = set(re.findall(r"ARCHIVE_[A-Z0-9_]+", "\n".join(row[0] for row in rows)))
    code = "\n".join(p.read_text() for p in (ROOT / "archive_pipeline").rglob("*.py"))
    assert documented and documented <= set(re.findall(r"\"(ARCHIVE_[A-Z0-9_]+)\"", code))
    [region] = [row for row in rows if "ARCHIVE_S3_REGION" in row[0]]
    assert "(default us-east-1)" in region[1] and 'or "us-east-1"' in code


def test_the_store_knobs_are_the_resources_defaults():
    text = " ".join(_section("Configuration").split())
    fields = ArchiveStoreResource.model_fields
    for name in ("part_size_mb", "max_concurrency", "verify_etags"):
        shown = re.search(rf"`{name}` \(([^)]+)\)", text).group(1)
        assert shown == str(fields[name].default).lower(), (name, shown)
    assert "`temp_dir` (the system's temp dir)" in text and fields["temp_dir"].default is None


# --- Command line --------------------------------------------------------------------------------------

def _command(name: str) -> click.Command:
    return cli.main.commands[name]


def _options(command: click.Command) -> set[str]:
    return {o for p in command.params for o in p.opts}


def test_every_command_and_option_of_the_table_exists():
    rows = _table_rows(_section("Command line"), "command")
    names = []
    for usage, _ in rows:
        words = usage.strip("`").replace("\\|", "|").split()
        names.append(words[0])
        command = _command(words[0])
        assert {w.strip("[]") for w in words if w.strip("[]").startswith("--")} <= _options(command), usage
    assert sorted(names) == sorted(cli.main.commands)
    [states] = [re.findall(r"`([a-z][a-z-]*)`", text) for usage, text in rows if usage.startswith("`list")]
    assert states == list(plan.STATES), states
    assert all(state in _command("list").help for state in plan.STATES), _command("list").help


def test_the_options_every_command_takes_and_the_restore_choices():
    text = " ".join(_section("Command line").split())
    common = re.search(r"Every command takes (.*?)for scripts", text).group(1)
    for name, command in cli.main.commands.items():
        assert set(re.findall(r"(--[a-z-]+|-t)\b", common)) <= _options(command), name
    restore = {p.name: p for p in _command("restore").params}
    for option, cell in (("into", "new|existing|original"), ("on_conflict", "fail|skip")):
        assert list(restore[option].type.choices) == cell.split("|")
    assert f"`--into` default `{restore['into'].default}`" in text
    assert f"`--on-conflict` default `{restore['on_conflict'].default}`" in text


def test_every_session_line_of_the_readme_parses():
    """Each ``$ archive-pipeline …`` line the README shows is a command and options the CLI accepts."""
    lines = re.findall(r"^\$ archive-pipeline (.+)$", README, re.M)
    assert len(lines) >= 5
    for line in lines:
        name, *args = shlex.split(line)
        with _command(name).make_context(name, list(args)) as ctx:
            assert ctx.params is not None, line


def test_the_help_lists_the_exit_codes_the_readme_gives():
    text = " ".join(_section("Command line").split())
    codes = re.findall(r"\*\*(\d+)\*\*", text[text.index("Exit codes"):])
    assert codes == ["0", "1", "2", "3", "130", "143", "129"]
    assert all(code in cli.main.help for code in codes)


# --- Layout, metadata, retries ------------------------------------------------------------------------

def test_the_layout_names_every_module():
    layout = _block("archive_pipeline/\n")
    modules = sorted(p.name for p in (ROOT / "archive_pipeline").rglob("*.py") if p.name != "__init__.py")
    missing = [m for m in modules if m not in layout]
    assert not missing, f"modules missing from the README's Layout: {missing}"


def _result(**changes: object) -> ArchiveResult:
    """An ArchiveResult of one day as the archiver returns it (values made up)."""
    values: dict = dict(
        table="public.events", day=as_period("daily", "UTC", dt.date(2024, 3, 10)), key="k", uri="s3://b/k", rows=1,
        bytes=1, uncompressed_bytes=1, md5="m", sha256="s", format="jsonl", compression="zstd", columns=(),
        output_types={}, parts=1, etag="e", content_type="t", content_encoding=None, day_column="at",
        source_relation="public.events", manifest_key="k.manifest.json",
        snapshot_at=dt.datetime(2024, 3, 11, tzinfo=dt.UTC), server_version="17", extract_seconds=0.1,
        duration_seconds=0.2, upload_wait_seconds=0.0, complete_seconds=0.0, fingerprint="row-hash-sum-v3:1:1",
        streams="1 stream")
    return ArchiveResult(**{**values, **changes})


def test_the_metadata_the_readme_names_is_recorded():
    """The keys the README points users at are in a materialization's metadata."""
    keys = set(materialization_metadata(_result(), "s3://b/k", "yes"))
    named = {"state", "summary", "verified", "dagster/row_count", "object", "streams", "fingerprint"}
    assert named <= keys, named - keys
    assert all(re.search(rf"`{k}[`:]", README) for k in named - {"fingerprint"})


def _pg(sqlstate: str, message: str) -> Exception:
    return psycopg.errors.lookup(sqlstate)(f"ERROR:  {message}")


def _s3(code: str, status: int) -> bx.ClientError:
    return bx.ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                          "PutObject")


# Each token the retry table shows in backticks, as the exception it stands for (None: not something
# classify() sees; raised with its retryability by the code that detects it).
TOKENS = {
    "pg_terminate_backend": _pg("57P01", "terminating connection due to administrator command"),
    "statement_timeout": _pg("57014", "canceling statement due to statement timeout"),
    "lock_timeout": _pg("55P03", "canceling statement due to lock timeout"),
    "max_connections": _pg("53300", "sorry, too many clients already"),
    "CONNECTION LIMIT": _pg("53300", 'too many connections for role "x"'),
    "53200": _pg("53200", "out of memory"), "58030": _pg("58030", "could not read block 7 in file"),
    "SlowDown": _s3("SlowDown", 503), "RequestTimeout": _s3("RequestTimeout", 400),
    "BadDigest": _s3("BadDigest", 400), "IncompleteBody": _s3("IncompleteBody", 400),
    "NoSuchUpload": _s3("NoSuchUpload", 404), "ExpiredToken": _s3("ExpiredToken", 400),
    "FlexibleChecksumError": bx.FlexibleChecksumError(error_msg="checksum mismatch"),
    "pg_hba.conf": _pg("28000", 'no pg_hba.conf entry for host "1.2.3.4", user "u", database "d"'),
    "default_transaction_read_only": _pg("25006", "cannot execute INSERT in a read-only transaction"),
    "54000": _pg("54000", "out of memory"),
    "ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
    "AccessDenied": _s3("AccessDenied", 403), "InvalidAccessKeyId": _s3("InvalidAccessKeyId", 403),
    "SignatureDoesNotMatch": _s3("SignatureDoesNotMatch", 403), "NoSuchBucket": _s3("NoSuchBucket", 404),
    "RequestTimeTooSkewed": _s3("RequestTimeTooSkewed", 403), "NotImplemented": _s3("NotImplemented", 501),
    "Failure(allow_retries=False)": None, "ForeignArchiveError": None, "DayRemovedError": None,
    "session_replication_role": SessionSettingError("session_replication_role is replica", table="s.t", day="2024-03-10"),
    "origin": None,
}


@pytest.mark.parametrize("column", [0, 1], ids=["retried", "fails at once"])
def test_the_retry_table_is_what_classify_decides(column):
    rows = _table_rows(_section("Retries and errors"), "retried (transient)")
    tokens = {t for row in rows for t in re.findall(r"`([^`]+)`", row[column])}
    unknown = tokens - set(TOKENS)
    assert not unknown, f"README tokens this test does not know (add them to TOKENS): {unknown}"
    wrong = [t for t in tokens if TOKENS[t] is not None and classify(TOKENS[t]).retryable is not (column == 0)]
    assert not wrong, wrong


# --- The Python API as the README writes its calls --------------------------------------------------------

def _api() -> dict[str, object]:
    from archive_pipeline import definitions
    from archive_pipeline.core import errors, lifecycle, restore, verify
    return {"build_definitions": definitions.build_definitions, "load_config": cfg.load_config,
            "parse_config": cfg.parse_config, "deep_verify": verify.deep_verify, "classify": errors.classify,
            "wrap": errors.wrap, "remove_day": lifecycle.remove_day,
            "settle_pending_removal": lifecycle.settle_pending_removal, "due_days": lifecycle.due_days,
            "load_into": restore.load_into, "restore_day": restore.restore_day, "restore_days": restore.restore_days}


# What the README writes in place of a parameter's name: parse_config(dict) names what it takes.
PLACEHOLDERS = {("parse_config", "dict")}


def test_the_calls_the_readme_writes_out_match_the_signatures():
    """Inline calls such as `due_days(spec, today)` name the parameters in order, with their defaults."""
    import inspect

    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    api = _api()
    calls = [(m.group(1), " ".join(m.group(2).split())) for span in re.findall(r"`([^`]+)`", prose)
             for m in [re.search(rf"\b({'|'.join(api)})\((.*)\)$", span)] if m]
    assert len(calls) >= 10
    for name, args in calls:
        function = api[name]
        params = list(inspect.signature(function).parameters.values())
        module = inspect.getmodule(function)
        for i, arg in enumerate(a.strip() for a in args.split(",")):
            if arg == "*":
                assert params[i].kind is inspect.Parameter.KEYWORD_ONLY, (name, args)
                params.insert(i, params[i])  # the README's * takes a place; the next one is the same
                continue
            key, _, default = arg.partition("=")
            assert params[i].name == key or (name, key) in PLACEHOLDERS, (name, args, params[i].name)
            if default:
                expected = {"None": None, "True": True, "False": False}.get(default, getattr(module, default, default))
                assert params[i].default is expected, (name, arg, params[i].default)


@pytest.mark.parametrize("alone", ["ARCHIVE_S3_ACCESS_KEY_ID", "ARCHIVE_S3_SECRET_ACCESS_KEY"])
def test_one_s3_key_without_the_other_fails_the_load_naming_both(monkeypatch, alone):
    """README: the keys are "both or neither". With one alone the location loaded, and every run and check
    then failed on boto3's "partial credentials" (the command line refused it up front)."""
    from archive_pipeline.definitions import require_environment

    monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://u@localhost/db")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
    monkeypatch.delenv("ARCHIVE_S3_ENDPOINT_URL", raising=False)
    for name in ("ARCHIVE_S3_ACCESS_KEY_ID", "ARCHIVE_S3_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    require_environment("archive_tables.yaml")  # neither: boto3's chain
    monkeypatch.setenv(alone, "k" * 20)
    both = r"set both \$ARCHIVE_S3_ACCESS_KEY_ID and \$ARCHIVE_S3_SECRET_ACCESS_KEY"
    with pytest.raises(cfg.ConfigError, match=both):
        require_environment("archive_tables.yaml")
    other = ({"ARCHIVE_S3_ACCESS_KEY_ID", "ARCHIVE_S3_SECRET_ACCESS_KEY"} - {alone}).pop()
    monkeypatch.setenv(other, "s" * 20)
    require_environment("archive_tables.yaml")


def test_the_example_error_message_is_the_one_wrap_builds():
    """README, Retries and errors: the wrong-password example, as errors.wrap words it (detail elided)."""
    from archive_pipeline.core.errors import wrap

    shown = " ".join(re.search(r"ends with `; to fix: …`\*\*, e\.g\.\s+`([^`]+)`", README).group(1).split())
    error = psycopg.OperationalError('connection failed: connection to server at "db", port 5432 failed: FATAL:  '
                                     'password authentication failed for user "app"')
    built = re.sub(r"\(OperationalError: [^)]*\"app\"\)", "(OperationalError: …)",
                   str(wrap(error, "public.events", "2024-03-10", "secret")))
    assert built == shown


def test_the_limits_the_configuration_section_gives_are_the_validators():
    text = " ".join(_section("Configuration").split())
    assert f"PostgreSQL's {cfg.MAX_PG_TIMEOUT_MS} ms" in text
    assert f"before {cfg.EARLIEST_START.isoformat()} or more than {cfg.MAX_YEARS_AHEAD} years ahead" in text
    assert f"`keep_days` above {cfg.MAX_KEEP_DAYS}" in text
    assert cfg.MAX_RETRY_DELAY_SECONDS == 86_400 and "finite number of at most a day" in text
    assert f"would wait more than {cfg.MAX_RETRY_WAIT_SECONDS / 86_400:g} days" in text
    assert cfg.MAX_SENSOR_INTERVAL_SECONDS == 7 * 86_400 and "`sensor.interval_seconds` over a week" in text
    bounds = [getattr(m, "le", None) for m in cfg.RetrySettings.model_fields["max_retries"].metadata]
    assert 20 in bounds and "for 20 retries" in text


# --- Deploying: the instance files the README describes ------------------------------------------------

def test_the_instance_files_hold_what_the_readme_says():
    """README (Protecting the source database, Deploying, Production notes) against dagster.yaml and
    docs/dagster.production.yaml, and the Dockerfile's CMD against the command the README quotes."""
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    production = yaml.safe_load((ROOT / "docs" / "dagster.production.yaml").read_text())
    text = " ".join(README.split())
    pools, runs = (local["concurrency"]["pools"]["default_limit"], local["concurrency"]["runs"]["max_concurrent_runs"])
    assert f"limits each pool to {pools} concurrent extractions, and runs overall to {runs}" in text
    assert production["concurrency"] == local["concurrency"]
    assert f"(at most {runs} runs in progress); pools ({pools} extractions per source database)" in text
    assert production["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert re.search(r"^#\s+scheme: postgresql\+psycopg2$", (ROOT / "dagster.yaml").read_text(), re.M)
    assert production["compute_logs"]["class"] == "S3ComputeLogManager" and "(`S3ComputeLogManager`" in text
    assert production["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert "free_slots_after_run_end_seconds" in production["run_monitoring"]
    assert production["run_launcher"]["class"] == "DockerRunLauncher" and "a `DockerRunLauncher`" in text
    workspace = yaml.safe_load((ROOT / "docs" / "workspace.production.yaml").read_text())
    assert workspace["load_from"][0]["grpc_server"]["port"] == 4000 and "port 4000" in text
    dockerfile = (ROOT / "Dockerfile").read_text()
    [cmd] = [json.loads(line[4:]) for line in dockerfile.splitlines() if line.startswith("CMD [")]
    quoted = re.search(r"`(dagster code-server start [^`]+)`", text).group(1).split()
    assert cmd[:len(quoted)] == quoted, (cmd, quoted)
    assert "FROM python:3.11-slim" in dockerfile and "python:3.11-slim" in text


def test_the_periods_table_and_template_rules_are_the_configs():
    """README, Periods and time zones: each granularity's default key template, the fields a template may
    use and must hold, and the strftime codes a naming pattern needs."""
    section = _section("Periods and time zones")
    rows = {row[0]: row for row in _table_rows(section, "granularity")}
    assert set(rows) == set(cfg.DEFAULT_KEY_TEMPLATES)
    for granularity, template in cfg.DEFAULT_KEY_TEMPLATES.items():
        assert rows[granularity][2] == f"`{template}`", granularity
    text = " ".join(section.split())
    fields = set(re.findall(r"`\{(\w+)\}`", text[:text.index("A template must hold")]))
    assert fields == cfg.KEY_FIELDS - {"prefix", "schema", "table", "ext", "format"}
    for granularity, codes in cfg.PATTERN_CODES.items():
        assert f"`{''.join(codes)}` ({granularity})" in text


def test_a_failing_check_says_what_differs_as_the_readme_shows():
    """README: "A failing check says what differs, e.g. `size: recorded 1,234 bytes, stored 15`" (the
    recorded size printed as 1234, unlike every other size)."""
    from archive_pipeline.core.manifest import stored_object_problems

    example = re.search(r"A failing check says what differs, e\.g\. `([^`]+)`", README).group(1)
    assert stored_object_problems({"ContentLength": 15, "ETag": '"e"'}, {"object": {"bytes": 1234, "etag": "e"}}) \
        == [example]
    assert stored_object_problems({"ContentLength": 15, "ETag": '"e"'}, {"object": {"bytes": "x"}}) \
        == ["size: recorded 'x' bytes, stored 15"]


# --- The manifest's fields ------------------------------------------------------------------------------

def _fields(text: str) -> dict[str, dict | None]:
    """``a, b{c, d[{e}]}`` as {"a": None, "b": {"c": None, "d": {"e": None}}} (a list's items as a dict)."""
    fields: dict[str, dict | None] = {}
    i = 0
    while i < len(text):
        name = re.match(r"\s*,?\s*(\w+)", text[i:])
        if not name:
            break
        i += name.end()
        if text[i:i + 1] in ("{", "["):
            opening = text[i]
            depth, j = 0, i
            while True:
                depth += text[j] in "{[" and 1 or (-1 if text[j] in "}]" else 0)
                j += 1
                if depth == 0:
                    break
            inner = text[i + 1:j - 1]
            fields[name.group(1)] = _fields(inner[1:-1] if opening == "[" else inner)
            i = j
        else:
            fields[name.group(1)] = None
    return fields


def _documented_manifest() -> dict[str, dict | None]:
    section = README[README.index("### The manifest"):README.index("Version 1 manifests are still read")]
    documented: dict[str, dict | None] = {}
    for span in re.findall(r"`([^`]+)`", section):
        if re.fullmatch(r"[\w\s,{}\[\]]+", span) and not span.startswith("<"):
            documented.update(_fields(" ".join(span.split())))
    return documented


def _shape(value: object) -> dict | None:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = value[0]
    return {k: _shape(v) for k, v in value.items()} if isinstance(value, dict) else None


def test_the_manifest_fields_the_readme_lists_are_the_ones_written():
    """Every field build_manifest writes is listed with its nested fields; the ones listed but written by
    other steps (removal, re-archive, sealing) are written somewhere in the code."""
    from types import SimpleNamespace

    from archive_pipeline.core.manifest import SourceIdentity, build_manifest, table_definition

    column = SimpleNamespace(name="id", type_name="bigint", not_null=True)
    result = _result(columns=(column,), encodings={"id": {"encoding": "number", "exact": True, "note": "n"}})
    definition = table_definition((column,), ["id"], {"parent": "public.events", "child": "c", "bound": "b"})
    written = _shape(build_manifest(result, SourceIdentity("db", "7", "17"), definition))
    documented = _documented_manifest()

    def compare(written: dict, documented: dict, where: str) -> None:
        assert set(written) <= set(documented), (where, set(written) - set(documented))
        for key, inner in written.items():
            if inner is not None:
                compare(inner, documented[key] or {}, f"{where}.{key}")

    compare(written, documented, "manifest")
    code = "\n".join(p.read_text() for p in (ROOT / "archive_pipeline" / "core").glob("*.py"))
    for key in set(documented) - set(written):
        assert f'"{key}"' in code, key
    removed = set(documented["removed"]) | {"settled_at", "settled_because"}
    assert all(f'"{key}"' in code for key in removed)


def test_a_failed_command_answers_the_json_the_readme_describes(tmp_path):
    """README: with --json an error is a JSON object on stdout (`ok: false`, `exit_code`, `error`,
    `retryable`), also for a usage error; exit 2 names the variable. No database is needed to see it."""
    from click.testing import CliRunner

    config = tmp_path / "tables.yaml"
    config.write_text("tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n")
    text = " ".join(_section("Command line").split())
    keys = re.search(r"fails as a whole answers `ok: false` with `(\w+)`, `(\w+)` and `(\w+)`", text).groups()
    for args, env in ((["--day", "2999-01-01"], {}), ([], {"ARCHIVE_PG_DSN": ""})):
        answer = CliRunner().invoke(cli.main, ["list", "--config", str(config), "--json", *args], env=env)
        payload = json.loads(answer.stdout)
        assert answer.exit_code == payload["exit_code"] == 2 and payload["ok"] is False, answer.stdout
        assert sorted(payload) == sorted(["ok", *keys])
    assert "ARCHIVE_PG_DSN" in payload["error"]


def test_every_benchmark_option_the_readme_gives_exists():
    """Options in the Benchmarks section (and `make bench ARGS=...`) are ones the bench scripts accept."""
    scripts = {p.name: p.read_text() for p in (ROOT / "bench").glob("*.py")}
    text = _section("Benchmarks") + _section("Restoring a day")
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text))
    assert {"--rows", "--big-rows", "--streams", "--declarative"} <= options
    unknown = [o for o in options if not any(f'"{o}"' in source for source in scripts.values())]
    assert not unknown, unknown
    for args in re.findall(r'make bench ARGS="([^"]+)"', README):
        for option in re.findall(r"--[a-z-]+", args):  # make bench hands ARGS to both scripts
            assert f'"{option}"' in scripts["run.py"] and f'"{option}"' in scripts["restore.py"], option


def test_the_rerun_config_the_readme_shows_is_the_one_a_failure_gives():
    """README, Re-runs: the launchpad config to archive a changed day again, for public.events."""
    import textwrap

    from archive_pipeline.defs.assets import overwrite_run_config

    block = re.search(r"```yaml\n(\s*ops:\n.*?)```", README, re.S).group(1)
    spec = cfg.parse_config({"tables": [{"name": "public.events", "day_column": "at",
                                         "start_date": "2024-01-01"}]}).tables[0]
    assert textwrap.dedent(block).strip() == overwrite_run_config(spec)


def test_the_restore_example_calls_the_functions_with_their_arguments():
    """README, Restoring a day: the Python block's calls bind to the functions' signatures, and the
    attributes it prints exist on the result."""
    import ast
    import dataclasses
    import inspect

    from archive_pipeline.core import restore

    block = _block("from archive_pipeline.core.restore import")
    tree = ast.parse(block)
    options = inspect.signature(restore.restore_archive).parameters
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "").startswith("restore_")]
    assert len(calls) == 3
    for call in calls:
        signature = inspect.signature(getattr(restore, call.func.id))
        keywords = {k.arg: None for k in call.keywords}
        extra = {k for k in keywords if k not in signature.parameters}
        assert extra <= set(options), (call.func.id, extra)  # restore_day passes **options on
        signature.bind_partial(*(None for _ in call.args), **{k: v for k, v in keywords.items() if k not in extra})
    printed = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "r"}
    assert printed <= {f.name for f in dataclasses.fields(restore.RestoreResult)}, printed
