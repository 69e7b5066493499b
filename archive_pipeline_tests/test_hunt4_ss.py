"""Hunt 4 (ss): a review of the session's own changes (conditional writes, speaks_utf8, fingerprints, ...)."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import find_manifest, restore_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

DAY = dt.date(2024, 3, 10)


def _table(conn, schema, rows=50, blob=1):
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, blob text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, (SELECT string_agg(md5(g::text || x::text), '') "
                         "FROM generate_series(1, %s) x) FROM generate_series(1, %s) g").format(table),
                 (DAY, blob, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")


def test_a_data_put_whose_answer_is_lost_and_retried_is_not_called_another_runs(conn, schema, s3, bucket,
                                                                                 s3_client, temp_dir):
    """A user archives a day through a store whose answer to the data object's PUT is lost (the connection
    resets after the store kept the object); boto3 retries the PUT as it does every request. The retry
    carries If-None-Match: * and the store answers 412, because the first PUT of this very run landed: the
    run fails with KeyTakenError "written by another run meanwhile" and leaves its own whole object behind,
    published by no manifest. It should see that the object at the key is its own (same MD5/size) and
    commit the day (or at least withdraw it)."""
    spec = _table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        store = S3Store(proxy.client(), bucket)
        proxy.add(Fault(method="PUT", path=r"\.csv$", action="reset_after", times=1))
        try:
            result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        except ArchiveError as exc:
            keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
            pytest.fail(f"{type(exc).__name__}: {exc}; left in the bucket: {keys}")
        assert result.rows == 50
        assert [r.status for r in proxy.requests(method="PUT", path=r"\.csv$")][:1] == ["reset"]
    assert deep_verify(conn, S3Store(s3_client, bucket), spec, DAY, temp_dir=temp_dir) == []



@pytest.mark.parametrize("written", [r"\.csv$", r"\.manifest\.json$"], ids=["data_object", "first_manifest"])
def test_a_write_the_store_lost_once_is_sent_again_not_refused_as_a_missing_key(written, conn, schema, s3, bucket,
                                                                                s3_client, temp_dir):
    """A user archives a new day; the store acknowledges one PUT (the data object's, or the day's first
    manifest's) with an ETag that is not our MD5 and keeps nothing (the proxy's ``lose``). Before today's
    change the write was sent again and the day archived. Now the next attempt carries If-Match: <the ETag of
    that answer> ("replace only our damaged copy"), the key holds nothing, and the store answers 404 NoSuchKey:
    the run fails, "not retried: a retry cannot fix this". What should happen: a key the copy never reached is
    written again (If-None-Match: *, as the first attempt), and the day archives. Cause: store.put_bytes and
    S3Upload's single PUT switch the condition to IfMatch after any ETag mismatch, assuming a damaged copy of
    ours is stored."""
    spec = _table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        store = S3Store(proxy.client(), bucket)
        proxy.add(Fault(method="PUT", path=written, action="lose", times=1))
        try:
            result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        except ArchiveError as exc:
            pytest.fail(f"{type(exc).__name__}: {exc}")
        assert result.rows == 50
    assert deep_verify(conn, S3Store(s3_client, bucket), spec, DAY, temp_dir=temp_dir) == []


def test_a_data_put_answered_with_a_damaged_etag_is_not_called_another_runs(conn, schema, s3, bucket, s3_client,
                                                                            temp_dir):
    """A user archives a new day; the store keeps the data object intact but the ETag of its answer arrives
    altered (a proxy or gateway on the way back). Before today's change the PUT was sent again and the day
    archived. Now the next attempt carries If-Match: <the altered ETag>, which matches nothing stored, the store
    answers 412, and the run fails with KeyTakenError "written by another run meanwhile" about its own intact
    object. What should happen: the day archives (the retry is sent so that it can replace our own copy, which
    an ETag seen altered does not identify). Cause: S3Upload's single PUT (store.py, ``condition = {"IfMatch":
    response["ETag"]}``) trusts the answered ETag as the stored copy's, and a 412 then means "another run"."""
    spec = _table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        store = S3Store(proxy.client(), bucket)
        proxy.add(Fault(method="PUT", path=r"\.csv$", action="set_header",
                        header=("ETag", '"0123456789abcdef0123456789abcdef"'), times=1))
        try:
            result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        except ArchiveError as exc:
            pytest.fail(f"{type(exc).__name__}: {exc}")
        assert result.rows == 50
    assert deep_verify(conn, S3Store(s3_client, bucket), spec, DAY, temp_dir=temp_dir) == []


