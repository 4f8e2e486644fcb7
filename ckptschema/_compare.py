"""Skeleton against skeleton: every mismatch between a checkpoint and a template or schema.

`compare` walks both skeletons at once and collects every issue instead of stopping at the
first, matching each expected leaf with the file leaf that will fill it (a `Match`).
Templates and schemas are compared the same way; a schema also has its scalar values and
tensor digests compared, a template only its types (its values are placeholders).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._dtypes import DTYPES
from ._errors import Issue, ValidationError, format_issues, grouped
from ._scalars import float_text, scalar_value
from ._skeleton import Path, children, describe, iter_nodes, keys, path_text, summary

__all__ = ["Comparison", "Match", "Report", "compare", "raise_or_warn", "scalar_kind_matches"]

_MAPPINGS = ("dict",)


class Match(NamedTuple):
    """One expected leaf and the file leaf that fills it (a named tuple: one is made per leaf loaded).

    Attributes:
        path: the leaf's path.
        found: the file's ``tensor`` or ``scalar`` node.
        like: the template's own leaf there (an array, ``jax.ShapeDtypeStruct`` or Python
            scalar); None when the expected skeleton is a schema's.
    """

    path: Path
    found: dict[str, Any]
    like: Any = None


#: Makes a `Match` from all three fields with the C-level ``tuple.__new__``, not the named
#: tuple's Python ``__new__``: 20,000 of those took a third of `compare`'s time.
_new_match = tuple.__new__


@dataclasses.dataclass
class Comparison:
    """The result of `compare`: every issue, and a `Match` for each expected leaf that matched,
    in the expected skeleton's walk order (when there are no issues, one for every leaf)."""

    issues: list[Issue]
    matches: list[Match]


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
        """The report as JSON: ``{"source", "ok", "issues": [...]}``, each issue with every `Issue` field.

        Tuples become lists; a float that JSON cannot hold (NaN, infinities) is spelled as in
        a manifest (``"nan"``, ``"-inf"``, see `_scalars.float_text`).
        """
        issues = [_json_safe(dataclasses.asdict(i)) for i in self.issues]
        return json.dumps({"source": self.source, "ok": self.ok, "issues": issues}, indent=2, ensure_ascii=False)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return float_text(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


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


def _takes_scalar(expected: dict[str, Any], like: Any) -> bool:
    """Whether a template leaf is what ``jax.eval_shape`` makes of a Python scalar: a 0-d
    weak-typed leaf (a bool is never weak), which a file scalar may fill."""
    return not expected["shape"] and (bool(getattr(like, "weak_type", False)) or expected["dtype"] == "bool")


class _Comparer:
    def __init__(self, against: str, values: bool, likes: Sequence[Any] | None) -> None:
        self.against = against
        self.values = values
        self.template = likes is not None
        #: The template leaf of each expected leaf, taken in walk order as they are compared or passed over.
        self.like: Callable[[], Any] = iter(likes).__next__ if likes is not None else itertools.repeat(None).__next__
        self.issues: list[Issue] = []
        self.matches: list[Match] = []

    def issue(
        self, kind: str, path: Path, found: str | None, expected: str | None, found_value: Any, expected_value: Any
    ) -> None:
        self.issues.append(
            Issue(kind, path_text(path), found, expected, self.against, path, found_value, expected_value)
        )

    def mismatch(self, found: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
        """A structure issue, and the expected subtree's leaves passed over unmatched."""
        self.issue("structure", path, describe(found), describe(expected), summary(found), summary(expected))
        self.skip(expected)

    def skip(self, expected: dict[str, Any]) -> None:
        """Pass over the template leaves of an expected subtree that matches nothing."""
        for _, n in iter_nodes(expected):
            if n["kind"] in ("tensor", "scalar"):
                self.like()

    def leaves(self, kind: str, node: dict[str, Any], path: Path) -> None:
        """Report every leaf under `node` as missing or unexpected (the node itself if none)."""
        found_any = False
        for sub, n in iter_nodes(node, path):
            if n["kind"] in ("tensor", "scalar"):
                found_any = True
                self._absent(kind, n, sub)
        if not found_any:
            self._absent(kind, node, path)
        if kind == "missing":
            self.skip(node)

    def _absent(self, kind: str, node: dict[str, Any], path: Path) -> None:
        what, data = describe(node), summary(node)
        if kind == "unexpected":
            self.issue(kind, path, what, None, data, None)
        else:
            self.issue(kind, path, None, what, None, data)

    def compare(self, found: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
        fk, ek = found["kind"], expected["kind"]
        if fk == "wrapper" or ek == "wrapper":
            if fk == ek and _wrapper_identity(found) != _wrapper_identity(expected):
                self.issue(
                    "structure",
                    path,
                    _describe_wrapper(found),
                    _describe_wrapper(expected),
                    summary(found),
                    summary(expected),
                )
                self.skip(expected)
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
                self.mismatch(found, expected, path)
        else:
            self.container(found, expected, path)

    def tensor(self, found: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
        like = self.like()
        if found["kind"] == "scalar" and self.template and _takes_scalar(expected, like):
            if _scalar_fits(found, expected["dtype"]):
                self.matches.append(_new_match(Match, (path, found, like)))
            else:
                self.issue("dtype", path, describe(found), expected["dtype"], found["type"], expected["dtype"])
            return
        if found["kind"] != "tensor":
            self.issue("structure", path, describe(found), describe(expected), summary(found), summary(expected))
            return
        ok = True
        if found["shape"] != expected["shape"]:
            shapes = tuple(found["shape"]), tuple(expected["shape"])
            self.issue("shape", path, str(shapes[0]), str(shapes[1]), *shapes)
            ok = False
        if found["dtype"] != expected["dtype"]:
            self.issue("dtype", path, found["dtype"], expected["dtype"], found["dtype"], expected["dtype"])
            ok = False
        if ok and self.values and expected.get("digest") and found.get("digest") != expected["digest"]:
            digest = found.get("digest")
            self.issue("checksum", path, digest or "none", expected["digest"], digest, expected["digest"])
            ok = False
        if ok:
            self.matches.append(_new_match(Match, (path, found, like)))

    def scalar(self, found: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
        like = self.like()
        if found["kind"] != "scalar":
            self.issue("structure", path, describe(found), describe(expected), summary(found), summary(expected))
        elif found["type"] != expected["type"]:
            self.issue("dtype", path, found["type"], expected["type"], found["type"], expected["type"])
        elif self.values and found["value"] != expected["value"]:
            self.issue("value", path, describe(found), describe(expected), scalar_value(found), scalar_value(expected))
        else:
            self.matches.append(_new_match(Match, (path, found, like)))

    def container(self, found: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
        fk, ek = found["kind"], expected["kind"]
        same_kind = fk == ek or (fk in _MAPPINGS and ek in _MAPPINGS)
        if (
            not same_kind
            or (ek == "namedtuple" and found["name"] != expected["name"])
            or (ek == "node" and _short_type(found["type"]) != _short_type(expected["type"]))
        ):
            self.mismatch(found, expected, path)
            return
        found_children = dict(zip(keys(found), found["children"]))
        for sub, child in children(expected, path):
            key = sub[-1]
            if key in found_children:
                self.compare(found_children.pop(key), child, sub)
            else:
                self.leaves("missing", child, sub)
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
    path: Path = (),
    *,
    against: str = "template",
    values: bool = False,
    likes: Sequence[Any] | None = None,
) -> Comparison:
    """Compare a file's skeleton with an expected one (a template's or a schema's).

    Args:
        found: the checkpoint's skeleton (or the part of it being loaded).
        expected: the skeleton it must match.
        path: the path of both roots, for messages.
        against: ``template`` or ``schema``, for messages.
        values: also compare scalar values and tensor digests (schemas, not templates).
        likes: a template's own leaves (`_flatten.Template.likes`), which the matches
            carry and which decide where a file scalar may fill a 0-d template leaf.

    Returns:
        Every issue, in walk order, and a `Match` for each expected leaf that matched.

    Example:
        >>> a = {"kind": "tensor", "key": "w", "dtype": "float32", "shape": [3]}
        >>> [str(i) for i in compare(a, {**a, "shape": [4]}).issues]
        ['<root>: shape (3,) in file, (4,) in template']
    """
    comparer = _Comparer(against, values, likes)
    comparer.compare(found, expected, path)
    return Comparison(comparer.issues, comparer.matches)


def raise_or_warn(issues: list[Issue], strict: bool, where: str) -> None:
    """Raise `ValidationError` for the issues; with ``strict=False`` only warn of unexpected tensors."""
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
