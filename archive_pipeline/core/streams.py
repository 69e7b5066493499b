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
# A cancel that reaches a session between two statements (before its COPY started, say) is lost:
# while a failed group waits for its streams, it cancels those still running again this often.
CANCEL_AGAIN_SECONDS = 1.0


class ByteSink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class Closable(Protocol):
    def close(self) -> None: ...


class StreamGroup:
    """Runs one task per stream, task 0 in the calling thread, the others in threads of their own.

    The first failure wins: it is recorded, every other stream is cancelled (``cancels[i]``, never
    after stream *i* finished, and again every CANCEL_AGAIN_SECONDS while it runs on), all streams
    are awaited and the first failure is raised as it was, so a stream that was only cancelled never
    hides the cause. An interrupt while the streams are awaited (a run's termination arrives as
    SIGINT) is a failure too, and one that wins over an error: no stream outlives ``run``, since its
    caller then closes the sessions and spools the streams are using, and the caller stops.
    """

    def __init__(self, cancels: Sequence[Callable[[], None]]) -> None:
        self._cancels = list(cancels)
        self._lock = threading.Lock()
        self._finished = [False] * len(self._cancels)
        self.failure: BaseException | None = None

    def finished(self, i: int) -> None:
        """Stream ``i`` holds nothing to cancel any more (call before closing its connection)."""
        with self._lock:
            self._finished[i] = True

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = exc
                self._cancel_running()
            elif isinstance(self.failure, Exception) and not isinstance(exc, Exception):
                # an interrupt (a run's termination) after a stream's error is what run() raises: the
                # caller must stop, not carry on with its next day as after a failed one
                self.failure = exc

    def _cancel_running(self) -> None:
        """Cancel every stream not finished. Called under the lock: a stream finishing meanwhile waits
        in finished() before it closes its connection, so no cancel races the close of what it cancels."""
        for cancel, finished in zip(self._cancels, self._finished):
            if not finished:
                with contextlib.suppress(Exception):
                    cancel()

    def run(self, tasks: Sequence[Callable[[], object]]) -> list[object]:
        results: list[object] = [None] * len(tasks)
        ended = [threading.Event() for _ in tasks]

        def call(i: int) -> None:
            try:
                results[i] = tasks[i]()
            except BaseException as exc:  # noqa: BLE001 - raised by run() in the caller's thread
                self.fail(exc)
            finally:
                self.finished(i)  # ended: nothing of it is running to cancel any more
                ended[i].set()

        threads = [threading.Thread(target=call, args=(i,), name=f"archive-stream-{i}", daemon=True)
                   for i in range(1, len(tasks))]
        for thread in threads:
            thread.start()
        try:
            call(0)
        except BaseException as exc:  # e.g. KeyboardInterrupt between statements: stop the others too
            self.fail(exc)
        finally:
            self._await(ended[1:])
        if self.failure is not None:
            raise self.failure
        return results

    def _await(self, ended: Sequence[threading.Event]) -> None:
        """Wait until every other stream's task has ended, cancelling the ones still running again
        while the group has failed; an interrupt meanwhile fails the group and the wait goes on.
        (Events, not ``Thread.join``: an interrupted join marks a running thread as stopped in Python
        3.11, bpo-45274.)"""
        for event in ended:
            while not event.is_set():
                try:
                    if not event.wait(CANCEL_AGAIN_SECONDS) and self.failure is not None:
                        with self._lock:
                            self._cancel_running()
                except BaseException as exc:  # noqa: BLE001 - raised by run() once every stream has ended
                    self.fail(exc)


class Spool(AppendOnlyFile):
    """A nameless temp file a stream writes its output to until it is appended to the archive."""

    def __init__(self, temp_dir: str | os.PathLike | None) -> None:
        self.fd, self.path, self._name = open_nameless(temp_dir, ".spool")
        self.size = 0
        self._attached: list[Closable] = []

    def attach(self, closable: Closable) -> Closable:
        """Something writing to this spool through a descriptor of its own (Arrow's native file), closed
        with the spool: a failed day's exception holds the writer's frames in a reference cycle, and
        the nameless file's space would stay taken until the garbage collector ran."""
        self._attached.append(closable)
        return closable

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
        for closable in self._attached:
            with contextlib.suppress(Exception):
                closable.close()
        self._attached.clear()
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
