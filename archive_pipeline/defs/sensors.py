"""The sensor that notices days with rows in PostgreSQL and no archive yet (a new partition filled,
rows loaded late for a day never archived) and asks for runs of exactly those days.

Its tick says what it inspected (tables, modes, days considered), so "no new days to archive" can
be told apart from "looked at the wrong days"; a database it cannot reach is reported without the
DSN's password.
"""

from __future__ import annotations

import contextlib
import functools
import datetime as dt
import dataclasses
import itertools
import shlex
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import psycopg
import psycopg.conninfo
from dagster import (
    AssetKey,
    AssetMaterialization,
    DefaultSensorStatus,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

if TYPE_CHECKING:  # the type define_asset_job returns is not exported at dagster's top level
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from archive_pipeline.core import errors
from archive_pipeline.defs.assets import PREFIX_TAG, TABLE_TAG, prefix_tag
from archive_pipeline.core.config import SensorSettings, TableSpec
from archive_pipeline.core.discovery import ChildrenMemo, existing_days
from archive_pipeline.core.errors import ArchiveError, redact
from archive_pipeline.core.periods import UNIT, Period
from archive_pipeline.core.plan import select_days
from archive_pipeline.core.session_settings import apply_settings
from archive_pipeline.defs.outside import RANGE_ERRORS, RANGE_TAGS, STORE_ERRORS, archived_outside, run_keys, store_of
from archive_pipeline.defs.resources import PostgresResource

RUN_KEY_TAG = "dagster/run_key"  # the tag Dagster gives a run launched from a request with a run_key
SENSOR_NAME_TAG = "dagster/sensor_name"  # ... and the sensor that requested it
# Dagster's own "not finished": a run being canceled (CANCELING, its step still cleaning up and holding the table-day
# lock, for ever where its worker hung) or SUSPENDED still holds its days; requested again, the day's new run fails on
# the lock and, its run key then used, the sensor never requests the day again
UNFINISHED = frozenset(NOT_FINISHED_STATUSES)


@dataclass(frozen=True)
class SensorTarget:
    spec: TableSpec
    asset_key: AssetKey
    job: "UnresolvedAssetJobDefinition"
    shared_job: str | None = None  # the job the table shares with tables of the same partitions, if any

    def archived_by(self, run: DagsterRun, *, untagged: bool = True) -> bool:
        """Whether ``run`` archives this table of this code location, whatever job ran it. A run that materializes
        the archive asset, and no other, is an archive run: by its asset selection where it has one (an asset
        backfill's ``__ASSET_JOB`` runs, the UI's Materialize; a shared job's run of other tables is not), else by
        its job, which must be one of the archive asset's (the table's own, the shared one), and its prefix tag
        (PREFIX_TAG, every archive job's): another location's table of the same name under another asset_key_prefix
        has the same job names. The table tag does not say it: the retention job's runs (``Remove_*``) carry it too,
        and counted, a dry run's removal of a day was an archive run that refused the command line's archive (never
        recorded) and an unfinished one an archive run in flight. ``untagged``: what a run without the prefix tag
        (one launched before the jobs carried it) of an archive job counts as."""
        selection = run.asset_selection or ()
        if selection:
            return self.asset_key in selection
        if run.job_name not in (self.job.name, self.shared_job):
            return False
        prefix = run.tags.get(PREFIX_TAG)
        return prefix == prefix_tag(self.spec) or (prefix is None and untagged)


def describe_connect_failure(exc: BaseException, dsn: str, setting: str = "ARCHIVE_PG_DSN") -> str:
    """Why connecting to ``dsn`` failed, naming host and port, never the password, and ``setting`` (where the
    DSN is set: the postgres resource's ``dsn_setting``) in the remedy.

    libpq echoes a malformed URI whole, password included, so for a DSN it cannot parse only that
    fact is reported.
    """
    if isinstance(exc, ArchiveError):  # PostgresResource.connect has described it already
        return str(exc)
    describe = getattr(errors, "describe_connect_error", None)
    if describe is not None:
        return str(describe(exc, dsn, setting))
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return (f"{setting} is malformed (libpq cannot parse it; its text is not shown because it may hold "
                "a password): write it as postgresql://user@host:port/db or 'host=... port=... dbname=...'")
    where = f"host {info.get('host') or 'localhost (default)'}, port {info.get('port') or 5432}"
    reason = redact(str(exc).strip() or type(exc).__name__, info.get("password"), dsn)
    return f"{where}: {reason}"


def candidate_days(spec: TableSpec, today: dt.date | dt.datetime, lookback_days: int,
                   memo: dict[tuple, list[Period]] | None = None) -> list[Period]:
    """The table's complete periods (hours, days, months) worth looking at, never before its start_date:
    all of them where the catalog lists them (declarative, naming), those of the lookback window where
    each is a probe. ``memo`` keeps the lists already worked out, by what decides them: tables of the same
    granularity, zone and start share one (three years of days are ~25 ms of period maths), until ``today``
    changes. The lists are shared: callers must not change them.

    ``today``: the tick's moment (periods that ended before it, to the quarter hour every zone's periods end
    on: an hourly table's hours that ended today, a day of a zone ahead of UTC, waited for the UTC midnight),
    or a UTC date whose midnight is the cutoff."""
    if hasattr(today, "hour"):  # (a datetime)
        cutoff = today.astimezone(dt.UTC).replace(minute=today.minute // 15 * 15, second=0, microsecond=0)
        date = cutoff.date()
    else:
        cutoff, date = None, today
    first = spec.start_date
    if spec.partitioning.mode == "column":
        first = max(first, date - dt.timedelta(days=lookback_days))
    select = functools.partial(select_days, spec, first, None, **({"now": cutoff} if cutoff else {"today": date}))
    if memo is None:
        return select()
    mark = cutoff or date
    key = (spec.granularity, spec.timezone, spec.start_date, first, mark)
    if key not in memo:
        if any(kept[-1] != mark for kept in list(memo)):  # a later moment: the lists before are not asked for again
            memo.clear()
        memo[key] = select()
    return memo[key]


def _listed(keys: list[str], most: int = 5) -> str:
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _table_of(wanted: RunRequest | WantedRun) -> str:
    return wanted.tags.get(TABLE_TAG, "") if isinstance(wanted, RunRequest) else wanted.table


def _tried(tried: list) -> str:
    """The days a tick left out for their run keys' runs, named by table (the first few of each)."""
    by_table: dict[str, list[str]] = {}
    for wanted in tried:
        by_table.setdefault(_table_of(wanted), []).append(wanted.partition_key)
    return "; ".join(f"{table}: {_listed(keys)}" for table, keys in by_table.items())


def _rerun(wanted: RunRequest | WantedRun) -> str:
    return "`" + shlex.join(["archive-pipeline", "archive", "--table", _table_of(wanted), "--day",
                             wanted.partition_key]) + "`"


def _span(days: list[dt.date]) -> str:
    if not days:
        return "no complete day yet"
    return f"{days[0]}..{days[-1]}" if len(days) > 1 else str(days[0])


def inspected(spec: TableSpec, days: list[dt.date], missing: int, found: int) -> str:
    """One table's part of the tick's account: mode, days considered, how many lack an archive."""
    unit = UNIT[spec.granularity]
    how = (f"probed each {unit} for rows" if spec.partitioning.mode == "column"
           else f"read the {unit}s from the catalog, probed each missing one for rows")
    return (f"{spec.name} ({spec.partitioning.mode}: {how}; {len(days)} {unit}(s) {_span(days)}, "
            f"{missing} without an archive, {found} of them with data)")


def _connect(postgres: PostgresResource, stack: contextlib.ExitStack) -> psycopg.Connection:
    """A connection for the tick, or an error naming host, port, reason and remedy. The remedy is the resource's
    own (naming its ``dsn_setting``, as a run's failure does): a second one naming ARCHIVE_PG_DSN sent a project
    whose DSN is set elsewhere to a variable it never reads. It is raised outside the ``except`` block so the
    tick's error carries no chained driver exception (libpq may echo the DSN)."""
    try:
        return stack.enter_context(postgres.connect())
    except (psycopg.Error, ArchiveError) as exc:
        reason = describe_connect_failure(exc, postgres.dsn, postgres.dsn_setting)
    raise RuntimeError(f"archive_new_days could not connect to the source database from the daemon ({reason})")


def _apply_session_settings(conn: psycopg.Connection, postgres: PostgresResource) -> None:
    """The ``source:`` timeouts on the tick's session, as every archive run has them: without
    ``lock_timeout`` a probe of a table held ACCESS EXCLUSIVE (a migration, VACUUM FULL) waits until the
    daemon kills the tick, and no table's new day is requested meanwhile."""
    apply_settings(conn.execute, postgres.session_settings(), local=False)


_NEXT_TICK = "the next tick looks again"  # a tick's retry: the classification's "retried automatically"


def probe_failure(exc: psycopg.Error, spec: TableSpec, postgres: PostgresResource, day: Period | None = None) -> str:
    """Why looking for ``spec``'s days failed (cause, driver text without the password, remedy). ``day``: the
    period whose probe failed; in naming mode the probe read its own table, which the remedy names (as the
    archive run's error does, discovery.source_table): a GRANT on the configured base name is on no table."""
    table = spec.day_relation(day) if day is not None else spec.name
    found = errors.classify(exc, table=table, user=postgres.user)
    detail = redact(" ".join(str(exc).split()) or type(exc).__name__, postgres.password, postgres.dsn)
    return (f"looking for days to archive failed: {found.cause} ({type(exc).__name__}: {detail}); "
            f"{_after_retry(found.remedy)}")


def _after_retry(remedy: str) -> str:
    """The tick's retry and ``remedy``, the retry said once: a remedy that begins with the classification's
    "retried automatically" (the next tick is that retry) goes on from the tick's words, not after "to fix:"."""
    if remedy.startswith(errors.RETRIED):  # "; if it persists, ...", ", once ...", or nothing
        return _NEXT_TICK + remedy.removeprefix(errors.RETRIED)
    return f"{_NEXT_TICK}; to fix: {remedy}"


SENSOR_NAME = "archive_new_days"


def _same_repository(run: DagsterRun | PartitionBackfill, location: str | None, repository: str | None) -> bool:
    """Whether ``run`` (or a job's backfill) was launched from this sensor's code location and repository, as the
    daemon tells them apart (``fetch_existing_runs`` in dagster/_daemon/sensor.py): another location's table of the
    same Dagster name (``a.b_c`` here, ``a_b.c`` there; the README's remedy for such names) has the same run keys.
    A run without an origin (launched in process; an asset backfill, told apart by its asset keys) or a context
    that does not say where it is: the same."""
    origin = run.partition_set_origin if isinstance(run, PartitionBackfill) else run.remote_job_origin
    if origin is None or location is None:
        return True
    return (origin.repository_origin.code_location_origin.location_name == location
            and origin.repository_origin.repository_name == repository)


@dataclass(frozen=True)
class WantedRun:
    """A day the tick would request: built as :func:`untried` looks at it (:func:`wanted_runs`; a first
    tick finds a table's three years), made a RunRequest only when chosen (Dagster checks each one it
    builds: 17 µs a day, two seconds of a tick over 100 such tables)."""

    run_key: str
    job_name: str
    partition_key: str
    table: str

    def request(self) -> RunRequest:
        return RunRequest(run_key=self.run_key, job_name=self.job_name, partition_key=self.partition_key,
                          tags={TABLE_TAG: self.table})


Keyed = TypeVar("Keyed", RunRequest, WantedRun)


def wanted_runs(found: list[tuple[SensorTarget, list[Period]]]) -> Iterator[WantedRun]:
    """The runs of the days found, built as they are asked for (a first tick over 100 declarative tables
    finds 100,000 days and requests ``max_runs_per_tick`` of them), a day of each table in turn, each
    table's oldest first: a table added with years of history does not hold back another table's
    new day until its backlog is drained (22 ticks for three years at the default cap)."""
    def runs(target: SensorTarget, days: list[Period]) -> Iterator[WantedRun]:
        for day in days:
            key = day.isoformat()
            yield WantedRun(f"{target.job.name}:{key}", target.job.name, key, target.spec.name)

    queues = [runs(target, days) for target, days in found]
    while queues:
        still = []
        for queue in queues:
            run = next(queue, None)
            if run is not None:
                yield run
                still.append(queue)
        queues = still


def unfinished_runs(instance: DagsterInstance, location: str | None, repository: str | None,
                    filters: RunsFilter | None = None) -> list:
    """Every queued or running run of this code location (page by page: a year's backfill of a few tables
    queues over a thousand), for :func:`days_in_flight`. Another location's runs (the same table names from
    another database, README) are not this location's days. ``filters``: other runs instead (the schedule's
    look-back asks for the failed ones)."""
    runs, cursor = [], None
    while True:
        page = instance.get_runs(filters=filters or RunsFilter(statuses=list(UNFINISHED)), cursor=cursor, limit=1000)
        runs += [run for run in page if _same_repository(run, location, repository)]
        if len(page) < 1000:
            return runs
        cursor = page[-1].run_id


def unfinished_backfills(instance: DagsterInstance, location: str | None, repository: str | None,
                         filters: BulkActionsFilter | None = None) -> list[PartitionBackfill]:
    """The backfills whose runs the daemon is still to submit (REQUESTED: the webserver only records a launched
    backfill, the daemon submits its runs on its next iteration, a long one's a chunk at a time), for
    :func:`days_in_flight`: one query a tick, whatever the days. A backfill being canceled or failing submits no
    more runs (those it submitted are runs). A job's backfill of another code location: as for runs. ``filters``:
    other backfills instead (the schedule's look-back asks for those that ended before submitting all)."""
    found = instance.get_backfills(filters=filters or BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED]))
    return [backfill for backfill in found if _same_repository(backfill, location, repository)]


