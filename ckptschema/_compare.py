"""Skeleton against skeleton: every mismatch between a checkpoint and a template or schema.

`compare` walks both skeletons at once and collects every issue instead of stopping at the
first, pairing each expected leaf with the file leaf that will fill it. Templates and
schemas are compared the same way; a schema also has its scalar values and tensor digests
compared, a template only its types (its values are placeholders).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any

import numpy as np

from ._dtypes import DTYPES
from ._errors import Issue, ValidationError, format_issues, grouped
from ._tree import KeyPart, child_keys, describe, iter_nodes, keypath

__all__ = ["Report", "compare", "raise_or_warn", "scalar_kind_matches"]

_MAPPINGS = ("dict",)


@dataclasses.dataclass
class Comparison:
    """The result of `compare`: the issues, and each expected leaf's file leaf by ``id``."""

    issues: list[Issue]
    pairs: dict[int, dict[str, Any]]


@dataclasses.dataclass
class Report:
    """What `ckptschema.validate` found: ``ok`` when there are no issues.

    Attributes:
        source: the file that was checked.
        issues: every problem found, as `Issue` records.

    Example:
        >>> import numpy as np, ckptschema
        >>> data = ckptschema.dumps({"w": np.zeros(3, np.float32)})
        >>> report = ckptschema.validate(data, {"w": np.zeros(4, np.float32)})
        >>> report.ok, [i.kind for i in report.issues]
        (False, ['shape'])
    """

    source: str
    issues: list[Issue]

    def __post_init__(self) -> None:
        self.issues = grouped(self.issues)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.issues

    def __str__(self) -> str:
        if self.ok:
            return f"{self.source}: ok"
        n = len(self.issues)
        return f"{self.source}: {n} problem{'s' if n != 1 else ''}\n{format_issues(self.issues)}"

    def to_json(self) -> str:
        """The report as JSON: ``{"source", "ok", "issues": [{kind, path, found, expected}]}``."""
        return json.dumps(
            {"source": self.source, "ok": self.ok, "issues": [dataclasses.asdict(i) for i in self.issues]},
            indent=2,
            ensure_ascii=False,
        )


def _shape(node: dict[str, Any]) -> str:
    return str(tuple(node["shape"]))


def scalar_kind_matches(kind: str, dtype: np.dtype) -> bool:
    """Whether a Python scalar of `kind` (``bool``/``int``/``float``) belongs in a 0-d tensor of `dtype`."""
    if kind == "bool":
        return bool(dtype == np.bool_)
    if kind == "int":
        return bool(np.issubdtype(dtype, np.integer))
    if kind == "float":
        return bool(np.issubdtype(dtype, np.floating))
    return False


def _scalar_fits(scalar: dict[str, Any], dtype_name: str) -> bool:
    """Whether a recorded Python scalar can fill a 0-d tensor of `dtype_name` exactly."""
    dtype = DTYPES[dtype_name].numpy
    if not scalar_kind_matches(scalar["type"], dtype):
        return False
    if scalar["type"] == "int":
        value: int = scalar["value"]
        return bool(np.iinfo(dtype).min <= value <= np.iinfo(dtype).max)
    return True


