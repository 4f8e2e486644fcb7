"""Checkpoints behind fsspec URLs (``s3://``, ``gs://``, ``memory://``, ...): pinned concurrent reads, whole uploads.

A `RemoteSource` records the object's version when it is opened, and every byte it reads
is of that version (on S3 each GET carries ``IfMatch``/``VersionId``, see `_s3`; on other
stores the version information is compared again after each batch of reads); a read that
finds another version raises `CheckpointChangedError`. Reads are batched (`read_runs`):
runs close together are coalesced, large ranges are cut into 8 MiB requests, and up to
``CKPTSCHEMA_REMOTE_CONCURRENCY`` requests (default 16) are in flight, each with a deadline
of ``CKPTSCHEMA_REMOTE_TIMEOUT`` seconds (default 60). Both variables are read when a remote
operation starts.

`upload` writes a whole object that appears complete or not at all: on S3 our own
concurrent multipart upload, aborted on any failure; elsewhere a temporary name moved over
the target. `write` (a single-file save), `remove` and `listdir` build on the same layer.
Connection settings come from fsspec's own configuration (``fsspec.config.conf["s3"]``,
``FSSPEC_S3_*`` variables, the usual AWS variables).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import itertools
import os
import posixpath
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from . import _digests, _format, _fsio, _s3
from ._errors import CheckpointChangedError, CheckpointNotFoundError, CkptSchemaError, FormatError

__all__ = ["RemoteSource", "is_url", "listdir", "plan_reads", "remove", "upload", "write"]

#: Largest byte range one request reads.
REQUEST_BYTES = 8 << 20
#: Runs are read as one range when the bytes between them are at most this share of the bytes asked.
GAP_SHARE = 0.10
#: ``info`` fields that change when an object is replaced, on the stores that have them.
_VERSION_FIELDS = ("ETag", "VersionId", "generation", "md5Hash", "crc32c", "mtime", "LastModified", "created", "ino")


def is_url(path: Any) -> bool:
    """Whether `path` is an fsspec URL rather than a local path."""
    return isinstance(path, str) and "://" in path


def _version(info: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """What identifies the version of an object on a store without pinned reads: its size and version fields."""
    fields = [(k, str(info[k])) for k in _VERSION_FIELDS if info.get(k) not in (None, "")]
    return (("size", str(info.get("size"))), *fields)


Run = tuple[int, memoryview]


def plan_reads(runs: Sequence[Run], request_bytes: int = REQUEST_BYTES) -> list[tuple[int, int, list[Run]]]:
    """The requests that read `runs` (sorted by offset, not overlapping): ``(start, end, runs in it)``.

    Runs are coalesced into one range while the bytes between them stay within `GAP_SHARE`
    of the bytes asked; ranges are then cut into requests of at most `request_bytes`.

    Example:
        >>> b = memoryview(bytearray(10))
        >>> [(s, e, len(r)) for s, e, r in plan_reads([(0, b), (10, b), (100, b)])]
        [(0, 20, 2), (100, 110, 1)]
    """
    ranges: list[list[Any]] = []  # [start, end, bytes asked, runs]
    for offset, view in runs:
        n = len(view)
        if not n:
            continue
        if ranges:
            last = ranges[-1]
            extra = (last[1] - last[0] - last[2]) + (offset - last[1])
            if offset >= last[1] and extra <= GAP_SHARE * (last[2] + n):
                last[1], last[2] = offset + n, last[2] + n
                last[3].append((offset, view))
                continue
        ranges.append([offset, offset + n, n, [(offset, view)]])
    return [
        (at, min(at + request_bytes, end), members)
        for start, end, _, members in ranges
        for at in range(start, end, request_bytes)
    ]


def _scatter(data: bytes | memoryview, start: int, members: list[Run], offsets: list[int]) -> None:
    """Copy the bytes read at `start` into the parts of `members` they cover."""
    end = start + len(data)
    source = memoryview(data)
    i = max(bisect.bisect_right(offsets, start) - 1, 0)
    while i < len(members) and members[i][0] < end:
        offset, view = members[i]
        lo, hi = max(start, offset), min(end, offset + len(view))
        if lo < hi:
            view[lo - offset : hi - offset] = source[lo - start : hi - start]
        i += 1


class RemoteSource:
    """A checkpoint behind an fsspec URL, pinned to the object version found when it is opened."""

    def __init__(self, url: str) -> None:
        self.name = url
        self.settings = _fsio.settings()
        self.fs, self.path = _fsio.filesystem(url, self.settings.concurrency)
        info = self._info("cannot open")
        if info.get("type") != "file":
            raise FormatError(f"{url}: not a file; checkpoints are read from files only")
        self.size = int(info["size"])
        self._pin = _s3.pin(info) if _s3.is_s3(self.fs) else {}
        self._version = _version(info)
        #: What this source reads: the S3 ETag/VersionId, else the size and version fields.
        self.version = _s3.describe(self._pin) if self._pin else ", ".join(f"{k} {v}" for k, v in self._version)

    def _info(self, doing: str) -> dict[str, Any]:
        self.fs.invalidate_cache(self.path)
        timeout = self.settings.timeout
        try:
            if _fsio.is_async(self.fs):
                return _fsio.run(self.fs, asyncio.wait_for(self.fs._info(self.path), timeout), timeout)
            info: dict[str, Any] = self.fs.info(self.path)
            return info
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{self.name}: {doing} (no such object)", self.name) from None
        except TimeoutError as e:
            raise FormatError(_fsio.no_answer(self.name, timeout, doing)) from e
        except Exception as e:  # network and permission errors of every store
            raise FormatError(f"{self.name}: {doing} ({type(e).__name__}: {e})") from e

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill `buffer` with the bytes at `offset` (a large range in concurrent requests)."""
        self.read_runs([(offset, buffer)])

    def read_runs(self, runs: Sequence[tuple[int, memoryview]]) -> None:
        """Fill each buffer from its offset (`runs` sorted by offset, not overlapping) with few, concurrent requests.

        Raises:
            CheckpointChangedError: the object was replaced since it was opened.
            FormatError: a request failed, or got no answer within the deadline.
        """
        views = [(offset, b.cast("B") if b.format != "B" else b) for offset, b in runs]
        for offset, view in views:
            if offset + len(view) > self.size:
                raise FormatError(f"{self.name}: object ends at byte {self.size}, expected {offset + len(view)}")
        requests = plan_reads(views)
        if not requests:
            return
        if _fsio.is_async(self.fs):
            calls = [self._fetch(start, end, members) for start, end, members in requests]
            _fsio.run(self.fs, _fsio.gather(calls, self.settings.concurrency), self.settings.timeout)
        else:
            self._read_sync(requests)
        if not self._pin:  # no pinned reads on this store: was it the same version all along?
            try:
                now = _version(self._info("cannot check the object"))
            except CheckpointNotFoundError:
                now = ()
            if now != self._version:
                raise CheckpointChangedError(
                    f"{self.name}: the object was replaced while being read (opened as {self.version}); "
                    f"nothing read from it is used: load it again"
                )

    def _fetch(self, start: int, end: int, members: list[Run]) -> Callable[[], Awaitable[None]]:
        offsets = [offset for offset, _ in members]
        timeout = self.settings.timeout

        async def call() -> None:
            try:
                if self._pin:
                    get = _s3.get_range(self.fs, self.path, start, end, self._pin, self.size, self.name)
                else:
                    get = self.fs._cat_file(self.path, start=start, end=end)
                data = await asyncio.wait_for(get, timeout)
            except CkptSchemaError:
                raise
            except FileNotFoundError as e:
                raise self._gone(start) from e
            except TimeoutError as e:
                raise FormatError(_fsio.no_answer(self.name, timeout, f"read failed at byte {start}")) from e
            except Exception as e:  # network errors of every store
                raise FormatError(f"{self.name}: read failed at byte {start} ({type(e).__name__}: {e})") from e
            self._check_length(start, end, data)
            _scatter(data, start, members, offsets)

        return call

    def _gone(self, start: int) -> CheckpointChangedError:
        return CheckpointChangedError(
            f"{self.name}: the object was removed or replaced while being read (gone at byte {start}); "
            f"nothing read from it is used: load it again"
        )

    def _check_length(self, start: int, end: int, data: bytes) -> None:
        if len(data) != end - start:
            raise CheckpointChangedError(
                f"{self.name}: the object was replaced while being read (it ended at byte {start + len(data)}, "
                f"expected {end}); nothing read from it is used: load it again"
            )

    def _read_sync(self, requests: list[tuple[int, int, list[Run]]]) -> None:
        def one(request: tuple[int, int, list[Run]]) -> None:
            start, end, members = request
            try:
                data = self.fs.cat_file(self.path, start=start, end=end)
            except FileNotFoundError as e:
                raise self._gone(start) from e
            except Exception as e:  # errors of every store
                raise FormatError(f"{self.name}: read failed at byte {start} ({type(e).__name__}: {e})") from e
            self._check_length(start, end, data)
            _scatter(data, start, members, [offset for offset, _ in members])

        if len(requests) == 1:
            one(requests[0])
            return
        with concurrent.futures.ThreadPoolExecutor(min(self.settings.concurrency, len(requests))) as pool:
            for _ in pool.map(one, requests):
                pass

    def map(self) -> Any:
        raise CkptSchemaError(f"{self.name}: mmap=True needs a local file")

    def close(self) -> None:
        """Nothing to release: every read is its own request."""


