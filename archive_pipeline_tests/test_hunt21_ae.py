"""Hunt 21 (ae): a code review of the proofs -- core/verify.py (deep verification and its fallback onto a replaced
archive), core/manifest.py (parsing and validation of a manifest's shape) and defs/checks.py (the asset checks that
judge a day).

Held up (probed, not kept as tests): a manifest at a day's key with ``manifest_version: true`` or ``1.0`` (read as
version 1, which carries no checksum anyway), numbers beyond what Python reads (refused as "not valid JSON"), a
float, bool or negative rows/bytes/generation (refused by _shape_problem / _consistency_problem), a duplicated JSON
key (the last one is what was sealed: no reader sees another value); verify/list/compare of a manifest holding a
lone surrogate escape (said "unreadable", as ValueError is caught there); source_unchanged on a period changed since
(said "another period").
"""

from __future__ import annotations

import datetime as dt

from dagster import instance_for_test

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import job_name
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_cli import cli, days, edit_config, setup  # noqa: F401 - fixtures
from archive_pipeline_tests.test_hunt18_xm import _config as _events_config
from archive_pipeline_tests.test_hunt18_xm import _verify_archives

DAY = dt.date(2024, 3, 10)


def test_a_manifest_with_a_lone_surrogate_escape_fails_the_overwrite_verify_advises_as_an_unexpected_error(
        setup, s3_client, bucket, days):
    """Scenario: a day archived by the command line; its manifest is then damaged at rest or by a migration tool so
    that one string holds a lone UTF-16 surrogate escape (``"archive_pipeline\\ud800"``: valid JSON, which Python
    reads as a str with an unpaired surrogate). ``verify`` says the manifest is unreadable and gives the remedy
    "archive-pipeline archive ... --overwrite (a new generation; the damaged one is kept)". The operator does that,
    and restores the day.

    Now: decode_manifest (core/manifest.py) passes the parsed dict to ``_canonical``, whose ``.encode()`` (strict
    UTF-8) raises UnicodeEncodeError before the checksum is compared. That is no ManifestError: the archive run
    fails with "an unexpected error (UnicodeEncodeError ...); to fix: read the message" (exit 1, the day stays
    damaged: the advised remedy can never work) and ``restore`` with "unexpected error ... this is a bug in
    archive_pipeline: report it". The same damage without the surrogate (a byte of text changed) is overwritten
    fine (generation 2).

    Should: a manifest whose strings cannot be encoded is a damaged manifest like any other (ManifestError "its
    checksum does not match" / "not valid UTF-8 text"), so the overwrite writes a new generation and restore names
    the damaged manifest. Fix idea: in decode_manifest, catch UnicodeEncodeError around the checksum (or encode the
    canonical form with "surrogatepass") and raise ManifestError."""
    env, spec = setup
    day = days[0].isoformat()
    done = cli(env, "archive", "--day", day)
    assert done.returncode == 0, done.stderr
    mkey = keys.manifest_key(keys.table_day_key(spec, spec.period(days[0]), env["ARCHIVE_S3_PREFIX"]))
    raw = s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read()
    s3_client.put_object(Bucket=bucket, Key=mkey,
                         Body=raw.decode().replace('"archive_pipeline"', '"archive_pipeline\\ud800"', 1).encode())
    verified = cli(env, "verify", "--day", day)
    assert verified.returncode == 1 and "--overwrite" in verified.stdout + verified.stderr  # (the premise: advised)
    restored = cli(env, "restore", "--day", day, "--into", "new", "--target",
                   f"{spec.name.split('.')[0]}.restored")
    overwritten = cli(env, "archive", "--day", day, "--overwrite")
    problems = []
    if "UnicodeEncodeError" in restored.stdout + restored.stderr:
        problems.append(f"restore: {(restored.stdout + restored.stderr).strip()[-400:]}")
    if overwritten.returncode != 0:
        problems.append(f"archive --overwrite (exit {overwritten.returncode}): "
                        f"{(overwritten.stdout + overwritten.stderr).strip()[-500:]}")
    assert not problems, "a manifest with a lone surrogate escape is an unexpected error:\n" + "\n".join(problems)


