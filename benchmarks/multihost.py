"""Multi-host benchmark: ckptschema against orbax across N processes of JAX's runtime (issue 12).

    python benchmarks/multihost.py [--quick] [--processes 2] [--out benchmarks/MULTIHOST.md]

The parent starts N worker processes (this script with ``--worker``) on 127.0.0.1, each with
two CPU devices and ``jax.distributed.initialize``. Every worker builds the same
transformer-like float32 tree of global ``jax.Array``s over a ("hosts", "local") mesh, with
row, column, 2-D, hosts-only and replicated partitions (each process makes only its own
blocks, from a formula of the global index). Then, per repetition (the first is a warm-up;
the order of the tools rotates), every tool saves, then every tool restores into the same
shardings: ckptschema (``save(dir, tree)`` / ``load(dir, template)``) and orbax
(``StandardCheckpointer.save`` + ``wait_until_finished`` / ``restore(dir, abstract tree)``).
Each timed op starts after a barrier (``sync_global_devices``); its time is the slowest
process's. Around each op a process records its /proc/self/io ``rchar``/``wchar`` deltas and
its peak memory (VmHWM reset through /proc/self/clear_refs, minus VmRSS at the start). Every
restore is checked bit for bit against the source blocks, outside the timed region. The
workers print JSON; the parent writes the report (`_multihost_report`).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOOLS = ("ckptschema", "orbax")
LOCAL_DEVICES = 2
_LIBC = ctypes.CDLL("libc.so.6")

# (d_model, d_mlp, layers, vocab, positions): 8 layers of 768 is ~327 MB of float32.
FULL = (768, 3072, 8, 16384, 1024)
QUICK = (64, 256, 2, 512, 64)


# ------------------------------------------------------------------------------ the tree


def spec(quick: bool) -> list[tuple[str, tuple[int, ...], tuple[Any, ...]]]:
    """(path, global shape, partition) of every leaf; partitions name the mesh axes of each dim.

    ``"hl"`` is both axes (``("hosts", "local")``), ``"h"`` the hosts axis, ``"l"`` the local
    one, ``None`` unsplit; ``()`` is replicated.
    """
    d, m, layers, vocab, positions = QUICK if quick else FULL
    leaves: list[tuple[str, tuple[int, ...], tuple[Any, ...]]] = [
        ("embed", (vocab, d), ("hl", None)),  # rows
        ("pos_embed", (positions, d), ()),  # replicated
    ]
    for i in range(layers):
        p = f"layers.{i}."
        leaves += [
            (p + "ln1.scale", (d,), ()),
            (p + "ln1.bias", (d,), ()),
            (p + "attn.qkv", (d, 3 * d), (None, "hl")),  # columns
            (p + "attn.out", (d, d), ("hl", None)),  # rows
            (p + "ln2.scale", (d,), ()),
            (p + "mlp.up", (d, m), ("h", "l")),  # 2-D blocks
            (p + "mlp.up_bias", (m,), ("hl",)),
            (p + "mlp.down", (m, d), ("h", None)),  # hosts only: replicated over the local devices
        ]
    leaves += [("final_ln.scale", (d,), ()), ("head", (d, vocab), (None, "hl"))]
    return leaves


def block(shape: tuple[int, ...], index: tuple[slice, ...], seed: int) -> Any:
    """The values of one block of a leaf: exact float32 integers from the global element index."""
    import numpy as np

    ranges = [np.arange(*s.indices(n)[:2], dtype=np.int64) for s, n in zip(index, shape)]
    flat = ranges[0] if len(shape) == 1 else ranges[0][:, None] * shape[1] + ranges[1][None, :]
    return ((flat * 2654435761 + seed * 40503) % (1 << 24)).astype(np.float32)


def _sharding(mesh: Any, partition: tuple[Any, ...]) -> Any:
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    axes = {"hl": ("hosts", "local"), "h": "hosts", "l": "local", None: None}
    return NamedSharding(mesh, P(*(axes[a] for a in partition)))


def build(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tree, abstract template) of global arrays; each process makes only its own blocks."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()).reshape(jax.process_count(), LOCAL_DEVICES), ("hosts", "local"))
    tree: dict[str, Any] = {}
    template: dict[str, Any] = {}
    for seed, (path, shape, partition) in enumerate(spec(quick)):
        sharding = _sharding(mesh, partition)
        tree[path] = jax.make_array_from_callback(shape, sharding, lambda i, s=shape, k=seed: block(s, i, k))
        template[path] = jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding)
    return tree, template


def own_share(tree: dict[str, Any]) -> int:
    """Distinct bytes of this process's addressable blocks (a block two local devices hold counts once)."""
    total = 0
    for leaf in tree.values():
        distinct = {tuple(s.indices(n)[:2] for s, n in zip(sh.index, leaf.shape)) for sh in leaf.addressable_shards}
        for bounds in distinct:
            count = 1
            for a, b in bounds:
                count *= b - a
            total += count * leaf.dtype.itemsize
    return total


