"""Hunt 26 (ej): two deployments sharing one bucket and prefix, each archiving ``s.ev`` from its own database
(prod: the database ``postgres``; staging: another database of the same cluster, its own rows), configured with
another format (prod JSONL, staging CSV), so their keys of a day differ only by the extension:
``archive/s.ev/2024/03/2024-03-10.jsonl.zst`` and ``….csv.zst``. Within one configuration such keys are refused at
load; across two deployments nothing refuses them (``leftovers.owned_by``'s docstring says so), and the README
promises that another database's archive is never skipped onto, replaced or taken for this one's.

The day's "archives under the table's other formats and codecs" (meant for this deployment's own former format) are
looked up without asking whose database wrote them: ``manifest._other_format_archives`` (read by restore, list,
compare, verify and the removal through ``day_archive``) and, in the archive run, ``_Archiving._archived_elsewhere``
and ``_Archiving._removed_elsewhere`` / ``_removal_at`` filter by table and day only (``foreign_manifest``), never by
``source`` (``leftovers.same_source``). So each deployment decides its days on the other's archive.
"""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.helpers import decompress, download, read_csv
from archive_pipeline_tests.test_hunt20_zk import _connect_to, _spec, _table, other_db  # noqa: F401 - fixture

DAY = dt.date(2024, 3, 10)


def _values(conn, schema: str, name: str) -> list[str]:
    return [v for (v,) in conn.execute(sql.SQL("SELECT v FROM {} ORDER BY id").format(
        sql.Identifier(schema, name))).fetchall()]


def _staging_csv(s3_client, bucket: str, key: str) -> list[str]:
    return [row["v"] for row in read_csv(decompress(download(s3_client, bucket, key), "zstd"))]


def test_another_databases_archive_under_another_format_refuses_this_databases_own_first_archive(
        pg, conn, schema, other_db, store, s3_client, bucket):  # noqa: F811 - fixture
    """Scenario: prod (database ``postgres``, ``s.ev`` as JSONL) and staging (another database of the cluster, its
    own 50 rows of 2024-03-10, ``s.ev`` configured as CSV) share one bucket and prefix. Prod archives 2024-03-10 to
    ``….jsonl.zst``; then staging's schedule archives the same day: its key, ``….csv.zst``, holds nothing.

    Now: staging's run fails, not retryable: ``ForeignArchiveError: s3://…/2024-03-10.jsonl.zst was archived from
    database 'postgres' …, not this one; if this database replaced that one, set overwrite``. The run takes prod's
    JSONL archive for the day's archive under staging's own *former* format: ``_Archiving._archived_elsewhere``
    (archive.py, via ``_current_elsewhere``) collects every other-extension manifest that names the table and day,
    whoever's database wrote it, and ``_keep`` then refuses it as another database's. Staging can archive no day prod
    archived (and, once staging has, prod none of staging's) unless it overwrites, although nothing is at its key;
    the README's "another database's archive needs overwrite" is about an archive at the run's own key.

    Should: another database's archive under another format's key is not this deployment's former-format archive:
    staging archives its own rows at its own key (prod's archive untouched). Fix idea: in ``_archived_elsewhere``
    (and ``manifest._other_format_archives``) leave out manifests for which ``leftovers.same_source`` is false."""
    _table(conn, schema)
    prod_key = f"archive/{schema}.ev/2024/03/2024-03-10.jsonl.zst"
    staging_key = f"archive/{schema}.ev/2024/03/2024-03-10.csv.zst"
    with _connect_to(pg, other_db) as staging:
        _table(staging, schema, text="'staging ' || g")
        assert archive_partition(conn, _spec(schema), DAY, store).key == prod_key
        prod_manifest = load_manifest(store, prod_key)
        try:
            result = archive_partition(staging, _spec(schema, format="csv"), DAY, store)
        except ArchiveError as exc:
            raise AssertionError(f"staging's own first archive of the day was refused: {exc}") from None
    assert result.key == staging_key and not result.skipped
    assert _staging_csv(s3_client, bucket, staging_key) == [f"staging {g}" for g in range(1, 51)]
    assert load_manifest(store, prod_key) == prod_manifest


