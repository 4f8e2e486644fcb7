"""Flax: linen variables (dict or ``FrozenDict``), ``flax.struct`` dataclasses, and nnx.

Importing this module registers flax's containers with the core, so a manifest can name
them and a template-less load can rebuild them:

- ``flax.FrozenDict``: a mapping, rebuilt as a ``FrozenDict`` (plain dicts stay dicts);
- ``flax.nnx.State``: a mapping whose keys are str, or int under an ``nnx.List``. A State
  holds its inner levels as plain dicts (what ``nnx.state(model)`` gives); each level is
  recorded as the State or dict it is, so a load gives back the very same tree structure;
- ``flax.nnx.Param``, ``flax.nnx.BatchStat``, ... one per built-in nnx ``Variable`` type:
  a wrapper around its value with the variable's metadata that the format documents: the
  constructor flags ``hijax``, ``ref``, ``eager_sharding`` and an RNG variable's ``tag``.
  Other metadata (sharding annotations, hooks, custom keywords) is not stored; a template
  gives it back. A wrapper adds no part to tensor keys (``layers.0.kernel``, not
  ``layers.0.kernel.value``).

A PRNG key held by a variable (``nnx.RngKey``) is stored like any typed key: its
``jax.random.key_data`` (``uint32``) inside a ``jax.random.key`` wrapper that records the
implementation, and it comes back as a typed key.

``flax.struct`` dataclasses (a ``TrainState``) and user-defined nnx ``Variable`` subclasses
are ordinary pytree nodes to the core: they load through a template.

Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, ckptschema.flax
    >>> model = nn.Dense(3)
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 2)))
    >>> manifest = ckptschema.flax.save(tmp_path / "dense.safetensors", variables)
    >>> manifest.framework, sorted(manifest.tensors)
    ('flax', ['params.bias', 'params.kernel'])
    >>> restored = ckptschema.flax.load(tmp_path / "dense.safetensors")
    >>> bool((model.apply(restored, jnp.ones((1, 2))) == model.apply(variables, jnp.ones((1, 2)))).all())
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

try:
    import jax
    from flax import nnx
    from flax.core.frozen_dict import FrozenDict
except ImportError as e:  # pragma: no cover - exercised in a subprocess by tests/test_imports.py
    raise ImportError(f"ckptschema.flax needs flax ({e}); install it with: pip install 'ckptschema[flax]'") from e

import ckptschema

from . import _safejax
from ._containers import WRAPPER_METADATA, Container, register

__all__ = ["deserialize", "load", "load_into", "save", "serialize"]

PathLike = str | os.PathLike[str]

#: The metadata an nnx variable's wrapper records, with each value's type (the format's rule).
_METADATA = WRAPPER_METADATA["flax"]


# ------------------------------------------------------------------------ containers


def _frozen_dict(children: Mapping[Any, Any], metadata: Any = None) -> FrozenDict:
    return FrozenDict(children)


def _state(children: Mapping[Any, Any], metadata: Any = None) -> nnx.State:
    return nnx.State(children)


def _state_items(state: nnx.State) -> Any:
    """A State's own entries: its inner levels as stored (plain dicts), not wrapped in new States."""
    return state.raw_mapping.items()


def _unwrap(var: nnx.Variable) -> Any:
    return var.get_value()


def _metadata(var: nnx.Variable) -> dict[str, Any]:
    """The variable's metadata that the format documents (`_METADATA`), in its types; the rest is left out."""
    return {k: v for k, v in var.get_metadata().items() if k in _METADATA and type(v) is _METADATA[k]}


def _variable_builder(cls: type[nnx.Variable]) -> Any:
    def build(child: Any, metadata: Mapping[str, Any]) -> nnx.Variable:
        return cls(child, **metadata)

    return build


def _variable_like(template: nnx.Variable, child: Any) -> nnx.Variable:
    """A variable of the template's type holding `child`, with exactly the template's metadata."""
    treedef = jax.tree_util.tree_structure(template, is_leaf=lambda c: c is not template)
    return jax.tree_util.tree_unflatten(treedef, [child])


