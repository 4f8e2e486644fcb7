"""Sharded checkpoints: safetensors shards plus an index in the Hugging Face layout.

A sharded checkpoint is a directory holding ``model.safetensors.index.json`` and shards
named ``model-00001-of-00003-<token>.safetensors``. Each shard is a plain safetensors file
that any safetensors reader opens; the index maps every tensor key to its shard
(``weight_map``) and carries ``metadata["total_size"]`` and, as a JSON string, the
manifest (``metadata["ckptschema"]``). The token is new on every save, so a save never
writes over a shard the current index points to: the index is replaced last, atomically,
and only then are the shards it no longer names removed. A crash at any instant leaves
the old index with its shards or the new one with its; what a killed save leaves (shards no
index names, temporary files) the next save removes (`remove_leftovers`).

Reading trusts nothing, on disk and behind a URL alike: the index (found and checked by
`_shard_index`) is strict JSON of at most `MAX_HEADER_BYTES`; every shard name must be a
plain file name inside the index's folder, of a regular file that is not a symbolic link
(opened with ``O_NOFOLLOW``) or of one object (a `RemoteSource`); every tensor must sit in
the shard the index names, and no shard may hold a tensor the index does not list. A load
holds at most `MAX_OPEN_SHARDS` shard files open at once (`ShardedSource`), and reads one
version: a shard replaced or removed midway, or gone because a save replaced the index, is
a `CheckpointChangedError`, on which the load starts over (`_opening.one_version`).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from . import _atomic, _header, _remote
from ._errors import CheckpointChangedError, CheckpointNotFoundError, CkptSchemaError, FormatError
from ._format import MANIFEST_KEY
from ._header import Entry, Header
from ._shard_index import INDEX_NAME, folder_of, index_path, is_sharded, join, read_index_bytes
from ._shard_index import read_index as _read_index
from ._sources import FileSource, Source

__all__ = [
    "INDEX_NAME",
    "ShardedSource",
    "index_path",
    "is_sharded",
    "open_sharded",
    "parse_size",
    "plan_shards",
    "write_index",
]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"2GB"`` (10**9 bytes) or ``"512MiB"`` (2**20).

    Example:
        >>> parse_size("2GB"), parse_size("1.5KiB"), parse_size(4096)
        (2000000000, 1536, 4096)
    """
    number: float
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, 1
    else:
        match = _SIZE.fullmatch(value) if isinstance(value, str) else None
        unit_name = match.group(2).upper() if match else None
        if match is None or unit_name not in _UNITS:
            raise CkptSchemaError(f"max_shard_size={value!r} is not a size; use bytes or a string such as '2GB'")
        number, unit = float(match.group(1)), _UNITS[unit_name]
    size = int(number * unit)
    if size <= 0:
        raise CkptSchemaError(f"max_shard_size={value!r} must be a positive size")
    return size


def plan_shards(sizes: Sequence[int], max_bytes: int) -> list[range]:
    """Consecutive groups of tensors, each at most `max_bytes` unless one tensor alone is larger.

    Example:
        >>> [list(r) for r in plan_shards([4, 4, 4, 10, 1], 8)]
        [[0, 1], [2], [3], [4]]
    """
    groups: list[range] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > max_bytes:
            groups.append(range(start, i))
            start, total = i, 0
        total += size
    groups.append(range(start, len(sizes)))
    return groups


def shard_name(number: int, count: int, token: str) -> str:
    return f"model-{number:05d}-of-{count:05d}-{token}.safetensors"


def new_token(names: Iterable[str]) -> str:
    """A shard token that no shard among `names` (a directory's files) has: a new one on every save."""
    taken = {match.group(3) for match in map(_OWN_SHARD.fullmatch, names) if match}
    while (token := secrets.token_hex(4)) in taken:  # pragma: no cover - one chance in 2**32 a shard
        pass
    return token


#: Most shard files a sharded load holds open at once (SPEC §5: a small constant).
MAX_OPEN_SHARDS = 8

