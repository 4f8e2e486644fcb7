"""read_manifest timings: on the "many" file, and on many-style files of growing leaf counts.

The scaling files show whether reading a manifest costs the same per leaf at 1k, 10k and 100k
leaves; `table` reports ms, ms per 1k leaves and header bytes per leaf.
"""

from __future__ import annotations

import gc
import os
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

import _workloads as wl


def repeat(fn: Callable[[], Any], runs: int) -> list[float]:
    """Seconds of `runs` calls of `fn`, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def header_bytes(path: str) -> int:
    """Length of a safetensors header (the JSON after the 8-byte length)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
    return int(length)


def time_read_manifest(path: str, runs: int) -> dict[str, Any]:
    """Median seconds of `ckptschema.read_manifest(path)` on a warm file."""
    import ckptschema

    manifest = ckptschema.read_manifest(path)
    times = repeat(lambda: ckptschema.read_manifest(path), runs)
    return {
        "median": statistics.median(times),
        "times": times,
        "tensors": len(manifest.tensors),
        "header": header_bytes(path),
        "runs": len(times),
    }


def scaling(leaf_counts: tuple[int, ...], workdir: str, runs: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """For each count: a many-style tree saved with ckptschema's defaults, read_manifest timed."""
    import ckptschema

    rows = []
    for leaves in leaf_counts:
        path = os.path.join(workdir, f"scaling-{leaves}.safetensors")
        tree = wl.build_tree(wl.many_spec(leaves))
        ckptschema.save(path, tree)
        del tree
        gc.collect()
        rows.append({"leaves": leaves, **time_read_manifest(path, runs)})
        os.remove(path)
        log(f"[scaling] read_manifest of {leaves} leaves: {rows[-1]['median'] * 1e3:.1f} ms")
    return rows


def per_leaf_us(row: dict[str, Any]) -> float:
    """Microseconds of read_manifest per leaf."""
    return float(row["median"]) * 1e6 / int(row["leaves"])


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| leaves | read_manifest ms, median [min-max] | ms per 1k leaves | header bytes | header bytes per leaf |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ms = [t * 1e3 for t in row["times"]]
        lines.append(
            f"| {row['leaves']} | {statistics.median(ms):.2f} [{min(ms):.2f}-{max(ms):.2f}] "
            f"| {per_leaf_us(row):.2f} | {row['header']} | {row['header'] / row['leaves']:.1f} |"
        )
    return lines
