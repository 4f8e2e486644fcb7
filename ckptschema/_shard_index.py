"""Where a sharded checkpoint's index is, and what it says, on disk or behind an fsspec URL.

A sharded checkpoint is named by its directory (``ckpt/``, ``s3://bucket/run/step-100``,
with or without a trailing slash) or by its index (``*.safetensors.index.json``). A
directory holds ``model.safetensors.index.json`` or exactly one other such index. The same
rules hold for both kinds of location: the index is strict JSON of at most
`MAX_HEADER_BYTES`, read whole from a regular file or one object (a `RemoteSource`), and
every shard it names is a plain file name in the index's own folder (no path separators,
``.``/``..``, NUL bytes or URLs; behind a URL no ``?`` or ``#`` either, which would name
another object or version).
"""

from __future__ import annotations

import os
from typing import Any

from . import _remote, _sources
from ._errors import CheckpointNotFoundError, CkptSchemaError, FormatError
from ._json import strict_json
from ._limits import LimitError, check_header_bytes, check_tensors

__all__ = [
    "INDEX_NAME",
    "INDEX_SUFFIX",
    "folder_of",
    "index_path",
    "is_sharded",
    "join",
    "read_index",
    "read_index_bytes",
]

INDEX_NAME = "model.safetensors.index.json"
INDEX_SUFFIX = ".safetensors.index.json"


def is_sharded(path: Any) -> bool:
    """Whether `path` names a sharded checkpoint: a directory or an index, on disk or behind a URL.

    A URL is an index when it ends in ``.index.json``, a directory when it ends in ``/`` or
    the store says it is one (one metadata request); any other URL is a single file.

    Example:
        >>> import numpy as np, ckptschema
        >>> _ = ckptschema.save(tmp_path / "ckpt", {"w": np.zeros(3)}, max_shard_size="1MB")
        >>> is_sharded(tmp_path / "ckpt"), is_sharded(tmp_path / "ckpt" / INDEX_NAME)
        (True, True)
    """
    if not isinstance(path, (str, os.PathLike)):
        return False
    where = os.fspath(path)
    if where.endswith(".index.json"):
        return True
    if not _remote.is_url(where):
        return os.path.isdir(where)
    if where.endswith("/"):
        return True
    return _remote.is_directory(where)


def index_path(path: str | os.PathLike[str]) -> str:
    """The index of a sharded checkpoint given as its directory or its index (a path or a URL)."""
    where = os.fspath(path)
    if where.endswith(".index.json"):
        return where
    if _remote.is_url(where):
        where = where.rstrip("/")
        names = _remote_names(where)
    elif not os.path.isdir(where):
        return where
    else:
        names = os.listdir(where)
    found = sorted(name for name in names if name.endswith(INDEX_SUFFIX))
    if INDEX_NAME in found:
        return join(where, INDEX_NAME)
    if not found:
        raise CheckpointNotFoundError(
            f"{where}: a directory is read as a sharded checkpoint, but it has no *{INDEX_SUFFIX} index", where
        )
    if len(found) > 1:
        raise FormatError(
            f"{where}: a directory is read as a sharded checkpoint, but it has several indexes ({', '.join(found)})"
        )
    return join(where, found[0])


def _remote_names(url: str) -> list[str]:
    """The names in a URL's directory, listed afresh (one request; none if there is no such directory)."""
    try:
        return _remote.listdir(url)
    except CkptSchemaError as e:
        raise FormatError(f"{e}; cannot read the sharded checkpoint's directory") from e


def join(folder: str, name: str) -> str:
    """The path or URL of `name` in `folder`."""
    return f"{folder}/{name}" if _remote.is_url(folder) else os.path.join(folder, name)


def folder_of(index: str) -> str:
    """The folder (a directory or a URL prefix) that holds an index and its shards."""
    return index.rsplit("/", 1)[0] if _remote.is_url(index) else os.path.dirname(os.path.abspath(index))


def read_index_bytes(where: str) -> bytes:
    """The index's bytes, read whole: at most `MAX_HEADER_BYTES` of a regular file or an object."""
    source = _sources.open_source(where)  # refuses what is not a regular file or object
    try:
        check_header_bytes(source.size, "index")
        return bytes(_sources.read_whole(source))
    except LimitError as e:
        raise FormatError(f"{where}: {e}") from None
    finally:
        source.close()


def read_index(where: str, raw: bytes | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The index's ``metadata`` and ``weight_map``, checked (from `raw`, its bytes, when they were read already).

    Raises:
        CheckpointNotFoundError: if there is no index at `where`.
        FormatError: naming the index and what is wrong with it.
    """
    raw = read_index_bytes(where) if raw is None else raw
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
    remote = _remote.is_url(where)
    for key, name in weight_map.items():
        if not isinstance(name, str) or not _plain_name(name, remote):
            raise FormatError(
                f"{where}: tensor {key!r} is mapped to {name!r}; shards must be plain file names in the index's folder"
            )
    return metadata, weight_map


def _plain_name(name: str, remote: bool = False) -> bool:
    """A file name with no folder, link to another place or URL syntax (``?``, ``#`` too behind a URL)."""
    refused = "/\\\0?#" if remote else "/\\\0"
    return bool(name) and name not in (".", "..") and not any(c in name for c in refused) and ":" not in name
