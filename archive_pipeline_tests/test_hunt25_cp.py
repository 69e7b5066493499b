"""Hunt 25 (cp): archives written by earlier versions of this archiver, read by the current one (manifests of older
formats: fingerprint algorithms, missing optional fields, old removal marks)."""

from __future__ import annotations

import datetime as dt
import json

from archive_pipeline.core import keys
from archive_pipeline_tests.helpers import download
from archive_pipeline_tests.test_hunt17_wk import _reseal
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config

DAY = dt.date(2024, 3, 10)
TEXT_TABLE = "CREATE TABLE {t} (id int PRIMARY KEY, at date, v text)"
TWO_ROWS = [(1, DAY, "a"), (2, DAY, "b")]


def _archived_table(pg, s3, bucket, conn, schema, tmp_path, ddl: str, rows: list[tuple], **extra):
    """``<schema>.ev`` created by ``ddl`` (its day column ``at``), ``rows`` inserted, DAY archived by the command
    line; (table config, env, manifest key)."""
    conn.execute(ddl.format(t=f"{schema}.ev"))
    for row in rows:
        conn.execute(f"INSERT INTO {schema}.ev VALUES ({', '.join(['%s'] * len(row))})", row)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none", **extra}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    done = cli(env, "archive", "--day", str(DAY))
    assert done.returncode == 0, (done.stdout, done.stderr)
    key = keys.manifest_key(f"archive/{schema}.ev/2024/03/{DAY}.jsonl")
    return table, env, key


def test_a_row_hash_sum_v1_fingerprint_is_not_called_a_newer_versions_with_upgrade_as_the_remedy(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Scenario: a day archived by an early release (manifest_version 2, from ba1e6db until c2d0a97, whose
    fingerprint algorithm was ``row-hash-sum-v1``; removals already existed then, so such days may even be the
    only copy). The user, on the current release, runs `verify --deep --day D` (and `compare --day D`).

    Now: fingerprint.why_uncomputable takes every algorithm outside ALGORITHMS for a *newer* one: "its fingerprint
    (row-hash-sum-v1) is of an algorithm this version cannot compute (written by a newer archive_pipeline): upgrade
    archive_pipeline before proving it"; plan.uncomputable says the same in compare ("upgrade to compare the
    content"). The user runs the newest release already: there is nothing to upgrade to, and the advice hides
    the real remedy (archive the day again with overwrite, while the source still has it).

    Should: an algorithm older than the oldest one computed (row-hash-sum-v1, and any vN below V2) is named as an
    older archive_pipeline's, with the remedy "archive the day again (overwrite)" as for a version 1 manifest. Fix
    idea: why_uncomputable/uncomputable tell a known retired algorithm (a RETIRED tuple, or a version number below
    the oldest in ALGORITHMS) from an unknown newer one."""
    _, env, mkey = _archived_table(pg, s3, bucket, conn, schema, tmp_path,
                                   TEXT_TABLE, TWO_ROWS)
    _reseal(s3_client, bucket, mkey, lambda m: m.update(
        fingerprint="row-hash-sum-v1:2:" + m["fingerprint"].rsplit(":", 1)[1], archiver={"name": "archive_pipeline",
                                                                                        "version": "0.1.0"}))
    said = []
    for args in (("verify", "--deep"), ("compare",)):
        done = cli(env, *args, "--day", str(DAY))
        said.append(done.stdout + done.stderr)
    assert not any("newer archive_pipeline" in s or "upgrade" in s for s in said), said
    # (and verify's advice is not the damaged archive's: "the damaged one is kept", "restore ... from a backup")
    assert "damaged one is kept" not in said[0] and "from a backup" not in said[0], said[0]
    assert "record a fingerprint this version computes" in said[0], said[0]


def _before_encodings(manifest: dict) -> None:
    """``manifest`` as a release before per-column encodings wrote it (87ae49e): no columns[].encoding/exact/note,
    no top-level ``exact``."""
    manifest.pop("exact", None)
    for column in manifest["columns"]:
        for name in ("encoding", "exact", "note"):
            column.pop(name, None)


def test_a_strict_table_does_not_skip_onto_an_old_archive_whose_manifest_never_recorded_exactness(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Scenario: a JSONL day whose json column holds a value with a line break between tokens ('{"a":\\n1}') was
    archived by a release that did not yet record per-column encodings (columns[] without encoding/exact/note, no
    top-level exact); its JSONL line holds the value with the line break turned into a space, as every JSONL writer
    must. Later the table is made ``strict: true`` and the user runs `archive --day D`.

    Now: _Archiving._keep finds the same fingerprint and calls _refuse_inexact_archive, which refuses only columns
    whose manifest says ``"exact": false``; a column the manifest says nothing about is taken as exact, so the day is
    skipped green (exit 0, "identical archive exists"), and the run's metadata says exact: true. The same day
    archived now under strict is refused ("not archived exactly as jsonl"), as an archive whose manifest records the
    column as inexact is (test_hunt9_oa).

    Should: an archive whose manifest does not record a column's exactness is judged by what its format does to the
    recorded type (the current formatter's encoding for that pg_type: inexact here), or is not taken for exact by a
    strict table: refused like the recorded inexact archive, naming the column. Fix idea: in
    _refuse_inexact_archive, for a column without "exact", ask the format's encodings() for its recorded
    pg_type/output_type; ArchiveResult.exact likewise."""
    table, env, mkey = _archived_table(pg, s3, bucket, conn, schema, tmp_path,
                                       "CREATE TABLE {t} (id int PRIMARY KEY, at date, v json)",
                                       [(1, DAY, '{"a":\n1}')])
    assert any(c.get("exact") is False for c in json.loads(download(s3_client, bucket, mkey))["columns"])  # premise
    _reseal(s3_client, bucket, mkey, _before_encodings)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**table, "strict": True}]))
    done = cli(env, "archive", "--day", str(DAY))
    assert done.returncode != 0 and "'v'" in done.stdout + done.stderr, (done.returncode, done.stdout, done.stderr)


