"""Hunt 6 (lq): false verdicts of the proofs (deep_verify, verify_archive, compare and compare --rows, the
fingerprint, the Dagster checks), built on real PostgreSQL and S3. Each test fails on a bug."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_deep_verify_fingerprints_the_source_under_the_callers_search_path(fmt, conn, schema, store, temp_dir):
    """A user's session sets its path (``SET search_path TO app, public``) and archives a table with a
    ``regclass`` column naming tables of ``app`` (``audit_log``: a value prints as ``audit_log`` under that
    path, as ``app.audit_log`` without it). ``archive_partition`` and ``compare_days`` on that connection
    agree: equal. ``deep_verify`` on the same connection says "the source's rows for 2024-03-10 are not the
    archive's": it fingerprints the source in a second session (``_SourceFingerprint``) opened from the DSN,
    which gets the caller's limits (``_LIMITS``) but not its path, so the source's values print otherwise than
    the archive's, which were loaded and hashed on the caller's session. session_settings.resolved says the
    other sessions of the same work use the caller's path; the proof should say proven ([])."""
    s = schema
    conn.execute(f"CREATE TABLE {s}.audit_log (x int)")
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date, rel regclass)")
    conn.execute(f"INSERT INTO {s}.ev VALUES (1, '{DAY}', '{s}.audit_log'), (2, '{DAY}', 'pg_class')")
    conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(s)))
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY, format=fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert [c.result for c in compare_days(conn, spec, store, [DAY])] == ["equal"]
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_an_event_trigger_that_adds_a_column_to_new_tables_does_not_fail_an_intact_archive(fmt, conn, schema, store,
                                                                                           temp_dir):
    """A database has an event trigger that gives every new table an audit column (``ddl_command_end`` on
    CREATE TABLE: ``ALTER TABLE ... ADD COLUMN created_by text DEFAULT current_user``). An intact day is proven
    with ``deep_verify``: it says "the archive's rows are not the ones recorded" (for the Dagster check: "the
    archive in the bucket is not what was recorded"), a verdict of damage on an archive that is exact. The proof's
    temporary table got the extra column, and ``verify._temp_table`` hashes every column ``describe_table`` finds
    there, not the manifest's columns. (The CSV proof, whose text table is hashed by the manifest's names,
    proves the same day; ``without_user_triggers`` already guards the same table against an event trigger's
    triggers.) Should: proven ([])."""
    s = schema
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date, v text)")
    conn.execute(f"INSERT INTO {s}.ev VALUES (1, '{DAY}', 'a'), (2, '{DAY}', 'b')")
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY, format=fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"""CREATE FUNCTION {s}.audit_column() RETURNS event_trigger LANGUAGE plpgsql AS $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE' LOOP
                EXECUTE format('ALTER TABLE %s ADD COLUMN created_by text DEFAULT current_user', r.object_identity);
            END LOOP;
        END $$""")
    conn.execute(f"CREATE EVENT TRIGGER {s}_audit ON ddl_command_end WHEN TAG IN ('CREATE TABLE') "
                 f"EXECUTE FUNCTION {s}.audit_column()")
    try:
        assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []
    finally:
        conn.execute(f"DROP EVENT TRIGGER {s}_audit")


def _reseal(s3_client, bucket: str, manifest_key: str, **changes) -> None:
    """The manifest at ``manifest_key`` with ``changes``, sealed again as archive_pipeline seals one."""
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest

    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    manifest.update(changes)
    manifest.pop("manifest_sha256")
    s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=encode_manifest(manifest))


