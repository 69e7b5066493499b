"""Hunt 10 (pi): a process killed (SIGKILL) between two steps of a multi-step operation, then the next run."""

from __future__ import annotations

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
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