def _variable_types() -> dict[str, type[nnx.Variable]]:
    """Every built-in nnx Variable type, by its public name (``Param``, ``BatchStat``, ...)."""
    found = {}
    for name in sorted(dir(nnx)):
        obj = getattr(nnx, name)
        if isinstance(obj, type) and issubclass(obj, nnx.Variable) and obj.__module__.startswith("flax."):
            found[name] = obj
    return found


def _exact(cls: type) -> Any:
    return lambda obj: type(obj) is cls


register(
    Container(
        name="flax.FrozenDict",
        framework="flax",
        kind="dict",
        match=_exact(FrozenDict),
        build=_frozen_dict,
    ),
    Container(
        name="flax.nnx.State",
        framework="flax.nnx",
        kind="dict",
        match=_exact(nnx.State),
        build=_state,
        items=_state_items,
    ),
    *(
        Container(
            name=f"flax.nnx.{name}",
            framework="flax.nnx",
            kind="wrapper",
            match=_exact(cls),
            build=_variable_builder(cls),
            unwrap=_unwrap,
            metadata=_metadata,
            rebuild_like=_variable_like,
        )
        for name, cls in _variable_types().items()
    ),
)


# ---------------------------------------------------------------------------- public API


def _as_tree(tree_or_model: Any) -> Any:
    return nnx.state(tree_or_model) if isinstance(tree_or_model, nnx.Pytree) else tree_or_model


def _framework(tree: Any) -> str:
    """``flax.nnx`` for a tree holding nnx State or Variables, else ``flax``."""
    nodes = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, (nnx.State, nnx.Variable)))
    return "flax.nnx" if any(isinstance(x, (nnx.State, nnx.Variable)) for x in nodes) else "flax"


def save(path: PathLike, tree_or_model: Any, **save_kwargs: Any) -> ckptschema.Manifest:
    """Save flax variables, a ``flax.struct`` dataclass, an nnx ``State`` or an nnx Module.

    An nnx Module (or ``nnx.Optimizer``) is saved as ``nnx.state(model)``. The manifest records framework
    ``flax.nnx`` for nnx trees and ``flax`` otherwise (plain dicts included), unless
    ``framework=`` says otherwise; the header also gets ``"format": "flax"``.

    Args:
        path: the file to write.
        tree_or_model: linen variables (dict or ``FrozenDict``), any pytree, an nnx
            ``State`` or an nnx ``Module``.
        **save_kwargs: the options of `ckptschema.save` (``metadata``, ``separator``, ...).

    Returns:
        The `ckptschema.Manifest` written.

    Example:
        >>> import jax.numpy as jnp, ckptschema.flax
        >>> from flax import nnx
        >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        >>> ckptschema.flax.save(tmp_path / "linear.safetensors", model).framework
        'flax.nnx'
    """
    tree = _as_tree(tree_or_model)
    save_kwargs.setdefault("framework", _framework(tree))
    return ckptschema.save(path, tree, **save_kwargs)


def load(path: PathLike, template: Any = None, **load_kwargs: Any) -> Any:
    """Load a flax checkpoint; with a template, checked against it first.

    Without a template the tree comes back as it was saved: dicts as dicts, ``FrozenDict``
    as ``FrozenDict``, nnx ``State`` with its ``Param``/``BatchStat``/... variables. A
    ``flax.struct`` dataclass (a ``TrainState``) needs a template, e.g.
    ``jax.eval_shape(create_train_state, ...)``. An nnx Module as template stands for
    ``nnx.state(model)``.

    Args:
        path: the checkpoint file.
        template: a pytree of arrays or ``jax.ShapeDtypeStruct``, an nnx ``State`` or Module.
        **load_kwargs: the options of `ckptschema.load` (``strict``, ``subtree``, ...).

    Returns:
        The tree; with a template, of the template's own types.

    Raises:
        ckptschema.ValidationError: listing every mismatch with the template, by path.

    Example:
        >>> import jax, jax.numpy as jnp, ckptschema.flax
        >>> from flax.core import freeze
        >>> variables = freeze({"params": {"w": jnp.ones(2)}})
        >>> _ = ckptschema.flax.save(tmp_path / "v.safetensors", variables)
        >>> type(ckptschema.flax.load(tmp_path / "v.safetensors")).__name__
        'FrozenDict'
    """
    if template is not None:
        template = _as_tree(template)
    return ckptschema.load(path, template, **load_kwargs)


