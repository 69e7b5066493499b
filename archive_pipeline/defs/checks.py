"""Asset checks of the archives, each result scoped to the day it checked.

- ``archive_intact`` (per day): evaluated by the archive asset itself after each successful archive
  (never planned by a run, so a run that fails before archiving does not turn it red); blocking when
  the table sets ``deep_check``. Launched on its own for a day, it re-checks that day.
- ``latest_archive_intact`` (on demand, ``verify_archives`` job): re-checks the latest archived day
  long after it was written (objects deleted, replaced or corrupted) and records the verdict as
  that day's ``archive_intact`` too.
- ``source_unchanged`` (on demand): compares the source's current content fingerprint of recently
  archived days with their manifests; a day whose rows changed after archiving fails it.
"""


import contextlib
import datetime as dt
import functools
import re
import shlex
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import quote

import psycopg
from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetExecutionContext,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    Config,
    DagsterEventType,
    DagsterExecutionInterruptedError,
    DagsterRunStatus,
    Failure,
    MetadataValue,
    PreviewWarning,
    RetryPolicy,
    asset_check,
    multi_asset_check,
)
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from pydantic import Field

from archive_pipeline.core import fingerprint, verify
from archive_pipeline.core import keys
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.manifest import SourceIdentity, Whose, layout_change, object_key, source_identity
from archive_pipeline.core.config import TableSpec, config_path
from archive_pipeline.core.discovery import NO_PERIOD_TABLE, still_detached
from archive_pipeline.core.errors import CANCELLED_LEAVES, ArchiveError, named, redact
from archive_pipeline.core.periods import UNIT, Period
from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource

# what a check, a record or a proof says of a day archived as empty (no object, no digests to check)
EMPTY_DAY = "no rows that day; its manifest records it as empty"
from archive_pipeline.core.store import S3Store

if TYPE_CHECKING:
    from dagster import AssetExecutionContext, DailyPartitionsDefinition

    from archive_pipeline.core.archive import ArchiveResult

INTACT_CHECK = "archive_intact"  # per day; evaluated by every successful archive
STORED_CHECK = "latest_archive_intact"  # on demand
CHANGED_CHECK = "source_unchanged"  # on demand
ON_DEMAND_CHECKS = (STORED_CHECK, CHANGED_CHECK)
# the remedy of a deep_check day whose archive holds no proof: a Dagster run of the day proves what it archives
PROVE_IT = "archive the day again (overwrite: true in the launchpad's run config), which proves it"
# how a record says its content was never proven: its proof could not run, or the sensor recorded an archive made
# outside Dagster (outside.OUTSIDE_PROOF)
NEVER_PROVEN = ("not verified", "not proven")


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one day's archive, in the words shown in the UI."""

    day: dt.date
    problems: list[str]
    verified: str  # "quick" | "deep" | "content" + what was compared
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def description(self) -> str:
        if self.problems and source_only(self.problems):  # the archive proved its manifest's rows: no damage
            return (f"{self.day}: the archive holds its snapshot as recorded, but the source changed since (rows "
                    "arrived, changed or went late, or its columns changed): " + "; ".join(self.problems))
        if self.problems:
            return f"{self.day}: NOT intact: " + "; ".join(self.problems)
        return f"{self.day}: {self.verified}"


# Whether a deep proof's problems are all the source's (its rows not the archive's, the first difference named or
# not), after the archive's own rows proved equal to its manifest: not a damaged archive, archiving the day again
# with overwrite takes the new rows. The core's rule, as the command line's and retention's: one rule, by each
# problem's kind (a "first difference not named" is the source's too; a quoted row never steers it).
source_only = verify.source_side_only


def object_link(archive_store: ArchiveStoreResource, result: "ArchiveResult") -> str:
    """A link a person can click: the AWS console's object page on AWS, the s3:// URI elsewhere (an
    empty day has no object: its manifest). The key is percent-encoded in the console's query string:
    a table named ``a+b`` or ``x#y`` would otherwise link to another key ('+' reads as a space) or a
    truncated one ('#' starts the fragment)."""
    key = result.key or result.manifest_key  # as ArchiveResult.stored_key, for any result-like object
    endpoint = archive_store.s3.endpoint_url or ""
    if not endpoint or endpoint.rstrip("/").endswith(".amazonaws.com"):
        return f"https://s3.console.aws.amazon.com/s3/object/{archive_store.bucket}?prefix={quote(key, safe='/')}"
    return f"s3://{archive_store.bucket}/{key}"


def _archived_again(store: S3Store, key: str, expected: dict, owner: tuple[str, str]) -> str | None:
    """Which later archive of the day replaced the one ``expected`` records (its object key; a day recorded empty:
    its manifest alone, archived again empty as a later generation too), or None: the day's manifest still names the
    recorded object (is still the recorded empty one), or is not a manifest to go by (a ManifestError: the problems
    found stand). A read that failed (a 503, a dropped connection, access denied) tells neither: it is raised, naming
    table and day, so that a passing fault fails the check as retryable instead of making an archive replaced since
    "NOT as recorded"."""
    recorded, empty = expected.get("object_key"), bool(expected.get("empty"))
    if not recorded and not empty:
        return None
    try:
        current = verify.load_manifest(store, key, owner)
    except verify.NewerManifestError:  # not damaged: no verdict either way (upgrade, its remedy says)
        raise
    except ValueError:  # a ManifestError: not a manifest to go by
        return None
    except ArchiveError as exc:
        raise named(exc, *owner)
    if current is None:
        return None
    now = current.get("object") or {}
    then = expected.get("generation")
    known = isinstance(then, int) and not isinstance(then, bool)
    generation = int(current.get("generation", 1) or 1)
    if empty:  # still empty, unless a later generation says it was archived again (the command line's overwrite of
        # a day still without rows: the same content, a new manifest)
        still = not now.get("key") and not (known and generation > then)
    else:
        still = now.get("key") == recorded
    if still:
        return None
    if known and generation <= then:
        return None  # an older (or the same) generation back in its place: not archived again, rolled back
    return verify.archive_named(current)


def _source_of(postgres: PostgresResource) -> SourceIdentity:
    """The database ``postgres`` connects to (asked only where a day has an archive under another format's key)."""
    with postgres.connect() as conn:
        return source_identity(conn)


def _judged(store: S3Store, spec: TableSpec, day: dt.date, recorded: str, snapshot_at: object,
            identity: Whose = None) -> tuple[str, dict | None]:
    """(key, manifest) of the day's archive a check judges: the day's current one (verify.judged_archive, as the run,
    restore and list choose it), ``recorded`` (the key its record names; ``snapshot_at``: the record's) where that is
    the one. A manifest that fails its checks where it may be the day's current archive raises its ManifestError
    (``exc.key``: its key); a failed read is raised, naming table and day. ``identity``: the source's, where the
    check has one (another database's archive under another format's key is not the day's: manifest.day_archive)."""
    at = dt.datetime.fromtimestamp(snapshot_at, dt.UTC) if isinstance(snapshot_at, (int, float)) else None
    try:
        return verify.judged_archive(store, spec, spec.period(day), recorded, at, identity=identity)
    except ArchiveError as exc:
        raise named(exc, spec.name, spec.period(day).isoformat())


