"""How fast the checksum algorithms hash a checkpoint's bytes: sha256 against BLAKE3 (issue 14).

    python benchmarks/digests.py [--quick]

Prints three markdown tables:

1. **Throughput.** hashlib's sha256, BLAKE3 on one thread, on two and on as many as it
   likes (``max_threads=AUTO``) over one 512 MB buffer, over the "big" tree's 292 float32
   tensors and the "many" tree's 20,000 tiny ones (4..64 bytes), each first as one stream
   (one digest) and then as a save hashes them: one digest per tensor. The per-tensor rows add
   what a save does: sha256 on two worker threads (today's save) and `ckptschema._digests`
   (BLAKE3 with threads by size).
2. **Where BLAKE3's threads pay off**: one input of each size, one thread against more.
3. **Hashing while writing**: a writer thread writes the "big" tensors to a file in /tmp
   (page cache, no fsync: the disk itself does not use the cores) while the main thread
   hashes them one digest per tensor, to see whether BLAKE3's threads fight the writer.

Every time is the median of 5 runs; within a run the algorithms are interleaved in an order
rotated per run, so background load hits them alike. The data is random bytes. ``--quick``
uses the small trees and buffers (a smoke test; its numbers mean little).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for folder in (ROOT, HERE):  # this checkout's ckptschema, not an installed one
    if folder not in sys.path:
        sys.path.insert(0, folder)

import _workloads as wl  # noqa: E402
import blake3  # noqa: E402
import numpy as np  # noqa: E402

from ckptschema import _digests  # noqa: E402

RUNS = 5
SAVE_WORKERS = 2  # today's save hashes tensors of >= 64 KiB on two worker threads
SAVE_IN_THREAD = 64 << 10

Chunks = list[memoryview]
Factory = Callable[[], Any]

#: The hashers compared everywhere: name -> a fresh incremental hasher.
HASHERS: dict[str, Factory] = {
    "sha256": hashlib.sha256,
    "blake3 x1": lambda: blake3.blake3(max_threads=1),
    "blake3 x2": lambda: blake3.blake3(max_threads=2),
    "blake3 AUTO": lambda: blake3.blake3(max_threads=blake3.blake3.AUTO),
}


# ---------------------------------------------------------------------------------- data


def random_bytes(nbytes: int, seed: int = 0) -> np.ndarray:
    return np.frombuffer(np.random.default_rng(seed).bytes(nbytes), np.uint8)


def tensors(spec: wl.Spec, source: np.ndarray) -> Chunks:
    """One fresh float32 array per spec entry, filled with bytes of `source`, as byte views."""
    out: Chunks = []
    at = 0
    for _, shape, dtype in spec:
        flat = np.empty(shape, dtype).reshape(-1).view(np.uint8)
        n = flat.nbytes
        if at + n > source.nbytes:
            at = 0
        flat[:] = source[at : at + n]
        at += n
        out.append(flat.data)
    return out


# ------------------------------------------------------------------------------- hashing


def one_stream(factory: Factory, chunks: Chunks) -> list[str]:
    h = factory()
    for chunk in chunks:
        h.update(chunk)
    return [h.hexdigest()]


def each(factory: Factory, chunks: Chunks) -> list[str]:
    out = []
    for chunk in chunks:
        h = factory()
        h.update(chunk)
        out.append(h.hexdigest())
    return out


def sha256_workers(chunks: Chunks) -> list[str]:
    """What today's save does: large tensors on a pool of two threads, small ones inline."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=SAVE_WORKERS) as pool:
        pending: list[Any] = []
        for chunk in chunks:
            if chunk.nbytes >= SAVE_IN_THREAD:
                pending.append(pool.submit(lambda c: hashlib.sha256(c).hexdigest(), chunk))
            else:
                pending.append(hashlib.sha256(chunk).hexdigest())
        return [p.result() if isinstance(p, concurrent.futures.Future) else p for p in pending]


def sized(chunks: Chunks) -> list[str]:
    return [_digests.digest(chunk, "blake3") for chunk in chunks]