def backfill_keys(backfill: PartitionBackfill, key: AssetKey, jobs: Iterable[str | None]) -> set[str]:
    """The partition keys of asset ``key`` that ``backfill`` is still to materialize: an asset backfill's (the UI's
    Materialize, a job's partitions page) targets of the asset but those it recorded materialized or failed (it
    does not request them again); a backfill of one of ``jobs`` (``dagster job backfill``), its partitions after the
    last it submitted (those submitted are runs). A backfill stored by an older Dagster (serialized, read only with
    the asset graph): none."""
    data = backfill.asset_backfill_data
    if data is not None:
        targeted = data.target_subset.partitions_subsets_by_asset_key.get(key)
        keys = set(targeted.get_partition_keys()) if targeted is not None else set()
        for ended in (data.materialized_subset, data.failed_and_downstream_subset):
            subset = ended.partitions_subsets_by_asset_key.get(key)
            keys -= set(subset.get_partition_keys()) if subset is not None else set()
        return keys
    if (backfill.job_name is None or backfill.job_name not in jobs  # (a shared job's name may be None)
            or (backfill.asset_selection and key not in backfill.asset_selection)):
        return set()
    names, last = list(backfill.partition_names or ()), backfill.last_submitted_partition_name
    return set(names[names.index(last) + 1:] if last in names else names)


