"""The daily schedule: shortly after midnight UTC, archive the day that just ended."""

import datetime as dt

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

from archive_pipeline.defs.assets import run_tags, schedule_name
from archive_pipeline.core.config import ScheduleSettings, TableSpec
from archive_pipeline.core.periods import UNIT
from archive_pipeline.core.plan import select_days
from archive_pipeline.defs.sensors import SensorTarget, days_in_flight, unfinished_backfills, unfinished_runs

# backfills that submit no more runs: the days they had not submitted are left to nobody
ENDED_BACKFILLS = (BulkActionStatus.CANCELING, BulkActionStatus.CANCELED, BulkActionStatus.FAILING,
                   BulkActionStatus.FAILED)
LOOK_BACK_DAYS = 7  # the UTC days before yesterday whose periods a tick requests again if left to a run that failed
SCHEDULE_NAME_TAG = "dagster/schedule_name"  # the tag Dagster gives a run a schedule launched


def previous_utc_day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(dt.UTC).date() - dt.timedelta(days=1)


def _description(spec: TableSpec, settings: ScheduleSettings) -> str:
    """What a tick requests, as its page says: yesterday (UTC), or every period of the table that ended then."""
    at = f"{settings.hour:02d}:{settings.minute:02d} UTC"
    if spec.granularity == "daily" and spec.timezone == "UTC":
        return f"Archives yesterday's rows of {spec.name} at {at}."
    unit = UNIT[spec.granularity]
    return (f"Archives, at {at}, every {unit} of {spec.name} ({spec.timezone}) that ended during the UTC day before"
            + (" (on most days, none)." if spec.granularity == "monthly" else "."))


def build_daily_schedule(target: SensorTarget, settings: ScheduleSettings) -> ScheduleDefinition:
    spec, job = target.spec, target.job

    @schedule(
        name=schedule_name(spec),
        cron_schedule=f"{settings.minute} {settings.hour} * * *",
        execution_timezone="UTC",
        job=job,
        default_status=DefaultScheduleStatus.RUNNING if settings.running else DefaultScheduleStatus.STOPPED,
        description=_description(spec, settings),
    )
    def _daily(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        day = previous_utc_day(context.scheduled_execution_time)
        # Periods, not dates: start_date is a day in the table's zone, ``day`` a UTC day. East of UTC the
        # first local hours (or the first local day) end during the UTC day before start_date.
        if spec.first_period.utc_end > dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC):
            return SkipReason(f"{day} (UTC) ended before {spec.name}'s first period {spec.first_period.key} "
                              f"(start_date {spec.start_date}, {spec.timezone}) did: nothing to archive yet")
        ended, missed = _ended(spec, day), _left_to_failed_runs(context, target, day)
        if missed:
            context.log.info(f"{', '.join(missed)} of {spec.name}: left by an earlier tick to a run (or backfill) "
                             "already archiving it, which failed, was canceled or succeeded without archiving this "
                             "table (another code location's); still not archived: requested again")
        if not missed + ended:
            return SkipReason(f"no {spec.granularity} period of {spec.name} ended on {day} (UTC)")
        return _requests(context, target, missed + ended)

    return _daily


def _ended(spec: TableSpec, day: dt.date) -> list[str]:
    """The partition keys of the table's periods that ended during the UTC ``day``: the day itself for a daily
    UTC table; hours, zoned days or months otherwise."""
    if spec.granularity == "daily" and spec.timezone == "UTC":
        return [day.isoformat()]
    return [p.key for p in select_days(spec, day - dt.timedelta(days=1), None, today=day + dt.timedelta(days=1))
            if p.utc_end > dt.datetime.combine(day, dt.time(), dt.UTC)]


