"""Where loaded arrays go, and the private-JAX fast path onto one device against its public fallback."""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest

from ckptschema._placement import (
    behaves_like_public,
    default_sharding,
    fast_put,
    place,
    public_put,
    single_device_put,
)

#: Arrays of several dtypes, with bits a lossy path would change: NaN payloads, -0.0, extremes.
ARRAYS = {
    "float32": np.array([0.0, -0.0, np.inf, 1e-45], np.float32),
    "float32 nan payload": np.array([0x7FC00001, 0xFFC00000], np.uint32).view(np.float32),
    "bfloat16": np.array([1.5, -2.0, 3.0e38], ml_dtypes.bfloat16),
    "float16": np.array([65504.0, -0.0, 6e-8], np.float16),
    "int8": np.array([-128, 0, 127], np.int8),
    "uint32": np.array([0, 2**32 - 1], np.uint32),
    "bool": np.array([True, False, True]),
    "complex64": np.array([1 + 2j, -0.0 - 1j], np.complex64),
    "0-d int32": np.array(7, np.int32),
    "2-d float32": np.arange(12, dtype=np.float32).reshape(3, 4),
}


def _same(got: jax.Array, want: jax.Array) -> None:
    assert type(got) is type(want)
    assert (got.dtype, got.shape, got.committed, got.sharding) == (
        want.dtype,
        want.shape,
        want.committed,
        want.sharding,
    )
    assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_this_jax_has_the_fast_path():
    assert fast_put() is not None
    assert single_device_put() is fast_put()


@pytest.mark.parametrize("committed", [False, True])
@pytest.mark.parametrize("name", list(ARRAYS))
def test_fast_path_gives_what_jax_device_put_gives_bit_for_bit(name, committed):
    put = fast_put()
    assert put is not None
    array = ARRAYS[name]
    _same(put(array, default_sharding(), committed), jax.device_put(array, default_sharding() if committed else None))


@pytest.mark.parametrize("committed", [False, True])
@pytest.mark.parametrize("name", list(ARRAYS))
def test_public_fallback_gives_what_the_fast_path_gives(name, committed):
    put = fast_put()
    assert put is not None
    array = ARRAYS[name]
    _same(public_put(array, default_sharding(), committed), put(array, default_sharding(), committed))


def test_both_puts_pass_the_probe():
    assert behaves_like_public(public_put)
    assert behaves_like_public(fast_put())  # type: ignore[arg-type]


def test_probe_refuses_a_put_that_always_commits():
    def committing(array, sharding, committed):
        return jax.device_put(array, sharding)

    assert not behaves_like_public(committing)


def test_probe_refuses_a_put_that_changes_values():
    def zeroing(array, sharding, committed):
        return public_put(np.zeros_like(array), sharding, committed)

    assert not behaves_like_public(zeroing)


def test_probe_refuses_a_put_that_raises():
    def failing(array, sharding, committed):
        raise TypeError("batched_device_put() takes 4 positional arguments")

    assert not behaves_like_public(failing)


def test_place_keeps_numpy_for_a_numpy_template_leaf():
    array = np.arange(3, dtype=np.float32)
    assert place(array, "float32", np.zeros(3, np.float32)) is array


def test_place_gives_a_numpy_scalar_for_a_numpy_scalar_template_leaf():
    got = place(np.array(3, np.int16), "int16", np.int16(0))
    assert type(got) is np.int16 and got == 3


def test_place_puts_an_uncommitted_leaf_on_the_default_device_uncommitted():
    got = place(np.arange(3, dtype=np.float32), "float32", jax.numpy.zeros(3))
    assert isinstance(got, jax.Array) and not got.committed and got.sharding == default_sharding()


def test_place_commits_a_leaf_whose_template_leaf_is_committed():
    like = jax.device_put(np.zeros(3, np.float32), default_sharding())
    got = place(np.arange(3, dtype=np.float32), "float32", like)
    assert got.committed and got.sharding == like.sharding
    assert got.tolist() == [0.0, 1.0, 2.0]