def _bytes_of(piece: bytes | bytearray | memoryview | np.ndarray) -> memoryview:
    if isinstance(piece, np.ndarray):
        return _format.as_bytes(piece)
    view = memoryview(piece)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def upload(url: str, pieces: Sequence[bytes | bytearray | memoryview | np.ndarray]) -> None:
    """Write the concatenation of `pieces` to `url` as one object that appears whole or not at all.

    On S3 it is one PUT (up to 16 MiB) or a multipart upload with up to
    ``CKPTSCHEMA_REMOTE_CONCURRENCY`` parts in flight, aborted on any failure (memory:
    about that many parts at a time); a successful upload also aborts the incomplete uploads
    of the same key that killed saves left. Elsewhere it is written under a temporary name
    beside the target and moved over it (in place when the store's files can discard an
    unfinished upload). Arrays are written as their C-order bytes.

    Raises:
        CkptSchemaError: the store refused or failed a request, or gave no answer within the
            deadline (``cannot write``); the previous object, if any, is unchanged.

    Example:
        >>> url = "memory://bucket/blob.bin"
        >>> upload(url, [b"head", np.arange(2, dtype=np.uint8)])
        >>> import fsspec; fsspec.filesystem("memory").cat_file("/bucket/blob.bin")
        b'head\\x00\\x01'
    """
    config = _fsio.settings()
    fs, path = _fsio.filesystem(url, config.concurrency)
    views = [_bytes_of(piece) for piece in pieces]
    try:
        if _s3.is_s3(fs):
            _fsio.run(fs, _upload_s3(fs, path, views, config), config.timeout)
        else:
            _upload_elsewhere(fs, path, views)
    except CkptSchemaError:
        raise
    except TimeoutError as e:
        raise CkptSchemaError(_fsio.no_answer(url, config.timeout, "cannot write")) from e
    except Exception as e:  # network and permission errors of every store
        raise CkptSchemaError(f"{url}: cannot write ({type(e).__name__}: {e})") from e
    finally:
        fs.invalidate_cache(path)


