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
from archive_pipeline.resources import PostgresResource
from archive_pipeline.source import days_with_rows, describe_table


@dataclass(frozen=True)
class SensorTarget:
    spec: TableSpec
    asset_key: AssetKey
    job: "UnresolvedAssetJobDefinition"


def candidate_days(spec: TableSpec, today: dt.date, lookback_days: int) -> list[dt.date]:
    """Complete UTC days in the lookback window, never before the table's start_date."""
    first = max(spec.start_date, today - dt.timedelta(days=lookback_days))
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
        with postgres.connect() as conn:
            conn.execute("SET TimeZone = 'UTC'")
            for target in targets:
                days = candidate_days(target.spec, today, settings.lookback_days)
                done = context.instance.get_materialized_partitions(target.asset_key)
                missing = [d for d in days if d.isoformat() not in done]
                if not missing:
                    continue
                table = describe_table(conn, target.spec.name, target.spec.day_column)
                for day in days_with_rows(conn, table, missing):
                    key = day.isoformat()
                    requests.append(RunRequest(run_key=f"{target.job.name}:{key}", job_name=target.job.name,
                                               partition_key=key))
        if not requests:
            return SkipReason("every day with rows in the lookback window is archived")
        return SensorResult(run_requests=requests[: settings.max_runs_per_tick])

    return archive_new_days