def test_archive_intact_passes_an_archive_replaced_since_the_record_that_holds_another_zones_period(
        conn, schema, archive_env, store):
    """Scenario: Archive_<schema>_events archives 2024-03-10 (UTC; 24 rows a day, one an hour, on 03-09..03-11).
    The operator tries ``timezone: Europe/Berlin`` and archives the day from the command line with ``--overwrite``
    (the core's archive_partition): generation 2 at the same key holds the Berlin day (2024-03-09T23:00Z to
    2024-03-10T23:00Z). The configuration is then set back to UTC, and verify_archives runs.

    Now: verify_result (defs/checks.py) first calls verify_archive with ``period`` (the UTC day), which finds both
    the other period and the recorded object gone; _archived_again then finds generation 2, and the archive is
    checked again with ``verify.verify_archive(store, key, {}, deep=deep, owner=owner, temp_dir=temp_dir)`` -- no
    ``period`` -- so the other period is forgotten: archive_intact and latest_archive_intact PASS, "archived again
    since this was recorded (generation 2 ...); that archive checked as its manifest says", while source_unchanged
    in the same run says "its archive holds the daily period 2024-03-10 in Europe/Berlin ... not this one's rows",
    and restore would put Berlin's rows back as the UTC day.

    Should: the archive found replaced is judged for the period as the table is configured now, as the first pass
    (and an archive never replaced) is: the check fails, naming the other period and the overwrite. Fix idea: pass
    ``period=spec.period(day)`` to the second verify_archive in verify_result."""
    create_sample_events(conn, [DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)], rows_per_day=24,
                         schema=schema)
    utc = _events_config(schema)
    berlin = _events_config(schema, timezone="Europe/Berlin").tables[0]
    with instance_for_test() as instance:
        defs = build_definitions(utc)
        run = defs.resolve_job_def(job_name(utc.tables[0])).execute_in_process(instance=instance,
                                                                              partition_key=DAY.isoformat())
        assert run.success
        again = archive_partition(conn, berlin, berlin.period(DAY), store, overwrite=True)  # the command line's
        assert again.generation == 2, again
        found = _verify_archives(defs, instance)
    assert "Europe/Berlin" in found["source_unchanged"].description  # (the premise: the day holds another period)
    passed = {name: found[name].description for name in ("archive_intact", "latest_archive_intact")
              if found[name].passed}
    assert not passed, f"the checks pass an archive of Berlin's day as the UTC day: {passed}"


def test_verify_deep_proves_the_superseded_archive_at_the_rendered_key_when_the_current_one_differs(
        setup, conn, days):
    """Scenario: a day archived as jsonl/zstd (R1). The table's format becomes csv/gzip, a row of the day is
    corrected (R2) and the day archived again with ``--overwrite``: its current archive is ``….csv.gz`` (list shows
    it; restore restores it). The format is set back to jsonl/zstd (the day is not archived again: a run would skip
    onto the csv archive) and the correction is undone in the source (R1 again). ``verify --deep --day``.

    Now: the command line proves the day's current archive (csv, R2) through deep_verify_of (core/verify.py), which
    finds the source's rows not the archive's; its fallback for "an overwrite that committed meanwhile" then reads
    the manifest at ``keys.table_day_key`` -- the key the configuration renders now, the superseded jsonl archive --
    sees another manifest_sha256, and proves *that* one instead, which equals the source: exit 0, "ok",
    "0 with problems", naming …jsonl.zst. ``list`` says the day's archive is …csv.gz, ``compare`` exits 1 ("differs,
    same row count, different content"), and a restore puts R2 back.

    Should: the fallback proves only a newer archive of the day (the day's current one by manifest.day_archive /
    current_archive, committed after the one proven), never an older one at the rendered key: verify --deep fails
    saying the source's rows are not the archive's, as compare does. Fix idea: in deep_verify_of, re-resolve with
    day_archive(store, spec, day, key, load_manifest(...)) and prove again only where the archive it returns was
    committed after ``manifest`` (committed_at)."""
    env, spec = setup
    day = days[0].isoformat()
    edit = (f"UPDATE {spec.name} SET amount = amount {{}} 1 WHERE id = (SELECT min(id) FROM {spec.name} "
            "WHERE created_at >= %s::date AND created_at < %s::date + 1)")
    assert cli(env, "archive", "--day", day).returncode == 0
    edit_config(env, {"format": "csv", "compression": "gzip"})
    conn.execute(edit.format("+"), (day, day))
    done = cli(env, "archive", "--day", day, "--overwrite")
    assert done.returncode == 0 and ".csv.gz" in done.stdout, done.stdout + done.stderr
    edit_config(env, {"format": "jsonl", "compression": "zstd"})
    conn.execute(edit.format("-"), (day, day))
    compared = cli(env, "compare", "--day", day)
    assert compared.returncode == 1 and "differs" in compared.stdout, compared.stdout  # (the premise)
    verified = cli(env, "verify", "--deep", "--day", day)
    assert verified.returncode != 0, ("verify --deep proves the superseded jsonl archive while the day's current "
                                      f"archive (csv.gz) differs from the source:\n{verified.stdout}")
