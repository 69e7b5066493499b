"""Hunt 25 (dg): the command line's latest changes reviewed (Run.answer/_outcome, _refused's redaction, verify's
remedies by each problem's kind): what every command prints and exits on every path, and whether problem kinds
steer the remedy right on every path that builds problems."""

from __future__ import annotations

import json

from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline_tests.test_cli import cli, days, edit_config, setup  # noqa: F401 - fixtures


def test_verify_calls_an_archive_intact_whose_object_is_missing_when_the_tables_zone_changed(
        setup, days, s3_client, bucket):
    """Scenario: a day is archived (daily, UTC); its data object is then deleted from the bucket (a lifecycle rule, a
    mistaken ``aws s3 rm``), and the table's timezone is changed in the YAML to Pacific/Kiritimati. ``verify --day D
    --json``.

    Now: verify_archive returns two problems: the OTHER_PERIOD one (another period with the same key) and "object ...
    is missing". cli._verify_remedy tests the kinds in a fixed order, OTHER_PERIOD before DAMAGE, so the remedy says
    "configure the table as it was ... (its archive is intact: it holds that other period's rows)": the archive holds
    nothing, its object is gone, and a user following the advice reconfigures the table and trusts an archive that
    cannot be restored.

    Should: damage (a missing or altered object) outranks the "intact, not this period's" kinds: the remedy is the
    damaged archive's (re-archive where the source still holds the day, else restore the object from a backup), and
    never says "intact" beside a problem proving it is not. Fix idea: in _verify_remedy, check for DAMAGE (and
    UNREADABLE) kinds before NEWER/OLDER/FOREIGN/OTHER_PERIOD, or let those claim intactness only when they are
    the day's only problems."""
    env, spec = setup
    day = days[1].isoformat()
    done = cli(env, "archive", "--day", day)
    assert done.returncode == 0, done.stderr + done.stdout
    s3_client.delete_object(Bucket=bucket, Key=render_key(spec, days[1], "cli"))
    edit_config(env, {"timezone": "Pacific/Kiritimati"})

    done = cli(env, "verify", "--day", day, "--json")
    assert done.returncode == 1, done.stderr + done.stdout
    [result] = json.loads(done.stdout)["days"]
    assert any(p.endswith(" is missing") for p in result["problems"]), result  # (the premise: the object is gone)
    assert "intact" not in result["remedy"], result["remedy"]


def test_verify_deep_calls_an_archive_recorded_empty_damaged_when_late_rows_arrived(
        setup, days, conn, schema, store, temp_dir):
    """Scenario: a day with no rows is archived (as the Dagster run archives it: archive_partition writes a manifest
    recording the day empty). A late row for that day then arrives in the source. ``verify --deep --day D --json``.

    Now: deep_verify's _prove takes the empty manifest's branch, _source_changed says "the source has 1 rows for D
    now, the archive 0" as a plain string. verify.problem_kind reads its start: not "the source's rows for " nor
    "first difference", so DAMAGE; source_side_only is False; cli._verify_remedy gives the damaged archive's advice:
    "a new generation; the damaged one is kept ...; if the source no longer holds it, restore the object or its
    manifest from a backup of the bucket (its versions, a replica) before anything else". Nothing is damaged: the
    manifest is intact and proves the day was empty; the source gained a row (the same for lifecycle's and the
    Dagster checks' source_side_only, which share the rule).

    Should: a source that changed since an empty archive is the source's side (kind SOURCE): the remedy says the
    archive checks out and the source differs (archive the day again with overwrite to take the late rows), never
    sends the user to restore from a backup. Fix idea: _source_changed/_difference return
    ``Problem(..., SOURCE)`` (or words that start as the source side's), so problem_kind and source_side_only see it."""
    env, spec = setup
    env["ARCHIVE_S3_PREFIX"] = "archive"  # (the store fixture's prefix)
    day = days[1].isoformat()
    events, keep = sql.Identifier(schema, "events"), sql.Identifier(schema, "kept_row")
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {} WHERE created_at >= %s AND created_at < %s "
                         "ORDER BY id LIMIT 1").format(keep, events), (days[1], days[2]))
    conn.execute(sql.SQL("DELETE FROM {} WHERE created_at >= %s AND created_at < %s").format(events),
                 (days[1], days[2]))
    result = archive_partition(conn, spec, days[1], store, temp_dir=str(temp_dir))
    assert result.empty and result.rows == 0  # (the premise: the day is archived as empty)
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(events, keep))  # the late row

    done = cli(env, "verify", "--day", day, "--deep", "--json")
    assert done.returncode == 1, done.stderr + done.stdout
    [checked] = json.loads(done.stdout)["days"]
    assert checked["problems"] and "1 rows" in checked["problems"][0], checked
    assert "damaged" not in checked["remedy"] and "backup" not in checked["remedy"], checked["remedy"]
