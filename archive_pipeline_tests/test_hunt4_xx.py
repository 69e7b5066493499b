"""Hunt 4, xx: adversarial review of the last hour's product changes."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.helpers import run_cli

DAY = dt.date(2024, 3, 10)


def _expression_table(conn, schema: str) -> None:
    """ev partitioned by (at::date), one child a day (the table's zone is UTC, as is the key's)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamp) PARTITION BY RANGE ((at::date))").format(s))
    for n in (9, 10, 11):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"ev_202403{n:02d}"), s, sql.Literal(f"2024-03-{n:02d}"),
            sql.Literal(f"2024-03-{n + 1:02d}")))
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES ({}, {})").format(
            s, sql.Literal(n), sql.Literal(f"2024-03-{n:02d} 12:00")))


def test_an_expression_keyed_days_own_partition_is_still_dropped_by_retention(conn, schema, store):
    """A user partitions ev by RANGE ((at::date)), one child a day, the table's timezone UTC (the key's own),
    with retention action 'drop'. Since the expression key's children are widened by 26 hours each way
    (discovery._EXPRESSION_SLACK), day_children(2024-03-10) lists three or more children, none of which
    ``is_period`` the day: prune refuses with "is not one partition of its own ... use retention action
    'delete'", and the archive's manifest no longer records the day's partition (partition_of_day None), so a
    restore cannot re-create it. Before the change the day was dropped. The child that is exactly the day in
    the table's zone should still count as the day's partition."""
    _expression_table(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    archive_partition(conn, spec, DAY, store)
    manifest = load_manifest(store, f"archive/{schema}.ev/2024/03/2024-03-10.jsonl.zst")
    assert (manifest["table_definition"]["partition"] or {}).get("child_name") == "ev_20240310"
    done = remove_day(conn, spec, DAY, store, removed_by="test")
    assert (done.rows, done.action) == (1, "drop")
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.ev_20240310",)).fetchone()[0] is None


def test_an_empty_inheritance_parent_over_indexed_children_is_still_read_in_time_slices(conn, schema):
    """A user archives an inheritance parent that holds no rows of its own (the usual layout: its children,
    one a week, hold them), every relation indexed on the timestamptz day column, at ``parallel_streams: 4``.
    What happens since plain tables "mostly of the day" are read in page ranges: ``plan_streams`` asks
    ``_index_reads_less`` about the parent alone, whose reltuples is 0 (it holds nothing), reads that as
    "mostly the day", and falls to ``_ctid_plan`` on the parent's 0 pages: one stream ("the relation has 0
    page(s): nothing to split"), where the day is a seventh of the child and was read in 4 time slices of the
    index before. Expected: the time slices (or a split of the children), not a single stream."""
    from archive_pipeline.core.source import day_filter, describe_table, read_snapshot
    from archive_pipeline.core.parallel import plan_streams

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.par (id int, at timestamptz); CREATE INDEX ON {s}.par (at); "
                         "CREATE TABLE {s}.week () INHERITS ({s}.par); CREATE INDEX ON {s}.week (at)").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.week SELECT g, '2024-03-07 00:00+00'::timestamptz + g * interval '30 s' "
                         "FROM generate_series(1, 20000) g").format(s))
    conn.execute(sql.SQL("ANALYZE {}.par; ANALYZE {}.week").format(s, s))
    described = describe_table(conn, f"{schema}.par", "at")
    with read_snapshot(conn):
        plan = plan_streams(conn, described, day_filter(described, DAY), DAY, 4)
    assert plan.streams == 4, plan.reason


