"""The ``ckptschema`` command: inspect, schema, validate, diff, convert and json-schema.

Every subcommand reads only headers, except ``validate --deep``, which re-hashes the
tensors, and ``convert``, which rewrites another tool's checkpoint (both with a progress
bar when stderr is a terminal). Human output is a rich table on a
terminal and plain, aligned text when piped; ``--json`` output is machine-readable.
Whatever a file holds, text from it is printed with control characters escaped, so a
hostile key cannot drive the terminal.

Exit codes: 0 ok, 1 validation or integrity failure (or, for ``diff``, a difference),
2 usage error or unreadable file. An unreadable file gets one ``ckptschema: error: ...``
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import __version__
from ._api import load_schema, read_manifest, save, validate
from ._convert import FORMATS, read_foreign
from ._dtypes import DTYPES
from ._errors import CkptSchemaError
from ._manifest import FORMAT_VERSION, Manifest, json_schema
from ._review import Schema, differences, document_json_schema
from ._shards import is_sharded
from ._tree import KeyPart, child_keys, describe, keypath

__all__ = ["main", "run"]

OK, FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    """A command line that cannot be carried out (exit code 2), such as a bad ``--template``."""


# ------------------------------------------------------------------------------- output


def _safe(text: str) -> str:
    """`text` with every non-printable character but newlines escaped (``\\x1b``)."""
    if text.isprintable():
        return text
    return "\n".join(
        "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in line)
        for line in text.split("\n")
    )


def _write(text: str, *, machine: bool = False) -> None:
    """Write to stdout: machine-readable text as UTF-8 bytes whatever the locale, human text escaped."""
    stream = sys.stdout
    if not machine:
        text = _safe(text)
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text)
        stream.flush()
        return
    stream.flush()
    encoding = "utf-8" if machine else (getattr(stream, "encoding", None) or "utf-8")
    buffer.write(text.encode(encoding, "backslashreplace"))
    buffer.flush()


def _error(message: str) -> None:
    sys.stderr.write(f"ckptschema: error: {_safe(message)}\n")
    sys.stderr.flush()


def _size(nbytes: int) -> str:
    """Bytes for humans: ``184 B``, ``1.5 KiB``, ``2.0 GiB``.

    Example:
        >>> _size(184), _size(1536), _size(3 << 30)
        ('184 B', '1.5 KiB', '3.0 GiB')
    """
    if nbytes < 1024:
        return f"{nbytes} B"
    value = float(nbytes)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


# ------------------------------------------------------------------------- reading files


def _looks_like_json(path: str) -> bool:
    """Whether `path` is a regular file that starts like JSON rather than a safetensors length.

    A safetensors file starts with its header length as 8 little-endian bytes; any header
    under ``MAX_HEADER_BYTES`` leaves NUL bytes among them, which JSON text never holds.
    """
    if not os.path.isfile(path):  # FIFOs and devices are left to the reader, which refuses them
        return False
    try:
        with open(path, "rb") as f:
            start = f.read(8)
    except OSError:
        return False
    return len(start) == 8 and b"\0" not in start and start.lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{")


STDIN = "-"


def _is_pipe(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _read_any(path: str) -> Manifest | Schema:
    """The manifest of a checkpoint, or a schema document (a file, ``-`` for stdin, or a pipe).

    A pipe (``<(ckptschema schema ...)``) can only carry a schema document: it is read to its
    end, up to ``MAX_HEADER_BYTES``. Checkpoints are read from regular files only.
    """
    if path == STDIN:
        return load_schema(sys.stdin.buffer)
    if not is_sharded(path) and (_is_pipe(path) or _looks_like_json(path)):
        return load_schema(path)
    return read_manifest(path)


def schema_beside(path: str) -> str:
    """Where the schema of a checkpoint is kept by convention: beside it, named after it.

    Example:
        >>> schema_beside("weights/model.safetensors"), schema_beside("ckpt/model.safetensors.index.json")
        ('weights/model.schema.json', 'ckpt/model.schema.json')
    """
    stem = path.rstrip("/") or path
    for suffix in (".safetensors.index.json", ".safetensors"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)] + ".schema.json"
    return stem + ".schema.json"


# ------------------------------------------------------------------------------ inspect


@dataclasses.dataclass
class _Row:
    """One node of the tree as `inspect` shows it; containers carry their subtree's totals."""

    path: tuple[KeyPart, ...]
    kind: str
    type: str
    shape: tuple[int, ...] | None = None
    key: str | None = None
    value: Any = None
    params: int = 0
    nbytes: int = 0
    tensors: int = 0
    wrappers: list[str] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.type} ({', '.join(self.wrappers)})" if self.wrappers else self.type

    @property
    def is_container(self) -> bool:
        return self.kind not in ("tensor", "scalar", "none")


