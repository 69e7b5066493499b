"""Hunt 21 (ah): a code review of the Dagster layer (archive_pipeline/defs: assets, sensors, schedules, component,
resources, and definitions.py).

Held up (read and probed, not kept as tests): the ranged run's per-day isolation (a day's Failure caught per day, the
connection checked with one round trip and reopened, a connect that timed out failing the rest at once), the step
retry of a range (recorded days and days failed for good not redone), run_periods' refusals (a day not over, a key
before start_date, an empty range, a zone's skipped day), the sensor's in-flight days (runs, ranged runs, job and
asset backfills, another location's runs), the schedule's look-back of days left to failed runs, the resources'
redaction, and the component's template checks.
"""

from __future__ import annotations

import json

from dagster import DagsterEventType, execute_job, instance_for_test, reconstructable

from archive_pipeline.core.locks import lock_key
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_hunt14_ti import DAYS, _job_from_environment, _raw, _use


def test_a_single_day_run_with_retries_disabled_fails_as_a_bare_retry_request_promising_a_retry(
        conn, schema, archive_env, pg, monkeypatch):
    """Scenario: the launchpad's fail-fast switch (run config ``execution: {config: {retries: {disabled: {}}}}``)
    on a run of one partition, 2024-03-10, of Archive_<schema>_events (``retry: max_retries: 2``), while another
    session holds the day's table-day lock (another run archiving it): a transient cause.

    Now: ``archive_one_day`` builds the day's Failure with ``failure(..., step_retries(context))``, which reads only the
    op's RetryPolicy (2), not the run's retry mode (the ranged path asks ``_retries_off`` since 4484caa; the single-day
    path never does): the Failure is ``allow_retries=True`` and its advice ends "(retried as set by retry: in ...)".
    Dagster, with retries disabled, turns it into its own error: the step fails with the message "RetryRequested but
    retries are disabled", naming no table, no day and no cause (ours is buried as the chained cause, under Dagster's
    "The above exception was caused by"); that chained text still promises a retry that never comes.

    Should: with the run's retries disabled the day fails as it does with ``max_retries: 0``: our message first
    (table, day, cause), worded by ``retries_off`` ("not retried ... launch it again"). Fix idea: in
    ``archive_one_day``/``failure`` treat ``_retries_off(context)`` as 0 retries and raise the Failure with
    ``allow_retries=False`` then (Dagster only converts a retryable Failure into a RetryRequested)."""
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    spec = _use(monkeypatch, _raw(schema, retry=2, delay=0), schema)
    with pg.connect() as other, instance_for_test() as instance:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[0])).fetchone()[0]
        with execute_job(reconstructable(_job_from_environment), instance=instance,
                         tags={"dagster/partition": DAYS[0].isoformat()}, raise_on_error=False,
                         run_config={"execution": {"config": {"retries": {"disabled": {}}}}}) as result:
            run_id = result.run_id
        failures = [e.dagster_event.event_specific_data for e in instance.all_logs(
            run_id, of_type=DagsterEventType.STEP_FAILURE)]
        retried = instance.all_logs(run_id, of_type=DagsterEventType.STEP_RESTARTED)
    assert not retried and len(failures) == 1  # (the premise: one attempt, nothing retried)
    said = failures[0].error.message
    problems = []
    if spec.name not in said or DAYS[0].isoformat() not in said:
        problems.append(f"the step's failure names neither table nor day: {said.strip()!r}")
    whole = "\n".join(str(c.message) for c in _chain(failures[0].error))
    if "retried as set by retry" in whole or "This looked transient and was retried" in whole:
        problems.append("its text promises a retry that retries: disabled never makes")
    assert not problems, problems


def _chain(error):
    while error is not None:
        yield error
        error = error.cause


# --- the same for the other steps the retry: settings govern (the removal, the on-demand checks) ----------------

DISABLED = {"execution": {"config": {"retries": {"disabled": {}}}}}