def verify_result(store: S3Store, spec: TableSpec, day: dt.date, expected: dict, *, deep: bool,
                  conn: psycopg.Connection | None = None, scratch_conn: psycopg.Connection | None = None,
                  temp_dir: str | None = None) -> Verdict:
    """Check one day's stored archive against what was recorded (``expected``: bytes, md5, rows and,
    from manifest v2 on, fingerprint).

    quick: manifest present and untampered, object with its recorded size and ETag, MD5, rows and
    fingerprint as recorded (an empty day: its manifest alone). ``deep``: also download, hash and
    count rows. ``conn`` (tables with ``deep_check``): also load the archive back into PostgreSQL and
    compare its content fingerprint with the manifest's and the source's (loaded into ``scratch_conn``
    when given: the primary, where ``conn`` is a hot standby).
    """
    period = spec.period(day)  # (the day as the table is configured now: an archive of another period fails)
    owner = (spec.name, period.isoformat())
    recorded_key = recorded_day_key(spec, day, store, expected.get("manifest_key"))
    try:
        key, current = _judged(store, spec, day, recorded_key, expected.get("snapshot_at"),
                               functools.partial(source_identity, conn) if conn is not None else None)
        problems = []
    except verify.NewerManifestError:  # not damaged: no verdict either way (upgrade, its remedy says)
        raise
    except ValueError as exc:  # a ManifestError: damaged, or another table-day's, where the day's archive may be
        key, current = getattr(exc, "key", None) or recorded_key, None
        problems = [f"manifest {keys.manifest_key(key)} unreadable: {exc}"]
    if not problems:
        problems = verify.verify_archive(store, key, expected if key == recorded_key else {}, deep=deep, owner=owner,
                                         temp_dir=temp_dir, period=period, manifest=current)
    if expected.get("rows") == 0 and expected.get("empty"):
        verified = EMPTY_DAY
    else:
        verified = f"object, size{', MD5 and row count' if deep else ''} and manifest match what was recorded"
    # the object the verdict is about (the manifest's own, for an empty day; a damaged one elsewhere: its manifest)
    checked = expected.get("object_key") if key == recorded_key else object_key(current)
    if current is not None and key != recorded_key:  # the day's archive now is under another key (its format,
        # key_template or prefix changed, and it was archived again): that one is judged, as a run or restore takes it
        replaced = f"{verify.archive_named(current)}; the recorded {store.uri(recorded_key)} is superseded"
    else:
        replaced = _archived_again(store, key, expected, owner) if problems else None
        if replaced is not None:  # (judged for this period too: a replacement may hold another zone's day)
            problems = verify.verify_archive(store, key, {}, deep=deep, owner=owner, temp_dir=temp_dir, period=period)
            current = verify.load_manifest(store, key, owner)
    if replaced is not None:
        # archived again since (an overwrite from the command line or another run, under this key or, the format
        # changed, another): the recorded object was retired or superseded by that commit, which is no fault of the
        # archive; the day's archive now is the one checked
        verified = f"archived again since this was recorded ({replaced}); that archive checked as its manifest says"
        checked = object_key(current)
        if spec.deep_check and conn is None and not (expected.get("empty") and not checked):
            # a re-check: the proof recorded is of the archive replaced, and this one (the command line's, or a run's
            # that recorded nothing) was never proven; its object's check cannot stand for the proof deep_check wants
            # (a day recorded empty and archived again empty has no object to load back: its manifest is all there
            # is, as _recheck has it for a day recorded empty)
            # (not "outside Dagster": a run terminated once it had published, before it recorded, leaves this too)
            problems.append(f"archived again since this was recorded ({replaced}), by the command line or by a run "
                            f"cut off before it recorded it, and that archive's content was never proven against the "
                            f"source (deep_check); a re-check of the object cannot prove it: {PROVE_IT}")
    if conn is not None and not problems:
        # the manifest of the archive judged (the day's current one: see _judged)
        recorded = verify.load_manifest(store, key, owner)
        problems, proved = verify.deep_verify_of(conn, store, spec, day, manifest=recorded, scratch_conn=scratch_conn,
                                                 temp_dir=temp_dir)
        if proved is not None and proved is not recorded:  # an overwrite committed meanwhile: its archive was proven
            replaced = replaced or "while it was being proven"
        if proved is not None:  # (the day's manifest now: an overwrite of the same rows names another generation)
            checked = object_key(proved)
        # a removed day whose fingerprint this version cannot compute: its object alone (verify.rows_unproven); its
        # content was proven by the removal that let it go, as record_removed says (what _recheck's deep_check reads)
        unproven = verify.rows_unproven(proved)
        verified = (f"content proven when the day was removed from the source (a removal proves its archive first); "
                    f"{unproven}" if unproven else
                    "content proven: the archive loaded back into PostgreSQL has the source's fingerprint") + (
            f" (archived again since this was recorded ({replaced}))" if replaced is not None else "")
    if problems:  # what was checked, not what it would have meant had it passed
        verified = (f"object, size{', MD5 and row count' if deep else ''} and manifest checked"
                    + (" and the content compared with the source" if conn is not None else "") + ": NOT as recorded")
    # the object the manifest names (a re-archived day's is a later generation), not the day's first key
    # (an empty day has no object: its manifest)
    return Verdict(day, problems, verified, {"archive": store.uri(checked or keys.manifest_key(key)),
                                             "deep": deep or conn is not None,
                                             "problems": len(problems)})


def written_verdict(result: "ArchiveResult", uri: str) -> Verdict:
    """The quick check of an archive this very run has just written or kept, without asking the store
    again: what it would re-read (manifest, object size and ETag) was verified a moment ago, when the
    manifest's ETag matched its MD5 and the object's HEAD its size and MD5 (written), or when the
    manifest was read back and the object's HEAD compared with it (kept). Saves two requests a day."""
    if result.empty:
        verified = EMPTY_DAY
    elif result.skipped:
        verified = "manifest read back and the object's size and ETag compared with it by this run"
    else:
        verified = "object, size and manifest match what was recorded (checked by this run as it wrote them)"
    return Verdict(result.day, [], verified, {"archive": uri, "deep": False, "problems": 0})


def latest_materialization(instance, key: AssetKey, partition: str):
    """The materialization a check result is about, so the UI shows it against that materialization."""
    # Dagster builds this itself for results it plans; it has no public constructor.
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[partition]),
                                              limit=1).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(storage_id=records[0].storage_id,
                                                         run_id=records[0].run_id, timestamp=records[0].timestamp)


def check_evaluation(context: "AssetExecutionContext | AssetCheckExecutionContext", key: AssetKey, check_name: str,
                     verdict: Verdict, *, blocking: bool) -> AssetCheckEvaluation:
    """``verdict`` as a check evaluation of ``check_name`` for the verdict's day."""
    partition = verdict.day.isoformat()
    return AssetCheckEvaluation(
        asset_key=key, check_name=check_name, passed=verdict.passed, severity=AssetCheckSeverity.ERROR,
        description=verdict.description, blocking=blocking, partition=partition,
        metadata={**verdict.metadata, "partition": partition, "verified": verdict.verified},
        target_materialization_data=latest_materialization(context.instance, key, partition),
    )


