"""Hunt 10 (pa): a review of the previous session's change (a day archived under the table's former format or
key_template, layout changes named, JSONL restore staged, manifest shape checks, config refusals, pending-detach
partitions). Real PostgreSQL and moto S3 over HTTP."""

from __future__ import annotations

import datetime as dt

import pytest
from click.testing import CliRunner
from psycopg import sql

from archive_pipeline.cli import main
from archive_pipeline.core import fingerprint
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import source_table
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.plan import compare_days, plan_day
from archive_pipeline.core.source import day_filter
from archive_pipeline_tests.test_hunt9_oh import _cli_env, _ev, _reseal, _spec

DAY = dt.date(2024, 3, 10)


# (the edit of a resealed manifest, the command that crashes on it)
_RESEALED = [
    pytest.param(lambda m: m.update(removed={"state": "done", "at": 5, "action": "delete", "rows": 20}),
                 ["list", "--check-source"], id="removed-at-a-number-list"),
    pytest.param(lambda m: m.update(fingerprint="row-hash-sum-v5:x:y"), ["verify", "--deep"],
                 id="fingerprint-rows-not-a-number-verify-deep"),
    pytest.param(lambda m: m["object"].update(uri=5), ["prune", "--dry-run"], id="object-uri-a-number-prune"),
    pytest.param(lambda m: m["columns"][0].pop("output_type"), ["archive"], id="column-without-output_type-archive"),
    pytest.param(lambda m: m["table_definition"].update(primary_key=5),
                 ["restore", "--into", "new", "--target", "{schema}.back"], id="primary_key-a-number-restore"),
]


@pytest.mark.parametrize(("edit", "command"), _RESEALED)
def test_a_resealed_manifest_with_a_field_the_shape_check_skips_is_refused_not_an_unexpected_error(
        edit, command, pg, s3, conn, schema, store, temp_dir, s3_client, bucket, tmp_path):
    """Someone who can write to the bucket edits a field of a day's manifest and seals it again (the case
    manifest._optional_shape_problem was added for): the removal mark's ``at`` a number, the fingerprint's row
    count not a number, ``object.uri`` a number, a column without ``output_type``, ``table_definition.primary_key``
    a number. The user runs ``list --check-source`` / ``verify --deep`` / ``prune --dry-run`` / ``archive`` /
    ``restore``: each fails with "unexpected error (TypeError / ValueError / NotRenderableError / KeyError ...)",
    "this is a bug in archive_pipeline" (or "an unexpected error ...; not retried"). Should: the manifest is called
    unreadable (as for the fields _optional_shape_problem checks), naming the table, the day and the field. Cause:
    decode_manifest's shape checks skip ``removed``'s fields (plan.Archived.removed slices ``at``), the
    fingerprint's parts (verify._loaded_fingerprint -> Fingerprint.parse), ``object.uri`` (cli prune's table),
    the columns' ``output_type`` (archive._skipped) and ``table_definition.primary_key`` (restore)."""
    _ev(conn, schema)
    spec = _spec(schema, "jsonl")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _reseal(s3_client, bucket, result.manifest_key, edit)
    args = [a.format(schema=schema) for a in command] + ["--day", DAY.isoformat()]
    done = CliRunner(env=_cli_env(pg, s3, bucket, tmp_path, schema, "jsonl")).invoke(main, args)
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    assert "unexpected error" not in done.output and "bug in archive_pipeline" not in done.output, done.output
    assert "2024-03-10" in done.output, done.output


