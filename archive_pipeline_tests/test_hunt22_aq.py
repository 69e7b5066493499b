"""Hunt 22 (aq): the temp file, the sink and the leftovers (core/sink.py, listing.py, leftovers.py, memory.py,
compression.py and their callers in archive.py and store.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading

import pytest
from psycopg import sql

from archive_pipeline.core import store as store_module
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.helpers import download

DAY = dt.date(2024, 3, 10)


def _big_day(conn, schema: str, rows: int = 90_000) -> TableSpec:
    """A day whose CSV (no compression) is over one 5 MiB part: uploaded in parts."""
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, body text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, md5(g::text) || md5((g * 7)::text) "
                         "FROM generate_series(1, %s) g").format(sql.Identifier(schema)), (DAY, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="csv",
                     compression="none")


def _manifest(s3_client, bucket: str, key: str) -> dict:
    return json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_multipart_day_whose_temp_file_changed_after_it_was_hashed_is_published_green_with_another_md5(
        conn, schema, store, s3_client, bucket, temp_dir, monkeypatch):
    """Scenario: a day larger than one part (6+ MiB of CSV, part_size 5 MiB) is written to its temp file, hashed
    on the way in (HashingFile), and its last, partial part is still to be sent when the writer calls finish().
    Between the write and that part's upload one byte of the temp file changes (a flaky disk or RAM behind
    temp_dir, or anything of the same user writing through /proc/<pid>/fd: here one pwrite right before
    S3Upload.finish).

    Now: S3Upload._send_part hashes each part by reading the file again (_md5_of_range) and the ETag check in
    _checked compares the store's multipart ETag with the MD5 of *those* re-read parts, so the upload is
    "verified"; nothing compares the parts' bytes with the MD5 the sink computed while writing (md5_hex is only
    passed on to holds()/_withdraw_if_ours). The run is green and the manifest records md5/sha256 of bytes that
    are not the object's. The single-PUT path (_put_single) does check exactly this ("the temp file does not hash
    to the MD5 computed while writing it"), so a small day is protected and a big one is not.

    Should: the multipart path proves the uploaded bytes are the digested ones before the object counts (e.g.
    hash the parts' bytes in order as they are read and compare that running MD5 with md5_hex in _finish, before
    CompleteMultipartUpload), refusing retryably as _put_single does; never a green manifest whose md5 is not the
    object's."""
    spec = _big_day(conn, schema)
    finish = store_module.S3Upload.finish

    def changed_then_finish(self, fd, size, md5_hex):
        assert size > store.part_size  # (in parts: the last part is sent after this)
        byte = os.pread(fd, 1, size - 2)
        os.pwrite(fd, bytes([byte[0] ^ 0x01]), size - 2)  # one bit of the not yet uploaded tail flips
        return finish(self, fd, size, md5_hex)

    monkeypatch.setattr(store_module.S3Upload, "finish", changed_then_finish)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:  # what the careful behaviour looks like: refused, retryable, nothing green
        assert exc.retryable, exc
        return
    recorded = _manifest(s3_client, bucket, result.manifest_key)["object"]["md5"]
    stored = hashlib.md5(download(s3_client, bucket, result.key)).hexdigest()
    assert stored == recorded, f"green run: the manifest's md5 {recorded} is not the stored object's {stored}"



def _gated_view(conn, schema: str, rows: int, gate_row: int, lock: int) -> TableSpec:
    """``<schema>.v``: a view over ~84 bytes a row whose read, in the archive's COPY only (not its fingerprint),
    waits at row ``gate_row`` for advisory lock ``lock`` and then fails: a day whose read stops where the test
    says, after the first part's bytes are written."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.base (id int, at date, body text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.base SELECT g, %s, md5(g::text) || md5((g * 7)::text) "
                         "FROM generate_series(1, %s) g").format(s), (DAY, rows))
    conn.execute(sql.SQL("""
        CREATE FUNCTION {}.gate(id int, body text) RETURNS text LANGUAGE plpgsql VOLATILE AS $f$
        BEGIN
            IF id = {} AND current_query() ILIKE 'copy%' THEN
                PERFORM pg_advisory_lock_shared({});
                RAISE EXCEPTION 'hunt: the read fails here';
            END IF;
            RETURN body;
        END $f$""").format(s, sql.Literal(gate_row), sql.Literal(lock)))
    conn.execute(sql.SQL("CREATE VIEW {}.v AS SELECT id, at, {}.gate(id, body) AS body FROM {}.base").format(s, s, s))
    return TableSpec(name=f"{schema}.v", day_column="at", start_date="2024-03-01", format="csv", compression="none")


def test_a_day_failing_while_a_part_is_stalled_keeps_its_temp_file_open_for_the_life_of_the_process(
        pg, s3, conn, schema, bucket, temp_dir):
    """Scenario: a day of ~12 MiB of CSV is archived with the store's abort_timeout at 1 s. Its first 5 MiB part
    is sent and the store stalls on it (the proxy holds it); meanwhile the read fails (here: an error raised by
    the source at row 100,000, once the part is held), so the day fails, as it should. The stalled part is then
    answered, the upload's thread ends, and the process lives on (a Dagster run of a range of days, the CLI's
    ranged archive) to archive more days into the same temp_dir.

    Now: S3Upload.abort waits abort_timeout for the part in flight, then _close_fd sees the thread alive and keeps
    the upload's duplicate of the temp file's descriptor ("closed with the process"); when the thread ends (after
    aborting the upload again in _work) nothing closes it. The nameless temp file (8 MiB here) stays allocated in
    temp_dir until the process exits: one stalled part per failed day, and a long ranged run fills temp_dir.

    Should: the last thread of the upload to end closes the descriptor (e.g. _work, on its way out after abort,
    closes ``_fd`` when no sibling is alive, under the condition lock), so a failed day takes no space once its
    threads are done; never a leak that lasts as long as the process."""
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.test_parallelhunt import _descriptors_in

    lock = 0x22A0
    spec = _gated_view(conn, schema, rows=150_000, gate_row=100_000, lock=lock)
    conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
    outcome: dict = {}
    with FaultProxy(s3.endpoint_url) as proxy, pg.connect(application_name="hunt22-aq-stall") as archiving:
        held = proxy.add(Fault(method="PUT", query="partNumber=", action="hold", times=1, hold_timeout=60))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE,
                        abort_timeout=1.0)

        def run() -> None:
            try:
                outcome["result"] = archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        try:
            assert proxy.wait_held(1, timeout=60), outcome
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock,))  # the read goes on, and fails
            thread.join(60)
        finally:
            held.gate.set()
            conn.execute("SELECT pg_advisory_unlock_all()")
            thread.join(60)
        assert isinstance(outcome.get("error"), ArchiveError) and "hunt: the read fails" in str(outcome["error"]), \
            outcome
        for upload_thread in threading.enumerate():  # the stalled part's thread, answered now, ends
            if upload_thread.name.startswith("s3-upload-"):
                upload_thread.join(30)
        assert not [t.name for t in threading.enumerate() if t.name.startswith("s3-upload-")]
        assert proxy.held() == 0
        left = _descriptors_in(temp_dir)
        assert left == [], f"the failed day's upload is over, yet its temp file stays open in temp_dir: {left}"