@pytest.mark.parametrize("command", ["compare", "list --check-source"])
def test_a_fingerprint_of_an_algorithm_this_version_cannot_compute_is_not_called_different_content(
        command, conn, schema, store, s3_client, bucket, temp_dir):
    """The fingerprint algorithm changes without a new manifest_version (v3, v4 and v5 are all manifest
    version 2), so a deployment whose code location is upgraded writes manifests with a fingerprint the command
    line of the previous release cannot compute (here ``row-hash-sum-v99:2:…``, of the same 2 rows). The user runs
    ``compare`` (``list --check-source``): the day is "differs" ("changed") with the note "same row count,
    different content (fingerprint)": the manifest's string was compared with a v5 fingerprint of the source
    (``plan.matches_source``), so nothing was compared at all, and the verdict says the source's rows changed.
    Deep verification of the same day knows better ("the manifest has no fingerprint this version can
    compute"), and the README says such a manifest "cannot be proven". Should: not a claim of different
    content (a day that could not be compared, saying why)."""
    from archive_pipeline.core.plan import day_statuses

    s = schema
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date, v text)")
    conn.execute(f"INSERT INTO {s}.ev VALUES (1, '{DAY}', 'a'), (2, '{DAY}', 'b')")
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _reseal(s3_client, bucket, result.manifest_key, fingerprint="row-hash-sum-v99:2:1234567890123456789")
    if command == "compare":
        [day] = compare_days(conn, spec, store, [DAY])
        verdict, note = day.result, day.note
    else:
        [day] = day_statuses(conn, spec, store, [DAY], check_source=True)
        verdict, note = day.state, day.note
    assert "different content" not in note, (verdict, note)


def test_a_row_deleted_after_the_snapshot_is_not_blamed_on_the_archive_by_the_blocking_check(conn, schema, store,
                                                                                              temp_dir):
    """A table with ``deep_check: true``: a day is archived, and a row of it is deleted late (after the
    snapshot, before the blocking proof ran). The proof rightly fails: "the source's rows ... are not the
    archive's" and "first difference: the archive has a row the source lacks: (…)". The run's failure
    (``assets.unproven``) then says "the archive in the bucket is not what was recorded": a verdict of damage on
    an archive that holds exactly the snapshot's rows. ``unproven`` counts as the source's doing only the
    problems that start "the source's rows" or "first difference: the source has", so a source that lost (or
    changed, half the time, by hash order) a row is blamed on the bucket. Should: the cause is the source
    that changed after the snapshot."""
    from archive_pipeline.defs.assets import unproven

    s = schema
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date, v text)")
    conn.execute(f"INSERT INTO {s}.ev VALUES (1, '{DAY}', 'a'), (2, '{DAY}', 'b'), (3, '{DAY}', 'c')")
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY, deep_check=True)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"DELETE FROM {s}.ev WHERE id = 2")
    problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    assert any(p.startswith("first difference: the archive has a row the source lacks") for p in problems), problems
    said = unproven(spec, spec.period(DAY), problems, None).description
    assert "not what was recorded" not in said and "source changed after the snapshot" in said, said


