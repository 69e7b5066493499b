"""Hunt 9 (op): a hostile review of the newest fixes (manifest shapes, oversized manifests, decompression
limits, TMPDIR, zstd levels, pending detach, former formats and periods, layout changes)."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline_tests.helpers import decompress, download, read_jsonl


def test_another_days_partition_pending_detach_does_not_fail_a_role_that_reads_the_table_through_its_parent(
        pg, conn, schema, store, temp_dir, s3_client, bucket, request):
    """``ev`` is range-partitioned by day (d01, d10, d11); the archive role was given what a table needs,
    ``GRANT SELECT ON ev`` (partitions are read through the parent: PostgreSQL checks the parent's privileges
    only). An interrupted ``DETACH PARTITION d01 CONCURRENTLY`` leaves d01 (a day long dealt with) pending
    detach. Archiving 2024-03-10 (24 rows, all in d10) now fails, on every run of every day: "permission denied
    for table d01" -- the pending-detach check queries d01 itself. Before the latest fix a partition outside the
    day's partitions was never read. Should: 2024-03-10 archived with its 24 rows (d01 holds none of the day:
    its bounds say so, or it is asked through the parent's privileges). (Cause: source._may_hold_day runs
    ``SELECT EXISTS (SELECT FROM <pending partition> WHERE ...)`` for every partition pending detach that is not
    one of the day's, which needs SELECT on that partition itself.)"""
    from archive_pipeline_tests.test_mends import _interrupted_detach

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    for d in (1, 10, 11):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"d{d:02d}"), s, sql.Literal(f"2024-03-{d:02d} 00:00+00"),
            sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 30) g").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (100, '2024-03-01 05:00+00')").format(s))
    role = f"arch_{schema}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    request.addfinalizer(lambda: conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
        sql.Identifier(role), sql.Identifier(role))))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT ON {}.ev TO {}").format(s, sql.Identifier(role)))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="none", partitioning={"mode": "declarative"})
    _interrupted_detach(pg, conn, f"{schema}.ev", f"{schema}.d01")
    with psycopg.connect(pg.dsn_for(role), autocommit=True) as reader:
        result = archive_partition(reader, spec, dt.date(2024, 3, 10), store, temp_dir=temp_dir)
    rows = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert result.rows == 24 and sorted(int(r["id"]) for r in rows) == list(range(24))


def _utc_day_archived_by_a_version_before_periods(conn, schema, store, s3_client, bucket) -> TableSpec:
    """2024-03-10 of ``ev`` archived (daily, UTC), its manifest then as versions before periods wrote it (v2,
    sealed, without granularity, timezone and period: :func:`periods.manifest_period` reads such a manifest as
    a UTC day); returns the table's spec now: ``timezone: Europe/Berlin``."""
    from archive_pipeline.core import keys
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest

    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    # 1 and 2: the UTC day 2024-03-10; in Berlin, 1 and 3 are 2024-03-10 and 2 is 2024-03-11
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-10 23:30+00'), "
                         "(3, '2024-03-09 23:30+00')").format(table))
    base = dict(name=f"{schema}.ev", day_column="at", start_date="2024-01-01", format="jsonl", compression="none")
    first = archive_partition(conn, TableSpec(**base), dt.date(2024, 3, 10), store)
    assert first.rows == 2
    key = keys.manifest_key(keys.table_day_key(TableSpec(**base), dt.date(2024, 3, 10), store.prefix))
    manifest = decode_manifest(download(s3_client, bucket, key))
    old = {k: v for k, v in manifest.items() if k not in ("manifest_sha256", "granularity", "timezone", "period")}
    s3_client.put_object(Bucket=bucket, Key=key, Body=encode_manifest(old))
    return TableSpec(**base, timezone="Europe/Berlin")


def test_a_zone_change_after_a_day_archived_before_periods_is_named_not_called_rows_changed(
        conn, schema, store, s3_client, bucket):
    """A daily table was archived by a version before periods (its manifests record no granularity, timezone
    or period: they are UTC days, as ``periods.manifest_period`` reads them). After upgrading, the user sets
    ``timezone: Europe/Berlin`` and runs 2024-03-10 again, no row changed. The run refuses it as rows changed
    since archiving (LateRowsError "... changed since it was archived"), sending the operator to hunt an edit
    nobody made -- where a manifest that records its zone gets "its archive holds the daily period 2024-03-10
    in UTC, and the table is now configured as daily in Europe/Berlin: another period with the same key".
    Should: the same naming of the zone change. (Cause: manifest.another_period returns None where the manifest
    records no granularity or timezone, instead of reading it as the UTC day manifest_period says it is; so
    layout_change in compare/list/removal says nothing either.)"""
    from archive_pipeline.core.errors import ArchiveError

    spec = _utc_day_archived_by_a_version_before_periods(conn, schema, store, s3_client, bucket)
    try:
        archive_partition(conn, spec, dt.date(2024, 3, 10), store)
    except ArchiveError as exc:
        assert "Europe/Berlin" in str(exc) and "another period" in str(exc), f"{type(exc).__name__}: {exc}"
    else:
        raise AssertionError("archived the Berlin day beside a UTC day's archive at its key")


