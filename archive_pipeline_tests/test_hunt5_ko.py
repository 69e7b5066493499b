"""Hunt 5 (ko): an error's classification carried through Dagster: what the step failure of the archive asset,
the removal asset and the on-demand checks tells a person (retried or not, cause, remedy, metadata)."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core.manifest import MANIFEST_VERSION
from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(3)]


def _config(schema: str, **settings):
    return parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": FIRST.isoformat(), **settings}]})


def _failure(result):
    """The step failure's description a person reads, and the number of retries Dagster made."""
    kinds = [e.event_type_value for e in result.all_events]
    [failure] = [e.step_failure_data for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    return failure.user_failure_data.description, kinds.count("STEP_UP_FOR_RETRY")


def _reader_without_select(conn, pg, schema: str) -> tuple[str, str]:
    """A login role that may use the schema but not read its tables (no GRANT SELECT): its name and DSN."""
    role = f"{schema}_nosel"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    return role, pg.dsn_for(role)


def _drop_role(conn, role: str) -> None:
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_an_archive_refused_select_tells_what_to_do_about_the_privilege(conn, schema, pg, archive_env, monkeypatch):
    """A DBA gives the code location a role that may use the schema but was never granted SELECT on the table
    (or had it revoked), and the day's partition is launched. The step fails at once, not retried (right), with
    "role 'x' may not SELECT from 's.events'; GRANT SELECT ...", and then "What to do: Check table 's.events' in
    <file>: its name, day_column (created_at) and partitioning mode (column) must match the database": advice
    about the configuration, which is right, and nothing about the privilege. The catalog's refusal
    (``source.describe_table``: "may not SELECT") is a SourceError with cause "permission denied" but no
    remedy, so Dagster's failure falls back to ``assets.remedy``'s generic SourceError advice. Expected: the
    failure's "What to do" names the grant (GRANT SELECT ON the table TO the role), as a permission refused by
    the server says (errors' "permission denied" remedy), not a check of name, day_column and mode."""
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    role, dsn = _reader_without_select(conn, pg, schema)
    try:
        monkeypatch.setenv("ARCHIVE_PG_DSN", dsn)
        with instance_for_test() as instance:
            result = build_definitions(_config(schema), check_source=False).resolve_job_def(
                f"Archive_{schema}_events").execute_in_process(instance=instance, partition_key=FIRST.isoformat(),
                                                               raise_on_error=False)
        text, retries = _failure(result)
    finally:
        _drop_role(conn, role)
    assert not result.success and retries == 0
    assert f"{schema}.events {FIRST}" in text, text
    advice = text.split("What to do:", 1)[-1]
    assert "GRANT SELECT" in advice, text
    assert "day_column" not in advice, text


def test_source_unchanged_refused_select_tells_what_to_do_about_the_privilege(conn, schema, pg, archive_env,
                                                                              monkeypatch):
    """An archived day; then the code location's role loses SELECT on the table (a DBA's revoke, or a new role
    given without the grant) and the person runs verify_archives (source_unchanged). The check cannot compare and
    fails, not retried (right), naming table and day and "role 'x' may not SELECT from 's.events'; GRANT
    SELECT ...", and then "What to do: check that the store (ARCHIVE_S3_ENDPOINT_URL, ARCHIVE_S3_BUCKET,
    credentials) and the database are reachable from this code location": a network check for a privilege. The
    catalog's refusal is a SourceError without a remedy (``source.describe_table``), and ``checks._unreachable``
    then puts the "unreachable" advice in. Expected: the advice names the missing grant (GRANT SELECT ON the
    table TO the role), never reachability."""
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    config = _config(schema)
    with instance_for_test() as instance:
        assert build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=FIRST.isoformat()).success
        role, dsn = _reader_without_select(conn, pg, schema)
        try:
            monkeypatch.setenv("ARCHIVE_PG_DSN", dsn)
            result = build_definitions(config, check_source=False).resolve_job_def("verify_archives") \
                .execute_in_process(instance=instance, raise_on_error=False)
            text, retries = _failure(result)
        finally:
            _drop_role(conn, role)
    assert not result.success and retries == 0
    assert f"{schema}.events {FIRST}" in text, text
    advice = text.split("What to do:", 1)[-1]
    assert "GRANT SELECT" in advice, text
    assert "reachable" not in advice, text


