"""Check a stored archive against what was recorded when it was written.

The quick check costs two requests (HEAD of the object, GET of the manifest); the deep check
downloads the object to a temp file, hashes it and counts its rows with the same tools a reader
would use, in bounded memory.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from archive_pipeline.manifest import manifest_key
from archive_pipeline.sink import temp_archive_file
from archive_pipeline.store import S3Store


def _open_decompressed(path: str, compression: str, fmt: str):
    if fmt == "parquet" or compression == "none":
        return pa.OSFile(path, "rb")
    codec = {"zstd": "zstd", "gzip": "gzip", "lz4": "lz4"}[compression]
    return pa.CompressedInputStream(pa.OSFile(path, "rb"), codec)


def count_rows(path: str, fmt: str, compression: str) -> int:
    """Rows in an archive file, read the way a user would read it."""
    if fmt == "parquet":
        file = pq.ParquetFile(path)
        return sum(batch.num_rows for batch in file.iter_batches(batch_size=65536))
    if fmt == "jsonl":  # one record per line: JSON text never holds a raw newline
        rows = 0
        with _open_decompressed(path, compression, fmt) as stream:
            while chunk := stream.read(1 << 20):
                rows += chunk.count(b"\n")
        return rows
    parse = pacsv.ParseOptions(newlines_in_values=True)
    with _open_decompressed(path, compression, fmt) as stream:
        names = pacsv.open_csv(stream, parse_options=parse).schema.names
    # Every column as text, so no value can fail a guessed type; quoted newlines stay inside rows.
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names})
    with _open_decompressed(path, compression, fmt) as stream:
        return sum(b.num_rows for b in pacsv.open_csv(stream, parse_options=parse, convert_options=convert))


def load_manifest(store: S3Store, key: str) -> dict | None:
    """The manifest beside ``key``; None if there is none, ValueError if it is not a manifest."""
    raw = store.get_bytes_or_none(manifest_key(key))
    if raw is None:
        return None
    manifest = json.loads(raw)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("object"), dict):
        raise ValueError("not a JSON object with an 'object' entry")
    return manifest


def stored_object_problems(head: dict, manifest: dict) -> list[str]:
    """How the stored object (its HEAD) differs from the one its manifest describes."""
    obj = manifest["object"]
    problems = []
    if head["ContentLength"] != obj.get("bytes"):
        problems.append(f"size: recorded {obj.get('bytes')!r} bytes, stored {head['ContentLength']:,}")
    if obj.get("etag") and head["ETag"].strip('"') != obj["etag"]:
        problems.append(f"ETag: stored {head['ETag']}, manifest {obj['etag']} (object replaced?)")
    return problems


def verify_archive(store: S3Store, key: str, expected: dict, *, deep: bool = False) -> list[str]:
    """What differs between the stored archive and ``expected`` (``bytes``, ``md5``, ``rows``,
    ``format``, ``compression``); an empty list means it is intact."""
    head = store.head(key)
    if head is None:
        return [f"object {store.uri(key)} is missing"]
    problems: list[str] = []
    try:
        manifest = load_manifest(store, key)
    except ValueError as exc:
        manifest = None
        problems.append(f"manifest unreadable: {exc}")
    if manifest is None:
        if not problems:
            problems.append(f"manifest {manifest_key(key)} is missing")
        if head["ContentLength"] != expected["bytes"]:
            problems.append(f"size: recorded {expected['bytes']:,} bytes, stored {head['ContentLength']:,}")
    else:
        obj = manifest["object"]
        for field, value in (("md5", obj.get("md5")), ("bytes", obj.get("bytes")), ("rows", manifest.get("rows"))):
            if value != expected[field]:
                problems.append(f"manifest {field}: {value!r}, recorded {expected[field]!r}")
        problems += stored_object_problems(head, manifest)
    if deep and not problems:
        problems += _deep(store, key, expected)
    return problems


def _deep(store: S3Store, key: str, expected: dict) -> list[str]:
    problems = []
    with temp_archive_file(suffix=".verify") as sink:
        body = store.client.get_object(Bucket=store.bucket, Key=key)["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            sink.write(chunk)
        if sink.md5 != expected["md5"]:
            problems.append(f"md5: recorded {expected['md5']}, stored object hashes to {sink.md5}")
            return problems
        try:
            rows = count_rows(str(sink.path), expected["format"], expected["compression"])
        except (pa.ArrowInvalid, OSError, io.UnsupportedOperation) as exc:
            return [f"object does not decode as {expected['format']}/{expected['compression']}: {exc}"]
        if rows != expected["rows"]:
            problems.append(f"rows: recorded {expected['rows']:,}, object holds {rows:,}")
    return problems