def test_a_restore_refused_by_a_check_constraints_function_does_not_blame_a_harmless_trigger(conn, schema, store,
                                                                                            temp_dir):
    """A user restores a day into the original table, which since gained a CHECK constraint that calls a
    PL/pgSQL function (``CHECK (note_ok(note))``, raising "note n is retired"), and has an unrelated
    AFTER INSERT audit trigger that refuses nothing. The CHECK's function raises; its error's context names
    "PL/pgSQL function ...", and ``_raising_hooks`` takes any error raised inside a function to be the
    target's INSERT triggers': the restore error's cause says "...'s trigger audit on INSERT refused the rows"
    and the remedy is to disable the trigger, which changes nothing. The trigger should be blamed only when
    the function that raised is a trigger's (the context names the trigger function)."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day
    import pytest

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' FROM generate_series(1, 10) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))
    conn.execute(sql.SQL(
        "CREATE FUNCTION {s}.note_ok(n text) RETURNS boolean LANGUAGE plpgsql AS "
        "$$ BEGIN IF n = 'n' THEN RAISE EXCEPTION 'note n is retired'; END IF; RETURN true; END $$; "
        "ALTER TABLE {s}.ev ADD CONSTRAINT note_ok CHECK ({s}.note_ok(note)); "
        "CREATE TABLE {s}.audit_log (at timestamptz); "
        "CREATE FUNCTION {s}.audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$; "
        "CREATE TRIGGER audit AFTER INSERT ON {s}.ev FOR EACH STATEMENT EXECUTE FUNCTION {s}.audit()").format(s=s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    text = f"{caught.value} {getattr(caught.value, 'cause', '')} {getattr(caught.value, 'remedy', '')}"
    assert "note n is retired" in text
    assert "trigger audit" not in text and "DISABLE TRIGGER" not in text, text


def test_a_skip_restore_whose_skipped_rows_are_identical_does_not_say_they_differ(conn, schema, store, temp_dir):
    """Half of an archived day's rows were deleted by mistake, and a late row of the day (a new key) was
    written since. The user restores the day into the original table with ``on_conflict='skip'``. The 5
    rows still there are the archived ones exactly; the fingerprint differs only because of the late row.
    What happens: the check's new "skipped" explanation comes first whenever any row was skipped and says the
    restore "left out 5 archived row(s) whose key ... held with other values", with the remedy "fix or remove
    them" -- rows that are identical to the archive; the true cause (the target holds another row of the day)
    is no longer said. Expected: the skipped rows are blamed only when they differ from the archived ones
    (or the message keeps saying the target may hold other rows of the day)."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day
    import pytest

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' FROM generate_series(1, 10) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    conn.execute(sql.SQL("DELETE FROM {}.ev WHERE id > 5").format(s))  # the mistake
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (11, %s, 'late')").format(s), (DAY,))  # a late row of the day
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="original", on_conflict="skip", temp_dir=temp_dir)
    text = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "with other values" not in text, text
    assert "other rows of the day" in text, text


