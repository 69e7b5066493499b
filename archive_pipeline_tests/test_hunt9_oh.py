"""Hunt 9 (oh): a hostile or corrupted bucket: sealed manifests and objects with crafted contents.

A manifest's ``manifest_sha256`` only proves nobody altered it since it was sealed; anyone who can write to
the bucket can edit one and seal it again (``encode_manifest``). Nothing such a manifest or object says may
crash a reader, run SQL, touch another table, or blow memory: each is refused with a clear error naming the
table, the day, the object and the cause."""

from __future__ import annotations

import datetime as dt
import io
import tracemalloc

import pytest
import yaml
import zstandard
from click.testing import CliRunner
from psycopg import sql

from archive_pipeline.cli import main
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.manifest import decode_manifest, encode_manifest
from archive_pipeline_tests.helpers import download, forge_object

DAY = dt.date(2024, 3, 10)


def _ev(conn, schema: str) -> None:
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz, note text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', "
                         "md5(g::text) FROM generate_series(1, 20) g").format(sql.Identifier(schema)))


def _spec(schema: str, fmt: str = "jsonl") -> TableSpec:
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="zstd")


def _reseal(s3_client, bucket: str, key: str, edit) -> None:
    """Edit the manifest at ``key`` and seal it again, as anyone who can write to the bucket can."""
    manifest = {k: v for k, v in decode_manifest(download(s3_client, bucket, key)).items() if k != "manifest_sha256"}
    edit(manifest)
    s3_client.put_object(Bucket=bucket, Key=key, Body=encode_manifest(manifest))


def _cli_env(pg, s3, bucket: str, tmp_path, schema: str, fmt: str) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{
        "name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01", "format": fmt, "compression": "zstd",
        "retention": {"keep_days": 1, "action": "delete"}}]}))
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250",
            "ARCHIVE_S3_ACCESS_KEY_ID": "testing", "ARCHIVE_S3_SECRET_ACCESS_KEY": "testing"}


def _set(*path):
    def edit(manifest, value):
        *head, last = path
        for part in head:
            manifest = manifest[part]
        manifest[last] = value
    return edit


# (what was edited, the edit, the command that crashed on it)
_MISTYPED = [
    pytest.param(lambda m: m.update(source="x"), ["list"], "csv", id="source-a-string-list"),
    pytest.param(lambda m: m["source"].update(snapshot_at=5), ["list"], "csv", id="snapshot_at-a-number-list"),
    pytest.param(lambda m: m.update(archived_at=5), ["list"], "csv", id="archived_at-a-number-list"),
    pytest.param(lambda m: m["table_definition"]["columns"].__setitem__(0, {"type": "integer"}),
                 ["verify", "--deep"], "csv", id="definition-column-without-name-verify-deep"),
    pytest.param(lambda m: m["table_definition"]["columns"].__setitem__(0, {"type": "integer"}),
                 ["prune", "--dry-run"], "csv", id="definition-column-without-name-prune"),
    pytest.param(lambda m: m["table_definition"]["columns"].__setitem__(0, {"type": "integer"}),
                 ["restore", "--into", "new", "--target", "{schema}.back"], "csv",
                 id="definition-column-without-name-restore"),
    pytest.param(lambda m: m["table_definition"].update(partition="p"),
                 ["restore", "--into", "new", "--target", "{schema}.back"], "csv", id="definition-partition-a-string"),
    pytest.param(lambda m: m["table_definition"].update(parents="x"),
                 ["restore", "--into", "new", "--target", "{schema}.back"], "csv",
                 id="definition-parents-a-string"),
    pytest.param(lambda m: m["columns"][2].update(numbers=[{"steps": 5, "type": "float8"}]),
                 ["restore", "--into", "new", "--target", "{schema}.back"], "csv", id="numbers-steps-a-number"),
    pytest.param(lambda m: m.update(source_relation=5), ["restore", "--into", "new", "--target", "{schema}.back"],
                 "csv", id="source_relation-a-number"),
    pytest.param(lambda m: m.update(granularity="daily", timezone="Mars/Base"),
                 ["restore", "--into", "new", "--target", "{schema}.back"], "csv", id="timezone-unknown"),
    pytest.param(lambda m: (m["columns"][2].update(name="no\x00te"),
                            m["table_definition"]["columns"][2].update(name="no\x00te")),
                 ["verify", "--deep"], "jsonl", id="column-name-with-nul-verify-deep"),
    pytest.param(lambda m: (m["columns"][2].update(name="no\x00te"),
                            m["table_definition"]["columns"][2].update(name="no\x00te")),
                 ["compare", "--rows"], "jsonl", id="column-name-with-nul-compare-rows"),
]


@pytest.mark.parametrize(("edit", "command", "fmt"), _MISTYPED)
def test_a_resealed_manifest_with_a_mistyped_field_is_refused_not_an_unexpected_error(
        edit, command, fmt, pg, s3, conn, schema, store, temp_dir, s3_client, bucket, tmp_path):
    """Someone who can write to the bucket (or a tool that rewrote the manifest) edits a field of a day's manifest
    and seals it again: ``source`` a string, ``source.snapshot_at`` or ``archived_at`` a number, a
    ``table_definition`` column without a name, its ``partition`` or ``parents`` a string, a column's ``numbers``
    steps a number, ``source_relation`` a number, ``timezone`` no zone, a column name holding NUL. The user runs
    ``archive-pipeline list`` / ``verify --deep`` / ``prune --dry-run`` / ``restore`` / ``compare --rows``: each
    fails with "unexpected error (...): AttributeError / KeyError / TypeError / PeriodError ...; this is a bug in
    archive_pipeline". Should: the manifest is called unreadable (as ``_shape_problem`` does for ``rows`` or
    ``columns``), naming the table, the day and the field, and no command crashes. Cause: decode_manifest's
    _shape_problem/_consistency_problem check only a few fields; list (archived_at, source.snapshot_at),
    restore (_partition, _own_parents, _nested_narrowing, Relation.configured(source_relation), the period) and
    the proof (table_definition columns by name, columns by name) index the others as they are."""
    _ev(conn, schema)
    spec = _spec(schema, fmt)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _reseal(s3_client, bucket, result.manifest_key, edit)
    args = [a.format(schema=schema) for a in command] + ["--day", DAY.isoformat()]
    done = CliRunner(env=_cli_env(pg, s3, bucket, tmp_path, schema, fmt)).invoke(main, args)
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    assert "unexpected error" not in done.output and "bug in archive_pipeline" not in done.output, done.output
    assert "2024-03-10" in done.output and done.exit_code != 0, done.output
