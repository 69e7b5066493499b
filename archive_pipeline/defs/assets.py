"""One daily-partitioned Dagster asset per configured table; materializing a partition archives it.

What a person sees in the UI is decided here: the state of a day (archived, empty, skipped), the
integrity check scoped to that day, a link to the object, and on failure a message that says what
to do. The archiving itself is ``archive.archive_partition``; nothing here touches the data.
"""


import contextlib
import datetime as dt
import functools
import random
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import psycopg
from dagster import (
    AssetCheckEvaluation,
    AssetRecordsFilter,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetsDefinition,
    Backoff,
    BackfillPolicy,
    BetaWarning,
    Config,
    DagsterEventType,
    DagsterExecutionInterruptedError,
    DailyPartitionsDefinition,
    HourlyPartitionsDefinition,
    MonthlyPartitionsDefinition,
    TimeWindowPartitionsDefinition,
    Failure,
    RetryRequested,
    FreshnessPolicy,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    TableColumn,
    TableColumnConstraints,
    TableSchema,
    asset,
)
from psycopg.pq import TransactionStatus
from dagster._core.instance.config import PoolGranularity
from pydantic import Field

from archive_pipeline.core.archive import (ArchiveResult, DayRemovedError, archive_partition, committed_result,
                                          render_key)
from archive_pipeline.core.parallel import StreamSlots
from archive_pipeline.core.discovery import NO_PERIOD_TABLE
from archive_pipeline.defs.checks import (CHECKING_NEW, EMPTY_DAY, INTACT_CHECK, ON_DEMAND_CHECKS, TIDYING_NEW, Retries,
                                          Verdict, alike, check_evaluation, interrupted, log_guarded, object_link,
                                          on_demand_as_they_were, recorded_day_key, removed_verdict, short_cause,
                                          source_only, terminated, verdict_as_it_was, verdict_carried, verify_result,
                                          written_verdict)
from archive_pipeline.core.config import (BackfillSettings, RetrySettings, ScheduleSettings, TableSpec, ascii_spelling,
                                          config_path, name_digest)
from archive_pipeline.core.errors import ArchiveError, SourceError, UnsupportedTypeError, is_retryable, redact, wrap
from archive_pipeline.core.manifest import NewerManifestError, inexact_groups, under_another_format
from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource
from archive_pipeline.core.periods import UNIT, Period
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.store import S3Store
from archive_pipeline.core import keys
from archive_pipeline.core.verify import (TYPE_GONE, load_manifest, load_stored_manifest, object_problems, read_only,
                                          verify_archive)

TABLE_TAG = "archive/table"  # run tag and asset tag: filter runs and assets by source table
# run tag of every archive job (a table's own, a shared one): the code location's asset_key_prefix, which the table
# tag and the job names lack ("a/b"; "" for none). Two locations archiving tables of the same name from two
# databases (README) tell their runs apart by it where a run has no asset selection to say
# (sensors.SensorTarget.archived_by)
PREFIX_TAG = "archive/asset_key_prefix"
STATE_TAG = "archive/state"  # materialization tag: archived | empty | skipped | removed

State = Literal["archived", "empty", "skipped"]
# What a run yields for each day: the day's materialization (the step's output when it is the run's
# only day), then its archive_intact result.
DayEvent = MaterializeResult | AssetCheckEvaluation


class ArchiveRunConfig(Config):
    """Per-run switches, settable in the launchpad or a backfill's config."""

    overwrite: bool = Field(default=False, description="archive again even if an identical archive exists")
    deep_check: bool = Field(default=False, description="also re-download the object, hash it and count its rows "
                             "(the table setting deep_check additionally proves its content against PostgreSQL)")


def asset_key(spec: TableSpec) -> AssetKey:
    """``[<asset_key_prefix>..., archive, <schema>, <table>]``."""
    return AssetKey([*spec.key_prefix, "archive", *spec.asset_path])


def op_name(spec: TableSpec) -> str:
    """The archive op's name, as run config in the launchpad addresses it (``ops: {<name>: ...}``)."""
    return asset_key(spec).to_python_identifier()


def job_name(spec: TableSpec) -> str:
    """``Archive_<schema>_<table>``: capitalised so that the UI's *Materialize* launches this job.

    The UI runs a selection of assets in the first job, in sorted order, that every selected asset
    belongs to, and adds only the checks of that job. An asset also belongs to Dagster's implicit
    ``__ASSET_JOB``, which holds every check; a name in lower case sorts after it, and a run that
    failed before archiving would then show the day's checks as "Execution failed" (red). A capital
    sorts before the underscore, so the button runs this job: no check step, a failed run stays a
    failed run (tested through the webserver in test_webserver.py).
    """
    return f"Archive_{'_'.join(spec.asset_path)}"


def shared_job_name(spec: TableSpec) -> str:
    """``Archives_<granularity>_<start_date>_<zone>``: one job per partitions definition that several
    tables share, so that the UI's *Materialize* of several tables at once also runs a job without
    checks rather than ``__ASSET_JOB`` (see :func:`job_name`). It sorts after every table's own job
    ("Archive_" before "Archives") and before ``__ASSET_JOB``."""
    zone = re.sub(r"[^A-Za-z0-9]", "_", spec.timezone)
    return f"Archives_{spec.granularity}_{spec.start_date:%Y_%m_%d}_{zone}"


def prefix_tag(spec: TableSpec) -> str:
    """The table's asset_key_prefix as the PREFIX_TAG value (its asset key's parts before ``archive``)."""
    return "/".join(spec.key_prefix)


def run_tags(spec: TableSpec) -> dict[str, str]:
    """The tags of the table's runs (its job's, the schedule's requests): its name, whole, and this location's
    asset_key_prefix, by which another location's run of a table of the same name is told apart."""
    return {TABLE_TAG: spec.name, PREFIX_TAG: prefix_tag(spec)}


def schedule_name(spec: TableSpec) -> str:
    return f"archive_{'_'.join(spec.asset_path)}_daily"


def asset_tag_value(name: str) -> str:
    """The table name as an asset tag value (letters, digits, ``_.-``, 63 at most); run tags keep it whole. A name
    with letters outside ASCII is spelled as its asset key spells them, with the name's digest (``public.日本`` and
    ``public.中国`` were both ``public.__``, one filter for two tables); an ASCII name keeps the value it had,
    unless it is longer than 63: cut, it ends in the name's digest too (two long names with one beginning
    shared one tag)."""
    if name.isascii():
        spelled = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        return spelled if len(spelled) <= 63 else f"{spelled[:54]}_{name_digest(name)}"
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', ascii_spelling(name))[:54]}_{name_digest(name)}"


def daily_partitions(spec: TableSpec) -> TimeWindowPartitionsDefinition:
    """The table's hours, days or months in its zone, from ``start_date`` to the last complete one (the
    current one is still being written). Keys are Dagster's, which core.periods reads (``spec.period``)."""
    cls = {"hourly": HourlyPartitionsDefinition, "daily": DailyPartitionsDefinition,
           "monthly": MonthlyPartitionsDefinition}[spec.granularity]
    start = spec.start_date.isoformat() + ("-00:00" if spec.granularity == "hourly" else "")
    return cls(start_date=start, timezone=spec.timezone)


# --- retries ---------------------------------------------------------------------------------------

RETRY_JITTER = 0.1  # each wait is its nominal value ±10%, so a fleet of failed runs does not retry in step


