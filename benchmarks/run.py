"""Side-by-side benchmark of ckptschema against the tools users would pick instead (issue 6).

    python benchmarks/run.py [--quick] [--out benchmarks/RESULTS.md]

Everything runs in one process on one machine: for each workload ("big": a ~537 MB float32
transformer in 292 leaves, "bf16": the same in bfloat16, "many": 20,000 small leaves nested
4 deep) every tool saves and loads the same tree. Within each repetition the tools are
interleaved (in an order rotated per repetition), so background noise hits them alike;
the first repetition is a warm-up and the medians of the rest are reported. Files stay in
the page cache (each load reads a file written moments before). Every load result, warm-up
included, is checked bit for bit against the source tree, outside the timed region.
The memory a load adds is measured in a fresh subprocess per tool: VmHWM (reset through
/proc/self/clear_refs) after the load minus before it.

``--quick`` shrinks the trees and repetitions so the whole run takes seconds (smoke test).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, ".work", f"run-{os.getpid()}")  # one folder per run: concurrent runs never share files
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _tools  # noqa: E402
import _workloads as wl  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

WORKLOADS = ("big", "bf16", "many")
REFERENCE = "safetensors.numpy"
FLOOR = "floor: readinto"
SLOW_RUN_S = 15.0  # a tool whose warm-up save+load takes longer gets fewer timed runs
SLOW_RUNS = 2
FRAMEWORKS = ("flax", "orbax", "equinox", "haiku", "objax", "optax", "torch", "tensorflow")


def _snapshot_package() -> None:
    """Benchmark a copy of ckptschema taken now, so edits made during a long run cannot mix in.

    The copy goes first on sys.path here and on PYTHONPATH for the subprocesses.
    """
    import shutil

    pkg = os.path.join(WORK, "pkg")
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(
        os.path.join(ROOT, "ckptschema"), os.path.join(pkg, "ckptschema"), ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in [m for m in sys.modules if m == "ckptschema" or m.startswith("ckptschema.")]:
        del sys.modules[name]
    sys.path.insert(0, pkg)
    os.environ["PYTHONPATH"] = os.pathsep.join([pkg, *filter(None, [os.environ.get("PYTHONPATH")])])


# ---------------------------------------------------------------------------- memory child


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def mem_child(tool_name: str, workload: str, path: str, quick: bool) -> None:
    """In a fresh process: peak RSS that one load adds (printed as one JSON line)."""
    tool = _tools.by_name(tool_name)
    tool.prepare()
    spec = wl.spec_for(workload, quick)
    template = wl.build_tree(spec) if tool.concrete_template else wl.abstract_tree(spec)
    jax.block_until_ready(jax.device_put(np.zeros(16, np.float32)))  # backend start is not the load's
    gc.collect()
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    before = _status_kb("VmHWM")
    result = tool.load(path, template)
    jax.block_until_ready(result)
    after = _status_kb("VmHWM")
    print("MEM " + json.dumps({"added": (after - before) * 1024, "hwm_reset": reset}))
    del result


def measure_memory(tool: _tools.Tool, workload: str, path: str, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--mem-child", tool.name, workload, path]
    if quick:
        cmd.append("--quick")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    for line in proc.stdout.splitlines():
        if line.startswith("MEM "):
            return json.loads(line[4:])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}


# ------------------------------------------------------------------------------- timing


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
        self.note = ""

    @staticmethod
    def median(xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None


def file_for(tool: _tools.Tool, workload: str) -> str:
    owner = tool.floor_of or tool.name
    safe = owner.replace(" ", "_").replace(":", "").replace(".", "_")
    return os.path.join(WORK, f"{workload}-{safe}{_tools.by_name(owner).suffix}")


def run_workload(workload: str, tools: list[_tools.Tool], args: argparse.Namespace, log: Any) -> dict[str, Any]:
    spec = wl.spec_for(workload, args.quick)
    log(f"[{workload}] building {len(spec)} leaves, {wl.payload_bytes(spec) / 1e6:.1f} MB")
    tree = wl.build_tree(spec)
    template = wl.abstract_tree(spec)
    cells = {t.name: Cell() for t in tools}
    timed_runs = {t.name: args.reps for t in tools}
    total = args.warmup + args.reps
    for rep in range(total):
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
        warm = rep < args.warmup
        active = [t for t in order if rep < args.warmup + timed_runs[t.name]]
        for tool in active:
            if not tool.saves:
                continue
            path = file_for(tool, workload)
            tool.clear(path)
            gc.collect()
            try:
                t0 = time.perf_counter()
                tool.save(tree, path)
                elapsed = time.perf_counter() - t0
            except Exception as e:  # recorded in the table, never hidden
                cells[tool.name].errors.append(f"save: {type(e).__name__}: {e}"[:200])
                continue
            if not warm:
                cells[tool.name].save.append(elapsed)
            cells[tool.name].__dict__.setdefault("first_save", elapsed)
        for tool in active:
            cell = cells[tool.name]
            gc.collect()
            try:
                t0 = time.perf_counter()
                result = tool.load(file_for(tool, workload), tree if tool.concrete_template else template)
                jax.block_until_ready(result)
                elapsed = time.perf_counter() - t0
            except Exception as e:
                cell.errors.append(f"load: {type(e).__name__}: {e}"[:200])
                continue
            if not warm:
                cell.load.append(elapsed)
            if result is not None:  # the readinto floor returns bytes, not a tree
                problems = wl.mismatches(tree, result)
                cell.output = wl.leaf_kind(result)
                if problems:
                    cell.mismatched += 1
                    cell.errors.append(f"load result differs: {problems[:3]}")
                else:
                    cell.verified += 1
            del result
            if warm and args.reps > SLOW_RUNS:
                spent = cell.__dict__.get("first_save", 0.0) + elapsed
                if spent > SLOW_RUN_S:
                    timed_runs[tool.name] = SLOW_RUNS
                    cell.note = f"{SLOW_RUNS} runs after warm-up (one save+load took {spent:.0f} s)"
        log(f"[{workload}] repetition {rep + 1}/{total}{' (warm-up)' if warm else ''} done")
    if not args.skip_memory:
        for tool in tools:
            if args.quick and (workload != "big" or tool.name not in ("ckptschema", REFERENCE)):
                continue
            if cells[tool.name].errors:
                continue
            cells[tool.name].memory = measure_memory(tool, workload, file_for(tool, workload), args.quick)
            log(f"[{workload}] memory {tool.name}: {cells[tool.name].memory}")
    extras: dict[str, Any] = {}
    if workload == "many" and any(t.name == "ckptschema" for t in tools):
        extras["read_manifest"] = time_read_manifest(file_for(_tools.by_name("ckptschema"), workload), args)
    if workload == "big" and any(t.name == "ckptschema" for t in tools):
        extras["subtree"] = time_subtree(file_for(_tools.by_name("ckptschema"), workload), spec, tree, args)
    del tree
    gc.collect()
    return {"spec_leaves": len(spec), "payload": wl.payload_bytes(spec), "cells": cells, "extras": extras}


def _repeat(fn: Any, runs: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_read_manifest(path: str, args: argparse.Namespace) -> dict[str, Any]:
    import ckptschema

    manifest = ckptschema.read_manifest(path)
    times = _repeat(lambda: ckptschema.read_manifest(path), 3 if args.quick else 20)
    return {"median": statistics.median(times), "tensors": len(manifest.tensors), "runs": len(times)}


def time_subtree(path: str, spec: wl.Spec, tree: Any, args: argparse.Namespace) -> dict[str, Any]:
    import ckptschema

    template, nbytes = wl.subtree_template(spec)
    source = tree
    for part in wl.SUBTREE.split("."):
        source = source[part]
    result = ckptschema.load(path, template=template, subtree=wl.SUBTREE)
    problems = wl.mismatches(source, result)

    def once() -> None:
        jax.block_until_ready(ckptschema.load(path, template=template, subtree=wl.SUBTREE))

    times = _repeat(once, 3 if args.quick else 20)
    return {"median": statistics.median(times), "bytes": nbytes, "runs": len(times), "exact": not problems}


def time_import(runs: int) -> dict[str, Any]:
    code = (
        "import time, sys, json; t0 = time.perf_counter(); import jax; t1 = time.perf_counter(); "
        "import ckptschema; t2 = time.perf_counter(); "
        f"print(json.dumps({{'jax': t1 - t0, 'ck': t2 - t1, 'fw': [m for m in {FRAMEWORKS!r} if m in sys.modules]}}))"
    )
    results = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.join(WORK, "pkg"), check=True
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "jax": statistics.median(r["jax"] for r in results),
        "ckptschema": statistics.median(r["ck"] for r in results),
        "frameworks": sorted({m for r in results for m in r["fw"]}),
        "runs": runs,
    }


# ------------------------------------------------------------------------------ report


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


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ckptschema"], capture_output=True, text=True, cwd=ROOT
        )
    except OSError:
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + (" (ckptschema/ has uncommitted changes)" if dirty.stdout.strip() else "")


def _meminfo_kb(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _s(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.01:
        return f"{x:.3f}"
    return f"{x:.4f}"


def _timing(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return _s(xs[0])
    return f"{_s(statistics.median(xs))} [{_s(min(xs))}-{_s(max(xs))}]"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def workload_table(name: str, data: dict[str, Any]) -> list[str]:
    cells: dict[str, Cell] = data["cells"]
    payload = data["payload"]
    ref = cells.get(REFERENCE)
    floor = cells.get(FLOOR)
    ref_load = ref and Cell.median(ref.load)
    ref_save = ref and Cell.median(ref.save)
    floor_load = floor and Cell.median(floor.load)
    lines = [
        f"### {name}: {data['spec_leaves']} leaves, {payload / 1e6:.1f} MB payload",
        "",
        "| tool | out | load s, median [min-max] | load / st.numpy | load / floor | save s, median [min-max] "
        "| save / st.numpy | RSS added by load | / payload | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            f"| {tool} | {out} | {_timing(cell.load)} | {_ratio(load, ref_load)} | {_ratio(load, floor_load)} "
            f"| {_timing(cell.save)} | {_ratio(save, ref_save)} | {mem_s} | {mem_r} | {' '.join(notes)} |"
        )
    return lines


def targets(results: dict[str, Any], imports: dict[str, Any] | None) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of issue 6."""
    rows: list[tuple[str, str, bool | None]] = []

    def med(workload: str, tool: str, what: str) -> float | None:
        cell = results.get(workload, {}).get("cells", {}).get(tool)
        return Cell.median(getattr(cell, what)) if cell else None

    def at_most(label: str, a: float | None, b: float | None, limit: float) -> None:
        if a is None or b is None:
            rows.append((label, "not measured", None))
        else:
            rows.append((label, f"{a / b:.2f}x ({_s(a)} s vs {_s(b)} s)", a / b <= limit))

    def faster(label: str, ours: float | None, theirs: float | None, factor: float) -> None:
        if ours is None or theirs is None:
            rows.append((label, "not measured", None))
        else:
            rows.append(
                (label, f"{theirs / ours:.1f}x faster ({_s(ours)} s vs {_s(theirs)} s)", theirs / ours >= factor)
            )

    ck = "ckptschema"
    for w in ("big", "bf16"):
        at_most(f"{w} load <= 0.5x safetensors.numpy load", med(w, ck, "load"), med(w, REFERENCE, "load"), 0.5)
        at_most(f"{w} load <= 1.0x readinto floor", med(w, ck, "load"), med(w, FLOOR, "load"), 1.0)
    at_most("many load <= 1.0x safetensors.numpy load", med("many", ck, "load"), med("many", REFERENCE, "load"), 1.0)
    at_most("many load <= 1.0x flax msgpack load", med("many", ck, "load"), med("many", "flax msgpack", "load"), 1.0)
    at_most("many save <= 1.0x safetensors.numpy save", med("many", ck, "save"), med("many", REFERENCE, "save"), 1.0)
    for w in ("big", "many"):
        for what in ("save", "load"):
            faster(f"{w} {what} >= 3x faster than orbax", med(w, ck, what), med(w, "orbax", what), 3.0)
    faster("big save >= 5x faster than flax msgpack", med("big", ck, "save"), med("big", "flax msgpack", "save"), 5.0)
    big = results.get("big")
    mem = big and big["cells"].get(ck) and big["cells"][ck].memory
    if mem and "added" in mem:
        r = mem["added"] / big["payload"]
        rows.append(
            ("memory added by a big load <= 1.05x payload", f"{r:.2f}x ({mem['added'] / 1e6:.0f} MB)", r <= 1.05)
        )
    else:
        rows.append(("memory added by a big load <= 1.05x payload", "not measured", None))
    if imports:
        fw = imports["frameworks"]
        rows.append(("import ckptschema imports no framework", ", ".join(fw) if fw else "none imported", not fw))
        rows.append(
            (
                "import ckptschema adds < 0.3 s over import jax",
                f"{imports['ckptschema']:.3f} s (import jax: {imports['jax']:.2f} s)",
                imports["ckptschema"] < 0.3,
            )
        )
    rm = results.get("many", {}).get("extras", {}).get("read_manifest")
    if rm:
        rows.append(
            (
                f"read_manifest on the {rm['tensors']}-leaf file < 50 ms",
                f"{rm['median'] * 1e3:.1f} ms",
                rm["median"] < 0.05,
            )
        )
    sub = results.get("big", {}).get("extras", {}).get("subtree")
    if sub:
        rows.append(
            (
                f"load one {sub['bytes'] / 1e6:.2f} MB leaf via subtree= from the big file < 20 ms",
                f"{sub['median'] * 1e3:.1f} ms{'' if sub['exact'] else ' (NOT bit-exact)'}",
                sub["median"] < 0.02 and sub["exact"],
            )
        )
    return rows


