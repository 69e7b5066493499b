"""Hunt 9 (oa): hostile review of the previous session's change (f51a041..HEAD)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config
from archive_pipeline_tests.helpers import run_check_evaluations

DAY = dt.date(2024, 3, 10)


def test_a_strict_tables_inexact_archive_is_not_summarised_as_fixed_by_overwrite_alone(pg, s3, bucket, conn, schema,
                                                                                        store, temp_dir, tmp_path):
    """A JSONL day whose json value holds a line break was archived before the table was made ``strict: true``
    (its manifest records the column as not exact). The user runs `archive --day 2024-03-10`: the day is refused
    ("archive the day again as <another format> with overwrite, or set strict: false"), and the command's summary
    says "the day(s) changed since they were archived are archived again only with overwrite: archive --table ...
    --day 2024-03-10 --overwrite". The user runs exactly that command: it fails again (the strict table still
    cannot hold the value exactly in jsonl), and nothing changed in the source either. Cause: cli._archive_day
    flags needs_overwrite on any non-retryable message containing "with overwrite" (here "... as csv or parquet with
    overwrite"), and cli.archive's summary then names plain --overwrite as the fix. Should: the command the
    summary names for the day works (or the summary does not offer --overwrite alone for it)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, v json)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, %s)", (DAY, '{"a":\n1}'))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    first = cli(env, "archive", "--day", str(DAY))
    assert first.returncode == 0, (first.stdout, first.stderr)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**table, "strict": True}]))
    done = cli(env, "archive", "--day", str(DAY))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "strict" in done.stdout, done.stdout  # (the premise: the day's own message)
    named = f"archive --table {schema}.ev --day {DAY} --overwrite"
    if named in done.stderr:
        again = cli(env, "archive", "--table", f"{schema}.ev", "--day", str(DAY), "--overwrite")
        assert again.returncode == 0, ("the summary named " + named, again.stdout[-600:])


def test_an_upload_the_store_says_arrived_with_another_crc32_is_called_corrupted_not_unsupported(
        conn, schema, s3, bucket, temp_dir, monkeypatch):
    """A store checks boto3's default CRC32 header and, for a body damaged on the way, answers PutObject ``400
    BadDigest`` "The X-Amz-Checksum-Crc32 you specified did not match what we received." (VK Cloud's, MinIO-based
    stores' words). The run retries it, and where every attempt is damaged fails the day. What happens: the error
    says "the object store does not implement a request or header the archiver sent" with the remedy "on an
    S3-compatible store, set AWS_REQUEST_CHECKSUM_CALCULATION=when_required ..." -- turning off the very check that
    caught the corruption. Cause: errors._classify_boto now tests the message for "x-amz-checksum" (meant for B2's
    400 refusing the header) before the code, so BadDigest never reaches _s3_code's corrupt codes. Should: the
    cause is the corruption on the way (BadDigest / checksum mismatch), with its remedy (the network path)."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.store import S3Store
    from archive_pipeline_tests import fault_proxy
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    said = "The X-Amz-Checksum-Crc32 you specified did not match what we received."
    real = fault_proxy.error_xml
    monkeypatch.setattr(fault_proxy, "error_xml", lambda code, message=None: real(code, said))
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at date)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s)", (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.zst$", action="error", status=400, code="BadDigest", times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    error = caught.value
    assert proxy.requests(method="PUT", path=r"\.zst$"), "the premise: the object's PUT was answered BadDigest"
    assert "does not implement" not in str(error) and "AWS_REQUEST_CHECKSUM_CALCULATION" not in (error.remedy or ""), \
        (str(error), error.remedy)
    assert "corrupt" in str(error).lower() or "checksum" in (error.cause or "").lower(), (str(error), error.cause)


def test_an_old_archive_whose_composite_lost_only_its_last_field_before_it_was_archived_still_restores(
        pg, s3, conn, schema, bucket, store, temp_dir):
    """A column is of a composite type ``trip (a int, b int, c int)`` whose last field was dropped long ago
    (``ALTER TYPE trip DROP ATTRIBUTE c``: now ``(a, b)``, nothing added since). A day is archived by the previous
    version (its manifest records no ``columns[].shape``), and today the user restores it into a new table. What
    happens: refused, "its column(s) 'p' hold a composite that has lost a field since it was created, so its fields
    may have moved ... Nothing was restored", with the remedy of creating the type afresh -- though no field can
    have moved: a dropped LAST field moves nothing (a day archived before the drop holds one field too many, and
    its load fails loudly). Cause: restore._refuse_unrecorded_shapes / source._ALTERED_QUERY refuse any composite
    with a dropped attribute, not only one with a live field after a dropped one (what its docstring says moves).
    Should: the day restores, as it did before the refusal was added, with a=1, b=101."""
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline_tests.test_hunt8_nd import run_old

    conn.execute(f"CREATE TYPE {schema}.trip AS (a int, b int, c int)")
    conn.execute(f"ALTER TYPE {schema}.trip DROP ATTRIBUTE c")
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, p {schema}.trip)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, ROW(g, 100 + g)::{schema}.trip "
                 "FROM generate_series(1, 3) g", (DAY,))
    args = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv"}
    done = run_old(pg, s3, bucket, args, [("archive", DAY)], temp_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    restored = restore_day(conn, store, TableSpec(**args), DAY, into="new", target=f"{schema}.back",
                           temp_dir=temp_dir)
    assert restored.rows == 3
    assert conn.execute(f"SELECT id, (p).a, (p).b FROM {schema}.back ORDER BY id").fetchall() == \
        [(g, g, 100 + g) for g in (1, 2, 3)]


def test_a_backfill_of_days_archived_in_another_format_does_not_advise_re_executing_it(conn, schema, archive_env):
    """``ev``'s key_template has no ``{ext}``; 2024-03-10 and 11 are archived as csv by one backfill run. The person
    then configures the table as jsonl and backfills the two days again. Each day is refused: "... holds this day
    archived as csv/zstd, and the table is now configured as jsonl/zstd; set overwrite to replace it" -- only
    overwrite ends it. The run's failure then ends "Then: re-execute this run (Runs → this run → Re-execute → From
    failure), or launch a backfill of the failed days ...; days already archived are not archived again", which
    redoes the run without overwrite and fails the same way for ever. The command line names ``--overwrite`` for
    such a day (cli._archive_day's needs_overwrite); the Dagster advice left this refusal out. Cause:
    defs/assets.failure sets NEEDS_OVERWRITE only for LateRowsError, a removed day's DayRemovedError and TYPE_GONE,
    not for ForeignArchiveError's "set overwrite to replace it". Should: not advise re-executing (or a backfill of)
    days whose only remedy is overwrite; name overwrite instead."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline_tests.test_hunt4_tt import _failures, _range

    days = [DAY, DAY + dt.timedelta(days=1)]
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(sql.Identifier(schema, "ev")))
    for day in days:
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s FROM generate_series(1, 5) g").format(
            sql.Identifier(schema, "ev")), (day,))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(),
             "key_template": "{prefix}/{schema}.{table}/{date}"}

    def job(fmt: str):
        config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                               "tables": [{**table, "format": fmt}]})
        return build_definitions(config).resolve_job_def(f"Archive_{schema}_ev")

    tags = _range(days[0], days[-1])
    with instance_for_test() as instance:
        assert job("csv").execute_in_process(instance=instance, tags=tags).success
        result = job("jsonl").execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        failures = _failures(instance, result.run_id)
    message = failures[-1]
    assert "set overwrite to replace it" in message, failures  # (the premise)
    assert "Re-execute" not in message and "launch a backfill of the failed days" not in message, message


