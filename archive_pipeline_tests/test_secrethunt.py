"""Secrets that reached what people read: a piece of the password that libpq quoted from a DSN it could not
parse, a URI password with an unencoded '/' shown as the port and the database, S3 credentials written in
the endpoint URL and quoted by botocore, and a DSN on a line of the table file quoted by PyYAML."""

from __future__ import annotations

import datetime as dt
import logging
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from archive_pipeline.cli import main
from archive_pipeline.core.config import ConfigError, load_config
from archive_pipeline.core.errors import SourceError
from archive_pipeline.definitions import build_definitions, check_tables_exist
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline.defs.sensors import describe_connect_failure
from archive_pipeline_tests.test_dagster import events_config

SECRET = "Hunter2Sekret"  # each password below holds it, or ends with it
DAY = dt.date(2024, 3, 10)
TABLES = "tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-03-10}\n"


@pytest.fixture
def cli_env(tmp_path, s3, bucket, pg) -> dict[str, str]:
    """What the command line reads: a table file and the connection variables (moto's credentials)."""
    config = tmp_path / "tables.yaml"
    config.write_text(TABLES)
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_ACCESS_KEY_ID": "testing",
            "ARCHIVE_S3_SECRET_ACCESS_KEY": "testing", "ARCHIVE_PG_PRIMARY_DSN": ""}


def run_cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, list(args), env=env)
    return done.exit_code, done.output


@pytest.mark.parametrize("dsn, reason", [
    (f"postgresql://archiver:pass {SECRET}@127.0.0.1/db", "unexpected spaces"),  # a space not percent-encoded
    (f"host=127.0.0.1 user=archiver password=pass {SECRET}", 'missing "=" after'),  # a space not quoted
    (f"host=127.0.0.1 user=archiver password='it's{SECRET}'", 'missing "=" after'),  # a quote not escaped
    (f"postgresql://archiver:{SECRET}%zz@127.0.0.1/db", "invalid percent-encoded token"),  # a '%' not encoded
])
def test_a_malformed_dsn_never_shows_the_piece_of_its_password_libpq_quotes(cli_env, dsn, reason):
    """libpq's parse errors quote the piece they stumbled on, often the password or its second half; the
    command line printed it ('missing "=" after "Hunter2Sekret"'). Now the quoted piece is ***, the
    reason stays, and it is still a usage error."""
    code, output = run_cli({**cli_env, "ARCHIVE_PG_DSN": dsn}, "list")
    assert code == 2, output
    assert "ARCHIVE_PG_DSN is not a valid connection string" in output and reason in output, output
    assert SECRET not in output


@pytest.mark.parametrize("password", [f"Zm9v{SECRET}/{SECRET}", f"Zm9v@{SECRET}/{SECRET}"])
def test_a_uri_password_with_an_unencoded_slash_is_not_shown_as_port_or_database(cli_env, schema, caplog, password):
    """A base64 password holds '/': libpq ends the user and password there, so the password's start became the
    port (or, after an '@', the host) and its end, with the host, the database. Every connect failure named
    them ("cannot connect to PostgreSQL at archiver:Zm9v..., database 'Hunter2Sekret@127.0.0.1/db'"): the
    command line, a run's failure, the sensor's tick and the load's warning. Now: malformed, and how to encode it."""
    dsn = f"postgresql://archiver:{password}@127.0.0.1:5432/db?connect_timeout=2"
    code, output = run_cli({**cli_env, "ARCHIVE_PG_DSN": dsn}, "list")
    assert code == 2, output
    with pytest.raises(SourceError) as raised, PostgresResource(dsn=dsn, connect_timeout_s=2).connect():
        pass
    with caplog.at_level(logging.WARNING, logger="archive_pipeline.definitions"):
        check_tables_exist(events_config(schema, DAY), dsn)
    for text in (output, str(raised.value), caplog.text, describe_connect_failure(raised.value, dsn)):
        assert "malformed" in text and "%2F" in text, text
        assert SECRET not in text


