"""Hunt 12 (re): real PostgreSQL faults in the round-trip commands (restore, compare, verify --deep, removal) at
each of their steps: another session's statement between two of the product's steps, a session ended or a
statement cancelled at a chosen statement. Each test says what happens now and what should."""

from __future__ import annotations

import re

import pytest

from archive_pipeline.core import lifecycle
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.test_lifecycle import DAYS, events, spec_for  # noqa: F401 - the fixture

DAY = DAYS[0]


def _after_the_proof(monkeypatch, pg, statement: str) -> None:
    """Run ``statement`` from another session right after the removal's proof (deep_verify) returns, before the
    removal's own transaction: someone else's work landing between the product's two steps."""
    proved = lifecycle.deep_verify

    def then_meddle(*args, **kwargs):
        problems = proved(*args, **kwargs)
        with pg.connect() as other:
            other.execute(statement)
        return problems

    monkeypatch.setattr(lifecycle, "deep_verify", then_meddle)


@pytest.mark.parametrize("action", ["delete", "drop"])
def test_a_day_truncated_by_someone_else_after_its_proof_is_not_told_to_be_archived_again(
        pg, conn, events, store, monkeypatch, action):
    """The removal proves the day (300 rows, archive equal), then another session TRUNCATEs the day's partition
    (a cleanup job, a mistaken maintenance script) before the removal's transaction re-checks it.

    Now: RemovalRefused "its rows changed since they were archived and proven (0 rows now, 300 archived);
    archive the day again (overwrite), then remove it". Following that remedy archives the emptied day over the
    proven archive: the manifest then says the day is empty and a restore brings back nothing (the 300 rows
    survive only as a 'kept' object no command restores), and the removal that follows removes nothing.

    Should: a refusal that says the day's rows are gone from the source (0 of the 300 archived rows left) and that
    the archive is now their only copy: restore it if the rows were not meant to go; never "overwrite".
    (Fix idea: in _recheck_and_remove, a re-check finding no rows where the archive has some says so, with a
    restore remedy, instead of the 'changed rows' wording.)"""
    spec = spec_for(events, action)
    result = archive_partition(conn, spec, DAY, store)
    _after_the_proof(monkeypatch, pg, f'TRUNCATE "{events}".events_20240310')
    with pg.connect() as removing, pytest.raises(lifecycle.RemovalRefused) as caught:
        remove_day(removing, spec, DAY, store)
    message = f"{caught.value} {caught.value.remedy or ''}"
    assert (caught.value.table, caught.value.day) == (spec.name, DAY.isoformat())
    assert "overwrite" not in message, message
    assert "restore" in message and "only copy" in message, message
    assert "removed" not in load_manifest(store, result.key)


@pytest.mark.parametrize("meddling", ["ALTER TABLE {s}.events DETACH PARTITION {s}.events_20240310",
                                      "DROP TABLE {s}.events_20240310"], ids=["detached", "dropped"])
def test_a_day_partition_taken_away_by_someone_else_after_its_proof_is_not_blamed_on_the_retention_action(
        pg, conn, events, store, monkeypatch, meddling):
    """Retention action drop. The removal proves the day, then another session detaches (pg_partman's own
    retention, a DBA) or drops the day's partition before the removal's transaction takes its locks.

    Now: RemovalRefused, not retryable: "is not one partition of its own: no range partition holds its rows (a
    default partition may); drop removes whole partitions: use retention action 'delete'". Neither is true:
    the day was one partition of its own a moment ago and no default partition exists; switching the table to
    action 'delete' deletes nothing (the rows are not in the table any more) and changes every later day's
    removal.

    Should: say that the day's partition was detached or dropped while the removal ran (the day holds no rows in
    the table now; nothing was removed by this run), without advising another retention action.
    (Fix idea: _target's "not one partition" refusal first asks whether the day has any rows left or any
    partition at all, and names a partition that went away meanwhile as such.)"""
    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAY, store)
    _after_the_proof(monkeypatch, pg, meddling.format(s=f'"{events}"'))
    with pg.connect() as removing, pytest.raises(lifecycle.RemovalRefused) as caught:
        remove_day(removing, spec, DAY, store)
    message = f"{caught.value} {caught.value.remedy or ''}"
    assert (caught.value.table, caught.value.day) == (spec.name, DAY.isoformat())
    assert "use retention action 'delete'" not in message and "a default partition may" not in message, message
    assert re.search(r"detached|dropped|no longer|gone", message), message
    assert "removed" not in load_manifest(store, result.key)


