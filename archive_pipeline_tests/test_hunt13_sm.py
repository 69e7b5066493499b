"""Hunt 13 (sm): a review of the newest product commits (batched discovery probes, the dry run's one listing,
verify's manifest read once, footer row counts, the CLI's archive-again commands and per-table failures,
restore's key lookups, keep_marker, the legacy lock's holder)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - fixtures

DAY = dt.date(2024, 3, 10)


def test_a_run_whose_dead_session_it_has_not_noticed_yet_leaves_the_marker_of_the_run_that_took_the_day_over(
        pg, conn, events, store, s3_client, bucket, monkeypatch):
    """Run A (an overwrite of 2024-03-10, two parts) has passed its last checks of the session
    (require_lock_held, same_read_relations) and is about to complete its upload when its session is killed
    (pg_terminate_backend: the table-day lock goes with it). Run B (another overwrite of the day) takes the
    lock, tidies A's upload (aborts it, deletes A's marker) and starts its own upload of the same key, announced
    by the same marker key. A goes on: completing its (aborted) upload fails (UploadPart on an aborted upload: a store
    error), and S3Upload.finish aborts at once, by itself, with keep_marker still False (the run's except, which
    would set it from conn.broken, comes later, and psycopg has not touched the dead session yet anyway): A's
    cleanup deletes the marker at the key, which is B's. B is then killed mid-upload; the next run of
    the day (C, which skips) lists no marker, never lists the uploads, and B's upload stays open for ever.
    a862d9b's keep_marker only covers a failure raised by the session, noticed by psycopg, outside finish(). Should: a run leaves the marker
    alone unless it still holds the day's lock (or the marker is provably its own). Fix idea: before _unmark,
    ask the session (lock_held / SELECT 1) instead of reading conn.broken; or one marker per upload id."""
    import threading

    from archive_pipeline.core import archive as archive_mod
    from archive_pipeline.core.keys import UPLOAD_MARKER_SUFFIX
    from archive_pipeline_tests.test_race_hunt import in_thread, wait_until

    table = sql.Identifier(events, "events")
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN pad text").format(table))
    conn.execute(sql.SQL("UPDATE {} SET pad = repeat(md5(id::text), 800)").format(table))  # ~7.7 MB: 2 parts
    spec = spec_for(events, compression="none")
    archive_partition(conn, spec, DAY, store)
    seams = [(threading.Event(), threading.Event()), (threading.Event(), threading.Event())]
    calls: list[int] = []
    real = archive_mod.same_read_relations

    def held(*args, **kwargs):  # the run's last query of its session passed: just before upload.finish
        result = real(*args, **kwargs)
        n = len(calls)
        calls.append(n)
        if n < 2:
            seams[n][0].set()
            seams[n][1].wait(60)
        return result

    monkeypatch.setattr(archive_mod, "same_read_relations", held)

    def open_uploads() -> list[str]:
        return [u["UploadId"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]

    def marker_keys() -> list[str]:
        return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
                if o["Key"].endswith(UPLOAD_MARKER_SUFFIX)]

    with pg.connect() as a_conn, pg.connect() as b_conn:
        a, a_out = in_thread(lambda: archive_partition(a_conn, spec, DAY, store, overwrite=True))
        try:
            assert seams[0][0].wait(60), a_out
            # A's session killed (waited for: its lock is gone when B asks for it)
            assert conn.execute("SELECT pg_terminate_backend(%s, 10000)", (a_conn.info.backend_pid,)).fetchone()[0]
            b, b_out = in_thread(lambda: archive_partition(b_conn, spec, DAY, store, overwrite=True))
            assert seams[1][0].wait(60), b_out
            assert wait_until(lambda: len(open_uploads()) == 1 and marker_keys()), (open_uploads(), marker_keys())
            b_uploads = open_uploads()
            seams[0][1].set()
            a.join(60)
            assert "error" in a_out, a_out  # A's completion of its aborted upload failed
            conn.execute("SELECT pg_terminate_backend(%s, 30000)", (b_conn.info.backend_pid,))  # B "killed": held for ever
            markers_after_a = marker_keys()
            with pg.connect() as c_conn:
                c = archive_partition(c_conn, spec, DAY, store)  # the next run of the day
            assert c.skipped
            left = [u for u in open_uploads() if u in b_uploads]
            # Now: A's cleanup deleted B's marker, so C never looked for uploads: B's upload is still open
            assert not left, (left, markers_after_a, repr(a_out.get("error"))[:400])
        finally:
            seams[0][1].set()
            seams[1][1].set()


def test_a_nulls_not_distinct_text_key_the_target_still_holds_is_not_called_archived_rows_colliding(
        conn, schema, store, temp_dir):
    """The source's key is UNIQUE NULLS NOT DISTINCT (code text): one row of 2024-03-10 has code NULL. After
    the day was archived, its row 'a' was deleted by mistake; the user restores the day into the original
    table, which still holds the NULL-code row.

    Now: the load hits the key: "Key (code)=(null) already exists."; 0818ef8's _holds_key looks the printed
    value up with the column's equality, ``code = 'null'::text``, which a text column reads without error
    (its docstring counts on a printed null failing to read back): no row matches, so the restore says
    "<table> held no row of that key, and the archived rows break its constraint ... among themselves ...,
    a constraint the archived table did not have" with the remedy to drop the constraint. False: the table
    holds that key (its NULL row), and the archived table had that very constraint.

    Should: say rows of the archive already exist in the table. Fix idea: a printed ``null`` is looked up
    as ``col IS NULL`` (or: counted as held) where the constraint is NULLS NOT DISTINCT
    (pg_index.indnullsnotdistinct)."""
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import RestoreError, restore_day

    t = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (code text, at timestamptz NOT NULL, v text, "
                         "CONSTRAINT events_code_key UNIQUE NULLS NOT DISTINCT (code))").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('a', '2024-03-10 01:00+00', 'x'), (NULL, '2024-03-10 02:00+00', 'y'), "
                         "('c', '2024-03-11 01:00+00', 'next')").format(t))
    spec = TableSpec(name=f"{schema}.events", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE code = 'a'").format(t))
    with pytest.raises(RestoreError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    said = f"{caught.value} {caught.value.remedy or ''}"
    assert "(null)" in said  # the NULL key's violation
    assert "among themselves" not in said and "held no row" not in said, said


def test_a_run_whose_session_died_with_no_other_run_about_leaves_no_upload_marker(
        pg, conn, events, store, s3_client, bucket, monkeypatch):
    """An overwrite of 2024-03-10 (two parts) has read the day and uploaded part 1 when its session dies for a
    reason of its own (pg_terminate_backend here; a server restart, a proxy's idle cut alike). No other run
    touches the day. The run notices at its lock check, fails (retryable), and aborts its own upload.

    Now: a862d9b sets keep_marker whenever the session is gone, so the upload marker
    ``<key>.uploading`` stays in the bucket although this run's upload was aborted and nothing of the day is in
    flight: the README says a multipart upload "deletes [its marker] once the upload is completed or aborted
    (not after a create that timed out or that botocore retried ...)": false for this failure, and the
    stray object stays until some later run of that day (an already archived day is seldom run again).

    Should: the marker is deleted where it is still this run's own (no other run wrote it since). Fix idea:
    remember the marker's ETag when writing it and delete it with If-Match (or compare its body, holding the
    upload id, before the delete); keep it only where it is another run's."""
    import threading

    from archive_pipeline.core import archive as archive_mod
    from archive_pipeline.core.keys import UPLOAD_MARKER_SUFFIX

    table = sql.Identifier(events, "events")
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN pad text").format(table))
    conn.execute(sql.SQL("UPDATE {} SET pad = repeat(md5(id::text), 800)").format(table))  # ~7.7 MB: 2 parts
    spec = spec_for(events, compression="none")
    archive_partition(conn, spec, DAY, store)
    real = archive_mod.same_printed_names
    terminate = threading.Event()

    def killed(a_conn, *args, **kwargs):  # after the day's rows are read, part 1 uploaded: the session dies
        assert conn.execute("SELECT pg_terminate_backend(%s, 10000)", (a_conn.info.backend_pid,)).fetchone()[0]
        terminate.set()  # (the backend is gone: waited for)
        return real(a_conn, *args, **kwargs)

    monkeypatch.setattr(archive_mod, "same_printed_names", killed)
    with pg.connect() as a_conn:
        with pytest.raises(Exception):
            archive_partition(a_conn, spec, DAY, store, overwrite=True)
    assert terminate.is_set()
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # its upload was aborted
    markers = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
               if o["Key"].endswith(UPLOAD_MARKER_SUFFIX)]
    assert markers == [], markers


