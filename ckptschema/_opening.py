"""Opening a checkpoint: its source, its checked header, and its manifest proven to agree with it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from . import _header, _progress, _shards, _sources
from ._agreement import agreed_manifest
from ._format import MANIFEST_KEY
from ._header import Header
from ._manifest import Manifest, with_metadata
from ._manifest_file import parse_manifest
from ._sources import Source

__all__ = ["PathLike", "display_name", "open_checkpoint", "tracking"]

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def open_checkpoint(
    source: PathLike | bytes | bytearray | memoryview,
) -> Iterator[tuple[Source, Header, Manifest | None]]:
    """The checked header and manifest of a checkpoint: a file, bytes, or a sharded directory or index."""
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
