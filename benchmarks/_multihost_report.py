"""The markdown report of `multihost.py`: machine, method, per process count a time table, a table
per process of bytes and memory against its own share, and the goals of issue 12 as PASS/MISS.

`report` gets, per process count, the JSON every worker printed (sorted by process index).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from typing import Any

from _report import machine, megabytes, timing

TOOLS = ("ckptschema", "orbax")
SPEEDUP = 3.0  # orbax time / ckptschema time, save and restore
READ_FACTOR = 1.1  # restore bytes read per process / own share
MEMORY_FACTOR = 1.1  # (own share + peak added by the save) / own share


def commit(root: str) -> str:
    """The short commit of `root`, marked when ckptschema/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ckptschema"], capture_output=True, text=True, cwd=root
        )
    except OSError:
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + (" (ckptschema/ has uncommitted changes)" if dirty.stdout.strip() else "")


def _timed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r["warmup"]]


def op_times(results: list[dict[str, Any]], tool: str, op: str) -> list[float]:
    """Per timed repetition, the slowest process's seconds (every op starts after a barrier)."""
    per_rep: dict[int, list[float]] = {}
    for r in results:
        for row in _timed(r[tool][op]):
            per_rep.setdefault(row["rep"], []).append(row["s"])
    return [max(v) for _, v in sorted(per_rep.items()) if len(v) == len(results)]


def per_process(result: dict[str, Any], tool: str, op: str, field: str) -> float | None:
    """The median over timed repetitions of one process's `field` of `op`."""
    xs = [row[field] for row in _timed(result[tool][op])]
    return statistics.median(xs) if xs else None


