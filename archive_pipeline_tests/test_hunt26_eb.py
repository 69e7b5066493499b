"""Hunt 26 (eb): S3 credentials where a user or a log can see them: a session token that http.client refuses and
quotes as the repr of its bytes, a token the store's redaction does not know because it came from the resource
rather than a known variable, and a secret key with a '/' written into an endpoint URL given in code."""

from __future__ import annotations

import datetime as dt
import logging

from archive_pipeline_tests.test_hunt12_ry import (  # noqa: F401 - fixtures
    SECRET, _own_default_boto3_session, cli_env, run_cli)

DAY = dt.date(2024, 3, 10)
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example secret key: '/' in it


def _run_day(conn, schema, resources, caplog):
    """One day of ``schema``.events archived by a Dagster run with ``resources``: (result, the texts a user or
    a log can see: every event of the run, the instance's event log, the library's own log lines)."""
    from dagster import instance_for_test

    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.test_dagster import events_config

    create_sample_events(conn, [DAY], 3, schema=schema)
    defs = build_definitions(events_config(schema, DAY), resources, check_source=False)
    job = defs.resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance, caplog.at_level(logging.DEBUG):
        result = job.execute_in_process(instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        recorded = [repr(record) for record in instance.all_logs(result.run_id)]
    # (botocore's and urllib3's own DEBUG records print the signed request, as they do for anyone who turns them
    # on: not the product's words)
    texts = [*map(repr, result.all_events), *recorded,
             *(r.getMessage() for r in caplog.records if not r.name.startswith(("botocore", "urllib3")))]
    return result, texts


def _leaks(texts, secret: str) -> list[str]:
    return [text[max(0, text.find(secret) - 200):text.find(secret) + 60] for text in texts if secret in text]


def test_a_session_token_wrapped_onto_two_lines_is_printed_whole_by_the_command_line(cli_env, monkeypatch):
    """**Scenario:** the archive host gets temporary credentials from its secret store; AWS_SESSION_TOKEN (a
    token of several hundred characters) was written to the mounted file wrapped onto two lines, as
    ``base64 -w 76`` or a copy from a narrow terminal leaves it, and the nightly cron runs
    ``archive-pipeline list`` (and ``--json``).

    **Now:** http.client refuses the X-Amz-Security-Token header (a newline inside a value) and botocore's
    HTTPClientError quotes it as the repr of its bytes: ``Invalid header value b'FwoG...Hunter2Sekret...\\n
    ABCD...'``, the newline written as the two characters backslash and n. ``errors.redact`` hides the
    environment's token only as written (with its real newline), stripped, or percent-encoded, never as that
    repr, so environment.store_from_env's ``cannot reach the object store (HTTPClientError: ...)`` (from
    ``redact(str(exc), ...)``) prints the whole token, both lines, on stderr and in the JSON's ``error`` (and
    calls it retryable, exit 3, though every retry fails alike). The store's errors in a Dagster run go through
    the same redact (store._said).

    **Should:** the command fails (exit 2 or 3) without any piece of the token in what it prints; ideally
    saying that AWS_SESSION_TOKEN holds a line break. Fix idea: in redact, also hide each environment secret as
    Python quotes it (``repr(secret)[1:-1]``, ``repr(secret.encode())[2:-1]``) and each of its lines, or scrub
    http.client's ``Invalid header value b'...'`` whole; refuse a token with white space inside it up front."""
    token = f"FwoGZXIvYXdzE{SECRET}TokenABCDEFGHIJKLMNOP\nQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123"
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = {**cli_env, "ARCHIVE_S3_ACCESS_KEY_ID": "", "ARCHIVE_S3_SECRET_ACCESS_KEY": "",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": token}
    for args in (["list"], ["list", "--json"]):
        code, output = run_cli(env, *args)
        assert code in (2, 3), output
        assert SECRET not in output and "QRSTUVWXYZabcdefghij" not in output, output


def test_a_session_token_given_to_the_s3_resource_in_code_reaches_the_runs_failure(
        conn, schema, pg, s3, bucket, monkeypatch, caplog):
    """**Scenario:** a project builds the location with its own resources, as the README's "Using it from another
    Dagster project" allows (``build_definitions(config, resources)``): ``archive_store`` over dagster-aws's
    S3Resource with ``aws_session_token=EnvVar("TEAM_S3_SESSION_TOKEN")``, the team's own variable name. The
    token is mounted from a file and ends in a newline. A day is materialized.

    **Now:** S3Resource passes the token as it is; http.client refuses the X-Amz-Security-Token header, and the
    store's error (store._wrap -> store._said -> errors.redact, which hides only the values of the variables in
    ENV_SECRETS and URI credentials) quotes it: the step's Failure, every STEP_UP_FOR_RETRY and the
    STEP_FAILURE in the instance's event log say ``listing s3://... failed: the object store's response broke
    off ... (HTTPClientError: ... Invalid header value b'FwoG...Hunter2Sekret...\\n'); transient, retried``.
    The store never knew the credentials its own client signs with.

    **Should:** the run fails without the token anywhere in its events, the event log or the library's log
    lines, whichever resource or variable supplied it. Fix idea: redact the client's own credentials (its
    ``_request_signer._credentials``: access key's secret and token, and their stripped and repr forms) in
    _said / the store's errors, captured when the S3Store is built; or strip them in ArchiveStoreResource.store
    as ArchiveS3Resource does, and raise the store's errors without the botocore exception chained."""
    from dagster import EnvVar
    from dagster_aws.s3 import S3Resource

    from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource

    token = f"FwoGZXIvYXdzE{SECRET}TokenABCDEFGHIJKLMNOP"
    monkeypatch.setenv("TEAM_S3_SESSION_TOKEN", token + "\n")
    s3_resource = S3Resource(endpoint_url=s3.endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
                             aws_secret_access_key="testing", aws_session_token=EnvVar("TEAM_S3_SESSION_TOKEN"))
    resources = {"postgres": PostgresResource(dsn=pg.dsn),
                 "archive_store": ArchiveStoreResource(s3=s3_resource, bucket=bucket)}
    result, texts = _run_day(conn, schema, resources, caplog)
    assert not result.success
    assert not _leaks(texts, SECRET), _leaks(texts, SECRET)[:3]


def test_an_endpoint_in_code_with_a_secret_key_holding_a_slash_is_not_refused_and_is_quoted_whole(
        conn, schema, pg, s3, caplog):
    """**Scenario:** a project builds the location with its own resources and writes its MinIO credentials
    into the endpoint, as many S3 tools take them: ``S3Resource(endpoint_url="http://AKID:<secret>@minio:9000")``,
    the secret key as AWS issues them, with '/' in it (``wJalrXUtnFEMI/K7MDENG/...``), not percent-encoded.
    A day is materialized.

    **Now:** ArchiveStoreResource.store refuses an endpoint with credentials only through
    environment.endpoint_has_credentials, ``"@" in urlsplit(url).netloc``; urlsplit ends the netloc at the
    secret's first '/', so no '@' is seen and the URL goes to botocore. Every request fails with
    ``EndpointResolutionError: Custom endpoint `http://AKID:wJalrXUtnFEMI/K7MDENG/...@127.0.0.1:...` was not a
    valid URI``, and errors.redact's _URI_CREDENTIALS (whose password part stops at '/') leaves it whole: the
    step's failure (``listing s3://... (ListObjectsV2) failed: the object store client is misconfigured ...``)
    and the event log carry the secret key. (The command line's check_endpoint_url refuses such a URL only
    because its "port" is not a number.)

    **Should:** the run fails at once naming the endpoint_url setting (the refusal test_secrethunt proves for a
    percent-encoded secret), and no piece of the secret key is in its events, event log or log lines. Fix
    idea: in endpoint_has_credentials look for an '@' between the scheme's '//' and the first '?' or '#' (not
    in urlsplit's netloc); let _URI_CREDENTIALS's password run to the last '@' before the host, '/' included."""
    from dagster_aws.s3 import S3Resource

    from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource

    endpoint = f"http://AKIAIOSFODNN7EXAMPLE:{AWS_SECRET}@127.0.0.1:{s3.port}"
    resources = {"postgres": PostgresResource(dsn=pg.dsn),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1"),
                                                       bucket="no-such-bucket")}
    result, texts = _run_day(conn, schema, resources, caplog)
    assert not result.success
    for piece in AWS_SECRET.split("/"):
        assert not _leaks(texts, piece), (piece, _leaks(texts, piece)[:3])


# ------------------------------------------------------------------------------------------------------------------
# The same class, found with the tests above (fix-eb): a secret the product knows of, in a form redact did not know


def test_a_secret_is_hidden_as_python_and_json_quote_it_and_line_by_line():
    """**Scenario:** a token or password reaches a message as http.client, botocore or json quote it: the repr of its
    bytes (``b'...\\n...'``), the repr of the text, JSON's escapes, or one line of a token wrapped onto two.

    **Now (before fix-eb):** redact hid a secret only as written, stripped or percent-encoded.

    **Should:** none of those forms is left in what redact returns, for a secret given, from ENV_SECRETS, or signed
    with by a store's client; a URI's password holding '/', '?', '#' or '@' is hidden up to the last '@'."""
    import json

    from archive_pipeline.core.errors import redact

    token = f"FwoG{SECRET}Token/+ABCDEFGH\nQRSTUVWXYZabcdefghij\tnon-ASCII é\n"
    quoted = [repr(token.encode()), repr(token), json.dumps(token), json.dumps(token, ensure_ascii=False),
              token.splitlines()[1], f"header value {token.splitlines()[0]!r}"]
    for text in quoted:
        assert SECRET not in redact(text, token) and "QRSTUVWXYZabcdefghij" not in redact(text, token), text
    for password in (AWS_SECRET, f"pa?ss#{SECRET}", f"a@b/{SECRET}"):
        for scheme in ("postgresql://archiver:", "http://AKID:", "postgresql:/archiver:"):
            said = redact(f"Custom endpoint `{scheme}{password}@127.0.0.1:9000/db` was not a valid URI")
            assert not any(piece in said for piece in (*AWS_SECRET.split("/"), SECRET)), said
            assert "@127.0.0.1:9000/db` was not a valid URI" in said, said


def test_an_endpoint_whose_secret_holds_a_query_or_fragment_character_is_refused_as_holding_credentials():
    """**Scenario:** ``ARCHIVE_S3_ENDPOINT_URL=http://AKID:<secret>@minio:9000`` with a MinIO secret holding '/',
    '?' or '#', not percent-encoded.

    **Now (before fix-eb):** endpoint_has_credentials looked for '@' in urlsplit's netloc, which ends at the first
    of them; check_endpoint_url refused such a URL, if at all, as "not an http(s) URL" (its "port" no number).

    **Should:** every one is refused as holding credentials, naming the variable, without the URL."""
    import pytest

    from archive_pipeline.core.config import ConfigError
    from archive_pipeline.core.environment import check_endpoint_url, endpoint_has_credentials

    for secret in (AWS_SECRET, f"ab?cd{SECRET}", f"ab#cd{SECRET}", f"a/b?c#d{SECRET}"):
        url = f"http://AKID:{secret}@127.0.0.1:9000"
        assert endpoint_has_credentials(url), url
        with pytest.raises(ConfigError, match="ignores a user or secret") as raised:
            check_endpoint_url(url, "bucket")
        assert SECRET not in str(raised.value) and "MDENG" not in str(raised.value), raised.value
    assert not endpoint_has_credentials("http://127.0.0.1:9000/path")


def test_a_dsn_holding_a_byte_not_utf8_is_refused_without_quoting_it(cli_env, pg):
    """**Scenario:** ARCHIVE_PG_DSN written in Latin-1 (a password with a byte that is no UTF-8, which Python reads
    from the environment as a lone surrogate); ``archive-pipeline list`` runs, and a Dagster run connects.

    **Now (before fix-eb):** psycopg raised a bare UnicodeEncodeError, whose repr quotes the whole DSN, password
    included: check_dsn, default_connect_timeout and PostgresResource.connect caught only psycopg's errors.

    **Should:** a configuration error naming the variable and where the byte is, never the DSN."""
    import pytest

    from archive_pipeline.core.errors import SourceError
    from archive_pipeline.defs.resources import PostgresResource

    dsn = f"postgresql://archiver:{SECRET}\udcff@127.0.0.1:5432/db"  # (b"\xff" as os.environ reads it)
    for args in (["list"], ["list", "--json"]):
        code, output = run_cli({**cli_env, "ARCHIVE_PG_DSN": dsn}, *args)
        assert code == 2 and "not UTF-8" in output and SECRET not in output, output
    with pytest.raises(SourceError) as raised:
        with PostgresResource(dsn=dsn).connect():
            pass
    said = repr(raised.value) + str(raised.value.__cause__) + str(raised.value.__context__)
    assert "not UTF-8" in str(raised.value) and not raised.value.retryable and SECRET not in said, said


def test_a_dsn_pasted_as_a_tables_name_is_not_quoted_with_its_password_by_the_load(pg):
    """**Scenario:** a DSN pasted into the YAML file as a table's ``name`` (the wrong line of a runbook); the code
    location loads.

    **Now (before fix-eb):** the configuration's errors (config._brief_repr) quoted the name as written, and the
    load's check of the tables quoted ``table '...': ... does not exist`` unredacted: the password in the error.

    **Should:** the load fails naming the table with its password hidden."""
    import pytest

    from archive_pipeline.core.config import ConfigError, parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.resources import PostgresResource

    for name in (f"postgresql://archiver:{AWS_SECRET}@db.example:5432/prod",
                 f"public.postgresql://archiver:{AWS_SECRET}@db.example:5432/prod"):
        with pytest.raises(ConfigError) as raised:
            config = parse_config({"tables": [{"name": name, "day_column": "day", "start_date": "2024-01-01"}]},
                                  "archive_tables.yaml")
            build_definitions(config, {"postgres": PostgresResource(dsn=pg.dsn)})
        said = str(raised.value)
        assert "archiver:***@db.example" in said and not any(p in said for p in AWS_SECRET.split("/")), said
