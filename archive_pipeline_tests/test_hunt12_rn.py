"""Hunt 12 (rn): a review of this session's fixes: their sibling cases and the edges of their new checks."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

DAY = dt.date(2024, 3, 10)


def _removal_run(config, spec, day):
    """Run the day's removal job (Dagster); the run's failure description and its archive_proven verdicts."""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.retention_assets import PROVEN_CHECK, removal_job_name

    defs = build_definitions(config)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        events = [ev.dagster_event for ev in instance.all_logs(result.run_id) if ev.dagster_event is not None]
        proofs = [e.event_specific_data for e in events if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                  and e.event_specific_data.check_name == PROVEN_CHECK]
        failures = [e.event_specific_data.error.message for e in events
                    if e.event_type == DagsterEventType.STEP_FAILURE]
    return result, proofs, "\n".join(failures)


def _table(conn, schema: str, rows: int = 30):
    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '30 minutes', "
                         "md5(g::text) FROM generate_series(1, %s) g").format(t), (rows,))
    return t


def test_the_removal_job_of_a_day_someone_emptied_is_not_told_to_archive_it_again(conn, schema, archive_env, store):
    """Sibling of the hunt-12 re fixes (302f0cf: "a day whose rows someone else deleted or truncated since it was
    archived ... is refused saying the source lost them and the archive is their only copy, with a restore remedy
    (never 'archive again with overwrite')"), which changed lifecycle (the command line's prune) only.

    Scenario: day 2024-03-10 of a table with retention (delete) is archived (its 30 rows, proven); then someone
    else DELETEs the day's rows. The retention schedule's run of Remove_<table> for that day proves the archive
    first (retention_assets._removing, its own deep_verify).

    Now: the proof's difference (0 source rows against 30 archived) is reported as "its archive is not proven ...
    If the source's rows are the right ones (rows changed or arrived late), archive the day again, then remove it"
    (with the archive job's overwrite relaunch), and archive_proven is recorded FAILED: red on an archive that
    holds exactly the rows recorded, whose only copy the advice would replace by the emptied day.

    Should: as prune says it: the day stays, the source lost its rows (0 of 30), the archive is their only copy:
    restore it if the rows were not meant to go; never "archive the day again". (Fix idea: in _removing, a proof
    failing while the source holds no row of a day the manifest records rows for raises lifecycle._rows_lost's
    wording, and records no failed archive_proven.)"""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config

    t = _table(conn, schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.t", "day_column": "at", "start_date": "2024-03-01",
        "retention": {"keep_days": 1, "action": "delete"}}]})
    spec = config.tables[0]
    assert archive_partition(conn, spec, DAY, store).rows == 30
    conn.execute(sql.SQL("DELETE FROM {} WHERE at >= '2024-03-10 00:00+00' AND at < '2024-03-11 00:00+00'").format(t))
    result, proofs, failure = _removal_run(config, spec, DAY)
    assert not result.success
    assert "archive the day again" not in failure, failure
    assert "only copy" in failure and "restore" in failure, failure


def test_a_removal_of_an_emptied_day_whose_archive_is_damaged_does_not_call_the_archive_their_only_copy(
        conn, schema, store, s3_client, bucket):
    """Edge of 302f0cf (lifecycle._remove_day: "problems and manifest rows and not _has_rows -> _rows_lost"): the
    new branch reads ANY failed proof of a day the source holds no row of as the source's loss, without looking at
    what the proof found.

    Scenario: day 2024-03-10 (30 rows) is archived; later its data object is damaged in the bucket (here: replaced
    by other bytes of the same size, a bit rot or a bad restore of the bucket), and someone DELETEs the day's rows
    from the source. ``prune`` (remove_day) proves the day first.

    Now: RemovalRefused "the source holds 0 of the day's 30 archived rows now ...; the archive is their only copy",
    remedy "restore them from the archive into the table (restore --into original)". The proof's own finding (the
    object's MD5/SHA-256 do not match: the archive is damaged) is dropped from the message: the user is told the
    archive is a good copy and sent to restore from an object that cannot be restored.

    Should: the refusal says the archive is NOT proven (what the proof found) as well as the source's loss, and
    does not send the user to restore from it as a sound copy. (Fix idea: take the _rows_lost branch only when the
    problems are all the source's (as cli._source_side_only tells them); else keep the proof's problems in the
    message and say both copies are in doubt.)"""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config

    t = _table(conn, schema)
    config = parse_config({"tables": [{"name": f"{schema}.t", "day_column": "at", "start_date": "2024-03-01",
                                       "retention": {"keep_days": 1, "action": "delete"}}]})
    spec = config.tables[0]
    result = archive_partition(conn, spec, DAY, store)
    assert result.rows == 30
    size = s3_client.head_object(Bucket=bucket, Key=result.key)["ContentLength"]
    s3_client.put_object(Bucket=bucket, Key=result.key, Body=b"\0" * size)  # damaged in the bucket
    conn.execute(sql.SQL("DELETE FROM {} WHERE at >= '2024-03-10 00:00+00' AND at < '2024-03-11 00:00+00'").format(t))
    with pytest.raises(lifecycle.RemovalRefused) as caught:
        lifecycle.remove_day(conn, spec, DAY, store)
    message = f"{caught.value} {caught.value.remedy or ''}"
    assert "not proven" in message or "damaged" in message or "MD5" in message, message


def test_a_remedy_command_for_a_name_with_a_c1_control_reads_back_as_that_name_in_bash(pg, s3, bucket, conn, s3_client,
                                                                                      tmp_path):
    """Edge of 5dcdfe3 (cli._ansi_c_quoted: a name with a control character is quoted $'...' in the commands a
    message suggests). _ANY_CONTROL covers C1 controls (U+0080..U+009F, e.g. U+0085 NEXT LINE), and
    _ansi_c_quoted writes every character below U+0100 as ``\\xNN``.

    Scenario: a schema named ``ops<U+0085>legacy`` (PostgreSQL takes it quoted), table ``t``; its day is archived,
    then its data object is lost; ``verify`` prints a remedy whose command names the table.

    Now: the command says ``--table $'ops\\x85legacy.t'``. In bash (a UTF-8 locale), ``\\x85`` is the single BYTE
    0x85, not the character U+0085 (bytes C2 85): the pasted command names a table that does not exist (an
    invalid UTF-8 argument), so the remedy cannot be followed as printed.

    Should: the quoted argument reads back in bash as the exact configured name. (Fix idea: ``\\xNN`` only below
    0x80; ``\\u00NN`` for U+0080..U+00FF, as for the bidi controls.)"""
    import re
    import subprocess

    import yaml

    from archive_pipeline_tests.test_hunt12_ra import _cli, _env

    schema_name = "ops\u0085legacy"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
    table = sql.Identifier(schema_name, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00')").format(table))
    try:
        config = tmp_path / "tables.yaml"
        config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema_name}.t", "day_column": "at",
                                                      "start_date": DAY.isoformat(),
                                                      "key_template": "{prefix}/{table}/{date}.{ext}"}]}),
                          encoding="utf-8")  # (NEL escaped: raw, YAML reads it as a line break)
        env = _env(pg, s3, bucket, config)
        assert _cli(env, "archive", "--day", DAY.isoformat()).exit_code == 0
        listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="archive/")["Contents"]
        data = [o["Key"] for o in listed if not o["Key"].endswith(".manifest.json")]
        s3_client.delete_object(Bucket=bucket, Key=data[0])
        shown = _cli(env, "verify", "--day", DAY.isoformat())
        assert shown.exit_code != 0, shown.stdout
        quoted = re.findall(r"--table (\$'(?:[^'\\]|\\.)*')", shown.stdout)
        assert quoted, shown.stdout
        back = subprocess.run(["bash", "-c", f"printf %s {quoted[0]}"], capture_output=True,
                              env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}).stdout
        assert back == f"{schema_name}.t".encode(), (quoted[0], back)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema_name)))


def test_a_removal_terminated_while_its_materialization_is_stored_still_records_the_proof_it_passed(
        conn, schema, archive_env, monkeypatch):
    """Edge of a7e5ef4 (retention_assets._removing: a passed proof is "deferred", recorded only after the
    removal's materialization, to target it) together with abc8be2 (the removal logs its events itself, so a
    termination meanwhile is worded).

    Scenario: 2024-03-10 is archived; its removal run proves the archive (passed), deletes the day's rows
    (committed), then the person clicks Terminate just as Dagster stores the removal's source_removed
    materialization.

    Now: _recorded raises the interrupt from the materialization's log_event, and the deferred proof is never
    logged: the day shows removed (its materialization was stored) with NO archive_proven result at all, though
    its archive was proven before its rows were deleted. The archive step handles exactly this case (_log_day:
    "terminated while the day is recorded ... its check is recorded too, so it is not left half recorded"); the
    removal's own except-branch logs the deferred proof only around remove_day, not around its recording.

    Should: the day's archive_proven (passed) is recorded in that run. (Fix idea: in _removing, on an interrupt
    from recording the removal's materialization, log the deferred proof (suppressing errors) before re-raising,
    as _log_day does.)"""
    import os
    import signal

    from dagster import DagsterEventType, DagsterRunStatus, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.retention_assets import PROVEN_CHECK, removal_asset_key
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    raw = {"retry": {"max_retries": 0}, "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                                     "start_date": DAY.isoformat(),
                                                     "retention": {"keep_days": 30, "action": "delete"}}]}
    spec = parse_config(raw).tables[0]
    defs = build_definitions(parse_config(raw))
    day = DAY.isoformat()
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=day, instance=instance).success
        storage = instance.event_log_storage
        real = storage.store_event
        fired = []

        def store_event(event):  # the UI's Terminate, arriving while the removal's materialization is stored
            real(event)
            dagster_event = event.dagster_event
            if dagster_event is not None and dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION \
                    and not fired and dagster_event.job_name.startswith("Remove_"):
                fired.append(event)
                instance.report_run_canceling(instance.get_run_by_id(event.run_id))
                os.kill(os.getpid(), signal.SIGINT)

        monkeypatch.setattr(storage, "store_event", store_event)
        result = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            partition_key=day, instance=instance, raise_on_error=False)
        assert fired and instance.get_run_by_id(result.run_id).status == DagsterRunStatus.CANCELED
        assert instance.get_materialized_partitions(removal_asset_key(spec)) == {day}  # recorded removed
        proofs = [e.dagster_event.event_specific_data for e in instance.all_logs(result.run_id)
                  if e.dagster_event is not None
                  and e.dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                  and e.dagster_event.event_specific_data.check_name == PROVEN_CHECK]
    assert conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone()[0] == 0  # removed indeed
    assert [p.passed for p in proofs] == [True], "the removed day's passed proof was never recorded"


def test_a_put_found_ours_after_a_lost_answer_records_the_stores_etag_without_md5_etags(
        conn, schema, s3, bucket, s3_client, temp_dir):
    """Sibling of c7e5422 (store: a retried CompleteMultipartUpload found completed by an earlier try records the
    key's own ETag where ETags are not MD5s: S3Upload._head_etag), missed for a single PutObject.

    Scenario: a store whose ETags are not MD5s (SSE-KMS; ``verify_etags: false`` as the README says), simulated
    by the fault proxy rewriting the data object's ETag to ``"kms-0001"`` in every answer. A new small day (one
    PutObject with If-None-Match: *): the store stores it but its answer is lost (500 after forwarding);
    botocore's retry is refused 412 (the key holds the first try's object). S3Upload._put_single asks
    ``holds`` (size, bytes read back and hashed): ours, so the archive goes on, as it should.

    Now: _put_single then sets ``etag = md5_hex``: the manifest records the object's MD5 as its ETag, while the
    store's ETag is ``kms-0001``. Every later ``verify`` (HEAD against the manifest) reports "ETag: stored
    "kms-0001", manifest <md5> (object replaced?)" for an intact archive, for good (and the proof, restore and
    removal read the same object record). The same run without the lost answer records ``kms-0001`` and verifies
    clean (the control below).

    Should: the manifest records the store's ETag for the object (as the multipart path now does), so the day
    verifies clean. (Fix idea: in _put_single's 412 branch, without verify_etags, take the ETag from a HEAD of
    the key, as S3Upload._head_etag does.)"""
    from archive_pipeline.core import keys
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline.core.verify import verify_archive
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    t = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, note text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, DATE '2024-03-10' + g / 100, md5(g::text) "
                         "FROM generate_series(1, 199) g").format(t))  # 2024-03-10 and 2024-03-11
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")
    control, day = DAY + dt.timedelta(days=1), DAY
    kms = ("ETag", '"kms-0001"')
    with FaultProxy(s3.endpoint_url) as proxy:
        store = S3Store(proxy.client(max_attempts=3), bucket, part_size=MIN_PART_SIZE, verify_etags=False)
        for method in ("HEAD", "GET"):  # the store's own ETags, as SSE-KMS gives them
            proxy.add(Fault(method=method, path=r"\.csv$", action="set_header", header=kms, times=None))
        proxy.add(Fault(method="PUT", path=r"2024-03-11\.csv$", action="set_header", header=kms, times=None))
        archive_partition(conn, spec, control, store, temp_dir=temp_dir)  # no fault on the way: verifies clean
        assert verify_archive(store, keys.table_day_key(spec, spec.period(control), store.prefix), {}) == []
        proxy.add(Fault(method="PUT", path=r"2024-03-10\.csv$", action="error", forward=True, times=1))  # lost answer
        proxy.add(Fault(method="PUT", path=r"2024-03-10\.csv$", action="error", status=412,
                        code="PreconditionFailed", times=1))  # botocore's retry: the key holds the first try's
        result = archive_partition(conn, spec, day, store, temp_dir=temp_dir)
        assert [r.status for r in proxy.requests(method="PUT", path=r"2024-03-10\.csv$")] == [500, 412]
        problems = verify_archive(store, keys.table_day_key(spec, spec.period(day), store.prefix), {})
    assert problems == [], (result.etag, problems)


def test_verify_deep_of_a_day_whose_source_lost_a_row_holding_a_semicolon_does_not_call_the_archive_damaged(
        pg, s3, bucket, conn, schema, tmp_path):
    """Edge of 302f0cf (cli._source_side_only: verify --deep whose problems are all the source's says the archive
    checks out). It splits the problems on "; " and takes a part for an archive-side problem unless it starts
    with one of the source's prefixes or not with a lower-case letter.

    Scenario: a table whose text column holds ``"kept; deleted later"`` (any text with "; " and a lower-case
    word: hostile data, or just prose); day 2024-03-10 is archived; then someone else DELETEs one of its rows.
    ``verify --deep`` proves the archive (its rows are the ones recorded) and finds the source lacking a row:
    "the source's rows for 2024-03-10 are not the archive's ...; first difference: the archive has a row the
    source lacks: (2,...,"kept; deleted later")".

    Now: the row's own "; deleted later" is read as a further, archive-side problem, so the remedy is the old
    one: "archive it again ... (the damaged one is kept ...); if the source no longer holds it, restore the object
    or its manifest from a backup of the bucket": the intact archive is called damaged because of a value in a
    row, exactly what 302f0cf meant to stop.

    Should: the same remedy as for any other row: the archive checks out, the source differs, restore from the
    archive (--into original) if rows were lost. (Fix idea: pass the problems as a list (deep_verify returns
    one) instead of re-splitting the joined text, or only split before the known prefixes.)"""
    import json

    import yaml

    from archive_pipeline_tests.test_cli import cli
    from archive_pipeline_tests.test_hunt10_px import _env

    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00', 'plain'), "
                         "(2, '2024-03-10 23:30+00', 'kept; deleted later')").format(t))
    table = dict(name=f"{schema}.t", day_column="at", start_date="2024-03-10", format="jsonl",
                 partitioning={"mode": "column"})
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = _env(pg, s3, bucket, config)
    archived = cli(env, "archive", "--day", "2024-03-10")
    assert archived.returncode == 0, archived.stdout + archived.stderr
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(t))  # someone else's
    deep = cli(env, "verify", "--deep", "--day", "2024-03-10", "--json")
    [day] = json.loads(deep.stdout)["days"]
    said = json.dumps(day)
    assert "kept; deleted later" in said, said  # the row is named, as the scenario says
    assert "damaged" not in said and "backup of the bucket" not in said, said
    # (the source still holds one of the two rows: restored aside, then the missing row inserted)
    assert "restore" in said and ("--into original" in said or "--into new" in said), said
