"""Hunt 17 (wh): a review of the fixes made since d4d7f68 (restore targets, hold_day's partitions, autocommit,
braced text settings, redaction, checks' metadata): regressions and holes. Each test asserts the right behaviour
and fails on the bug."""

from __future__ import annotations

import pytest

from archive_pipeline.core.config import ConfigError, load_config


def test_an_unquoted_key_template_with_a_comment_is_told_without_the_comment(tmp_path):
    """Scenario: the YAML has ``key_template: {prefix}/{schema}.{table}/{date}.{ext}  # our layout`` (the template
    unquoted, a comment after it on the line, as YAML files often have).

    Now: the new message for an unquoted '{' text setting (_braced_text_settings) takes the whole rest of the line as
    the value, comment and all: "setting 'key_template' (line 5): {prefix}/{schema}.{table}/{date}.{ext}  # our layout
    reads as the start of a YAML mapping ...: quote it ('{prefix}/{schema}.{table}/{date}.{ext}  # our layout')". The
    operator who pastes the suggested fix gets a key template ending in "  # our layout" (the comment made part of
    every object's key, or refused next as a template with a space).

    Should: the quotes to add around the template alone ('{prefix}/{schema}.{table}/{date}.{ext}'), the comment left
    out of them. Fix idea: in _BRACED_LINE stop the value before a ' #' that starts a YAML comment (a plain value's
    '#' after a space/tab), i.e. value ``\\{.*?`` followed by ``(?:[ \\t]+#.*)?$``."""
    path = tmp_path / "tables.yaml"
    path.write_text("tables:\n  - name: public.events\n    day_column: created_at\n    start_date: 2024-01-01\n"
                    "    key_template: {prefix}/{schema}.{table}/{date}.{ext}  # our layout\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    message = str(raised.value)
    assert "key_template" in message and "quote it ('{prefix}/{schema}.{table}/{date}.{ext}')" in message, message
    assert "our layout'" not in message, message


def test_a_skipped_day_whose_manifest_names_its_writer_as_text_is_still_skipped(conn, schema, store, s3_client,
                                                                                 bucket, temp_dir):
    """Scenario: a day archived, its manifest resealed (a migration tool, another writer of the same layout) with
    ``"archiver": "archive_pipeline 0.9"`` (the writer as one string, not a mapping) -- a field nothing validates,
    and which the manifest reader already guards (``manifest.get("archiver") if isinstance(..., dict) else {}``).
    The day is archived again, unchanged (a re-run: the archive is skipped).

    Now: the skip made today to report the archive's own release (``_skipped``:
    ``(manifest.get("archiver") or {}).get("version")``) raises AttributeError ('str' object has no attribute 'get'):
    the day fails as "an unexpected error" (a bug of archive_pipeline), though its archive is intact and matching.
    Before today's change the same day was skipped.

    Should: skipped as before (rows as archived), the release shown as unknown (or the string). Fix idea: read it as
    manifest.read_manifest does, ``archiver if isinstance(archiver, dict) else {}``, and only a str version."""
    import datetime as dt

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest

    day = dt.date(2024, 3, 10)
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at date, v text)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, '{day}', 'a'), (2, '{day}', 'b')")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=day)
    first = archive_partition(conn, spec, day, store, temp_dir=temp_dir)
    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=first.manifest_key)["Body"].read())
    manifest["archiver"] = "archive_pipeline 0.9"
    manifest.pop("manifest_sha256")
    s3_client.put_object(Bucket=bucket, Key=first.manifest_key, Body=encode_manifest(manifest))
    again = archive_partition(conn, spec, day, store, temp_dir=temp_dir)
    assert again.skipped and again.rows == 2
    assert isinstance(again.archiver_version, str)