def test_verify_deep_of_a_day_whose_source_rows_were_deleted_by_someone_else_does_not_call_the_archive_damaged(
        pg, s3, bucket, conn, schema, tmp_path):
    """A column-mode table; the day is archived (2 rows), then someone else deletes the day's rows from the source
    (a cleanup script; no removal ran, so the manifest has no removal mark). `verify --deep` downloads the
    archive, loads it, finds it equal to its manifest, then finds the source empty.

    Now: the day is FAILED, and the remedy is "... archive it again: ... --overwrite (a new generation; the
    damaged one is kept ...); if the source no longer holds it, restore the object or its manifest from a backup
    of the bucket (its versions, a replica) before anything else". The archive is not damaged (it matched its
    manifest, size, MD5, fingerprint): it is the only copy of rows the source lost, and a bucket backup changes
    nothing. (`compare` meanwhile calls the same day "not-in-source", exit 0.)

    Should: the problem says the source no longer holds the day's rows (0 of 2), the archive checks out and is
    their only copy; the remedy is to restore it (restore --into original) if the rows were not meant to go —
    never "damaged", never a bucket backup. (Fix idea: cli._verify_remedy tells a source-side difference, the
    archive's rows equal to the manifest's, from an archive-side one.)"""
    import json

    import yaml
    from psycopg import sql

    from archive_pipeline_tests.test_cli import cli
    from archive_pipeline_tests.test_hunt10_px import _env

    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-10 23:30+00')").format(t))
    table = dict(name=f"{schema}.t", day_column="at", start_date="2024-03-10", format="jsonl",
                 partitioning={"mode": "column"})
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = _env(pg, s3, bucket, config)
    archived = cli(env, "archive", "--day", "2024-03-10")
    assert archived.returncode == 0, archived.stdout + archived.stderr
    conn.execute(sql.SQL("DELETE FROM {}").format(t))  # someone else's
    deep = cli(env, "verify", "--deep", "--day", "2024-03-10", "--json")
    [day] = json.loads(deep.stdout)["days"]
    said = json.dumps(day)
    assert "damaged" not in said and "backup of the bucket" not in said, said
    assert "restore" in said and "--into original" in said, said


def test_a_removal_of_a_day_someone_emptied_before_it_ran_blames_the_source_and_says_what_to_do(
        pg, conn, events, store):
    """Retention action drop. After the day was archived (300 rows), someone TRUNCATEs its partition; then the
    removal runs (prune finds the partition present, so it tries every run).

    Now: RemovalRefused "... stays in the source: its archive is not proven: the source's rows for 2024-03-10 are
    not the archive's: 0 rows against 300; first difference: ...", with no remedy at all (no "to fix:"). The
    archive was downloaded, loaded and found equal to its manifest: it is proven; what changed is the source,
    which lost every row. The user is left to think the archive is bad (and prune repeats it every run).

    Should: a refusal whose cause is the source (the day's partition holds none of the 300 archived rows now) and
    whose remedy says the archive is their only copy: restore it into the original table if the rows were not
    meant to go (or drop the empty partition by hand)."""
    spec = spec_for(events, "drop")
    archive_partition(conn, spec, DAY, store)
    conn.execute(f'TRUNCATE "{events}".events_20240310')
    with pg.connect() as removing, pytest.raises(lifecycle.RemovalRefused) as caught:
        remove_day(removing, spec, DAY, store)
    said = str(caught.value)
    assert (caught.value.table, caught.value.day) == (spec.name, DAY.isoformat())
    assert "archive is not proven" not in said, said
    assert "to fix:" in said and "restore" in said.split("to fix:", 1)[1], said
