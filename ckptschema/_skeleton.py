"""What a skeleton is, and the one way to walk it. No I/O, no Pydantic: a skeleton is plain JSON data.

A skeleton describes a pytree without its tensor bytes. Each node is a dict with a ``kind``:

- ``tensor``: ``key`` (the safetensors key), ``dtype``, ``shape``, and ``digest`` once saved;
- ``scalar``: a Python ``bool``/``int``/``float``/``str`` kept in the manifest (``type``,
  ``value``; floats as text that keeps every bit, see `_scalars.float_text`);
- ``none``; ``list`` and ``tuple`` (``children``); ``namedtuple`` (``name``, ``fields``,
  ``children``, and the defining ``module`` when it is a module name);
- ``dict``: ``keys`` (all str or all int, in insertion order), ``children``, and ``type``:
  null for a plain dict, else an allow-listed container such as ``flax.FrozenDict``;
- ``wrapper``: one ``child`` inside an allow-listed container such as ``flax.nnx.Param``,
  with the JSON-scalar ``metadata`` its framework documents; it adds no part to paths;
- ``node``: any other registered pytree node (``type``, ``keys``, ``children``, which may be
  none); it can only be rebuilt through a template.

`children` is the one accessor every walk uses to go down a node. `_flatten` makes a
skeleton from a pytree, `_rebuild` a pytree from a skeleton.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ._scalars import scalar_value

__all__ = ["KeyPart", "Path", "children", "describe", "iter_nodes", "keys", "path_text", "summary"]

#: One step of a path: a dict key, a sequence index, a namedtuple field or a node's key.
KeyPart = str | int
#: The parts of a path from the root, ``()`` for the root itself.
Path = tuple[KeyPart, ...]

#: The kinds of node with no children.
LEAF_KINDS = frozenset({"tensor", "scalar", "none"})


def path_text(parts: Path) -> str:
    """The one spelling of a path in messages: parts joined by ``/``, ``<root>`` if empty.

    Example:
        >>> path_text(("params", "layers", 0, "w")), path_text(())
        ('params/layers/0/w', '<root>')
    """
    return "/".join(str(p) for p in parts) if parts else "<root>"


def children(node: dict[str, Any], path: Path = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The children of a node under `path`, in order, each with its own path.

    A child's path is `path` and its key (index, field, dict or node key); a wrapper's one
    child has the wrapper's own path. Leaves (``tensor``, ``scalar``, ``none``) have none.

    Example:
        >>> t = {"kind": "tensor", "key": "w", "dtype": "float32", "shape": []}
        >>> children({"kind": "dict", "type": None, "keys": ["w"], "children": [t]}, ("p",))
        [(('p', 'w'), {'kind': 'tensor', 'key': 'w', 'dtype': 'float32', 'shape': []})]
    """
    kind = node["kind"]
    if kind in LEAF_KINDS:
        return []
    if kind == "wrapper":
        return [(path, node["child"])]
    return [((*path, k), c) for k, c in zip(keys(node), node["children"])]


def keys(node: dict[str, Any]) -> Sequence[KeyPart]:
    """The keys of a container's children, in order (indices, fields, dict or node keys); none
    for a leaf or a wrapper. `children` is built on it; a lookup by key uses it directly.

    Example:
        >>> keys({"kind": "tuple", "children": [{"kind": "none"}] * 2}), keys({"kind": "none"})
        (range(0, 2), ())
    """
    kind = node["kind"]
    if kind in LEAF_KINDS or kind == "wrapper":
        return ()
    if kind == "list" or kind == "tuple":
        return range(len(node["children"]))
    return node["fields" if kind == "namedtuple" else "keys"]  # type: ignore[no-any-return]


def iter_nodes(node: dict[str, Any], path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every ``(path, node)`` of a skeleton, parents before children, in order.

    Example:
        >>> t = {"kind": "none"}
        >>> [p for p, _ in iter_nodes({"kind": "list", "children": [t, t]})]
        [(), (0,), (1,)]
    """
    stack = [(path, node)]
    pop, push = stack.pop, stack.extend
    while stack:
        path, node = pop()
        yield path, node
        if node["kind"] not in LEAF_KINDS:
            push(reversed(children(node, path)))


def describe(node: dict[str, Any]) -> str:
    """A short human description of a node: ``float32[3,4]``, ``dict``, ``int 5``.

    Example:
        >>> describe({"kind": "tensor", "key": "w", "dtype": "float32", "shape": [3, 4]})
        'float32[3,4]'
    """
    kind = node["kind"]
    if kind == "tensor":
        return f"{node['dtype']}[{','.join(map(str, node['shape']))}]"
    if kind == "scalar" and "value" not in node:  # a structure-only schema records the type alone
        return f"{node['type']} scalar"
    if kind == "scalar":
        return f"{node['type']} {node['value']!r}" if node["type"] == "str" else f"{node['type']} {node['value']}"
    if kind == "namedtuple":
        return f"namedtuple {node['name']}"
    if kind in ("wrapper", "node") or (kind == "dict" and node["type"]):
        return f"{kind} {node['type']}"
    return kind


def summary(node: dict[str, Any]) -> dict[str, Any]:
    """What a node is, as data and without its children: the typed form of `describe`.

    ``kind``, and for a tensor its ``dtype`` and ``shape`` (a tuple), for a scalar its
    ``type`` and (when recorded) its Python ``value``, for a namedtuple its ``name``, for a
    typed dict, wrapper or node its ``type`` (and a wrapper's ``metadata``).

    Example:
        >>> summary({"kind": "tensor", "key": "w", "dtype": "float32", "shape": [3, 4], "digest": "ab"})
        {'kind': 'tensor', 'dtype': 'float32', 'shape': (3, 4)}
        >>> summary({"kind": "scalar", "type": "float", "value": "0.5"})
        {'kind': 'scalar', 'type': 'float', 'value': 0.5}
    """
    kind = node["kind"]
    if kind == "tensor":
        return {"kind": kind, "dtype": node["dtype"], "shape": tuple(node["shape"])}
    if kind == "scalar":
        return {"kind": kind, "type": node["type"]} | ({"value": scalar_value(node)} if "value" in node else {})
    if kind == "namedtuple":
        return {"kind": kind, "name": node["name"]}
    if kind == "wrapper":
        return {"kind": kind, "type": node["type"], "metadata": dict(node.get("metadata") or {})}
    if kind in ("dict", "node"):
        return {"kind": kind, "type": node["type"]}
    return {"kind": kind}
