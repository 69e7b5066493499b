"""Hunt 25 (cd): compare and list line by line (plan.compare_days / _compare_days / _absent, plan.day_statuses,
core/listing.py, cli.py's compare and list output, text and JSON): what they say of a day whose archive object is
gone or whose manifest is gone.

Held up (probed or read, no test here): a manifest of another table copied to this table's key is `unreadable` in
list, list --check-source, compare and verify, naming both table-days; compare's HEAD of an equal day's object
catches it missing; compare's fingerprint is over canonical text (the "C" collation, char(n) blanks, -0, numeric
scale, json whitespace, NULL against '') so value-level look-alikes differ or agree as the archive would; the bucket
listing (listing.py) falls back to reading each day on a stray, URL-encoded or oversized listing and treats a day
with any key under its prefix as not absent; list --json and compare --json are valid JSON with every field.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from archive_pipeline.cli import main
from archive_pipeline_tests.test_hunt17_wk import DAY, _archived, _env


def _cli(pg, s3, bucket, tmp_path, table, *args):
    done = CliRunner(env=_env(pg, s3, bucket, tmp_path, table)).invoke(main, [*args, "--day", DAY.isoformat()])
    return done, done.output or ""


def _empty_the_day(conn, schema: str) -> None:
    """The day's rows deleted by hand (no removal recorded), the day after kept."""
    conn.execute(f"DELETE FROM \"{schema}\".events WHERE created_at < '{DAY.isoformat()}'::date + 1")


def test_list_check_source_calls_a_day_archived_and_exits_0_when_its_object_is_gone(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """Scenario: a day is archived (50 rows); its data object is then deleted from the bucket (``aws s3 rm``, a
    lifecycle rule, a bad sync); the manifest stays and the source is unchanged. ``list --check-source --json --day``.

    Now: plan._day_statuses compares the source's fingerprint with the manifest's and, equal, reports state
    ``archived`` with its 2.6 kB, ``"ok": true``, exit 0. It never asks the store for the object (no HEAD), unlike
    compare_days, which for the same day HEADs it (verify.object_problems) and says ``differs``: "the archive's
    object is not as recorded: object ... is missing", exit 1. The one command that fingerprints every day "to find
    days changed since" calls a day with no archive left "archived" and green.

    Should: list --check-source says what compare says for such a day (a HEAD of every archived, non-empty day it
    checks: ``changed`` or ``unreadable`` naming the missing object, exit 1). Fix idea: in _day_statuses, after an
    equal fingerprint, call object_problems(store, archived.manifest) as _compare_days does (a failed HEAD is
    ``not-checked``)."""
    table, _, result = _archived(conn, schema, store)
    s3_client.delete_object(Bucket=bucket, Key=result.key)
    done, out = _cli(pg, s3, bucket, tmp_path, table, "list", "--check-source", "--json")
    [day] = json.loads(out)["days"]
    assert done.exit_code == 1 and day["state"] != "archived", out
    assert "missing" in day["note"], out


def test_compare_of_a_day_gone_from_the_source_says_its_archive_is_the_only_copy_when_its_object_is_gone_too(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """Scenario: a day is archived (50 rows), then its rows are deleted from the source by hand (as many do after
    archiving, and as the README documents compare's "not-in-source" for); its data object is also gone from the
    bucket (deleted, expired by a lifecycle rule). The manifest stays. ``compare --json --day``.

    Now: _compare_days finds the day not present and goes to plan._absent, which builds ``not-in-source`` from the
    manifest alone: no HEAD of the object (the HEAD in _compare_days is only for a day found equal). The answer is
    ``"ok": true``, exit 0, with the note "its archive is its only copy; restore --into original puts it back":
    the 50 rows are in neither place, and a script guarding cleanup with compare is told all is well (the same for a
    day retention removed, whose object is its only copy by design).

    Should: a not-in-source day is the one whose object matters most; compare checks it (one HEAD, as it does for an
    equal day and as ``archive`` does for such a day: "the rows are now in neither place") and reports a missing or
    replaced object as a difference (exit 1) naming it. Fix idea: in _absent's caller, for an archive with rows,
    run object_problems and turn the result into ``differs`` (a failed HEAD: ``not-checked``)."""
    table, _, result = _archived(conn, schema, store)
    _empty_the_day(conn, schema)
    s3_client.delete_object(Bucket=bucket, Key=result.key)
    done, out = _cli(pg, s3, bucket, tmp_path, table, "compare", "--json")
    answer = json.loads(out)
    [day] = answer["days"]
    assert "only copy" not in day["note"] or "missing" in day["note"], out
    assert done.exit_code == 1 and answer["ok"] is False, out


def test_a_day_whose_archive_object_has_no_manifest_is_left_out_of_list_and_called_no_archive_by_compare(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """Scenario: a day is archived (50 rows); its manifest is then lost (deleted by hand or by a lifecycle rule, or a
    run killed between its upload and its manifest), while the 2.6 kB data object, whose metadata names this
    table and day, stays; the day's rows are then deleted from the source by hand. ``list --json --day`` and
    ``compare --day``.

    Now: plan.lookup_manifests finds no manifest (load_manifest: None) and returns ManifestLookup(key, None);
    _day_statuses then skips the day entirely (``archived is None`` and not present: ``continue``), so list prints
    "no days", ``"days": []``, exit 0; compare skips it the same way and says "nothing was compared: 2024-03-10 has
    no rows in PostgreSQL and no archive". The bucket holds the day's rows, the only copy of them (the README: data
    without a trustworthy manifest "might be the only copy of something"), and both commands deny it exists.

    Should: list shows such a day (``unreadable`` or a state of its own: an object and no manifest, naming the key,
    exit 1), and compare never says "no archive" for it. Fix idea: lookup_manifests already has the listing (or
    a HEAD of the data key is one request): a day with a data object of this table-day and no manifest gets a
    ManifestLookup with a problem ("object ... has no manifest"), which both commands already report."""
    table, _, result = _archived(conn, schema, store)
    s3_client.delete_object(Bucket=bucket, Key=result.manifest_key)
    _empty_the_day(conn, schema)
    done, out = _cli(pg, s3, bucket, tmp_path, table, "list", "--json")
    days = json.loads(out)["days"]
    assert [d["day"] for d in days] == [DAY.isoformat()] and done.exit_code == 1, out
    done, out = _cli(pg, s3, bucket, tmp_path, table, "compare")
    assert "no archive" not in out and done.exit_code == 1, out
