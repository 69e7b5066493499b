"""Hunt 20 (zl): sizes and counts at their edges (empty days, one row, a table of only its day column, 1,600 columns,
objects at the part size and one byte either side, equal parts and their size estimate, counts past 2^31 in a
manifest), in every format and codec, through archive, skip, restore, verify and compare."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from archive_pipeline.core.archive import LateRowsError, archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.test_hunt17_wf import _env, cli

DAY = dt.date(2024, 3, 10)


def _table(schema: str, name: str = "t", **extra) -> dict:
    return {"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat(), **extra}


class _FourPartStore(S3Store):
    """S3's 10,000-part limit scaled down to 4 parts (the class attribute meant for that): with equal parts the
    part size is raised to 4 x estimate / 4, so the capacity is 4 x the estimate, as at full scale."""

    max_parts = 4


def test_equal_parts_size_a_jsonl_day_from_its_row_text_so_a_wide_sparse_day_fails_after_4x_its_estimate(
        conn, schema, s3_client, bucket, temp_dir):
    """Scenario: a store of equal parts (Cloudflare R2, ``equal_parts: true``), its part limit scaled down to 4
    parts (``max_parts``, as test_hunt18_xi does); a wide, sparse event table (42 columns, 40 of them NULL, their
    names ~50 characters: an ordinary event schema), analyzed; format jsonl, compression none. The day holds
    40,000 rows.

    Now: ``Archiver`` passes ``source.estimated_bytes`` as the upload's ``expected_size``: rows x the width of a
    row as PostgreSQL's *text* (``t::text``: ``(1,2024-03-10,,,,…)``, ~170 bytes by the planner). But the jsonl
    writer spells every column's name in every row (``{"attribute_00_xxxx…": null, …}``, ~2.5 kB a row): the
    stream is ~15 x the estimate, past the 4 x that ``plan_parts`` sizes equal parts for, and the upload fails
    ("the stream passed … bytes, all that 4 equal parts of … bytes can hold (estimate: …)", permanent) after
    uploading 4 x the estimate; every retry alike. At full scale (10,000 parts) the same table fails once its day
    passes 4 x its text size (e.g. a 25 GB-as-text day fails after uploading 100 GB of its ~375 GB).

    Should: the estimate is in the bytes the format writes: for jsonl the per-row cost of the quoted names
    (``sum(len(json.dumps(name)) + 2)``) added to the row width, or the first sampled rows sized through the
    format's own writer (and the codec: none here); then the day archives in equal parts of the right size."""
    names = [f"attribute_{i:02d}_" + "x" * 40 for i in range(40)]
    conn.execute(f"CREATE TABLE {schema}.t (id int, at date, {', '.join(f'{n} int' for n in names)})")
    conn.execute(f"INSERT INTO {schema}.t (id, at) SELECT g, %s FROM generate_series(1, 40000) g", (DAY,))
    conn.execute(f"ANALYZE {schema}.t")
    spec = parse_config({"tables": [_table(schema, format="jsonl", compression="none")]}).tables[0]
    store = _FourPartStore(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE, equal_parts=True)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # (that part holds)
        pytest.fail(f"a jsonl day sized from its row text outgrew the equal parts planned for 4 x that: {exc}")
    assert result.rows == 40000