def _x(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "PASS" if met else "**MISS**"


def section(count: int, results: list[dict[str, Any]]) -> list[str]:
    first = results[0]
    lines = [
        f"### {count} processes x 2 CPU devices ({first['devices']} devices): {first['leaves']} leaves, "
        f"{first['payload'] / 1e6:.1f} MB payload",
        "",
        "| tool | save s, median [min-max] | save / ckptschema | restore s, median [min-max] | restore / ckptschema "
        "| on disk | restores verified | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    med = {(t, op): _median(op_times(results, t, op)) for t in TOOLS for op in ("save", "restore")}
    r0 = results[0]
    for tool in TOOLS:
        verified = sum(r[tool]["verified"] for r in results)
        mismatched = sum(r[tool]["mismatched"] for r in results)
        errors = sorted({e for r in results for e in r[tool]["errors"]})
        cells = [
            tool,
            timing(op_times(results, tool, "save")),
            _x(med[tool, "save"], med["ckptschema", "save"]),
            timing(op_times(results, tool, "restore")),
            _x(med[tool, "restore"], med["ckptschema", "restore"]),
            megabytes(r0[tool]["disk"]),
            f"{verified} of {verified + mismatched}",
            "ERRORS: " + "; ".join(errors[:2]) if errors else "none",
        ]
        lines.append(_row(cells))
    lines += [
        "",
        "Per process (medians over the timed repetitions; own share = distinct bytes of the process's blocks; "
        "held = bytes of its devices' blocks, a block on both local devices counted twice, the least a restore "
        "allocates):",
        "",
        "| tool | process | own share | held | save: written | / share | save: read | save: peak added "
        "| (share + peak) / share | restore: read | / share | restore: written | restore: peak added | / held |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tool in TOOLS:
        for r in results:
            share = r["share"]
            w, sr, sp = (per_process(r, tool, "save", f) for f in ("written", "read", "peak_added"))
            rr, rw, rp = (per_process(r, tool, "restore", f) for f in ("read", "written", "peak_added"))
            cells = [
                tool,
                str(r["process"]),
                megabytes(share),
                megabytes(r["held"]),
                megabytes(w),
                _x(w, share),
                megabytes(sr),
                megabytes(sp),
                _x(None if sp is None else share + sp, share),
                megabytes(rr),
                _x(rr, share),
                megabytes(rw),
                megabytes(rp),
                _x(rp, r["held"]),
            ]
            lines.append(_row(cells))
    lines += ["", *goals(count, results, med), ""]
    return lines


def goals(count: int, results: list[dict[str, Any]], med: dict[tuple[str, str], float | None]) -> list[str]:
    """The goals of issue 12 for this process count, each with its measured ratio."""
    rows: list[tuple[str, str, bool | None]] = []
    for op in ("save", "restore"):
        ck, orbax = med["ckptschema", op], med["orbax", op]
        ratio = None if ck is None or orbax is None else orbax / ck
        measured = "n/a" if ratio is None else f"orbax / ckptschema = {ratio:.2f}x ({orbax:.3g} s / {ck:.3g} s)"
        rows.append((f"{op} >= {SPEEDUP:g}x faster than orbax", measured, None if ratio is None else ratio >= SPEEDUP))

    def worst(values: list[tuple[float | None, int]]) -> tuple[float | None, int]:
        known = [(v, p) for v, p in values if v is not None]
        return max(known) if len(known) == len(values) else (None, -1)

    read, rp = worst(
        [(_ratio(per_process(r, "ckptschema", "restore", "read"), r["share"]), r["process"]) for r in results]
    )
    rows.append(
        (
            f"restore: bytes read per process <= {READ_FACTOR:g}x own share (worst process)",
            "n/a" if read is None else f"{read:.3f}x (process {rp})",
            None if read is None else read <= READ_FACTOR,
        )
    )
    peaks = [(per_process(r, "ckptschema", "save", "peak_added"), r["share"], r["process"]) for r in results]
    mem, mp = worst([(None if p is None else (s + p) / s, q) for p, s, q in peaks])
    rows.append(
        (
            f"save: peak memory per process <= own share + {MEMORY_FACTOR - 1:.0%} (worst process)",
            "n/a" if mem is None else f"(share + peak added) / share = {mem:.3f}x (process {mp})",
            None if mem is None else mem <= MEMORY_FACTOR,
        )
    )
    return [
        f"Goals of issue 12 at {count} processes:",
        "",
        "| goal | measured | result |",
        "|---|---|---|",
        *[f"| {label} | {measured} | {_verdict(met)} |" for label, measured, met in rows],
    ]


def _ratio(a: float | None, b: float) -> float | None:
    return None if a is None or not b else a / b


def method(args: argparse.Namespace, runs: dict[int, list[dict[str, Any]]]) -> list[str]:
    verified = sum(r[t]["verified"] for rs in runs.values() for r in rs for t in TOOLS)
    mismatched = sum(r[t]["mismatched"] for rs in runs.values() for r in rs for t in TOOLS)
    errors = sum(len(r[t]["errors"]) for rs in runs.values() for r in rs for t in TOOLS)
    return [
        '- N processes on 127.0.0.1, each `jax.distributed.initialize(coordinator_address="127.0.0.1:PORT", ...)` '
        "with 2 CPU devices (`--xla_force_host_platform_device_count=2`, gloo CPU collectives), all on this one "
        "machine and its one file system (the checkpoint folder is shared by every process, as a shared file "
        "system would be across hosts).",
        "- The tree: a float32 transformer-like tree of global `jax.Array`s over a (hosts, local) mesh: "
        "embedding and attention output split by rows over both axes, qkv and head by columns over both axes, "
        "MLP up in 2-D blocks (rows over hosts, columns over local devices), MLP down by rows over hosts only "
        "(replicated over a process's two devices), biases split, layer norms and the position embedding "
        "replicated. Every process builds only its own blocks, from a formula of the global element index.",
        "- ckptschema: `ckptschema.save(dir, tree)` (defaults: a BLAKE3 digest of every tensor, fsync, one shard per "
        "5 GB) in every process; `ckptschema.load(dir, template)` with the template of "
        "`jax.ShapeDtypeStruct(shape, dtype, sharding=...)` leaves. orbax: `ocp.StandardCheckpointer().save(dir, "
        "tree)` + `wait_until_finished()` in every process; `restore(dir, template)` with the same abstract tree. "
        "orbax runs with its defaults: OCDBT over TensorStore's file driver (which fsyncs) and zstd-compressed "
        "zarr3 chunks, so its files and bytes are smaller than the payload; ckptschema writes the raw bytes.",
        "- A save's bytes read are ckptschema's digests of tensors whose blocks several processes write: one "
        "process per tensor (balanced by bytes) reads it back from the shard and hashes it.",
        f"- {args.warmup} warm-up repetition(s) then {args.reps} timed; in each repetition every tool saves "
        "(to a fresh folder), then every tool restores, the tools' order rotated per repetition. Before each "
        "op: `gc.collect()` and a barrier of every process (`multihost_utils.sync_global_devices`); an op's "
        "time is the slowest process's (ops end with `jax.block_until_ready`, saves with the checkpoint "
        "complete). Times are medians [min-max] over the timed repetitions; ratios compare medians.",
        "- Bytes read and written: deltas of `rchar`/`wchar` in `/proc/self/io` around the op (every read and "
        "write syscall of the process, page cache hits included; socket traffic through read/write counts too). "
        "Warm page cache: each restore reads files written moments before.",
        "- Peak added: `malloc_trim(0)` (freed heap back to the system), then VmHWM reset through "
        '`/proc/self/clear_refs` ("5") just before the op, then VmHWM after '
        "it minus VmRSS before it. The source tree is resident during every op, so a save's peak memory is the "
        "process's own share plus what the save adds: the save memory goal compares (share + peak added) / share.",
        "- Own share: distinct bytes of the process's addressable blocks (a block held by both local devices, "
        "or a replicated leaf, counts once per process).",
        "- All processes share this machine's cores (2 CPU devices each): times are for N processes on one "
        "host, with the load average at the start given above (other work was running).",
        f"- **Restores verified bit for bit against the source blocks (every addressable block, its sharding, "
        f"dtype and every byte; warm-up included): {verified} verified, {mismatched} mismatched, "
        f"{errors} errors.**",
    ]


def report(runs: dict[int, list[dict[str, Any]]], args: argparse.Namespace, wall: float) -> str:
    counts = ",".join(str(c) for c in runs)
    lines = [
        "# ckptschema multi-host benchmark",
        "",
        f"Generated by `python benchmarks/multihost.py --processes {counts}{' --quick' if args.quick else ''}` "
        f"on {time.strftime('%Y-%m-%d %H:%M %Z')} in {wall / 60:.1f} min.",
    ]
    if args.quick:
        lines += ["", "**Quick mode: a tiny tree, one timed run. These numbers mean nothing; run without --quick.**"]
    lines += [
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine(args.commit_at_start)],
        f"| load average at start (1, 5, 15 min) | {args.load_at_start} |",
        "",
        "## Method",
        "",
        *method(args, runs),
        "",
        "## Results",
        "",
    ]
    for count, results in runs.items():
        lines += section(count, results)
    return "\n".join(lines)
