"""Hunt 24 (by): the archive's own run line by line (core/archive.py): existing-archive checks, skip vs overwrite,
no-data days, and the dry-run plan's agreement with the real run."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from psycopg import sql

from archive_pipeline.core.archive import DayRemovedError, ForeignArchiveError, archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.manifest import encode_manifest
from archive_pipeline.core.plan import plan_archive
from archive_pipeline_tests.helpers import download

DAY = dt.date(2024, 3, 10)


def _events(conn, schema: str, rows: int = 3) -> TableSpec:
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at date, body text)").format(
        sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'row ' || g FROM generate_series(1, %s) g").format(
        sql.Identifier(schema)), (DAY, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="gzip", retention={"keep_days": 1, "action": "delete"})


def test_dry_run_plans_an_overwrite_of_a_removed_day_whose_archive_is_damaged_where_the_run_refuses(
        conn, schema, store, s3_client, bucket):
    """Scenario: a day is archived and then removed from the source (remove_day: the manifest marks it removed;
    its archive is the rows' only copy). Later the archived object is damaged in the store (its bytes replaced),
    and late rows of the day arrive in the source. The operator runs the dry-run plan (plan_archive, no
    overwrite) and then the real run.

    Now: the plan says "overwrite" ("stored archive damaged: ...") for the day: plan._plan_day returns at
    ``if existing.problem`` before any removal rule, while the run refuses it (archive._Archiving.run ->
    _refuse_removed: a removed day whose archive is damaged is never archived again from a different source,
    DayRemovedError). The dry run promises a write the run refuses.

    Should: the plan applies the run's rule for a damaged archive too (keeps_existing / _refuse_removed with the
    day's fingerprint) and says "refuse" with the run's words."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store)
    remove_day(conn, spec, DAY, store)
    key = render_key(spec, DAY, store.prefix)
    obj = [k["Key"] for k in s3_client.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]
           if not k["Key"].endswith(".json")][0]
    s3_client.put_object(Bucket=bucket, Key=obj, Body=b"damaged")
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (99, %s, 'late')").format(sql.Identifier(schema)), (DAY,))

    with pytest.raises(DayRemovedError):
        archive_partition(conn, spec, DAY, store)  # the run's word
    [planned] = plan_archive(conn, spec, store, [DAY], overwrite=False)
    assert planned.action == "refuse", (planned.action, planned.reason)



def test_a_damaged_archive_of_another_database_is_replaced_without_overwrite(conn, schema, store, s3_client, bucket):
    """Scenario: a day's archive at the table's key was written from another database (its manifest's source names
    another database and system identifier: a bucket shared by two clusters, or a database replaced by a new one).
    A run here refuses it as long as it is intact ("archived from database ..., not this one; set overwrite").
    Then the archived object is damaged in the store (replaced by other bytes), and the daily run (no overwrite)
    comes to the day again.

    Now: the run archives this database's rows over it and exits green (a new generation, the manifest replaced):
    _Archiving.run only asks _keep (whose same_source check raises ForeignArchiveError) where the archive is
    intact (``here``); for a damaged one it goes _refuse_removed -> _refuse_lost_rows -> a new generation, and
    no rule compares the manifest's source with this database. The other database's record of the day is replaced
    without overwrite, though the same archive intact was refused.

    Should: the source check applies to a damaged archive too (refuse with ForeignArchiveError, needs_overwrite,
    before anything is written): damage is no proof the archive is this database's to replace."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store)
    key = render_key(spec, DAY, store.prefix)
    mkey = manifest_key(key)
    manifest = json.loads(download(s3_client, bucket, mkey))
    manifest["source"]["database"] = "other_db"
    manifest["source"]["system_identifier"] = "7000000000000000001"
    manifest.pop("manifest_sha256", None)
    s3_client.put_object(Bucket=bucket, Key=mkey, Body=encode_manifest(manifest))
    with pytest.raises(ForeignArchiveError, match="other_db"):
        archive_partition(conn, spec, DAY, store)  # intact: refused, needs overwrite

    s3_client.put_object(Bucket=bucket, Key=manifest["object"]["key"], Body=b"damaged")
    try:
        result = archive_partition(conn, spec, DAY, store)
    except ForeignArchiveError:
        return
    stored = json.loads(download(s3_client, bucket, mkey))
    pytest.fail(f"replaced without overwrite: generation {result.generation}, skipped={result.skipped}, the "
                f"manifest now names database {stored['source']['database']!r}")
