"""Hunt 23 (ax): configuration and naming edges (core/environment.py, core/config.py, core/keys.py, the connect
path of the command line and of the PostgresResource, definitions.check_tables_exist, defs/resources.py).

Held up (probed, no test here): a naming-mode pattern whose day tables are all digits (``%Y%m%d``: ``20240310``)
archives its rows (no number is made of the name anywhere); a component's templated value that renders as a number
is refused (pydantic's str), not misnamed; a ``{prefix}`` placed after other fields cannot make two different
tables collide under one prefix except where the prefix equals a schema and the tables mirror each other
(``{prefix}/{schema}/{table}`` for public.events and ``{schema}/{table}/{prefix}`` for events.public under
ARCHIVE_S3_PREFIX=events), too contrived to count; an empty ARCHIVE_S3_REGION / ENDPOINT_URL / PREFIX /
VERIFY_ETAGS / PRIMARY_DSN is "unset" on both the command line and the location; the check_tables_exist connection
left open when its SET fails is closed by reference counting when the function returns (no SET failure could be
provoked deterministically anyway).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time

import psycopg.conninfo
import pytest

from archive_pipeline.core.config import ConfigError
from archive_pipeline_tests.test_dagster import events_config, job_name


def test_a_dsn_connect_timeout_is_overridden_by_a_hard_coded_ten_seconds(pg):
    """Scenario: ARCHIVE_PG_DSN carries its own ``connect_timeout=1`` (the libpq way to bound a connect, and the only
    one the code location offers: the default resources take no connect timeout from the YAML file), and the server
    at that address accepts the TCP connection but never answers (a hung host, a half-open load balancer).

    Now: environment._connect calls ``psycopg.connect(dsn, connect_timeout=10, ...)`` and PostgresResource.connect
    ``psycopg.connect(self.dsn, connect_timeout=self.connect_timeout_s)`` (default 10); psycopg merges keyword
    arguments over the DSN's, so the DSN's connect_timeout is silently replaced: both wait 10 s (and the load's
    check_tables_exist 5 s), whatever the DSN says. A DSN that asks for more (connect_timeout=60 for a far server)
    is cut to 10 the same way.

    Should: the DSN's connect_timeout is honoured (the hard-coded value only a default where the DSN names none).
    Fix idea: pass connect_timeout only when conninfo_to_dict(dsn) has no connect_timeout (and $PGCONNECT_TIMEOUT
    is unset)."""
    from archive_pipeline.core.environment import UnreachableError, connect_source
    from archive_pipeline.defs.resources import PostgresResource

    with socket.socket() as silent:  # accepts (the kernel's backlog) and never answers the startup packet
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} dbname=x user=x connect_timeout=1"
        waited = {}
        started = time.monotonic()
        with pytest.raises(UnreachableError):
            connect_source({"ARCHIVE_PG_DSN": dsn})
        waited["command line"] = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(Exception), PostgresResource(dsn=dsn).connect():
            pass
        waited["PostgresResource"] = time.monotonic() - started
    # psycopg rounds a connect_timeout below 2 up to 2 s (as libpq does): 6 s leaves room on a busy machine
    assert all(seconds < 6 for seconds in waited.values()), waited


def test_the_loads_table_check_names_ARCHIVE_PG_DSN_for_a_dsn_given_by_another_setting(pg, s3, bucket, monkeypatch,
                                                                                       caplog):
    """Scenario: a project builds the location with its own resources (``build_definitions(config, resources)``, as
    the README offers), its PostgresResource reading another variable and saying so (``dsn_setting=
    "WAREHOUSE_DSN"``, the field the resource has for exactly this); ARCHIVE_PG_DSN is not set at all. The database
    named in that DSN does not exist.

    Now: definitions.check_tables_exist connects with the given DSN and, on failure, logs
    sensors.describe_connect_failure(exc, dsn), which calls errors.describe_connect_error with its default setting
    "ARCHIVE_PG_DSN": the warning's remedy says "check the database name in ARCHIVE_PG_DSN", a variable this
    deployment does not have, while every run's error (PostgresResource.connect, which passes dsn_setting) names
    WAREHOUSE_DSN. (It also calls a missing database "could not reach the source database".)

    Should: the warning names the setting the DSN came from (the resource's dsn_setting). Fix idea: pass the
    postgres resource's dsn_setting (or "the postgres resource's dsn") from build_definitions to
    check_tables_exist and on to describe_connect_error."""
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.resources import ArchiveS3Resource, ArchiveStoreResource, PostgresResource

    monkeypatch.delenv("ARCHIVE_PG_DSN", raising=False)
    params = psycopg.conninfo.conninfo_to_dict(pg.dsn)
    missing = psycopg.conninfo.make_conninfo(**{**params, "dbname": "no_such_database_ax"})
    store = ArchiveStoreResource(s3=ArchiveS3Resource(endpoint_url=s3.endpoint_url, aws_access_key_id="testing",
                                                      aws_secret_access_key="testing"), bucket=bucket)
    resources = {"postgres": PostgresResource(dsn=missing, dsn_setting="WAREHOUSE_DSN"), "archive_store": store}
    with caplog.at_level(logging.WARNING, logger="archive_pipeline.definitions"):
        build_definitions(events_config("public", dt.date(2024, 3, 10)), resources)
    warnings = [r.getMessage() for r in caplog.records if r.name == "archive_pipeline.definitions"]
    assert warnings and "no_such_database_ax" in warnings[0], warnings
    assert "WAREHOUSE_DSN" in warnings[0] and "ARCHIVE_PG_DSN" not in warnings[0], warnings[0]


def test_an_ordinary_long_key_prefix_is_hidden_as_having_the_shape_of_a_secret_key(archive_env, monkeypatch):
    """Scenario: ARCHIVE_S3_PREFIX is an ordinary folder path of 40+ characters with one slip in it, a doubled
    slash from joining two variables: ``warehouse/archives/production/postgresql//v2``.

    Now: the load refuses it (rightly), but environment._quoted shows any value holding a run of 40 characters of
    ``[A-Za-z0-9/+=]`` as "(not shown: it has the shape of a secret key)": the message tells the user their folder
    path looks like a secret and withholds the one thing needed to find the '//' (also for the env-file quotes
    refusal, and for ARCHIVE_S3_BUCKET). Any path of lower-case words and slashes of that length is "secret-shaped".

    Should: the prefix quoted (it is no secret: it is in every key, listing and manifest), the secret shape kept for
    values that look like one. Fix idea: do not apply _SECRET_SHAPE to the prefix (redacting the known secret
    variables' values is enough), or count as secret-shaped only a run with no '/'-separated word of lower-case
    letters (an AWS secret is 40 characters of mixed case, digits, '+' and '/')."""
    from archive_pipeline.definitions import build_definitions

    prefix = "warehouse/archives/production/postgresql//v2"
    monkeypatch.setenv("ARCHIVE_S3_PREFIX", prefix)
    with pytest.raises(ConfigError) as refused:
        build_definitions(events_config("public", dt.date(2024, 3, 10)), check_source=False)
    said = str(refused.value)
    assert "ARCHIVE_S3_PREFIX" in said and "'//'" in said, said
    assert "shape of a secret" not in said and prefix in said, said


def test_an_aws_profile_set_but_empty_loads_and_then_fails_every_run(conn, schema, archive_env, monkeypatch):
    """Scenario: the deployment's env file or compose file has ``AWS_PROFILE=`` (set, empty: ``AWS_PROFILE:
    ${AWS_PROFILE}`` with the host's unset), beside the archive's own keys in ARCHIVE_S3_ACCESS_KEY_ID / _SECRET_.

    Now: environment._check_botocore_settings checks AWS_PROFILE only ``if profile:``, so the load passes; botocore
    reads the empty variable as the profile named '' and every client built (ArchiveS3Resource.get_client) raises
    ProfileNotFound ("The config profile () could not be found"), even with explicit keys: every run fails with
    store_for's "the S3 client cannot be built ... fix the archive_store resource's settings (endpoint_url with its
    scheme ...; region; bucket)", naming neither AWS_PROFILE nor its emptiness. The README promises a profile not
    defined is refused at load.

    Should: refused at load naming AWS_PROFILE as set but empty (unset it), or the empty variable treated as
    unset so the runs work. Fix idea: in _check_botocore_settings test ``"AWS_PROFILE" in env`` and refuse a blank
    value, as the command line's store_from_env does through ProfileNotFound."""
    from dagster import instance_for_test

    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], 3, schema=schema)
    monkeypatch.setenv("ARCHIVE_S3_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("ARCHIVE_S3_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_PROFILE", "")
    try:
        defs = build_definitions(events_config(schema, day), check_source=False)
    except ConfigError as exc:  # refused at load: what the README promises, if it names the variable
        assert "AWS_PROFILE" in str(exc), str(exc)
        return
    job = defs.resolve_job_def(job_name(schema))
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        failures = [str(e.event_specific_data.error.message) for e in result.all_events if e.is_step_failure]
    assert result.success, failures
