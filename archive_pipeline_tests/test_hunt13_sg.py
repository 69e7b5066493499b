"""Hunt 13 (sg): a review of this session's product commits (fingerprint v6's as_archived, put_back_statement,
discovery's other-case refusal, ranged runs' removed and table-less days)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day

DAY = dt.date(2024, 3, 10)


def test_a_day_proven_equal_after_int_to_numeric_is_removed_not_refused_as_rows_changed(conn, schema, store,
                                                                                          temp_dir):
    """v6 (48f8117, fingerprint.as_archived): a column retyped since the day was archived is hashed as the archived
    kind, so an int column retyped numeric with every value kept "compares equal ... as with v5". The removal's
    proof (deep_verify, through verify._fingerprint_now) applies as_archived and passes, and ``remove_day(...,
    dry_run=True)`` says the day would be removed.

    Now: the real removal refuses "its rows changed since they were archived and proven (3 rows now, 3 archived)":
    its in-transaction re-check under the lock (lifecycle._remove, fingerprint.compute of the table's columns as
    they are) hashes the numeric column by its text against the manifest's by-value integer hash. The dry run and
    the proof say one thing, the removal another, and the message is false (no row changed). The same day under
    v5 was removed.

    Should: removed, as the dry run planned (or, if a type change is to block removal, refused by the dry run and
    the proof alike, naming the type change, not "rows changed").
    Fix idea: in lifecycle._remove, hash the columns ``fingerprint.as_archived(conn, columns, manifest['columns'])``
    where the manifest's algorithm is v6, as verify and restore do."""
    table = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (at date NOT NULL, n int4, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', 5, 'a'), ('2024-03-10', NULL, 'b'), "
                         "('2024-03-10', -9, 'c')").format(table))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, retention={"keep_days": 30,
                                                                                       "action": "delete"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN n TYPE numeric").format(table))
    planned = remove_day(conn, spec, DAY, store, dry_run=True, temp_dir=temp_dir)
    assert planned.dry_run and planned.rows == 3
    done = remove_day(conn, spec, DAY, store, temp_dir=temp_dir, removed_by="test")
    assert done.rows == 3 and not done.dry_run


def test_the_other_case_refusal_suggests_a_pattern_that_names_the_tables_when_text_follows_the_date(conn, schema):
    """Naming mode (7478082, discovery._refuse_other_case): a pattern that names no table while the catalog spells
    the day tables otherwise in case is refused, remedy "set the table's partitioning pattern ... to '<suggested>',
    as the catalog spells its tables". Here the pattern has literal text after the date codes,
    ``Events_%Y%m%d_Raw``, and the tables were created unquoted: ``events_20240310_raw``, ``events_20240311_raw``.

    Now: the suggested pattern is the catalog's prefix plus the configured rest, ``events_%Y%m%d_Raw``: the
    ``_Raw`` after the date keeps its wrong case, so the advised setting again names no table (and is refused the
    same way, suggesting itself).

    Should: the suggestion names the tables: ``events_%Y%m%d_raw``.
    Fix idea: rebuild the suggestion from the matched name's own spelling of every literal part of the pattern
    (or lower-case the literal parts when all the catalog's names are lower case), not only the prefix. (A pattern
    with a %a/%b name code, which strftime capitalises, can name no unquoted table at all: the refusal should say
    so rather than suggest the configured pattern back.)"""
    from archive_pipeline.core.discovery import naming_days
    from archive_pipeline.core.errors import ArchiveError

    for day in (DAY, DAY + dt.timedelta(days=1)):
        conn.execute(f'CREATE TABLE "{schema}".events_{day:%Y%m%d}_raw (id int)')
    spec = TableSpec(name=f"{schema}.Events", start_date=DAY,
                     partitioning={"mode": "naming", "pattern": "Events_%Y%m%d_Raw"})
    try:
        naming_days(conn, spec)
    except ArchiveError as exc:
        said = f"{exc} {getattr(exc, 'remedy', '')}"
    else:
        raise AssertionError("a pattern naming no table was not refused")
    assert "'events_%Y%m%d_raw'" in said, said


def test_a_removed_day_stays_materialized_when_another_day_of_the_ranged_run_fails(conn, schema, archive_env):
    """89d3ef7: "a removed day in a ranged run is logged as nothing to do, not failed (its partition stayed red)".
    ``events`` has retention (delete); 2024-03-10..11 are archived, 2024-03-10 is then removed (proven; its archive
    is the day's only copy). Later a late row of 2024-03-11 arrives (a changed day: the run fails it, overwrite
    needed) and rows of 2024-03-12. The operator backfills 2024-03-10..12 in one ranged run.

    Now: the removed day is skipped with an info line, but the step still fails for 2024-03-11, and Dagster marks
    every partition of the failed run that got no materialization FAILED: 2024-03-10, archived, proven and let go,
    turns red in the partition bar again, beside the one day that really needs an overwrite. The fix only holds when
    nothing else in the range fails (and the naming mode's table-less days, now handled the same way, turn red the
    same way).

    Should: 2024-03-10 keeps MATERIALIZED, 2024-03-11 FAILED, 2024-03-12 MATERIALIZED.
    Fix idea: record the removed (nothing-to-do) day in the run (an AssetMaterialization of the partition saying
    "removed, archive kept", as a skipped identical day is recorded), so a failing neighbour cannot mark it failed."""
    import dagster as dg
    from dagster import AssetPartitionStatus, instance_for_test
    from dagster._core.event_api import PartitionKeyFilter

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.assets import asset_key, daily_partitions, job_name
    from archive_pipeline.defs.retention_assets import removal_job_name
    from archive_pipeline.local.local_stack import create_sample_events

    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    create_sample_events(conn, days[:2], rows_per_day=4, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    job = defs.resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[1].isoformat()}).success
        assert defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=days[0].isoformat()).success
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE created_at >= %s AND created_at < %s LIMIT 1")
                     .format(sql.Identifier(schema, "events"), sql.Identifier(schema, "events")),
                     (days[1], days[2]))  # a late row of the 11th: the day changed since it was archived
        create_sample_events(conn, days[2:], rows_per_day=4, schema=schema)
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[2].isoformat()})
        assert not result.success  # (the changed day fails, as it should)
        status = {day: found.value if found else None for day, found in instance.get_status_by_partition(
            asset_key(spec), [d.isoformat() for d in days], daily_partitions(spec)).items()}
        latest = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=asset_key(spec), asset_partitions=[days[0].isoformat()]), limit=1).records[0]
        said = latest.asset_materialization.metadata
        assert said["state"].value == "removed" and said["dagster/row_count"].value == 4, said
        assert "removed from the source" in said["removed"].value, said
        intact = dg.AssetCheckKey(asset_key(spec), "archive_intact")
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [intact], partition_filter=PartitionKeyFilter(key=days[0].isoformat()))[intact]
        assert check.evaluation.passed, check.evaluation  # the proof it had, about the removed day's own record
        assert check.evaluation.target_materialization_data.storage_id == latest.storage_id, check.evaluation
    assert status == {days[0].isoformat(): AssetPartitionStatus.MATERIALIZED.value,
                      days[1].isoformat(): AssetPartitionStatus.FAILED.value,
                      days[2].isoformat(): AssetPartitionStatus.MATERIALIZED.value}, status


