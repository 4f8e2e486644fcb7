"""Every dtype JAX uses, its manifest name, and how its bytes sit in a safetensors file.

Where safetensors has a dtype of the same layout, its code is used, so other readers see a
proper tensor. Where it has none (int4, float4/6, the rarer float8s, complex128), the bytes
are stored as ``U8`` with a trailing axis of the item size, and the true dtype lives in the
manifest. safetensors' ``F4``/``F6_*`` codes are packed sub-byte layouts while ml_dtypes keeps
one byte per element, so those go through ``U8`` too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import ml_dtypes
import numpy as np

__all__ = ["ALL_DTYPE_NAMES", "DTYPES", "DType", "dtype_of", "lookup"]


@dataclasses.dataclass(frozen=True)
class DType:
    """A dtype as the manifest names it and as the safetensors header stores it."""

    name: str
    numpy: np.dtype
    code: str  # safetensors header dtype

    @property
    def stored_as_bytes(self) -> bool:
        """True when the safetensors header calls it ``U8`` and the manifest has the truth."""
        return self.code == "U8" and self.name != "uint8"

    @property
    def bits(self) -> int | None:
        """How many low bits of each byte hold a value, for dtypes of less than 8 bits (else None).

        Such dtypes keep one value per byte; the bits above must be zero in memory and in files.
        """
        return _VALUE_BITS.get(self.name)

    def header_shape(self, shape: Sequence[int]) -> list[int]:
        """The shape the safetensors header records for a tensor of this dtype."""
        if self.stored_as_bytes and self.numpy.itemsize > 1:
            return [*shape, self.numpy.itemsize]
        return list(shape)


_NATIVE = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
}
_AS_BYTES = (
    "complex128",
    "float8_e4m3b11fnuz",
    "float8_e3m4",
    "float8_e4m3",
    "float4_e2m1fn",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "int4",
    "uint4",
    "int2",
    "uint2",
)

#: Value bits of the dtypes narrower than a byte (ml_dtypes stores each in the low bits of a byte).
_VALUE_BITS = {
    "float4_e2m1fn": 4,
    "float6_e2m3fn": 6,
    "float6_e3m2fn": 6,
    "int4": 4,
    "uint4": 4,
    "int2": 2,
    "uint2": 2,
}

#: Every dtype name of the file format, whether or not this installation's ml_dtypes has it.
ALL_DTYPE_NAMES = (*_NATIVE, *_AS_BYTES)


def _numpy_dtype(name: str) -> np.dtype | None:
    scalar = getattr(ml_dtypes, name, None) or getattr(np, name, None)
    return None if scalar is None else np.dtype(scalar)


def _table() -> dict[str, DType]:
    table = {}
    for name in ALL_DTYPE_NAMES:
        dt = _numpy_dtype(name)
        if dt is not None:  # an older ml_dtypes may lack the newest types
            table[name] = DType(name, dt.newbyteorder("<"), _NATIVE.get(name, "U8"))
    return table


#: Manifest dtype name -> `DType`, for every dtype this installation can represent.
DTYPES: dict[str, DType] = _table()
_BY_NUMPY = {d.numpy: d for d in DTYPES.values()}
#: safetensors header code -> the dtype it means when a file has no manifest.
BY_CODE: dict[str, DType] = {d.code: d for d in DTYPES.values() if not d.stored_as_bytes}


def lookup(name: str) -> DType:
    """The `DType` a manifest name stands for; `KeyError` if unknown."""
    return DTYPES[name]


def dtype_of(array_dtype: np.dtype) -> DType | None:
    """The `DType` of a numpy/JAX dtype, or None if ckptschema cannot store it."""
    found = _BY_NUMPY.get(array_dtype)  # the common case: a native little-endian dtype
    if found is None and isinstance(array_dtype, np.dtype):
        found = _BY_NUMPY.get(array_dtype.newbyteorder("<"))
    return found


@functools.cache
def jax_can_hold(name: str) -> bool:
    """Whether the running JAX can hold this dtype without changing its bits.

    False for 64-bit types with ``jax_enable_x64`` off (JAX would truncate them) and for
    dtypes the backend cannot place (float6 on CPU); such leaves load as numpy arrays.
    """
    import jax

    dt = DTYPES[name].numpy
    if jax.dtypes.canonicalize_dtype(dt) != dt:
        return False
    try:
        jax.device_put(np.zeros((1,), dt)).block_until_ready()
    except Exception:  # any refusal by the backend means it cannot hold the dtype
        return False
    return True
