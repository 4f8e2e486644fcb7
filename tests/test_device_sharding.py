"""Sharded templates: each process reads only its devices' blocks, each distinct block once, for any sharding.

JAX fixes its device count at start-up, so the loads run in fresh interpreters with 8 CPU
devices (one process, or two processes of 4 joined by `jax.distributed` on 127.0.0.1). The
bytes a process reads are the growth of ``rchar`` in ``/proc/self/io`` around the load.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ckptschema
from ckptschema import _header, _sources, _tensors
from ckptschema._dtypes import DTYPES

#: Shared by the scripts: a tree, its files, a template per sharding, and rchar around a load.
_COMMON = r"""
import json, sys
import jax, numpy as np, ckptschema
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ckptschema import _header, _sources

def rchar():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])

def header_bytes(path):
    source = _sources.FileSource(path)
    try:
        return _header.read_header(source).data_start
    finally:
        source.close()

def distinct_bytes(array, sharding):
    blocks = {tuple(s.indices(n)[:2] for s, n in zip(index, array.shape))
              for index in sharding.addressable_devices_indices_map(array.shape).values()}
    return sum(int(np.prod([b - a for a, b in block])) for block in blocks) * array.itemsize

def spec(array, mesh, partition):
    return jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=NamedSharding(mesh, partition))

def measured_load(path, template, **options):
    before = rchar()
    out = ckptschema.load(path, template=template, **options)
    jax.block_until_ready(out)
    return out, rchar() - before

W = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
CUBE = np.random.default_rng(1).standard_normal((16, 256, 128)).astype(np.float32)
"""

_ONE_PROCESS = (
    _COMMON
    + r"""
directory = sys.argv[1]
line = Mesh(np.array(jax.devices()), ("x",))
grid = Mesh(np.array(jax.devices()).reshape(4, 2), ("x", "y"))
cases = {
    "rows": ({"w": W}, {"w": spec(W, line, P("x"))}),
    "columns": ({"w": W}, {"w": spec(W, line, P(None, "x"))}),
    "blocks": ({"w": W}, {"w": spec(W, grid, P("x", "y"))}),
    "replicated": ({"w": W}, {"w": spec(W, line, P())}),
    "half_replicated": ({"w": W}, {"w": spec(W, grid, P(None, "x"))}),
    "middle_axis": ({"c": CUBE}, {"c": spec(CUBE, line, P(None, "x", None))}),
}
mixed = {"w": W, "c": CUBE, "v": W[0], "step": 7}
cases["mixed"] = (mixed, {
    "w": spec(W, grid, P("y", "x")), "c": spec(CUBE, grid, P("y", None, "x")), "v": W[0], "step": 0,
})
cases["mixed_sharded_files"] = cases["mixed"]
ckptschema.save(f"{directory}/warm.safetensors", {"w": W[:8, :8]})
ckptschema.load(f"{directory}/warm.safetensors", template={"w": spec(W[:8, :8], line, P(None, "x"))})
results = {}
for name, (tree, template) in cases.items():
    if name == "mixed_sharded_files":
        path = f"{directory}/{name}"
        ckptschema.save(path, tree, max_shard_size=5 << 20)
        header = sum(header_bytes(p) for p in __import__("glob").glob(f"{path}/*.safetensors"))
        header += __import__("os").path.getsize(f"{path}/model.safetensors.index.json")
    else:
        path = f"{directory}/{name}.safetensors"
        ckptschema.save(path, tree)
        header = header_bytes(path)
    out, read = measured_load(path, template)
    leaves = [k for k in tree if isinstance(tree[k], np.ndarray)]
    results[name] = {
        "exact": all(np.array_equal(np.asarray(out[k]), tree[k]) for k in leaves)
                 and out.get("step") == tree.get("step"),
        "placed": all(out[k].sharding == template[k].sharding for k in leaves if hasattr(template[k], "sharding")),
        "read": read,
        "own": sum(distinct_bytes(tree[k], template[k].sharding) if hasattr(template[k], "sharding")
                   else tree[k].nbytes for k in leaves),
        "header": header,
    }
path = f"{directory}/verified.safetensors"
ckptschema.save(path, {"w": W})
template = {"w": spec(W, line, P(None, "x"))}
out, read = measured_load(path, template, verify=True)
results["verified"] = {"exact": bool(np.array_equal(np.asarray(out["w"]), W)),
                       "placed": out["w"].sharding == template["w"].sharding, "read": read,
                       "own": W.nbytes, "header": header_bytes(path)}
data = bytearray(open(path, "rb").read())
data[header_bytes(path) + 5 * 512 * 4 + 300] ^= 0x10
open(path, "wb").write(data)
try:
    ckptschema.load(path, template=template, verify=True)
    results["flipped"] = "loaded"
