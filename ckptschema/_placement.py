"""Where loaded arrays go: numpy, the template leaf's sharding, or JAX's default device.

`place` decides from the template leaf; `scalar_like` does the same for scalars. Putting
an array on one device goes through `single_device_put`: `fast_put`, a probed path into JAX's C++
layer, where it is there and behaves, else `public_put` (`jax.device_put`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._dtypes import jax_can_hold

__all__ = [
    "Put",
    "behaves_like_public",
    "default_sharding",
    "fast_put",
    "place",
    "public_put",
    "scalar_like",
    "single_device_put",
]


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
        return single_device_put()(array, sharding, True)
    return jax.device_put(array, sharding)


#: Puts a host array on one device: ``put(array, sharding, committed)``; an uncommitted result
#: may move to wherever a computation needs it, as a ``jnp`` array does.
Put = Callable[[np.ndarray, jax.sharding.SingleDeviceSharding, bool], jax.Array]


def public_put(array: np.ndarray, sharding: jax.sharding.SingleDeviceSharding, committed: bool) -> jax.Array:
    """`Put` through the public `jax.device_put`: the fallback of `fast_put`.

    Example:
        >>> out = public_put(np.arange(3, dtype=np.int8), default_sharding(), False)
        >>> out.tolist(), out.committed
        ([0, 1, 2], False)
    """
    return jax.device_put(array, sharding if committed else None)


@functools.cache
def single_device_put() -> Put:
    """The `Put` that loads use: `fast_put` when this JAX has it, else `public_put`."""
    return fast_put() or public_put


@functools.cache
def fast_put() -> Put | None:
    """`jax.device_put` onto one device at a small part of its per-call cost, or None.

    A 20,000-leaf checkpoint would spend most of its load in `jax.device_put`'s Python
    layers (75 us a call here); the C++ `batched_device_put` that `device_put` ends in takes
    4 us (with the abstract value of each shape and dtype made once) and still aliases
    64-byte-aligned host buffers on CPU. It is internal to JAX, so it is used only when it
    imports and passes `behaves_like_public`; None otherwise.
    """
    try:
        from jax._src import core
        from jax._src.lib import xla_client

        aval_of = functools.lru_cache(maxsize=4096)(core.ShapedArray)
        batched_device_put = xla_client.batched_device_put
    except Exception:  # any difference in JAX's internals means: use the public API
        return None

    def put(array: np.ndarray, sharding: jax.sharding.SingleDeviceSharding, committed: bool) -> jax.Array:
        aval = aval_of(array.shape, array.dtype)
        return batched_device_put(aval, sharding, [array], [*sharding.device_set], committed)

    return put if behaves_like_public(put) else None


def behaves_like_public(put: Put) -> bool:
    """Whether `put` gives what `public_put` gives for a probe array: its values, the asked-for
    committed flag, the default device's sharding; False if it raises.

    Example:
        >>> behaves_like_public(public_put), behaves_like_public(lambda array, sharding, committed: array)
        (True, False)
    """
    probe = np.arange(3, dtype=np.float32)
    try:
        for committed in (False, True):
            result = put(probe, default_sharding(), committed)
            if not (
                isinstance(result, jax.Array)
                and np.array_equal(np.asarray(result), probe)
                and result.committed == committed
                and result.sharding == default_sharding()
            ):
                return False
    except Exception:  # a put that fails on the probe is one that differs
        return False
    return True


@functools.cache
def default_sharding() -> jax.sharding.SingleDeviceSharding:
    """The sharding of JAX's first local device, where new arrays go by default."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _to_default_device(array: np.ndarray) -> jax.Array:
    if getattr(jax.config, "jax_default_device", None) is not None:
        return jax.device_put(array)
    return single_device_put()(array, default_sharding(), False)


def scalar_like(value: Any, like: Any) -> Any:
    """A file scalar in the form of its template leaf (a Python scalar or a 0-d array)."""
    if isinstance(like, (bool, int, float, str)):
        return value
    dtype = np.dtype(like.dtype)
    if isinstance(like, np.ndarray | np.generic):
        return np.asarray(value, dtype)
    array = jax.numpy.asarray(value)
    return array if array.dtype == dtype else jax.numpy.asarray(value, dtype)
