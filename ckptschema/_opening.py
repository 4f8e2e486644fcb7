"""Opening a checkpoint: its source, its checked header, and its manifest proven to agree with it.

`one_version` is the one place where a read that found its checkpoint replaced midway
starts over: every public entry point that reads a checkpoint (`load`, `read_manifest`,
`validate`, and through them the command line) runs under it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from . import _header, _progress, _shards, _sources
from ._agreement import agreed_manifest
from ._errors import CheckpointChangedError
from ._format import MANIFEST_KEY
from ._header import Header
from ._manifest import Manifest, with_metadata
from ._manifest_file import parse_manifest
from ._sources import Source

__all__ = ["READ_ATTEMPTS", "PathLike", "display_name", "one_version", "open_checkpoint", "tracking"]

PathLike = str | os.PathLike[str]

F = TypeVar("F", bound=Callable[..., Any])

#: How many times one call reads a checkpoint that saves keep replacing under it before
#: it gives up with `CheckpointChangedError` (the first read and three starts over).
READ_ATTEMPTS = 4


def one_version(fn: F) -> F:
    """Run `fn` (whose first argument is the checkpoint) again from the start when it finds
    the checkpoint replaced midway, at most `READ_ATTEMPTS` times in all.

    A read that meets a `CheckpointChangedError` (a shard replaced or removed, an index
    that names other shards now, an object whose version changed) has read nothing it
    returns yet: starting over reads the new version whole, so a result never mixes two
    versions and a good checkpoint is never reported corrupt.

    Example:
        >>> attempts = []
        >>> @one_version
        ... def read(path):
        ...     attempts.append(path)
        ...     if len(attempts) < 3:
        ...         raise CheckpointChangedError(f"{path}: replaced")
        ...     return "read"
        >>> read("ckpt"), len(attempts)
        ('read', 3)
    """

    first = next(iter(inspect.signature(fn).parameters))

    @functools.wraps(fn)
    def reading(*args: Any, **kwargs: Any) -> Any:
        for _ in range(READ_ATTEMPTS - 1):
            try:
                return fn(*args, **kwargs)
            except CheckpointChangedError:
                continue
        try:
            return fn(*args, **kwargs)
        except CheckpointChangedError as e:
            source = args[0] if args else kwargs.get(first)
            where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<bytes>"
            raise CheckpointChangedError(
                f"{where}: the checkpoint was replaced while being read, {READ_ATTEMPTS} times in a row; read it "
                f"when saves to it are further apart, or from a copy (last: {e})"
            ) from e

    return cast(F, reading)


@contextlib.contextmanager
def open_checkpoint(
    source: PathLike | bytes | bytearray | memoryview,
) -> Iterator[tuple[Source, Header, Manifest | None]]:
    """The checked header and manifest of a checkpoint: a file, an object, bytes, or a sharded directory or index
    (on disk or behind a URL)."""
    src: Source
    if _shards.is_sharded(source):
        src, header = _shards.open_sharded(source)  # type: ignore[arg-type]
    else:
        src = _sources.open_source(source)
        try:
            header = _header.read_header(src)
        except BaseException:
            src.close()
            raise
    try:
        text = header.manifest_text
        manifest = None if text is None else agreed_manifest(parse_manifest(text, src.name), header, src.name)
        if manifest is not None:
            with_metadata(manifest, {k: v for k, v in header.metadata.items() if k != MANIFEST_KEY})
        yield src, header, manifest
    finally:
        src.close()


def display_name(path: PathLike) -> str:
    """A file's name for a progress bar."""
    where = os.fspath(path)
    return os.path.basename(where.rstrip("/")) or where


def tracking(source: Source, header: Header, verb: str, progress: bool) -> contextlib.AbstractContextManager[Source]:
    """`source`, its tensor reads advancing a progress bar over the data section when asked."""
    return _progress.reading(source, source.size - header.data_start, f"{verb} {display_name(source.name)}", progress)
