"""The exception hierarchy and the `Issue` record that validation errors carry."""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Sequence
from typing import Any

__all__ = [
    "CheckpointChangedError",
    "CheckpointNotFoundError",
    "CkptSchemaError",
    "FormatError",
    "IntegrityError",
    "Issue",
    "ValidationError",
]

#: Order in which issue kinds are grouped in messages and reports.
ISSUE_KINDS = ("missing", "unexpected", "shape", "dtype", "structure", "value", "checksum")


class CkptSchemaError(Exception):
    """Base class of every error ckptschema raises for a bad file, tree or template."""


class FormatError(CkptSchemaError):
    """The file is not a valid, supported safetensors/ckptschema file.

    Example:
        >>> import ckptschema
        >>> try:
        ...     ckptschema.loads(b"not a checkpoint")
        ... except ckptschema.FormatError as e:
        ...     print(type(e).__name__)
        FormatError
    """


class CheckpointNotFoundError(FormatError, FileNotFoundError):
    """There is no checkpoint at the path: no file, object, sharded index or shard of that name.

    It is a `FileNotFoundError` too, so the usual resume idiom works; ``filename`` is the
    path that is missing.

    Example:
        >>> import ckptschema
        >>> try:
        ...     ckptschema.load(tmp_path / "ckpt.safetensors")
        ... except FileNotFoundError as e:
        ...     print(isinstance(e, ckptschema.CkptSchemaError), e.filename.endswith("ckpt.safetensors"))
        True True
    """

    def __init__(self, message: str, filename: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOENT
        self.strerror = os.strerror(errno.ENOENT)
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.args[0], self.filename)


class CheckpointChangedError(FormatError):
    """The checkpoint was replaced while it was being read, and reading it again did not help.

    A load reads one version of a checkpoint: every byte of a file or object comes from the
    version whose header it read (pinned by ETag or version id on object storage, by file
    identity on disk), and a sharded load reads the shards its index names. When that
    version is replaced midway, the load starts over on the new one; this error is raised
    only when saves keep replacing the checkpoint faster than it can be read.
    """


class IntegrityError(CkptSchemaError):
    """A tensor's bytes do not match the checksum recorded when it was saved."""


@dataclasses.dataclass(frozen=True)
class Issue:
    """One mismatch between a checkpoint and what it was checked against.

    The text fields (`path`, `found`, `expected`) are what messages show; `parts`,
    `found_value` and `expected_value` are the same facts as data for a program.

    Attributes:
        kind: one of ``missing``, ``unexpected``, ``shape``, ``dtype``, ``structure``,
            ``value``, ``checksum``.
        path: the key path, parts joined by ``/`` (``params/Dense_0/kernel``); ``<root>``
            for the whole tree.
        found: what the checkpoint holds there (``None`` when it holds nothing).
        expected: what the template or schema wants there (``None`` when it wants nothing).
        against: what the file was compared with: ``template``, ``schema`` or ``manifest``.
        parts: the path as its parts, keys as they are: a haiku key ``"mlp/~/linear"`` is
            one part and the int key ``0`` is not the str key ``"0"``; ``()`` for the root.
            For a tensor of a file with no manifest, the one part is its tensor key.
        found_value: what the checkpoint holds, as data (``None`` when it holds nothing):
            the shape as a tuple of ints for ``shape``; the dtype name (or a scalar's Python
            type name, ``"int"``) for ``dtype``; the Python scalar for ``value``; the hex
            sha256 digest for ``checksum`` (``None`` when the file records none); for
            ``missing``, ``unexpected`` and ``structure``, the node as a dict without its
            children: ``{"kind": "tensor", "dtype": "float32", "shape": (3, 4)}``,
            ``{"kind": "scalar", "type": "int", "value": 5}``, ``{"kind": "tuple"}``.
        expected_value: what the template or schema wants, in the same form. Both are None
            for the one issue of a file with no manifest checked against a schema.

    Example:
        >>> import numpy as np, ckptschema
        >>> data = ckptschema.dumps({"w": np.zeros((3, 4), np.float32)})
        >>> (issue,) = ckptschema.validate(data, {"w": np.zeros((4, 4), np.float32)}).issues
        >>> issue.parts, issue.found_value, issue.expected_value
        (('w',), (3, 4), (4, 4))
    """

    kind: str
    path: str
    found: str | None
    expected: str | None
    against: str = "template"
    parts: tuple[str | int, ...] = ()
    #: Not hashed (a node's dict is not hashable); equal issues still hash alike.
    found_value: Any = dataclasses.field(default=None, hash=False)
    expected_value: Any = dataclasses.field(default=None, hash=False)

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"{self.path}: {self.expected} in {self.against}, not in file"
        if self.kind == "unexpected":
            return f"{self.path}: {self.found} in file, not in {self.against}"
        return f"{self.path}: {self.kind} {self.found} in file, {self.expected} in {self.against}"


def grouped(issues: Sequence[Issue]) -> list[Issue]:
    """Issues in `ISSUE_KINDS` order, keeping walk order within each kind."""
    return sorted(issues, key=lambda i: ISSUE_KINDS.index(i.kind))


def format_issues(issues: Sequence[Issue], indent: str = "  ") -> str:
    """Render issues grouped by kind, one line each, in `ISSUE_KINDS` order."""
    lines = []
    for kind in ISSUE_KINDS:
        group = [i for i in issues if i.kind == kind]
        if group:
            lines.append(f"{indent}{kind} ({len(group)}):")
            lines.extend(f"{indent}  {i}" for i in group)
    return "\n".join(lines)


class ValidationError(CkptSchemaError):
    """A checkpoint does not match its template or schema.

    The message lists every problem, one line each, grouped by kind; `issues` holds them
    as `Issue` records.

    Example:
        >>> import numpy as np, ckptschema
        >>> data = ckptschema.dumps({"w": np.zeros((3, 4), np.float32)})
        >>> try:
        ...     ckptschema.loads(data, template={"w": np.zeros((4, 4), np.float32)})
        ... except ckptschema.ValidationError as e:
        ...     print(e.issues[0])
        w: shape (3, 4) in file, (4, 4) in template
    """

    def __init__(self, where: str, issues: Sequence[Issue], hint: str = "") -> None:
        self.where = where
        self.issues = grouped(issues)
        n = len(self.issues)
        message = f"{where} ({n} problem{'s' if n != 1 else ''}):\n{format_issues(self.issues)}"
        super().__init__(message + (f"\n{hint}" if hint else ""))