def _closed_store(monkeypatch) -> None:
    """The store's endpoint a port nothing listens on: every request fails as transient (endpoint unreachable)."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")


def _run_disabled(instance, monkeypatch, raw: dict, job: str, **tags: str) -> list:
    """The step failures of ``job`` of the configuration ``raw`` run with the run's retries disabled (execute_job:
    ``execute_in_process`` ignores the run config's retry mode)."""
    monkeypatch.setenv("TI_CONFIG", json.dumps(raw))
    monkeypatch.setenv("TI_JOB", job)
    with execute_job(reconstructable(_job_from_environment), instance=instance, tags=tags, raise_on_error=False,
                     run_config=DISABLED) as result:
        run_id = result.run_id
    assert not instance.all_logs(run_id, of_type=DagsterEventType.STEP_RESTARTED)  # (the premise: none retried)
    return [e.dagster_event.event_specific_data for e in instance.all_logs(
        run_id, of_type=DagsterEventType.STEP_FAILURE)]


def _problems(failure, table: str, day: str) -> list[str]:
    """What is wrong with a step failure of a run whose retries are off: Dagster's bare retry error in place of ours
    (table, day, cause), or words promising a retry."""
    said, problems = failure.error.message, []
    if table not in said or day not in said:
        problems.append(f"the step's failure names neither table nor day: {said.strip()!r}")
    text = (failure.user_failure_data.description if failure.user_failure_data else "") + "\n".join(
        str(c.message) for c in _chain(failure.error))
    if "retried automatically" in text or "transient, retried" in text or "retried as set by retry" in text:
        problems.append(f"its text promises a retry that retries: disabled never makes: {text!r}")
    return problems


def test_a_removal_run_with_retries_disabled_fails_in_our_words_not_as_a_bare_retry_request(
        conn, schema, archive_env, monkeypatch):
    """Scenario: ``Remove_<schema>_events`` (``retry: max_retries: 2``) of a due day, launched with the run's retries
    disabled, while the store is unreachable (transient). Was: the removal asset rewrote the words only for
    ``max_retries: 0`` and raised a retryable Failure: Dagster failed the step as "RetryRequested but retries are
    disabled", and our text said "retried automatically". Should: our message first, saying it is not retried."""
    create_sample_events(conn, DAYS[:1], rows_per_day=3, schema=schema)
    _closed_store(monkeypatch)
    raw = _raw(schema, retry=2, delay=0, retention={"keep_days": 30, "action": "delete"})
    with instance_for_test() as instance:
        [failed] = _run_disabled(instance, monkeypatch, raw, f"Remove_{schema}_events",
                                 **{"dagster/partition": DAYS[0].isoformat()})
    metadata = {k: getattr(v, "value", v) for k, v in failed.user_failure_data.metadata.items()}
    assert metadata.get("retryable") is True, metadata  # (the premise: a transient cause)
    assert not _problems(failed, f"{schema}.events", DAYS[0].isoformat()), _problems(
        failed, f"{schema}.events", DAYS[0].isoformat())


def test_on_demand_checks_with_retries_disabled_fail_in_our_words_not_as_a_bare_retry_request(
        conn, schema, archive_env, monkeypatch):
    """Scenario: a day archived, then ``verify_archives`` (``retry: max_retries: 2``) launched with the run's
    retries disabled while the store is unreachable (transient). Was: ``checks._unreachable`` rewrote the words only
    for ``max_retries: 0`` (a policy known when the definitions were built, not the run's retry mode): each check
    step failed as "RetryRequested but retries are disabled". Should: our message first, saying it is not retried."""
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions

    create_sample_events(conn, DAYS[:1], rows_per_day=3, schema=schema)
    raw = _raw(schema, retry=2, delay=0)
    with instance_for_test() as instance:
        assert build_definitions(parse_config(raw), check_source=False).resolve_job_def(
            f"Archive_{schema}_events").execute_in_process(instance=instance,
                                                           partition_key=DAYS[0].isoformat()).success
        _closed_store(monkeypatch)
        failures = _run_disabled(instance, monkeypatch, raw, "verify_archives")
    assert failures, "the premise: the checks could not reach the store"
    problems = [p for failed in failures for p in _problems(failed, f"{schema}.events", DAYS[0].isoformat())]
    assert not problems, problems
