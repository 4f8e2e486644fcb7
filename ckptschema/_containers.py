"""The allow-list of framework containers the core can rebuild without a template.

The core imports no framework. A framework adapter (``ckptschema.flax``,
``ckptschema.objax``) registers its containers here when it is imported; the core imports an
adapter only from the fixed table `ADAPTERS`, either because a tree being saved holds a type
from that framework (so the framework is already imported) or because a manifest names one
of its containers. Nothing named in a file is ever imported by that name.
"""

from __future__ import annotations

import dataclasses
import importlib
import operator
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ._errors import CkptSchemaError

__all__ = ["ADAPTERS", "Container", "find", "lookup", "may_name", "register"]

#: Top-level module of a framework -> the ckptschema adapter that knows its containers.
ADAPTERS = {"flax": "ckptschema.flax", "objax": "ckptschema.objax"}

#: Python's own dict types that keep their identity in a manifest.
_BUILTIN = "collections.OrderedDict"


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


_REGISTRY: dict[str, Container] = {}
_BY_TYPE: dict[type, Container | None] = {}


def register(*containers: Container) -> None:
    """Add framework containers to the allow-list (called by the framework adapters)."""
    for c in containers:
        _REGISTRY[c.name] = c
    _BY_TYPE.clear()


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


def may_name(name: str) -> bool:
    """Whether a manifest may name this container: registered, or under an adapter's framework."""
    return name in _REGISTRY or name.partition(".")[0] in ADAPTERS


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
