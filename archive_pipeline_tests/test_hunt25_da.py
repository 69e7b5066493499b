"""Hunt 25 (da): a review of this session's fixes, round two (the boundary's completeness for every public entry
point on a caller's connection; refuse_other_cluster inside settle_pending_removal).

Held up (probed, no test here): restore of a box[] column (its elements' delimiter ';') from JSONL through the
array fast path limited to base-type elements comes back exact."""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.lifecycle import RemovalRefused
from archive_pipeline.core.manifest import encode_manifest
from archive_pipeline.core.restore import load_into
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.test_hunt25_cs import DAY, _events
from archive_pipeline_tests.test_removalhunt import _aborted_xid
from archive_pipeline_tests.test_restore import download_archive


def test_load_into_on_a_callers_dict_row_connection_fails_a_healthy_jsonl_archive(
        pg, schema, conn, store, s3_client, bucket, temp_dir, tmp_path):
    """Scenario: a library user loads a day's JSONL archive with the documented deep check's loader
    ``load_into(c, path, manifest, target)`` on their own connection opened with ``row_factory=dict_row``
    (as every other public entry point now accepts).

    Now: load_into is the one public function taking a caller's connection that is not behind the boundary
    (session_settings.speaks_utf8 -> callers_connection: tuple rows, %s cursors, default adapters, refuse_unusable):
    _load_jsonl reads its results by position (``conn.execute(...).fetchone()[0]``: ``KeyError: 0``), and then
    _input_settings' finally, putting the session's settings back from a dict_row whose same-named
    ``current_setting`` columns collapsed into one key, fails with ``ValueError: zip() argument 2 is shorter than
    argument 1``, the error the caller sees for an intact archive.

    Should: decorate load_into with @speaks_utf8() like restore_day, deep_verify, compare_days (every public entry
    point on a caller's connection), so its rows come back as the core expects and the caller's factories are
    given back."""
    spec = _events(conn, schema)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest, path = download_archive(s3_client, bucket, result.manifest_key, tmp_path)
    with psycopg.connect(pg.dsn, autocommit=True, row_factory=dict_row) as theirs:
        theirs.execute(sql.SQL("CREATE TEMP TABLE loaded (LIKE {})").format(sql.Identifier(schema, "ev")))
        assert load_into(theirs, path, manifest, sql.Identifier("loaded")) == 5
        assert theirs.execute("SELECT count(*) AS n FROM loaded").fetchone() == {"n": 5}


def test_a_pending_mark_over_a_day_archived_from_a_moved_database_is_refused_by_the_overwrite_its_remedy_names(
        pg, conn, schema, store, temp_dir):
    """Scenario: ``t`` (retention delete) was archived from database ``app_old``; a prune there was interrupted
    before its removal committed (the manifest's mark says ``pending``, its xid rolled back). The database was then
    moved (pg_dump into the database ARCHIVE_PG_DSN now names: same rows, the day's 3 rows all there), as
    happens. The day is archived again: ``archive_partition(..., overwrite=True)`` (``archive --overwrite``).

    Now: _Archiving.run settles the pending mark first (lifecycle.settle_pending_removal), which since this
    session calls refuse_other_cluster: RemovalRefused "t 2024-03-10 stays in the source: the database a removal
    runs on ... is the database '<this>', and the day's archive was taken from the database 'app_old' ...; to fix:
    ... if '<this>' replaced it, archive the day again from it with overwrite, then remove it" — the very command
    that was refused. Prune is refused alike, so the day can never be archived, removed or settled again (only a
    hand edit of the manifest), with every refusal pointing at the overwrite.

    Should: an archive run is no removal: settle a mark from another database/cluster by the source (the rows all
    there: taken back, as _committed does for another cluster's xid) or let an overwrite replace the manifest while
    keeping the old object (kept), and never give as the remedy the command that raised it."""
    from archive_pipeline_tests.test_hunt24_bn import archived

    t, spec, key = archived(conn, schema, store, temp_dir)
    # what the old database's archive and interrupted prune left (a consistent manifest, its checksum recomputed)
    manifest = load_manifest(store, key)
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    body["source"] = {**body["source"], "database": "app_old"}
    body["removed"] = {"at": "2024-03-12T00:00:00+00:00", "action": "delete", "by": "test", "relation": spec.name,
                       "state": "pending", "xid": _aborted_xid(pg), "system": body["source"].get("system_identifier")}
    store.put_bytes(f"{key}.manifest.json", encode_manifest(body), "application/json")
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
    except RemovalRefused as exc:
        raise AssertionError(f"the overwrite its own remedy names is refused: {exc}") from None