def test_restore_of_a_day_after_a_zone_change_does_not_load_the_utc_day_archived_before_periods(
        conn, schema, store, s3_client, bucket):
    """As above: the UTC day 2024-03-10 archived by a version before periods, the table now ``timezone:
    Europe/Berlin``. ``archive-pipeline restore --day 2024-03-10 --into new`` restores the UTC day's rows (ids 1 and
    2) as the Berlin day 2024-03-10 (whose rows are 1 and 3) and reports success; with a manifest that records
    its zone, find_manifest refuses it ("another period ...; configure the table as it was archived"). Should:
    refused the same way. (Cause: manifest.another_period ignores a manifest without granularity/timezone.)"""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day

    spec = _utc_day_archived_by_a_version_before_periods(conn, schema, store, s3_client, bucket)
    try:
        result = restore_day(conn, store, spec, dt.date(2024, 3, 10), into="new", target=f"{schema}.back")
    except ArchiveError as exc:
        assert "another period" in str(exc) or "Europe/Berlin" in str(exc), str(exc)
        return
    ids = sorted(r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(schema, "back"))))
    raise AssertionError(f"restored the UTC day's rows {ids} as Berlin's 2024-03-10 ({result.rows} rows)")


@pytest.mark.parametrize("fmt", ["jsonl"])
def test_a_jsonl_restore_needs_no_temporary_privilege_as_a_csv_restore_needs_none(pg, conn, schema, store, request,
                                                                                  fmt):
    """A hardened database revokes TEMPORARY from PUBLIC (a common CIS step); the restore role has CREATE on the
    schema it restores into. ``archive-pipeline restore --day 2024-03-10 --into new --target public.back`` works
    for a CSV archive (the README: a temporary table only for on_conflict="skip" or a generated column), but a
    JSONL archive now fails "permission denied to create temporary tables in database ...": the JSONL lines are
    staged by COPY into a temporary table since the last fix, where they went to json_to_recordset as a
    parameter before. Should: restored, as a CSV archive is (or the README and the up-front privilege check
    say a JSONL restore needs TEMPORARY). (Cause: restore._staged_lines' CREATE TEMP TABLE in load_into.)"""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-10 13:00+00')").format(table))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01", format=fmt, compression="zstd")
    archive_partition(conn, spec, dt.date(2024, 3, 10), store)
    database, role = f"notemp_{schema}", f"restorer_{schema}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))

    def drop() -> None:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    request.addfinalizer(drop)
    with psycopg.connect(pg.dsn_for("postgres", database=database), autocommit=True) as admin:
        admin.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
        admin.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    from archive_pipeline.core.restore import restore_day

    with psycopg.connect(pg.dsn_for(role, database=database), autocommit=True) as restorer:
        result = restore_day(restorer, store, spec, dt.date(2024, 3, 10), into="new", target="public.back")
        assert result.rows == 2
        assert sorted(r[0] for r in restorer.execute("SELECT id FROM public.back")) == [1, 2]


def test_an_unusable_tmpdir_is_named_as_the_temp_directory_not_tmp(pg, s3, bucket, conn, schema, tmp_path):
    """``TMPDIR=/scratch archive-pipeline archive --day 2024-03-10`` with /scratch not mounted (the directory is
    missing) now fails, as it should -- but the message says "the temp directory does not exist or is not a
    directory (the temp directory /tmp) ...: create it, or point temp_dir at a directory that exists": it names
    /tmp, which exists and was never configured, as the directory to create, beside the OSError's own "$TMPDIR
    /scratch does not exist". Should: the temp directory named is the TMPDIR refused (and not /tmp). (Cause:
    archive.archive_partition passes ``tempfile.gettempdir()`` to errors.wrap as the temp_dir, which skips the
    unusable TMPDIR silently -- what sink.default_temp_dir was made to stop; store.temp_file_refused does the
    same.)"""
    import subprocess
    import sys

    from archive_pipeline_tests.test_hunt_cli import ROOT, make_env, write_config

    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00')").format(sql.Identifier(schema, "ev")))
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [dict(
        name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="csv")]))
    scratch = tmp_path / "scratch-volume"
    env["TMPDIR"] = str(scratch)
    done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "archive", "--day", "2024-03-10", "--json"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout
    assert str(scratch) in done.stdout, done.stdout
    message = json.loads(done.stdout)["days"][0]["message"]
    assert "(the temp directory /tmp)" not in message and f"the temp directory {scratch}" in message, message
