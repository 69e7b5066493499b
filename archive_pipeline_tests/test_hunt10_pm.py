"""Hunt 10 (pm): the same day told the same way by every command. A day is built in one state a user meets
(archived, archived empty, a manifest of another table at its key, a fingerprint of a newer version, the table's
zone or day_column changed since) and every reader is asked about it: where two readers contradict each other,
or a remedy does not resolve the state, that is a failing test here. Real PostgreSQL and moto's S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.manifest import encode_manifest
from archive_pipeline.core.plan import compare_days, day_statuses, plan_archive
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DAY = dt.date(2024, 3, 10)


def _env(pg, s3, bucket: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PG_DSN=pg.dsn, ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive",
               ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url, ARCHIVE_S3_ACCESS_KEY_ID="testing",
               ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    return env


def _cli(env: dict[str, str], *args: str, process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    return run_cli(args, env, cwd=ROOT, timeout=60, process=process or None)


def _table(conn, schema: str, rows: int = 5, **config) -> dict:
    """``schema.ev`` with ``rows`` rows on DAY (00:01 .. 00:05 UTC), and its configuration (column mode)."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, at2 timestamptz, "
                         "note text)").format(sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 minute', "
                         "%s::timestamptz + g * interval '1 minute', md5(g::text) FROM generate_series(1, %s) g"
                         ).format(sql.Identifier(schema, "ev")), (f"{DAY} 00:00+00", f"{DAY} 00:00+00", rows))
    return dict(name=f"{schema}.ev", day_column="at", start_date=DAY, retention={"keep_days": 1, "action": "delete"},
                **config)


def _manifest_key(s3_client, bucket: str) -> str:
    [key] = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]
             if o["Key"].endswith(".manifest.json")]
    return key


def _rewrite(s3_client, bucket: str, **changes) -> None:
    """The day's manifest with ``changes``, sealed again (a manifest as another writer wrote it, not damaged)."""
    key = _manifest_key(s3_client, bucket)
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    manifest = {**{k: v for k, v in manifest.items() if k != "manifest_sha256"}, **changes}
    s3_client.put_object(Bucket=bucket, Key=key, Body=encode_manifest(manifest))


# ----------------------------------------------------------------------------------------------


def test_verify_does_not_advise_an_overwrite_that_the_archive_refuses_for_another_tables_manifest(
        pg, s3, bucket, conn, schema, store, s3_client, tmp_path):
    """The manifest at a day's key is another table's (copied there by hand, or another configuration rendering
    the key). A user runs ``archive-pipeline verify``: the day fails, and its problem ends "archiving the day again
    does not replace another table-day's archive" -- but the ``remedy`` (printed as "to fix:") says "archive it
    again: archive-pipeline archive ... --overwrite (a new generation; the damaged one is kept ...)". The user runs
    exactly that: it fails, exit 1, "this run neither skips nor overwrites it" (ForeignArchiveError). The advice
    does not resolve the state, and contradicts the problem printed just above it. Cause: cli._verify_remedy
    special-cases only a newer version's manifest and "not checked"; every other problem, a foreign manifest's
    included, gets the overwrite advice. Should: verify's remedy for another table-day's manifest is the foreign
    manifest's own (delete the copy / give each table its own key_template), as list, compare, prune and archive
    say, never an overwrite."""
    table = _table(conn, schema)
    archive_partition(conn, TableSpec(**table), DAY, store)
    _rewrite(s3_client, bucket, table=f"{schema}.other")
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{**table, "start_date": DAY.isoformat()}]}))
    env = _env(pg, s3, bucket)

    verified = _cli(env, "verify", "--config", str(config), "--day", DAY.isoformat(), "--json")
    assert verified.returncode == 1, verified.stderr
    [day] = json.loads(verified.stdout)["days"]
    assert "another table-day's archive" in day["problems"][0]  # (the premise: the problem says what it is)
    followed = _cli(env, "archive", "--config", str(config), "--day", DAY.isoformat(), "--overwrite", "--json")
    assert followed.returncode == 1 and "neither skips nor overwrites" in followed.stdout  # (what the advice does)
    assert "--overwrite" not in day["remedy"], day["remedy"]


def test_a_newer_versions_fingerprint_is_not_called_an_older_versions_by_verify_deep(conn, schema, store,
                                                                                      s3_client, bucket):
    """A day archived by a newer archive_pipeline whose fingerprint algorithm this version does not know
    (``row-hash-sum-v99:...`` in a manifest_version 2 manifest). ``compare`` and ``list --check-source`` say "its
    fingerprint (row-hash-sum-v99) is of an algorithm this version cannot compute (written by a newer
    archive_pipeline) ... upgrade to compare the content". ``verify --deep`` (and ``prune``, the removal's proof)
    say of the same day "the manifest has no fingerprint this version can compute (written by an older
    archive_pipeline): archive the day again (overwrite)": the opposite cause, and so the opposite advice
    (overwriting a newer version's archive with this older one's instead of upgrading). Cause: verify._prove and
    verify._source_changed word every uncomputable fingerprint as an older version's (the text from before
    algorithms beyond this version's existed). Should: say it is a newer version's algorithm, as plan.uncomputable
    does."""
    spec = TableSpec(**_table(conn, schema))
    archive_partition(conn, spec, DAY, store)
    _rewrite(s3_client, bucket, fingerprint="row-hash-sum-v99:5:123456789")
    [compared] = compare_days(conn, spec, store, [DAY])
    assert "newer archive_pipeline" in compared.note  # (the premise: compare says whose it is)
    problems = deep_verify(conn, store, spec, DAY)
    assert problems and not any("older archive_pipeline" in p for p in problems), problems


