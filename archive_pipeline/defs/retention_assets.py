"""Retention in Dagster: one partitioned asset per table with ``retention``, whose partition is "this
day was removed from the source". It depends on the archive asset, and its own blocking check,
``archive_proven``, is the deep verification of that day: a failed proof records a failed check
and stops the removal. The materialization says what was removed, when, and by which run; a dry
run (run config ``dry_run: true``) records only the check and logs what would be removed, and so
does the check executed on its own. The removal job has no check step: the asset reports the proof
for its day, so a run that fails before proving leaves the day's check as it was.
"""


import contextlib
import datetime as dt
import warnings
from collections.abc import Iterator

import psycopg
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    AssetsDefinition,
    Config,
    DagsterEventType,
    DagsterExecutionInterruptedError,
    DagsterInstance,
    DefaultScheduleStatus,
    Failure,
    FreshnessPolicy,
    AssetMaterialization,
    AssetRecordsFilter,
    MetadataValue,
    PreviewWarning,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    in_process_executor,
    multi_asset,
    schedule,
)
from pydantic import Field

from archive_pipeline.defs.assets import (STATE_TAG, TABLE_TAG, asset_key, asset_tag_value, config_path,
                                          daily_partitions, former_day_keys, freshness_policy, job_name, relaunch,
                                          retry_policy, step_retries)
from archive_pipeline.defs.checks import EMPTY_DAY, latest_materialization, log_guarded, terminated
from archive_pipeline.core.config import RetrySettings, ScheduleSettings, TableSpec
from archive_pipeline.core.errors import ArchiveError, SourceError, UploadError, wrap
from archive_pipeline.core.manifest import NewerManifestError, source_identity
from archive_pipeline.core.lifecycle import (Removal, RemovalNotRecorded, RemovalRefused, Settlement, archive_key,
                                              check_removable, due_days, emptied, pending_removal_committed,
                                              refuse_layout_change, refuse_other_cluster, remove_day,
                                              settle_pending_removal, source_differs)
from archive_pipeline.core.discovery import still_detached
from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource
from archive_pipeline.defs.sensors import RUN_KEY_TAG, UNFINISHED, backfill_keys, unfinished_backfills
from archive_pipeline.core import fingerprint, keys
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.periods import UNIT, Period
from archive_pipeline.core.store import DownloadError, LocalFileError, S3Store
from archive_pipeline.core.verify import (TYPE_GONE, deep_verify, deep_verify_of, load_stored_manifest,
                                          read_only, removed_object_problems, rows_after_removal, rows_unproven,
                                          source_side_only)

PROVEN_CHECK = "archive_proven"
REMOVAL_MINUTE = 30  # the removal schedule runs at hour:30, after the archive schedule's hour:minute


class RemovalRunConfig(Config):
    dry_run: bool = Field(default=False, description="prove the archive and say what would be removed; remove nothing")


def _removable_or_removed(conn, store, spec: TableSpec, day: Period, key: str, manifest: dict) -> dict:
    """``manifest`` once the day is found removable (lifecycle.check_removable, before the proof's work); where it is
    refused because another removal (the command line's prune, another run) removed the day meanwhile, the manifest
    as that removal marked it: the archive is then proven on its own, and the removal finds the day removed."""
    try:
        check_removable(conn, spec, day)
    except RemovalRefused:
        again = load_stored_manifest(store, key, (spec.name, day.isoformat()))  # (read just now: 404 is no verdict)
        if again is None or not again.get("removed") or rows_after_removal(conn, spec, day) != 0:
            raise
        return again
    return manifest


def _removed_problems(conn: psycopg.Connection, store: S3Store, spec: TableSpec, day: Period, key: str,
                      manifest: dict, temp_dir: str | None) -> list[str]:
    """The check of the archive of a day the source no longer holds (removed, not back), its only copy, on its own:
    loaded back, as verify --deep proves it (its rows must be the day's: an archive of another day put in its place,
    its manifest edited to match, has every digest right). Where this version cannot compute its fingerprint (an
    older version's retired algorithm, none recorded, a newer version's: fingerprint.why_uncomputable), its object
    is checked as settling a removal mark checks it (verify.removed_object_problems, as verify --deep and the
    deep_check asset check check it): the proof's "archive it again" cannot be done (the source holds nothing of it)
    and is no damage, so the day is found removed already, as prune finds it, never called "NOT intact" and sent to
    a backup (verify.rows_unproven gives its words). Decided here, not by the proof: a naming-mode day table a
    removal detached keeps its rows, and the day is still not back."""
    if fingerprint.why_uncomputable(manifest.get("fingerprint")) is None:
        return deep_verify(conn, store, spec, day, manifest=manifest, temp_dir=temp_dir)
    return removed_object_problems(store, spec, day, manifest, key=key, temp_dir=temp_dir)


