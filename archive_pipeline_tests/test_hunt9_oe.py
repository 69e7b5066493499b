"""Hunt 9, class "configuration and environment at their edges": settings as a user writes them (YAML
booleans and numbers where a name is meant, a pg_service.conf, the documented AWS_* variables, an endpoint
URL with a query) refused at load with a message that names the setting and the fix, or working as
documented."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from archive_pipeline.core.config import ConfigError, load_config
from archive_pipeline.core.errors import SourceError
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
TABLES = "tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-03-10}\n"


def cli(env: dict[str, str], *args: str, process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    return run_cli(args, env, cwd=ROOT, timeout=60, process=process or None)


@pytest.fixture
def cli_env(tmp_path, pg, conn, schema, s3, bucket) -> dict[str, str]:
    """What a deployment gives the command line: a table file (its table there, so a right setting lists
    it) and the connection variables, nothing else of ARCHIVE_*, AWS_* or PG* from the test's own environment."""
    conn.execute(f'CREATE TABLE "{schema}".events (id int, created_at timestamptz)')
    config = tmp_path / "tables.yaml"
    config.write_text(TABLES.replace("public.events", f"{schema}.events"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_", "PG"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    return env


# ------------------------------------------------------------------------------------------------
# YAML reads a name as a boolean or a number


@pytest.mark.parametrize("line, written", [
    ("asset_key_prefix: [warehouse, no]\n", "no"),  # Norway's code: YAML 1.1's boolean false
    ("tables:\n  - {name: public.events, day_column: off, start_date: 2024-03-10}\n", "off"),
    ("tables:\n  - {name: 2024.10, day_column: created_at, start_date: 2024-03-10}\n", "2024.10"),
])
def test_a_name_yaml_reads_as_a_boolean_or_a_number_is_refused_as_written_with_the_fix(tmp_path, line, written):
    """A user writes a name YAML 1.1 takes for something else: the asset key prefix of the Norwegian
    warehouse ``[warehouse, no]``, a column called ``off``, the table ``10`` of schema ``2024``. The load
    refuses it, but says "False cannot be part of a Dagster asset key: use letters, digits and '_'" (``no``
    is letters), "Input should be a valid string", or names the table ``2024.1`` (YAML's float), with no
    fix. It should show the value as written in the file and say to quote it (as the README's number
    settings say for ``keep_days: yes`` and ``060``)."""
    text = line if line.startswith("tables") else line + TABLES
    path = tmp_path / "tables.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert f"'{written}'" in message or f'"{written}"' in message, message
    assert "quote" in message.lower(), message


# ------------------------------------------------------------------------------------------------
# A DSN that names a service of pg_service.conf


def _service_file(tmp_path, pg, **services: dict[str, str]) -> Path:
    path = tmp_path / "pg_service.conf"
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in options.items())
                            for name, options in services.items()))
    return path


def test_a_dsn_naming_a_service_not_defined_is_a_setting_to_fix_not_a_lost_connection(cli_env, tmp_path, pg,
                                                                                       monkeypatch):
    """A user sets ``ARCHIVE_PG_DSN=service=archive`` (libpq's service file, documented as a DSN in
    key=value form) with a typo in the service's name. The command line says "the database connection was
    lost ... run the command again" at "localhost (socket):5432, database 'root'", exit 3 (unreachable,
    retryable), and a Dagster run is retried with backoff as for a server restart. It should be a usage
    error (exit 2) naming the service that is not defined, with nothing to retry."""
    services = _service_file(tmp_path, pg, archive={"host": "127.0.0.1", "port": str(pg.port), "user": "postgres",
                                                    "dbname": "postgres"})
    env = {**cli_env, "ARCHIVE_PG_DSN": "service=archvie", "PGSERVICEFILE": str(services)}
    done = cli(env, "list", "--check-source", "--day", "2024-03-10")
    said = done.stderr + done.stdout
    assert done.returncode == 2, said
    assert "archvie" in said and "service" in said, said
    assert "run the command again" not in said and "connection was lost" not in said, said
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    with pytest.raises(SourceError) as raised, PostgresResource(dsn="service=archvie").connect():
        pass
    assert not raised.value.retryable, str(raised.value)


