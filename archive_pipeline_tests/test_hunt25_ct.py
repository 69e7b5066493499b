"""Hunt 25 (ct): archives written by earlier versions of this archiver, round two (restore of a version 1
manifest: no fingerprint, no checksum)."""

from __future__ import annotations

import datetime as dt
import json

from archive_pipeline.core import keys
from archive_pipeline_tests.helpers import download
from archive_pipeline_tests.test_hunt25_cp import DAY, TEXT_TABLE, TWO_ROWS, _archived_table
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config

NEXT = dt.date(2024, 3, 11)


def _as_version_1(manifest: dict) -> dict:
    """``manifest`` as the first release wrote it (8854eee..ba1e6db, manifest_version 1): no checksum, fingerprint,
    generation, table_definition, empty, exact or per-column encodings; source holds only server_version and
    snapshot_at."""
    manifest["manifest_version"] = 1
    for name in ("fingerprint", "generation", "table_definition", "exact", "archived_at", "source_relation", "empty",
                 "superseded", "kept", "manifest_sha256", "timezone", "granularity"):
        manifest.pop(name, None)
    manifest["source"] = {k: manifest["source"][k] for k in ("server_version", "snapshot_at")}
    for column in manifest["columns"]:
        for name in ("encoding", "exact", "note", "base_type"):
            column.pop(name, None)
    return manifest


def test_a_version_1_archive_holding_another_days_rows_is_not_restored_green_into_a_new_table(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Scenario: DAY and the next day (2 rows each) were archived by the first release (manifest version 1: no
    checksum, no fingerprint). DAY's object was replaced by the next day's (a copy by hand, a sync tool; its
    unsealed manifest edited to the copy's size and digests, which anyone can do to a version 1 manifest). The user
    runs `restore --into new --target s.r1 --day DAY`.

    Now: exit 0, "row count only (2 rows as recorded ...)", and s.r1 holds the next day's rows as DAY's.
    restore's final check (_checked, the `if fp.recorded_algorithm(recorded) is None: return _count_checked(...)`
    early return) runs before the rows_outside_period check, which catches exactly this for a sealed manifest (the
    same swap under a version 3 manifest is refused: "2 of the archive's rows have a at outside 2024-03-10: it is
    not this day's archive").

    Should: the day-column check needs no fingerprint: it runs for every manifest naming a day column (move the
    rows_outside_period test above the early return), so a version 1 archive of another day's rows is refused as
    not this day's archive, nothing restored."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, v text)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, 'a'), (2, %s, 'b'), (3, %s, 'c'), (4, %s, 'd')",
                 (DAY, DAY, NEXT, NEXT))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    for day in (DAY, NEXT):
        assert cli(env, "archive", "--day", str(day)).returncode == 0
    key, other = (f"archive/{schema}.ev/2024/03/{day}.jsonl" for day in (DAY, NEXT))
    copied = json.loads(download(s3_client, bucket, keys.manifest_key(other)))
    s3_client.put_object(Bucket=bucket, Key=key, Body=download(s3_client, bucket, other))
    manifest = _as_version_1(json.loads(download(s3_client, bucket, keys.manifest_key(key))))
    manifest["object"].update({k: copied["object"][k] for k in ("bytes", "md5", "sha256", "etag")})
    s3_client.put_object(Bucket=bucket, Key=keys.manifest_key(key), Body=json.dumps(manifest).encode())
    done = cli(env, "restore", "--into", "new", "--target", f"{schema}.r1", "--day", str(DAY))
    said = done.stdout + done.stderr
    assert done.returncode != 0 and "outside" in said, (done.returncode, said)


def test_a_version_1_restore_with_skip_is_not_green_where_the_kept_rows_are_not_the_archived_ones(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Scenario: a day archived by the first release (manifest version 1, no fingerprint); since then row 2 of the
    day was edited in the table ('b' -> 'changed'). The user restores the day into it with `restore --into existing
    --target s.ev --on-conflict skip` (and `--into original --on-conflict skip`) to put the archived rows back.

    Now: exit 0 with "row count only (2 rows as recorded, counted in s.ev for 2024-03-10)": the archived row 2 was
    skipped (its key is taken) and the table keeps the edited value, yet the restore reports success. _checked
    returns through _count_checked as soon as the manifest has no computable fingerprint; the key-taken rows are
    never compared with the archived ones. The same restore of an archive with a fingerprint (v2..v6) is rolled
    back: "Skipping the rows whose key was taken left out 2 archived row(s): where the rows holding those keys ...
    have other values".

    Should: the archive's rows are at hand (loaded to be skipped): compare them with the target's rows of the day
    in the current algorithm on both sides (no recorded fingerprint needed), and refuse/roll back the same way as
    for a fingerprinted archive where they differ; at the least, never exit 0 claiming the day restored."""
    _, env, mkey = _archived_table(pg, s3, bucket, conn, schema, tmp_path, TEXT_TABLE, TWO_ROWS)
    manifest = _as_version_1(json.loads(download(s3_client, bucket, mkey)))
    s3_client.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(manifest).encode())
    conn.execute(f"UPDATE {schema}.ev SET v = 'changed' WHERE id = 2")
    for args in (("--into", "existing", "--target", f"{schema}.ev"), ("--into", "original")):
        done = cli(env, "restore", *args, "--on-conflict", "skip", "--day", str(DAY))
        assert done.returncode != 0, (args, done.stdout, done.stderr)
