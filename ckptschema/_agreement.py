"""What a manifest must agree with before a load trusts it: its header, the allow-list, the subtree asked for.

`agreed_manifest` is the one rule that a manifest and its header agree (every tensor in
both with the same layout, nothing else, one digest each, every container type allowed),
run on every open, and builds the `Manifest` from the two; `lookup_containers` resolves
the types a template-less load rebuilds; `select` finds the subtree a load asks for.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

from . import _containers
from ._dtypes import DTYPES
from ._errors import CkptSchemaError, FormatError
from ._header import Header
from ._manifest import Manifest
from ._manifest_file import ManifestFile
from ._skeleton import KeyPart, iter_nodes, path_text
from ._skeleton import keys as keys_of

__all__ = ["Subtree", "agreed_manifest", "lookup_containers", "select"]

#: A subtree of a load: its path joined by the manifest's separator, its path parts, or None for all.
Subtree = str | tuple[KeyPart, ...] | None

#: The header code and trailing axis of each dtype name (`DType.header_shape`).
_LAYOUT = {name: (dtype.code, tuple(dtype.header_shape(()))) for name, dtype in DTYPES.items()}


def agreed_manifest(file: ManifestFile, header: Header, where: str) -> Manifest:
    """The `Manifest` of a file: its lean manifest joined with its header, once proven that
    every manifest tensor is in the header with the same layout, nothing else is, the
    digests are one per tensor, and every container type is one the allow-list allows (no
    name is ever imported).

    One walk, parents before children, that builds each tensor's key from its parent's (no
    path tuples, no joins), replaces each tensor leaf by its full node (key, dtype, shape,
    digest) and collects every problem; a node's path is rebuilt from its parents' links
    only to name it in a message.

    Raises:
        FormatError: for a refused container type or digests of the wrong length
            (``invalid manifest``), else for tensors that disagree (``manifest and header
            disagree``); the first five problems named.
    """
    entries, separator, layout, refusal = header.entries, file.separator, _LAYOUT, _containers.refusal
    skeleton: Any = file.skeleton
    problems: list[str] = []
    invalid: list[str] = []
    tensors: list[dict[str, Any]] = []
    typed: list[tuple[dict[str, Any], Any, KeyPart | None]] = []
    keys: set[str] = set()
    add, collect = keys.add, tensors.append
    root: list[Any] = [skeleton]
    # (expected key or None at the root, node, the parent's link, the node's key in its parent, holder, index)
    stack: list[tuple[str | None, Any, Any, KeyPart | None, Any, Any]] = [(None, skeleton, None, None, root, 0)]
    pop, extend = stack.pop, stack.extend
    while stack:
        prefix, node, parent, name, holder, index = pop()
        if type(node) is str:
            key = prefix or ""
            if key in keys:
                problems.append(f"tensor key {key!r} appears twice")
            add(key)
            entry = entries.get(key)
            code, axis = layout[node]
            shape = entry.shape[: len(entry.shape) - len(axis)] if entry is not None else ()
            if entry is None:
                problems.append(f"manifest tensor {key!r} is not in the header")
            elif entry.code != code or entry.shape[len(shape) :] != axis:
                problems.append(
                    f"tensor {key!r} is {node} in the manifest but {entry.code}{list(entry.shape)} in the header"
                )
            full = {"kind": "tensor", "key": key, "dtype": node, "shape": list(shape)}
            holder[index] = full
            collect(full)
            continue
        kind = node["kind"]
        if kind == "scalar" or kind == "none":
            continue
        if (kind == "dict" or kind == "wrapper") and node["type"] is not None:
            typed.append((node, parent, name))
        if kind == "wrapper":
            stack.append((prefix, node["child"], parent, name, node, "child"))
            continue
        link, children, names = (parent, name), node["children"], keys_of(node)
        parts = [str(k) for k in names] if prefix is None else [f"{prefix}{separator}{k}" for k in names]
        extend(
            zip(
                reversed(parts),
                reversed(children),
                itertools.repeat(link),
                reversed(names),
                itertools.repeat(children),
                reversed(range(len(children))),
            )
        )
    for node, parent, name in typed:  # after the walk: a wrapper's rule looks at its child's full node
        problem = refusal(node)
        if problem is not None:
            invalid.append(f"container type {node['type']!r} at {path_text(_path(parent, name))} {problem}")
    if problems or len(keys) != len(entries):
        problems += [f"header tensor {key!r} is not in the manifest" for key in sorted(entries.keys() - keys)]
    digests = _digests_of(file, len(tensors))
    if digests is None:
        invalid.append(f"digests hold {_digest_count(file)} digests for {len(tensors)} tensors")
    if invalid:
        more = f" (and {len(invalid) - 5} more)" if len(invalid) > 5 else ""
        raise FormatError(f"{where}: invalid manifest: {'; '.join(invalid[:5])}{more}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise FormatError(f"{where}: manifest and header disagree: {'; '.join(problems[:5])}{more}")
    if digests:
        for i, node in enumerate(tensors):
            node["digest"] = digests[64 * i : 64 * i + 64]
    return Manifest.model_construct(
        version=file.version, framework=file.framework, separator=separator, checksum=file.checksum, skeleton=root[0]
    )


def _digests_of(file: ManifestFile, count: int) -> str | None:
    """All digests in hex, 64 digits each in tensor order ("" without a checksum), or None when
    they are not `count` whole digests in canonical base64."""
    if file.digests is None:
        return ""
    raw = base64.b64decode(file.digests)  # the model has checked the alphabet and padding
    if len(raw) != 32 * count or base64.b64encode(raw).decode("ascii") != file.digests:
        return None
    return raw.hex()


def _digest_count(file: ManifestFile) -> str:
    raw = base64.b64decode(file.digests or "")
    return str(len(raw) // 32) if len(raw) % 32 == 0 else f"{len(raw)} bytes of"


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
                    f"{where}: container type {node['type']!r} at {path_text(path)} is not on the allow-list"
                ) from None


def select(manifest: Manifest, subtree: Subtree, where: str) -> tuple[dict[str, Any], tuple[KeyPart, ...]]:
    """The skeleton node of `subtree` and its path; the whole skeleton for None.

    Raises:
        CkptSchemaError: if the manifest has no such subtree.
    """
    root = manifest.skeleton
    if subtree is None:
        return root, ()
    for path, node in iter_nodes(root):
        if isinstance(subtree, tuple):
            if path == subtree:
                return node, path
        elif manifest.separator.join(map(str, path)) == subtree and path:
            return node, path
    raise CkptSchemaError(f"{where}: no subtree {subtree!r} in the checkpoint (paths join with {manifest.separator!r})")
