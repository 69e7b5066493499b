"""Hunt 24 (bj): manifest, verify and locks line by line (core/manifest.py, core/verify.py, core/locks.py and their
callers): hostile or damaged manifests, verify's judgements, the per-day advisory lock.

Held up (probed or read, no test here): the lock key hashes table and period together (64 bits; hours by hours
since 1970), is released on every exit path and re-checked (require_lock_held) before publishing; an advisory
lock is per database and per server, as the README says; the legacy shared key keeps an older version's run out.
A damaged manifest whose first bytes forge the store's stand-in marker is refused by verify and list.
"""

from __future__ import annotations

from archive_pipeline_tests.test_hunt17_wk import _archived, _reseal, _run


def test_a_resealed_archived_at_in_year_one_with_an_offset_crashes_every_reader_with_overflow_error(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """Scenario: a day is archived; its manifest is edited and resealed (anyone can: the checksum covers only the
    content) with ``archived_at: "0001-01-01T00:00:00+01:00"``, a valid ISO 8601 time with its offset (the same
    holds for a removal mark's ``at``, or ``source.snapshot_at`` where archived_at is absent). ``verify --day``,
    ``list``, ``compare`` and ``archive`` of the day are run.

    Now: manifest._times_problem accepts the value (fromisoformat parses it and it has an offset), so the manifest
    decodes as trustworthy. Every reader then chooses the day's archive through manifest.day_archive ->
    current_archive -> committed_at -> _instant, which calls ``moment.astimezone(dt.UTC)``: the UTC instant is
    before year 1, and Python raises OverflowError (an ArithmeticError, not the ValueError _instant and
    _could_be_later catch). verify, list and compare exit with "unexpected error (...): OverflowError: date value
    out of range; this is a bug in archive_pipeline", and the archive run fails "an unexpected error ... not
    retried", naming neither the manifest nor the field.

    Should: the manifest is refused where it is decoded, as every other resealed time that is no usable time is
    ("its field archived_at is ..., not a time"), so verify reports that day's manifest as unreadable and the other
    commands treat it as any damaged manifest. Fix idea: in _time_problem, also compute
    ``parsed.astimezone(dt.UTC)`` (catching OverflowError), and let _instant catch OverflowError too."""
    table, _, result = _archived(conn, schema, store)
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m.update(archived_at="0001-01-01T00:00:00+01:00"))
    done, out = _run(pg, s3, bucket, tmp_path, table, "verify")
    assert "OverflowError" not in out and "unexpected error" not in out, out
    assert done.exit_code == 1 and "archived_at" in out, out


def test_a_manifest_whose_bytes_start_with_the_stores_stand_in_marker_fails_the_archive_run_as_an_index_error(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """Scenario: a day is archived; its manifest key is then overwritten (by another tool, a hostile writer, a
    bad copy) with 30 bytes that begin with ``\\x00archive_pipeline:oversized:`` followed by ``x``: not JSON, no
    manifest. ``archive --day`` of the day runs.

    Now: the store signals "too large to read" and "our own damaged copy" in band, as stored bytes starting with
    store.OVERSIZED / OWN_DAMAGED plus a size and an ETag. Bytes read from the bucket that merely begin with the
    marker are taken for such a stand-in: store._stand_in_etag does ``data[len(mark):].decode().split(":", 1)[1]``
    and raises IndexError (decode_manifest's ``int(...)`` of the size would raise a bare ValueError likewise). The
    archive run fails "an unexpected error (IndexError: list index out of range); not retried", naming no manifest
    and no cause (verify and list happen to catch it as a ValueError).

    Should: a stored object is never mistaken for the store's own stand-in: it is refused as what it is, a damaged
    manifest ("not valid JSON"), naming its key, as a manifest of any other garbage bytes is. Fix idea: carry the
    stand-in out of band (a small object or exception type, not bytes), or have the store escape/refuse stored
    bytes that begin with a marker, and make the parsers of the marker raise ManifestError on a malformed tail.

    (Amended with the fix: the archive run names no unreadable manifest, garbage or not: it archives the day
    again, as the README has it ("one damaged ... is 'no valid archive', so the day is simply archived again").
    verify is where the manifest is named; the archive run must do what it does over any garbage manifest.)"""
    table, _, result = _archived(conn, schema, store)
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=b"\x00archive_pipeline:oversized:x")
    done, out = _run(pg, s3, bucket, tmp_path, table, "verify")
    assert done.exit_code == 1 and f"manifest {result.manifest_key} is unreadable: not valid JSON" in out, out
    done, out = _run(pg, s3, bucket, tmp_path, table, "archive")
    assert "IndexError" not in out and "unexpected error" not in out, out
    assert done.exit_code == 0 and ".g2." in out, out  # archived again, as over any unreadable manifest