def removal_asset_key(spec: TableSpec) -> AssetKey:
    return AssetKey([*spec.key_prefix, "source_removed", *spec.asset_path])


def _proven_spec(key: AssetKey, spec: TableSpec) -> AssetCheckSpec:
    """The proof check, scoped to the day it proves (partitioned checks are "preview" in Dagster 1.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        return AssetCheckSpec(PROVEN_CHECK, asset=key, blocking=True, partitions_def=daily_partitions(spec),
                              description="The day's archive holds exactly the source's rows (deep verification); "
                                          "the removal runs only if it passes")


def removal_freshness_policy(schedule: ScheduleSettings, granularity: str = "daily") -> FreshnessPolicy:
    """Overdue when no day was removed ``freshness_hours`` after the removal schedule's time, built like the
    archive asset's: once retention is in use, a removal held back (a failed proof, a lock, a stopped
    schedule) shows in the UI the same way a late archive does. Before the first removal Dagster reports
    the asset's freshness as unknown, not overdue, so a table whose schedule was never started (the
    default) is not flagged."""
    return freshness_policy(schedule.model_copy(update={"minute": REMOVAL_MINUTE}), granularity)


def _one_day(context: AssetExecutionContext, spec: TableSpec) -> Period:
    """The run's one day: a removal proves and removes one day per run (Dagster's backfills launch it so); a run
    given a range of partitions (a backfill's range tags set by hand) is refused naming the table and the days,
    where Dagster's own error named neither."""
    keys = context.partition_keys
    if len(keys) != 1:
        unit = UNIT[spec.granularity]
        # (none: range tags whose end comes before their start, named as given)
        first, last = (keys[0], keys[-1]) if keys else (context.run.tags.get(f"dagster/asset_partition_range_{end}")
                                                        for end in ("start", "end"))
        given = f"{len(keys)} ({first} to {last})" if keys else f"none (a range from {first} to {last}, which ends " \
                                                              "before it starts)"
        raise Failure(description=f"{spec.name}: a removal run removes one {unit}, and this run was given {given}; "
                                  f"nothing was removed.\n\nWhat to do: launch one run per {unit} (a backfill of the "
                                  "range does so), without range tags",
                      allow_retries=False, metadata={"table": spec.name, "day": f"{first}..{last}",
                                                     "retryable": False, "error": "RemovalRefused"})
    return spec.period(keys[0])


def build_removal_asset(spec: TableSpec, schedule: ScheduleSettings | None = None,
                        retry: RetrySettings | None = None, origin: str | None = None) -> AssetsDefinition:
    """The day-removal asset of a table with ``retention`` (see lifecycle.py for the guarantees);
    ``schedule`` (the archive schedule's settings) places its freshness deadline, ``retry`` (the
    ``retry:`` settings; their defaults when not given) retries what is transient (a store that
    throttled a download, a "done" mark that could not be written), like the archive asset. ``origin``:
    where the tables were configured (a file, a component's defs.yaml), named by messages that send the user
    to a setting."""
    key = removal_asset_key(spec)
    retention = spec.retention

    # A multi_asset only to be subsettable: the removal job runs the asset without its check step (see _proof).
    @multi_asset(
        name=key.to_python_identifier(),
        specs=[AssetSpec(
            key,
            deps=[asset_key(spec)],
            group_name=f"retention_{spec.asset_path[0]}",  # told apart per schema, as the archive assets are
            kinds={"postgres"},
            tags={TABLE_TAG: asset_tag_value(spec.name)},  # an asset tag holds only [A-Za-z0-9_.-], 63 at most
            freshness_policy=removal_freshness_policy(schedule or ScheduleSettings(), spec.granularity),
            description=(f"Days of `{spec.name}` removed from the source ({retention.action}) once older than "
                         f"{retention.keep_days} days and proven archived. A removed day is never archived again."),
        )],
        partitions_def=daily_partitions(spec),
        pool=spec.pool,
        can_subset=True,  # also: no output required (a dry run records none)
        check_specs=[_proven_spec(key, spec)],
        retry_policy=retry_policy(retry or RetrySettings()),
    )
    def remove(context: AssetExecutionContext, config: RemovalRunConfig, postgres: PostgresResource,
               primary_postgres: PostgresResource, archive_store: ArchiveStoreResource) -> Iterator:
        day = _one_day(context, spec)
        # archive_proven executed alone (the check without its asset): prove, remove nothing, as a dry run
        dry_run = config.dry_run or removal_asset_key(spec) not in context.selected_asset_keys
        kept = day not in due_days(spec, dt.datetime.now(dt.UTC))  # today in the table's zone
        if kept and not dry_run:
            sooner = (f"To remove it sooner, lower retention.keep_days for the table in {origin or config_path()}"
                      if retention.keep_days > 1 else  # (1 is the least the configuration takes)
                      "It is due once the day after it has ended in the table's zone: launch it again then (the "
                      "retention schedule does)")
            raise _failed(f"{spec.name} {day} is kept: retention keeps the last {retention.keep_days} "
                          f"days; nothing removed. {sooner}", spec, day, False)
        try:  # (a day still kept is proven by a dry run, archive_proven alone, and nothing more)
            yield from _as_failures(_removing(context, spec, day, dry_run, postgres, primary_postgres, archive_store,
                                              origin, kept), spec, day)
        except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
            raise terminated(context, exc, spec, day, "removing", removal_job_name(spec)) from None
        except Failure as failed:
            retries = step_retries(context)
            if not (failed.allow_retries and retries.off):
                raise
            # the core's words say "retried" of every transient cause; with retries off (max_retries 0, or the
            # run's retries disabled) nothing is, and a retryable Failure would fail as Dagster's bare retry error
            raise retries.final(Failure(description=retries.words(failed.description or "", origin),
                                        allow_retries=True, metadata=failed.metadata)) from None

    return remove


def _as_failures(steps: Iterator, spec: TableSpec, day: Period) -> Iterator:
    """The removal's ``steps``, with an :class:`ArchiveError` that escapes them (the core's classified database
    error where no step of its own catches it: the source's rows counted again after a failed proof, a lost
    partition looked for) as the step's failure naming table, day and cause, with its ``retryable`` metadata, as
    every other failure of the step is, never Dagster's bare error over it."""
    try:
        yield from steps
    except ArchiveError as exc:
        raise _failed(_naming(exc, spec, day), spec, day, exc.retryable, exc) from None


def _removing(context: AssetExecutionContext, spec: TableSpec, day: Period, dry_run: bool, postgres: PostgresResource,
              primary_postgres: PostgresResource, archive_store: ArchiveStoreResource, origin: str | None = None,
              kept: bool = False) -> Iterator:
    """Prove the day's archive, then remove the day from the source (or, ``dry_run``, say what would go;
    ``kept``: a day retention still keeps, which a dry run proves and says nothing of removing)."""
    store = archive_store.store_for(f"{spec.name} {day}")
    former = former_day_keys(context, asset_key(spec), spec, day, store)
    key = table_day_key(spec, day, store.prefix)
    settled = None
    with contextlib.ExitStack() as stack:
        # Without a separate primary (ARCHIVE_PG_PRIMARY_DSN unset) one session does both: a role whose
        # CONNECTION LIMIT lets it archive lets it remove.
        primary = _connect(stack, primary_postgres, spec, day)
        source = primary if primary_postgres.dsn == postgres.dsn else _connect(stack, postgres, spec, day)
        try:
            standby = read_only(source)  # (a hot standby, or a session whose transactions are read-only)
        except psycopg.Error as exc:  # a session lost right after it opened: classified like any other
            error = wrap(exc, spec.name, day.isoformat(), postgres.password, doing="proving")
            raise _failed(_naming(error, spec, day), spec, day, error.retryable, error) from None
        if standby and primary is source:  # before any proof: it loads the archive where the removal runs
            raise _failed(f"{spec.name} {day} stays in the source: the database the code location "
                                      "reads (ARCHIVE_PG_DSN) is a hot standby (or read-only), and a removal runs on the primary "
                                      "(the proof loads the archive there too). Set ARCHIVE_PG_PRIMARY_DSN to the "
                                      "primary", spec, day, False)
        if source is not primary:  # a primary of another cluster (a staging copy loaded from a dump) is no primary
            try:
                refuse_other_cluster(primary, spec, day, None, reads=source)
            except ArchiveError as exc:
                raise _failed(_naming(exc, spec, day), spec, day, exc.retryable, exc) from None
        # Everything below reads the primary, which the removal removes from: a standby's view lags (replay paused,
        # or behind), and its proof called a day "proven equal to the source" whose primary held a row more.
        proven_sha: str | bool = False
        removed: dict | None = None  # the removal mark of a day the source no longer holds
        try:
            # where the day's archive is: its key now, else under the table's former format, or the key the day's
            # last materialization recorded (the key_template or prefix changed since): not "no archive" for a green day
            key = archive_key(store, spec, day, former, identity=source_identity(primary))
            # (none read where a listing shows one: the store contradicting itself, retryable, not "no archive")
            manifest = load_stored_manifest(store, key, (spec.name, day.isoformat()))
            pending = (manifest or {}).get("removed", {}).get("state") == "pending"
            if pending:  # before a pending mark is settled there (another cluster's rows take it back)
                refuse_other_cluster(primary, spec, day, manifest)
            if pending and not dry_run:
                # An earlier removal left its mark (its "done" mark failed, or a refused one could not
                # take it back): settled on the primary first, so the proof below is of the day as it is.
                try:
                    settled = settle_pending_removal(primary, spec, day, store, temp_dir=archive_store.temp_dir,
                                                     key=key)
                except RemovalNotRecorded as exc:
                    if exc.problems:  # the archive, now the day's only copy, failed its check: a failed proof
                        yield from _recorded(context, _proof(context, spec, day, exc.problems, str(exc)), "proving")
                    raise
                manifest = settled.manifest
            elif pending and not pending_removal_committed(primary, spec, day, manifest):
                # a dry run leaves the mark, but a removal that never committed removed nothing: the day is
                # still the source's, proven against it (with the source's rows, not the archive's alone)
                manifest = {k: v for k, v in manifest.items() if k != "removed"}
            back = manifest is not None and bool(manifest.get("removed")) and \
                not still_detached(primary, spec, day, manifest) and \
                rows_after_removal(primary, spec, day) > 0  # (restored into the original table, or late rows)
            if manifest is not None and (back or not manifest.get("removed")):
                # where something would be removed: a day removed, and not back, stays removed on a cluster the
                # database moved to since (pg_upgrade, a dump/restore), where "archive it again from it" has nothing
                refuse_other_cluster(primary, spec, day, manifest)
            if manifest is not None and manifest.get("removed") and not back:
                # Removed (or pending and committed, in a dry run): the source no longer holds the day, so
                # the archive itself is checked: manifest, object, digests and rows.
                removed = manifest["removed"]
                problems = _removed_problems(primary, store, spec, day, key, manifest, archive_store.temp_dir)
            elif manifest is None:  # nothing to prove: a failed run, not a failed proof
                if (record := _removed_before(context, spec, day, primary)) is not None:
                    raise _failed(f"{spec.name} {day} was removed from the source ({record}), and its archive's "
                                  f"manifest {store.uri(keys.manifest_key(key))} is missing from the store: what is "
                                  "stored of the day is its only copy. Restore the manifest from a backup of the "
                                  "bucket (its versions, a replica); archiving the day again has nothing to archive",
                                  spec, day, False)
                raise _failed(f"{spec.name} {day} has no archive at {store.uri(key)}: nothing is "
                                          "proven or removed. Archive the day first (partition "
                                          f"{day} of {job_name(spec)}), then remove it", spec, day, False)
            else:
                refuse_layout_change(spec, day, manifest)  # another period's archive: no proof, no verdict
                if not dry_run and int(manifest.get("rows") or 0) > 0:
                    # what the removal would refuse whatever the archive: before the proof's work (a dry run, the
                    # check alone, proves, then says it; an empty day's removal may find nothing to remove)
                    if (again := _removable_or_removed(primary, store, spec, day, key, manifest)) is not manifest:
                        manifest, removed = again, again["removed"]  # removed by another run meanwhile
                problems, proved = deep_verify_of(primary, store, spec, day, manifest=manifest,
                                                  temp_dir=archive_store.temp_dir)
                if proved is not None and proved is not manifest:  # another run's commit meanwhile: that one proved
                    manifest = proved
                    if proved.get("removed") and rows_after_removal(primary, spec, day) == 0:
                        removed = proved["removed"]
                again = load_stored_manifest(store, key, (spec.name, day.isoformat())) if problems else None
                if again is not None and again.get("removed") and rows_after_removal(primary, spec, day) == 0:
                    # removed by another run while this one proved it (at the key it proved: a former format's
                    # too): the source's rows are gone for that reason, and the archive is proven on its own
                    manifest, removed = again, again["removed"]
                    problems = _removed_problems(primary, store, spec, day, key, again, archive_store.temp_dir)
                # proven names the manifest just proved: under the lock, a different one is proved again
                proven_sha = (manifest or {}).get("manifest_sha256", False)
        except ArchiveError as exc:
            if exc.retryable or exc.cause == TYPE_GONE or isinstance(
                    exc, (DownloadError, LocalFileError, RemovalNotRecorded, RemovalRefused, SourceError, UploadError)):
                # Nothing was proven either way (the store failed or refused a request, the temp dir
                # is full, the database refused a session, a privilege or a write, a removal is not
                # settled, a recorded type is gone so the archive cannot be loaded): the run fails, retried where that can help, and no integrity check is
                # recorded as failed.
                raise _failed(_naming(exc, spec, day), spec, day, exc.retryable, exc) from None
            manifest, problems = None, [str(exc)]
        except NewerManifestError as exc:  # not damaged: written by a newer version, which can prove it
            raise _failed(_naming(exc, spec, day), spec, day, False, exc) from None
        except ValueError as exc:  # ManifestError: the manifest itself is damaged, or another table-day's
            manifest, problems = None, [str(exc)]
            if (record := _removed_before(context, spec, day, primary)) is not None:  # the damaged one: the only copy
                removed = {"state": f"recorded by Dagster: {record}", "at": "see there"}
        if not removed and source_side_only(problems) and int((manifest or {}).get("rows") or 0) and \
                rows_after_removal(primary, spec, day) == 0:  # the source lost the rows, not the archive: no verdict
            lost = emptied(primary, spec, day, int(manifest["rows"]), 0, spec.retention.action)
            raise _failed(_naming(lost, spec, day), spec, day, False, lost)
        proof = _proof(context, spec, day, problems, "; ".join(problems) or _proven_text(day, manifest))
        # A passed proof followed by a removal is recorded after the removal's materialization, targeting it:
        # Dagster shows a check result as the day's status only when it targets its latest materialization
        deferred = isinstance(proof, AssetCheckEvaluation) and not problems and not kept and not dry_run
        if not deferred:
            yield from _recorded(context, proof, "proving")
        if problems and removed:
            raise _failed(f"{spec.name} {day} was removed from the source ({removed.get('state')}, "
                                      f"{removed.get('at')}), and its archive, the only copy, is NOT intact: "
                                      + "; ".join(problems) + "; restore the object from a backup of the bucket "
                                      "(its versions, a replica)", spec, day, False)
        if problems and source_side_only(problems):  # the archive checks out; the source's rows differ
            differs = source_differs(spec, day, problems, primary)
            raise _failed(_naming(differs, spec, day) + " " + relaunch(spec, day, origin), spec, day, False, differs)
        if problems:
            raise _failed(f"{spec.name} {day} stays in the source: its archive is not proven: "
                                      + "; ".join(problems) + ". If the source's rows are the right ones (rows "
                                      "changed or arrived late), archive the day again, then remove it. "
                                      + relaunch(spec, day, origin), spec, day, False)
        if kept:
            context.log.info(f"{spec.name} {day} is proven; retention keeps it (the last "
                             f"{spec.retention.keep_days} days): nothing would be removed yet")
            return
        try:
            removal = remove_day(primary, spec, day, store, dry_run=dry_run, proven=proven_sha,
                                 removed_by=f"dagster run {context.run.run_id}", temp_dir=archive_store.temp_dir,
                                 former_keys=[key])
        except BaseException as exc:
            if deferred:  # proven all the same: recorded before the failure is raised
                with contextlib.suppress(Exception):
                    context.log_event(proof)
            if isinstance(exc, ArchiveError):
                raise _failed(_naming(exc, spec, day), spec, day, exc.retryable, exc) from None
            raise
    said = f"{spec.name} {day}: nothing to remove: the source holds no rows of the day" if removal.nothing else None
    if said is not None:  # (before a dry run's words: it would remove nothing either)
        context.log.info(("dry run: " if removal.dry_run else "") + f"{said}; archive {removal.archive or 'none'}")
        if removal.dry_run:
            return
    elif removal.dry_run:
        context.log.info(f"dry run: would {removal.action} {removal.relation} ({removal.rows:,} rows of {day}); "
                         f"archive {removal.archive}")
        return
    if settled is not None and settled.outcome != "none":
        context.log.info(f"{spec.name} {day}: a pending removal mark was {settled.outcome} ({settled.why})")
    record = AssetMaterialization(asset_key=removal_asset_key(spec), partition=day.isoformat(),
                                  metadata=_removal_metadata(context, removal, settled),
                                  description=said)
    # the removal's own proof, the mark now settled by it (done): not the "pending" one it proved the archive under
    text = _proven_text(day, manifest, settled=True) if deferred else ""
    # terminated while the removal is recorded, its passed proof is recorded all the same
    targeted = (lambda: _proof(context, spec, day, [], text, targeted=True)) if deferred else None
    log_guarded(context, record, "recording the removal", targeted)
    if deferred:
        yield from _recorded(context, _proof(context, spec, day, [], text, targeted=True), "recording the removal")


def _removal_metadata(context: AssetExecutionContext, removal: Removal, settled: Settlement | None) -> dict:
    """What the day's source_removed record says: what was removed, when and by whom. A day found removed already
    says when and by whom it was (its mark), not this run, which removed nothing (a removal another run committed,
    whose mark this one completed, is that run's); a mark naming this very run is its own (its step retried after
    the first attempt's COMMIT), and a day with nothing to remove (archived empty, no partition of its own) records
    that, with no action, relation or time of a removal that never was."""
    this_run = f"dagster run {context.run.run_id}"
    if removal.nothing:
        return {"nothing_to_remove": True, "dagster/row_count": 0, "run_id": context.run.run_id,
                **({"archive": removal.archive} if removal.archive else {})}
    earlier = (removal.already_removed or removal.completed) and removal.removed_by != this_run
    by = (removal.removed_by or "") if earlier else this_run
    return {
        "action": removal.action, "relation": removal.relation, "dagster/row_count": removal.rows,
        "removed_at": MetadataValue.timestamp(removal.removed_at) if removal.removed_at else "before",
        "already_removed": earlier, "archive": removal.archive,
        **({"run_id": by.removeprefix("dagster run ")} if by.startswith("dagster run ") else
           {"removed_by": by or "unknown"}),
        **({"pending_mark": settled.outcome} if settled is not None and settled.outcome != "none" else {}),
    }


def _recorded(context: AssetExecutionContext, event: object, doing: str) -> Iterator:
    """``event`` logged from the removal's own code (a check result its run planned is yielded: only as the
    check's output does it count). Dagster stores a yielded event outside that code and raises a termination
    that came meanwhile when it resumes it, past the removal's handling: a bare interrupt, no table, no day,
    nothing on whether the source was touched; logged here, the termination is the removal's to word."""
    if isinstance(event, AssetCheckResult):
        yield event
        return
    log_guarded(context, event, doing)


def _proof(context: AssetExecutionContext, spec: TableSpec, day, problems: list[str],
           description: str, *, targeted: bool = False) -> AssetCheckResult | AssetCheckEvaluation:
    """The day's ``archive_proven`` verdict. The removal job runs the asset without its check step (a run
    that fails before proving anything must not leave the day's check "Execution failed", red like a
    failed proof), so the asset reports it for its day; where a run did plan the check (Dagster's
    implicit job, ``materialize``), as that check's result."""
    key = removal_asset_key(spec)
    verdict = {"passed": not problems, "severity": AssetCheckSeverity.ERROR, "description": description,
               "metadata": {"day": day.isoformat()}}
    if AssetCheckKey(key, PROVEN_CHECK) in context.selected_asset_check_keys:
        return AssetCheckResult(check_name=PROVEN_CHECK, **verdict)
    if targeted:  # about the day's materialization just recorded
        verdict["target_materialization_data"] = latest_materialization(context.instance, key, day.isoformat())
    return AssetCheckEvaluation(asset_key=key, check_name=PROVEN_CHECK, partition=day.isoformat(), blocking=True,
                                **verdict)


def _connect(stack: contextlib.ExitStack, postgres: PostgresResource, spec: TableSpec, day) -> psycopg.Connection:
    """A connection for the removal, or the step failure a person reads: a login the database refuses (no
    such database, a wrong password) fails at once, only a server that may come back is retried."""
    try:
        return stack.enter_context(postgres.connect())
    except ArchiveError as exc:
        raise _failed(_naming(exc, spec, day), spec, day, exc.retryable, exc) from None


def _failed(description: str, spec: TableSpec, day, retryable: bool, exc: BaseException | None = None) -> Failure:
    """The removal step's failure: its description, and the metadata the archive step's failures carry (table,
    day, whether a retry may help, the error's type), so a failed removal is found and filtered the same way."""
    return Failure(description=description, allow_retries=retryable,
                   metadata={"table": spec.name, "day": day.isoformat(), "retryable": retryable,
                             "error": type(exc).__name__ if exc is not None else "RemovalRefused"})


def _naming(exc: ArchiveError, spec: TableSpec, day) -> str:
    text = str(exc)
    named = (f"{spec.name} {day.isoformat()}", f"{spec.name} for {day.isoformat()}")  # (not inside an object's key)
    return text if any(n in text for n in named) else f"{spec.name} {day}: {text}"


def _proven_text(day, manifest: dict | None, settled: bool = False) -> str:
    """archive_proven's words for a passed proof, saying what was checked: a removed day's archive on its own (the
    source no longer holds it), an empty day's manifest alone (no object, no digests: archive_intact's words).
    ``settled``: the removal that followed the proof has marked the day done (a pending mark it met, settled)."""
    manifest = manifest or {}
    removed, empty = manifest.get("removed"), manifest.get("empty")
    if removed:
        checked = (f"{EMPTY_DAY} (checked now)" if empty else  # (its object alone: _removed_problems)
                   rows_unproven(manifest) or "the archive is intact (object, digests and rows checked now)")
        return (f"{day}: removed from the source ({'done' if settled else removed.get('state')}, {removed.get('at')})"
                f" after its archive was proven; {checked}")
    if empty:
        return f"{day}: {EMPTY_DAY}, and the source holds none of its rows"
    return f"{day}: archive proven equal to the source"


def removal_job_name(spec: TableSpec) -> str:
    """``Remove_<schema>_<table>``: capitalised, like ``Archive_``, so that the asset's *Materialize* runs this
    job. The UI runs an asset in the first of its jobs in sorted order, with that job's checks; as
    ``remove_...`` it sorted after ``__ASSET_JOB``, so the button planned archive_proven, and a removal that
    failed before proving anything showed the day's proof as "Execution failed" (red, like a failed proof)."""
    return f"Remove_{'_'.join(spec.asset_path)}"


def build_retention_schedule(spec: TableSpec, hour: int, max_runs: int = 50) -> ScheduleDefinition:
    """Daily, stopped by default: request removal of due days that are archived and not yet removed."""
    # The schedule and its run keys keep the job's former name: a started schedule stays started, and the
    # runs requested before are still found (see removal_order).
    former = f"remove_{'_'.join(spec.asset_path)}"
    job = define_asset_job(name=removal_job_name(spec),
                           # without the check step: the asset reports archive_proven itself (see _proof)
                           selection=AssetSelection.assets(removal_asset_key(spec)).without_checks(),
                           tags={TABLE_TAG: spec.name},  # a run tag: the whole name, as the archive job's
                           executor_def=in_process_executor,  # like the archive jobs, whatever the project's executor
                           description=f"Remove proven, due days of {spec.name} from the source")

    @schedule(name=f"{former}_daily", cron_schedule=f"{REMOVAL_MINUTE} {hour} * * *", execution_timezone="UTC",
              job=job, default_status=DefaultScheduleStatus.STOPPED,
              description=f"Removes days of {spec.name} older than {spec.retention.keep_days} days, once proven")
    def _daily(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        now = context.scheduled_execution_time.astimezone(dt.UTC)  # today in the table's zone, in due_days
        # a day is removed once per archive of it: one archived again after its removal (late rows arrived,
        # archived with overwrite) is an ordinary source day again, due again
        latest = context.instance.event_log_storage.get_latest_storage_id_by_partition
        archived = latest(asset_key(spec), DagsterEventType.ASSET_MATERIALIZATION)
        removed = latest(removal_asset_key(spec), DagsterEventType.ASSET_MATERIALIZATION)
        due = [d.isoformat() for d in due_days(spec, now)]
        running = removals_in_flight(context.instance, spec)  # launched from the UI too (no run key)
        todo = [d for d in due if d in archived and d not in running
                and _archived_since_removal(context.instance, spec, d, archived[d], removed.get(d))]
        if not todo:
            return SkipReason(f"no archived day of {spec.name} older than {spec.retention.keep_days} days is left "
                              "in the source")
        chosen = removal_order(context.instance, {f"{former}:{d}": d for d in todo}, spec)[:max_runs]
        if not chosen:
            return SkipReason(f"every due day of {spec.name} left in the source has a removal queued or running")
        return [RunRequest(run_key=key, partition_key=d) for key, d in chosen]

    return _daily


def _archived_since_removal(instance: DagsterInstance, spec: TableSpec, day: str, archived: int,
                            removed: int | None) -> bool:
    """Whether the day's latest archive record (storage id ``archived``) is an archive newer than its last removal
    (``removed``, None: never removed). A ranged run that meets a removed day records it again, state ``removed``
    (the archive it was removed with, repeated): that puts no row back in the source, and taken for a new archive
    it had the day requested again, downloaded and proven for nothing, after every backfill over removed history.
    Only the few days with a removal and a newer record are read (one record each)."""
    if removed is None or archived < removed:
        return removed is None
    found = instance.fetch_materializations(AssetRecordsFilter(asset_key=asset_key(spec), asset_partitions=[day]),
                                            limit=1).records
    event = found[0].event_log_entry.asset_materialization if found else None
    if event is None:
        return True
    # (the metadata first: a range's output handed downstream carries the tag only where all its days share a state)
    state = getattr(event.metadata.get("state"), "value", None) or event.tags.get(STATE_TAG)
    return state != "removed"


def removals_in_flight(instance: DagsterInstance, spec: TableSpec) -> set[str]:
    """The days of ``spec`` a run not yet finished removes, however it was launched (the schedule, the UI's
    Materialize, a backfill), and those a launched backfill is still to submit: requested again, the day would wait
    for the same lock and be proven twice."""
    key, days = removal_asset_key(spec), set()
    for backfill in unfinished_backfills(instance, None, None):
        days |= backfill_keys(backfill, key, (removal_job_name(spec),))
    for run in instance.get_runs(filters=RunsFilter(statuses=list(UNFINISHED))):
        if not _this_tables(run, spec):
            continue
        if run.job_name == removal_job_name(spec) or key in (run.asset_selection or ()):
            if run.tags.get("dagster/partition"):
                days.add(run.tags["dagster/partition"])
    return days


def _removed_before(context: AssetExecutionContext, spec: TableSpec, day: Period,
                    conn: psycopg.Connection) -> str | None:
    """When and by which run the day's last ``source_removed`` materialization says it was removed, where the
    source holds none of its rows now; None otherwise. What tells a removed day whose manifest is gone or damaged
    from a day never archived: the advice to archive it first, or to archive it again with overwrite, would
    replace the only copy's record by an archive of nothing."""
    try:
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=removal_asset_key(spec), asset_partitions=[day.isoformat()]), limit=1).records
        if not records or rows_after_removal(conn, spec, day) > 0:
            return None
    except Exception:  # noqa: BLE001 - a hint only: the run's own message stands without it
        return None
    event = records[0].event_log_entry.asset_materialization
    meta = {k: getattr(v, "value", v) for k, v in (event.metadata if event else {}).items()}
    if meta.get("nothing_to_remove"):  # nothing was removed of it (archived empty): archived again, nothing is lost
        return None
    at = meta.get("removed_at")
    when = dt.datetime.fromtimestamp(at, dt.UTC).isoformat() if isinstance(at, int | float) else str(at or "?")
    return f"{meta.get('action', 'removed')} at {when}, run {meta.get('run_id') or records[0].run_id}"


