"""Hunt 26 (du): real PostgreSQL faults on the paths after the archive (the asset checks, the removal asset): a
session the server ends at a precise point must be classified and named as the core names it."""

from __future__ import annotations

import contextlib
import datetime as dt

from dagster import DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import PostgresResource

DAY = dt.date(2024, 3, 10)


def _naming_log(conn, schema: str, retries: int):
    """A naming-mode table ``log`` (one INHERITS child per day, ``log_20240310`` with 10 rows), retention detach."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 () INHERITS ({}.log)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g"
                         ).format(s))
    return parse_config({"retry": {"max_retries": retries, "delay_seconds": 0}, "tables": [
        {"name": f"{schema}.log", "start_date": DAY.isoformat(),
         "partitioning": {"mode": "naming", "pattern": "log_%Y%m%d"},
         "retention": {"keep_days": 30, "action": "detach"}}]})


def _terminate(admin, pid: int) -> None:
    """End backend ``pid`` as a DBA's watchdog (or a server restart) would, and wait until it is gone."""
    admin.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))
    for _ in range(500):
        if not admin.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE pid = %s)",
                             (pid,)).fetchone()[0]:
            return
        admin.execute("SELECT pg_catalog.pg_sleep(0.01)")
    raise AssertionError(f"backend {pid} did not end")


def _first_session_lost(monkeypatch, admin, lost: list[int]) -> None:
    """Every PostgresResource session opens as usual; the first one is then ended by the server (terminated)
    before its first statement: the moment a failover or a watchdog's pg_terminate_backend can pick."""
    original = PostgresResource.connect

    @contextlib.contextmanager
    def connect(self):
        with original(self) as session:
            if not lost:
                lost.append(session.info.backend_pid)
                _terminate(admin, session.info.backend_pid)
            yield session

    monkeypatch.setattr(PostgresResource, "connect", connect)


def _step_events(instance, run_id: str, kind) -> list:
    return [e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.event_type == kind]