_RETRY = "load again once no other process writes the checkpoint"


class ShardedSource:
    """The shards read as one address space: shard ``i`` at ``[base[i], base[i] + size[i])``.

    Local shards are opened when read and closed again, at most `MAX_OPEN_SHARDS` at a
    time (the least recently used is closed first), so a checkpoint of thousands of shards
    loads within any open-file limit. Each open refuses what is not a regular file and
    follows no link; a shard opened again must be the very file first opened (same
    device, inode, size and modification time). Remote shards hold no file: each stays
    the `RemoteSource` first opened, pinned to the version it first saw, until `close`.

    A shard replaced or removed midway, or gone or unreadable while the index names other
    shards now, raises `CheckpointChangedError` (the load then starts over, `_opening`).
    A shard that is missing or broken while the index is the one read stays the error it is.
    """

    def __init__(self, name: str, paths: list[str], index_bytes: bytes) -> None:
        self.name = name
        self.paths = paths
        self.bases: list[int] = []
        self.size = 0
        self._index_bytes = index_bytes
        self._identity: list[tuple[int, ...]] = []
        self._open: collections.OrderedDict[int, Source] = collections.OrderedDict()
        self._pinned: dict[int, Source] = {}
        self._users = [0] * len(paths)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def shard(self, i: int) -> Iterator[Source]:
        """Shard `i`, open while the block runs; the first call for each shard must come in order."""
        with self._lock:
            source = self._pinned.get(i) or self._open.pop(i, None)
            if source is None:
                source = self._reopen(i)
            if i not in self._pinned:
                self._open[i] = source
            self._users[i] += 1
        try:
            yield source
        finally:
            with self._lock:
                self._users[i] -= 1
                self._close_unused(MAX_OPEN_SHARDS)

    def _reopen(self, i: int) -> Source:
        first = i == len(self._identity)
        try:
            source = _open_shard(self.paths[i])
        except FormatError as e:
            if not first and isinstance(e, CheckpointNotFoundError):
                removed = f"{self.paths[i]}: the shard was removed while being loaded; {_RETRY}"
                raise CheckpointChangedError(removed) from e
            if (changed := self.changed_by_save(e)) is not None:
                raise changed from e
            raise
        identity = getattr(source, "identity", ())
        if first:
            self._identity.append(identity)
            self.bases.append(self.size)
            self.size += source.size
            if not isinstance(source, FileSource):
                self._pinned[i] = source
        elif identity != self._identity[i]:
            source.close()
            replaced = f"{self.paths[i]}: the shard was replaced or changed while being loaded; {_RETRY}"
            raise CheckpointChangedError(replaced)
        return source

    def changed_by_save(self, error: FormatError) -> CheckpointChangedError | None:
        """What `error`, met reading a shard, means if the index is no longer the one read: a save
        replaced the checkpoint midway (None while the index is unchanged: `error` is what it says)."""
        if isinstance(error, CheckpointChangedError):
            return None
        try:
            changed = read_index_bytes(self.name) != self._index_bytes
        except CkptSchemaError:  # gone or unreadable now: reading it again tells what it is
            changed = True
        if not changed:
            return None
        return CheckpointChangedError(
            f"{self.name}: the index changed while the checkpoint was loaded ({error}); {_RETRY}"
        )

    def _close_unused(self, keep: int) -> None:
        for i in [i for i in self._open if self._users[i] == 0][: max(len(self._open) - keep, 0)]:
            self._open.pop(i).close()

    def locate(self, offset: int) -> tuple[str, int]:
        """The shard file holding byte `offset` of the address space, and the offset in it."""
        i = bisect.bisect_right(self.bases, offset) - 1
        return self.paths[i], offset - self.bases[i]

    def read_into(self, offset: int, buffer: memoryview) -> None:
        i = bisect.bisect_right(self.bases, offset) - 1
        start = offset - self.bases[i]
        with self.shard(i) as shard:
            if start + buffer.nbytes > shard.size:  # pragma: no cover - entries are checked to lie within their shard
                raise FormatError(f"{shard.name}: a read runs past the end of the shard")
            try:
                shard.read_into(start, buffer)
            except FormatError as e:
                if (changed := self.changed_by_save(e)) is not None:
                    raise changed from e
                raise

    def read_runs(self, runs: Sequence[tuple[int, memoryview]]) -> None:
        """Fill each buffer from its offset, one `FileSource.read_runs` batch per shard (no tensor crosses shards)."""
        done = 0
        while done < len(runs):
            i = bisect.bisect_right(self.bases, runs[done][0]) - 1
            end = self.bases[i + 1] if i + 1 < len(self.bases) else self.size
            stop = done
            while stop < len(runs) and runs[stop][0] < end:
                stop += 1
            with self.shard(i) as shard:
                if runs[stop - 1][0] + runs[stop - 1][1].nbytes > end:  # pragma: no cover - entries lie in their shard
                    raise FormatError(f"{shard.name}: a read runs past the end of the shard")
                shard.read_runs([(offset - self.bases[i], buffer) for offset, buffer in runs[done:stop]])
            done = stop

    def map(self) -> Any:
        raise CkptSchemaError(f"{self.name}: mmap=True is not supported for sharded checkpoints")

    def close(self) -> None:
        with self._lock:
            self._close_unused(0)
            for source in self._pinned.values():
                source.close()
            self._pinned.clear()