def test_cli_archive_of_a_day_emptied_after_its_archive_says_no_data_exit_0_and_keeps_the_old_rows(
        pg, s3, bucket, conn, schema, tmp_path, store, temp_dir):
    """Scenario: a column-mode table (no partitions), format jsonl/gzip; day D (3 rows) archived with
    `archive --day D`; then all of D's rows are deleted (`DELETE … WHERE at = D`: a GDPR purge, a bad import
    undone). The user runs `archive --day D` (cron), then `archive --day D --overwrite` (the remedy `verify
    --deep` prints for this very day: "If the source's rows are the right ones …, archive the day again: …
    --overwrite").

    Now: both answer `no-data  no data for this day in PostgreSQL`, exit 0, and write nothing: cli._archive_table
    asks `plan.present_days` which days hold rows, and a day not present is reported "no-data" without ever
    reaching `archive_partition` or looking at the day's manifest (3 rows). The core for the same day says
    otherwise: `archive_partition` raises LateRowsError ("changed since it was archived … it has 0 rows now, the
    archive holds 3"), and with overwrite archives the day as empty (a new generation, the old kept); the Dagster
    asset, which calls archive_partition without asking present_days, fails the same partition as changed. So the
    command line's exit 0 stands beside an archive that does not hold the day's rows (0), `verify --deep` fails
    the day forever, and its remedy is a no-op. (README: `archive` "archives through archive_partition … decides
    with the archiver's own rule".)

    Should: a day absent from the source whose key holds a (non-removed) archive is not passed over as a bare "no
    data": without --overwrite archive writes nothing and exits 0 (dropping archived partitions by hand, or by a
    partition manager's retention, is how many users let the source go: a cron archive must not fail for ever on
    them), but says that the archive holds 3 rows, is kept, and how to put them back or archive the day as empty;
    `archive --day D --overwrite` (verify --deep's remedy) archives the day as an empty generation, as the core does
    (the 3-row generation kept).
    """
    conn.execute(f"CREATE TABLE {schema}.t (id int, at date)")
    conn.execute(f"INSERT INTO {schema}.t SELECT g, %s FROM generate_series(1, 3) g", (DAY,))
    table = _table(schema, format="jsonl", compression="gzip")
    env = _env(pg, s3, bucket, tmp_path, [table])
    assert cli(env, "archive", "--day", DAY.isoformat()).returncode == 0
    conn.execute(f"DELETE FROM {schema}.t WHERE at = %s", (DAY,))
    # the core's own rule for the same day (read only: it refuses, writing nothing)
    with pytest.raises(LateRowsError):
        archive_partition(conn, parse_config({"tables": [table]}).tables[0], DAY, store, temp_dir=temp_dir)
    wrong = []
    plain = cli(env, "archive", "--day", DAY.isoformat(), "--json")
    said = json.loads(plain.stdout)["days"][0]
    if plain.returncode != 0 or said["status"] != "no-data" or "3 rows" not in said.get("message", "") or \
            "kept" not in said.get("message", ""):
        wrong.append(f"archive: exit {plain.returncode}, {said['status']} ({said.get('message')})")
    planned = cli(env, "archive", "--day", DAY.isoformat(), "--dry-run", "--json")
    if planned.returncode != 0 or "3 rows" not in planned.stdout:
        wrong.append(f"archive --dry-run: exit {planned.returncode}: {planned.stdout[-400:]}")
    ranged = cli(env, "archive", "--from", DAY.isoformat(), "--to", (DAY + dt.timedelta(days=1)).isoformat(),
                 "--overwrite", "--json")  # a range's --overwrite (a format change re-archived) keeps it as it is
    said = json.loads(ranged.stdout)["days"][0]
    if ranged.returncode != 0 or said["status"] != "no-data" or "3 rows" not in said.get("message", ""):
        wrong.append(f"archive of a range --overwrite: exit {ranged.returncode}, {said['status']} "
                     f"({said.get('message')})")
    again = cli(env, "archive", "--day", DAY.isoformat(), "--overwrite", "--json")
    said = json.loads(again.stdout)["days"][0]
    listed = json.loads(cli(env, "list", "--day", DAY.isoformat(), "--json").stdout)["days"][0]
    if again.returncode != 0 or listed.get("rows") != 0:
        wrong.append(f"archive --overwrite: exit {again.returncode}, {said['status']} ({said.get('message')}), the "
                     f"archive records {listed.get('rows')} rows ({listed['state']}) for a day of 0")
    assert not wrong, "; ".join(wrong)
