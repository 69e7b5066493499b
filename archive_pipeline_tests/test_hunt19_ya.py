"""Hunt 19 (ya): a review of the two fixes just merged (hunt18 xn: a day's current archive among its keys under every
format, a removal with an overlapping period of another granularity; hunt18 xm: checks comparing the recorded object
key and generation, a deep_check day's replaced archive, the sensor's record of a command-line archive), looking for
regressions and holes in them."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import instance_for_test

from archive_pipeline.core import plan
from archive_pipeline.core.archive import LateRowsError, archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import job_name
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_hunt18_xm import _config as _events_config
from archive_pipeline_tests.test_hunt18_xm import _verify_archives
from archive_pipeline_tests.test_hunt18_xn import DAY, _spec, refuses_the_hour_of_a_removed_day

PERIOD_TEMPLATE = "{prefix}/{schema}.{table}/{period}.{ext}"  # valid for hourly, daily and monthly alike


def _day_of_five(conn, schema: str) -> None:
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, note text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'early' FROM generate_series(1, 5) g", (DAY,))


def test_a_removal_under_a_period_key_template_kept_across_a_granularity_change_is_missed(
        conn, schema, store, temp_dir):
    """Scenario: a daily table (timestamptz day column, retention delete) with ``key_template:
    "{prefix}/{schema}.{table}/{period}.{ext}"`` -- a template the README names valid for every granularity
    (``{period}`` keeps hours, days and months apart). 2024-03-10 holds 5 rows at 14:01..14:05 UTC, is archived
    (``…/2024-03-10.jsonl.zst``) and removed by retention. Then only ``granularity: hourly`` is changed (the template
    still fits) and the hour 2024-03-10-14:00 is archived (a backfill of the new hourly partitions).

    Now: ``_Archiving._removed_in_overlapping`` looks for removals only at the keys the other granularities'
    *default* templates render (``keys.overlapping_period_keys(..., DEFAULT_KEY_TEMPLATES)``:
    ``…/2024/03/2024-03-10.jsonl.zst``), never at the table's own template rendered for the former granularity,
    which is where the removed day's archive is. The hour is archived as a new, empty period: success, rows 0, a
    green partition, exactly the hole hunt18 xn closed for default templates.

    Should: the run refuses the hour (DayRemovedError, permanent) naming the removed day's archive. Fix idea: in
    overlapping_period_keys render the table's own key_template too (it is valid for the former granularity where
    it holds ``{period}`` or the fields that granularity needs), beside the defaults."""
    refuses_the_hour_of_a_removed_day(conn, schema, store, temp_dir, key_template=PERIOD_TEMPLATE)


def _set_back(conn, schema, store, temp_dir):
    """jsonl/zstd archive of 5 rows; format csv/gzip, 3 late rows, overwrite (8 rows, csv key); format set back to
    jsonl/zstd. Returns (jsonl spec, csv result)."""
    _day_of_five(conn, schema)
    as_jsonl = _spec(schema)
    as_csv = _spec(schema, format="csv", compression="gzip")
    assert archive_partition(conn, as_jsonl, DAY, store, temp_dir=temp_dir).rows == 5
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'late' FROM generate_series(6, 8) g", (DAY,))
    newest = archive_partition(conn, as_csv, DAY, store, temp_dir=temp_dir, overwrite=True)
    assert newest.rows == 8
    return as_jsonl, newest


def test_retention_after_the_format_is_set_back_proves_the_day_against_its_superseded_archive(
        conn, schema, store, temp_dir):
    """Scenario: a day archived as jsonl/zstd (5 rows); the format changed to csv/gzip, 3 late rows, the day
    archived again with overwrite (8 rows, ``…/2024-03-10.csv.gz``); the format set back to jsonl/zstd. The archive
    run now skips the day onto the csv archive (hunt18 xn's fix: the day's current archive holds exactly the source's
    8 rows; list and compare say the same). Retention then removes the day (keep_days passed).

    Now: ``lifecycle.archive_key`` (the removal's and prune's choice of the day's archive) was left out of the fix:
    it still takes the manifest at the rendered key whenever there is one, the superseded jsonl archive of 5 rows,
    and proves the source's 8 rows against it: the removal is refused as changed since archived, every retention
    run, for a day whose current archive (the one its Dagster record names, the one ``compare`` calls equal) holds
    exactly its rows.

    Should: the removal proves the day against its current archive (manifest.current_archive, as the run, restore,
    list and compare choose), removes the 8 rows and marks the csv archive. Fix idea: archive_key via
    manifest.day_archive."""
    as_jsonl, newest = _set_back(conn, schema, store, temp_dir)
    assert archive_partition(conn, as_jsonl, DAY, store, temp_dir=temp_dir).skipped  # (the premise: current = csv)
    assert plan.compare_days(conn, as_jsonl, store, [DAY])[0].as_dict()["result"] == "equal"
    try:
        removal = remove_day(conn, as_jsonl, as_jsonl.period(DAY), store, temp_dir=temp_dir)
    except ArchiveError as exc:
        pytest.fail(f"the day's current archive {newest.key} holds exactly the source's 8 rows (the run skipped onto "
                    f"it, compare calls it equal), yet the removal refuses it: {exc}")
    assert removal.rows == 8, removal


def test_a_removed_day_restored_exactly_after_the_format_is_set_back_is_refused_as_changed(
        conn, schema, store, temp_dir):
    """Scenario: as hunt18 xn's: jsonl archive of 5 rows, overwrite as csv/gzip with 8 rows, retention removes the
    day proven against the csv archive, the format is set back to jsonl/zstd; ``restore --into original`` now puts
    back the 8 removed rows (the fix: restore picks the csv archive). Then the day's archive run comes (the
    schedule, a backfill; no overwrite).

    Now: ``_Archiving.run`` finds the removal under the csv key (``_removed_elsewhere``), sees the source holds the
    removed rows exactly (``_refuse_removed_elsewhere`` returns), and then judges the day by the superseded jsonl
    archive at the rendered key (``here``: ``before`` is never asked where a removal elsewhere was found, and
    current_archive is not consulted): ``LateRowsError`` "changed since it was archived … set overwrite" -- a red
    partition for a day whose current archive (the removal-marked csv one) holds exactly the source's rows. At its
    own key the same day is skipped (``_keep``: a removed day whose rows are back exactly).

    Should: the run takes the day's current archive (the removed csv one, as restore just did) and skips onto it, as
    it does when the removal is at the rendered key. Fix idea: where ``elsewhere`` is found and the source holds
    its rows exactly, skip onto ``elsewhere`` instead of judging by ``here``."""
    as_jsonl, newest = _set_back(conn, schema, store, temp_dir)
    as_csv = _spec(schema, format="csv", compression="gzip")
    assert remove_day(conn, as_csv, as_csv.period(DAY), store, temp_dir=temp_dir).rows == 8
    restored = restore_day(conn, store, as_jsonl, DAY, into="original", temp_dir=temp_dir)
    assert restored.rows == 8  # (the premise: the fix's restore picks the csv archive)
    try:
        again = archive_partition(conn, as_jsonl, DAY, store, temp_dir=temp_dir)
    except LateRowsError as exc:
        pytest.fail(f"the removed day's rows are back exactly as archived at {newest.key}, yet the run after the "
                    f"format was set back refuses the day as changed against the superseded jsonl archive: {exc}")
    assert again.skipped and again.rows == 8, again


def test_a_damaged_manifest_under_a_former_formats_key_makes_an_intact_archive_unrestorable(
        conn, schema, store, temp_dir, s3_client, bucket):
    """Scenario: a day archived as csv/gzip (5 rows); the format changed to jsonl/zstd and the day archived again
    with overwrite (the new archive at ``…/2024-03-10.jsonl.zst``, newer; the csv one stays, as the README says).
    The old csv manifest is then damaged at rest (one byte changed: its own ``manifest_sha256`` no longer
    matches). The archive run of the day still skips it (its archive at the rendered key is intact and current);
    then ``restore`` and ``list`` run.

    Now: since hunt18 xn, ``restore.find_manifest`` and ``plan.lookup_manifests`` go through
    ``manifest.day_archive`` even where the rendered key holds an intact manifest, and
    ``_other_format_archives`` decodes every other format's manifest with ``decoded_manifest``, which raises
    ManifestError for the damaged csv one: restore fails and list calls the day's manifest unreadable -- for a day
    whose current archive is intact and restorable, and which restored fine before the fix. Both messages even name
    the intact jsonl manifest as the one that "cannot be trusted" (remedy: restore it from a backup), not the
    damaged csv one. The archive run, which
    skips damaged manifests under other keys (``_archived_elsewhere``: ``there.problem``), disagrees.

    Should: a damaged manifest under another format's key is not the day's current archive (the run's rule): restore
    and list go by the intact one at the rendered key (saying, perhaps, that an unreadable older manifest is
    there). Fix idea: in _other_format_archives, skip (or note) manifests that do not decode, as the run does."""
    _day_of_five(conn, schema)
    as_csv = _spec(schema, format="csv", compression="gzip")
    as_jsonl = _spec(schema)
    old = archive_partition(conn, as_csv, DAY, store, temp_dir=temp_dir)
    new = archive_partition(conn, as_jsonl, DAY, store, temp_dir=temp_dir, overwrite=True)
    assert new.rows == 5 and new.key != old.key
    raw = s3_client.get_object(Bucket=bucket, Key=old.manifest_key)["Body"].read()
    s3_client.put_object(Bucket=bucket, Key=old.manifest_key, Body=raw.replace(b'"rows": 5', b'"rows": 6', 1))
    assert archive_partition(conn, as_jsonl, DAY, store, temp_dir=temp_dir).skipped  # (the run: fine)
    status = plan.day_statuses(conn, as_jsonl, store, [DAY])[0].as_dict()
    conn.execute(f"DELETE FROM {schema}.ev")
    problems = []
    if status["rows"] != 5 or "unreadable" in (status["note"] or ""):
        problems.append(f"list: {status['state']}, {status['rows']} rows: {status['note']}")
    try:
        restored = restore_day(conn, store, as_jsonl, DAY, into="original", temp_dir=temp_dir)
        if restored.rows != 5:
            problems.append(f"restore: {restored.rows} rows")
    except ArchiveError as exc:
        problems.append(f"restore: {exc}")
    assert not problems, (f"the day's current archive {new.key} is intact, but a damaged older manifest at "
                          f"{old.manifest_key} blocks it: " + "; ".join(problems))


def test_an_empty_day_archived_again_still_empty_fails_its_check_as_not_as_recorded(conn, schema, archive_env, store):
    """Scenario: Archive_<schema>_events archives 2024-03-10, a day without rows (an empty archive: its manifest,
    generation 1, recorded with ``generation: 1`` and no object). Later the operator archives a range again from the
    command line with overwrite (``archive-pipeline archive --overwrite``), which rewrites the empty day's manifest
    as generation 2, still empty. Then verify_archives runs (latest_archive_intact, archive_intact).

    Now: hunt18 xm's fix (verify.verify_archive) compares the manifest's generation with the recorded one: "manifest
    generation: 2, recorded 1" is a problem; ``checks._archived_again`` returns None for a recorded empty day whose
    manifest is still empty (``not now.get('key') if empty``), so the problem stands: both checks FAIL, "NOT as
    recorded", red, for an intact empty day whose manifest says exactly what the record says (no rows). Before the
    fix they passed.

    Should: an empty day archived again, still empty, passes (or is "archived again since this was recorded
    (generation 2, no object: an empty day)", passed). Fix idea: in _archived_again, treat a later generation of a
    recorded empty day as archived again; or compare the generation only where the record names an object."""
    create_sample_events(conn, [DAY - dt.timedelta(days=1)], rows_per_day=5, schema=schema)  # DAY: no rows
    config = _events_config(schema)
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        run = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, partition_key=DAY.isoformat())
        assert run.success
        again = archive_partition(conn, spec, spec.period(DAY), store, overwrite=True)  # the command line's
        assert again.empty and again.generation == 2, again  # (the premise)
        found = _verify_archives(defs, instance)
    failed = {name: e.description for name, e in found.items() if not e.passed}
    assert not failed, f"an intact empty day archived again (still empty) fails its checks: {failed}"