def _this_tables(run, spec: TableSpec) -> bool:
    """Whether ``run`` removes ``spec``'s days, not another table's of the same Dagster name (``a.b_c`` and ``a_b.c``,
    or one table name in two regional code locations told apart by their asset key prefix): by the removal asset
    in its selection, where it has one, else by its table tag."""
    if run.asset_selection:
        return removal_asset_key(spec) in run.asset_selection
    return run.tags.get(TABLE_TAG, spec.name) == spec.name


def removal_order(instance: DagsterInstance, days: dict[str, str], spec: TableSpec | None = None
                  ) -> list[tuple[str, str]]:
    """(run key, day) of the due ``days`` (by run key, oldest first) in the order to request them: days
    never tried first, then days whose removal ended (failed) before, never one queued or running.

    A day whose removal fails every time (its proof fails: rows changed after archiving) stays due;
    oldest first, such days took every place of the tick's cap, each was proven again daily, and no
    newer day was ever removed."""
    keys = list(days)  # a batch at a time: an hourly table has thousands of due hours, more than SQL parameters
    runs = [run for start in range(0, len(keys), 1000)
            for run in instance.get_runs(filters=RunsFilter(tags={RUN_KEY_TAG: keys[start:start + 1000]}))
            if spec is None or _this_tables(run, spec)]  # (not another table's of the same run key)
    busy = {r.tags.get(RUN_KEY_TAG) for r in runs if r.status in UNFINISHED}
    tried = {r.tags.get(RUN_KEY_TAG) for r in runs}
    fresh = [(k, d) for k, d in days.items() if k not in tried]
    again = [(k, d) for k, d in days.items() if k in tried and k not in busy]
    return fresh + again
