"""Sharded checkpoints: safetensors shards plus an index in the Hugging Face layout.

A sharded checkpoint is a directory holding ``model.safetensors.index.json`` and shards
named ``model-00001-of-00003-<token>.safetensors``. Each shard is a plain safetensors file
that any safetensors reader opens; the index maps every tensor key to its shard
(``weight_map``) and carries ``metadata["total_size"]`` and, as a JSON string, the
manifest (``metadata["ckptschema"]``). The token is new on every save, so a save never
writes over a shard the current index points to: the index is replaced last, atomically,
and only then are the shards it no longer names removed. A crash at any instant leaves
the old index with its shards or the new one with its.

Reading trusts nothing: the index is strict JSON of at most `MAX_HEADER_BYTES`; every
shard name must be a plain file name inside the index's directory (no path separators,
``.``/``..``, NUL bytes or URLs) of a regular file that is not a symbolic link (and is
opened with ``O_NOFOLLOW``); every tensor must sit in the shard the index names, and no
shard may hold a tensor the index does not list.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import stat
from collections.abc import Sequence
from typing import Any

from . import _remote, _storage
from ._errors import CkptSchemaError, FormatError
from ._limits import LimitError, check_header_bytes, check_tensors
from ._manifest import strict_json
from ._storage import MANIFEST_KEY, Entry, FileSource, Header

__all__ = ["INDEX_NAME", "ShardedSource", "is_sharded", "open_sharded", "parse_size", "plan_shards", "write_index"]

INDEX_NAME = "model.safetensors.index.json"
_INDEX_SUFFIX = ".safetensors.index.json"

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


def is_sharded(path: Any) -> bool:
    """Whether `path` names a sharded checkpoint: a directory, or an index file."""
    if not isinstance(path, (str, os.PathLike)) or _remote.is_url(path):
        return False
    return os.path.isdir(path) or os.fspath(path).endswith(".index.json")


def index_path(path: str | os.PathLike[str]) -> str:
    """The index of a sharded checkpoint given as its directory or its index."""
    where = os.fspath(path)
    if not os.path.isdir(where):
        return where
    if os.path.exists(os.path.join(where, INDEX_NAME)):
        return os.path.join(where, INDEX_NAME)
    found = sorted(name for name in os.listdir(where) if name.endswith(_INDEX_SUFFIX))
    if len(found) != 1:
        what = f"several indexes ({', '.join(found)})" if found else f"no *{_INDEX_SUFFIX} index"
        raise FormatError(f"{where}: a directory is read as a sharded checkpoint, but it has {what}")
    return os.path.join(where, found[0])


class ShardedSource:
    """The shards read as one address space: shard ``i`` at ``[base[i], base[i] + size[i])``."""

    def __init__(self, name: str, shards: list[FileSource]) -> None:
        self.name = name
        self.shards = shards
        self.bases = []
        total = 0
        for shard in shards:
            self.bases.append(total)
            total += shard.size
        self.size = total

    def read_into(self, offset: int, buffer: memoryview) -> None:
        i = bisect.bisect_right(self.bases, offset) - 1
        shard = self.shards[i]
        start = offset - self.bases[i]
        if start + buffer.nbytes > shard.size:  # pragma: no cover - entries are checked to lie within their shard
            raise FormatError(f"{shard.name}: a read runs past the end of the shard")
        shard.read_into(start, buffer)

    def map(self) -> Any:
        raise CkptSchemaError(f"{self.name}: mmap=True is not supported for sharded checkpoints")

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


def _read_index(where: str) -> tuple[dict[str, Any], dict[str, str]]:
    source = FileSource(where)  # refuses what is not a regular file
    try:
        check_header_bytes(source.size, "index")
        raw = _storage.read_whole(source)
    except LimitError as e:
        raise FormatError(f"{where}: {e}") from None
    finally:
        source.close()
    try:
        index = strict_json(raw.decode("utf-8"), "index", max_objects=3)
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: index is not UTF-8 ({e.reason})") from e
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from e
    if not isinstance(index, dict) or set(index) != {"metadata", "weight_map"}:
        found = sorted(index) if isinstance(index, dict) else type(index).__name__
        raise FormatError(f"{where}: an index must have exactly 'metadata' and 'weight_map' (found {found})")
    metadata, weight_map = index["metadata"], index["weight_map"]
    if not isinstance(metadata, dict) or not isinstance(weight_map, dict):
        raise FormatError(f"{where}: 'metadata' and 'weight_map' must be JSON objects")
    try:
        check_tensors(len(weight_map))
    except LimitError as e:
        raise FormatError(f"{where}: {e}") from None
    for key, name in weight_map.items():
        if not isinstance(name, str) or not _plain_name(name):
            raise FormatError(
                f"{where}: tensor {key!r} is mapped to {name!r}; shards must be plain file names in the index's folder"
            )
    return metadata, weight_map


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0") and ":" not in name


def open_sharded(path: str | os.PathLike[str]) -> tuple[ShardedSource, Header]:
    """Open a sharded checkpoint: check its index and every shard's header against it.

    Returns the shards as one `ShardedSource` and one `Header` whose entries point into it;
    its metadata holds the manifest text (if the index has one).

    Raises:
        FormatError: naming the index or shard and what is wrong.
    """
    where = index_path(path)
    metadata, weight_map = _read_index(where)
    directory = os.path.dirname(os.path.abspath(where))
    names = list(dict.fromkeys(weight_map.values()))
    shards: list[FileSource] = []
    try:
        for name in names:
            shards.append(_open_shard(os.path.join(directory, name)))
        source = ShardedSource(where, shards)
        entries: dict[str, Entry] = {}
        for name, shard, base in zip(names, shards, source.bases):
            header = _storage.read_header(shard)
            if MANIFEST_KEY in header.metadata:
                raise FormatError(f"{shard.name}: a shard must not hold a manifest of its own")
            for key, entry in header.entries.items():
                listed = weight_map.get(key)
                if listed != name:
                    place = f"in shard {listed!r}" if listed is not None else "nowhere"
                    raise FormatError(f"{shard.name}: holds tensor {key!r}, which the index places {place}")
                entries[key] = Entry(entry.code, entry.shape, entry.start + base, entry.end + base)
        missing = [key for key in weight_map if key not in entries]
        if missing:
            raise FormatError(f"{where}: tensor {missing[0]!r} is not in its shard {weight_map[missing[0]]!r}")
    except BaseException:
        for shard in shards:
            shard.close()
        raise
    text = metadata.get(MANIFEST_KEY)
    if text is not None and not isinstance(text, str):
        source.close()
        raise FormatError(f"{where}: metadata['{MANIFEST_KEY}'] must be the manifest as a JSON string")
    return source, Header(entries, {} if text is None else {MANIFEST_KEY: text}, 0)


def _open_shard(path: str) -> FileSource:
    try:
        st = os.lstat(path)
    except OSError as e:
        raise FormatError(f"{path}: shard cannot be opened ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path}: a shard must be a regular file (not a link, pipe or device)")
    return FileSource(path, follow_symlinks=False)


def write_index(out: Any, manifest_text: str, total_size: int, weight_map: dict[str, str]) -> None:
    """Write an index (indented, like the Hugging Face tools write theirs)."""
    index = {"metadata": {"total_size": total_size, MANIFEST_KEY: manifest_text}, "weight_map": weight_map}
    out.write((json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


#: The names `save` gives shards; only files named so are ever removed.
_OWN_SHARD = re.compile(r"model-\d{5}-of-\d{5}-[0-9a-f]{8}\.safetensors")


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
