"""Pytree <-> skeleton + leaves. No I/O and no Pydantic: the skeleton is plain JSON data.

A skeleton node is a dict with a ``kind``:

- ``tensor``: ``key`` (the safetensors key), ``dtype``, ``shape``, and ``digest`` once saved;
- ``scalar``: a Python ``bool``/``int``/``float``/``str`` kept in the manifest (``type``,
  ``value``; floats as text that keeps every bit, see `float_text`);
- ``none``; ``list`` and ``tuple`` (``children``); ``namedtuple`` (``name``, ``fields``,
  ``children``, and the defining ``module`` when it is a module name);
- ``dict``: ``keys`` (all str or all int, in insertion order), ``children``, and ``type``:
  null for a plain dict, else an allow-listed container such as ``flax.FrozenDict``;
- ``wrapper``: one ``child`` inside an allow-listed container such as ``flax.nnx.Param``,
  with the JSON-scalar ``metadata`` its framework documents;
- ``node``: any other registered pytree node (``type``, ``keys``, ``children``, which may be
  none); it can only be rebuilt through a template.

A tree walked as a template (leaves may be ``jax.ShapeDtypeStruct``) gets the same
skeleton, plus private ``_like`` entries that let `rebuild` return the template's own types.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from . import _containers, _namedtuples
from ._dtypes import dtype_of
from ._errors import CkptSchemaError
from ._limits import LimitError, check_depth, check_int

__all__ = ["Flat", "describe", "flatten", "iter_nodes", "keypath", "rebuild", "unflatten"]

KeyPart = str | int
_SCALARS = (bool, int, float, str)
#: Classes of array leaves, tested first by exact class; others join once `isinstance` accepts them.
_ARRAY_TYPES: set[type] = {np.ndarray, jax.ShapeDtypeStruct}
RESERVED_KEY = "__metadata__"


def keypath(parts: tuple[KeyPart, ...]) -> str:
    """The one spelling of a path in messages: parts joined by ``/``, ``<root>`` if empty.

    Example:
        >>> keypath(("params", "layers", 0, "w"))
        'params/layers/0/w'
    """
    return "/".join(str(p) for p in parts) if parts else "<root>"


@dataclasses.dataclass
class Flat:
    """A tree taken apart: its skeleton, its tensor leaves by key, its framework, and its
    tensor nodes in the order of the skeleton (which is the order of the file)."""

    skeleton: dict[str, Any]
    leaves: dict[str, Any]
    framework: str | None
    tensors: list[dict[str, Any]]


def _key_part(entry: Any) -> KeyPart:
    if isinstance(entry, jax.tree_util.DictKey):
        key = entry.key
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise CkptSchemaError(f"unsupported dict key {key!r} ({type(key).__name__}); keys must be str or int")
        return key
    if isinstance(entry, jax.tree_util.SequenceKey):
        return entry.idx
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return entry.key
    raise CkptSchemaError(f"unsupported pytree key {entry!r} ({type(entry).__name__})")


def _check_key(key: Any, where: tuple[KeyPart, ...]) -> KeyPart:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise CkptSchemaError(f"{keypath(where)}: dict key {key!r} is a {type(key).__name__}; keys must be str or int")
    if isinstance(key, int):
        _check_int(key, where)
    if isinstance(key, str):
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise CkptSchemaError(f"{keypath(where)}: dict key {key!r} holds a lone surrogate") from None
    return key


def _dict_keys(items: list[tuple[Any, Any]], where: tuple[KeyPart, ...]) -> list[KeyPart]:
    keys = [_check_key(k, where) for k, _ in items]
    if len({type(k) for k in keys}) > 1:
        raise CkptSchemaError(
            f"{keypath(where)}: dict mixes str and int keys ({keys[:6]!r}); JAX cannot flatten such a dict"
        )
    return keys


def _check_int(value: int, where: tuple[KeyPart, ...]) -> None:
    try:
        check_int(value)
    except LimitError as e:
        raise CkptSchemaError(f"{keypath(where)}: cannot store {e}") from None


#: The bits of the one NaN that Python's ``float("nan")`` gives, spelled plain ``nan``.
_CANONICAL_NAN = 0x7FF8000000000000
_NAN_BITS = re.compile(r"nan:0x[0-9a-f]{16}")


def float_text(x: float) -> str:
    """How a float scalar is spelled in a manifest: every bit survives.

    Its ``repr``, except for a NaN whose bits are not those of ``float("nan")``
    (``0x7ff8000000000000``): that is ``nan:0x`` and the 16 lowercase hex digits of its
    IEEE 754 binary64 bits, sign and payload included.

    Example:
        >>> float_text(0.1), float_text(float("nan")), float_text(-float("nan"))
        ('0.1', 'nan', 'nan:0xfff8000000000000')
    """
    if x != x:
        (bits,) = struct.unpack("<Q", struct.pack("<d", x))
        if bits != _CANONICAL_NAN:
            return f"nan:0x{bits:016x}"
    return repr(x)


def float_value(text: str) -> float:
    """The float a manifest spells as `text` (`float_text`); `ValueError` if it spells none.

    Example:
        >>> float_text(float_value("nan:0x7ff0000000000001"))
        'nan:0x7ff0000000000001'
    """
    if text.startswith("nan:"):
        if not _NAN_BITS.fullmatch(text):
            raise ValueError(f"{text!r} is not nan:0x and 16 lowercase hex digits")
        (value,) = struct.unpack("<d", struct.pack("<Q", int(text[6:], 16)))
        return value
    return float(text)


def _scalar_node(x: Any, where: tuple[KeyPart, ...]) -> dict[str, Any]:
    kind = type(x).__name__
    value = float_text(x) if kind == "float" else x
    if kind == "int":
        _check_int(x, where)
    if kind == "str":
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            raise CkptSchemaError(f"string leaf {x!r} holds a lone surrogate") from None
    return {"kind": "scalar", "type": kind, "value": value}


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Walker:
    """Takes one tree apart; `template` allows abstract leaves and keeps rebuild handles."""

    def __init__(self, separator: str, template: bool) -> None:
        self.separator = separator
        self.template = template
        self.leaves: dict[str, Any] = {}
        self.paths: dict[str, tuple[KeyPart, ...]] = {}
        self.tensors: list[dict[str, Any]] = []
        self.frameworks: list[str] = []

    def walk(self, x: Any, path: tuple[KeyPart, ...]) -> dict[str, Any]:
        try:
            check_depth(len(path))  # a wrapper adds depth but no path part: the manifest checks those
        except LimitError as e:
            raise CkptSchemaError(f"{keypath(path[:8])}/...: {e}") from None
        cls = type(x)
        if cls in _ARRAY_TYPES and (self.template or cls is not jax.ShapeDtypeStruct):
            return self._tensor(x, path)
        if x is None:
            return {"kind": "none"}
        if cls in _SCALARS:
            node = _scalar_node(x, path)
            if self.template:
                node["_like"] = x
            return node
        if cls is list or cls is tuple:
            return {"kind": cls.__name__, "children": [self.walk(c, (*path, i)) for i, c in enumerate(x)]}
        if cls is dict:
            return self._dict(None, list(x.items()), path, x)
        if _is_namedtuple(x):
            return self._namedtuple(x, path)
        if isinstance(x, (np.ndarray, np.generic, jax.Array)):
            _ARRAY_TYPES.add(cls)
            return self._tensor(x, path)
        container = _containers.find(x)
        if container is not None:
            return self._container(container, x, path)
        return self._custom(x, path)

    def _tensor(self, x: Any, path: tuple[KeyPart, ...]) -> dict[str, Any]:
        dtype = dtype_of(x.dtype)
        if dtype is None:
            if _containers.is_prng_key(x):
                return self._container(_containers.PRNG_KEY, x, path)
            raise CkptSchemaError(f"{keypath(path)}: dtype {x.dtype} cannot be stored")
        key = self.separator.join(map(str, path))
        if key in self.leaves:
            raise CkptSchemaError(
                f"{keypath(self.paths[key])} and {keypath(path)} both map to the tensor key {key!r}; "
                f"pass another separator= (one that no key contains)"
            )
        if key == RESERVED_KEY:
            raise CkptSchemaError(f"{keypath(path)}: the tensor key {key!r} is reserved by safetensors")
        self.leaves[key] = x
        self.paths[key] = path
        shape = x.shape
        node: dict[str, Any] = {"kind": "tensor", "key": key, "dtype": dtype.name, "shape": list(map(int, shape))}
        self.tensors.append(node)
        if self.template:
            node["_like"] = x
            # What jax.eval_shape makes of a Python scalar: a 0-d weak-typed leaf (bool is never weak).
            node["_weak"] = not shape and (bool(getattr(x, "weak_type", False)) or dtype.name == "bool")
        return node

    def _namedtuple(self, x: tuple, path: tuple[KeyPart, ...]) -> dict[str, Any]:
        cls = type(x)
        fields = cls._fields  # type: ignore[attr-defined]
        if not _namedtuples.valid(cls.__name__, fields):
            raise CkptSchemaError(
                f"{keypath(path)}: namedtuple {cls.__name__} with fields {fields!r} cannot be recreated on load: "
                f"its name and fields must be identifiers, not keywords, fields not starting with '_' and "
                f"distinct after Unicode NFKC normalisation (as Python compiles them); rename them"
            )
        node = {
            "kind": "namedtuple",
            "name": cls.__name__,
            "fields": list(fields),
            "children": [self.walk(c, (*path, f)) for f, c in zip(fields, x)],
        }
        module = _namedtuples.module_of(cls)
        if module is not None:
            node["module"] = module
        if self.template:
            node["_like"] = x
        return node

    def _dict(self, type_name: str | None, items: list, path: tuple[KeyPart, ...], like: Any) -> dict[str, Any]:
        keys = _dict_keys(items, path)
        node = {
            "kind": "dict",
            "type": type_name,
            "keys": keys,
            "children": [self.walk(v, (*path, k)) for k, (_, v) in zip(keys, items)],
        }
        if self.template and type_name is not None:
            node["_like"] = like
        return node

    def _container(self, c: _containers.Container, x: Any, path: tuple[KeyPart, ...]) -> dict[str, Any]:
        self.frameworks.append(c.framework)
        if c.kind == "dict":
            return self._dict(c.name, list(c.items(x)), path, x)
        assert c.unwrap is not None and c.metadata is not None
        node = {"kind": "wrapper", "type": c.name, "metadata": c.metadata(x), "child": self.walk(c.unwrap(x), path)}
        if self.template:
            node["_like"] = x
        else:
            problem = _containers.refusal(node)
            if problem is not None:
                raise CkptSchemaError(f"{keypath(path)}: cannot store this {c.name}: it {problem}")
        return node

    def _custom(self, x: Any, path: tuple[KeyPart, ...]) -> dict[str, Any]:
        children, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda c: c is not x)
        if children and jax.tree_util.treedef_is_leaf(treedef):  # x itself; no children: a childless node
            what = (
                "abstract leaves (jax.ShapeDtypeStruct) are only allowed in templates"
                if isinstance(x, jax.ShapeDtypeStruct)
                else "leaves must be arrays or bool/int/float/str scalars"
            )
            raise CkptSchemaError(f"{keypath(path)}: cannot store a {type(x).__name__}; {what}")
        keys = [_key_part(kp[0]) for kp, _ in children]
        node = {
            "kind": "node",
            "type": _type_name(type(x)),
            "keys": keys,
            "children": [self.walk(c, (*path, k)) for k, (_, c) in zip(keys, children)],
        }
        if self.template:
            node["_like"] = treedef
        return node


def flatten(tree: Any, separator: str = ".", *, template: bool = False) -> Flat:
    """Take a pytree apart into its skeleton and its tensor leaves.

    Args:
        tree: any pytree of arrays, Python scalars and containers.
        separator: joins path parts into tensor keys.
        template: allow ``jax.ShapeDtypeStruct`` leaves and keep what `rebuild` needs.

    Returns:
        A `Flat` with the skeleton, the leaves by tensor key and the detected framework.

    Raises:
        CkptSchemaError: for a leaf that cannot be stored or two leaves with one key.

    Example:
        >>> flat = flatten({"w": np.zeros(3, np.float32), "n": None})
        >>> flat.skeleton["keys"], list(flat.leaves)
        (['w', 'n'], ['w'])
    """
    walker = _Walker(separator, template)
    skeleton = walker.walk(tree, ())
    framework = next((f for f in walker.frameworks if f != "jax"), None)
    return Flat(skeleton, walker.leaves, framework, walker.tensors)


def iter_nodes(node: dict[str, Any], path: tuple[KeyPart, ...] = ()) -> Iterator[tuple[tuple[KeyPart, ...], dict]]:
    """Yield ``(path, node)`` for every node of a skeleton, parents before children, in order."""
    stack = [(path, node)]
    pop, push = stack.pop, stack.extend
    while stack:
        path, node = pop()
        yield path, node
        kind = node["kind"]
        if kind == "tensor" or kind == "scalar" or kind == "none":
            continue
        if kind == "wrapper":
            push(((path, node["child"]),))
            continue
        children = node["children"]
        keys = range(len(children)) if kind in ("list", "tuple") else node["fields" if kind == "namedtuple" else "keys"]
        push(reversed([((*path, k), c) for k, c in zip(keys, children)]))


def child_keys(node: dict[str, Any]) -> list[KeyPart]:
    """The keys under which a container node holds its children."""
    kind = node["kind"]
    if kind in ("list", "tuple"):
        return list(range(len(node["children"])))
    if kind == "namedtuple":
        return node["fields"]
    if kind in ("dict", "node"):
        return node["keys"]
    return []


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


def scalar_value(node: dict[str, Any]) -> bool | int | float | str:
    """The Python value of a ``scalar`` node."""
    return float_value(node["value"]) if node["type"] == "float" else node["value"]


def unflatten(node: dict[str, Any], leaf: Callable[[dict[str, Any]], Any]) -> Any:
    """Rebuild the exact tree a skeleton describes, with no template.

    Args:
        node: a skeleton node (checked by the manifest model).
        leaf: called with each ``tensor`` node, returns its array.

    A namedtuple comes back as its original class when that is already imported, else as
    a fresh class of its name and fields (see `_namedtuples`).

    Raises:
        CkptSchemaError: for a ``node`` of a type not on the allow-list (pass a template).
    """
    kind = node["kind"]
    if kind == "tensor":
        return leaf(node)
    if kind == "scalar":
        return scalar_value(node)
    if kind == "none":
        return None
    if kind == "list":
        return [unflatten(c, leaf) for c in node["children"]]
    if kind == "tuple":
        return tuple(unflatten(c, leaf) for c in node["children"])
    if kind == "namedtuple":
        cls = _namedtuples.class_for(node["name"], tuple(node["fields"]), node.get("module"))
        return _namedtuples.make(cls, [unflatten(c, leaf) for c in node["children"]])
    if kind == "dict":
        children = {k: unflatten(c, leaf) for k, c in zip(node["keys"], node["children"])}
        if node["type"] is None:
            return children
        return _containers.lookup(node["type"]).build(children)
    if kind == "wrapper":
        return _containers.lookup(node["type"]).build(unflatten(node["child"], leaf), node["metadata"])
    raise CkptSchemaError(
        f"the checkpoint holds a node of type {node['type']}, which ckptschema only rebuilds through a template; "
        f"pass template= (for example jax.eval_shape of your init function)"
    )


def rebuild(template: dict[str, Any], leaf: Callable[[dict[str, Any]], Any]) -> Any:
    """Rebuild a tree shaped like a template skeleton (from ``flatten(..., template=True)``).

    Containers come back as the template's own types: namedtuple classes, custom nodes
    (flax.struct dataclasses, equinox Modules, optax states) through their treedefs,
    framework containers through their adapters.

    Args:
        template: the template's skeleton.
        leaf: called with each template ``tensor`` or ``scalar`` node, returns its value.
    """
    kind = template["kind"]
    if kind in ("tensor", "scalar"):
        return leaf(template)
    if kind == "none":
        return None
    if kind == "list":
        return [rebuild(c, leaf) for c in template["children"]]
    if kind == "tuple":
        return tuple(rebuild(c, leaf) for c in template["children"])
    if kind == "namedtuple":
        return type(template["_like"])._make(rebuild(c, leaf) for c in template["children"])
    if kind == "dict":
        children = {k: rebuild(c, leaf) for k, c in zip(template["keys"], template["children"])}
        if template["type"] is None:
            return children
        container = _containers.lookup(template["type"])
        if container.rebuild_like is not None:
            return container.rebuild_like(template["_like"], children)
        return container.build(children)
    if kind == "wrapper":
        container = _containers.lookup(template["type"])
        child = rebuild(template["child"], leaf)
        if container.rebuild_like is not None:
            return container.rebuild_like(template["_like"], child)
        return container.build(child, template["metadata"])
    return template["_like"].unflatten([rebuild(c, leaf) for c in template["children"]])
