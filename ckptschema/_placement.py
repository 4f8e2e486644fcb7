"""Where loaded arrays go: numpy, the template leaf's sharding, or JAX's default device.

`place` decides from the template leaf; `scalar_like` does the same for scalars. Putting
an array on one device goes through `_device_put`, a probed fast path into JAX's C++ layer
with `jax.device_put` as its fallback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._dtypes import jax_can_hold

__all__ = ["place", "scalar_like"]


def place(array: np.ndarray, dtype_name: str, like: Any = None) -> Any:
    """Put a loaded array where the template leaf says: numpy, its sharding, or the default device.

    An uncommitted template leaf (what ``jnp`` functions and ``model.init`` return) lives
    wherever JAX puts new arrays, and so does its loaded leaf.
    """
    if isinstance(like, np.generic):
        return array[()]
    if isinstance(like, np.ndarray) or not jax_can_hold(dtype_name):
        return array
    sharding = getattr(like, "sharding", None)
    if sharding is None or (isinstance(like, jax.Array) and not like.committed):
        return _to_default_device(array)
    if type(sharding) is jax.sharding.SingleDeviceSharding:
        return _device_put()(array, sharding, True)
    return jax.device_put(array, sharding)


Put = Callable[[np.ndarray, jax.sharding.SingleDeviceSharding, bool], jax.Array]


@functools.cache
def _device_put() -> Put:
    """`jax.device_put` onto one device, at a small part of its per-call cost.

    A 20,000-leaf checkpoint would spend most of its load in `jax.device_put`'s Python
    layers (75 us a call here); the C++ `batched_device_put` that `device_put` ends in takes
    4 us (with the abstract value of each shape and dtype made once) and still aliases
    64-byte-aligned host buffers on CPU. It is internal to JAX, so it is probed once and
    `jax.device_put` is used wherever it is missing or different.
    """

    def public(array: np.ndarray, sharding: jax.sharding.SingleDeviceSharding, committed: bool) -> jax.Array:
        return jax.device_put(array, sharding if committed else None)

    try:
        from jax._src import core
        from jax._src.lib import xla_client

        aval_of = functools.lru_cache(maxsize=4096)(core.ShapedArray)

        def put(array: np.ndarray, sharding: jax.sharding.SingleDeviceSharding, committed: bool) -> jax.Array:
            aval = aval_of(array.shape, array.dtype)
            return xla_client.batched_device_put(aval, sharding, [array], [*sharding.device_set], committed)

        probe = np.arange(3, dtype=np.float32)
        for committed in (False, True):
            result = put(probe, _default_sharding(), committed)
            if not (
                isinstance(result, jax.Array)
                and np.array_equal(np.asarray(result), probe)
                and result.committed == committed
                and result.sharding == _default_sharding()
            ):
                return public
        return put
    except Exception:  # any difference in JAX's internals means: use the public API
        return public


@functools.cache
def _default_sharding() -> jax.sharding.SingleDeviceSharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _to_default_device(array: np.ndarray) -> jax.Array:
    if getattr(jax.config, "jax_default_device", None) is not None:
        return jax.device_put(array)
    return _device_put()(array, _default_sharding(), False)


def scalar_like(value: Any, like: Any) -> Any:
    """A file scalar in the form of its template leaf (a Python scalar or a 0-d array)."""
    if isinstance(like, (bool, int, float, str)):
        return value
    dtype = np.dtype(like.dtype)
    if isinstance(like, np.ndarray | np.generic):
        return np.asarray(value, dtype)
    array = jax.numpy.asarray(value)
    return array if array.dtype == dtype else jax.numpy.asarray(value, dtype)