def mismatches(tree: dict[str, Any], restored: dict[str, Any], quick: bool) -> list[str]:
    """Leaves whose restored blocks differ from the source blocks (sharding, dtype or any byte)."""
    import numpy as np

    seeds = {path: seed for seed, (path, _, _) in enumerate(spec(quick))}
    bad = []
    if set(restored) != set(tree):
        bad.append(f"paths differ: {sorted(set(restored) ^ set(tree))[:3]}")
    for path, leaf in tree.items():
        got = restored.get(path)
        if got is None:
            continue
        if got.shape != leaf.shape or got.dtype != leaf.dtype or not got.sharding.is_equivalent_to(leaf.sharding, 2):
            bad.append(f"{path}: {got.shape} {got.dtype} {got.sharding}")
            continue
        for shard in got.addressable_shards:
            data = np.asarray(shard.data)
            if data.tobytes() != block(leaf.shape, shard.index, seeds[path]).tobytes():
                bad.append(f"{path}: block {shard.index} differs")
                break
    return bad


# ---------------------------------------------------------------------------- the worker


def _proc_io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


class Measure:
    """Time, /proc/self/io deltas and peak memory of one op, started after a barrier of all processes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Measure:
        from jax.experimental import multihost_utils

        gc.collect()
        _LIBC.malloc_trim(0)  # freed heap goes back to the system, so what the op allocates shows in VmHWM
        multihost_utils.sync_global_devices(self.name)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        self.rss = _status_kb("VmRSS")
        self.io = _proc_io()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0
        io = _proc_io()
        self.read = io["rchar"] - self.io["rchar"]
        self.written = io["wchar"] - self.io["wchar"]
        self.peak_added = (_status_kb("VmHWM") - self.rss) * 1024

    def row(self) -> dict[str, Any]:
        return {"s": self.seconds, "read": self.read, "written": self.written, "peak_added": self.peak_added}


class CkptSchemaTool:
    name = "ckptschema"

    def __init__(self) -> None:
        import ckptschema

        self.ck = ckptschema

    def save(self, tree: Any, path: str) -> None:
        self.ck.save(path, tree)

    def restore(self, path: str, template: Any) -> Any:
        return self.ck.load(path, template)


class OrbaxTool:
    name = "orbax"

    def __init__(self) -> None:
        import orbax.checkpoint as ocp

        self.ckptr = ocp.StandardCheckpointer()

    def save(self, tree: Any, path: str) -> None:
        self.ckptr.save(path, tree)
        self.ckptr.wait_until_finished()

    def restore(self, path: str, template: Any) -> Any:
        return self.ckptr.restore(path, template)


def worker(args: argparse.Namespace) -> None:
    """One process of the run: measure every tool's saves and restores, print one JSON line."""
    import jax
    from jax.experimental import multihost_utils

    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.processes,
        process_id=args.worker,
        initialization_timeout=120,
    )
    me = jax.process_index()
    tools = [CkptSchemaTool(), OrbaxTool()]
    tree, template = build(args.quick)
    jax.block_until_ready(tree)
    out: dict[str, Any] = {
        "process": me,
        "share": own_share(tree),
        "leaves": len(tree),
        "held": sum(sh.data.nbytes for x in tree.values() for sh in x.addressable_shards),
        "payload": sum(x.size * x.dtype.itemsize for x in tree.values()),
        "devices": jax.device_count(),
        "rss_with_tree": _status_kb("VmRSS") * 1024,
        **{
            t.name: {"save": [], "restore": [], "verified": 0, "mismatched": 0, "errors": [], "disk": None}
            for t in tools
        },
    }
    for rep in range(args.warmup + args.reps):
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
        for phase in ("save", "restore"):
            for tool in order:
                cell = out[tool.name]
                path = os.path.join(args.workdir, f"{tool.name}-{rep}")
                previous = os.path.join(args.workdir, f"{tool.name}-{rep - 1}")
                if phase == "save" and me == 0:
                    shutil.rmtree(previous, ignore_errors=True)  # untimed: the last rep's checkpoint
                try:
                    with Measure(f"{tool.name}-{phase}-{rep}") as m:
                        if phase == "save":
                            tool.save(tree, path)
                        else:
                            result = tool.restore(path, template)
                            jax.block_until_ready(result)
                except Exception as e:  # reported in the table, never hidden
                    cell["errors"].append(f"{phase}: {type(e).__name__}: {e}"[:300])
                    multihost_utils.sync_global_devices(f"{tool.name}-{phase}-{rep}-failed")
                    continue
                row = {**m.row(), "rep": rep, "warmup": rep < args.warmup}
                cell[phase].append(row)
                if phase == "save" and me == 0:
                    cell["disk"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
                if phase == "restore":
                    problems = mismatches(tree, result, args.quick)
                    cell["mismatched" if problems else "verified"] += 1
                    if problems:
                        cell["errors"].append(f"restore differs: {problems[:3]}")
                    del result
        print(f"process {me}: repetition {rep + 1}/{args.warmup + args.reps} done", file=sys.stderr, flush=True)
    multihost_utils.sync_global_devices("done")
    print("RESULT " + json.dumps(out), flush=True)
    jax.distributed.shutdown()


# ---------------------------------------------------------------------------- the parent


def _snapshot(workdir: str) -> str:
    """A copy of ckptschema/ taken now (benchmarked instead of the live tree), as a PYTHONPATH entry."""
    pkg = os.path.join(workdir, "pkg")
    shutil.copytree(
        os.path.join(ROOT, "ckptschema"), os.path.join(pkg, "ckptschema"), ignore=shutil.ignore_patterns("__pycache__")
    )
    return pkg


def run_processes(args: argparse.Namespace, count: int, log: Any) -> list[dict[str, Any]]:
    """Start `count` workers, wait for them, and return their results (raise with their stderr on failure)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ckpts = os.path.join(args.workdir, f"p{count}")
    os.makedirs(ckpts, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([args.pkg, *filter(None, [os.environ.get("PYTHONPATH")])]),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
    }
    common = ["--processes", str(count), "--port", str(port), "--workdir", ckpts]
    common += ["--reps", str(args.reps), "--warmup", str(args.warmup)] + (["--quick"] if args.quick else [])
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", str(i), *common],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=args.pkg,
        )
        for i in range(count)
    ]
    results, failures = [], []
    for i, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, err = proc.communicate()
        lines = [line[7:] for line in out.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            failures.append(f"process {i} (exit {proc.returncode}):\n{err[-3000:]}")
        else:
            results.append(json.loads(lines[-1]))
        log(f"[{count} processes] process {i} exited {proc.returncode}")
    shutil.rmtree(ckpts, ignore_errors=True)
    if failures:
        raise RuntimeError("\n".join(failures))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny tree and one timed repetition (smoke test)")
    parser.add_argument("--processes", default="2", help="process counts, comma-separated (e.g. 2,4)")
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5; quick 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: benchmarks/.work/mh-PID)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a process count may take")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 5
    if args.worker is not None:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        args.processes = int(args.processes)
        worker(args)
        return 0

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, HERE)
    import _multihost_report

    args.workdir = os.path.abspath(args.workdir or os.path.join(HERE, ".work", f"mh-{os.getpid()}"))
    os.makedirs(args.workdir, exist_ok=True)
    args.commit_at_start = _multihost_report.commit(ROOT)
    args.load_at_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    args.pkg = _snapshot(args.workdir)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - start:7.1f} s  {msg}", file=sys.stderr, flush=True)

    runs: dict[int, list[dict[str, Any]]] = {}
    try:
        for count in (int(c) for c in args.processes.split(",")):
            log(f"[{count} processes] starting")
            runs[count] = sorted(run_processes(args, count, log), key=lambda r: r["process"])
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)
    text = _multihost_report.report(runs, args, time.perf_counter() - start)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    bad = sum(r[t]["mismatched"] + len(r[t]["errors"]) for rs in runs.values() for r in rs for t in TOOLS)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
