"""Where a checkpoint's bytes come from: a local file, an fsspec URL or bytes in memory.

`open_source` is the one place that tells the kinds of location apart. A local path must be
a regular file (a FIFO or device would hang or never end); reads are positioned reads, never
through mmap unless asked (`Source.map`), so a file truncated by another writer gives an
error instead of SIGBUS. `Source.read_runs` fills a batch of buffers at once: a file reads runs
that touch in the file with one vectored ``os.preadv`` (at most ``IOV_MAX`` buffers a call)
and spreads a large batch over a few threads.
"""

from __future__ import annotations

import concurrent.futures
import mmap
import os
import stat
from collections.abc import Sequence
from typing import Any, Protocol

from . import _remote
from ._errors import CheckpointNotFoundError, FormatError

__all__ = ["BytesSource", "FileSource", "Source", "open_source", "read_whole"]


class Source(Protocol):
    """Random access to the bytes of one checkpoint (a local file, an fsspec URL, bytes)."""

    name: str
    size: int

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill `buffer` with the bytes at `offset`, or raise `FormatError`."""

    def read_runs(self, runs: Sequence[tuple[int, memoryview]]) -> None:
        """Fill each buffer with the bytes at its offset, or raise `FormatError`.

        `runs` are ``(offset, buffer)`` pairs sorted by offset that do not overlap; a source
        reads them in as few calls as it can (a file: one ``preadv`` for runs that touch).
        """

    def map(self) -> Any:
        """The whole checkpoint as a read-only buffer, without reading it (a memory map)."""

    def close(self) -> None:
        """Release the underlying file."""


#: Batches of at least this many bytes are read by `_READ_WORKERS` threads, `_READ_CHUNK` at a time.
_PARALLEL_READ = 32 << 20
_READ_CHUNK = 8 << 20
_READ_WORKERS = min(4, os.cpu_count() or 1)


def _iov_max() -> int:
    """Most buffers one ``preadv`` call takes (``IOV_MAX``; POSIX's floor of 16 where it is not told)."""
    try:
        n = os.sysconf("SCIOV_MAX")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - every Linux and macOS tells it
        n = -1
    return n if n > 0 else 16


#: Most buffers one vectored read or write takes.
IOV_MAX = _iov_max()


class FileSource:
    """A local regular file read with positioned reads (``os.preadv``), never mapped."""

    def __init__(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> None:
        self.name = os.fspath(path)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        if not follow_symlinks:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.name, flags)
        except FileNotFoundError as e:
            raise CheckpointNotFoundError(f"{self.name}: cannot open ({e.strerror or e})", self.name) from e
        except OSError as e:
            raise FormatError(f"{self.name}: cannot open ({e.strerror or e})") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FormatError(f"{self.name}: not a regular file; checkpoints are read from regular files only")
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = st.st_size
        #: What identifies the file opened: a later open of the same path must find the same.
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def read_into(self, offset: int, buffer: memoryview) -> None:
        self._preadv(offset, [_bytes_of(buffer)])

    def read_runs(self, runs: Sequence[tuple[int, memoryview]]) -> None:
        """Fill each buffer from its offset: runs exactly adjacent in the file in one ``os.preadv``.

        A batch of at least `_PARALLEL_READ` bytes is cut into calls of at most `_READ_CHUNK`
        bytes spread over `_READ_WORKERS` threads: most of the time of reading a warm file into
        fresh buffers goes to the kernel copying and faulting in the destination pages, and
        ``preadv`` releases the GIL, so the threads do that on every core.
        """
        parallel = _READ_WORKERS > 1 and sum(buffer.nbytes for _, buffer in runs) >= _PARALLEL_READ
        calls = _vectors(runs, _READ_CHUNK if parallel else None)
        if not parallel:
            for offset, buffers in calls:
                self._preadv(offset, buffers)
            return
        with concurrent.futures.ThreadPoolExecutor(_READ_WORKERS) as pool:
            for _ in pool.map(lambda call: self._preadv(*call), calls):
                pass

    def _preadv(self, offset: int, buffers: list[memoryview]) -> None:
        """Fill `buffers`, which lie one after the other in the file from `offset`; short reads are resumed."""
        total = sum(len(b) for b in buffers)
        done, first = 0, 0
        while done < total:
            try:
                n = os.preadv(self.fd, buffers[first : first + IOV_MAX], offset + done)
            except OSError as e:
                raise FormatError(f"{self.name}: read failed at byte {offset + done} ({e.strerror or e})") from e
            if n == 0:
                raise FormatError(
                    f"{self.name}: file ended at byte {offset + done}, expected {total - done} more bytes "
                    f"(was it truncated while being read?)"
                )
            done += n
            while first < len(buffers) and n >= len(buffers[first]):
                n -= len(buffers[first])
                first += 1
            if n:
                buffers = [*buffers[:first], buffers[first][n:], *buffers[first + 1 :]]

    def map(self) -> mmap.mmap:
        """A read-only memory map of the file; it stays valid after `close`."""
        try:
            return mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise FormatError(f"{self.name}: cannot memory-map ({e})") from e

    def close(self) -> None:
        os.close(self.fd)


class BytesSource:
    """A checkpoint held in memory (`ckptschema.loads`)."""

    def __init__(self, data: bytes | bytearray | memoryview, name: str = "<bytes>") -> None:
        self.name = name
        self.owner = data
        self.data = memoryview(data).cast("B")
        self.size = len(self.data)

    def read_into(self, offset: int, buffer: memoryview) -> None:
        view = buffer.cast("B") if buffer.format != "B" else buffer
        end = offset + len(view)
        if end > self.size:
            raise FormatError(f"{self.name}: data ends at byte {self.size}, expected {end}")
        view[:] = self.data[offset:end]

    def read_runs(self, runs: Sequence[tuple[int, memoryview]]) -> None:
        for offset, buffer in runs:
            self.read_into(offset, buffer)

    def map(self) -> bytes:
        """The checkpoint's bytes as they are (a copy only if they were mutable)."""
        return self.owner if isinstance(self.owner, bytes) else bytes(self.data)

    def close(self) -> None:
        self.data.release()


def _bytes_of(buffer: memoryview) -> memoryview:
    return buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer


def _vectors(runs: Sequence[tuple[int, memoryview]], chunk: int | None) -> list[tuple[int, list[memoryview]]]:
    """`runs` as ``preadv`` calls ``(offset, buffers)``: runs exactly adjacent in the file share a call
    of at most `IOV_MAX` buffers (and, if `chunk` is given, of at most `chunk` bytes, cutting a
    larger buffer into pieces).

    Example:
        >>> a, b, c = (memoryview(bytearray(n)) for n in (2, 3, 4))
        >>> [(offset, [len(v) for v in views]) for offset, views in _vectors([(0, a), (2, b), (9, c)], None)]
        [(0, [2, 3]), (9, [4])]
    """
    calls: list[tuple[int, list[memoryview]]] = []
    buffers: list[memoryview] = []
    end, size = -1, 0
    for offset, buffer in runs:
        view = buffer if buffer.format == "B" and buffer.ndim == 1 else buffer.cast("B")
        n = len(view)
        if n and offset == end and len(buffers) < IOV_MAX and (chunk is None or size + n <= chunk):
            buffers.append(view)  # the common case: the next run of the same call
            size, end = size + n, offset + n
            continue
        while n:
            if offset != end or len(buffers) >= IOV_MAX or (chunk is not None and size >= chunk):
                buffers, size = [], 0
                calls.append((offset, buffers))
            take = n if chunk is None else min(n, chunk - size)
            buffers.append(view if take == n else view[:take])
            view, n, size, offset = view[take:], n - take, size + take, offset + take
            end = offset
    return calls


def open_source(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> Source:
    """A `Source` for a local path, an fsspec URL (``s3://...``) or an in-memory checkpoint."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return BytesSource(source)
    if _remote.is_url(source):
        return _remote.RemoteSource(source)  # type: ignore[arg-type]
    return FileSource(source)


def read_whole(source: Source) -> bytearray:
    """All of a source's bytes (for small files read whole: an index, a msgpack checkpoint)."""
    data = bytearray(source.size)
    source.read_into(0, memoryview(data))
    return data
