"""cProfile of ckptschema's save and load on one benchmark workload (not part of run.py).

    python benchmarks/_profile.py big|bf16|many [--quick] [--top 25] [--no-gc]

Prints, for a warm save, a warm load (template, strict, jax out) and read_manifest, the wall
time and the functions with the most own time and the most cumulative time. ``--no-gc``
runs each call with the garbage collector paused, to show what remains without GC pauses.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _workloads as wl  # noqa: E402
import jax  # noqa: E402

import ckptschema  # noqa: E402


def profiled(label: str, fn, top: int, no_gc: bool = False) -> None:
    if no_gc:
        inner = fn

        def fn() -> None:
            gc.disable()
            try:
                inner()
            finally:
                gc.enable()

    fn()  # warm
    t0 = time.perf_counter()
    fn()
    plain = time.perf_counter() - t0
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    profiled_s = time.perf_counter() - t0
    print(f"\n===== {label}: {plain:.3f} s unprofiled, {profiled_s:.3f} s under cProfile =====")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(top)
        text = out.getvalue()
        print(f"--- by {key} ---")
        print(text[text.find("   ncalls") :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["big", "bf16", "many"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-gc", action="store_true")
    args = parser.parse_args()
    os.makedirs(os.path.join(HERE, ".work"), exist_ok=True)
    path = os.path.join(HERE, ".work", f"profile-{args.workload}.safetensors")
    spec = wl.spec_for(args.workload, args.quick)
    tree = wl.build_tree(spec)
    template = wl.abstract_tree(spec)
    try:
        gc_note = " (gc paused)" if args.no_gc else ""
        profiled(f"{args.workload} save{gc_note}", lambda: ckptschema.save(path, tree), args.top, args.no_gc)
        profiled(
            f"{args.workload} load{gc_note}",
            lambda: jax.block_until_ready(ckptschema.load(path, template=template)),
            args.top,
            args.no_gc,
        )
        profiled(
            f"{args.workload} read_manifest{gc_note}", lambda: ckptschema.read_manifest(path), args.top, args.no_gc
        )
    finally:
        os.remove(path)


if __name__ == "__main__":
    main()
