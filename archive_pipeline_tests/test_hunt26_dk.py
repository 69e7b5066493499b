"""Hunt 26 (dk): a line-by-line review of the last session's fixes to the Dagster layer and the command line, and
the same bug still alive on a sibling path."""

from __future__ import annotations

import json

import pytest

from archive_pipeline.core import keys
from archive_pipeline.core.config import parse_config
from archive_pipeline.defs.checks import verify_result
from archive_pipeline_tests.test_hunt17_wk import _reseal
from archive_pipeline_tests.test_hunt25_cp import DAY, TEXT_TABLE, TWO_ROWS, _archived_table
from archive_pipeline_tests.test_hunt25_db import RETENTION, _retired
from archive_pipeline_tests.test_hunt_cli import cli


def test_verify_deep_of_a_day_an_early_release_removed_sends_the_user_to_an_archive_that_cannot_change_it(
        pg, s3, bucket, conn, schema, s3_client, tmp_path, archive_env):
    """Scenario: an early release (fingerprint row-hash-sum-v1) archived DAY and its prune removed the day from the
    source (manifest marked removed, state done; the archive is the only copy, intact). After the upgrade the
    operator's nightly `archive-pipeline verify --deep --json` (README: the proof of every archived day) reaches
    the day. `prune` says "already removed", `verify` says ok, `list` says "deleted from the source", and since
    7e62e5c the removal asset in Dagster finds the day removed already (its object checked by size, MD5 and
    SHA-256: retention_assets._removed_problems), because "archive it again cannot be done (the source holds
    nothing of it) and is no damage".

    Now: the command line's sibling path was left as it was: cli.verify -> verify.deep_verify_of -> _prove answers
    the uncomputable fingerprint with an OLDER problem, so the day is FAILED (exit 1), and cli._verify_remedy's
    OLDER branch advises "archive the day again (archive-pipeline archive --table ... --day ... --overwrite) to
    record a fingerprint this version computes". Following it verbatim does nothing: the source holds no rows of
    the day, so archive answers "no-data" (exit 0) and the next verify --deep fails the same way with the same
    advice, every night, for an intact archive.

    Should: a removed day whose fingerprint this version cannot compute is checked as the removal asset checks it
    (verify_archive deep: size, MD5, SHA-256; rows not re-proven by this version, said in a note), not failed with a
    remedy that cannot be followed; at the very least, its remedy is never the archive command that changes
    nothing. Fix idea: in cli.verify (or deep_verify_of), for a manifest marked removed whose
    fingerprint.why_uncomputable is not None, run verify_archive(..., deep=True) instead of the proof, as
    retention_assets._removed_problems does; or make _verify_remedy's OLDER branch say so for a removed day."""
    table, env, mkey = _archived_table(pg, s3, bucket, conn, schema, tmp_path, TEXT_TABLE, TWO_ROWS, **RETENTION)

    def removed_by_an_early_release(manifest: dict) -> None:
        _retired(manifest)
        manifest["removed"] = {"at": "2025-01-02T03:04:05+00:00", "action": "delete", "state": "done",
                               "by": "retention", "relation": f"{schema}.ev", "rows": 2}

    _reseal(s3_client, bucket, mkey, removed_by_an_early_release)
    conn.execute(f"DELETE FROM {schema}.ev")
    pruned = cli(env, "prune", "--dry-run", "--day", str(DAY))
    assert pruned.returncode == 0 and "already removed" in pruned.stdout, (pruned.stdout, pruned.stderr)  # premise

    first = cli(env, "verify", "--deep", "--json", "--day", str(DAY))
    if first.returncode == 0:
        return  # checked as the removal asset checks it: nothing to follow
    [day] = json.loads(first.stdout)["days"]
    remedy = day.get("remedy", "")
    followed = cli(env, "archive", "--overwrite", "--day", str(DAY))  # what the remedy says to run
    again = cli(env, "verify", "--deep", "--json", "--day", str(DAY))
    assert again.returncode == 0 or "--overwrite" not in remedy, (
        f"verify --deep failed an intact removed day, advising: {remedy!r}; followed, archive said "
        f"{followed.stdout.strip()!r} (exit {followed.returncode}) and verify --deep failed again: {again.stdout}")


