"""The dtype table: every dtype JAX uses, how the header names it, and bit-exact round trips."""

from __future__ import annotations

import numpy as np
import pytest

import ckptschema
from ckptschema._dtypes import DTYPES, dtype_of, jax_can_hold

from .helpers import assert_same_array

SPEC_DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "bfloat16", "complex64", "complex128",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz",
    "float8_e8m0fnu", "float8_e3m4", "float8_e4m3", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn",
    "int4", "uint4", "int2", "uint2",
]  # fmt: skip


def test_table_covers_every_dtype_of_the_spec():
    assert sorted(SPEC_DTYPES) == sorted(DTYPES)


@pytest.mark.parametrize(
    ("name", "code"),
    [("bfloat16", "BF16"), ("float8_e4m3fn", "F8_E4M3"), ("float8_e8m0fnu", "F8_E8M0"), ("bool", "BOOL")],
)
def test_safetensors_codes_are_used_where_they_exist(name, code):
    assert DTYPES[name].code == code


@pytest.mark.parametrize("name", ["int4", "float4_e2m1fn", "float6_e2m3fn", "float8_e3m4", "complex128"])
def test_dtypes_safetensors_lacks_are_stored_as_bytes(name):
    assert DTYPES[name].stored_as_bytes


def test_bytes_layout_adds_an_itemsize_axis_only_when_needed():
    assert (DTYPES["complex128"].header_shape((2, 3)), DTYPES["int4"].header_shape((2, 3))) == ([2, 3, 16], [2, 3])


def test_big_endian_arrays_map_to_the_little_endian_dtype():
    assert dtype_of(np.dtype(">f4")) is DTYPES["float32"]


def test_64_bit_dtypes_are_not_held_by_jax_without_x64():
    assert not jax_can_hold("float64")


@pytest.mark.parametrize("name", SPEC_DTYPES)
def test_each_dtype_round_trips_bit_exactly(name):
    dtype = DTYPES[name].numpy
    if name in ("bool", "int4", "uint4", "int2", "uint2"):
        values = np.array([0, 1, 1, 0], np.int8).astype(dtype)
    else:
        values = np.frombuffer(bytes(range(4 * dtype.itemsize)), np.uint8).copy()
        values &= 0x0F if name == "float4_e2m1fn" else 0x3F if name.startswith("float6") else 0xFF
        values = values.view(dtype)
    loaded = ckptschema.loads(ckptschema.dumps({"x": values}))["x"]
    assert_same_array(loaded, values)


def test_big_endian_input_is_stored_little_endian():
    loaded = ckptschema.loads(ckptschema.dumps({"x": np.arange(3, dtype=">i4")}))["x"]
    assert_same_array(loaded, np.arange(3, dtype="<i4"))
