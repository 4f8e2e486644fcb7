"""One process of a multi-process test: ``python tests/multihost.py SCENARIO PROCESS COUNT PORT DIRECTORY``.

Each process starts JAX's multi-controller runtime with its coordinator on 127.0.0.1, two
CPU devices of its own, then runs one scenario and prints its result as the last line of
stdout (JSON). `tests/test_multihost.py` starts the processes and checks the results.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

#: The partitions of the test tree, by leaf name, over a mesh of ("hosts", "local") axes.
SPECS = {
    "rows": P(("hosts", "local")),
    "columns": P(None, ("hosts", "local")),
    "blocks": P("hosts", "local"),
    "hosts_only": P("hosts"),
    "replicated": P(),
}
#: The global shape of every array of the test tree (float32; `scale` multiplies the rows).
SHAPE = (64, 48)


def global_values(scale: int = 1) -> dict[str, np.ndarray]:
    """The test tree's arrays as whole numpy arrays: what every process's blocks are cut from."""
    rows = SHAPE[0] * scale
    values = {
        name: (np.arange(rows * SHAPE[1], dtype=np.float32).reshape(rows, SHAPE[1]) + 1000 * i)
        for i, name in enumerate(SPECS)
    }
    values["bf16"] = np.linspace(-3, 3, rows * 8, dtype=np.float32).reshape(rows, 8).astype(jax.numpy.bfloat16)
    return values


def mesh() -> Mesh:
    return Mesh(np.array(jax.devices()).reshape(jax.process_count(), 2), ("hosts", "local"))


def sharding(name: str) -> NamedSharding:
    return NamedSharding(mesh(), SPECS.get(name, P("hosts")))


def spanning_tree(scale: int = 1) -> dict:
    """The test tree with arrays that span processes (each process builds only its own blocks)."""
    tree: dict = {}
    for name, value in global_values(scale).items():
        tree[name] = jax.make_array_from_callback(value.shape, sharding(name), lambda index, v=value: v[index])
    tree["host_numpy"] = np.arange(10, dtype=np.int16)
    tree["step"] = 7
    return tree


def template(scale: int = 1) -> dict:
    """The test tree's template: every array as a `jax.ShapeDtypeStruct` with its global sharding."""
    tree: dict = {
        name: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding(name))
        for name, value in global_values(scale).items()
    }
    tree["host_numpy"] = np.zeros(10, np.int16)
    tree["step"] = 0
    return tree


def own_block_bytes(tree: dict) -> int:
    """The distinct bytes of this process's blocks of the arrays that span processes."""
    total = 0
    for leaf in tree.values():
        if isinstance(leaf, jax.Array):
            shards = leaf.addressable_shards
            distinct = {tuple(s.indices(n)[:2] for s, n in zip(shard.index, leaf.shape)) for shard in shards}
            total += sum(int(np.prod([b - a for a, b in bounds])) * leaf.dtype.itemsize for bounds in distinct)
    return total


def read_bytes() -> int:
    """Bytes this process has read from files so far (``rchar`` of /proc/self/io)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


#: Bytes of the ranged GETs remote reads have asked for (socket reads are not in ``rchar``).
_REQUESTED = [0]


def count_requested_ranges() -> None:
    """Count the bytes of every ranged GET this process's remote reads plan."""
    from ckptschema import _remote

    plan = _remote.plan_reads

    def counting(runs, *args):  # type: ignore[no-untyped-def]
        requests = plan(runs, *args)
        _REQUESTED[0] += sum(end - start for start, end, _ in requests)
        return requests

    _remote.plan_reads = counting


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def scenario_save(directory: str) -> dict:
    import ckptschema

    tree = spanning_tree(scale=int(os.environ.get("SCALE", "1")))
    with tempfile.TemporaryDirectory() as warm:  # what the first save of a process builds once (models, modules)
        ckptschema.save(os.path.join(warm, "w.safetensors"), {"w": np.zeros(4, np.float32), "s": 1})
    before = peak_rss()
    manifest = ckptschema.save(directory, tree, max_shard_size=os.environ.get("SHARD_SIZE", "20KB"))
    return {
        "digests": {k: t.digest for k, t in manifest.tensors.items()},
        "own": own_block_bytes(tree),
        "rss_growth": peak_rss() - before,
    }


