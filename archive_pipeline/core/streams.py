"""Running the streams of one day side by side: a group that fails as one, and the spool files the
later streams write to until their turn comes (used by :mod:`archive_pipeline.core.parallel` for the
text formats and by the Parquet format). Below both, so neither imports the other."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from archive_pipeline.core.sink import AppendOnlyFile, open_nameless

SPOOL_READ_BYTES = 4 << 20  # bytes per read when a spool is appended to the archive file


class ByteSink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class StreamGroup:
    """Runs one task per stream, task 0 in the calling thread, the others in threads of their own.

    The first failure wins: it is recorded, every other stream is cancelled (``cancels[i]``, called
    at most once, never after stream *i* finished), all threads are joined and the first failure is
    raised as it was, so a stream that was only cancelled never hides the cause.
    """

    def __init__(self, cancels: Sequence[Callable[[], None]]) -> None:
        self._cancels = list(cancels)
        self._lock = threading.Lock()
        self._done = [False] * len(self._cancels)
        self.failure: BaseException | None = None

    def finished(self, i: int) -> None:
        """Stream ``i`` holds nothing to cancel any more (call before closing its connection)."""
        with self._lock:
            self._done[i] = True

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is not None:
                return
            self.failure = exc
            pending = [cancel for cancel, done in zip(self._cancels, self._done) if not done]
            self._done = [True] * len(self._done)
        for cancel in pending:
            with contextlib.suppress(Exception):
                cancel()

    def run(self, tasks: Sequence[Callable[[], object]]) -> list[object]:
        results: list[object] = [None] * len(tasks)

        def call(i: int) -> None:
            try:
                results[i] = tasks[i]()
            except BaseException as exc:  # noqa: BLE001 - raised by run() in the caller's thread
                self.fail(exc)

        threads = [threading.Thread(target=call, args=(i,), name=f"archive-stream-{i}", daemon=True)
                   for i in range(1, len(tasks))]
        try:
            for thread in threads:
                thread.start()
            call(0)
            for thread in threads:
                thread.join()
        except BaseException as exc:  # e.g. Ctrl-C between statements, or while stream 0, done, waits for the
            self.fail(exc)           # others: stop them too (else they read on, their sessions closed under them)
            for thread in threads:
                if thread.ident is not None:  # started
                    thread.join()
        if self.failure is not None:
            raise self.failure
        return results


class Spool(AppendOnlyFile):
    """A nameless temp file a stream writes its output to until it is appended to the archive."""

    def __init__(self, temp_dir: str | os.PathLike | None) -> None:
        self.fd, self.path, self._name = open_nameless(temp_dir, ".spool")
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(self._append(data))

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def append_to(self, out: ByteSink) -> None:
        """Copy the spool into ``out`` through one reused buffer (no bytes object per read)."""
        buffer = bytearray(SPOOL_READ_BYTES)
        view = memoryview(buffer)
        offset = 0
        while offset < self.size:
            got = os.preadv(self.fd, [view[:min(SPOOL_READ_BYTES, self.size - offset)]], offset)
            if got <= 0:
                raise OSError(f"spool file ended at {offset} of {self.size} bytes")
            out.write(view[:got])
            offset += got

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self._name is not None:
                self._name.unlink(missing_ok=True)


@contextlib.contextmanager
def spools(count: int, temp_dir: str | os.PathLike | None) -> Iterator[list[Spool]]:
    """``count`` spool files, gone (closed: they have no name) however the block ends."""
    made: list[Spool] = []
    try:
        for _ in range(count):
            made.append(Spool(temp_dir))
        yield made
    finally:
        for spool in made:
            spool.close()
