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
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import __version__
from ._convert import FORMATS, read_foreign
from ._diff import differences, markdown_summary
from ._errors import CkptSchemaError
from ._inventory import STDIN, Inventory, escaped, human_size, read_any
from ._load import read_manifest
from ._manifest import Manifest
from ._manifest_file import json_schema
from ._remote import is_url
from ._review import Schema
from ._review_parse import document_json_schema
from ._save import save
from ._validate import validate

__all__ = ["Inventory", "load_template", "main", "run", "schema_beside"]

OK, FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    """A command line that cannot be carried out (exit code 2), such as a bad ``--template``."""


# ------------------------------------------------------------------------------- output


def _write(text: str, *, machine: bool = False) -> None:
    """Write to stdout: machine-readable text as UTF-8 bytes whatever the locale, human text escaped."""
    stream = sys.stdout
    if not machine:
        text = escaped(text)
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
    sys.stderr.write(f"ckptschema: error: {escaped(message)}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------ inspect


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


def _beside(file: str) -> str:
    """`schema_beside` of a local checkpoint; a URL has no folder on disk to keep its schema in."""
    if is_url(file):
        raise UsageError(
            f"{file}: --beside keeps a schema next to a local checkpoint; for a URL use "
            f"'schema {file} -o OUT' and 'validate {file} --schema OUT'"
        )
    return schema_beside(file)


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
            out = _beside(file)
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
    path = _beside(file)
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such schema beside {file}; write it with: ckptschema schema {file} -o {path}")
    return read_any(path)


def _validate(args: argparse.Namespace) -> int:
    against: Any = None
    if args.template is not None:
        against = load_template(args.template)
    elif args.schema is not None:
        against = read_any(args.schema)  # a schema document, or a reference checkpoint
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


def _diff_line(d: dict[str, Any]) -> str:
    if d["change"] == "added":
        detail = d["b"]
    elif d["change"] == "removed":
        detail = d["a"]
    else:
        detail = f"{d['a']} -> {d['b']}"
    return f"  {d['change']:<9} {d['path']}: {detail}"


def _name_of(arg: str) -> str:
    return "<stdin>" if arg == STDIN else arg


def _diff(args: argparse.Namespace) -> int:
    if args.a == STDIN and args.b == STDIN:
        raise UsageError("diff: only one of A and B can be '-' (stdin)")
    found = differences(read_any(args.a), read_any(args.b))
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
        f"{params:,} parameters, {human_size(manifest.nbytes)}\n"
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