def test_a_unique_violation_in_a_same_named_audit_table_a_trigger_writes_is_named_as_the_triggers(conn, schema, store,
                                                                                                  temp_dir):
    """A database keeps an audit copy of each table under the same name in schema ``<schema>_audit``, written by
    an AFTER INSERT trigger; the audit table's primary key already holds id 3 (an earlier insert of the row).
    The user deletes the day by mistake and restores it into the (now empty) original table. The audit table's
    key refuses the trigger's insert. What happens: the restore tells the trigger's table from the target's
    by relation name alone (``exc.diag.table_name not in tree``), and "ev" is the target's name too: the error
    says the target "was empty, and the archived rows break its constraint ev_pkey among themselves, a
    constraint the archived table did not have" -- false on every count. Expected: the table the trigger
    writes (its schema too, ``exc.diag.schema_name``) is named, with the trigger."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day
    import pytest

    s, a = sql.Identifier(schema), sql.Identifier(f"{schema}_audit")
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' FROM generate_series(1, 10) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))  # the mistake
    conn.execute(sql.SQL("CREATE SCHEMA {a}; CREATE TABLE {a}.ev (id int PRIMARY KEY); INSERT INTO {a}.ev VALUES (3); "
                         "CREATE FUNCTION {s}.keep_audit() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN INSERT INTO {a}.ev VALUES (NEW.id); RETURN NULL; END $$; "
                         "CREATE TRIGGER keep_audit AFTER INSERT ON {s}.ev FOR EACH ROW "
                         "EXECUTE FUNCTION {s}.keep_audit()").format(s=s, a=a))
    try:
        with pytest.raises(ArchiveError) as caught:
            restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(a))
    text = str(caught.value)
    assert "among themselves" not in text and "was empty" not in text, text
    assert "keep_audit" in text and f"{schema}_audit" in text, text


def test_an_expression_keyed_days_catalog_estimate_is_its_own_partitions(conn, schema):
    """A user runs ``archive --dry-run`` on a table partitioned by RANGE ((at::date)), one child a day, analyzed:
    the estimate comes from the catalog (each day's own partition). Since the expression key's children are
    widened by 26 hours each way, each child counts as holding five days and every day overlaps five children:
    the day's estimate is a fifth of each of five neighbours' rows (~1,000 for a day of 5,000 rows next to
    empty days). Expected: the day's own partition's 5,000."""
    from archive_pipeline.core.plan import catalog_estimate

    _expression_table(conn, schema)
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:00'::timestamp + g * interval '10 s' "
                         "FROM generate_series(1, 4999) g").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("ANALYZE {}.ev").format(sql.Identifier(schema)))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"})
    estimate = catalog_estimate(conn, spec, DAY)
    assert estimate is not None and estimate.rows == 5000, estimate


def test_a_never_analyzed_history_table_indexed_on_the_day_is_not_read_whole_by_page_ranges(conn, schema):
    """A user archives one day of a plain history table (two weeks of rows, a btree index on the timestamptz
    day column) that was never analyzed (autovacuum off for it, or just loaded), at ``parallel_streams: 4``.
    What happens since plain tables "mostly of the day" are read in page ranges: ``_index_reads_less`` cannot
    tell (reltuples -1) and answers None, which ``plan_streams`` now reads as "mostly the day": 4 ctid ranges,
    i.e. the whole table's pages read for a fourteenth of its rows, where the index's time slices read the day
    alone before. Expected: where the statistics cannot say, the time slices over the index, as before."""
    from archive_pipeline.core.source import day_filter, describe_table, read_snapshot
    from archive_pipeline.core.parallel import plan_streams

    table = sql.Identifier(schema, "hist")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) WITH (autovacuum_enabled = false)").format(table))
    conn.execute(sql.SQL("CREATE INDEX ON {} (at)").format(table))  # before the rows: CREATE INDEX sets reltuples
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-03 00:00+00'::timestamptz + g * interval '1 min' "
                         "FROM generate_series(1, 20000) g").format(table))
    assert conn.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (f"{schema}.hist",)).fetchone()[0] < 0
    described = describe_table(conn, f"{schema}.hist", "at")
    with read_snapshot(conn):
        plan = plan_streams(conn, described, day_filter(described, DAY), DAY, 4)
    assert plan.kind == "key", plan.reason


def test_restoring_a_day_does_not_wait_for_a_lock_on_another_days_partition(pg, conn, schema, store, temp_dir):
    """A user restores 2024-03-10 into its original partitioned table (daily children) while a maintenance
    session holds an ACCESS EXCLUSIVE lock on the 2024-03-09 partition (a VACUUM FULL, an ALTER of an old
    partition, a DETACH). The restore loads and checks the day's partition only, and went through. What happens
    now: before the load it asks whether the target holds any row (``SELECT EXISTS (SELECT FROM parent)``,
    which opens every partition) and lists its partition tree: it waits behind the other day's lock and fails
    on lock_timeout (or queues every reader behind it). Expected: the restore touches only what it loads."""
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline.core.errors import ArchiveError

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at timestamptz) PARTITION BY RANGE (at); "
                         "CREATE TABLE {s}.ev_0309 PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-09 00:00+00') "
                         "TO ('2024-03-10 00:00+00'); "
                         "CREATE TABLE {s}.ev_0310 PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00'); "
                         "INSERT INTO {s}.ev SELECT g, '2024-03-09 00:00+00'::timestamptz + g * interval '1 h' "
                         "FROM generate_series(0, 47) g").format(s=s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"}, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 24
    conn.execute(sql.SQL("DELETE FROM {}.ev_0310").format(s))
    conn.execute("SET lock_timeout = '1s'")
    with pg.connect() as other:
        other.autocommit = False
        other.execute(sql.SQL("LOCK TABLE {}.ev_0309 IN ACCESS EXCLUSIVE MODE").format(s))
        try:
            result = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
        except ArchiveError as exc:
            raise AssertionError(f"the restore waited for another day's partition: {exc}") from None
        finally:
            other.rollback()
    assert result.inserted == 24


def test_a_refused_connect_does_not_fail_the_runs_later_days_once_the_database_is_back(pg):
    """A backfill run of many days: the database restarts between two days (its port refuses connections for a
    moment; a refused connect costs no time). The next day fails with the retryable connect error, as it
    should. What happens to every later day of the run: ``_Source.unreachable`` remembers that error for the
    rest of the run and raises it at once, without trying to connect, though the database answers again
    (here: the next connect would succeed). With ``retry: max_retries: 0`` the whole range fails; with retries,
    each retry's first refused connect fails all its remaining days again. The fail-fast is meant for connects
    that wait out connect_timeout (50 days of 10 s); a connect refused at once should be tried again for the
    next day."""
    import socket
    import threading

    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.defs.assets import _Source
    from archive_pipeline.defs.resources import PostgresResource
    import pytest

    gate = socket.socket()
    gate.bind(("127.0.0.1", 0))  # bound, not listening: a connect is refused
    port = gate.getsockname()[1]
    resource = PostgresResource(dsn=pg.dsn.replace(f":{pg.port}/", f":{port}/"), connect_timeout_s=2)
    source = _Source(resource)
    with pytest.raises(ArchiveError) as caught:
        source.get()
    assert caught.value.retryable

    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        while True:
            try:
                client, _ = gate.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", pg.port))
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    gate.listen(8)  # the database is back
    threading.Thread(target=serve, daemon=True).start()
    try:
        conn = source.get()
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        source.close()
        gate.close()


def test_verify_does_not_tell_to_archive_again_a_day_whose_manifest_read_merely_failed(pg, s3, bucket, conn, schema,
                                                                                       store, tmp_path):
    """An operator runs `archive-pipeline verify --day D --json` with store credentials that may not read the
    manifests (403 AccessDenied on the day's manifest GET; a 503 SlowDown for a while is the same). verify rightly
    reports the day "not checked (...): reading manifest ... failed" and exits 1. Its new remedy, though, is the
    one for a damaged archive: "archive it again: archive --table ... --day D --overwrite (a new generation; the
    damaged one is kept ...)", or "restore the object or its manifest from a backup of the bucket" -- for an
    archive nothing is known to be wrong with: an operator following it writes a needless new generation (or
    restores over a good manifest). A day that was not checked should be told what the read's error says (the
    grant, or to verify again), not to mend an archive (cli._verify_remedy is given to every problem alike)."""
    import json as _json

    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.test_hunt_cli import ROOT, make_env, small_table
    from archive_pipeline_tests.test_hunt4_ww import write_config

    small_table(conn, schema, "a", [DAY])
    config = write_config(tmp_path, [{"name": f"{schema}.a", "day_column": "at", "start_date": DAY.isoformat()}])

    def cli(env, *args):  # in this process (helpers.run_cli): a second of start-up and imports saved per call
        return run_cli(args, env, cwd=ROOT, timeout=60)

    assert archive_partition(conn, TableSpec(name=f"{schema}.a", day_column="at", start_date=DAY), DAY, store).rows
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=r"\.manifest\.json$", action="error", status=403,
                        code="AccessDenied", times=None))
        done = cli(make_env(pg, proxy.url, bucket, config), "verify", "--day", DAY.isoformat(), "--json")
    answer = _json.loads(done.stdout)
    day = answer["days"][0]
    assert "not checked" in day["problems"][0], day
    assert "--overwrite" not in day.get("remedy", "") and "backup" not in day.get("remedy", ""), day