def retry_delay(delay_seconds: float, backoff: str, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry ``attempt`` (1, 2, 3 ...): exponential doubles the delay (30, 60, 120 s),
    linear adds it (30, 60, 90 s); ±10% jitter.

    Dagster's own ``Backoff.EXPONENTIAL`` waits ``(2**n - 1) * delay`` (30, 90, 210 s) and its
    ``Jitter.PLUS_MINUS`` adds up to ±``delay`` (0..60 s for the first wait), which is not what
    ``delay_seconds: 30`` reads as; hence our own computation.
    """
    nominal = delay_seconds * (2 ** (attempt - 1) if backoff == "exponential" else attempt)
    return nominal * (1 + RETRY_JITTER * (2 * rand() - 1))


class ArchiveRetryPolicy(RetryPolicy):
    """Dagster's RetryPolicy with the waits of :func:`retry_delay`. Dagster asks the policy for each
    wait (``calculate_delay(previous attempts + 1)``), so the UI's "retrying in N seconds" is this."""

    __slots__ = ()

    def calculate_delay(self, attempt_num: int) -> float:
        backoff = "exponential" if self.backoff == Backoff.EXPONENTIAL else "linear"
        return retry_delay(self.delay or 0, backoff, attempt_num)


def retry_policy(settings: RetrySettings) -> RetryPolicy:
    backoff = Backoff.EXPONENTIAL if settings.backoff == "exponential" else Backoff.LINEAR
    return ArchiveRetryPolicy(max_retries=settings.max_retries, delay=settings.delay_seconds, backoff=backoff,
                              jitter=Jitter.PLUS_MINUS)


# --- what a person reads ---------------------------------------------------------------------------

def human_size(n: float) -> str:
    """1,234 B / 12.3 KiB / 4.5 MiB / 1.2 GiB / 3.4 TiB."""
    if n < 1024:
        return f"{int(n):,} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if round(n, 1) < 1024 or unit == "TiB":  # (1023.96 KiB is 1.0 MiB, not "1,024.0 KiB")
            return f"{n:,.1f} {unit}"
    raise AssertionError("unreachable")


def column_schema(result: ArchiveResult) -> TableSchema:
    """The archived columns as the UI's Columns tab and column lineage read them."""
    return _table_schema((c.name, c.type_name, not c.not_null) for c in result.columns)


def manifest_column_schema(manifest: dict) -> TableSchema:
    """:func:`column_schema` of an archive known by its manifest alone (recorded by the sensor, or a removed day's
    record): its columns as archived (name, pg_type, nullable), as a skipped run's record describes them, so the
    asset's schema does not vanish from the UI when such a record is the latest."""
    return _table_schema((c["name"], c.get("pg_type") or "unknown", c.get("nullable", True))
                         for c in manifest.get("columns") or [])


def _table_schema(columns: Iterable[tuple[str, str, bool]]) -> TableSchema:
    """A TableSchema of (name, type, nullable) columns."""
    return TableSchema(columns=[TableColumn(name, type=kind, constraints=TableColumnConstraints(nullable=nullable))
                                for name, kind, nullable in columns])


def archive_state(result: ArchiveResult) -> State:
    """archived: written by this run; skipped: an identical archive was already there; empty: the day
    has no rows and is recorded by a manifest alone (no data object)."""
    if result.empty:
        return "empty"
    return "skipped" if result.skipped else "archived"


def summary(result: ArchiveResult, state: State) -> str:
    """One sentence saying what this materialization means."""
    if state == "empty":
        return (f"{result.day}: no rows in {result.source_relation}; recorded as empty by "
                f"{result.manifest_key} (no data object)")
    what = f"{result.rows:,} rows, {human_size(result.bytes)} ({result.format}, {result.compression})"
    if state == "skipped":
        return f"{result.day}: already archived, nothing uploaded: {what} at {result.uri}"
    return f"{result.day}: archived {what} to {result.uri}"


def materialization_metadata(result: ArchiveResult, link: str, verified: str, uri: str | None = None
                             ) -> dict[str, object]:
    """What a user checks after archiving a day, in the names Dagster's own integrations use, with
    sizes and counts as a person reads them beside the exact numbers."""
    state = archive_state(result)
    meta: dict[str, object] = {
        "state": state,
        "summary": summary(result, state),
        "verified": verified,
        "skipped": result.skipped,
        "source_relation": result.source_relation,
        "dagster/row_count": result.rows,
        "rows": f"{result.rows:,}",
        "object": MetadataValue.url(link),
        "dagster/uri": MetadataValue.path(uri or result.uri),  # an empty day's: its manifest
        "dagster/column_schema": column_schema(result),
        "object_key": result.key,
        "manifest_key": result.manifest_key,
        "compressed_bytes": result.bytes,
        "compressed_size": human_size(result.bytes),
        "uncompressed_bytes": result.uncompressed_bytes,
        "uncompressed_size": human_size(result.uncompressed_bytes),
        "compression_ratio": round(result.compression_ratio, 2),
        "md5": result.md5,
        "sha256": result.sha256,
        "format": result.format,
        "compression": result.compression,
        "parts": result.parts,
        "duration_seconds": round(result.duration_seconds, 3),
        # a skip reads no rows: no extraction, upload or rate of its own to report
        **({} if result.skipped else {"extract_seconds": round(result.extract_seconds, 3),
                                      "upload_wait_seconds": round(result.upload_wait_seconds, 3),
                                      "rows_per_second": round(result.rows_per_second)}),
        "snapshot_at": MetadataValue.timestamp(result.snapshot_at),
        "source_server_version": result.server_version,
        "archiver_version": result.archiver_version,
    }
    meta["fingerprint"] = result.fingerprint
    meta["generation"] = result.generation
    if result.streams:
        meta["streams"] = result.streams
    inexact = sorted(name for name, e in result.encodings.items() if not e.get("exact", True))
    meta["exact"] = not inexact
    if inexact:
        # (each distinct note once, with the columns it is about: a note per column was 75 kB a day for 200 json)
        # (a column alone keyed by its name as it is, as before the grouping)
        meta["inexact_columns"] = MetadataValue.json(
            {inexact[0]: result.encodings[inexact[0]].get("note", "")} if len(inexact) == 1 else
            {names: note or "" for names, _, note in inexact_groups(
                [{**result.encodings[n], "name": n, "exact": False} for n in inexact])})
    return meta


def recorded(result: ArchiveResult) -> dict[str, object]:
    """What this run recorded, as the integrity check compares it with the store."""
    expected = {"bytes": result.bytes, "md5": result.md5, "rows": result.rows, "format": result.format,
                "compression": result.compression, "empty": result.empty, "object_key": result.key,
                "manifest_key": result.manifest_key}
    if result.fingerprint:
        expected["fingerprint"] = result.fingerprint
    return expected


def overwrite_run_config(spec: TableSpec) -> str:
    """The launchpad run config that archives a day again, with this table's real op name."""
    return f"ops:\n  {op_name(spec)}:\n    config:\n      overwrite: true"


def remedy(exc: BaseException, spec: TableSpec, day: dt.date, origin: str | None = None) -> str:
    """What a person does about ``exc``: which setting, where (``origin``: where the configuration came
    from, default the YAML file). The core's own remedy (errors.classify) comes first; a changed source
    gets the exact launchpad run config that archives the day again."""
    where = origin or str(config_path())
    if type(exc).__name__ == "LateRowsError":
        return "The source changed after it was archived. " + relaunch(spec, day, origin)
    if getattr(exc, "cause", None) == TYPE_GONE and getattr(exc, "needs_overwrite", False):
        # no verdict, and none until the day is archived as it is now (a removed day's remedy is the type's name)
        return "Nothing is known to be wrong with the archive, but it cannot be proven here. " + relaunch(spec, day,
                                                                                                        origin)
    own = getattr(exc, "remedy", None)
    if own:
        return own
    if getattr(exc, "needs_overwrite", False):  # an archive of another format, period or database at the day's key
        return relaunch(spec, day, origin)
    if isinstance(exc, UnsupportedTypeError):
        return (f"Choose another format for table {spec.name!r} in {where} (jsonl keeps every type as "
                "PostgreSQL prints it), or change the column's type.")
    if isinstance(exc, SourceError):
        return (f"Check table {spec.name!r} in {where}: its name, day_column ({spec.day_column}) and "
                f"partitioning mode ({spec.partitioning.mode}) must match the database.")
    if is_retryable(exc):
        return (f"This looked transient and was retried (retry: in {where}). Once the database or the "
                "store is reachable again, re-execute the run (Runs → this run → Re-execute) or launch "
                f"partition {day} of {job_name(spec)}.")
    return f"Fix the cause above, then launch partition {day} of {job_name(spec)} again."


def relaunch(spec: TableSpec, day: dt.date, origin: str | None = None) -> str:
    """How to archive one day again from the UI: the launchpad's run config with overwrite."""
    return (f"To archive {day} again, open the job {job_name(spec)} in the launchpad, pick partition {day} "
            f"and use this run config:\n{overwrite_run_config(spec)}\n(overwrite: true for table "
            f"{spec.name!r} in {origin or config_path()} would re-archive every changed day).")


def failure(exc: BaseException, spec: TableSpec, day: dt.date, password: str | None,
            origin: str | None = None, retries: Retries | None = None) -> Failure:
    """The step failure a person reads: table, day, cause (never a secret), what to do; no stack trace of
    ours, because the cause is in the message. ``retries``: the step's (:func:`step_retries`), where known (off,
    a transient failure is not retried, and the message must not say it is; the step raises it as
    :meth:`~archive_pipeline.defs.checks.Retries.final` makes it)."""
    said = exc if isinstance(exc, ArchiveError) else wrap(exc, spec.name, day.isoformat(), password)
    cause = redact(said.message if said is exc else str(said), password)
    if spec.name not in cause:
        cause = f"{spec.name} {day}: {cause}"
    retryable = is_retryable(exc)
    advice = remedy(exc, spec, day, origin)
    if retryable and retries is not None and retries.off:
        cause, advice = retries.words(cause, origin), retries.words(advice, origin)
    elif retryable and "retried" not in advice:
        advice += f" (retried as set by retry: in {origin or config_path()})"
    nothing = (isinstance(exc, DayRemovedError) and exc.nothing_to_do
               or getattr(exc, "cause", None) == NO_PERIOD_TABLE)  # (naming mode: a day without its table)
    # (a removed day whose rows are back: its own advice is overwrite too, as is a changed or unprovable day's)
    overwrite = not retryable and getattr(exc, "needs_overwrite", False)
    damaged = isinstance(exc, DayRemovedError) and exc.damaged
    return Failure(description=f"{cause}\n\nWhat to do: {advice}", allow_retries=retryable,
                   metadata={"table": spec.name, "day": day.isoformat(), "retryable": retryable,
                             "error": type(exc).__name__, **short_cause(said),
                             **({NOTHING_TO_DO: True} if nothing else {}),
                             **({REMOVED_MANIFEST: exc.manifest_key} if getattr(exc, "manifest_key", None) else {}),
                             **({NEEDS_OVERWRITE: True} if overwrite else {}), **({DAMAGED: True} if damaged else {})})


def step_retries(context: AssetExecutionContext) -> Retries:
    """What the step does with a transient failure: its op's retry policy's max_retries (None where the op has
    none), off too where the run was launched with its retries disabled, which no policy overrides."""
    return Retries.of(_retry_policy(context), None).during(context)


def _retry_policy(context: AssetExecutionContext) -> RetryPolicy | None:
    return getattr(getattr(context, "op_def", None), "retry_policy", None)


NOTHING_TO_DO = "nothing_to_do"  # a day's failure with nothing to redo: a removed day whose archive is kept
REMOVED_MANIFEST = "removed_manifest_key"  # where a removed day's manifest is (its format's, or a former key's)
NEEDS_OVERWRITE = "needs_overwrite"  # a day's failure that only archiving it again with overwrite ends
DAMAGED = "archive_damaged"  # a day's failure that is its archive found damaged: the day's check verdict too


def _flag(metadata: dict, key: str) -> bool:
    """A true/false entry of a failure's or an observation's metadata (a plain value, or a MetadataValue's)."""
    return bool(getattr(metadata.get(key), "value", metadata.get(key)))


def _flags(metadata: dict) -> dict[str, bool]:
    """What a failed day's advice is (nothing to redo, overwrite), carried to a retried step's observation."""
    return {key: True for key in (NOTHING_TO_DO, NEEDS_OVERWRITE) if _flag(metadata, key)}


def _removed(failed: Failure) -> bool:
    """A day's failure that is a day retention removed and nothing else (its archive is kept: nothing to redo)."""
    return _flag(failed.metadata, NOTHING_TO_DO)


def _needs_overwrite(failed: Failure) -> bool:
    """A day's failure that only an archive with overwrite ends (the source changed since it was archived, or a
    type its archive records is gone: see :func:`failure`)."""
    return _flag(failed.metadata, NEEDS_OVERWRITE)


def freshness_policy(settings: ScheduleSettings, granularity: str = "daily") -> FreshnessPolicy:
    """Overdue in the UI when nothing was archived between midnight UTC and ``freshness_hours`` after
    the schedule's time: "yesterday is not archived by the expected hour".

    A deadline past midnight (hour 23, minute 45, 3 hours: 02:45) falls on the next day; it used to be
    clamped to 23:59, a few minutes after the run starts, so every day showed as overdue. Dagster lets
    the window reach back at most one cron interval (a day), so it then starts 24 hours before the
    deadline, which still holds the schedule's run (freshness_hours is at most 23)."""
    total = dt.timedelta(hours=settings.hour + settings.freshness_hours, minutes=settings.minute)
    days_after, deadline = divmod(total, dt.timedelta(days=1))
    hours, minutes = divmod(int(deadline.total_seconds()) // 60, 60)
    if granularity == "monthly":  # a month ends once a month; west of UTC it is requested on the 2nd
        return _cron_freshness(f"{minutes} {hours} {2 + days_after} * *", total + dt.timedelta(days=1))
    return _cron_freshness(f"{minutes} {hours} * * *", min(total, dt.timedelta(days=1)))


@functools.lru_cache(maxsize=None)
def _cron_freshness(deadline_cron: str, lower_bound_delta: dt.timedelta) -> FreshnessPolicy:
    """One (immutable) policy per deadline, shared by every table with it: Dagster checks each new policy
    against its cron by walking the cron's times, ~10 ms, a second of every load of 100 tables."""
    return FreshnessPolicy.cron(deadline_cron=deadline_cron, lower_bound_delta=lower_bound_delta, timezone="UTC")


def backfill_policy(settings: BackfillSettings, granularity: str = "daily") -> BackfillPolicy | None:
    """Backfills of many days run ``max_days_per_run`` days of a table per run, each day still its own
    materialization, check result and lock; 1 keeps one run per period (no policy), as before. Above 1 the
    setting counts days whatever the table's periods: an hourly table's run holds 24 hours a day, a monthly
    table's as many whole months as fit in that many days (a month being up to 31), one at least."""
    if settings.max_days_per_run <= 1:
        return None
    periods = {"hourly": settings.max_days_per_run * 24,
               "monthly": settings.max_days_per_run // 31}.get(granularity, settings.max_days_per_run)
    if periods <= 1:
        return None
    with warnings.catch_warnings():  # backfill policies are "beta" in 1.13; this is the behaviour we want
        warnings.simplefilter("ignore", BetaWarning)
        return BackfillPolicy.multi_run(max_partitions_per_run=periods)


def _asset_description(spec: TableSpec, example_key: str) -> str:
    """What the asset's page says a partition holds: the rows of its period by the day column, or (naming mode
    without one) the period's own table archived whole; one object per period."""
    unit = UNIT[spec.granularity]
    held = (f"the rows with `{spec.day_column}` in that {unit} ({spec.timezone})" if spec.day_column else
            f"the {unit}'s own table (`{spec.partitioning.pattern}`), archived whole")
    return (f"{spec.granularity.capitalize()} archive of PostgreSQL table `{spec.name}`: each partition holds {held}, "
            f"as {spec.format} ({spec.compression}) at `{example_key}` (one object per {unit}; an empty {unit} is a "
            "manifest alone). A missing partition has not been archived yet.")


def build_archive_asset(spec: TableSpec, retry: RetrySettings, schedule: ScheduleSettings | None = None,
                        backfill: BackfillSettings | None = None, origin: str | None = None) -> AssetsDefinition:
    """The partitioned asset that archives ``spec``, one UTC day per partition.

    A run archives the days of its partition range one by one on one connection (a backfill run
    holds up to ``backfill.max_days_per_run`` days): each day gets its own materialization with its
    own metadata and its own ``archive_intact`` result, and a day that fails does not stop the
    others (see :func:`archive_days`). The check is evaluated by the asset itself after each
    successful archive, so a run that fails before archiving leaves the day's check as it was
    instead of turning it red; jobs select the asset without its checks.
    """
    example_key = render_key(spec, spec.first_period, "<prefix>")
    key = asset_key(spec)

    @asset(
        key=key,
        partitions_def=daily_partitions(spec),
        # Days are recorded one by one (AssetMaterialization with partition=), so a failed day in a
        # ranged run is not marked materialized along with its neighbours.
        output_required=False,
        # The UI labels a node with the key's last part ("events"): one group per schema keeps
        # public.events and sales.events apart at a glance, without changing keys or history.
        group_name=f"archive_{spec.asset_path[0]}",
        description=_asset_description(spec, example_key),
        retry_policy=retry_policy(retry),
        kinds={"postgres", "s3"},
        pool=spec.pool,
        tags={TABLE_TAG: asset_tag_value(spec.name)},
        freshness_policy=freshness_policy(schedule or ScheduleSettings(), spec.granularity),
        metadata={"source_table": spec.name, "day_column": spec.day_column or "(none: the day's own table)",
                  "format": spec.format,
                  "compression": spec.compression, "key_template": spec.key_template,
                  "partitioning": spec.partitioning.mode, "deep_check": spec.deep_check},
    )
    def archive(context: AssetExecutionContext, config: ArchiveRunConfig, postgres: PostgresResource,
                primary_postgres: PostgresResource, archive_store: ArchiveStoreResource) -> Iterator[DayEvent]:
        yield from archive_days(context, spec, key, config, postgres, archive_store, origin, primary=primary_postgres)

    policy = backfill_policy(backfill or BackfillSettings(), spec.granularity)
    return archive.with_attributes(backfill_policy=policy) if policy else archive


# --- one run: its days, one by one -------------------------------------------------------------------

class _Source:
    """One connection for all the days of a run (connecting costs more than a small day's queries),
    opened again only when a day's failure has broken it; and, for the deep check of a day read from a
    hot standby, one to the primary, where the archive is loaded back (a standby allows no temporary
    tables)."""

    def __init__(self, postgres: PostgresResource, primary: PostgresResource | None = None) -> None:
        self.postgres, self.primary = postgres, primary
        self.stack = contextlib.ExitStack()
        self.conn: psycopg.Connection | None = None
        self.scratch_conn: psycopg.Connection | None = None
        self.unreachable: BaseException | None = None  # the connect that failed: the run's other days fail with it

    def get(self) -> psycopg.Connection:
        """The run's connection, checked with one round trip when a day before used it (:func:`_usable`)."""
        if _usable(self.conn):
            return self.conn
        if self.unreachable is not None:
            # a database that did not answer a connect a moment ago: each further day would wait out the connect
            # timeout again (50 days of 10 s), so they fail at once with its cause, and a retry tries them all
            raise self.unreachable
        self.stack.close()
        self.scratch_conn = None
        try:
            self.conn = self.stack.enter_context(self.postgres.connect())
        except ArchiveError as exc:
            # a connect that waited out its timeout (a server that does not answer), or a login refused for good
            # (a wrong password, no pg_hba line, no such role or database: each further try is one more failed
            # login, which auth_delay or an account lockout punishes); a connect refused for now (the server
            # starting, full) costs nothing to try again, and the next day's may find the server back
            if not exc.retryable or "timeout" in str(exc).lower():
                self.unreachable = exc
            raise
        return self.conn

    def scratch(self, conn: psycopg.Connection) -> psycopg.Connection | None:
        """Where deep verification loads the archive: the primary when ``conn`` is a hot standby and a
        primary is configured (the same connection as ``conn`` otherwise: None), checked as :meth:`get` checks its
        own."""
        if self.primary is None or self.primary.dsn == self.postgres.dsn:
            return None
        if not read_only(conn):
            return None
        if not _usable(self.scratch_conn):  # (ended while idle between days: the next day's proof got it dead)
            self.scratch_conn = self.stack.enter_context(self.primary.connect())
        return self.scratch_conn

    def close(self) -> None:
        self.stack.close()


def _usable(conn: psycopg.Connection | None) -> bool:
    """Whether a session kept from an earlier day still answers, its failed transaction rolled back (which must not
    leak into the next day): one round trip, since a session the server ended while it sat idle between days
    (terminated, the server restarted) is found only by its next query, and that day failed for its neighbour's
    loss."""
    if conn is None or conn.closed or conn.broken:
        return False
    try:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def archive_days(context: AssetExecutionContext, spec: TableSpec, key: AssetKey, config: ArchiveRunConfig,
                 postgres: PostgresResource, archive_store: ArchiveStoreResource, origin: str | None = None,
                 *, primary: PostgresResource | None = None) -> Iterator[DayEvent]:
    """Archive every day of the run's partitions, each recorded as its own materialization.

    One day (a schedule, the sensor, one partition from the UI) fails the step at once, as before.
    Of several days (a ranged backfill run), a day that fails is logged and the others go on; the
    step then fails naming the failed days, so they show as failed and the archived ones as
    materialized. A step retry of the batch skips the days this run already recorded; a re-execution
    finds them identical in the store and records them as skipped, without uploading anything.
    """
    try:
        yield from _archive_days(context, spec, key, config, postgres, archive_store, origin, primary)
    except Exception:
        yield from on_demand_as_they_were(context, spec, key)
        raise


def _archive_days(context: AssetExecutionContext, spec: TableSpec, key: AssetKey, config: ArchiveRunConfig,
                  postgres: PostgresResource, archive_store: ArchiveStoreResource, origin: str | None,
                  primary: PostgresResource | None) -> Iterator[DayEvent]:
    days = run_periods(context, spec)
    done = _recorded_in_run(context, key) if context.retry_number > 0 else set()
    resumed = any(context.run.tags.get(tag) == "true" for tag in ("dagster/is_resume_retry",
                                                                   "dagster/is_asset_resume_retry"))
    if context.run.parent_run_id and resumed and (config.overwrite or spec.overwrite):
        # a re-execution from failure (Runs → Re-execute → From failure) of an overwrite: the days its run group
        # already archived again are not archived again once more (without overwrite they are found identical
        # anyway); "all steps" is a fresh run of the whole range, overwrite and all
        done |= _recorded_in_run(context, key, _run_group(context))
    todo = [d for d in days if d.isoformat() not in done]
    if done:
        context.log.info(f"{spec.name}: retry of this run; {len(days) - len(todo)} of {len(days)} days were "
                         "archived by an earlier attempt and are not done again")
    try:  # a client that cannot be built (an endpoint without its scheme): the setting named, no retry helps
        store = archive_store.store_for(f"archiving {spec.name} {days[0]}" if len(days) == 1 else
                                        f"archiving {spec.name} {days[0]}..{days[-1]}")
    except Failure as exc:
        yield from verdicts_as_they_were(context, key, todo)
        if len(days) == 1:
            raise
        raise batch_failure(spec, days, dict.fromkeys(todo, exc)) from None
    source = _Source(postgres, primary)
    failed = _failed_for_good(context, spec) if context.retry_number > 0 else {}
    todo = [d for d in todo if d not in failed]
    records = DayRecords(context, deferred=len(days) > 1 and output_read_downstream(context, checks=False))
    unrecorded = []  # days gone from the source that nothing records: no output may materialize them
    try:
        for day in todo:
            try:
                yield from archive_one_day(context, spec, key, day, config, source, archive_store, store,
                                           alone=len(days) == 1, origin=origin, records=records)
            except Failure as exc:
                removed = None
                if _removed(exc):  # archived, proven and let go: nothing to redo, unless its archive is damaged
                    try:  # (a run of the day alone looks too: its failure must not say "nothing to do" then)
                        removed = removed_archive(context, key, spec, day, exc, store, archive_store, origin)
                        if len(days) > 1:  # not failed: recorded as removed where its manifest says it was
                            context.log.info(exc.description or f"{spec.name} {day}: removed; its archive is kept")
                            if removed is None:
                                unrecorded.append(day)
                            else:
                                record_removed(context, key, day, exc, records, removed, store, archive_store)
                            continue
                    except Failure as damaged:  # its object or manifest, the day's only copy, damaged or unread
                        exc = damaged
                yield from verdicts_as_they_were(context, key, [day], exc, removed)
                if len(days) == 1:  # (the day's damaged archive, where it was found so, not the core's "nothing to
                    # do"; not retryable where no retry follows, so Dagster's bare retry error does not replace it)
                    raise step_retries(context).final(exc)
                failed[day] = exc
                context.log.error(exc.description or f"{spec.name} {day} failed")
            except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
                raise cancelled_batch(terminated(context, exc, spec, day, "archiving", job_name(spec)), spec,
                                      todo[todo.index(day) + 1:], failed) from None
    except BaseException:
        records.flush()
        raise
    finally:
        source.close()
    if failed or skipped_keys(context, spec):
        records.flush()
    if failed:
        for day in todo:  # what a retry of this step reads back (a retried step records no STEP_FAILURE)
            if day in failed and not failed[day].allow_retries:
                context.log_event(AssetObservation(asset_key=key, partition=day.isoformat(), metadata={
                    FAILED_FOR_GOOD: failed[day].description or "", **_flags(failed[day].metadata)}))
        raise after_retry_wait(context, spec, batch_failure(spec, days, failed, skipped_keys(context, spec)), failed)
    if phantoms := skipped_keys(context, spec):
        raise batch_failure(spec, days, {}, phantoms)
    if unrecorded and records.deferred:
        # the range's output would materialize every day of it, these too (nothing archived, no record of a
        # removal): the days are logged one by one instead, and the steps downstream do not run for the range
        records.flush()
        context.log.warning(f"{spec.name}: {', '.join(d.isoformat() for d in unrecorded)}: gone from the source with "
                            "no archive recorded; the range's output is not yielded, so the assets downstream do not "
                            "run for it (launch them for the archived days)")
        return
    yield from records.output(key, sorted(done))


class DayRecords:
    """How a run records its days. Each as soon as it is done (an AssetMaterialization logged from the asset's code),
    so a day archived before a later one fails, or before the run is terminated, shows materialized and a retry does
    not redo it. A ranged run whose output another step reads (a user's asset downstream of the archive, in one of
    their jobs) is ``deferred``: Dagster runs that step only once the asset yields its output, and that output
    materializes every day of the range. There each day's metadata is handed to the output (partition-scoped
    metadata, Dagster's way of giving a range's days their own), its check recorded after it; the days are logged
    one by one as usual if the run fails instead."""

    def __init__(self, context: AssetExecutionContext, *, deferred: bool) -> None:
        self.context, self.deferred = context, deferred
        self._pending: list[tuple[AssetMaterialization, Callable[[], AssetCheckEvaluation | None] | None]] = []

    def record(self, materialization: AssetMaterialization,
               evaluation: Callable[[], AssetCheckEvaluation | None] | None) -> None:
        if not self.deferred:
            _log_day(self.context, materialization, evaluation)
            return
        self.context.add_asset_metadata(dict(materialization.metadata), partition_key=materialization.partition)
        self._pending.append((materialization, evaluation))

    def flush(self) -> None:
        """Log the days kept for the output one by one: the run fails, and yields no output."""
        pending, self._pending = self._pending, []
        for materialization, evaluation in pending:
            _log_day(self.context, materialization, evaluation)

    def output(self, key: AssetKey, earlier: list[str]) -> Iterator[DayEvent]:
        """The step's output for a deferred range, then each day's check about its materialization. Days an earlier
        attempt of the step recorded get their record again (an output without it would be a bare one over it)."""
        if not self.deferred:
            return
        states = {m.tags.get(STATE_TAG) for m, _ in self._pending}
        repeated = {}
        for partition in earlier:
            before = _latest_record(self.context, key, partition)
            states.add(before.asset_materialization.tags.get(STATE_TAG) if before is not None else None)
            if before is not None:
                repeated[partition] = before.storage_id
                self.context.add_asset_metadata(dict(before.asset_materialization.metadata), partition_key=partition)
        yield MaterializeResult(tags={STATE_TAG: states.pop()} if len(states) == 1 and None not in states else None)
        for _, evaluation in self._pending:
            if evaluation is not None and (checked := evaluation()) is not None:
                yield checked
        for partition, storage_id in repeated.items():  # recorded again by the output: the verdict about the record
            # repeated too (an earlier attempt's, or a run's this one re-executes from failure)
            if (carried := verdict_carried(self.context, key, partition, storage_id)) is not None:
                yield carried
        self._pending = []


@dataclass(frozen=True)
class RemovedArchive:
    """A removed day's archive as a run found it: the day's latest record (None: none), the key and manifest it was
    removed with (marked removed), and what the run found of it (a passed verdict: a damaged one fails the day)."""

    before: object
    day_key: str
    manifest: dict
    found: Verdict

    @property
    def repeated(self) -> bool:
        """Whether the day's latest record is of this very archive (its object's key and MD5; an empty day's: its
        manifest): the record a removed day's repeats, and the one its verdicts are about."""
        if self.before is None:
            return False
        recorded = {name: getattr(value, "value", value)
                    for name, value in self.before.asset_materialization.metadata.items()}
        obj = self.manifest.get("object")
        if obj is None:
            return not recorded.get("md5") and recorded.get("manifest_key") == keys.manifest_key(self.day_key)
        return recorded.get("object_key") == obj.get("key") and recorded.get("md5") == obj.get("md5")


def removed_archive(context: AssetExecutionContext, key: AssetKey, spec: TableSpec, day: Period, exc: Failure,
                    store: S3Store, archive_store: ArchiveStoreResource, origin: str | None) -> RemovedArchive | None:
    """The archive of a day the core found removed (``exc``: nothing to do), looked at before the day is said to have
    nothing to do, in a run of the day alone too: the archive is the day's only copy. None where no manifest of the
    day says it was removed (a naming-mode day whose table is merely gone). Raises the day's :class:`Failure` where
    its manifest cannot be read or its object is not as recorded (see :func:`_refuse_damaged`), worded as the step's
    retry policy (``origin``: where the configuration came from) makes it true."""
    retries = step_retries(context)
    before = _latest_record(context, key, day.isoformat())
    found = _removed_manifest(spec, day, exc, store, before, origin, retries)
    if found is None:
        return None
    day_key, manifest = found
    verdict = _refuse_damaged(spec, day, day_key, manifest, store, archive_store.temp_dir, origin, retries)
    return RemovedArchive(before, day_key, manifest, verdict)


def record_removed(context: AssetExecutionContext, key: AssetKey, day: Period, exc: Failure, records: DayRecords,
                   removed: RemovedArchive, store: S3Store, archive_store: ArchiveStoreResource) -> None:
    """Record a removed day of a ranged run as materialized again: its archive (proven before the day was let go)
    is the day's only copy and still there (``removed``: see :func:`removed_archive`). Dagster marks every partition
    a failed run planned and did not materialize as failed, so without a record a failing neighbour turned the
    removed day red, beside the one day that needs doing. The record is built from the manifest the day was removed
    with, with state ``removed``: the day's last materialization repeated where it records that very archive; else
    (archived again, or archived and let go by the command line) what the manifest records, with the link and sizes
    of any archived day's record. Either way it says the removal proved the archive (it did, before it let the day
    go). Its ``archive_intact`` verdict: see :func:`~archive_pipeline.defs.checks.removed_verdict`."""
    partition, before, manifest, same = day.isoformat(), removed.before, removed.manifest, removed.repeated
    said = (exc.description or "").split("\n\nWhat to do:")[0]
    # a removal proves the archive before it marks the manifest (lifecycle.remove_day): the record says so, as
    # archive_intact's deep_check wants a proof recorded (it is not "archived before deep_check was set", nor
    # "not verified" where the proof of its own run could not run)
    proven = {"verified": f"content proven: {_removal_proof(manifest)}"}
    if same and str(getattr(before.asset_materialization.metadata.get("verified"), "value", "")).startswith(
            "content proven"):
        proven = {}
    metadata = {**(before.asset_materialization.metadata if same else
                   _manifest_metadata(manifest, store, removed.day_key, archive_store)),
                **proven, "state": "removed", "removed": said,
                "summary": f"{partition}: removed from the source; its archive is kept (nothing to do)"}
    records.record(AssetMaterialization(asset_key=key, partition=partition, metadata=metadata, description=said,
                                        tags={**(before.asset_materialization.tags if same else {}),
                                              STATE_TAG: "removed"}),
                   functools.partial(removed_verdict, context, key, partition, before.storage_id if same else None,
                                     removed.found))


def _removal_proof(manifest: dict) -> str:
    """That the day's removal (its manifest's mark) proved the archive before it let the day go."""
    mark = manifest.get("removed") if isinstance(manifest.get("removed"), dict) else {}
    return (f"the day's removal from the source ({mark.get('action', 'removed')} at "
            f"{mark.get('at', 'a time not recorded')}) proved its archive first")


def _removed_manifest(spec: TableSpec, day: Period, exc: Failure, store: S3Store, before, origin: str | None,
                      retries: Retries | None) -> tuple[str, dict] | None:
    """(the day's key, its manifest) of a removed day: the first manifest of :func:`_removed_keys` marked removed
    (with an object, or empty); None where none is. The day's only record unread fails the day (see
    :func:`_manifest_unread`): so does the one the core found removed there reading as absent while a listing shows
    it (``load_stored_manifest``: the store contradicting itself is no "not removed", retryable)."""
    partition, day_key, named = day.isoformat(), None, _found_by_core(exc)
    try:
        for day_key in _removed_keys(spec, day, exc, store, before):
            read = load_stored_manifest if day_key == named else load_manifest
            manifest = read(store, day_key, (spec.name, partition))
            if manifest and manifest.get("removed") and (manifest.get("object") or manifest.get("empty")):
                return day_key, manifest
    except Exception as unread:  # noqa: BLE001 - the day's only record unread: the day fails, not "nothing to do"
        where = day_key or table_day_key(spec, day, store.prefix)
        raise _manifest_unread(spec, partition, store.uri(keys.manifest_key(where)), unread, origin,
                               retries) from None
    return None


def _found_by_core(exc: Failure) -> str | None:
    """The key whose manifest the core found marking the day removed (``REMOVED_MANIFEST``); None: it names none."""
    where = exc.metadata.get(REMOVED_MANIFEST)
    where = getattr(where, "value", where)
    return where.removesuffix(keys.MANIFEST_SUFFIX) if where else None


def _removed_keys(spec: TableSpec, day: Period, exc: Failure, store: S3Store, before) -> Iterator[str]:
    """Where a removed day's manifest may be, each once: where the core found it (under the table's former format
    or key too); else (a naming-mode day without its table, which the core reads no further) the key the day's last
    materialization recorded (whatever the table's format, key_template or prefix became since), then where a
    removal looks, in lifecycle.archive_key's order: the key the configuration renders, the table's other formats'
    keys. A day archived again (overwrite, another format) and let go there is marked at its new key, not at the one
    its record names: looked at only there, it counted as gone with no archive recorded."""
    if where := _found_by_core(exc):
        yield where
        return
    named = before.asset_materialization.metadata.get("manifest_key") if before is not None else None
    recorded = recorded_day_key(spec, day, store, getattr(named, "value", named))  # (else the rendered key)
    yield recorded
    rendered = table_day_key(spec, day, store.prefix)
    if rendered != recorded:
        yield rendered
    other = under_another_format(store, spec, day)
    if other is not None and other[0] not in (recorded, rendered):
        yield other[0]


def _refuse_damaged(spec: TableSpec, day: Period, day_key: str, manifest: dict, store: S3Store,
                    temp_dir: str | None, origin: str | None, retries: Retries | None) -> Verdict:
    """What a run finds of a removed day's archive, as a (passed) verdict; the day fails where its object is not as
    its manifest records (missing, replaced: one HEAD), as the core fails a column-mode one: the archive is the day's
    only copy, and a record saying it is kept would hide that. The recorded size under another ETag alone proves no
    damage: an object copied onto itself in parts (``aws s3 cp`` above its multipart threshold, a storage class
    changed) holds the same bytes under an ETag ``<...>-1``, so its download's digests decide, as a deep check's do
    (verify.verify_archive). A store that does not answer fails the day as transient (``retries``, ``origin``: see
    :func:`failure`)."""
    obj = manifest.get("object")
    if not obj:  # an empty day: its manifest is its archive
        return Verdict(day, [], f"{EMPTY_DAY}, and {_removal_proof(manifest)}",
                       {"archive": store.uri(keys.manifest_key(day_key)), "deep": False, "problems": 0})
    how, deep = "object found with the size and ETag its manifest records", False
    try:
        problems = object_problems(store, manifest)
        if problems and not any(problem.endswith(" is missing") for problem in problems):
            # a HEAD's word (another ETag, another size: a gateway's wrong Content-Length) is not believed where the
            # bytes can be had: the download's digests decide, as a deep check's do
            problems = verify_archive(store, day_key, {}, deep=True, manifest=manifest, temp_dir=temp_dir)
            how, deep = ("object, whose HEAD answered otherwise than recorded (a copy onto itself, a gateway's), "
                         "downloaded: its size, MD5, SHA-256 and rows are as its manifest records"), True
    except Exception as unasked:  # noqa: BLE001 - the store did not answer: the day fails, retried where that helps
        raise failure(unasked, spec, day, None, origin, retries) from None
    if problems:
        mark = manifest["removed"] if isinstance(manifest["removed"], dict) else {}
        raise failure(DayRemovedError(
            f"{spec.name} {day} was removed from the source at {mark.get('at')}, and its archive is damaged "
            f"({'; '.join(problems)}); nothing was recorded", table=spec.name, day=day.isoformat(), damaged=True),
            spec, day, None, origin, retries) from None
    return Verdict(day, [], f"{how} (checked by this run), and {_removal_proof(manifest)}",
                   {"archive": store.uri(obj["key"]), "deep": deep, "problems": 0})


def _manifest_unread(spec: TableSpec, partition: str, uri: str, exc: BaseException, origin: str | None = None,
                     retries: Retries | None = None) -> Failure:
    """A removed day whose manifest (its archive's only record: the source rows are gone) cannot be read: damaged
    or altered (not retried: restore the manifest from a backup of the bucket), written by a newer version (not
    retried: upgrade), or the store not answering (retried, unless the step's ``retries`` are off: see
    :func:`~archive_pipeline.defs.checks.retries_off`)."""
    said = getattr(exc, "message", None) or str(exc)
    retryable = damaged = False
    if isinstance(exc, NewerManifestError):
        what, remedy = "could not be read", NewerManifestError.remedy
    elif isinstance(exc, ValueError):  # ManifestError: not a manifest, altered, another table-day's
        what, remedy = "is damaged or was altered", ("restore the manifest from a backup or an earlier version of the "
                                                     "bucket (the day is gone from the source: the archive may be its "
                                                     "only copy), then run the day again")
        damaged = True
    else:
        what, remedy = "could not be read", "retried automatically; if it persists, check the store and the path to it"
        retryable = is_retryable(exc)
    text = (f"{spec.name} {partition}: the day is gone from the source, and its manifest {uri} {what} ({said}); "
            f"nothing was recorded.\n\nWhat to do: {remedy}.")
    off = retryable and retries is not None and retries.off
    return Failure(description=retries.words(text, origin) if off else text,
                   allow_retries=retryable, metadata={"table": spec.name, "day": partition, "retryable": retryable,
                                                      **({DAMAGED: True} if damaged else {})})


def _latest_record(context: AssetExecutionContext, key: AssetKey, partition: str):
    """The day's latest materialization in this instance (its event log record: the verdicts about it name its
    storage id), or None."""
    found = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    return found[0] if found else None


def _manifest_metadata(manifest: dict, store: S3Store, day_key: str,
                       archive_store: ArchiveStoreResource) -> dict[str, object]:
    """A day's record built from its manifest (what ``archive_intact`` compares with the store), for a day this
    instance never recorded: with the link to its object and the sizes as a person reads them, as every archived
    day's record has them (the day whose archive is its only copy is the one a person most needs to find), and its
    snapshot's time, as a run's record has it: without it ``archive_intact`` let an older archive under another key
    stand in for the recorded one once that was gone (verify.judged_archive), and passed. A loaded manifest's
    ``source.snapshot_at`` is an ISO time with its offset (manifest._times_problem refuses any other)."""
    obj = manifest.get("object") or {}
    size, unpacked = obj.get("bytes", 0), manifest.get("uncompressed_bytes")
    link = object_link(archive_store, SimpleNamespace(key=obj.get("key"), manifest_key=keys.manifest_key(day_key)))
    return {"dagster/row_count": int(manifest.get("rows") or 0), "rows": f"{int(manifest.get('rows') or 0):,}",
            "object": MetadataValue.url(link),
            "compressed_bytes": size, "compressed_size": human_size(size),
            **({"uncompressed_bytes": unpacked, "uncompressed_size": human_size(unpacked)}
               if isinstance(unpacked, int) and not isinstance(unpacked, bool) else {}),
            "md5": obj.get("md5", ""), "sha256": obj.get("sha256", ""),
            "format": manifest.get("format", ""), "compression": manifest.get("compression", ""),
            "object_key": obj.get("key", ""),  # an empty day's uri: its manifest, as its archive run records it
            "dagster/uri": MetadataValue.path(store.uri(obj.get("key") or keys.manifest_key(day_key))),
            "manifest_key": keys.manifest_key(day_key),
            "fingerprint": manifest.get("fingerprint", ""), "generation": int(manifest.get("generation", 1)),
            "snapshot_at": MetadataValue.timestamp(dt.datetime.fromisoformat(manifest["source"]["snapshot_at"])),
            "dagster/column_schema": manifest_column_schema(manifest)}


def skipped_keys(context: AssetExecutionContext, spec: TableSpec) -> list[str]:
    """The run's partition keys that name no period of the table: a day or hour its zone skipped (Pacific/Apia's
    2011-12-30), which Dagster lists and reads as the next one."""
    return [key for key in context.partition_keys if spec.period(key).key != key]


def run_periods(context: AssetExecutionContext, spec: TableSpec) -> list[Period]:
    """The periods the run is to archive, or a :class:`Failure` (not retried) when one is not a partition of
    the table. Dagster checks the partition key of ``materialize``, schedules, sensors and backfills, but
    not the ``dagster/partition`` tag of a run launched through the API or with the launchpad's tags: today's
    rows, still being written, were archived and reported as the day's (the next run of the whole day then
    failed as "changed since archived"), and a day before ``start_date`` failed on Dagster's invariant,
    retried as if transient, naming neither table nor remedy."""
    def refuse(day: object, why: str) -> Failure:
        return Failure(description=f"{spec.name} {day}: not a partition of {job_name(spec)}: {why}; nothing was "
                                   f"archived.\n\nWhat to do: launch a partition the job lists (from "
                                   f"{spec.first_period.key} up to the last complete {UNIT[spec.granularity]}).",
                       allow_retries=False, metadata={"table": spec.name, "day": str(day), "retryable": False})

    try:
        days = [spec.period(k) for k in context.partition_keys]
    except Exception as exc:  # noqa: BLE001 - Dagster's CheckError, a key that does not parse (PeriodError)
        key = context.run.tags.get("dagster/partition") or "the run's partition range"
        raise refuse(key, str(exc).removeprefix("Invariant failed. Description: ")) from None
    if not days:  # a range whose end comes before its start: Dagster gives no key, and the run crashed on none
        tags = context.run.tags
        start, end = (tags.get(f"dagster/asset_partition_range_{end}") for end in ("start", "end"))
        raise refuse(f"{start}...{end}", "the range ends before it starts, so it holds no partition (swap its "
                                         "start and end)")
    tag = context.run.tags.get("dagster/partition")
    if tag is not None and [d.key for d in days] != [tag]:  # Dagster reads a skipped hour as the next one
        raise refuse(tag, f"there is no such {UNIT[spec.granularity]} in {spec.timezone} (Dagster would read it as "
                          f"{', '.join(d.key for d in days)})")
    # ... and in a range (Pacific/Apia's 2011-12-30 as 2011-12-31): the next was archived twice and the key
    # recorded for none, green. Such a key is left out of the range, and the run fails it alone (skipped_keys).
    phantoms = skipped_keys(context, spec)
    if phantoms and len(phantoms) == len(days):
        raise refuse(phantoms[0], f"there is no such {UNIT[spec.granularity]} in {spec.timezone} (Dagster would "
                                  f"read it as {spec.period(phantoms[0]).key}); nothing was archived")
    days = [day for key, day in zip(context.partition_keys, days, strict=True) if day.key == key]
    now = dt.datetime.now(dt.UTC)
    for day in days:
        if day.utc_end > now:
            raise refuse(day, f"it is not over yet (it ends at {day.utc_end:%Y-%m-%d %H:%M} UTC) and its rows are "
                              "still being written; once it is over, the schedule and the sensor request it")
    return days


def verdicts_as_they_were(context: AssetExecutionContext, key: AssetKey, days: list[Period],
                          failed: Failure | None = None, removed: RemovedArchive | None = None) -> Iterator[DayEvent]:
    """For failed days whose ``archive_intact`` this run planned (a pure asset backfill), their last verdict
    again, so the failure does not show as "Execution failed" on an archive checked intact (see
    :func:`~archive_pipeline.defs.checks.verdict_as_it_was`); a failure (``failed``) that found the archive damaged
    is the verdict instead: the last one, passed, is no longer true; so is what the run found of a removed day's
    archive (``removed``) where the day's latest record is of that archive."""
    damaged = failed.description if failed is not None and _flag(failed.metadata, DAMAGED) else None
    found = removed.found if removed is not None and removed.repeated else None
    for day in days:
        evaluation = verdict_as_it_was(context, key, day.isoformat(), damaged, found)
        if evaluation is not None:
            yield evaluation


def _run_group(context: AssetExecutionContext) -> list[str]:
    """The runs a re-execution from failure resumes: its parent, and that one's parents as long as each was itself
    resumed from failure (up to the run that planned the days, a fresh run or one of all steps). Not the whole
    group: an older run's archive of a day, from before an all-steps re-execution that failed on it, is stale."""
    resumed = ("dagster/is_resume_retry", "dagster/is_asset_resume_retry")
    chain, parent = [], context.run.parent_run_id
    while parent and parent not in chain:
        chain.append(parent)
        run = context.instance.get_run_by_id(parent)
        if run is None or not any(run.tags.get(tag) == "true" for tag in resumed):
            break
        parent = run.parent_run_id
    return chain


def _recorded_in_run(context: AssetExecutionContext, key: AssetKey, run_ids: list[str] | None = None) -> set[str]:
    """The days of ``key`` this run (or the runs ``run_ids``) has already materialized and checked (by an
    earlier attempt of the step). A day recorded "not verified" (its check could not run: a download failed)
    is done again: the retry finds its archive identical and checks it, so a blocking check is never bypassed."""
    records = [record for run_id in (run_ids if run_ids is not None else [context.run.run_id])
               for record in context.instance.get_records_for_run(
                   run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION, limit=100_000).records]
    done = set()
    for record in records:
        event = record.event_log_entry.dagster_event
        verified = event.step_materialization_data.materialization.metadata.get("verified")
        said = str(getattr(verified, "value", verified))
        if event.asset_key == key and not said.startswith(("not verified", "NOT proven")):
            done.add(event.partition)
    return done


def pool_stream_slots(context: AssetExecutionContext, pool: str) -> StreamSlots:
    """Slots of ``pool`` for a day's streams beyond its first. Dagster claims one slot for the step
    (``claim_concurrency_slot`` takes no count), but a day read with N streams is N sessions on the
    source: each further stream claims one more slot, under its own name in the step's run, so the
    pool's limit bounds sessions and the UI's pool page shows them. A slot the pool cannot give at
    once is a stream fewer, never a wait (its queued claim is withdrawn at once, so it cannot take a
    slot from a step queued behind it); the slots go back when the day is read, and Dagster's run
    monitoring frees those of a run that died. A pool Dagster does not limit per step (none set, run
    granularity) grants every stream, as it grants the step."""
    storage = context.instance.event_log_storage
    run_id, step_key = context.run.run_id, context.get_step_execution_context().step.key

    @contextlib.contextmanager
    def claim(wanted: int) -> Iterator[int]:
        if not _limited_per_step(storage, pool):
            yield wanted
            return
        claimed: list[str] = []
        try:
            for stream in range(2, wanted + 2):
                name = f"{step_key}[stream {stream}]"
                if not storage.claim_concurrency_slot(pool, run_id, name).is_claimed:
                    storage.free_concurrency_slot_for_step(run_id, name)  # out of the queue: no late slot
                    break
                claimed.append(name)
            yield len(claimed)
        finally:
            for name in claimed:
                storage.free_concurrency_slot_for_step(run_id, name)

    return claim


def _limited_per_step(storage, pool: str) -> bool:
    """Whether Dagster limits ``pool`` per step here, as its executor decides before claiming a step's slot."""
    if not storage.supports_global_concurrency_limits:
        return False
    if storage.get_pool_config().pool_granularity == PoolGranularity.RUN:
        return False
    return any(limit.name == pool for limit in storage.get_pool_limits())


def former_day_keys(context: AssetExecutionContext, key: AssetKey, spec: TableSpec, day: Period,
                    store: S3Store) -> list[str]:
    """The key the day's last materialization recorded, where the configuration renders another now (its
    key_template or the store's prefix changed since): a removal marked there must stop the day being
    archived again from its emptied source (the core looks at the keys the configuration renders)."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[day.key]), limit=1).records
    if not records:
        return []
    recorded = records[0].asset_materialization.metadata.get("manifest_key")
    former = recorded_day_key(spec, day, store, getattr(recorded, "value", None))
    return [former] if former != table_day_key(spec, day, store.prefix) else []


def archive_one_day(context: AssetExecutionContext, spec: TableSpec, key: AssetKey, day: Period,
                    config: ArchiveRunConfig, source: _Source, archive_store: ArchiveStoreResource,
                    store: S3Store, *, alone: bool, origin: str | None = None, records: DayRecords
                    ) -> Iterator[DayEvent]:
    """Archive one day and record it: its materialization (own metadata), then its ``archive_intact``
    result; ``alone``: the run's only day, its summary logged too (and recorded as the step's output where another
    step of the run reads it). Raises the :class:`Failure`
    a person reads when the day could not be archived or checked. A termination once the day's new archive is
    committed (while the core tidies the generation it replaced, while it is checked or proven, or its summary logged)
    is raised only after the day is recorded as that archive (not verified where its check was cut off or never ran):
    the record of the archive it replaced named an object deleted since, and the words for a cut-off before
    publishing ("nothing of the day was published") were false."""
    postgres = source.postgres
    deep = spec.deep_check or config.deep_check

    def progress(rows: int, size: int) -> None:
        context.log.info(f"{spec.name} {day}: {rows:,} rows, {human_size(size)} read so far")

    unverified: Exception | None = None
    verdict: Verdict | None = None  # None: not judged (its check could not run, or was cut off)
    # a termination once the day's archive is published: the day is recorded as it is in the bucket, then it is raised
    cut_off: BaseException | None = None
    try:
        conn = source.get()
        try:
            result = archive_partition(conn, spec, day, store, temp_dir=archive_store.temp_dir,
                                       progress=progress, session_settings=postgres.session_settings(),
                                       overwrite=spec.overwrite or config.overwrite,
                                       stream_slots=pool_stream_slots(context, spec.pool),
                                       former_keys=former_day_keys(context, key, spec, day, store))
        except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
            # after its commit, while it tidied the generation it replaced: the day is the new archive, recorded so
            # (not verified), as one cut off while it is checked; before it, nothing of the day was published
            result = committed_result(exc)
            if result is None:
                raise
            cut_off = interrupted(exc, TIDYING_NEW)
        try:
            verdict = None if cut_off is not None else (
                verify_result(store, spec, day, recorded(result), deep=deep, conn=conn if spec.deep_check else None,
                              scratch_conn=source.scratch(conn) if spec.deep_check else None,
                              temp_dir=archive_store.temp_dir)
                if deep else written_verdict(result, store.uri(result.stored_key)))
        except Exception as exc:  # noqa: BLE001 - the archive exists; only its check could not run
            unverified = exc
        except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
            if result.skipped:  # nothing was published: the record of the archive kept stands, as "archiving" says
                raise
            # the new archive replaced any earlier one (the core's "proving" said "nothing was changed"): recorded
            # as it is, not verified, rather than the day's record left naming an object deleted since
            cut_off = interrupted(exc, CHECKING_NEW)
    except Exception as exc:
        raise failure(exc, spec, day, postgres.password, origin, step_retries(context)) from None
    if unverified is not None and result.skipped:
        # the archive recorded before is the one still there: its record (and the proof it holds) stands; a new
        # one saying "not verified" over it would turn an archive proven then into one never proven
        raise failure(unverified, spec, day, postgres.password, origin, step_retries(context)) from None
    state = archive_state(result)
    if alone:  # in a range, the summary is the materialization's description: one event a day fewer
        try:
            context.log.info(summary(result, state))
        except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:  # the day is archived: recorded first
            cut_off = cut_off or interrupted(exc, "recording")
    if unverified is not None:
        verified = "not verified: " + redact(str(unverified), postgres.password)
    elif verdict is None:  # cut off after its commit: while it tidied, or checked the archive
        verified = ("not verified: the run was terminated " + (
            "while it tidied after publishing this archive, before checking it" if cut_off.interrupted == TIDYING_NEW
            else "while it checked this archive, which it had just published"))
    elif verdict.passed:
        verified = verdict.verified
    else:
        verified = "NOT proven: " + "; ".join(verdict.problems)
    metadata = materialization_metadata(result, object_link(archive_store, result), verified,
                                        store.uri(result.stored_key))
    # built once the materialization is stored: it targets that one (Dagster shows a check result as the day's
    # status only when it targets the day's latest materialization); None: nothing was judged
    evaluation = None if verdict is None else functools.partial(
        check_evaluation, context, key, INTACT_CHECK, verdict, blocking=spec.deep_check)
    if alone and output_read_downstream(context):  # the step's output: the run's checks and assets read it
        yield MaterializeResult(metadata=metadata, tags={STATE_TAG: state})
        if evaluation is not None:
            yield evaluation()
    else:
        records.record(AssetMaterialization(asset_key=key, partition=day.isoformat(), metadata=metadata,
                                            description=summary(result, state), tags={STATE_TAG: state}),
                       evaluation)
    if cut_off is not None:  # recorded as it is: the run's termination goes on (see _archive_days)
        raise cut_off
    if unverified is not None:  # a failed step, not a failed integrity check: nothing was judged
        raise failure(unverified, spec, day, postgres.password, origin, step_retries(context)) from None
    if spec.deep_check and not verdict.passed:
        raise unproven(spec, day, verdict.problems, origin)


def output_read_downstream(context: AssetExecutionContext, *, checks: bool = True) -> bool:
    """Whether another step of the run reads the asset's output (``materialize`` with the asset's checks, a job
    of the user's with assets downstream): only a yielded result is that output. ``checks=False``: another step
    than the asset's own checks (a pure asset backfill plans every check, on-demand ones too: they are not to run
    after every ranged run)."""
    name = context.op_execution_context.op.name
    try:
        readers = context.job_def.dependency_structure.output_to_downstream_inputs_for_node(name)
    except Exception:  # noqa: BLE001 - a Dagster without this structure: yield, as Dagster expects
        return True
    own = {f"{name}_{check}" for check in (INTACT_CHECK, *ON_DEMAND_CHECKS)}
    return any(checks or node_input.node_name not in own for inputs in readers.values() for node_input in inputs)


def _log_day(context: AssetExecutionContext, materialization: AssetMaterialization,
             evaluation: Callable[[], AssetCheckEvaluation | None] | None) -> None:
    """Record a day from the asset's own code (see :func:`log_guarded`). Terminated while the day is recorded, it is
    published (and, its event stored, shown materialized): its check is recorded too, so it is not left half
    recorded, and the run ends saying so."""
    log_guarded(context, materialization, "recording", evaluation)
    if evaluation is not None and (checked := evaluation()) is not None:
        log_guarded(context, checked, "recording")


def unproven(spec: TableSpec, day: Period, problems: list[str], origin: str | None) -> Failure:
    """The step failure of a day whose blocking content proof failed, in our words rather than Dagster's
    bare "1 blocking asset check failed", and never retried: a step retry would find the day recorded and
    end the run green, past the check that was to block it. A source that changed since its snapshot (a
    late row) is not a damaged archive: the archive holds the snapshot, and archiving again takes the new rows."""
    cause = ("the source changed after the snapshot the archive was read from (rows arrived, changed or went "
             "late)" if source_only(problems) else "the archive in the bucket is not what was recorded")
    text = (f"{spec.name} {day}: the archive is NOT proven, so the run fails (deep_check is blocking): {cause}: "
            + "; ".join(problems) + "\n\nWhat to do: " + relaunch(spec, day, origin))
    # (either way only archiving the day again with overwrite ends it: re-executing the run proves it again)
    return Failure(description=text, allow_retries=False,
                   metadata={"table": spec.name, "day": day.isoformat(), "retryable": False, NEEDS_OVERWRITE: True})


def after_retry_wait(context: AssetExecutionContext, spec: TableSpec, failure: Failure,
                     failed: dict[Period, Failure]) -> BaseException:
    """What a ranged run's step raises for ``failure`` once it has waited out the retry's backoff itself: Dagster's
    own wait between attempts is outside the asset's code, so a person who terminated the run then got, an attempt
    later, a bare interrupt naming no table and no day. Waited here, a termination is the step's to word (the days
    it leaves unarchived, and why); the retry then starts at once (``RetryRequested`` with no wait, the failure as
    its cause, as Dagster's policy would raise it). The failure itself where no retry is left or none helps (not
    retryable where the step retries nothing: see :meth:`~archive_pipeline.defs.checks.Retries.final`)."""
    policy, retries = _retry_policy(context), step_retries(context)
    attempt = context.retry_number + 1
    if not failure.allow_retries or policy is None or attempt > policy.max_retries or retries.off:
        return retries.final(failure)
    wait = policy.calculate_delay(attempt)
    again = sorted(day for day, f in failed.items() if f.allow_retries)
    context.log.info(f"{spec.name}: {', '.join(d.isoformat() for d in again)} to be tried again in {wait:.0f} s "
                     f"(retry {attempt} of {policy.max_retries}; the days archived are not archived again)")
    try:
        time.sleep(wait)
    except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
        return cancelled_batch(terminated(context, exc, spec, again[0], "waiting to retry", job_name(spec)), spec,
                               [], failed)
    retry = RetryRequested(max_retries=policy.max_retries, seconds_to_wait=0)
    retry.__cause__, retry.__suppress_context__ = failure, True
    return retry


def cancelled_batch(outcome: BaseException, spec: TableSpec, unstarted: list[Period],
                    failed: dict[Period, Failure]) -> BaseException:
    """A ranged run's cancellation (``outcome``: :func:`~archive_pipeline.defs.checks.terminated`'s, for the
    day it cut off) naming every day the run leaves unarchived: those that failed before it, with their
    causes, and those it never started. It named the day cut off only, as if the rest were done."""
    if not isinstance(outcome, Failure) or not (unstarted or failed):
        return outcome
    parts = [outcome.description or ""]
    if failed:
        parts.append(f"Failed earlier in this run ({_names(failed)}):\n\n{_causes(failed)}")
    if unstarted:
        parts.append(f"Never started, so not archived: {', '.join(d.isoformat() for d in unstarted)}.")
    left = sorted({*failed, *unstarted})
    # (days removed, or changed since archived, are not redone by launching them again: their advice says what is)
    redo = sorted({*(d for d, f in failed.items() if not _removed(f) and not _needs_overwrite(f)), *unstarted})
    if redo:
        parts.append(f"Then: launch a backfill of {', '.join(d.isoformat() for d in redo)} (or re-execute this run "
                     f"from failure) of {job_name(spec)} with the day cut off; days already archived are found "
                     "identical and not uploaded again.")
    return Failure(description="\n\n".join(parts), allow_retries=False,
                   metadata={**outcome.metadata, "failed_days": MetadataValue.json([d.isoformat() for d in left])})


def batch_failure(spec: TableSpec, days: list[Period], failed: dict[Period, Failure],
                  phantoms: list[str] = ()) -> Failure:
    """The step failure of a ranged run: which days failed and why, that the others are archived, and
    how to redo only the failed ones. Retried (retry: settings) when any failed day may pass on a retry:
    a neighbour's late rows (for a person) no longer kept a day whose lock was held a moment from its
    retry. The retry does neither the days recorded nor those failed for good (``permanent_days``) again."""
    retryable = any(f.allow_retries for f in failed.values())
    permanent = {d.isoformat(): f.description or "" for d, f in sorted(failed.items()) if not f.allow_retries}
    # (a removed day has nothing to redo; a changed one fails the same way until archived with overwrite, as its
    # own advice above says: re-executing the run would not help it)
    redo = {d: f for d, f in failed.items() if not _removed(f) and not _needs_overwrite(f)}
    then = ("" if not redo else
            f"\n\nThen: re-execute this run (Runs → this run → Re-execute → From failure), or launch a backfill of "
            f"{_names(redo) if len(redo) < len(failed) else 'the failed days'} of {job_name(spec)}; days already "
            "archived are not archived again.")
    archived = (f"the other {len(days) - len(failed)} are archived and recorded as materialized"
                if len(failed) < len(days) else "none is archived")
    text = (f"{spec.name}: {len(failed)} of {len(days)} days failed ({_names(failed)}); {archived}.\n\n"
            f"{_causes(failed)}{then}"
            if failed else f"{spec.name}: the {len(days)} days of the run are archived and recorded as materialized.")
    if phantoms:
        text += (f"\n\n{', '.join(phantoms)}: not a {UNIT[spec.granularity]} of the table's zone {spec.timezone} (the "
                 "zone skipped it; Dagster lists it and would read it as the next one): nothing was archived for it, "
                 "and nothing is to be done")
    return Failure(description=text, allow_retries=retryable,
                   metadata={"table": spec.name, "days_in_run": len(days), "retryable": retryable,
                             "failed_days": MetadataValue.json([d.isoformat() for d in sorted(failed)]),
                             PERMANENT_DAYS: MetadataValue.json(permanent)})


def _names(failed: dict[Period, Failure]) -> str:
    return ", ".join(d.isoformat() for d in sorted(failed))


def _causes(failed: dict[Period, Failure]) -> str:
    """Each failed day's cause and advice; days that failed alike (the database down for the whole run) once,
    named together (:func:`~archive_pipeline.defs.checks.alike`)."""
    return alike({day.isoformat(): failure_ for day, failure_ in failed.items()})


PERMANENT_DAYS = "permanent_days"  # a batch failure's days that no retry can fix, each with its cause


FAILED_FOR_GOOD = "failed_for_good"  # an observation of a day a ranged step failed and no retry can fix, with why


def _failed_for_good(context: AssetExecutionContext, spec: TableSpec) -> dict[Period, Failure]:
    """The days an earlier attempt of this step failed for good, which a retry does not do again but still
    names in its own failure: the step observed each (a step Dagster retries records STEP_UP_FOR_RETRY, not
    the STEP_FAILURE whose metadata named them)."""
    step = context.get_step_execution_context().step.key
    records = context.instance.get_records_for_run(context.run.run_id, of_type=DagsterEventType.ASSET_OBSERVATION,
                                                   limit=10_000).records
    found: dict[Period, Failure] = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        observation = event.event_specific_data.asset_observation if event.step_key == step else None
        text = observation.metadata.get(FAILED_FOR_GOOD) if observation is not None else None
        if text is not None and observation.partition:
            found[spec.period(observation.partition)] = Failure(
                description=f"{text.value}\n(from the earlier attempt of this run, not tried again: a retry cannot "
                            "fix it)", allow_retries=False, metadata=_flags(observation.metadata))
    return found
