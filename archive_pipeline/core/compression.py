"""Streaming compressors for the text formats; each finishes its frame without closing the sink.

All of them compress in native code that releases the GIL, so compression overlaps with the
thread that reads COPY output. zstd additionally runs in its own worker thread (``threads=1``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import pyarrow as pa
import zstandard


class StreamWriter(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


@dataclass(frozen=True)
class Codec:
    name: str
    extension: str  # appended to the format's extension: "zst" -> events.jsonl.zst
    content_encoding: str | None  # HTTP Content-Encoding of the object, where one is registered
    default_level: int | None

    def open(self, sink: BinaryIO, level: int | None = None) -> _Compressing:
        return _Compressing(self, sink, self.default_level if level is None else level)


class _Unclosable(io.RawIOBase):
    """Lets Arrow's stream close its end without closing ours."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return self._sink.write(data)

    def close(self) -> None:
        pass


# zstd's "ultra" levels (20-22) size their window and match tables for the whole input when its size is unknown, as
# ours is: level 22 took ~700 MB per stream. Above level 19 they keep level 19's window (8 MiB) with tables of 4M
# entries (~50 MB in all), where the extra search of those levels still helps; levels up to 19 are zstd's own.
_ULTRA = 20
_ULTRA_LOGS = {"window_log": 23, "chain_log": 22, "hash_log": 22}


def zstd_parameters(level: int | None) -> zstandard.ZstdCompressionParameters:
    """The compressor's parameters for ``level`` (zstd's default where None), memory bounded at every level."""
    level = 3 if level is None else level
    caps = _ULTRA_LOGS if level >= _ULTRA else {}
    return zstandard.ZstdCompressionParameters.from_level(level, threads=1, write_checksum=1, **caps)


class _Compressing:
    """Context manager: a writer that compresses into ``sink`` and ends the frame on exit."""

    def __init__(self, codec: Codec, sink: BinaryIO, level: int | None) -> None:
        self.codec, self.sink, self.level = codec, sink, level
        self._writer = None

    def __enter__(self) -> StreamWriter:
        name = self.codec.name
        if name == "zstd":
            compressor = zstandard.ZstdCompressor(compression_params=zstd_parameters(self.level))
            self._writer = compressor.stream_writer(self.sink, closefd=False, write_size=1 << 20)
        elif name == "gzip":
            self._writer = gzip.GzipFile(fileobj=self.sink, mode="wb", compresslevel=self.level, mtime=0)
        elif name == "lz4":
            self._writer = pa.CompressedOutputStream(pa.PythonFile(_Unclosable(self.sink), mode="w"), "lz4")
        else:
            self._writer = None
            return self.sink
        return self._writer

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is None:
            return
        if exc_type is None:
            self._writer.close()  # writes the frame trailer (checksum) into the sink
            return
        # A failed run: end the writer now, into the doomed temp file, so it is not left to the garbage
        # collector, whose close() would write the trailer into whatever then uses that file descriptor.
        with contextlib.suppress(Exception):
            self._writer.close()


CODECS: dict[str, Codec] = {
    "zstd": Codec("zstd", "zst", "zstd", 3),
    "gzip": Codec("gzip", "gz", "gzip", 6),
    "lz4": Codec("lz4", "lz4", None, None),
    "none": Codec("none", "", None, None),
}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown compression {name!r}; choose one of {sorted(CODECS)}") from None
