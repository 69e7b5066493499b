"""Hunt 9 (oh): a hostile or corrupted bucket: sealed manifests and objects with crafted contents.

A manifest's ``manifest_sha256`` only proves nobody altered it since it was sealed; anyone who can write to
the bucket can edit one and seal it again (``encode_manifest``). Nothing such a manifest or object says may
crash a reader, run SQL, touch another table, or blow memory: each is refused with a clear error naming the
table, the day, the object and the cause."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
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
from archive_pipeline.core.manifest import decode_manifest
from archive_pipeline_tests.helpers import download, forge_object

DAY = dt.date(2024, 3, 10)


def _ev(conn, schema: str) -> None:
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz, note text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', "
                         "md5(g::text) FROM generate_series(1, 20) g").format(sql.Identifier(schema)))


def _spec(schema: str, fmt: str = "jsonl") -> TableSpec:
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="zstd")


def _reseal(s3_client, bucket: str, key: str, edit) -> None:
    """Edit the manifest at ``key`` and seal it again, as anyone who can write to the bucket can: by hand, not
    through encode_manifest, which refuses a manifest larger than its readers accept (a forger's need not)."""
    manifest = {k: v for k, v in decode_manifest(download(s3_client, bucket, key)).items() if k != "manifest_sha256"}
    edit(manifest)
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    sealed = {**manifest, "manifest_sha256": hashlib.sha256(canonical).hexdigest()}
    s3_client.put_object(Bucket=bucket, Key=key, Body=json.dumps(sealed, ensure_ascii=False).encode())


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


def _zstd_of(fill: bytes, size: int, tail: bytes = b"") -> bytes:
    """A zstd frame of ``size`` bytes of ``fill`` (then ``tail``), compressed a block at a time (a few KB)."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=19).stream_writer(out, closefd=False) as writer:
        block = fill * (1 << 20)
        for _ in range(size >> 20):
            writer.write(block)
        writer.write(tail)
    return out.getvalue()


def test_a_jsonl_object_that_decompresses_to_one_huge_line_does_not_blow_the_restores_memory(
        conn, schema, store, temp_dir, s3_client, bucket):
    """Someone who can write to the bucket replaces a day's JSONL archive (20 rows, about 2 KB decompressed, as its
    manifest's uncompressed_bytes says) with a 1.3 KB zstd frame that expands to 40 MB of one line without a
    newline, and reseals the manifest's size and digests to match. A user restores the day into a new table.
    readers.jsonl_arrays keeps appending to its buffer until it sees a newline, _as_array copies the whole line
    four times, and the line is sent to PostgreSQL as one json parameter: the restore's Python heap peaks at about
    360 MB for a 1.3 KB object (1.35 GB for 150 MB; a few GB of zeros, which zstd writes in a few KB, kill the
    process). Should: memory stays flat, as the README promises: the decompressed stream is bounded by what
    the manifest recorded (``uncompressed_bytes``) or a line by a limit, and the archive is refused as damaged
    naming the table, the day and the object."""
    _ev(conn, schema)
    spec = _spec(schema, "jsonl")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    forge_object(s3_client, bucket, result.key, result.manifest_key, _zstd_of(b"x", 40 << 20))
    from archive_pipeline.core.restore import restore_day

    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError) as refused:
            restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"peak {peak / 2**20:.0f} MB restoring a {len(download(s3_client, bucket, result.key))} " \
                            f"byte object"
    assert refused.value.day == "2024-03-10"


def test_a_jsonl_line_that_is_not_json_is_named_damaged_in_a_message_of_sane_length(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day's JSONL archive is replaced (its manifest's digests resealed) by one whose line is 2 MB of ``x``, not
    JSON. A user restores the day. The RestoreError's message is over 2,000,000 characters: PostgreSQL's DETAIL
    (Token "xxxx...") is pasted in whole, so the terminal, the Dagster event log and any alert receive the entire
    line; and it blames "column id" and says the target's type refuses it ("an enum lacking one of the archived
    labels, a type changed since the day was archived; ... ALTER TYPE ... ADD VALUE"): _name_refused_column
    probes each column's reading of the block, and the first probe fails on the block itself, not on that column.
    Should: a message of a few hundred characters naming the table, the day and the object, saying the object
    does not decode as JSONL (damaged or altered), as a CSV archive that does not parse is named."""
    _ev(conn, schema)
    spec = _spec(schema, "jsonl")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    forge_object(s3_client, bucket, result.key, result.manifest_key, _zstd_of(b"x", 2 << 20, b"\n"))
    from archive_pipeline.core.restore import restore_day

    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    message = str(refused.value)
    assert len(message) < 5000, f"{len(message):,} characters: {message[:400]}"
    assert result.key in message and "column id" not in message, message[:2000]


def test_a_manifest_of_a_hundred_megabytes_is_not_read_whole_by_every_reader(
        conn, schema, store, temp_dir, s3_client, bucket):
    """Someone who can write to the bucket pads a day's manifest with a 100 MB field and reseals it (or a tool
    writes a huge object at the manifest's key). ``list`` (day_statuses), ``verify --deep`` and the archive's
    re-run each read it whole with one GetObject (S3Store.get_verified_bytes: ``Body.read()``), decode the bytes
    and parse the JSON: about 400 MB of Python heap for each (and decoded_manifest reads it a second time when
    it does not decode); a manifest of a few GB, written in one PUT, takes the code location or the command
    down. A manifest of ours is a few KB (a wide table's, with shapes, well under a MB). Should: a manifest
    larger than a sane bound is refused as not a manifest by its Content-Length, before its body is read, naming
    the table, the day and the key; memory stays flat."""
    from archive_pipeline.core.plan import day_statuses
    from archive_pipeline.core.verify import deep_verify

    _ev(conn, schema)
    spec = _spec(schema, "csv")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m.update(padding="x" * (100 << 20)))
    for name, read in (("list", lambda: day_statuses(conn, spec, store, [DAY])),
                       ("verify --deep", lambda: deep_verify(conn, store, spec, DAY))):
        tracemalloc.start()
        try:
            try:
                read()
            except ArchiveError:
                pass
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 32 << 20, f"{name}: peak {peak / 2**20:.0f} MB reading a 100 MB manifest"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_damaged_manifest_whose_fingerprint_is_no_string_does_not_leave_the_day_stuck(
        overwrite, conn, schema, store, temp_dir, s3_client, bucket):
    """The object at a day's manifest key is not a valid manifest (no manifest_version, no checksum: damaged, or
    written by a tool) but is JSON whose ``fingerprint`` is a list. The README: a damaged manifest "is 'no valid
    archive', so the day is simply archived again; it is never trusted, and never leaves the day stuck". Every
    archive run of the day, with or without overwrite, fails instead: "an unexpected error (AttributeError: 'list'
    object has no attribute 'rsplit'); not retried". Cause: Archiver._fingerprint_algorithm reads the fingerprint
    of _loose_manifest (the unverified JSON, kept to honour a removal mark) and hands it to
    fingerprint.algorithm_for unchecked. Should: the day is archived again as a new generation."""
    _ev(conn, schema)
    spec = _spec(schema, "csv")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=json.dumps(
        {"table": spec.name, "day": "2024-03-10", "object": None, "fingerprint": [1]}).encode())
    again = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=overwrite)
    assert again.rows == 20 and again.key != result.key