def days_in_flight(runs: Iterable, target: SensorTarget, ignored: list[str] | None = None,
                   backfills: Iterable[PartitionBackfill] = (), *, within: Sequence[Period]) -> set[str]:
    """The partition keys of ``target``'s table that a run not yet finished archives, whatever launched it (a run
    of this location's table: :meth:`SensorTarget.archived_by`): a backfill's ranged runs (range tags), a day
    launched from the UI or a schedule (``dagster/partition``), and those a launched ``backfills``
    (:func:`unfinished_backfills`) has not submitted yet. Requested again, each would wait for the same table-day
    lock and archive the day twice. A run whose range names no periods of the table archives none of them: it is
    left out, and said in ``ignored``. ``within``: the periods the caller asks about, oldest first; a run's range is
    read only between the first and the last of them (see :func:`outside.range_keys`)."""
    spec, busy = target.spec, set()
    for backfill in backfills:
        busy |= backfill_keys(backfill, target.asset_key, (target.job.name, target.shared_job))
    for run in runs:
        if not target.archived_by(run):
            continue
        try:
            busy |= run_keys(spec, run, within)
        # (OverflowError: a range hand-tagged to 9999-12-31, past the calendar's last day, failed every tick)
        except RANGE_ERRORS as exc:
            if ignored is not None:
                ignored.append(f"run {run.run_id} (range {run.tags[RANGE_TAGS[0]]}..{run.tags[RANGE_TAGS[1]]}: "
                               f"{type(exc).__name__}: {exc})")
    return busy