def test_a_service_dsns_connect_failure_names_the_services_host_database_and_user(cli_env, tmp_path, pg):
    """A user's ``ARCHIVE_PG_DSN=service=archive`` points, through pg_service.conf, at 127.0.0.1:<port>,
    database ``archive_db`` (not created yet) as ``postgres``. The connect failure says "cannot connect to
    PostgreSQL at localhost (socket):5432, database 'root' as user 'root'": host, port, database and user
    that are nowhere in the settings (the DSN's own, without the service's). It should name the server and
    database libpq was sent to: 127.0.0.1:<port>, 'archive_db', 'postgres'."""
    services = _service_file(tmp_path, pg, archive={"host": "127.0.0.1", "port": str(pg.port), "user": "postgres",
                                                    "dbname": "archive_db"})
    env = {**cli_env, "ARCHIVE_PG_DSN": "service=archive", "PGSERVICEFILE": str(services)}
    done = cli(env, "list", "--check-source", "--day", "2024-03-10")
    said = done.stderr + done.stdout
    assert done.returncode == 2, said
    assert "does not exist" in said, said
    assert f"127.0.0.1:{pg.port}" in said and "'archive_db'" in said and "'postgres'" in said, said
    assert "localhost (socket)" not in said, said


# ------------------------------------------------------------------------------------------------
# The documented AWS_* variables, a profile, and the endpoint URL


def test_a_bad_value_of_the_documented_checksum_variable_is_refused_naming_it(cli_env, monkeypatch, pg, s3, bucket):
    """The README tells users of older MinIO to set ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``; one
    writes ``when-required``. The command line says "lost the object store (InvalidChecksumConfigError):
    check $ARCHIVE_S3_ENDPOINT_URL and the network", exit 3 (retryable), and the code location loads and then
    fails every run. It should be refused at load and by the command line (exit 2), naming the variable."""
    done = cli({**cli_env, "AWS_REQUEST_CHECKSUM_CALCULATION": "when-required"}, "list", "--day", "2024-03-10")
    said = done.stderr + done.stdout
    assert done.returncode == 2, said
    assert "AWS_REQUEST_CHECKSUM_CALCULATION" in said, said
    config = load_config(Path(cli_env["ARCHIVE_PIPELINE_CONFIG"]))
    for name in ("ARCHIVE_PG_DSN", "ARCHIVE_S3_BUCKET", "ARCHIVE_S3_ENDPOINT_URL"):
        monkeypatch.setenv(name, cli_env[name])
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when-required")
    with pytest.raises(ConfigError, match="AWS_REQUEST_CHECKSUM_CALCULATION"):
        build_definitions(config, check_source=False)