@pytest.mark.parametrize("mark", ["yes", ["done"]])
def test_a_damaged_manifest_whose_removal_mark_is_no_object_is_refused_clearly_not_a_crash(
        mark, conn, schema, store, temp_dir, s3_client, bucket):
    """The object at a day's manifest key is not a valid manifest (damaged, or written by hand) but is JSON whose
    ``removed`` is a string or a list. Every archive run of the day fails with "an unexpected error
    (AttributeError: 'str' object has no attribute 'get')". Cause: Archiver._refuse_removed takes the removal mark of
    _loose_manifest (the unverified JSON) and calls ``removed.get('at')`` on it. Should: the run either archives
    the day again (no removal mark it can read) or refuses it as a possibly removed day (DayRemovedError), naming
    the table, the day and the manifest; never an unexpected error."""
    _ev(conn, schema)
    spec = _spec(schema, "csv")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=json.dumps(
        {"table": spec.name, "day": "2024-03-10", "object": None, "removed": mark}).encode())
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "unexpected error" not in str(exc) and exc.day == "2024-03-10", str(exc)


@pytest.mark.parametrize("command", [["restore", "--into", "new", "--target", "{schema}.back"], ["prune", "--dry-run"],
                                     ["archive"]])
def test_a_manifest_holding_a_number_of_5000_digits_is_unreadable_not_an_unexpected_error(
        command, pg, s3, conn, schema, store, temp_dir, s3_client, bucket, tmp_path):
    """The object at a day's manifest key is JSON holding an integer of 5,000 digits (``"rows": 111...``; damaged,
    or written by someone who can write to the bucket). ``list``, ``compare`` and ``verify`` call the manifest
    unreadable; ``restore`` and ``prune`` fail with "unexpected error (...): ValueError: Exceeds the limit (4300
    digits) for integer string conversion ...; this is a bug in archive_pipeline", and ``archive`` does not archive
    the day again (a damaged manifest is "no valid archive"). Cause: manifest.decode_manifest catches
    UnicodeDecodeError, JSONDecodeError and RecursionError from json.loads, not the ValueError Python raises for
    an integer longer than sys.get_int_max_str_digits(), so it escapes as a bare ValueError, not a ManifestError.
    Should: a ManifestError like any other undecodable manifest (restore and prune refuse the day naming it,
    archive archives the day again)."""
    _ev(conn, schema)
    spec = _spec(schema, "csv")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key,
                         Body=b'{"manifest_version": 2, "table": "x", "object": null, "rows": ' + b"1" * 5000 + b"}")
    args = [a.format(schema=schema) for a in command] + ["--day", DAY.isoformat()]
    done = CliRunner(env=_cli_env(pg, s3, bucket, tmp_path, schema, "csv")).invoke(main, args)
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    assert "unexpected error" not in done.output and "Exceeds the limit" not in done.output, done.output
    if command == ["archive"]:
        assert done.exit_code == 0, done.output