def untried(instance: DagsterInstance, requests: Iterable[Keyed], cap: int, location: str | None = None,
            repository: str | None = None) -> tuple[list[Keyed], list[Keyed]]:
    """The first ``cap`` of ``requests`` whose run key has no run yet, and those left out because theirs has
    one (of the batches looked at).

    The daemon never launches a run key twice, so a day whose run failed (or is queued or running) stays
    requested and dropped on every tick; counted against ``sensor.max_runs_per_tick``, such days fill the
    cap and the days behind them (other tables' new days) are never requested. Run keys are looked up
    a batch at a time, one query each; usually one batch fills the cap (and the requests behind it are
    never built).
    """
    chosen: list[Keyed] = []
    tried: list[Keyed] = []
    size = max(cap, 100)
    pending = iter(requests)
    while len(chosen) < cap:
        batch = list(itertools.islice(pending, size))
        if not batch:
            break
        keys, used = _current_keys(instance, [r.run_key for r in batch], location, repository)
        for request in batch:
            if request.run_key in used:
                tried.append(request)
            elif len(chosen) < cap:
                key = keys[request.run_key]
                chosen.append(request if key == request.run_key else _rekeyed(request, key))
    return chosen, tried


def _current_keys(instance: DagsterInstance, keys: list[str], location: str | None, repository: str | None
                  ) -> tuple[dict[str, str], set[str]]:
    """Each day's run key to request it under now, and the days the daemon would drop. Dropped: a key this sensor
    already ran and whose runs all failed (its own runs, as the daemon matches them), and a day already queued or
    running from anywhere (a day whose *scheduled* run failed is still requested, once, as before). A day whose
    sensor run succeeded and that has no materialization now (wiped since, to archive it again: the sensor only
    asks for such days) is requested again under a key naming that run (``<key>@<run id>``), as the daemon never
    launches a key twice; the next such key is looked up in turn."""
    current = {key: key for key in keys}
    used: set[str] = set()
    looking = list(keys)
    while looking:
        runs = instance.get_runs(filters=RunsFilter(tags={RUN_KEY_TAG: [current[k] for k in looking]}))
        by_key: dict[str, list] = {}
        for run in runs:
            if _same_repository(run, location, repository):
                by_key.setdefault(run.tags.get(RUN_KEY_TAG), []).append(run)
        again = []
        for key in looking:
            mine = by_key.get(current[key], [])
            ours = [run for run in mine if run.tags.get(SENSOR_NAME_TAG) == SENSOR_NAME]
            # (a retry or re-execution of a failed sensor run carries its run key: one that succeeded counts)
            succeeded = [run for run in ours if run.status == DagsterRunStatus.SUCCESS]
            if any(run.status in UNFINISHED for run in mine) or (ours and not succeeded):
                used.add(key)
            elif succeeded:
                current[key] = f"{key}@{succeeded[0].run_id}"  # (the newest: get_runs lists newest first)
                again.append(key)
        looking = again
    return current, used