def open_sharded(path: str | os.PathLike[str]) -> tuple[ShardedSource, Header]:
    """Open a sharded checkpoint (a directory or index, a path or a URL): check its index and every shard's header.

    Returns the shards as one `ShardedSource` and one `Header` whose entries point into it;
    its metadata holds the first shard's user metadata and the manifest text (if the index has one).

    Raises:
        CheckpointNotFoundError: naming the directory, index or shard that is missing.
        CheckpointChangedError: when a save replaced the checkpoint while its shards were opened.
        FormatError: naming the index or shard and what is wrong.

    Example:
        >>> import numpy as np, ckptschema
        >>> _ = ckptschema.save(tmp_path / "ckpt", {"w": np.arange(3.0)}, max_shard_size="1MB")
        >>> source, header = open_sharded(tmp_path / "ckpt")
        >>> sorted(header.entries), len(source.paths)
        (['w'], 1)
        >>> source.close()
    """
    where = index_path(path)
    raw = read_index_bytes(where)
    metadata, weight_map = _read_index(where, raw)
    names = list(dict.fromkeys(weight_map.values()))
    source = ShardedSource(where, [join(folder_of(where), name) for name in names], raw)
    try:
        entries: dict[str, Entry] = {}
        user_metadata: dict[str, str] = {}
        try:
            for i, name in enumerate(names):
                with source.shard(i) as shard:
                    header = _header.read_header(shard)
                own = _shard_entries(shard.name, header, weight_map, name, source.bases[i], entries)
                user_metadata = user_metadata or own
            missing = [key for key in weight_map if key not in entries]
            if missing:
                raise FormatError(f"{where}: tensor {missing[0]!r} is not in its shard {weight_map[missing[0]]!r}")
        except FormatError as e:
            if (changed := source.changed_by_save(e)) is not None:
                raise changed from e
            raise
    except BaseException:
        source.close()
        raise
    text = metadata.get(MANIFEST_KEY)
    if text is not None and not isinstance(text, str):
        source.close()
        raise FormatError(f"{where}: metadata['{MANIFEST_KEY}'] must be the manifest as a JSON string")
    return source, Header(entries, user_metadata if text is None else {**user_metadata, MANIFEST_KEY: text}, 0)