def test_a_manifest_whose_content_encoding_holds_a_line_break_is_not_called_a_transient_store_failure(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day's manifest is resealed with ``object.content_encoding`` = ``"gzip\\r\\nX-Evil: 1"``. S3Store.download_to
    sends the manifest's content_encoding as the GET's Accept-Encoding header; http.client refuses the header value
    (good: no header is injected), and the refusal is then classified as the store's: restore fails with "the
    object store's response broke off or arrived incomplete (HTTPClientError: ... Invalid header value ...);
    transient; to fix: run the command again", retryable (Dagster retries it with backoff, verify says "verify the
    day again once the database and store answer"), and so do verify --download/--deep and prune. Nothing the
    store does will ever make it pass. Should: the manifest is refused as unreadable (its content_encoding is no
    HTTP token), not retryable, naming the table, the day and the field."""
    from archive_pipeline.core.restore import restore_day

    _ev(conn, schema)
    spec = _spec(schema, "csv")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m["object"].update(content_encoding="gzip\r\nX-Evil: 1"))
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert not refused.value.retryable and "broke off" not in str(refused.value), str(refused.value)
    assert refused.value.day == "2024-03-10"


def _more_columns(count: int):
    def edit(manifest):
        manifest["columns"] += [{"name": f"c{i}", "pg_type": "integer", "output_type": "int", "nullable": True,
                                 "encoding": "int", "exact": True} for i in range(count)]
        manifest["table_definition"]["columns"] += [{"name": f"c{i}", "type": "integer", "not_null": False}
                                                    for i in range(count)]
    return edit


def test_a_manifest_recording_more_columns_than_a_table_can_have_is_not_blamed_on_oversized_values(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day's manifest is resealed with 1,700 more columns (1,703 in all; PostgreSQL allows 1,600). A user restores
    the day into a new table, or proves it (verify --deep, and so prune). Each fails with "... exceeds a PostgreSQL
    limit (e.g. a value over 1 GB as text or JSON) (TooManyColumns: tables can have at most 1600 columns) ... to
    fix: a retry cannot help: archive this table as parquet (binary COPY, no 1 GB text value) or csv (no per-row
    JSON), or shorten/split the oversized values": a remedy for another problem, sending the user to reconfigure
    the table's format. Cause: the CREATE TABLE from the manifest's columns reaches PostgreSQL, and errors.classify
    takes every SQLSTATE class 54 (program limit exceeded) for an oversized value. Should: the manifest is refused
    as unreadable before any DDL (no table has more than 1,600 columns), naming the table, the day and the
    manifest."""
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline.core.verify import deep_verify

    _ev(conn, schema)
    spec = _spec(schema, "csv")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _reseal(s3_client, bucket, result.manifest_key, _more_columns(1700))
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    try:
        proof = " ".join(deep_verify(conn, store, spec, DAY))
    except ArchiveError as exc:
        proof = str(exc)
    for said in (str(refused.value), proof):
        assert "oversized values" not in said and "archive this table as parquet" not in said, said[-600:]


def test_a_manifest_recording_twenty_thousand_columns_gives_a_message_of_sane_length(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day's manifest is resealed with 20,000 more columns (a sealed manifest of about 2 MB). The user's next
    archive run of the day fails (the columns changed since archived, rightly) with a message of about 190,000
    characters: every one of the 20,003 recorded column names, quoted ("changed from ['id', 'at', 'note', 'c0',
    ... 'c19999'] to ['id', 'at', 'note']"); ``list --check-source`` prints about 470,000 characters. That is the
    run's failure event, the command line's output and every alert. Should: the message names the change in a
    bounded size (the first names and how many more), as the one for a composite type changed in many columns
    (test_hunt7_mz), or the manifest is refused as unreadable (more columns than any table can have)."""
    _ev(conn, schema)
    spec = _spec(schema, "csv")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    # (1,500: a wide table's legitimately; more than PostgreSQL's 1,600 columns is refused as no manifest of ours)
    _reseal(s3_client, bucket, result.manifest_key, _more_columns(1500))
    with pytest.raises(ArchiveError) as refused:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    message = str(refused.value)
    assert len(message) < 10_000, f"{len(message):,} characters: {message[:300]} ..."