except ckptschema.IntegrityError as e:
    results["flipped"] = str(e)
print(json.dumps(results))
"""
)


def _python(script: str, *args: str, devices: int) -> subprocess.Popen[str]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _result(proc: subprocess.Popen[str]) -> Any:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out.splitlines()[-1])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _result(_python(_ONE_PROCESS, str(tmp_path_factory.mktemp("eight")), devices=8))


_LAYOUTS = ["rows", "columns", "blocks", "replicated", "half_replicated", "middle_axis", "mixed", "mixed_sharded_files"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", _LAYOUTS)
def test_a_sharded_template_loads_exactly_where_it_says(one_process, layout):
    assert one_process[layout]["exact"] and one_process[layout]["placed"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", _LAYOUTS)
def test_a_sharded_template_reads_each_distinct_block_once_and_nothing_else(one_process, layout):
    case = one_process[layout]
    assert case["read"] <= 1.1 * (case["own"] + case["header"]), case


@pytest.mark.slow
def test_a_column_split_over_8_devices_reads_the_tensor_once_not_8_times(one_process):
    case = one_process["columns"]
    assert case["own"] == 2048 * 512 * 4 and case["read"] <= 1.1 * (case["own"] + case["header"])


@pytest.mark.slow
def test_replicas_are_read_once(one_process):
    case = one_process["replicated"]
    assert case["own"] == 2048 * 512 * 4 and case["read"] < 2 * case["own"]  # 8 replicas, one read


@pytest.mark.slow
def test_verify_on_a_column_sharded_template_reads_the_tensor_once_and_loads_exactly(one_process):
    case = one_process["verified"]
    assert case["exact"] and case["placed"] and case["read"] <= 1.1 * (case["own"] + case["header"])


@pytest.mark.slow
def test_verify_on_a_column_sharded_template_detects_a_flipped_bit(one_process):
    expected = "verified.safetensors: tensor 'w' fails its blake3 checksum; the file is corrupt"
    assert one_process["flipped"].endswith(expected)


_TWO_PROCESSES = (
    _COMMON
    + r"""
directory, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=120)
line = Mesh(np.array(jax.devices()), ("x",))
grid = Mesh(np.array(jax.devices()).reshape(4, 2), ("x", "y"))
partitions = {"rows": (line, P("x")), "columns": (line, P(None, "x")), "blocks": (grid, P("x", "y"))}
path = f"{directory}/w.safetensors"
if pid == 0:
    ckptschema.save(f"{directory}/warm.safetensors", {"w": W[:8, :8]})
    ckptschema.save(path, {"w": W})
    bad = bytearray(open(path, "rb").read())
    bad[header_bytes(path) + 3 * 512 * 4 + 4] ^= 0x01
    open(f"{directory}/bad.safetensors", "wb").write(bad)
    open(f"{directory}/ready", "w").close()
import os, time
while not os.path.exists(f"{directory}/ready"):
    time.sleep(0.05)
ckptschema.load(f"{directory}/warm.safetensors", template={"w": spec(W[:8, :8], line, P(None, "x"))})
results = {}
for name, (mesh, partition) in partitions.items():
    template = {"w": spec(W, mesh, partition)}
    out, read = measured_load(path, template)
    shards = out["w"].addressable_shards
    results[name] = {
        "exact": all(np.array_equal(np.asarray(s.data), W[s.index]) for s in shards) and len(shards) == 4,
        "global": out["w"].shape == W.shape and not out["w"].is_fully_addressable,
        "read": read, "own": distinct_bytes(W, template["w"].sharding), "header": header_bytes(path),
    }
template = {"w": spec(W, line, P(None, "x"))}
out, read = measured_load(path, template, verify=True)
results["verified"] = {
    "exact": all(np.array_equal(np.asarray(s.data), W[s.index]) for s in out["w"].addressable_shards),
    "read": read, "whole": W.nbytes, "header": header_bytes(path),
}
try:
    ckptschema.load(f"{directory}/bad.safetensors", template=template, verify=True)
    results["flipped"] = "loaded"
except ckptschema.IntegrityError as e:
    results["flipped"] = str(e)