async def _upload_s3(fs: Any, path: str, views: list[memoryview], config: _fsio.Settings) -> None:
    await _s3.upload(fs, path, views, config.concurrency, config.timeout)
    with contextlib.suppress(Exception):  # best effort (listing may be denied); the lifecycle rule is the backstop
        await _s3.abort_stale(fs, path, config.timeout)


def _upload_elsewhere(fs: Any, path: str, views: list[memoryview]) -> None:
    temporary = f"{path}.{secrets.token_hex(6)}.tmp"
    out = fs.open(temporary, "wb")
    final: str | None = path
    if _fsio.discards(out):  # write in place: the store completes the object only on success
        _fsio.discard(out)
        out, final = fs.open(path, "wb"), None
    try:
        for view in views:
            out.write(view)
    except BaseException:
        if final is None:
            _fsio.discard(out)
        else:
            out.close()
            fs.rm(temporary)
        raise
    out.close()
    if final is not None:
        fs.mv(temporary, final)


def write(url: str, header_for: Any, arrays: list[np.ndarray], checksum: str | None) -> list[str | None]:
    """Hash `arrays`, then `upload` ``header_for(digests)`` followed by the arrays to `url`; the digests."""
    if checksum is not None:
        with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            digests: list[str | None] = list(pool.map(_digests.digest, arrays, itertools.repeat(checksum)))
    else:
        digests = [None] * len(arrays)
    upload(url, [header_for(digests), *arrays])
    return digests