def per_tensor_hashers(tiny: bool = False) -> dict[str, Callable[[Chunks], list[str]]]:
    """The per-tensor runs; `tiny` leaves out ``max_threads=2``, which costs ~0.2 ms a hasher (table 2)."""
    runs: dict[str, Callable[[Chunks], list[str]]] = {
        name: functools.partial(each, factory) for name, factory in HASHERS.items()
    }
    if tiny:
        del runs["blake3 x2"]
    runs["sha256, 2 workers (save today)"] = sha256_workers
    runs["_digests blake3 (threads by size)"] = sized
    return runs


def stream_hashers() -> dict[str, Callable[[Chunks], list[str]]]:
    return {name: functools.partial(one_stream, factory) for name, factory in HASHERS.items()}


# ------------------------------------------------------------------------------- timing


def interleaved(jobs: Mapping[str, Callable[[], object]], runs: int = RUNS) -> dict[str, float]:
    """Median seconds of each job, the jobs interleaved in an order rotated per run."""
    names = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            jobs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def warm_up() -> None:
    """Start BLAKE3's thread pools and hashlib once, outside any timed region."""
    data = random_bytes(4 << 20, seed=1).data
    for factory in HASHERS.values():
        one_stream(factory, [data])


# ------------------------------------------------------------------------------- tables


def gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.2f}"


def throughput(workloads: Sequence[tuple[str, Chunks, bool]]) -> tuple[list[str], dict[str, float]]:
    """Table 1 rows; also each per-tensor run's seconds on "big" (the hashing-alone baseline)."""
    rows = [
        "| algorithm | workload | seconds (median of 5) | GB/s | ratio to sha256 (speed-up) |",
        "|---|---|---:|---:|---:|",
    ]
    alone: dict[str, float] = {}
    for label, chunks, per_tensor in workloads:
        tiny = all(c.nbytes <= 64 for c in chunks)
        runs = per_tensor_hashers(tiny) if per_tensor else stream_hashers()
        expected = {name: run(chunks) for name, run in runs.items()}
        for algorithm in ("sha256", "blake3"):
            if len({tuple(v) for name, v in expected.items() if algorithm in name}) != 1:
                raise AssertionError(f"the {algorithm} variants disagree on {label}")
        nbytes = sum(c.nbytes for c in chunks)
        medians = interleaved({name: functools.partial(run, chunks) for name, run in runs.items()})
        for name, seconds in medians.items():
            ratio = medians["sha256"] / seconds
            rows.append(f"| {name} | {label} | {seconds:.4f} | {gbps(nbytes, seconds)} | {ratio:.2f} |")
        if per_tensor and label.startswith("big"):
            alone = medians
    return rows, alone