def _checks(instance, run_id: str) -> list[tuple[str, str, bool]]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    return [(d.check_name, d.partition, d.passed) for d in
            (r.event_log_entry.dagster_event.event_specific_data for r in records)]


def _leave_a_pending_mark(s3_client, bucket: str, manifest_key: str) -> None:
    """What a removal killed between writing its pending mark and its COMMIT leaves (an older version's mark,
    without a transaction id): the source still holds the day, so the next removal takes the mark back."""
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline_tests.helpers import download

    manifest = decode_manifest(download(s3_client, bucket, manifest_key))
    manifest = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["removed"] = {"at": "2024-05-01T00:00:00+00:00", "action": "delete", "state": "pending", "by": "a test"}
    s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=encode_manifest(manifest))


@pytest.mark.parametrize(("code", "status"), [("AccessDenied", 403), ("KMS.DisabledException", 400)])
def test_a_removal_whose_pending_mark_cannot_be_taken_back_is_no_failed_proof(code, status, conn, schema, s3,
                                                                              s3_client, archive_env, monkeypatch):
    """A removal of 2024-03-10 was killed after it marked the day's manifest 'pending' and before its COMMIT
    (the README: "a removal left marked 'pending' is settled by the next run of the day"). The next removal run
    (Remove_<table>, the schedule's) finds the mark, sees the source still holds the day, and puts the manifest
    back without it; the store refuses that PUT for good: the role lost s3:PutObject (AccessDenied), or the
    bucket's KMS key was disabled. The store's error says so (not retried, grant s3:PutObject / enable the
    key). But the removal asset records the day's blocking archive_proven check as FAILED ("NOT proven", red,
    as for an archive whose rows are not the source's), and fails "<table> <day> stays in the source: its
    archive is not proven: ... If the source's rows are the right ones (rows changed or arrived late), archive
    the day again, then remove it" with the overwrite run config: nothing was proven or compared, the archive is
    intact, and archiving it again cannot help. ``retention_assets._removing`` turns every non-retryable
    ArchiveError that is not a DownloadError, LocalFileError, RemovalNotRecorded, RemovalRefused or SourceError
    into proof problems, and the store's refused write is an UploadError. Expected: the run fails, not retried,
    naming table, day and the store's cause and remedy, and no failed archive_proven is recorded for the day
    (as for a refused download)."""
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    config = _config(schema, retention={"keep_days": 30, "action": "delete"})
    with instance_for_test() as instance:
        archived = build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=FIRST.isoformat())
        [event] = archived.get_asset_materialization_events()
        _leave_a_pending_mark(s3_client, archive_env, event.materialization.metadata["manifest_key"].value)
        with FaultProxy(s3.endpoint_url) as proxy:
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=status, code=code,
                            times=None))
            result = build_definitions(config).resolve_job_def(f"Remove_{schema}_events").execute_in_process(
                instance=instance, partition_key=FIRST.isoformat(), raise_on_error=False)
        checks = _checks(instance, result.run_id)
    text, retries = _failure(result)
    assert not result.success and retries == 0
    assert f"{schema}.events {FIRST}" in text and code in text, text
    assert "not proven" not in text and "archive the day again" not in text, text
    assert ("archive_proven", FIRST.isoformat(), False) not in checks, checks


