"""Hunt 4, class: concurrent operations on the same table-day (two runs, a run and a reader, a run and a
removal or restore), forced into one interleaving by the fault proxy's ``hold`` or a lock the test holds.
Each test fails on a bug and passes once it is fixed."""

from __future__ import annotations

import datetime as dt

from archive_pipeline.core import plan
from archive_pipeline.core.archive import archive_partition
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - fixture
from archive_pipeline_tests.test_race_hunt import in_thread, proxied

DAY = dt.date(2024, 3, 10)


def test_compare_racing_an_overwrite_does_not_call_the_day_different(pg, conn, events, store, s3, bucket):
    """A user runs `archive-pipeline compare --day 2024-03-10` while another run (the CLI's `archive
    --overwrite`, or a Dagster run with overwrite) archives the same day again. compare reads the manifest
    (generation 1), fingerprints the source (equal), then HEADs the manifest's object; the overwrite committed
    generation 2 and retired generation 1 in between. compare reports the day as `differs` ("the archive's
    object is not as recorded: object ... is missing") and exits 1, though the day's archive is whole and
    equal to the source at every moment. It should look at the manifest again (as `verify` and deep
    verification do when the object is gone) and compare against the archive the day has now: `equal`."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as other:
        held = proxy.add(Fault(method="HEAD", path=r"/2024-03-10\.jsonl\.zst$", action="hold", times=1))
        thread, outcome = in_thread(lambda: plan.compare_days(conn, spec, proxied(proxy, bucket), [DAY]))
        try:
            assert proxy.wait_held(1), outcome
            again = archive_partition(other, spec, DAY, store, overwrite=True)
            assert again.generation == 2 and not again.skipped
        finally:
            held.gate.set()
            thread.join(60)
    assert "error" not in outcome, repr(outcome.get("error"))
    [comparison] = outcome["result"]
    assert comparison.result == "equal", comparison
