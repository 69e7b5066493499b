"""The temp file every archive is written to, hashed and measured as the bytes go by.

Hashing on the way in means the MD5 and SHA-256 that end up in the manifest describe exactly the
bytes that were uploaded, without reading the file a second time.

The file has no name while it is used: it is created with ``O_TMPFILE`` (or unlinked right after
``mkstemp`` where the file system lacks it), so it disappears with the last descriptor, which
the kernel closes however the process ends, SIGKILL and OOM kill included. A file removed in a
``finally`` block would survive those. Readers that need a path get ``/proc/self/fd/<fd>``,
which reopens the same (nameless) file in this process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_PROC_FD = Path("/proc/self/fd")
_ABSORB_BYTES = 4 << 20
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class AppendOnlyFile:
    """The file-object protocol that compressors and Arrow's writers need, over an append-only
    descriptor: unbuffered writes of whole buffers, the size as the position. Subclasses give ``fd``
    and ``closed``."""

    fd: int
    size: int = 0

    def _append(self, data: bytes | bytearray | memoryview) -> memoryview:
        """Write all of ``data`` (``os.write`` may take less than asked) and return it as a view."""
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(self.fd, view[written:])
        self.size += written
        return view

    def flush(self) -> None:  # writes are unbuffered
        pass

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size


class HashingFile(AppendOnlyFile):
    """An append-only file that counts, hashes, and announces its growth to ``on_grow(size)``.

    ``on_grow`` runs in the writer's thread after every write, so it must not block (the store's
    ``S3Upload.grow`` only records the size)."""

    def __init__(self, fd: int, path: Path, on_grow: Callable[[int], None] | None = None) -> None:
        self.fd = fd
        self.path = path  # usable by this process only when the file is nameless (/proc/self/fd/N)
        self.size = 0
        self._md5 = hashlib.md5()
        self._sha256 = hashlib.sha256()
        self.on_grow = on_grow
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            # A compressor left open by a failed run flushes its trailer when it is garbage-collected,
            # later, maybe after this fd number was reused by a database socket or another day's file.
            raise ValueError("write to an archive file that is already closed")
        view = self._append(data)
        self._md5.update(view)
        self._sha256.update(view)
        if self.on_grow is not None:
            self.on_grow(self.size)
        return len(view)

    def absorb_appended(self) -> None:
        """Count, hash and announce what a native writer appended to the descriptor itself (through
        a duplicate of ``fd``): read back from the page cache a few MiB at a time, so a native
        writer's big page is never copied into one Python object (#11 §5)."""
        end = os.fstat(self.fd).st_size
        while self.size < end:
            chunk = os.pread(self.fd, min(end - self.size, _ABSORB_BYTES), self.size)
            if not chunk:
                break
            self._md5.update(chunk)
            self._sha256.update(chunk)
            self.size += len(chunk)
        if self.on_grow is not None:
            self.on_grow(self.size)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse every later write; the descriptor itself belongs to :func:`temp_archive_file`."""
        self._closed = True

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


def default_temp_dir() -> str:
    """Where temp files go when no temp_dir is given: ``$TMPDIR`` where set, refused (an :class:`OSError` naming it)
    where it cannot be used: :func:`tempfile.gettempdir` passes over such a TMPDIR silently to /tmp, often a small
    tmpfs, the very disk an operator sized TMPDIR to avoid. Unset, tempfile's choice."""
    chosen = os.environ.get("TMPDIR")
    if not chosen:
        return tempfile.gettempdir()
    if not os.path.isdir(chosen):
        raise OSError(errno.ENOENT, f"$TMPDIR {chosen} does not exist or is not a directory: create it, or set TMPDIR "
                                    "(or temp_dir) to a directory that exists", chosen)
    if not os.access(chosen, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"$TMPDIR {chosen} is not writable (a read-only mount, or its permissions): set "
                                    "TMPDIR (or temp_dir) to a writable directory", chosen)
    return chosen


def temp_dir_given(temp_dir: str | os.PathLike | None) -> str | None:
    """``temp_dir`` as a path, or None for the default where it is None or blank: a YAML or launchpad field left
    empty (``temp_dir: ""``) otherwise reached ``os.open("")`` and, through mkstemp's fallback, staged the day in
    the process's working directory (the checkout, ``/`` in a container), never on the volume TMPDIR names."""
    if temp_dir is None:
        return None
    path = os.fspath(temp_dir)
    return path if path.strip() else None


def temp_dir_named() -> str:
    """The temp directory a message names where none was given: $TMPDIR as set (even where it cannot be used:
    tempfile would name /tmp instead), else tempfile's."""
    return os.environ.get("TMPDIR") or tempfile.gettempdir()


def open_nameless(temp_dir: str | os.PathLike | None = None, suffix: str = "") -> tuple[int, Path, Path | None]:
    """A new private read-write file in ``temp_dir`` that no name points to.

    Returns ``(fd, path, name)``: ``path`` reopens it (``/proc/self/fd/<fd>``), ``name`` is its
    directory entry on systems without ``/proc`` (where it cannot be unlinked early and must be
    removed by the caller), else None."""
    directory = temp_dir_given(temp_dir) or default_temp_dir()
    proc = _PROC_FD.is_dir()
    if proc and hasattr(os, "O_TMPFILE"):
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            return fd, _PROC_FD / str(fd), None
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
    fd, name = tempfile.mkstemp(prefix="archive-pipeline-", suffix=suffix, dir=directory)
    if not proc:
        return fd, Path(name), Path(name)
    try:
        os.unlink(name)
    except BaseException:
        os.close(fd)
        Path(name).unlink(missing_ok=True)
        raise
    return fd, _PROC_FD / str(fd), None


@contextlib.contextmanager
def temp_archive_file(temp_dir: str | os.PathLike | None = None, suffix: str = "") -> Iterator[HashingFile]:
    """A private temp file that is gone however the block, or the process, ends."""
    fd, path, name = open_nameless(temp_dir, suffix)
    sink = HashingFile(fd, path)
    try:
        yield sink
    finally:
        sink.close()  # before the fd number can be reused: nothing may write to it afterwards
        os.close(fd)
        if name is not None:
            name.unlink(missing_ok=True)