def verdict_as_it_was(context: "AssetExecutionContext", key: AssetKey, day: str, damaged: str | None = None,
                      found: Verdict | None = None) -> AssetCheckEvaluation | None:
    """The day's last ``archive_intact`` verdict, recorded again by this run, which planned the check for
    that day and failed before checking it (a warning, not a failure, for a day no run has checked); None when
    the run did not plan it.

    The archive jobs plan no check (the asset reports it). Dagster 1.13's pure asset backfill (tables with
    different partitions materialized together) and ``materialize`` with the checks plan every check of
    the asset, and Dagster shows a check that a failed run planned and did not evaluate as "Execution
    failed" for the day: red, like a damaged archive, on a day whose archive was checked intact. So the
    day keeps its verdict, as after a failed archive job run, saying that this run did not check again.
    The verdict keeps the materialization it was about: if this run archived the day anew and could not
    check it, the UI shows that day's check as not evaluated, not as the old archive's verdict. ``damaged``: the
    day failed because this run found its archive damaged (a removed day's object missing, its manifest altered):
    it did check, and that is the day's verdict, failed, not the last one repeated green. ``found``: the day failed
    with nothing to do (a removed day, run alone) and this run found the archive its latest record records intact:
    that is the day's verdict, not the last one repeated (a damaged object's, restored since, red for good).
    """
    planned, last = _planned_and_last(context, AssetCheckKey(key, INTACT_CHECK), PartitionKeyFilter(key=day))
    if not planned:
        return None
    if found is not None:
        return check_evaluation(context, key, INTACT_CHECK, found, blocking=False)
    if damaged is not None:
        return AssetCheckEvaluation(
            asset_key=key, check_name=INTACT_CHECK, passed=False, severity=AssetCheckSeverity.ERROR, partition=day,
            description=damaged, metadata={"partition": day}, blocking=False,
            target_materialization_data=latest_materialization(context.instance, key, day))
    if last is None:  # never checked (never archived): said as a warning, as the on-demand checks say it, not red
        return AssetCheckEvaluation(
            asset_key=key, check_name=INTACT_CHECK, passed=False, severity=AssetCheckSeverity.WARN, partition=day,
            description=f"{day}: not checked: this run failed before archiving and checking it, and no run has yet "
                        "checked an archive of the day (none is recorded)", metadata={"partition": day},
            blocking=False)
    return _intact_again(key, day, last, f"{day}: not checked again: this run failed before checking it. The last "
                         f"check (run {last.run_id}) found: {last.evaluation.description}",
                         last.evaluation.target_materialization_data)


def _intact_again(key: AssetKey, day: str, last, description: str, target) -> AssetCheckEvaluation:
    """The day's last ``archive_intact`` verdict (``last``, its record) recorded again, non-blocking, about
    ``target`` (a materialization)."""
    was = last.evaluation
    return AssetCheckEvaluation(
        asset_key=key, check_name=INTACT_CHECK, passed=was.passed, severity=was.severity, partition=day,
        description=description, metadata={**was.metadata, "checked_in_run": was.metadata.get("checked_in_run",
                                                                                           last.run_id)},
        blocking=False,
        target_materialization_data=target)


def verdict_carried(context: "AssetExecutionContext", key: AssetKey, day: str, repeated: int
                    ) -> AssetCheckEvaluation | None:
    """The ``archive_intact`` verdict about the day's record ``repeated`` (its storage id) again, about the day's
    newest materialization: a record that repeats what the archive was (a removed day's, see ``record_removed``; a
    day an earlier attempt of this run's step, or an earlier run of its re-execution, recorded, recorded again by a
    ranged output) keeps its proof in the UI rather than showing the check as never run. Only a verdict whose target
    is the record repeated, from whichever run: a newer verdict about another record (the generation it replaced)
    is not about this archive. None when no run has checked that record."""
    last = next((r for r in _history(context.instance, AssetCheckKey(key, INTACT_CHECK),
                                     partition_filter=PartitionKeyFilter(key=day))
                 if r.status != AssetCheckExecutionRecordStatus.PLANNED and r.evaluation is not None
                 and getattr(r.evaluation.target_materialization_data, "storage_id", None) == repeated), None)
    if last is None:
        return None
    if "checked_in_run" in last.evaluation.metadata:  # carried already: said as it was, naming the run that checked
        description = last.evaluation.description
    else:
        by = "earlier in this run" if last.run_id == context.run.run_id else f"by run {last.run_id}"
        description = f"{day}: as checked {by}: {last.evaluation.description}"
    return _intact_again(key, day, last, description, latest_materialization(context.instance, key, day))


def removed_verdict(context: "AssetExecutionContext", key: AssetKey, day: str, repeated: int | None, found: Verdict
                    ) -> AssetCheckEvaluation | None:
    """The ``archive_intact`` verdict of a removed day's record (see ``record_removed``): the verdict about the record
    it repeats (``repeated``, its storage id; None: a record built from the manifest) carried where it passed; else
    ``found``, what this run has just found (the object as its manifest records it, the removal's proof), as a fresh
    verdict: a carried failure (a damaged object, restored since) is no longer true, and a run that planned the check
    and recorded no verdict showed "Execution failed" beside a record saying the archive is kept. None where the run
    did not plan the check and has no verdict to carry (the record says what was found)."""
    carried = verdict_carried(context, key, day, repeated) if repeated is not None else None
    if carried is not None and carried.passed:
        return carried
    if carried is None and not _planned_and_last(context, AssetCheckKey(key, INTACT_CHECK),
                                                 PartitionKeyFilter(key=day))[0]:
        return None
    return check_evaluation(context, key, INTACT_CHECK, found, blocking=False)


def on_demand_as_they_were(context: "AssetExecutionContext", spec: TableSpec, key: AssetKey
                           ) -> Iterator[AssetCheckEvaluation]:
    """The on-demand checks' last verdicts again, for a run that planned them and fails before they ran.

    Dagster 1.13 plans every check of the asset in a pure asset backfill's runs; the check steps wait
    for the asset's, so when it fails they never run, and the UI shows them as "Execution failed": red,
    like a damaged archive or a changed source, after a run that only failed to archive. Each keeps
    its last verdict instead, saying that this run did not check; a check that has never run says so as
    a warning (yellow, as ``latest_archive_intact`` says "nothing archived yet"), not as a failure.
    """
    for name in ON_DEMAND_CHECKS:
        carried = _CARRIED[name]
        planned, last = _planned_and_last(context, AssetCheckKey(key, name), carried=carried)
        if not planned:
            continue
        note = f"{spec.name}: not checked: this run failed before running {name}"
        if last is None:
            yield AssetCheckEvaluation(
                asset_key=key, check_name=name, passed=False, severity=AssetCheckSeverity.WARN, blocking=False,
                description=f"{note}, and no run has yet (run it on demand: verify_archives)")
            continue
        was = last.evaluation
        yield AssetCheckEvaluation(
            asset_key=key, check_name=name, passed=was.passed, severity=was.severity, blocking=False,
            description=f"{note}. The last check (run {last.run_id}) found: {was.description}",
            metadata={**was.metadata, carried: last.run_id},
            target_materialization_data=was.target_materialization_data)


def _planned_and_last(context: "AssetExecutionContext", check: AssetCheckKey, partition_filter=None,
                      carried: str | None = None) -> tuple[bool, object | None]:
    """Whether this run planned ``check`` (for the filter's day), and the record of its last verdict from
    another run (None if it has none; ``carried``: skipping verdicts that were carried forward already)."""
    run_id, planned = context.run.run_id, False
    for record in _history(context.instance, check, partition_filter=partition_filter):
        if record.run_id == run_id:  # this run's records are the newest
            planned = planned or record.status == AssetCheckExecutionRecordStatus.PLANNED
        elif record.status != AssetCheckExecutionRecordStatus.PLANNED and record.evaluation is not None and (
                carried is None or carried not in record.evaluation.metadata):
            return planned, record
    return planned, None