class _Comparer:
    def __init__(self, against: str, values: bool) -> None:
        self.against = against
        self.values = values
        self.issues: list[Issue] = []
        self.pairs: dict[int, dict[str, Any]] = {}

    def issue(self, kind: str, path: tuple[KeyPart, ...], found: str | None, expected: str | None) -> None:
        self.issues.append(Issue(kind, keypath(path), found, expected, self.against))

    def leaves(self, kind: str, node: dict[str, Any], path: tuple[KeyPart, ...]) -> None:
        """Report every leaf under `node` as missing or unexpected (the node itself if none)."""
        found_any = False
        for sub, n in iter_nodes(node, path):
            if n["kind"] in ("tensor", "scalar"):
                found_any = True
                what = describe(n)
                self.issue(kind, sub, what if kind == "unexpected" else None, what if kind == "missing" else None)
        if not found_any:
            what = describe(node)
            self.issue(kind, path, what if kind == "unexpected" else None, what if kind == "missing" else None)

    def compare(self, found: dict[str, Any], expected: dict[str, Any], path: tuple[KeyPart, ...]) -> None:
        fk, ek = found["kind"], expected["kind"]
        if fk == "wrapper" or ek == "wrapper":
            if fk == ek and _wrapper_identity(found) != _wrapper_identity(expected):
                self.issue("structure", path, _describe_wrapper(found), _describe_wrapper(expected))
                return
            self.compare(
                found["child"] if fk == "wrapper" else found, expected["child"] if ek == "wrapper" else expected, path
            )
            return
        if ek == "tensor":
            self.tensor(found, expected, path)
        elif ek == "scalar":
            self.scalar(found, expected, path)
        elif ek == "none":
            if fk != "none":
                self.issue("structure", path, describe(found), describe(expected))
        else:
            self.container(found, expected, path)

    def tensor(self, found: dict[str, Any], expected: dict[str, Any], path: tuple[KeyPart, ...]) -> None:
        if found["kind"] == "scalar" and expected.get("_weak"):
            if _scalar_fits(found, expected["dtype"]):
                self.pairs[id(expected)] = found
            else:
                self.issue("dtype", path, describe(found), expected["dtype"])
            return
        if found["kind"] != "tensor":
            self.issue("structure", path, describe(found), describe(expected))
            return
        ok = True
        if found["shape"] != expected["shape"]:
            self.issue("shape", path, _shape(found), _shape(expected))
            ok = False
        if found["dtype"] != expected["dtype"]:
            self.issue("dtype", path, found["dtype"], expected["dtype"])
            ok = False
        if ok and self.values and expected.get("digest") and found.get("digest") != expected["digest"]:
            self.issue("checksum", path, found.get("digest") or "none", expected["digest"])
            ok = False
        if ok:
            self.pairs[id(expected)] = found

    def scalar(self, found: dict[str, Any], expected: dict[str, Any], path: tuple[KeyPart, ...]) -> None:
        if found["kind"] != "scalar":
            self.issue("structure", path, describe(found), describe(expected))
        elif found["type"] != expected["type"]:
            self.issue("dtype", path, found["type"], expected["type"])
        elif self.values and found["value"] != expected["value"]:
            self.issue("value", path, describe(found), describe(expected))
        else:
            self.pairs[id(expected)] = found

    def container(self, found: dict[str, Any], expected: dict[str, Any], path: tuple[KeyPart, ...]) -> None:
        fk, ek = found["kind"], expected["kind"]
        same_kind = fk == ek or (fk in _MAPPINGS and ek in _MAPPINGS)
        if (
            not same_kind
            or (ek == "namedtuple" and found["name"] != expected["name"])
            or (ek == "node" and _short_type(found["type"]) != _short_type(expected["type"]))
        ):
            self.issue("structure", path, describe(found), describe(expected))
            return
        found_children = dict(zip(child_keys(found), found["children"]))
        expected_keys = child_keys(expected)
        for key, child in zip(expected_keys, expected["children"]):
            if key in found_children:
                self.compare(found_children.pop(key), child, (*path, key))
            else:
                self.leaves("missing", child, (*path, key))
        for key, child in found_children.items():
            self.leaves("unexpected", child, (*path, key))


#: Wrapper metadata that changes what the wrapped bytes mean: a PRNG key's implementation
#: (``rbg`` and ``unsafe_rbg`` keys have the same key data shape, but are different keys).
_IDENTITY_METADATA = {"jax.random.key": "impl"}


def _wrapper_identity(node: dict[str, Any]) -> tuple[str, Any]:
    field = _IDENTITY_METADATA.get(node["type"])
    return node["type"], node.get("metadata", {}).get(field) if field else None


def _describe_wrapper(node: dict[str, Any]) -> str:
    _, identity = _wrapper_identity(node)
    return describe(node) if identity is None else f"{describe(node)} ({identity})"


def _short_type(name: str) -> str:
    """A custom node's class name without its module, so `__main__.MLP` matches `pkg.MLP`."""
    return name.rpartition(".")[2]


def compare(
    found: dict[str, Any],
    expected: dict[str, Any],
    path: tuple[KeyPart, ...] = (),
    *,
    against: str = "template",
    values: bool = False,
) -> Comparison:
    """Compare a file's skeleton with an expected one (a template's or a schema's).

    Args:
        found: the checkpoint's skeleton (or the part of it being loaded).
        expected: the skeleton it must match.
        path: the path of both roots, for messages.
        against: ``template`` or ``schema``, for messages.
        values: also compare scalar values and tensor digests (schemas, not templates).

    Returns:
        Every issue, in walk order, and the file leaf paired with each expected leaf.

    Example:
        >>> a = {"kind": "tensor", "key": "w", "dtype": "float32", "shape": [3]}
        >>> [str(i) for i in compare(a, {**a, "shape": [4]}).issues]
        ['<root>: shape (3,) in file, (4,) in template']
    """
    comparer = _Comparer(against, values)
    comparer.compare(found, expected, path)
    return Comparison(comparer.issues, comparer.pairs)


def raise_or_warn(issues: list[Issue], strict: bool, where: str) -> None:
    if not strict:
        unexpected = [i for i in issues if i.kind == "unexpected"]
        issues = [i for i in issues if i.kind != "unexpected"]
        if unexpected:
            paths = ", ".join(i.path for i in unexpected[:10]) + (" ..." if len(unexpected) > 10 else "")
            warnings.warn(f"{where}: ignored {len(unexpected)} tensor(s) not in the template: {paths}", stacklevel=4)
    if issues:
        hint = ""
        if strict and any(i.kind == "unexpected" for i in issues):
            hint = "pass strict=False to ignore tensors the template does not have"
        raise ValidationError(f"{where} does not match the template", issues, hint)


# ------------------------------------------------------------------- files with no manifest
