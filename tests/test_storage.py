"""The byte layer: header encoding and coalesced tensor reads."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import ckptschema
from ckptschema import _storage
from ckptschema._dtypes import DTYPES

from .helpers import assert_same_array


@given(st.lists(st.text(), unique=True, max_size=6), st.lists(st.integers(0, 5), max_size=3))
def test_entries_json_is_exactly_what_json_dumps_writes(keys, shape):
    entries = [(key, "F32", shape, 4 * int(np.prod(shape))) for key in keys]
    expected, offset = {}, 0
    for key, code, dims, nbytes in entries:
        expected[key] = {"dtype": code, "shape": dims, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    assert "{" + _storage.entries_json(entries) + "}" == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)


class _CountingSource(_storage.BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read_into(self, offset: int, buffer: memoryview) -> None:
        self.reads += 1
        super().read_into(offset, buffer)


def test_adjacent_small_tensors_are_read_in_one_call():
    tree = {f"w{i}": np.full(3, i, np.float32) for i in range(50)}
    source = _CountingSource(ckptschema.dumps(tree, checksum=None))
    header = _storage.read_header(source)
    reads_for_header = source.reads
    wanted = [(header.entries[k], DTYPES["float32"], (3,)) for k in reversed(list(tree))]
    arrays = _storage.read_tensors(source, wanted)
    assert source.reads - reads_for_header == 1
    for key, array in zip(reversed(list(tree)), arrays):
        assert_same_array(array, tree[key])


def test_large_tensors_get_their_own_aligned_buffer():
    big = np.arange(1 << 19, dtype=np.float32)  # 2 MiB
    data = ckptschema.dumps({"a": np.ones(1, np.int8), "big": big}, checksum=None)
    source = _storage.BytesSource(data)
    header = _storage.read_header(source)
    (array,) = _storage.read_tensors(source, [(header.entries["big"], DTYPES["float32"], big.shape)])
    assert array.__array_interface__["data"][0] % 64 == 0
    assert_same_array(array, big)
