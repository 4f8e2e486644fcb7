"""The allow-list of framework containers the core can rebuild without a template.

The core imports no framework. A framework adapter (``ckptschema.flax``,
``ckptschema.objax``) registers its containers here when it is imported; the core imports an
adapter only from the fixed table `ADAPTERS`, either because a tree being saved holds a type
from that framework (so the framework is already imported) or because a manifest names one
of its containers. Nothing named in a file is ever imported by that name.

What a file may say about a container is decided from the file alone, before any adapter
is imported (`refusal`): each name's kind (`MAPPINGS` are ``dict`` nodes, every other name a
``wrapper``), the metadata keys and value types of each framework's wrappers
(`WRAPPER_METADATA`), and the key data of a typed PRNG key (`PRNG_KEY_SHAPES`). Only checked
metadata ever reaches a container's constructor.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import operator
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ._errors import CkptSchemaError

__all__ = [
    "ADAPTERS",
    "MAPPINGS",
    "PRNG_KEY_SHAPES",
    "WRAPPER_METADATA",
    "Container",
    "find",
    "lookup",
    "refusal",
    "register",
]

#: Top-level module of a framework -> the ckptschema adapter that knows its containers.
ADAPTERS = {"flax": "ckptschema.flax", "objax": "ckptschema.objax"}

#: Python's own dict types that keep their identity in a manifest.
_BUILTIN = "collections.OrderedDict"

#: Top-level names of the containers the core itself registers.
_CORE = ("collections", "jax")

#: The mapping containers a manifest may name in a ``dict`` node. Every other container name
#: it may hold is a one-child ``wrapper``.
MAPPINGS = frozenset({_BUILTIN, "flax.FrozenDict", "flax.nnx.State", "objax.VarCollection"})

#: The metadata a wrapper may hold, by the top-level name of its type: each key with the one
#: JSON type of its value. For nnx variables these are the ``Variable`` constructor's own
#: flags and the ``tag`` of an RNG stream's ``RngKey``/``RngCount``; objax variables have none.
WRAPPER_METADATA: dict[str, dict[str, type]] = {
    "jax": {"impl": str},
    "flax": {"eager_sharding": bool, "hijax": bool, "ref": bool, "tag": str},
    "objax": {},
}
_NNX_METADATA = WRAPPER_METADATA["flax"]

#: The trailing shape of the ``uint32`` key data of each typed PRNG key implementation.
PRNG_KEY_SHAPES: dict[str, tuple[int, ...]] = {"threefry2x32": (2,), "rbg": (4,), "unsafe_rbg": (4,)}

#: What an nnx variable with ``hijax`` or ``ref`` set may hold: JAX must take it as one value.
_JAX_VALUE_SCALARS = ("bool", "int", "float")


@dataclasses.dataclass(frozen=True)
class Container:
    """How one framework container is walked and rebuilt.

    A ``dict`` container is a mapping of str or int keys (FrozenDict, nnx State, objax
    VarCollection). A ``wrapper`` holds one child and JSON-scalar metadata (an nnx
    Variable, an objax Var); it adds no part to tensor keys or paths.
    """

    name: str
    framework: str
    kind: Literal["dict", "wrapper"]
    match: Callable[[Any], bool]
    build: Callable[..., Any]
    unwrap: Callable[[Any], Any] | None = None
    metadata: Callable[[Any], dict[str, Any]] | None = None
    rebuild_like: Callable[[Any, Any], Any] | None = None
    items: Callable[[Any], Any] = operator.methodcaller("items")
    #: For a wrapper outside the frameworks of `WRAPPER_METADATA`: the metadata keys a file
    #: may give it, each with the one JSON type of its value (none by default).
    metadata_types: Mapping[str, type] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, Container] = {}
_BY_TYPE: dict[type, Container | None] = {}


def register(*containers: Container) -> None:
    """Add containers to the allow-list (the framework adapters, and users through
    `ckptschema.register_container`).

    Names under the core (``collections``, ``jax``) and the frameworks of `ADAPTERS` follow
    the fixed file rules, which hold before any adapter is imported; any other name takes its
    kind, and a wrapper its ``metadata_types``, from its registration.

    Raises:
        ValueError: for a core or framework container whose kind disagrees with `MAPPINGS`
            and `WRAPPER_METADATA`, or one that would change an earlier registration's kind.
    """
    for c in containers:
        top = c.name.partition(".")[0]
        fixed = top in ADAPTERS or top in _CORE
        disagrees = (c.kind == "dict") != (c.name in MAPPINGS) or (c.kind == "wrapper" and top not in WRAPPER_METADATA)
        if fixed and disagrees:
            raise ValueError(f"container {c.name!r} of kind {c.kind!r} disagrees with MAPPINGS and WRAPPER_METADATA")
        earlier = _REGISTRY.get(c.name)
        if earlier is not None and earlier.kind != c.kind:
            raise ValueError(f"container {c.name!r} is registered as a {earlier.kind} already")
        _REGISTRY[c.name] = c
    _BY_TYPE.clear()
    _rule.cache_clear()


def _load_adapter(top: str) -> None:
    module = ADAPTERS.get(top)
    if module is not None:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise CkptSchemaError(
                f"this checkpoint holds {top} containers but {top} cannot be imported ({e}); "
                f"install it with: pip install 'ckptschema[{top}]'"
            ) from e


def find(obj: Any) -> Container | None:
    """The registered container `obj` is an instance of, or None."""
    cls = type(obj)
    if cls in _BY_TYPE:
        return _BY_TYPE[cls]
    top = (cls.__module__ or "").partition(".")[0]
    if top in ADAPTERS and not any(c.framework.startswith(top) for c in _REGISTRY.values()):
        _load_adapter(top)
    found = next((c for c in _REGISTRY.values() if c.match(obj)), None)
    _BY_TYPE[cls] = found
    return found


def refusal(node: Mapping[str, Any]) -> str | None:
    """Why a manifest may not hold this ``dict`` or ``wrapper`` node of a container type, or None.

    Decided from the file alone, with no framework imported: the name must be registered
    or under a framework of `ADAPTERS`; a ``dict`` node must name one of `MAPPINGS` and a
    wrapper any other name; a wrapper's metadata holds only its framework's keys of
    `WRAPPER_METADATA`, with their value types. A ``jax.random.key`` wrapper names an
    implementation of `PRNG_KEY_SHAPES` and holds ``uint32`` key data of its shape; an nnx
    variable with ``hijax`` or ``ref`` set holds a tensor, a number or a PRNG key.

    Returns:
        The problem, worded to follow ``container type 'NAME' at PATH``.

    Example:
        >>> refusal({"kind": "dict", "type": "jax.random.key", "keys": [], "children": []})
        'is a one-child wrapper, not a mapping: a dict node cannot name it'
    """
    name = node["type"]
    listed, mapping, allowed = _rule(name)
    if not listed:
        return "is not on the allow-list"
    if node["kind"] == "dict":
        return None if mapping else "is a one-child wrapper, not a mapping: a dict node cannot name it"
    if mapping:
        return "is a mapping, not a one-child wrapper: a wrapper node cannot name it"
    metadata = node["metadata"]
    for key, value in metadata.items():
        expected = allowed.get(key)
        if type(value) is not expected:
            if expected is None:
                keys = ", ".join(allowed) or "none"
                return f"has metadata {key!r}, which its wrappers do not hold (the format allows: {keys})"
            return f"has metadata {key}={value!r}; it must be a {expected.__name__}"
    if name == PRNG_KEY.name:
        return _key_refusal(metadata, node["child"])
    if allowed is _NNX_METADATA and (metadata.get("hijax") or metadata.get("ref")) and not _jax_value(node["child"]):
        return "sets hijax or ref around a value that is not a tensor, a number or a PRNG key"
    return None


@functools.lru_cache(maxsize=1024)
def _rule(name: str) -> tuple[bool, bool, dict[str, type]]:
    """Whether a container name is on the allow-list, whether it is a mapping, and its wrappers' metadata.

    Names of the core and of `ADAPTERS` follow the fixed rules; others their registration
    (`register` clears this cache).
    """
    top = name.partition(".")[0]
    if top in ADAPTERS or top in _CORE:
        return name in _REGISTRY or top in ADAPTERS, name in MAPPINGS, WRAPPER_METADATA.get(top, {})
    registered = _REGISTRY.get(name)
    if registered is None:
        return False, False, {}
    return True, registered.kind == "dict", dict(registered.metadata_types)


def _key_refusal(metadata: Mapping[str, Any], child: Mapping[str, Any]) -> str | None:
    impl = metadata.get("impl")
    if impl is None:
        return "has no metadata 'impl' naming its PRNG implementation"
    if impl not in PRNG_KEY_SHAPES:
        known = ", ".join(PRNG_KEY_SHAPES)
        return f"names the PRNG implementation {impl!r}; the format knows: {known}"
    tail = PRNG_KEY_SHAPES[impl]
    if child["kind"] != "tensor" or child["dtype"] != "uint32" or tuple(child["shape"][-len(tail) :]) != tail:
        shape = "".join(f"{n}, " for n in tail).rstrip(", ")
        return f"holds {_described(child)}; {impl} key data is uint32 of shape (..., {shape})"
    return None


def _described(node: Mapping[str, Any]) -> str:
    if node["kind"] == "tensor":
        return f"{node['dtype']}[{','.join(map(str, node['shape']))}]"
    return f"a {node['kind']} node"


def _jax_value(node: Mapping[str, Any]) -> bool:
    kind = node["kind"]
    return (
        kind == "tensor"
        or (kind == "scalar" and node["type"] in _JAX_VALUE_SCALARS)
        or (kind == "wrapper" and node["type"] == PRNG_KEY.name)
    )


def lookup(name: str) -> Container:
    """The container a manifest names; `KeyError` if it is not on the allow-list."""
    if name not in _REGISTRY:
        _load_adapter(name.partition(".")[0])
    return _REGISTRY[name]


def _key_impl(key: Any) -> str:
    """The PRNG implementation name of a typed key array, concrete or abstract."""
    import jax

    if isinstance(key, jax.Array):
        return str(jax.random.key_impl(key))
    names: list[str] = []
    jax.eval_shape(lambda k: names.append(str(jax.random.key_impl(k))), key)
    return names[0]


def _key_data(key: Any) -> Any:
    import jax

    if isinstance(key, jax.Array):
        return jax.random.key_data(key)
    return jax.eval_shape(jax.random.key_data, key)


def _wrap_key(data: Any, metadata: Mapping[str, Any]) -> Any:
    import jax

    return jax.random.wrap_key_data(data, impl=metadata["impl"])


def is_prng_key(obj: Any) -> bool:
    """Whether an array leaf is a typed PRNG key array (``jax.random.key``)."""
    import jax
    import numpy as np

    if not isinstance(obj, (jax.Array, jax.ShapeDtypeStruct)) or isinstance(obj.dtype, np.dtype):
        return False
    return jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key)


#: Typed PRNG keys are stored as their ``uint32`` key data, with the implementation's name.
PRNG_KEY = Container(
    name="jax.random.key",
    framework="jax",
    kind="wrapper",
    match=is_prng_key,
    build=_wrap_key,
    unwrap=_key_data,
    metadata=lambda key: {"impl": _key_impl(key)},
    rebuild_like=lambda like, data: _wrap_key(data, {"impl": _key_impl(like)}),
)


def _ordered_dict(children: Mapping[Any, Any], metadata: Any = None) -> Any:
    import collections

    return collections.OrderedDict(children)


register(
    PRNG_KEY,
    Container(
        name=_BUILTIN,
        framework="jax",
        kind="dict",
        match=lambda obj: type(obj).__module__ == "collections" and type(obj).__name__ == "OrderedDict",
        build=_ordered_dict,
    ),
)
