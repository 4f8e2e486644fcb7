"""Sharded templates: each device gets the bytes of its own block, read once, straight from the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ckptschema
from ckptschema import _header, _sources, _tensors
from ckptschema._dtypes import DTYPES

_EIGHT_DEVICES = r"""
import json, sys
import jax, numpy as np, ckptschema
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ckptschema import _header, _sources, _tensors

mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("x", "y"))
w = np.arange(64 * 6, dtype=np.float32).reshape(64, 6)
v = np.arange(16, dtype=np.int8)
tree = {"rows": w, "flat": v, "replicated": w, "blocks": w}
ckptschema.save(sys.argv[1], tree)
data_start = _header.read_header(_sources.FileSource(sys.argv[1])).data_start

reads = []
real = _sources.FileSource.read_into
def recording(self, offset, buffer):
    reads.append(buffer.nbytes)
    real(self, offset, buffer)
_sources.FileSource.read_into = recording

def spec(a, partition):
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, partition))
template = {
    "rows": spec(w, P("x")), "flat": spec(v, P(("x", "y"))), "replicated": spec(w, P()), "blocks": spec(w, P("x", "y")),
}
out = ckptschema.load(sys.argv[1], template=template)
print(json.dumps({
    "devices": len(jax.devices()),
    "exact": all(np.array_equal(np.asarray(out[k]), tree[k]) for k in tree),
    "placed": all(out[k].sharding == template[k].sharding for k in tree),
    "bytes_read": sum(reads) - data_start,
    "largest_read": max(reads[2:]),
}))
"""


def test_each_device_reads_only_its_block_of_a_sharded_template(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    path = tmp_path / "m.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES, str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["devices"] == 8 and result["exact"] and result["placed"]
    assert result["bytes_read"] == 3 * 64 * 6 * 4 + 16  # every tensor's bytes exactly once, replicas included
    assert result["largest_read"] == 64 * 6 * 4  # only the replicated tensor is read whole


_BLOCKS = st.lists(st.integers(1, 6), min_size=0, max_size=3).flatmap(
    lambda shape: st.tuples(
        st.just(tuple(shape)),
        st.tuples(
            *[st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda ab: slice(min(ab), max(ab))) for n in shape]
        ),
    )
)


@pytest.mark.parametrize("max_runs", [_tensors._MAX_RUNS, 0])
@given(block=_BLOCKS)
def test_read_slice_equals_numpy_indexing_by_runs_or_by_span(block, max_runs):
    shape, index = block
    array = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    source = _sources.BytesSource(ckptschema.dumps({"a": array}, checksum=None))
    entry = _header.read_header(source).entries["a"]
    limit, _tensors._MAX_RUNS = _tensors._MAX_RUNS, max_runs
    try:
        got = _tensors.read_slice(source, entry, DTYPES["int32"], shape, index)
    finally:
        _tensors._MAX_RUNS = limit
    np.testing.assert_array_equal(got, array[index])
    assert got.dtype == np.int32 and got.flags.c_contiguous
