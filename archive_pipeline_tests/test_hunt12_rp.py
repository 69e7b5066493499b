"""Hunt 12 (rp): the process SIGKILLed between two steps of archive / restore / prune, and the next run."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest
from psycopg import sql

from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.test_hunt3_o import DAYS, ROOT, _archived, cli, gone, killing_cli, make_env, write_config
from archive_pipeline_tests.test_integrity import _open_uploads, stored_keys


def killing_fn_cli(env: dict[str, str], kill: list, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI in a process that SIGKILLs itself at ``kill`` = [module, function, nth, "before"|"after"]: the
    nth call of ``module.function`` (patched in the module, and in every archive_pipeline module that imported it
    by name), before it runs or right after it returned."""
    done = subprocess.run([sys.executable, "-m", "archive_pipeline_tests.test_hunt12_rp", *args],
                          env={**env, "HUNT12_RP_KILL": json.dumps(kill)}, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == -signal.SIGKILL, f"kill point {kill} not reached: {done.stdout}{done.stderr}"
    return done


def _main_killing() -> None:
    module_name, name, nth, when = json.loads(os.environ.pop("HUNT12_RP_KILL"))
    import archive_pipeline.cli  # noqa: F401 - loads the modules to patch

    module = importlib.import_module(module_name)
    real = getattr(module, name)
    seen = {"n": 0}

    def patched(*a, **k):
        seen["n"] += 1
        if when == "before" and seen["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*a, **k)
        if when == "after" and seen["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    for loaded in list(sys.modules.values()):
        if getattr(loaded, "__name__", "").startswith("archive_pipeline") and getattr(loaded, name, None) is real:
            setattr(loaded, name, patched)
    from archive_pipeline.cli import main

    sys.argv = ["archive-pipeline", *sys.argv[1:]]
    main()




@pytest.mark.parametrize("overwrite", [False, True])
def test_a_killed_overwrite_s_whole_generation_outlives_the_next_run_after_the_format_changed(
        pg, s3, conn, schema, store, bucket, s3_client, tmp_path, overwrite):
    """A day archived in JSONL; `archive --overwrite --day D` is SIGKILLed right after its CompleteMultipartUpload
    answered, before its manifest: a whole uncommitted generation `D.g2.jsonl` (and its `.uploading` marker) is
    left. The user then switches the table to CSV (the default key_template has {ext}) and runs the day again:
    without overwrite it is skipped (the former JSONL archive holds the rows), with overwrite it is written as
    `D.csv`. Either way archive._tidy -> leftovers.tidy_day aborts the JSONL marker (the former-format uploads are
    looked at since hunt 11) but deletes stray generations only of the new key, with the manifest at the new key
    (none): `D.g2.jsonl`, which no manifest names, stays in the store for good. README: "What a killed run leaves in
    the store is removed by the next run of the day, whatever that run does". Should: the run removes the killed
    run's uncommitted generation under the former format too (fix idea: tidy the former key's stray generations
    against the former key's trustworthy manifest, which the run reads anyway for its skip/overwrite decision)."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline_tests.test_hunt11_qc import DAY, _big
    from archive_pipeline_tests.test_integrity import _killed_child

    spec = _big(conn, schema)
    first = archive_partition(conn, TableSpec(**spec), DAY, store)
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, True, temp, ("after-call", "CompleteMultipartUpload", 1))
    stray = first.key.replace("2024-03-10.jsonl", "2024-03-10.g2.jsonl")
    assert stray in stored_keys(s3_client, bucket)  # (the premise: the killed run's whole generation)
    result = archive_partition(conn, TableSpec(**{**spec, "format": "csv"}), DAY, store, overwrite=overwrite)
    assert result.skipped is not overwrite
    left = stored_keys(s3_client, bucket)
    assert stray not in left, f"the killed overwrite's uncommitted generation is left for good: {left}"
    assert not [k for k in left if k.endswith(".uploading")]





def test_archive_after_a_killed_prune_and_a_format_change_says_settled_but_leaves_the_mark_pending(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Declarative table in JSONL, retention drop. `prune --day D` is SIGKILLed after the DROP committed, before the
    "done" mark: D's manifest (at `D.jsonl.zst.manifest.json`) says "pending". The user then switches the table to
    CSV (the default key_template has {ext}, so the day's key moves) and the daily `archive --day D` runs. cli's
    plan finds the pending mark under the former format (plan.lookup_manifests looks there) and calls _settle_day,
    but that calls settle_pending_removal(...) without ``key=``: it looks at the new CSV key, finds no manifest and
    returns outcome "none". The run exits 0 with status "settled" and the message "... left its mark pending,
    which was none ()" (a sentence with nothing in it), and the mark stays "pending". Should: the mark is settled
    where it is (completed: "done"), and the message says what was done. Fix idea: pass the key lookup_manifests
    found (the former-format key) to settle_pending_removal, as remove_day does via archive_key()."""
    from archive_pipeline.core.archive import render_key

    table, spec, store, env = _declarative(conn, schema, s3_client, bucket, tmp_path, pg, s3, "drop")
    key = render_key(spec, DAYS[1], "archive")
    day = ["--day", DAYS[1].isoformat()]
    killing_cli(env, ["before-call", "PutObject", 2, re.escape(key) + r"\.manifest\.json$"], "prune", *day)
    gone(conn)
    assert load_manifest(store, key)["removed"]["state"] == "pending"  # (the premise)
    env["ARCHIVE_PIPELINE_CONFIG"] = str(write_config(tmp_path, [{**table, "format": "csv"}]))
    run = cli(env, "archive", *day)
    said = run.stdout + run.stderr
    assert run.returncode == 0, said
    assert "which was none" not in said, said
    assert load_manifest(store, key)["removed"]["state"] == "done", said




def test_archive_dry_run_after_a_killed_prune_and_a_format_change_counts_the_day_as_changed_since_archived(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Declarative table in JSONL, retention drop. `prune --day D` is SIGKILLed right after its "pending" mark
    landed, before the DROP committed: D's 100 rows are all still in the source, exactly as archived. The user
    switches the table to CSV and plans the day with `archive --dry-run --day D`. The day is rightly refused
    ("its removal ... is unfinished, and the table is now configured otherwise ... configure the table as
    jsonl/zstd again and run the day (or prune) to settle the removal first"), but the summary line counts it as
    "1 refused (changed since archived)": the day did not change (its rows are the archive's), and the summary
    sends the user looking for changed rows / --overwrite. Should: the summary does not call such a refusal a
    change (say "refused (see below)", or count refusals by their cause). Fix idea: cli._archive_plan's summary
    words 'refused' without a cause, or plan records whether a refusal is a change of rows."""
    from archive_pipeline.core.archive import render_key

    table, spec, store, env = _declarative(conn, schema, s3_client, bucket, tmp_path, pg, s3, "drop")
    key = render_key(spec, DAYS[1], "archive")
    day = ["--day", DAYS[1].isoformat()]
    killing_cli(env, ["after-call", "PutObject", 1, re.escape(key) + r"\.manifest\.json$"], "prune", *day)
    gone(conn)
    assert load_manifest(store, key)["removed"]["state"] == "pending"  # (the premise: marked, not committed)
    assert _day_rows(conn, schema, DAYS[1]) == 100
    env["ARCHIVE_PIPELINE_CONFIG"] = str(write_config(tmp_path, [{**table, "format": "csv"}]))
    run = cli(env, "archive", "--dry-run", *day)
    said = " ".join((run.stdout + run.stderr).split())
    assert "is unfinished" in said, said  # (the refusal itself is right)
    assert "changed since archived" not in said, said




@pytest.mark.parametrize("point", ["UploadPart", "CompleteMultipartUpload"])
def test_a_killed_overwrite_s_leftovers_at_the_former_key_outlive_a_run_after_the_key_template_changed(
        pg, s3, conn, schema, store, bucket, s3_client, tmp_path, point):
    """A day archived (Dagster materialized it, recording its key). An overwrite of the day is SIGKILLed mid-upload
    (an open multipart upload of `D.g2.jsonl` and its `.uploading` marker are left) or right after its
    CompleteMultipartUpload (a whole uncommitted generation `D.g2.jsonl` and its marker). The user then changes the
    table's key_template; the next Dagster run of the day passes the recorded key as ``former_keys``
    (defs/assets.former_day_keys), finds the day's archive there and skips the day. But archive._tidy only looks at
    the new key's day prefix (tidy_day's ``others`` are kept only where they share it), so the killed run's open
    upload, its marker and its uncommitted generation at the former key stay in the store for good (no later run
    looks under the former template again). README: "What a killed run leaves in the store is removed by the next
    run of the day, whatever that run does". Should: the run that reads the day's archive at a former key tidies
    that key's day too (fix idea: run tidy_day for the former key with its listing and trustworthy manifest, as
    _tidy_removed does for the key a removal found)."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline_tests.test_hunt11_qc import DAY, _big
    from archive_pipeline_tests.test_integrity import _killed_child

    spec = _big(conn, schema)
    first = archive_partition(conn, TableSpec(**spec), DAY, store)
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, True, temp, ("after-call", point, 1))
    assert [k for k in stored_keys(s3_client, bucket) if k.endswith(".uploading")]  # (the premise: leftovers)
    moved = TableSpec(**{**spec, "key_template": "{prefix}/{schema}.{table}/{date}.{ext}"})
    result = archive_partition(conn, moved, DAY, store, former_keys=[first.key])
    assert result.skipped  # the former key's archive holds the day's rows
    assert _open_uploads(s3_client, bucket) == [], "the killed overwrite's multipart upload is left open for good"
    assert stored_keys(s3_client, bucket) == sorted([first.key, first.manifest_key]), \
        "the killed overwrite's marker / uncommitted generation at the former key is left for good"


if __name__ == "__main__":
    _main_killing()



def _declarative(conn, schema, s3_client, bucket, tmp_path, pg, s3, action):
    from archive_pipeline.local.local_stack import create_sample_events
    create_sample_events(conn, DAYS, rows_per_day=100, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": action}}
    spec, store = _archived(conn, [table], s3_client, bucket)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    return table, spec, store, env


def _day_rows(conn, schema, day) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= %s AND created_at < %s").format(
        sql.Identifier(schema, "events")), (f"{day} 00:00+00", f"{day + dt.timedelta(days=1)} 00:00+00")).fetchone()[0]


def test_prune_after_a_killed_prune_and_a_restore_into_original_says_completed_but_leaves_the_rows(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Declarative table, retention drop. `prune --day D` is SIGKILLed after the DROP committed, before the "done"
    mark (the manifest says "pending"). The user needs D's rows back and runs `restore --day D --into original`:
    it re-creates the partition and loads the 100 rows (exit 0). The next `prune --day D` (D is still due) settles
    the pending mark: lifecycle._remove_day returns as soon as _settle says "completed" and prints "removal
    completed ... 100 rows", exit 0, while all 100 rows of D are still in the source (the settle even records
    "the day's rows in the source were written after it (restored since)"). Only a second prune removes them.
    README: "rows of a removed day that are back, restored into the original table, are proven and removed again
    ... as on the first removal". Should: one prune leaves D removed from the source (or at least does not call
    the day's removal completed while its rows are there). Fix idea: after settling "completed", fall through to
    the done-mark path (rows back -> prove and remove them), as a "done" mark found by the removal does."""
    from archive_pipeline.core.archive import render_key

    table, spec, store, env = _declarative(conn, schema, s3_client, bucket, tmp_path, pg, s3, "drop")
    key = render_key(spec, DAYS[1], "archive")
    day = ["--day", DAYS[1].isoformat()]
    killing_cli(env, ["before-call", "PutObject", 2, re.escape(key) + r"\.manifest\.json$"], "prune", *day)
    gone(conn)
    assert load_manifest(store, key)["removed"]["state"] == "pending"  # (the premise: committed, not marked done)
    back = cli(env, "restore", *day, "--into", "original")
    assert back.returncode == 0 and _day_rows(conn, schema, DAYS[1]) == 100, back.stdout + back.stderr
    pruned = cli(env, "prune", *day)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert _day_rows(conn, schema, DAYS[1]) == 0, \
        f"prune said {pruned.stdout!r} but the day's rows are still in the source"
    assert load_manifest(store, key)["removed"]["state"] == "done"


if __name__ == "__main__":
    _main_killing()