def test_a_profile_that_does_not_exist_is_a_setting_to_fix_not_a_lost_store(cli_env, tmp_path):
    """Without ARCHIVE_S3_* keys the credentials come from boto3's usual chain, and the command line's own
    message suggests AWS_PROFILE. A user sets ``AWS_PROFILE=archvie`` (a typo): the command line says "lost
    the object store (ProfileNotFound): check $ARCHIVE_S3_ENDPOINT_URL and the network", exit 3, retryable.
    It should be a usage error (exit 2) naming AWS_PROFILE and the profile not found."""
    env = {k: v for k, v in cli_env.items() if k not in ("ARCHIVE_S3_ACCESS_KEY_ID", "ARCHIVE_S3_SECRET_ACCESS_KEY")}
    aws = tmp_path / "aws"
    aws.mkdir()
    (aws / "config").write_text("[profile archive]\nregion = us-east-1\n")
    (aws / "credentials").write_text("[archive]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    env.update(AWS_PROFILE="archvie", AWS_CONFIG_FILE=str(aws / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(aws / "credentials"))
    done = cli(env, "list", "--day", "2024-03-10")
    said = done.stderr + done.stdout
    assert done.returncode == 2, said
    assert "AWS_PROFILE" in said and "archvie" in said, said
    assert "network" not in said, said


def test_an_endpoint_url_with_a_query_is_refused_at_load_naming_the_variable(cli_env, monkeypatch, s3):
    """A user copies the store's URL from a console with a query (``http://minio:9000?region=eu``). The
    load's check of ARCHIVE_S3_ENDPOINT_URL passes it, the code location loads and every run fails; the
    command line says "cannot reach the object store (EndpointResolutionError ...): check ... the network",
    exit 3 (retryable). It should be refused at load and by the command line (exit 2), naming the variable,
    as an endpoint without its scheme is."""
    endpoint = f"{s3.endpoint_url}?region=eu"
    done = cli({**cli_env, "ARCHIVE_S3_ENDPOINT_URL": endpoint}, "list", "--day", "2024-03-10")
    said = done.stderr + done.stdout
    assert done.returncode == 2, said
    assert "ARCHIVE_S3_ENDPOINT_URL" in said, said
    config = load_config(Path(cli_env["ARCHIVE_PIPELINE_CONFIG"]))
    for name in ("ARCHIVE_PG_DSN", "ARCHIVE_S3_BUCKET"):
        monkeypatch.setenv(name, cli_env[name])
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", endpoint)
    with pytest.raises(ConfigError, match="ARCHIVE_S3_ENDPOINT_URL"):
        build_definitions(config, check_source=False)


def test_a_component_asset_key_prefix_yaml_reads_as_a_boolean_is_named_as_written_with_the_fix(tmp_path, monkeypatch):
    """The same ``asset_key_prefix: [eu, no]`` (Norway) in a component's defs.yaml, loaded by Dagster's
    ``load_from_defs_folder``: the load fails with pydantic's "Input should be a valid string
    [input_value=False]" for Dagster's attribute model. It should say that YAML read ``no`` as a boolean and
    to quote it, as for every setting of the file."""
    from dagster import load_from_defs_folder

    from archive_pipeline_tests.test_deploy import _make_project
    from archive_pipeline_tests.test_hunt7_mp import _exception_chain

    monkeypatch.setenv("ARCHIVE_PG_DSN", "host=127.0.0.1 port=1 dbname=x connect_timeout=1")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
    _make_project(tmp_path, "type: archive_pipeline.defs.component.ArchiveTablesComponent\nattributes:\n"
                            "  asset_key_prefix: [eu, no]\n"
                            "  tables:\n    - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception) as info:
        load_from_defs_folder(path_within_project=tmp_path)
    text = "\n".join(str(e) for e in _exception_chain(info.value))
    assert "asset_key_prefix" in text and "'no'" in text and "quote" in text.lower(), text


# ------------------------------------------------------------------------------------------------
# Values with the quotes of an env file around them (docker --env-file and systemd keep them)


def test_a_dsn_with_the_quotes_of_an_env_file_around_it_is_refused_saying_so(cli_env, pg):
    """A user puts ``ARCHIVE_PG_DSN="postgresql://..."`` in a file for ``docker run --env-file``, which keeps
    the quotes in the value. The command line says only "$ARCHIVE_PG_DSN is not a valid connection string:
    missing "=" after "***" in connection info string" (the piece hidden, rightly, as it may hold the
    password): nothing tells the user what is wrong. It should say the value is wrapped in quotes and to
    remove them."""
    done = cli({**cli_env, "ARCHIVE_PG_DSN": f'"{pg.dsn}"'}, "list", "--day", "2024-03-10")
    said = done.stderr + done.stdout
    assert done.returncode == 2, said
    assert "ARCHIVE_PG_DSN" in said and "quote" in said.lower(), said


def test_a_key_prefix_with_the_quotes_of_an_env_file_around_it_is_refused(cli_env, monkeypatch, s3_client, bucket, conn,
                                                                          schema):
    """The same env file holds ``ARCHIVE_S3_PREFIX="archive"``: the bucket, region and endpoint with such
    quotes are refused naming their variable, but the prefix is taken as ``'archive'`` with its quotes, and
    every day is archived under a folder ``"archive"/`` beside the real ``archive/`` (whose archived days are
    then not found, and archived again). It should be refused at load and by the command line, naming
    ARCHIVE_S3_PREFIX and the quotes."""
    conn.execute(f"INSERT INTO \"{schema}\".events VALUES (1, '2024-03-10 12:00+00')")
    done = cli({**cli_env, "ARCHIVE_S3_PREFIX": '"archive"'}, "archive", "--day", "2024-03-10")
    said = done.stderr + done.stdout
    stored = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert done.returncode == 2 and "ARCHIVE_S3_PREFIX" in said, (said, stored)
    assert stored == [], stored
    config = load_config(Path(cli_env["ARCHIVE_PIPELINE_CONFIG"]))
    for name in ("ARCHIVE_PG_DSN", "ARCHIVE_S3_BUCKET", "ARCHIVE_S3_ENDPOINT_URL"):
        monkeypatch.setenv(name, cli_env[name])
    monkeypatch.setenv("ARCHIVE_S3_PREFIX", '"archive"')
    with pytest.raises(ConfigError, match="ARCHIVE_S3_PREFIX"):
        build_definitions(config, check_source=False)
