"""Checkpoints written by other tools, read as pytrees for ``ckptschema convert``.

Each reader returns the tree the other tool would give back, as faithfully as its format
allows, plus the header metadata worth keeping:

- ``safetensors``: a plain safetensors file, as a flat dict of its tensors under their
  exact keys (so raw safetensors readers still see the same names after conversion);
- ``safejax``: keys that are ``.``-joined paths of nested dicts (``params.Dense_0.kernel``);
- ``pytree2safetensors``: keys such as ``@layers#0@w`` (``@`` a dict key, ``#`` a list
  index, ``.`` an attribute, kept as a dict key since the class is not recorded; a key
  that starts with an attribute has no ``.``, as an equinox Module's ``layers#0.weight``);
- ``flax-msgpack``: ``flax.serialization.to_bytes``/``msgpack_serialize`` output, restored
  with ``flax.serialization.msgpack_restore`` (plain data: msgpack executes nothing);
- ``orbax``: an orbax-checkpoint directory, restored with ``StandardCheckpointer``.

Safetensors inputs go through ckptschema's own hardened reader.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import _header, _sources, _tensors
from ._dtypes import BY_CODE
from ._errors import CkptSchemaError, FormatError

__all__ = ["FORMATS", "Foreign", "read_foreign"]

FORMATS = ("safetensors", "safejax", "pytree2safetensors", "flax-msgpack", "orbax")

#: The framework a converted checkpoint records, by source format.
_FRAMEWORK = {"flax-msgpack": "flax"}

Part = tuple[str, str | int]  # ("dict", key) or ("list", index)


class Foreign:
    """A checkpoint of another tool: its tree, its format, and header metadata to keep."""

    def __init__(self, tree: Any, format: str, metadata: dict[str, str]) -> None:
        self.tree = tree
        self.format = format
        self.metadata = metadata

    @property
    def framework(self) -> str:
        """What the converted checkpoint records as its framework."""
        return _FRAMEWORK.get(self.format, "jax")


def detect(src: str) -> str:
    """The format of `src`: a directory is orbax, a safetensors file safetensors, else flax-msgpack."""
    if os.path.isdir(src):
        return "orbax"
    source = _sources.open_source(src)  # refuses what is not a regular file
    try:
        _header.read_header(source)
    except FormatError:
        return "flax-msgpack"
    finally:
        source.close()
    return "safetensors"


def read_foreign(src: str, format: str | None = None) -> Foreign:
    """Read a checkpoint written by another tool (see the module docstring for the formats).

    Raises:
        CkptSchemaError: naming `src` and what could not be read.
    """
    format = format or detect(src)
    if format not in FORMATS:
        raise CkptSchemaError(f"unknown source format {format!r}; expected one of {', '.join(FORMATS)}")
    if format == "orbax":
        return Foreign(_read_orbax(src), format, {})
    if format == "flax-msgpack":
        return Foreign(_read_flax_msgpack(src), format, {})
    flat, metadata = _read_safetensors(src)
    if format == "safejax":
        return Foreign(_nest(src, flat, _safejax_path), format, metadata)
    if format == "pytree2safetensors":
        return Foreign(_nest(src, flat, _p2s_path), format, metadata)
    return Foreign(flat, format, metadata)


def _read_safetensors(src: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    source = _sources.open_source(src)
    try:
        header = _header.read_header(source)
        if header.manifest_text is not None:
            raise CkptSchemaError(f"{src}: already a ckptschema checkpoint (it has a manifest); nothing to convert")
        unknown = sorted({e.code for e in header.entries.values()} - BY_CODE.keys())
        if unknown:
            raise FormatError(f"{src}: tensors of dtype {', '.join(unknown)} have no numpy equivalent")
        wanted = [(e, BY_CODE[e.code], e.shape) for e in header.entries.values()]
        arrays = _tensors.read_tensors(source, wanted)
    finally:
        source.close()
    return dict(zip(header.entries, arrays)), dict(header.metadata)


def _safejax_path(key: str) -> list[Part]:
    return [("dict", part) for part in key.split(".")]


_P2S_PART = re.compile(r"([@#.])([^@#.]*)")


def _p2s_path(key: str) -> list[Part] | None:
    """The path of a pytree2safetensors key; ``""`` is the root leaf, and a key starting with no
    marker starts with an attribute (pytree2safetensors drops that ``.``)."""
    if key and key[0] not in "@#.":
        key = "." + key
    parts = _P2S_PART.findall(key)
    if "".join(marker + name for marker, name in parts) != key:
        return None
    path: list[Part] = []
    for marker, name in parts:
        if marker == "#":
            if not name.isdigit():
                return None
            path.append(("list", int(name)))
        else:
            path.append(("dict", name))
    return path


def _nest(src: str, flat: dict[str, Any], parse: Callable[[str], list[Part] | None]) -> Any:
    """Nested dicts and lists from leaves keyed by encoded paths."""
    root: dict[str, Any] = {}  # the tree lives under root[""], so the top may be a list
    kinds: dict[tuple[str | int, ...], str] = {}
    for key, value in flat.items():
        path = parse(key)
        if path is None:
            raise CkptSchemaError(f"{src}: tensor key {key!r} is not a path in this format")
        node: dict[str | int, Any] = root  # type: ignore[assignment]
        slot: str | int = ""
        prefix: tuple[str | int, ...] = ()
        for kind, part in path:
            child = node.get(slot)
            if child is None:
                child = node[slot] = {}
            elif not isinstance(child, dict):
                raise CkptSchemaError(f"{src}: tensor key {key!r} goes through {_where(prefix)}, which is a tensor")
            if kinds.setdefault(prefix, kind) != kind:
                raise CkptSchemaError(f"{src}: tensor key {key!r} uses {_where(prefix)} as both a dict and a list")
            node, slot, prefix = child, part, (*prefix, part)
        if slot in node:
            raise CkptSchemaError(f"{src}: tensor key {key!r} names {_where(prefix)}, which holds other tensors")
        node[slot] = value
        kinds[prefix] = "leaf"
    return _lists(src, root[""], kinds, ()) if flat else {}


def _lists(src: str, node: Any, kinds: dict[tuple[str | int, ...], str], prefix: tuple[str | int, ...]) -> Any:
    """Turn the dicts that stand for lists into lists, checking their indices are 0..n-1."""
    if kinds.get(prefix) == "leaf" or not isinstance(node, dict):
        return node
    children = {k: _lists(src, v, kinds, (*prefix, k)) for k, v in node.items()}
    if kinds.get(prefix) != "list":
        return children
    if sorted(children) != list(range(len(children))):
        raise CkptSchemaError(f"{src}: list {_where(prefix)} has indices {sorted(children)}, expected 0..n-1")
    return [children[i] for i in range(len(children))]


def _where(prefix: Iterable[str | int]) -> str:
    return "/".join(map(str, prefix)) or "<root>"


def _read_flax_msgpack(src: str) -> Any:
    try:
        from flax import serialization
    except ImportError as e:
        raise CkptSchemaError(
            f"reading flax msgpack needs flax ({e}); install it with: pip install 'ckptschema[flax]'"
        ) from e
    source = _sources.open_source(src)  # refuses what is not a regular file
    try:
        data = _sources.read_whole(source)
    finally:
        source.close()
    try:
        return serialization.msgpack_restore(bytes(data))
    except Exception as e:  # msgpack and flax raise many types for bytes that are not their format
        raise FormatError(f"{src}: not a flax msgpack checkpoint ({type(e).__name__}: {str(e)[:200]})") from e


def _read_orbax(src: str) -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise CkptSchemaError(
            f"reading orbax checkpoints needs orbax-checkpoint ({e}); install it with: pip install 'ckptschema[orbax]'"
        ) from e
    try:
        return ocp.StandardCheckpointer().restore(os.path.abspath(src))
    except Exception as e:  # orbax raises many types for a directory that is not its checkpoint
        raise FormatError(f"{src}: not an orbax checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
