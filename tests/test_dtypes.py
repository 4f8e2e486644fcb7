"""The dtype table: every dtype JAX uses, how the header names it, and bit-exact round trips."""

from __future__ import annotations

import numpy as np
import pytest

import ckptschema
from ckptschema import _header, _sources, _tensors
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


SUB_BYTE = {"int4": 4, "uint4": 4, "int2": 2, "uint2": 2, "float4_e2m1fn": 4, "float6_e2m3fn": 6, "float6_e3m2fn": 6}


def _refusal(where: str, key: str, name: str, offset: int) -> str:
    bits = SUB_BYTE[name]
    return (
        f"{where}: tensor {key!r} ({name}) has bits set above its {bits} value bits at file byte {offset}; "
        f"a {name} value fills the low {bits} bits of its byte and the rest must be zero (the file is corrupt)"
    )


@pytest.mark.parametrize("name", sorted(SUB_BYTE))
def test_sub_byte_value_with_high_bits_set_is_refused_on_load(name):
    data = bytearray(ckptschema.dumps({"w": np.zeros(4, DTYPES[name].numpy)}))
    data[-2] = 1 << SUB_BYTE[name]
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.loads(bytes(data))
    assert str(e.value) == _refusal("<bytes>", "w", name, len(data) - 2)


def test_sub_byte_value_with_high_bits_set_is_refused_through_mmap(tmp_path):
    path = tmp_path / "m.safetensors"
    ckptschema.save(path, {"w": np.zeros(4, DTYPES["int4"].numpy)})
    data = bytearray(path.read_bytes())
    data[-4] = 0xF0
    path.write_bytes(data)
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.load(path, template={"w": np.zeros(4, DTYPES["int4"].numpy)}, mmap=True)
    assert str(e.value) == _refusal(str(path), "w", "int4", len(data) - 4)


def test_sub_byte_value_with_high_bits_set_is_refused_in_a_shard_naming_it(tmp_path):
    ckptschema.save(tmp_path, {"a": np.zeros(100, np.int8), "w": np.zeros(8, DTYPES["uint2"].numpy)}, max_shard_size=64)
    (shard,) = [p for p in tmp_path.glob("model-00002-*.safetensors")]
    data = bytearray(shard.read_bytes())
    data[-1] = 0x04
    shard.write_bytes(data)
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.load(tmp_path)
    assert str(e.value) == _refusal(str(shard), "w", "uint2", len(data) - 1)


def test_sub_byte_block_with_high_bits_set_is_refused_when_read_as_a_block():
    data = bytearray(ckptschema.dumps({"w": np.zeros((4, 4), DTYPES["float6_e2m3fn"].numpy)}))
    data[-3] = 0x40  # element (3, 1)
    source = _sources.BytesSource(bytes(data))
    entry = _header.read_header(source).entries["w"]
    with pytest.raises(ckptschema.FormatError) as e:
        _tensors.read_blocks(source, entry, DTYPES["float6_e2m3fn"], (4, 4), [(slice(2, 4), slice(0, 2))])
    assert str(e.value) == _refusal("<bytes>", "w", "float6_e2m3fn", len(data) - 3)


def test_save_refuses_a_sub_byte_array_whose_bytes_have_high_bits_set(tmp_path):
    viewed = np.array([3, 0x13], np.uint8).view(DTYPES["int4"].numpy)  # ml_dtypes builds it without a complaint
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(tmp_path / "m.safetensors", {"w": viewed})
    assert str(e.value) == (
        "tensor 'w' (int4) has bits set above its 4 value bits in byte 1; a int4 value must fill only the low "
        "4 bits of its byte: clear the rest with `(x.view(np.uint8) & 0xf).view(x.dtype)` or build the array "
        "from values"
    )
    assert list(tmp_path.iterdir()) == []