def test_s3_credentials_in_the_endpoint_url_are_refused_before_botocore_quotes_them(cli_env, s3, monkeypatch):
    """botocore never signs with a user and secret written in the endpoint URL, but quotes the URL in its
    errors: the command line printed "bucket 'x' does not exist at http://AKID:<secret>@...", a run's
    failure and botocore's log the same. Now the load and the command line refuse such a URL, naming the
    variables the keys belong in, and show neither the URL nor the secret."""
    endpoint = f"http://AKID:{quote(SECRET + '/K7MDENG+bPxRfi', safe='')}@127.0.0.1:{s3.port}"  # as AWS keys look
    code, output = run_cli({**cli_env, "ARCHIVE_S3_ENDPOINT_URL": endpoint, "ARCHIVE_S3_BUCKET": "no-such-bucket"},
                           "list")
    assert code == 2, output
    assert "ARCHIVE_S3_ENDPOINT_URL" in output and "ARCHIVE_S3_SECRET_ACCESS_KEY" in output, output
    monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://nobody@127.0.0.1:1/x")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "bucket")
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", endpoint)
    with pytest.raises(ConfigError) as raised:
        build_definitions(events_config("public", DAY), check_source=False)
    for text in (output, str(raised.value)):
        assert "user:secret@" in text and SECRET not in text, text