def load_into(model: nnx.Pytree, path: PathLike, **load_kwargs: Any) -> None:
    """Load a checkpoint into an nnx Module in place.

    The file is checked against ``nnx.state(model)`` first (every path, shape, dtype and
    variable type); only when all of it matches is the model updated with ``nnx.update``,
    so a failed load leaves the model as it was.

    Args:
        model: the nnx Module (or ``nnx.Optimizer``, any ``nnx.Pytree``) to update.
        path: the checkpoint file.
        **load_kwargs: the options of `ckptschema.load` (``strict``, ``verify``, ...).

    Raises:
        ckptschema.ValidationError: listing every mismatch with the model, by path.

    Example:
        >>> import jax.numpy as jnp, ckptschema.flax
        >>> from flax import nnx
        >>> _ = ckptschema.flax.save(tmp_path / "a.safetensors", nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
        >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
        >>> ckptschema.flax.load_into(model, tmp_path / "a.safetensors")
        >>> bool((model.kernel[...] == nnx.Linear(2, 3, rngs=nnx.Rngs(0)).kernel[...]).all())
        True
    """
    if not isinstance(model, nnx.Pytree):
        raise TypeError(
            f"load_into takes an nnx Module or Optimizer, not {type(model).__name__}; use load(path, template=...)"
        )
    state = ckptschema.load(path, nnx.state(model), **load_kwargs)
    nnx.update(model, state)


def serialize(params: Any, filename: PathLike | None = None, **save_kwargs: Any) -> bytes | ckptschema.Manifest:
    """safejax's ``serialize``: `save` to `filename` (returns the manifest), or return the bytes.

    Args:
        params: flax variables, any pytree, an nnx ``State`` or an nnx Module (saved as
            ``nnx.state(model)``).
        filename: the file to write; None returns the bytes instead.
        **save_kwargs: the options of `ckptschema.save`; ``framework`` defaults as for `save`.

    Example:
        >>> import jax.numpy as jnp, ckptschema.flax
        >>> data = ckptschema.flax.serialize(params={"params": {"w": jnp.arange(3.0)}})
        >>> ckptschema.flax.deserialize(path_or_buf=data)["params"]["w"].tolist()
        [0.0, 1.0, 2.0]
    """
    tree = _as_tree(params)
    save_kwargs.setdefault("framework", _framework(tree))
    return _safejax.serialize(tree, filename, **save_kwargs)


def deserialize(
    path_or_buf: PathLike | bytes | bytearray | memoryview, template: Any = None, **load_kwargs: Any
) -> Any:
    """safejax's ``deserialize``: `load` from a path, or from bytes.

    Args:
        path_or_buf: the checkpoint (as for `load`), or its bytes.
        template: as for `load` (an nnx Module stands for ``nnx.state(model)``).
        **load_kwargs: the options of `ckptschema.load`.

    Example:
        >>> import jax.numpy as jnp, ckptschema.flax
        >>> _ = ckptschema.flax.serialize({"w": jnp.ones(2)}, tmp_path / "w.safetensors")
        >>> ckptschema.flax.deserialize(tmp_path / "w.safetensors")["w"].shape
        (2,)
    """
    if template is not None:
        template = _as_tree(template)
    return _safejax.deserialize(path_or_buf, template, **load_kwargs)
