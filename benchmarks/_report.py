"""The markdown report of a benchmark run: machine, method, one table per workload, targets.

`Cell` holds what was measured of one tool on one workload; `report` turns the results of
`run.py` (and the target rows `_targets` draws from them) into the text of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import _scaling
import jax

REFERENCE = "safetensors.numpy"
FSYNC_REFERENCE = "safetensors.numpy+fsync"
FLOOR = "floor: readinto"

Row = tuple[str, str, bool | None]  # (target, measured, met); met is None when not measured


class Cell:
    """The runs of one tool on one workload."""

    def __init__(self) -> None:
        self.save: list[float] = []
        self.load: list[float] = []
        self.errors: list[str] = []
        self.output = ""
        self.verified = 0
        self.mismatched = 0
        self.memory: dict[str, Any] = {}
        self.file_bytes: int | None = None  # size on disk of the tool's last save
        self.note = ""

    @staticmethod
    def median(xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None


def machine(commit_at_start: str = "") -> list[tuple[str, str]]:
    from importlib import metadata

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        ram = f"{_meminfo_kb('MemTotal') / 2**20:.1f} GiB"
    except (OSError, KeyError):
        ram = "unknown"

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    dists = ["jax", "jaxlib", "numpy", "safetensors", "flax", "orbax-checkpoint", "equinox", "ckptschema"]
    return [
        ("CPU", cpu),
        ("cores (os.cpu_count)", str(os.cpu_count())),
        ("RAM", ram),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        *[(d, version(d)) for d in dists],
        ("ckptschema benchmarked", f"snapshot of ckptschema/ at commit {commit_at_start} taken when the run started"),
        ("jax backend", jax.default_backend()),
    ]


def _meminfo_kb(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def seconds(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.01:
        return f"{x:.3f}"
    return f"{x:.4f}"


def timing(xs: list[float]) -> str:
    """Median [min-max] of a list of seconds."""
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return seconds(xs[0])
    return f"{seconds(statistics.median(xs))} [{seconds(min(xs))}-{seconds(max(xs))}]"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def megabytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.3f} MB" if n < 1e7 else f"{n / 1e6:.1f} MB"


def workload_table(name: str, data: dict[str, Any]) -> list[str]:
    cells: dict[str, Cell] = data["cells"]
    payload = data["payload"]
    ref, fsync_ref, floor = (cells.get(name, Cell()) for name in (REFERENCE, FSYNC_REFERENCE, FLOOR))
    ref_load, ref_save, ref_file = Cell.median(ref.load), Cell.median(ref.save), ref.file_bytes
    fsync_save, floor_load = Cell.median(fsync_ref.save), Cell.median(floor.load)
    lines = [
        f"### {name}: {data['spec_leaves']} leaves, {payload / 1e6:.1f} MB payload",
        "",
        "| tool | out | load s, median [min-max] | load / st.numpy | load / floor | save s, median [min-max] "
        "| save / st.numpy | save / st.numpy+fsync | file | file / st.numpy | RSS added by load | / payload | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tool, cell in cells.items():
        load, save = Cell.median(cell.load), Cell.median(cell.save)
        mem = cell.memory
        if "added" in mem:
            mem_s, mem_r = f"{mem['added'] / 1e6:.1f} MB", f"{mem['added'] / payload:.2f}x"
        else:
            mem_s, mem_r = (f"error: {mem['error']}" if "error" in mem else "not measured"), "n/a"
        notes = [cell.note] if cell.note else []
        if cell.errors:
            notes.append(f"ERRORS: {'; '.join(sorted(set(cell.errors))[:2])}")
        out = cell.output or ("bytes" if tool.startswith("floor: readinto") else "n/a")
        lines.append(
            f"| {tool} | {out} | {timing(cell.load)} | {_ratio(load, ref_load)} | {_ratio(load, floor_load)} "
            f"| {timing(cell.save)} | {_ratio(save, ref_save)} | {_ratio(save, fsync_save)} "
            f"| {megabytes(cell.file_bytes)} | {_ratio(cell.file_bytes, ref_file)} "
            f"| {mem_s} | {mem_r} | {' '.join(notes)} |"
        )
    return lines


def _verdict(met: bool | None) -> str:
    return "PASS" if met else "n/a" if met is None else "**MISS**"


def _rows_table(rows: list[Row]) -> list[str]:
    return ["| target | measured | result |", "|---|---|---|"] + [
        f"| {label} | {measured} | {_verdict(met)} |" for label, measured, met in rows
    ]


def _method(args: argparse.Namespace, counts: tuple[int, int, int], scaling: list[dict[str, Any]]) -> list[str]:
    verified, mismatched, errors = counts
    leaves = ", ".join(str(s["leaves"]) for s in scaling) or "none"
    return [
        f"- One process; per workload, {args.warmup} warm-up repetition(s) then {args.reps} timed; in each "
        "repetition every tool saves, then every tool loads, tools interleaved in an order rotated per "
        "repetition, each save and load after a `gc.collect()`. Times are medians (with min-max) of the timed "
        "runs; ratios compare medians of this run."
        + (
            " Quick mode first moves the imported objects out of the collector's reach (`gc.freeze()`)."
            if args.quick
            else ""
        ),
        "- Warm page cache: each load reads a file written moments before. Loads end with "
        "`jax.block_until_ready`. The source tree holds `jax.Array`s; loads get the abstract template "
        "(`jax.ShapeDtypeStruct` leaves) where the tool takes one; `ckptschema template=params` gets the "
        "source tree itself, as in `load(path, template=params)`; `ckptschema template=numpy` gets a tree of "
        "zero-filled `np.ndarray`s of the right shapes and dtypes (built once, outside the timing), so it "
        "returns numpy arrays, like safetensors.numpy.",
        f"- **Load results verified bit-exact (dtype, shape, every byte, all paths), warm-up included: "
        f"{verified} loads verified, {mismatched} mismatched, {errors} errors.**",
        "- `floor: readinto` reads the raw safetensors file into one preallocated, reused buffer (`readinto`); "
        "`floor: preadv+device_put` reads each tensor into a fresh 64-byte aligned buffer and `jax.device_put`s it "
        "(a jax-out loader without any checks).",
        "- RSS added by a load: fresh subprocess per tool, imports and backend start done first, VmHWM reset via "
        "`/proc/self/clear_refs`, then VmHWM after the load minus before."
        + (" Quick mode measures only ckptschema and safetensors.numpy on big." if args.quick else ""),
        "- ckptschema saves with its defaults: a BLAKE3 digest of every tensor and an atomic write with fsync of "
        "the file and its directory. `safetensors.numpy+fsync` is the like-for-like save reference: "
        "`safetensors.numpy.save_file`, then `os.fsync` of the file and of its directory (save only: its file "
        "and load are safetensors.numpy's); no other tool fsyncs. safetensors.numpy writes bfloat16 fine in "
        "safetensors 0.8 (ml_dtypes).",
        "- File sizes are what each tool's last save left on disk (all files of the folder for orbax); the "
        "ratio compares with safetensors.numpy's file of the same tensors.",
        f'- read_manifest scaling: many-style trees of {leaves} leaves (same shapes and nesting as "many"), '
        "each saved with ckptschema's defaults, then `ckptschema.read_manifest` timed on the warm file "
        "(one untimed call first; median of the timed calls). Header bytes are the safetensors header "
        "(JSON and manifest) after its 8-byte length.",
    ]


def report(
    results: dict[str, Any],
    scaling: list[dict[str, Any]],
    checks: dict[str, list[Row]],
    imports: dict[str, Any] | None,
    args: argparse.Namespace,
    wall: float,
) -> str:
    """The report; `checks` maps each section title to its (target, measured, met) rows."""
    verified = sum(c.verified for r in results.values() for c in r["cells"].values())
    mismatched = sum(c.mismatched for r in results.values() for c in r["cells"].values())
    errors = sum(len(c.errors) for r in results.values() for c in r["cells"].values())
    lines = [
        "# ckptschema benchmark results",
        "",
        f"Generated by `python benchmarks/run.py{' --quick' if args.quick else ''}` "
        f"on {time.strftime('%Y-%m-%d %H:%M %Z')} in {wall / 60:.1f} min.",
    ]
    if args.quick:
        lines += ["", "**Quick mode: tiny trees, few runs. These numbers mean nothing; run without --quick.**"]
    lines += [
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine(args.commit_at_start)],
        "",
        "## Method",
        "",
        *_method(args, (verified, mismatched, errors), scaling),
        "",
        "## Results",
        "",
    ]
    for name, data in results.items():
        lines += [*workload_table(name, data), ""]
    if scaling:
        lines += ["## read_manifest scaling", "", *_scaling.table(scaling), ""]
    for title, rows in checks.items():
        lines += [f"## {title}", "", *_rows_table(rows), ""]
    if imports:
        lines += [
            f"Import times are medians of {imports['runs']} fresh subprocesses "
            "(`import jax`, then `import ckptschema`).",
            "",
        ]
    return "\n".join(lines)