def _history(instance, check: AssetCheckKey, *, partition_filter=None, status=None, page: int = 50,
             most: int = 5000) -> Iterator:
    """The check's execution records, newest first, a page at a time (``most`` at the most). A verdict looked
    for further back than one page is still found: runs that only planned the check (a pure asset backfill's,
    50 of them) pushed the last real comparison out of the first page, and a red source_unchanged turned into
    "no run has yet"."""
    cursor, seen = None, 0
    while seen < most:
        records = instance.event_log_storage.get_asset_check_execution_history(
            check, limit=page, cursor=cursor, status=status, partition_filter=partition_filter)
        yield from records
        seen += len(records)
        if len(records) < page:
            return
        cursor = records[-1].id


# The metadata key that marks a verdict carried forward from an earlier run, which is never carried again.
_CARRIED = {STORED_CHECK: "checked_in_run", CHANGED_CHECK: "compared_in_run"}


def retries_off(text: str, origin: str | None, disabled: bool = False) -> str:
    """``text`` saying what happens to a transient failure when the step retries nothing: its retry policy's
    ``retry: max_retries: 0``, or (``disabled``) the run launched with its retries off: the core's words say
    "retried" for every transient cause."""
    off = ("retries are off (this run was launched with execution: config: retries: disabled)" if disabled else
           f"retries are off (retry: max_retries: 0 in {origin or config_path()})")
    text = text.replace("transient, retried", f"transient, but not retried: {off}")
    text = text.replace("This looked transient and was retried", f"This looked transient, but {off}")
    text = re.sub(r"; (?:the run|the download|the day) will be retried", "; retryable", text)  # (the store's words)
    # (a function, not a replacement string: the configuration's path may hold a backslash, C:\dagster\...)
    return re.sub(r"\bretried automatically\b", lambda _: f"not retried: {off}; launch it again", text)


def run_retries_off(context: AssetExecutionContext | AssetCheckExecutionContext) -> bool:
    """Whether the run's retries are off (run config ``execution: config: retries: disabled``, the launchpad's way
    to fail fast): Dagster then fails a step that asks for a retry, whatever its policy. (Dagster keeps the mode on
    the step's own context.)"""
    step = getattr(context.op_execution_context, "_step_execution_context", None)
    mode = getattr(step, "retry_mode", None)
    return bool(getattr(mode, "disabled", False))


@dataclass(frozen=True)
class Retries:
    """What a step does with a transient failure: ``max_retries`` of its retry policy (None: no policy
    known), ``origin``, where the configuration that set it is (for the words of :func:`retries_off`), and
    ``disabled``: the run's retries are off (see :func:`run_retries_off`), whatever the policy says."""

    max_retries: int | None = None
    origin: str | None = None
    disabled: bool = False

    @classmethod
    def of(cls, policy: RetryPolicy | None, origin: str | None) -> "Retries":
        return cls(getattr(policy, "max_retries", None), origin)

    def during(self, context: AssetExecutionContext | AssetCheckExecutionContext) -> "Retries":
        """These retries in the run of ``context``: a policy is built with the definitions, the run's retry mode
        is known only once the step runs."""
        return replace(self, disabled=run_retries_off(context))

    @property
    def off(self) -> bool:
        """Whether a transient failure of the step is not retried (max_retries 0, or the run's retries off)."""
        return self.disabled or self.max_retries == 0

    def words(self, text: str, origin: str | None = None) -> str:
        """``text`` as :func:`retries_off` words it (``origin``: where the configuration is, else this one's)."""
        return retries_off(text, origin or self.origin, self.disabled)

    def final(self, failure: Failure) -> Failure:
        """``failure`` as the step raises it: not retryable where no retry follows. Dagster turns a retryable
        Failure into its own RetryRequested, which then fails the step as "RetryRequested but retries are
        disabled" or "Exceeded max_retries of 0": naming no table, day or cause, ours buried beneath. (Its
        ``retryable`` metadata still says whether the cause was transient: launching it again may pass.)"""
        if not (failure.allow_retries and self.off):
            return failure
        unretried = Failure(description=failure.description, allow_retries=False, metadata=failure.metadata)
        unretried.__cause__, unretried.__suppress_context__ = failure.__cause__, True  # (its cause kept)
        return unretried


def _unreachable(spec: TableSpec, day: object, exc: Exception, password: str | None = None,
                 retries: Retries = Retries()) -> Failure:
    """The check's step failure when it could not check: no verdict either way. An :class:`ArchiveError`
    (the core's: a lost session, a timeout, a privilege refused) says its own cause and remedy and is
    retried where that can help; anything else is a store or database that could not be reached. With
    ``retries`` off (max_retries 0, or the run's retries disabled: see :meth:`Retries.during`) a transient cause
    says it is not retried, as the archive step's does, and fails the step as ours (:meth:`Retries.final`)."""
    if isinstance(exc, ArchiveError):
        cause, remedy, retryable = redact(exc.message, password), exc.remedy, exc.retryable
    else:  # (a manifest of a newer version carries the remedy: upgrade)
        cause, remedy, retryable = redact(f"{type(exc).__name__}: {exc}", password), getattr(exc, "remedy", None), False
    remedy = remedy or ("check that the store (ARCHIVE_S3_ENDPOINT_URL, ARCHIVE_S3_BUCKET, credentials) and the "
                        "database are reachable from this code location, then run the check again")
    named = any(f"{spec.name}{between}{day}" in cause for between in (" ", " for "))
    cause = f"could not check the archive: {cause}" if named else f"{spec.name} {day}: could not check the archive: {cause}"
    if retryable and retries.off:
        cause, remedy = retries.words(cause), retries.words(remedy)
    return retries.final(Failure(description=f"{cause}\n\nWhat to do: {redact(remedy, password)}",
                                 allow_retries=retryable,
                                 metadata={"table": spec.name, "day": str(day), "retryable": retryable,
                                           **short_cause(exc)}))


def short_cause(exc: BaseException) -> dict[str, str]:
    """:data:`CAUSE` of a failure's metadata: the error's cause in short, where its classification told one."""
    said = getattr(exc, "cause", None) if isinstance(exc, ArchiveError) else None
    return {CAUSE: said} if isinstance(said, str) and said else {}


def in_archive_run(context: AssetCheckExecutionContext, key: AssetKey) -> bool:
    """Whether this check runs inside a run that also archives (Dagster 1.13 adds every check of an
    asset to runs launched from the asset's page), where an on-demand check must stay cheap."""
    run = context.op_execution_context.run
    if run.asset_selection:
        return key in run.asset_selection
    # No selection (``dagster.materialize`` of a list of assets): what the run plans to materialize.
    planned = context.instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
                                                   limit=1000).records
    return any(r.event_log_entry.dagster_event.asset_key == key for r in planned)


