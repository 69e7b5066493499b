"""Hunt 24 (bn): lifecycle and leftovers line by line (archive_pipeline/core/lifecycle.py, core/leftovers.py):
prune, letting the source partition go, keep_days, cleanup of stale uploads and temp objects."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline_tests.test_removalhunt import _aborted_xid, _forge_pending

DAY = dt.date(2024, 3, 10)



def archived(conn, schema: str, store, temp_dir):
    """A table ``t`` whose day of 3 rows was archived (retention action delete configured): the table, its spec
    and the day's archive key."""
    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date NOT NULL, v text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, 'v' || g FROM generate_series(1, 3) g").format(t), (DAY,))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY.isoformat(), format="jsonl",
                     compression="none", retention={"keep_days": 1, "action": "delete"})
    return t, spec, archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).key


def _archived_and_removed(conn, schema: str, store, temp_dir):
    """:func:`archived`, then the day removed: the table, its spec and the day's archive key."""
    t, spec, key = archived(conn, schema, store, temp_dir)
    assert remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 3
    return t, spec, key

def _manifest(s3_client, bucket, key) -> dict:
    return json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read())


def test_late_rows_after_a_removal_from_another_cluster_make_its_pending_mark_taken_back_and_the_rows_overwritable(
        pg, conn, schema, store, s3_client, bucket, temp_dir):
    """Scenario: ``t`` (retention delete) has 3 rows of 2024-03-10, archived and removed by a prune whose "done"
    mark never landed (the manifest says ``pending`` with the removal's xid and its cluster's system identifier).
    The database then moved to a new cluster (pg_upgrade --link keeps it, but a dump/restore or a logical
    migration does not), and 4 late rows of that day arrive there (a delayed batch). The next prune runs.

    Now: remove_day finds the pending mark, _committed sees another cluster's system identifier and falls back to
    the source: "the source still has 4 rows of the day" -> not committed, and _settle takes the mark back (the
    manifest unmarked, as if the 3 rows had never left the source). The proof then refuses the day as changed and
    tells the user to archive it again with overwrite; that overwrite sees an ordinary archived day (no removal
    mark), archives the 4 late rows and retires the object holding the 3 removed rows (not fewer rows, not
    removed: superseded, deleted). The removed rows, whose only copy that object was, are gone for good, though
    every step said green or gave the remedy.

    Should: a source that holds rows of the day which are not the archived ones is no evidence that the removal
    did not commit (late rows arrive after removals); the mark is taken back only when the source still holds
    exactly the archived rows (as the same function already demands of a "committed" status), else it stays
    pending and the removal is refused naming the doubt (or completed, the rows taken as late ones), so a later
    overwrite keeps the removed rows' object (``kept``)."""
    t, spec, key = _archived_and_removed(conn, schema, store, temp_dir)
    here = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]
    # what the old cluster's prune left: the mark pending (its done mark lost), its xid and system the old cluster's
    _forge_pending(store, key, xid=_aborted_xid(pg), system=str(int(here) + 1), action="delete")
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, 'late' || g FROM generate_series(11, 14) g").format(t),
                 (DAY,))
    try:
        remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError:
        pass  # (refused as changed: the late rows are not the archive's)
    mark = _manifest(s3_client, bucket, key).get("removed")
    # the remedy the refusal gives: archive the day again (overwrite)
    first = _manifest(s3_client, bucket, key)["object"]["key"]
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
    listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=first.rsplit("/", 1)[0]).get(
        "Contents", [])]
    assert mark and first in listed, (mark, first, listed)  # the 3 removed rows' only copy


@pytest.mark.parametrize("trigger", ["no xid", "xid too old"])
def test_late_rows_after_a_removal_whose_mark_names_no_known_transaction_keep_the_mark_pending(
        conn, schema, store, s3_client, bucket, temp_dir, trigger):
    """The siblings of the test above on the day's own cluster: the mark names no transaction (an older release
    wrote it), or one PostgreSQL no longer remembers (txid_status NULL), and late rows arrived after the removal.
    Was: taken back ("the source still has 4 rows"), and the overwrite its refusal advised deleted the removed
    rows' only copy. Now: the mark stays pending, settling says "kept pending", the removal (and its dry run) is
    refused naming the doubt, the archive plan refuses without overwrite, and the overwrite keeps that archive."""
    from archive_pipeline.core.lifecycle import RemovalRefused, settle_pending_removal
    from archive_pipeline.core.plan import plan_day

    if trigger == "xid too old":  # (the premise: a fresh cluster no longer tells transaction 3's fate)
        assert conn.execute("SELECT txid_status(3)").fetchone()[0] is None
    t, spec, key = _archived_and_removed(conn, schema, store, temp_dir)
    _forge_pending(store, key, xid=None if trigger == "no xid" else "3")
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, 'late' || g FROM generate_series(11, 14) g").format(t),
                 (DAY,))
    first = _manifest(s3_client, bucket, key)["object"]["key"]
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused, match="stays marked 'pending'.*cannot be told.*4 rows of the day, "
                                                 "which are not the 3 archived") as refused:
            remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir), dry_run=dry_run)
        assert refused.value.needs_overwrite and spec.name in str(refused.value) and DAY.isoformat() in str(
            refused.value)
    settled = settle_pending_removal(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert settled.outcome == "kept pending" and "4 rows of the day" in settled.why
    assert _manifest(s3_client, bucket, key)["removed"]["state"] == "pending"
    assert plan_day(conn, spec, store, spec.period(DAY), overwrite=False, in_source=True).action == "refuse"
    assert plan_day(conn, spec, store, spec.period(DAY), overwrite=True, in_source=True).action == "overwrite"
    with pytest.raises(ArchiveError, match="overwrite"):
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True).rows == 4
    now = _manifest(s3_client, bucket, key)
    assert "removed" not in now and [k["key"] for k in now["kept"]] == [first]
    listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=first.rsplit("/", 1)[0])["Contents"]]
    assert first in listed
