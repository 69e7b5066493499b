"""The manifest written beside each archive: what it holds and how to check it, in plain JSON.

It is written only after the data object is complete and verified, so its presence means the
archive is whole; its MD5/SHA-256 are of the object's exact bytes (a multipart ETag is not).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from archive_pipeline.archive import ArchiveResult

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1


def manifest_key(object_key: str) -> str:
    return object_key + MANIFEST_SUFFIX


def build_manifest(result: ArchiveResult) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "table": result.table,
        "day": result.day.isoformat(),
        "day_column": result.day_column,
        "source_relation": result.source_relation,
        "rows": result.rows,
        "object": {
            "key": result.key,
            "uri": result.uri,
            "bytes": result.bytes,
            "md5": result.md5,
            "sha256": result.sha256,
            "etag": result.etag,
            "parts": result.parts,
            "content_type": result.content_type,
            "content_encoding": result.content_encoding,
        },
        "uncompressed_bytes": result.uncompressed_bytes,
        "format": result.format,
        "compression": result.compression,
        "columns": [
            {"name": c.name, "pg_type": c.type_name, "output_type": result.output_types.get(c.name, "text"),
             "nullable": not c.not_null}
            for c in result.columns
        ],
        "source": {"server_version": result.server_version, "snapshot_at": result.snapshot_at.isoformat()},
        "archiver": {"name": "archive_pipeline", "version": result.archiver_version},
    }


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