def _latest(instance, key: AssetKey, spec: TableSpec, limit: int = 1) -> list:
    """The latest archived periods of ``key`` (by partition, not by when they were recorded: a backfill of old
    days records them last, and the newest day, where late rows land, must not drop out), each one's latest
    materialization, newest first: ``limit`` periods, or of an hourly table the hours of the ``limit`` latest
    days. Only partitions of the table's granularity now (a key archived before it changed, "2024-03-10" of a
    table now hourly, is not one of its periods)."""
    periods = []
    for partition in instance.get_materialized_partitions(key):
        try:
            periods.append((spec.period(partition), partition))
        except ValueError:  # (PeriodError) another granularity's key
            continue
    periods.sort(key=lambda found: _partition_order(found[1]), reverse=True)
    if spec.granularity == "hourly":
        latest_days = sorted({period.day for period, _ in periods}, reverse=True)[:limit]
        days = [partition for period, partition in periods if period.day in latest_days]
    else:
        days = [partition for _, partition in periods[:limit]]
    out = []
    for day in days:
        records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[day]),
                                                  limit=1).records
        if records:
            out.append(records[0].asset_materialization)
    return out


def _partition_order(key: str) -> tuple[str, str]:
    """A partition key's place in time: its date and hour, then its offset (the repeated hour of a clock
    turned back, ``2024-10-27-02:00+0100``, comes after ``2024-10-27-02:00``)."""
    return key[:16], key[16:]


def log_guarded(context: "AssetExecutionContext", event: object, doing: str,
                then: Callable[[], object] | None = None) -> None:
    """Record ``event`` from the asset's own code: Dagster stores a yielded event outside it and raises a termination
    that came meanwhile when it resumes the asset, past its handling (a bare DagsterExecutionInterruptedError: no
    table, no day). Terminated while it is stored, the interrupt says what it cut off (``doing``, see
    :func:`terminated`), and ``then`` (what must not be left unrecorded with it: the day's check) is recorded all the
    same, quietly."""
    try:
        context.log_event(event)
    except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
        if then is not None:
            with contextlib.suppress(Exception):
                context.log_event(then())
        interrupted(exc, doing)
        raise


# what a run was doing when terminated after it published a day's new archive, while it checked it (CANCELLED_LEAVES)
CHECKING_NEW = "checking the new archive"
# ... and one terminated a step earlier, after its commit, while it tidied the generation the new archive replaced
TIDYING_NEW = "tidying after the new archive"


def interrupted(exc: BaseException, doing: str) -> BaseException:
    """``exc``, a termination, noted as cutting off ``doing`` (a CANCELLED_LEAVES entry, as :func:`terminated` words
    it) over what an inner step noted: that step's words ("proving": nothing was changed) are no longer true of the
    day once the work around it has published or stored something."""
    exc.interrupted = doing  # type: ignore[union-attr]
    return exc


def terminated(context: AssetExecutionContext | AssetCheckExecutionContext, exc: BaseException, spec: TableSpec,
               day: Period, doing: str, job: str | None) -> BaseException:
    """What to raise when a step is interrupted while ``doing`` ``day`` (a partition of ``job``; None: a check).

    A run a person terminated (marked CANCELING) fails the step with a :class:`Failure` that no RetryPolicy
    retries, saying what was cancelled and what the day is left as (``CANCELLED_LEAVES``): Dagster itself
    turns an interrupt into a retry when the step has a policy, so a terminated run waited out the backoff,
    did the day all the same and ended as a success. Any other interrupt (a run worker stopped without a
    termination request) is raised as it came, for Dagster to handle."""
    run = context.instance.get_run_by_id(context.run.run_id)
    if run is None or run.status not in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED):
        return exc
    doing = getattr(exc, "interrupted", None) or doing
    doing = doing if doing in CANCELLED_LEAVES else doing.split(" ", 1)[0]  # the core's own word, where it said
    again = f"launch partition {day} of {job}" if job else "run the check"
    return Failure(description=f"{spec.name} {day}: cancelled while {doing}: the run was terminated; "
                               f"{CANCELLED_LEAVES[doing]}.\n\nWhat to do: {again} again when it should run.",
                   allow_retries=False, metadata={"table": spec.name, "day": day.isoformat(), "retryable": False,
                                                  "error": CANCELLED})


CANCELLED = "cancelled"  # the ``error`` of :func:`terminated`'s Failure: the run was terminated, nothing failed


def cancelled(failure: Failure) -> bool:
    """Whether ``failure`` is :func:`terminated`'s: a run a person terminated, not a day that could not be done."""
    said = failure.metadata.get("error")
    return getattr(said, "value", said) == CANCELLED


CAUSE = "cause"  # a day's failure's cause in short (its classification's: no object key, no day), when known


