"""The daily schedule: shortly after midnight UTC, archive the day that just ended."""

import datetime as dt
from typing import TYPE_CHECKING

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

if TYPE_CHECKING:  # the type define_asset_job returns is not exported at dagster's top level
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from archive_pipeline.defs.assets import TABLE_TAG, schedule_name
from archive_pipeline.core.config import ScheduleSettings, TableSpec
from archive_pipeline.core.periods import UNIT
from archive_pipeline.core.plan import select_days


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


def build_daily_schedule(spec: TableSpec, job: "UnresolvedAssetJobDefinition",
                         settings: ScheduleSettings) -> ScheduleDefinition:
    @schedule(
        name=schedule_name(spec),
        cron_schedule=f"{settings.minute} {settings.hour} * * *",
        execution_timezone="UTC",
        job=job,
        default_status=DefaultScheduleStatus.RUNNING if settings.running else DefaultScheduleStatus.STOPPED,
        description=_description(spec, settings),
    )
    def _daily(context: ScheduleEvaluationContext) -> RunRequest | list[RunRequest] | SkipReason:
        day = previous_utc_day(context.scheduled_execution_time)
        # Periods, not dates: start_date is a day in the table's zone, ``day`` a UTC day. East of UTC the
        # first local hours (or the first local day) end during the UTC day before start_date.
        if spec.first_period.utc_end > dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC):
            return SkipReason(f"{day} (UTC) ended before {spec.name}'s first period {spec.first_period.key} "
                              f"(start_date {spec.start_date}, {spec.timezone}) did: nothing to archive yet")
        if spec.granularity == "daily" and spec.timezone == "UTC":
            return RunRequest(run_key=f"{job.name}:{day.isoformat()}", partition_key=day.isoformat(),
                              tags={TABLE_TAG: spec.name})
        # Hours, zoned days, months: every period of the table that ended during that UTC day.
        ended = [p for p in select_days(spec, day - dt.timedelta(days=1), None, today=day + dt.timedelta(days=1))
                 if p.utc_end > dt.datetime.combine(day, dt.time(), dt.UTC)]
        if not ended:
            return SkipReason(f"no {spec.granularity} period of {spec.name} ended on {day} (UTC)")
        return [RunRequest(run_key=f"{job.name}:{p.key}", partition_key=p.key, tags={TABLE_TAG: spec.name})
                for p in ended]

    return _daily
