"""Hypothesis strategies: arbitrary pytrees of every dtype, key kind and container.

Keys include the characters that break naive serialisers (``.``, ``/``, ``~``, ``[``,
quotes, non-ASCII); leaves include every dtype ckptschema stores, 0-d and zero-size arrays,
NaN payloads and the Python scalars a manifest keeps.
"""

from __future__ import annotations

import collections
import struct
from typing import Any

import numpy as np
from hypothesis import strategies as st

from ckptschema._dtypes import DTYPES
from ckptschema._limits import MAX_INT_DIGITS

Point = collections.namedtuple("Point", "x y")
Adam = collections.namedtuple("Adam", "count mu nu")
Empty = collections.namedtuple("Empty", "")
NAMEDTUPLES = (Point, Adam, Empty)

#: Sub-byte and bool dtypes: only some byte patterns are values, so draw values, not bytes.
_VALUE_RANGES = {
    "bool": (0, 1),
    "int4": (-8, 7),
    "uint4": (0, 15),
    "int2": (-2, 1),
    "uint2": (0, 3),
}
_BIT_MASKS = {"float4_e2m1fn": 0x0F, "float6_e2m3fn": 0x3F, "float6_e3m2fn": 0x3F}
DTYPE_NAMES = sorted(DTYPES)

shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)


@st.composite
def arrays(draw: st.DrawFn, dtype: str | None = None) -> np.ndarray:
    """A numpy array of any dtype ckptschema stores, with arbitrary bits where bits are free."""
    name = dtype or draw(st.sampled_from(DTYPE_NAMES))
    np_dtype = DTYPES[name].numpy
    shape = draw(shapes)
    size = int(np.prod(shape))
    if name in _VALUE_RANGES:
        lo, hi = _VALUE_RANGES[name]
        values = draw(st.lists(st.integers(lo, hi), min_size=size, max_size=size))
        return np.array(values, np.int8).astype(np_dtype).reshape(shape)
    raw = draw(st.binary(min_size=size * np_dtype.itemsize, max_size=size * np_dtype.itemsize))
    data = np.frombuffer(raw, np.uint8).copy()
    if name in _BIT_MASKS:
        data &= _BIT_MASKS[name]
    return data.view(np_dtype).reshape(shape)


str_keys = st.text(
    alphabet=st.sampled_from(list("ab.z/~[]'\"_-0 é€")) | st.characters(exclude_categories=["Cs"]),
    max_size=6,
)
int_keys = st.integers(-3, 1000)

#: NaNs of every sign and payload (quiet and signalling), as float64 bits give them.
nans = st.tuples(st.sampled_from([0x7FF, 0xFFF]), st.integers(1, 2**52 - 1)).map(
    lambda bits: struct.unpack("<d", struct.pack("<Q", bits[0] << 52 | bits[1]))[0]
)
floats = st.floats(allow_nan=True, allow_infinity=True) | nans

#: Ints up to the longest a manifest holds (`MAX_INT_DIGITS` digits).
ints = st.integers(-(2**70), 2**70) | st.sampled_from([10**MAX_INT_DIGITS - 1, -(10**MAX_INT_DIGITS) + 1])

scalars = st.booleans() | ints | floats | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)


def _dicts(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict]:
    return st.dictionaries(str_keys, children, max_size=4) | st.dictionaries(int_keys, children, max_size=4)


def _namedtuples(children: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple]:
    return st.sampled_from(NAMEDTUPLES).flatmap(
        lambda cls: st.tuples(*[children] * len(cls._fields)).map(lambda xs: cls(*xs))
    )


def trees(leaves: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Any]:
    """Arbitrary nested dict/list/tuple/namedtuple/None trees of arrays and scalars."""
    base = leaves if leaves is not None else (arrays() | scalars | st.none())
    return st.recursive(
        base,
        lambda children: (
            _dicts(children)
            | st.lists(children, max_size=4)
            | st.lists(children, max_size=4).map(tuple)
            | _namedtuples(children)
        ),
        max_leaves=12,
    )


def array_trees() -> st.SearchStrategy[Any]:
    """Trees with at least one tensor leaf somewhere, for template mutation properties."""
    return st.tuples(trees(), arrays()).map(lambda pair: {"anchor": pair[1], "rest": pair[0]})