from archive_pipeline_tests.test_hunt4_gg import encoded_db  # noqa: E402,F401 - the same fixture (databases by encoding)


@pytest.mark.parametrize("archived_in, restored_in", [("EUC_JP", "UTF8"), ("LATIN1", "EUC_JP"), ("UTF8", "EUC_JP")])
def test_an_ascii_day_of_another_encoding_still_restores_and_proves(archived_in, restored_in, encoded_db, conn,
                                                                     store, temp_dir):
    """A user migrated an EUC_JP database to UTF8 (the usual way off a legacy encoding) and restores an archived
    day whose values are plain ASCII into the new database (or the reverse pairs). Until today's change the day
    restored and its fingerprint proved: ASCII hashes alike in every encoding, and the check after loading is
    what tells a provable day from one that is not. Now ``restore._require_provable_encoding`` (and deep
    verification's check in ``verify._prove``) refuses up front, from the manifest's new ``source.encoding``
    alone, "its rows cannot be proven here": no archive of the old database can be restored into the new one
    at all. What should happen: the day is loaded and checked as before; only a fingerprint that then does not
    match may be explained by the encodings (as restore._check does for a manifest without source.encoding)."""
    source = encoded_db(archived_in)
    target = conn if restored_in == "UTF8" else encoded_db(restored_in)
    source.execute("CREATE TABLE ev (at date, v text)")
    source.execute("INSERT INTO ev VALUES (%s, 'plain ascii'), (%s, NULL)", (DAY, DAY))
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(source, spec, DAY, store, temp_dir=temp_dir).rows == 2
    try:
        restored = restore_day(target, store, spec, DAY, into="new", target="public.back", temp_dir=temp_dir)
    except ArchiveError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}")
    assert restored.fingerprint_checked