def test_archive_intact_over_days_retries_the_day_it_says_is_retried(conn, schema, s3, archive_env, monkeypatch):
    """Two archived days; the person executes archive_intact for both (the check alone over a range of
    partitions, as the UI's Execute of the check or a pure asset backfill's run does). The store answers the
    first day's manifest GET with ExpiredToken (temporary credentials that expired: transient, a retry gets fresh
    ones) and refuses the second's (403 AccessDenied: for good). The step fails naming both days; the first is
    described as "...; transient, retried ... What to do: retried automatically", but Dagster does not retry the
    step at all (no STEP_UP_FOR_RETRY): the range check's Failure is ``allow_retries=all(...)`` of its days
    (``checks._build_intact_check``), so one day that no retry can fix keeps the day a retry would fix from being
    retried, while its text says it is. The archive asset's ranged runs do the opposite (``batch_failure``:
    retried when any day may pass). Expected: the step is retried by the tables' retry settings (the transient
    day checked again), or at least the failure does not tell the person that day is retried automatically."""
    from archive_pipeline.defs.assets import asset_key
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from dagster import AssetCheckKey

    days = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
            "dagster/asset_partition_range_end": DAYS[1].isoformat()}
    create_sample_events(conn, DAYS[:2], rows_per_day=5, schema=schema)
    config = _config(schema)
    with instance_for_test() as instance:
        assert build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, tags=days).success
        with FaultProxy(s3.endpoint_url) as proxy:
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            proxy.add(Fault(method="GET", path=rf"{DAYS[0]}\.jsonl\.zst\.manifest\.json$", action="error", status=400,
                            code="ExpiredToken", times=None))
            proxy.add(Fault(method="GET", path=rf"{DAYS[1]}\.jsonl\.zst\.manifest\.json$", action="error", status=403,
                            code="AccessDenied", times=None))
            defs = build_definitions(config)
            check_only = defs.get_implicit_global_asset_job_def().get_subset(
                asset_check_selection={AssetCheckKey(asset_key(config.tables[0]), "archive_intact")},
                asset_selection=set())
            result = check_only.execute_in_process(instance=instance, tags=days, raise_on_error=False,
                                                   resources=defs.resources)
    text, retries = _failure(result)
    assert not result.success
    said_retried = "transient, retried" in text or "retried automatically" in text
    assert retries > 0 or not said_retried, (retries, text)


def test_a_removal_refused_by_the_primarys_login_names_the_primarys_variable(conn, schema, pg, archive_env,
                                                                             monkeypatch):
    """The code location archives from a replica (ARCHIVE_PG_DSN) and removes on the primary
    (ARCHIVE_PG_PRIMARY_DSN, as the README's configuration table says), each with its own role. The primary role's
    password expires (ALTER ROLE ... VALID UNTIL in the past; PostgreSQL then says "password authentication
    failed", as for a wrong password). Every removal (Remove_<table>) fails at once, not retried (right), with
    the primary's host and user, and "to fix: check the password in ARCHIVE_PG_DSN ...": the variable whose
    password is right; the one to fix is ARCHIVE_PG_PRIMARY_DSN. The connect errors' remedies
    (``errors._WRONG_PASSWORD``, ``_NO_DATABASE``, ``_CONNECT_FAILED``, ... through ``describe_connect_error``)
    always name ARCHIVE_PG_DSN, whichever resource connected (``retention_assets._connect(primary_postgres)``).
    Expected: the failure tells the person to check ARCHIVE_PG_PRIMARY_DSN (the primary's connection), not
    ARCHIVE_PG_DSN."""
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    config = _config(schema, retention={"keep_days": 30, "action": "delete"})
    role = f"{schema}_primary"
    primary_dsn = pg.create_password_role(role, "right-pw-ko")
    try:
        conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL '2001-01-01'").format(sql.Identifier(role)))
        with instance_for_test() as instance:
            assert build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
                instance=instance, partition_key=FIRST.isoformat()).success
            monkeypatch.setenv("ARCHIVE_PG_PRIMARY_DSN", primary_dsn)
            result = build_definitions(config).resolve_job_def(f"Remove_{schema}_events").execute_in_process(
                instance=instance, partition_key=FIRST.isoformat(), raise_on_error=False)
        text, retries = _failure(result)
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert not result.success and retries == 0
    assert f"{schema}.events {FIRST}" in text and "right-pw-ko" not in text, text
    assert "ARCHIVE_PG_PRIMARY_DSN" in text, text