def thresholds(quick: bool) -> list[str]:
    rows = [
        "| input size | blake3 x1 µs | blake3 x2 µs | blake3 AUTO µs | x1 GB/s | AUTO GB/s | AUTO speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = (4 if quick else 64) << 20
    source = random_bytes(total, seed=2)
    for size in [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]:
        if size > total:
            break
        data = source[:size].data
        count = min(total // size, 256)  # max_threads=2 costs ~0.2 ms a hasher: cap the count
        jobs = {
            name: functools.partial(each, factory, [data] * count)
            for name, factory in HASHERS.items()
            if name != "sha256"
        }
        us = {name: s / count * 1e6 for name, s in interleaved(jobs).items()}
        one, two, auto = us["blake3 x1"], us["blake3 x2"], us["blake3 AUTO"]
        rows.append(
            f"| {_size(size)} | {one:.1f} | {two:.1f} | {auto:.1f} | {gbps(size, one / 1e6)} | "
            f"{gbps(size, auto / 1e6)} | {one / auto:.2f} |"
        )
    return rows


def writing(chunks: Chunks, alone: dict[str, float]) -> list[str]:
    """Table 3: a writer thread writes `chunks` to /tmp while the main thread hashes them."""
    rows = [
        "| hasher (one digest per tensor) | wall s | writer s | hasher s | GB/s (wall) | "
        "writer slowdown | hasher slowdown vs alone | ratio to sha256 (wall speed-up) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nbytes = sum(c.nbytes for c in chunks)
    runs: dict[str, Callable[[Chunks], list[str]] | None] = {"(write alone)": None, **per_tensor_hashers()}
    with tempfile.TemporaryDirectory(prefix="ckptschema-digests-", dir="/tmp") as folder:
        path = os.path.join(folder, "payload.bin")
        times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}

        def write(spent: list[float]) -> None:
            start = time.perf_counter()
            with open(path, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            spent.append(time.perf_counter() - start)

        names = list(runs)
        for r in range(RUNS):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                spent: list[float] = []
                writer = threading.Thread(target=write, args=(spent,))
                start = time.perf_counter()
                writer.start()
                run = runs[name]
                if run is not None:
                    run(chunks)
                hashed = time.perf_counter() - start
                writer.join()
                times[name].append((time.perf_counter() - start, spent[0], hashed if run else 0.0))
    medians = {name: tuple(statistics.median(t[i] for t in ts) for i in range(3)) for name, ts in times.items()}
    write_alone = medians["(write alone)"][1]
    for name, (wall, wrote, hashed) in medians.items():
        slow_hash = f"{hashed / alone[name]:.2f}" if name in alone else ""
        ratio = f"{medians['sha256'][0] / wall:.2f}" if name != "(write alone)" else ""
        rows.append(
            f"| {name} | {wall:.4f} | {wrote:.4f} | {hashed:.4f} | {gbps(nbytes, wall)} | "
            f"{wrote / write_alone:.2f} | {slow_hash} | {ratio} |"
        )
    return rows


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def machine() -> list[str]:
    with open("/proc/cpuinfo") as f:
        info = f.read().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    flags = next((line for line in info if line.startswith("flags")), "").split()
    simd = [f for f in ("sha_ni", "avx2", "avx512f") if f in flags]
    return [
        f"- CPU: {model}; {os.cpu_count()} logical cores, {len(os.sched_getaffinity(0))} usable; "
        f"flags: {', '.join(simd) or 'none of sha_ni/avx2/avx512f'}",
        f"- python {platform.python_version()}, numpy {np.__version__}, blake3 {blake3.__version__}, "
        f"{hashlib.sha256().name} from {_openssl()}",
        f"- load average at start: {os.getloadavg()[0]:.2f}",
    ]


def _openssl() -> str:
    import ssl

    return ssl.OPENSSL_VERSION


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data: a smoke test")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    sizes = wl.QUICK if args.quick else wl.FULL
    buffer_bytes = (16 if args.quick else 512) * 10**6
    print("# Digest throughput (benchmarks/digests.py" + (" --quick" if args.quick else "") + ")\n")
    print("\n".join(machine()))
    source = random_bytes(buffer_bytes)
    big = tensors(wl.transformer_spec(sizes, np.float32), source)
    many = tensors(wl.many_spec(sizes.many_leaves), source)
    warm_up()
    big_mb = sum(c.nbytes for c in big) / 1e6
    workloads = [
        (f"one {buffer_bytes // 10**6} MB buffer", [source.data], False),
        (f"big: {len(big)} tensors ({big_mb:.0f} MB), one digest", big, False),
        (f"many: {len(many)} tensors, one digest", many, False),
        (f"big: {len(big)} tensors, a digest each", big, True),
        (f"many: {len(many)} tensors, a digest each", many, True),
    ]
    rows, alone = throughput(workloads)
    print("\n## Throughput\n")
    print("\n".join(rows))
    print("\n`blake3 x2` is left out of the tiny tensors' per-tensor row: each hasher made with an explicit")
    print("`max_threads=2` costs a fixed fraction of a millisecond (the 4 KiB row below), seconds for 20,000.")
    print(f"\n## Where BLAKE3's threads pay off (`_digests.THREADS_FROM` = {_size(_digests.THREADS_FROM)})\n")
    print("\n".join(thresholds(args.quick)))
    print(f"\n## Hashing the big tensors while a writer thread writes them to /tmp ({big_mb:.0f} MB, no fsync)\n")
    print("\n".join(writing(big, alone)))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}; total {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
