"""Hunt 10 pk: a review of the hunt10 pi/ph/pj fixes (the removal's tidy, a restored day's pending removal, the day
column's base type, the foreign DELETE's ctid, refused grants), at their edges. Real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


def _events(conn, schema: str, rows: int = 50) -> sql.Identifier:
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, created_at timestamptz, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 minute', 'n' || g "
                         "FROM generate_series(1, {}) g").format(table, sql.Literal(DAY.isoformat()),
                                                                 sql.Literal(rows)))
    return table


def _count(conn, table: sql.Identifier) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


def test_a_removal_that_committed_and_marked_done_is_not_failed_by_the_tidy_after_it(conn, schema, store, s3_client):
    """A user's retention removal (`prune --day D`, action delete) proves D, deletes its rows, commits and marks the
    manifest "done". Then, new since the pi fix, it tidies the day's leftovers, and that starts with a LIST of the
    day's keys (leftovers.day_listing), outside of tidy_day's "a failure here is logged, never fatal". A LIST that
    fails then (the store briefly unreachable, a role without s3:ListBucket for that prefix...) makes remove_day
    raise: the run reports the day's removal failed though its rows are gone and its manifest says done. Should:
    the removal is reported done (the tidy's failure logged), as an archive run's tidy failure is."""
    from botocore.exceptions import EndpointConnectionError

    table = _events(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="created_at", start_date=DAY,
                     retention={"keep_days": 1, "action": "delete"})
    key = archive_partition(conn, spec, DAY, store).key
    state = {"manifest_puts": 0}

    def count_marks(params, **_) -> None:
        if params["Key"].endswith(".manifest.json"):
            state["manifest_puts"] += 1

    def store_gone_after_the_done_mark(**_) -> None:
        if state["manifest_puts"] >= 2:  # the pending mark, then the done mark
            raise EndpointConnectionError(endpoint_url="http://store")

    events = s3_client.meta.events
    events.register("before-parameter-build.s3.PutObject", count_marks)
    events.register("before-call.s3.ListObjectsV2", store_gone_after_the_done_mark)
    try:
        removal = remove_day(conn, spec, DAY, store, proven=True)
    finally:
        events.unregister("before-parameter-build.s3.PutObject", count_marks)
        events.unregister("before-call.s3.ListObjectsV2", store_gone_after_the_done_mark)
    assert removal.rows == 50
    assert _count(conn, table) == 0
    assert load_manifest(store, key)["removed"]["state"] == "done"


def _pending_mark_of(conn, store, s3_client, spec: TableSpec, key: str, xid: int) -> None:
    """The manifest at ``key`` marked as a removal leaves it once its pending mark's PUT is done (lifecycle._remove),
    with the transaction id ``xid``."""
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.core.source import server_identity

    mkey = key + ".manifest.json"
    manifest = decode_manifest(s3_client.get_object(Bucket=store.bucket, Key=mkey)["Body"].read())
    manifest["removed"] = {"at": dt.datetime.now(dt.UTC).isoformat(), "action": "delete", "state": "pending",
                           "by": None, "relation": spec.name, "xid": str(xid), "system": server_identity(conn)[1]}
    s3_client.put_object(Bucket=store.bucket, Key=mkey, Body=encode_manifest(manifest))


def test_a_pending_removal_that_never_took_effect_is_not_completed_because_rows_were_rewritten_unchanged(
        conn, schema, store, s3_client):
    """The state a server crash leaves (test_hunt_pgfaults: the removal's transaction had its id and wrote its
    pending mark, then the server went down before it deleted anything): every row of D is still in the source,
    the mark's id was handed out again after recovery to the cluster's next transaction, which committed. Then the
    day's rows are written again unchanged: the ingestion re-delivers D's events and upserts them (INSERT ... ON
    CONFLICT DO UPDATE with the same values), an ORM saves them unchanged. The next removal settles the mark:
    txid_status says committed, the source holds exactly the archived rows, and lifecycle._written_after now sees
    rows whose xmin is younger than the id and decides "restored since": the removal is reported completed
    (Removal.completed) and the manifest marked done, while all 50 rows are still in the source, never removed
    (the README: a changed day of a removed day is refused as removed). Should: taken back (the rows were never
    removed) and the day proven and removed, as without the rewrite: a younger xmin is no proof of a restore."""
    table = _events(conn, schema)
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(table))
    spec = TableSpec(name=f"{schema}.ev", day_column="created_at", start_date=DAY,
                     retention={"keep_days": 1, "action": "delete"})
    key = archive_partition(conn, spec, DAY, store).key
    reused = conn.execute("SELECT txid_current()").fetchone()[0]  # the next committed transaction after the crash
    _pending_mark_of(conn, store, s3_client, spec, key, reused)
    conn.execute(sql.SQL("INSERT INTO {t} SELECT * FROM {t} WHERE id <= 5 ON CONFLICT (id) DO UPDATE SET "
                         "note = EXCLUDED.note").format(t=table))  # the same rows delivered again
    removal = remove_day(conn, spec, DAY, store)
    assert _count(conn, table) == 0, (f"the removal says {removal} and the manifest "
                                      f"{load_manifest(store, key)['removed']}, but the rows were never removed")


def test_the_removal_s_tidy_keeps_the_object_of_the_replacement_it_marked_done(conn, schema, store, s3_client):
    """An archive run of D on another server (a hot standby) overwrites D while the primary's removal of D runs, on
    a store that ignores If-Match: it uploads generation 2 (the same rows) and writes its manifest over the
    removal's pending mark. The removal foresees this (lifecycle._marked_by_us): the replacement holds exactly the
    removed rows, so the "done" mark is written onto it, and the day's manifest names generation 2 as its object.
    Then the removal's new tidy (leftovers.tidy_day) decides what to keep from the manifest it *proved* (naming
    generation 1), not the one it just marked done: generation 2 is "a generation no manifest names" and is deleted.
    The day's rows are gone from the source and its manifest names a deleted object (once the other run retires
    generation 1 as its manifest says, nothing of D is left). Should: the tidy keeps what the manifest as marked
    done names (generation 2)."""
    from archive_pipeline.core import keys

    _events(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="created_at", start_date=DAY,
                     retention={"keep_days": 1, "action": "delete"})
    first = archive_partition(conn, spec, DAY, store)
    g1, mkey = first.key, first.manifest_key
    proven_manifest = s3_client.get_object(Bucket=store.bucket, Key=mkey)["Body"].read()
    g1_bytes = s3_client.get_object(Bucket=store.bucket, Key=g1)["Body"].read()
    # the other server's overwrite, as it lands: generation 2 and a manifest naming it (same rows)
    second = archive_partition(conn, spec, DAY, store, overwrite=True)
    g2 = second.key
    assert g2 == keys.generation_key(g1, 2)
    replacement = s3_client.get_object(Bucket=store.bucket, Key=mkey)["Body"].read()
    # back to the moment before it committed: generation 1 proven and named, generation 2 uploaded
    s3_client.put_object(Bucket=store.bucket, Key=g1, Body=g1_bytes)
    s3_client.put_object(Bucket=store.bucket, Key=mkey, Body=proven_manifest)
    state = {"marked": False, "replaced": False}

    def pending_marked(params, **_) -> None:
        if params["Key"] == mkey:
            state["marked"] = True

    def other_run_commits(**_) -> None:  # while the removal checks its proven object (before its COMMIT)
        if state["marked"] and not state["replaced"]:
            state["replaced"] = True
            s3_client.put_object(Bucket=store.bucket, Key=mkey, Body=replacement)

    events = s3_client.meta.events
    events.register("before-parameter-build.s3.PutObject", pending_marked)
    events.register("before-call.s3.HeadObject", other_run_commits)
    try:
        removal = remove_day(conn, spec, DAY, store, proven=True)
    finally:
        events.unregister("before-parameter-build.s3.PutObject", pending_marked)
        events.unregister("before-call.s3.HeadObject", other_run_commits)
    assert state["replaced"] and removal.rows == 50
    manifest = load_manifest(store, g1)
    assert manifest["removed"]["state"] == "done" and manifest["object"]["key"] == g2
    assert store.head(g2) is not None, "the object the day's manifest names was deleted by the removal's tidy"


def test_verify_deep_s_retry_suggestion_for_a_manifest_it_could_not_read_keeps_deep(pg, s3, conn, schema, bucket,
                                                                                    tmp_path):
    """A user runs `archive-pipeline verify --deep --day D --json` while the store answers the day's manifest GET
    with 500s: the day is "not checked (retryable): reading manifest ... failed", and its remedy says "verify the
    day again (archive-pipeline verify ... --table s.ev --day D) once the database and store answer". The ph fix
    passes --deep/--download to the suggestion only where the object was checked; a day whose manifest could not
    be read (cli.verify's found.problem branch) still gets the command without --deep, which, pasted, checks the
    object's size and ETag and answers ok: the day's rows are never proven against the source. Should: the
    suggested command keeps --deep, as for a day whose proof was not checked."""
    import json
    import re
    import shlex

    from click.testing import CliRunner

    from archive_pipeline.cli import main
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.test_hunt9_oh import _cli_env

    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s FROM generate_series(1, 10) g").format(
        sql.Identifier(schema, "ev")), (DAY,))
    env = _cli_env(pg, s3, bucket, tmp_path, schema, "jsonl")
    archived = CliRunner(env=env).invoke(main, ["archive", "--day", DAY.isoformat()])
    assert archived.exit_code == 0, archived.output
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=r"\.manifest\.json$", action="error", status=500, times=None))
        done = CliRunner(env={**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}).invoke(
            main, ["verify", "--deep", "--day", DAY.isoformat(), "--json"])
    [day] = json.loads(done.stdout)["days"]
    assert not day["ok"] and "not checked (retryable)" in day["problems"][0], day  # (the premise)
    suggested = re.search(r"\((archive-pipeline verify [^)]*)\)", day["remedy"])
    assert suggested, day["remedy"]
    assert "--deep" in shlex.split(suggested[1]), day["remedy"]


def test_a_naming_pattern_with_weekday_and_month_names_past_63_bytes_on_a_september_wednesday_is_refused():
    """A user names day tables with both the weekday's and the month's name (``<prefix>_%A_%B_%Y%m%d``; strptime
    reads it back). The pj fix checks the pattern's length on each month's 28th and on the first seven days of
    January, so weekday and month are never at their longest together: no September 28th (2024) is a Wednesday. A
    pattern that is 63 bytes at the longest of those loads, and the day table of every Wednesday in September
    (2024-09-11, 2025-09-24...) is named 64 bytes, which PostgreSQL cuts to 63 (naming mode then never finds it:
    the day looks absent). Should: refused at load (the longest weekday and month name together)."""
    from archive_pipeline.core.config import ConfigError, parse_config

    moments = [dt.datetime(2024, month, 28, 23) for month in range(1, 13)]
    moments += [dt.datetime(2024, 1, day, 23) for day in range(1, 8)] + [dt.datetime(2024, 12, 31, 23)]
    tail = "_%A_%B_%Y%m%d"
    pattern = "e" * (63 - max(len(m.strftime(tail)) for m in moments)) + tail
    entry = {"name": "public.ev", "start_date": "2024-01-01", "partitioning": {"mode": "naming", "pattern": pattern}}
    try:
        spec = parse_config({"tables": [entry]}, "tables.yaml").tables[0]
    except ConfigError as exc:
        assert "63" in str(exc)
        return
    name = spec.child_table("2025-09-24")
    pytest.fail(f"pattern {pattern!r} loaded, and it names the day table {name!r} of {len(name.encode())} bytes")


def test_list_check_source_while_a_whole_naming_mode_drop_runs_after_the_manifest_was_read(pg, conn, schema, store,
                                                                                          monkeypatch):
    """A naming-mode table (``ev_%Y%m%d``, retention action ``drop``). A user runs ``list --check-source`` over many
    days (plan.day_statuses): it reads every day's manifest first, then fingerprints the days one by one. While it
    fingerprints the earlier days, retention removes day D whole (pending mark, DROP TABLE, done mark). When list
    reaches D, the manifest it read has no removal mark, so the ph fix (NO_PERIOD_TABLE accepted only with
    ``archived.removed``) does not apply: the listing fails with SourceError "no table for D of s.ev ...; to fix:
    check the table's name in the YAML configuration", though nothing is wrong with it. A DELETE removal in the same
    window is listed (a day that changed is read again, plan._again_where_replaced). Should: no error; D listed as
    removed (its manifest read again), as when the removal committed a moment earlier."""
    from archive_pipeline.core import lifecycle, plan

    day_table = sql.Identifier(schema, f"ev_{DAY:%Y%m%d}")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(day_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(1, 5) g").format(day_table))
    spec = TableSpec(name=f"{schema}.ev", start_date=DAY, partitioning={"mode": "naming", "pattern": "ev_%Y%m%d"},
                     retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    fingerprinted = plan.source_fingerprint
    removed = []

    def removed_before_its_turn(*args, **kwargs):  # retention runs while list fingerprints the days before D
        if not removed:
            with pg.connect() as removing:
                removed.append(lifecycle.remove_day(removing, spec, DAY, store))
        return fingerprinted(*args, **kwargs)

    monkeypatch.setattr(plan, "source_fingerprint", removed_before_its_turn)
    [status] = plan.day_statuses(conn, spec, store, [DAY], check_source=True)
    assert removed and removed[0].rows == 5
    assert status.state != "changed", status


def test_a_killed_overwrite_s_leftovers_do_not_outlive_a_removal_completed_by_its_next_run(
        pg, s3, conn, schema, store, bucket, s3_client, tmp_path):
    """As test_hunt10_pi: a user's `archive --overwrite --day D` is SIGKILLed mid-upload (an open multipart upload of
    generation 2 and its marker are left). Then retention's removal of D is SIGKILLed too, after its transaction
    committed and before its "done" mark (the manifest stays "pending"). The next removal of D (the next `prune`)
    settles the mark: the removal committed, so it is completed, and lifecycle._remove_day returns at once
    ("completed"): the new tidy runs only after a removal that proves and removes here, so the killed overwrite's
    open upload and marker stay in the store for good (no archive run of a removed day comes to tidy it).
    Should: the day's keys are exactly what its manifest names, and no multipart upload is open, however the
    removal ended."""
    from archive_pipeline_tests.test_integrity import _killed_child, _open_uploads, stored_keys
    from archive_pipeline_tests.test_letgo import _killed

    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(sql.Identifier(schema, "big")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10', repeat(md5(g::text), 6) "
                         "FROM generate_series(1, 30000) g").format(sql.Identifier(schema, "big")))
    spec = {"name": f"{schema}.big", "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    first = archive_partition(conn, TableSpec(**spec), DAY, store)
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, True, temp, ("after-call", "UploadPart", 1))
    assert _open_uploads(s3_client, bucket)  # (the premise: the killed overwrite's upload)
    removing = {**spec, "retention": {"keep_days": 1, "action": "delete"}}
    _killed(pg, s3, bucket, conn, {"do": "remove", "spec": removing, "day": DAY.isoformat(),
                                   "kill": ["before-call", "PutObject", 2]})  # committed, not marked done
    assert load_manifest(store, first.key)["removed"]["state"] == "pending"
    removal = remove_day(conn, TableSpec(**removing), DAY, store)
    assert removal.completed
    assert load_manifest(store, first.key)["removed"]["state"] == "done"
    assert _open_uploads(s3_client, bucket) == [], "the killed overwrite's multipart upload is left open"
    assert stored_keys(s3_client, bucket) == sorted([first.key, first.manifest_key]), \
        "the killed overwrite's leftovers outlive the day's removal"


@pytest.mark.parametrize("remote_schema, remote_table", [("ctid", "{schema}_sales"), ("{schema}", "sales-ctid-eu")])
def test_a_foreign_partition_whose_remote_name_holds_ctid_as_a_word_is_deleted_by_its_pushed_down_delete(
        conn, schema, store, remote_schema, remote_table):
    """As test_hunt10_pj's ``sales_by_productid``: the day's partition is a postgres_fdw foreign table, and its
    DELETE is pushed down whole (``DELETE FROM ctid.t_sales WHERE ...``, or ``... "sales-ctid-eu" WHERE ...``):
    safe. The pj fix looks for ``ctid`` as a word (not after a letter, digit, ``"``, ``.`` or ``$``, nor before a
    letter, digit, ``"`` or ``$``), and a remote schema named ``ctid`` (followed by its ``.``) or a quoted remote
    name holding ``-ctid-`` is such a word: the day is refused ("row by row (by ctid) it would take rows of other
    days") though nothing goes by ctid. Should: the day's 20 rows are deleted (postgres_fdw's own ctid is only
    ever ``ctid = $1`` / ``SELECT ... ctid`` outside a quoted or qualified name)."""
    from archive_pipeline_tests.test_hunt10_pj import _ident

    if not conn.execute("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'postgres_fdw')").fetchone()[0]:
        pytest.skip("postgres_fdw is not installed on this server")
    rs, rt = remote_schema.format(schema=schema), remote_table.format(schema=schema)
    server = _ident(f"{schema}_loop")
    conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS postgres_fdw SCHEMA {}").format(_ident(schema)))
    conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {}, port {}, dbname {})"
                         ).format(server, sql.Literal(conn.info.host), sql.Literal(str(conn.info.port)),
                                  sql.Literal(conn.info.dbname)))
    conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS (user {})").format(
        server, sql.Literal(conn.info.user)))
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_ident(rs)))
    ev, remote = _ident(schema, "ev"), _ident(rs, rt)
    try:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text) PARTITION BY RANGE (at)").format(ev))
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text)").format(remote))
        conn.execute(sql.SQL("CREATE FOREIGN TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') TO "
                             "('2024-03-11 00:00+00') SERVER {} OPTIONS (schema_name {}, table_name {})").format(
            _ident(schema, "ev_20240310"), ev, server, sql.Literal(rs), sql.Literal(rt)))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', "
                             "'r' || g FROM generate_series(1, 20) g").format(remote))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                         partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "delete"})
        assert archive_partition(conn, spec, DAY, store).rows == 20
        removal = remove_day(conn, spec, DAY, store)
        assert removal.rows == 20
        assert _count(conn, remote) == 0
    finally:
        conn.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(server))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(remote))
        if rs != schema:
            try:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(_ident(rs)))  # (only if left empty)
            except psycopg.Error:
                pass