def alike(failed: dict[str, Failure], verb: str = "failed") -> str:
    """Each day's failure (``failed``, by ISO day) said once for the days it was alike, named together: a ranged
    run refused by the store for a year of days repeated one cause and its advice 365 times, a wall of text, not a
    cause. Alike: the same text but for the day, or the same short cause (:data:`CAUSE`) and advice, where the
    text differs by the day's object key too (a month's folder in it split a year into twelve "alike" groups)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for day, failure_ in sorted(failed.items()):
        groups.setdefault(_alike_key(day, failure_), []).append(day)
    return "\n\n".join(_said_once(days, failed, verb) for days in groups.values())


def _alike_key(day: str, failure_: Failure) -> tuple[str, ...]:
    text = (failure_.description or "").replace(day, "\x00")
    cause = getattr(failure_.metadata.get(CAUSE), "value", failure_.metadata.get(CAUSE))
    return (str(cause), text.partition("\n\nWhat to do: ")[2]) if cause else (text,)


def _said_once(days: list[str], failed: dict[str, Failure], verb: str) -> str:
    """One group of :func:`alike`: a day alone as it said it; days whose texts differ only by the day, once with
    ``<day>``; else (the same cause and advice about each day's own object) the cause and the first day's text."""
    first = failed[days[0]].description or ""
    if len(days) == 1:
        return first
    texts = {(failed[day].description or "").replace(day, "\x00") for day in days}
    if len(texts) == 1:
        return (f"{len(days)} days {verb} alike ({', '.join(days)}), each as follows:\n"
                + first.replace(days[0], "<day>"))
    cause = getattr(failed[days[0]].metadata.get(CAUSE), "value", failed[days[0]].metadata.get(CAUSE))
    return (f"{len(days)} days {verb} alike ({', '.join(days)}), each because {cause}, with the same advice; the "
            f"first as follows:\n{first}")


def cut_short(outcome: BaseException, unstarted: list[str], unchecked: dict[str, Failure]) -> BaseException:
    """A check of several days terminated (``outcome``: :func:`terminated`'s, naming the day it cut off), naming
    every day left without a verdict: those that could not be checked before it, with their causes, and those it
    never started (it named the day cut off only, or went on to check the rest after the termination)."""
    if not isinstance(outcome, Failure) or not (unstarted or unchecked):
        return outcome
    parts = [outcome.description or ""]
    if unchecked:
        parts.append(f"Could not be checked earlier in this run ({', '.join(sorted(unchecked))}):\n\n"
                     + alike(unchecked, "could not be checked"))
    if unstarted:
        parts.append(f"Never started, so not checked: {', '.join(unstarted)}.")
    cut = getattr(outcome.metadata.get("day"), "value", None)
    left = sorted({*unchecked, *unstarted, *([cut] if cut else [])})
    return Failure(description="\n\n".join(parts), allow_retries=False,
                   metadata={**outcome.metadata, "unchecked_days": MetadataValue.json(left)})


def expected_from(meta: dict) -> dict:
    """What a materialization recorded, as ``verify_result`` compares it."""
    expected = {"bytes": meta["compressed_bytes"], "md5": meta["md5"], "rows": meta["dagster/row_count"],
                "format": meta["format"], "compression": meta["compression"], "empty": meta.get("state") == "empty"}
    if meta.get("fingerprint"):
        expected["fingerprint"] = meta["fingerprint"]
    if meta.get("object_key"):
        expected["object_key"] = meta["object_key"]
    if meta.get("manifest_key"):
        expected["manifest_key"] = meta["manifest_key"]
    if isinstance(meta.get("generation"), int):
        expected["generation"] = meta["generation"]
    if isinstance(meta.get("snapshot_at"), (int, float)):  # (an older archive elsewhere never stands in for it)
        expected["snapshot_at"] = meta["snapshot_at"]
    return expected


def recorded_day_key(spec: TableSpec, day: dt.date, store: S3Store, manifest_key: object = None) -> str:
    """The day's key as its materialization recorded it (its manifest's key less the suffix): the archive is
    there whatever the table's format, compression, key_template or ARCHIVE_S3_PREFIX became since; else the
    key the configuration renders now."""
    if isinstance(manifest_key, str) and manifest_key.endswith(keys.MANIFEST_SUFFIX):
        return manifest_key[:-len(keys.MANIFEST_SUFFIX)]
    return table_day_key(spec, day, store.prefix)


class StoredCheckConfig(Config):
    deep: bool = Field(default=False, description="download the object, hash it and count its rows")


def _recheck(context, spec: TableSpec, key: AssetKey, event, store: S3Store, deep: bool,
             temp_dir: str | None = None, retries: Retries = Retries()) -> Verdict:
    meta = {k: v.value for k, v in event.metadata.items()}
    day = spec.period(event.partition)
    if "md5" not in meta:
        return Verdict(day, [f"the materialization of {event.partition} records no archive (md5)"], "")
    proof = str(meta.get("verified", ""))
    if spec.deep_check and proof.startswith("NOT proven"):
        # The object's size, MD5 and rows can still match what was recorded: that re-check cannot turn a
        # failed content proof green (the bucket holds rows that are not the source's).
        return Verdict(day, [f"its content failed the proof when it was archived ({proof}); a re-check of the "
                             f"object cannot prove it: {PROVE_IT}"], "")
    if spec.deep_check and proof.startswith(NEVER_PROVEN):
        # deep_check promises the content equals the source's: an object check cannot stand for a proof that
        # never ran (its download failed, say; or the day was archived outside Dagster), as its record says
        return Verdict(day, [f"its content was never proven ({proof}); a re-check of the object cannot prove it: "
                             f"{PROVE_IT}"], "")
    if spec.deep_check and not proof.startswith("content proven") and meta.get("state") != "empty":
        # archived before deep_check was set (its record says what was checked then: the object alone)
        return Verdict(day, [f"its content was never proven against the source (archived before deep_check was set: "
                             f"{proof or 'no proof recorded'}); a re-check of the object cannot prove it: {PROVE_IT}"],
                       "")
    try:
        return verify_result(store, spec, day, expected_from(meta), deep=deep, temp_dir=temp_dir)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the store is reported as such
        raise _unreachable(spec, day, exc, retries=retries) from None
    except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
        raise terminated(context, exc, spec, day, "checking", None) from None


def _day_result(context: AssetCheckExecutionContext, spec: TableSpec, key: AssetKey, day: str,
                archive_store: ArchiveStoreResource, deep: bool, retries: Retries = Retries()) -> AssetCheckResult:
    """``archive_intact`` for ``day``: its latest archive re-checked, or a warning that it has none yet."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1).records
    if not records:
        return AssetCheckResult(asset_key=key, check_name=INTACT_CHECK, passed=False, severity=AssetCheckSeverity.WARN,
                                description=f"{day}: not archived yet; nothing to check")
    verdict = _recheck(context, spec, key, records[0].asset_materialization, archive_store.store_for(spec.name), deep,
                       archive_store.temp_dir, retries)
    return AssetCheckResult(asset_key=key, check_name=INTACT_CHECK, passed=verdict.passed,
                            description=verdict.description,
                            metadata={**verdict.metadata, "partition": verdict.day.isoformat()})


def build_intact_check(spec: TableSpec, key: AssetKey, partitions_def: "DailyPartitionsDefinition",
                       retry: RetryPolicy | None = None, origin: str | None = None) -> AssetChecksDefinition:
    """``archive_intact``, one result per day. Archive runs report it themselves; launched alone for a day,
    it re-checks that day's latest archive (``retry``, ``origin``: see :func:`build_source_unchanged_check`)."""
    with warnings.catch_warnings():  # partitioned checks are "preview" in 1.13; this is the behaviour we want
        warnings.simplefilter("ignore", PreviewWarning)
        return _build_intact_check(spec, key, partitions_def, retry, origin)


def _build_intact_check(spec: TableSpec, key: AssetKey, partitions_def: "DailyPartitionsDefinition",
                        retry: RetryPolicy | None, origin: str | None = None) -> AssetChecksDefinition:
    retries = Retries.of(retry, origin)
    check = AssetCheckSpec(INTACT_CHECK, asset=key, partitions_def=partitions_def, blocking=spec.deep_check,
                           description="The day's object exists; its size, ETag, MD5 and row count and its manifest "
                                       "agree with what was recorded" + ("; its content equals the source's "
                                                                         "(deep_check)" if spec.deep_check else ""))

    # A multi-check of one check only for its optional output (can_subset): a run of a range of days (a pure
    # asset backfill's) records each day's verdict for its day and has no single result to return; the
    # result an asset_check must return would be recorded for no day.
    @multi_asset_check(specs=[check], can_subset=True, name=f"{key.to_python_identifier()}_{INTACT_CHECK}",
                       retry_policy=retry)
    def _intact(context: AssetCheckExecutionContext, config: StoredCheckConfig,
                archive_store: ArchiveStoreResource) -> Iterator[AssetCheckResult]:
        run_retries = retries.during(context)
        if context.has_partition_key:
            yield _day_result(context, spec, key, context.partition_key, archive_store, config.deep, run_retries)
            return
        if not context.has_partition_key_range:  # a verdict must be recorded for the day it is about
            raise Failure(description=f"{spec.name}: archive_intact checks one day at a time and no day was "
                                      "chosen: select the days (partitions) to check, or run latest_archive_intact "
                                      "(verify_archives) to re-check the latest archived day", allow_retries=False)
        # A range: a pure asset backfill's run of one day, or more if the check runs alone (a run of more
        # days that archives yields no output, so the check's step is skipped). Each day's verdict for its day.
        # A day that cannot be checked (its store request refused) fails alone: the others are checked, not
        # left planned by a failed run (which Dagster shows as "Execution failed" for each).
        unchecked: dict[str, Failure] = {}
        days = list(context.partition_keys)
        for at, day in enumerate(days):
            try:
                result = _day_result(context, spec, key, day, archive_store, config.deep, run_retries)
            except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:  # (outside _recheck's own words)
                raise cut_short(terminated(context, exc, spec, spec.period(day), "checking", None), days[at + 1:],
                                unchecked) from None
            except Failure as exc:
                if cancelled(exc):  # the run was terminated: no verdict after it, not one day's refused request
                    raise cut_short(exc, days[at + 1:], unchecked) from None
                unchecked[day] = exc
                continue
            context.op_execution_context.log_event(AssetCheckEvaluation(
                asset_key=key, check_name=INTACT_CHECK, passed=result.passed, severity=result.severity,
                description=result.description, metadata=result.metadata, partition=day,
                blocking=spec.deep_check, target_materialization_data=latest_materialization(context.instance, key, day)))
        if unchecked:
            names = ", ".join(sorted(unchecked))
            raise Failure(description=f"{spec.name}: {len(unchecked)} of {len(context.partition_keys)} days could not "
                                      f"be checked ({names}); the others were.\n\n"
                                      + alike(unchecked, "could not be checked"),
                          allow_retries=any(f.allow_retries for f in unchecked.values()),  # (a retry re-checks them all)
                          metadata={"table": spec.name, "unchecked_days": MetadataValue.json(sorted(unchecked))})

    return _intact


def build_stored_archive_check(spec: TableSpec, key: AssetKey, retry: RetryPolicy | None = None,
                               origin: str | None = None) -> AssetChecksDefinition:
    """``latest_archive_intact``: on demand; also records the verdict as that day's ``archive_intact``
    (``retry``, ``origin``: see :func:`build_source_unchanged_check`)."""
    retries = Retries.of(retry, origin)

    check = AssetCheckSpec(STORED_CHECK, asset=key, blocking=False,
                           description="On demand: re-checks the archive of the latest archived day against its "
                                       "recorded size, MD5, row count and manifest, and records the result for that "
                                       "day.")

    # A multi-check of one check for its optional output: the verdict is logged against the materialization of
    # the day it checked (the latest by partition); an AssetCheckResult is Dagster's against the latest by time,
    # a backfilled older day's
    @multi_asset_check(specs=[check], can_subset=True, name=f"{key.to_python_identifier()}_{STORED_CHECK}",
                       retry_policy=retry)
    def _check(context: AssetCheckExecutionContext, config: StoredCheckConfig,
               archive_store: ArchiveStoreResource) -> Iterator[AssetCheckResult]:
        latest = _latest(context.instance, key, spec)
        if not latest:
            yield AssetCheckResult(check_name=STORED_CHECK, passed=False, severity=AssetCheckSeverity.WARN,
                                   description=f"{spec.name}: nothing archived yet; nothing to check")
            return
        verdict = _recheck(context, spec, key, latest[0], archive_store.store_for(spec.name), config.deep,
                          archive_store.temp_dir, retries.during(context))
        context.op_execution_context.log_event(check_evaluation(context, key, INTACT_CHECK, verdict, blocking=False))
        context.op_execution_context.log_event(AssetCheckEvaluation(
            asset_key=key, check_name=STORED_CHECK, passed=verdict.passed, severity=AssetCheckSeverity.ERROR,
            description=verdict.description, metadata={**verdict.metadata, "partition": verdict.day.isoformat()},
            blocking=False, target_materialization_data=latest_materialization(context.instance, key, verdict.day.isoformat())))

    return _check


def _last_comparison(instance, key: AssetKey, run_id: str) -> tuple[str, AssetCheckEvaluation] | None:
    """The latest verdict of ``source_unchanged`` from a run that compared (its run id and evaluation)."""
    records = _history(instance, AssetCheckKey(key, CHANGED_CHECK),
                       status={AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED})
    for record in records:
        evaluation = record.event.dagster_event.asset_check_evaluation_data if record.event else None
        if evaluation is not None and record.run_id != run_id and "compared_in_run" not in evaluation.metadata:
            return record.run_id, evaluation
    return None


def _not_compared(context: AssetCheckExecutionContext, spec: TableSpec, key: AssetKey) -> AssetCheckResult:
    """``source_unchanged`` in a run that archives: Dagster plans it there, but fingerprinting the
    archived days would double the run's cost. The result is the last comparison's verdict, carried
    forward and saying so: a pass here turned a detected change green without anyone looking."""
    day = context.partition_key if context.has_partition_key else "this run's day"
    note = (f"{spec.name}: not compared in a run that archives ({day} was read from the source as it is now); run "
            "source_unchanged on demand (verify_archives) to compare the archived days with the source")
    last = _last_comparison(context.instance, key, context.run.run_id)
    if last is None:  # nothing was ever compared: a warning, as a failed run says it, never a green "unchanged"
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN,
                                description=note + "; no comparison recorded yet",
                                metadata={"compared_in_run": "none"})
    run_id, evaluation = last
    return AssetCheckResult(passed=evaluation.passed, severity=evaluation.severity,
                            description=f"{note}. The last comparison (run {run_id}) found: {evaluation.description}",
                            metadata={**evaluation.metadata, "compared_in_run": run_id})