def _shard_entries(
    shard: str, header: Header, weight_map: dict[str, str], name: str, base: int, entries: dict[str, Entry]
) -> dict[str, str]:
    """Add a shard's entries, moved to its place in the address space; return its user metadata."""
    if MANIFEST_KEY in header.metadata:
        raise FormatError(f"{shard}: a shard must not hold a manifest of its own")
    for key, entry in header.entries.items():
        listed = weight_map.get(key)
        if listed != name:
            place = f"in shard {listed!r}" if listed is not None else "nowhere"
            raise FormatError(f"{shard}: holds tensor {key!r}, which the index places {place}")
        entries[key] = entry._replace(start=entry.start + base, end=entry.end + base)
    return header.metadata


def _open_shard(path: str) -> Source:
    if _remote.is_url(path):
        return _remote.RemoteSource(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError as e:
        raise CheckpointNotFoundError(f"{path}: shard cannot be opened ({e.strerror or e})", path) from e
    except OSError as e:
        raise FormatError(f"{path}: shard cannot be opened ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path}: a shard must be a regular file (not a link, pipe or device)")
    return FileSource(path, follow_symlinks=False)


def write_index(out: Any, manifest_text: str, total_size: int, weight_map: dict[str, str]) -> None:
    """Write an index (indented, like the Hugging Face tools write theirs)."""
    index = {"metadata": {"total_size": total_size, MANIFEST_KEY: manifest_text}, "weight_map": weight_map}
    out.write((json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


#: The names `save` gives shards (number, count, token); only files named so are ever removed.
_OWN_SHARD = re.compile(r"model-(\d{5})-of-(\d{5})-([0-9a-f]{8})\.safetensors")
#: The temporary names of shards and of the index while a save writes them.
_OWN_TEMP = re.compile(
    r"\.(?:model-\d{5}-of-\d{5}-[0-9a-f]{8}\.safetensors|model\.safetensors\.index\.json)\.[0-9a-f]{12}\.tmp"
)


def own_shards_of(index: str) -> set[str]:
    """The shards a valid index at `index` names that a ckptschema save wrote (none if it is not valid).

    Other names, even plain ones, are never returned: an index cannot get a save to
    remove files it did not write.
    """
    try:
        names = set(_read_index(index)[1].values())
    except FormatError:
        return set()
    return {name for name in names if _OWN_SHARD.fullmatch(name)}


def remove_leftovers(directory: str) -> None:
    """Remove what killed saves left in a sharded checkpoint's directory; never a running save's files.

    Temporary files stay locked by their writer (`_atomic.atomic_file`), and a running save
    holds the lock of its first shard until its index is in place: the temporary files that
    can be locked, and the shards that no index names whose first shard can be locked (or
    is gone), are leftovers. Shards are removed last to first, so a removal cut short
    leaves a group that is still recognised. Only names a save gives are ever touched, and
    no shard at all while an index exists that cannot be read.
    """
    index = os.path.join(directory, INDEX_NAME)
    groups: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for name in os.listdir(directory):
        if _OWN_TEMP.fullmatch(name):
            _atomic.remove_if_stale(os.path.join(directory, name))
        elif match := _OWN_SHARD.fullmatch(name):
            groups[match.group(3)].append((int(match.group(1)), name))
    named = _named_by(index)
    for shards in groups.values():
        if named is None or any(name in named for _, name in shards):
            continue
        shards.sort(reverse=True)
        fd = _atomic.lock_if_unused(os.path.join(directory, shards[-1][1])) if shards[-1][0] == 1 else None
        if shards[-1][0] == 1 and fd is None:
            continue  # a save still running
        try:
            named = _named_by(index)
            if named is None or any(name in named for _, name in shards):  # its save finished meanwhile
                continue
            for _, name in shards:
                path = os.path.join(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        os.unlink(path)
        finally:
            if fd is not None:
                os.close(fd)


def _named_by(index: str) -> set[str] | None:
    """The shards the index names: none if there is no index, None if it cannot be read."""
    if not os.path.lexists(index):
        return set()
    try:
        return set(_read_index(index)[1].values())
    except FormatError:
        return None