def _left_to_failed_runs(context: ScheduleEvaluationContext, target: SensorTarget, day: dt.date) -> list[str]:
    """The periods that ended in the LOOK_BACK_DAYS UTC days before ``day`` which a run of the table that then failed
    (or was canceled) archived, or a run that succeeded and may be another code location's (:func:`_maybe_others`),
    or a backfill canceled or failed before submitting them was to archive, not materialized, and of which this
    schedule launched no run (its run, told by this location's prefix tag: another location's schedule of a table
    of the same name has the same name): the days an earlier tick left to a run in flight or a launched backfill
    (:func:`_requests`). Where only the schedule runs, nothing else requests them again (the sensor, stopped, does
    not): they would stay missing for good."""
    if context.instance_ref is None:  # (a context built to evaluate the schedule alone has no runs to look at)
        return []
    spec, instance = target.spec, context.instance
    since = dt.datetime.combine(day - dt.timedelta(days=LOOK_BACK_DAYS), dt.time(), dt.UTC)
    keys = [key for back in range(LOOK_BACK_DAYS, 0, -1) for key in _ended(spec, day - dt.timedelta(days=back))
            if spec.period(key).utc_end >= spec.first_period.utc_end]
    failed = unfinished_runs(instance, None, None, RunsFilter(
        statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED], updated_after=since))
    failed += _maybe_others(instance, target, keys, since)
    ended = unfinished_backfills(instance, None, None, BulkActionsFilter(statuses=ENDED_BACKFILLS, created_after=since))
    covered = days_in_flight(failed, target, backfills=ended, within=[spec.period(key) for key in keys])
    done = instance.get_materialized_partitions(target.asset_key)
    missed = [key for key in keys if key in covered and key not in done]
    if not missed:
        return []
    ours = instance.get_runs(RunsFilter(tags={SCHEDULE_NAME_TAG: schedule_name(spec), "dagster/partition": missed}))
    launched = {run.tags.get("dagster/partition") for run in ours if target.archived_by(run, untagged=False)}
    return [key for key in missed if key not in launched]


def _maybe_others(instance: DagsterInstance, target: SensorTarget, keys: list[str], since: dt.datetime) -> list:
    """The runs of ``keys`` that succeeded since ``since`` which :func:`_requests` counted as the table's by its
    name alone (no prefix tag, no asset selection: launched before the jobs carried PREFIX_TAG), so maybe another
    code location's run of a table of the same name: a day left to one is not archived here, and is not
    materialized. One query, by the days' partition tag (a succeeded run of this location materialized its days)."""
    if not keys:
        return []
    succeeded = unfinished_runs(instance, None, None, RunsFilter(
        statuses=[DagsterRunStatus.SUCCESS], tags={"dagster/partition": keys}, updated_after=since))
    return [run for run in succeeded if not target.archived_by(run, untagged=False)]


def _requests(context: ScheduleEvaluationContext, target: SensorTarget, keys: list[str]
              ) -> list[RunRequest] | SkipReason:
    """A run of each of ``keys`` but those a run of the table not yet finished already archives (the sensor's run
    of a big day still going at the schedule's hour, a backfill's, one being canceled) or a launched backfill is
    still to submit: a second run of the day waits for nothing, fails
    it on the table-day lock and, once its retries are spent, stays red for a day archived fine. A schedule's
    context does not say its code location: another location's run of a table of the same name is told apart by
    its prefix tag or asset selection (SensorTarget.archived_by); one launched before the jobs carried the tag
    counts, and if it succeeds the look-back (:func:`_left_to_failed_runs`) requests the day. ``keys``: oldest
    first."""
    # (a context without an instance, built to evaluate the schedule alone, has no runs to look at)
    if context.instance_ref is None:
        busy = set()
    else:
        busy = days_in_flight(unfinished_runs(context.instance, None, None), target,
                              backfills=unfinished_backfills(context.instance, None, None),
                              within=[target.spec.period(key) for key in keys])
    todo = [key for key in keys if key not in busy]
    said = (f"{', '.join(key for key in keys if key in busy)} of {target.spec.name} already being archived by a "
            "run not yet finished or a launched backfill: not requested again")
    if not todo:
        return SkipReason(said)
    if len(todo) < len(keys):
        context.log.info(said)
    return [RunRequest(run_key=f"{target.job.name}:{key}", partition_key=key, tags=run_tags(target.spec))
            for key in todo]