def _recorded_outside(context: SensorEvaluationContext, conn: psycopg.Connection, targets: list[SensorTarget],
                      tried: list[WantedRun], rejected: set[str]) -> tuple[list[AssetMaterialization], list[WantedRun]]:
    """The ``tried`` days archived outside Dagster since their run failed (the tick's own remedy, the command
    line), recorded from their manifests (see :mod:`archive_pipeline.defs.outside`), and the tried days left;
    ``rejected`` (kept between ticks) becomes the marks of the days whose archive was rejected. A store that does
    not answer leaves them all listed, with a warning: never a failed tick (a bug of ours fails it, not worded as
    the store's)."""
    if not tried:
        rejected.clear()
        return [], tried
    try:
        where = store_of(context)
        if where is None:
            return [], tried
        recorded, left, now, unanswered = archived_outside(where, conn, context.instance,
                                                           {t.spec.name: t for t in targets}, tried, rejected)
        rejected.clear()
        rejected.update(now)
        for table, why in unanswered.items():  # (that table's days stay listed; the others' were looked at)
            context.log.warning(f"archive_new_days could not look in the store for {table}'s days archived outside "
                                f"Dagster since their run failed ({why}); they stay listed")
    except STORE_ERRORS as exc:  # a hint only: the days stay listed with their remedy
        context.log.warning(f"archive_new_days could not look in the store for days archived outside Dagster since "
                            f"their run failed ({type(exc).__name__}: {redact(str(exc))}); they stay listed")
        return [], tried
    if recorded:
        context.log.info(f"recorded {len(recorded)} day(s) archived outside Dagster since their run failed, from "
                         f"their manifests ({_tried([w for w in tried if w not in left])})")
    return recorded, left


