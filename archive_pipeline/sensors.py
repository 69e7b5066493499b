"""The sensor that notices days with rows in PostgreSQL and no archive yet (a new partition filled,
rows loaded late for a day never archived) and asks for runs of exactly those days."""

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

if TYPE_CHECKING:  # the type define_asset_job returns is not exported at dagster's top level
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from archive_pipeline.config import SensorSettings, TableSpec
from archive_pipeline.discovery import existing_days
from archive_pipeline.errors import ArchiveError
from archive_pipeline.resources import PostgresResource


@dataclass(frozen=True)
class SensorTarget:
    spec: TableSpec
    asset_key: AssetKey
    job: "UnresolvedAssetJobDefinition"


def candidate_days(spec: TableSpec, today: dt.date, lookback_days: int) -> list[dt.date]:
    """Complete UTC days worth looking at, never before the table's start_date: all of them where the
    catalog lists the days (declarative, naming), the lookback window where each day is a probe."""
    first = spec.start_date
    if spec.partitioning.mode == "column":
        first = max(first, today - dt.timedelta(days=lookback_days))
    return [first + dt.timedelta(days=i) for i in range((today - first).days)]


def build_new_days_sensor(targets: list[SensorTarget], settings: SensorSettings) -> SensorDefinition:
    @sensor(
        name="archive_new_days",
        jobs=[t.job for t in targets],
        minimum_interval_seconds=settings.interval_seconds,
        default_status=DefaultSensorStatus.RUNNING if settings.running else DefaultSensorStatus.STOPPED,
        description=f"Requests archive runs for days of the last {settings.lookback_days} that have rows in "
                    "PostgreSQL but no materialization yet.",
    )
    def archive_new_days(context: SensorEvaluationContext, postgres: PostgresResource) -> SensorResult | SkipReason:
        today = dt.datetime.now(dt.UTC).date()
        requests: list[RunRequest] = []
        problems: list[str] = []
        with postgres.connect() as conn:
            for target in targets:
                days = candidate_days(target.spec, today, settings.lookback_days)
                done = context.instance.get_materialized_partitions(target.asset_key)
                missing = [d for d in days if d.isoformat() not in done]
                if not missing:
                    continue
                try:
                    found = existing_days(conn, target.spec, missing)
                except ArchiveError as exc:  # one table's problem must not hide the others' new days
                    context.log.warning(str(exc))
                    problems.append(target.spec.name)
                    continue
                requests += [RunRequest(run_key=f"{target.job.name}:{d.isoformat()}", job_name=target.job.name,
                                        partition_key=d.isoformat()) for d in found]
        if not requests:
            return SkipReason("no new days to archive" + (f"; could not inspect {problems}" if problems else ""))
        return SensorResult(run_requests=requests[: settings.max_runs_per_tick])

    return archive_new_days