@pytest.mark.parametrize("line", [
    f"note: x: postgresql://archiver:{SECRET}@db.internal/app",
    f"source: {{dsn: host=db password={SECRET} dbname=app",
])
def test_a_yaml_error_names_line_and_column_and_never_quotes_the_line(tmp_path, line):
    """PyYAML quotes the line it stumbled on; a DSN pasted into the table file (a note, a misplaced setting)
    went whole into the load error the UI shows and the command line prints."""
    config = tmp_path / "tables.yaml"
    config.write_text(TABLES + line + "\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert "not valid YAML" in str(raised.value) and "line 3, column" in str(raised.value), raised.value
    assert SECRET[:6] not in str(raised.value)  # PyYAML shortens a long line around the column: 'Hunter2S ...'


def test_a_dsn_set_as_the_bucket_or_region_is_named_without_its_password(cli_env, monkeypatch):
    """Swapped variables (the DSN in ARCHIVE_S3_BUCKET or ARCHIVE_S3_REGION): the load error and the command
    line quoted the value to say it is no bucket or region name, password and all."""
    dsn = f"postgresql://archiver:{SECRET}@db.internal:5432/app"
    code, output = run_cli({**cli_env, "ARCHIVE_S3_REGION": dsn}, "list")
    assert code == 2 and "ARCHIVE_S3_REGION 'postgresql://archiver:***@db.internal:5432/app'" in output, output
    monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://nobody@127.0.0.1:1/x")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", f"host=db.internal password={SECRET}")
    with pytest.raises(ConfigError) as raised:
        build_definitions(events_config("public", DAY), check_source=False)
    assert "ARCHIVE_S3_BUCKET 'host=db.internal password=***' is not a bucket name" in str(raised.value)
    assert SECRET not in output + str(raised.value)


def test_the_stores_errors_notes_and_log_lines_never_quote_credentials_of_the_endpoint(caplog):
    """A resource built in code may still hand boto3 an endpoint with a user and secret in it (only the
    environment's is refused), and botocore quotes that URL in every error: the store's failures, the
    notes it adds to them and its cleanup warnings carried it as they were."""
    import boto3
    from botocore.config import Config

    from archive_pipeline.core.store import S3Store
    from archive_pipeline.local.local_stack import free_port

    client = boto3.client("s3", endpoint_url=f"http://AKID:{SECRET}@127.0.0.1:{free_port()}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2))
    store = S3Store(client, "bucket", prefix="archive")
    original = RuntimeError("the write failed")
    with caplog.at_level(logging.WARNING, logger="archive_pipeline.core.store"), pytest.raises(Exception) as raised:
        store.delete_quietly("archive/x", original)
        store.abort_stale_uploads_quietly("archive/x")
        store.head("archive/x")
    texts = [str(raised.value), *getattr(original, "__notes__", []), caplog.text]
    assert "EndpointConnectionError" in texts[0] and "could not delete" in texts[1], texts
    assert "could not abort stale multipart uploads" in texts[2], texts
    assert not [text for text in texts if SECRET in text], texts


def test_an_s3_resource_built_in_code_with_credentials_in_its_endpoint_fails_the_run_without_them(
        conn, schema, pg, s3, caplog):
    """The environment's endpoint is refused at load; one given in code (another project's Definitions, the
    factory's ``resources``) reached botocore, whose errors and logs quote the URL whole. The run fails at
    once, naming the setting, and neither the failure nor a log line carries the secret."""
    from dagster import instance_for_test
    from dagster_aws.s3 import S3Resource

    from archive_pipeline.defs.resources import ArchiveStoreResource
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], 3, schema=schema)
    endpoint = f"http://AKID:{quote(SECRET, safe='')}@127.0.0.1:{s3.port}"
    resources = {"postgres": PostgresResource(dsn=pg.dsn),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1"),
                                                       bucket="no-such-bucket")}
    defs = build_definitions(events_config(schema, DAY), resources, check_source=False)
    job = defs.resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance, caplog.at_level(logging.DEBUG):
        result = job.execute_in_process(instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        failures = [str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure]
    assert not result.success and failures
    assert all("endpoint_url" in f and "user:secret@" in f for f in failures), failures
    assert SECRET not in " ".join(failures) + caplog.text


AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example: a secret key's shape


@pytest.mark.parametrize("value, swapped", [
    (AWS_SECRET, {}),  # pasted into the bucket's variable: only its shape says what it is
    (SECRET + " x", {"ARCHIVE_S3_SECRET_ACCESS_KEY": SECRET}),  # holds the secret another variable has
    (f"{SECRET}!", {"PGPASSWORD": SECRET}),
])
def test_a_secret_key_set_as_the_bucket_is_not_quoted_as_a_bad_bucket_name(cli_env, monkeypatch, value, swapped):
    """The secret access key pasted into ARCHIVE_S3_BUCKET was printed back as "not a bucket name" by the
    command line and the load. Now neither shows it, and both still name the variable to fix."""
    code, output = run_cli({**cli_env, **swapped, "ARCHIVE_S3_BUCKET": value}, "list")
    monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://nobody@127.0.0.1:1/x")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", value)
    for name, secret in swapped.items():
        monkeypatch.setenv(name, secret)
    with pytest.raises(ConfigError) as raised:
        build_definitions(events_config("public", DAY), check_source=False)
    assert code == 2, output
    for text in (output, str(raised.value)):
        assert "ARCHIVE_S3_BUCKET" in text and "is not a bucket name" in text, text
        assert value not in text and SECRET not in text and AWS_SECRET[:12] not in text, text


@pytest.mark.parametrize("endpoint", [f"http://AKID:{SECRET}@[::1", f"http://AKID:{SECRET}@127.0.0.1:port"])
def test_a_malformed_endpoint_with_credentials_in_code_is_refused_without_them(endpoint):
    """The resource's endpoint check split the URL first: one too malformed to split (an unclosed IPv6
    bracket, a port that is no number) raised urllib's bare ValueError instead of the refusal."""
    from dagster_aws.s3 import S3Resource

    from archive_pipeline.defs.resources import ArchiveStoreResource

    resource = ArchiveStoreResource(s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1"), bucket="b")
    with pytest.raises(ConfigError) as raised:
        resource.store()
    assert "user:secret@" in str(raised.value) and SECRET not in str(raised.value)
