"""The benchmark's targets, each a (target, measured, met) row drawn from one run's results.

`targets` holds the like-for-like targets of SPEC.md section 7 (issue 14); `other_checks` the
remaining rows of issue 6 (floors, bfloat16, flax msgpack, import cost, subtree loads).
"""

from __future__ import annotations

from typing import Any

import _scaling
from _report import FLOOR, FSYNC_REFERENCE, REFERENCE, Cell, Row, seconds

CK = "ckptschema"
CK_NUMPY = "ckptschema template=numpy"
ORBAX_WORKLOADS = ("big", "bf16", "many")


class _Rows:
    """Collects rows; every comparison reads medians of one run's results."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.rows: list[Row] = []

    def cell(self, workload: str, tool: str) -> Cell | None:
        cell: Cell | None = self.results.get(workload, {}).get("cells", {}).get(tool)
        return cell

    def med(self, workload: str, tool: str, what: str) -> float | None:
        cell = self.cell(workload, tool)
        return Cell.median(getattr(cell, what)) if cell else None

    def add(self, label: str, measured: str | None, met: bool | None) -> None:
        self.rows.append((label, measured or "not measured", None if measured is None else met))

    def at_most(self, label: str, a: float | None, b: float | None, limit: float) -> None:
        if a is None or b is None or b == 0:
            self.add(label, None, None)
        else:
            self.add(label, f"{a / b:.2f}x ({seconds(a)} s vs {seconds(b)} s)", a / b <= limit)

    def faster(self, label: str, ours: float | None, theirs: float | None, factor: float) -> None:
        if ours is None or theirs is None or ours == 0:
            self.add(label, None, None)
        else:
            measured = f"{theirs / ours:.1f}x faster ({seconds(ours)} s vs {seconds(theirs)} s)"
            self.add(label, measured, theirs / ours >= factor)


def targets(results: dict[str, Any], scaling: list[dict[str, Any]]) -> list[Row]:
    """The like-for-like targets of SPEC.md section 7, as ratios within this run."""
    r = _Rows(results)
    r.at_most(
        "big strict load (jax out) <= 0.5x safetensors.numpy load_file",
        r.med("big", CK, "load"),
        r.med("big", REFERENCE, "load"),
        0.5,
    )
    big = r.cell("big", CK)
    mem = big.memory if big else {}
    if "added" in mem:
        ratio = mem["added"] / results["big"]["payload"]
        r.add("big load: memory added <= 1.05x payload", f"{ratio:.2f}x ({mem['added'] / 1e6:.1f} MB)", ratio <= 1.05)
    else:
        r.add("big load: memory added <= 1.05x payload", None, None)
    r.at_most(
        "big checksummed save <= 1.5x safetensors.numpy+fsync save",
        r.med("big", CK, "save"),
        r.med("big", FSYNC_REFERENCE, "save"),
        1.5,
    )
    r.at_most(
        "many strict load (jax out) <= 1.0x safetensors.flax load_file",
        r.med("many", CK, "load"),
        r.med("many", "safetensors.flax", "load"),
        1.0,
    )
    r.at_most(
        "many load with a numpy template <= 1.0x safetensors.numpy load_file",
        r.med("many", CK_NUMPY, "load"),
        r.med("many", REFERENCE, "load"),
        1.0,
    )
    r.at_most(
        "many save <= 1.0x safetensors.numpy save_file",
        r.med("many", CK, "save"),
        r.med("many", REFERENCE, "save"),
        1.0,
    )
    ours, theirs = r.cell("many", CK), r.cell("many", REFERENCE)
    if ours and theirs and ours.file_bytes and theirs.file_bytes:
        ratio = ours.file_bytes / theirs.file_bytes
        r.add(
            "many file size <= 1.3x safetensors.numpy file",
            f"{ratio:.2f}x ({ours.file_bytes} vs {theirs.file_bytes} bytes)",
            ratio <= 1.3,
        )
    else:
        r.add("many file size <= 1.3x safetensors.numpy file", None, None)
    _read_manifest_rows(r, results, scaling)
    for w in ORBAX_WORKLOADS:
        for what in ("save", "load"):
            r.faster(f"{w} {what} >= 3x faster than orbax", r.med(w, CK, what), r.med(w, "orbax", what), 3.0)
    return r.rows


def _read_manifest_rows(r: _Rows, results: dict[str, Any], scaling: list[dict[str, Any]]) -> None:
    rm = results.get("many", {}).get("extras", {}).get("read_manifest")
    label = "read_manifest of the 20k-leaf many file <= 50 ms"
    if rm:
        r.add(label, f"{rm['median'] * 1e3:.1f} ms ({rm['tensors']} leaves)", rm["median"] <= 0.05)
    else:
        r.add(label, None, None)
    label = "read_manifest of a 100k-leaf file <= 250 ms"
    if scaling:
        top = scaling[-1]
        r.add(label, f"{top['median'] * 1e3:.1f} ms ({top['leaves']} leaves)", top["median"] <= 0.25)
    else:
        r.add(label, None, None)
    label = "read_manifest linear in leaves: per-leaf cost at 100k <= 1.5x at 10k"
    if len(scaling) >= 2:
        mid, top = scaling[-2], scaling[-1]
        ratio = _scaling.per_leaf_us(top) / _scaling.per_leaf_us(mid)
        measured = (
            f"{ratio:.2f}x ({_scaling.per_leaf_us(top):.2f} us/leaf at {top['leaves']} leaves vs "
            f"{_scaling.per_leaf_us(mid):.2f} at {mid['leaves']})"
        )
        r.add(label, measured, ratio <= 1.5)
    else:
        r.add(label, None, None)


def other_checks(results: dict[str, Any], imports: dict[str, Any] | None) -> list[Row]:
    """The rows of issue 6 that are not SPEC.md section 7 targets."""
    r = _Rows(results)
    r.at_most("big load <= 1.0x readinto floor", r.med("big", CK, "load"), r.med("big", FLOOR, "load"), 1.0)
    r.at_most(
        "bf16 load <= 0.5x safetensors.numpy load", r.med("bf16", CK, "load"), r.med("bf16", REFERENCE, "load"), 0.5
    )
    r.at_most("bf16 load <= 1.0x readinto floor", r.med("bf16", CK, "load"), r.med("bf16", FLOOR, "load"), 1.0)
    r.at_most(
        "many load <= 1.0x flax msgpack load",
        r.med("many", CK, "load"),
        r.med("many", "flax msgpack", "load"),
        1.0,
    )
    r.faster(
        "big save >= 5x faster than flax msgpack",
        r.med("big", CK, "save"),
        r.med("big", "flax msgpack", "save"),
        5.0,
    )
    if imports:
        fw = imports["frameworks"]
        r.add("import ckptschema imports no framework", ", ".join(fw) if fw else "none imported", not fw)
        r.add(
            "import ckptschema adds < 0.3 s over import jax",
            f"{imports['ckptschema']:.3f} s (import jax: {imports['jax']:.2f} s)",
            imports["ckptschema"] < 0.3,
        )
    sub = results.get("big", {}).get("extras", {}).get("subtree")
    if sub:
        r.add(
            f"load one {sub['bytes'] / 1e6:.2f} MB leaf via subtree= from the big file < 20 ms",
            f"{sub['median'] * 1e3:.1f} ms{'' if sub['exact'] else ' (NOT bit-exact)'}",
            sub["median"] < 0.02 and sub["exact"],
        )
    return r.rows
