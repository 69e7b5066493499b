"""The temp file every archive is written to, hashed and measured as the bytes go by.

Hashing on the way in means the MD5 and SHA-256 that end up in the manifest describe exactly the
bytes that were uploaded, without reading the file a second time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class HashingFile:
    """An append-only file that counts, hashes, and announces its growth to ``on_grow(size)``."""

    def __init__(self, fd: int, path: Path, on_grow: Callable[[int], None] | None = None) -> None:
        self.fd = fd
        self.path = path
        self.size = 0
        self._md5 = hashlib.md5()
        self._sha256 = hashlib.sha256()
        self.on_grow = on_grow

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(self.fd, view[written:])
        self._md5.update(view)
        self._sha256.update(view)
        self.size += written
        if self.on_grow is not None:
            self.on_grow(self.size)
        return written

    def flush(self) -> None:  # file-object protocol; writes are unbuffered
        pass

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    @property
    def closed(self) -> bool:
        return False

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


@contextlib.contextmanager
def temp_archive_file(temp_dir: str | os.PathLike | None = None, suffix: str = "") -> Iterator[HashingFile]:
    """A private temp file that is removed however the block ends."""
    fd, name = tempfile.mkstemp(prefix="archive-pipeline-", suffix=suffix, dir=temp_dir)
    path = Path(name)
    try:
        yield HashingFile(fd, path)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