def _rows(node: dict[str, Any], path: tuple[KeyPart, ...], out: list[_Row]) -> _Row:
    """Append the rows of `node` and its subtree to `out`, parents first; return its row."""
    kind = node["kind"]
    if kind == "wrapper":  # no path part of its own: it annotates the row of what it wraps
        first = len(out)
        row = _rows(node["child"], path, out)
        out[first].wrappers.insert(0, node["type"])
        return row
    if kind == "tensor":
        shape = tuple(node["shape"])
        params = math.prod(shape)
        row = _Row(path, kind, node["dtype"], shape, node["key"], params=params, tensors=1)
        row.nbytes = params * DTYPES[node["dtype"]].numpy.itemsize
        out.append(row)
        return row
    row = _Row(path, kind, describe(node), value=node.get("value"))
    out.append(row)
    for key, child in zip(child_keys(node), node.get("children", [])):
        sub = _rows(child, (*path, key), out)
        row.params += sub.params
        row.nbytes += sub.nbytes
        row.tensors += sub.tensors
    return row


@dataclasses.dataclass
class Inventory:
    """What ``ckptschema inspect`` shows: a checkpoint's tree with per-subtree totals.

    Example:
        >>> import numpy as np, ckptschema
        >>> _ = ckptschema.save(tmp_path / "m.safetensors", {"w": np.zeros((3, 4), np.float32), "step": 3})
        >>> inv = Inventory.of(str(tmp_path / "m.safetensors"))
        >>> inv.root.tensors, inv.root.params, inv.root.nbytes
        (1, 12, 48)
    """

    source: str
    manifest: Manifest | Schema
    root: _Row
    rows: list[_Row]

    @classmethod
    def of(cls, path: str) -> Inventory:
        """Read a checkpoint's (or schema document's) manifest; no tensor bytes are read."""
        manifest = _read_any(path)
        rows: list[_Row] = []
        root = _rows(manifest.skeleton, (), rows)  # type: ignore[arg-type]
        if root.is_container and not root.wrappers:
            del rows[0]  # the totals line stands for the root
        return cls(path, manifest, root, rows)

    @property
    def heading(self) -> str:
        m = self.manifest
        checksums = f"{m.checksum} checksums" if m.checksum else "no checksums"
        if isinstance(m, Schema):
            return f"{self.source}: {m.framework} schema document, {checksums}"
        return f"{self.source}: {m.framework} checkpoint, manifest version {m.version}, {checksums}"

    @property
    def total(self) -> str:
        r = self.root
        exact = f" ({r.nbytes:,} bytes)" if r.nbytes >= 1024 else ""
        return (
            f"total: {r.tensors:,} tensor{'s' if r.tensors != 1 else ''}, "
            f"{r.params:,} parameter{'s' if r.params != 1 else ''}, {_size(r.nbytes)}{exact}"
        )

    def cells(self, row: _Row) -> list[str]:
        """The type, shape, params and size cells of a row."""
        if row.kind == "tensor":
            return [row.label, str(row.shape), f"{row.params:,}", _size(row.nbytes)]
        if row.is_container:
            return [row.label, "", f"{row.params:,}", _size(row.nbytes)]
        return [row.label, "", "", ""]

    def plain(self) -> str:
        """Aligned text with full paths, one node a line (what is printed when piped)."""
        table = [["PATH", "TYPE", "SHAPE", "PARAMS", "SIZE"]]
        table += [[keypath(r.path), *self.cells(r)] for r in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(5)]
        lines = []
        for line in table:
            left = [line[i].ljust(widths[i]) for i in range(3)]
            right = [line[i].rjust(widths[i]) for i in range(3, 5)]
            lines.append("  ".join(left + right).rstrip())
        return f"{self.heading}\n\n" + "\n".join(lines) + f"\n\n{self.total}\n"

    def to_json(self) -> str:
        """The inventory as JSON; paths as lists keep int keys apart from str keys."""
        m = self.manifest
        nodes = []
        for r in self.rows:
            entry: dict[str, Any] = {"path": keypath(r.path), "parts": list(r.path), "kind": r.kind}
            if r.kind == "tensor":
                entry |= {"key": r.key, "dtype": r.type, "shape": list(r.shape or ())}
            elif r.kind == "scalar":
                entry |= {"type": r.type.split(" ", 1)[0], "value": r.value}
            else:
                entry["type"] = r.type
            if r.wrappers:
                entry["wrappers"] = r.wrappers
            if r.kind == "tensor" or r.is_container:
                entry |= {"tensors": r.tensors, "params": r.params, "nbytes": r.nbytes}
            nodes.append(entry)
        data = {
            "source": self.source,
            "version": m.version if isinstance(m, Manifest) else FORMAT_VERSION,
            "framework": m.framework,
            "separator": m.separator,
            "checksum": m.checksum,
            "tensors": self.root.tensors,
            "params": self.root.params,
            "nbytes": self.root.nbytes,
            "nodes": nodes,
        }
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    def render(self, console: Any) -> None:
        """Print the tree as a rich table (what a terminal gets) on a `rich.console.Console`."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("path")
        table.add_column("type")
        table.add_column("shape")
        table.add_column("params", justify="right")
        table.add_column("size", justify="right")
        for row in self.rows:
            name = str(row.path[-1]) if row.path else "<root>"
            indent = "  " * max(len(row.path) - 1, 0)
            path = Text(_safe(indent + name), style="bold" if row.is_container else "")
            table.add_row(path, *(Text(_safe(c)) for c in self.cells(row)))
        console.print(Text(_safe(self.heading)))
        console.print(table)
        console.print(Text(self.total))


def _inspect(args: argparse.Namespace) -> int:
    inventory = Inventory.of(args.file)
    if args.json:
        _write(inventory.to_json(), machine=True)
    elif sys.stdout.isatty():
        from rich.console import Console

        inventory.render(Console())
    else:
        _write(inventory.plain())
    return OK


# ------------------------------------------------------------------------------- schema


def _write_file(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    except OSError as e:
        raise UsageError(f"{path}: cannot write ({e.strerror or e})") from e


def _current(path: str, text: str) -> bool:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read() == text
    except (OSError, UnicodeDecodeError):
        return False


def _schema(args: argparse.Namespace) -> int:
    if len(args.files) > 1 and not args.beside:
        raise UsageError("schema: give one FILE, or --beside to write each FILE's schema next to it")
    for file in args.files:
        text = read_manifest(file).schema_document(structure_only=args.structure_only)
        if args.beside:
            out = schema_beside(file)
            if not _current(out, text):  # rewritten only when it changed, as pre-commit fixers do
                _write_file(out, text)
                _write(f"wrote {out}\n")
        elif args.output is None:
            _write(text, machine=True)
        else:
            _write_file(args.output, text)
    return OK


# ----------------------------------------------------------------------------- validate


@contextlib.contextmanager
def _cwd_on_sys_path() -> Iterator[None]:
    """Let ``--template`` import modules from the current directory, as ``python -m`` does."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        importlib.invalidate_caches()
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def load_template(spec: str) -> Any:
    """Import ``module:function`` (from the current directory too) and call it for a template.

    The function takes no arguments and returns a pytree of arrays or
    `jax.ShapeDtypeStruct` (typically ``jax.eval_shape`` of an init function).

    Raises:
        UsageError: if the module cannot be imported, has no such callable, or the call fails.

    Example:
        >>> load_template("collections:OrderedDict")
        OrderedDict()
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--template {spec!r} must look like module:function")
    with _cwd_on_sys_path():
        try:
            target: Any = importlib.import_module(module_name)
        except Exception as e:  # the user's module may raise anything while importing
            raise UsageError(f"--template: cannot import {module_name!r} ({type(e).__name__}: {e})") from e
        for part in attr.split("."):
            if not hasattr(target, part):
                raise UsageError(f"--template: {module_name}:{attr} not found (no attribute {part!r})")
            target = getattr(target, part)
        if not callable(target):
            raise UsageError(f"--template: {spec} is a {type(target).__name__}, not a function")
        try:
            return target()
        except Exception as e:
            raise UsageError(f"--template: {spec}() raised {type(e).__name__}: {e}") from e


def _schema_for(file: str) -> Manifest | Schema:
    """The schema beside `file` (``validate --beside``), with the command that writes it if missing."""
    path = schema_beside(file)
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such schema beside {file}; write it with: ckptschema schema {file} -o {path}")
    return _read_any(path)


def _validate(args: argparse.Namespace) -> int:
    against: Any = None
    if args.template is not None:
        against = load_template(args.template)
    elif args.schema is not None:
        against = _read_any(args.schema)  # a schema document, or a reference checkpoint
    reports = []
    for file in args.files:
        report = validate(file, _schema_for(file) if args.beside else against, deep=args.deep, progress=True)
        reports.append(report)
        if not args.json:
            _write(f"{report}\n")
    if args.json:
        texts = [r.to_json() for r in reports]
        _write((texts[0] if len(texts) == 1 else "[\n" + ",\n".join(texts) + "\n]") + "\n", machine=True)
    return OK if all(r.ok for r in reports) else FAILED


# --------------------------------------------------------------------------------- diff

#: Changes in the order a Markdown summary counts them.
_CHANGES = (
    "added",
    "removed",
    "shape",
    "dtype",
    "structure",
    "value",
    "checksum",
    "framework",
    "separator",
    "checksum-algorithm",
)
#: Most rows a Markdown summary lists (a pull-request comment holds at most 65,536 characters).
MARKDOWN_ROWS = 200


def _diff_line(d: dict[str, Any]) -> str:
    if d["change"] == "added":
        detail = d["b"]
    elif d["change"] == "removed":
        detail = d["a"]
    else:
        detail = f"{d['a']} -> {d['b']}"
    return f"  {d['change']:<9} {d['path']}: {detail}"


def _md_code(value: str | None) -> str:
    """`value` as a Markdown code span that is safe in a table cell (empty for None).

    Example:
        >>> print(_md_code("a|b"), _md_code("x`y"), repr(_md_code(None)))
        `a\\|b` ``x`y`` ''
    """
    if value is None:
        return ""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)
    text = text.replace("|", "\\|")
    ticks = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def markdown_summary(a: str, b: str, found: list[dict[str, Any]]) -> str:
    """A `differences` list as Markdown for a pull-request comment: counts per change, then the paths.

    Example:
        >>> print(markdown_summary("old.json", "new.json", [{"change": "added", "path": "w", "a": None, "b": "int8[2]"}]))
        ### ckptschema diff: `old.json` → `new.json`
        <BLANKLINE>
        **1 difference**: 1 added
        <BLANKLINE>
        | change | path | A | B |
        |---|---|---|---|
        | added | `w` |  | `int8[2]` |
        <BLANKLINE>
    """
    title = f"### ckptschema diff: {_md_code(a)} → {_md_code(b)}"
    if not found:
        return f"{title}\n\nNo differences.\n"
    counts = Counter(d["change"] for d in found)
    n = len(found)
    summary = ", ".join(f"{counts[c]} {c}" for c in _CHANGES if counts[c])
    lines = [title, "", f"**{n} difference{'s' if n != 1 else ''}**: {summary}", "", "| change | path | A | B |"]
    lines.append("|---|---|---|---|")
    for d in found[:MARKDOWN_ROWS]:
        lines.append(f"| {d['change']} | {_md_code(d['path'])} | {_md_code(d['a'])} | {_md_code(d['b'])} |")
    if n > MARKDOWN_ROWS:
        lines += ["", f"… and {n - MARKDOWN_ROWS} more: run `ckptschema diff` for every one."]
    return "\n".join(lines) + "\n"


def _name_of(arg: str) -> str:
    return "<stdin>" if arg == STDIN else arg


def _diff(args: argparse.Namespace) -> int:
    if args.a == STDIN and args.b == STDIN:
        raise UsageError("diff: only one of A and B can be '-' (stdin)")
    found = differences(_read_any(args.a), _read_any(args.b))
    a, b = _name_of(args.a), _name_of(args.b)
    if args.json:
        data = {"a": a, "b": b, "equal": not found, "differences": found}
        _write(json.dumps(data, indent=2, ensure_ascii=False) + "\n", machine=True)
    elif args.markdown:
        _write(markdown_summary(a, b, found), machine=True)
    elif not found:
        _write(f"{a} vs {b}: no differences\n")
    else:
        n = len(found)
        lines = [f"{a} vs {b}: {n} difference{'s' if n != 1 else ''}", *map(_diff_line, found)]
        _write("\n".join(lines) + "\n")
    return FAILED if found else OK


# ------------------------------------------------------------------------------ convert


def _convert(args: argparse.Namespace) -> int:
    foreign = read_foreign(args.src, args.source_format)
    manifest = save(args.dst, foreign.tree, metadata=foreign.metadata, framework=foreign.framework, progress=True)
    tensors, params = len(manifest.tensors), manifest.num_params
    _write(
        f"{args.src} ({foreign.format}) -> {args.dst}: {tensors:,} tensor{'s' if tensors != 1 else ''}, "
        f"{params:,} parameters, {_size(manifest.nbytes)}\n"
    )
    return OK


# -------------------------------------------------------------------------- json-schema


def _json_schema(args: argparse.Namespace) -> int:
    schema = document_json_schema() if args.schema_document else json_schema()
    _write(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", machine=True)
    return OK


# --------------------------------------------------------------------------- the parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckptschema",
        description="Inspect, export and validate the schema of ckptschema checkpoints.",
        epilog="Exit codes: 0 ok, 1 validation or integrity failure (diff: different), 2 usage or unreadable file.",
    )
    parser.add_argument("--version", action="version", version=f"ckptschema {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    p = command("inspect", _inspect, "show the tree: paths, dtypes, shapes, parameter counts and sizes, with totals")
    p.add_argument("file", metavar="FILE", help="a checkpoint, or a schema document")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("schema", _schema, "print the checkpoint's schema document for review: one line per leaf, sorted")
    p.add_argument("files", nargs="+", metavar="FILE", help="a checkpoint (several with --beside)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT", help="write the schema to OUT instead of stdout")
    out.add_argument(
        "--beside",
        action="store_true",
        help="write each FILE's schema next to it (model.safetensors -> model.schema.json), only if it changed",
    )
    p.add_argument(
        "--structure-only", action="store_true", help="leave out digests and scalar values (architecture reviews)"
    )

    p = command("validate", _validate, "check checkpoints against a schema or a template; print every problem")
    p.add_argument("files", nargs="+", metavar="FILE", help="a checkpoint (or several)")
    against = p.add_mutually_exclusive_group()
    against.add_argument(
        "--schema",
        metavar="S",
        help="a schema document written by 'ckptschema schema' ('-' for stdin, or a pipe), or a reference checkpoint",
    )
    against.add_argument(
        "--template",
        metavar="MODULE:FUNCTION",
        help="a function (importable from the current directory) returning a template pytree, "
        "e.g. jax.eval_shape of an init function",
    )
    against.add_argument(
        "--beside", action="store_true", help="check each FILE against the schema next to it (model.schema.json)"
    )
    p.add_argument("--deep", action="store_true", help="also re-hash every tensor and compare with its checksum")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("diff", _diff, "compare two checkpoints or schema documents path by path")
    p.add_argument("a", metavar="A", help="a checkpoint or schema document ('-' for stdin, or a pipe)")
    p.add_argument("b", metavar="B", help="a checkpoint or schema document ('-' for stdin, or a pipe)")
    style = p.add_mutually_exclusive_group()
    style.add_argument("--json", action="store_true", help="machine-readable output")
    style.add_argument("--markdown", action="store_true", help="a Markdown summary for a pull-request comment")

    p = command("convert", _convert, "rewrite a checkpoint written by another tool as a ckptschema checkpoint")
    p.add_argument("src", metavar="SRC", help="the other tool's checkpoint (a file, or an orbax directory)")
    p.add_argument("dst", metavar="DST", help="the ckptschema checkpoint to write (atomically)")
    p.add_argument(
        "--from",
        dest="source_format",
        choices=FORMATS,
        help="the tool that wrote SRC; by default a directory is orbax, a safetensors file is safetensors "
        "(its keys kept as they are), anything else flax-msgpack",
    )

    p = command("json-schema", _json_schema, "print the JSON Schema of the manifest format")
    p.add_argument(
        "--schema-document", action="store_true", help="the JSON Schema of the schema document format instead"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (``sys.argv[1:]`` by default); return the exit code.

    Example:
        >>> main(["json-schema"])  # doctest: +ELLIPSIS
        {
          ...
        }
        0
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error, or the help
        return e.code if isinstance(e.code, int) else USAGE
    try:
        return args.run(args)
    except BrokenPipeError:
        raise
    except (CkptSchemaError, UsageError) as e:
        _error(str(e))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        _error(f"{where}{e.strerror or e}")
    return USAGE


def run() -> int:
    """The ``ckptschema`` console script: `main` on ``sys.argv``, quiet when the reader goes away."""
    try:
        return main()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `ckptschema inspect big.safetensors | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
