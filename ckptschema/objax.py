"""objax: ``VarCollection`` checkpoints that keep each variable's kind.

Importing this module registers objax's containers with the core:

- ``objax.VarCollection``: a mapping from objax's variable names
  (``(Sequential)[0](Linear).w``) to variables. JAX treats a VarCollection as one leaf, so
  the core walks it through this registration; each name is one tensor key, unchanged.
- ``objax.TrainVar``, ``objax.StateVar``, ``objax.RandomState``, ``objax.TrainRef``: wrappers
  around a variable's value that record its kind, so a template-less load gives back the
  same kinds. A ``TrainRef`` (an optimizer's reference to a model's ``TrainVar``) is saved
  with the value it refers to; loaded without a template it refers to a fresh ``TrainVar``.

Example:
    >>> import objax, ckptschema.objax
    >>> model = objax.nn.Linear(2, 3)
    >>> _ = ckptschema.objax.save(tmp_path / "linear.safetensors", model.vars())
    >>> restored = ckptschema.objax.load(tmp_path / "linear.safetensors")
    >>> sorted((name, type(var).__name__) for name, var in restored.items())
    [('(Linear).b', 'TrainVar'), ('(Linear).w', 'TrainVar')]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

try:
    import objax
    from objax.variable import BaseVar, RandomState, StateVar, TrainRef, TrainVar, VarCollection
except ImportError as e:  # pragma: no cover - exercised in a subprocess by tests/test_imports.py
    raise ImportError(f"ckptschema.objax needs objax ({e}); install it with: pip install 'ckptschema[objax]'") from e

import ckptschema

from . import _safejax
from ._containers import Container, register

__all__ = ["deserialize", "load", "load_into", "save", "serialize"]

PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------------ containers


def _var_collection(children: Mapping[str, Any], metadata: Any = None) -> VarCollection:
    return VarCollection(children)


def _unwrap(var: BaseVar) -> Any:
    return var.value


def _no_metadata(var: BaseVar) -> dict[str, Any]:
    return {}


def _train_var(child: Any, metadata: Any = None) -> TrainVar:
    return TrainVar(child)


def _state_var(child: Any, metadata: Any = None) -> StateVar:
    return StateVar(child)


def _random_state(child: Any, metadata: Any = None) -> RandomState:
    state = RandomState(0)
    state.assign(child, check=False)
    return state


def _train_ref(child: Any, metadata: Any = None) -> TrainRef:
    return TrainRef(TrainVar(child))


def _var_like(template: BaseVar, child: Any) -> BaseVar:
    """A new variable of the template's kind (and ``reduce``) holding `child`; the template is untouched."""
    # Not copy.copy: a Var forwards unknown attributes to its value, which copy's protocol trips on.
    var = object.__new__(type(template))
    var.__dict__.update(vars(template))
    # check=False: objax's check uses jax.sharding.PmapSharding, which JAX 0.10 removed.
    var.assign(child, check=False)
    return var


def _ref_like(template: TrainRef, child: Any) -> TrainRef:
    return TrainRef(_var_like(template.ref, child))


def _exact(cls: type) -> Any:
    return lambda obj: type(obj) is cls


def _var(name: str, cls: type, build: Any, rebuild_like: Any = _var_like) -> Container:
    return Container(
        name=f"objax.{name}",
        framework="objax",
        kind="wrapper",
        match=_exact(cls),
        build=build,
        unwrap=_unwrap,
        metadata=_no_metadata,
        rebuild_like=rebuild_like,
    )


register(
    Container(
        name="objax.VarCollection",
        framework="objax",
        kind="dict",
        match=_exact(VarCollection),
        build=_var_collection,
    ),
    _var("TrainVar", TrainVar, _train_var),
    _var("StateVar", StateVar, _state_var),
    _var("RandomState", RandomState, _random_state),
    _var("TrainRef", TrainRef, _train_ref, _ref_like),
)


# ---------------------------------------------------------------------------- public API


def _as_vars(vars_or_module: Any) -> Any:
    return vars_or_module.vars() if isinstance(vars_or_module, objax.Module) else vars_or_module


def save(path: PathLike, vars_or_module: Any, **save_kwargs: Any) -> ckptschema.Manifest:
    """Save a ``VarCollection`` (``model.vars()``), or a Module's variables.

    Each variable name is one tensor key; the manifest records framework ``objax`` and
    each variable's kind.

    Args:
        path: the file to write.
        vars_or_module: ``model.vars()`` (a ``VarCollection``), an objax Module, or any
            pytree holding VarCollections.
        **save_kwargs: the options of `ckptschema.save` (``metadata``, ``separator``, ...).

    Returns:
        The `ckptschema.Manifest` written.

    Example:
        >>> import objax, ckptschema.objax
        >>> manifest = ckptschema.objax.save(tmp_path / "m.safetensors", objax.nn.Linear(2, 3))
        >>> manifest.framework, sorted(manifest.tensors)
        ('objax', ['(Linear).b', '(Linear).w'])
    """
    save_kwargs.setdefault("framework", "objax")
    return ckptschema.save(path, _as_vars(vars_or_module), **save_kwargs)