def remove(url: str) -> None:
    """Delete the object at `url`; nothing happens when there is none.

    Raises:
        CkptSchemaError: the store refused or failed the request (``cannot remove``).

    Example:
        >>> upload("memory://bucket/old.bin", [b"x"]); remove("memory://bucket/old.bin")
        >>> remove("memory://bucket/old.bin")  # already gone: fine
    """
    config = _fsio.settings()
    fs, path = _fsio.filesystem(url, config.concurrency)
    try:
        if _s3.is_s3(fs):
            _fsio.run(fs, _s3.delete(fs, path, config.timeout), config.timeout)
        else:
            fs.rm_file(path)
    except FileNotFoundError:
        pass
    except TimeoutError as e:
        raise CkptSchemaError(_fsio.no_answer(url, config.timeout, "cannot remove")) from e
    except Exception as e:  # network and permission errors of every store
        raise CkptSchemaError(f"{url}: cannot remove ({type(e).__name__}: {e})") from e
    finally:
        fs.invalidate_cache(path)


def is_directory(url: str) -> bool:
    """Whether `url` names a "directory" of its store (False when missing or unreachable: a read says why).

    Example:
        >>> upload("memory://tree/leaf.bin", [b"x"])
        >>> is_directory("memory://tree"), is_directory("memory://tree/leaf.bin")
        (True, False)
    """
    config = _fsio.settings()
    fs, path = _fsio.filesystem(url, config.concurrency)
    try:
        if _fsio.is_async(fs):
            info = _fsio.run(fs, asyncio.wait_for(fs._info(path), config.timeout), config.timeout)
        else:
            info = fs.info(path)
    except Exception:  # missing, refused or no answer: the reader of the file reports it
        return False
    return info.get("type") == "directory"


def listdir(url: str) -> list[str]:
    """The names (not paths) of the objects and "directories" right under `url`, sorted; [] when none.

    Raises:
        CkptSchemaError: the store refused or failed the request (``cannot list``).

    Example:
        >>> upload("memory://listed/a.bin", [b"x"]); upload("memory://listed/sub/b.bin", [b"y"])
        >>> listdir("memory://listed")
        ['a.bin', 'sub']
    """
    config = _fsio.settings()
    fs, path = _fsio.filesystem(url, config.concurrency)
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    try:
        if _fsio.is_async(fs):
            entries = _fsio.run(fs, asyncio.wait_for(fs._ls(path, detail=True), config.timeout), config.timeout)
        else:
            entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    except TimeoutError as e:
        raise CkptSchemaError(_fsio.no_answer(url, config.timeout, "cannot list")) from e
    except Exception as e:  # network and permission errors of every store
        raise CkptSchemaError(f"{url}: cannot list ({type(e).__name__}: {e})") from e
    names = {posixpath.basename(str(e["name"]).rstrip("/")) for e in entries}
    return sorted(n for n in names if n and str(fs._strip_protocol(path)).rstrip("/") != n)