def test_a_missing_sub_partition_of_the_target_is_not_called_a_bound_that_excludes_the_day(conn, schema, store,
                                                                                           temp_dir):
    """Scenario: the existing target is partitioned by month, and its March partition ``t_2024_03`` is itself
    partitioned by day (sub-partitions), with no sub-partition for 2024-03-10 yet. The user restores 2024-03-10 into
    the top table ``target``.

    Now: PostgreSQL refuses with "no partition of relation "t_2024_03" found for row" (its error fields name
    t_2024_03, a partition), and today's _outside_partitions takes any CheckViolation naming a partition for "a
    partition named as the target whose bound excludes the day": RestoreError "t_2024_03 is a partition of target
    whose bound (FOR VALUES FROM ('2024-03-01 ...') TO ('2024-04-01 ...')) does not include the rows of 2024-03-10"
    -- false, March's bound holds the day -- with the remedy "restore into target ..., or into the partition of
    target whose bound holds 2024-03-10", which is what the user did (and t_2024_03 is that partition).

    Should: the cause says t_2024_03 (target's partition for the day) has no partition for the rows of 2024-03-10,
    the remedy to create that sub-partition (or a DEFAULT one), as for a parent without the day's partition. Fix
    idea: in _outside_partitions, a relation that is itself partitioned (relkind 'p': "no partition of relation")
    lacks a partition; only a leaf partition's own constraint is a bound that excludes the day."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline_tests.test_hunt17_wb import DAY, _count, _events, _names

    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    n = _names(conn, schema)
    conn.execute("CREATE TABLE {t} (id int, at timestamptz, n numeric, v text) PARTITION BY RANGE (at)".format(**n))
    conn.execute("CREATE TABLE {s}.t_2024_03 PARTITION OF {t} FOR VALUES FROM ('2024-03-01') TO ('2024-04-01') "
                 "PARTITION BY RANGE (at)".format(**n))
    conn.execute("CREATE TABLE {s}.t_2024_03_11 PARTITION OF {s}.t_2024_03 FOR VALUES FROM ('2024-03-11') "
                 "TO ('2024-03-12')".format(**n))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.target", temp_dir=temp_dir)
    error = caught.value
    assert _count(conn, schema, "target") == 0
    said = f"{error.cause} {error.remedy}"
    assert "does not include the rows of 2024-03-10" not in said, said
    assert "create" in (error.remedy or "") and "partition" in (error.remedy or ""), error.remedy


def test_archive_inside_the_callers_transaction_block_is_refused_up_front(pg, conn, schema, store):
    """Scenario: a Python caller connects with ``autocommit=True`` as the README says, but calls
    ``archive_partition`` inside its own ``with conn.transaction():`` block (its bookkeeping and the archive "in one
    transaction"). Today's fix (require_autocommit at the top of archive_partition; README: archives "need an
    autocommit connection ...: each begins and commits its own transactions ... and refuses any other connection up
    front") checks only ``conn.autocommit``, which is still True inside the block.

    Now: the run goes on, takes its lock, and read_snapshot's ``BEGIN ISOLATION LEVEL REPEATABLE READ`` is a no-op
    inside the caller's transaction (a warning); the day fails with SourceError "the database reported an error
    (ActiveSqlTransaction SQLSTATE 25001: SET TRANSACTION ISOLATION LEVEL must be called before any query); ...; to
    fix: read the message; fix the cause and archive again" -- a cause the caller cannot map to its own block, no
    remedy -- and the caller's transaction is left aborted (INERROR: its own work lost to the archive's error).

    Should: refused before anything is executed, saying the archive must be called outside a transaction block
    (its connection idle, in autocommit), leaving the caller's transaction as it was. Fix idea: require_autocommit
    also refuses ``conn.info.transaction_status != IDLE`` ("... not inside a transaction block"), for archives,
    removals and restores alike."""
    import datetime as dt

    import psycopg

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec

    day = dt.date(2024, 3, 10)
    conn.execute(f'CREATE TABLE "{schema}".ev (id int, at date)')
    conn.execute(f"INSERT INTO \"{schema}\".ev VALUES (1, '{day}'), (2, '{day}')")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=day)
    with psycopg.connect(pg.dsn, autocommit=True) as caller:
        with caller.transaction(force_rollback=True):
            caller.execute(f'CREATE TABLE "{schema}".caller_work (x int)')
            with pytest.raises(Exception) as caught:
                archive_partition(caller, spec, day, store)
            status = caller.info.transaction_status
    said = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "transaction" in said and ("autocommit" in said or "outside" in said), said
    assert "SET TRANSACTION ISOLATION LEVEL must be called" not in said, said
    assert status == psycopg.pq.TransactionStatus.INTRANS, f"the caller's transaction was left {status.name}"


def test_a_non_owner_refused_a_day_whose_fingerprint_is_a_newer_releases_is_not_told_it_has_none(
        conn, schema, store, temp_dir, s3_client, bucket):
    """Scenario: a table with a day column restored day by day into one new table (into='new', its restore mark
    owned by the role that created it). The next day's manifest was written by a newer release, with a fingerprint
    of an algorithm this one cannot compute (row-hash-sum-v99:...: a mixed-version deployment, the command line
    older than the code location). Another role, granted SELECT and INSERT on the table, restores that day into it.

    Now: today's _refuse_unmarkable refuses it (fine: the role cannot list the day in the mark, and this release
    cannot tell the day's rows by their fingerprint) but says why wrongly: "... and, having no fingerprint in its
    manifest, a run of the same command again could not tell it was restored ...". The manifest has a fingerprint
    (the owner's restore of the same day succeeds, "row count only ...: its fingerprint 'row-hash-sum-v99:1:...' is
    none of row-hash-sum-v6, ..."); fp.recorded_algorithm's None (not one this version computes) is read as "none
    recorded", so the operator looks for a missing field instead of upgrading.

    Should: the refusal says the manifest's fingerprint is of an algorithm this release cannot compute (a newer
    archive_pipeline's: upgrade, or restore as the owner). Fix idea: word ``lacks`` with fp.why_uncomputable(
    manifest.get("fingerprint")) (it already tells "none recorded" from "a newer release's")."""
    import datetime as dt

    from psycopg import sql

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline_tests.test_hunt17_wb import DAY, _events

    spec = _events(conn, schema)
    day2 = DAY + dt.timedelta(days=1)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    second = archive_partition(conn, spec, day2, store, temp_dir=temp_dir)
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=second.manifest_key)["Body"].read())
    manifest["fingerprint"] = "row-hash-sum-v99:1:123456"
    manifest.pop("manifest_sha256")
    s3_client.put_object(Bucket=bucket, Key=second.manifest_key, Body=encode_manifest(manifest))
    role = f"{schema}_helper"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(sql.Identifier(schema, "restored"),
                                                                   sql.Identifier(role)))
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    try:
        with pytest.raises(ArchiveError) as caught:
            restore_day(conn, store, spec, day2, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    finally:
        conn.execute("RESET ROLE")
    said = f"{caught.value} {caught.value.cause} {caught.value.remedy}"
    assert "no fingerprint in its manifest" not in said, said
    assert "row-hash-sum-v99" in said or "newer" in said or "cannot compute" in said, said
