"""Hunt 10 (pc): the source or target changes while an operation runs."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.helpers import run_check_evaluations

DAY = dt.date(2024, 3, 10)


def _enum_table(conn, schema: str, fmt: str = "jsonl") -> TableSpec:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('sad', 'ok', 'happy')").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz, m {}.mood)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00', (ARRAY['sad','ok','happy'])[1 + g % 3]::{}.mood "
                         "FROM generate_series(1, 6) g").format(s, s))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt,
                     partitioning={"mode": "column"})


def _after_load(pg, monkeypatch, statement: str):
    """Run ``statement`` in another session right after deep verification loaded the archived rows back (and before
    it fingerprints them)."""
    from archive_pipeline.core import restore

    original = restore.load_into
    other = pg.connect()
    other.autocommit = True

    def then(*args, **kwargs):
        out = original(*args, **kwargs)
        other.execute(statement)
        return out

    monkeypatch.setattr(restore, "load_into", then)
    return other


def test_an_enum_label_renamed_while_deep_verification_loads_the_archive_is_no_verdict_of_an_altered_archive(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """A user proves a JSONL day with an enum column (``verify --deep``, or the removal's proof) while a migration
    renames one of the enum's labels (``ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'``, which takes no lock the
    proof waits for). What happens: the archived rows were loaded into the temporary table of the recorded types
    (their labels stored as the enum's values), the rename commits, and the loaded rows are fingerprinted printing
    the new label: deep_verify returns "the archive's rows are not the ones recorded" (an altered archive), "the
    source's rows are not the archive's", and "no single row differs". The archive is intact (the same rename made
    before the proof gives no verdict: "holds a value the types refuse ... no verdict on the archive"), and the
    archive run itself fails such a rename retryably ("labels are printed from the catalog as committed"). What
    should happen: no verdict on the archive (a retryable error, as the archive's read says for the same rename),
    or a proof whose sides print the labels alike; never an intact archive called altered."""
    from archive_pipeline.core.verify import deep_verify

    spec = _enum_table(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    other = _after_load(pg, monkeypatch, f'ALTER TYPE "{schema}".mood RENAME VALUE \'ok\' TO \'fine\'')
    try:
        problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    except ArchiveError:  # no verdict on the archive: what should happen
        return
    finally:
        other.close()
    assert not any("not the ones recorded" in p for p in problems), problems


def test_an_enum_label_renamed_while_a_restore_loads_is_not_blamed_on_an_altered_archive(pg, conn, schema, store,
                                                                                        temp_dir, monkeypatch):
    """A user restores a JSONL day with an enum column into a new table (``restore --into new``) while a migration
    renames one of the enum's labels (``ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'``: no lock the restore holds
    keeps it out). What happens: the rows load (their labels stored as enum values), the rename commits, and the
    check fingerprints the loaded rows printing the new label: FingerprintMismatchError, not retryable, "The archive
    does not hold the rows it was proven to hold (altered after it was written)". The archive is intact (the same
    rename before the restore is refused naming the enum that lacks the archived label). What should happen: the
    restore is rolled back saying the type changed while it ran (a retry then names the missing label), not
    that the archive was altered."""
    from archive_pipeline.core.restore import restore_day

    spec = _enum_table(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    other = _after_load(pg, monkeypatch, f'ALTER TYPE "{schema}".mood RENAME VALUE \'ok\' TO \'fine\'')
    try:
        with pytest.raises(ArchiveError) as failure:
            restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    finally:
        other.close()
    assert "altered after it was written" not in str(failure.value), failure.value


def test_source_unchanged_while_a_pending_removal_commits_does_not_call_the_day_changed(pg, conn, schema, store,
                                                                                       archive_env, monkeypatch):
    """A user runs the ``verify_archives`` job (its ``source_unchanged`` check) while the removal of an archived
    day (retention action ``delete``) is on its way: its pending mark is written, its DELETE not yet committed.
    The check reads the pending mark, finds the day's rows still in the source (``rows_after_removal``: the DELETE
    is not committed), so compares the day; the removal commits just then, and the comparison finds no rows. What
    happens: the check fails, "1 of 1 archived days changed in PostgreSQL after archiving: the source has 0 rows
    for ... now, the archive 5", and tells the user to archive the day again with overwrite (which a removed day
    refuses). Its re-read of the manifest after a difference ("a removal or overwrite that committed meanwhile is
    no change") sees nothing new: the mark is still the same pending one until the "done" mark lands. What should
    happen: as for a pending mark whose rows are gone when the check starts, the day is not compared ("removed
    from the source by retention"), and the check does not call it changed."""
    import threading

    from dagster import instance_for_test

    from archive_pipeline.core import lifecycle, verify
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat(), "partitioning": {"mode": "column"},
                                       "retention": {"keep_days": 1, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    go_commit, committed, go_done = threading.Event(), threading.Event(), threading.Event()
    recheck, marked_by_us, rows_after = lifecycle._recheck_and_remove, lifecycle._marked_by_us, \
        verify.rows_after_removal

    def held_before_commit(*args, **kwargs):
        out = recheck(*args, **kwargs)
        assert go_commit.wait(30)
        return out

    def held_before_done(*args, **kwargs):
        committed.set()
        assert go_done.wait(30)
        return marked_by_us(*args, **kwargs)

    def then_commit(*args, **kwargs):
        out = rows_after(*args, **kwargs)
        if not go_commit.is_set():
            go_commit.set()
            assert committed.wait(30)
        return out

    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=DAY.isoformat()).success
        monkeypatch.setattr(lifecycle, "_recheck_and_remove", held_before_commit)
        monkeypatch.setattr(lifecycle, "_marked_by_us", held_before_done)
        monkeypatch.setattr(verify, "rows_after_removal", then_commit)
        outcome: dict = {}

        def remove() -> None:
            with pg.connect() as removing:
                try:
                    outcome["result"] = lifecycle.remove_day(removing, spec, DAY, store)
                except BaseException as exc:  # noqa: BLE001
                    outcome["error"] = exc

        remover = threading.Thread(target=remove, daemon=True)
        remover.start()
        try:
            # the removal's transaction is open with its pending mark written once it waits before its COMMIT
            from archive_pipeline_tests.test_race_hunt import wait_until
            assert wait_until(lambda: (verify.load_manifest(store, f"archive/{schema}.events/2024/03/2024-03-10"
                                                                   ".jsonl.zst") or {}).get("removed") is not None
                              or "error" in outcome), outcome
            run = defs.resolve_job_def("verify_archives").execute_in_process(
                instance=instance, raise_on_error=False, run_config={"ops": {
                    f"archive__{schema}__events_source_unchanged": {"config": {"days": 1}}}})
        finally:
            go_commit.set()
            go_done.set()
            remover.join(60)
        assert "error" not in outcome, outcome  # the removal itself went through
        [evaluation] = [e for e in run_check_evaluations(instance, run.run_id) if e.check_name == "source_unchanged"]
        assert evaluation.passed or "changed in PostgreSQL" not in (evaluation.description or ""), \
            evaluation.description


def test_list_check_source_while_a_pending_removal_commits_does_not_call_the_day_changed(pg, conn, schema, store,
                                                                                        monkeypatch):
    """A user runs ``list --check-source`` (plan.day_statuses) while the removal of an archived day (retention
    action ``delete``) is on its way: its pending mark written, its DELETE not yet committed. ``list`` reads the
    pending mark, asks again whether the source has the day ("a removal that committed in between emptied it
    since (asked again)"): it has (the DELETE is not committed); the removal commits just before the day is
    fingerprinted. What happens: the day is listed ``changed``, "source has 0 rows, archive 5", and ``list`` exits
    1; its second look for a replaced manifest sees the same pending mark (the "done" mark is still on its way).
    What should happen: a day with a removal mark whose source has no rows left is listed as removed (as when the
    removal committed a moment earlier, and as ``compare`` does), not as changed."""
    import threading

    from archive_pipeline.core import lifecycle, plan
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.test_race_hunt import wait_until

    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    spec = parse_config({"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": DAY.isoformat(), "partitioning": {"mode": "column"},
                                     "retention": {"keep_days": 1, "action": "delete"}}]}).tables[0]
    archive_partition(conn, spec, DAY, store)
    go_commit, committed, go_done = threading.Event(), threading.Event(), threading.Event()
    recheck, marked_by_us, fingerprinted = lifecycle._recheck_and_remove, lifecycle._marked_by_us, \
        plan.source_fingerprint

    def held_before_commit(*args, **kwargs):
        out = recheck(*args, **kwargs)
        assert go_commit.wait(30)
        return out

    def held_before_done(*args, **kwargs):
        committed.set()
        assert go_done.wait(30)
        return marked_by_us(*args, **kwargs)

    def commit_first(*args, **kwargs):
        go_commit.set()
        assert committed.wait(30)
        return fingerprinted(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "_recheck_and_remove", held_before_commit)
    monkeypatch.setattr(lifecycle, "_marked_by_us", held_before_done)
    outcome: dict = {}

    def remove() -> None:
        with pg.connect() as removing:
            try:
                outcome["result"] = lifecycle.remove_day(removing, spec, DAY, store)
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc

    remover = threading.Thread(target=remove, daemon=True)
    remover.start()
    try:
        key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
        assert wait_until(lambda: (load_manifest(store, key) or {}).get("removed") is not None or "error" in outcome)
        monkeypatch.setattr(plan, "source_fingerprint", commit_first)
        [status] = plan.day_statuses(conn, spec, store, [DAY], check_source=True)
    finally:
        go_commit.set()
        go_done.set()
        remover.join(60)
    assert "error" not in outcome, outcome  # the removal itself went through
    assert status.state != "changed", status
