"""What a manifest must agree with before a load trusts it: its header, the allow-list, the subtree asked for.

`check_agreement` is the one rule that a manifest and its header agree (every tensor in
both with the same layout, nothing else, every container type allowed), run on every
open; `lookup_containers` resolves the types a template-less load rebuilds; `select`
finds the subtree a load asks for.
"""

from __future__ import annotations

import itertools
from typing import Any

from . import _containers
from ._dtypes import DTYPES
from ._errors import CkptSchemaError, FormatError
from ._header import Header
from ._manifest import Manifest
from ._skeleton import KeyPart, iter_nodes
from ._skeleton import path_text as keypath

__all__ = ["Subtree", "check_agreement", "lookup_containers", "select"]

#: A subtree of a load: its path joined by the manifest's separator, its path parts, or None for all.
Subtree = str | tuple[KeyPart, ...] | None

#: The header code and trailing axis of each dtype name (`DType.header_shape`).
_LAYOUT = {name: (dtype.code, tuple(dtype.header_shape(()))) for name, dtype in DTYPES.items()}


def check_agreement(manifest: Manifest, header: Header, where: str) -> None:
    """Every manifest tensor is in the header with the same layout, nothing else is, and every
    container type is one the allow-list allows (no name is ever imported).

    One walk, parents before children, that builds each tensor's expected key from its
    parent's (no path tuples, no joins) and collects every problem; a node's path is
    rebuilt from its parents' links only to name it in a message.

    Raises:
        FormatError: for a refused container type (``invalid manifest``), else for tensors
            that disagree (``manifest and header disagree``); the first five problems named.
    """
    entries, separator, layout, refusal = header.entries, manifest.separator, _LAYOUT, _containers.refusal
    problems: list[str] = []
    invalid: list[str] = []
    keys: set[str] = set()
    add = keys.add
    # (expected key or None at the root, node, the parent's link, the node's key in its parent)
    stack: list[tuple[str | None, dict[str, Any], Any, KeyPart | None]] = [(None, manifest.skeleton, None, None)]  # type: ignore[list-item]
    pop, extend = stack.pop, stack.extend
    while stack:
        prefix, node, parent, name = pop()
        kind = node["kind"]
        if kind == "tensor":
            key = node["key"]
            if key in keys:
                problems.append(f"tensor key {key!r} appears twice")
            elif key != (prefix or ""):
                path = keypath(_path(parent, name))
                problems.append(f"tensor key {key!r} at {path} is not its path joined by {separator!r}")
            add(key)
            entry = entries.get(key)
            code, axis = layout[node["dtype"]]
            if entry is None:
                problems.append(f"manifest tensor {key!r} is not in the header")
            elif entry.code != code or entry.shape != (*node["shape"], *axis):
                problems.append(
                    f"tensor {key!r} is {node['dtype']}{node['shape']} in the manifest "
                    f"but {entry.code}{list(entry.shape)} in the header"
                )
            continue
        if kind == "scalar" or kind == "none":
            continue
        if (kind == "dict" or kind == "wrapper") and node["type"] is not None:
            problem = refusal(node)
            if problem is not None:
                invalid.append(f"container type {node['type']!r} at {keypath(_path(parent, name))} {problem}")
        if kind == "wrapper":
            stack.append((prefix, node["child"], parent, name))
            continue
        link, children = (parent, name), node["children"]
        names = (
            range(len(children))
            if kind == "list" or kind == "tuple"
            else node["fields" if kind == "namedtuple" else "keys"]
        )
        parts = [str(k) for k in names] if prefix is None else [f"{prefix}{separator}{k}" for k in names]
        extend(zip(reversed(parts), reversed(children), itertools.repeat(link), reversed(names)))
    if len(keys) != len(entries):
        problems += [f"header tensor {key!r} is not in the manifest" for key in entries.keys() - keys]
    if invalid:
        more = f" (and {len(invalid) - 5} more)" if len(invalid) > 5 else ""
        raise FormatError(f"{where}: invalid manifest: {'; '.join(invalid[:5])}{more}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise FormatError(f"{where}: manifest and header disagree: {'; '.join(problems[:5])}{more}")


def _path(parent: Any, name: KeyPart | None) -> tuple[KeyPart, ...]:
    """The path of a node from its parent's link (``(grandparent's link, parent's key)``) and its key."""
    parts: list[Any] = []
    link = (parent, name)
    while link[0] is not None or link[1] is not None:
        link, part = link
        parts.append(part)
    return tuple(reversed(parts))


def lookup_containers(skeleton: dict[str, Any], where: str) -> None:
    """Resolve every container type a template-less load will rebuild, before reading tensors."""
    for path, node in iter_nodes(skeleton):
        if node["kind"] in ("dict", "wrapper") and node["type"] is not None:
            try:
                _containers.lookup(node["type"])
            except KeyError:
                raise FormatError(
                    f"{where}: container type {node['type']!r} at {keypath(path)} is not on the allow-list"
                ) from None


def select(manifest: Manifest, subtree: Subtree, where: str) -> tuple[dict[str, Any], tuple[KeyPart, ...]]:
    """The skeleton node of `subtree` and its path; the whole skeleton for None.

    Raises:
        CkptSchemaError: if the manifest has no such subtree.
    """
    root = manifest.data["skeleton"]
    if subtree is None:
        return root, ()
    for path, node in iter_nodes(root):
        if isinstance(subtree, tuple):
            if path == subtree:
                return node, path
        elif manifest.separator.join(map(str, path)) == subtree and path:
            return node, path
    raise CkptSchemaError(f"{where}: no subtree {subtree!r} in the checkpoint (paths join with {manifest.separator!r})")