def test_a_naming_mode_day_table_refused_select_tells_what_to_do_about_the_privilege(conn, schema, pg,
                                                                                    archive_env, monkeypatch):
    """A naming-mode table (one table per day, ``ev_%Y%m%d``): the code location's role was granted SELECT on
    the day tables that existed, and a new day's table was created afterwards by another role without the grant
    (no ALTER DEFAULT PRIVILEGES: the usual way this happens). The day's archive fails at once, not retried
    (right), "no table for 2024-03-11 of s.ev: role 'x' may not SELECT from 's.ev_20240311'; GRANT SELECT ...",
    and "What to do: Check table 's.ev' in <file>: its name, day_column (at) and partitioning mode (naming) must
    match the database": nothing about the grant. ``discovery.source_table`` (naming mode) re-raises the
    day table's SourceError as a new one without its remedy (whatever the inner one said), so Dagster's failure
    falls back to the generic advice; its words, "no table for <day>", also say the day's table is missing while
    it is there. Expected: the failure's "What to do" names the grant on the day's table (GRANT SELECT ON
    s.ev_20240311 TO the role), not a check of name, day_column and mode, and nothing says the table is missing."""
    for day in DAYS[:2]:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(
            sql.Identifier(schema, f"ev_{day:%Y%m%d}")))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(sql.Identifier(schema, f"ev_{day:%Y%m%d}")),
                     (f"{day} 12:00+00",))
    role, dsn = _reader_without_select(conn, pg, schema)
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(schema, f"ev_{DAYS[0]:%Y%m%d}"),
                                                            sql.Identifier(role)))
    config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": FIRST.isoformat(),
         "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}}]})
    try:
        monkeypatch.setenv("ARCHIVE_PG_DSN", dsn)
        with instance_for_test() as instance:
            job = build_definitions(config, check_source=False).resolve_job_def(f"Archive_{schema}_ev")
            assert job.execute_in_process(instance=instance, partition_key=DAYS[0].isoformat()).success
            result = job.execute_in_process(instance=instance, partition_key=DAYS[1].isoformat(),
                                            raise_on_error=False)
        text, retries = _failure(result)
    finally:
        _drop_role(conn, role)
    assert not result.success and retries == 0
    assert f"{schema}.ev" in text and DAYS[1].isoformat() in text, text
    advice = text.split("What to do:", 1)[-1]
    assert "GRANT SELECT" in advice, text
    assert "day_column" not in advice and "no table for" not in text, text


def test_a_ranged_run_refused_its_login_does_not_log_in_again_for_every_day(conn, schema, pg, archive_env,
                                                                            monkeypatch):
    """A backfill runs 3 days per run (backfill.max_days_per_run; 50 by default). The role's password has
    expired (VALID UNTIL passed; PostgreSQL says "password authentication failed"). The run fails, not retried
    (right), but it logs in again for each day of its range: 3 failed logins here, 50 for a default run, each
    repeating the same cause and remedy in the failure. A login the server refused for good is no less final
    than one that timed out, which fails the run's later days at once (README, Backfills: "A database that
    does not answer a connect ... fails the run's later days at once with the same cause"); a failed login
    costs more than a refused TCP connect: servers delay each (auth_delay), count them (an LDAP or RADIUS
    backend locks the account after a few), and alert on them. ``assets._Source.get`` keeps only a connect
    that timed out (``unreachable``) and connects again for every day after any other connect failure.
    Expected: one failed login per run (the later days fail at once with the first one's cause)."""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    role = f"{schema}_expired"
    dsn = pg.create_password_role(role, "right-pw-ko")
    log = pg.root / "server.log"
    try:
        conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL '2001-01-01'").format(sql.Identifier(role)))
        monkeypatch.setenv("ARCHIVE_PG_DSN", dsn)
        before = log.stat().st_size
        with instance_for_test() as instance:
            result = build_definitions(_config(schema), check_source=False).resolve_job_def(
                f"Archive_{schema}_events").execute_in_process(
                    instance=instance, raise_on_error=False,
                    tags={"dagster/asset_partition_range_start": DAYS[0].isoformat(),
                          "dagster/asset_partition_range_end": DAYS[-1].isoformat()})
        text, retries = _failure(result)
        with open(log, "rb") as f:
            f.seek(before)
            refused = f.read().decode(errors="replace").count(f'password authentication failed for user "{role}"')
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert not result.success and retries == 0
    assert all(d.isoformat() in text for d in DAYS) and "right-pw-ko" not in text, text
    assert refused == 1, f"{refused} failed logins for one run of {len(DAYS)} days"


