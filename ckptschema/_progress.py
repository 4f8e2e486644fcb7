"""Progress bars over bytes for long reads and writes, shown only when stderr is a terminal.

`reading` and `writing` wrap a checkpoint source or an output file so that every byte read
or written advances one rich progress bar on stderr. When the caller did not ask for a bar,
or stderr is not a terminal (piped, redirected, captured by pytest, a CI log), they hand
back the object they were given and nothing is drawn. rich is imported only when a bar is
actually shown.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["bar", "enabled", "reading", "tracked_file", "writing"]


def enabled(requested: bool) -> bool:
    """Whether a bar would be drawn: it was requested and stderr is a terminal.

    Example:
        >>> enabled(False)
        False
    """
    stream = sys.stderr
    return bool(requested) and stream is not None and hasattr(stream, "isatty") and stream.isatty()


@contextlib.contextmanager
def bar(total: int, description: str, requested: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar over `total` bytes on stderr; yields ``advance(nbytes)``.

    On leaving the block normally the bar is shown complete. With no terminal (or
    ``requested=False``) ``advance`` does nothing and nothing is printed.

    Example:
        >>> with bar(1000, "loading model.safetensors", requested=True) as advance:
        ...     advance(1000)
    """
    if not enabled(requested):
        yield _ignore
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
    )
    task = progress.add_task(description, total=total)
    with progress:
        yield lambda n: progress.advance(task, n)
        progress.update(task, completed=total)


def _ignore(nbytes: int) -> None:
    """The ``advance`` of a bar that is not shown."""


class _ReadingSource:
    """A checkpoint `Source` that advances a bar by every byte read through it."""

    def __init__(self, source: Any, advance: Callable[[int], None]) -> None:
        self._source = source
        self._advance = advance
        self.name = source.name
        self.size = source.size

    def read_into(self, offset: int, buffer: memoryview) -> None:
        self._source.read_into(offset, buffer)
        self._advance(buffer.nbytes)

    def read_runs(self, runs: Any) -> None:
        self._source.read_runs(runs)
        self._advance(sum(buffer.nbytes for _, buffer in runs))

    def map(self) -> Any:
        return self._source.map()

    def close(self) -> None:
        self._source.close()

    def __getattr__(self, name: str) -> Any:
        """Everything else a source offers (a sharded source's ``locate``) is the wrapped source's."""
        return getattr(self._source, name)


@contextlib.contextmanager
def reading(source: Any, total: int, description: str, requested: bool) -> Iterator[Any]:
    """`source` (a checkpoint `Source`) wrapped so that its reads advance a bar of `total` bytes.

    Example:
        >>> from ckptschema._sources import open_source
        >>> src = open_source(b"12345678")
        >>> with reading(src, src.size, "loading <bytes>", requested=False) as tracked:
        ...     tracked is src
        True
    """
    if not enabled(requested):
        yield source
        return
    with bar(total, description, requested) as advance:
        yield _ReadingSource(source, advance)


class _WritingFile:
    """A seekable binary file whose bar follows the furthest position written."""

    def __init__(self, out: Any, advance: Callable[[int], None]) -> None:
        self._out = out
        self._advance = advance
        self._start = out.tell()
        self._done = 0

    def write(self, data: Any) -> int:
        n = self._out.write(data)
        position = self._out.tell() - self._start
        if position > self._done:  # a header rewritten in place is not progress
            self._advance(position - self._done)
            self._done = position
        return n

    def tell(self) -> int:
        return self._out.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._out.seek(offset, whence)

    def flush(self) -> None:
        self._out.flush()

    def fileno(self) -> int:
        return self._out.fileno()


def tracked_file(out: Any, advance: Callable[[int], None]) -> Any:
    """`out` (a seekable binary file) advancing a `bar` by what is written; itself when no bar is shown."""
    return out if advance is _ignore else _WritingFile(out, advance)


@contextlib.contextmanager
def writing(out: Any, total: int, description: str, requested: bool) -> Iterator[Any]:
    """`out` (a seekable binary file) wrapped so that what is written advances a bar of `total` bytes.

    Example:
        >>> import io
        >>> buffer = io.BytesIO()
        >>> with writing(buffer, 3, "saving <bytes>", requested=False) as out:
        ...     out.write(b"abc")
        3
    """
    if not enabled(requested):
        yield out
        return
    with bar(total, description, requested) as advance:
        yield _WritingFile(out, advance)
