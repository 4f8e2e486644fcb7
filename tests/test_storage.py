"""The byte layer: header encoding and coalesced tensor reads."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ckptschema
from ckptschema import _header, _sources, _tensors
from ckptschema._dtypes import DTYPES
from ckptschema._json import compact_json
from ckptschema._limits import MAX_TENSORS

from .helpers import assert_same_array


@given(st.lists(st.text(), unique=True, max_size=6), st.lists(st.integers(0, 5), max_size=3))
def test_entries_json_is_exactly_what_the_json_encoders_write(keys, shape):
    entries = [(key, "F32", shape, 4 * int(np.prod(shape))) for key in keys]
    expected, offset = {}, 0
    for key, code, dims, nbytes in entries:
        expected[key] = {"dtype": code, "shape": dims, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = "{" + _header.entries_json(entries) + "}"
    assert text == compact_json(expected) == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)


class _CountingSource(_sources.BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read_into(self, offset: int, buffer: memoryview) -> None:
        self.reads += 1
        super().read_into(offset, buffer)


def test_adjacent_small_tensors_are_read_in_one_call():
    tree = {f"w{i}": np.full(3, i, np.float32) for i in range(50)}
    source = _CountingSource(ckptschema.dumps(tree, checksum=None))
    header = _header.read_header(source)
    reads_for_header = source.reads
    wanted = [(header.entries[k], DTYPES["float32"], (3,)) for k in reversed(list(tree))]
    arrays = _tensors.read_tensors(source, wanted)
    assert source.reads - reads_for_header == 1
    for key, array in zip(reversed(list(tree)), arrays):
        assert_same_array(array, tree[key])


def test_large_tensors_get_their_own_aligned_buffer():
    big = np.arange(1 << 19, dtype=np.float32)  # 2 MiB
    data = ckptschema.dumps({"a": np.ones(1, np.int8), "big": big}, checksum=None)
    source = _sources.BytesSource(data)
    header = _header.read_header(source)
    (array,) = _tensors.read_tensors(source, [(header.entries["big"], DTYPES["float32"], big.shape)])
    assert array.__array_interface__["data"][0] % 64 == 0
    assert_same_array(array, big)


def _recording_preadv(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Record ``(offset, bytes, thread)`` of every ``os.preadv`` call."""
    calls: list[tuple[int, int, int]] = []
    real = os.preadv

    def recording(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append((offset, sum(len(b) for b in buffers), threading.get_ident()))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", recording)
    return calls


def _runs(sizes_at: list[tuple[int, int]]) -> list[tuple[int, memoryview]]:
    return [(offset, memoryview(bytearray(size))) for offset, size in sizes_at]


def test_runs_adjacent_in_the_file_are_one_preadv_and_a_gap_starts_another(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(bytes(range(32)))
    source = _sources.FileSource(tmp_path / "f")
    calls = _recording_preadv(monkeypatch)
    where = [(0, 4), (4, 4), (12, 2), (14, 0), (14, 3)]
    runs = _runs(where)
    source.read_runs(runs)
    assert [(offset, n) for offset, n, _ in calls] == [(0, 8), (12, 5)]
    assert [bytes(buffer) for _, buffer in runs] == [bytes(range(i, i + n)) for i, n in where]


def test_a_preadv_call_takes_at_most_iov_max_buffers(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(bytes(range(32)))
    source = _sources.FileSource(tmp_path / "f")
    monkeypatch.setattr(_sources, "IOV_MAX", 3)
    calls = _recording_preadv(monkeypatch)
    runs = _runs([(i, 1) for i in range(7)])
    source.read_runs(runs)
    assert [(offset, n) for offset, n, _ in calls] == [(0, 3), (3, 3), (6, 1)]
    assert b"".join(bytes(buffer) for _, buffer in runs) == bytes(range(7))


def test_short_preadv_reads_are_resumed_where_they_stopped(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(bytes(range(64)))
    source = _sources.FileSource(tmp_path / "f")
    real = os.preadv

    def three_bytes_at_most(fd: int, buffers: list[memoryview], offset: int) -> int:
        return real(fd, [buffers[0][:3]], offset)  # what a kernel may do: fewer bytes than asked

    monkeypatch.setattr(os, "preadv", three_bytes_at_most)
    where = [(1, 5), (6, 2), (8, 7), (40, 10)]
    runs = _runs(where)
    source.read_runs(runs)
    assert [bytes(buffer) for _, buffer in runs] == [bytes(range(i, i + n)) for i, n in where]


def test_runs_past_the_end_of_the_file_are_a_format_error(tmp_path):
    (tmp_path / "f").write_bytes(bytes(16))
    source = _sources.FileSource(tmp_path / "f")
    with pytest.raises(ckptschema.FormatError) as e:
        source.read_runs(_runs([(8, 4), (12, 8)]))
    assert str(e.value) == (
        f"{tmp_path / 'f'}: file ended at byte 16, expected 4 more bytes (was it truncated while being read?)"
    )


def _large_file(tmp_path: object) -> tuple[object, dict[str, np.ndarray]]:
    tree = {"big": np.arange(10 << 20, dtype=np.float32), "small": np.ones(5, np.int8)}  # 40 MiB + 5 B
    path = tmp_path / "large.safetensors"  # type: ignore[operator]
    ckptschema.save(path, tree, checksum=None)
    return path, tree


def test_large_loads_are_read_in_chunks_on_several_threads_and_come_back_exact(tmp_path, monkeypatch):
    path, tree = _large_file(tmp_path)
    source = _sources.FileSource(path)
    header = _header.read_header(source)
    reads = _recording_preadv(monkeypatch)
    wanted = [(header.entries[k], DTYPES[str(a.dtype)], a.shape) for k, a in tree.items()]
    arrays = _tensors.read_tensors(source, wanted)
    assert max(n for _, n, _ in reads) == _sources._READ_CHUNK
    assert sum(n for _, n, _ in reads) == sum(a.nbytes for a in tree.values())
    assert len({thread for _, _, thread in reads}) == min(_sources._READ_WORKERS, len(reads))
    for array, expected in zip(arrays, tree.values()):
        assert_same_array(array, expected)


def test_file_truncated_under_a_threaded_read_is_a_format_error(tmp_path):
    path, tree = _large_file(tmp_path)
    source = _sources.FileSource(path)
    header = _header.read_header(source)
    with open(path, "r+b") as f:
        f.truncate(header.data_start + (20 << 20))
    wanted = [(header.entries[k], DTYPES[str(a.dtype)], a.shape) for k, a in tree.items()]
    with pytest.raises(ckptschema.FormatError, match=r"large\.safetensors: file ended at byte \d+"):
        _tensors.read_tensors(source, wanted)


def _raw_file(header: str, data: bytes = b"") -> bytes:
    text = header.encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def test_zero_size_tensor_with_huge_dimensions_is_refused_naming_max_elements():
    data = _raw_file('{"x":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}}')
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.loads(data)
    assert str(e.value) == (
        "<bytes>: tensor 'x' shape [0, 4611686018427387904, 4611686018427387904] describes more than "
        "MAX_ELEMENTS=281474976710656 elements (zero dimensions left out)"
    )


def test_shape_at_max_elements_with_a_zero_dimension_loads():
    data = _raw_file('{"x":{"dtype":"U8","shape":[0,65536,4294967296],"data_offsets":[0,0]}}')
    assert ckptschema.loads(data)["x"].shape == (0, 65536, 4294967296)


def _many_tensors(count: int, metadata: bool) -> bytes:
    members = ['"__metadata__":{"a":"b"}'] if metadata else []
    members += [f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(count)]
    return _raw_file("{" + ",".join(members) + "}")


@pytest.mark.parametrize("metadata", [False, True], ids=["no-metadata", "metadata"])
def test_header_of_max_tensors_tensors_is_read(metadata):
    header = _header.read_header(_sources.BytesSource(_many_tensors(MAX_TENSORS, metadata)))
    assert len(header.entries) == MAX_TENSORS


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (False, "<bytes>: header lists more than MAX_TENSORS=300000 tensors"),  # both refused before parsing
        (True, "<bytes>: header lists more than MAX_TENSORS=300000 tensors"),
    ],
    ids=["no-metadata", "metadata"],
)
def test_header_of_one_tensor_over_max_tensors_is_refused_naming_the_limit(metadata, message):
    with pytest.raises(ckptschema.FormatError) as e:
        _header.read_header(_sources.BytesSource(_many_tensors(MAX_TENSORS + 1, metadata)))
    assert str(e.value) == message


@pytest.mark.parametrize(
    "header",
    [
        '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"z":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}',
        '{"z":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}',
    ],
    ids=["empty-listed-after", "empty-listed-before"],
)
def test_zero_size_tensor_at_the_offset_of_another_loads_whatever_the_header_order(header):
    loaded = ckptschema.loads(_raw_file(header, b"\x01\x02\x03\x04"))
    assert (loaded["a"].tolist(), loaded["z"].shape) == ([1, 2, 3, 4], (0,))