def report(results: dict[str, Any], imports: dict[str, Any] | None, args: argparse.Namespace, wall: float) -> str:
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
        f"- One process; per workload, {args.warmup} warm-up repetition(s) then {args.reps} timed; in each "
        "repetition every tool saves, then every tool loads, tools interleaved in an order rotated per "
        "repetition. Times are medians (with min-max) of the timed runs; ratios compare medians of this run.",
        "- Warm page cache: each load reads a file written moments before. Loads end with "
        "`jax.block_until_ready`. The source tree holds `jax.Array`s; loads get the abstract template "
        "(`jax.ShapeDtypeStruct` leaves) where the tool takes one; `ckptschema template=params` gets the "
        "source tree itself, as in `load(path, template=params)`.",
        f"- **Load results verified bit-exact (dtype, shape, every byte, all paths), warm-up included: "
        f"{verified} loads verified, {mismatched} mismatched, {errors} errors.**",
        "- `floor: readinto` reads the raw safetensors file into one preallocated, reused buffer (`readinto`); "
        "`floor: preadv+device_put` reads each tensor into a fresh 64-byte aligned buffer and `jax.device_put`s it "
        "(a jax-out loader without any checks).",
        "- RSS added by a load: fresh subprocess per tool, imports and backend start done first, VmHWM reset via "
        "`/proc/self/clear_refs`, then VmHWM after the load minus before."
        + (" Quick mode measures only ckptschema and safetensors.numpy on big." if args.quick else ""),
        "- ckptschema saves with its defaults: sha256 of every tensor and an atomic write with fsync "
        "(no other tool fsyncs). safetensors.numpy writes bfloat16 fine in safetensors 0.8 (ml_dtypes).",
        "",
        "## Results",
        "",
    ]
    for name, data in results.items():
        lines += [*workload_table(name, data), ""]
    rows = targets(results, imports)
    lines += ["## Targets (issue 6)", "", "| target | measured | met |", "|---|---|---|"]
    for label, measured, met in rows:
        lines.append(f"| {label} | {measured} | {'met' if met else 'n/a' if met is None else '**missed**'} |")
    lines += [""]
    if imports:
        lines += [
            f"Import times are medians of {imports['runs']} fresh subprocesses "
            "(`import jax`, then `import ckptschema`).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny trees and few runs (smoke test)")
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5; quick 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--tools", default=None, help="comma-separated tool names (default: all)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--keep-files", action="store_true", help="keep the checkpoints in benchmarks/.work")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: benchmarks/.work/run-PID)")
    parser.add_argument("--mem-child", nargs=3, metavar=("TOOL", "WORKLOAD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mem_child:
        mem_child(*args.mem_child, quick=args.quick)
        return 0
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    global WORK
    WORK = os.path.abspath(args.workdir) if args.workdir else WORK
    os.makedirs(WORK, exist_ok=True)
    _snapshot_package()
    args.commit_at_start = _commit()
    tools = _tools.all_tools()
    if args.tools:
        wanted = args.tools.split(",")
        tools = [t for t in tools if t.name in wanted]
    for tool in tools:
        tool.prepare()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    results: dict[str, Any] = {}
    for workload in args.workloads.split(","):
        results[workload] = run_workload(workload, tools, args, log)
        if not args.keep_files:
            for tool in tools:
                if tool.saves:
                    path = file_for(tool, workload)
                    _tools.Orbax().clear(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
    imports = time_import(1 if args.quick else 5) if any(t.name == "ckptschema" for t in tools) else None
    text = report(results, imports, args, time.perf_counter() - start)
    if not args.keep_files:
        import shutil

        shutil.rmtree(WORK, ignore_errors=True)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    bad = sum(c.mismatched + len(c.errors) for r in results.values() for c in r["cells"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
