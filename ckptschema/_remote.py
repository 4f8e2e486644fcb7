"""Checkpoints behind fsspec URLs (``s3://``, ``gs://``, ``memory://``, ...), read by byte range.

Reading a remote checkpoint fetches the header (two ranged requests) and then only the byte
ranges of the tensors asked for, coalesced like local reads (a large load in 8 MB ranges
on several threads). Connection settings come from fsspec's own configuration (for S3:
the usual AWS variables, and ``fsspec.config.conf["s3"]`` or ``FSSPEC_S3_*`` variables for
an endpoint).

Saving hashes the tensors first, then streams the final header and the tensors in one
sequential write: object stores cannot seek back. On S3 an object appears whole when the
upload completes; a save that fails is discarded, and the previous object stays.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _digests, _format
from ._errors import CheckpointNotFoundError, CkptSchemaError, FormatError

__all__ = ["RemoteSource", "is_url", "write"]


def is_url(path: Any) -> bool:
    """Whether `path` is an fsspec URL rather than a local path."""
    return isinstance(path, str) and "://" in path


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as e:
        raise FormatError(f"{url}: remote URLs need fsspec ({e}); install it with: pip install 'ckptschema[s3]'") from e
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # an unknown protocol, or its package missing
        raise FormatError(f"{url}: {e}") from e


class RemoteSource:
    """A checkpoint behind an fsspec URL; every read is one ranged request."""

    def __init__(self, url: str) -> None:
        self.name = url
        self.fs, self.path = _filesystem(url)
        try:
            info = self.fs.info(self.path)
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{url}: cannot open (no such object)", url) from None
        except Exception as e:  # network and permission errors of every store
            raise FormatError(f"{url}: cannot open ({type(e).__name__}: {e})") from e
        if info.get("type") != "file":
            raise FormatError(f"{url}: not a file; checkpoints are read from files only")
        self.size = int(info["size"])

    def read_into(self, offset: int, buffer: memoryview) -> None:
        view = buffer.cast("B") if buffer.format != "B" else buffer
        end = offset + len(view)
        try:
            data = self.fs.cat_file(self.path, start=offset, end=end)
        except Exception as e:  # network errors of every store
            raise FormatError(f"{self.name}: read failed at byte {offset} ({type(e).__name__}: {e})") from e
        if len(data) != len(view):
            raise FormatError(
                f"{self.name}: object ended at byte {offset + len(data)}, expected {end} "
                f"(was it replaced while being read?)"
            )
        view[:] = data

    def map(self) -> Any:
        raise CkptSchemaError(f"{self.name}: mmap=True needs a local file")

    def close(self) -> None:
        """Nothing to release: every read is its own request."""

    def read_runs(self, runs: Sequence[tuple[int, memoryview]]) -> None:
        for offset, buffer in runs:
            self.read_into(offset, buffer)


def write(url: str, header_for: Any, arrays: list[np.ndarray], checksum: str | None) -> list[str | None]:
    """Hash `arrays`, then write ``header_for(digests)`` and the arrays to `url` in one pass.

    Where the store's files can discard an unfinished upload (S3), the object is written in
    place: it appears only when complete. Elsewhere it is written under a temporary name
    beside it and moved over it when complete.
    """
    fs, path = _filesystem(url)
    if checksum is not None:
        with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            digests: list[str | None] = list(pool.map(_digests.digest, arrays, itertools.repeat(checksum)))
    else:
        digests = [None] * len(arrays)
    header = header_for(digests)
    temporary = f"{path}.{secrets.token_hex(6)}.tmp"
    out = fs.open(temporary, "wb")
    final: str | None = path
    if _discards(out):  # write in place: the store completes the object only on success
        _discard(out)
        out, final = fs.open(path, "wb"), None
    try:
        out.write(header)
        for array in arrays:
            out.write(_format.as_bytes(array))
    except BaseException:
        if final is None:
            _discard(out)
        else:
            out.close()
            fs.rm(temporary)
        raise
    out.close()
    if final is not None:
        fs.mv(temporary, final)
    return digests


def _discard(out: Any) -> None:
    out.discard()
    out.closed = True  # so that closing it, or garbage collection, does not complete the upload


def _discards(out: Any) -> bool:
    from fsspec.spec import AbstractBufferedFile

    return isinstance(out, AbstractBufferedFile) and type(out).discard is not AbstractBufferedFile.discard
