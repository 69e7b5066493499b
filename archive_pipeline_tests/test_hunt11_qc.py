"""Hunt 11 (qc): the process killed (SIGKILL) between two steps of a multi-step operation, and the next run."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.test_integrity import _killed_child, _open_uploads, stored_keys

DAY = dt.date(2024, 3, 10)


def _big(conn, schema) -> dict:
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(sql.Identifier(schema, "big")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10', repeat(md5(g::text), 6) "
                         "FROM generate_series(1, 30000) g").format(sql.Identifier(schema, "big")))
    return {"name": f"{schema}.big", "day_column": "at", "start_date": "2024-03-01", "compression": "none"}


def test_a_removal_killed_after_its_done_mark_leaves_a_killed_overwrite_s_upload_open_for_good(
        pg, s3, conn, schema, store, bucket, s3_client, tmp_path):
    """A user's `archive --overwrite --day D` is SIGKILLed mid-upload (an open multipart upload of generation 2
    and its `.uploading` marker are left). Then retention's removal of D (`prune`) is SIGKILLed right after its
    "done" mark landed, before lifecycle._tidy_after_removal looked at the day's keys. The next removal of D
    (the next `prune`) finds the mark done and the source empty and returns "already removed" at once, without
    tidying; no archive run of a removed day comes either. Now: the killed overwrite's multipart upload and
    its marker stay in the store for good (the README: "What a killed run leaves in the store is removed by the
    next run of the day ... or by the day's removal"). Should: a removal that finds the day already removed
    tidies it too (fix idea: call _tidy_after_removal on the already_removed path, or tidy before the done mark)."""
    from archive_pipeline_tests.test_letgo import _killed

    spec = _big(conn, schema)
    first = archive_partition(conn, TableSpec(**spec), DAY, store)
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, True, temp, ("after-call", "UploadPart", 1))
    assert _open_uploads(s3_client, bucket)  # (the premise: the killed overwrite's upload)
    removing = {**spec, "retention": {"keep_days": 1, "action": "delete"}}
    _killed(pg, s3, bucket, conn, {"do": "remove", "spec": removing, "day": DAY.isoformat(),
                                   "kill": ["after-call", "PutObject", 2]})  # committed and marked done
    assert load_manifest(store, first.key)["removed"]["state"] == "done"
    removal = remove_day(conn, TableSpec(**removing), DAY, store)  # the next prune of the day
    assert removal.already_removed
    assert _open_uploads(s3_client, bucket) == [], "the killed overwrite's multipart upload is left open for good"
    assert stored_keys(s3_client, bucket) == sorted([first.key, first.manifest_key]), \
        "the killed overwrite's leftovers outlive the day's removal"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_killed_run_s_upload_is_removed_by_the_next_run_after_the_table_s_format_changed(
        pg, s3, conn, schema, store, bucket, s3_client, tmp_path, overwrite):
    """`archive --day D` (a first archive, or an overwrite) of a table in JSONL is SIGKILLed mid-upload (the OOM
    killer, say): an open multipart upload of the day and its `.uploading` marker are left. The user then
    switches the table to CSV (the default key_template has {ext}, so the day's key moves to `D.csv`) and runs
    the day again: it succeeds, but archive._tidy -> leftovers.tidy_day looks for markers and uploads only
    by the generation pattern of the new key (`D(.gN)?.csv`), so the JSONL upload and its marker, both in the
    very day listing the run made, stay in the store for good (no later run of the day looks at `.jsonl` keys
    again). README: "What a killed run leaves in the store is removed by the next run of the day, whatever that
    run does". Should: the next run aborts the killed run's upload and deletes its marker whatever the format
    now (fix idea: tidy the markers of every format/codec key of the day the listing shows, as the former-format
    lookup already does for manifests)."""
    spec = _big(conn, schema)
    if overwrite:
        archive_partition(conn, TableSpec(**spec), DAY, store)
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, overwrite, temp, ("after-call", "UploadPart", 1))
    assert _open_uploads(s3_client, bucket)  # (the premise: the killed run's upload)
    as_csv = TableSpec(**{**spec, "format": "csv"})
    result = archive_partition(conn, as_csv, DAY, store, overwrite=overwrite)
    assert result.key.endswith(".csv")
    assert _open_uploads(s3_client, bucket) == [], "the killed JSONL run's multipart upload is left open"
    assert not [k for k in stored_keys(s3_client, bucket) if k.endswith(".uploading")], \
        "the killed JSONL run's upload marker is left"


def test_prune_after_a_prune_killed_past_its_done_mark_removes_a_killed_overwrite_s_leftovers(
        pg, s3, conn, schema, store, bucket, s3_client, tmp_path):
    """The command-line side of test_a_removal_killed_after_its_done_mark_...: a user's `archive --overwrite --day
    D` is SIGKILLed mid-upload (an open multipart upload and its `.uploading` marker are left), then `prune --day
    D` is SIGKILLed right after the day's "done" mark landed, before the removal tidied the day's keys. Running
    `prune --day D` again exits 0 and never looks at D (it visits the due days still in the source and those
    whose manifest is still "pending"), and no archive run of a removed day comes: the killed overwrite's upload
    and marker stay in the store for good. Should: the next prune of the day leaves exactly what the day's
    manifest names (fix idea: prune also tidies the due days whose manifest is "done", at the cost of the listing
    it makes anyway, or the removal tidies before it writes its done mark)."""
    import re

    from archive_pipeline.core.archive import render_key
    from archive_pipeline_tests.test_hunt3_o import cli, gone, killing_cli, make_env, write_config

    spec = _big(conn, schema)
    first = archive_partition(conn, TableSpec(**spec), DAY, store)
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, True, temp, ("after-call", "UploadPart", 1))
    assert _open_uploads(s3_client, bucket)  # (the premise: the killed overwrite's upload)
    table = {**spec, "retention": {"keep_days": 1, "action": "delete"}}
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    key = render_key(TableSpec(**table), DAY, "archive")
    killing_cli(env, ["after-call", "PutObject", 2, re.escape(key) + r"\.manifest\.json$"], "prune", "--day",
                DAY.isoformat())  # the pending mark, then the done mark: killed once it landed
    gone(conn)
    assert load_manifest(store, first.key)["removed"]["state"] == "done"
    again = cli(env, "prune", "--day", DAY.isoformat())
    assert again.returncode == 0, again.stdout + again.stderr
    assert _open_uploads(s3_client, bucket) == [], "the killed overwrite's multipart upload is left open for good"
    assert stored_keys(s3_client, bucket) == sorted([first.key, first.manifest_key]), \
        "the killed overwrite's leftovers outlive the day's removal"


def test_archive_of_a_day_whose_prune_was_killed_after_its_commit_does_not_call_it_a_day_without_data(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Declarative table, retention drop. `prune --day D` is SIGKILLed after the drop committed, before the "done"
    mark: D's partition is gone and its manifest says "pending". The README: "the next run of the day, a removal
    ... or an archive, settles the mark first". The user's next command is the daily `archive --day D`: it exits
    0 with status "no-data: no data for this day in PostgreSQL" (cli plans the day from the catalog and never
    calls archive_partition, which settles), says nothing of the archive or the unfinished removal, and the mark
    stays "pending" (list keeps showing "(pending)"). Should: the archive run settles the mark (completes it:
    "done", as prune does), or at least says the day was removed by an unfinished removal and that `prune`
    completes it (not just "no data" for a day that has an archive and an unfinished removal)."""
    import re

    from archive_pipeline.core.archive import render_key
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.test_hunt3_o import DAYS, _archived, cli, gone, killing_cli, make_env, write_config

    create_sample_events(conn, DAYS, rows_per_day=100, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": "drop"}}
    spec, store = _archived(conn, [table], s3_client, bucket)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    key = render_key(spec, DAYS[1], "archive")
    day = ["--day", DAYS[1].isoformat()]
    killing_cli(env, ["before-call", "PutObject", 2, re.escape(key) + r"\.manifest\.json$"], "prune", *day)
    gone(conn)
    assert load_manifest(store, key)["removed"]["state"] == "pending"
    run = cli(env, "archive", *day)
    said = run.stdout + run.stderr
    settled = load_manifest(store, key)["removed"]["state"] == "done"
    told = "pending" in said and "prune" in said
    assert settled or told, said
