"""Hunt 4 mm: what is in the bucket cannot be trusted. Manifests edited by hand into valid, resealed JSON
with wrong or hostile values, data objects replaced, stray keys: every reader and writer must refuse with a
typed error naming table, day and what is wrong, and no run may delete an object it does not own.
Real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.manifest import decode_manifest, encode_manifest

DAY = dt.date(2024, 3, 10)
NEXT = dt.date(2024, 3, 11)


def _ev(conn, schema: str, name: str = "ev") -> None:
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 'a'), (2, '2024-03-10 02:00+00', 'b'), "
                         "(3, '2024-03-10 03:00+00', NULL), (4, '2024-03-11 01:00+00', 'next'), "
                         "(5, '2024-03-11 02:00+00', 'next2')").format(table))


def _spec(schema: str, name: str = "ev", **extra) -> TableSpec:
    return TableSpec(name=f"{schema}.{name}", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"}, **extra)


def _key(store, spec: TableSpec, day: dt.date) -> str:
    return keys.table_day_key(spec, spec.period(day), store.prefix)


def _raw(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _edit(s3_client, bucket: str, key: str, change) -> dict:
    """Read the manifest at ``key``, let ``change`` edit it, write it back resealed (a hand edit)."""
    manifest = {k: v for k, v in decode_manifest(_raw(s3_client, bucket, key)).items() if k != "manifest_sha256"}
    change(manifest)
    s3_client.put_object(Bucket=bucket, Key=key, Body=encode_manifest(manifest))
    return manifest


def _exists(s3_client, bucket: str, key: str) -> bool:
    return s3_client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0 and any(
        o["Key"] == key for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"])


def test_rerun_of_a_day_whose_manifest_names_another_days_object_deletes_that_object(conn, schema, store, temp_dir,
                                                                                    s3_client, bucket):
    """Two days archived. 2024-03-10's manifest is edited by hand (resealed) so that object.key names
    2024-03-11's object. The user runs 2024-03-10 again (no overwrite). What happens: the run sees the day's
    object "damaged" (size/ETag differ), archives the day again and retires the object the old manifest
    named, i.e. DELETES 2024-03-11's data object: 2024-03-11's manifest now names a missing object, its
    only copy gone. What should happen: a manifest whose object.key is not one of this day's generation
    keys is refused (typed error naming table, day and the foreign key), and nothing outside the day's
    own keys is ever deleted."""
    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    other = archive_partition(conn, spec, NEXT, store, temp_dir=temp_dir)
    assert _exists(s3_client, bucket, other.key)
    _edit(s3_client, bucket, keys.manifest_key(_key(store, spec, DAY)),
          lambda m: m["object"].update(key=other.key))
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError:
        pass  # a refusal is fine; deleting the other day's object is not
    assert _exists(s3_client, bucket, other.key), "a run of 2024-03-10 deleted 2024-03-11's data object"


def test_overwrite_of_a_day_whose_manifest_lists_another_days_object_as_superseded_deletes_it(
        conn, schema, store, temp_dir, s3_client, bucket):
    """Two days archived. 2024-03-10's manifest gets 2024-03-11's object key added to its ``superseded``
    list (hand edit, resealed). The user archives 2024-03-10 again with overwrite. What happens: after the
    commit the run deletes every key the previous manifest listed as superseded, unchecked, so 2024-03-11's
    data object is deleted. What should happen: only keys of this day's own generations are ever deleted
    (the tidying before the run already checks the day's listing; the commit's deletes do not)."""
    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    other = archive_partition(conn, spec, NEXT, store, temp_dir=temp_dir)
    _edit(s3_client, bucket, keys.manifest_key(_key(store, spec, DAY)),
          lambda m: m.update(superseded=[other.key]))
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
    except ArchiveError:
        pass
    assert _exists(s3_client, bucket, other.key), "an overwrite of 2024-03-10 deleted 2024-03-11's data object"


def test_restore_into_original_follows_a_hand_edited_source_relation_into_another_table(conn, schema, store,
                                                                                       temp_dir, s3_client, bucket):
    """2024-03-10 of ``ev`` archived, then its rows deleted from ``ev`` (retention, say). The manifest's
    ``source_relation`` is edited by hand (resealed) to name another table of the database, ``victim``, of
    the same columns. The user restores the day of the configured table ``ev`` into="original". What
    happens: the rows are inserted into ``victim`` (the fingerprint of victim's day rows equals the
    manifest's, so it commits), and ``ev`` stays without them. What should happen: "original" is the
    configured table (or its own partition / day table); a manifest naming an unrelated relation is refused
    with a typed error naming table, day and the relation, and nothing is written to another table."""
    from archive_pipeline.core.restore import restore_day

    spec = _spec(schema)
    _ev(conn, schema)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text)").format(sql.Identifier(schema, "victim")))
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE at < '2024-03-11+00'").format(sql.Identifier(schema, "ev")))
    _edit(s3_client, bucket, keys.manifest_key(_key(store, spec, DAY)),
          lambda m: m.update(source_relation=f"{schema}.victim"))
    try:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    except ArchiveError:
        pass
    victim = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "victim"))).fetchone()[0]
    assert victim == 0, f"restoring {spec.name} into its original table wrote {victim} rows into {schema}.victim"


def test_a_manifest_naming_another_days_object_with_its_digests_is_skipped_onto_and_verified_green(
        conn, schema, store, temp_dir, s3_client, bucket):
    """Two days archived. 2024-03-10's manifest is edited by hand (resealed): its object now names
    2024-03-11's data object, with that object's size, ETag, MD5 and SHA-256 (a bucket "repair" that
    pointed the day at the wrong file). The day's rows in the source are unchanged. What happens: a re-run
    of 2024-03-10 skips ("identical archive", a green partition), and ``verify --download`` (verify_archive
    with the manifest's own expectations, as the command line calls it) finds nothing wrong: the day is
    green while its archive holds 2024-03-11's rows. What should happen: an object key that is not one of
    the day's own generation keys is a problem of the manifest (refused by the run, reported by verify),
    naming table, day and the foreign key."""
    from archive_pipeline.core import plan
    from archive_pipeline.core.verify import verify_archive

    spec = _spec(schema)
    _ev(conn, schema)
    conn.execute(sql.SQL("INSERT INTO {} VALUES (6, '2024-03-11 03:00+00', 'next3')").format(
        sql.Identifier(schema, "ev")))  # both days hold 3 rows
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    other = archive_partition(conn, spec, NEXT, store, temp_dir=temp_dir)
    day_key = _key(store, spec, DAY)
    other_obj = decode_manifest(_raw(s3_client, bucket, other.manifest_key))["object"]
    _edit(s3_client, bucket, keys.manifest_key(day_key), lambda m: m.update(object=dict(other_obj)))
    archived = plan.lookup_manifests(store, spec, [DAY])[spec.period(DAY)].archived
    problems = verify_archive(store, day_key, archived.expected if archived else {}, deep=True,
                              owner=(spec.name, DAY.isoformat()),
                              temp_dir=temp_dir)
    skipped = None
    try:
        skipped = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).skipped
    except ArchiveError:
        pass
    assert problems and not skipped, (problems, skipped)


@pytest.mark.parametrize("generation", [0, -4])
def test_an_absurd_generation_in_the_manifest_makes_an_overwrite_write_over_the_archived_object(
        conn, schema, store, temp_dir, s3_client, bucket, generation):
    """2024-03-10 archived (3 rows, generation 1 at the day's key). Its manifest's ``generation`` is edited
    by hand (resealed) to 0 or a negative number. A row of the day is then deleted in the source and the
    user archives the day again with overwrite. What happens: the next generation is computed as
    generation + 1 <= 1, i.e. the day's base key, which is where the archived object lives: the new
    (smaller) data is uploaded over it before the manifest commits, and since its key equals the new
    one it is neither kept nor retired, so the archived 3 rows exist nowhere any more (the README: an
    overwrite that archives fewer rows keeps the previous object). What should happen: a generation that
    is not a positive integer consistent with ``object.key`` is refused as a bad manifest (or the new data
    goes past every generation stored), and the archived object is never written over."""
    import hashlib

    spec = _spec(schema)
    _ev(conn, schema)
    first = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _edit(s3_client, bucket, keys.manifest_key(_key(store, spec, DAY)), lambda m: m.update(generation=generation))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 3").format(sql.Identifier(schema, "ev")))
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
    except ArchiveError:
        pass
    stored = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=keys.day_prefix(first.key))
              .get("Contents", [])]
    digests = {hashlib.md5(_raw(s3_client, bucket, k)).hexdigest() for k in stored}
    assert first.md5 in digests, "the archived 3-row object of 2024-03-10 was written over by the overwrite"


def test_a_manifest_edited_to_empty_with_rows_is_proven_and_the_source_rows_removed_with_no_archive(
        conn, schema, store, temp_dir, s3_client, bucket):
    """2024-03-10 archived (3 rows). Its manifest is edited by hand (resealed) to ``"empty": true,
    "object": null`` and nothing else: still ``rows: 3`` and the 3 rows' fingerprint. What happens: the
    manifest decodes (an empty day needs no object), deep verification takes the "empty day" path and
    compares only the source's fingerprint with the manifest's, finds them equal and calls it proven; the
    removal (retention, delete) then deletes the 3 source rows: they now exist nowhere, and a restore
    finds no object to load. What should happen: a manifest that says empty but records rows (or a
    fingerprint of rows) is inconsistent and refused by decode (a typed error naming table, day and the
    contradiction); the proof fails and nothing is removed."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.verify import deep_verify

    spec = _spec(schema, retention={"keep_days": 1, "action": "delete"})
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _edit(s3_client, bucket, keys.manifest_key(_key(store, spec, DAY)), lambda m: m.update(empty=True, object=None))
    problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    try:
        remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError:
        pass
    left = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at < '2024-03-11+00'").format(
        sql.Identifier(schema, "ev"))).fetchone()[0]
    assert problems and left == 3, (problems, left)


@pytest.mark.parametrize("rows", [4, -1])
def test_a_manifest_whose_rows_disagree_with_its_object_is_proven_then_removed_and_cannot_be_restored(
        conn, schema, store, temp_dir, s3_client, bucket, rows):
    """2024-03-10 archived (3 rows). Its manifest's ``rows`` is edited by hand (resealed) to 4, or -1; object,
    digests and fingerprint untouched. What happens: deep verification (the proof before deletion) calls it
    proven (it compares fingerprints, never the manifest's row count), the removal deletes the day's 3
    source rows, and then every restore of the day is refused ("holds 3 rows but its manifest records
    ..."): the rows exist only in an archive the product itself will not restore. What should happen: a
    manifest whose rows disagree with its fingerprint's count (or is negative) fails the proof (and decode,
    naming the field), so nothing is removed."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline.core.verify import deep_verify

    spec = _spec(schema, retention={"keep_days": 1, "action": "delete"})
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _edit(s3_client, bucket, keys.manifest_key(_key(store, spec, DAY)), lambda m: m.update(rows=rows))
    problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    try:
        remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError:
        pass
    left = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at < '2024-03-11+00'").format(
        sql.Identifier(schema, "ev"))).fetchone()[0]
    restored = None
    if left == 0:
        try:
            restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back",
                                   temp_dir=temp_dir).rows
        except ArchiveError as exc:
            restored = f"refused: {exc}"
    assert problems and left == 3, (problems, left, restored)


def _set_definition_columns(m: dict) -> None:
    m["table_definition"]["columns"] = "id int"


@pytest.mark.parametrize(("edit", "field"), [
    (lambda m: m.update(fingerprint=5), "fingerprint"),
    (_set_definition_columns, "table_definition"),
    (lambda m: m.update(format="parquet"), "format"),
    (lambda m: m.update(compression="brotli"), "compression"),
], ids=["fingerprint-int", "definition-columns-str", "format-parquet-on-csv", "compression-unknown"])
def test_proving_a_sealed_manifest_with_a_mistyped_field_crashes_instead_of_naming_it(
        conn, schema, store, temp_dir, s3_client, bucket, edit, field):
    """A manifest edited by hand (resealed) with one field of the wrong type or value: ``fingerprint`` a
    number, ``table_definition.columns`` a string, ``format`` parquet for a CSV object, ``compression`` a
    codec that does not exist. The user runs ``verify --download`` and ``verify --deep`` (verify_archive
    with deep=True, deep_verify). What happens: a bare AttributeError ('int' object has no attribute
    'rsplit'), TypeError (string indices must be integers), pyarrow's ArrowInvalid, or KeyError 'brotli'
    escapes, naming neither table, day nor manifest (the command line's per-day handling catches only
    ArchiveError and database errors). What should happen: a problem, or a typed ArchiveError naming table,
    day and the manifest's field, like the fields decode already checks (rows, columns, object.md5)."""
    from archive_pipeline.core.verify import deep_verify, verify_archive

    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    key = _key(store, spec, DAY)
    _edit(s3_client, bucket, keys.manifest_key(key), edit)
    outcomes = []
    for name, check in (("verify --download", lambda: verify_archive(
            store, key, {}, deep=True, owner=(spec.name, DAY.isoformat()), temp_dir=temp_dir)),
                        ("verify --deep", lambda: deep_verify(conn, store, spec, DAY, temp_dir=temp_dir))):
        try:
            problems = check()  # the download check need not look at every field; the proof must not pass
            outcomes.append((f"{name}: {problems}", bool(problems) or name == "verify --download"))
        except ArchiveError as exc:
            outcomes.append((f"{name}: {exc}", exc.table == spec.name and exc.day == DAY.isoformat()))
        except Exception as exc:  # noqa: BLE001 - the bug: anything untyped
            outcomes.append((f"{name}: {type(exc).__name__}: {exc}", False))
    assert all(ok for _, ok in outcomes), outcomes


@pytest.mark.parametrize("edit", [
    {"kept": ["archive/some/key"]}, {"kept": None}, {"superseded": None}, {"generation": "two"},
    {"generation": None}, {"removed": "done"},
], ids=["kept-strings", "kept-null", "superseded-null", "generation-str", "generation-null", "removed-str"])
def test_a_rerun_over_a_sealed_manifest_with_a_mistyped_field_fails_as_an_unexpected_error(
        conn, schema, store, temp_dir, s3_client, bucket, edit):
    """A manifest edited by hand (resealed) with one of the fields the archiver reads on a re-run of the day
    (``kept``, ``superseded``, ``generation``, ``removed``) of the wrong type. The user runs the
    day again (overwrite, as after a source fix). What happens: the run fails "an unexpected error
    (AttributeError: 'str' object has no attribute 'get')" / "(TypeError: 'NoneType' object is not
    iterable)" / "(ValueError: invalid literal for int() ...)", remedy "read the message": nothing says the
    manifest is at fault, nor which field. What should happen: the manifest is called unreadable naming the
    field (as decode does for rows, columns, object.key: "its field kept is None, not a list"), so the day
    is archived as a new generation past every stored one, or refused with that message."""
    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _edit(s3_client, bucket, keys.manifest_key(_key(store, spec, DAY)), lambda m: m.update(edit))
    (field,) = edit
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
    except ArchiveError as exc:
        assert "unexpected error" not in str(exc) and field in str(exc), str(exc)


def test_a_manifest_whose_object_key_is_the_manifest_itself_makes_the_rerun_delete_its_own_new_manifest(
        conn, schema, store, temp_dir, s3_client, bucket):
    """2024-03-10 archived. Its manifest's ``object.key`` is edited by hand (resealed) to the manifest's own
    key. The user runs the day again. What happens: the stored "object" (the manifest) has the wrong size,
    so the day is archived again; the commit writes the new manifest and then deletes the keys the previous
    manifest retired, its "object" among them: the manifest just written. The day is left with data and no
    manifest: list and restore say it has no archive ("has no archive for 2024-03-10"), though the run
    succeeded. What should happen: an object key that is not one of the day's data generation keys is
    refused (named) and never deleted; the committed manifest is never deleted by its own run."""
    from archive_pipeline.core.restore import find_manifest

    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest_key = keys.manifest_key(_key(store, spec, DAY))
    _edit(s3_client, bucket, manifest_key, lambda m: m["object"].update(key=manifest_key))
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError:
        return  # a refusal is fine
    assert find_manifest(store, spec, DAY) is not None, f"the run succeeded ({result.key}) but the day has no manifest"


@pytest.mark.parametrize("body", [b"[" * 200_000, b'{"table": ' * 100_000], ids=["nested-arrays", "nested-objects"])
def test_a_deeply_nested_manifest_crashes_every_reader_with_recursion_error(conn, schema, store, temp_dir, s3_client,
                                                                           bucket, body):
    """2024-03-10's manifest replaced by deeply nested JSON (a hostile or runaway writer; 200 kB). What happens:
    ``decode_manifest`` catches only JSONDecodeError and UnicodeDecodeError, so json's RecursionError escapes:
    ``list``/``verify`` (plan.lookup_manifests), deep verification and restore crash with a bare
    RecursionError naming neither table, day nor key, and the re-run fails "an unexpected error
    (RecursionError ...)" instead of calling the manifest unreadable ("no valid archive": the day is
    archived again as a new generation). What should happen: the manifest is unreadable, said with its key,
    by every reader."""
    from archive_pipeline.core import plan
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline.core.verify import deep_verify

    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    s3_client.put_object(Bucket=bucket, Key=keys.manifest_key(_key(store, spec, DAY)), Body=body)
    outcomes = []
    for name, check in (
            ("lookup", lambda: plan.lookup_manifests(store, spec, [DAY])[spec.period(DAY)].problem),
            ("deep_verify", lambda: deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)),
            ("restore", lambda: restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back",
                                            temp_dir=temp_dir)),
            ("re-run", lambda: archive_partition(conn, spec, DAY, store, temp_dir=temp_dir))):
        try:
            check()
            outcomes.append((name, "ok", True))
        except ArchiveError as exc:
            outcomes.append((name, str(exc)[:160], "unexpected error" not in str(exc)))
        except RecursionError as exc:
            outcomes.append((name, f"RecursionError: {exc}", False))
    assert all(ok for *_, ok in outcomes), outcomes


@pytest.mark.parametrize("removed", [["done"], "done"], ids=["list", "string"])
def test_a_removal_over_a_forged_removed_mark_of_the_wrong_type_crashes_with_attribute_error(
        conn, schema, store, temp_dir, s3_client, bucket, removed):
    """2024-03-10 archived; its manifest's removal mark is forged by hand (resealed) as ``"removed": ["done"]``
    or ``"removed": "done"`` (a half-understood edit of the ``{"state": ...}`` object). The user removes the day
    (retention, ``prune``). What happens: ``removal_state`` calls ``.get`` on it and a bare AttributeError
    escapes remove_day (which turns only database errors and ArchiveErrors into typed errors), naming
    neither table, day nor manifest. What should happen: a typed ArchiveError naming table, day and the
    manifest's ``removed`` field (the day is not removed on the strength of such a manifest)."""
    from archive_pipeline.core.lifecycle import remove_day

    spec = _spec(schema, retention={"keep_days": 1, "action": "delete"})
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _edit(s3_client, bucket, keys.manifest_key(_key(store, spec, DAY)), lambda m: m.update(removed=removed))
    try:
        remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert exc.table == spec.name and exc.day == DAY.isoformat() and "removed" in str(exc), str(exc)
