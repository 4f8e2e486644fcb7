"""Pytree -> skeleton + leaves: `flatten` for a tree to save, `flatten_template` for a template to load into.

A template's skeleton is the same plain data a saved tree's is; what rebuilding needs of
the template's own objects (its leaves, namedtuple classes, treedefs, framework
containers) is kept beside it in a `Template`, never inside the skeleton.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from . import _containers, _namedtuples
from ._dtypes import dtype_of
from ._errors import CkptSchemaError
from ._limits import LimitError, check_depth, check_int
from ._scalars import scalar_node
from ._skeleton import KeyPart, Path, path_text

__all__ = ["Flat", "Template", "flatten", "flatten_template"]

_SCALARS = (bool, int, float, str)
#: Classes of array leaves, tested first by exact class; others join once `isinstance` accepts them.
_ARRAY_TYPES: set[type] = {np.ndarray, jax.ShapeDtypeStruct}
RESERVED_KEY = "__metadata__"


@dataclasses.dataclass
class Flat:
    """A tree taken apart: its skeleton, its tensor leaves by key, its framework, and its
    tensor nodes in the order of the skeleton (which is the order of the file)."""

    skeleton: dict[str, Any]
    leaves: dict[str, Any]
    framework: str | None
    tensors: list[dict[str, Any]]


@dataclasses.dataclass
class Template:
    """A template taken apart: its skeleton, and what rebuilding a tree like it needs.

    Attributes:
        skeleton: the template's skeleton, plain data like any other.
        likes: the template's own leaf (array, ``jax.ShapeDtypeStruct`` or Python scalar)
            of each ``tensor`` and ``scalar`` node, in walk order (parents before children,
            children in order), which is the order `_compare.compare` returns its matches in.
        handles: what rebuilds each namedtuple (its instance), typed dict and wrapper (the
            container instance) and ``node`` (its treedef), in the order their walks end
            (children before parents), which is the order `_rebuild.build_like_template` needs them in.
    """

    skeleton: dict[str, Any]
    likes: list[Any]
    handles: list[Any]


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


def _check_key(key: Any, where: Path) -> KeyPart:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise CkptSchemaError(
            f"{path_text(where)}: dict key {key!r} is a {type(key).__name__}; keys must be str or int"
        )
    if isinstance(key, int):
        _check_int(key, where)
    if isinstance(key, str):
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise CkptSchemaError(f"{path_text(where)}: dict key {key!r} holds a lone surrogate") from None
    return key


def _dict_keys(items: list[tuple[Any, Any]], where: Path) -> list[KeyPart]:
    keys = [_check_key(k, where) for k, _ in items]
    if len({type(k) for k in keys}) > 1:
        raise CkptSchemaError(
            f"{path_text(where)}: dict mixes str and int keys ({keys[:6]!r}); JAX cannot flatten such a dict"
        )
    return keys


def _check_int(value: int, where: Path) -> None:
    try:
        check_int(value)
    except LimitError as e:
        raise CkptSchemaError(f"{path_text(where)}: cannot store {e}") from None


def _scalar(x: Any, where: Path) -> dict[str, Any]:
    if type(x) is int:
        _check_int(x, where)
    elif type(x) is str:
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            raise CkptSchemaError(f"string leaf {x!r} holds a lone surrogate") from None
    return scalar_node(x)


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
        self.paths: dict[str, Path] = {}
        self.tensors: list[dict[str, Any]] = []
        self.frameworks: list[str] = []
        self.likes: list[Any] = []
        self.handles: list[Any] = []

    def walk(self, x: Any, path: Path) -> dict[str, Any]:
        try:
            check_depth(len(path))  # a wrapper adds depth but no path part: the manifest checks those
        except LimitError as e:
            raise CkptSchemaError(f"{path_text(path[:8])}/...: {e}") from None
        cls = type(x)
        if cls in _ARRAY_TYPES and (self.template or cls is not jax.ShapeDtypeStruct):
            return self._tensor(x, path)
        if x is None:
            return {"kind": "none"}
        if cls in _SCALARS:
            if self.template:
                self.likes.append(x)
            return _scalar(x, path)
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

    def _tensor(self, x: Any, path: Path) -> dict[str, Any]:
        dtype = dtype_of(x.dtype)
        if dtype is None:
            if _containers.is_prng_key(x):
                return self._container(_containers.PRNG_KEY, x, path)
            raise CkptSchemaError(f"{path_text(path)}: dtype {x.dtype} cannot be stored")
        key = self.separator.join(map(str, path))
        if key in self.leaves:
            raise CkptSchemaError(
                f"{path_text(self.paths[key])} and {path_text(path)} both map to the tensor key {key!r}; "
                f"pass another separator= (one that no key contains)"
            )
        if key == RESERVED_KEY:
            raise CkptSchemaError(f"{path_text(path)}: the tensor key {key!r} is reserved by safetensors")
        self.leaves[key] = x
        self.paths[key] = path
        node: dict[str, Any] = {"kind": "tensor", "key": key, "dtype": dtype.name, "shape": list(map(int, x.shape))}
        self.tensors.append(node)
        if self.template:
            self.likes.append(x)
        return node

    def _namedtuple(self, x: tuple, path: Path) -> dict[str, Any]:
        cls = type(x)
        fields = cls._fields  # type: ignore[attr-defined]
        if not _namedtuples.valid(cls.__name__, fields):
            raise CkptSchemaError(
                f"{path_text(path)}: namedtuple {cls.__name__} with fields {fields!r} cannot be recreated on load: "
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
            self.handles.append(x)
        return node

    def _dict(self, type_name: str | None, items: list, path: Path, like: Any) -> dict[str, Any]:
        keys = _dict_keys(items, path)
        node = {
            "kind": "dict",
            "type": type_name,
            "keys": keys,
            "children": [self.walk(v, (*path, k)) for k, (_, v) in zip(keys, items)],
        }
        if self.template and type_name is not None:
            self.handles.append(like)
        return node

    def _container(self, c: _containers.Container, x: Any, path: Path) -> dict[str, Any]:
        self.frameworks.append(c.framework)
        if c.kind == "dict":
            return self._dict(c.name, list(c.items(x)), path, x)
        assert c.unwrap is not None and c.metadata is not None
        node = {"kind": "wrapper", "type": c.name, "metadata": c.metadata(x), "child": self.walk(c.unwrap(x), path)}
        if self.template:
            self.handles.append(x)
        else:
            problem = _containers.refusal(node)
            if problem is not None:
                raise CkptSchemaError(f"{path_text(path)}: cannot store this {c.name}: it {problem}")
        return node

    def _custom(self, x: Any, path: Path) -> dict[str, Any]:
        children, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda c: c is not x)
        if children and jax.tree_util.treedef_is_leaf(treedef):  # x itself; no children: a childless node
            what = (
                "abstract leaves (jax.ShapeDtypeStruct) are only allowed in templates"
                if isinstance(x, jax.ShapeDtypeStruct)
                else "leaves must be arrays or bool/int/float/str scalars"
            )
            raise CkptSchemaError(f"{path_text(path)}: cannot store a {type(x).__name__}; {what}")
        keys = [_key_part(kp[0]) for kp, _ in children]
        node = {
            "kind": "node",
            "type": _type_name(type(x)),
            "keys": keys,
            "children": [self.walk(c, (*path, k)) for k, (_, c) in zip(keys, children)],
        }
        if self.template:
            self.handles.append(treedef)
        return node


def flatten(tree: Any, separator: str = ".") -> Flat:
    """Take a pytree apart into its skeleton and its tensor leaves.

    Args:
        tree: any pytree of arrays, Python scalars and containers.
        separator: joins path parts into tensor keys.

    Returns:
        A `Flat` with the skeleton, the leaves by tensor key and the detected framework.

    Raises:
        CkptSchemaError: for a leaf that cannot be stored or two leaves with one key.

    Example:
        >>> flat = flatten({"w": np.zeros(3, np.float32), "n": None})
        >>> flat.skeleton["keys"], list(flat.leaves)
        (['w', 'n'], ['w'])
    """
    walker = _Walker(separator, template=False)
    skeleton = walker.walk(tree, ())
    framework = next((f for f in walker.frameworks if f != "jax"), None)
    return Flat(skeleton, walker.leaves, framework, walker.tensors)


def flatten_template(tree: Any, separator: str = ".") -> Template:
    """Take a template apart: its skeleton, and its own leaves and containers to rebuild with.

    Leaves may be ``jax.ShapeDtypeStruct`` (what ``jax.eval_shape`` gives) as well as
    anything `flatten` accepts.

    Raises:
        CkptSchemaError: as `flatten`, for a leaf or key no checkpoint could hold.

    Example:
        >>> t = flatten_template({"w": jax.ShapeDtypeStruct((3,), np.float32), "step": 0})
        >>> t.skeleton["keys"], [type(like).__name__ for like in t.likes]
        (['w', 'step'], ['ShapeDtypeStruct', 'int'])
    """
    walker = _Walker(separator, template=True)
    skeleton = walker.walk(tree, ())
    return Template(skeleton, walker.likes, walker.handles)