def test_deep_verify_after_int_to_numeric_names_the_changed_row_as_first_difference(conn, schema, store, temp_dir):
    """v6's as_archived (48f8117) is applied to the source's fingerprint in verify._fingerprint_now, but not to the
    row hashes that name "first difference" (verify._compare builds ``in_order`` with columns_as_archived, without
    hash_as). A day of 6 rows (id int, n int, note text) is archived; then ``n`` is retyped numeric (values kept)
    and ONE row's note is edited by hand (id 3: 'c' -> 'edited').

    Now: deep verification rightly says the source's rows are not the archive's (the same 6 rows, other content),
    but its "first difference" names a row that did not change: every source row hashes its numeric ``n`` by text
    while the archive's hash it as an integer, so all 12 row hashes differ and the smallest one is named. The
    operator is pointed at an untouched row (and, from there, to a wrong conclusion about what changed).

    Should: the named row is the edited one (id 3: the source's 'edited' or the archive's 'c').
    Fix idea: hash the source's side of _name_first_difference with the same as_archived columns as the
    fingerprint (``fingerprint.as_archived(conn, in_order, manifest['columns'])`` for v6)."""
    from archive_pipeline.core.verify import deep_verify

    table = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (at date NOT NULL, id int, n int, note text)").format(table))
    for i, note in enumerate("abcdef", start=1):
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', %s, %s, %s)").format(table), (i, i * 10, note))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN n TYPE numeric").format(table))
    conn.execute(sql.SQL("UPDATE {} SET note = 'edited' WHERE id = 3").format(table))
    problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    named = [p for p in problems if p.startswith("first difference")]
    assert named, problems
    assert "edited" in named[0] or ",3,30,c)" in named[0], problems