def test_a_removal_another_database_recorded_under_another_format_refuses_this_database_as_removed(
        pg, conn, schema, other_db, store, s3_client, bucket):  # noqa: F811 - fixture
    """Scenario: as above, prod (JSONL) also has retention (``delete``): it archives 2024-03-10, proves it and
    removes the day from *its* database (``remove_day``). Staging (another database, CSV, its own 50 rows of the day,
    never removed) then runs 2024-03-10 for the first time.

    Now: staging's run fails, not retryable, with ``DayRemovedError: s.ev 2024-03-10 was removed from the source at …
    after its archive s3://…/2024-03-10.jsonl.zst (jsonl/zstd, the table's format and compression then) was proven,
    and the source now has other rows (50). Nothing was written: that archive is the day's only copy; restore it
    (with the table configured as jsonl/zstd) if you need the rows back``. Nothing was removed from staging; the
    remedy it gives loads prod's rows into staging. ``_Archiving._removed_elsewhere`` → ``_removal_at`` (archive.py)
    honours any removal mark under another extension whose manifest names the table and day
    (``foreign_manifest``), never asking which database it was removed from, and ``_refuse_removed_elsewhere``
    refuses.

    Should: a removal recorded for another database says nothing about this one's source: staging archives its own
    rows at its own key, and prod's removal record stays as it is. Fix idea: ``_removal_at`` (and
    ``_removed_in_overlapping``) skip a mark whose manifest fails ``leftovers.same_source`` for the run's identity."""
    _table(conn, schema)
    spec = _spec(schema, retention={"keep_days": 1, "action": "delete"})
    prod_key = f"archive/{schema}.ev/2024/03/2024-03-10.jsonl.zst"
    staging_key = f"archive/{schema}.ev/2024/03/2024-03-10.csv.zst"
    with _connect_to(pg, other_db) as staging:
        _table(staging, schema, text="'staging ' || g")
        archive_partition(conn, spec, DAY, store)
        assert remove_day(conn, spec, DAY, store).rows == 50  # (prod's day is gone from prod, proven and recorded)
        prod_manifest = load_manifest(store, prod_key)
        try:
            result = archive_partition(staging, _spec(schema, format="csv"), DAY, store)
        except ArchiveError as exc:
            raise AssertionError(f"staging's day was refused as removed from its source: {exc}") from None
        assert len(_values(staging, schema, "ev")) == 50  # (staging's source was never touched)
    assert result.key == staging_key and result.rows == 50
    assert _staging_csv(s3_client, bucket, staging_key) == [f"staging {g}" for g in range(1, 51)]
    assert load_manifest(store, prod_key) == prod_manifest


def test_restore_puts_back_another_databases_rows_archived_under_another_format(
        pg, conn, schema, other_db, store, temp_dir):  # noqa: F811 - fixture
    """Scenario: prod (database ``postgres``, JSONL) archives 2024-03-10 (50 rows ``row 1..50``). Staging (another
    database, CSV, its own rows ``staging 1..50``) is refused the day (see the first test) and, as the refusal
    advises, archives it with overwrite: its CSV archive lands at ``….csv.zst``, beside prod's, later. Prod then
    restores 2024-03-10 into a new table (``restore_day(..., into="new")``, the README's ``restore --day``).

    Now: the restore succeeds, "fingerprint … equals the manifest's", and the new table holds staging's rows
    (``staging 1..50``), not prod's. ``restore.find_manifest`` → ``manifest.day_archive`` picks the day's "current"
    archive among its keys under every format (``_other_format_archives`` keeps any manifest naming the table and
    day, whoever's database wrote it; ``current_archive`` takes the latest), so prod restores another database's
    archive (and likewise prod's re-run of the day is refused as another database's archive, and its removal refused
    with advice to point ARCHIVE_PG_PRIMARY_DSN at staging's database).

    Should: prod's restore puts back prod's archive, the one at its rendered key, the only one its database wrote:
    ``row 1..50``. Fix idea: ``manifest._other_format_archives`` leaves out manifests whose ``source`` is another
    database (``leftovers.same_source`` against the reader's identity), so ``day_archive`` never chooses another
    deployment's archive over this one's."""
    _table(conn, schema)
    spec = _spec(schema)
    with _connect_to(pg, other_db) as staging:
        _table(staging, schema, text="'staging ' || g")
        archive_partition(conn, spec, DAY, store)
        assert archive_partition(staging, _spec(schema, format="csv"), DAY, store, overwrite=True).key.endswith(
            "2024-03-10.csv.zst")
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert _values(conn, schema, "back") == [f"row {g}" for g in range(1, 51)]


def test_a_removal_proves_this_databases_archive_not_anothers_under_another_format(
        pg, conn, schema, other_db, store, s3_client, bucket):  # noqa: F811 - fixture
    """Scenario (the third test's, added by the fixer): prod (JSONL, retention ``delete``) archives 2024-03-10,
    staging (another database, CSV) archives its own rows of the day with overwrite, later, beside it; prod's
    retention then removes the day.

    Was: the removal took staging's CSV archive for the day's current one (``lifecycle.archive_key`` →
    ``manifest.day_archive``) and refused, advising ARCHIVE_PG_PRIMARY_DSN be pointed at staging's database.

    Should: the removal proves prod's rows against prod's archive and removes them; staging's archive and rows
    stay as they are."""
    _table(conn, schema)
    spec = _spec(schema, retention={"keep_days": 1, "action": "delete"})
    staging_key = f"archive/{schema}.ev/2024/03/2024-03-10.csv.zst"
    with _connect_to(pg, other_db) as staging:
        _table(staging, schema, text="'staging ' || g")
        archive_partition(conn, spec, DAY, store)
        archive_partition(staging, _spec(schema, format="csv"), DAY, store, overwrite=True)
        staging_manifest = load_manifest(store, staging_key)
        removal = remove_day(conn, spec, DAY, store)
        assert removal.rows == 50 and removal.archive.endswith(".jsonl.zst")
        assert len(_values(staging, schema, "ev")) == 50
    assert _values(conn, schema, "ev") == []
    assert load_manifest(store, staging_key) == staging_manifest
