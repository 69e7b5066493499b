"""Review of the day's changes on main: archives written before them, and the new code paths.

The archive's path is `pg_catalog, <the session's path>, pg_temp` (session_settings): PostgreSQL's own
functions first, the session's path after them, so archives written under the role's path still
prove, skip and restore, and users' functions inside our reads find their unqualified names."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core import fingerprint, source
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)
DEFAULT_PATH = '"$user", public'  # PostgreSQL's default search_path: what archives were written under before


@pytest.fixture
def in_public(conn, schema):
    """A table in public (on every default path) that regclass values name, unqualified there."""
    name = f"{schema}_target"
    conn.execute(sql.SQL("CREATE TABLE public.{} (x int)").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP TABLE IF EXISTS public.{}").format(sql.Identifier(name)))


def _archived_before_the_path_was_pinned(monkeypatch, conn, spec, store, temp_dir):
    """Archive the day as the code before 599c679 did: every session under the role's own path."""
    with monkeypatch.context() as m:
        m.setitem(source.SNAPSHOT_SETTINGS, "search_path", DEFAULT_PATH)
        m.setitem(fingerprint.CANONICAL_SETTINGS, "search_path", DEFAULT_PATH)
        return archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_an_archive_of_regclass_values_written_before_the_pinned_path_still_proves_and_skips(
        fmt, monkeypatch, conn, schema, in_public, store, temp_dir):
    """A regclass naming a table in public printed as "t" under the old (role's) path and as "public.t" under
    pg_catalog, pg_temp: the fingerprint recorded before the change must still match the unchanged source."""
    table = sql.Identifier(schema, "refs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, c regclass)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s)").format(table), (DAY, f"public.{in_public}"))
    spec = TableSpec(name=f"{schema}.refs", day_column="at", start_date=DAY, format=fmt)
    first = _archived_before_the_path_was_pinned(monkeypatch, conn, spec, store, temp_dir)
    assert deep_verify(conn, store, spec, DAY) == []
    assert compare_days(conn, spec, store, [DAY])[0].result == "equal"
    again = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert again.skipped and again.fingerprint == first.fingerprint


def test_rearchiving_a_day_with_regclass_values_archived_before_the_pinned_path_skips_it(
        monkeypatch, conn, schema, in_public, store, temp_dir):
    """The schedule's next run of an unchanged day must skip it, not fail it as changed (LateRowsError)."""
    table = sql.Identifier(schema, "refs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, c regclass)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s)").format(table), (DAY, f"public.{in_public}"))
    spec = TableSpec(name=f"{schema}.refs", day_column="at", start_date=DAY, format="csv")
    first = _archived_before_the_path_was_pinned(monkeypatch, conn, spec, store, temp_dir)
    again = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert again.skipped and again.fingerprint == first.fingerprint


def test_a_pending_mark_whose_put_answer_is_lost_is_taken_back_when_the_removal_fails(conn, schema, store, s3, bucket,
                                                                                       s3_client):
    """The store wrote the pending mark but its answer was lost: nothing was removed, so the manifest must
    be put back as proven (aa256a3 left it pending: it only took back bytes it knew it had written)."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.manifest import decode_manifest
    from archive_pipeline.core.store import S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.helpers import download

    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s), (2, %s)").format(table), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY,
                     retention={"keep_days": 1, "action": "delete"})
    result = archive_partition(conn, spec, DAY, store)
    proven = download(s3_client, bucket, result.manifest_key)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=500, forward=True, times=1))
        with pytest.raises(ArchiveError):
            remove_day(conn, spec, DAY, S3Store(proxy.client(max_attempts=1), bucket, prefix="archive"))
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0] == 2  # nothing removed
    now = download(s3_client, bucket, result.manifest_key)
    assert "removed" not in decode_manifest(now) and now.rstrip() == proven.rstrip()  # (a take-back adds white space: another ETag)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_view_whose_function_relies_on_the_roles_path_still_archives(fmt, conn, schema, store, temp_dir):
    """A view calling a plpgsql function whose body names a table in public unqualified (it worked under
    every session's path before the archive pinned its own to pg_catalog, pg_temp)."""
    lookup = f"{schema}_lookup"
    conn.execute(sql.SQL("CREATE TABLE public.{} (k int, label text)").format(sql.Identifier(lookup)))
    try:
        conn.execute(sql.SQL("INSERT INTO public.{} VALUES (1, 'one')").format(sql.Identifier(lookup)))
        conn.execute(sql.SQL("CREATE FUNCTION {}.label(int) RETURNS text LANGUAGE plpgsql STABLE AS $$ BEGIN "
                             "RETURN (SELECT label FROM {} WHERE k = $1); END $$").format(
            sql.Identifier(schema), sql.Identifier(lookup)))
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s)").format(sql.Identifier(schema)), (DAY,))
        conn.execute(sql.SQL("CREATE VIEW {s}.v AS SELECT id, at, {s}.label(id) AS label FROM {s}.ev").format(
            s=sql.Identifier(schema)))
        spec = TableSpec(name=f"{schema}.v", day_column="at", start_date=DAY, format=fmt)
        assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 1
    finally:
        conn.execute(sql.SQL("DROP TABLE public.{} CASCADE").format(sql.Identifier(lookup)))


def test_a_day_with_regclass_values_archived_before_the_pinned_path_restores(monkeypatch, conn, schema, in_public,
                                                                               store, temp_dir):
    """The archive may be the only copy (a removed day): restoring it must not fail its fingerprint check."""
    from archive_pipeline.core.restore import restore_day

    table = sql.Identifier(schema, "refs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, c regclass)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s)").format(table), (DAY, f"public.{in_public}"))
    spec = TableSpec(name=f"{schema}.refs", day_column="at", start_date=DAY, format="jsonl")
    _archived_before_the_path_was_pinned(monkeypatch, conn, spec, store, temp_dir)
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.rows == 1 and restored.fingerprint_checked


def test_a_restore_into_a_table_whose_trigger_relies_on_the_roles_path(conn, schema, store, temp_dir):
    """The restore's INSERT runs under the fingerprint's settings, path included: a trigger of the target
    (an audit trigger naming its log table unqualified, found through the role's path) must still work."""
    from archive_pipeline.core.restore import restore_day

    log_table = f"{schema}_audit"
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE public.{} (id int)").format(sql.Identifier(log_table)))
    try:
        conn.execute(sql.SQL("CREATE FUNCTION {}.audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                             "INSERT INTO {} VALUES (NEW.id); RETURN NEW; END $$").format(s, sql.Identifier(log_table)))
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date)").format(s))
        conn.execute(sql.SQL("CREATE TRIGGER audited BEFORE INSERT ON {}.ev FOR EACH ROW EXECUTE FUNCTION {}.audit()")
                     .format(s, s))
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s), (2, %s)").format(s), (DAY, DAY))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))
        restored = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
        assert restored.rows == 2 and restored.fingerprint_checked
        logged = conn.execute(sql.SQL("SELECT count(*) FROM public.{}").format(sql.Identifier(log_table))).fetchone()[0]
        assert logged == 4  # the rows inserted at first, then restored
    finally:
        conn.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(log_table)))