def scenario_load(directory: str) -> dict:
    import ckptschema

    scale = int(os.environ.get("SCALE", "1"))
    wanted = template(scale)
    remote = "://" in directory
    if remote:
        count_requested_ranges()
    before = _REQUESTED[0] if remote else read_bytes()
    loaded = ckptschema.load(directory, wanted, verify=os.environ.get("VERIFY") == "1")
    read = (_REQUESTED[0] if remote else read_bytes()) - before
    values = global_values(scale)
    for name, array in loaded.items():
        if name in values:
            assert array.sharding == sharding(name), (name, array.sharding, sharding(name))
            for shard in array.addressable_shards:
                expected = values[name][shard.index]
                found = np.asarray(shard.data)
                assert found.dtype == expected.dtype and found.tobytes() == expected.tobytes(), name
    return {"read": read, "own": own_block_bytes(loaded), "step": loaded["step"]}


def scenario_load_without_template(directory: str) -> dict:
    """Every process reads the whole checkpoint onto its own default device."""
    import ckptschema

    loaded = ckptschema.load(directory)
    values = global_values()
    for name, value in values.items():
        array = loaded[name]
        assert array.is_fully_addressable and array.devices() == {jax.local_devices()[0]}, name
        assert np.asarray(array).tobytes() == value.tobytes(), name
    return {"step": loaded["step"]}


def scenario_kill_mid_save(directory: str) -> dict:
    """Process ``VICTIM`` dies (SIGKILL) while it writes its blocks; the others wait for it in vain."""
    if jax.process_index() == int(os.environ["VICTIM"]):
        real = os.pwritev
        calls = []

        def dying(fd: int, buffers: list, offset: int) -> int:
            calls.append(offset)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(fd, buffers, offset)

        os.pwritev = dying
    return scenario_save(directory)


def scenario_fails_in_one_bucket(directory: str) -> dict:
    """Process 1's first S3 call named ``FAIL_CALL`` fails (the store refusing it), as a save to a bucket goes on."""
    if jax.process_index() == 1:
        import s3fs

        real = s3fs.S3FileSystem._call_s3
        failing = os.environ["FAIL_CALL"]

        async def refusing(self, method, *args, **kwargs):  # type: ignore[no-untyped-def]
            if method == failing:
                raise OSError(f"{method} refused")
            return await real(self, method, *args, **kwargs)

        s3fs.S3FileSystem._call_s3 = refusing
    return scenario_save(directory)


def scenario_different_trees(directory: str) -> dict:
    import ckptschema

    tree = spanning_tree()
    if jax.process_index() == 1:
        tree["extra"] = np.zeros(3, np.float32)
    ckptschema.save(directory, tree)
    return {}


def scenario_fails_in_one(directory: str) -> dict:
    """Process 1 cannot write its blocks: its file size limit (RLIMIT_FSIZE) makes its writes fail (EFBIG)."""
    import ckptschema

    if jax.process_index() == 1:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    ckptschema.save(directory, spanning_tree(), max_shard_size="20KB")
    return {}


def scenario_refusals(directory: str) -> dict:
    """The messages of the saves a tree that spans processes cannot make."""
    import ckptschema

    tree = spanning_tree()
    found = {}
    for name, call in [
        ("file", lambda: ckptschema.save(os.path.join(directory, "model.safetensors"), tree)),
        ("url", lambda: ckptschema.save("memory://bucket/ckpt", tree)),
        ("dumps", lambda: ckptschema.dumps(tree)),
    ]:
        try:
            call()
        except ckptschema.CkptSchemaError as e:
            found[name] = str(e)
    return found


def main() -> None:
    scenario, process, count, port, directory = sys.argv[1:6]
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(count),
        process_id=int(process),
        initialization_timeout=60,
        heartbeat_timeout_seconds=10,
    )
    try:
        result = {"ok": globals()[f"scenario_{scenario}"](directory)}
    except Exception as e:  # reported to the test, which checks the message
        result = {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(result), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