def test_source_unchanged_restore_command_for_a_dropped_day_table_reads_back_as_the_table(conn, schema, archive_env):
    """7478082 (checks.build_source_unchanged_check): a naming day whose table was dropped by hand is listed apart
    with the remedy "restore it (archive-pipeline restore --table <name> --day <day> --into original)". The table
    here is ``<schema>.Click Log`` (pattern ``Click Log %Y%m%d``: a legacy name with a space, which the
    configuration accepts and archives).

    Now: the command is built with an f-string, not quoted for the shell as the sensor's and the CLI's suggested
    commands are (shlex.join / run.suggest): pasted, ``--table <schema>.Click Log`` is two words, and the CLI
    fails "unrecognized arguments: Log ..." (a ``$`` or ``'`` in a name would even expand or break the line).

    Should: the suggested command, read back as a shell reads it, names the table ``<schema>.Click Log``.
    Fix idea: build it with shlex.join(["archive-pipeline", "restore", "--table", spec.name, "--day", day,
    "--into", "original"]) as sensors._command does."""
    import re
    import shlex

    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.assets import job_name

    days = [DAY + dt.timedelta(days=i) for i in range(2)]
    for day in days:
        conn.execute(f'CREATE TABLE "{schema}"."Click Log {day:%Y%m%d}" (id int, created_at timestamptz)')
        conn.execute(f'INSERT INTO "{schema}"."Click Log {day:%Y%m%d}" VALUES (1, %s)', (day,))
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10}, "tables": [{
        "name": f"{schema}.Click Log", "start_date": DAY.isoformat(),
        "partitioning": {"mode": "naming", "pattern": "Click Log %Y%m%d"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[-1].isoformat()}).success
        conn.execute(f'DROP TABLE "{schema}"."Click Log {DAY:%Y%m%d}"')
        verified = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        [said] = [e.event_specific_data.description for e in verified.all_events
                  if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                  and e.event_specific_data.check_name == "source_unchanged"]
    found = re.search(r"\((archive-pipeline restore .*?--into original)\)", said)
    assert found, said
    words = shlex.split(found.group(1))
    assert words[words.index("--table") + 1] == spec.name, (found.group(1), words)


def test_the_removal_refusals_put_back_statement_runs_as_pasted_on_a_table_with_a_json_column(conn, schema, store,
                                                                                                 temp_dir):
    """703fecd (lifecycle.put_back_statement): the refusal of prune / the removal job for a day whose source lost
    rows says: restore the day into a new table, then run ``INSERT INTO t (cols) SELECT cols FROM <that table>
    EXCEPT ALL SELECT cols FROM t`` ("so it runs as pasted", its docstring). The table has a ``json`` column (an
    event payload: common), and one of the day's three rows was deleted by mistake.

    Now: the statement, pasted after the advised restore, fails "could not identify an equality operator for type
    json" (EXCEPT ALL needs equality; json, xml, point have none): the remedy for the day's only good copy cannot be
    carried out as given, and unlike verify --deep's, the removal's refusal does not even hint at the workaround.

    Should: the statement, run after restoring the day aside, puts the lost row back (3 rows again).
    Fix idea: in put_back_statement, compare a column of a type without an equality operator by its text and cast
    it back: ``INSERT INTO t (a, j) SELECT a, j::json FROM (SELECT a, j::text FROM aside EXCEPT ALL SELECT a,
    j::text FROM t) d``."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day

    table = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (at date NOT NULL, id int, payload json)").format(table))
    conn.execute(sql.SQL("""INSERT INTO {} VALUES ('2024-03-10', 1, '{{"a": 1}}'), ('2024-03-10', 2, '[1, 2]'),
                            ('2024-03-10', 3, NULL)""").format(table))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, retention={"keep_days": 30,
                                                                                       "action": "delete"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(table))
    try:
        remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        said = f"{exc} {getattr(exc, 'remedy', '')}"
    else:
        raise AssertionError("a day whose source lost a row was removed")
    start = said.index("INSERT INTO")
    statement = said[start:said.index("), then remove it", start)]
    aside = f"{schema}.aside"
    restore_day(conn, store, spec, DAY, into="new", target=aside, temp_dir=temp_dir)
    conn.execute(statement.replace("<that table>", sql.Identifier(schema, "aside").as_string(conn)))
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0] == 3, said


def test_a_v5_csv_archive_whose_uuid_field_was_respelled_fails_its_v5_proof(conn, schema, store, temp_dir,
                                                                               s3_client, bucket):
    """1ffb2ba: deep verification's CSV text copy now parses every integer and uuid column (``parsed |= typed``, for
    every algorithm), where before it hashed the field's bytes as they are. v6 then guards the field's text (an
    upper-case uuid or ``05`` is not canonical: it differs), but a v5 archive's field is hashed as
    ``field::uuid::text``. README: "archives that record v5 are still proven by v5", and "Hashing the archived text
    is stricter, never looser: a field whose bytes differ from what the archiver wrote ... fails the proof".

    Scenario: a CSV day (int4, uuid) recorded with row-hash-sum-v5 (as the previous version wrote it), proven and
    removed from the source by retention (the archive is now the day's only copy, proven by itself); its object is
    then altered, the uuid field upper-cased (same length), its digests resealed with it (a consistent forgery).
    Now: deep verification proves it ([]): the parsed field prints in lower case again (an int field ``+5`` or
    ``05`` likewise, where the sizes match). Before 1ffb2ba the same v5 archive failed the proof.
    Should: the proof fails, as it does for the same field of a v6 archive.
    Fix idea: parse the by-value columns only for v6 (where _typed_link guards the field's text), or keep a v5/v4/v3
    archive's integer/uuid fields as text, as before 1ffb2ba."""
    import zstandard

    from archive_pipeline.core import fingerprint
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.core.verify import deep_verify, source_fingerprint
    from archive_pipeline_tests.helpers import decompress, download, forge_object

    lower = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    table = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (at date NOT NULL, n int4, u uuid)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', 5, %s), ('2024-03-10', 6, NULL)").format(table),
                 (lower,))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     retention={"keep_days": 30, "action": "delete"})
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest = decode_manifest(download(s3_client, bucket, result.manifest_key))  # as the previous version wrote it
    manifest["fingerprint"] = str(source_fingerprint(conn, spec, DAY, fingerprint.V5))
    manifest.pop("manifest_sha256")
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []  # the v5 archive as written: proven
    assert remove_day(conn, spec, DAY, store, temp_dir=temp_dir).rows == 2  # let go: the archive is the only copy
    body = decompress(download(s3_client, bucket, result.key), "zstd").decode()
    forged = body.replace(lower, lower.upper())  # (same length: the manifest's sizes hold)
    assert forged != body, body
    forge_object(s3_client, bucket, result.key, result.manifest_key,
                 zstandard.ZstdCompressor().compress(forged.encode()))
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) != []