def test_a_zone_change_of_a_date_column_table_refuses_the_removal_of_a_day_compare_calls_equal(conn, schema, store):
    """A table whose day_column is a ``date`` was archived in UTC (the default); the user then sets ``timezone:
    Europe/Berlin`` (so that "yesterday" and retention follow Berlin's calendar). For a date column the zone
    changes nothing about a day's rows: ``at = '2024-03-10'`` either way (source._bound_values: the local calendar
    days), and ``compare`` calls the day equal (same fingerprint). Retention then removes the day: refused, "stays
    in the source: its archive holds the daily period 2024-03-10 in UTC ... another period with the same key, not
    this one's rows; archive the day again with overwrite". Before this change (lifecycle.refuse_layout_change)
    the removal proved the archive by its fingerprint and removed the day. Should: the day is removed (its archive
    holds exactly its rows), not refused as another period's. Cause: manifest.another_period/layout_change compare
    the period's instants, which differ for a date column whose rows do not."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date NOT NULL)").format(sql.Identifier(schema, "t")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10'), (2, '2024-03-11')").format(
        sql.Identifier(schema, "t")))
    table = dict(name=f"{schema}.t", day_column="at", start_date=dt.date(2024, 3, 9), format="jsonl",
                 partitioning={"mode": "column"}, retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, TableSpec(**table), DAY, store)
    berlin = TableSpec(**table, timezone="Europe/Berlin")
    [compared] = compare_days(conn, berlin, store, [DAY])
    assert compared.result == "equal", compared  # (the premise: the same rows, by fingerprint)
    removal = remove_day(conn, berlin, DAY, store)
    assert removal.rows == 1
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "t"))).fetchone()[0] == 1


def test_dry_run_refuses_a_day_removed_under_the_former_format_by_an_older_version_that_the_run_archives(
        conn, schema, store, s3_client, bucket):
    """A day was archived as JSONL by an older version (its manifest records a row-hash-sum-v4 fingerprint) and
    removed by retention; the user restored its rows into the table (``restore --into original``) and changed the
    table's format to CSV. ``archive --dry-run`` plans the day "refuse": "was removed ... and the source now has
    other rows (20) ... set overwrite" -- the rows are exactly the removed ones. The run itself (``archive``)
    computes the fingerprint in the removed archive's algorithm (_Archiving._algorithm(elsewhere)), finds the
    removed rows back exactly and archives the day as CSV. Should: the dry run plans what the run does (archive),
    not a refusal with a wrong reason. Cause: plan._plan_day computes ``current`` in the former archive's algorithm
    only for ``before`` (archived elsewhere), and for a day removed elsewhere in fingerprint.ALGORITHM (v5), which
    keeps_existing/_refuse_removed_elsewhere then compares with the v4 fingerprint."""
    _ev(conn, schema)
    table_settings = dict(name=f"{schema}.ev", day_column="at", start_date=DAY, compression="zstd")
    jsonl = TableSpec(**table_settings, format="jsonl")
    result = archive_partition(conn, jsonl, DAY, store)
    day = jsonl.period(DAY)
    table = source_table(conn, jsonl, day)
    v4 = fingerprint.compute(conn, table.identifier, table.columns, day_filter(table, day), fingerprint.V4)

    def older_and_removed(manifest: dict) -> None:  # as an older version wrote it, then its removal marked it
        manifest["fingerprint"] = str(v4)
        manifest["removed"] = {"state": "done", "at": "2024-04-01T00:00:00+00:00", "action": "delete",
                               "relation": f"{schema}.ev", "rows": 20}

    _reseal(s3_client, bucket, result.manifest_key, older_and_removed)  # (the rows are back in the source as they were)
    csv = TableSpec(**table_settings, format="csv")
    planned = plan_day(conn, csv, store, csv.period(DAY), overwrite=False, in_source=True)
    ran = archive_partition(conn, csv, DAY, store)
    assert ran.rows == 20 and not ran.skipped and ran.key.endswith(".csv.zst")  # (the premise: the run archives it)
    assert planned.action == "archive", planned.reason


@pytest.mark.parametrize("command", [["prune"], ["prune", "--dry-run"]])
def test_prune_of_a_day_whose_former_format_manifest_is_damaged_is_no_unexpected_error(
        command, pg, s3, conn, schema, store, s3_client, bucket, tmp_path):
    """A day was archived as JSONL; its manifest is damaged since (not JSON); the table's format is now CSV, and
    nothing is at the day's CSV key. ``archive-pipeline prune`` (or ``prune --dry-run``) for the day fails with
    "unexpected error (...): ManifestError: not valid JSON (...); this is a bug in archive_pipeline". (The archive
    run treats the damaged manifest as no archive and archives the day again; at the day's own key a damaged
    manifest refuses the removal, naming it.) Should: the removal is refused (or the day reported) naming the
    table, the day and the damaged manifest, as for one at the day's own key. Cause: lifecycle.archive_key, new in
    _remove_day, reads the former format's manifest through manifest.under_another_format -> decoded_manifest,
    whose ManifestError (a ValueError) nothing between it and the command catches (_trusted_manifest, which turns
    it into RemovalRefused, is only called after it)."""
    _ev(conn, schema)
    result = archive_partition(conn, _spec(schema, "jsonl"), DAY, store)
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=b"{not json")
    done = CliRunner(env=_cli_env(pg, s3, bucket, tmp_path, schema, "csv")).invoke(
        main, [*command, "--day", DAY.isoformat()])
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    assert "unexpected error" not in done.output and "bug in archive_pipeline" not in done.output, done.output
    assert "2024-03-10" in done.output, done.output