def _rekeyed(request: Keyed, key: str) -> Keyed:
    if isinstance(request, WantedRun):
        return dataclasses.replace(request, run_key=key)
    return request.with_replaced_attrs(run_key=key)


def build_new_days_sensor(targets: list[SensorTarget], settings: SensorSettings,
                          children: ChildrenMemo | None = None) -> SensorDefinition:
    """The sensor; ``children``: declarative tables' children already read (by the load's checks)."""
    # Kept between ticks while the code server keeps the definitions loaded: the candidate days of
    # each (granularity, zone, start) until the day changes, and the declarative tables' children
    # until the catalog says they changed (every tick still reads which days are archived), and the marks of the
    # failed days whose archive the tick rejected (not read again while the listing shows it unchanged).
    candidates: dict[tuple, list[Period]] = {}
    rejected: set[str] = set()
    children = ChildrenMemo() if children is None else children

    @sensor(
        name=SENSOR_NAME,
        jobs=[t.job for t in targets],
        minimum_interval_seconds=settings.interval_seconds,
        default_status=DefaultSensorStatus.RUNNING if settings.running else DefaultSensorStatus.STOPPED,
        description="Requests archive runs for periods (days; an hourly table's hours, a monthly one's months) that "
                    "have data in PostgreSQL but no materialization yet: every period since start_date for declarative "
                    "and naming tables (read from the catalog, each missing one probed for a row), those of the last "
                    f"{settings.lookback_days} days for column tables (one probe per period).",
    )
    def archive_new_days(context: SensorEvaluationContext, postgres: PostgresResource) -> SensorResult | SkipReason:
        now = dt.datetime.now(dt.UTC)
        found_days: list[tuple[SensorTarget, list[Period]]] = []
        problems: list[str] = []
        report: list[str] = []
        with contextlib.ExitStack() as stack:
            conn = _connect(postgres, stack)
            _apply_session_settings(conn, postgres)
            origin = context.code_location_origin
            here = (origin.location_name if origin else None, context.repository_name)
            running, backfills = unfinished_runs(context.instance, *here), unfinished_backfills(context.instance, *here)
            for target in targets:
                spec = target.spec
                days = candidate_days(spec, now, settings.lookback_days, candidates)
                done = context.instance.get_materialized_partitions(target.asset_key)
                missing = [d for d in days if d.isoformat() not in done]
                found: list[dt.date] = []
                unprobed: dict = {}
                if missing:
                    try:
                        found = existing_days(conn, spec, missing, children, unprobed)
                    except ArchiveError as exc:  # one table's problem must not hide the others' new days
                        message = redact(str(exc), postgres.password)
                        context.log.warning(message)
                        problems.append(f"{spec.name}: {message}")
                        continue
                    except psycopg.Error as exc:  # a lock_timeout, a dropped table, a lost connection
                        message = probe_failure(exc, spec, postgres)
                        context.log.warning(f"{spec.name}: {message}")
                        problems.append(f"{spec.name}: {message}")
                        continue
                    except Exception as exc:  # noqa: BLE001 - a bug of ours with one table: the others go on
                        message = redact(f"{type(exc).__name__}: {exc}", postgres.password)
                        context.log.warning(f"{spec.name}: could not be inspected: {message}")
                        problems.append(f"{spec.name}: could not be inspected: {message}")
                        continue
                if unprobed:  # those days only (a locked partition): the table's other new days go on
                    day, first = next(iter(unprobed.items()))
                    named = _listed([d.isoformat() for d in sorted(unprobed)])
                    message = (f"{len(unprobed)} day(s) not inspected ({named}): "
                               + probe_failure(first, spec, postgres, day))
                    context.log.warning(f"{spec.name}: {message}")
                    problems.append(f"{spec.name}: {message}")
                ignored: list[str] = []
                busy = days_in_flight(running, target, ignored, backfills, within=days)
                report.append(inspected(spec, days, len(missing), len(found)))
                if ignored:  # (a warning: the tick may request days and show no message)
                    report[-1] += (f", ignored {len(ignored)} queued or running run(s) whose range names no "
                                   f"period of the table (they archive none): {'; '.join(ignored)}")
                    context.log.warning(f"{spec.name}: {report[-1]}")
                found_days.append((target, [d for d in found if spec.period(d).isoformat() not in busy]))
                archiving = [spec.period(d).isoformat() for d in found if spec.period(d).isoformat() in busy]
                if archiving:
                    report[-1] += f", {_listed(archiving)} being archived by a run or a launched backfill"
            cap = settings.max_runs_per_tick
            origin = context.code_location_origin
            # the turn goes on from tick to tick: the table after the one served first last tick starts this one, so a
            # table with a backlog does not take every slot of every tick (its days are archived between ticks)
            names = [target.spec.name for target, _ in found_days]
            if context.cursor in names:
                turn = names.index(context.cursor) + 1
                found_days = found_days[turn:] + found_days[:turn]
            chosen, tried = untried(context.instance, wanted_runs(found_days), cap,
                                    origin.location_name if origin else None, context.repository_name)
            recorded, tried = _recorded_outside(context, conn, targets, tried, rejected)
        wanted = sum(len(days) for _, days in found_days)
        already = (f"{len(tried)} day(s) already have a run (failed, queued or running) under their run key and are "
                   f"not requested again ({_tried(tried)}): re-run a failed day from the asset's partitions in the UI "
                   f"or with {_rerun(tried[0])}") if tried else ""
        if already:
            context.log.info(already)
        if not chosen:
            text = "no new days to archive; inspected " + "; ".join(report) if report else "no table could be inspected"
            if already:
                text += "; " + already
            if problems:  # a failed tick, not a skipped one: a table dropped or refused stays visible (red)
                for event in recorded:  # (a failed tick's events are dropped: one table's problem hides no record)
                    context.instance.report_runless_asset_event(event)
                raise RuntimeError(f"archive_new_days could not inspect {'; '.join(problems)}; requested nothing "
                                   f"this tick ({text})")
            if recorded:  # a tick that records is not skipped: what it looked at goes to its log
                context.log.info(text)
                return SensorResult(asset_events=recorded)
            return SkipReason(text)
        if wanted - len(tried) - len(recorded) > cap:
            context.log.info(f"up to {wanted - len(tried) - len(recorded)} days to archive; requesting {cap} this tick "
                             "(sensor.max_runs_per_tick), the rest on the next ticks")
        return SensorResult(run_requests=[wanted.request() for wanted in chosen], asset_events=recorded,
                            cursor=chosen[0].table)

    return archive_new_days
