"""Hunt 9 (og): real PostgreSQL faults during restore, compare, deep verification, removal and list.

Each fault is real (a lock held by another session so that ours waits at a known point and meets its
lock_timeout, a backend terminated from another session); what must hold: a clear, typed error naming
table, day, cause and remedy, retryable exactly when a retry can help, and nothing left behind (no
partial rows, no temp or staging table, no advisory lock, no removal half done, no manifest mark saying
something that did not happen).
"""

from __future__ import annotations

import json

import pytest
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline_tests.test_lifecycle import DAYS, events  # noqa: F401 - the fixture

DAY = DAYS[0]


def _day_rows(conn, schema: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= '2024-03-10+00' AND "
                                "created_at < '2024-03-11+00'").format(sql.Identifier(schema, "events"))).fetchone()[0]


def _manifest(s3_client, bucket: str, spec) -> dict:
    key = keys.manifest_key(keys.table_day_key(spec, spec.period(DAY), "archive"))
    return json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_removal_whose_commit_the_server_refuses_takes_its_pending_mark_back(pg, conn, events, store, s3_client,
                                                                                bucket):
    """A table whose DELETE audit trigger only logs (retention.allow_delete_triggers: true), as a deferred
    constraint trigger (it logs at COMMIT, the usual way to log a statement's net effect). While the removal
    runs, another session holds the audit table (a VACUUM FULL, a migration of the log), so the COMMIT's
    deferred audit INSERT meets the removal's lock_timeout and PostgreSQL answers the COMMIT with an error:
    the transaction is rolled back, every row of the day is still in the source.

    What happens: the removal treats every failure of the COMMIT as "the COMMIT got no answer: it may have
    happened" and leaves the manifest marked `removed: pending` (a removal in progress) for a removal that
    PostgreSQL said did not happen; the day cannot be archived again until a later removal settles it.
    Should: an error answer to the COMMIT is a COMMIT that did not happen: the proven manifest is put back
    without the mark (as for any failure before the COMMIT), and the error is the lock_timeout, retryable,
    naming table and day, with no note that the removal may have happened."""
    schema = events
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"},
                     retention={"keep_days": 30, "action": "delete", "allow_delete_triggers": True})
    audit = sql.Identifier(schema, "audit")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, at timestamptz DEFAULT now())").format(audit))
    conn.execute(sql.SQL("CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "INSERT INTO {a} (id) VALUES (OLD.id); RETURN NULL; END $$").format(
        f=sql.Identifier(schema, "log_delete"), a=audit))
    conn.execute(sql.SQL("CREATE CONSTRAINT TRIGGER log_delete AFTER DELETE ON {t} DEFERRABLE INITIALLY DEFERRED "
                         "FOR EACH ROW EXECUTE FUNCTION {f}()").format(
        t=sql.Identifier(schema, "events_20240310"), f=sql.Identifier(schema, "log_delete")))
    archive_partition(conn, spec, DAY, store)
    with pg.connect() as holder, pg.connect() as removing:
        holder.execute("BEGIN")
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(audit))
        removing.execute("SET lock_timeout = '500ms'")
        with pytest.raises(ArchiveError) as caught:
            remove_day(removing, spec, DAY, store)
        holder.execute("ROLLBACK")
    err = caught.value
    assert _day_rows(conn, schema) == 300  # PostgreSQL rolled the removal back
    assert _manifest(s3_client, bucket, spec).get("removed") is None, _manifest(s3_client, bucket, spec)["removed"]
    assert (err.table, err.day) == (spec.name, DAY.isoformat()) and err.retryable, str(err)
    assert "may have happened" not in " ".join([str(err), *getattr(err, "__notes__", [])]), err.__notes__
