"""CPU cost of the upload's part bookkeeping: it must grow linearly with the number of parts.

Not a test: a benchmark of our own bookkeeping (claiming parts, waking the upload threads,
collecting results, completing), against a tiny in-process fake S3 client that counts calls and
never touches the data, with 16-byte parts so that neither the network nor hashing counts.
It prints CPU seconds (all threads of the process) for 1,000 and 10,000 parts and the ratio:
about 10x for linear bookkeeping, about 100x for quadratic.

    python bench/parts.py                # the current store
    python bench/parts.py --rev 1bc082f --repeat 1  # also an older commit's store.py (slow if quadratic)
    python bench/parts.py --counts 1000,10000,100000
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archive_pipeline.core.sink import temp_archive_file  # noqa: E402

PART = 16  # bytes per part


class FakeS3:
    """Counts calls; returns what the store expects; reads no body."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def create_multipart_upload(self, **_):
        self._count("create")
        return {"UploadId": "bench"}

    def upload_part(self, PartNumber, **_):  # noqa: N803 - boto3's names
        self._count("upload_part")
        return {"ETag": f'"{PartNumber:032x}"'}

    def complete_multipart_upload(self, MultipartUpload, **_):  # noqa: N803
        self._count("complete")
        return {"ETag": f'"{len(MultipartUpload["Parts"]):032x}-{len(MultipartUpload["Parts"])}"'}

    def head_object(self, **_):
        self._count("head")
        return {"ContentLength": self.size}

    def abort_multipart_upload(self, **_):
        self._count("abort")

    def list_multipart_uploads(self, **_):
        self._count("list")
        return {"Uploads": []}

    def get_paginator(self, _name):
        fake = self

        class Pages:
            def paginate(self, **_):
                fake._count("list")
                return [{"Uploads": []}]
        return Pages()


def load_store(rev: str | None):
    """The store module: the current one, or ``archive_pipeline/core/store.py`` as of git ``rev``."""
    if rev is None:
        from archive_pipeline.core import store
        return store
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:archive_pipeline/core/store.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"store_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"store_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def make_store(module, client: FakeS3):
    if hasattr(module, "PartPlan"):  # current store: class attributes allow tiny parts
        cls = type("BenchStore", (module.S3Store,), {"min_part_size": 1, "max_parts": 1_000_000})
        return cls(client, "bench", part_size=PART, max_concurrency=4, verify_etags=False, equal_parts=True)
    module.MIN_PART_SIZE = 1  # older store: a module constant
    module.MAX_PARTS = 1_000_000
    return module.S3Store(client, "bench", part_size=PART, max_concurrency=4, verify_etags=False)


def run(module, parts: int) -> tuple[float, float, dict[str, int]]:
    """CPU and wall seconds to write ``parts`` parts through a HashingFile with an upload attached."""
    client = FakeS3()
    client.size = parts * PART
    store = make_store(module, client)
    chunk = b"p" * PART
    with temp_archive_file() as sink:
        cpu, wall = time.process_time(), time.perf_counter()
        upload = store.begin("bench/key", content_type="application/octet-stream")
        sink.on_grow = lambda size: upload.grow(sink.fd, size)
        for _ in range(parts):
            sink.write(chunk)
        result = upload.finish(sink.fd, sink.size, sink.md5)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert result.parts == parts and client.calls["upload_part"] == parts, (result.parts, client.calls)
    return cpu, wall, client.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="also measure archive_pipeline/core/store.py of this git revision")
    parser.add_argument("--counts", default="1000,10000", help="part counts (comma-separated)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per count; the median is printed")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    print(f"{os.cpu_count()} CPUs; {PART}-byte parts; fake S3 client (no network, no data read); "
          f"median of {args.repeat}", flush=True)
    for label, rev in [("current", None)] + ([(f"rev {args.rev}", args.rev)] if args.rev else []):
        module = load_store(rev)
        run(module, 100)  # warm up (imports, thread start)
        cpu = {}
        for count in counts:
            runs = sorted(run(module, count) for _ in range(args.repeat))
            cpu[count], wall, calls = runs[len(runs) // 2]  # the median by CPU
            print(f"{label:>14}: {count:>7,} parts  CPU {cpu[count]:8.3f} s  wall {wall:8.3f} s  "
                  f"({cpu[count] / count * 1e6:6.1f} us/part)  calls {calls}", flush=True)
        if len(counts) >= 2:
            print(f"{label:>14}: CPU ratio {counts[-1]:,} / {counts[0]:,} parts = "
                  f"{cpu[counts[-1]] / cpu[counts[0]]:.1f}x (parts ratio {counts[-1] / counts[0]:.0f}x)", flush=True)


if __name__ == "__main__":
    main()
