"""Plain safetensors files (no manifest): a template's leaves matched to the keys other tools write."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _tensors
from ._agreement import Subtree
from ._compare import raise_or_warn, scalar_kind_matches
from ._dtypes import BY_CODE, DTYPES
from ._errors import CkptSchemaError, Issue
from ._flatten import Template, flatten_template
from ._header import Header
from ._placement import place
from ._rebuild import build_like_template
from ._skeleton import Path, children, path_text, summary
from ._sources import Source

__all__ = ["PlainMatch", "load_plain", "match_plain"]

_SCALARS = (bool, int, float, str)


#: How pytree2safetensors marks a child's key, by its parent's kind (a node: ``#`` for an int key).
_P2S_MARKS = {"list": "#", "tuple": "#", "dict": "@", "namedtuple": ".", "node": "."}


def _plain_candidates(skeleton: dict[str, Any], separator: str) -> Iterator[tuple[dict[str, Any], Path, list[str]]]:
    """Each template leaf, in walk order, with the keys other tools give it: ``a.b.0`` and
    pytree2safetensors' ``@a@b#0``.

    pytree2safetensors marks each part of a path: ``@`` a dict key, ``#`` a sequence index, ``.``
    an attribute, except that a path starting with an attribute drops its ``.``
    (``layers#0@w`` for an equinox Module's ``layers[0]["w"]``).
    """

    def walk(node: dict[str, Any], path: Path, p2s: str) -> Iterator[Any]:
        kind = node["kind"]
        if kind in ("tensor", "scalar"):
            yield node, path, [separator.join(map(str, path)), p2s[1:] if p2s.startswith(".") else p2s]
            return
        mark = _P2S_MARKS.get(kind, "")
        for sub, child in children(node, path):
            if len(sub) == len(path):  # a wrapper's child: no part of its own
                yield from walk(child, sub, p2s)
            else:
                key = sub[-1]
                yield from walk(child, sub, f"{p2s}{'#' if kind == 'node' and isinstance(key, int) else mark}{key}")

    return walk(skeleton, (), "")


@dataclasses.dataclass
class PlainMatch:
    """A template matched to the keys of a file with no manifest (`match_plain`).

    Attributes:
        template: the template taken apart.
        issues: every mismatch.
        keys: the file key of each template leaf, in the order of ``template.likes``;
            None for a leaf that did not match.
    """

    template: Template
    issues: list[Issue]
    keys: list[str | None]


def match_plain(header: Header, template: Any, separator: str) -> PlainMatch:
    """Match a template's leaves to the keys of a file with no manifest; reads no tensor bytes."""
    expected = flatten_template(template, separator)
    issues: list[Issue] = []
    keys: list[str | None] = []
    seen: set[str] = set()
    for node, path, candidates in _plain_candidates(expected.skeleton, separator):
        key = next((k for k in candidates if k in header.entries), None)
        keys.append(None)
        where = path_text(path)
        if key is None:
            want = summary(node)
            want.pop("value", None)  # a template's scalar values are placeholders
            issues.append(Issue("missing", where, None, _describe_expected(node), "template", path, None, want))
            continue
        seen.add(key)
        entry = header.entries[key]
        dtype = BY_CODE.get(entry.code)
        found = f"{dtype.name if dtype else entry.code}"
        want_shape = tuple(node["shape"]) if node["kind"] == "tensor" else ()
        want_dtype = node["dtype"] if node["kind"] == "tensor" else None
        if entry.shape != want_shape:
            issues.append(
                Issue("shape", where, str(entry.shape), str(want_shape), "template", path, entry.shape, want_shape)
            )
        elif want_dtype is not None and found != want_dtype:
            issues.append(Issue("dtype", where, found, want_dtype, "template", path, found, want_dtype))
        elif want_dtype is None and (dtype is None or not scalar_kind_matches(node["type"], dtype.numpy)):
            issues.append(Issue("dtype", where, found, node["type"], "template", path, found, node["type"]))
        else:
            keys[-1] = key
    for key in sorted(header.entries.keys() - seen):
        e = header.entries[key]
        dtype = BY_CODE.get(e.code)
        name = dtype.name if dtype else e.code
        shape = tuple(e.shape)
        issues.append(
            Issue(
                "unexpected",
                key,
                f"{name}[{','.join(map(str, shape))}]",
                None,
                "template",
                (key,),
                {"kind": "tensor", "dtype": name, "shape": shape},
                None,
            )
        )
    return PlainMatch(expected, issues, keys)


def load_plain(
    source: Source, header: Header, template: Any, strict: bool, subtree: Subtree, separator: str, mmap: bool
) -> Any:
    if template is None:
        if subtree is not None:
            raise CkptSchemaError(f"{source.name}: subtree= needs a manifest or a template; this file has neither")
        return {
            key: place(
                _tensors.read_tensor(source, e, BY_CODE.get(e.code, DTYPES["uint8"]), e.shape),
                BY_CODE.get(e.code, DTYPES["uint8"]).name,
            )
            for key, e in header.entries.items()
        }
    matched = match_plain(header, template, separator)
    raise_or_warn(matched.issues, strict, source.name)
    mapped = functools.cache(source.map)
    values = []
    for key, like in zip(matched.keys, matched.template.likes):
        assert key is not None  # raise_or_warn lets only unexpected tensors pass
        entry = header.entries[key]
        dtype = BY_CODE[entry.code]
        if mmap and isinstance(like, np.ndarray):
            (array,) = _tensors.map_tensors(source, mapped(), [(entry, dtype, entry.shape)])
        else:
            array = _tensors.read_tensor(source, entry, dtype, entry.shape)
        values.append(type(like)(array[()].item()) if type(like) in _SCALARS else place(array, dtype.name, like))
    return build_like_template(matched.template, values)


def _describe_expected(node: dict[str, Any]) -> str:
    if node["kind"] == "tensor":
        return f"{node['dtype']}[{','.join(map(str, node['shape']))}]"
    return f"{node['type']} scalar"