def test_the_removal_asset_records_no_failed_proof_for_a_day_whose_recorded_type_is_gone(conn, schema, store,
                                                                                         archive_env):
    """``ev (id pos, at date)`` with ``pos`` a domain over int, retention ``delete``; 2024-03-10 is archived. A
    migration renames the domain (``ALTER DOMAIN pos RENAME TO pos2``): no row changed. The removal job for the day
    proves its archive first: the proof cannot load the archived rows (their recorded type ``pos`` is gone), which
    verify now raises as "no verdict on the archive" (verify.TYPE_GONE, a plain ArchiveError). What happens: the
    removal asset takes that error for a failed proof and records ``archive_proven`` FAILED for the day ("its
    archive is not proven"), red in the UI like a damaged archive, though nothing is known to be wrong with it.
    Cause: defs/retention_assets.py catches ArchiveError and turns any non-retryable one not of its listed kinds
    into ``problems`` (a verdict). Should: fail the step with the cause and remedy (no verdict), recording no
    failed proof, as it does for the other errors that prove nothing either way."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions

    conn.execute(sql.SQL("CREATE DOMAIN {} AS int CHECK (VALUE > 0)").format(sql.Identifier(schema, "pos")))
    conn.execute(sql.SQL("CREATE TABLE {} (id {}, at date)").format(sql.Identifier(schema, "ev"),
                                                                   sql.Identifier(schema, "pos")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s FROM generate_series(1, 5) g").format(
        sql.Identifier(schema, "ev")), (DAY,))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(),
             "retention": {"keep_days": 30, "action": "delete"}}
    archive_partition(conn, TableSpec(**table), DAY, store)
    conn.execute(sql.SQL("ALTER DOMAIN {} RENAME TO pos2").format(sql.Identifier(schema, "pos")))
    defs = build_definitions(parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, "tables": [table]}))
    with instance_for_test() as instance:
        run = defs.resolve_job_def(f"Remove_{schema}_ev").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        run_checks = run_check_evaluations(instance, run.run_id)
    assert not run.success
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ev"))).fetchone()[0] == 5
    failed_proofs = [e.description for e in run_checks if not e.passed]
    assert failed_proofs == [], failed_proofs
