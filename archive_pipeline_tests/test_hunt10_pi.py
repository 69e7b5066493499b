"""Hunt 10 (pi): a process killed (SIGKILL) between two steps of a multi-step operation, then the next run."""

from __future__ import annotations

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.test_integrity import D, _killed_child, _open_uploads, big, stored_keys  # noqa: F401


@pytest.mark.parametrize("point", [("after-call", "UploadPart", 1), ("after-call", "CompleteMultipartUpload", 1)])
def test_a_killed_overwrite_s_leftovers_do_not_outlive_the_day_s_removal(pg, s3, conn, schema, big, store, bucket,
                                                                         s3_client, tmp_path, point):
    """A user archives day D, later runs `archive --overwrite --day D` (late rows), and that process is SIGKILLed
    mid-upload (an open multipart upload of generation 2 and its upload marker are left) or right after the
    upload completed (a whole uncommitted generation 2 object is left). The README: "What a killed run leaves in
    the store is removed by the next run of the day". The next run of the day is its retention removal (`prune`,
    the `source_removed` asset): it proves and deletes the day, marks it done, and leaves the killed run's open
    upload / uncommitted object and the marker in the store for good: a removed day is never archived again, and
    only an archive run tidies (archive._tidy); the removal (lifecycle._remove / settle) never does. Expected:
    after the removal the day's keys are exactly what its manifest names, and no multipart upload is open."""
    spec = {"name": big.name, "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    first = archive_partition(conn, big, D, store)
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, True, temp, point)
    assert [k for k in stored_keys(s3_client, bucket) if k.endswith(".uploading")]  # the killed run's marker
    table = TableSpec(**{**spec, "retention": {"keep_days": 1, "action": "delete"}})
    removal = remove_day(conn, table, D, store)
    assert removal.rows == 30000
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "big"))).fetchone()[0] == 0
    manifest = load_manifest(store, first.key)
    assert manifest["removed"]["state"] == "done"
    assert _open_uploads(s3_client, bucket) == [], "the killed overwrite's multipart upload is left open"
    assert stored_keys(s3_client, bucket) == sorted([first.key, first.manifest_key]), \
        "the killed overwrite's leftovers outlive the day's removal"


@pytest.mark.parametrize("action", ["drop", "delete"])
def test_a_removal_killed_after_its_commit_then_restored_is_not_recorded_as_never_removed(
        pg, s3, conn, schema, store, bucket, action):
    """`prune --day D` (drop or delete) is SIGKILLed after the removing transaction committed, before the "done"
    mark: D's rows are gone and its manifest says "pending". The user needs the rows and runs `restore --day D
    --into original`: it loads them (the restore never looks at the pending mark). The next run of the day (the
    daily archive run, or a removal) settles the mark: txid_status says the removal committed, but since the
    source now holds exactly the archived rows, lifecycle._committed decides "the removal never took effect (after
    a server crash, PostgreSQL hands out again the id of a transaction that wrote nothing)" and takes the mark
    back: the manifest no longer records that D was ever removed, and the log tells a false story of a server
    crash. Without the kill (removal done, then the same restore) the manifest keeps its "done" mark and `list`
    says the day is back in the source, restored after its removal. Expected: the same record either way
    (the restore into the original table, which holds the table-day lock, settles a pending mark first; or the
    settle does not take a restored day for an id handed out again)."""
    from archive_pipeline.local.local_stack import create_sample_events

    from archive_pipeline_tests.test_letgo import DAY, _killed

    create_sample_events(conn, [DAY], rows_per_day=200, schema=schema)
    spec = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
            "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": action}}
    table = TableSpec(**spec)
    archived = archive_partition(conn, table, DAY, store)
    _killed(pg, s3, bucket, conn, {"do": "remove", "spec": spec, "day": DAY.isoformat(),
                                   "kill": ["before-call", "PutObject", 2]})  # committed, not marked done
    assert load_manifest(store, archived.key)["removed"]["state"] == "pending"
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))).fetchone()[0] == 0
    assert restore_day(conn, store, table, DAY, into="original").inserted == 200
    assert archive_partition(conn, table, DAY, store).skipped  # the next (daily) run of the day
    mark = load_manifest(store, archived.key).get("removed")
    assert mark is not None and mark["state"] == "done", \
        f"the committed removal of {DAY} is no longer recorded: {mark}"
