"""dm-haiku: params, state, and ``{"params": ..., "state": ...}`` checkpoints.

Haiku keeps parameters and state as plain nested dicts keyed by module name, so the core
handles them as they are: module names such as ``mlp/~/linear_0`` are kept exactly, in dict
keys and in tensor keys (``params.mlp/~/linear_0.w``). This module only records framework
``haiku`` in the manifest; it does not import haiku itself.

Example:
    >>> import jax, jax.numpy as jnp, haiku as hk, ckptschema.haiku
    >>> f = hk.transform(lambda x: hk.nets.MLP([3, 2])(x))
    >>> params = f.init(jax.random.key(0), jnp.ones((1, 2)))
    >>> manifest = ckptschema.haiku.save(tmp_path / "mlp.safetensors", params)
    >>> manifest.framework, sorted(manifest.tensors)[:2]
    ('haiku', ['mlp/~/linear_0.b', 'mlp/~/linear_0.w'])
    >>> restored = ckptschema.haiku.load(tmp_path / "mlp.safetensors")
    >>> bool((f.apply(restored, None, jnp.ones((1, 2))) == f.apply(params, None, jnp.ones((1, 2)))).all())
    True
"""

from __future__ import annotations

import os
from typing import Any

import ckptschema

from . import _safejax

__all__ = ["deserialize", "load", "save", "serialize"]

PathLike = str | os.PathLike[str]


def save(path: PathLike, tree: Any, **save_kwargs: Any) -> ckptschema.Manifest:
    """Save haiku params, state, or any pytree of them, recording framework ``haiku``.

    Args:
        path: the file to write.
        tree: ``params``, ``state``, ``{"params": params, "state": state}`` or any pytree.
        **save_kwargs: the options of `ckptschema.save` (``metadata``, ``separator``, ...).

    Returns:
        The `ckptschema.Manifest` written.

    Example:
        >>> import jax.numpy as jnp, ckptschema.haiku
        >>> params = {"linear": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}}
        >>> ckptschema.haiku.save(tmp_path / "p.safetensors", {"params": params, "state": {}}).framework
        'haiku'
    """
    save_kwargs.setdefault("framework", "haiku")
    return ckptschema.save(path, tree, **save_kwargs)


def load(path: PathLike, template: Any = None, **load_kwargs: Any) -> Any:
    """Load a haiku checkpoint; the same as `ckptschema.load`.

    Args:
        path: the checkpoint file.
        template: e.g. ``jax.eval_shape(f.init, rng, x)``, or None for the saved tree.
        **load_kwargs: the options of `ckptschema.load` (``strict``, ``subtree``, ...).

    Returns:
        The tree: plain dicts keyed by module name, as haiku expects.

    Raises:
        ckptschema.ValidationError: listing every mismatch with the template, by path.

    Example:
        >>> import jax, jax.numpy as jnp, ckptschema.haiku
        >>> params = {"mlp/~/linear_0": {"w": jnp.ones((2, 3))}}
        >>> _ = ckptschema.haiku.save(tmp_path / "p.safetensors", params)
        >>> list(ckptschema.haiku.load(tmp_path / "p.safetensors", template=jax.eval_shape(lambda: params)))
        ['mlp/~/linear_0']
    """
    return ckptschema.load(path, template, **load_kwargs)


def serialize(params: Any, filename: PathLike | None = None, **save_kwargs: Any) -> bytes | ckptschema.Manifest:
    """safejax's ``serialize``: `save` to `filename` (returns the manifest), or return the bytes.

    Args:
        params: haiku params, state, or any pytree of them.
        filename: the file to write; None returns the bytes instead.
        **save_kwargs: the options of `ckptschema.save`; ``framework`` defaults to ``haiku``.

    Example:
        >>> import jax.numpy as jnp, ckptschema.haiku
        >>> data = ckptschema.haiku.serialize(params={"linear": {"w": jnp.ones(2)}})
        >>> ckptschema.haiku.deserialize(path_or_buf=data)["linear"]["w"].tolist()
        [1.0, 1.0]
    """
    save_kwargs.setdefault("framework", "haiku")
    return _safejax.serialize(params, filename, **save_kwargs)


def deserialize(
    path_or_buf: PathLike | bytes | bytearray | memoryview, template: Any = None, **load_kwargs: Any
) -> Any:
    """safejax's ``deserialize``: `load` from a path, or from bytes.

    Args:
        path_or_buf: the checkpoint (as for `load`), or its bytes.
        template: as for `load`.
        **load_kwargs: the options of `ckptschema.load`.

    Example:
        >>> import jax.numpy as jnp, ckptschema.haiku
        >>> _ = ckptschema.haiku.serialize({"w": jnp.ones(2)}, tmp_path / "w.safetensors")
        >>> ckptschema.haiku.deserialize(tmp_path / "w.safetensors")["w"].shape
        (2,)
    """
    return _safejax.deserialize(path_or_buf, template, **load_kwargs)
