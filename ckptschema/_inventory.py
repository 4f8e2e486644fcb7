"""What the command line reads and shows: an argument's checkpoint or schema, and its tree with totals.

An argument names a checkpoint (a file, a sharded directory or index), a schema document, stdin
(``-``) or a pipe; `read_any` tells them apart. `Inventory` is what ``ckptschema inspect``
shows of one. Text taken from a file is escaped (`escaped`) before it reaches a terminal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import sys
from typing import Any

from ._dtypes import DTYPES
from ._load import read_manifest
from ._manifest import FORMAT_VERSION, Manifest
from ._review import Schema
from ._shards import is_sharded
from ._skeleton import KeyPart, children, describe, path_text
from ._validate import load_schema

__all__ = ["STDIN", "Inventory", "escaped", "human_size", "read_any"]


def escaped(text: str) -> str:
    """`text` with every non-printable character but newlines escaped (``\\x1b``)."""
    if text.isprintable():
        return text
    return "\n".join(
        "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in line)
        for line in text.split("\n")
    )


def human_size(nbytes: int) -> str:
    """Bytes for humans: ``184 B``, ``1.5 KiB``, ``2.0 GiB``.

    Example:
        >>> human_size(184), human_size(1536), human_size(3 << 30)
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


def read_any(path: str) -> Manifest | Schema:
    """The manifest of a checkpoint, or a schema document (a file, ``-`` for stdin, or a pipe).

    A pipe (``<(ckptschema schema ...)``) can only carry a schema document: it is read to its
    end, up to ``MAX_HEADER_BYTES``. Checkpoints are read from regular files only.
    """
    if path == STDIN:
        return load_schema(sys.stdin.buffer)
    if (_is_pipe(path) or _looks_like_json(path)) and not is_sharded(path):  # local checks first: no request for a URL
        return load_schema(path)
    return read_manifest(path)


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
    for sub_path, child in children(node, path):
        sub = _rows(child, sub_path, out)
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
        manifest = read_any(path)
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
            f"{r.params:,} parameter{'s' if r.params != 1 else ''}, {human_size(r.nbytes)}{exact}"
        )

    def cells(self, row: _Row) -> list[str]:
        """The type, shape, params and size cells of a row."""
        if row.kind == "tensor":
            return [row.label, str(row.shape), f"{row.params:,}", human_size(row.nbytes)]
        if row.is_container:
            return [row.label, "", f"{row.params:,}", human_size(row.nbytes)]
        return [row.label, "", "", ""]

    def plain(self) -> str:
        """Aligned text with full paths, one node a line (what is printed when piped)."""
        table = [["PATH", "TYPE", "SHAPE", "PARAMS", "SIZE"]]
        table += [[path_text(r.path), *self.cells(r)] for r in self.rows]
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
            entry: dict[str, Any] = {"path": path_text(r.path), "parts": list(r.path), "kind": r.kind}
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
            path = Text(escaped(indent + name), style="bold" if row.is_container else "")
            table.add_row(path, *(Text(escaped(c)) for c in self.cells(row)))
        console.print(Text(escaped(self.heading)))
        console.print(table)
        console.print(Text(self.total))