def test_a_float_key_the_target_still_holds_is_not_called_archived_rows_colliding_under_low_float_digits(
        conn, schema, store, temp_dir):
    """The source's primary key is a double precision value (0.1 + 0.2 = 0.30000000000000004, among others);
    the restoring session has extra_float_digits = 0 (a role's setting: ALTER ROLE ... SET extra_float_digits =
    0, as older reporting tools ask). After 2024-03-10 was archived, one of its rows was deleted by mistake; the
    user restores the day into the original table, which still holds the 0.30000000000000004 row.

    Now: the violation's detail prints the key with the session's 15 digits, "Key (k)=(0.3) already exists.";
    0818ef8's _holds_key looks ``k = '0.3'::double precision`` up, finds no such row, and the restore says
    "<table> held no row of that key, and the archived rows break its constraint ... among themselves ..., a
    constraint the archived table did not have" with the remedy to drop the constraint. False.

    Should: say rows of the archive already exist in the table. Fix idea: read the detail with
    extra_float_digits = 3 pinned for the load (or treat a float key found nowhere as held: its printed form may
    be rounded)."""
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import RestoreError, restore_day

    t = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (k double precision PRIMARY KEY, at timestamptz NOT NULL, v text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (0.1::float8 + 0.2::float8, '2024-03-10 01:00+00', 'x'), "
                         "(7, '2024-03-10 02:00+00', 'y'), (8, '2024-03-11 01:00+00', 'next')").format(t))
    spec = TableSpec(name=f"{schema}.events", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE k = 7").format(t))
    conn.execute("SET extra_float_digits = 0")  # the role's setting
    with pytest.raises(RestoreError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    said = f"{caught.value} {caught.value.remedy or ''}"
    assert "among themselves" not in said and "held no row" not in said, said