print(json.dumps(results))
"""
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory, port = str(tmp_path_factory.mktemp("two")), str(_free_port())
    procs = [_python(_TWO_PROCESSES, directory, port, str(pid), devices=4) for pid in (0, 1)]
    try:
        return [_result(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["rows", "columns", "blocks"])
def test_each_of_two_processes_reads_only_its_own_blocks(two_processes, layout):
    for result in two_processes:
        case = result[layout]
        assert case["exact"] and case["global"]
        assert case["own"] == 2048 * 512 * 4 // 2 and case["read"] <= 1.1 * (case["own"] + case["header"]), case


@pytest.mark.slow
def test_verify_across_two_processes_reads_the_tensor_once_in_each_and_needs_no_collective(two_processes):
    for result in two_processes:
        case = result["verified"]
        assert case["exact"] and case["read"] <= 1.1 * (case["whole"] + case["header"]), case


@pytest.mark.slow
def test_verify_across_two_processes_detects_a_flipped_bit_in_each(two_processes):
    for result in two_processes:
        assert result["flipped"].endswith("bad.safetensors: tensor 'w' fails its blake3 checksum; the file is corrupt")


_DTYPE_NAMES = ["float32", "int8", "bool", "int4", "uint4", "float64", "bfloat16", "uint16"]


def _array(shape: tuple[int, ...], name: str) -> np.ndarray:
    """Distinct values (within the dtype's range) of dtype `name`."""
    count = int(np.prod(shape))
    values = np.arange(count, dtype=np.int64) * 7 + 3
    if name == "bool":
        return (values % 2 == 0).reshape(shape)
    if name in ("int4", "uint4"):
        return (values % 8).astype(DTYPES[name].numpy).reshape(shape)
    return (values % 100).astype(DTYPES[name].numpy).reshape(shape)


def _block(shape: tuple[int, ...]) -> st.SearchStrategy[tuple[slice, ...]]:
    cuts = [st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda ab: slice(min(ab), max(ab))) for n in shape]
    return st.tuples(*cuts)


_CASES = st.lists(st.integers(1, 6), min_size=0, max_size=4).flatmap(
    lambda shape: st.tuples(
        st.just(tuple(shape)), st.lists(_block(tuple(shape)), min_size=1, max_size=4), st.sampled_from(_DTYPE_NAMES)
    )
)


@given(case=_CASES)
def test_read_blocks_equals_numpy_indexing(case):
    shape, indices, name = case
    array = _array(shape, name)
    source = _sources.BytesSource(ckptschema.dumps({"a": array}, checksum=None))
    entry = _header.read_header(source).entries["a"]
    blocks = _tensors.read_blocks(source, entry, DTYPES[name], shape, indices)
    assert len(blocks) == len(indices)
    for got, index in zip(blocks, indices):
        expected = array[index]
        assert got.dtype == expected.dtype and got.shape == expected.shape and got.flags.c_contiguous
        assert got.tobytes() == expected.tobytes()


class _BatchRecordingSource(_sources.BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.batches: list[list[tuple[int, int]]] = []

    def read_runs(self, runs: Any) -> None:
        self.batches.append([(offset, buffer.nbytes) for offset, buffer in runs])
        super().read_runs(runs)


def test_the_blocks_of_a_column_split_are_read_as_one_batch_of_their_rows_only():
    array = np.arange(6 * 8, dtype=np.int16).reshape(6, 8)
    source = _BatchRecordingSource(ckptschema.dumps({"a": array}, checksum=None))
    entry = _header.read_header(source).entries["a"]
    columns = [(slice(None), slice(0, 2)), (slice(None), slice(4, 6))]
    left, right = _tensors.read_blocks(source, entry, DTYPES["int16"], (6, 8), columns)
    assert left.tolist() == array[:, 0:2].tolist() and right.tolist() == array[:, 4:6].tolist()
    (batch,) = source.batches
    rows = [entry.start + 16 * r + 2 * c for r in range(6) for c in (0, 4)]
    assert batch == [(offset, 4) for offset in rows]


def test_replicas_of_a_block_are_one_array_read_once():
    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    source = _BatchRecordingSource(ckptschema.dumps({"a": array}, checksum=None))
    entry = _header.read_header(source).entries["a"]
    index = (slice(1, 3), slice(2, 5))
    first, second = _tensors.read_blocks(source, entry, DTYPES["float32"], (4, 6), [index, index])
    assert np.shares_memory(first, second) and first.tolist() == array[index].tolist()
    assert sum(n for batch in source.batches for _, n in batch) == 2 * 3 * 4


def test_a_0d_tensor_is_one_block_of_itself():
    source = _sources.BytesSource(ckptschema.dumps({"a": np.array(2.5, ml_dtypes.bfloat16)}, checksum=None))
    entry = _header.read_header(source).entries["a"]
    (block,) = _tensors.read_blocks(source, entry, DTYPES["bfloat16"], (), [()])
    assert block.shape == () and float(block) == 2.5


def test_a_block_with_a_step_is_refused():
    source = _sources.BytesSource(ckptschema.dumps({"a": np.zeros(4, np.int8)}, checksum=None))
    entry = _header.read_header(source).entries["a"]
    with pytest.raises(ValueError, match=r"has a step; only blocks of step 1 are read"):
        _tensors.read_blocks(source, entry, DTYPES["int8"], (4,), [(slice(0, 4, 2),)])
