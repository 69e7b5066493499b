"""Hunt 10, pd: object store faults during the operations other than the plain archive (restore, compare,
list, verify, removal, settling, overwrite). Each test fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import load_manifest
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_lifecycle import DAYS, spec_for

OBJECT = r"/2024-03-10\.jsonl\.zst$"


def _day_rows(conn, schema: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= '2024-03-10+00' AND "
                                "created_at < '2024-03-11+00'").format(sql.Identifier(schema, "events"))).fetchone()[0]


@pytest.mark.parametrize("fault", [
    Fault(method="HEAD", path=OBJECT, action="set_header", header=("ETag", '"0123456789abcdef0123456789abcdef"')),
    Fault(method="HEAD", path=OBJECT, action="error", status=404, code="NotFound"),
], ids=["etag-altered-once", "404-once"])
def test_removal_is_not_refused_on_one_unconfirmed_head_of_the_proven_object(conn, schema, s3, bucket, store, fault):
    """A user removes a proven, unchanged day (retention `drop`; prune, or the Dagster removal asset). After the
    pending mark is written, the removal asks the store whether the proven object is still there
    (lifecycle._require_proven_object, one HEAD). One HEAD answer is damaged on the way (its ETag header altered;
    a HEAD has no checksum) or is a 404 of a moment's inconsistency, while the object is intact.

    What happens: the removal is refused with a verdict built on that one answer, "its proven archive ... is
    replaced (or gone) (an archive run of the day on another server, on a store that ignores conditional
    writes?)", a false cause; prune lists the day as "refused" and exits 1 (a refusal, not a transient fault).

    What should happen: as everywhere else a HEAD decides (verify.object_problems, compare: "asked again
    before any is believed"), the HEAD that disagrees is asked again; the second answer shows the object
    intact, so the removal goes through and the manifest is marked done."""
    create_sample_events(conn, DAYS, rows_per_day=300, schema=schema)
    spec = spec_for(schema, "drop")
    archive_partition(conn, spec, DAYS[0], store)
    key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(fault)
        faulted = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        removal = remove_day(conn, spec, DAYS[0], faulted, removed_by="test")
        assert fault.hits == 1
    assert removal.rows == 300 and not removal.dry_run
    assert _day_rows(conn, schema) == 0
    assert load_manifest(store, key)["removed"]["state"] == "done"