def load(path: PathLike, template: Any = None, **load_kwargs: Any) -> Any:
    """Load an objax checkpoint as a new ``VarCollection``; nothing is assigned.

    Without a template the variables come back with the kinds they were saved with
    (``TrainVar``, ``StateVar``, ``RandomState``, ``TrainRef``). With a template
    (``model.vars()`` or a Module), the file is checked against it first and the result
    holds new variables of the template's kinds. To update a model, use `load_into`.

    Args:
        path: the checkpoint file.
        template: a ``VarCollection``, an objax Module, or None.
        **load_kwargs: the options of `ckptschema.load` (``strict``, ``subtree``, ...).

    Returns:
        A ``VarCollection`` (or the saved tree, if it was not one).

    Raises:
        ckptschema.ValidationError: listing every mismatch with the template, by path.

    Example:
        >>> import objax, ckptschema.objax
        >>> model = objax.nn.Sequential([objax.nn.Linear(2, 3), objax.nn.BatchNorm0D(3)])
        >>> _ = ckptschema.objax.save(tmp_path / "m.safetensors", model.vars())
        >>> vc = ckptschema.objax.load(tmp_path / "m.safetensors")
        >>> type(vc).__name__, type(vc["(Sequential)[1](BatchNorm0D).running_mean"]).__name__
        ('VarCollection', 'StateVar')
    """
    if template is not None:
        template = _as_vars(template)
    return ckptschema.load(path, template, **load_kwargs)


def load_into(vars_or_module: Any, path: PathLike, **load_kwargs: Any) -> None:
    """Check a checkpoint against a model's variables, then assign every one of them.

    Everything is validated first (names, kinds, shapes, dtypes; every problem reported at
    once); only when all of it matches are the values assigned, so a failed load never
    leaves a model half-assigned. A ``TrainRef`` assigns the ``TrainVar`` it refers to.

    Args:
        vars_or_module: ``model.vars()`` (a ``VarCollection``) or an objax Module.
        path: the checkpoint file.
        **load_kwargs: the options of `ckptschema.load` (``strict``, ``verify``, ...).

    Raises:
        ckptschema.ValidationError: listing every mismatch with the model, by path.

    Example:
        >>> import objax, ckptschema.objax
        >>> _ = ckptschema.objax.save(tmp_path / "a.safetensors", objax.nn.Linear(2, 3))
        >>> model = objax.nn.Linear(2, 3)
        >>> ckptschema.objax.load_into(model.vars(), tmp_path / "a.safetensors")
    """
    vc = _as_vars(vars_or_module)
    if not isinstance(vc, VarCollection):
        raise TypeError(f"load_into takes model.vars() or an objax Module, not {type(vc).__name__}")
    loaded = ckptschema.load(path, vc, **load_kwargs)
    for name, var in vc.items():
        target = var.ref if isinstance(var, TrainRef) else var
        target.assign(loaded[name].value, check=False)


def serialize(params: Any, filename: PathLike | None = None, **save_kwargs: Any) -> bytes | ckptschema.Manifest:
    """safejax's ``serialize``: `save` to `filename` (returns the manifest), or return the bytes.

    Args:
        params: ``model.vars()``, an objax Module (saved as its ``vars()``), or any pytree
            holding VarCollections.
        filename: the file to write; None returns the bytes instead.
        **save_kwargs: the options of `ckptschema.save`; ``framework`` defaults to ``objax``.

    Example:
        >>> import objax, ckptschema.objax
        >>> data = ckptschema.objax.serialize(params=objax.nn.Linear(2, 3).vars())
        >>> sorted(ckptschema.objax.deserialize(path_or_buf=data).keys())
        ['(Linear).b', '(Linear).w']
    """
    save_kwargs.setdefault("framework", "objax")
    return _safejax.serialize(_as_vars(params), filename, **save_kwargs)


def deserialize(
    path_or_buf: PathLike | bytes | bytearray | memoryview, template: Any = None, **load_kwargs: Any
) -> Any:
    """safejax's ``deserialize``: `load` from a path, or from bytes.

    Args:
        path_or_buf: the checkpoint (as for `load`), or its bytes.
        template: as for `load` (a Module stands for its ``vars()``).
        **load_kwargs: the options of `ckptschema.load`.

    Example:
        >>> import objax, ckptschema.objax
        >>> _ = ckptschema.objax.serialize(objax.nn.Linear(2, 3).vars(), tmp_path / "m.safetensors")
        >>> type(ckptschema.objax.deserialize(tmp_path / "m.safetensors")).__name__
        'VarCollection'
    """
    if template is not None:
        template = _as_vars(template)
    return _safejax.deserialize(path_or_buf, template, **load_kwargs)