def test_an_old_pending_mark_over_a_row_hash_sum_v1_archive_is_not_said_to_find_other_rows_than_the_archived(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Scenario: an early release (ba1e6db..c2d0a97: fingerprint row-hash-sum-v1; removal marks of 7115a93 as
    {at, action, state: pending, by}, no xid, relation or system) began removing an archived day, wrote its pending
    mark, and died before its transaction committed: the source still holds the day's rows, untouched. After the
    upgrade, the user runs `prune --day D` (the mark is settled first).

    Now: lifecycle._committed finds no xid and asks _told_by_source; _holds_archived_rows computes algorithm_for(v1),
    i.e. v6, whose text can never equal the recorded v1 fingerprint, so it answers "not the archived rows", and the
    day is reported as "the source has 2 rows of the day, which are not the 2 archived ones": a false statement
    about the user's data (nothing changed; this version simply cannot compute the recorded fingerprint), which sends
    the operator looking for an edit nobody made ("the archived rows changed since ... or rows that arrived after
    it"); the mark stays pending.

    Should: where the recorded fingerprint cannot be computed, say so ("its fingerprint (row-hash-sum-v1) cannot be
    computed by this version: whether the rows are the archived ones cannot be told"), keeping the remedy it gives
    (archive the day again with overwrite), never that the rows differ. Fix idea: _told_by_source checks
    fingerprint.why_uncomputable(manifest['fingerprint']) before _holds_archived_rows and words its None answer
    from it."""
    table, env, mkey = _archived_table(pg, s3, bucket, conn, schema, tmp_path,
                                       TEXT_TABLE, TWO_ROWS,
                                       retention={"keep_days": 30, "action": "delete"})
    _reseal(s3_client, bucket, mkey, lambda m: m.update(
        fingerprint="row-hash-sum-v1:2:" + m["fingerprint"].rsplit(":", 1)[1],
        removed={"at": "2025-01-02T03:04:05+00:00", "action": "delete", "state": "pending", "by": "retention"}))
    done = cli(env, "prune", "--day", str(DAY))
    said = done.stdout + done.stderr
    assert "which are not the 2 archived ones" not in said, said