def test_a_removal_meeting_a_newer_versions_manifest_is_no_failed_proof(conn, schema, s3_client, archive_env):
    """The bucket is shared with a newer archive_pipeline (the command line upgraded first, or a second code
    location), which archived 2024-03-10 again with its manifest_version above this version's. The README: such a manifest "is not
    damaged: every command and asset names the version that wrote it and says to upgrade, and archiving leaves it as
    it is". The removal of the day (Remove_<table>) fails, not retried (right), but records the day's blocking
    archive_proven check as FAILED ("NOT proven", red, as for rows that are not the source's), and its failure
    says, after the manifest's own "to fix: upgrade archive_pipeline ...", "If the source's rows are the right
    ones (rows changed or arrived late), archive the day again, then remove it. To archive 2024-03-10 again ...
    overwrite: true": the advice the README says this version must not follow (archiving leaves the newer
    manifest as it is). ``retention_assets._removing`` turns every ValueError of ``load_manifest`` (a
    NewerManifestError too) into proof problems. Expected: the run fails saying to upgrade, without a failed
    archive_proven verdict and without the advice to archive the day again."""
    import json

    from archive_pipeline_tests.helpers import download

    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    config = _config(schema, retention={"keep_days": 30, "action": "delete"})
    with instance_for_test() as instance:
        archived = build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=FIRST.isoformat())
        [event] = archived.get_asset_materialization_events()
        manifest_key = event.materialization.metadata["manifest_key"].value
        manifest = json.loads(download(s3_client, archive_env, manifest_key))
        manifest.update(manifest_version=MANIFEST_VERSION + 1, archiver={**manifest.get("archiver", {}), "version": "9.0.0"})
        s3_client.put_object(Bucket=archive_env, Key=manifest_key, Body=json.dumps(manifest).encode())
        result = build_definitions(config).resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            instance=instance, partition_key=FIRST.isoformat(), raise_on_error=False)
        checks = _checks(instance, result.run_id)
    text, retries = _failure(result)
    assert not result.success and retries == 0
    assert f"{schema}.events {FIRST}" in text and "upgrade" in text, text
    assert "archive the day again" not in text and "overwrite: true" not in text, text
    assert ("archive_proven", FIRST.isoformat(), False) not in checks, checks


def test_verify_archives_does_not_call_a_newer_versions_archive_not_intact(conn, schema, s3_client, archive_env):
    """The bucket is shared with a newer archive_pipeline (the command line upgraded first), which archived
    2024-03-10 again with its manifest_version above this version's. The person runs verify_archives on the code location. The README:
    such a manifest "is not damaged: every command and asset names the version that wrote it and says to upgrade"
    (the core's removal, restore, plan and archive were fixed so, test_readleft). latest_archive_intact records
    the day's archive_intact as FAILED, "2024-03-10: NOT intact: manifest ... unreadable: it was written by a
    newer archive_pipeline ...": red, the verdict of a damaged archive (what a person restores from a backup),
    for an archive nothing is wrong with; this version only cannot read it. ``core.verify._manifest_or_problem``
    (under ``verify_archive``) turns the NewerManifestError into a problem and ``checks.verify_result`` makes it
    a verdict. Expected: no failed archive_intact verdict for the day; the check fails to run (as when the store
    cannot be read), saying to upgrade."""
    import json

    from archive_pipeline_tests.helpers import download

    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    config = _config(schema)
    with instance_for_test() as instance:
        archived = build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=FIRST.isoformat())
        [event] = archived.get_asset_materialization_events()
        manifest_key = event.materialization.metadata["manifest_key"].value
        manifest = json.loads(download(s3_client, archive_env, manifest_key))
        manifest.update(manifest_version=MANIFEST_VERSION + 1, archiver={**manifest.get("archiver", {}), "version": "9.0.0"})
        s3_client.put_object(Bucket=archive_env, Key=manifest_key, Body=json.dumps(manifest).encode())
        result = build_definitions(config).resolve_job_def("verify_archives").execute_in_process(
            instance=instance, raise_on_error=False)
        checks = _checks(instance, result.run_id)
    assert ("archive_intact", FIRST.isoformat(), False) not in checks, checks