class ChangedCheckConfig(Config):
    days: int = Field(default=7, ge=1, le=366, description="how many of the latest archived days to compare (of an "
                                                          "hourly table, their hours; of a monthly one, months)")


def _uncomparable(manifest: dict) -> str | None:
    """Why the source cannot be compared with ``manifest`` by this version, with what to do (its fingerprint is of an
    older version's retired algorithm, none is recorded, or a newer version's: fingerprint.why_uncomputable), or None
    where it can. Such a day is not compared, neither changed nor unchanged, as compare says it: source_changed's
    words for it were counted a change in PostgreSQL, sending the operator after an edit nobody made."""
    unknown = fingerprint.why_uncomputable(manifest.get("fingerprint"))
    return None if unknown is None else f"{unknown[0]} ({unknown[1]} to compare it)"


def build_source_unchanged_check(spec: TableSpec, key: AssetKey, rerun_config: str,
                                 retry: RetryPolicy | None = None, origin: str | None = None) -> AssetChecksDefinition:
    """``source_unchanged``: on demand, the latest archived days' source fingerprints against their manifests;
    ``rerun_config`` is the launchpad run config that archives a changed day again. ``retry``: the tables'
    retry policy, so a check that a lock_timeout, a lost session or a store's 503 cut short is tried again,
    as the core's error says it is (see :func:`_unreachable`); with max_retries 0 the error says it is not,
    naming ``origin`` (the configuration)."""
    retries = Retries.of(retry, origin)

    @asset_check(asset=key, name=CHANGED_CHECK, blocking=False, retry_policy=retry,
                 description="On demand: compares the source's current content fingerprint of the latest archived "
                             "days with the one their manifest recorded; a day changed after archiving fails it.")
    def _check(context: AssetCheckExecutionContext, config: ChangedCheckConfig, postgres: PostgresResource,
               archive_store: ArchiveStoreResource) -> AssetCheckResult:
        if in_archive_run(context, key):
            return _not_compared(context, spec, key)
        source_changed = verify.source_changed
        store = archive_store.store_for(spec.name)
        changed: dict[str, str] = {}
        untrusted: dict[str, str] = {}
        dropped: dict[str, str] = {}  # naming mode: days whose table was dropped by hand (restore, or nothing)
        checked, removed = [], {}
        superseded: dict[str, str] = {}  # days archived again under another key since their record: the one compared
        latest = _latest(context.instance, key, spec, config.days)
        if not latest:  # (not "the source of 0 archived days still matches": a warning, as latest_archive_intact's)
            return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN,
                                    description=f"{spec.name}: nothing archived yet; nothing to compare")
        for at, event in enumerate(latest):
            day = spec.period(event.partition)
            try:
                recorded_key = recorded_day_key(spec, day, store,
                                                getattr(event.metadata.get("manifest_key"), "value", None))
                day_key, manifest = _judged(store, spec, day, recorded_key,
                                            getattr(event.metadata.get("snapshot_at"), "value", None),
                                            functools.partial(_source_of, postgres))
                if manifest is not None and day_key != recorded_key:  # said: the source is compared with that one
                    superseded[event.partition] = verify.archive_named(manifest)
                mark = (manifest or {}).get("removed")
                if mark and mark.get("state") != "done":
                    # pending: a removal that may not have happened (refused, or cut short) is compared; one whose
                    # rows are all gone (committed, its done mark still on its way) is removed, as compare says
                    with postgres.connect() as conn:
                        if verify.rows_after_removal(conn, spec, day):
                            mark = None
                if mark:  # retention took the day out of the source: its rows are meant to be gone
                    late, difference = 0, None
                    if mark.get("state") == "done":
                        with postgres.connect() as conn:
                            # a naming-mode day table a detach left in place keeps the removed rows, as detach means
                            late = 0 if still_detached(conn, spec, day, manifest) else \
                                verify.rows_after_removal(conn, spec, day)
                            # exactly the archive's rows again: restored into the original table, a source day again
                            difference = source_changed(conn, spec, day, manifest) \
                                if late and _uncomparable(manifest) is None else None
                    if late and (unknown := _uncomparable(manifest)) is not None:  # back, or written since: untold
                        untrusted[event.partition] = (
                            f"{late:,} row{'s' if late != 1 else ''} of the day {'are' if late != 1 else 'is'} in the "
                            f"source again since retention removed it ({mark.get('at')}), and whether they are the "
                            f"archive's rows cannot be told: {unknown}")
                        continue
                    if late and difference is None:
                        checked.append(event.partition)
                        continue
                    if late:  # back (restored, then edited; or written since): compared with the archive as any day
                        checked.append(event.partition)
                        changed[event.partition] = (
                            f"{late:,} row{'s' if late != 1 else ''} of the day {'are' if late != 1 else 'is'} in the "
                            f"source again since retention removed it ({mark.get('at')}: written since, or restored "
                            f"into the table and changed since), and not the archive's rows ({difference}); archive "
                            "the day again with overwrite to keep them (the removed rows' archive is kept beside the "
                            "new one)")
                    else:
                        removed[event.partition] = f"{mark.get('state')}, {mark.get('at')}"
                    continue
                if manifest is None:  # the archive is gone from the store: nothing to compare with, not a change
                    gone_uri = store.uri(keys.manifest_key(day_key))
                    untrusted[event.partition] = (f"its manifest {gone_uri} is missing from the store (archive the "
                                                  "day again)")
                    continue
                other = layout_change(manifest, day, spec.day_column)
                if other is not None:  # the table's zone, granularity or day column changed: not a change in PostgreSQL
                    untrusted[event.partition] = f"{other} (archive it again with overwrite as the table is now)"
                    continue
                if (unknown := _uncomparable(manifest)) is not None:  # neither changed nor unchanged: not compared
                    untrusted[event.partition] = unknown
                    continue
                with postgres.connect() as conn:
                    try:
                        difference = source_changed(conn, spec, day, manifest)
                    except ArchiveError as exc:  # its day table dropped by a pending removal committing meanwhile
                        if exc.cause != NO_PERIOD_TABLE or not manifest.get("removed"):
                            raise
                        pending = manifest["removed"]
                        removed[event.partition] = f"{pending.get('state')}, {pending.get('at')}"
                        continue
                    if difference:  # read once more: a removal or overwrite that committed meanwhile is no change
                        # (read just now: one that reads as absent while a listing shows it is no verdict, retryable)
                        again = verify.load_stored_manifest(store, day_key, (spec.name, day.isoformat()))
                        if again is not None and again != manifest:
                            mark = again.get("removed")
                            if mark:
                                removed[event.partition] = f"{mark.get('state')}, {mark.get('at')}"
                                continue
                            if (unknown := _uncomparable(again)) is not None:
                                untrusted[event.partition] = unknown
                                continue
                            difference = source_changed(conn, spec, day, again)
                        elif manifest.get("removed") and not verify.rows_after_removal(conn, spec, day):
                            # its pending removal committed meanwhile (the done mark still on its way): removed
                            pending = manifest["removed"]
                            removed[event.partition] = f"{pending.get('state')}, {pending.get('at')}"
                            continue
            except verify.NewerManifestError as exc:  # not damaged, not a verdict: upgrade (its remedy says)
                raise _unreachable(spec, day, exc, postgres.password, retries.during(context)) from None
            except verify.ManifestError as exc:  # damaged, or another table-day's: nothing to compare with
                untrusted[event.partition] = f"its manifest cannot be trusted: {exc}"
                continue
            except Exception as exc:  # noqa: BLE001 - unreachable database or store, or the comparison's error
                raise _unreachable(spec, day, exc, postgres.password, retries.during(context)) from None
            except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:  # (the days left named)
                raise cut_short(terminated(context, exc, spec, day, "checking", None),
                                [e.partition for e in latest[at + 1:]], {}) from None
            checked.append(event.partition)
            if difference and difference.startswith(verify.TABLE_GONE):  # not to be archived again: put back, or not
                command = shlex.join(["archive-pipeline", "restore", "--table", spec.name, "--day", event.partition,
                                      "--into", "original"])
                dropped[event.partition] = (
                    f"{difference}: the archive is the day's only copy; if the table was dropped by mistake, restore "
                    f"it ({command}), else nothing is to be done (an archive run of the day has nothing to archive)")
            elif difference:
                changed[event.partition] = difference
        gone = "".join(f"; not compared, {d}: removed from the source by retention ({why})"
                       for d, why in sorted(removed.items()))
        gone += "".join(f"; not compared, {d}: {why}" for d, why in sorted(untrusted.items()))
        gone += "".join(f"; {d}: {why}" for d, why in sorted(dropped.items()))
        gone += "".join(f"; {d}: archived again under another key since it was recorded: compared with that archive "
                        f"({which})" for d, which in sorted(superseded.items()))
        if changed:
            description = (f"{spec.name}: {len(changed)} of {len(checked)} archived {UNIT[spec.granularity]}s changed "
                           "in PostgreSQL after "
                           f"archiving: " + "; ".join(f"{d}: {why}" for d, why in sorted(changed.items())) + gone
                           + f"\n\nWhat to do: archive those days again with run config\n{rerun_config}")
        elif dropped:
            description = (f"{spec.name}: {len(dropped)} of {len(checked)} archived {UNIT[spec.granularity]}s have no "
                           "table in PostgreSQL any more, the others still match their manifests" + gone)
        else:
            description = (f"{spec.name}: the source of {len(checked)} archived {UNIT[spec.granularity]}s still "
                           "matches their manifests"
                           + gone)
        return AssetCheckResult(passed=not changed and not untrusted and not dropped, description=description,
                                metadata={"changed_days": MetadataValue.json(sorted(changed)),
                                          "table_gone_days": MetadataValue.json(sorted(dropped)),
                                          "untrusted_days": MetadataValue.json(sorted(untrusted)),
                                          "checked_days": MetadataValue.json(sorted(checked))})

    return _check