def test_the_encoding_refusal_does_not_say_utf8_or_utf8(encoded_db, conn, schema, store, temp_dir):
    """A user restores a day of a UTF8 database holding '日本' into an EUC_JP database; it is refused (its v4
    fingerprint cannot be computed in EUC_JP). The message's advice reads "use a database whose encoding is UTF8
    (or UTF8)". Cause: fingerprint.encoding_mismatch appends " (or UTF8)" whenever the target is multibyte,
    without checking that the archived encoding is not UTF8 itself."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (at date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, '日本')").format(table), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(ArchiveError) as refused:
        restore_day(encoded_db("EUC_JP"), store, spec, DAY, into="new", target="public.back", temp_dir=temp_dir)
    assert "UTF8 (or UTF8)" not in str(refused.value), str(refused.value)


def _events(db, schema: str, rows: int) -> None:
    db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    db.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text)").format(sql.Identifier(schema, "ev")))
    db.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 min', 'r' || g "
                       "FROM generate_series(1, %s) g").format(sql.Identifier(schema, "ev")), (f"{DAY} 00:00+00", rows))


def test_a_removals_pending_mark_does_not_replace_a_manifest_committed_meanwhile(encoded_db, conn, schema, s3, bucket,
                                                                                 s3_client, temp_dir):
    """A user removes a proven day (retention delete) while an overwrite of the same day commits from another
    database (or a hot standby: the table-day lock does not exclude it; README: "the removal writes its pending
    mark only over the very manifest it proved"). The overwrite commits between the removal's read of the
    manifest and its PUT of the pending mark (held here by the proxy), and retires the proven object. What
    happens: the pending mark, built from the proven manifest, is PUT unconditionally over the overwrite's
    manifest; the removal deletes the source's 20 rows and marks the day done, naming the proven object, which
    the overwrite has deleted: the removed rows exist nowhere any more (and the new generation is orphaned).
    What should happen: the mark is written only over the manifest that was proven (If-Match its ETag, which
    the store now supports: today's conditional writes), so the removal refuses, retryable, and removes nothing.
    Cause: lifecycle._remove reads ``original`` and compares its sha, then ``store.put_bytes(mkey, pending, ...)``
    without a condition (so do _take_back and _write_manifest)."""
    _events(conn, schema, 20)
    other = encoded_db("UTF8")
    _events(other, schema, 25)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", partitioning={"mode": "column"},
                     retention={"keep_days": 1, "action": "delete"})
    plain = S3Store(s3_client, bucket)
    archive_partition(conn, spec, DAY, plain, temp_dir=temp_dir)
    gate, outcome = threading.Event(), {}
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"manifest\.json$", action="hold", gate=gate, times=1))
        store = S3Store(proxy.client(), bucket)

        def remove() -> None:
            try:
                outcome["removal"] = remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
            except BaseException as exc:  # noqa: BLE001 - looked at below
                outcome["removal"] = exc

        thread = threading.Thread(target=remove)
        thread.start()
        try:
            assert proxy.wait_held(1, timeout=30)
            archive_partition(other, spec, DAY, plain, temp_dir=temp_dir, overwrite=True)
        finally:
            gate.set()
            thread.join(60)
    manifest = find_manifest(plain, spec, DAY)
    stored = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ev"))).fetchone()[0]
    assert manifest["object"]["key"] in stored, (
        f"the manifest names {manifest['object']['key']}, which is gone ({sorted(stored)}); removed: "
        f"{manifest.get('removed')}; source rows left: {left}; removal: {outcome.get('removal')!r}")


def test_a_v4_archive_of_a_type_with_a_cast_to_text_still_compares_equal_after_the_upgrade(conn, schema, s3_client,
                                                                                          bucket, store, temp_dir):
    """A user archived days (fingerprint row-hash-sum-v4) of a table with a composite column whose owner made a
    CAST to text (a lossy one here), then upgrades archive_pipeline. Today's change hashes such a column by its
    output function (concat()) instead of ``::text``, under the same algorithm name "row-hash-sum-v4". What
    happens: compare says the untouched day "differs", and deep verification and restore likewise call every such
    intact archive altered. What should happen: a manifest's recorded algorithm keeps meaning what it meant when
    it was written (the new hashing under a new algorithm name, e.g. v5; old manifests proved as v4 was computed,
    or at most said to be unprovable, never "differs"). Here the old v4 fingerprint is computed with the
    columns as v4 saw them before (no user-type rule: ``::text``). Cause: fingerprint.column_text's new
    concat() branch for a type outside pg_catalog / an enum applies to v3 and v4 alike."""
    from archive_pipeline.core import fingerprint
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.core.plan import compare_days
    from archive_pipeline.core.source import day_filter, describe_relation
    from archive_pipeline_tests.helpers import download

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.pair AS (a int, b text)").format(s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.pair_text({}.pair) RETURNS text LANGUAGE sql IMMUTABLE "
                         "AS 'SELECT ($1).a::text'").format(s, s))
    conn.execute(sql.SQL("CREATE CAST ({}.pair AS text) WITH FUNCTION {}.pair_text({}.pair)").format(s, s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (at date, p {}.pair)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (%s, '(1,x)'), (%s, '(2,y)')").format(s), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    # the manifest as the previous version wrote it: v4 over ``p::text``
    # (fixed by naming the new hashing v5: the previous version's v4, over ``p::text``, is v4 still)
    table = describe_relation(conn, schema, "ev", "at")
    old = fingerprint.compute(conn, table.identifier, table.columns, day_filter(table, spec.period(DAY)),
                              algorithm=fingerprint.V4)
    assert old.algorithm == "row-hash-sum-v4" and str(old) != result.fingerprint  # the two hashings differ
    manifest = decode_manifest(download(s3_client, bucket, result.manifest_key))
    manifest["fingerprint"] = str(old)
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))
    found = compare_days(conn, spec, store, [DAY])
    assert [c.result for c in found] != ["differs"], found