def test_verify_archives_does_not_show_a_day_archived_before_deep_check_was_set_as_proven(conn, schema,
                                                                                          archive_env):
    """A table is archived for a while, then the team sets ``deep_check: true`` on it (the check becomes
    blocking and its description promises "its content equals the source's (deep_check)"). The weekly
    ``verify_archives`` re-checks the latest archived day, archived before the setting: its materialization
    says ``verified: object, size and manifest match what was recorded``, no content proof ever ran. It is
    recorded as ``archive_intact`` SUCCEEDED, with no content proven. The README: "a ``deep_check`` day whose
    content proof never ran is not shown intact". ``checks._recheck`` refuses only a proof that failed ("NOT
    proven") or could not run ("not verified"), not one that was never asked for. Should: not SUCCEEDED (or
    the content proven then)."""
    from archive_pipeline_tests.test_hunt3_t import DAYS, _config, _job, _verdicts
    from dagster import instance_for_test
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    before = _config(schema, max_retries=0, compression="none")
    after = _config(schema, max_retries=0, compression="none", deep_check=True)
    day = DAYS[0].isoformat()
    with instance_for_test() as instance:
        assert _job(build_definitions(before), schema).execute_in_process(instance=instance, partition_key=day).success
        build_definitions(after).resolve_job_def("verify_archives").execute_in_process(instance=instance,
                                                                                       raise_on_error=False)
        verdicts = _verdicts(instance, after.tables[0])
    latest = verdicts[0]
    assert latest[:2] != (day, "SUCCEEDED") or "content proven" in (latest[2] or ""), \
        f"a deep_check day whose content was never proven is shown intact: {verdicts}"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_lossy_cast_of_a_builtin_type_to_text_does_not_hide_a_change_from_the_proofs(fmt, conn, schema, store,
                                                                                       temp_dir):
    """A database carries a DBA's compatibility cast from a built-in type to text (the kind legacy applications
    got when PostgreSQL 8.3 dropped the implicit casts: ``CREATE CAST (timestamptz AS text) WITH FUNCTION
    ts_text(timestamptz)``, formatting with ``to_char`` to whole seconds). A day is archived; then a timestamp of
    it is changed by half a second. ``compare`` says "equal" and ``deep_verify`` proves the day ([]): the
    fingerprint hashes a built-in type's value through ``::pg_catalog.text`` (``fingerprint.column_text``), which
    runs that cast instead of the type's output function, so every sub-second change is invisible (to the re-run
    skip and the restore's check as well). (Created only after a day was archived, the same cast makes that unchanged day "differ".) v5 stopped this for
    types outside pg_catalog only. Should: the
    fingerprint hashes what the value prints as (its output function), and both see the change."""
    s = schema
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date, ts timestamptz)")
    conn.execute(f"INSERT INTO {s}.ev VALUES (1, '{DAY}', '2024-03-10 12:00:00.25+00'), "
                 f"(2, '{DAY}', '2024-03-10 13:00:00+00')")
    conn.execute(f"CREATE FUNCTION {s}.ts_text(timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS "
                 "$$ SELECT to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') $$")
    conn.execute(f"CREATE CAST (timestamptz AS text) WITH FUNCTION {s}.ts_text(timestamptz)")
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY, format=fmt)
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        conn.execute(f"UPDATE {s}.ev SET ts = ts + interval '0.5 second' WHERE id = 1")
        compared = [c.result for c in compare_days(conn, spec, store, [DAY])]
        proven = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    finally:
        conn.execute("DROP CAST IF EXISTS (timestamptz AS text)")
    assert compared == ["differs"] and proven != [], (compared, proven)


@pytest.mark.parametrize("proof", ["compare", "verify"])
def test_an_archive_copied_onto_itself_to_change_its_storage_class_is_not_called_replaced(proof, conn, schema, store,
                                                                                          temp_dir, s3_client, bucket):
    """A day big enough to be uploaded in parts (its ETag ``<md5 of md5s>-2``) is archived. An operator moves it
    to another storage class the usual way, a copy onto itself (``copy_object(..., StorageClass='STANDARD_IA')``,
    the console's "Edit storage class", S3 Batch Operations): same bytes, but a single-part copy's ETag is the
    object's MD5, which is exactly the manifest's ``object.md5``. ``compare`` now says "differs: the archive's
    object is not as recorded: ETag ... (object replaced?)" and ``verify`` (light, and so latest_archive_intact)
    reports the same, although the stored ETag proves the bytes are the recorded ones (``deep_verify`` proves
    the day). ``manifest.stored_object_problems`` compares the ETag with the recorded multipart ETag only.
    Should: an ETag equal to the recorded MD5 (with the recorded size) is the archived object."""
    from archive_pipeline.core.keys import table_day_key
    from archive_pipeline.core.verify import verify_archive

    s = schema
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date, v text)")
    conn.execute(f"INSERT INTO {s}.ev SELECT g, '{DAY}', md5(g::text) || md5((g + 1)::text) "
                 "FROM generate_series(1, 70000) g")
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY, compression="none")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.parts >= 2, result.parts
    s3_client.copy_object(Bucket=bucket, Key=result.key, CopySource={"Bucket": bucket, "Key": result.key},
                          StorageClass="STANDARD_IA")
    assert s3_client.head_object(Bucket=bucket, Key=result.key)["ETag"].strip('"') == result.md5
    if proof == "compare":
        [day] = compare_days(conn, spec, store, [DAY])
        assert day.result == "equal", (day.result, day.note)
    else:
        problems = verify_archive(store, table_day_key(spec, DAY, store.prefix), {}, owner=(spec.name, DAY.isoformat()))
        assert problems == [], problems
