"""Hunt 24 (bs): the Dagster ranged run (one run materializing many table-days: _Source's connections, per-day
failure isolation, step retries) and the Dagster side of retention (removed-day records, archive_intact after a
removal)."""

from __future__ import annotations

import datetime as dt

from dagster import instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, job_name
from archive_pipeline_tests.test_hunt16_vd import DAYS, _latest, _range


def _drop_role(conn, role: str) -> None:
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_deep_checked_range_read_from_a_read_only_source_fails_a_day_for_the_proof_session_lost_between_days(
        pg, conn, schema, archive_env, monkeypatch):
    """Scenario: the code location reads a read-only source (ARCHIVE_PG_DSN: a replica's role, a read-only
    pooler: ``default_transaction_read_only = on``), so a table with ``deep_check: true`` loads its archive back on
    the primary (ARCHIVE_PG_PRIMARY_DSN), README's hot-standby setup. A ranged run archives 2024-03-10..12 (retry:
    max_retries 0). While the run works on 2024-03-11, the primary session it opened for 2024-03-10's proof, idle
    since, is ended by the server (pg_terminate_backend here; idle_session_timeout, a pooler's reaping, a primary
    restart alike) -- before 2024-03-11's own proof has started.

    Now: _Source.get() checks the run's source connection with a round trip before each day (so that "a day failed
    for its neighbour's loss" no more), but _Source.scratch() reuses the primary session as long as psycopg has not
    yet seen it broken (``closed``/``broken`` are only set by a failed call): 2024-03-11's proof runs its first
    statement on the dead session and fails ("proving ... for 2024-03-11 failed: the session's backend was
    terminated ... AdminShutdown"): the day fails (archived, its proof not run), and the run fails -- for a session lost while nothing used it, which a new connect would have fixed.

    Should: the proof's primary session is checked like the source's (a round trip, or a failed check reopens it)
    before each day reuses it; all three days are archived and proven, the run succeeds. Fix idea: in
    _Source.scratch, run ``SELECT 1`` on a reused scratch_conn and reconnect on OperationalError, as get() does."""
    ro = f"{schema}_ro"
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ro)))
    try:
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(ro)))
        conn.execute(sql.SQL("CREATE TABLE {}.base (id int, at date)").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.base SELECT g, %s::date + (g %% 3) FROM generate_series(1, 30) g")
                     .format(s), (DAYS[0],))
        # the read of 2024-03-11 (its COPY only) ends the primary's archive_pipeline sessions: the proof's session
        conn.execute(sql.SQL("""
            CREATE FUNCTION {}.reap(at date) RETURNS date LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $f$
            BEGIN
                IF at = {} AND pg_catalog.current_query() ILIKE 'copy%' THEN
                    PERFORM pg_catalog.pg_terminate_backend(pid, 30000) FROM pg_catalog.pg_stat_activity
                     WHERE usename = 'postgres' AND application_name = 'archive_pipeline'
                       AND pid <> pg_catalog.pg_backend_pid();
                END IF;
                RETURN at;
            END $f$""").format(s, sql.Literal(DAYS[1])))
        conn.execute(sql.SQL("CREATE VIEW {}.events AS SELECT id, {}.reap(at) AS at FROM {}.base").format(s, s, s))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, sql.Identifier(ro)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, sql.Identifier(ro)))
        monkeypatch.setenv("ARCHIVE_PG_DSN", pg.dsn_for(ro))
        monkeypatch.setenv("ARCHIVE_PG_PRIMARY_DSN", pg.dsn)
        config = parse_config({"retry": {"max_retries": 0}, "tables": [{
            "name": f"{schema}.events", "day_column": "at", "start_date": DAYS[0].isoformat(), "format": "csv",
            "deep_check": True}]})
        spec = config.tables[0]
        defs = build_definitions(config, check_source=False)
        with instance_for_test() as instance:
            run = defs.resolve_job_def(job_name(spec)).execute_in_process(
                instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
            said = {d.isoformat(): _latest(instance, asset_key(spec), d.isoformat()) for d in DAYS}
            verified = {d: r.asset_materialization.metadata["verified"].value if r else None for d, r in said.items()}
            failure = [e.message for e in instance.all_logs(run.run_id) if e.dagster_event is not None
                       and e.dagster_event.event_type_value == "STEP_FAILURE"]
        assert run.success and all(str(v).startswith("content proven") for v in verified.values()), (verified, failure)
    finally:
        _drop_role(conn, ro)