def test_the_dry_run_does_not_call_a_newer_versions_fingerprint_a_version_1_manifest(conn, schema, store,
                                                                                      s3_client, bucket):
    """The same day (a manifest_version 2 manifest whose fingerprint is ``row-hash-sum-v99``, a newer version's
    algorithm). ``archive --dry-run`` plans it as "overwrite" with the reason "manifest version 1 cannot prove
    its content: archived again as a new generation": the manifest is version 2, with a fingerprint; compare and
    list say a newer version's algorithm. A user looking for a version-1 manifest finds none. Cause:
    plan._plan_day's last reason is written for a version-1 manifest only (``"manifest version 1 cannot
    prove..."`` for every manifest keeps_existing does not keep). Should: the reason names what it is (a
    fingerprint of an algorithm this version cannot compute, written by a newer archive_pipeline)."""
    spec = TableSpec(**_table(conn, schema))
    archive_partition(conn, spec, DAY, store)
    _rewrite(s3_client, bucket, fingerprint="row-hash-sum-v99:5:123456789")
    [planned] = plan_archive(conn, spec, store, [DAY], overwrite=False)
    assert "version 1" not in planned.reason, planned


def test_compare_does_not_call_equal_a_day_the_next_archive_run_refuses_as_another_zones_period(conn, schema,
                                                                                              store):
    """A day archived in UTC; the user then sets the table's ``timezone: Europe/Berlin`` (the day's rows, all
    between 00:01 and 00:05 UTC, are the same rows in Berlin's day). ``compare`` says "equal" (exit 0, no note)
    and ``list --check-source`` "archived" with no note; yet the next ``archive`` run of the day fails it
    (ForeignArchiveError: "its archive holds the daily period 2024-03-10 in UTC, and the table is now configured
    as daily in Europe/Berlin: another period with the same key, not this one's rows"), and ``verify``, ``prune``
    and Dagster's ``source_unchanged`` say the same. README: a zone change "is named as that by compare, list
    --check-source, verify ...". Cause: plan._compare_days (and plan._day_statuses) add layout_change only to a
    day that differs; an equal fingerprint hides it. Should: compare and list name the zone change for the day
    (not a bare "equal"), or the other readers accept it; never both verdicts for one day."""
    table = _table(conn, schema)
    archive_partition(conn, TableSpec(**table), DAY, store)
    berlin = TableSpec(**{**table, "timezone": "Europe/Berlin"})
    with pytest.raises(ArchiveError, match="another period"):  # (the premise: the next run refuses the day)
        archive_partition(conn, berlin, DAY, store)
    [compared] = compare_days(conn, berlin, store, [DAY])
    [listed] = day_statuses(conn, berlin, store, [DAY], check_source=True)
    assert not (compared.result == "equal" and "Europe/Berlin" not in compared.note), compared
    assert "Europe/Berlin" in listed.note, listed


def test_a_day_column_change_is_not_identical_to_archive_and_compare_while_unprovable_to_prune(conn, schema,
                                                                                              store):
    """A day archived with ``day_column: at``; the user then sets ``day_column: at2`` (a column holding the same
    instants). The next ``archive`` run skips the day ("identical archive exists", state skipped: Dagster shows
    it green) and ``compare`` says "equal" with no note; but ``verify --deep`` gives no verdict and ``prune`` (the
    removal) refuses it for good: "its archive holds the rows whose 'at' falls in 2024-03-10, and the table's
    day_column is 'at2' now: other rows are the day's ...; archive the day again with overwrite". README: a
    day_column change "is named as that by compare, list --check-source, verify". A user sees a green, identical,
    equal day that retention never removes. Cause: archive.py checks only another_period (not the day column)
    before skipping, and plan._compare_days names layout_change only for a day that differs. Should: the readers
    agree: compare (and the skip) name the day_column change, or the removal proves the day as the others do."""
    table = _table(conn, schema)
    archive_partition(conn, TableSpec(**table), DAY, store)
    moved = TableSpec(**{**table, "day_column": "at2"})
    [compared] = compare_days(conn, moved, store, [DAY])
    [planned] = plan_archive(conn, moved, store, [DAY], overwrite=False)
    assert planned.action == "skip", planned  # (the premise: the next run skips it as identical)
    with pytest.raises(ArchiveError, match="day_column is 'at2' now"):  # (the premise: the removal refuses it)
        remove_day(conn, moved, DAY, store, dry_run=True)
    assert not (compared.result == "equal" and "at2" not in compared.note), compared


def test_list_check_source_does_not_say_an_empty_archived_day_left_the_source(conn, schema, store):
    """A day without rows archived as empty (a manifest, ``"empty": true``, no object); the source still has no
    rows of it. ``compare`` says "equal: archived as empty; the source still has no rows", and plain ``list``
    "no rows: a manifest and no object"; ``list --check-source`` says of the same day "no longer in the source",
    as if rows had been there and gone (removed, deleted): it never had any. Cause: plan._day_statuses notes
    every day not present with check_source as "no longer in the source", before the empty day's own note.
    Should: the empty day's own words (no rows, as archived), as list and compare say."""
    spec = TableSpec(**_table(conn, schema, rows=0))
    archive_partition(conn, spec, DAY, store)
    [compared] = compare_days(conn, spec, store, [DAY])
    assert compared.result == "equal" and "still has no rows" in compared.note  # (the premise)
    [listed] = day_statuses(conn, spec, store, [DAY], check_source=True)
    assert listed.state == "empty" and "no longer in the source" not in listed.note, listed