def _removed_by_an_older_release(s3_client, bucket, schema: str, mkey: str, conn, sealed) -> None:
    """DAY's manifest as a release whose fingerprint this version cannot compute (``sealed``) sealed it, marked
    removed (done) by its prune; the source holds none of its rows."""
    def removed(manifest: dict) -> None:
        sealed(manifest)
        manifest["removed"] = {"at": "2025-01-02T03:04:05+00:00", "action": "delete", "state": "done",
                               "by": "retention", "relation": f"{schema}.ev", "rows": 2}

    _reseal(s3_client, bucket, mkey, removed)
    conn.execute(f"DELETE FROM {schema}.ev")


def _newer(manifest: dict) -> None:
    """``manifest`` as a newer release's, whose fingerprint algorithm this version does not know."""
    manifest["fingerprint"] = "row-hash-sum-v99:2:" + manifest["fingerprint"].rsplit(":", 1)[1]


@pytest.mark.parametrize("sealed", [_retired, _newer], ids=["older", "newer"])
def test_verify_deep_of_a_removed_day_it_cannot_prove_checks_its_object_and_says_its_rows_are_not_proven(
        pg, s3, bucket, conn, schema, s3_client, tmp_path, archive_env, sealed):
    """The class of the test above, as the removal asset's check (retention_assets._removed_problems) has it: an
    older or a newer version's fingerprint, verify --deep (JSON and text) passes the intact removed day, saying its
    rows are not proven by this version; its object altered, it fails as damaged (a backup), not as an older one's."""
    table, env, mkey = _archived_table(pg, s3, bucket, conn, schema, tmp_path, TEXT_TABLE, TWO_ROWS, **RETENTION)
    _removed_by_an_older_release(s3_client, bucket, schema, mkey, conn, sealed)
    passed = cli(env, "verify", "--deep", "--json", "--day", str(DAY))
    assert passed.returncode == 0, passed.stdout
    [day] = json.loads(passed.stdout)["days"]
    assert day["ok"] and "not proven by this version" in day["note"], day
    said = cli(env, "verify", "--deep", "--day", str(DAY))
    assert said.returncode == 0 and "not proven by this version" in said.stdout, said.stdout
    data_key = mkey.removesuffix(keys.MANIFEST_SUFFIX)
    s3_client.put_object(Bucket=bucket, Key=data_key, Body=b"altered\n")
    failed = cli(env, "verify", "--deep", "--json", "--day", str(DAY))
    [day] = json.loads(failed.stdout)["days"]
    assert failed.returncode == 1 and "backup of the bucket" in day["remedy"], day  # (damaged: its only copy)


def test_archive_intact_with_deep_check_of_a_removed_day_it_cannot_prove_is_not_red(
        pg, s3, bucket, conn, schema, s3_client, tmp_path, archive_env, store):
    """The same day on the deep_check path of archive_intact (checks.verify_result with a connection, which calls
    deep_verify_of): passed, its verdict saying its rows are not proven by this version, never "NOT as recorded";
    worded as a proof (the removal's), so a later re-check of the record does not call it never proven."""
    table, env, mkey = _archived_table(pg, s3, bucket, conn, schema, tmp_path, TEXT_TABLE, TWO_ROWS, deep_check=True,
                                       **RETENTION)
    _removed_by_an_older_release(s3_client, bucket, schema, mkey, conn, _retired)
    spec = parse_config({"tables": [table]}).tables[0]
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    obj = manifest["object"]
    expected = {"bytes": obj["bytes"], "md5": obj["md5"], "rows": manifest["rows"], "format": manifest["format"],
                "compression": manifest["compression"], "empty": False, "object_key": obj["key"],
                "manifest_key": mkey}
    verdict = verify_result(store, spec, DAY, expected, deep=True, conn=conn)
    assert verdict.passed, verdict.problems
    assert verdict.verified.startswith("content proven") and "not proven by this version" in verdict.verified, \
        verdict.verified