def test_source_unchanged_whose_session_is_terminated_is_retried_like_the_core_says(
        pg, conn, schema, archive_env, monkeypatch):
    """**Scenario:** a naming-mode table ``log`` (retention ``detach``) has 2024-03-10 archived and removed by its
    Remove_ job (the day table ``log_20240310`` detached, as detach means). The weekly ``verify_archives`` job runs
    ``source_unchanged`` (retry policy: max_retries 1); its database session is ended by the server right after it
    opened (pg_terminate_backend by a DBA's watchdog, a failover), before its first statement.

    **Now:** ``checks.build_source_unchanged_check._check`` calls ``lifecycle.still_detached(conn, ...)`` on the
    done mark bare: the ``AdminShutdown`` escapes unwrapped into ``except Exception`` → ``_unreachable``, which takes
    any non-ArchiveError for "could not reach the store" with ``retryable=False``: the check fails at once (no
    retry), as "could not check the archive: AdminShutdown: terminating connection ...", with the remedy to check
    that the store and database are reachable, though the README's table retries a terminated backend.

    **Should:** a terminated session is transient: the check step is retried by its policy (and then passes), as
    for ``verify.rows_after_removal`` and ``verify.source_changed`` beside it, which wrap their database errors.
    Fix idea: wrap ``still_detached`` (and any other bare query of the check) with ``errors.wrapped(exc, conn, spec,
    day, doing="comparing")``, or let ``_unreachable`` classify a ``psycopg.Error`` with ``errors.wrap``."""
    config = _naming_log(conn, schema, retries=1)
    defs = build_definitions(config)
    lost: list[int] = []
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_log").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        assert defs.resolve_job_def(f"Remove_{schema}_log").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        _first_session_lost(monkeypatch, conn, lost)
        result = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        failures = [e.dagster_event.step_failure_data.user_failure_data
                    for e in _step_events(instance, result.run_id, DagsterEventType.STEP_FAILURE)]
        retried = _step_events(instance, result.run_id, DagsterEventType.STEP_UP_FOR_RETRY)
        evaluations = [r.event_log_entry.dagster_event.asset_check_evaluation_data for r in instance.get_records_for_run(
            result.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records]
    assert lost, "no PostgresResource session was opened: the scenario did not happen"
    said = "; ".join(str(f.description) if f else "?" for f in failures)
    unchanged = [e for e in evaluations if e.check_name == "source_unchanged"]
    assert retried and unchanged and unchanged[-1].passed, (
        f"the terminated session was not retried: failures {said!r}, retries {len(retried)}")


def test_a_removal_run_of_a_detached_day_whose_session_is_terminated_names_table_day_and_cause(
        pg, conn, schema, archive_env, monkeypatch):
    """**Scenario:** a naming-mode table ``log`` (retention ``detach``) has 2024-03-10 archived and removed by its
    Remove_ job (``log_20240310`` detached). The operator backfills Remove_ over the last month, which launches that
    day's partition again; while the run reads the day's manifest from the store, the primary's session it opened
    is ended by the server (a failover, a watchdog's pg_terminate_backend).

    **Now:** ``retention_assets._removing`` computes ``back`` with ``lifecycle.still_detached(primary, ...)`` bare,
    outside any wrapping: the psycopg ``AdminShutdown`` escapes ``_removing`` (its ``try`` catches ArchiveError,
    NewerManifestError and ValueError only), and ``remove`` lets it through as an unknown exception: the step
    fails as Dagster's bare "RetryRequestedFromPolicy: Exceeded max_retries of 0" over the driver's "terminating
    connection due to administrator command" (with retries left, Dagster retries it whatever it is): no table, no
    day, no cause in the archiver's words, no remedy, no ``retryable`` metadata (every other database error of the
    step comes out as ``_failed(...)`` naming them).

    **Should:** the step's failure is the archiver's: it names ``<schema>.log`` and 2024-03-10, says the session
    was terminated and that this is transient (retryable), as ``rows_after_removal`` beside it does. Fix idea: have
    ``lifecycle.still_detached`` raise ``errors.wrapped(...)`` for a ``psycopg.Error`` (it is also called bare by the
    source_unchanged check and plan's list), or catch ``psycopg.Error`` in ``_removing`` as its ``read_only``
    call does (``wrap(exc, ..., doing="proving")`` → ``_failed``)."""
    from archive_pipeline.defs import retention_assets

    config = _naming_log(conn, schema, retries=0)
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_log").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        assert defs.resolve_job_def(f"Remove_{schema}_log").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        sessions: list[int] = []
        # (the asset reads the day's manifest by load_stored_manifest: a listed manifest read as 404 is no verdict)
        original_connect, original_load = PostgresResource.connect, retention_assets.load_stored_manifest

        @contextlib.contextmanager
        def connect(self):
            with original_connect(self) as session:
                sessions.append(session.info.backend_pid)
                yield session

        def load_manifest(*args, **kwargs):
            found = original_load(*args, **kwargs)
            if sessions and len(sessions) == 1:  # the primary's session (the only one: one DSN), once
                _terminate(conn, sessions[0])
                sessions.append(-1)
            return found

        monkeypatch.setattr(PostgresResource, "connect", connect)
        monkeypatch.setattr(retention_assets, "load_stored_manifest", load_manifest)
        again = defs.resolve_job_def(f"Remove_{schema}_log").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        failures = [e.dagster_event.step_failure_data
                    for e in _step_events(instance, again.run_id, DagsterEventType.STEP_FAILURE)]
    assert sessions[-1] == -1, "the removal run's session was not terminated: the scenario did not happen"
    assert not again.success and failures
    told = failures[-1].user_failure_data
    error = failures[-1].error
    said = str(told.description) if told is not None else f"bare {error.cls_name}: {error.message.strip()}" + (
        f" (from {error.cause.cls_name}: {error.cause.message.strip()})" if error.cause else "")
    assert told is not None and f"{schema}.log" in said and DAY.isoformat() in said and "terminated" in said and \
        told.metadata["retryable"].value is True, f"the removal run failed with {said!r}"
