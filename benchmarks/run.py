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
/proc/self/clear_refs) after the load minus before it. Then many-style files of 1k, 10k and
100k leaves time ``read_manifest`` (`_scaling`), and the report (`_report`) states every
target of SPEC.md section 7 (`_targets`) as a ratio within this run, PASS or MISS.

``--quick`` shrinks the trees and repetitions so the whole run takes seconds (smoke test).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
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

import _scaling  # noqa: E402
import _targets  # noqa: E402
import _tools  # noqa: E402
import _workloads as wl  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from _report import REFERENCE, Cell, report  # noqa: E402

WORKLOADS = ("big", "bf16", "many")
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
    template = template_for(tool, spec, wl.build_tree(spec) if tool.template == "params" else None)
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


def template_for(tool: _tools.Tool, spec: wl.Spec, tree: Any) -> Any:
    """What `tool` loads with: the abstract template, the source tree itself, or numpy zeros."""
    if tool.template == "params":
        return tree
    return wl.numpy_tree(spec) if tool.template == "numpy" else wl.abstract_tree(spec)


def file_for(tool: _tools.Tool, workload: str) -> str:
    owner = tool.floor_of or tool.name
    safe = owner.replace(" ", "_").replace(":", "").replace(".", "_")
    return os.path.join(WORK, f"{workload}-{safe}{_tools.by_name(owner).suffix}")


def run_workload(workload: str, tools: list[_tools.Tool], args: argparse.Namespace, log: Any) -> dict[str, Any]:
    spec = wl.spec_for(workload, args.quick)
    log(f"[{workload}] building {len(spec)} leaves, {wl.payload_bytes(spec) / 1e6:.1f} MB")
    tree = wl.build_tree(spec)
    templates = {t.template: template_for(t, spec, tree) for t in tools}  # built once, outside the timing
    cells = {t.name: Cell() for t in tools}
    for tool in tools:
        if not tool.loads:
            cells[tool.name].note = "save only (its file loads like safetensors.numpy's)"
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
            cells[tool.name].file_bytes = _tools.size_on_disk(path)
        for tool in active:
            if not tool.loads:
                continue
            cell = cells[tool.name]
            gc.collect()
            try:
                t0 = time.perf_counter()
                result = tool.load(file_for(tool, workload), templates[tool.template])
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
            if cells[tool.name].errors or not tool.loads:
                continue
            cells[tool.name].memory = measure_memory(tool, workload, file_for(tool, workload), args.quick)
            log(f"[{workload}] memory {tool.name}: {cells[tool.name].memory}")
    extras: dict[str, Any] = {}
    if workload == "many" and any(t.name == "ckptschema" for t in tools):
        path = file_for(_tools.by_name("ckptschema"), workload)
        extras["read_manifest"] = _scaling.time_read_manifest(path, 3 if args.quick else 20)
    if workload == "big" and any(t.name == "ckptschema" for t in tools):
        extras["subtree"] = time_subtree(file_for(_tools.by_name("ckptschema"), workload), spec, tree, args)
    del tree, templates
    gc.collect()
    return {"spec_leaves": len(spec), "payload": wl.payload_bytes(spec), "cells": cells, "extras": extras}


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

    times = _scaling.repeat(once, 3 if args.quick else 20)
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
        tool_name, workload, path = args.mem_child
        mem_child(tool_name, workload, path, quick=args.quick)
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
    if args.quick:
        gc.freeze()  # the imports' objects skip every gc.collect: 0.17 s each otherwise, ~30 per repetition

    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - start:7.1f} s  {msg}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {}
    for workload in args.workloads.split(","):
        results[workload] = run_workload(workload, tools, args, log)
        if not args.keep_files:
            for tool in tools:
                path = file_for(tool, workload)
                if tool.saves and os.path.isdir(path):
                    _tools.Orbax().clear(path)
                elif tool.saves and os.path.exists(path):
                    os.remove(path)
    has_ck = any(t.name == "ckptschema" for t in tools)
    sizes = wl.QUICK if args.quick else wl.FULL
    scaling = _scaling.scaling(sizes.scaling_leaves, WORK, 3 if args.quick else 5, log) if has_ck else []
    imports = time_import(1 if args.quick else 5) if has_ck else None
    checks = {
        "Targets (SPEC.md section 7)": _targets.targets(results, scaling),
        "Other checks (issue 6)": _targets.other_checks(results, imports),
    }
    text = report(results, scaling, checks, imports, args, time.perf_counter() - start)
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
