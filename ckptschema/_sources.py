"""Where a checkpoint's bytes come from: a local file, an fsspec URL or bytes in memory.

`open_source` is the one place that tells the kinds of location apart. A local path must be
a regular file (a FIFO or device would hang or never end); reads are positioned reads, never
through mmap unless asked (`Source.map`), so a file truncated by another writer gives an
error instead of SIGBUS.
"""

from __future__ import annotations

import mmap
import os
import stat
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

    def map(self) -> Any:
        """The whole checkpoint as a read-only buffer, without reading it (a memory map)."""

    def close(self) -> None:
        """Release the underlying file."""


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
        view = buffer.cast("B") if buffer.format != "B" else buffer
        done = 0
        while done < len(view):
            try:
                n = os.preadv(self.fd, [view[done:]], offset + done)
            except OSError as e:
                raise FormatError(f"{self.name}: read failed at byte {offset + done} ({e.strerror or e})") from e
            if n == 0:
                raise FormatError(
                    f"{self.name}: file ended at byte {offset + done}, expected {len(view) - done} more bytes "
                    f"(was it truncated while being read?)"
                )
            done += n

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

    def map(self) -> bytes:
        """The checkpoint's bytes as they are (a copy only if they were mutable)."""
        return self.owner if isinstance(self.owner, bytes) else bytes(self.data)

    def close(self) -> None:
        self.data.release()


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
